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
#[ignore = "a child process of sigterm_after_done_exits_at_once"]
async fn child_lingering_after_done() {
    assert!(
        std::env::var_os("LAMEDUCK_TEST_CHILD").is_some(),
        "run by sigterm_after_done_exits_at_once only"
    );
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
            "--ignored",
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

/// Run as a child process by `sigterm_in_a_pod_without_a_sidecar_counts_the_hook_s_wait`:
/// an injected container whose sidecar cannot be reached gets SIGTERM.
#[tokio::test]
#[ignore = "a child process of sigterm_in_a_pod_without_a_sidecar_counts_the_hook_s_wait"]
async fn child_injected_without_a_sidecar() {
    assert!(
        std::env::var_os("LAMEDUCK_TEST_CHILD").is_some(),
        "run by sigterm_in_a_pod_without_a_sidecar_counts_the_hook_s_wait only"
    );
    let lameduck = lameduck::connect().await;
    assert!(!lameduck.is_connected());
    let runs = Arc::new(AtomicUsize::new(0));
    lameduck.on_cleanup("count", {
        let runs = Arc::clone(&runs);
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        }
    });
    let signalled = unix_ms();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let drain = tokio::time::timeout(Duration::from_secs(5), lameduck.drain_started())
        .await
        .expect("SIGTERM started the drain");
    assert_eq!(drain.source(), DrainSource::Signal);
    let shutdown = lameduck.shutdown().await;
    assert!(shutdown.is_ok());
    println!(
        "child: deadline {} ms after the signal, cleanups {}",
        drain.deadline_unix_ms() as i64 - signalled as i64,
        runs.load(Ordering::SeqCst)
    );
}

#[test]
fn sigterm_in_a_pod_without_a_sidecar_counts_the_hook_s_wait() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "child_injected_without_a_sidecar",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LAMEDUCK_TEST_CHILD", "1")
        .env("LAMEDUCK_SOCKET", dir.path().join("nobody-listens.sock"))
        .env("LAMEDUCK_GRACE_SECONDS", "10")
        .env("LAMEDUCK_FALLBACK_DELAY_MILLIS", "4000")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|line| line.split_once("child: deadline ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("the child did not report: {stdout}"));
    let (after_signal, cleanups) = line
        .split_once(" ms after the signal, cleanups ")
        .expect("report format");
    let after_signal: i64 = after_signal.parse().expect("a number");
    // The hook waited 4 s of the 10 s grace period before SIGTERM: 6 s left, 2 s reserve.
    assert!(
        (4_000 - 300..=4_000 + 300).contains(&after_signal),
        "the drain deadline is {after_signal} ms after SIGTERM, want about 4000"
    );
    assert_eq!(cleanups, "1", "cleanup runs exactly once");
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}
