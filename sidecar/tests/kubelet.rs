//! The shutdown sequence end to end with real processes: the sidecar, the example service
//! built on the Rust SDK, raw protocol clients, and a harness that plays the kubelet.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use lameduck_proto::Outcome;
use serde_json::json;

const MS: Duration = Duration::from_millis(1);

/// Settings that keep the adaptive phase short so the tests run in seconds.
const FAST: &[&str] = &["--quiet-period-millis", "300", "--min-delay-millis", "200"];

#[test]
fn fast_app_is_acknowledged_quickly_and_loses_nothing() {
    let mut sidecar = Sidecar::start(30, FAST);
    let mut app = App::start(&sidecar, "web", 100);
    // Load runs from before the deletion until the "load balancer" stops sending 150 ms
    // after it; every request must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, clients) = start_load(&app.addr, 4, stop.clone());
    thread::sleep(Duration::from_millis(300));
    let mut hook = sidecar.exec_prestop("web");
    let stopper = {
        let stop = stop.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(150));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let termination = kubelet_terminate(&mut hook, &mut app.child, sidecar.grace);
    stopper.join().unwrap();
    clients.into_iter().for_each(|c| c.join().unwrap());
    let (report, log) = sidecar.stop();

    let ok = counts.ok.load(Ordering::Relaxed) as usize;
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "failed requests; sidecar log:\n{log}"
    );
    assert!(ok > 20, "too little load to mean anything: {ok}");
    assert_eq!(app.flushed_records(), ok, "lost records:\n{}", app.output());
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}\n{log}");
    assert!(
        termination.sigkill_at.is_none(),
        "SIGKILLed: {termination:?}"
    );
    // preStop ≈ quiet period after the last accept + drain + cleanup; far below G.
    assert!(termination.prestop >= 300 * MS, "{termination:?}");
    assert!(termination.prestop < 2000 * MS, "{termination:?}\n{log}");
    assert!(
        termination.exited_at - termination.sigterm_at < 1000 * MS,
        "slow exit: {termination:?}"
    );
    let phases = &report.phases_ms;
    assert!(phases.deregister.is_some_and(|d| d >= 300), "{report:?}");
    assert!(phases.cleanup.is_some_and(|c| c >= 100), "{report:?}");
    assert!(
        report.last_accept_ms.is_some(),
        "deregister lag not measured: {report:?}"
    );
    assert_eq!(report.apps.len(), 1);
    assert_eq!(report.apps[0].container, "web");
}

#[test]
fn slow_cleanup_within_the_grace_period_is_acknowledged_and_flushed() {
    let mut sidecar = Sidecar::start(10, FAST);
    let mut app = App::start(&sidecar, "web", 3000);
    for _ in 0..25 {
        assert_eq!(http_get(&app.addr, "/"), Ok(200));
    }
    let mut hook = sidecar.exec_prestop("web");
    let termination = kubelet_terminate(&mut hook, &mut app.child, sidecar.grace);
    let (report, log) = sidecar.stop();

    assert_eq!(report.outcome, Outcome::Acked, "{log}");
    assert!(termination.sigkill_at.is_none(), "{termination:?}");
    assert!(
        termination.prestop >= 3000 * MS && termination.prestop < 6000 * MS,
        "{termination:?}"
    );
    assert_eq!(app.flushed_records(), 25, "{}", app.output());
    assert!(
        report.phases_ms.cleanup.is_some_and(|c| c >= 3000),
        "{report:?}"
    );
}

