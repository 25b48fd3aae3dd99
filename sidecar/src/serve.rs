//! `serve`: the sidecar's I/O shell around [`State`]. It owns the two sockets, runs one
//! task per connection and one task for the shutdown sequence, and writes the termination
//! report when SIGTERM arrives.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use lameduck_proto::{
    AppMessage, ControlReply, ControlRequest, Outcome, PROTOCOL_VERSION, SidecarMessage,
    decode_line, encode_line,
};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, error, info, warn};

use crate::lines::LineReader;
use crate::settings::{DrainMode, Settings, run_dir};
use crate::state::{AppId, Persisted, Phase, State};

/// How long a restored shutdown waits at least for its hook to reconnect.
const HOOK_RECONNECT_WINDOW: Duration = Duration::from_secs(1);
/// How long a new connection may take to say who it is.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the sidecar until SIGTERM or SIGINT; exits 0 after writing the report.
pub async fn run(settings: Settings) -> ExitCode {
    match serve(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!("lameduck sidecar failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// State shared by every task, with change notification.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, so waiters re-check their condition.
    pub(crate) changed: watch::Sender<u64>,
    /// Where the state is kept for a restarted sidecar, and what was last written there.
    state_file: PathBuf,
    written: Mutex<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way
        // that matters more than stopping the shutdown; keep going with what is there.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    /// Applies `f`; persists and wakes the waiters only when it says something changed.
    pub(crate) fn update_if(&self, f: impl FnOnce(&mut State) -> bool) {
        let changed = f(&mut self.lock());
        if changed {
            self.update(|_| ());
        }
    }

    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, persisted) = {
            let mut state = self.lock();
            let result = f(&mut state);
            (result, state.persisted())
        };
        self.persist(&persisted);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        result
    }

    /// Writes the state file when what a restarted sidecar needs has changed.
    fn persist(&self, persisted: &Persisted) {
        let json = serde_json::to_string(persisted).unwrap_or_default();
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if *written == json {
            return;
        }
        match crate::persist::store(&self.state_file, &json) {
            Ok(()) => *written = json,
            // The shutdown goes on; only a restart of this container would miss it.
            Err(e) => warn!("cannot keep the shutdown state: {e}"),
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    if settings.install {
        let path = crate::install::install_self(&settings.dir).map_err(|e| {
            format!(
                "cannot copy the binary into {}: {e} (is the volume mounted?)",
                settings.dir.display()
            )
        })?;
        info!(path = %path.display(), "installed the preStop client");
    }
    let run = run_dir(&settings.dir);
    std::fs::create_dir_all(&run).map_err(|e| format!("cannot create {}: {e}", run.display()))?;
    let _ = std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755));
    // App sockets first: the control socket answering the probe means both are ready.
    let apps = bind(&settings.app_socket())?;
    let control = bind(&settings.control_socket())?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    let termination_log = settings.termination_log.clone();
    let report_max_bytes = settings.report_max_bytes;
    let state_file = settings.state_file();
    info!(
        grace_seconds = settings.grace.as_secs(),
        drain_mode = ?settings.drain_mode,
        socket = %settings.app_socket().display(),
        "lameduck sidecar ready"
    );
    // A file left by an earlier run of this container: the kubelet restarted the sidecar
    // while containers were being stopped. Resume their shutdowns with their own T0.
    let state = match crate::persist::load(&state_file) {
        Ok(Some(persisted)) => State::restore(
            settings,
            persisted,
            std::time::Instant::now(),
            SystemTime::now(),
        ),
        Ok(None) => State::new(settings),
        Err(e) => {
            warn!("starting afresh: {e}");
            State::new(settings)
        }
    };
    let mut state = state;
    let proc_net = PathBuf::from(crate::kernel::PROC_NET);
    let view = crate::kernel::TrafficView::new(
        &state.settings().ports,
        &state.settings().probes,
        state.settings().host_ip,
    );
    let kernel_available = crate::kernel::read_counters(&proc_net).is_some()
        && (!view.has_ports() || crate::kernel::read_sockets(&proc_net).is_ok());
    if kernel_available {
        info!(
            ports = %lameduck_proto::traffic::ports_to_env(&state.settings().ports),
            probes = %lameduck_proto::traffic::probes_to_env(&state.settings().probes),
            host_ip = ?state.settings().host_ip,
            "kernel traffic view ready"
        );
    } else {
        warn!(
            "the kernel's TCP tables cannot be read: containers without an SDK get the fixed delay and nothing is counted"
        );
    }
    state.set_kernel_available(kernel_available);
    let pending = state.pending();
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        changed: watch::Sender::new(0),
        state_file,
        written: Mutex::new(String::new()),
    });
    tokio::spawn(crate::kernel::poller::run(
        shared.clone(),
        view,
        proc_net.clone(),
    ));
    for container in pending {
        info!(%container, "resuming the shutdown of a container after a sidecar restart");
        tokio::spawn(resume(shared.clone(), container));
    }
    loop {
        tokio::select! {
            accepted = apps.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(handle_app(stream, shared.clone())); }
                Err(e) => warn!("accept on the app socket failed: {e}"),
            },
            accepted = control.accept() => match accepted {
                Ok((stream, _)) => { tokio::spawn(handle_control(stream, shared.clone())); }
                Err(e) => warn!("accept on the control socket failed: {e}"),
            },
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let counters = crate::kernel::read_counters(&proc_net);
    let report = shared.read(|s| s.report_with(counters, std::time::Instant::now()));
    let json = report.to_bounded_json(report_max_bytes);
    info!(report = %json, "stopping; writing the termination report");
    if let Err(e) = std::fs::write(&termination_log, &json) {
        // Still exit 0: the report is an observation, not a reason to fail the pod.
        error!(
            "cannot write the termination report to {}: {e}",
            termination_log.display()
        );
    }
    Ok(())
}

