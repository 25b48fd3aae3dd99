use super::*;
use crate::settings::test_settings;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn begin(state: &mut State, container: &str) -> Instant {
    let t0 = Instant::now();
    let (_, first) = state.begin(container, t0, SystemTime::now());
    assert!(first);
    t0
}

fn is_deregistering(phase: Phase) -> bool {
    matches!(phase, Phase::Deregister { .. })
}

#[test]
fn acked_app_releases_its_container_with_timings() {
    let mut state = State::new(test_settings());
    let web = state.register("web", 10);
    state.activity(web, 5, Instant::now());
    let t0 = begin(&mut state, "web");
    assert!(is_deregistering(state.phase_of(web)));
    state.activity(web, 5, t0);
    state.activity(web, 6, t0 + S / 2);
    assert_eq!(state.deregister_end("web"), Some(t0 + S / 2 + S));
    assert_eq!(state.release("web", false), None);
    assert!(state.start_drain("web", t0 + 2 * S));
    assert!(matches!(state.phase_of(web), Phase::Drain { .. }));
    state.drained(web, t0 + 3 * S);
    assert_eq!(state.release("web", false), None);
    state.done(web, true, None, t0 + 5 * S);
    assert_eq!(state.release("web", false), Some(Outcome::Acked));
    state.mark_released("web", t0 + 5 * S);
    let report = state.report();
    assert_eq!(report.outcome, Outcome::Acked);
    assert_eq!(
        report.phases_ms,
        PhasesMs {
            deregister: Some(2000),
            drain: Some(1000),
            cleanup: Some(2000)
        }
    );
    assert_eq!(report.last_accept_ms, Some(500));
    assert_eq!(report.released_ms, Some(5000));
    assert!(report.restarts.is_empty());
}

#[test]
fn a_hook_stops_only_its_own_container() {
    let mut state = State::new(test_settings());
    let a = state.register("a", 1);
    let b = state.register("b", 2);
    let t0 = begin(&mut state, "a");
    assert!(is_deregistering(state.phase_of(a)));
    assert_eq!(state.phase_of(b), Phase::Serving, "b is not being stopped");
    state.start_drain("a", t0 + S);
    state.done(a, true, None, t0 + 2 * S);
    assert_eq!(state.release("a", false), Some(Outcome::Acked));
    assert_eq!(state.release("b", false), None, "no hook for b");
    assert_eq!(state.phase_of(b), Phase::Serving);
}

#[test]
fn two_hooks_at_once_each_follow_their_own_apps() {
    let mut state = State::new(test_settings());
    let a = state.register("a", 1);
    let _b = state.register("b", 2);
    let t0 = begin(&mut state, "a");
    let (_, first) = state.begin("b", t0 + MS, SystemTime::now());
    assert!(first);
    let (_, joined) = state.begin("b", t0 + 2 * MS, SystemTime::now());
    assert!(!joined, "a second call for the same container joins");
    state.start_drain("a", t0 + S);
    state.start_drain("b", t0 + S);
    state.done(a, true, None, t0 + 2 * S);
    assert_eq!(state.release("a", false), Some(Outcome::Acked));
    assert_eq!(state.release("b", false), None);
    state.expire("b", t0 + 28 * S);
    assert_eq!(state.release("b", true), Some(Outcome::Timeout));
    assert_eq!(state.report().outcome, Outcome::Timeout);
}

#[test]
fn a_container_without_an_app_follows_its_own_rule() {
    // An SDK app in "web", nothing in "proxy": the proxy's hook waits the fixed delay,
    // not the web app's drain.
    let mut state = State::new(test_settings());
    let web = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    state.begin("proxy", t0, SystemTime::now());
    assert_eq!(state.deregister_end("proxy"), Some(t0 + 5 * S));
    state.start_drain("web", t0 + S);
    assert_eq!(
        state.release("proxy", false),
        None,
        "released by its own delay"
    );
    state.done(web, true, None, t0 + 2 * S);
    state.start_drain("proxy", t0 + 5 * S);
    assert_eq!(state.release("proxy", false), Some(Outcome::NoApp));
}

