package lameduck_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	lameduck "github.com/lameduck-dev/lameduck/sdk/go"
	"github.com/lameduck-dev/lameduck/sdk/go/lameducktest"
)

// The process tests run this test binary again as the app container's process, with
// envTestApp set: TestMain then runs testApp instead of the tests.
const (
	envTestApp       = "SDK_TEST_APP"
	envCleanupMillis = "SDK_TEST_APP_CLEANUP_MILLIS"
)

func TestMain(m *testing.M) {
	if os.Getenv(envTestApp) != "" {
		os.Exit(testApp())
	}
	os.Exit(m.Run())
}

// testApp is a small HTTP service using the SDK the documented way. It prints what
// happens to it, one line per event, for the test to check.
func testApp() int {
	cleanup, _ := strconv.Atoi(os.Getenv(envCleanupMillis))
	sd, err := lameduck.Start(context.Background(), lameduck.Options{})
	if err != nil {
		fmt.Println("start:", err)
	}
	fmt.Println("connected:", sd.Connected())

	sigterm := make(chan os.Signal, 1)
	signal.Notify(sigterm, syscall.SIGTERM)
	go func() {
		for range sigterm {
			fmt.Println("got SIGTERM")
		}
	}()

	sd.Defer(func(context.Context) error {
		fmt.Println("cleanup started")
		time.Sleep(time.Duration(cleanup) * time.Millisecond) // a flush that ignores ctx
		fmt.Println("cleanup finished")
		return nil
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Println("listening on", ln.Addr())
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	}), ReadHeaderTimeout: 5 * time.Second}
	if err := sd.Serve(context.Background(), srv, ln); err != nil {
		fmt.Println("serve:", err)
		return 1
	}
	fmt.Println("serve returned")

	// The SDK and the server must have left no goroutine behind.
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		var leaked []string
		for _, stack := range goroutines() {
			if strings.Contains(stack, "lameduck/sdk/go.") || strings.Contains(stack, "net/http.") {
				leaked = append(leaked, stack)
			}
		}
		if len(leaked) == 0 {
			break
		}
		if time.Now().After(deadline) {
			fmt.Printf("leaked goroutines:\n%s\n", strings.Join(leaked, "\n\n"))
			return 3
		}
	}
	fmt.Println("no leaked goroutines")
	return 0
}

// startTestApp starts testApp in a pod whose sidecar ends the deregister phase quickly.
func startTestApp(t *testing.T, grace time.Duration, cleanup time.Duration) (*lameducktest.Pod, *lameducktest.App) {
	t.Helper()
	pod := lameducktest.NewPod(t, lameducktest.Config{
		GracePeriod: grace,
		SidecarArgs: []string{"--min-delay-millis", "100", "--quiet-period-millis", "200", "--max-delay-millis", "1000"},
		PreStopArgs: []string{"--fallback-delay-millis", "1000"},
	})
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envTestApp+"=1", fmt.Sprintf("%s=%d", envCleanupMillis, cleanup.Milliseconds()),
		"GORACE=atexit_sleep_ms=0") // under -race, exit would otherwise wait 1 s

	app := pod.Start(cmd)
	app.WaitForOutput(t, "listening on", 10*time.Second)
	if !app.HasOutput("connected: true") {
		t.Fatalf("the app did not connect to the sidecar:\n%s", app.Output())
	}
	return pod, app
}

// checkAcked checks a shutdown that went by the book.
func checkAcked(t *testing.T, term *lameducktest.Termination, app *lameducktest.App) {
	t.Helper()
	if term.Report == nil {
		t.Fatalf("no termination report: %v", term.ReportError)
	}
	if term.Report.Outcome != "acked" || len(term.Report.Apps) != 1 || term.Report.Apps[0].Outcome != "acked" {
		t.Errorf("report %s, want outcome acked for one app", term.ReportRaw)
	}
	if term.Report.Apps[0].PID != app.Pid() {
		t.Errorf("report names pid %d, the app is %d", term.Report.Apps[0].PID, app.Pid())
	}
	if term.PreStopTimedOut || term.Killed || term.ExitCode != 0 {
		t.Errorf("termination %v, want the hook released in time and a clean exit", term)
	}
	if term.SIGTERM <= 0 || term.SIGTERM < term.PreStop {
		t.Errorf("termination %v, want SIGTERM after the hook returned", term)
	}
	for _, line := range []string{"cleanup finished", "serve returned", "no leaked goroutines"} {
		if !app.HasOutput(line) {
			t.Errorf("the app did not print %q:\n%s", line, app.Output())
		}
	}
	if n := strings.Count(app.Output(), "cleanup started"); n != 1 {
		t.Errorf("the cleanup ran %d times", n)
	}
}

