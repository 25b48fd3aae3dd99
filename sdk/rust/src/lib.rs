//! The lameduck SDK for tokio services: graceful, measured shutdown on Kubernetes.
//!
//! When the pod is deleted, the lameduck sidecar holds the container's preStop hook and talks
//! to this SDK over the Unix socket in `LAMEDUCK_SOCKET` (`docs/protocol.md`):
//!
//! 1. **deregister** — the pod leaves load balancing. Keep serving; [`ShutdownLayer`] marks
//!    HTTP/1 responses `Connection: close` and the SDK reports `activity` (connections
//!    counted by [`Listener`], requests in flight) so that the sidecar sees when load
//!    balancers stopped sending.
//! 2. **drain** — [`Lameduck::drain_signal`] fires with a deadline ([`Drain`]): stop
//!    accepting and let in-flight requests finish.
//! 3. **cleanup** — [`Lameduck::shutdown`] waits for in-flight requests, sends `drained`,
//!    runs the functions registered with [`Lameduck::on_cleanup`] in registration order
//!    (each exactly once, to completion even past the deadline) and acknowledges with `done`.
//!
//! Without a sidecar (`LAMEDUCK_SOCKET` unset or unreachable) the same program still shuts
//! down gracefully: SIGTERM or SIGINT starts the drain with a deadline of the grace period
//! (default 30 s) minus a 2 s reserve — minus, first, the delay the preStop hook waited
//! when it could not reach the sidecar either — and cleanup runs all the same. A sidecar
//! lost while deregistering costs no traffic: the SDK serves on until the deregister
//! phase's planned end, reconnecting meanwhile, and drains with the sequence's deadline if
//! it is not back. SIGTERM after cleanup finished exits the process at once.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//!
//! #[tokio::main]
//! async fn main() -> std::io::Result<()> {
//!     let lameduck = lameduck::connect().await;
//!     lameduck.on_cleanup("flush buffers", || async {
//!         // Everything a Go program would `defer`: flush, commit, close.
//!         Ok::<(), std::io::Error>(())
//!     });
//!
//!     let listener = lameduck.listener(tokio::net::TcpListener::bind("0.0.0.0:8080").await?);
//!     let app = Router::new().route("/", get(|| async { "ok\n" })).layer(lameduck.layer());
//!     let server = axum::serve(listener, app).with_graceful_shutdown(lameduck.drain_signal());
//!     // Bounded by the drain deadline, so that cleanup always gets its turn.
//!     if let Some(Err(err)) = lameduck.until_deadline(server).await {
//!         eprintln!("server failed: {err}");
//!     }
//!
//!     let shutdown = lameduck.shutdown().await;
//!     if !shutdown.is_ok() {
//!         std::process::exit(1);
//!     }
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod cleanup;
mod connection;
mod layer;
mod listener;
mod plan;
mod shared;
mod signals;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use lameduck_proto::AppMessage;
use lameduck_proto::names::{
    ENV_CONTAINER, ENV_FALLBACK_DELAY_MILLIS, ENV_GRACE_SECONDS, ENV_SOCKET,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use cleanup::{BoxError, CleanupFailure};
pub use layer::{ResponseFuture, ShutdownLayer, ShutdownService, is_kubelet_probe};
pub use listener::Listener;

use cleanup::Cleanup;
use shared::{Config, Shared};

/// The default grace period when the sidecar did not tell one (Kubernetes' default).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// How long [`Builder::connect`] waits for the sidecar's `welcome`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `error` text sent in `done`; the report shortens it further.
const MAX_ERROR_BYTES: usize = 4096;

/// Connects to the sidecar named by `LAMEDUCK_SOCKET`, or runs without one when it is unset.
///
/// Shorthand for `Builder::from_env().connect()`. Never fails: when the sidecar cannot be
/// reached the SDK logs why, keeps retrying in the background, and meanwhile handles
/// SIGTERM/SIGINT itself. Call it once per process (the protocol wants one connection per
/// process) and share the [`Lameduck`] handle.
pub async fn connect() -> Lameduck {
    Builder::from_env().connect().await
}

/// Settings for [`Lameduck`]; [`Builder::from_env`] reads them from the environment.
#[derive(Debug, Clone)]
pub struct Builder {
    socket: Option<PathBuf>,
    container: String,
    fallback_grace: Duration,
    hook_fallback: Duration,
    handle_signals: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            socket: None,
            container: String::new(),
            fallback_grace: DEFAULT_GRACE_PERIOD,
            hook_fallback: Duration::ZERO,
            handle_signals: true,
        }
    }
}

