// Package lameducktest runs a program through a pod's shutdown the way the kubelet does,
// against a real lameduck-sidecar binary: exec the preStop hook, SIGTERM the container
// once the hook returned, SIGKILL it at the grace deadline, then stop the sidecar and
// read its termination report. It is for testing services that use package lameduck
// (and the SDK itself), on one machine, without Kubernetes.
package lameducktest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvSidecarBin names the environment variable holding the path of the
// lameduck-sidecar binary.
const EnvSidecarBin = "LAMEDUCK_SIDECAR_BIN"

// minimumGracePeriod is what the kubelet grants after a preStop hook that ran until the
// deadline: a one-off extension before SIGKILL.
const minimumGracePeriod = 2 * time.Second

// SidecarBinary returns the path in LAMEDUCK_SIDECAR_BIN. It fails t, with how to get
// the binary, when the variable is unset or the file is missing: a process test never
// skips silently.
func SidecarBinary(t testing.TB) string {
	t.Helper()
	path := os.Getenv(EnvSidecarBin)
	if path == "" {
		t.Fatalf("%s is not set: build the sidecar with `cargo build -p lameduck-sidecar` and set %s=<repo>/target/debug/lameduck-sidecar, or run `make go-test`", EnvSidecarBin, EnvSidecarBin)
	}
	if info, err := os.Stat(path); err != nil || info.IsDir() {
		t.Fatalf("%s=%s: no such binary (%v): build it with `cargo build -p lameduck-sidecar`, or run `make go-test`", EnvSidecarBin, path, err)
	}
	return path
}

// Config describes the pod.
type Config struct {
	// Sidecar is the lameduck-sidecar binary; empty means SidecarBinary(t).
	Sidecar string
	// GracePeriod is terminationGracePeriodSeconds, in whole seconds; zero means 5 s.
	GracePeriod time.Duration
	// Container is the app container's name; empty means "web".
	Container string
	// SidecarArgs are added to `lameduck-sidecar serve`, e.g. "--drain-mode", "delay".
	SidecarArgs []string
	// PreStopArgs are added to the preStop hook `lameduck-sidecar prestop`, e.g.
	// "--fallback-delay-millis", "1000".
	PreStopArgs []string
}

// Pod is a sidecar process and (once Start was called) one app container process.
type Pod struct {
	t        testing.TB
	cfg      Config
	dir      string
	sidecar  *process
	app      *process
	deleteMu sync.Mutex
	termLog  string
}

