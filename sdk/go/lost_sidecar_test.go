package lameduck_test

// Losing the sidecar while deregistering costs no traffic (docs/protocol.md §6): the SDK
// serves on until the deregister phase's planned end, reconnecting meanwhile, and drains
// with the sequence's deadline if the sidecar is not back.

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
)

// slack bounds timing assertions on a loaded machine.
const slack = 300 * time.Millisecond

// servingApp is an SDK serving HTTP through Serve, with one cleanup function that
// records the deadline it was given.
type servingApp struct {
	t      *testing.T
	sd     *lameduck.Shutdown
	url    string
	client *http.Client
	served chan error

	drainedAt chan time.Time // when Draining was closed
	finished  bool           // Serve returned

	mu        sync.Mutex
	cleanups  int
	deadlines []time.Time
}

func serveApp(t *testing.T, sd *lameduck.Shutdown) *servingApp {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := &servingApp{
		t:         t,
		sd:        sd,
		url:       "http://" + ln.Addr().String() + "/",
		client:    &http.Client{Transport: &http.Transport{}, Timeout: ioTimeout},
		served:    make(chan error, 1),
		drainedAt: make(chan time.Time, 1),
	}
	sd.Defer(func(ctx context.Context) error {
		deadline, _ := ctx.Deadline()
		a.mu.Lock()
		defer a.mu.Unlock()
		a.cleanups++
		a.deadlines = append(a.deadlines, deadline)
		return nil
	})
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	go func() { a.served <- sd.Serve(context.Background(), &http.Server{Handler: mux}, ln) }()
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-sd.Draining():
			a.drainedAt <- time.Now()
		case <-stop:
		}
	}()
	t.Cleanup(func() {
		if !a.finished {
			// A test that failed half-way: end the shutdown so that Serve returns.
			sd.Terminate()
			select {
			case <-a.served:
			case <-time.After(ioTimeout):
			}
		}
		close(stop)
		<-watched
		a.client.CloseIdleConnections()
	})
	return a
}

