package lameduck

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Environment variables set by the lameduck webhook in every selected app container.
const (
	// EnvSocket holds the path of the sidecar's application socket.
	EnvSocket = "LAMEDUCK_SOCKET"
	// EnvContainer holds the name of the container the process runs in.
	EnvContainer = "LAMEDUCK_CONTAINER"
	// EnvGraceSeconds holds the pod's grace period in seconds.
	EnvGraceSeconds = "LAMEDUCK_GRACE_SECONDS"
	// EnvFallbackDelay holds, in milliseconds, how long the container's preStop hook
	// waits when it cannot reach the sidecar (5000 when unset).
	EnvFallbackDelay = "LAMEDUCK_FALLBACK_DELAY_MILLIS"
)

// DefaultGracePeriod is the grace period assumed when no sidecar says otherwise: the
// Kubernetes default for terminationGracePeriodSeconds.
const DefaultGracePeriod = 30 * time.Second

const (
	// handshakeTimeout bounds connecting and the hello/welcome exchange.
	handshakeTimeout = 5 * time.Second
	// activityInterval is the shortest gap between two activity messages.
	activityInterval = 100 * time.Millisecond
	// writeTimeout bounds one write to the sidecar; the socket is local, so only a stuck
	// sidecar makes a write wait.
	writeTimeout = 2 * time.Second
	// firstReconnectBackoff is the first wait before trying to reach a lost sidecar again.
	firstReconnectBackoff = 100 * time.Millisecond
	// maxReconnectBackoff caps the wait between attempts to reach a restarted sidecar.
	maxReconnectBackoff = 5 * time.Second
	// maxHoldBackoff caps it while deregistering without the sidecar: the phase ends
	// within seconds, so a sidecar that comes back must be found quickly.
	maxHoldBackoff = time.Second
)

// Options configure [Start]. The zero value reads everything from the environment.
type Options struct {
	// Socket is the path of the sidecar's application socket. Empty means the value of
	// LAMEDUCK_SOCKET; when that is empty too, no sidecar coordinates this process and the
	// first of Signals starts the shutdown.
	Socket string
	// Container is the name of this container, sent to the sidecar. Empty means the value
	// of LAMEDUCK_CONTAINER.
	Container string
	// GracePeriod is the pod's grace period, used until a sidecar's welcome tells the
	// real one. Zero means the value of LAMEDUCK_GRACE_SECONDS (which the webhook sets in
	// an injected container), or DefaultGracePeriod without it. Leave it zero in a pod:
	// a value set here wins over the environment, though not over the welcome.
	GracePeriod time.Duration
	// Signals start the shutdown when no sidecar did, and end the process once cleanup
	// ran. Nil means SIGTERM and SIGINT. An empty, non-nil slice means no signal at all:
	// the program handles signals itself and calls [Shutdown.Terminate] where it would
	// have let SIGTERM start the shutdown (and, with a sidecar, once SIGTERM arrives after
	// the cleanup, so that Wait returns).
	Signals []os.Signal
	// Logger receives the few events that have no caller to return an error to: running
	// without a sidecar, losing and regaining the connection. Nil means slog.Default().
	Logger *slog.Logger
}

