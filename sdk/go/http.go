package lameduck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Listener wraps ln so that the connections it accepts are counted and reported to the
// sidecar, which ends the deregister phase once no new connection arrives. Wrapping a
// listener twice counts once.
func (s *Shutdown) Listener(ln net.Listener) net.Listener {
	if l, ok := ln.(*countingListener); ok && l.shutdown == s {
		return ln
	}
	s.listeners.Add(1)
	return &countingListener{Listener: ln, shutdown: s}
}

type countingListener struct {
	net.Listener
	shutdown *Shutdown
}

func (l *countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err == nil {
		l.shutdown.connections.Add(1)
	}
	return conn, err
}

// Handler wraps h so that requests in flight are counted (the drain waits for them) and,
// once the pod is deregistering, responses carry "Connection: close" (HTTP/2: GOAWAY)
// so that clients reconnect to another pod. Without a wrapped [Shutdown.Listener],
// requests stand in for accepted connections in the activity reported to the sidecar.
// With Handler in use, the activity counts requests other than the kubelet's probes
// (see [IsKubeletProbe]); a bare [Shutdown.Listener] cannot tell them apart.
func (s *Shutdown) Handler(h http.Handler) http.Handler {
	if m, ok := h.(*middleware); ok && m.shutdown == s {
		return h
	}
	return &middleware{next: h, shutdown: s}
}

type middleware struct {
	next     http.Handler
	shutdown *Shutdown
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s := m.shutdown
	s.middlewareSeen.Store(true)
	// The kubelet's probes keep arriving while the pod deregisters; counting them as
	// traffic would keep the sidecar waiting for a quiet period that never comes.
	if !IsKubeletProbe(r) {
		s.requests.Add(1)
	}
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	select {
	case <-s.deregistering:
		w.Header().Set("Connection", "close")
	default:
	}
	m.next.ServeHTTP(w, r)
}

// Serve serves srv on ln through the whole shutdown sequence and returns once the process
// may exit. It wraps ln with [Shutdown.Listener] and srv.Handler (or
// http.DefaultServeMux) with [Shutdown.Handler]; disables keep-alives when the pod starts
// deregistering; and registers a drain function that calls srv.Shutdown with the
// sidecar's deadline (and srv.Close if the deadline passes first). Cancelling ctx starts
// the shutdown, as SIGTERM would.
//
// The error joins the server's own failure, if it stopped for another reason than the
// shutdown (the cleanup functions still run), with the error of [Shutdown.Wait].
func (s *Shutdown) Serve(ctx context.Context, srv *http.Server, ln net.Listener) error {
	ln = s.Listener(ln)
	handler := srv.Handler
	if handler == nil {
		handler = http.DefaultServeMux
	}
	srv.Handler = s.Handler(handler)
	s.OnDrain(func(ctx context.Context) error {
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
			return fmt.Errorf("shutting down the HTTP server: %w", err)
		}
		return nil
	})

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	stopWatching := make(chan struct{})
	watching := make(chan struct{})
	go func() {
		defer close(watching)
		select {
		case <-s.Deregistering():
			// Also closes idle keep-alive connections, so their clients reconnect elsewhere.
			srv.SetKeepAlivesEnabled(false)
		case <-stopWatching:
		}
	}()

	var serveErr error
	serveReturned := false
	select {
	case err := <-served:
		serveReturned = true
		if !errors.Is(err, http.ErrServerClosed) {
			serveErr = fmt.Errorf("serving HTTP: %w", err)
			s.Terminate()
		}
	case <-ctx.Done():
		s.Terminate()
	case <-s.Draining():
	}
	err := s.Wait(context.Background())
	close(stopWatching)
	<-watching
	if !serveReturned {
		srv.Close() // only matters if the drain function never ran
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			serveErr = fmt.Errorf("serving HTTP: %w", err)
		}
	}
	return errors.Join(serveErr, err)
}

// IsKubeletProbe reports whether r is a kubelet liveness, readiness or startup probe
// (User-Agent "kube-probe/<version>"). Such requests are not counted as traffic.
func IsKubeletProbe(r *http.Request) bool {
	return strings.HasPrefix(r.UserAgent(), "kube-probe/")
}
