//! Cleanup functions: registered in order, each run exactly once and to completion.
//!
//! The drain deadline is the moment the sidecar lets the kubelet send SIGTERM, not the
//! moment the process dies: the kubelet's SIGKILL comes at the end of the grace period,
//! a little later. Abandoning a cleanup at the deadline would skip exactly the work that
//! must not be skipped, so a cleanup keeps running past it (with a warning) until it
//! finishes or the process is killed. A kill is then visible to the operator (exit 137),
//! which raises the workload's grace period for the next pods.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

/// The error type cleanup functions may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// One registered cleanup function.
pub(crate) struct Cleanup {
    pub(crate) name: String,
    pub(crate) run: Box<dyn FnOnce() -> BoxFuture + Send>,
}

impl fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cleanup").field("name", &self.name).finish()
    }
}

impl Cleanup {
    pub(crate) fn new<F, Fut, E>(name: String, cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self {
            name,
            run: Box::new(move || Box::pin(async move { cleanup().await.map_err(Into::into) })),
        }
    }
}

/// A cleanup function that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanupFailure {
    /// The name it was registered with.
    pub name: String,
    /// What went wrong: its error, a timeout at the deadline, or a panic.
    pub reason: String,
}

impl fmt::Display for CleanupFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.reason)
    }
}

/// Runs the cleanups in order, each to completion even past the deadline (a warning is
/// logged when it passes); an error or a panic fails only that cleanup.
pub(crate) async fn run_all(cleanups: Vec<Cleanup>, deadline: Instant) -> Vec<CleanupFailure> {
    let mut failures = Vec::new();
    for Cleanup { name, run } in cleanups {
        let started = Instant::now();
        let mut guarded = CatchUnwind { inner: run() };
        let result = tokio::select! {
            result = &mut guarded => result,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(cleanup = %name, "cleanup still running at the drain deadline; letting it finish");
                guarded.await
            }
        };
        let reason = match result {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(()) => Some("panicked".to_string()),
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        match reason {
            None => tracing::info!(cleanup = %name, elapsed_ms, "cleanup finished"),
            Some(reason) => {
                tracing::warn!(cleanup = %name, elapsed_ms, %reason, "cleanup failed");
                failures.push(CleanupFailure { name, reason });
            }
        }
    }
    failures
}

/// Turns a panic while polling the inner future into `Err(())`.
struct CatchUnwind {
    inner: BoxFuture,
}

impl Future for CatchUnwind {
    type Output = Result<Result<(), BoxError>, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll(cx))) {
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn recording(log: &Arc<Mutex<Vec<String>>>, name: &str) -> Cleanup {
        let log = Arc::clone(log);
        let entry = name.to_string();
        Cleanup::new(name.to_string(), move || async move {
            log.lock().unwrap().push(entry);
            Ok::<(), BoxError>(())
        })
    }

    #[tokio::test]
    async fn runs_in_registration_order() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let cleanups = vec![
            recording(&log, "a"),
            recording(&log, "b"),
            recording(&log, "c"),
        ];
        let failures = run_all(cleanups, Instant::now() + Duration::from_secs(5)).await;
        assert!(failures.is_empty());
        assert_eq!(*log.lock().unwrap(), ["a", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_and_panics_do_not_stop_the_rest_and_slow_ones_finish() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let cleanups = vec![
            Cleanup::new("fails".into(), || async { Err::<(), _>("disk full") }),
            Cleanup::new("panics".into(), || async {
                if true {
                    panic!("bug in cleanup");
                }
                Ok::<(), BoxError>(())
            }),
            Cleanup::new("slow".into(), || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<(), BoxError>(())
            }),
            recording(&log, "after the deadline"),
        ];
        let start = Instant::now();
        let failures = run_all(cleanups, start + Duration::from_secs(1)).await;
        let reasons: Vec<String> = failures.iter().map(ToString::to_string).collect();
        assert_eq!(reasons, ["fails: disk full", "panics: panicked",]);
        // The slow one ran to its end (60 s, past the 1 s deadline), then the next one ran.
        assert!(Instant::now() >= start + Duration::from_secs(60));
        assert_eq!(*log.lock().unwrap(), ["after the deadline"]);
    }
}