fn bind(path: &Path) -> Result<UnixListener, String> {
    // A socket left by an earlier run of this container (restartPolicy: Always) is stale.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot remove stale socket {}: {e}",
                path.display()
            ));
        }
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    // App containers may run under another UID; the volume is private to the pod.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(|e| format!("cannot open up {}: {e}", path.display()))?;
    Ok(listener)
}

async fn send<W: AsyncWrite + Unpin, M: serde::Serialize>(writer: &mut W, message: &M) -> bool {
    writer.write_all(&encode_line(message)).await.is_ok()
}

/// One application connection: hello, then messages both ways until `done` or close.
async fn handle_app(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = LineReader::new(read);
    let hello = match timeout(FIRST_MESSAGE_TIMEOUT, lines.next_line()).await {
        Err(_) => {
            return warn!("closing app connection: no hello within {FIRST_MESSAGE_TIMEOUT:?}");
        }
        Ok(Ok(None)) => return debug!("app connection closed before hello"),
        Ok(Err(e)) => return warn!("closing app connection: {e}"),
        Ok(Ok(Some(line))) => decode_line::<AppMessage>(&line),
    };
    let (container, pid) = match hello {
        Ok(AppMessage::Hello { v, container, pid }) if v == PROTOCOL_VERSION => (container, pid),
        Ok(AppMessage::Hello { v, container, pid }) => {
            return warn!(%container, pid, "closing app connection: protocol version {v} is not supported (this sidecar speaks {PROTOCOL_VERSION})");
        }
        Ok(other) => {
            return warn!("closing app connection: first message must be hello, got {other:?}");
        }
        Err(e) => return warn!("closing app connection: {e}"),
    };
    let id = shared.update(|s| s.register(&container, pid));
    info!(%container, pid, "app connected");
    let grace_seconds = shared.read(|s| s.settings().grace.as_secs());
    if !send(
        &mut write,
        &SidecarMessage::Welcome {
            v: PROTOCOL_VERSION,
            grace_seconds,
        },
    )
    .await
    {
        return shared.update(|s| s.closed(id, std::time::Instant::now()));
    }
    let mut changed = shared.changed.subscribe();
    let mut announced = Phase::Serving;
    loop {
        changed.borrow_and_update();
        let current = shared.read(|s| s.phase_of(id));
        if !announce(&mut write, announced, current).await {
            warn!(%container, pid, "app connection lost while announcing {current:?}");
            return shared.update(|s| s.closed(id, std::time::Instant::now()));
        }
        announced = current;
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match decode_line::<AppMessage>(&line) {
                    Ok(message) => {
                        if handle_app_message(&shared, id, message) {
                            info!(%container, pid, "app acknowledged");
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(%container, pid, "closing app connection: {e}");
                        return shared.update(|s| s.closed(id, std::time::Instant::now()));
                    }
                },
                Ok(None) => {
                    info!(%container, pid, "app disconnected");
                    return shared.update(|s| s.closed(id, std::time::Instant::now()));
                }
                Err(e) => {
                    warn!(%container, pid, "closing app connection: {e}");
                    return shared.update(|s| s.closed(id, std::time::Instant::now()));
                }
            },
            _ = changed.changed() => {}
        }
    }
}

