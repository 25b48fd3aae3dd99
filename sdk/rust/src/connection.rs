//! The conversation with the sidecar over `LAMEDUCK_SOCKET` (docs/protocol.md §2–3, §6).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use lameduck_proto::{AppMessage, LineDecoder, PROTOCOL_VERSION, SidecarMessage, decode_line};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::sync::oneshot;

use crate::DrainSource;
use crate::shared::{Shared, unix_ms};

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Minimum time between two `activity` messages.
pub(crate) const ACTIVITY_INTERVAL: Duration = Duration::from_millis(100);
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(10);

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// Could not connect, or the connection broke after a `welcome`: worth retrying.
    Lost,
    /// The sidecar refused us or spoke something we cannot read: retrying will not help.
    Rejected,
}

/// Keeps a connection to the sidecar until the drain begins; reconnects after losing one.
///
/// `first` is answered once the first connection was welcomed or failed.
pub(crate) async fn run(shared: Arc<Shared>, path: &Path, first: oneshot::Sender<()>) {
    let mut first = Some(first);
    let mut retry = FIRST_RETRY;
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let ended = session(&shared, path, &mut first, attempt).await;
        *shared.writer.lock().await = None;
        shared.connected.store(false, Ordering::SeqCst);
        drop(first.take());
        if matches!(ended, Ended::Rejected) {
            tracing::warn!("running without the sidecar; SIGTERM/SIGINT start the drain locally");
            return;
        }
        if shared.drain_token.is_cancelled() {
            // Too late for a new conversation: the application finishes on its own.
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shared.drain_token.cancelled() => return,
        }
        retry = (retry * 2).min(MAX_RETRY);
    }
}

async fn session(
    shared: &Arc<Shared>,
    path: &Path,
    first: &mut Option<oneshot::Sender<()>>,
    attempt: u32,
) -> Ended {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, UnixStream::connect(path)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            log_unreachable(path, attempt, &err.to_string());
            return Ended::Lost;
        }
        Err(_) => {
            log_unreachable(path, attempt, "timed out");
            return Ended::Lost;
        }
    };
    let (reader, writer) = stream.into_split();
    *shared.writer.lock().await = Some(writer);
    let hello = AppMessage::Hello {
        v: PROTOCOL_VERSION,
        container: shared.config.container.clone(),
        pid: std::process::id(),
    };
    if !shared.send(&hello).await {
        return Ended::Lost;
    }
    read_messages(shared, reader, first).await
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

async fn read_messages(
    shared: &Arc<Shared>,
    mut reader: OwnedReadHalf,
    first: &mut Option<oneshot::Sender<()>>,
) -> Ended {
    let mut decoder = LineDecoder::new();
    let mut buffer = vec![0u8; 8192];
    let mut welcomed = false;
    loop {
        let line = match decoder.next_line() {
            Some(Ok(line)) => line,
            Some(Err(err)) => {
                tracing::warn!(error = %err, "closing the connection to the sidecar");
                return Ended::Rejected;
            }
            None => match reader.read(&mut buffer).await {
                Ok(0) => {
                    if let Err(err) = decoder.finish() {
                        tracing::warn!(error = %err, "the sidecar closed the connection");
                    }
                    return closed(shared, welcomed);
                }
                Ok(n) => {
                    decoder.push(&buffer[..n]);
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "reading from the sidecar failed");
                    return closed(shared, welcomed);
                }
            },
        };
        let message = match decode_line::<SidecarMessage>(&line) {
            Ok(message) => message,
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "closing the connection to the sidecar: malformed message"
                );
                return Ended::Rejected;
            }
        };
        match message {
            SidecarMessage::Welcome { v, grace_seconds } => {
                if v != PROTOCOL_VERSION {
                    tracing::warn!(
                        version = v,
                        "the sidecar speaks another protocol version; closing"
                    );
                    return Ended::Rejected;
                }
                welcomed = true;
                shared.grace_seconds.store(grace_seconds, Ordering::Relaxed);
                shared.connected.store(true, Ordering::SeqCst);
                tracing::info!(grace_seconds, "connected to the sidecar");
                if let Some(first) = first.take() {
                    let _ = first.send(());
                }
            }
            SidecarMessage::Deregister { .. } => {
                if !shared.deregister.is_cancelled() {
                    tracing::info!(
                        "deregistering; serving on with `Connection: close` and reporting activity"
                    );
                    shared.deregister.cancel();
                }
                start_activity_reporter(shared);
            }
            SidecarMessage::Drain { deadline_unix_ms } => {
                let remaining = deadline_unix_ms.saturating_sub(unix_ms(SystemTime::now()));
                shared.start_drain(DrainSource::Sidecar, Duration::from_millis(remaining));
            }
            SidecarMessage::Unknown => {
                tracing::debug!("ignoring a message of an unknown type");
            }
        }
    }
}

fn closed(shared: &Shared, welcomed: bool) -> Ended {
    if !welcomed {
        tracing::warn!("the sidecar closed the connection without a welcome");
        return Ended::Rejected;
    }
    if shared.done_sent.load(Ordering::SeqCst) {
        tracing::debug!("the sidecar closed the connection after done");
    } else {
        tracing::warn!("lost the connection to the sidecar");
    }
    Ended::Lost
}

/// Starts the task that sends `activity` on change, at most every 100 ms, until `drained`.
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
            if last != Some(current) {
                let (accepted_total, inflight) = current;
                // The first report is sent at once: it is the sidecar's baseline.
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