impl Builder {
    /// No socket, no container name, a 30 s fallback grace period, signals handled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Settings from the environment: `LAMEDUCK_SOCKET` (unset or empty: no sidecar),
    /// `LAMEDUCK_CONTAINER`, and `LAMEDUCK_GRACE_SECONDS` for the fallback grace period.
    ///
    /// With `LAMEDUCK_SOCKET` set (the pod is injected, so the container has lameduck's
    /// preStop hook) it also reads `LAMEDUCK_FALLBACK_DELAY_MILLIS` (default 5000): what
    /// the hook waits when it cannot reach the sidecar. A drain started on a signal without
    /// a sidecar takes it off the grace period, as the hook spent it before the signal.
    pub fn from_env() -> Self {
        let mut builder = Self::new();
        if let Some(socket) = std::env::var_os(ENV_SOCKET).filter(|s| !s.is_empty()) {
            builder.socket = Some(PathBuf::from(socket));
            builder.hook_fallback = std::env::var(ENV_FALLBACK_DELAY_MILLIS)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(plan::DEFAULT_HOOK_FALLBACK, Duration::from_millis)
                .min(plan::MAX_HOOK_FALLBACK);
        }
        builder.container = std::env::var(ENV_CONTAINER).unwrap_or_default();
        if let Some(seconds) = std::env::var(ENV_GRACE_SECONDS)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|&s| s > 0)
        {
            builder.fallback_grace = Duration::from_secs(seconds);
        }
        builder
    }

    /// Connect to the sidecar socket at `path`.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// The container name sent in `hello` (in a pod: `LAMEDUCK_CONTAINER`).
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = name.into();
        self
    }

    /// The grace period used for a drain the SDK starts itself, until the sidecar's
    /// `welcome` tells the real one. Set after [`Builder::from_env`], it replaces
    /// `LAMEDUCK_GRACE_SECONDS`; the `welcome`, the pod's real value, replaces both.
    pub fn fallback_grace(mut self, grace: Duration) -> Self {
        self.fallback_grace = grace;
        self
    }

    /// Whether the SDK handles SIGTERM and SIGINT (default: yes). Without it, start the
    /// shutdown yourself with [`Lameduck::shutdown`].
    pub fn handle_signals(mut self, handle: bool) -> Self {
        self.handle_signals = handle;
        self
    }

    /// Starts the SDK: connects and waits (at most 5 s) for the sidecar's `welcome`, or logs
    /// that it runs without a sidecar. Must be called inside a tokio runtime.
    pub async fn connect(self) -> Lameduck {
        let config = Config {
            socket: self.socket,
            container: self.container,
            fallback_grace: self.fallback_grace,
            hook_fallback: self.hook_fallback,
            handle_signals: self.handle_signals,
        };
        let shared = Arc::new(Shared::new(config));
        if shared.config.handle_signals {
            signals::install(Arc::clone(&shared));
        }
        match shared.config.socket.clone() {
            None => tracing::info!(
                "{ENV_SOCKET} is not set; running without the sidecar, SIGTERM/SIGINT start the drain"
            ),
            Some(path) => {
                let (first_tx, first_rx) = oneshot::channel();
                let task_shared = Arc::clone(&shared);
                tokio::spawn(async move { connection::run(task_shared, &path, first_tx).await });
                if tokio::time::timeout(WELCOME_TIMEOUT, first_rx)
                    .await
                    .is_err()
                {
                    tracing::warn!("no welcome from the sidecar yet; going on without");
                }
            }
        }
        Lameduck { shared }
    }
}

/// Where a drain came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainSource {
    /// The sidecar sent `drain`.
    Sidecar,
    /// SIGTERM or SIGINT arrived first (no sidecar, or it was lost or slower).
    Signal,
    /// The application called [`Lameduck::shutdown`] before any drain.
    Shutdown,
    /// The sidecar was lost while deregistering and was not back by the deregister
    /// phase's planned end; or, lost when its `deregister` planned no end (an older
    /// sidecar), at once. The deadline is the sequence's own, counted from T0.
    SidecarLost,
}

impl fmt::Display for DrainSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sidecar => "sidecar",
            Self::Signal => "signal",
            Self::Shutdown => "shutdown",
            Self::SidecarLost => "sidecar-lost",
        })
    }
}

/// A drain in progress: where it came from and its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    source: DrainSource,
    deadline: Instant,
    deadline_unix_ms: u64,
    inflight_at_start: u64,
}

impl Drain {
    /// Where the drain came from.
    pub fn source(&self) -> DrainSource {
        self.source
    }

    /// When draining and cleanup must be finished.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The deadline as Unix milliseconds (as the sidecar sent it).
    pub fn deadline_unix_ms(&self) -> u64 {
        self.deadline_unix_ms
    }

    /// Time left until the deadline (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Requests that were in flight when the drain started.
    pub fn inflight_at_start(&self) -> u64 {
        self.inflight_at_start
    }
}

