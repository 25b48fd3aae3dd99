//! Turning a terminated pod into one observation: pure code over the Pod object.
//!
//! T0 comes from the sidecar's termination report (the moment the first preStop hook
//! reached it), or else from the deletion: `deletionTimestamp − deletionGracePeriodSeconds`.
//! The sequence (T0 → the last preStop hook released) and the phase timings come from the
//! report, in milliseconds; the exit from the app containers' `finishedAt` (second
//! precision); total = last app container exit − T0. An app container that exited 137 at
//! or after the deadline, for another reason than `OOMKilled`, was SIGKILLed: its true
//! duration is only known to be at least the grace period (a censored sample), as a
//! timeout's sequence is only known to be longer than the sidecar's deadline. Both are
//! the application's only when the pod had its own grace period: a deletion with a
//! shorter one (an eviction, `kubectl delete --grace-period`) cut the shutdown short.
//!
//! Every observation carries its [`Cause`]: the reason of the `DisruptionTarget` condition
//! the control plane sets before an eviction, a preemption, a taint-manager deletion, a
//! kubelet termination or a garbage collection, else whether the deletion shortened the
//! grace period.
//!
//! The report's `refused` (version 3) counts the connections the pod refused after its
//! listeners closed: clients still sent to it after it let go. It is kept with the
//! observation; like a kill, it teaches the recommender only when the pod had its own
//! grace period and the shutdown was not cut short.
//!
//! The report's `restarts` are shutdowns of single containers that were restarted (a
//! failed liveness or startup probe), not of the pod: they are counted apart and never
//! mixed into the pod's own shutdown.

use k8s_openapi::api::core::v1::{Container, ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use lameduck_proto::DRAIN_DEFAULTS;
use lameduck_proto::drain::millis;
use lameduck_proto::names::{self, SIDECAR_CONTAINER_NAME};
use lameduck_proto::{Outcome, TerminationReport};

use crate::recommend::{PhaseDurations, Sample};

/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Exit code of a process killed by SIGKILL (128 + 9).
const SIGKILL_EXIT_CODE: i32 = 137;
/// `finishedAt` is truncated to the second: a kill at the deadline may read up to 1 s early.
const FINISHED_AT_PRECISION_MS: i64 = 1000;

/// Why a pod was shut down, as the API tells it: the `DisruptionTarget` condition the
/// control plane sets before a disruption, else the deletion's grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// Deleted with its own grace period: a rollout, a scale-down, a `kubectl delete`.
    Deletion,
    /// Deleted with a shorter grace period than its own (`kubectl delete --grace-period`),
    /// no disruption condition.
    ShortenedDeletion,
    /// Evicted through the Eviction API (`kubectl drain`, the Cluster Autoscaler, …).
    Eviction,
    /// Preempted by the scheduler for a pod of higher priority.
    Preemption,
    /// Deleted by the taint manager (a `NoExecute` taint the pod does not tolerate).
    Taint,
    /// Terminated by the kubelet (node shutdown, node-pressure eviction).
    Kubelet,
    /// Deleted by the pod garbage collector (its node is gone).
    GarbageCollection,
    /// A `DisruptionTarget` condition with a reason this version does not know.
    Other,
}

impl Cause {
    /// Every cause, in the order the status lists them.
    pub const ALL: [Cause; 8] = [
        Cause::Deletion,
        Cause::ShortenedDeletion,
        Cause::Eviction,
        Cause::Preemption,
        Cause::Taint,
        Cause::Kubelet,
        Cause::GarbageCollection,
        Cause::Other,
    ];