// Shutdown coordinates the graceful shutdown of one process with the lameduck sidecar.
// Create it with [Start] early in main, register drain work with [Shutdown.OnDrain] and
// cleanup with [Shutdown.Defer], and block in [Shutdown.Wait] (or [Shutdown.Serve]) until
// the process may exit. Its methods are safe for concurrent use.
type Shutdown struct {
	socket    string
	container string
	logger    *slog.Logger
	// hookFallback is what the preStop hook waits when it cannot reach the sidecar: it
	// spent that out of the grace period before a signal that finds no sidecar.
	hookFallback time.Duration

	// ctx is cancelled when the Shutdown is released; it stops background goroutines.
	ctx     context.Context
	release context.CancelFunc
	signals chan os.Signal

	deregistering chan struct{}  // closed when the pod starts leaving load balancing
	draining      chan struct{}  // closed when the drain starts
	finished      chan struct{}  // closed when Wait may return
	baseline      chan struct{}  // asks for an activity message now, changed or not
	background    sync.WaitGroup // reading, reconnecting, activity and signal goroutines
	sequence      sync.WaitGroup // the drain and cleanup goroutine

	// Counters reported in activity and drained.
	connections atomic.Uint64
	requests    atomic.Uint64
	// middlewareSeen: the Handler middleware served a request, so requests (probes
	// excluded) measure traffic better than connections (which include probes).
	middlewareSeen atomic.Bool
	inflight       atomic.Int64
	listeners      atomic.Int32

	writeMu sync.Mutex // serializes writes on the connection

	mu             sync.Mutex
	conn           net.Conn // nil when not connected
	grace          time.Duration
	deregisteredAt time.Time
	plan           *deregisterPlan // what the sidecar's deregister said; nil before one
	started        bool            // the drain/cleanup sequence began
	deadline       time.Time       // of the sequence, once started
	drainsRan      bool
	cleanupsRan    bool
	terminated     bool // a signal arrived or Terminate was called
	closed         bool
	drains         []func(context.Context) error
	cleanups       []func(context.Context) error
	err            error
}

// Start connects to the lameduck sidecar and installs the signal handler. ctx bounds the
// connection and the handshake.
//
// Start always returns a usable *Shutdown. When LAMEDUCK_SOCKET is unset it logs one line
// and the process shuts down on SIGTERM or SIGINT instead, so the same binary runs
// outside Kubernetes. A non-nil error says why the sidecar could not be reached; the
// returned Shutdown then behaves as if there were none, and most programs log the error
// and carry on.
func Start(ctx context.Context, opts Options) (*Shutdown, error) {
	s := newShutdown(opts)
	sigs := opts.Signals
	if sigs == nil {
		sigs = []os.Signal{syscall.SIGTERM, os.Interrupt}
	}
	// signal.Notify with no signal relays every signal, the runtime's SIGURG included.
	if len(sigs) > 0 {
		signal.Notify(s.signals, sigs...)
		s.background.Add(1)
		go s.watchSignals()
	}

	if s.socket == "" {
		s.logger.Info("lameduck: " + EnvSocket + " is not set; running without a sidecar, SIGTERM or SIGINT start the shutdown")
		return s, nil
	}
	conn, r, grace, err := s.connect(ctx)
	if err != nil {
		return s, fmt.Errorf("lameduck: connecting to the sidecar at %s: %w", s.socket, err)
	}
	s.attach(conn, r, grace)
	return s, nil
}

func newShutdown(opts Options) *Shutdown {
	s := &Shutdown{
		socket:        opts.Socket,
		container:     opts.Container,
		logger:        opts.Logger,
		grace:         opts.GracePeriod,
		hookFallback:  hookFallbackFromEnv(),
		signals:       make(chan os.Signal, 1),
		deregistering: make(chan struct{}),
		draining:      make(chan struct{}),
		finished:      make(chan struct{}),
		baseline:      make(chan struct{}, 1),
	}
	if s.socket == "" {
		s.socket = os.Getenv(EnvSocket)
	}
	if s.container == "" {
		s.container = os.Getenv(EnvContainer)
	}
	if s.logger == nil {
		s.logger = slog.Default()
	}
	if s.grace <= 0 {
		s.grace = graceFromEnv()
	}
	if s.grace <= 0 {
		s.grace = DefaultGracePeriod
	}
	s.ctx, s.release = context.WithCancel(context.Background())
	return s
}

// graceFromEnv returns LAMEDUCK_GRACE_SECONDS, or 0 when it is unset or not a positive
// number of seconds.
func graceFromEnv() time.Duration {
	seconds, err := strconv.ParseUint(strings.TrimSpace(os.Getenv(EnvGraceSeconds)), 10, 32)
	if err != nil {
		return 0
	}
	return time.Duration(seconds) * time.Second
}