// NewPod starts `lameduck-sidecar serve` in a fresh directory and waits until its probe
// succeeds, as the startup probe gates the app containers. Everything is stopped when t
// ends; the sidecar's log is printed if t failed.
func NewPod(t testing.TB, cfg Config) *Pod {
	t.Helper()
	if cfg.Sidecar == "" {
		cfg.Sidecar = SidecarBinary(t)
	}
	if cfg.GracePeriod <= 0 {
		cfg.GracePeriod = 5 * time.Second
	}
	if cfg.Container == "" {
		cfg.Container = "web"
	}
	// Not t.TempDir(): socket paths must stay under 108 bytes.
	dir, err := os.MkdirTemp("", "lameduck-pod-")
	if err != nil {
		t.Fatal(err)
	}
	p := &Pod{t: t, cfg: cfg, dir: dir, termLog: filepath.Join(dir, "termination-log")}
	t.Cleanup(func() {
		p.app.kill()
		p.sidecar.kill()
		if t.Failed() {
			t.Logf("sidecar output:\n%s", p.sidecar.output())
			if p.app != nil {
				t.Logf("app output:\n%s", p.app.output())
			}
		}
		os.RemoveAll(dir)
	})

	args := append([]string{"serve",
		"--dir", dir,
		"--termination-log", p.termLog,
		"--grace-seconds", fmt.Sprint(int(cfg.GracePeriod / time.Second)),
	}, cfg.SidecarArgs...)
	cmd := exec.Command(cfg.Sidecar, args...)
	cmd.Env = append(withoutLameduckEnv(os.Environ()), "NO_COLOR=1")
	p.sidecar = mustStartProcess(t, "sidecar", cmd)

	deadline := time.Now().Add(10 * time.Second)
	for {
		probe := exec.Command(cfg.Sidecar, "probe", "--dir", dir)
		probe.Env = cmd.Env
		if probe.Run() == nil {
			break
		}
		if p.sidecar.exited() || time.Now().After(deadline) {
			t.Fatalf("the sidecar did not become ready:\n%s", p.sidecar.output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	return p
}

// Dir is the shared directory (the pod's /lameduck).
func (p *Pod) Dir() string { return p.dir }

// Socket is the application socket, the value of LAMEDUCK_SOCKET in the app.
func (p *Pod) Socket() string { return filepath.Join(p.dir, "run", "app.sock") }

// Start starts cmd as the app container's process, with LAMEDUCK_SOCKET and
// LAMEDUCK_CONTAINER added to cmd.Env (os.Environ() if nil). Its stdout and stderr are
// captured; see [App.WaitForOutput].
func (p *Pod) Start(cmd *exec.Cmd) *App {
	p.t.Helper()
	if p.app != nil {
		p.t.Fatal("lameducktest: one app per pod")
	}
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(withoutLameduckEnv(cmd.Env),
		"LAMEDUCK_SOCKET="+p.Socket(),
		"LAMEDUCK_CONTAINER="+p.cfg.Container,
	)
	p.app = mustStartProcess(p.t, "app", cmd)
	return &App{p: p.app}
}

// KillSidecar SIGKILLs the sidecar at once, as a crash would.
func (p *Pod) KillSidecar() {
	p.sidecar.signal(syscall.SIGKILL)
}

// Termination is what happened during Delete.
type Termination struct {
	// PreStop is how long the preStop hook ran; PreStopTimedOut says it was still running
	// at the grace deadline.
	PreStop         time.Duration
	PreStopTimedOut bool
	// SIGTERM and SIGKILL are when the app was sent those signals, since the deletion;
	// zero if it was not.
	SIGTERM, SIGKILL time.Duration
	// Exited is when the app exited, since the deletion.
	Exited time.Duration
	// Killed says the app was ended by SIGKILL at the deadline.
	Killed bool
	// ExitCode is the app's exit status, -1 when a signal ended it.
	ExitCode int
	// Report is the sidecar's termination report, nil if it wrote none (see ReportError).
	Report      *Report
	ReportRaw   []byte
	ReportError error
}

// Report is the termination report (docs/protocol.md §7).
type Report struct {
	V            int              `json:"v"`
	T0           string           `json:"t0"`
	GraceSeconds int              `json:"grace_seconds"`
	Outcome      string           `json:"outcome"`
	PhasesMS     map[string]int64 `json:"phases_ms"`
	LastAcceptMS *int64           `json:"last_accept_ms"`
	ReleasedMS   *int64           `json:"released_ms"`
	Apps         []ReportApp      `json:"apps"`
	AppsOmitted  int              `json:"apps_omitted"`
}

// ReportApp is one application in the report.
type ReportApp struct {
	Container string `json:"container"`
	PID       int    `json:"pid"`
	Outcome   string `json:"outcome"`
	Error     string `json:"error"`
}

// Delete does what the kubelet does when the pod is deleted: it runs the app container's
// preStop hook (`lameduck-sidecar prestop`) for at most the grace period, sends SIGTERM
// to the app when the hook returned, SIGKILLs it at the deadline (at least 2 s after
// SIGTERM, the kubelet's extension for a hook that ran to the deadline), and then
// SIGTERMs the sidecar, as native sidecars are stopped after the app containers, and
// reads the termination report.
func (p *Pod) Delete() *Termination {
	p.t.Helper()
	return p.delete()
}

// delete is Delete, safe to call from another goroutine than the test's: it reports
// trouble in the Termination rather than through t.
func (p *Pod) delete() *Termination {
	p.deleteMu.Lock()
	defer p.deleteMu.Unlock()
	if p.app == nil {
		panic("lameducktest: Delete before Start")
	}
	start := time.Now()
	deadline := start.Add(p.cfg.GracePeriod)
	term := &Termination{ExitCode: -1}

	hook := exec.Command(p.cfg.Sidecar, append([]string{"prestop", "--container", p.cfg.Container, "--dir", p.dir}, p.cfg.PreStopArgs...)...)
	hook.Env = withoutLameduckEnv(os.Environ())
	hookProcess, err := startProcess("prestop", hook)
	if err != nil {
		term.ReportError = err
		return term
	}
	select {
	case <-hookProcess.done:
	case <-p.app.done:
		// A container that exits during its hook ends the hook (its processes die with it).
		hookProcess.kill()
	case <-time.After(time.Until(deadline)):
		term.PreStopTimedOut = true
		hookProcess.kill()
	}
	term.PreStop = time.Since(start)

	killAt := deadline
	if until := time.Until(killAt); until < minimumGracePeriod {
		killAt = time.Now().Add(minimumGracePeriod)
	}
	if !p.app.exited() {
		term.SIGTERM = time.Since(start)
		p.app.signal(syscall.SIGTERM)
	}
	select {
	case <-p.app.done:
	case <-time.After(time.Until(killAt)):
		term.SIGKILL = time.Since(start)
		term.Killed = true
		p.app.signal(syscall.SIGKILL)
		<-p.app.done
	}
	term.Exited = p.app.exitedAt.Sub(start)
	if status, ok := p.app.state.Sys().(syscall.WaitStatus); ok && !status.Signaled() {
		term.ExitCode = status.ExitStatus()
	}

	p.sidecar.signal(syscall.SIGTERM)
	select {
	case <-p.sidecar.done:
	case <-time.After(10 * time.Second):
		p.sidecar.kill()
		term.ReportError = errors.New("the sidecar did not exit within 10 s of SIGTERM")
		return term
	}
	term.ReportRaw, term.ReportError = os.ReadFile(p.termLog)
	if term.ReportError == nil {
		var report Report
		if err := json.Unmarshal(term.ReportRaw, &report); err != nil {
			term.ReportError = fmt.Errorf("termination report %q: %w", term.ReportRaw, err)
		} else {
			term.Report = &report
		}
	}
	return term
}

// App is the app container's process.
type App struct{ p *process }

// Pid is the process id.
func (a *App) Pid() int { return a.p.cmd.Process.Pid }

// Output returns what the process wrote to stdout and stderr so far.
func (a *App) Output() string { return a.p.output() }

// WaitForOutput waits until a line containing substr was written and returns it. It
// fails the test after timeout or if the process exits first.
func (a *App) WaitForOutput(t testing.TB, substr string, timeout time.Duration) string {
	t.Helper()
	line, err := a.p.waitFor(substr, timeout)
	if err != nil {
		t.Fatalf("waiting for %q from the app: %v\noutput:\n%s", substr, err, a.Output())
	}
	return line
}

// HasOutput reports whether a line containing substr was written.
func (a *App) HasOutput(substr string) bool {
	_, err := a.p.waitFor(substr, 0)
	return err == nil
}

// process is a started command whose output is captured line by line.
type process struct {
	name     string
	cmd      *exec.Cmd
	done     chan struct{} // closed once Wait returned
	exitedAt time.Time
	state    *os.ProcessState

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced on each new line
}

func mustStartProcess(t testing.TB, name string, cmd *exec.Cmd) *process {
	t.Helper()
	p, err := startProcess(name, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func startProcess(name string, cmd *exec.Cmd) (*process, error) {
	p := &process{name: name, cmd: cmd, done: make(chan struct{}), changed: make(chan struct{})}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = cmd.Stdout // one stream, in order
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the %s (%s): %w", name, cmd.Path, err)
	}
	go func() {
		scanner := bufio.NewScanner(out)
		scanner.Buffer(make([]byte, 64*1024), 1024*1024)
		for scanner.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, scanner.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		_ = cmd.Wait()
		p.exitedAt = time.Now()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *process) signal(sig os.Signal) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(sig)
	}
}

func (p *process) kill() {
	if p == nil {
		return
	}
	p.signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
	}
}

func (p *process) output() string {
	if p == nil {
		return ""
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var b bytes.Buffer
	for _, line := range p.lines {
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.String()
}

func (p *process) waitFor(substr string, timeout time.Duration) (string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for seen := 0; ; {
		p.mu.Lock()
		for ; seen < len(p.lines); seen++ {
			if strings.Contains(p.lines[seen], substr) {
				line := p.lines[seen]
				p.mu.Unlock()
				return line, nil
			}
		}
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.done:
			// Lines written just before the exit are read before done is closed.
			p.mu.Lock()
			n := len(p.lines)
			p.mu.Unlock()
			if seen == n {
				return "", fmt.Errorf("the %s exited", p.name)
			}
		case <-timer.C:
			return "", fmt.Errorf("nothing after %v", timeout)
		}
	}
}

// withoutLameduckEnv drops LAMEDUCK_* variables, which the sidecar and the SDK read, so
// that the test's own environment does not leak into the pod (except the binary path).
func withoutLameduckEnv(env []string) []string {
	kept := env[:0:0]
	for _, kv := range env {
		if strings.HasPrefix(kv, "LAMEDUCK_") && !strings.HasPrefix(kv, EnvSidecarBin+"=") {
			continue
		}
		kept = append(kept, kv)
	}
	return kept
}

// String summarizes the termination on one line, for test logs.
func (t *Termination) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "preStop %v", t.PreStop.Round(time.Millisecond))
	if t.PreStopTimedOut {
		b.WriteString(" (ran to the deadline)")
	}
	if t.SIGTERM > 0 {
		fmt.Fprintf(&b, ", SIGTERM at %v", t.SIGTERM.Round(time.Millisecond))
	}
	if t.SIGKILL > 0 {
		fmt.Fprintf(&b, ", SIGKILL at %v", t.SIGKILL.Round(time.Millisecond))
	}
	fmt.Fprintf(&b, ", exited at %v", t.Exited.Round(time.Millisecond))
	if t.Killed {
		b.WriteString(" (killed)")
	} else {
		fmt.Fprintf(&b, " with status %d", t.ExitCode)
	}
	if t.ReportError != nil {
		fmt.Fprintf(&b, "; no report: %v", t.ReportError)
	} else {
		fmt.Fprintf(&b, "; report %s", bytes.TrimSpace(t.ReportRaw))
	}
	return b.String()
}