    /// The name in the status (`status.causes`) and in the `cause` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Deletion => "deletion",
            Cause::ShortenedDeletion => "shortenedDeletion",
            Cause::Eviction => "eviction",
            Cause::Preemption => "preemption",
            Cause::Taint => "taint",
            Cause::Kubelet => "kubelet",
            Cause::GarbageCollection => "podGC",
            Cause::Other => "other",
        }
    }

    /// A disruption: anything but a deletion with the pod's own grace period.
    pub fn is_disruption(self) -> bool {
        self != Cause::Deletion
    }

    /// The cause of a terminating pod's shutdown: the reason of a true `DisruptionTarget`
    /// condition wins; without one, a deletion with a shorter grace period than the pod's
    /// own is told apart from a plain deletion.
    pub fn of(pod: &Pod, grace_seconds: i64, pod_grace_seconds: i64) -> Cause {
        let disruption = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default()
            .iter()
            .find(|c| c.type_ == DISRUPTION_TARGET && c.status == "True");
        match disruption.map(|c| c.reason.as_deref().unwrap_or_default()) {
            Some("EvictionByEvictionAPI") => Cause::Eviction,
            // The reason was renamed in Kubernetes 1.27.
            Some("PreemptionByScheduler" | "PreemptionByKubeScheduler") => Cause::Preemption,
            Some("DeletionByTaintManager") => Cause::Taint,
            Some("TerminationByKubelet") => Cause::Kubelet,
            Some("DeletionByPodGC") => Cause::GarbageCollection,
            Some(_) => Cause::Other,
            None if grace_seconds < pod_grace_seconds => Cause::ShortenedDeletion,
            None => Cause::Deletion,
        }
    }
}

/// The pod condition the control plane sets before it disrupts a pod.
const DISRUPTION_TARGET: &str = "DisruptionTarget";

/// Where T0 came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum T0Source {
    /// The sidecar's termination report (`t0`).
    Report,
    /// `deletionTimestamp − deletionGracePeriodSeconds`.
    Deletion,
}

/// One observed pod shutdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// When the shutdown began, Unix milliseconds.
    pub t0_unix_ms: i64,
    /// Where [`Observation::t0_unix_ms`] came from.
    pub t0_source: T0Source,
    /// The grace period the kubelet enforced (the deletion's, else the pod's).
    pub grace_seconds: u32,
    /// The pod's own grace period (`spec.terminationGracePeriodSeconds`).
    pub pod_grace_seconds: u32,
    /// Why the pod was shut down.
    pub cause: Cause,
    /// When the pod was created (`creationTimestamp`, second precision), Unix ms.
    pub pod_created_unix_ms: Option<i64>,
    /// When the kubelet would SIGKILL, Unix milliseconds.
    pub deadline_unix_ms: i64,
    /// When the last app container exited (`finishedAt`, second precision), Unix ms.
    pub finished_unix_ms: i64,
    /// T0 → last app container exit, in milliseconds.
    pub duration_ms: u64,
    /// App containers SIGKILLed at the deadline.
    pub killed_containers: Vec<String>,
    /// App containers killed by the OOM killer (not a grace-period kill).
    pub oom_killed_containers: Vec<String>,
    /// The report's overall outcome, when there was a readable report.
    pub outcome: Option<Outcome>,
    /// T0 → the release of the last preStop hook (`released_ms`), when the report has it.
    pub sequence_ms: Option<u64>,
    /// Phase durations from the report (empty without one).
    pub phases: PhaseDurations,
    /// T0 → the last connection an application accepted, from the report.
    pub deregister_lag_ms: Option<u64>,
    /// Container-level shutdowns of the pod's life followed by a restart of the container,
    /// from the report: `(container, outcome)`, oldest first.
    pub container_restarts: Vec<(String, Outcome)>,
    /// Container restarts the report left out to fit its byte budget.
    pub container_restarts_omitted: u64,
    /// Connections refused after the listeners closed, when the report measured them.
    pub refused: Option<u64>,
    /// Connections still open when the hooks were released (the report's `connections`).
    pub open_at_release: u64,
    /// Why parts of the observation are missing (no report, unreadable report, …).
    pub warnings: Vec<String>,
}

impl Observation {
    /// Whether the pod was SIGKILLed at its deadline.
    pub fn killed(&self) -> bool {
        !self.killed_containers.is_empty()
    }

    /// Whether the application did not acknowledge before the sidecar's deadline.
    pub fn timed_out(&self) -> bool {
        self.outcome == Some(Outcome::Timeout)
    }

