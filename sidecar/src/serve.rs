//! `serve`: the sidecar's I/O shell around [`State`]. It owns the two sockets, runs one
//! task per connection and one task for the shutdown sequence, and writes the termination
//! report when SIGTERM arrives.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
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
use crate::state::{AppId, Phase, State};

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
struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, so waiters re-check their condition.
    changed: watch::Sender<u64>,
    /// The phase announced to applications.
    phase: watch::Sender<Phase>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way
        // that matters more than stopping the shutdown; keep going with what is there.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock())
    }

    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (result, phase) = {
            let mut state = self.lock();
            let result = f(&mut state);
            (result, state.phase())
        };
        self.phase
            .send_if_modified(|current| std::mem::replace(current, phase) != phase);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        result
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
    info!(
        grace_seconds = settings.grace.as_secs(),
        drain_mode = ?settings.drain_mode,
        socket = %settings.app_socket().display(),
        "lameduck sidecar ready"
    );
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(settings)),
        changed: watch::Sender::new(0),
        phase: watch::Sender::new(Phase::Serving),
    });
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
    let report = shared.read(State::report);
    let json = report.to_bounded_json(lameduck_proto::REPORT_MAX_BYTES);
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
    let mut phase = shared.phase.subscribe();
    let mut announced = Phase::Serving;
    loop {
        let current = *phase.borrow_and_update();
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
            _ = phase.changed() => {}
        }
    }
}

/// Sends what the application has not been told yet; false when the write failed.
async fn announce<W: AsyncWrite + Unpin>(write: &mut W, announced: Phase, current: Phase) -> bool {
    if announced == Phase::Serving
        && current != Phase::Serving
        && !send(write, &SidecarMessage::Deregister { phase_end_unix_ms: None, deadline_unix_ms: None }).await
    {
        return false;
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
        Ok(ControlRequest::Prestop { container }) => prestop(&shared, &container, &mut write).await,
        Ok(ControlRequest::Unknown) => warn!("closing control connection: unknown request"),
        Err(e) => warn!("closing control connection: {e}"),
    }
}

/// Starts (or joins) the shutdown and answers when `container` may be stopped.
async fn prestop<W: AsyncWrite + Unpin>(shared: &Arc<Shared>, container: &str, write: &mut W) {
    let first = shared.read(|s| s.deadline().is_none());
    let deadline = shared.update(|s| s.begin(std::time::Instant::now(), SystemTime::now()));
    if first {
        info!(%container, "preStop hook: shutdown begins");
        tokio::spawn(sequence(shared.clone()));
    } else {
        info!(%container, "preStop hook joins the shutdown");
    }
    let release_by_unix_ms = shared.read(|s| s.deadline_unix_ms()).unwrap_or_default();
    // The hook may have gone away; the shutdown goes on for the others regardless.
    let _ = send(write, &ControlReply::Accepted { release_by_unix_ms, deregister_end_unix_ms: None }).await;
    let deadline = Instant::from_std(deadline);
    let outcome = loop {
        let mut changed = shared.changed.subscribe();
        if let Some(outcome) = shared.read(|s| s.release(container, false)) {
            break outcome;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = sleep_until(deadline) => {
                break shared.update(|s| {
                    let now = std::time::Instant::now();
                    s.expire(now);
                    s.release(container, true).unwrap_or(Outcome::Timeout)
                });
            }
        }
    };
    shared.update(|s| s.mark_released(std::time::Instant::now()));
    info!(%container, %outcome, "releasing the preStop hook");
    let _ = send(write, &ControlReply::Release { outcome }).await;
}

/// The shutdown sequence: deregister until the phase ends, then drain, then wait for the
/// applications or the deadline.
async fn sequence(shared: Arc<Shared>) {
    loop {
        let mut changed = shared.changed.subscribe();
        let Some(end) = shared.read(State::deregister_end) else {
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
    shared.update(|s| s.start_drain(std::time::Instant::now()));
    let (mode, port, path, deadline) = shared.read(|s| {
        let settings = s.settings();
        (
            settings.drain_mode,
            settings.http_drain_port,
            settings.http_drain_path.clone(),
            s.deadline(),
        )
    });
    let Some(deadline) = deadline.map(Instant::from_std) else {
        return;
    };
    info!("deregister phase over: draining");
    if mode == DrainMode::Http {
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = match port {
                Some(port) => timeout(
                    deadline - Instant::now(),
                    crate::http_drain::call(port, &path),
                )
                .await
                .unwrap_or_else(|_| Err("no answer before the deadline".into())),
                None => Err("no drain port configured".into()),
            };
            match result {
                Ok(status) => info!(status, "HTTP drain call answered"),
                Err(e) => warn!("HTTP drain call failed: {e}"),
            }
            shared.update(|s| s.http_finished(std::time::Instant::now()));
        });
    }
    loop {
        let mut changed = shared.changed.subscribe();
        if shared.read(State::all_finished) {
            return info!("every app finished");
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = sleep_until(deadline) => {
                warn!("deadline reached before every app acknowledged");
                return shared.update(|s| s.expire(std::time::Instant::now()));
            }
        }
    }
}
