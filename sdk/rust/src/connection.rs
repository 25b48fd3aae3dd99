//! The conversation with the sidecar over `LAMEDUCK_SOCKET` (docs/protocol.md §2–3, §6).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use lameduck_proto::{
    AppMessage, CodecError, LineDecoder, PROTOCOL_VERSION, SidecarMessage, decode_line, encode_line,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::DrainSource;
use crate::plan::AfterLoss;
use crate::shared::{Shared, unix_ms};

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Minimum time between two `activity` messages.
pub(crate) const ACTIVITY_INTERVAL: Duration = Duration::from_millis(100);
/// Waits between attempts to reach a sidecar lost before the shutdown began.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(10));
/// Waits between attempts while deregistering without the sidecar: the phase ends within
/// seconds, so a sidecar that comes back must be found quickly.
const HOLD_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(1));

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// No conversation: the socket could not be reached, or broke before a `welcome`.
    Unreachable,
    /// A welcomed conversation broke.
    Lost,
    /// The sidecar refused us or spoke something we cannot read.
    Rejected,
}

/// Doubling waits between reconnection attempts.
struct Backoff {
    next: Duration,
    first: Duration,
    max: Duration,
}

impl Backoff {
    fn new((first, max): (Duration, Duration)) -> Self {
        Self {
            next: first,
            first,
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let wait = self.next;
        self.next = (wait * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Keeps a conversation with the sidecar until the drain begins (docs/protocol.md §6).
///
/// A sidecar lost before the shutdown began is retried with backoff. One lost while
/// deregistering is retried quickly until the deregister phase's planned end, while the
/// application keeps serving; if it is not back by then, the drain starts here with the
/// sequence's deadline. A sidecar that sent no planned end (an older one) means draining at
/// once. Once the drain began, the work goes on without a sidecar.
///
/// `first` is answered once the first connection was welcomed or failed.
pub(crate) async fn run(shared: Arc<Shared>, path: &Path, first: oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut retry = Backoff::new(RETRY);
    let mut hold_retry = Backoff::new(HOLD_RETRY);
    // The planned end of the deregister phase, once the sidecar was lost during it.
    let mut hold: Option<Instant> = None;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let ended = session(&shared, path, &mut first, attempt, hold).await;
        *shared.writer.lock().await = None;
        shared.connected.store(false, Ordering::SeqCst);
        drop(first.take());
        if shared.drain_token.is_cancelled() {
            return;
        }
        if matches!(ended, Ended::Lost) {
            // A welcomed conversation ended: a new outage, looked into afresh.
            retry.reset();
            hold_retry.reset();
            hold = None;
        }
        let pause = if shared.deregister.is_cancelled() {
            match shared.after_loss() {
                AfterLoss::Drain { deadline_unix_ms } => {
                    tracing::warn!(
                        "no sidecar while deregistering and the deregister phase is over; draining now"
                    );
                    shared.start_drain(DrainSource::SidecarLost, deadline_unix_ms);
                    return;
                }
                AfterLoss::Hold { until_unix_ms } => {
                    let left = until_unix_ms.saturating_sub(unix_ms(SystemTime::now()));
                    if hold.is_none() {
                        tracing::warn!(
                            serving_for_ms = left,
                            "lost the sidecar while deregistering; serving on until the phase's planned end, reconnecting meanwhile"
                        );
                    }
                    let until = Instant::now() + Duration::from_millis(left);
                    hold = Some(until);
                    hold_retry.next().min(Duration::from_millis(left))
                }
            }
        } else if matches!(ended, Ended::Rejected) {
            tracing::warn!("running without the sidecar; SIGTERM/SIGINT start the drain locally");
            return;
        } else {
            retry.next()
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shared.drain_token.cancelled() => return,
        }
    }
}

/// One connection: the handshake (bounded by `hold`, when holding), then the conversation.
async fn session(
    shared: &Arc<Shared>,
    path: &Path,
    first: &mut Option<oneshot::Sender<()>>,
    attempt: u32,
    hold: Option<Instant>,
) -> Ended {
    let welcomed = match hold {
        None => handshake(shared, path, attempt).await,
        Some(until) => tokio::time::timeout_at(until, handshake(shared, path, attempt))
            .await
            .unwrap_or(Err(Ended::Unreachable)),
    };
    let messages = match welcomed {
        Ok(messages) => messages,
        Err(ended) => return ended,
    };
    if attempt > 1 {
        tracing::info!("reconnected to the sidecar");
    }
    if let Some(first) = first.take() {
        let _ = first.send(());
    }
    converse(shared, messages).await
}

/// Connects, says `hello` and reads up to the `welcome`.
async fn handshake(shared: &Arc<Shared>, path: &Path, attempt: u32) -> Result<Messages, Ended> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            log_unreachable(path, attempt, &err.to_string());
            return Err(Ended::Unreachable);
        }
        Err(_) => {
            log_unreachable(path, attempt, "timed out");
            return Err(Ended::Unreachable);
        }
    };
    let (reader, mut writer) = stream.into_split();
    let hello = AppMessage::Hello {
        v: PROTOCOL_VERSION,
        container: shared.config.container.clone(),
        pid: std::process::id(),
    };
    // `hello` goes out before the writer is shared: the activity reporter may be running
    // (traffic while the sidecar was away) and must not speak first.
    match tokio::time::timeout(CONNECT_TIMEOUT, writer.write_all(&encode_line(&hello))).await {
        Ok(Ok(())) => *shared.writer.lock().await = Some(writer),
        Ok(Err(err)) => {
            log_unreachable(path, attempt, &err.to_string());
            return Err(Ended::Unreachable);
        }
        Err(_) => {
            log_unreachable(path, attempt, "hello timed out");
            return Err(Ended::Unreachable);
        }
    }
    let mut messages = Messages::new(reader);
    loop {
        match messages.next().await {
            Ok(SidecarMessage::Welcome { v, grace_seconds }) => {
                if v != PROTOCOL_VERSION {
                    tracing::warn!(
                        version = v,
                        "the sidecar speaks another protocol version; closing"
                    );
                    return Err(Ended::Rejected);
                }
                shared.grace_seconds.store(grace_seconds, Ordering::Relaxed);
                shared.connected.store(true, Ordering::SeqCst);
                tracing::info!(grace_seconds, "connected to the sidecar");
                return Ok(messages);
            }
            Ok(SidecarMessage::Unknown) => {
                tracing::debug!("ignoring a message of an unknown type");
            }
            Ok(other) => {
                tracing::warn!(message = ?other, "closing the connection: expected welcome");
                return Err(Ended::Rejected);
            }
            Err(ReadFailure::Eof) => {
                tracing::warn!("the sidecar closed the connection without a welcome");
                return Err(Ended::Rejected);
            }
            Err(ReadFailure::Io(err)) => {
                tracing::warn!(error = %err, "reading from the sidecar failed");
                return Err(Ended::Unreachable);
            }
            Err(ReadFailure::Invalid(reason)) => {
                tracing::warn!(%reason, "closing the connection to the sidecar");
                return Err(Ended::Rejected);
            }
        }
    }
}