// hookFallbackFromEnv returns what the preStop hook waits when it cannot reach the
// sidecar. Only an injected container (LAMEDUCK_SOCKET set) has lameduck's hook; in it,
// LAMEDUCK_FALLBACK_DELAY_MILLIS, else the hook's default.
func hookFallbackFromEnv() time.Duration {
	if os.Getenv(EnvSocket) == "" {
		return 0
	}
	millis, err := strconv.ParseUint(strings.TrimSpace(os.Getenv(EnvFallbackDelay)), 10, 64)
	if err != nil {
		return defaultHookFallback
	}
	return time.Duration(min(millis, uint64(maxHookFallback/time.Millisecond))) * time.Millisecond
}

// OnDrain registers fn to run when the drain starts: it must stop accepting new work and
// return once the work in progress finished, or when ctx (which carries the sidecar's
// deadline) is done. All drain functions run concurrently, before any cleanup function.
// Returned errors are reported to the sidecar and by Wait.
//
// A function registered after the drain started runs at once, in the caller's goroutine,
// and its error is discarded.
func (s *Shutdown) OnDrain(fn func(ctx context.Context) error) {
	s.mu.Lock()
	if !s.drainsRan && !s.started {
		s.drains = append(s.drains, fn)
		s.mu.Unlock()
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), s.deadline)
	s.mu.Unlock()
	defer cancel()
	_ = call(ctx, fn, "drain")
}

// Defer registers fn to run after the drain, before the sidecar is told that the process
// may be stopped. Cleanup functions run one at a time in last-in, first-out order, like
// deferred calls, and exactly once whatever starts the shutdown: the sidecar, a signal,
// Terminate, or the loss of the sidecar mid-shutdown. ctx carries the deadline. Returned
// errors (and panics) are reported to the sidecar and by Wait; the remaining functions
// still run.
//
// A function registered after the cleanup finished runs at once, in the caller's
// goroutine, and its error is discarded.
func (s *Shutdown) Defer(fn func(ctx context.Context) error) {
	s.mu.Lock()
	if !s.cleanupsRan {
		s.cleanups = append(s.cleanups, fn)
		s.mu.Unlock()
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), s.deadline)
	s.mu.Unlock()
	defer cancel()
	_ = call(ctx, fn, "cleanup")
}

// Deregistering returns a channel that is closed when the pod starts leaving load
// balancing (or, without a sidecar, when the shutdown starts). The process should keep
// serving and ask clients to reconnect elsewhere.
func (s *Shutdown) Deregistering() <-chan struct{} { return s.deregistering }

// Draining returns a channel that is closed when the drain starts.
func (s *Shutdown) Draining() <-chan struct{} { return s.draining }

// Connected reports whether the process is connected to the sidecar right now.
func (s *Shutdown) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conn != nil
}

// GracePeriod returns the pod's grace period: as the sidecar's welcome reported it, else
// Options.GracePeriod, else LAMEDUCK_GRACE_SECONDS, else DefaultGracePeriod.
func (s *Shutdown) GracePeriod() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grace
}

// Terminate acts as if the process had received SIGTERM: it starts the drain and cleanup
// unless they already started, and lets Wait return once they finished. A program that
// handles signals itself (Options.Signals empty) calls it on SIGTERM.
//
// The deadline of a drain it starts is the sequence's, once the sidecar said deregister.
// Before that it is the grace period from now less a two-second exit reserve; and when no
// sidecar is connected, less first what the container's preStop hook waits when it cannot
// reach the sidecar either (LAMEDUCK_FALLBACK_DELAY_MILLIS, in an injected container).
func (s *Shutdown) Terminate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.terminated {
		return
	}
	s.terminated = true
	if !s.started {
		s.startLocked(s.localDeadlineLocked(), false)
	}
	s.finishIfDoneLocked()
}