/// Sends what the application has not been told yet; false when the write failed.
async fn announce<W: AsyncWrite + Unpin>(write: &mut W, announced: Phase, current: Phase) -> bool {
    if announced == Phase::Serving {
        let deregister = match current {
            Phase::Serving => return true,
            Phase::Deregister {
                phase_end_unix_ms,
                deadline_unix_ms,
            } => SidecarMessage::Deregister {
                phase_end_unix_ms: Some(phase_end_unix_ms),
                deadline_unix_ms: Some(deadline_unix_ms),
            },
            // Connected after the drain began: the phase is over, its end is now.
            Phase::Drain { deadline_unix_ms } => SidecarMessage::Deregister {
                phase_end_unix_ms: None,
                deadline_unix_ms: Some(deadline_unix_ms),
            },
        };
        if !send(write, &deregister).await {
            return false;
        }
    }
    match current {
        Phase::Drain { deadline_unix_ms } if !matches!(announced, Phase::Drain { .. }) => {
            send(write, &SidecarMessage::Drain { deadline_unix_ms }).await
        }
        _ => true,
    }
}

/// Applies one message; true when the application is done (stop reading).
fn handle_app_message(shared: &Shared, id: AppId, message: AppMessage) -> bool {
    let now = std::time::Instant::now();
    match message {
        AppMessage::Activity { accepted_total, .. } => {
            shared.update(|s| s.activity(id, accepted_total, now));
            false
        }
        AppMessage::Drained { .. } => {
            shared.update(|s| s.drained(id, now));
            false
        }
        AppMessage::Done { ok, error } => {
            shared.update(|s| s.done(id, ok, error, now));
            true
        }
        AppMessage::Hello { .. } | AppMessage::Unknown => false,
    }
}

/// One control connection: a probe or a preStop hook.
async fn handle_control(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut lines = LineReader::new(read);
    let request = match timeout(FIRST_MESSAGE_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) => decode_line::<ControlRequest>(&line),
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return warn!("closing control connection: {e}"),
        Err(_) => {
            return warn!(
                "closing control connection: no request within {FIRST_MESSAGE_TIMEOUT:?}"
            );
        }
    };
    match request {
        Ok(ControlRequest::Probe {}) => {
            send(&mut write, &ControlReply::Ready {}).await;
        }
        Ok(ControlRequest::Prestop {
            container,
            grace_seconds,
        }) => {
            let grace = grace_seconds.map(Duration::from_secs);
            prestop(&shared, &container, grace, &mut lines, &mut write).await;
        }
        Ok(ControlRequest::Unknown) => warn!("closing control connection: unknown request"),
        Err(e) => warn!("closing control connection: {e}"),
    }
}

/// Starts (or joins) `container`'s shutdown and answers when it may be stopped. A hook
/// whose connection ends before that (the kubelet gave up on it, or the container died)
/// no longer holds the shutdown open.
async fn prestop<R, W>(
    shared: &Arc<Shared>,
    container: &str,
    grace: Option<Duration>,
    lines: &mut LineReader<R>,
    write: &mut W,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (deadline, first) = shared.update(|s| {
        s.begin_within(
            container,
            grace,
            std::time::Instant::now(),
            SystemTime::now(),
        )
    });
    if first {
        info!(%container, "preStop hook: the container's shutdown begins");
        tokio::spawn(sequence(shared.clone(), container.to_owned()));
    } else {
        info!(%container, "preStop hook joins the container's shutdown in progress");
    }
    let (release_by_unix_ms, deregister_end_unix_ms) = shared
        .read(|s| s.plan_unix_ms(container))
        .unwrap_or_default();
    let accepted = ControlReply::Accepted {
        release_by_unix_ms,
        deregister_end_unix_ms: Some(deregister_end_unix_ms),
    };
    // The hook may have gone away; the shutdown goes on regardless.
    let _ = send(write, &accepted).await;
    let deadline = Instant::from_std(deadline);
    let outcome = loop {
        let mut changed = shared.changed.subscribe();
        if let Some(outcome) = shared.read(|s| s.release(container, false)) {
            break Some(outcome);
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = sleep_until(deadline) => {
                break Some(shared.update(|s| {
                    s.expire(container, std::time::Instant::now());
                    s.release(container, true).unwrap_or(Outcome::Timeout)
                }));
            }
            // A hook sends nothing after `prestop`: anything but silence is its end.
            _ = lines.next_line() => break None,
        }
    };
    let now = std::time::Instant::now();
    let Some(outcome) = outcome else {
        warn!(%container, "the preStop hook went away before its release");
        return shared.update(|s| s.hook_left(container, now));
    };
    shared.update(|s| {
        s.mark_released(container, now);
        s.hook_left(container, now);
    });
    info!(%container, %outcome, "releasing the preStop hook");
    let _ = send(write, &ControlReply::Release { outcome }).await;
}

