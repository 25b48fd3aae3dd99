package lameduck_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
)

// start starts the SDK against sidecar (nil: no sidecar) with quiet logs, and arranges
// for it to be closed when t ends.
func start(t *testing.T, sidecar *fakeSidecar) *lameduck.Shutdown {
	t.Helper()
	opts := lameduck.Options{Container: "web", Logger: quietLogger}
	if sidecar == nil {
		t.Setenv(lameduck.EnvSocket, "")
	} else {
		opts.Socket = sidecar.path
	}
	sd, err := lameduck.Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { sd.Close() })
	return sd
}

// startConnected starts the SDK and completes the handshake with a fake sidecar.
func startConnected(t *testing.T, graceSeconds int) (*lameduck.Shutdown, *peer) {
	t.Helper()
	return startConnectedTo(t, newFakeSidecar(t), graceSeconds)
}

// startConnectedTo starts the SDK and completes the handshake with sidecar.
func startConnectedTo(t *testing.T, sidecar *fakeSidecar, graceSeconds int) (*lameduck.Shutdown, *peer) {
	t.Helper()
	peers := make(chan *peer, 1)
	go func() {
		p := sidecar.accept()
		p.handshake(graceSeconds)
		peers <- p
	}()
	sd := start(t, sidecar)
	return sd, <-peers
}

func wait(t *testing.T, sd *lameduck.Shutdown) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	err := sd.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatal("Wait did not return")
	}
	return err
}

// journal records the order in which drain and cleanup functions ran.
type journal struct {
	mu      sync.Mutex
	entries []string
}

func (j *journal) add(entry string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.entries = append(j.entries, entry)
}

func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.entries, " ")
}

func (j *journal) step(name string, err error) func(context.Context) error {
	return func(context.Context) error {
		j.add(name)
		return err
	}
}

func TestWithoutSidecarTerminateRunsDrainThenCleanupLIFO(t *testing.T) {
	checkGoroutines(t)
	sd := start(t, nil)
	var j journal
	sd.Defer(j.step("close-db", nil))
	sd.Defer(j.step("flush", nil))
	sd.OnDrain(j.step("drain", nil))
	select {
	case <-sd.Deregistering():
		t.Fatal("deregistering before any shutdown")
	default:
	}
	sd.Terminate()
	if err := wait(t, sd); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if got := j.String(); got != "drain flush close-db" {
		t.Errorf("ran %q, want drain, then cleanup in LIFO order", got)
	}
	<-sd.Deregistering()
	<-sd.Draining()
}

func TestWithoutSidecarSIGTERMStartsShutdown(t *testing.T) {
	checkGoroutines(t)
	sd := start(t, nil)
	var j journal
	sd.Defer(func(ctx context.Context) error {
		deadline, ok := ctx.Deadline()
		// Default grace 30 s minus the 2 s reserve.
		if left := time.Until(deadline); !ok || left < 27*time.Second || left > 28*time.Second {
			t.Errorf("cleanup deadline in %v, want about 28 s", left)
		}
		j.add("flush")
		return nil
	})
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, sd); err != nil || j.String() != "flush" {
		t.Fatalf("Wait = %v after %q", err, j.String())
	}
}

func TestCleanupErrorsAndPanicsAreReportedAndTheRestStillRuns(t *testing.T) {
	checkGoroutines(t)
	sd, p := startConnected(t, 10)
	var j journal
	sd.Defer(j.step("first", nil))
	sd.Defer(func(context.Context) error { panic("boom") })
	sd.Defer(j.step("third", errors.New("disk full")))
	p.sendf(`{"type":"drain","deadline_unix_ms":%d}`, time.Now().Add(5*time.Second).UnixMilli())
	p.read("drained")
	done := p.read("done")
	if done["ok"] != false || !strings.Contains(fmt.Sprint(done["error"]), "disk full") || !strings.Contains(fmt.Sprint(done["error"]), "boom") {
		t.Errorf("done = %v, want ok false naming both failures", done)
	}
	sd.Terminate()
	err := wait(t, sd)
	if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), "panicked: boom") {
		t.Errorf("Wait = %v", err)
	}
	if got := j.String(); got != "third first" {
		t.Errorf("ran %q", got)
	}
}

