//! SIGTERM/SIGINT: the fallback when no sidecar drives the shutdown (docs/protocol.md §6).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::signal::unix::{SignalKind, signal};

use crate::DrainSource;
use crate::shared::Shared;

/// Handles SIGTERM and SIGINT for the life of the process.
///
/// - after `done` (cleanup finished): exit at once;
/// - before any drain: start the drain locally, with the deadline of docs/protocol.md §6
///   (after `deregister` the sequence's; before it, the grace period from now, less the
///   preStop hook's fallback delay when no sidecar is connected, less the exit reserve);
/// - while draining: keep going (a second SIGINT exits at once, for people at a terminal).
pub(crate) fn install(shared: Arc<Shared>) {
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, "cannot handle SIGTERM/SIGINT");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                Some(()) = terminate.recv() => "SIGTERM",
                Some(()) = interrupt.recv() => "SIGINT",
                else => return,
            };
            if shared.done_sent.load(Ordering::SeqCst) {
                let ok = shared.shutdown_ok.load(Ordering::SeqCst);
                tracing::info!(signal = name, "cleanup already finished; exiting");
                std::process::exit(if ok { 0 } else { 1 });
            }
            if !shared.drain_token.is_cancelled() {
                tracing::info!(signal = name, "signal received; draining");
                shared.start_drain(DrainSource::Signal, shared.local_deadline());
            } else if name == "SIGINT"
                && shared.drain.get().map(|d| d.source) == Some(DrainSource::Signal)
            {
                tracing::warn!("second SIGINT; exiting without waiting for cleanup");
                std::process::exit(130);
            } else {
                tracing::info!(
                    signal = name,
                    "signal received while draining; cleanup goes on until the deadline"
                );
            }
        }
    });
}
