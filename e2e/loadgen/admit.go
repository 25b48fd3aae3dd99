package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"time"
)

// admit serves a no-op mutating admission webhook over HTTPS: every AdmissionReview is
// answered "allowed", with no patch. It is the baseline the benchmark sets lameduck's
// webhook against, registered for the same pods in the same burst: on a small machine the
// API server's CPU dominates a webhook's latency as the API server sees it, and the ratio
// of the two p99s is the honest figure. Its certificate is self-signed for -dns-name at
// start; the first line on stdout is "caBundle: <base64 PEM>" for the webhook
// configuration.
func admit(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("admit", flag.ContinueOnError)
	addr := fs.String("addr", ":8443", "listen address")
	dnsName := fs.String("dns-name", "", "the Service's DNS name the API server calls (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dnsName == "" {
		return fmt.Errorf("-dns-name is required")
	}
	cert, certPEM, err := selfSigned(*dnsName)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "caBundle: %s\n", base64.StdEncoding.EncodeToString(certPEM))
	srv := &http.Server{
		Addr:              *addr,
		Handler:           http.HandlerFunc(review),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	return srv.ListenAndServeTLS("", "")
}

// review answers one AdmissionReview: allowed, same uid, nothing else.
func review(w http.ResponseWriter, r *http.Request) {
	var in struct {
		APIVersion string `json:"apiVersion"`
		Request    *struct {
			UID string `json:"uid"`
		} `json:"request"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&in); err != nil || in.Request == nil {
		http.Error(w, "expected an AdmissionReview with a request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"apiVersion": "admission.k8s.io/v1",
		"kind":       "AdmissionReview",
		"response":   map[string]any{"uid": in.Request.UID, "allowed": true},
	})
}

// selfSigned makes a P-256 certificate for name, valid for a day, that is its own CA.
func selfSigned(name string) (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		DNSNames:              []string{name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	return cert, certPEM, err
}

// runAdmit is main's entry for the subcommand.
func runAdmit() {
	if err := admit(os.Args[2:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen admit:", err)
		os.Exit(1)
	}
}