#[test]
fn a_restarted_container_is_served_normally_and_reported_apart() {
    let mut state = State::new(test_settings());
    let old = state.register("web", 1);
    let side = state.register("side", 2);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    state.done(old, true, None, t0 + 2 * S);
    assert_eq!(state.release("web", false), Some(Outcome::Acked));
    state.mark_released("web", t0 + 2 * S);
    // The kubelet SIGTERMs the old process and starts a new one.
    let new = state.register("web", 7);
    assert_eq!(
        state.phase_of(new),
        Phase::Serving,
        "the new process serves"
    );
    assert_eq!(state.phase_of(side), Phase::Serving);
    let report = state.report();
    assert_eq!(
        report.outcome,
        Outcome::NoPrestop,
        "the pod itself was not stopped"
    );
    assert_eq!(report.restarts.len(), 1);
    let restart = &report.restarts[0];
    assert_eq!(restart.container, "web");
    assert_eq!(restart.outcome, Outcome::Acked);
    assert_eq!(restart.released_ms, Some(2000));
    assert_eq!(restart.phases_ms.deregister, Some(1000));
    // Then the pod is deleted: a fresh shutdown of web, with its own T0.
    let t1 = t0 + 60 * S;
    let (_, first) = state.begin("web", t1, SystemTime::now());
    assert!(first);
    state.begin("side", t1, SystemTime::now());
    assert!(is_deregistering(state.phase_of(new)));
    state.start_drain("web", t1 + S);
    state.start_drain("side", t1 + S);
    state.done(new, true, None, t1 + 2 * S);
    state.done(side, true, None, t1 + 2 * S);
    let report = state.report();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}");
    let pids: Vec<_> = report.apps.iter().map(|a| a.pid).collect();
    assert_eq!(pids, vec![Some(2), Some(7)], "the old process is gone");
    assert_eq!(report.restarts.len(), 1);
}

#[test]
fn a_second_kill_before_any_new_process_connected_starts_a_new_shutdown() {
    let mut state = State::new(test_settings());
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + 5 * S);
    state.mark_released("web", t0 + 5 * S);
    let (_, first) = state.begin("web", t0 + 60 * S, SystemTime::now());
    assert!(first, "a released shutdown is over");
    let report = state.report();
    assert_eq!(report.restarts.len(), 1);
    assert_eq!(report.restarts[0].outcome, Outcome::NoApp);
}

#[test]
fn entries_of_earlier_processes_are_dropped_when_the_container_says_hello_again() {
    let mut state = State::new(test_settings());
    for pid in 1..=3 {
        let failed = state.register("web", pid);
        state.done(
            failed,
            false,
            Some("cannot open the database".into()),
            Instant::now(),
        );
    }
    let current = state.register("web", 4);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    state.done(current, true, None, t0 + 2 * S);
    assert_eq!(state.release("web", false), Some(Outcome::Acked));
    let report = state.report();
    assert_eq!(report.outcome, Outcome::Acked, "{report:?}");
    assert_eq!(report.apps.len(), 1);
    assert_eq!(report.apps[0].pid, Some(4));
}

#[test]
fn activity_before_t0_is_not_the_baseline() {
    let mut state = State::new(test_settings());
    let web = state.register("web", 1);
    state.activity(web, 100, Instant::now());
    let t0 = begin(&mut state, "web");
    // The first report after T0 is the baseline, even though it is above the one before.
    state.activity(web, 150, t0 + 10 * MS);
    assert_eq!(state.report().last_accept_ms, None);
    state.activity(web, 151, t0 + 400 * MS);
    assert_eq!(state.report().last_accept_ms, Some(400));
}