/// The result of [`Lameduck::shutdown`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    drain: Drain,
    drained_in_time: bool,
    failures: Vec<CleanupFailure>,
    acknowledged: bool,
}

impl Shutdown {
    /// Whether every cleanup function succeeded (`done {ok: true}`).
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// The cleanup functions that failed, timed out or panicked, in order.
    pub fn failures(&self) -> &[CleanupFailure] {
        &self.failures
    }

    /// Whether `done` reached the sidecar (false without a sidecar or after losing it).
    pub fn acknowledged(&self) -> bool {
        self.acknowledged
    }

    /// Whether the in-flight requests finished before the deadline.
    pub fn drained_in_time(&self) -> bool {
        self.drained_in_time
    }

    /// The drain this shutdown completed.
    pub fn drain(&self) -> Drain {
        self.drain
    }
}

/// Handle to the SDK; cheap to clone, shared by every part of the application.
#[derive(Clone)]
pub struct Lameduck {
    shared: Arc<Shared>,
}

impl fmt::Debug for Lameduck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lameduck")
            .field("socket", &self.shared.config.socket)
            .field("connected", &self.is_connected())
            .field("deregistering", &self.is_deregistering())
            .field("drain", &self.drain())
            .finish()
    }
}

impl Lameduck {
    /// Whether a conversation with the sidecar is established (`welcome` received).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::SeqCst)
    }

    /// The pod's grace period, as the sidecar's `welcome` told it.
    pub fn grace_period(&self) -> Option<Duration> {
        match self.shared.grace_seconds.load(Ordering::Relaxed) {
            0 => None,
            seconds => Some(Duration::from_secs(seconds)),
        }
    }

    /// Whether the pod is on its way out: the sidecar said `deregister`, or the drain began.
    ///
    /// While this holds, [`ShutdownLayer`] closes HTTP/1 connections after each response.
    pub fn is_deregistering(&self) -> bool {
        self.shared.closing_connections()
    }

    /// Completes when [`Lameduck::is_deregistering`] becomes true.
    pub fn deregistering(&self) -> impl Future<Output = ()> + Send + 'static {
        let deregister = self.shared.deregister.clone();
        let drain = self.shared.drain_token.clone();
        async move {
            tokio::select! {
                _ = deregister.cancelled() => {}
                _ = drain.cancelled() => {}
            }
        }
    }

    /// A token cancelled when the drain starts (a child token: cancelling it does not start
    /// the drain).
    pub fn drain_token(&self) -> CancellationToken {
        self.shared.drain_token.child_token()
    }

    /// Completes when the drain starts; made for `axum::serve(..).with_graceful_shutdown(..)`.
    pub fn drain_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.drain_token.clone().cancelled_owned()
    }

    /// Completes with the drain (and its deadline) once it starts.
    pub fn drain_started(&self) -> impl Future<Output = Drain> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            shared.drain_token.cancelled().await;
            // Set before the token is cancelled; the fallback is never used.
            shared.drain.get().copied().unwrap_or_else(|| {
                shared.start_drain(DrainSource::Shutdown, shared.local_deadline())
            })
        }
    }

    /// The drain in progress, if it started.
    pub fn drain(&self) -> Option<Drain> {
        self.shared.drain.get().copied()
    }

    /// Completes once a drain started and its deadline passed.
    pub fn deadline_reached(&self) -> impl Future<Output = ()> + Send + 'static {
        let drain = self.drain_started();
        async move { tokio::time::sleep_until(drain.await.deadline).await }
    }

    /// Runs `work` (typically the server with graceful shutdown) to completion, but gives up
    /// on it once the drain deadline passed (`None`), so that cleanup still gets to run.
    pub async fn until_deadline<F: IntoFuture>(&self, work: F) -> Option<F::Output> {
        let deadline = self.deadline_reached();
        tokio::select! {
            output = work => Some(output),
            () = deadline => {
                tracing::warn!("the drain deadline passed before the server stopped");
                None
            }
        }
    }

    /// Registers a cleanup function, run after the drain in registration order (not LIFO):
    /// flush buffers, commit offsets, close connections.
    ///
    /// Each runs exactly once, in every shutdown path, and to completion: one still running
    /// at the drain deadline is left to finish (the kubelet's SIGKILL comes only at the end
    /// of the grace period), so bound your own I/O with [`Drain::deadline`] if it can hang.
    /// An error or a panic (with `panic = "unwind"`) is reported in `done` and does not stop
    /// the others.
    /// A function registered after the shutdown sequence began is not run (logged).
    pub fn on_cleanup<F, Fut, E>(&self, name: impl Into<String>, cleanup: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let cleanup = Cleanup::new(name.into(), cleanup);
        let mut cleanups = self
            .shared
            .cleanups
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match cleanups.as_mut() {
            Some(cleanups) => cleanups.push(cleanup),
            None => tracing::warn!(
                cleanup = %cleanup.name,
                "cleanup registered after the shutdown began; it will not run"
            ),
        }
    }

    /// Wraps a listener so that every accepted connection is counted for `activity`.
    pub fn listener<L>(&self, listener: L) -> Listener<L> {
        Listener::new(listener, Arc::clone(&self.shared))
    }

    /// A tower layer counting in-flight requests and closing HTTP/1 connections while
    /// deregistering; see [`ShutdownLayer`].
    pub fn layer(&self) -> ShutdownLayer {
        ShutdownLayer::new(Arc::clone(&self.shared))
    }

    /// The traffic measure reported to the sidecar: requests seen by [`ShutdownLayer`]
    /// other than kubelet probes once the layer is in use, else connections accepted by
    /// the [`Listener`].
    pub fn accepted_total(&self) -> u64 {
        self.shared.arrivals()
    }

    /// Requests in flight right now, as counted by [`ShutdownLayer`].
    pub fn inflight(&self) -> u64 {
        self.shared.inflight.load(Ordering::SeqCst)
    }

    /// Runs the rest of the shutdown sequence: starts the drain if nothing did yet, waits
    /// for in-flight requests (until the deadline), sends `drained`, runs the cleanup
    /// functions, sends `done {ok, error}`.
    ///
    /// Call it once the server stopped accepting. The sequence runs once: later and
    /// concurrent calls wait for the same result. It goes on in a task of its own, so
    /// dropping this future does not cut cleanup short.
    pub async fn shutdown(&self) -> Shutdown {
        let mut receiver = {
            let mut slot = self
                .shared
                .shutdown
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match slot.as_ref() {
                Some(receiver) => receiver.clone(),
                None => {
                    let (sender, receiver) = watch::channel(None);
                    tokio::spawn(run_shutdown(Arc::clone(&self.shared), sender));
                    *slot = Some(receiver.clone());
                    receiver
                }
            }
        };
        let result = receiver
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|r| r.clone());
        result.unwrap_or_else(|| {
            // Only reachable if the shutdown task itself panicked.
            let drain = self.shared.start_drain(
                DrainSource::Shutdown,
                shared::unix_ms(std::time::SystemTime::now()),
            );
            Shutdown {
                drain,
                drained_in_time: false,
                failures: vec![CleanupFailure {
                    name: "lameduck".into(),
                    reason: "the shutdown sequence panicked".into(),
                }],
                acknowledged: false,
            }
        })
    }
}

