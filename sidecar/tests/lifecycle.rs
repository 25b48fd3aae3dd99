//! The lifecycle matrix: what happens to a pod with the sidecar over its whole life, not only
//! its deletion. The kubelet runs a container's preStop hook whenever it kills that
//! container (failed liveness or startup probe), restarts crashed and OOM-killed processes
//! without any hook, and restarts a native sidecar that dies outside a pod deletion. Each
//! case is played with real processes and real Unix sockets; the pod must be at least as
//! well off as without lameduck.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use lameduck_proto::{Outcome, TerminationReport, report_budget};
use serde_json::{Value, json};

const MS: Duration = Duration::from_millis(1);

/// Short adaptive phase so that the tests run in seconds.
const FAST: &[&str] = &["--quiet-period-millis", "300", "--min-delay-millis", "200"];

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What a container killed alone looks like to the kubelet: its hook, then SIGTERM.
fn kill_container(sidecar: &Sidecar, app: &mut App, container: &str) -> Termination {
    let mut hook = sidecar.exec_prestop(container);
    kubelet_terminate(&mut hook, &mut app.child, sidecar.grace)
}

/// Asserts that nothing but silence comes from the sidecar for a while: the app is not
/// being stopped.
fn assert_serving(app: &mut RawApp, what: &str) {
    if let Some(message) = app.recv_within(Duration::from_millis(700)) {
        panic!("{what}: expected no message, got {message}");
    }
}

#[test]
fn liveness_kill_of_one_container_of_two_leaves_the_other_serving_and_the_new_process_serves() {
    let mut sidecar = Sidecar::start(30, FAST);
    let mut web = App::start(&sidecar, "web", 100);
    let mut side = RawApp::hello(&sidecar, "side");
    assert_eq!(http_get(&web.addr, "/"), Ok(200));

    // The liveness probe of "web" fails: the kubelet runs web's hook and restarts it.
    let termination = kill_container(&sidecar, &mut web, "web");
    assert!(termination.sigkill_at.is_none(), "{termination:?}");
    assert!(
        termination.prestop < Duration::from_secs(3),
        "{termination:?}"
    );
    assert_serving(&mut side, "the other container got a shutdown message");

    let mut web = App::start(&sidecar, "web", 100);
    for _ in 0..20 {
        assert_eq!(http_get(&web.addr, "/"), Ok(200), "{}", web.output());
    }
    thread::sleep(Duration::from_millis(500));
    assert!(
        !web.output().contains("deregister") && !web.output().contains("draining"),
        "the restarted process was told to shut down:\n{}",
        web.output()
    );
    // A raw process of the restarted container is welcomed and nothing else.
    let mut probe = RawApp::hello(&sidecar, "web");
    assert_serving(&mut probe, "a new process of the restarted container");
    drop(probe);

    // Then the pod is deleted: both containers stop as usual.
    let mut web_hook = sidecar.exec_prestop("web");
    let mut side_hook = sidecar.exec_prestop("side");
    side.expect("deregister");
    side.expect("drain");
    side.send(json!({"type":"done","ok":true}));
    side_hook
        .wait(Instant::now() + Duration::from_secs(10))
        .expect("side's hook hung");
    let deletion = kubelet_terminate(&mut web_hook, &mut web.child, sidecar.grace);
    assert!(deletion.sigkill_at.is_none(), "{deletion:?}");
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}\n{log}");
    assert_eq!(report.restarts.len(), 1, "{report:?}");
    assert_eq!(report.restarts[0].container, "web");
    assert_eq!(report.restarts[0].outcome, Outcome::Acked);
    let containers: Vec<&str> = report.apps.iter().map(|a| a.container.as_str()).collect();
    assert_eq!(
        containers,
        ["side", "web"],
        "only the current processes: {report:?}"
    );
}

#[test]
fn startup_probe_kill_before_the_app_connected_then_the_new_process_serves() {
    let mut sidecar = Sidecar::start(30, &["--delay-millis", "400"]);
    // The app never connected (it was still starting): the hook waits the fixed delay.
    let mut hook = sidecar.exec_prestop("web");
    let took = hook
        .wait(Instant::now() + Duration::from_secs(10))
        .expect("hook hung");
    assert!(took >= 400 * MS && took < 2000 * MS, "{took:?}");
    let mut app = RawApp::hello(&sidecar, "web");
    assert_serving(&mut app, "the process started after the startup-probe kill");
    let (report, _) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::NoPrestop, "{report:?}");
    assert_eq!(report.restarts.len(), 1);
    assert_eq!(report.restarts[0].outcome, Outcome::NoApp);
}

