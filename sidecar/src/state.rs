//! The sidecar's view of one pod: the connected applications and the shutdowns of its
//! containers. Pure state transitions with explicit clocks, so every rule is unit-tested; the
//! I/O shell in `serve` calls these under a mutex and wakes waiters after each change.
//!
//! A shutdown belongs to a **container**: the kubelet runs a container's preStop hook
//! whenever it kills that container — on pod deletion, and also when a liveness or startup
//! probe fails. So a hook starts the sequence (deregister, drain, cleanup, release) for its
//! own container's applications only; the other containers keep serving, and a new process
//! of the container, after its hook returned, is served normally. When the pod is deleted
//! every container's hook arrives within milliseconds and the per-container sequences run
//! side by side, which is the pod-level shutdown. A shutdown followed by a new process of
//! the same container was a container restart: it is archived as a restart record, reported
//! apart from the pod's own shutdown (docs/protocol.md §4).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lameduck_proto::{
    AppReport, ERROR_MAX_CHARS, Outcome, PhasesMs, PortConnections, REPORT_VERSION, RestartReport,
    TerminationReport, truncate_chars,
};
use serde::{Deserialize, Serialize};

use crate::deregister::{self, Accepts, Rule};
use crate::kernel::{Observation, TcpCounters};
use crate::settings::{DrainMode, Settings};

/// Identifies one application connection.
pub type AppId = u64;

/// Restart records kept (the newest); older ones are only counted.
const MAX_RESTARTS: usize = 16;

/// Where one application's container is in its shutdown; what the application is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No preStop hook has run for the application's container.
    Serving,
    /// Traffic is draining away from the container.
    Deregister {
        /// The latest moment the phase ends (Unix ms).
        phase_end_unix_ms: u64,
        /// The release deadline (Unix ms).
        deadline_unix_ms: u64,
    },
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
    /// Whether its connection is still open.
    connected: bool,
    /// Restored from the state file: the process was connected when the previous sidecar
    /// died and has not reconnected yet.
    placeholder: bool,
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

/// One container's shutdown, from its preStop hook reaching the sidecar (T0) to the
/// hook's release.
#[derive(Debug)]
struct Shutdown {
    /// Tells this shutdown from a later one of the same container.
    id: u64,
    t0: Instant,
    t0_wall: SystemTime,
    /// Every hook of this container is released by then.
    deadline: Instant,
    /// The phase budget: `drain` goes out by then whatever traffic does.
    drain_by: Instant,
    rule: Rule,
    accepts: Accepts,
    deregister_end: Option<Instant>,
    drain_started: Option<Instant>,
    http_finished: Option<Instant>,
    released: Option<Instant>,
    /// preStop hooks of this container waiting for their release right now.
    hooks: u32,
    /// When a restarted sidecar resumed this shutdown (or a process rejoined it): traffic
    /// is observed again from then on.
    resumed_at: Option<Instant>,
    /// What the kernel view saw of the container's ports.
    kernel: KernelRecord,
}

/// One container's shutdown as the kernel view saw it.
#[derive(Debug, Default)]
struct KernelRecord {
    /// Whether one of its declared ports was seen listening since T0.
    was_listening: bool,
    /// Established connections per port when the drain started (from the first table
    /// read after it: under load the table is not read while the phase lasts).
    at_drain: Option<BTreeMap<u16, u32>>,
    /// Established connections per port when the hook was released, or later, while the
    /// listeners stayed open: the connections still open when the server stopped.
    at_release: Option<BTreeMap<u16, u32>>,
    /// When the container stopped taking connections (its listeners closed; without a
    /// listener seen, its drain ended or its hook was released), with the counters then.
    let_go: Option<(Instant, Option<TcpCounters>)>,
}

/// What the kernel view shows right now; the I/O shell keeps it current while it polls.
#[derive(Debug, Default)]
struct KernelNow {
    /// Whether the view works in this pod (the tables and counters could be read).
    available: bool,
    /// Established connections per served port, at the last sample.
    established: BTreeMap<u16, u32>,
    /// The counters at the sample before the last: what a listener that is seen closed
    /// at the last sample is measured from (resets at the close itself count).
    before_last: Option<TcpCounters>,
    /// The counters at the last sample.
    last: Option<TcpCounters>,
}

impl Shutdown {
    /// The monotonic instant `at` as Unix milliseconds, through this shutdown's T0.
    fn unix_ms(&self, at: Instant) -> u64 {
        let wall = match at.checked_duration_since(self.t0) {
            Some(after) => self.t0_wall + after,
            None => self.t0_wall - self.t0.duration_since(at),
        };
        millis(wall.duration_since(UNIX_EPOCH).unwrap_or_default())
    }

