// Command go-web is the lameduck demo service in Go, the twin of examples/rust-web: it
// holds each request in flight for a while and appends a record per acknowledged request
// to an in-memory batch that only its cleanup writes to disk. If the process is killed
// before the cleanup, the records are lost, and that is visible: lost data = acknowledged
// requests − lines in the records file. It uses the lameduck Go SDK, so its cleanup runs
// before the pod is let go.
//
// Environment:
//   - LISTEN_ADDR (default 0.0.0.0:8080)
//   - REQUEST_MILLIS (default 20): how long each GET / is held in flight
//   - CLEANUP_MILLIS (default 500): how long the cleanup takes before the flush
//   - RECORDS_DIR (default /tmp/records): records go to <dir>/<HOSTNAME or pid>.records
//   - LAMEDUCK_SOCKET, LAMEDUCK_CONTAINER: set by the lameduck webhook
//
// Stdout carries one line per step of the shutdown, for people and test harnesses:
// "listening on ADDR", "draining (source: S, deadline in N ms)", "server stopped",
// "flushed N records", "shutdown complete: ok" (or ": failed: …").
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
)

func main() {
	os.Exit(run())
}

func run() int {
	settings, err := settingsFromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-web:", err)
		return 2
	}

	sd, err := lameduck.Start(context.Background(), lameduck.Options{})
	if err != nil {
		log.Printf("%v; shutting down on SIGTERM without the sidecar", err)
	}

	records := &recordBuffer{}
	path := recordsPath(settings.recordsDir)
	sd.Defer(func(context.Context) error {
		time.Sleep(settings.cleanup) // the slow part of a real flush
		n, err := records.flush(path)
		if err != nil {
			return fmt.Errorf("flushing records: %w", err)
		}
		fmt.Printf("flushed %d records\n", n)
		return nil
	})
	sd.OnDrain(func(ctx context.Context) error {
		source := "signal"
		if sd.Connected() {
			source = "sidecar"
		}
		deadline, _ := ctx.Deadline()
		fmt.Printf("draining (source: %s, deadline in %d ms)\n", source, time.Until(deadline).Milliseconds())
		return nil
	})

	ln, err := net.Listen("tcp", settings.listenAddr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "go-web: cannot listen on %s: %v\n", settings.listenAddr, err)
		return 1
	}
	fmt.Printf("listening on %s\n", ln.Addr())

	var seq atomic.Uint64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(settings.request)
		n := seq.Add(1)
		records.add(n) // before the response: every acknowledged request has a record
		fmt.Fprintf(w, "ok %d\n", n)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	err = sd.Serve(context.Background(), srv, ln)
	fmt.Println("server stopped")
	if err != nil {
		fmt.Printf("shutdown complete: failed: %v\n", err)
		return 1
	}
	fmt.Println("shutdown complete: ok")
	return 0
}

type settings struct {
	listenAddr string
	request    time.Duration
	cleanup    time.Duration
	recordsDir string
}

func settingsFromEnv() (settings, error) {
	request, err := millis("REQUEST_MILLIS", 20)
	if err != nil {
		return settings{}, err
	}
	cleanup, err := millis("CLEANUP_MILLIS", 500)
	if err != nil {
		return settings{}, err
	}
	return settings{
		listenAddr: envOr("LISTEN_ADDR", "0.0.0.0:8080"),
		request:    request,
		cleanup:    cleanup,
		recordsDir: envOr("RECORDS_DIR", "/tmp/records"),
	}, nil
}

func envOr(name, fallback string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return fallback
}

func millis(name string, fallback int) (time.Duration, error) {
	v := strings.TrimSpace(os.Getenv(name))
	if v == "" {
		return time.Duration(fallback) * time.Millisecond, nil
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a number of milliseconds", name, v)
	}
	return time.Duration(n) * time.Millisecond, nil
}

// recordsPath is <dir>/<HOSTNAME or pid>.records.
func recordsPath(dir string) string {
	name := os.Getenv("HOSTNAME")
	if name == "" {
		name = strconv.Itoa(os.Getpid())
	}
	return filepath.Join(dir, name+".records")
}

// recordBuffer is the batching writer: records of acknowledged requests, kept in memory
// until the cleanup flushes them.
type recordBuffer struct {
	mu      sync.Mutex
	pending []uint64
}

func (b *recordBuffer) add(seq uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.pending = append(b.pending, seq)
}

// flush appends every pending record, one per line, to path and fsyncs it.
func (b *recordBuffer) flush(path string) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return 0, err
	}
	var text strings.Builder
	for _, seq := range b.pending {
		fmt.Fprintf(&text, "%d\n", seq)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return 0, err
	}
	if _, err := f.WriteString(text.String()); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	n := len(b.pending)
	b.pending = nil
	return n, nil
}