    /// Whether the kubelet enforced the pod's own grace period (or a longer one). A shorter
    /// one (an eviction or a delete with `--grace-period`) is a disruption, not the pod's
    /// shutdown as the workload defines it.
    pub fn own_grace_period(&self) -> bool {
        self.grace_seconds >= self.pod_grace_seconds
    }

    /// A kill or a timeout that a shorter grace period than the pod's own caused: the
    /// disruption's, not the application's.
    pub fn cut_short(&self) -> bool {
        !self.own_grace_period() && (self.killed() || self.timed_out())
    }

    /// A kill the application is responsible for: SIGKILLed at its own grace period.
    pub fn app_killed(&self) -> bool {
        self.killed() && self.own_grace_period()
    }

    /// A timeout the application is responsible for: within its own grace period.
    pub fn app_timed_out(&self) -> bool {
        self.timed_out() && self.own_grace_period()
    }

    /// Container-level shutdowns in the report (restarts, the omitted ones included).
    pub fn container_restart_shutdowns(&self) -> u64 {
        self.container_restarts.len() as u64 + self.container_restarts_omitted
    }

    /// The recommender's view of this observation; `None` for a shutdown that a shorter
    /// grace period than the pod's own cut short (killed or timed out): it tells nothing
    /// of what the application needs.
    pub fn sample(&self) -> Option<Sample> {
        if self.cut_short() {
            return None;
        }
        Some(Sample {
            at_unix_ms: self.t0_unix_ms,
            duration_ms: self.duration_ms,
            sequence_ms: self.sequence_ms,
            grace_seconds: self.grace_seconds,
            killed: self.killed(),
            timed_out: self.timed_out(),
            deregister_lag_ms: self.deregister_lag_ms,
            phases: self.phases,
            refused: self.refused,
            open_at_release: self.open_at_release,
        })
    }
}

/// Observes a terminating pod once all its containers, the sidecar included, have
/// terminated; `None` while it is still shutting down, or if it is not shutting down.
pub fn observe(pod: &Pod) -> Option<Observation> {
    observe_pod(pod, false)
}

/// Observes a pod that was deleted from the API: the app containers must have terminated,
/// but a sidecar that had not yet exited (no report) is tolerated with a warning.
pub fn observe_deleted(pod: &Pod) -> Option<Observation> {
    observe_pod(pod, true)
}