    /// The latest end of the deregister phase, as announced.
    fn planned_end(&self) -> Instant {
        deregister::latest_end(self.rule, self.t0, self.drain_by)
    }
}

/// What survives a restart of the sidecar container, kept in the run directory (the pod's
/// emptyDir): the shutdowns in progress and the restart records. Applications reconnect.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    /// The shutdowns of the containers, released or not.
    pub shutdowns: Vec<PersistedShutdown>,
    /// Restart records so far.
    #[serde(default)]
    pub restarts: Vec<RestartReport>,
    /// Restart records dropped.
    #[serde(default)]
    pub restarts_omitted: usize,
    /// Application processes taking part in a shutdown in progress, so that a restarted
    /// sidecar waits for them to reconnect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<PersistedApp>,
}

/// An application process that was connected when the state was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedApp {
    /// Its container.
    pub container: String,
    /// Its process id (a reconnection of the same process says the same).
    pub pid: u32,
}

/// One container's shutdown as persisted; times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedShutdown {
    /// The container.
    pub container: String,
    /// T0.
    pub t0: u64,
    /// Release deadline.
    pub deadline: u64,
    /// Latest drain start.
    pub drain_by: u64,
    /// Whether the deregister phase is adaptive (else the fixed delay).
    pub adaptive: bool,
    /// End of the deregister phase, once it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_end: Option<u64>,
    /// Start of the drain, once it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_started: Option<u64>,
    /// When the HTTP drain call finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_finished: Option<u64>,
    /// When the hook was released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<u64>,
}

/// The whole state of one sidecar.
#[derive(Debug)]
pub struct State {
    settings: Settings,
    apps: BTreeMap<AppId, App>,
    next_id: AppId,
    shutdowns: BTreeMap<String, Shutdown>,
    restarts: VecDeque<RestartReport>,
    restarts_omitted: usize,
    next_shutdown: u64,
    kernel: KernelNow,
}

impl State {
    /// A sidecar with no application and no shutdown in progress.
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            apps: BTreeMap::new(),
            next_id: 0,
            shutdowns: BTreeMap::new(),
            restarts: VecDeque::new(),
            restarts_omitted: 0,
            next_shutdown: 0,
            kernel: KernelNow::default(),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Registers an application after its `hello`. A process of a container whose hook was
    /// already released is that container's restart: the finished shutdown is archived and
    /// the new process is served normally. Entries of the container's earlier processes
    /// that finished or went away are dropped, so they cannot decide a later outcome.
    pub fn register(&mut self, container: &str, pid: u32) -> AppId {
        if self
            .shutdowns
            .get(container)
            .is_some_and(|s| s.released.is_some())
        {
            self.archive(container);
        }
        if !self.shutdowns.contains_key(container) {
            self.apps
                .retain(|_, a| a.container != container || (a.connected && a.finished.is_none()));
        }
        // The same process reconnecting to a restarted sidecar takes its place back.
        let before = self.apps.len();
        self.apps.retain(|_, a| {
            !(a.placeholder && a.finished.is_none() && a.container == container && a.pid == pid)
        });
        if self.apps.len() != before
            && let Some(s) = self.shutdowns.get_mut(container)
        {
            s.resumed_at = Some(Instant::now());
        }
        self.next_id += 1;
        let app = App {
            container: container.to_owned(),
            pid,
            connected: true,
            placeholder: false,
            last_total: None,
            drained_at: None,
            finished: None,
        };
        self.apps.insert(self.next_id, app);
        self.next_id
    }

    /// Moves a container's finished shutdown into the restart records.
    fn archive(&mut self, container: &str) {
        let Some(shutdown) = self.shutdowns.remove(container) else {
            return;
        };
        let apps: Vec<&App> = self
            .apps
            .values()
            .filter(|a| a.container == container)
            .collect();
        let summary = summarize(&[&shutdown], &apps);
        let outcome = if apps.is_empty() {
            Outcome::NoApp
        } else {
            worst_of(&apps)
        };
        self.restarts.push_back(RestartReport {
            container: container.to_owned(),
            t0: rfc3339(shutdown.t0_wall),
            outcome,
            phases_ms: summary.phases_ms,
            released_ms: summary.released_ms,
        });
        while self.restarts.len() > MAX_RESTARTS {
            self.restarts.pop_front();
            self.restarts_omitted += 1;
        }
        // What is left of the earlier processes belongs to the record, not to what follows.
        self.apps
            .retain(|_, a| a.container != container || (a.connected && a.finished.is_none()));
    }

    /// The shutdown an application takes part in: its container's, or for an application
    /// that did not say its container, the first shutdown of any container.
    fn shutdown_of(&self, app: &App) -> Option<&Shutdown> {
        if app.container.is_empty() {
            self.shutdowns
                .values()
                .filter(|s| s.released.is_none())
                .min_by_key(|s| s.t0)
        } else {
            self.shutdowns.get(&app.container)
        }
    }

