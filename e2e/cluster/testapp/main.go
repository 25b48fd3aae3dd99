// Command testapp is the static test program of the local cluster's smoke images. Every
// line it logs starts with an RFC 3339 timestamp (nanoseconds, UTC) and an event name, so
// the smoke suite can order what happened inside a pod:
//
//	testapp serve [-listen :8080] [-ignore-term] [-name N]
//	    HTTP server ("/" answers "hello from <hostname>", "/healthz" answers 200). On
//	    SIGTERM it first replays the lines hooks appended to /tmp/events, then logs
//	    "sigterm" and exits 0, or with -ignore-term logs "sigterm-ignored" and keeps running.
//	testapp hook NAME [-sleep 2s]
//	    For exec hooks (preStop): appends "NAME-start", sleeps, appends "NAME-end" to
//	    /tmp/events (a hook's own output is not part of the container log).
//	testapp sidecar [-message M] [-name N]
//	    Runs until SIGTERM; then logs "sigterm", writes "M at <time>" to
//	    /dev/termination-log (the container's terminationMessagePath) and exits 0.
//	testapp webhook -dns NAME [-listen :8443]
//	    A mutating admission webhook over TLS with a self-signed certificate for NAME; it
//	    logs the certificate ("webhook-ca pem=<base64>", the caBundle to configure) and
//	    adds the annotation e2e.lameduck.dev/mutated=true to every object it admits.
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
	"math/big"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const eventsFile = "/tmp/events"

func line(event string, kv ...string) string {
	s := time.Now().UTC().Format(time.RFC3339Nano) + " " + event
	for i := 0; i+1 < len(kv); i += 2 {
		s += " " + kv[i] + "=" + kv[i+1]
	}
	return s + "\n"
}

func logf(event string, kv ...string) { os.Stdout.WriteString(line(event, kv...)) }

func termSignals() chan os.Signal {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	return ch
}

func serve(args []string) {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", ":8080", "listen address")
	ignore := fs.Bool("ignore-term", false, "log SIGTERM but keep running")
	name := fs.String("name", "app", "name used in log lines")
	_ = fs.Parse(args)

	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s\n", host) })
	go func() {
		if err := http.ListenAndServe(*listen, mux); err != nil {
			logf("listen-error", "err", err.Error())
			os.Exit(1)
		}
	}()
	sigs := termSignals()
	logf("start", "name", *name, "listen", *listen)
	for sig := range sigs {
		if b, err := os.ReadFile(eventsFile); err == nil {
			os.Stdout.Write(b)
		}
		logf("sigterm", "name", *name, "signal", sig.String())
		if *ignore {
			logf("sigterm-ignored", "name", *name)
			continue
		}
		logf("exit", "name", *name)
		os.Exit(0)
	}
}

func hook(args []string) {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: testapp hook NAME [-sleep D]")
		os.Exit(2)
	}
	name := args[0]
	fs := flag.NewFlagSet("hook", flag.ExitOnError)
	sleep := fs.Duration("sleep", 0, "how long the hook takes")
	_ = fs.Parse(args[1:])
	appendEvent := func(ev string) {
		f, err := os.OpenFile(eventsFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o666)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		f.WriteString(line(ev))
	}
	appendEvent(name + "-start")
	time.Sleep(*sleep)
	appendEvent(name + "-end")
}

func sidecar(args []string) {
	fs := flag.NewFlagSet("sidecar", flag.ExitOnError)
	message := fs.String("message", "sidecar-done", "termination message")
	name := fs.String("name", "sidecar", "name used in log lines")
	_ = fs.Parse(args)
	sigs := termSignals()
	logf("start", "name", *name)
	sig := <-sigs
	logf("sigterm", "name", *name, "signal", sig.String())
	msg := fmt.Sprintf("%s at %s", *message, time.Now().UTC().Format(time.RFC3339Nano))
	if err := os.WriteFile("/dev/termination-log", []byte(msg), 0o666); err != nil {
		logf("termination-log-error", "err", err.Error())
	}
	logf("exit", "name", *name)
	os.Exit(0)
}

func webhook(args []string) {
	fs := flag.NewFlagSet("webhook", flag.ExitOnError)
	listen := fs.String("listen", ":8443", "listen address")
	dns := fs.String("dns", "", "DNS name of the certificate (service.namespace.svc)")
	_ = fs.Parse(args)
	if *dns == "" {
		fmt.Fprintln(os.Stderr, "webhook needs -dns")
		os.Exit(2)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: *dns},
		DNSNames:              []string{*dns},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	must(err)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	must(err)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	must(err)

	mux := http.NewServeMux()
	mux.HandleFunc("/mutate", func(w http.ResponseWriter, r *http.Request) {
		var review struct {
			Request struct {
				UID    string `json:"uid"`
				Object struct {
					Metadata struct {
						Name        string            `json:"name"`
						Annotations map[string]string `json:"annotations"`
					} `json:"metadata"`
				} `json:"object"`
			} `json:"request"`
		}
		if err := json.NewDecoder(r.Body).Decode(&review); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var patch []map[string]any
		if review.Request.Object.Metadata.Annotations == nil {
			patch = append(patch, map[string]any{"op": "add", "path": "/metadata/annotations", "value": map[string]string{}})
		}
		patch = append(patch, map[string]any{"op": "add", "path": "/metadata/annotations/e2e.lameduck.dev~1mutated", "value": "true"})
		patchJSON, _ := json.Marshal(patch)
		resp := map[string]any{
			"apiVersion": "admission.k8s.io/v1",
			"kind":       "AdmissionReview",
			"response": map[string]any{
				"uid":       review.Request.UID,
				"allowed":   true,
				"patchType": "JSONPatch",
				"patch":     base64.StdEncoding.EncodeToString(patchJSON),
			},
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(resp)
		logf("admitted", "name", review.Request.Object.Metadata.Name)
	})
	srv := &http.Server{Addr: *listen, Handler: mux, TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}}
	logf("webhook-ca", "pem", base64.StdEncoding.EncodeToString(certPEM))
	go func() {
		sig := <-termSignals()
		logf("sigterm", "name", "webhook", "signal", sig.String())
		os.Exit(0)
	}()
	if err := srv.ListenAndServeTLS("", ""); err != nil {
		logf("listen-error", "err", err.Error())
		os.Exit(1)
	}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testapp serve|hook|sidecar|webhook [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "hook":
		hook(os.Args[2:])
	case "sidecar":
		sidecar(os.Args[2:])
	case "webhook":
		webhook(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "unknown mode %q\n", os.Args[1])
		os.Exit(2)
	}
}