async fn run_shutdown(shared: Arc<Shared>, report: watch::Sender<Option<Shutdown>>) {
    let drain = shared.start_drain(DrainSource::Shutdown, shared.local_deadline());
    let drained_in_time = shared.wait_idle(drain.deadline).await;
    if !drained_in_time {
        tracing::warn!(
            inflight = shared.inflight.load(Ordering::SeqCst),
            "requests still in flight at the drain deadline"
        );
    }
    shared.activity_stop.cancel();
    shared
        .send(&AppMessage::Drained {
            inflight_at_start: drain.inflight_at_start,
        })
        .await;

    let cleanups = shared
        .cleanups
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    let failures = cleanup::run_all(cleanups, drain.deadline).await;
    let ok = failures.is_empty();
    let error = (!ok).then(|| done_error(&failures));
    shared.shutdown_ok.store(ok, Ordering::SeqCst);
    let acknowledged = shared
        .send(&AppMessage::Done {
            ok,
            error: error.clone(),
        })
        .await;
    shared.done_sent.store(true, Ordering::SeqCst);
    match (&error, acknowledged) {
        (None, true) => tracing::info!("cleanup finished; the sidecar was told"),
        (None, false) => tracing::info!("cleanup finished"),
        (Some(error), _) => tracing::warn!(%error, acknowledged, "cleanup failed"),
    }
    report.send_replace(Some(Shutdown {
        drain,
        drained_in_time,
        failures,
        acknowledged,
    }));
}

/// The `error` text of `done`: every failure, shortened to a bounded size.
fn done_error(failures: &[CleanupFailure]) -> String {
    let mut error = failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if error.len() > MAX_ERROR_BYTES {
        let mut end = MAX_ERROR_BYTES;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_error_joins_and_bounds() {
        let failures = vec![
            CleanupFailure {
                name: "a".into(),
                reason: "x".into(),
            },
            CleanupFailure {
                name: "b".into(),
                reason: "é".repeat(4000),
            },
        ];
        let error = done_error(&failures);
        assert!(error.starts_with("a: x; b: é"));
        assert!(error.len() <= MAX_ERROR_BYTES);
    }
}

/// The README's examples, compiled as doctests so that what it shows keeps working.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