    /// The phase to announce to application `id`.
    pub fn phase_of(&self, id: AppId) -> Phase {
        let Some(s) = self.apps.get(&id).and_then(|a| self.shutdown_of(a)) else {
            return Phase::Serving;
        };
        let deadline_unix_ms = s.unix_ms(s.deadline);
        if s.drain_started.is_none() {
            Phase::Deregister {
                phase_end_unix_ms: s.unix_ms(s.planned_end()),
                deadline_unix_ms,
            }
        } else {
            Phase::Drain { deadline_unix_ms }
        }
    }

    /// Starts `container`'s shutdown (its T0), or joins the one in progress. Returns the
    /// hard deadline by which the hook is released, and whether this call started it.
    #[cfg(test)]
    pub fn begin(
        &mut self,
        container: &str,
        now: Instant,
        now_wall: SystemTime,
    ) -> (Instant, bool) {
        self.begin_within(container, None, now, now_wall)
    }

    /// [`State::begin`] for a container whose hook the kubelet may cut at `grace` (its
    /// probe's own grace period), shorter than the pod's.
    pub fn begin_within(
        &mut self,
        container: &str,
        grace: Option<Duration>,
        now: Instant,
        now_wall: SystemTime,
    ) -> (Instant, bool) {
        match self.shutdowns.get_mut(container) {
            Some(s) if s.released.is_none() => {
                s.hooks += 1;
                return (s.deadline, false);
            }
            // A second kill of a container whose new process never connected.
            Some(_) => self.archive(container),
            None => {}
        }
        let s = &self.settings;
        let connected = self
            .apps
            .values()
            .any(|a| a.container == container && a.connected && a.finished.is_none());
        let rule = rule(s, connected || self.kernel_sees(container));
        let deadline = now + s.release_budget_within(grace.unwrap_or(s.grace));
        let drain_by = deregister::latest_drain_start(now, deadline, s.drain_budget);
        self.next_shutdown += 1;
        self.shutdowns.insert(
            container.to_owned(),
            Shutdown {
                id: self.next_shutdown,
                t0: now,
                t0_wall: now_wall,
                deadline,
                drain_by,
                rule,
                accepts: Accepts::default(),
                deregister_end: None,
                drain_started: None,
                http_finished: None,
                released: None,
                hooks: 1,
                resumed_at: None,
                kernel: KernelRecord::default(),
            },
        );
        // Activity before T0 is no baseline for growth after it.
        for app in self.apps.values_mut().filter(|a| a.container == container) {
            app.last_total = None;
        }
        (deadline, true)
    }

    /// `container`'s hard deadline, once its shutdown began.
    pub fn deadline(&self, container: &str) -> Option<Instant> {
        self.shutdowns.get(container).map(|s| s.deadline)
    }

    /// `container`'s hard deadline and the latest end of its deregister phase, as Unix
    /// milliseconds (what the preStop client is told).
    pub fn plan_unix_ms(&self, container: &str) -> Option<(u64, u64)> {
        self.shutdowns
            .get(container)
            .map(|s| (s.unix_ms(s.deadline), s.unix_ms(s.planned_end())))
    }

    /// Containers whose shutdown is in progress (hook not released yet).
    pub fn pending(&self) -> Vec<String> {
        self.shutdowns
            .iter()
            .filter(|(_, s)| s.released.is_none())
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Records an `activity` message.
    pub fn activity(&mut self, id: AppId, accepted_total: u64, now: Instant) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        let grew = app.last_total.is_some_and(|last| accepted_total > last);
        app.last_total = Some(accepted_total);
        if !grew {
            return;
        }
        let container = app.container.clone();
        let shutdown = if container.is_empty() {
            self.shutdowns
                .values_mut()
                .filter(|s| s.released.is_none())
                .min_by_key(|s| s.t0)
        } else {
            self.shutdowns.get_mut(&container)
        };
        // Only accepts while deregistering measure the load balancers' lag.
        if let Some(s) = shutdown.filter(|s| s.drain_started.is_none()) {
            s.accepts.record(now);
        }
    }

    /// Records `drained`.
    pub fn drained(&mut self, id: AppId, now: Instant) {
        let Some(app) = self.apps.get_mut(&id) else {
            return;
        };
        app.drained_at.get_or_insert(now);
        let container = app.container.clone();
        // An SDK stops accepting before it says `drained`: the end of its container's
        // drain, when no listener of it is in view.
        self.let_go_unless_listening(&container, now);
    }