fn log_unreachable(path: &Path, attempt: u32, reason: &str) {
    if attempt == 1 {
        tracing::warn!(
            socket = %path.display(),
            %reason,
            "cannot reach the sidecar; retrying, SIGTERM/SIGINT start the drain locally meanwhile"
        );
    } else {
        tracing::debug!(socket = %path.display(), %reason, attempt, "reconnect failed");
    }
}

/// Handles the sidecar's messages after the `welcome`, until the connection ends.
async fn converse(shared: &Arc<Shared>, mut messages: Messages) -> Ended {
    loop {
        let message = match messages.next().await {
            Ok(message) => message,
            Err(ReadFailure::Eof) => {
                if shared.done_sent.load(Ordering::SeqCst) {
                    tracing::debug!("the sidecar closed the connection after done");
                } else {
                    tracing::warn!("lost the connection to the sidecar");
                }
                return Ended::Lost;
            }
            Err(ReadFailure::Io(err)) => {
                tracing::warn!(error = %err, "reading from the sidecar failed");
                return Ended::Lost;
            }
            Err(ReadFailure::Invalid(reason)) => {
                tracing::warn!(%reason, "closing the connection to the sidecar");
                return Ended::Rejected;
            }
        };
        match message {
            SidecarMessage::Welcome { .. } => {
                tracing::debug!("ignoring a second welcome");
            }
            SidecarMessage::Deregister {
                phase_end_unix_ms,
                deadline_unix_ms,
            } => {
                // A sidecar that resumes the shutdown after a reconnection sends it again:
                // nothing changes but the baseline `activity` it needs.
                if shared.deregistered(phase_end_unix_ms, deadline_unix_ms) {
                    tracing::info!(
                        phase_end_unix_ms,
                        deadline_unix_ms,
                        "deregistering; serving on with `Connection: close` and reporting activity"
                    );
                } else {
                    tracing::debug!("deregister again; already deregistering");
                }
                start_activity_reporter(shared);
            }
            SidecarMessage::Drain { deadline_unix_ms } => {
                shared.start_drain(DrainSource::Sidecar, deadline_unix_ms);
            }
            SidecarMessage::Unknown => {
                tracing::debug!("ignoring a message of an unknown type");
            }
        }
    }
}

