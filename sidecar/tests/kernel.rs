//! The kernel traffic view with real network namespaces: a plain server with no SDK (PID 1
//! of its own PID namespace) and the sidecar share a "pod" namespace; clients and the
//! node's probes come from another namespace over a veth pair. Shows that the deregister
//! phase of a container without an SDK ends a quiet period after the clients stop while
//! probes every second go on, that the drain actions wait until the server's listener is
//! closed, and that connection attempts after that are counted as refused.
//!
//! Needs root, `ip` (iproute2), `unshare` and `nsenter` (util-linux) and python3; a
//! missing one fails the test with how to install it.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::netns::*;
use common::*;
use lameduck_proto::{Outcome, TerminationReport};

const MS: Duration = Duration::from_millis(1);
const PORT: u16 = 8080;

fn pod_addr() -> SocketAddr {
    format!("{POD_IP}:{PORT}").parse().unwrap()
}

/// The sidecar as the webhook configures it for a pod whose container `web` declares
/// port 8080, probed every second.
fn sidecar_in(net: &Net, args: &[&str]) -> Sidecar {
    let launch = net.pod_launch(&[
        ("LAMEDUCK_PORTS", "web=8080"),
        ("LAMEDUCK_PROBES", "8080/1000"),
        ("HOST_IP", NODE_IP),
        ("LAMEDUCK_LOG_LEVEL", "debug"),
    ]);
    Sidecar::start_with(30, args, launch)
}

/// The wall-clock end of the pod's deregister phase, from the report.
fn deregister_end(report: &TerminationReport) -> SystemTime {
    let t0 = humantime::parse_rfc3339(report.t0.as_deref().expect("t0")).expect("t0 parses");
    t0 + Duration::from_millis(report.phases_ms.deregister.expect("deregister phase"))
}