    /// Records `done`; the sidecar closes the connection after it.
    pub fn done(&mut self, id: AppId, ok: bool, error: Option<String>, now: Instant) {
        if let Some(app) = self.apps.get_mut(&id) {
            app.connected = false;
            if app.finished.is_none() {
                let outcome = if ok {
                    Outcome::Acked
                } else {
                    Outcome::AppError
                };
                // Capped on arrival: a long error text must not crowd the report out.
                let error = error.map(|mut e| {
                    truncate_chars(&mut e, ERROR_MAX_CHARS);
                    e
                });
                app.finished = Some(Finished {
                    outcome,
                    error,
                    at: now,
                    acknowledged: true,
                });
            }
        }
    }

    /// Records that a connection closed. Outside a shutdown of its container the
    /// application simply goes away (a restarted process reconnects); during one it is
    /// `disconnected`.
    pub fn closed(&mut self, id: AppId, now: Instant) {
        let in_shutdown = self
            .apps
            .get(&id)
            .is_some_and(|a| self.shutdown_of(a).is_some());
        if !in_shutdown {
            self.apps.remove(&id);
        } else if let Some(app) = self.apps.get_mut(&id) {
            app.connected = false;
            if app.finished.is_none() {
                app.finished = Some(Finished {
                    outcome: Outcome::Disconnected,
                    error: None,
                    at: now,
                    acknowledged: false,
                });
            }
        }
    }

    /// When `container`'s deregister phase ends given what is known now.
    pub fn deregister_end(&self, container: &str) -> Option<Instant> {
        let s = self.shutdowns.get(container)?;
        if let Some(end) = s.deregister_end {
            return Some(end);
        }
        // Processes that have not reconnected to a restarted sidecar cannot report
        // traffic: wait for them, at most until the planned end.
        if self
            .apps_of(container)
            .any(|a| a.placeholder && a.finished.is_none())
        {
            return Some(s.planned_end());
        }
        let end = deregister::phase_end(s.rule, s.t0, &s.accepts, s.drain_by);
        Some(match (s.rule, s.resumed_at) {
            // Traffic went unobserved while the sidecar was away: one more quiet period.
            (Rule::Adaptive { quiet_period, .. }, Some(resumed)) => {
                end.max((resumed + quiet_period).min(s.drain_by))
            }
            _ => end,
        })
    }

    /// A hook of `container` stopped waiting: released, or its connection ended (the
    /// kubelet gave up on it, or the container died). When no hook of the container waits
    /// any more, its shutdown is over: what is unfinished timed out, and the next process
    /// of the container is its restart.
    pub fn hook_left(&mut self, container: &str, now: Instant) {
        let Some(s) = self.shutdowns.get_mut(container) else {
            return;
        };
        s.hooks = s.hooks.saturating_sub(1);
        if s.hooks == 0 && s.released.is_none() {
            self.expire(container, now);
            self.mark_released(container, now);
        }
    }

    /// A restored shutdown that no hook rejoined: its hook gave up while the sidecar was
    /// away, so the shutdown is over. Returns whether it was abandoned.
    pub fn abandon_if_no_hook(&mut self, container: &str, now: Instant) -> bool {
        let abandoned = self
            .shutdowns
            .get(container)
            .is_some_and(|s| s.hooks == 0 && s.released.is_none());
        if abandoned {
            self.expire(container, now);
            self.mark_released(container, now);
        }
        abandoned
    }

    /// The id of `container`'s shutdown that is still in progress.
    pub fn live_shutdown(&self, container: &str) -> Option<u64> {
        self.shutdowns
            .get(container)
            .filter(|s| s.released.is_none())
            .map(|s| s.id)
    }

    /// Whether a hook of `container` is waiting.
    pub fn has_hook(&self, container: &str) -> bool {
        self.shutdowns.get(container).is_some_and(|s| s.hooks > 0)
    }

    /// The latest end of `container`'s deregister phase.
    pub fn planned_end(&self, container: &str) -> Option<Instant> {
        self.shutdowns.get(container).map(Shutdown::planned_end)
    }

    /// Whether `container`'s shutdown is over (released) or gone.
    pub fn is_over(&self, container: &str) -> bool {
        self.shutdowns
            .get(container)
            .is_none_or(|s| s.released.is_some())
    }

    /// Ends `container`'s deregister phase and starts its drain; false if already started.
    pub fn start_drain(&mut self, container: &str, now: Instant) -> bool {
        let started = match self.shutdowns.get_mut(container) {
            Some(s) if s.drain_started.is_none() => {
                s.deregister_end = Some(now);
                s.drain_started = Some(now);
                true
            }
            _ => false,
        };
        // A process that did not come back to a restarted sidecar by now drains on its own
        // (docs/protocol.md §6); it is no longer waited for.
        for app in self
            .apps
            .values_mut()
            .filter(|a| a.container == container && a.placeholder && a.finished.is_none())
        {
            app.finished = Some(Finished {
                outcome: Outcome::Disconnected,
                error: None,
                at: now,
                acknowledged: false,
            });
        }
        started
    }

