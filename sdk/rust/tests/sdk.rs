//! The SDK against a fake sidecar on a real Unix socket, and without any sidecar.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{FakeSidecar, STEP, connect_to, http_get, init_logging, now_unix_ms, serve};
use lameduck::{Builder, DrainSource};
use serde_json::json;

fn record(
    log: &Arc<Mutex<Vec<String>>>,
    entry: &str,
) -> impl FnOnce() -> std::future::Ready<Result<(), std::io::Error>> + Send + 'static {
    let log = Arc::clone(log);
    let entry = entry.to_string();
    move || {
        log.lock().unwrap().push(entry);
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn without_a_sidecar_cleanup_runs_once_in_order() {
    init_logging();
    let lameduck = Builder::new().handle_signals(false).connect().await;
    assert!(!lameduck.is_connected());
    let log = Arc::new(Mutex::new(Vec::new()));
    lameduck.on_cleanup("first", record(&log, "first"));
    lameduck.on_cleanup("second", record(&log, "second"));
    lameduck.on_cleanup("third", record(&log, "third"));

    let (a, b) = tokio::join!(lameduck.shutdown(), lameduck.shutdown());
    assert_eq!(a, b, "concurrent calls share one sequence");
    assert!(a.is_ok() && !a.acknowledged(), "{a:?}");
    assert_eq!(a.drain().source(), DrainSource::Shutdown);
    // Default grace 30 s minus the 2 s reserve.
    assert!(a.drain().remaining() > Duration::from_secs(27), "{a:?}");
    assert_eq!(lameduck.shutdown().await, a);
    assert_eq!(*log.lock().unwrap(), ["first", "second", "third"]);

    lameduck.on_cleanup("late", record(&log, "late"));
    assert_eq!(lameduck.shutdown().await, a);
    assert_eq!(log.lock().unwrap().len(), 3, "a late cleanup is not run");
}

#[tokio::test]
async fn deregister_closes_connections_and_reports_activity_at_most_every_100ms() {
    init_logging();
    let sidecar = FakeSidecar::new();
    let app = connect_to(&sidecar).await;
    let mut conn = sidecar.accept_welcomed(30).await;
    let lameduck = app.await.expect("connect");
    assert!(lameduck.is_connected());
    assert_eq!(lameduck.grace_period(), Some(Duration::from_secs(30)));
    let (addr, _server) = serve(&lameduck, Duration::ZERO).await;

    let before = http_get(addr, "/").await;
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert!(
        !before.to_ascii_lowercase().contains("connection: close"),
        "{before}"
    );
    assert!(!lameduck.is_deregistering());

    conn.send(&json!({"type": "deregister"})).await;
    let baseline = conn.read().await.expect("baseline activity");
    assert_eq!(
        baseline,
        json!({"type": "activity", "accepted_total": 1, "inflight": 0})
    );
    assert!(lameduck.is_deregistering());

    // Read while the requests go on: messages left queued in the socket would all be
    // received at once, whatever their spacing when sent.
    let reader = tokio::spawn(async move {
        let mut times = Vec::new();
        loop {
            let message = conn.read().await.expect("activity");
            assert_eq!(message["type"], "activity", "{message}");
            times.push(Instant::now());
            if message["accepted_total"] == 21 && message["inflight"] == 0 {
                return times;
            }
        }
    });
    for _ in 0..20 {
        let response = http_get(addr, "/").await;
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
    }
    assert_eq!(lameduck.accepted_total(), 21);
    let times = reader.await.expect("activity reader");
    // Sent at least 100 ms apart; receiving adds scheduling jitter to single gaps.
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= Duration::from_millis(50),
            "activity sent after {gap:?}"
        );
    }
    if let [first, .., last] = times[..] {
        let mean = (last - first) / (times.len() as u32 - 1);
        assert!(
            mean >= Duration::from_millis(95),
            "activity every {mean:?} on average"
        );
    }
    assert!(
        times.len() < 20,
        "changes are batched: {} messages",
        times.len()
    );
}

