//! The sidecar's own clients: `prestop` (the app container's exec hook) and `probe` (the
//! sidecar's startup probe). Both talk to the control socket.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lameduck_proto::{ControlReply, ControlRequest, decode_line, encode_line, names};
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

/// The preStop hook: blocks until the sidecar releases `container`, then exits 0. It never
/// fails and never hangs: an unreachable sidecar costs the bounded fallback delay, a silent
/// one at most its own deadline plus a second.
pub async fn prestop(dir: &Path, container: &str, fallback: Duration) -> ExitCode {
    let socket = run_dir(dir).join(names::CONTROL_SOCKET);
    let stream = match timeout(CONNECT_TIMEOUT, UnixStream::connect(&socket)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            return fall_back(&format!("cannot reach {}: {e}", socket.display()), fallback).await;
        }
        Err(_) => {
            return fall_back(&format!("no answer from {}", socket.display()), fallback).await;
        }
    };
    let (read, mut write) = stream.into_split();
    let request = ControlRequest::Prestop {
        container: container.to_owned(),
    };
    if let Err(e) = write.write_all(&encode_line(&request)).await {
        return fall_back(&format!("the sidecar closed the connection: {e}"), fallback).await;
    }
    let mut lines = LineReader::new(read);
    // Until the sidecar states its deadline, wait no longer than the connect timeout.
    let mut give_up = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = sleep_until(give_up) => {
                warn!(container, "no release from the sidecar in time; letting the container stop");
                return ExitCode::SUCCESS;
            }
        };
        match line.map(|l| l.map(|l| decode_line::<ControlReply>(&l))) {
            Ok(Some(Ok(ControlReply::Accepted { release_by_unix_ms, .. }))) => {
                give_up = instant_of_unix_ms(release_by_unix_ms) + RELEASE_SLACK;
            }
            Ok(Some(Ok(ControlReply::Release { outcome }))) => {
                info!(container, %outcome, "released by the sidecar");
                return ExitCode::SUCCESS;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                warn!(
                    container,
                    "unreadable reply from the sidecar ({e}); letting the container stop"
                );
                return ExitCode::SUCCESS;
            }
            Ok(None) | Err(_) => {
                warn!(
                    container,
                    "the sidecar went away; letting the container stop"
                );
                return ExitCode::SUCCESS;
            }
        }
    }
}

async fn fall_back(reason: &str, fallback: Duration) -> ExitCode {
    warn!("{reason}; waiting the fallback delay of {fallback:?}");
    sleep(fallback).await;
    ExitCode::SUCCESS
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