    /// Whether `container`'s HTTP drain call already returned (a resumed drain does not
    /// call again).
    pub fn http_done(&self, container: &str) -> bool {
        self.shutdowns
            .get(container)
            .is_some_and(|s| s.http_finished.is_some())
    }

    /// Records that `container`'s HTTP drain call returned (or failed).
    pub fn http_finished(&mut self, container: &str, now: Instant) {
        if let Some(s) = self.shutdowns.get_mut(container) {
            s.http_finished.get_or_insert(now);
        }
    }

    /// The applications `container`'s hook waits for: its own, and those that did not say
    /// which container they run in.
    fn apps_of<'a>(&'a self, container: &'a str) -> impl Iterator<Item = &'a App> + 'a {
        self.apps
            .values()
            .filter(move |a| a.container == container || a.container.is_empty())
    }

    /// At `container`'s deadline: each of its applications still running has timed out.
    pub fn expire(&mut self, container: &str, now: Instant) {
        for app in self
            .apps
            .values_mut()
            .filter(|a| a.container == container || a.container.is_empty())
            .filter(|a| a.finished.is_none())
        {
            app.finished = Some(Finished {
                outcome: Outcome::Timeout,
                error: None,
                at: now,
                acknowledged: false,
            });
        }
    }

    /// Whether every application of `container` finished.
    pub fn all_finished(&self, container: &str) -> bool {
        self.apps_of(container).all(|a| a.finished.is_some())
    }

    /// The outcome with which `container`'s preStop hook may return now, or None to keep
    /// waiting. `at_deadline` forces an answer.
    pub fn release(&self, container: &str, at_deadline: bool) -> Option<Outcome> {
        let s = self.shutdowns.get(container)?;
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

    /// Records that `container`'s hook was released at `now`.
    pub fn mark_released(&mut self, container: &str, now: Instant) {
        let ports = self.settings.ports_of(container);
        if let Some(s) = self.shutdowns.get_mut(container) {
            s.released = Some(s.released.map_or(now, |last| last.max(now)));
            if self.kernel.available && s.kernel.at_release.is_none() {
                s.kernel.at_release = Some(established_on(&self.kernel.established, &ports));
            }
        }
        self.let_go_unless_listening(container, now);
    }

    /// Marks that `container` stopped taking connections now, unless one of its listeners
    /// is in view: then the kernel view says when they close.
    fn let_go_unless_listening(&mut self, container: &str, now: Instant) {
        let counters = self.kernel.last;
        if let Some(s) = self.shutdowns.get_mut(container)
            && !s.kernel.was_listening
            && s.kernel.let_go.is_none()
        {
            s.kernel.let_go = Some((now, counters));
        }
    }

    /// Whether the kernel view decides `container`'s deregister phase: it declares ports
    /// and the view works.
    fn kernel_sees(&self, container: &str) -> bool {
        self.kernel.available && !self.settings.ports_of(container).is_empty()
    }

    /// Says whether the kernel view works in this pod (checked when the sidecar starts).
    pub fn set_kernel_available(&mut self, available: bool) {
        self.kernel.available = available;
        // A restored shutdown of a container without an SDK is adaptive again.
        let containers: Vec<String> = self.shutdowns.keys().cloned().collect();
        for container in containers {
            let adaptive = self.kernel_sees(&container);
            if let Some(s) = self.shutdowns.get_mut(&container)
                && adaptive
                && s.drain_started.is_none()
            {
                s.rule = rule(&self.settings, true);
            }
        }
    }

    /// Whether the kernel view should be sampled: some container's shutdown is in
    /// progress, or has not yet let go of its connections.
    pub fn kernel_wanted(&self) -> bool {
        self.kernel.available
            && self.shutdowns.values().any(|s| {
                s.released.is_none()
                    || s.kernel
                        .let_go
                        .is_none_or(|(_, counters)| counters.is_none())
            })
    }

    /// Whether the next sample must read the socket table whatever the counters say: a
    /// container whose drain started is waited for to close its listeners, or has not
    /// had its connections at drain counted yet.
    pub fn kernel_needs_table(&self) -> bool {
        self.shutdowns.iter().any(|(container, s)| {
            s.drain_started.is_some()
                && !self.settings.ports_of(container).is_empty()
                && (s.kernel.let_go.is_none() || s.kernel.at_drain.is_none())
        })
    }

    /// Takes one sample of the kernel view at `now`: new connections keep the deregister
    /// phases open (like an SDK's `activity`), listeners that close mark when their
    /// container let go. Returns whether anything a waiter cares about changed.
    pub fn kernel_sample(
        &mut self,
        observation: &Observation,
        counters: Option<TcpCounters>,
        now: Instant,
    ) -> bool {
        self.kernel.before_last = self.kernel.last.or(counters);
        self.kernel.last = counters;
        // A container that let go before any sample (a hook released at once: a 0 s phase)
        // counts its refusals from the first counters read after it; a little late, so the
        // figure can only be low, never high.
        if let Some(c) = counters {
            for s in self.shutdowns.values_mut() {
                if let Some((_, from @ None)) = &mut s.kernel.let_go {
                    *from = Some(c);
                }
            }
        }
        let mut changed = false;
        for (container, traffic) in &observation.containers {
            if observation.table {
                for port in self.settings.ports_of(container) {
                    let n = traffic.established.get(&port).copied().unwrap_or(0);
                    self.kernel.established.insert(port, n);
                }
            }
            let established =
                established_on(&self.kernel.established, &self.settings.ports_of(container));
            let before_last = self.kernel.before_last;
            let Some(s) = self.shutdowns.get_mut(container) else {
                continue;
            };
            if traffic.new_connections > 0 && s.drain_started.is_none() {
                s.accepts.record(now);
                changed = true;
            }
            if !observation.table {
                continue;
            }
            if s.drain_started.is_some() && s.kernel.at_drain.is_none() {
                s.kernel.at_drain = Some(established.clone());
            }
            if s.kernel.let_go.is_some() {
                continue;
            }
            if traffic.listening {
                s.kernel.was_listening = true;
                if s.released.is_some() {
                    s.kernel.at_release = Some(established);
                }
            } else if s.kernel.was_listening {
                s.kernel.let_go = Some((now, before_last));
                changed = true;
            }
        }
        // A listener never seen closing (the container restarted between two samples, or
        // a restored shutdown): once the kubelet's SIGKILL is surely past, the window
        // starts here and the sampling stops.
        let reserve = self.settings.exit_reserve;
        for s in self.shutdowns.values_mut() {
            if s.kernel.let_go.is_none() && s.released.is_some() && now >= s.deadline + reserve {
                s.kernel.let_go = Some((now, self.kernel.before_last));
                changed = true;
            }
        }
        changed
    }

    /// The kernel view could not be read: traffic is unknown, so every phase it decides
    /// is held open as if traffic arrived (to its planned end at most).
    pub fn kernel_blind(&mut self, now: Instant) {
        let containers: Vec<String> = self.shutdowns.keys().cloned().collect();
        for container in containers {
            let sees = self.kernel_sees(&container);
            if let Some(s) = self.shutdowns.get_mut(&container)
                && sees
                && s.drain_started.is_none()
            {
                s.accepts.record(now);
            }
        }
    }

    /// The termination report as it stands: the pod's own shutdown (every container
    /// shutdown not followed by a restart), and the restart records.
    #[cfg(test)]
    pub fn report(&self) -> TerminationReport {
        self.report_with(None, Instant::now())
    }

    /// [`State::report`] with the TCP counters read at `now`, from which `refused` is
    /// measured.
    pub fn report_with(
        &self,
        counters_now: Option<TcpCounters>,
        now: Instant,
    ) -> TerminationReport {
        let grace_seconds = self.settings.grace.as_secs();
        let restarts: Vec<RestartReport> = self.restarts.iter().cloned().collect();
        let shutdowns: Vec<&Shutdown> = self.shutdowns.values().collect();
        if shutdowns.is_empty() {
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
                restarts,
                restarts_omitted: self.restarts_omitted,
                refused: None,
                connections: Vec::new(),
            };
        }
        let apps: Vec<&App> = self.apps.values().collect();
        let summary = summarize(&shutdowns, &apps);
        let http_pending = self.settings.drain_mode == DrainMode::Http
            && shutdowns.iter().any(|s| s.http_finished.is_none());
        let mut outcome = if apps.is_empty() {
            Outcome::NoApp
        } else {
            apps.iter().fold(Outcome::Acked, |worst, a| {
                worst.worst(self.report_outcome(a))
            })
        };
        if http_pending {
            outcome = outcome.worst(Outcome::Timeout);
        }
        TerminationReport {
            v: REPORT_VERSION,
            t0: Some(rfc3339(summary.t0_wall)),
            grace_seconds,
            outcome,
            phases_ms: summary.phases_ms,
            last_accept_ms: summary.last_accept_ms,
            released_ms: summary.released_ms,
            apps: apps
                .iter()
                .map(|a| AppReport {
                    container: a.container.clone(),
                    pid: Some(a.pid),
                    outcome: self.report_outcome(a),
                    error: a.finished.as_ref().and_then(|f| f.error.clone()),
                })
                .collect(),
            apps_omitted: 0,
            restarts,
            restarts_omitted: self.restarts_omitted,
            refused: self.refused(&shutdowns, counters_now, now),
            connections: self.connections(),
        }
    }

    /// Resets the pod sent after its first container let go, until `now`, less those its
    /// applications caused by aborting their own connections, and less every firing of
    /// the kubelet's probes that may have met a closed port in the window
    /// (docs/protocol.md §7).
    fn refused(
        &self,
        shutdowns: &[&Shutdown],
        counters_now: Option<TcpCounters>,
        now: Instant,
    ) -> Option<u64> {
        let counters_now = counters_now?;
        let (at, from) = shutdowns
            .iter()
            .filter_map(|s| match s.kernel.let_go {
                Some((at, Some(counters))) => Some((at, counters)),
                // Released, its listener's close not sampled yet: the app exits right after
                // its hook and the sidecar is stopped right after the app, often within one
                // sampling interval. The window starts at the last sample, when it still
                // listened.
                None => s.released.zip(self.kernel.last),
                Some((_, None)) => None,
            })
            .min_by_key(|(at, _)| *at)?;
        let window = now.saturating_duration_since(at).as_millis() as u64;
        // A window may hold up to window/period + 1 of a probe's firings, one in a window
        // shorter than a period: all of them are taken off, so that probes alone never
        // make a refusal. A refusal raises the workload's deregister delay and warns; one
        // probe counted per shutdown did that on every rollout. The price: in a short
        // window, the first refused client per probe of the port is not counted.
        let probes: u64 = self
            .settings
            .probes
            .iter()
            .map(|p| window / p.period_millis.max(1) + 1)
            .sum();
        Some(counters_now.resets_since(&from).saturating_sub(probes))
    }

    /// Per declared port of each container that shut down, its connections at drain and
    /// at release.
    fn connections(&self) -> Vec<PortConnections> {
        let mut out = Vec::new();
        for (container, s) in &self.shutdowns {
            if s.kernel.at_drain.is_none() && s.kernel.at_release.is_none() {
                continue;
            }
            for port in self.settings.ports_of(container) {
                let on = |map: &Option<BTreeMap<u16, u32>>| {
                    map.as_ref()
                        .and_then(|m| m.get(&port).copied())
                        .unwrap_or(0)
                };
                out.push(PortConnections {
                    container: Some(container.clone()),
                    port,
                    at_drain: on(&s.kernel.at_drain),
                    at_release: on(&s.kernel.at_release),
                });
            }
        }
        out
    }

    /// An application's outcome in the report: still running means it timed out when its
    /// container was being stopped, and was never asked to stop otherwise.
    fn report_outcome(&self, app: &App) -> Outcome {
        match (&app.finished, self.shutdown_of(app)) {
            (Some(f), _) => f.outcome,
            (None, Some(_)) => Outcome::Timeout,
            (None, None) => Outcome::NoPrestop,
        }
    }

    /// What a restarted sidecar needs to resume.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            shutdowns: self
                .shutdowns
                .iter()
                .map(|(container, s)| PersistedShutdown {
                    container: container.clone(),
                    t0: s.unix_ms(s.t0),
                    deadline: s.unix_ms(s.deadline),
                    drain_by: s.unix_ms(s.drain_by),
                    adaptive: matches!(s.rule, Rule::Adaptive { .. }),
                    deregister_end: s.deregister_end.map(|at| s.unix_ms(at)),
                    drain_started: s.drain_started.map(|at| s.unix_ms(at)),
                    http_finished: s.http_finished.map(|at| s.unix_ms(at)),
                    released: s.released.map(|at| s.unix_ms(at)),
                })
                .collect(),
            restarts: self.restarts.iter().cloned().collect(),
            restarts_omitted: self.restarts_omitted,
            apps: self
                .apps
                .values()
                .filter(|a| a.finished.is_none() && (a.connected || a.placeholder))
                .filter(|a| !self.is_over(&a.container))
                .map(|a| PersistedApp {
                    container: a.container.clone(),
                    pid: a.pid,
                })
                .collect(),
        }
    }

    /// A sidecar resuming what an earlier run of its container persisted. The processes
    /// that were connected are waited for (at most until the deregister phase's planned
    /// end) and traffic is observed for one more quiet period after the restart; no hook
    /// waits until one reconnects.
    pub fn restore(
        settings: Settings,
        persisted: Persisted,
        now: Instant,
        now_wall: SystemTime,
    ) -> Self {
        let mut state = State::new(settings);
        let now_ms = millis(now_wall.duration_since(UNIX_EPOCH).unwrap_or_default());
        let at = |unix_ms: u64| -> Instant {
            if unix_ms <= now_ms {
                now.checked_sub(Duration::from_millis(now_ms - unix_ms))
                    .unwrap_or(now)
            } else {
                now + Duration::from_millis(unix_ms - now_ms)
            }
        };
        for p in persisted.shutdowns {
            let t0 = at(p.t0);
            state.next_shutdown += 1;
            let shutdown = Shutdown {
                id: state.next_shutdown,
                t0,
                t0_wall: UNIX_EPOCH + Duration::from_millis(p.t0),
                deadline: at(p.deadline),
                drain_by: at(p.drain_by),
                rule: rule(&state.settings, p.adaptive),
                accepts: Accepts::default(),
                deregister_end: p.deregister_end.map(at),
                drain_started: p.drain_started.map(at),
                http_finished: p.http_finished.map(at),
                released: p.released.map(at),
                hooks: 0,
                resumed_at: Some(now),
                kernel: KernelRecord::default(),
            };
            state.shutdowns.insert(p.container, shutdown);
        }
        for app in persisted.apps {
            state.next_id += 1;
            let draining = state
                .shutdowns
                .get(&app.container)
                .is_some_and(|s| s.drain_started.is_some());
            state.apps.insert(
                state.next_id,
                App {
                    container: app.container,
                    pid: app.pid,
                    connected: false,
                    placeholder: true,
                    last_total: None,
                    drained_at: None,
                    // After `drain` an SDK does not reconnect: it finishes on its own.
                    finished: draining.then_some(Finished {
                        outcome: Outcome::Disconnected,
                        error: None,
                        at: now,
                        acknowledged: false,
                    }),
                },
            );
        }
        state.restarts = persisted.restarts.into();
        state.restarts_omitted = persisted.restarts_omitted;
        state
    }
}

