//! The sidecar's view of one pod's shutdown: connected applications, the phase, the
//! timings. Pure state transitions with explicit clocks, so every rule is unit-tested; the
//! I/O shell in `serve` calls these under a mutex and wakes waiters after each change.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lameduck_proto::{AppReport, Outcome, PhasesMs, REPORT_VERSION, TerminationReport};

use crate::deregister::{self, Accepts, Rule};
use crate::settings::{DrainMode, Settings};

/// Identifies one application connection.
pub type AppId = u64;

/// Where the shutdown sequence is; published to every application connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No preStop hook has run yet.
    Serving,
    /// Traffic is draining away from the pod.
    Deregister,
    /// Applications were told to drain, with this deadline (Unix ms).
    Drain {
        /// The deadline sent in `drain`.
        deadline_unix_ms: u64,
    },
}

#[derive(Debug)]
struct App {
    container: String,
    pid: u32,
    last_total: Option<u64>,
    drained_at: Option<Instant>,
    finished: Option<Finished>,
}

#[derive(Debug)]
struct Finished {
    outcome: Outcome,
    error: Option<String>,
    at: Instant,
    /// Whether the app itself said `done` (only those count for phase timings).
    acknowledged: bool,
}

#[derive(Debug)]
struct Shutdown {
    t0: Instant,
    t0_wall: SystemTime,
    deadline: Instant,
    rule: Rule,
    accepts: Accepts,
    deregister_end: Option<Instant>,
    drain_started: Option<Instant>,
    http_finished: Option<Instant>,
    last_release: Option<Instant>,
}

/// The whole state of one sidecar.
#[derive(Debug)]
pub struct State {
    settings: Settings,
    apps: BTreeMap<AppId, App>,
    next_id: AppId,
    shutdown: Option<Shutdown>,
}

impl State {
    /// A sidecar with no application and no shutdown in progress.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            apps: BTreeMap::new(),
            next_id: 0,
            shutdown: None,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Registers an application after its `hello`.
    pub fn register(&mut self, container: &str, pid: u32) -> AppId {
        self.next_id += 1;
        let app = App {
            container: container.to_owned(),
            pid,
            last_total: None,
            drained_at: None,
            finished: None,
        };
        self.apps.insert(self.next_id, app);
        self.next_id
    }

    /// The phase to announce to applications.
    pub fn phase(&self) -> Phase {
        match &self.shutdown {
            None => Phase::Serving,
            Some(s) if s.drain_started.is_none() => Phase::Deregister,
            Some(s) => Phase::Drain {
                deadline_unix_ms: unix_ms(s.t0_wall, s.deadline - s.t0),
            },
        }
    }

    /// Starts the shutdown (T0) if it has not started; returns the hard deadline by which
    /// every preStop hook is released.
    pub fn begin(&mut self, now: Instant, now_wall: SystemTime) -> Instant {
        if self.shutdown.is_none() {
            let connected = self.apps.values().any(|a| a.finished.is_none());
            let s = &self.settings;
            let rule = match s.drain_mode {
                DrainMode::Auto if connected => Rule::Adaptive {
                    min_delay: s.min_delay,
                    quiet_period: s.quiet_period,
                    max_delay: s.max_delay,
                },
                _ => Rule::Fixed(s.delay),
            };
            self.shutdown = Some(Shutdown {
                t0: now,
                t0_wall: now_wall,
                deadline: now + s.release_budget(),
                rule,
                accepts: Accepts::default(),
                deregister_end: None,
                drain_started: None,
                http_finished: None,
                last_release: None,
            });
        }
        self.deadline().unwrap_or(now)
    }

    /// The hard deadline, once the shutdown began.
    pub fn deadline(&self) -> Option<Instant> {
        self.shutdown.as_ref().map(|s| s.deadline)
    }

    /// The hard deadline as Unix milliseconds.
    pub fn deadline_unix_ms(&self) -> Option<u64> {
        self.shutdown
            .as_ref()
            .map(|s| unix_ms(s.t0_wall, s.deadline - s.t0))
    }