/// A process that dies without any hook (a crash: abort; or the OOM killer's SIGKILL): the
/// kubelet restarts it; the sidecar forgets it and serves the new one normally.
fn restart_without_hook(signal_number: libc::c_int) {
    let mut sidecar = Sidecar::start(30, FAST);
    let mut web = App::start(&sidecar, "web", 50);
    assert_eq!(http_get(&web.addr, "/"), Ok(200));
    signal(web.child.id(), signal_number);
    let _ = web.child.wait();
    let mut web = App::start(&sidecar, "web", 50);
    assert_eq!(http_get(&web.addr, "/"), Ok(200));
    let termination = kill_container(&sidecar, &mut web, "web");
    assert!(termination.sigkill_at.is_none(), "{termination:?}");
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}\n{log}");
    assert_eq!(
        report.apps.len(),
        1,
        "the dead process is forgotten: {report:?}"
    );
    assert!(report.restarts.is_empty());
}

#[test]
fn crash_restart_is_served_normally() {
    restart_without_hook(libc::SIGABRT);
}

#[test]
fn oom_kill_restart_is_served_normally() {
    restart_without_hook(libc::SIGKILL);
}

#[test]
fn restarts_after_failed_starts_do_not_decide_the_outcome() {
    let mut sidecar = Sidecar::start(30, FAST);
    for pid in 1..=3 {
        let mut failed = RawApp::connect(&sidecar);
        failed.send(json!({"type":"hello","v":1,"container":"web","pid":pid}));
        failed.expect("welcome");
        failed.send(json!({"type":"done","ok":false,"error":"cannot open the database"}));
        assert!(failed.recv().is_none(), "closed after done");
    }
    let mut web = App::start(&sidecar, "web", 50);
    let termination = kill_container(&sidecar, &mut web, "web");
    assert!(termination.sigkill_at.is_none());
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}\n{log}");
    assert_eq!(report.apps.len(), 1, "{report:?}");
    assert!(report.apps[0].error.is_none());
}

#[test]
fn sidecar_killed_before_any_shutdown_and_restarted_serves_as_before() {
    let mut sidecar = Sidecar::start(30, FAST);
    sidecar.kill();
    sidecar.restart();
    let mut web = App::start(&sidecar, "web", 50);
    assert_eq!(http_get(&web.addr, "/"), Ok(200));
    let termination = kill_container(&sidecar, &mut web, "web");
    assert!(termination.sigkill_at.is_none());
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}\n{log}");
}

/// The hook's plan as the sidecar announced it to an app: (phase end, deadline), Unix ms.
fn plan_of(deregister: &Value) -> (u64, u64) {
    (
        deregister["phase_end_unix_ms"]
            .as_u64()
            .expect("deregister carries phase_end_unix_ms"),
        deregister["deadline_unix_ms"]
            .as_u64()
            .expect("deregister carries deadline_unix_ms"),
    )
}

#[test]
fn sidecar_killed_mid_deregister_and_restarted_resumes_the_shutdown() {
    // A container restart (liveness): the kubelet restarts a crashed sidecar.
    let mut sidecar = Sidecar::start(30, &["--drain-mode", "delay", "--delay-millis", "2000"]);
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    let (phase_end, deadline) = plan_of(&app.expect("deregister"));
    thread::sleep(Duration::from_millis(300));
    sidecar.kill();
    assert!(app.recv().is_none(), "the app saw the sidecar go");
    thread::sleep(Duration::from_millis(300));
    assert!(
        hook.child.try_wait().unwrap().is_none(),
        "the hook let the container go when the sidecar died: {}",
        hook.log()
    );
    sidecar.restart();
    // The app reconnects: same container, the shutdown in progress, same plan.
    let mut again = RawApp::hello(&sidecar, "web");
    let resumed = again.expect("deregister");
    assert_eq!(plan_of(&resumed), (phase_end, deadline), "{resumed}");
    let drain = again.expect("drain");
    assert!(
        now_unix_ms() + 150 >= phase_end,
        "drain came before the planned end"
    );
    assert_eq!(drain["deadline_unix_ms"].as_u64(), Some(deadline));
    again.send(json!({"type":"drained","inflight_at_start":0}));
    again.send(json!({"type":"done","ok":true}));
    hook.wait(Instant::now() + Duration::from_secs(10))
        .expect("hook hung");
    assert!(
        hook.log().contains("reached the sidecar again"),
        "{}",
        hook.log()
    );
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}\n{log}");
    let released = report.released_ms.expect("released_ms");
    assert!(
        (2000..4000).contains(&released),
        "T0 kept across the restart: {report:?}"
    );
}