// Wait blocks until the process may exit and returns the errors of the drain and cleanup
// functions. With a sidecar that is after the cleanup ran, the acknowledgement was sent
// and SIGTERM arrived (the kubelet sends it once the preStop hook returned); without one,
// after the signal and the cleanup. If ctx is done first Wait returns ctx.Err() and the
// shutdown carries on.
func (s *Shutdown) Wait(ctx context.Context) error {
	select {
	case <-s.finished:
	case <-ctx.Done():
		return ctx.Err()
	}
	s.background.Wait()
	s.sequence.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close stops the signal handler, closes the connection to the sidecar and waits for the
// background goroutines. It does not run the cleanup functions: it is for abandoning
// coordination (in tests, say); Wait releases everything by itself.
func (s *Shutdown) Close() error {
	s.mu.Lock()
	s.closed = true
	s.releaseLocked()
	s.mu.Unlock()
	s.background.Wait()
	return nil
}

// connect dials the socket and exchanges hello and welcome.
func (s *Shutdown) connect(ctx context.Context) (net.Conn, *bufio.Reader, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, handshakeTimeout)
	defer cancel()
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", s.socket)
	if err != nil {
		return nil, nil, 0, err
	}
	r, grace, err := s.handshake(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, nil, 0, err
	}
	return conn, r, grace, nil
}

func (s *Shutdown) handshake(ctx context.Context, conn net.Conn) (*bufio.Reader, time.Duration, error) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	hello := helloMessage{Type: "hello", V: protocolVersion, Container: s.container, PID: os.Getpid()}
	if _, err := conn.Write(encodeLine(hello)); err != nil {
		return nil, 0, fmt.Errorf("sending hello: %w", err)
	}
	r := newLineReader(conn)
	for {
		line, err := readLine(r)
		if errors.Is(err, io.EOF) {
			return nil, 0, errors.New("the sidecar closed the connection without a welcome (unsupported protocol version?)")
		}
		if err != nil {
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, 0, fmt.Errorf("waiting for welcome: %w", err)
		}
		m, err := decodeSidecarMessage(line)
		if err != nil {
			return nil, 0, fmt.Errorf("invalid message from the sidecar: %w", err)
		}
		switch m.Kind {
		case "":
			continue // a message type this version does not know
		case "welcome":
			if m.V != protocolVersion {
				return nil, 0, fmt.Errorf("the sidecar speaks protocol version %d, this SDK %d", m.V, protocolVersion)
			}
			stop()
			_ = conn.SetDeadline(time.Time{})
			return r, time.Duration(m.GraceSeconds) * time.Second, nil
		default:
			return nil, 0, fmt.Errorf("expected welcome, got %s", m.Kind)
		}
	}
}

// attach makes conn the connection to the sidecar and starts reading from it. It reports
// false (and closes conn) when the shutdown already started or the Shutdown was closed.
func (s *Shutdown) attach(conn net.Conn, r *bufio.Reader, grace time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.started || s.ctx.Err() != nil {
		conn.Close()
		return false
	}
	s.conn = conn
	if grace > 0 {
		s.grace = grace
	}
	s.background.Add(1)
	go s.read(conn, r)
	return true
}

// read handles the sidecar's messages until the connection ends.
func (s *Shutdown) read(conn net.Conn, r *bufio.Reader) {
	defer s.background.Done()
	for {
		line, err := readLine(r)
		if err == nil {
			var m sidecarMessage
			if m, err = decodeSidecarMessage(line); err == nil {
				s.handle(m)
				continue
			}
		}
		conn.Close()
		s.lost(conn, err)
		return
	}
}

func (s *Shutdown) handle(m sidecarMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch m.Kind {
	case "deregister":
		s.deregisterLocked(deregisterPlan{
			received: time.Now(),
			phaseEnd: unixMilli(m.PhaseEndUnixMS),
			deadline: unixMilli(m.DeadlineUnixMS),
		})
	case "drain":
		if !s.started {
			s.startLocked(unixMilli(m.DeadlineUnixMS), true)
		}
	}
}

// unixMilli converts a time of the protocol; 0 (absent) is the zero time.
func unixMilli(ms uint64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(int64(min(ms, 1<<62)))
}