    /// Records an `activity` message.
    pub fn activity(&mut self, id: AppId, accepted_total: u64, now: Instant) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let grew = app.last_total.is_some_and(|last| accepted_total > last);
        app.last_total = Some(accepted_total);
        if let Some(s) = &mut self.shutdown {
            // Only accepts while deregistering measure the load balancers' lag.
            if grew && s.drain_started.is_none() {
                s.accepts.record(now);
            }
        }
    }

    /// Records `drained`.
    pub fn drained(&mut self, id: AppId, now: Instant) {
        if let Some(app) = self.apps.get_mut(&id) {
            app.drained_at.get_or_insert(now);
        }
    }

    /// Records `done`.
    pub fn done(&mut self, id: AppId, ok: bool, error: Option<String>, now: Instant) {
        if let Some(app) = self.apps.get_mut(&id).filter(|a| a.finished.is_none()) {
            let outcome = if ok {
                Outcome::Acked
            } else {
                Outcome::AppError
            };
            app.finished = Some(Finished {
                outcome,
                error,
                at: now,
                acknowledged: true,
            });
        }
    }

    /// Records that a connection closed. Before any shutdown the application simply goes
    /// away (a restarted process reconnects); during one it is `disconnected`.
    pub fn closed(&mut self, id: AppId, now: Instant) {
        if self.shutdown.is_none() {
            self.apps.remove(&id);
        } else if let Some(app) = self.apps.get_mut(&id).filter(|a| a.finished.is_none()) {
            app.finished = Some(Finished {
                outcome: Outcome::Disconnected,
                error: None,
                at: now,
                acknowledged: false,
            });
        }
    }

    /// When the deregister phase ends given what is known now (None before T0).
    pub fn deregister_end(&self) -> Option<Instant> {
        let s = self.shutdown.as_ref()?;
        Some(
            s.deregister_end
                .unwrap_or_else(|| deregister::phase_end(s.rule, s.t0, &s.accepts, s.deadline)),
        )
    }

    /// Ends the deregister phase and starts the drain; returns false if already started.
    pub fn start_drain(&mut self, now: Instant) -> bool {
        match &mut self.shutdown {
            Some(s) if s.drain_started.is_none() => {
                s.deregister_end = Some(now);
                s.drain_started = Some(now);
                true
            }
            _ => false,
        }
    }

    /// Records that the HTTP drain call returned (or failed).
    pub fn http_finished(&mut self, now: Instant) {
        if let Some(s) = &mut self.shutdown {
            s.http_finished.get_or_insert(now);
        }
    }

    /// At the deadline: every application still running has timed out.
    pub fn expire(&mut self, now: Instant) {
        for app in self.apps.values_mut().filter(|a| a.finished.is_none()) {
            app.finished = Some(Finished {
                outcome: Outcome::Timeout,
                error: None,
                at: now,
                acknowledged: false,
            });
        }
    }

    /// Whether every registered application finished.
    pub fn all_finished(&self) -> bool {
        self.apps.values().all(|a| a.finished.is_some())
    }

    /// The applications a container's preStop hook waits for: its own, and those that did
    /// not say which container they run in.
    fn apps_of<'a>(&'a self, container: &'a str) -> impl Iterator<Item = &'a App> + 'a {
        self.apps
            .values()
            .filter(move |a| a.container == container || a.container.is_empty())
    }

    /// The outcome with which `container`'s preStop hook may return now, or None to keep
    /// waiting. `at_deadline` forces an answer.
    pub fn release(&self, container: &str, at_deadline: bool) -> Option<Outcome> {
        let s = self.shutdown.as_ref()?;
        let drain_started = s.drain_started.is_some();
        let http_pending = self.settings.drain_mode == DrainMode::Http && s.http_finished.is_none();
        let mut any = false;
        let mut all_finished = true;
        let mut outcome = Outcome::Acked;
        for app in self.apps_of(container) {
            any = true;
            match &app.finished {
                Some(f) => outcome = outcome.worst(f.outcome),
                None => all_finished = false,
            }
        }
        if any {
            if all_finished && drain_started && !http_pending {
                Some(outcome)
            } else if at_deadline {
                Some(Outcome::Timeout)
            } else {
                None
            }
        } else if drain_started && !http_pending {
            Some(Outcome::NoApp)
        } else if at_deadline {
            Some(if drain_started {
                Outcome::Timeout
            } else {
                Outcome::NoApp
            })
        } else {
            None
        }
    }

    /// Records that a preStop hook was released at `now` (for `released_ms`).
    pub fn mark_released(&mut self, now: Instant) {
        if let Some(s) = &mut self.shutdown {
            s.last_release = Some(s.last_release.map_or(now, |last| last.max(now)));
        }
    }

    /// The termination report as it stands.
    pub fn report(&self) -> TerminationReport {
        let grace_seconds = self.settings.grace.as_secs();
        let Some(s) = &self.shutdown else {
            return TerminationReport {
                v: REPORT_VERSION,
                t0: None,
                grace_seconds,
                outcome: Outcome::NoPrestop,
                phases_ms: PhasesMs::default(),
                last_accept_ms: None,
                released_ms: None,
                apps: Vec::new(),
                apps_omitted: 0,
                restarts: Vec::new(),
                restarts_omitted: 0,
            };
        };
        let since_t0 = |at: Instant| millis(at.saturating_duration_since(s.t0));
        let acked: Vec<&App> = self
            .apps
            .values()
            .filter(|a| a.finished.as_ref().is_some_and(|f| f.acknowledged))
            .collect();
        let last_done = acked
            .iter()
            .filter_map(|a| a.finished.as_ref().map(|f| f.at))
            .max();
        let last_drained = acked
            .iter()
            .map(|a| a.drained_at.or(a.finished.as_ref().map(|f| f.at)))
            .max()
            .flatten();
        let drain_end = match (last_drained, s.http_finished) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let phases_ms = PhasesMs {
            deregister: s.deregister_end.map(since_t0),
            drain: s
                .drain_started
                .zip(drain_end)
                .map(|(start, end)| millis(end.saturating_duration_since(start))),
            cleanup: last_drained
                .zip(last_done)
                .map(|(start, end)| millis(end.saturating_duration_since(start))),
        };
        let apps: Vec<AppReport> = self
            .apps
            .values()
            .map(|a| AppReport {
                container: a.container.clone(),
                pid: Some(a.pid),
                outcome: a.finished.as_ref().map_or(Outcome::Timeout, |f| f.outcome),
                error: a.finished.as_ref().and_then(|f| f.error.clone()),
            })
            .collect();
        let outcome = if apps.is_empty() {
            if self.settings.drain_mode == DrainMode::Http && s.http_finished.is_none() {
                Outcome::Timeout
            } else {
                Outcome::NoApp
            }
        } else {
            apps.iter()
                .fold(Outcome::Acked, |worst, a| worst.worst(a.outcome))
        };
        TerminationReport {
            v: REPORT_VERSION,
            t0: Some(humantime::format_rfc3339_millis(s.t0_wall).to_string()),
            grace_seconds,
            outcome,
            phases_ms,
            last_accept_ms: s.accepts.last().map(since_t0),
            released_ms: s.last_release.map(since_t0),
            apps,
            apps_omitted: 0,
            restarts: Vec::new(),
            restarts_omitted: 0,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(wall: SystemTime, offset: Duration) -> u64 {
    millis(
        (wall + offset)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::test_settings;

    const S: Duration = Duration::from_secs(1);

    fn started(state: &mut State) -> Instant {
        let t0 = Instant::now();
        state.begin(t0, SystemTime::now());
        t0
    }

    #[test]
    fn acked_app_releases_its_container_with_timings() {
        let mut state = State::new(test_settings());
        let web = state.register("web", 10);
        let t0 = started(&mut state);
        assert_eq!(state.phase(), Phase::Deregister);
        state.activity(web, 5, t0);
        state.activity(web, 6, t0 + S / 2);
        assert_eq!(state.deregister_end(), Some(t0 + S / 2 + S));
        assert_eq!(state.release("web", false), None);
        assert!(state.start_drain(t0 + 2 * S));
        assert!(matches!(state.phase(), Phase::Drain { .. }));
        state.drained(web, t0 + 3 * S);
        assert_eq!(state.release("web", false), None);
        state.done(web, true, None, t0 + 5 * S);
        assert_eq!(state.release("web", false), Some(Outcome::Acked));
        state.mark_released(t0 + 5 * S);
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
    }

    #[test]
    fn each_container_waits_for_its_own_apps() {
        let mut state = State::new(test_settings());
        let a = state.register("a", 1);
        let _b = state.register("b", 2);
        let t0 = started(&mut state);
        state.start_drain(t0 + S);
        state.done(a, true, None, t0 + 2 * S);
        assert_eq!(state.release("a", false), Some(Outcome::Acked));
        assert_eq!(state.release("b", false), None);
        assert_eq!(state.release("c", false), Some(Outcome::NoApp));
        state.expire(t0 + 28 * S);
        assert_eq!(state.release("b", true), Some(Outcome::Timeout));
        assert_eq!(state.report().outcome, Outcome::Timeout);
    }

    #[test]
    fn without_apps_the_fixed_delay_applies() {
        let mut state = State::new(test_settings());
        let t0 = started(&mut state);
        assert_eq!(state.deregister_end(), Some(t0 + 5 * S));
        assert_eq!(state.release("web", false), None);
        state.start_drain(t0 + 5 * S);
        assert_eq!(state.release("web", false), Some(Outcome::NoApp));
        assert_eq!(state.report().outcome, Outcome::NoApp);
    }

    #[test]
    fn http_mode_waits_for_the_call() {
        let mut settings = test_settings();
        settings.drain_mode = DrainMode::Http;
        let mut state = State::new(settings);
        let t0 = started(&mut state);
        state.start_drain(t0 + 5 * S);
        assert_eq!(state.release("web", false), None);
        state.http_finished(t0 + 6 * S);
        assert_eq!(state.release("web", false), Some(Outcome::NoApp));
        assert_eq!(state.report().phases_ms.drain, Some(1000));
    }

    #[test]
    fn disconnects_before_the_shutdown_are_forgotten_during_it_reported() {
        let mut state = State::new(test_settings());
        let gone = state.register("web", 1);
        state.closed(gone, Instant::now());
        let crashed = state.register("web", 2);
        let t0 = started(&mut state);
        state.start_drain(t0 + S);
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
    fn app_errors_are_reported_with_their_text() {
        let mut state = State::new(test_settings());
        let web = state.register("web", 1);
        let t0 = started(&mut state);
        state.start_drain(t0);
        state.done(web, false, Some("flush: disk full".into()), t0 + S);
        assert_eq!(state.release("web", false), Some(Outcome::AppError));
        assert_eq!(
            state.report().apps[0].error.as_deref(),
            Some("flush: disk full")
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
    fn begin_is_idempotent() {
        let mut state = State::new(test_settings());
        let t0 = Instant::now();
        let deadline = state.begin(t0, SystemTime::now());
        assert_eq!(deadline, t0 + 28 * S);
        assert_eq!(state.begin(t0 + S, SystemTime::now()), deadline);
    }
}