#[test]
fn sidecar_killed_mid_drain_lets_the_hook_go_and_reports_the_app_disconnected() {
    // Past the deregister phase there is no traffic to protect: the hook lets the
    // container go (an SDK finishes its drain and cleanup on its own, SIGTERM or not), and
    // the restarted sidecar reports the app that never came back `disconnected`.
    let mut sidecar = Sidecar::start(30, &["--drain-mode", "delay", "--delay-millis", "200"]);
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    app.expect("deregister");
    app.expect("drain");
    sidecar.kill();
    sidecar.restart();
    let took = hook
        .wait(Instant::now() + Duration::from_secs(10))
        .expect("hook hung");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Disconnected, "{report:?}\n{log}");
}

#[test]
fn sidecar_killed_mid_deregister_with_the_rust_sdk_loses_no_request() {
    let mut sidecar = Sidecar::start(30, FAST);
    let mut app = App::start(&sidecar, "web", 200);
    let stop = Arc::new(AtomicBool::new(false));
    let (counts, clients) = start_load(&app.addr, 4, stop.clone());
    thread::sleep(Duration::from_millis(300));
    let mut hook = sidecar.exec_prestop("web");
    thread::sleep(Duration::from_millis(300));
    sidecar.kill();
    thread::sleep(Duration::from_millis(500));
    sidecar.restart();
    // The "load balancer" stops sending a while after the restart.
    thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let termination = kubelet_terminate(&mut hook, &mut app.child, sidecar.grace);
    let (report, log) = sidecar.stop();
    let ok = counts.ok.load(Ordering::Relaxed) as usize;
    assert_eq!(
        counts.failed.load(Ordering::Relaxed),
        0,
        "failed requests while the sidecar was away:\n{log}\n{}",
        app.output()
    );
    assert!(ok > 20, "too little load: {ok}");
    assert!(termination.sigkill_at.is_none(), "{termination:?}");
    assert!(
        termination.prestop > Duration::from_millis(2300),
        "the hook let go before the traffic stopped: {termination:?}"
    );
    assert_eq!(
        report.outcome,
        Outcome::Acked,
        "{report:?}\n{log}\n{}",
        app.output()
    );
    assert_eq!(app.flushed_records(), ok, "lost records:\n{}", app.output());
}

#[test]
fn a_hook_the_kubelet_gave_up_on_ends_the_shutdown_and_the_next_process_serves() {
    // A probe with its own shorter terminationGracePeriodSeconds: the kubelet stops waiting
    // for the hook and kills the container; the restarted process must not inherit the
    // dead shutdown.
    let sidecar = Sidecar::start(30, &["--drain-mode", "delay", "--delay-millis", "5000"]);
    let mut old = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    old.expect("deregister");
    signal(hook.child.id(), libc::SIGKILL);
    let _ = hook.child.wait();
    drop(old);
    thread::sleep(Duration::from_millis(200));
    let mut new = RawApp::connect(&sidecar);
    new.send(json!({"type":"hello","v":1,"container":"web","pid":5151}));
    new.expect("welcome");
    assert_serving(
        &mut new,
        "the process after the kubelet gave up on the hook",
    );
}

#[test]
fn sidecar_killed_after_the_release_and_restarted_serves_the_restarted_container() {
    let mut sidecar = Sidecar::start(30, &["--drain-mode", "delay", "--delay-millis", "200"]);
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    app.expect("deregister");
    app.expect("drain");
    app.send(json!({"type":"done","ok":true}));
    hook.wait(Instant::now() + Duration::from_secs(10))
        .expect("hook hung");
    sidecar.kill();
    sidecar.restart();
    let mut new = RawApp::hello(&sidecar, "web");
    assert_serving(&mut new, "the restarted container after a sidecar restart");
    let (report, log) = sidecar.stop();
    assert_eq!(report.restarts.len(), 1, "{report:?}\n{log}");
    assert_eq!(report.outcome, Outcome::NoPrestop);
}

