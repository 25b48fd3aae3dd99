package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestClassify(t *testing.T) {
	cases := map[string]struct {
		code uint16
		err  string
	}{
		"":            {200, ""},
		"http-503":    {503, ""},
		"refused":     {0, "Get \"http://10.0.0.1/\": dial tcp 10.0.0.1:80: connect: connection refused"},
		"reset":       {0, "read tcp 10.0.0.2:1234->10.0.0.1:80: read: connection reset by peer"},
		"timeout":     {0, "Get \"http://10.0.0.1/\": context deadline exceeded (Client.Timeout exceeded while awaiting headers)"},
		"eof":         {0, "Get \"http://10.0.0.1/\": EOF"},
		"other":       {0, "something else"},
		"unreachable": {0, "dial tcp 10.0.0.1:80: connect: no route to host"},
	}
	for want, c := range cases {
		if got := classify(c.code, c.err); got != want {
			t.Errorf("classify(%d, %q) = %q, want %q", c.code, c.err, got, want)
		}
	}
}

func TestParseRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{{}, {"-target", "http://x/", "-rate", "0"}, {"-bogus"}} {
		if _, err := parse(args); err == nil {
			t.Errorf("parse(%q) accepted", args)
		}
	}
}

// A real attack on a real server that closes its listener half-way: the requests after
// the close fail as refused, and the document has vegeta's report and the generator's
// own figures, consistent with each other.
func TestAttackCountsRefusedAfterTheListenerCloses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	srv.Listener = ln
	srv.Start()
	url := srv.URL + "/"
	go func() {
		time.Sleep(700 * time.Millisecond)
		srv.Close()
	}()

	var out bytes.Buffer
	if err := attack([]string{"-target", url, "-rate", "100", "-duration", "1500ms", "-keepalive=false"}, &out); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Requests    uint64            `json:"requests"`
		StatusCodes map[string]uint64 `json:"status_codes"`
		Loadgen     Summary           `json:"loadgen"`
	}
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out.String())
	}
	s := doc.Loadgen
	if s.Requests != doc.Requests || s.Requests < 100 {
		t.Fatalf("requests: loadgen %d, vegeta %d, want ≥ 100 and equal", s.Requests, doc.Requests)
	}
	if s.OK == 0 || s.OK != doc.StatusCodes["200"] {
		t.Fatalf("ok: loadgen %d, vegeta 200s %d", s.OK, doc.StatusCodes["200"])
	}
	if s.FailuresByKind["refused"] == 0 {
		t.Fatalf("no refused request after the listener closed: %+v", s.FailuresByKind)
	}
	if s.OK+s.Failed != s.Requests || uint64(len(s.Failures)) != s.Failed {
		t.Fatalf("counts disagree: %+v", s)
	}
	var sent, failed int64
	for _, sec := range s.Seconds {
		sent += sec[1]
		failed += sec[2]
	}
	if uint64(sent) != s.Requests || uint64(failed) != s.Failed {
		t.Fatalf("per-second counts %d/%d, totals %d/%d", sent, failed, s.Requests, s.Failed)
	}
	if s.CPUSecs <= 0 || s.WallSecs < 1.4 {
		t.Fatalf("own figures: cpu %.3fs wall %.3fs", s.CPUSecs, s.WallSecs)
	}
}

// The no-op webhook answers a real AdmissionReview over TLS with its own certificate:
// allowed, the same uid, no patch; anything else is a 400.
func TestAdmitAllowsEverything(t *testing.T) {
	cert, certPEM, err := selfSigned("noop.bench.svc")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(review))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(certPEM) {
		t.Fatal("the PEM is not a certificate")
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "noop.bench.svc"}}}
	body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","object":{}}}`
	resp, err := client.Post(srv.URL, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got struct {
		Response map[string]any `json:"response"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Response["uid"] != "u-1" || got.Response["allowed"] != true || got.Response["patch"] != nil {
		t.Fatalf("response %v", got.Response)
	}
	bad, err := client.Post(srv.URL, "application/json", strings.NewReader("garbage"))
	if err != nil {
		t.Fatal(err)
	}
	bad.Body.Close()
	if bad.StatusCode != http.StatusBadRequest {
		t.Fatalf("garbage: status %d", bad.StatusCode)
	}
}