#[test]
fn the_deregister_phase_ends_a_quiet_period_after_the_clients_stop_and_probes_do_not_hold_it() {
    const QUIET: Duration = Duration::from_millis(2000);
    let net = Net::new();
    // A quiet period longer than the probes' period: counted as traffic, the probes would
    // hold the phase to maxDelay (10 s).
    let mut sidecar = sidecar_in(
        &net,
        &[
            "--quiet-period-millis",
            "2000",
            "--min-delay-millis",
            "200",
            "--max-delay-millis",
            "10000",
        ],
    );
    let server = Server::start(&net, sidecar.dir.path(), PORT, Duration::ZERO);
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes = start_probes(&net, PORT, Duration::from_secs(1), stop_probes.clone());
    let stop_clients = Arc::new(AtomicBool::new(false));
    let clients = {
        let stop = stop_clients.clone();
        net.in_client(move || {
            let (mut ok, mut failed, mut last_connect) = (0u32, 0u32, None);
            while !stop.load(Ordering::Relaxed) {
                last_connect = Some(SystemTime::now());
                match get(pod_addr()) {
                    Ok(200) => ok += 1,
                    _ => failed += 1,
                }
                thread::sleep(Duration::from_millis(50));
            }
            (ok, failed, last_connect.expect("a request"))
        })
    };
    thread::sleep(Duration::from_millis(500));
    let mut hook = exec_prestop_in(
        &server.container_launch(&[("LAMEDUCK_LOG_LEVEL", "debug")]),
        sidecar.dir.path(),
        "web",
        5000,
        &[],
    );
    // The load balancers take 1.5 s to stop sending.
    thread::sleep(Duration::from_millis(1500));
    stop_clients.store(true, Ordering::Relaxed);
    let (ok, failed, last_connect) = clients.join().unwrap();
    let held = hook
        .wait(Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the hook was not released:\n{}", sidecar.log()));
    stop_probes.store(true, Ordering::Relaxed);
    let (probed, _) = probes.join().unwrap();
    let (report, log) = sidecar.stop();

    assert_eq!(failed, 0, "{log}");
    assert!(ok > 20, "too little load: {ok}");
    assert!(probed >= 3, "the probes did not run: {probed}");
    assert_eq!(report.outcome, Outcome::NoApp, "{report:?}");
    let lag = deregister_end(&report)
        .duration_since(last_connect)
        .unwrap_or_else(|_| panic!("the phase ended before the last client: {report:?}\n{log}"));
    println!(
        "phase end {lag:?} after the last client connection; hook held {held:?}; {probed} probes"
    );
    assert!(
        lag >= QUIET - 5 * MS && lag <= QUIET + 100 * MS,
        "the phase ended {lag:?} after the last client, not within the quiet period + 100 ms: {report:?}\n{log}"
    );
    assert!(
        report.last_accept_ms.is_some_and(|ms| ms >= 1400),
        "the kernel view did not see the clients: {report:?}"
    );
    assert!(
        report
            .connections
            .iter()
            .any(|c| c.port == PORT && c.container.as_deref() == Some("web")),
        "{report:?}"
    );
    drop(server);
}

/// A container without an SDK deleted with `action`: the hook runs it once the phase is
/// over and returns only after the server closed its listener; `attempts` connections
/// after that are reported as refused.
fn drain_waits_for_the_listener(action: &str, attempts: u32) {
    const DRAIN: Duration = Duration::from_millis(1000);
    let net = Net::new();
    let mut sidecar = sidecar_in(
        &net,
        &["--quiet-period-millis", "300", "--min-delay-millis", "200"],
    );
    let mut server = Server::start(&net, sidecar.dir.path(), PORT, DRAIN);
    let stop_probes = Arc::new(AtomicBool::new(false));
    let probes = start_probes(&net, PORT, Duration::from_secs(1), stop_probes.clone());
    let served = net
        .in_client(|| {
            (0..5)
                .filter(|_| matches!(get(pod_addr()), Ok(200)))
                .count()
        })
        .join()
        .unwrap();
    assert_eq!(served, 5, "{}", server.output());

    let mut hook = exec_prestop_in(
        &server.container_launch(&[
            ("LAMEDUCK_DRAIN_ACTION", action),
            ("LAMEDUCK_LOG_LEVEL", "debug"),
        ]),
        sidecar.dir.path(),
        "web",
        5000,
        &[],
    );
    let held = hook
        .wait(Instant::now() + Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the hook never returned:\n{}", hook.log()));
    let returned = SystemTime::now();
    let closed = server.closed_at().unwrap_or_else(|| {
        panic!(
            "the hook returned after {held:?} with the listener still open\nhook:\n{}\nserver:\n{}",
            hook.log(),
            server.output()
        )
    });
    assert!(closed <= returned, "{closed:?} > {returned:?}");
    // Deregister (≥ 300 ms of quiet) and the server's own drain of 1 s.
    assert!(
        held >= DRAIN + 300 * MS,
        "the hook did not wait for the drain: {held:?}\n{}",
        hook.log()
    );
    assert!(held < Duration::from_secs(10), "{held:?}\n{}", hook.log());

    let refused_here = net
        .in_client(move || {
            (0..attempts)
                .filter(|_| {
                    matches!(get(pod_addr()), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                })
                .count() as u64
        })
        .join()
        .unwrap();
    assert_eq!(refused_here, u64::from(attempts));
    stop_probes.store(true, Ordering::Relaxed);
    let (_, probes_refused) = probes.join().unwrap();
    let _ = wait_until(&mut server.child, Instant::now() + Duration::from_secs(5));
    let (report, log) = sidecar.stop();

    println!(
        "{action}: hook held {held:?}; {attempts} attempts, {probes_refused} probes refused; report {report:?}"
    );
    assert_eq!(report.outcome, Outcome::NoApp, "{report:?}");
    let refused = report
        .refused
        .unwrap_or_else(|| panic!("no refused count: {report:?}\n{log}"));
    // Every probe firing that may have met the closed port is taken off: up to one more
    // than the probes that did, for the one probe of the port (docs/protocol.md §7).
    if attempts > 0 {
        assert!(
            refused + 1 >= u64::from(attempts) && refused <= u64::from(attempts),
            "{attempts} attempts, {probes_refused} probes refused, {refused} refused\n{log}"
        );
    } else {
        assert_eq!(
            refused, 0,
            "nothing but {probes_refused} probes was refused\n{log}"
        );
    }
    let port = report
        .connections
        .iter()
        .find(|c| c.port == PORT)
        .unwrap_or_else(|| panic!("no connections for {PORT}: {report:?}"));
    assert_eq!(port.container.as_deref(), Some("web"));
}

#[test]
fn a_signal_drain_waits_until_the_listener_is_closed_and_later_attempts_are_refused() {
    drain_waits_for_the_listener("signal:SIGQUIT", 5);
}

#[test]
fn an_exec_drain_waits_until_the_listener_is_closed_and_nothing_refused_is_zero() {
    drain_waits_for_the_listener(r#"exec:["/bin/sh","-c","kill -USR2 1"]"#, 0);
}

#[test]
fn an_http_drain_waits_until_the_listener_is_closed() {
    drain_waits_for_the_listener("http:8080/drain", 3);
}

#[test]
fn a_server_that_never_closes_is_let_go_at_the_release_deadline() {
    // G = 4 s: the hook is released by T0 + 2 s whatever the server does, so that the
    // kubelet's SIGTERM still comes 2 s before its SIGKILL.
    let net = Net::new();
    let launch = net.pod_launch(&[("LAMEDUCK_PORTS", "web=8080"), ("HOST_IP", NODE_IP)]);
    let sidecar = Sidecar::start_with(
        4,
        &["--quiet-period-millis", "300", "--min-delay-millis", "200"],
        launch,
    );
    let server = Server::start(&net, sidecar.dir.path(), PORT, Duration::from_secs(60));
    let mut hook = exec_prestop_in(
        &server.container_launch(&[("LAMEDUCK_DRAIN_ACTION", "signal:SIGQUIT")]),
        sidecar.dir.path(),
        "web",
        5000,
        &[],
    );
    let held = hook
        .wait(Instant::now() + Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the hook never returned:\n{}", hook.log()));
    assert!(
        held >= 1900 * MS && held < 2500 * MS,
        "held {held:?}, not the release deadline (T0 + 2 s)\n{}",
        hook.log()
    );
    assert!(server.closed_at().is_none(), "{}", server.output());
    assert!(
        server.output().contains("draining"),
        "the signal did not reach the server: {}",
        server.output()
    );
}

#[test]
fn a_sidecar_lost_mid_deregister_still_drains_the_server_after_the_planned_end() {
    // The hook holds the container until the phase's planned end (maxDelay 3 s), then
    // runs the drain action itself and waits for the listener.
    let net = Net::new();
    let mut sidecar = sidecar_in(
        &net,
        &[
            "--quiet-period-millis",
            "300",
            "--min-delay-millis",
            "1000",
            "--max-delay-millis",
            "3000",
        ],
    );
    let server = Server::start(&net, sidecar.dir.path(), PORT, Duration::from_millis(500));
    let mut hook = exec_prestop_in(
        &server.container_launch(&[("LAMEDUCK_DRAIN_ACTION", "signal:SIGQUIT")]),
        sidecar.dir.path(),
        "web",
        5000,
        &[],
    );
    thread::sleep(Duration::from_millis(400));
    sidecar.kill();
    let held = hook
        .wait(Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the hook never returned:\n{}", hook.log()));
    let returned = SystemTime::now();
    let closed = server
        .closed_at()
        .unwrap_or_else(|| panic!("listener still open after {held:?}:\n{}", hook.log()));
    assert!(closed <= returned);
    assert!(
        held >= 3500 * MS && held < 6000 * MS,
        "held {held:?}: the planned end (3 s) and the drain (0.5 s)\n{}",
        hook.log()
    );
}

#[test]
fn node_traffic_beyond_the_probes_rate_keeps_the_phase_open() {
    // What kube-proxy SNATs arrives from the node's address too: one connection a second
    // from the node where the pod declares one probe every 10 s is traffic, and holds the
    // phase to maxDelay (5 s) instead of ending it after the 2.5 s quiet period.
    let net = Net::new();
    let launch = net.pod_launch(&[
        ("LAMEDUCK_PORTS", "web=8080"),
        ("LAMEDUCK_PROBES", "8080/10000"),
        ("HOST_IP", NODE_IP),
    ]);
    let mut sidecar = Sidecar::start_with(
        30,
        &[
            "--quiet-period-millis",
            "2500",
            "--min-delay-millis",
            "200",
            "--max-delay-millis",
            "5000",
        ],
        launch,
    );
    let server = Server::start(&net, sidecar.dir.path(), PORT, Duration::ZERO);
    let stop = Arc::new(AtomicBool::new(false));
    let node = start_probes(&net, PORT, Duration::from_secs(1), stop.clone());
    thread::sleep(Duration::from_millis(300));
    let mut hook = exec_prestop_in(&Launch::default(), sidecar.dir.path(), "web", 5000, &[]);
    let held = hook
        .wait(Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the hook was not released:\n{}", sidecar.log()));
    stop.store(true, Ordering::Relaxed);
    let (sent, _) = node.join().unwrap();
    let (report, log) = sidecar.stop();
    println!("held {held:?} with {sent} node connections; {report:?}");
    assert!(
        report
            .phases_ms
            .deregister
            .is_some_and(|ms| (4990..=5050).contains(&ms)),
        "not held to maxDelay: {report:?}\n{log}"
    );
    assert!(held >= 4900 * MS && held < 5500 * MS, "{held:?}");
    drop(server);
}

#[test]
fn without_a_sidecar_the_hook_drains_the_server_after_the_fallback_delay() {
    // The sidecar never ran (or cannot be reached): the hook waits its fallback delay,
    // then runs the action and waits for the listener, bounded by G − 2 s from its start.
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&net, dir.path(), PORT, Duration::from_millis(500));
    let mut hook = exec_prestop_in(
        &server.container_launch(&[
            ("LAMEDUCK_DRAIN_ACTION", "signal:SIGQUIT"),
            ("LAMEDUCK_GRACE_SECONDS", "10"),
        ]),
        dir.path(),
        "web",
        700,
        &[],
    );
    let held = hook
        .wait(Instant::now() + Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the hook never returned:\n{}", hook.log()));
    let returned = SystemTime::now();
    let closed = server
        .closed_at()
        .unwrap_or_else(|| panic!("listener still open after {held:?}:\n{}", hook.log()));
    assert!(closed <= returned);
    assert!(
        held >= 1200 * MS && held < 4000 * MS,
        "held {held:?}: the fallback delay (0.7 s) and the drain (0.5 s)\n{}",
        hook.log()
    );
}