func TestAfterDoneWaitReturnsOnlyOnSIGTERM(t *testing.T) {
	checkGoroutines(t)
	sd, p := startConnected(t, 10)
	cleanups := 0
	sd.Defer(func(ctx context.Context) error {
		cleanups++
		deadline, _ := ctx.Deadline()
		if left := time.Until(deadline); left < 4*time.Second || left > 5*time.Second {
			t.Errorf("cleanup deadline in %v, want the sidecar's (5 s)", left)
		}
		return nil
	})
	p.send(`{"type":"deregister"}` + "\n")
	p.sendf(`{"type":"drain","deadline_unix_ms":%d}`, time.Now().Add(5*time.Second).UnixMilli())
	if m := p.read("drained"); m["inflight_at_start"] != json.Number("0") {
		t.Errorf("drained = %v", m)
	}
	if m := p.read("done"); m["ok"] != true {
		t.Errorf("done = %v", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := sd.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait returned %v before SIGTERM: the preStop hook would be cut short", err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, sd); err != nil {
		t.Fatal(err)
	}
	if cleanups != 1 {
		t.Errorf("cleanup ran %d times", cleanups)
	}
	p.expectClosed()
}

func TestSIGTERMBeforeDrainRunsCleanupAndTellsTheSidecar(t *testing.T) {
	checkGoroutines(t)
	sd, p := startConnected(t, 10)
	var j journal
	sd.Defer(j.step("flush", nil))
	sd.Terminate()
	if m := p.read("done"); m["ok"] != true {
		t.Errorf("done = %v", m)
	}
	if err := wait(t, sd); err != nil || j.String() != "flush" {
		t.Fatalf("Wait = %v after %q", err, j.String())
	}
}

func TestSidecarLostMidCleanupFinishesAnyway(t *testing.T) {
	checkGoroutines(t)
	sd, p := startConnected(t, 10)
	inCleanup := make(chan struct{})
	release := make(chan struct{})
	var j journal
	sd.Defer(func(context.Context) error {
		close(inCleanup)
		<-release
		j.add("flush")
		return nil
	})
	p.sendf(`{"type":"drain","deadline_unix_ms":%d}`, time.Now().Add(5*time.Second).UnixMilli())
	<-inCleanup
	p.conn.Close()
	time.Sleep(20 * time.Millisecond)
	close(release)
	sd.Terminate()
	if err := wait(t, sd); err != nil || j.String() != "flush" {
		t.Fatalf("Wait = %v after %q", err, j.String())
	}
}

func TestReconnectsToARestartedSidecar(t *testing.T) {
	checkGoroutines(t)
	sidecar := newFakeSidecar(t)
	peers := make(chan *peer, 1)
	go func() {
		p := sidecar.accept()
		p.handshake(10)
		peers <- p
	}()
	sd := start(t, sidecar)
	first := <-peers
	first.conn.Close()

	second := sidecar.accept()
	if hello := second.read("hello"); hello["container"] != "web" {
		t.Errorf("hello = %v", hello)
	}
	// A sidecar restarted during a shutdown sends deregister right after welcome.
	second.send(`{"type":"welcome","v":1,"grace_seconds":12}` + "\n" + `{"type":"deregister"}` + "\n")
	select {
	case <-sd.Deregistering():
	case <-time.After(ioTimeout):
		t.Fatal("no deregister after reconnecting")
	}
	if sd.GracePeriod() != 12*time.Second || !sd.Connected() {
		t.Errorf("grace %v, connected %v", sd.GracePeriod(), sd.Connected())
	}
	second.sendf(`{"type":"drain","deadline_unix_ms":%d}`, time.Now().Add(5*time.Second).UnixMilli())
	second.read("drained")
	second.read("done")
	sd.Terminate()
	if err := wait(t, sd); err != nil {
		t.Fatal(err)
	}
}

func TestStartFailsOverToSignalsWhenTheSidecarRefuses(t *testing.T) {
	checkGoroutines(t)
	sidecar := newFakeSidecar(t)
	go func() {
		p := sidecar.accept()
		p.read("hello")
		p.conn.Close() // what a sidecar does with an unsupported version
	}()
	sd, err := lameduck.Start(context.Background(), lameduck.Options{Socket: sidecar.path, Logger: quietLogger})
	if err == nil || !strings.Contains(err.Error(), "without a welcome") {
		t.Fatalf("Start error = %v", err)
	}
	cleanups := 0
	sd.Defer(func(context.Context) error { cleanups++; return nil })
	sd.Terminate()
	if err := wait(t, sd); err != nil || cleanups != 1 {
		t.Fatalf("Wait = %v, cleanups %d", err, cleanups)
	}
}

func TestStartWithNoSocketFile(t *testing.T) {
	checkGoroutines(t)
	sd, err := lameduck.Start(context.Background(), lameduck.Options{Socket: "/nonexistent/app.sock", Logger: quietLogger})
	if err == nil {
		t.Fatal("Start succeeded without a socket")
	}
	if sd == nil || sd.Connected() {
		t.Fatal("Start must return a usable, unconnected Shutdown")
	}
	sd.Close()
}

func TestLateRegistrationsRunAtOnce(t *testing.T) {
	checkGoroutines(t)
	sd := start(t, nil)
	sd.Terminate()
	if err := wait(t, sd); err != nil {
		t.Fatal(err)
	}
	ran := 0
	sd.Defer(func(ctx context.Context) error { ran++; return nil })
	sd.OnDrain(func(ctx context.Context) error { ran++; return nil })
	if ran != 2 {
		t.Errorf("%d of 2 late functions ran", ran)
	}
}

func TestServeDrainsInFlightRequestsAndReportsActivity(t *testing.T) {
	checkGoroutines(t)
	sd, p := startConnected(t, 10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/"
	entered := make(chan struct{}, 1)
	finish := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("slow") {
			entered <- struct{}{}
			<-finish
		}
		io.WriteString(w, "ok")
	})
	var flushed bool
	sd.Defer(func(context.Context) error { flushed = true; return nil })
	served := make(chan error, 1)
	go func() { served <- sd.Serve(context.Background(), &http.Server{Handler: mux}, ln) }()

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	get := func(url string) (*http.Response, error) {
		resp, err := client.Get(url)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	if resp, err := get(url); err != nil || resp.Close {
		t.Fatalf("before deregister: %v, Connection: close %v", err, resp != nil && resp.Close)
	}

	p.send(`{"type":"deregister"}` + "\n")
	first := p.read("activity")
	<-sd.Deregistering()
	resp, err := get(url)
	if err != nil || !resp.Close {
		t.Fatalf("while deregistering: %v, want Connection: close", err)
	}
	for { // the new connection shows up in the activity
		m := p.read("activity")
		if m["accepted_total"] != first["accepted_total"] {
			break
		}
	}

	slow := make(chan error, 1)
	go func() {
		_, err := get(url + "?slow")
		slow <- err
	}()
	<-entered
	p.sendf(`{"type":"drain","deadline_unix_ms":%d}`, time.Now().Add(5*time.Second).UnixMilli())
	<-sd.Draining()
	time.Sleep(50 * time.Millisecond)
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("still accepting connections while draining")
	}
	close(finish)
	if err := <-slow; err != nil {
		t.Errorf("in-flight request failed during the drain: %v", err)
	}
	if m := p.read("drained"); m["inflight_at_start"] != json.Number("1") {
		t.Errorf("drained = %v, want one request in flight at the start", m)
	}
	if m := p.read("done"); m["ok"] != true || !flushed {
		t.Errorf("done = %v, flushed %v", m, flushed)
	}
	sd.Terminate()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return")
	}
}

