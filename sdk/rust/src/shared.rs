//! State shared by the handle, the connection task, the signal task, the listener and the
//! tower layer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck_proto::{AppMessage, encode_line};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cleanup::Cleanup;
use crate::{Drain, DrainSource, Shutdown};

/// How long one write to the sidecar may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Time kept back from the grace period for SIGTERM → exit, as the sidecar does.
const EXIT_RESERVE: Duration = Duration::from_secs(2);

/// Settings fixed at connect time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) socket: Option<PathBuf>,
    pub(crate) container: String,
    pub(crate) fallback_grace: Duration,
    pub(crate) handle_signals: bool,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Cancelled when `deregister` arrives.
    pub(crate) deregister: CancellationToken,
    /// Cancelled when the drain starts; `drain` is set just before.
    pub(crate) drain_token: CancellationToken,
    pub(crate) drain: OnceLock<Drain>,
    /// Cancelled once `drained` was sent: activity reports stop.
    pub(crate) activity_stop: CancellationToken,
    pub(crate) activity_reporter_started: AtomicBool,
    pub(crate) accepted_total: AtomicU64,
    /// Requests seen by the layer, kubelet probes excluded.
    pub(crate) requests_total: AtomicU64,
    /// Whether the layer has served a request.
    pub(crate) layer_in_use: std::sync::atomic::AtomicBool,
    /// Set once a counting listener exists: connections, not requests, are counted then.
    pub(crate) listener_in_use: AtomicBool,
    pub(crate) inflight: AtomicU64,
    /// Wakes the activity reporter when a counter changed (stores one permit).
    pub(crate) activity_changed: Notify,
    /// Wakes waiters when the in-flight count drops to zero.
    pub(crate) idle: Notify,
    /// Grace period from `welcome`, in seconds; 0 while unknown.
    pub(crate) grace_seconds: AtomicU64,
    pub(crate) connected: AtomicBool,
    pub(crate) writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// Registered cleanups; `None` once the shutdown sequence took them.
    pub(crate) cleanups: Mutex<Option<Vec<Cleanup>>>,
    /// The shutdown sequence, started at most once; its result is published here.
    pub(crate) shutdown: Mutex<Option<watch::Receiver<Option<Shutdown>>>>,
    pub(crate) done_sent: AtomicBool,
    pub(crate) shutdown_ok: AtomicBool,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        Self {
            config,
            deregister: CancellationToken::new(),
            drain_token: CancellationToken::new(),
            drain: OnceLock::new(),
            activity_stop: CancellationToken::new(),
            activity_reporter_started: AtomicBool::new(false),
            accepted_total: AtomicU64::new(0),
            requests_total: AtomicU64::new(0),
            layer_in_use: std::sync::atomic::AtomicBool::new(false),
            listener_in_use: AtomicBool::new(false),
            inflight: AtomicU64::new(0),
            activity_changed: Notify::new(),
            idle: Notify::new(),
            grace_seconds: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            writer: tokio::sync::Mutex::new(None),
            cleanups: Mutex::new(Some(Vec::new())),
            shutdown: Mutex::new(None),
            done_sent: AtomicBool::new(false),
            shutdown_ok: AtomicBool::new(true),
        }
    }

    /// The grace period the local fallback uses: the sidecar's, or the configured default.
    pub(crate) fn grace_period(&self) -> Duration {
        match self.grace_seconds.load(Ordering::Relaxed) {
            0 => self.config.fallback_grace,
            seconds => Duration::from_secs(seconds),
        }
    }

    /// The deadline of a drain the application starts itself: now + grace − reserve.
    pub(crate) fn local_deadline(&self) -> Duration {
        let grace = self.grace_period();
        grace - EXIT_RESERVE.min(grace / 2)
    }

    /// Starts the drain unless it already started; returns the drain in force.
    pub(crate) fn start_drain(&self, source: DrainSource, remaining: Duration) -> Drain {
        let drain = Drain {
            source,
            deadline: Instant::now() + remaining,
            deadline_unix_ms: unix_ms(SystemTime::now() + remaining),
            inflight_at_start: self.inflight.load(Ordering::SeqCst),
        };
        match self.drain.set(drain) {
            Ok(()) => {
                tracing::info!(
                    source = %source,
                    remaining_ms = remaining.as_millis() as u64,
                    inflight = drain.inflight_at_start,
                    "drain started; stop accepting and finish in-flight requests"
                );
                self.drain_token.cancel();
                drain
            }
            Err(_) => {
                let current = self.drain.get().copied().unwrap_or(drain);
                tracing::debug!(
                    source = %source,
                    current = %current.source,
                    "drain already started"
                );
                current
            }
        }
    }

    /// Whether responses should ask HTTP/1 clients to close their connection.
    pub(crate) fn closing_connections(&self) -> bool {
        self.deregister.is_cancelled() || self.drain_token.is_cancelled()
    }

    pub(crate) fn count_accept(&self) {
        self.accepted_total.fetch_add(1, Ordering::SeqCst);
        self.activity_changed.notify_one();
    }

    /// A request reached the layer. Kubelet probes keep arriving while the pod
    /// deregisters; counting them as traffic would keep the sidecar waiting for a quiet
    /// period that never comes, so they are left out of the traffic measure.
    pub(crate) fn request_started(&self, kubelet_probe: bool) {
        self.layer_in_use.store(true, Ordering::Relaxed);
        if !kubelet_probe {
            self.requests_total.fetch_add(1, Ordering::SeqCst);
        }
        self.inflight.fetch_add(1, Ordering::SeqCst);
        self.activity_changed.notify_one();
    }

    /// The traffic measure reported as `accepted_total`: requests other than kubelet
    /// probes once the layer is in use, else connections counted by the listener.
    pub(crate) fn arrivals(&self) -> u64 {
        if self.layer_in_use.load(Ordering::Relaxed) {
            self.requests_total.load(Ordering::SeqCst)
        } else {
            self.accepted_total.load(Ordering::SeqCst)
        }
    }

    pub(crate) fn request_finished(&self) {
        if self.inflight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
        self.activity_changed.notify_one();
    }

    /// Waits until no request is in flight; false if the deadline came first.
    pub(crate) async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.inflight.load(Ordering::SeqCst) == 0;
            }
        }
    }

    /// Sends one message to the sidecar; false when there is no usable connection.
    pub(crate) async fn send(&self, message: &AppMessage) -> bool {
        let mut writer = self.writer.lock().await;
        let Some(stream) = writer.as_mut() else {
            return false;
        };
        let line = encode_line(message);
        match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&line)).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "lost the connection to the sidecar");
                *writer = None;
                self.connected.store(false, Ordering::SeqCst);
                false
            }
            Err(_) => {
                tracing::warn!("the sidecar stopped reading; closing the connection");
                *writer = None;
                self.connected.store(false, Ordering::SeqCst);
                false
            }
        }
    }
}

/// Milliseconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
