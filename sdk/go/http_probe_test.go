package lameduck

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestKubeletProbesAreNotTraffic(t *testing.T) {
	s := &Shutdown{deregistering: make(chan struct{})}
	h := s.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	probe := httptest.NewRequest("GET", "/healthz", nil)
	probe.Header.Set("User-Agent", "kube-probe/1.34")
	if !IsKubeletProbe(probe) {
		t.Fatal("kube-probe/1.34 not recognised as a kubelet probe")
	}
	h.ServeHTTP(httptest.NewRecorder(), probe)
	h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
	if got := s.acceptedTotal(); got != 1 {
		t.Fatalf("acceptedTotal = %d, want 1 (the probe must not count)", got)
	}
	s.connections.Add(5)
	s.listeners.Add(1)
	if got := s.acceptedTotal(); got != 1 {
		t.Fatalf("acceptedTotal = %d with a listener, want the request count 1", got)
	}
}