/// Why no message could be read.
enum ReadFailure {
    /// The sidecar closed the connection.
    Eof,
    Io(std::io::Error),
    /// Not a line of the protocol: the connection is closed (docs/protocol.md §1).
    Invalid(String),
}

/// The sidecar's messages, one per line.
struct Messages {
    reader: OwnedReadHalf,
    decoder: LineDecoder,
    buffer: Vec<u8>,
}

impl Messages {
    fn new(reader: OwnedReadHalf) -> Self {
        Self {
            reader,
            decoder: LineDecoder::new(),
            buffer: vec![0u8; 8192],
        }
    }

    async fn next(&mut self) -> Result<SidecarMessage, ReadFailure> {
        loop {
            match self.decoder.next_line() {
                Some(Ok(line)) => {
                    return decode_line::<SidecarMessage>(&line)
                        .map_err(|err| invalid("malformed message", &err));
                }
                Some(Err(err)) => return Err(invalid("unreadable line", &err)),
                None => match self.reader.read(&mut self.buffer).await {
                    Ok(0) => {
                        // A sidecar that died mid-line is lost, not misbehaving.
                        if let Err(err) = self.decoder.finish() {
                            tracing::warn!(error = %err, "the sidecar closed the connection");
                        }
                        return Err(ReadFailure::Eof);
                    }
                    Ok(n) => self.decoder.push(&self.buffer[..n]),
                    Err(err) => return Err(ReadFailure::Io(err)),
                },
            }
        }
    }
}

fn invalid(what: &str, err: &CodecError) -> ReadFailure {
    ReadFailure::Invalid(format!("{what}: {err}"))
}

/// Starts the task that sends `activity` on change, at most every 100 ms, until `drained`;
/// and at once after each `deregister`, as the sidecar's baseline.
fn start_activity_reporter(shared: &Arc<Shared>) {
    if shared
        .activity_reporter_started
        .swap(true, Ordering::SeqCst)
    {
        return;
    }
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let current = (shared.arrivals(), shared.inflight.load(Ordering::SeqCst));
            let baseline = shared.activity_baseline.swap(false, Ordering::SeqCst);
            if baseline || last != Some(current) {
                let (accepted_total, inflight) = current;
                if shared
                    .send(&AppMessage::Activity {
                        accepted_total,
                        inflight,
                    })
                    .await
                {
                    last = Some(current);
                }
                tokio::select! {
                    _ = tokio::time::sleep(ACTIVITY_INTERVAL) => {}
                    _ = shared.activity_stop.cancelled() => return,
                }
            }
            tokio::select! {
                _ = shared.activity_changed.notified() => {}
                _ = shared.activity_stop.cancelled() => return,
            }
        }
    });
}