/// Whether the pod is terminating (has a deletion timestamp).
pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn observe_pod(pod: &Pod, deleted: bool) -> Option<Observation> {
    let deletion = pod.metadata.deletion_timestamp.as_ref()?;
    let status = pod.status.as_ref()?;
    let spec = pod.spec.as_ref()?;
    let mut warnings = Vec::new();

    // Every regular container must have terminated; a missing status means not yet seen.
    let app_statuses = status.container_statuses.as_deref().unwrap_or_default();
    let mut terminated: Vec<(&ContainerStatus, &ContainerStateTerminated)> = Vec::new();
    for container in &spec.containers {
        let state = app_statuses
            .iter()
            .find(|s| s.name == container.name)
            .and_then(|s| Some((s, s.state.as_ref()?.terminated.as_ref()?)))?;
        terminated.push(state);
    }
    let finished_unix_ms = terminated
        .iter()
        .filter_map(|(_, t)| t.finished_at.as_ref().map(|time| time.0.as_millisecond()))
        .max()?;

    let sidecar = spec
        .init_containers
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| c.name == SIDECAR_CONTAINER_NAME);
    let has_sidecar = sidecar.is_some();
    let sidecar_terminated = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|s| s.name == SIDECAR_CONTAINER_NAME)
        .and_then(|s| s.state.as_ref()?.terminated.as_ref());
    let report = match sidecar_terminated {
        Some(state) => match state
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
        {
            Some(message) => match TerminationReport::parse(message) {
                Ok(report) => Some(report),
                Err(error) => {
                    warnings.push(format!(
                        "unreadable termination report from the sidecar: {error}"
                    ));
                    None
                }
            },
            None => {
                warnings.push("the sidecar exited without a termination report".to_string());
                None
            }
        },
        None if has_sidecar && !deleted => return None,
        None if has_sidecar => {
            warnings.push(
                "no termination report: the pod disappeared before the sidecar exited".to_string(),
            );
            None
        }
        None => {
            warnings.push("the pod has no lameduck sidecar".to_string());
            None
        }
    };

    // The kubelet's final delete rewrites deletionGracePeriodSeconds to 0 (and moves the
    // timestamp): such metadata says nothing about the real deadline.
    let deletion_ms = deletion.0.as_millisecond();
    let deletion_grace = pod
        .metadata
        .deletion_grace_period_seconds
        .filter(|&g| g > 0);
    let spec_grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS)
        .max(0);
    let report_t0 = report.as_ref().and_then(|r| {
        let text = r.t0.as_deref()?;
        match text.parse::<Timestamp>() {
            Ok(t0) => Some(t0.as_millisecond()),
            Err(error) => {
                warnings.push(format!(
                    "termination report has an unreadable t0 {text:?}: {error}"
                ));
                None
            }
        }
    });
    let (t0_unix_ms, t0_source, grace_seconds, deadline_unix_ms) = match (deletion_grace, report_t0)
    {
        (Some(grace), t0) => {
            let deleted_at = deletion_ms - grace * 1000;
            match t0 {
                Some(t0) => (t0, T0Source::Report, grace, deletion_ms),
                None => (deleted_at, T0Source::Deletion, grace, deletion_ms),
            }
        }
        (None, Some(t0)) => {
            let grace = report.as_ref().map_or(spec_grace, |r| {
                i64::try_from(r.grace_seconds).unwrap_or(spec_grace)
            });
            (t0, T0Source::Report, grace, t0 + grace * 1000)
        }
        (None, None) => return None,
    };

    let mut killed_containers = Vec::new();
    let mut oom_killed_containers = Vec::new();
    for (container, state) in &terminated {
        let finished = state
            .finished_at
            .as_ref()
            .map_or(i64::MIN, |t| t.0.as_millisecond());
        if state.reason.as_deref() == Some("OOMKilled") {
            oom_killed_containers.push(container.name.clone());
        } else if state.exit_code == SIGKILL_EXIT_CODE
            && finished + FINISHED_AT_PRECISION_MS > deadline_unix_ms
        {
            killed_containers.push(container.name.clone());
        }
    }

    let mut phases = PhaseDurations::default();
    let mut deregister_lag_ms = None;
    let mut outcome = None;
    let mut sequence_ms = None;
    let mut container_restarts = Vec::new();
    let mut container_restarts_omitted = 0;
    let mut refused = None;
    let mut open_at_release = 0;
    if let Some(report) = &report {
        refused = report.refused;
        open_at_release = report
            .connections
            .iter()
            .map(|c| u64::from(c.at_release))
            .sum();
        phases.deregister = report.phases_ms.deregister;
        phases.drain = report.phases_ms.drain;
        phases.cleanup = report.phases_ms.cleanup;
        // The release is relative to the report's own T0: the exit only means something
        // when T0 is that one.
        sequence_ms = report.released_ms.filter(|_| t0_source == T0Source::Report);
        phases.exit = sequence_ms
            .and_then(|released| i64::try_from(released).ok())
            .map(|released| u64::try_from(finished_unix_ms - (t0_unix_ms + released)).unwrap_or(0));
        deregister_lag_ms = measured_lag(
            report.last_accept_ms,
            report.phases_ms.deregister,
            quiet_period_ms(sidecar),
        );
        outcome = Some(report.outcome);
        container_restarts = report
            .restarts
            .iter()
            .map(|restart| (restart.container.clone(), restart.outcome))
            .collect();
        container_restarts_omitted = report.restarts_omitted as u64;
    }

    Some(Observation {
        t0_unix_ms,
        t0_source,
        grace_seconds: u32::try_from(grace_seconds).unwrap_or(u32::MAX),
        pod_grace_seconds: u32::try_from(spec_grace).unwrap_or(u32::MAX),
        cause: Cause::of(pod, grace_seconds, spec_grace),
        pod_created_unix_ms: pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond()),
        deadline_unix_ms,
        finished_unix_ms,
        duration_ms: u64::try_from(finished_unix_ms - t0_unix_ms).unwrap_or(0),
        killed_containers,
        oom_killed_containers,
        outcome,
        sequence_ms,
        phases,
        deregister_lag_ms,
        container_restarts,
        container_restarts_omitted,
        refused,
        open_at_release,
        warnings,
    })
}

