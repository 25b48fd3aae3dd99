package lameduck_test

// Signals, and the deadline of a shutdown a signal starts (docs/protocol.md §6).

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
)

// deadlineRecorder is a cleanup function that records the deadline it was given.
type deadlineRecorder struct {
	mu        sync.Mutex
	deadlines []time.Time
}

func (r *deadlineRecorder) cleanup(ctx context.Context) error {
	deadline, _ := ctx.Deadline()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deadlines = append(r.deadlines, deadline)
	return nil
}

// only returns the one deadline recorded, failing t unless the cleanup ran exactly once.
func (r *deadlineRecorder) only(t *testing.T) time.Time {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.deadlines) != 1 {
		t.Fatalf("the cleanup ran %d times, want once", len(r.deadlines))
	}
	return r.deadlines[0]
}

func TestSIGTERMInAPodWithoutASidecarCountsTheHooksWait(t *testing.T) {
	checkGoroutines(t)
	dir, err := os.MkdirTemp("", "lameduck-sdk-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv(lameduck.EnvSocket, filepath.Join(dir, "nobody-listens.sock"))
	t.Setenv(lameduck.EnvGraceSeconds, "10")
	t.Setenv(lameduck.EnvFallbackDelay, "4000")
	sd, err := lameduck.Start(context.Background(), lameduck.Options{Logger: quietLogger})
	if err == nil {
		t.Fatal("Start reached a sidecar nobody runs")
	}
	t.Cleanup(func() { sd.Close() })
	var rec deadlineRecorder
	sd.Defer(rec.cleanup)

	signalled := time.Now()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, sd); err != nil {
		t.Fatal(err)
	}
	// The hook waited 4 s of the 10 s grace period before SIGTERM: 6 s left, 2 s reserve.
	if got := rec.only(t).Sub(signalled); (got - 4*time.Second).Abs() > slack {
		t.Errorf("the deadline is %v after SIGTERM, want 4s", got)
	}
}

func TestSIGTERMWithASidecarBeforeDeregisterTakesTheWholeGracePeriod(t *testing.T) {
	checkGoroutines(t)
	// An injected container whose hook did not wait: the sidecar is there.
	t.Setenv(lameduck.EnvSocket, "/lameduck/run/app.sock")
	t.Setenv(lameduck.EnvFallbackDelay, "4000")
	sd, p := startConnected(t, 10)
	var rec deadlineRecorder
	sd.Defer(rec.cleanup)
	signalled := time.Now()
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	p.read("done")
	if err := wait(t, sd); err != nil {
		t.Fatal(err)
	}
	if got := rec.only(t).Sub(signalled); (got - 8*time.Second).Abs() > slack {
		t.Errorf("the deadline is %v after SIGTERM, want the grace period less the reserve, 8s", got)
	}
}

func TestEmptySignalsHandlesNoSignal(t *testing.T) {
	checkGoroutines(t)
	t.Setenv(lameduck.EnvSocket, "")
	// The program owns its signals; without this SIGHUP and SIGTERM would end the test.
	own := make(chan os.Signal, 2)
	signal.Notify(own, syscall.SIGHUP, syscall.SIGTERM)
	defer signal.Stop(own)
	sd, err := lameduck.Start(context.Background(), lameduck.Options{Signals: []os.Signal{}, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sd.Close() })
	var rec deadlineRecorder
	sd.Defer(rec.cleanup)

	// SIGURG is the one the Go runtime sends itself all the time.
	for _, sig := range []syscall.Signal{syscall.SIGURG, syscall.SIGHUP, syscall.SIGTERM} {
		if err := syscall.Kill(os.Getpid(), sig); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		select {
		case <-own:
		case <-time.After(ioTimeout):
			t.Fatal("the program's own handler did not get its signals")
		}
	}
	select {
	case <-sd.Deregistering():
		t.Fatal("a signal started the shutdown although Signals is empty")
	case <-time.After(500 * time.Millisecond):
	}

	// The program starts the shutdown itself.
	sd.Terminate()
	if err := wait(t, sd); err != nil {
		t.Fatal(err)
	}
	rec.only(t)
}

func TestGracePeriodPrecedence(t *testing.T) {
	checkGoroutines(t)
	t.Setenv(lameduck.EnvSocket, "")
	for _, c := range []struct {
		env    string
		option time.Duration
		want   time.Duration
	}{
		{"", 0, lameduck.DefaultGracePeriod},
		{"10", 0, 10 * time.Second},
		{" 10\n", 0, 10 * time.Second},
		{"10", 20 * time.Second, 20 * time.Second},
		{"ten", 0, lameduck.DefaultGracePeriod},
		{"-3", 0, lameduck.DefaultGracePeriod},
		{"0", 0, lameduck.DefaultGracePeriod},
	} {
		t.Setenv(lameduck.EnvGraceSeconds, c.env)
		sd, err := lameduck.Start(context.Background(), lameduck.Options{GracePeriod: c.option, Logger: quietLogger})
		if err != nil {
			t.Fatal(err)
		}
		if got := sd.GracePeriod(); got != c.want {
			t.Errorf("%s=%q, GracePeriod %v: %v, want %v", lameduck.EnvGraceSeconds, c.env, c.option, got, c.want)
		}
		sd.Close()
	}

	// The welcome, the pod's own value, wins over both.
	t.Setenv(lameduck.EnvGraceSeconds, "10")
	sidecar := newFakeSidecar(t)
	go func() { sidecar.accept().handshake(12) }()
	sd, err := lameduck.Start(context.Background(), lameduck.Options{Socket: sidecar.path, GracePeriod: 20 * time.Second, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	if got := sd.GracePeriod(); got != 12*time.Second {
		t.Errorf("GracePeriod after a welcome of 12 s: %v", got)
	}
}
