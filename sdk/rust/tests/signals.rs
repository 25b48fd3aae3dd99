//! SIGTERM without a sidecar starts the drain and cleanup runs (its own test binary: the
//! signal is sent to this very process).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lameduck::{Builder, DrainSource};

#[tokio::test]
async fn sigterm_without_a_sidecar_drains_and_cleans_up() {
    let lameduck = Builder::new()
        .fallback_grace(Duration::from_secs(10))
        .connect()
        .await;
    let runs = Arc::new(AtomicUsize::new(0));
    lameduck.on_cleanup("count", {
        let runs = Arc::clone(&runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        }
    });
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());

    let drain = tokio::time::timeout(Duration::from_secs(5), lameduck.drain_started())
        .await
        .expect("SIGTERM started the drain");
    assert_eq!(drain.source(), DrainSource::Signal);
    // 10 s grace minus the 2 s reserve.
    assert!(
        drain.remaining() > Duration::from_secs(7) && drain.remaining() <= Duration::from_secs(8)
    );
    let shutdown = lameduck.shutdown().await;
    assert!(shutdown.is_ok());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
