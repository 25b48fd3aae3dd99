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

/// Run as a child process by `sigterm_after_done_exits_at_once`: finishes the shutdown
/// sequence, then lingers as if some task kept the process alive.
#[tokio::test]
async fn child_lingering_after_done() {
    if std::env::var_os("LAMEDUCK_TEST_CHILD").is_none() {
        return;
    }
    let lameduck = Builder::new().connect().await;
    lameduck.on_cleanup("noop", || async { Ok::<(), std::io::Error>(()) });
    assert!(lameduck.shutdown().await.is_ok());
    println!("child: done sent");
    tokio::time::sleep(Duration::from_secs(30)).await;
    panic!("SIGTERM after done did not end the process");
}

#[test]
fn sigterm_after_done_exits_at_once() {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_lingering_after_done",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LAMEDUCK_TEST_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("child: done sent"));
    assert!(ready, "the child did not finish its shutdown");
    let sent = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "exit took {:?}",
        sent.elapsed()
    );
}
