//! The sidecar's own clients: `prestop` (the app container's exec hook) and `probe` (the
//! sidecar's startup probe). Both talk to the control socket.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck_proto::{
    ControlReply, ControlRequest, DrainAction, Outcome, decode_line, encode_line, names, timing,
};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{info, warn};

use crate::lines::LineReader;
use crate::settings::run_dir;

/// How long connecting and the first answer may take before the sidecar counts as
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack after the sidecar's own release deadline before the hook gives up waiting.
const RELEASE_SLACK: Duration = Duration::from_secs(1);

/// How often a hook that lost the sidecar tries to reach it again.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(250);

/// The preStop hook: blocks until the sidecar releases `container`, then exits 0. It never
/// fails and never hangs: an unreachable sidecar costs the bounded fallback delay, a silent
/// one at most its own deadline plus a second.
///
/// A sidecar that goes away mid-shutdown does not release the container early: traffic may
/// still be routed to the pod until the deregister phase's planned end, so the hook holds
/// until then, reconnecting meanwhile in case the kubelet restarts the sidecar (which
/// resumes the shutdown from its state file). It never waits past the first deadline the
/// sidecar announced.
///
/// When the container took no part in the protocol (the sidecar answers `no-app`), or the
/// sidecar was lost, the hook then runs the container's drain action and waits for its
/// listeners to close, never past the release deadline (`drain_action`).
pub async fn prestop(
    dir: &Path,
    container: &str,
    grace_seconds: Option<u64>,
    fallback: Duration,
    action: DrainAction,
    pod_grace: Duration,
) -> ExitCode {
    let started = Instant::now();
    let socket = run_dir(dir).join(names::CONTROL_SOCKET);
    let mut plan = Plan::default();
    let drain = match hold(&socket, container, grace_seconds, fallback, &mut plan).await {
        Let::Go => false,
        Let::Drain => true,
        Let::FellBack => {
            // No deadline from the sidecar: the one it would have set, from the hook's start.
            let grace = grace_seconds
                .map(Duration::from_secs)
                .map_or(pod_grace, |g| g.min(pod_grace));
            let reserve = Duration::from_millis(timing::exit_reserve_millis(
                u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            ));
            plan.release_by = Some(started + grace.saturating_sub(reserve));
            true
        }
    };
    if drain && let Some(until) = plan.release_by {
        crate::drain_action::run(&action, container, until).await;
    }
    ExitCode::SUCCESS
}

/// What the hook does once the sidecar let the container go.
enum Let {
    /// Nothing more: an application of the container drained through the protocol, or
    /// the deadline passed.
    Go,
    /// Run the drain action: no application took part, or the sidecar was lost.
    Drain,
    /// The sidecar was never reached: the fallback delay was waited; run the drain action.
    FellBack,
}

/// Holds the container until the sidecar releases it (or is lost for good).
async fn hold(
    socket: &Path,
    container: &str,
    grace_seconds: Option<u64>,
    fallback: Duration,
    plan: &mut Plan,
) -> Let {
    let mut stream = match connect(socket).await {
        Ok(stream) => stream,
        Err(reason) => {
            fall_back(&reason, fallback).await;
            return Let::FellBack;
        }
    };
    loop {
        let reason = match wait_for_release(stream, container, grace_seconds, plan).await {
            Ended::Released(Some(Outcome::NoApp)) => return Let::Drain,
            Ended::Released(_) => return Let::Go,
            Ended::Lost(reason) => reason,
        };
        if plan.give_up.is_none() {
            // Gone before it said anything: as unreachable as a sidecar that never answered.
            fall_back(&reason, fallback).await;
            return Let::FellBack;
        }
        let Some(hold) = plan.hold_until().filter(|h| *h > Instant::now()) else {
            warn!(container, "{reason}; letting the container stop");
            return Let::Drain;
        };
        warn!(
            container,
            "{reason}; holding the container until the deregister phase's planned end, reconnecting meanwhile"
        );
        match reconnect(socket, hold).await {
            Some(again) => {
                info!(container, "reached the sidecar again");
                stream = again;
            }
            None => {
                warn!(
                    container,
                    "the deregister phase's planned end passed without the sidecar; letting the container stop"
                );
                return Let::Drain;
            }
        }
    }
}

/// What the sidecar announced in `accepted`.
#[derive(Debug, Default)]
struct Plan {
    /// The first release deadline (plus slack): the hook never waits past it.
    give_up: Option<Instant>,
    /// The first release deadline itself: a drain action never waits past it.
    release_by: Option<Instant>,
    /// The planned end of the deregister phase.
    deregister_end: Option<Instant>,
}

impl Plan {
    fn accepted(&mut self, release_by_unix_ms: u64, deregister_end_unix_ms: Option<u64>) {
        let release_by = instant_of_unix_ms(release_by_unix_ms);
        self.release_by = Some(
            self.release_by
                .map_or(release_by, |first| first.min(release_by)),
        );
        let give_up = release_by + RELEASE_SLACK;
        // A sidecar that lost its state would announce a later deadline than the kubelet's.
        self.give_up = Some(self.give_up.map_or(give_up, |first| first.min(give_up)));
        if let Some(end) = deregister_end_unix_ms {
            self.deregister_end = Some(instant_of_unix_ms(end));
        }
    }