#[test]
fn steady_traffic_never_eats_the_drain_budget() {
    // G = 10 s: release by T0 + 8 s, drain by T0 + 4 s whatever the traffic.
    let mut settings = test_settings();
    settings.grace = 10 * S;
    let mut state = State::new(settings);
    let web = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    for i in 0..100u64 {
        state.activity(web, i, t0 + i as u32 * 100 * MS);
    }
    assert_eq!(state.deregister_end("web"), Some(t0 + 4 * S));
    match state.phase_of(web) {
        Phase::Deregister {
            phase_end_unix_ms,
            deadline_unix_ms,
        } => assert_eq!(deadline_unix_ms - phase_end_unix_ms, 4000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_learned_drain_budget_is_kept_for_drain_and_cleanup() {
    let mut settings = test_settings();
    settings.drain_budget = Some(20 * S);
    let mut state = State::new(settings);
    let _web = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    // 28 s budget, 20 s learned: drain by T0 + 8 s, below max_delay (15 s).
    let (deadline, phase_end) = state.plan_unix_ms("web").unwrap();
    assert_eq!(deadline - phase_end, 20_000);
    assert_eq!(state.deadline("web"), Some(t0 + 28 * S));
}

#[test]
fn without_apps_the_fixed_delay_applies() {
    let mut state = State::new(test_settings());
    let t0 = begin(&mut state, "web");
    assert_eq!(state.deregister_end("web"), Some(t0 + 5 * S));
    assert_eq!(state.release("web", false), None);
    state.start_drain("web", t0 + 5 * S);
    assert_eq!(state.release("web", false), Some(Outcome::NoApp));
    assert_eq!(state.report().outcome, Outcome::NoApp);
}

#[test]
fn http_mode_waits_for_the_call() {
    let mut settings = test_settings();
    settings.drain_mode = DrainMode::Http;
    let mut state = State::new(settings);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + 5 * S);
    assert_eq!(state.release("web", false), None);
    state.http_finished("web", t0 + 6 * S);
    assert_eq!(state.release("web", false), Some(Outcome::NoApp));
    assert_eq!(state.report().phases_ms.drain, Some(1000));
}

#[test]
fn disconnects_outside_a_shutdown_are_forgotten_during_one_reported() {
    let mut state = State::new(test_settings());
    let gone = state.register("web", 1);
    state.closed(gone, Instant::now());
    let crashed = state.register("web", 2);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    state.closed(crashed, t0 + 2 * S);
    assert_eq!(state.release("web", false), Some(Outcome::Disconnected));
    let report = state.report();
    assert_eq!(report.apps.len(), 1);
    assert_eq!(report.outcome, Outcome::Disconnected);
    assert_eq!(
        report.phases_ms.cleanup, None,
        "no acknowledged app, no cleanup timing"
    );
}

#[test]
fn app_errors_are_reported_with_their_text_capped() {
    let mut state = State::new(test_settings());
    let web = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0);
    state.done(web, false, Some("x".repeat(10_000)), t0 + S);
    assert_eq!(state.release("web", false), Some(Outcome::AppError));
    let error = state.report().apps[0].error.clone().unwrap();
    assert_eq!(
        error.chars().count(),
        ERROR_MAX_CHARS + 1,
        "cut, with an ellipsis"
    );
}

#[test]
fn no_prestop_report() {
    let state = State::new(test_settings());
    let report = state.report();
    assert_eq!(report.outcome, Outcome::NoPrestop);
    assert!(report.t0.is_none());
}

#[test]
fn begin_joins_the_shutdown_in_progress() {
    let mut state = State::new(test_settings());
    let t0 = Instant::now();
    let (deadline, first) = state.begin("web", t0, SystemTime::now());
    assert!(first);
    assert_eq!(deadline, t0 + 28 * S);
    assert_eq!(
        state.begin("web", t0 + S, SystemTime::now()),
        (deadline, false)
    );
}

#[test]
fn a_restored_sidecar_resumes_where_the_last_one_stopped() {
    let mut settings = test_settings();
    settings.grace = 30 * S;
    let mut state = State::new(settings.clone());
    let web = state.register("web", 1);
    let t0 = Instant::now();
    let t0_wall = SystemTime::now();
    state.begin("web", t0, t0_wall);
    state.activity(web, 1, t0);
    state.activity(web, 2, t0 + 100 * MS);
    let before = state.plan_unix_ms("web").unwrap();
    let persisted = state.persisted();
    assert_eq!(persisted.apps.len(), 1, "the connected process is kept");
    let json = serde_json::to_string(&persisted).unwrap();
    let back: Persisted = serde_json::from_str(&json).unwrap();
    assert_eq!(back, persisted);

    // The new sidecar starts 3 s later (the wall clock moved on as much).
    let now = t0 + 3 * S;
    let mut restored = State::restore(settings, back, now, t0_wall + 3 * S);
    assert_eq!(restored.pending(), vec!["web".to_owned()]);
    assert!(!restored.has_hook("web"), "no hook until one reconnects");
    let after = restored.plan_unix_ms("web").unwrap();
    assert_eq!(before, after, "same deadline and planned end");
    assert_eq!(restored.deadline("web"), Some(t0 + 28 * S));
    // The process has not reconnected: it is waited for, until the planned end.
    assert_eq!(restored.deregister_end("web"), restored.planned_end("web"));
    assert_eq!(restored.release("web", false), None);
    // It reconnects (same pid) and rejoins the shutdown; traffic is observed afresh.
    let again = restored.register("web", 1);
    assert!(is_deregistering(restored.phase_of(again)));
    let end = restored.deregister_end("web").unwrap();
    assert!(end >= Instant::now() + 900 * MS, "one more quiet period");
    assert_eq!(restored.report().t0, state.report().t0);
    assert_eq!(
        restored.report().last_accept_ms,
        None,
        "the restart is no accept"
    );
    let (_, joined) = restored.begin("web", now, SystemTime::now());
    assert!(!joined, "the reconnecting hook joins");
    assert!(restored.has_hook("web"));
}

#[test]
fn a_process_that_does_not_come_back_after_a_restart_mid_drain_is_disconnected() {
    let mut state = State::new(test_settings());
    let web = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    assert!(matches!(state.phase_of(web), Phase::Drain { .. }));
    let mut restored = State::restore(
        test_settings(),
        state.persisted(),
        t0 + 2 * S,
        SystemTime::now(),
    );
    restored.begin("web", t0 + 2 * S, SystemTime::now());
    // An SDK does not reconnect after `drain`: the hook is released, not with `no-app`.
    assert_eq!(restored.release("web", false), Some(Outcome::Disconnected));
}

#[test]
fn a_restored_shutdown_no_hook_came_back_to_is_over() {
    let mut state = State::new(test_settings());
    let t0 = begin(&mut state, "web");
    let mut restored = State::restore(
        test_settings(),
        state.persisted(),
        t0 + S,
        SystemTime::now(),
    );
    assert!(restored.abandon_if_no_hook("web", t0 + 20 * S));
    assert!(restored.pending().is_empty());
    let new = restored.register("web", 9);
    assert_eq!(
        restored.phase_of(new),
        Phase::Serving,
        "the next process serves"
    );
}

#[test]
fn a_hook_that_goes_away_ends_its_containers_shutdown() {
    // The kubelet killed the hook (a probe's shorter grace period) or the container died:
    // the next process of the container is its restart, not part of a dead shutdown.
    let mut state = State::new(test_settings());
    let old = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    state.hook_left("web", t0 + 3 * S);
    assert!(state.pending().is_empty());
    let new = state.register("web", 2);
    assert_eq!(state.phase_of(new), Phase::Serving);
    let report = state.report();
    assert_eq!(report.restarts.len(), 1);
    assert_eq!(report.restarts[0].outcome, Outcome::Timeout);
    assert!(
        report.apps.iter().all(|a| a.pid != Some(1)),
        "the old process went with the record: {report:?}"
    );
    let _ = old;
}

#[test]
fn a_released_hook_leaving_changes_nothing() {
    let mut state = State::new(test_settings());
    let web = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    state.done(web, true, None, t0 + 2 * S);
    state.mark_released("web", t0 + 2 * S);
    state.hook_left("web", t0 + 2 * S);
    assert_eq!(state.report().outcome, Outcome::Acked);
}

#[test]
fn a_second_kill_without_a_new_process_drops_the_old_entries() {
    let mut state = State::new(test_settings());
    let web = state.register("web", 1);
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    state.done(web, true, None, t0 + 2 * S);
    state.mark_released("web", t0 + 2 * S);
    // Killed again before any new process connected.
    state.begin("web", t0 + 60 * S, SystemTime::now());
    state.start_drain("web", t0 + 65 * S);
    assert_eq!(state.release("web", false), Some(Outcome::NoApp));
    let report = state.report();
    assert!(report.apps.is_empty(), "{report:?}");
    assert_eq!(report.restarts[0].outcome, Outcome::Acked);
}

#[test]
fn an_app_without_a_container_name_ignores_finished_shutdowns() {
    let mut state = State::new(test_settings());
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    state.mark_released("web", t0 + S);
    let anonymous = state.register("", 3);
    assert_eq!(state.phase_of(anonymous), Phase::Serving);
}

#[test]
fn restore_keeps_released_shutdowns_and_restart_records() {
    let mut state = State::new(test_settings());
    let t0 = begin(&mut state, "web");
    state.start_drain("web", t0 + S);
    state.mark_released("web", t0 + S);
    let _ = state.register("web", 2); // restart: archived
    let t1 = t0 + 10 * S;
    state.begin("web", t1, SystemTime::now());
    state.start_drain("web", t1 + S);
    state.mark_released("web", t1 + S);
    let restored = State::restore(
        test_settings(),
        state.persisted(),
        t1 + 2 * S,
        SystemTime::now(),
    );
    assert!(restored.pending().is_empty());
    let report = restored.report();
    assert_eq!(report.restarts.len(), 1);
    assert_eq!(report.released_ms, Some(1000));
}

#[test]
fn a_probes_shorter_grace_period_bounds_that_containers_shutdown() {
    let mut state = State::new(test_settings());
    let t0 = Instant::now();
    let (deadline, _) = state.begin_within("web", Some(10 * S), t0, SystemTime::now());
    assert_eq!(deadline, t0 + 8 * S, "10 s less the 2 s reserve");
    let (other, _) = state.begin_within("side", Some(90 * S), t0, SystemTime::now());
    assert_eq!(
        other,
        t0 + 28 * S,
        "never longer than the pod's grace period"
    );
}

/// Settings of a pod whose container `web` declares port 8080 (no SDK), with the kernel
/// view working.
fn kernel_state() -> State {
    let mut settings = test_settings();
    settings.ports = vec![lameduck_proto::ContainerPorts {
        container: "web".into(),
        ports: vec![8080],
    }];
    let mut state = State::new(settings);
    state.set_kernel_available(true);
    state
}

/// One sample in which `web` saw `new` connections and was (not) listening, with
/// `established` connections on 8080 and `out_rsts` resets sent so far.
fn sample(
    state: &mut State,
    at: Instant,
    new: u64,
    listening: bool,
    established: u32,
    out_rsts: u64,
) -> bool {
    let mut traffic = crate::kernel::view::ContainerTraffic {
        new_connections: new,
        listening,
        ..Default::default()
    };
    traffic.established.insert(8080, established);
    let observation = Observation {
        containers: [("web".to_owned(), traffic)].into(),
        baseline: false,
        table: true,
    };
    let counters = TcpCounters {
        out_rsts,
        app_aborts: Some(0),
        ..TcpCounters::default()
    };
    state.kernel_sample(&observation, Some(counters), at)
}

#[test]
fn a_container_without_an_sdk_ends_its_phase_when_the_kernel_sees_no_new_connection() {
    let mut state = kernel_state();
    assert!(!state.kernel_wanted(), "nothing to sample at idle");
    let t0 = begin(&mut state, "web");
    assert!(state.kernel_wanted());
    // Adaptive, not the fixed 5 s delay: the planned end is maxDelay.
    assert_eq!(state.planned_end("web"), Some(t0 + 14 * S));
    assert_eq!(state.deregister_end("web"), Some(t0 + S));
    assert!(sample(&mut state, t0 + 800 * MS, 2, true, 3, 0));
    assert_eq!(state.deregister_end("web"), Some(t0 + 1800 * MS));
    assert!(!sample(&mut state, t0 + 900 * MS, 0, true, 3, 0));
    assert_eq!(state.deregister_end("web"), Some(t0 + 1800 * MS));
    assert!(state.start_drain("web", t0 + 1800 * MS));
    // Traffic after the phase is no deregister lag.
    sample(&mut state, t0 + 1900 * MS, 1, true, 2, 0);
    assert_eq!(state.release("web", false), Some(Outcome::NoApp));
    state.mark_released("web", t0 + 1900 * MS);
    assert!(state.kernel_wanted(), "the listener is still open");
    sample(&mut state, t0 + 2500 * MS, 0, true, 1, 4);
    // The listener closes: resets from the sample before on are the window's.
    assert!(sample(&mut state, t0 + 2600 * MS, 0, false, 0, 5));
    assert!(!state.kernel_wanted());
    let report = state.report_with(
        Some(TcpCounters {
            out_rsts: 12,
            app_aborts: Some(2),
            ..TcpCounters::default()
        }),
        t0 + 3 * S,
    );
    assert_eq!(report.last_accept_ms, Some(800));
    assert_eq!(report.phases_ms.deregister, Some(1800));
    assert_eq!(report.refused, Some(6), "12 − 4 sent, less 2 aborts");
    assert_eq!(
        report.connections,
        vec![PortConnections {
            container: Some("web".into()),
            port: 8080,
            // The first table after the drain started.
            at_drain: 2,
            at_release: 1,
        }]
    );
    assert_eq!(state.report().refused, None, "no counters, no figure");
}

#[test]
fn an_sdk_and_the_kernel_both_keep_the_phase_open() {
    let mut state = kernel_state();
    let web = state.register("web", 7);
    let t0 = begin(&mut state, "web");
    state.activity(web, 10, t0);
    state.activity(web, 11, t0 + 500 * MS);
    assert_eq!(state.deregister_end("web"), Some(t0 + 1500 * MS));
    // The SDK saw nothing more, the kernel saw a connection (a probe-less client that the
    // middleware does not count, say): the phase stays open.
    sample(&mut state, t0 + 1200 * MS, 1, true, 0, 0);
    assert!(state.deregister_end("web") >= Some(t0 + 2200 * MS));
}

#[test]
fn without_the_kernel_view_a_container_without_an_sdk_keeps_the_fixed_delay() {
    let mut settings = test_settings();
    settings.ports = vec![lameduck_proto::ContainerPorts {
        container: "web".into(),
        ports: vec![8080],
    }];
    let mut state = State::new(settings);
    state.set_kernel_available(false);
    let t0 = begin(&mut state, "web");
    assert_eq!(state.deregister_end("web"), Some(t0 + 5 * S));
    assert!(!state.kernel_wanted());
    assert_eq!(state.report_with(None, Instant::now()).refused, None);
    assert!(
        state
            .report_with(None, Instant::now())
            .connections
            .is_empty()
    );
}

#[test]
fn a_blind_kernel_view_holds_the_phase_to_its_planned_end() {
    let mut state = kernel_state();
    let t0 = begin(&mut state, "web");
    for i in 1..=140 {
        state.kernel_blind(t0 + i * 100 * MS);
    }
    assert_eq!(state.deregister_end("web"), Some(t0 + 14 * S));
}

#[test]
fn a_container_never_seen_listening_lets_go_at_its_release() {
    let mut state = kernel_state();
    let t0 = begin(&mut state, "web");
    sample(&mut state, t0 + 100 * MS, 0, false, 0, 3);
    assert!(state.start_drain("web", t0 + S));
    state.mark_released("web", t0 + S);
    assert!(!state.kernel_wanted());
    let report = state.report_with(
        Some(TcpCounters {
            out_rsts: 4,
            app_aborts: Some(0),
            ..TcpCounters::default()
        }),
        t0 + 3 * S,
    );
    assert_eq!(report.refused, Some(1));
}

/// A 0 s phase: the hook is released before the poller took any sample. The refusals
/// count from the first counters read after the release, and the sampling goes on until
/// it has them.
#[test]
fn a_container_released_before_any_sample_counts_from_the_first_sample() {
    let mut settings = test_settings();
    settings.ports = vec![lameduck_proto::ContainerPorts {
        container: "web".into(),
        ports: vec![8080],
    }];
    settings.drain_mode = DrainMode::Delay;
    settings.delay = Duration::ZERO;
    let mut state = State::new(settings);
    state.set_kernel_available(true);
    let t0 = begin(&mut state, "web");
    assert!(state.start_drain("web", t0));
    state.mark_released("web", t0);
    assert!(
        state.kernel_wanted(),
        "no counters yet for the refusal window"
    );
    sample(&mut state, t0 + 90 * MS, 0, false, 0, 7);
    assert!(!state.kernel_wanted());
    let report = state.report_with(
        Some(TcpCounters {
            out_rsts: 10,
            app_aborts: Some(0),
            ..TcpCounters::default()
        }),
        t0 + 3 * S,
    );
    assert_eq!(report.refused, Some(3), "10 − 7 since the first sample");
}

#[test]
fn a_listener_never_seen_closing_stops_the_sampling_after_the_grace_period() {
    let mut state = kernel_state();
    let t0 = begin(&mut state, "web");
    sample(&mut state, t0 + 100 * MS, 0, true, 0, 0);
    assert!(state.start_drain("web", t0 + S));
    state.mark_released("web", t0 + S);
    // The container restarted between two samples: its port never looked closed.
    sample(&mut state, t0 + 10 * S, 0, true, 0, 0);
    assert!(state.kernel_wanted());
    // Deadline T0 + 28 s, and the 2 s reserve: the kubelet killed the old process by then.
    sample(&mut state, t0 + 30 * S, 0, true, 0, 0);
    assert!(!state.kernel_wanted(), "sampling forever at idle");
}

/// The kubelet keeps probing a terminating pod: a probe that meets the closed listener is
/// answered with a reset too. Every probe that may have fired in the window is taken off,
/// so probes alone never make a refusal.
#[test]
fn probes_that_meet_the_closed_listener_are_not_refusals() {
    let mut settings = test_settings();
    settings.ports = vec![lameduck_proto::ContainerPorts {
        container: "web".into(),
        ports: vec![8080],
    }];
    settings.probes = vec![lameduck_proto::ProbePort {
        port: 8080,
        period_millis: 1000,
    }];
    let mut state = State::new(settings);
    state.set_kernel_available(true);
    let t0 = begin(&mut state, "web");
    sample(&mut state, t0 + 100 * MS, 0, true, 0, 0);
    assert!(state.start_drain("web", t0 + S));
    state.mark_released("web", t0 + S);
    // The listener closes at 1.2 s (the window starts at the sample before, 1.1 s).
    sample(&mut state, t0 + 1100 * MS, 0, true, 0, 10);
    sample(&mut state, t0 + 1200 * MS, 0, false, 0, 10);
    let counters = |out_rsts| {
        Some(TcpCounters {
            out_rsts,
            app_aborts: Some(0),
            ..TcpCounters::default()
        })
    };
    // 2.5 s of window, one probe a second: up to 3 probes. A window shorter than a period
    // may hold one.
    let at = t0 + 3600 * MS;
    assert_eq!(
        state.report_with(counters(13), at).refused,
        Some(0),
        "three probes"
    );
    assert_eq!(state.report_with(counters(15), at).refused, Some(2));
    assert_eq!(
        state.report_with(counters(15), t0 + 1900 * MS).refused,
        Some(4)
    );
}

/// The app exits right after its hook and the sidecar is stopped right after it, before a
/// sample saw the listener close: the window starts at the last sample, when it listened.
#[test]
fn a_close_not_sampled_before_the_report_counts_from_the_last_sample() {
    let mut state = kernel_state();
    let t0 = begin(&mut state, "web");
    sample(&mut state, t0 + 900 * MS, 0, true, 0, 4);
    assert!(state.start_drain("web", t0 + S));
    state.mark_released("web", t0 + S);
    let report = state.report_with(
        Some(TcpCounters {
            out_rsts: 9,
            app_aborts: Some(0),
            ..TcpCounters::default()
        }),
        t0 + 1050 * MS,
    );
    assert_eq!(report.refused, Some(5));
}
