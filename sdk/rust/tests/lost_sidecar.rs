//! Losing the sidecar while deregistering costs no traffic (docs/protocol.md §6): the SDK
//! serves on until the deregister phase's planned end, reconnecting meanwhile, and drains
//! with the sequence's deadline if the sidecar is not back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Conn, FakeSidecar, STEP, connect_to, http_get, init_logging, now_unix_ms, serve};
use lameduck::{Drain, DrainSource, Lameduck};
use serde_json::json;
use tokio::task::JoinHandle;

/// Slack for timing bounds on a loaded machine.
const SLACK_MS: u64 = 300;

/// A connected SDK serving HTTP, with one counting cleanup function.
struct App {
    lameduck: Lameduck,
    addr: std::net::SocketAddr,
    server: JoinHandle<()>,
    cleanups: Arc<AtomicUsize>,
    /// The drain and the wall-clock time it started.
    drain: JoinHandle<(Drain, u64)>,
}

async fn start(sidecar: &FakeSidecar) -> (App, Conn) {
    init_logging();
    let app = connect_to(sidecar).await;
    let conn = sidecar.accept_welcomed(30).await;
    let lameduck = app.await.expect("connect");
    let cleanups = Arc::new(AtomicUsize::new(0));
    lameduck.on_cleanup("count", {
        let cleanups = Arc::clone(&cleanups);
        move || async move {
            cleanups.fetch_add(1, Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        }
    });
    let (addr, server) = serve(&lameduck, Duration::ZERO).await;
    let drain = tokio::spawn({
        let started = lameduck.drain_started();
        async move {
            let drain = started.await;
            (drain, now_unix_ms())
        }
    });
    let app = App {
        lameduck,
        addr,
        server,
        cleanups,
        drain,
    };
    (app, conn)
}

impl App {
    /// Requests succeed and ask the client to close its connection.
    async fn assert_serving_while_deregistering(&self) {
        let response = http_get(self.addr, "/").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
        assert!(
            self.lameduck.drain().is_none(),
            "drained while it should serve"
        );
    }

    /// Waits for the drain, stops the server and runs the shutdown.
    async fn finish(self) -> (Drain, u64, lameduck::Shutdown, usize) {
        let (drain, started_ms) = tokio::time::timeout(STEP, self.drain)
            .await
            .expect("no drain")
            .expect("drain task");
        self.lameduck.until_deadline(self.server).await;
        let shutdown = tokio::time::timeout(STEP, self.lameduck.shutdown())
            .await
            .expect("shutdown hangs");
        // A second call must not run anything again.
        assert_eq!(self.lameduck.shutdown().await, shutdown);
        (
            drain,
            started_ms,
            shutdown,
            self.cleanups.load(Ordering::SeqCst),
        )
    }
}

#[tokio::test]
async fn lost_while_deregistering_serves_until_the_planned_end_then_drains_with_its_deadline() {
    let mut sidecar = FakeSidecar::new();
    let (app, mut conn) = start(&sidecar).await;
    let now = now_unix_ms();
    let (phase_end, deadline) = (now + 1500, now + 6000);
    conn.send(&json!({"type": "deregister", "phase_end_unix_ms": phase_end, "deadline_unix_ms": deadline}))
        .await;
    assert_eq!(conn.read().await.expect("baseline")["type"], "activity");
    sidecar.stop();
    drop(conn);

    let mut served = 0;
    while now_unix_ms() + SLACK_MS < phase_end {
        app.assert_serving_while_deregistering().await;
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 3, "only {served} requests before the planned end");

    let (drain, started_ms, shutdown, cleanups) = app.finish().await;
    assert_eq!(drain.source(), DrainSource::SidecarLost);
    assert!(
        started_ms + 5 >= phase_end && started_ms <= phase_end + 2 * SLACK_MS,
        "drain started {} ms after the planned end",
        started_ms as i64 - phase_end as i64
    );
    assert_eq!(
        drain.deadline_unix_ms(),
        deadline,
        "the deadline counts from T0"
    );
    assert_eq!(shutdown.drain(), drain);
    assert!(shutdown.is_ok() && !shutdown.acknowledged(), "{shutdown:?}");
    assert_eq!(cleanups, 1);
}

#[tokio::test]
async fn a_sidecar_back_before_the_planned_end_resumes_the_sequence() {
    let mut sidecar = FakeSidecar::new();
    let (app, mut conn) = start(&sidecar).await;
    let now = now_unix_ms();
    let (phase_end, deadline) = (now + 1500, now + 8000);
    let deregister =
        json!({"type": "deregister", "phase_end_unix_ms": phase_end, "deadline_unix_ms": deadline});
    conn.send(&deregister).await;
    assert_eq!(conn.read().await.expect("baseline")["type"], "activity");
    sidecar.stop();
    drop(conn);

    tokio::time::sleep(Duration::from_millis(250)).await;
    app.assert_serving_while_deregistering().await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    sidecar.restart();
    let mut conn = sidecar.accept_welcomed(30).await;
    // The restarted sidecar resumes the shutdown: deregister again, then (later) drain.
    conn.send(&deregister).await;
    let baseline = conn.read().await.expect("baseline again");
    assert_eq!(baseline["type"], "activity", "{baseline}");
    assert_eq!(baseline["accepted_total"], 1, "{baseline}");

    // The sidecar is back: its drain, not the planned end, ends the phase.
    while now_unix_ms() < phase_end + SLACK_MS {
        app.assert_serving_while_deregistering().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_deadline = now_unix_ms() + 5000;
    conn.send(&json!({"type": "drain", "deadline_unix_ms": drain_deadline}))
        .await;
    let (drain, _, shutdown, cleanups) = {
        let finish = tokio::spawn(app.finish());
        let drained = conn.read_non_activity().await.expect("drained");
        assert_eq!(drained, json!({"type": "drained", "inflight_at_start": 0}));
        let done = conn.read_non_activity().await.expect("done");
        assert_eq!(done, json!({"type": "done", "ok": true}));
        finish.await.expect("finish")
    };
    assert_eq!(drain.source(), DrainSource::Sidecar);
    assert_eq!(drain.deadline_unix_ms(), drain_deadline);
    assert!(shutdown.is_ok() && shutdown.acknowledged(), "{shutdown:?}");
    assert_eq!(cleanups, 1);
}

#[tokio::test]
async fn a_sidecar_that_never_welcomes_does_not_prolong_the_phase() {
    let sidecar = FakeSidecar::new();
    let (app, mut conn) = start(&sidecar).await;
    let now = now_unix_ms();
    let (phase_end, deadline) = (now + 1000, now + 6000);
    conn.send(&json!({"type": "deregister", "phase_end_unix_ms": phase_end, "deadline_unix_ms": deadline}))
        .await;
    assert_eq!(conn.read().await.expect("baseline")["type"], "activity");
    drop(conn);
    // Still listening, never answering: the SDK's hello waits for a welcome in vain.
    let mut silent = sidecar.accept().await;
    assert_eq!(silent.read().await.expect("hello")["type"], "hello");

    let (drain, started_ms, shutdown, cleanups) = app.finish().await;
    assert_eq!(drain.source(), DrainSource::SidecarLost);
    assert!(
        started_ms + 5 >= phase_end && started_ms <= phase_end + 2 * SLACK_MS,
        "drain started {} ms after the planned end",
        started_ms as i64 - phase_end as i64
    );
    assert_eq!(drain.deadline_unix_ms(), deadline);
    assert!(shutdown.is_ok(), "{shutdown:?}");
    assert_eq!(cleanups, 1);
}

#[tokio::test]
async fn an_older_sidecar_lost_while_deregistering_means_draining_at_once() {
    let mut sidecar = FakeSidecar::new();
    let (app, mut conn) = start(&sidecar).await;
    // Without a plan: the grace period (30 s) counts from the deregister, less the reserve.
    let deregistered = now_unix_ms();
    conn.send(&json!({"type": "deregister"})).await;
    assert_eq!(conn.read().await.expect("baseline")["type"], "activity");
    sidecar.stop();
    drop(conn);
    let lost = now_unix_ms();

    let (drain, started_ms, shutdown, cleanups) = app.finish().await;
    assert_eq!(drain.source(), DrainSource::SidecarLost);
    assert!(
        started_ms <= lost + SLACK_MS,
        "drain started {} ms after the loss",
        started_ms - lost
    );
    assert!(
        drain.deadline_unix_ms().abs_diff(deregistered + 28_000) <= SLACK_MS,
        "deadline {} ms after the deregister",
        drain.deadline_unix_ms() as i64 - deregistered as i64
    );
    assert!(shutdown.is_ok() && !shutdown.acknowledged(), "{shutdown:?}");
    assert_eq!(cleanups, 1);
}