#[test]
fn cleanup_past_the_grace_period_times_out_and_sigterm_comes_before_sigkill() {
    let mut sidecar = Sidecar::start(4, FAST);
    let mut app = App::start(&sidecar, "web", 10_000);
    assert_eq!(http_get(&app.addr, "/"), Ok(200));
    let mut hook = sidecar.exec_prestop("web");
    let termination = kubelet_terminate(&mut hook, &mut app.child, sidecar.grace);
    let (report, log) = sidecar.stop();

    // G = 4 s, reserve = min(2 s, G/2) = 2 s: the hook is released at T0 + 2 s.
    assert!(
        termination.prestop >= 1900 * MS && termination.prestop < 2600 * MS,
        "{termination:?}\n{log}"
    );
    assert!(
        termination.sigterm_at < sidecar_grace(4),
        "SIGTERM after the deadline: {termination:?}"
    );
    let killed = termination.sigkill_at.unwrap_or_else(|| {
        panic!(
            "a 10 s cleanup in a 4 s grace period must be killed: {termination:?}\n{}",
            app.output()
        )
    });
    assert!(termination.sigterm_at < killed, "{termination:?}");
    assert_eq!(report.outcome, Outcome::Timeout, "{report:?}");
    assert_eq!(report.apps[0].outcome, Outcome::Timeout);
}

fn sidecar_grace(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

#[test]
fn without_an_app_the_fixed_delay_applies() {
    let mut sidecar = Sidecar::start(30, &["--delay-millis", "700"]);
    let mut hook = sidecar.exec_prestop("web");
    let took = hook
        .wait(Instant::now() + Duration::from_secs(10))
        .expect("hook hung");
    let (report, _) = sidecar.stop();
    assert!(took >= 700 * MS && took < 1500 * MS, "{took:?}");
    assert_eq!(report.outcome, Outcome::NoApp);
    assert_eq!(
        report.phases_ms.deregister.map(|d| d / 100),
        Some(7),
        "{report:?}"
    );
}

#[test]
fn http_drain_fallback_is_called_after_the_delay() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let accepted = Instant::now();
        let mut request = [0u8; 1024];
        let n = std::io::Read::read(&mut stream, &mut request).unwrap();
        // The app takes 400 ms to drain before answering.
        thread::sleep(Duration::from_millis(400));
        std::io::Write::write_all(
            &mut stream,
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        (
            String::from_utf8_lossy(&request[..n]).into_owned(),
            accepted,
        )
    });
    let mut sidecar = Sidecar::start(
        30,
        &[
            "--drain-mode",
            "http",
            "--delay-millis",
            "300",
            "--http-drain-port",
            &port.to_string(),
            "--http-drain-path",
            "/admin/drain",
        ],
    );
    let mut hook = sidecar.exec_prestop("web");
    let took = hook
        .wait(Instant::now() + Duration::from_secs(10))
        .expect("hook hung");
    let (request, accepted) = server.join().unwrap();
    let (report, log) = sidecar.stop();
    assert!(
        request.starts_with("POST /admin/drain HTTP/1.1"),
        "{request}"
    );
    assert!(
        accepted - hook.started >= 300 * MS,
        "called before the delay"
    );
    assert!(took >= 700 * MS && took < 1500 * MS, "{took:?}\n{log}");
    assert_eq!(report.outcome, Outcome::NoApp);
    assert!(
        report.phases_ms.drain.is_some_and(|d| d >= 400),
        "{report:?}"
    );
}

#[test]
fn app_crashing_mid_drain_is_disconnected_without_a_hang() {
    let mut sidecar = Sidecar::start(30, FAST);
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    app.expect("deregister");
    app.expect("drain");
    drop(app);
    let took = hook
        .wait(Instant::now() + Duration::from_secs(5))
        .expect("hook hung");
    let (report, _) = sidecar.stop();
    assert!(took < 1500 * MS, "{took:?}");
    assert_eq!(report.outcome, Outcome::Disconnected);
}

#[test]
fn prestop_without_a_sidecar_waits_the_bounded_fallback_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut hook = exec_prestop(dir.path(), "web", 600);
    let took = hook
        .wait(Instant::now() + Duration::from_secs(5))
        .expect("hook hung");
    // `took` starts once spawn() returned; on a busy machine the hook may already have
    // begun its 600 ms wait by then, hence the 50 ms of slack below the fallback.
    assert!(took >= 550 * MS && took < 1500 * MS, "{took:?}");
    assert!(hook.log().contains("fallback"), "{}", hook.log());
}