/// A shutdown restored from the state file: it goes on once a hook of the container
/// reconnects. A hook holds on only until the deregister phase's planned end, so one that
/// has not come back by then (and at least a second after the restart) gave up: the
/// shutdown is over.
async fn resume(shared: Arc<Shared>, container: String) {
    let Some(planned_end) = shared.read(|s| s.planned_end(&container)) else {
        return;
    };
    let give_up = Instant::from_std(planned_end).max(Instant::now() + HOOK_RECONNECT_WINDOW);
    loop {
        let mut changed = shared.changed.subscribe();
        if shared.read(|s| s.has_hook(&container)) {
            return sequence(shared, container).await;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = sleep_until(give_up) => {
                if shared.update(|s| s.abandon_if_no_hook(&container, std::time::Instant::now())) {
                    warn!(%container, "no preStop hook came back after the restart; the container's shutdown is over");
                    return;
                }
            }
        }
    }
}

/// One container's shutdown sequence: deregister until the phase ends, then drain, then
/// wait for its applications or the deadline.
async fn sequence(shared: Arc<Shared>, container: String) {
    let Some(id) = shared.read(|s| s.live_shutdown(&container)) else {
        return;
    };
    // Ends with its shutdown: released, or replaced by a later one of the container.
    let live = |s: &State| s.live_shutdown(&container) == Some(id);
    loop {
        let mut changed = shared.changed.subscribe();
        let Some(end) = shared
            .read(|s| live(s).then(|| s.deregister_end(&container)))
            .flatten()
        else {
            return;
        };
        let end = Instant::from_std(end);
        if Instant::now() >= end {
            break;
        }
        tokio::select! {
            _ = sleep_until(end) => {}
            _ = changed.changed() => {}
        }
    }
    shared.update(|s| s.start_drain(&container, std::time::Instant::now()));
    let (mode, port, path, deadline, http_done) = shared.read(|s| {
        let settings = s.settings();
        (
            settings.drain_mode,
            settings.http_drain_port,
            settings.http_drain_path.clone(),
            s.deadline(&container),
            s.http_done(&container),
        )
    });
    let Some(deadline) = deadline.map(Instant::from_std) else {
        return;
    };
    info!(%container, "deregister phase over: draining");
    if mode == DrainMode::Http && !http_done {
        let shared = shared.clone();
        let container = container.clone();
        tokio::spawn(async move {
            let result = match port {
                Some(port) => timeout(
                    deadline.saturating_duration_since(Instant::now()),
                    crate::http_drain::call(port, &path),
                )
                .await
                .unwrap_or_else(|_| Err("no answer before the deadline".into())),
                None => Err("no drain port configured".into()),
            };
            match result {
                Ok(status) => info!(%container, status, "HTTP drain call answered"),
                Err(e) => warn!(%container, "HTTP drain call failed: {e}"),
            }
            shared.update(|s| s.http_finished(&container, std::time::Instant::now()));
        });
    }
    loop {
        let mut changed = shared.changed.subscribe();
        if shared.read(|s| !live(s) || s.all_finished(&container)) {
            return info!(%container, "every app of the container finished");
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = sleep_until(deadline) => {
                warn!(%container, "deadline reached before every app acknowledged");
                return shared.update(|s| s.expire(&container, std::time::Instant::now()));
            }
        }
    }
}