/// Established connections on `ports`, from the view's per-port counts.
fn established_on(established: &BTreeMap<u16, u32>, ports: &[u16]) -> BTreeMap<u16, u32> {
    ports
        .iter()
        .map(|p| (*p, established.get(p).copied().unwrap_or(0)))
        .collect()
}

/// The deregister rule for a container whose traffic is seen (an application connected,
/// or the kernel view of its ports) or not.
fn rule(s: &Settings, connected: bool) -> Rule {
    match s.drain_mode {
        DrainMode::Auto if connected => Rule::Adaptive {
            min_delay: s.min_delay,
            quiet_period: s.quiet_period,
            max_delay: s.max_delay,
        },
        _ => Rule::Fixed(s.delay),
    }
}

/// The worst outcome of the applications of a finished shutdown; one still running when
/// its container's shutdown ended had timed out.
fn worst_of(apps: &[&App]) -> Outcome {
    apps.iter().fold(Outcome::Acked, |worst, a| {
        worst.worst(a.finished.as_ref().map_or(Outcome::Timeout, |f| f.outcome))
    })
}

/// Timings of one or more container shutdowns, relative to the first T0.
struct Summary {
    t0_wall: SystemTime,
    phases_ms: PhasesMs,
    last_accept_ms: Option<u64>,
    released_ms: Option<u64>,
}

