// Command go-naive is the lameduck demo service written the way many Go services are:
// the same endpoints and records as examples/go-web, but no SDK. On SIGTERM a goroutine
// calls os.Exit(0), so the deferred flush in main never runs and every buffered record is
// lost. It is the baseline of the demo: lost data = acknowledged requests − lines in the
// records file.
//
// Environment: LISTEN_ADDR (default 0.0.0.0:8080), REQUEST_MILLIS (default 20),
// CLEANUP_MILLIS (default 500), RECORDS_DIR (default /tmp/records); records would go to
// <dir>/<HOSTNAME or pid>.records.
package main

import (
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	request := millis("REQUEST_MILLIS", 20)
	cleanup := millis("CLEANUP_MILLIS", 500)
	path := recordsPath(envOr("RECORDS_DIR", "/tmp/records"))

	records := &recordBuffer{}
	// The flush is deferred, as it would be in many services. It never runs: see below.
	defer func() {
		time.Sleep(cleanup)
		n, err := records.flush(path)
		if err != nil {
			log.Printf("flushing records: %v", err)
			return
		}
		fmt.Printf("flushed %d records\n", n)
	}()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	go func() {
		sig := <-sigs
		fmt.Printf("got %v, exiting\n", sig)
		os.Exit(0) // deferred functions do not run: the buffered records are lost
	}()

	ln, err := net.Listen("tcp", envOr("LISTEN_ADDR", "0.0.0.0:8080"))
	if err != nil {
		log.Print(err)
		return
	}
	fmt.Printf("listening on %s\n", ln.Addr())

	var seq atomic.Uint64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(request)
		n := seq.Add(1)
		records.add(n)
		fmt.Fprintf(w, "ok %d\n", n)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(ln); err != nil {
		log.Print(err)
	}
}

func envOr(name, fallback string) string {
	if v := strings.TrimSpace(os.Getenv(name)); v != "" {
		return v
	}
	return fallback
}

func millis(name string, fallback int) time.Duration {
	n, err := strconv.ParseUint(strings.TrimSpace(os.Getenv(name)), 10, 32)
	if err != nil {
		return time.Duration(fallback) * time.Millisecond
	}
	return time.Duration(n) * time.Millisecond
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
// until the flush.
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
