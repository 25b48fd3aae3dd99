//! State shared by the handle, the connection task, the signal task, the listener and the
//! tower layer.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck_proto::{AppMessage, encode_line};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cleanup::Cleanup;
use crate::plan::{self, AfterLoss, DeregisterPlan};
use crate::{Drain, DrainSource, Shutdown};

/// How long one write to the sidecar may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings fixed at connect time.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) socket: Option<PathBuf>,
    pub(crate) container: String,
    pub(crate) fallback_grace: Duration,
    /// What the preStop hook waits when it cannot reach the sidecar (zero outside a pod).
    pub(crate) hook_fallback: Duration,
    pub(crate) handle_signals: bool,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    /// Cancelled when `deregister` arrives; `plan` is set just before.
    pub(crate) deregister: CancellationToken,
    pub(crate) plan: Mutex<Option<DeregisterPlan>>,
    /// Cancelled when the drain starts; `drain` is set just before.
    pub(crate) drain_token: CancellationToken,
    pub(crate) drain: OnceLock<Drain>,
    /// Cancelled once `drained` was sent: activity reports stop.
    pub(crate) activity_stop: CancellationToken,
    pub(crate) activity_reporter_started: AtomicBool,
    /// Set by each `deregister`: the next `activity` goes out even without a change, as the
    /// baseline of a sidecar that (re)started measuring.
    pub(crate) activity_baseline: AtomicBool,
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
            plan: Mutex::new(None),
            drain_token: CancellationToken::new(),
            drain: OnceLock::new(),
            activity_stop: CancellationToken::new(),
            activity_reporter_started: AtomicBool::new(false),
            activity_baseline: AtomicBool::new(false),
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

    /// The plan of the `deregister` received, if one was.
    pub(crate) fn plan(&self) -> Option<DeregisterPlan> {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A `deregister` arrived: records its plan (the latest one counts, the time of the
    /// first) and enters the deregister phase. Returns whether it was the first.
    pub(crate) fn deregistered(
        &self,
        phase_end_unix_ms: Option<u64>,
        deadline_unix_ms: Option<u64>,
    ) -> bool {
        {
            let mut plan = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
            let received_unix_ms = plan
                .map(|p| p.received_unix_ms)
                .unwrap_or_else(|| unix_ms(SystemTime::now()));
            *plan = Some(DeregisterPlan {
                received_unix_ms,
                phase_end_unix_ms,
                deadline_unix_ms,
            });
        }
        self.activity_baseline.store(true, Ordering::SeqCst);
        self.activity_changed.notify_one();
        let first = !self.deregister.is_cancelled();
        self.deregister.cancel();
        first
    }

    /// The deadline of a drain the application starts itself: on a signal, or
    /// [`crate::Lameduck::shutdown`] before any drain (docs/protocol.md §6).
    pub(crate) fn local_deadline(&self) -> u64 {
        // Without a sidecar the preStop hook could not reach one either: it already spent
        // its fallback delay out of the grace period.
        let hook_spent = if self.connected.load(Ordering::SeqCst) {
            Duration::ZERO
        } else {
            self.config.hook_fallback
        };
        plan::local_deadline(
            unix_ms(SystemTime::now()),
            self.grace_period(),
            self.plan().as_ref(),
            hook_spent,
        )
    }

    /// What to do now that the sidecar was lost while deregistering.
    pub(crate) fn after_loss(&self) -> AfterLoss {
        let now = unix_ms(SystemTime::now());
        match self.plan() {
            Some(plan) => plan.after_loss(now, self.grace_period()),
            // Not reached: the plan is set before the deregister token is cancelled.
            None => AfterLoss::Drain {
                deadline_unix_ms: plan::reserve_deadline(now, self.grace_period()),
            },
        }
    }

    /// Starts the drain unless it already started; returns the drain in force.
    pub(crate) fn start_drain(&self, source: DrainSource, deadline_unix_ms: u64) -> Drain {
        let remaining =
            Duration::from_millis(deadline_unix_ms.saturating_sub(unix_ms(SystemTime::now())));
        let drain = Drain {
            source,
            deadline: Instant::now() + remaining,
            deadline_unix_ms,
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