#[test]
fn sidecar_gone_for_good_mid_deregister_holds_the_hook_until_the_planned_end() {
    // A pod deletion: the kubelet does not restart the sidecar. The hook must not release
    // the container before the deregister phase's planned end (traffic may still come).
    let mut sidecar = Sidecar::start(30, &["--drain-mode", "delay", "--delay-millis", "2500"]);
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    let (phase_end, _) = plan_of(&app.expect("deregister"));
    thread::sleep(Duration::from_millis(200));
    sidecar.kill();
    hook.wait(Instant::now() + Duration::from_secs(10))
        .expect("hook hung");
    let released_at = now_unix_ms();
    assert!(
        released_at + 100 >= phase_end,
        "released {} ms before the planned end: {}",
        phase_end - released_at,
        hook.log()
    );
    assert!(
        released_at < phase_end + 1500,
        "held too long: {}",
        hook.log()
    );
}

#[test]
fn two_prestops_at_once_each_wait_for_their_own_app() {
    let sidecar = Sidecar::start(30, &["--drain-mode", "delay", "--delay-millis", "200"]);
    let mut a = RawApp::hello(&sidecar, "a");
    let mut b = RawApp::hello(&sidecar, "b");
    let mut hook_a = sidecar.exec_prestop("a");
    let mut hook_b = sidecar.exec_prestop("b");
    a.expect("deregister");
    a.expect("drain");
    b.expect("deregister");
    b.expect("drain");
    a.send(json!({"type":"done","ok":true}));
    hook_a
        .wait(Instant::now() + Duration::from_secs(5))
        .expect("a's hook hung");
    thread::sleep(Duration::from_millis(300));
    assert!(
        hook_b.child.try_wait().unwrap().is_none(),
        "b's hook returned before b was done"
    );
    b.send(json!({"type":"done","ok":true}));
    hook_b
        .wait(Instant::now() + Duration::from_secs(5))
        .expect("b's hook hung");
}

#[test]
fn two_sdk_apps_and_a_container_without_sdk_each_follow_their_own_rule() {
    let mut args = FAST.to_vec();
    args.extend(["--delay-millis", "1500"]);
    let mut sidecar = Sidecar::start(30, &args);
    let mut web = App::start(&sidecar, "web", 100);
    let mut api = App::start(&sidecar, "api", 600);
    let mut proxy_hook = sidecar.exec_prestop("proxy");
    let mut web_hook = sidecar.exec_prestop("web");
    let mut api_hook = sidecar.exec_prestop("api");
    let web_done = kubelet_terminate(&mut web_hook, &mut web.child, sidecar.grace);
    let api_done = kubelet_terminate(&mut api_hook, &mut api.child, sidecar.grace);
    let proxy = proxy_hook
        .wait(Instant::now() + Duration::from_secs(10))
        .expect("proxy's hook hung");
    // The container without an SDK waits its own fixed delay, not the apps' drains.
    assert!(
        proxy >= 1500 * MS && proxy < 2500 * MS,
        "proxy released after {proxy:?}"
    );
    assert!(web_done.prestop < proxy, "{web_done:?} vs {proxy:?}");
    assert!(
        web_done.prestop < api_done.prestop,
        "{web_done:?} {api_done:?}"
    );
    let (report, log) = sidecar.stop();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}\n{log}");
    assert_eq!(report.apps.len(), 2);
}