#[tokio::test]
async fn drain_waits_for_inflight_requests_then_runs_cleanup() {
    init_logging();
    let sidecar = FakeSidecar::new();
    let app = connect_to(&sidecar).await;
    let mut conn = sidecar.accept_welcomed(30).await;
    let lameduck = app.await.expect("connect");
    let log = Arc::new(Mutex::new(Vec::new()));
    lameduck.on_cleanup("flush", record(&log, "flush"));
    let (addr, server) = serve(&lameduck, Duration::from_millis(300)).await;

    let request = tokio::spawn(async move { http_get(addr, "/").await });
    while lameduck.inflight() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = now_unix_ms() + 10_000;
    let sent = Instant::now();
    conn.send(&json!({"type": "drain", "deadline_unix_ms": deadline}))
        .await;
    let drain = lameduck.drain_started().await;
    assert_eq!(drain.source(), DrainSource::Sidecar);
    assert_eq!(drain.inflight_at_start(), 1);

    let shutdown = {
        let lameduck = lameduck.clone();
        tokio::spawn(async move {
            let _ = lameduck.until_deadline(server).await;
            lameduck.shutdown().await
        })
    };
    let drained = conn.read_non_activity().await.expect("drained");
    assert_eq!(drained, json!({"type": "drained", "inflight_at_start": 1}));
    assert!(
        sent.elapsed() >= Duration::from_millis(200),
        "drained before the request ended"
    );
    let done = conn.read_non_activity().await.expect("done");
    assert_eq!(done, json!({"type": "done", "ok": true}));

    let response = request.await.expect("request");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "in-flight request finished: {response}"
    );
    let shutdown = shutdown.await.expect("shutdown");
    assert!(shutdown.is_ok() && shutdown.acknowledged() && shutdown.drained_in_time());
    assert_eq!(*log.lock().unwrap(), ["flush"]);
}

#[tokio::test]
async fn sidecar_disappearing_mid_drain_still_runs_cleanup() {
    init_logging();
    let sidecar = FakeSidecar::new();
    let app = connect_to(&sidecar).await;
    let mut conn = sidecar.accept_welcomed(30).await;
    let lameduck = app.await.expect("connect");
    let log = Arc::new(Mutex::new(Vec::new()));
    lameduck.on_cleanup("flush", {
        let log = Arc::clone(&log);
        move || async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            log.lock().unwrap().push("flush");
            Ok::<(), std::io::Error>(())
        }
    });
    conn.send(&json!({"type": "deregister"})).await;
    conn.send(&json!({"type": "drain", "deadline_unix_ms": now_unix_ms() + 10_000}))
        .await;
    drop(conn);

    lameduck.drain_started().await;
    let shutdown = tokio::time::timeout(STEP, lameduck.shutdown())
        .await
        .expect("no hang");
    assert!(shutdown.is_ok(), "{shutdown:?}");
    assert_eq!(*log.lock().unwrap(), ["flush"]);
    assert!(!lameduck.is_connected());
}

#[tokio::test]
async fn oversized_line_closes_the_connection_without_harm() {
    init_logging();
    let sidecar = FakeSidecar::new();
    let app = connect_to(&sidecar).await;
    let mut conn = sidecar.accept_welcomed(30).await;
    let lameduck = app.await.expect("connect");
    conn.send_raw(&vec![b'x'; 65537]).await;
    conn.expect_closed().await;
    assert!(!lameduck.is_connected());
    // Still usable: the shutdown runs locally.
    let shutdown = lameduck.shutdown().await;
    assert!(shutdown.is_ok() && !shutdown.acknowledged());
}

#[tokio::test]
async fn another_protocol_version_means_no_sidecar() {
    init_logging();
    let sidecar = FakeSidecar::new();
    let app = connect_to(&sidecar).await;
    let mut conn = sidecar.accept().await;
    conn.read().await.expect("hello");
    conn.send(&json!({"type": "welcome", "v": 2, "grace_seconds": 30}))
        .await;
    conn.expect_closed().await;
    let lameduck = app.await.expect("connect");
    assert!(!lameduck.is_connected());
    assert_eq!(lameduck.grace_period(), None);
}

#[tokio::test]
async fn reconnects_after_losing_the_sidecar_before_the_drain() {
    init_logging();
    let sidecar = FakeSidecar::new();
    let app = connect_to(&sidecar).await;
    let conn = sidecar.accept_welcomed(30).await;
    let lameduck = app.await.expect("connect");
    drop(conn);
    // The sidecar restarted: the SDK says hello again.
    let mut conn = sidecar.accept_welcomed(45).await;
    conn.send(&json!({"type": "drain", "deadline_unix_ms": now_unix_ms() + 10_000}))
        .await;
    let drain = tokio::time::timeout(STEP, lameduck.drain_started())
        .await
        .expect("drain");
    assert_eq!(drain.source(), DrainSource::Sidecar);
    assert_eq!(lameduck.grace_period(), Some(Duration::from_secs(45)));
    lameduck.shutdown().await;
    assert_eq!(
        conn.read_non_activity().await.expect("drained")["type"],
        "drained"
    );
    assert_eq!(
        conn.read_non_activity().await.expect("done")["type"],
        "done"
    );
}

#[tokio::test]
async fn hello_names_the_container_and_process() {
    let sidecar = FakeSidecar::new();
    let _app = connect_to(&sidecar).await;
    let mut conn = sidecar.accept().await;
    let hello = conn.read().await.expect("hello");
    assert_eq!(
        hello,
        json!({"type": "hello", "v": 1, "container": "web", "pid": std::process::id()})
    );
}