/// Phases over `shutdowns` (non-empty) and the applications `apps` that took part:
/// deregister ends with the last container's, drain runs from the first `drain` to the last
/// `drained` (or HTTP answer), cleanup from there to the last `done`.
fn summarize(shutdowns: &[&Shutdown], apps: &[&App]) -> Summary {
    let first = shutdowns
        .iter()
        .min_by_key(|s| s.t0)
        .expect("summarize needs a shutdown");
    let t0 = first.t0;
    let since_t0 = |at: Instant| millis(at.saturating_duration_since(t0));
    let acked: Vec<&&App> = apps
        .iter()
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
    let http_finished = shutdowns.iter().filter_map(|s| s.http_finished).max();
    let drain_end = match (last_drained, http_finished) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let drain_started = shutdowns.iter().filter_map(|s| s.drain_started).min();
    Summary {
        t0_wall: first.t0_wall,
        phases_ms: PhasesMs {
            deregister: shutdowns
                .iter()
                .filter_map(|s| s.deregister_end)
                .max()
                .map(since_t0),
            drain: drain_started
                .zip(drain_end)
                .map(|(start, end)| millis(end.saturating_duration_since(start))),
            cleanup: last_drained
                .zip(last_done)
                .map(|(start, end)| millis(end.saturating_duration_since(start))),
        },
        last_accept_ms: shutdowns
            .iter()
            .filter_map(|s| s.accepts.last())
            .max()
            .map(since_t0),
        released_ms: shutdowns
            .iter()
            .filter_map(|s| s.released)
            .max()
            .map(since_t0),
    }
}

fn rfc3339(wall: SystemTime) -> String {
    humantime::format_rfc3339_millis(wall).to_string()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