/// An app whose traffic never stops: accepts grow every 100 ms for as long as it lives.
/// The deregister phase must end by the budget's latest drain start and leave drain and
/// cleanup at least half of the release budget.
fn traffic_never_stops(grace_seconds: u64) {
    let sidecar = Sidecar::start(grace_seconds, &[]);
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    let (phase_end, deadline) = plan_of(&app.expect("deregister"));
    let t0 = now_unix_ms();
    let reserve = 2000.min(grace_seconds * 1000 / 2);
    let budget = grace_seconds * 1000 - reserve;
    assert!(
        deadline.abs_diff(t0 + budget) < 300,
        "deadline {deadline} vs T0 {t0} + {budget}"
    );
    assert!(deadline - phase_end >= budget / 2, "{phase_end} {deadline}");
    let mut total = 0;
    let drain = loop {
        total += 1;
        app.send(json!({"type":"activity","accepted_total":total,"inflight":1}));
        if let Some(message) = app.recv_within(Duration::from_millis(100)) {
            assert_eq!(message["type"], "drain", "{message}");
            break message;
        }
    };
    let drained_at = now_unix_ms();
    assert!(
        drained_at <= phase_end + 300,
        "drain late: {drained_at} > {phase_end}"
    );
    let left = drain["deadline_unix_ms"].as_u64().unwrap() - drained_at;
    assert!(
        left + 300 >= budget / 2,
        "G = {grace_seconds} s: drain left only {left} ms of {budget}"
    );
    app.send(json!({"type":"done","ok":true}));
    hook.wait(Instant::now() + Duration::from_secs(5))
        .expect("hook hung");
}

#[test]
fn traffic_that_never_stops_leaves_drain_its_budget_g5() {
    traffic_never_stops(5);
}

#[test]
fn traffic_that_never_stops_leaves_drain_its_budget_g10() {
    traffic_never_stops(10);
}

#[test]
fn traffic_that_never_stops_leaves_drain_its_budget_g15() {
    traffic_never_stops(15);
}

#[test]
fn traffic_that_never_stops_leaves_drain_its_budget_g30() {
    traffic_never_stops(30);
}

/// A long app error in a pod with `containers` containers: the report fits the kubelet's
/// per-container share, so what the kubelet keeps of it still parses.
fn long_error_in_a_crowded_pod(containers: usize) {
    let budget = report_budget(containers);
    let mut sidecar = Sidecar::start(
        30,
        &[
            "--drain-mode",
            "delay",
            "--delay-millis",
            "100",
            "--report-max-bytes",
            &budget.to_string(),
        ],
    );
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = sidecar.exec_prestop("web");
    app.expect("deregister");
    app.expect("drain");
    let error = format!("flush failed: {}", "disk full; ".repeat(2000));
    app.send(json!({"type":"done","ok":false,"error":error}));
    hook.wait(Instant::now() + Duration::from_secs(5))
        .expect("hook hung");
    signal(sidecar.child.id(), libc::SIGTERM);
    let _ = wait_until(&mut sidecar.child, Instant::now() + Duration::from_secs(5));
    let raw = sidecar.termination_message();
    assert!(raw.len() <= budget, "{} bytes > {budget}", raw.len());
    let kept = &raw.as_bytes()[..raw.len().min(budget)];
    let report = TerminationReport::parse(std::str::from_utf8(kept).unwrap())
        .unwrap_or_else(|e| panic!("unparsable after the kubelet's cut: {e}"));
    assert_eq!(report.outcome, Outcome::AppError);
    assert!(report.phases_ms.drain.is_some(), "{report:?}");
    assert_eq!(report.apps.len(), 1);
}

#[test]
fn long_app_error_in_a_pod_of_4_containers_still_parses() {
    long_error_in_a_crowded_pod(4);
}

#[test]
fn long_app_error_in_a_pod_of_6_containers_still_parses() {
    long_error_in_a_crowded_pod(6);
}

#[test]
fn a_probe_kill_with_a_shorter_grace_period_releases_the_hook_within_it() {
    // The pod's G is 30 s, the liveness probe's own grace period 4 s: the app that never
    // finishes is given up on by 4 s − 2 s, before the kubelet would cut the hook.
    let sidecar = Sidecar::start(30, &[]);
    let mut app = RawApp::hello(&sidecar, "web");
    let mut hook = exec_prestop_with(sidecar.dir.path(), "web", 5000, &["--grace-seconds", "4"]);
    let (phase_end, deadline) = plan_of(&app.expect("deregister"));
    assert!(deadline - phase_end >= 1000 - 50, "{phase_end} {deadline}");
    let took = hook
        .wait(Instant::now() + Duration::from_secs(6))
        .expect("hook hung");
    assert!(
        took >= 1900 * MS && took < 2800 * MS,
        "released after {took:?}, not by the probe's 4 s − 2 s"
    );
}