// lost handles the end of the connection to the sidecar (docs/protocol.md §6).
func (s *Shutdown) lost(conn net.Conn, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == conn {
		s.conn = nil
	}
	switch {
	case s.closed || s.ctx.Err() != nil || s.started:
		// Released, or the sequence carries on without the sidecar.
	case s.plan != nil:
		// The endpoints may still route traffic here until the deregister phase's
		// planned end: serve on and look for the sidecar until then.
		hold, deadline := s.plan.afterLoss(time.Now(), s.grace)
		if hold.IsZero() {
			s.logger.Warn("lameduck: lost the sidecar while deregistering, with no planned end of the phase; draining now", "error", err)
			s.startLocked(deadline, false)
			return
		}
		s.logger.Warn("lameduck: lost the sidecar while deregistering; serving on until the phase's planned end, reconnecting meanwhile",
			"error", err, "until", hold)
		s.background.Add(1)
		go s.reconnect(hold)
	default:
		s.logger.Warn("lameduck: lost the connection to the sidecar; reconnecting", "error", err)
		s.background.Add(1)
		go s.reconnect(time.Time{})
	}
}

// reconnect tries to reach a restarted sidecar until it succeeds or the shutdown starts.
// A non-zero hold is the planned end of the deregister phase: the attempts, handshakes
// included, stop then, and the drain starts without the sidecar.
func (s *Shutdown) reconnect(hold time.Time) {
	defer s.background.Done()
	backoff, maxBackoff := firstReconnectBackoff, maxReconnectBackoff
	ctx := s.ctx
	if !hold.IsZero() {
		maxBackoff = maxHoldBackoff
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(s.ctx, hold)
		defer cancel()
	}
	for {
		timer := time.NewTimer(backoff)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			s.holdEnded()
			return
		}
		s.mu.Lock()
		give := s.started || s.closed
		s.mu.Unlock()
		if give {
			return
		}
		conn, r, grace, err := s.connect(ctx)
		if err == nil {
			if s.attach(conn, r, grace) {
				s.logger.Info("lameduck: reconnected to the sidecar")
			}
			return
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// holdEnded starts the drain if the deregister phase's planned end came without a
// sidecar. (Also called when the Shutdown is released, which startLocked then skips.)
func (s *Shutdown) holdEnded() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.closed || s.ctx.Err() != nil || s.conn != nil || s.plan == nil {
		return
	}
	_, deadline := s.plan.afterLoss(time.Now(), s.grace)
	s.logger.Warn("lameduck: no sidecar at the deregister phase's planned end; draining now")
	s.startLocked(deadline, false)
}

func (s *Shutdown) watchSignals() {
	defer s.background.Done()
	for {
		select {
		case <-s.signals:
			s.Terminate()
		case <-s.ctx.Done():
			return
		}
	}
}

// deregisterLocked handles a deregister message. The first enters the deregister phase.
// A repeated one comes from a sidecar that resumed the shutdown after a reconnection:
// it changes nothing but the plan (the latest counts, the time of the first) and asks for
// a new baseline activity.
func (s *Shutdown) deregisterLocked(plan deregisterPlan) {
	if s.plan != nil {
		plan.received = s.plan.received
	}
	s.plan = &plan
	if !s.deregisteredAt.IsZero() {
		select {
		case s.baseline <- struct{}{}:
		default:
		}
		return
	}
	s.deregisteredAt = plan.received
	close(s.deregistering)
	if s.conn != nil && !s.started {
		s.background.Add(1)
		go s.reportActivity()
	}
}

// reportActivity sends the counters at once (the sidecar's baseline) and then whenever
// they change, at most every activityInterval, until the drain starts; and at once again
// when asked for a baseline.
func (s *Shutdown) reportActivity() {
	defer s.background.Done()
	ticker := time.NewTicker(activityInterval)
	defer ticker.Stop()
	var last activityMessage
	force := true
	for {
		m := activityMessage{Type: "activity", AcceptedTotal: s.acceptedTotal(), Inflight: uint64(max(s.inflight.Load(), 0))}
		if force || m != last {
			s.send(m)
			last = m
		}
		force = false
		select {
		case <-ticker.C:
		case <-s.baseline:
			force = true
		case <-s.draining:
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// acceptedTotal is the traffic measure reported to the sidecar: requests other than the
// kubelet's probes once the Handler middleware is in use, else accepted connections of a
// wrapped listener; either grows as long as traffic keeps arriving.
func (s *Shutdown) acceptedTotal() uint64 {
	if s.middlewareSeen.Load() || s.listeners.Load() == 0 {
		return s.requests.Load()
	}
	return s.connections.Load()
}

// localDeadlineLocked is the deadline of a drain the process starts itself (see
// Terminate).
func (s *Shutdown) localDeadlineLocked() time.Time {
	var spent time.Duration
	if s.conn == nil {
		spent = s.hookFallback
	}
	return localDeadline(time.Now(), s.grace, s.plan, spent)
}

// startLocked starts the drain and cleanup sequence. fromSidecar says whether the
// sidecar sent drain (and so expects drained).
func (s *Shutdown) startLocked(deadline time.Time, fromSidecar bool) {
	s.started = true
	s.deadline = deadline
	if s.deregisteredAt.IsZero() {
		s.deregisteredAt = time.Now()
		close(s.deregistering)
	}
	close(s.draining)
	drains := s.drains
	s.drains = nil
	s.sequence.Add(1)
	go s.run(deadline, fromSidecar, drains)
}

// run is the drain and cleanup sequence (docs/protocol.md §6).
func (s *Shutdown) run(deadline time.Time, fromSidecar bool, drains []func(context.Context) error) {
	defer s.sequence.Done()
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	inflightAtStart := uint64(max(s.inflight.Load(), 0))

	errs := make([]error, len(drains))
	var wg sync.WaitGroup
	for i, fn := range drains {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = call(ctx, fn, "drain")
		}()
	}
	wg.Wait()
	s.mu.Lock()
	s.drainsRan = true
	s.mu.Unlock()
	s.waitIdle(ctx)
	if fromSidecar {
		s.send(drainedMessage{Type: "drained", InflightAtStart: inflightAtStart})
	}

	for {
		s.mu.Lock()
		n := len(s.cleanups)
		if n == 0 {
			s.cleanupsRan = true
			s.mu.Unlock()
			break
		}
		fn := s.cleanups[n-1]
		s.cleanups = s.cleanups[:n-1]
		s.mu.Unlock()
		errs = append(errs, call(ctx, fn, "cleanup"))
	}

	err := errors.Join(errs...)
	done := doneMessage{Type: "done", OK: err == nil}
	if err != nil {
		done.Error = shorten(err.Error(), maxErrorBytes)
	}
	s.send(done)

	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
	s.finishIfDoneLocked()
}

// waitIdle waits until no request counted by the middleware is in flight, or ctx is done.
func (s *Shutdown) waitIdle(ctx context.Context) {
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for s.inflight.Load() > 0 {
		select {
		case <-ticker.C:
		case <-ctx.Done():
			return
		}
	}
}

// finishIfDoneLocked lets Wait return once the cleanup ran and a signal arrived.
func (s *Shutdown) finishIfDoneLocked() {
	if !s.cleanupsRan || !s.terminated {
		return
	}
	select {
	case <-s.finished:
	default:
		close(s.finished)
		s.releaseLocked()
	}
}

// releaseLocked stops the background goroutines and closes the connection.
func (s *Shutdown) releaseLocked() {
	s.release()
	signal.Stop(s.signals)
	if s.conn != nil {
		s.conn.Close()
		s.conn = nil
	}
}

// send writes one message to the sidecar, if connected. A failed write is not reported:
// the reading goroutine notices the broken connection.
func (s *Shutdown) send(message any) {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	if conn == nil {
		return
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, _ = conn.Write(encodeLine(message))
}

// call runs a drain or cleanup function, turning a panic into an error so that the
// remaining functions still run and the sidecar still hears from the process.
func call(ctx context.Context, fn func(context.Context) error, what string) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s function panicked: %v", what, r)
		}
	}()
	return fn(ctx)
}