// getWhileDeregistering checks that a request succeeds, asks the client to close its
// connection, and that the drain has not started.
func (a *servingApp) getWhileDeregistering() {
	a.t.Helper()
	resp, err := a.client.Get(a.url)
	if err != nil {
		a.t.Fatalf("request while deregistering: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !resp.Close {
		a.t.Fatalf("while deregistering: status %d, Connection: close %v", resp.StatusCode, resp.Close)
	}
	select {
	case <-a.sd.Draining():
		a.t.Fatal("drained while it should serve")
	default:
	}
}

// waitDrain returns when the drain started.
func (a *servingApp) waitDrain() time.Time {
	a.t.Helper()
	select {
	case at := <-a.drainedAt:
		return at
	case <-time.After(ioTimeout):
		a.t.Fatal("no drain")
		return time.Time{}
	}
}

// finish plays the kubelet's SIGTERM and checks that Serve returns cleanly with the
// cleanup run exactly once; it returns the cleanup's deadline.
func (a *servingApp) finish() time.Time {
	a.t.Helper()
	a.sd.Terminate()
	select {
	case err := <-a.served:
		a.finished = true
		if err != nil {
			a.t.Fatalf("Serve: %v", err)
		}
	case <-time.After(ioTimeout):
		a.t.Fatal("Serve did not return")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cleanups != 1 {
		a.t.Fatalf("the cleanup ran %d times, want once", a.cleanups)
	}
	return a.deadlines[0]
}

// deregister sends a deregister with a plan and reads the baseline activity. It returns
// the plan's times as the SDK sees them (whole milliseconds).
func deregister(p *peer, phaseEnd, deadline time.Duration) (time.Time, time.Time) {
	p.t.Helper()
	now := time.Now()
	end, last := now.Add(phaseEnd).UnixMilli(), now.Add(deadline).UnixMilli()
	p.sendf(`{"type":"deregister","phase_end_unix_ms":%d,"deadline_unix_ms":%d}`, end, last)
	p.read("activity")
	return time.UnixMilli(end), time.UnixMilli(last)
}

func checkDrainedAtPlannedEnd(t *testing.T, drainedAt, phaseEnd time.Time) {
	t.Helper()
	// The SDK works in whole milliseconds.
	if drainedAt.Before(phaseEnd.Add(-5*time.Millisecond)) || drainedAt.After(phaseEnd.Add(2*slack)) {
		t.Errorf("the drain started %v after the planned end of the phase", drainedAt.Sub(phaseEnd))
	}
}

func TestSidecarLostWhileDeregisteringServesUntilThePlannedEnd(t *testing.T) {
	checkGoroutines(t)
	sidecar := newFakeSidecar(t)
	sd, p := startConnectedTo(t, sidecar, 30)
	app := serveApp(t, sd)
	phaseEnd, deadline := deregister(p, 1500*time.Millisecond, 6*time.Second)
	sidecar.stop()
	p.conn.Close()

	served := 0
	for time.Until(phaseEnd) > slack {
		app.getWhileDeregistering()
		served++
		time.Sleep(100 * time.Millisecond)
	}
	if served < 3 {
		t.Errorf("only %d requests before the planned end", served)
	}
	checkDrainedAtPlannedEnd(t, app.waitDrain(), phaseEnd)
	if got := app.finish(); !got.Equal(deadline) {
		t.Errorf("cleanup deadline %v, want the deregister's %v (counted from T0)", got, deadline)
	}
	if sd.Connected() {
		t.Error("connected to a stopped sidecar")
	}
}

func TestSidecarBackBeforeThePlannedEndResumesTheSequence(t *testing.T) {
	checkGoroutines(t)
	sidecar := newFakeSidecar(t)
	sd, p := startConnectedTo(t, sidecar, 30)
	app := serveApp(t, sd)
	phaseEnd, deadline := deregister(p, 1500*time.Millisecond, 8*time.Second)
	sidecar.stop()
	p.conn.Close()

	time.Sleep(250 * time.Millisecond)
	app.getWhileDeregistering()
	time.Sleep(250 * time.Millisecond)
	sidecar.restart()
	back := sidecar.accept()
	if hello := back.read("hello"); hello["container"] != "web" {
		t.Errorf("hello = %v", hello)
	}
	// The restarted sidecar resumes the shutdown: deregister again, then (later) drain.
	back.sendf(`{"type":"welcome","v":1,"grace_seconds":30}`)
	back.sendf(`{"type":"deregister","phase_end_unix_ms":%d,"deadline_unix_ms":%d}`, phaseEnd.UnixMilli(), deadline.UnixMilli())
	if m := back.read("activity"); m["accepted_total"] != json.Number("1") {
		t.Errorf("baseline activity %v, want the one request served meanwhile", m)
	}

	// The sidecar is back: its drain, not the planned end, ends the phase.
	for time.Until(phaseEnd) > -slack {
		app.getWhileDeregistering()
		time.Sleep(100 * time.Millisecond)
	}
	drainDeadline := time.Now().Add(5 * time.Second).UnixMilli()
	back.sendf(`{"type":"drain","deadline_unix_ms":%d}`, drainDeadline)
	app.waitDrain()
	if m := back.read("drained"); m["inflight_at_start"] != json.Number("0") {
		t.Errorf("drained = %v", m)
	}
	if m := back.read("done"); m["ok"] != true {
		t.Errorf("done = %v", m)
	}
	if got := app.finish(); !got.Equal(time.UnixMilli(drainDeadline)) {
		t.Errorf("cleanup deadline %v, want the drain's %v", got, time.UnixMilli(drainDeadline))
	}
}

func TestSidecarThatNeverWelcomesDoesNotProlongThePhase(t *testing.T) {
	checkGoroutines(t)
	sidecar := newFakeSidecar(t)
	sd, p := startConnectedTo(t, sidecar, 30)
	app := serveApp(t, sd)
	phaseEnd, deadline := deregister(p, time.Second, 6*time.Second)
	p.conn.Close()
	// Still listening, never answering: the SDK's hello waits for a welcome in vain.
	silent := sidecar.accept()
	silent.read("hello")

	checkDrainedAtPlannedEnd(t, app.waitDrain(), phaseEnd)
	if got := app.finish(); !got.Equal(deadline) {
		t.Errorf("cleanup deadline %v, want the deregister's %v", got, deadline)
	}
}

func TestOlderSidecarLostWhileDeregisteringDrainsAtOnce(t *testing.T) {
	checkGoroutines(t)
	sidecar := newFakeSidecar(t)
	sd, p := startConnectedTo(t, sidecar, 4)
	app := serveApp(t, sd)
	deregistered := time.Now()
	p.send(`{"type":"deregister"}` + "\n")
	p.read("activity")
	sidecar.stop()
	p.conn.Close()
	lost := time.Now()

	if at := app.waitDrain(); at.Sub(lost) > slack {
		t.Errorf("the drain started %v after the loss, want at once", at.Sub(lost))
	}
	// Without a plan: the grace period (4 s) counts from the deregister, less 2 s.
	want := deregistered.Add(2 * time.Second)
	if got := app.finish(); got.Sub(want).Abs() > slack {
		t.Errorf("cleanup deadline %v after the deregister, want 2s", got.Sub(deregistered))
	}
}