    /// How long to keep the container when the sidecar is gone.
    fn hold_until(&self) -> Option<Instant> {
        match (self.deregister_end, self.give_up) {
            (Some(end), Some(give_up)) => Some(end.min(give_up)),
            _ => None,
        }
    }
}

/// How one connection to the sidecar ended.
enum Ended {
    /// The container may stop: released (with the outcome), or the deadline passed.
    Released(Option<Outcome>),
    /// The sidecar went away (or never answered the request).
    Lost(String),
}

async fn connect(socket: &Path) -> Result<UnixStream, String> {
    match timeout(CONNECT_TIMEOUT, UnixStream::connect(socket)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(format!("cannot reach {}: {e}", socket.display())),
        Err(_) => Err(format!("no answer from {}", socket.display())),
    }
}

/// Tries to reach the sidecar until `until`.
async fn reconnect(socket: &Path, until: Instant) -> Option<UnixStream> {
    while Instant::now() < until {
        if let Ok(Ok(stream)) = timeout(
            until.saturating_duration_since(Instant::now()),
            UnixStream::connect(socket),
        )
        .await
        {
            return Some(stream);
        }
        tokio::select! {
            _ = sleep(RECONNECT_INTERVAL) => {}
            _ = sleep_until(until) => return None,
        }
    }
    None
}

/// Sends `prestop` and waits for `release` on one connection.
async fn wait_for_release(
    stream: UnixStream,
    container: &str,
    grace_seconds: Option<u64>,
    plan: &mut Plan,
) -> Ended {
    let (read, mut write) = stream.into_split();
    let request = ControlRequest::Prestop {
        container: container.to_owned(),
        grace_seconds,
    };
    if let Err(e) = write.write_all(&encode_line(&request)).await {
        return Ended::Lost(format!("the sidecar closed the connection: {e}"));
    }
    let mut lines = LineReader::new(read);
    loop {
        // Until the sidecar states its deadline, wait no longer than the connect timeout.
        let give_up = plan
            .give_up
            .unwrap_or_else(|| Instant::now() + CONNECT_TIMEOUT);
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = sleep_until(give_up) => {
                warn!(container, "no release from the sidecar in time; letting the container stop");
                return Ended::Released(None);
            }
        };
        match line.map(|l| l.map(|l| decode_line::<ControlReply>(&l))) {
            Ok(Some(Ok(ControlReply::Accepted {
                release_by_unix_ms,
                deregister_end_unix_ms,
            }))) => plan.accepted(release_by_unix_ms, deregister_end_unix_ms),
            Ok(Some(Ok(ControlReply::Release { outcome }))) => {
                info!(container, %outcome, "released by the sidecar");
                return Ended::Released(Some(outcome));
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                warn!(
                    container,
                    "unreadable reply from the sidecar ({e}); letting the container stop"
                );
                return Ended::Released(None);
            }
            Ok(None) => return Ended::Lost("the sidecar went away".into()),
            Err(e) => return Ended::Lost(format!("the sidecar connection failed: {e}")),
        }
    }
}

async fn fall_back(reason: &str, fallback: Duration) {
    warn!("{reason}; waiting the fallback delay of {fallback:?}");
    sleep(fallback).await;
}

/// Converts a wall-clock deadline into a monotonic instant (now if it already passed).
fn instant_of_unix_ms(unix_ms: u64) -> Instant {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let ahead = u64::try_from(u128::from(unix_ms).saturating_sub(now_ms)).unwrap_or(u64::MAX);
    Instant::now() + Duration::from_millis(ahead.min(3_600_000))
}

/// The startup probe: exit 0 when `serve` answers `ready`, 1 otherwise.
pub async fn probe(dir: &Path) -> ExitCode {
    let socket = run_dir(dir).join(names::CONTROL_SOCKET);
    let answer = timeout(CONNECT_TIMEOUT, async {
        let stream = UnixStream::connect(&socket)
            .await
            .map_err(|e| e.to_string())?;
        let (read, mut write) = stream.into_split();
        write
            .write_all(&encode_line(&ControlRequest::Probe {}))
            .await
            .map_err(|e| e.to_string())?;
        let line = LineReader::new(read)
            .next_line()
            .await
            .map_err(|e| e.to_string())?;
        match line.map(|l| decode_line::<ControlReply>(&l)) {
            Some(Ok(ControlReply::Ready {})) => Ok(()),
            other => Err(format!("unexpected answer {other:?}")),
        }
    })
    .await;
    match answer {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("lameduck sidecar not ready at {}: {e}", socket.display());
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!(
                "lameduck sidecar not ready at {}: no answer",
                socket.display()
            );
            ExitCode::FAILURE
        }
    }
}