func TestServeContextCancelShutsDown(t *testing.T) {
	checkGoroutines(t)
	sd := start(t, nil)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var j journal
	sd.Defer(j.step("flush", nil))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- sd.Serve(ctx, &http.Server{}, ln) }()
	cancel()
	select {
	case err := <-served:
		if err != nil || j.String() != "flush" {
			t.Fatalf("Serve = %v after %q", err, j.String())
		}
	case <-time.After(ioTimeout):
		t.Fatal("Serve did not return")
	}
}

func TestHandlerCountsRequestsWithoutListener(t *testing.T) {
	checkGoroutines(t)
	sd, p := startConnected(t, 10)
	h := sd.Handler(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	if sd.Handler(h) != h {
		t.Error("wrapping twice must not count twice")
	}
	p.send(`{"type":"deregister"}` + "\n")
	if m := p.read("activity"); m["accepted_total"] != json.Number("0") {
		t.Fatalf("activity = %v", m)
	}
	rec := &headerRecorder{header: http.Header{}}
	h.ServeHTTP(rec, &http.Request{})
	h.ServeHTTP(rec, &http.Request{})
	if rec.header.Get("Connection") != "close" {
		t.Error("no Connection: close while deregistering")
	}
	if m := p.read("activity"); m["accepted_total"] != json.Number("2") {
		t.Fatalf("activity = %v, want the two requests", m)
	}
	sd.Terminate()
	p.read("done")
	if err := wait(t, sd); err != nil {
		t.Fatal(err)
	}
}

type headerRecorder struct{ header http.Header }

func (r *headerRecorder) Header() http.Header         { return r.header }
func (r *headerRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *headerRecorder) WriteHeader(int)             {}