func TestProcessFastAppAcked(t *testing.T) {
	pod, app := startTestApp(t, 5*time.Second, 50*time.Millisecond)
	term := pod.Delete()
	checkAcked(t, term, app)
	// SIGTERM follows the hook at once, and the app, done already, exits at once.
	if term.Exited-term.PreStop > 2*time.Second {
		t.Errorf("the app exited %v after the hook returned", term.Exited-term.PreStop)
	}
}

func TestProcessSlowCleanupAcked(t *testing.T) {
	const cleanup = 2 * time.Second
	pod, app := startTestApp(t, 6*time.Second, cleanup)
	term := pod.Delete()
	checkAcked(t, term, app)
	if term.PreStop < cleanup {
		t.Errorf("the hook returned after %v, before the %v cleanup could finish", term.PreStop, cleanup)
	}
	if got := term.Report.PhasesMS["cleanup"]; got < cleanup.Milliseconds() {
		t.Errorf("report: cleanup phase %d ms, want at least %d", got, cleanup.Milliseconds())
	}
}

func TestProcessCleanupPastDeadline(t *testing.T) {
	// Grace 3 s: the sidecar keeps 1.5 s back (half of G), so it releases the hook at
	// 1.5 s; the kubelet SIGTERMs then and SIGKILLs at 3.5 s (its 2 s minimum).
	pod, app := startTestApp(t, 3*time.Second, 20*time.Second)
	term := pod.Delete()
	if term.Report == nil {
		t.Fatalf("no termination report: %v", term.ReportError)
	}
	if term.Report.Outcome != "timeout" {
		t.Errorf("report %s, want outcome timeout", term.ReportRaw)
	}
	if term.PreStopTimedOut {
		t.Errorf("the hook ran until the grace deadline (%v): the sidecar must release it before", term.PreStop)
	}
	if !term.Killed || term.SIGTERM <= 0 || term.SIGTERM >= term.SIGKILL {
		t.Errorf("termination %v, want SIGTERM, then SIGKILL", term)
	}
	if !app.HasOutput("got SIGTERM") {
		t.Errorf("the app did not see SIGTERM before SIGKILL:\n%s", app.Output())
	}
	if !app.HasOutput("cleanup started") || app.HasOutput("cleanup finished") {
		t.Errorf("want a cleanup cut short:\n%s", app.Output())
	}
}

func TestProcessSidecarKilledMidCleanup(t *testing.T) {
	pod, app := startTestApp(t, 6*time.Second, 1500*time.Millisecond)
	terminated := make(chan *lameducktest.Termination)
	go func() { terminated <- pod.Delete() }()
	app.WaitForOutput(t, "cleanup started", 5*time.Second)
	pod.KillSidecar()
	term := <-terminated
	if term.Killed || term.ExitCode != 0 {
		t.Errorf("termination %v, want a clean exit", term)
	}
	for _, line := range []string{"cleanup finished", "serve returned", "no leaked goroutines"} {
		if !app.HasOutput(line) {
			t.Errorf("the app did not print %q:\n%s", line, app.Output())
		}
	}
}

func TestProcessSidecarKilledWhileServing(t *testing.T) {
	// A sidecar that crashes before the shutdown: the app keeps serving, and its cleanup
	// still runs once on SIGTERM (the hook cannot reach the sidecar and waits its
	// fallback delay; the kubelet then sends SIGTERM).
	pod, app := startTestApp(t, 8*time.Second, 50*time.Millisecond)
	pod.KillSidecar()
	term := pod.Delete()
	if term.Killed || term.ExitCode != 0 {
		t.Errorf("termination %v, want a clean exit", term)
	}
	for _, line := range []string{"cleanup finished", "no leaked goroutines"} {
		if !app.HasOutput(line) {
			t.Errorf("the app did not print %q:\n%s", line, app.Output())
		}
	}
	if n := strings.Count(app.Output(), "cleanup started"); n != 1 {
		t.Errorf("the cleanup ran %d times", n)
	}
}