/// The deregister lag a report measured, if it measured one: the phase ended on a silence
/// of at least the sidecar's quiet period after the last arrival. A phase cut while
/// arrivals went on (at its minimum, its planned end or the latest drain start) only says
/// that the lag was longer than the phase. Taken as the lag, with the margin on top, it
/// would raise the next pods' minimum by the margin on every rollout up to maxDelay:
/// requests on kept-alive connections go on arriving until the pod closes them, whatever
/// the endpoints say, so the phase's own length came back as the lag.
fn measured_lag(
    last_accept_ms: Option<u64>,
    deregister_ms: Option<u64>,
    quiet_ms: u64,
) -> Option<u64> {
    match (last_accept_ms, deregister_ms) {
        (Some(lag), Some(phase)) if phase.saturating_sub(lag) < quiet_ms => None,
        (lag, _) => lag,
    }
}

/// The quiet period the pod's sidecar ran with (`LAMEDUCK_QUIET_PERIOD_MILLIS`), else the
/// default.
fn quiet_period_ms(sidecar: Option<&Container>) -> u64 {
    sidecar
        .and_then(|c| c.env.as_deref())
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == names::ENV_QUIET_PERIOD_MILLIS)
        .and_then(|e| e.value.as_deref()?.trim().parse().ok())
        .unwrap_or(millis(DRAIN_DEFAULTS.quiet_period))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_cut_while_traffic_arrived_measures_no_lag() {
        // Ended on 1 s of silence after the last arrival: the lag.
        assert_eq!(measured_lag(Some(1640), Some(2641), 1000), Some(1640));
        // Cut at 5 s with an arrival 20 ms before: only "longer than 5 s".
        assert_eq!(measured_lag(Some(4980), Some(5000), 1000), None);
        // No arrival after T0, or a report without the phase: as reported.
        assert_eq!(measured_lag(None, Some(5000), 1000), None);
        assert_eq!(measured_lag(Some(800), None, 1000), Some(800));
        // The fixture's sidecar ran with the default quiet period.
        let acked = fixture("acked");
        let sidecar = acked
            .spec
            .as_ref()
            .and_then(|spec| spec.init_containers.as_deref())
            .unwrap_or_default()
            .iter()
            .find(|c| c.name == SIDECAR_CONTAINER_NAME);
        assert!(sidecar.is_some());
        assert_eq!(quiet_period_ms(sidecar), 1000);
        assert_eq!(quiet_period_ms(None), 1000);
        let tuned = Container {
            env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: names::ENV_QUIET_PERIOD_MILLIS.into(),
                value: Some("2500".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(quiet_period_ms(Some(&tuned)), 2500);
    }

    fn fixture(name: &str) -> Pod {
        let path = format!(
            "{}/tests/fixtures/pods/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn acked_shutdown_has_phases_from_the_report() {
        let observation = observe(&fixture("acked")).unwrap();
        assert_eq!(observation.t0_source, T0Source::Report);
        assert_eq!(observation.outcome, Some(Outcome::Acked));
        assert!(!observation.killed() && !observation.timed_out());
        assert_eq!(observation.grace_seconds, 30);
        assert!(observation.phases.deregister.is_some() && observation.phases.cleanup.is_some());
        assert!(observation.deregister_lag_ms.is_some());
        assert!(
            observation.warnings.is_empty(),
            "{:?}",
            observation.warnings
        );
        assert!(
            observation.duration_ms > 0 && observation.duration_ms < 30_000,
            "{observation:?}"
        );
        assert!(observation.own_grace_period());
        let sample = observation.sample().unwrap();
        assert!(!sample.killed && !sample.timed_out);
        // The sequence in milliseconds from the report; the exit from finishedAt.
        assert_eq!(observation.sequence_ms, Some(3149));
        assert_eq!(sample.sequence_ms, Some(3149));
        assert!(observation.phases.exit.is_some());
        assert_eq!(observation.container_restart_shutdowns(), 0);
    }

    #[test]
    fn timeout_is_reported_but_not_a_kill() {
        let observation = observe(&fixture("timeout")).unwrap();
        assert!(observation.timed_out());
        assert!(!observation.killed(), "{observation:?}");
        // The sidecar gave up at G − 2 s (no cleanup phase: the app never sent `done`); the
        // app finished its cleanup and exited after that, before the deadline.
        assert_eq!(observation.grace_seconds, 30);
        assert!(observation.phases.deregister.is_some() && observation.phases.cleanup.is_none());
        assert!(
            observation.duration_ms >= 27_000 && observation.duration_ms < 30_000,
            "{observation:?}"
        );
    }

    #[test]
    fn killed_at_the_deadline_is_a_censored_sample() {
        let observation = observe(&fixture("killed")).unwrap();
        assert!(observation.killed(), "{observation:?}");
        assert_eq!(observation.killed_containers, ["web"]);
        // The sidecar released the preStop hook at its own deadline first.
        assert!(observation.timed_out());
        assert_eq!(observation.grace_seconds, 5);
        let sample = observation.sample().unwrap();
        assert!(sample.killed && sample.timed_out);
        assert_eq!(
            sample.sequence_ms,
            Some(3001),
            "the sidecar's deadline, G − 2 s"
        );
        assert!(
            sample.duration_ms >= u64::from(sample.grace_seconds) * 1000 - 1000,
            "{sample:?}"
        );
    }

    #[test]
    fn a_timeout_is_a_censored_sequence_at_the_sidecars_deadline() {
        let observation = observe(&fixture("timeout")).unwrap();
        assert!(observation.app_timed_out());
        let sample = observation.sample().unwrap();
        assert!(sample.timed_out && !sample.killed);
        // Released at G − 2 s: the sequence needed more than that.
        assert_eq!(sample.sequence_ms, Some(28_001));
        assert!(observation.pod_created_unix_ms.is_some());
    }

    #[test]
    fn a_shorter_deletion_grace_period_is_not_the_apps_kill_or_timeout() {
        // The killed pod's own grace period was 5 s; say it was 30 s and the deletion
        // (an eviction, `kubectl delete --grace-period=5`) gave it 5.
        let mut pod = fixture("killed");
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(30);
        let observation = observe(&pod).unwrap();
        assert_eq!(
            (observation.grace_seconds, observation.pod_grace_seconds),
            (5, 30)
        );
        assert!(observation.killed() && observation.timed_out());
        assert!(!observation.own_grace_period());
        assert!(!observation.app_killed() && !observation.app_timed_out());
        assert!(observation.cut_short());
        assert_eq!(observation.cause, Cause::ShortenedDeletion);
        assert_eq!(observation.sample(), None, "cut short: nothing to learn");
        // A longer deletion grace period than the pod's own still censors.
        let mut pod = fixture("killed");
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(3);
        assert!(observe(&pod).unwrap().app_killed());
    }

    fn with_disruption(mut pod: Pod, status: &str, reason: &str) -> Pod {
        let condition = serde_json::from_value(serde_json::json!({
            "type": "DisruptionTarget", "status": status, "reason": reason,
            "message": "from the test", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        pod.status
            .as_mut()
            .unwrap()
            .conditions
            .get_or_insert_with(Vec::new)
            .push(condition);
        pod
    }

    #[test]
    fn the_disruption_condition_names_the_cause() {
        assert_eq!(observe(&fixture("acked")).unwrap().cause, Cause::Deletion);
        for (reason, cause) in [
            ("EvictionByEvictionAPI", Cause::Eviction),
            ("PreemptionByScheduler", Cause::Preemption),
            ("PreemptionByKubeScheduler", Cause::Preemption),
            ("DeletionByTaintManager", Cause::Taint),
            ("TerminationByKubelet", Cause::Kubelet),
            ("DeletionByPodGC", Cause::GarbageCollection),
            ("SomethingNew", Cause::Other),
        ] {
            let observation = observe(&with_disruption(fixture("acked"), "True", reason)).unwrap();
            assert_eq!(observation.cause, cause, "{reason}");
            assert!(cause.is_disruption());
            // Its own grace period: an eviction that let the app finish is a sample.
            assert!(observation.sample().is_some(), "{reason}");
        }
        // A condition that is not true is not a disruption.
        let pod = with_disruption(fixture("acked"), "False", "EvictionByEvictionAPI");
        assert_eq!(observe(&pod).unwrap().cause, Cause::Deletion);
        // An eviction with a shorter grace period: the eviction is the cause, and the kill
        // is cut short (not the app's).
        let mut pod = with_disruption(fixture("killed"), "True", "EvictionByEvictionAPI");
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(30);
        let observation = observe(&pod).unwrap();
        assert_eq!(observation.cause, Cause::Eviction);
        assert!(observation.cut_short() && !observation.app_killed());
        // The names are distinct (status fields, metric label values).
        let names: std::collections::HashSet<_> = Cause::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), Cause::ALL.len());
    }

    #[test]
    fn container_restarts_are_counted_apart_from_the_pods_shutdown() {
        let plain = observe(&fixture("acked")).unwrap();
        let mut pod = fixture("acked");
        let sidecar = &mut pod
            .status
            .as_mut()
            .unwrap()
            .init_container_statuses
            .as_mut()
            .unwrap()[0];
        let terminated = sidecar.state.as_mut().unwrap().terminated.as_mut().unwrap();
        let mut report: serde_json::Value =
            serde_json::from_str(terminated.message.as_deref().unwrap()).unwrap();
        report["v"] = serde_json::json!(2);
        report["restarts"] = serde_json::json!([
            {"container": "web", "t0": "2026-11-26T15:50:00.000Z", "outcome": "timeout",
             "phases_ms": {"deregister": 20_000}, "released_ms": 28_000},
            {"container": "web", "t0": "2026-11-26T15:55:00.000Z", "outcome": "acked",
             "phases_ms": {"deregister": 1_000, "drain": 5, "cleanup": 10}, "released_ms": 1_015}
        ]);
        report["restarts_omitted"] = serde_json::json!(3);
        terminated.message = Some(report.to_string());
        let observation = observe(&pod).unwrap();
        assert_eq!(
            observation.container_restarts,
            [
                ("web".to_string(), Outcome::Timeout),
                ("web".to_string(), Outcome::Acked)
            ]
        );
        assert_eq!(observation.container_restart_shutdowns(), 5);
        // The pod's own shutdown is exactly what it is without them.
        assert_eq!(observation.sample(), plain.sample());
        assert_eq!(observation.outcome, Some(Outcome::Acked));
    }

    /// Rewrites the sidecar's report of a fixture pod.
    fn with_report(mut pod: Pod, edit: impl FnOnce(&mut serde_json::Value)) -> Pod {
        let sidecar = &mut pod
            .status
            .as_mut()
            .unwrap()
            .init_container_statuses
            .as_mut()
            .unwrap()[0];
        let terminated = sidecar.state.as_mut().unwrap().terminated.as_mut().unwrap();
        let mut report: serde_json::Value =
            serde_json::from_str(terminated.message.as_deref().unwrap()).unwrap();
        edit(&mut report);
        terminated.message = Some(report.to_string());
        pod
    }

    #[test]
    fn refused_connections_are_read_from_a_version_3_report() {
        assert_eq!(observe(&fixture("acked")).unwrap().refused, None);
        let pod = with_report(fixture("acked"), |report| {
            report["v"] = serde_json::json!(3);
            report["refused"] = serde_json::json!(7);
            report["connections"] =
                serde_json::json!([{"port": 8080, "at_drain": 3, "at_release": 0}]);
        });
        let observation = observe(&pod).unwrap();
        assert_eq!(observation.refused, Some(7));
        assert_eq!(observation.sample().unwrap().refused, Some(7));
        // Measured and none refused is not the same as not measured.
        let pod = with_report(fixture("acked"), |report| {
            report["v"] = serde_json::json!(3);
            report["refused"] = serde_json::json!(0);
        });
        assert_eq!(observe(&pod).unwrap().refused, Some(0));
        // Cut short by a shorter grace period: kept with the observation, not a sample.
        let mut pod = with_report(fixture("killed"), |report| {
            report["v"] = serde_json::json!(3);
            report["refused"] = serde_json::json!(4);
        });
        pod.spec.as_mut().unwrap().termination_grace_period_seconds = Some(30);
        let observation = observe(&pod).unwrap();
        assert_eq!(observation.refused, Some(4));
        assert!(observation.cut_short());
        assert_eq!(observation.sample(), None);
    }

    #[test]
    fn oom_killed_is_not_a_grace_period_kill() {
        let observation = observe(&fixture("oom-killed")).unwrap();
        assert!(!observation.killed(), "{observation:?}");
        assert_eq!(observation.oom_killed_containers, ["web"]);
        // The allocating app has no SDK: the sidecar waited its fixed delay, then released.
        assert_eq!(observation.outcome, Some(Outcome::NoApp));
        assert!(observation.duration_ms < u64::from(observation.grace_seconds) * 1000);
    }

    #[test]
    fn missing_report_falls_back_to_the_deletion_time() {
        let observation = observe(&fixture("no-report")).unwrap();
        assert_eq!(observation.t0_source, T0Source::Deletion);
        assert_eq!(observation.phases, PhaseDurations::default());
        assert_eq!(observation.outcome, None);
        assert_eq!(observation.warnings.len(), 1, "{:?}", observation.warnings);
    }

    #[test]
    fn garbage_report_gives_an_observation_without_phases() {
        let observation = observe(&fixture("garbage-report")).unwrap();
        assert_eq!(observation.t0_source, T0Source::Deletion);
        assert_eq!(observation.phases, PhaseDurations::default());
        assert!(
            observation.warnings[0].contains("unreadable termination report"),
            "{:?}",
            observation.warnings
        );
    }

    #[test]
    fn still_shutting_down_is_not_observed_yet() {
        assert_eq!(observe(&fixture("terminating")), None);
        // …but if it disappears now, what is known is kept, when the apps have exited.
        let mut pod = fixture("acked");
        let sidecar = &mut pod
            .status
            .as_mut()
            .unwrap()
            .init_container_statuses
            .as_mut()
            .unwrap()[0];
        sidecar.state = None;
        assert_eq!(observe(&pod), None);
        let observation = observe_deleted(&pod).unwrap();
        assert_eq!(observation.t0_source, T0Source::Deletion);
        assert!(observation.warnings[0].contains("disappeared"));
    }

    #[test]
    fn running_pods_are_not_observed() {
        let mut pod = fixture("acked");
        pod.metadata.deletion_timestamp = None;
        assert_eq!(observe(&pod), None);
        assert!(!is_terminating(&pod));
    }

    #[test]
    fn final_delete_metadata_is_not_trusted() {
        // The kubelet's last DELETE rewrites the grace period to 0: only the report's t0 counts.
        let mut pod = fixture("acked");
        pod.metadata.deletion_grace_period_seconds = Some(0);
        let observation = observe(&pod).unwrap();
        assert_eq!(observation.t0_source, T0Source::Report);
        assert_eq!(observation.grace_seconds, 30);
        let mut pod = fixture("no-report");
        pod.metadata.deletion_grace_period_seconds = Some(0);
        assert_eq!(observe(&pod), None);
    }
}