#[test]
fn each_prestop_waits_for_its_own_containers_apps() {
    let mut sidecar = Sidecar::start(30, FAST);
    let mut a = RawApp::hello(&sidecar, "a");
    let mut b = RawApp::hello(&sidecar, "b");
    let mut hook_a = sidecar.exec_prestop("a");
    let mut hook_b = sidecar.exec_prestop("b");
    for app in [&mut a, &mut b] {
        app.expect("deregister");
        app.expect("drain");
    }
    a.send(json!({"type":"drained","inflight_at_start":0}));
    a.send(json!({"type":"done","ok":true}));
    let took_a = hook_a
        .wait(Instant::now() + Duration::from_secs(5))
        .expect("hook a hung");
    assert!(
        hook_b.wait(Instant::now()).is_none(),
        "b was released before its app finished"
    );
    thread::sleep(Duration::from_millis(800));
    b.send(json!({"type":"done","ok":true}));
    let took_b = hook_b
        .wait(Instant::now() + Duration::from_secs(5))
        .expect("hook b hung");
    assert!(took_b >= took_a + 700 * MS, "a {took_a:?}, b {took_b:?}");
    let (report, _) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked);
    assert_eq!(report.apps.len(), 2);
}

#[test]
fn bad_input_drops_only_that_connection() {
    let mut sidecar = Sidecar::start(30, FAST);
    let mut good = RawApp::hello(&sidecar, "web");
    let bad_inputs: [&[u8]; 5] = [
        b"garbage\n",
        &[b'x'; 70 * 1024],
        b"{\"type\":\"hello\",\"v\":2,\"container\":\"web\",\"pid\":1}\n",
        b"{\"type\":\"hello\",\"v\":1,\"container\":\"web\"",
        b"{\"type\":\"done\",\"ok\":true}\n",
    ];
    for bad in bad_inputs {
        let mut app = RawApp::connect(&sidecar);
        app.send_raw(bad);
        if bad.ends_with(b"\"") {
            // Half a line, then the process goes away.
            app.stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(
            app.recv().is_none(),
            "the sidecar answered {:?}",
            String::from_utf8_lossy(&bad[..bad.len().min(60)])
        );
        assert!(
            sidecar.probe(),
            "the sidecar stopped serving after {:?}",
            &bad[..bad.len().min(60)]
        );
    }
    let mut hook = sidecar.exec_prestop("web");
    good.expect("deregister");
    good.expect("drain");
    good.send(json!({"type":"done","ok":true}));
    hook.wait(Instant::now() + Duration::from_secs(5))
        .expect("hook hung");
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked, "{log}");
    assert_eq!(
        report.apps.len(),
        1,
        "bad connections must not count as apps"
    );
    for reason in [
        "not supported",
        "longer than",
        "first message must be hello",
        "invalid message",
        "unterminated",
    ] {
        assert!(
            log.contains(reason),
            "no log line saying {reason:?}:\n{log}"
        );
    }
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn late_connecting_app_is_told_the_current_phase() {
    let sidecar = Sidecar::start(30, &["--drain-mode", "delay", "--delay-millis", "300"]);
    let mut first = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    first.expect("deregister");
    first.expect("drain");
    // A second process of the container connects while the hook still waits.
    let mut late = RawApp::hello(&sidecar, "web");
    let deregister = late.expect("deregister");
    let drain = late.expect("drain");
    assert!(drain["deadline_unix_ms"].as_u64().is_some());
    assert_eq!(deregister["deadline_unix_ms"], drain["deadline_unix_ms"]);
    late.send(json!({"type":"done","ok":true}));
    first.send(json!({"type":"done","ok":true}));
    hook.wait(Instant::now() + Duration::from_secs(5))
        .expect("hook hung");
}

#[test]
fn sidecar_stopped_without_prestop_reports_so() {
    let mut sidecar = Sidecar::start(30, &[]);
    let (report, _) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::NoPrestop);
    assert_eq!(report.grace_seconds, 30);
}

#[test]
fn serve_installs_its_binary_for_app_containers() {
    let sidecar = Sidecar::start(30, &[]);
    let copied = sidecar.dir.path().join("bin/lameduck");
    let output = std::process::Command::new(&copied)
        .arg("--version")
        .output()
        .expect("exec the copy");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("lameduck"));
}
