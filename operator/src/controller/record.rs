//! What the leader knows about one policy between two status patches, and the status it
//! writes from it. Pure code: the status writer feeds it observations and pod counts and
//! asks for the status to patch.
//!
//! The history belongs to one workload object, not to a name: the status records the
//! workload's uid (`targetUID`), and when the reconciler reports another uid for the same
//! name (the workload was deleted and created again) the history starts over, without the
//! observations of pods older than the new workload. A record whose workload, namespace or
//! policy is being deleted is closed: it takes nothing more.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    CONDITION_DRAIN_ACTION_INVALID, CONDITION_GRACE_PERIOD_EXCEEDED, CONDITION_LOW_CONFIDENCE,
    CONDITION_PODS_NOT_INJECTED, CONDITION_RECOMMENDATION_PROVIDED, DurationQuantiles,
    PhaseQuantile, PhaseQuantiles, PodCounts, RecommendationStatus, RefusedConnections,
    ShutdownCauses, ShutdownPolicy, ShutdownPolicyStatus,
};
use crate::observe::Observation;
use crate::recommend::{History, Recommendation};

/// At most this many observations wait for their policy to appear.
const MAX_PENDING: usize = 1000;

/// An observation waiting to be folded into the history, with the pod it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingObservation {
    /// The pod's name.
    pub pod: String,
    /// What was observed.
    pub observation: Observation,
}

/// Something the status writer should announce as an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A pod was SIGKILLed at its deadline.
    Killed {
        /// The pod's name.
        pod: String,
        /// The grace period it was killed at.
        grace_seconds: u32,
    },
    /// A pod's application did not acknowledge before the sidecar's deadline.
    TimedOut {
        /// The pod's name.
        pod: String,
        /// The pod's grace period.
        grace_seconds: u32,
        /// The sidecar's deadline, milliseconds after T0 (when the report gives it).
        deadline_ms: Option<u64>,
    },
    /// A pod refused connections after its listeners closed (in a shutdown that was not
    /// cut short): the deregister delay rises.
    Refused {
        /// The pod's name.
        pod: String,
        /// Connections refused.
        refused: u64,
        /// Its deregister phase, in milliseconds (when the report gives it).
        deregister_ms: Option<u64>,
    },
    /// The policy's target is another object than the one its history described: the
    /// history starts over.
    HistoryReset {
        /// The uid the history described.
        previous_uid: String,
        /// The workload's uid now.
        uid: String,
        /// Samples forgotten.
        samples: u64,
    },
    /// `GracePeriodExceeded` turned true: the shutdowns need more than
    /// `gracePeriod.maxSeconds`, and pods will be killed before their cleanup ends.
    GracePeriodExceeded {
        /// What the shutdowns need (the uncapped recommendation).
        needed_seconds: u32,
        /// The policy's cap.
        max_seconds: u32,
    },
    /// The applied recommendation changed.
    RecommendationChanged {
        /// Before (None: the workload's own value).
        from: Option<u32>,
        /// After.
        to: Option<u32>,
    },
}

/// The workload a policy governs, as the workload reconciler last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetIdentity {
    /// The workload's uid.
    pub uid: String,
    /// Its `creationTimestamp` (second precision), Unix ms: pods created before it belong
    /// to an earlier workload of the same name.
    pub created_unix_ms: Option<i64>,
}

/// The leader's working copy of one policy's status.
#[derive(Debug, Clone, Default)]
pub struct PolicyRecord {
    loaded: bool,
    /// The uid of the policy object the status was loaded from.
    policy_uid: Option<String>,
    /// The workload the history describes (`status.targetUID`).
    history_target: Option<String>,
    /// The workload the reconciler last reported for this policy.
    target: Option<TargetIdentity>,
    /// The workload, its namespace or the policy is being deleted: nothing is recorded.
    closing: bool,
    history: History,
    killed: u64,
    timeouts: u64,
    cut_short: u64,
    causes: ShutdownCauses,
    /// `status.refused` without its percentile (the history's).
    refused: Option<RefusedConnections>,
    container_restart_shutdowns: u64,
    unobserved: u64,
    last_observation_ms: Option<i64>,
    /// `lastObservationTime` of the status when it was loaded: observations that finished
    /// by then were recorded by an earlier leader.
    recorded_until_ms: Option<i64>,
    applied: Option<u32>,
    pods: Option<PodCounts>,
    pending: Vec<PendingObservation>,
    pending_unobserved: u64,
    notices: Vec<Notice>,
    dropped: u64,
}

impl PolicyRecord {
    /// Queues an observation; it is folded in at the next status write. A closed record
    /// takes nothing.
    pub fn push(&mut self, pod: String, observation: Observation) {
        if self.closing {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        self.pending.push(PendingObservation { pod, observation });
    }

    /// Drops queued observations of pods that finished before `unix_ms`.
    pub fn prune_before(&mut self, unix_ms: i64) {
        self.pending
            .retain(|p| p.observation.finished_unix_ms >= unix_ms);
    }

    /// Forgets the queued count of unobserved pods.
    pub fn forget_unobserved(&mut self) {
        self.pending_unobserved = 0;
    }

    /// Counts a terminating pod that disappeared before it could be observed.
    pub fn push_unobserved(&mut self) {
        if !self.closing {
            self.pending_unobserved += 1;
        }
    }

    /// The workload the policy governs now (from its reconcile). A live workload reopens a
    /// closed record: it is the one whose shutdowns are recorded from now on.
    pub fn set_target(&mut self, target: TargetIdentity) {
        self.target = Some(target);
        self.closing = false;
    }

    /// The workload (`uid`, when known), its namespace or the policy is being deleted:
    /// queued observations are dropped and nothing more is taken. A deletion of another
    /// object than the current target (an earlier workload of the same name) changes
    /// nothing.
    pub fn close(&mut self, uid: Option<&str>) {
        if let (Some(uid), Some(target)) = (uid, &self.target)
            && target.uid != uid
        {
            return;
        }
        self.closing = true;
        self.pending.clear();
        self.pending_unobserved = 0;
    }

    /// Whether the record takes nothing (see [`PolicyRecord::close`]).
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Whether the record was loaded from a policy's status.
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Sets the pod counts reported by the workload reconciler.
    pub fn set_pods(&mut self, pods: PodCounts) {
        self.pods = Some(pods);
    }

    /// Whether observations wait to be written.
    pub fn has_pending(&self) -> bool {
        self.has_pending_observations() || self.pending_unobserved > 0
    }

    /// Whether observed shutdowns wait to be written (unobserved counts aside).
    pub fn has_pending_observations(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Observations dropped because their policy did not appear in time.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Takes the notices collected since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// Folds the pending observations into the history (loading it from the policy's
    /// status first) and returns the status to write and the recommendation behind it.
    pub fn status(
        &mut self,
        policy: &ShutdownPolicy,
        now: Timestamp,
    ) -> (ShutdownPolicyStatus, Recommendation) {
        let current = policy.status.clone().unwrap_or_default();
        let policy_uid = policy.metadata.uid.clone();
        if self.loaded && policy_uid != self.policy_uid {
            // Another policy object under the same name: what was loaded described the old one.
            self.reset_history();
            self.loaded = false;
        }
        if !self.loaded {
            self.load(&current);
            self.policy_uid = policy_uid;
        }
        // What the status says now, for the RecommendationChanged notice (a reset below
        // clears the applied value the recommender starts from).
        let announced = self.applied;
        if let Some(target) = self.target.clone() {
            if let Some(previous) = self
                .history_target
                .take()
                .filter(|previous| *previous != target.uid)
            {
                let samples = self.history.samples();
                self.reset_history();
                self.notices.push(Notice::HistoryReset {
                    previous_uid: previous,
                    uid: target.uid.clone(),
                    samples,
                });
            }
            self.history_target = Some(target.uid.clone());
            // Pods older than the workload were an earlier workload's of the same name.
            if let Some(created) = target.created_unix_ms {
                self.pending.retain(|p| {
                    p.observation
                        .pod_created_unix_ms
                        .is_none_or(|pod_created| pod_created >= created)
                });
            }
        }
        let settings = policy.spec.grace_period.settings();
        for PendingObservation { pod, observation } in std::mem::take(&mut self.pending) {
            if self
                .recorded_until_ms
                .is_some_and(|until| observation.finished_unix_ms <= until)
            {
                continue;
            }
            // A shutdown cut short by a shorter grace period than the pod's own says
            // nothing about what the application needs: it is not a sample.
            if let Some(sample) = observation.sample() {
                self.history.record(&sample, &settings);
                if let Some(refused) = sample.refused.filter(|n| *n > 0) {
                    self.notices.push(Notice::Refused {
                        pod: pod.clone(),
                        refused,
                        deregister_ms: sample.phases.deregister,
                    });
                }
            }
            self.last_observation_ms = self
                .last_observation_ms
                .max(Some(observation.finished_unix_ms));
            self.container_restart_shutdowns += observation.container_restart_shutdowns();
            *self.causes.count_mut(observation.cause) += 1;
            if let Some(refused) = observation.refused {
                let counts = self.refused.get_or_insert_with(RefusedConnections::default);
                counts.total = counts.total.saturating_add(refused);
                counts.measured += 1;
                counts.shutdowns += u64::from(refused > 0);
            }
            if observation.cut_short() {
                self.cut_short += 1;
            }
            if observation.app_timed_out() {
                self.timeouts += 1;
                self.notices.push(Notice::TimedOut {
                    pod: pod.clone(),
                    grace_seconds: observation.grace_seconds,
                    deadline_ms: observation.sequence_ms,
                });
            }
            if observation.app_killed() {
                self.killed += 1;
                self.notices.push(Notice::Killed {
                    pod,
                    grace_seconds: observation.grace_seconds,
                });
            }
        }
        self.unobserved += std::mem::take(&mut self.pending_unobserved);

        let now_ms = now.as_millisecond();
        let recommendation = self.history.recommend(
            &settings,
            &policy.spec.drain.deregister_settings(),
            now_ms,
            self.applied,
        );
        if recommendation.grace_period_seconds != announced {
            self.notices.push(Notice::RecommendationChanged {
                from: announced,
                to: recommendation.grace_period_seconds,
            });
        }
        self.applied = recommendation.grace_period_seconds;

        let summary = self.history.duration_summary();
        let [deregister, drain, cleanup, exit] = self.history.phase_summaries().map(|p| {
            p.map(|(p50, p99)| PhaseQuantile {
                p50: round(p50),
                p99: round(p99),
            })
        });
        let pods = self.pods.or(current.pods);
        let generation = policy.metadata.generation;
        let status = ShutdownPolicyStatus {
            conditions: conditions(
                &current.conditions,
                &recommendation,
                &settings,
                self.history.samples(),
                pods,
                policy,
                now,
                generation,
            ),
            observed_generation: generation,
            target_uid: self.history_target.clone(),
            samples: self.history.samples(),
            last_observation_time: self
                .last_observation_ms
                // metav1.Time has second precision: truncate so the status round-trips.
                .and_then(|ms| Timestamp::from_second(ms.div_euclid(1000)).ok())
                .map(Time),
            durations: summary.map(|s| DurationQuantiles {
                p50: round(s.p50),
                p90: round(s.p90),
                p99: round(s.p99),
                max: round(s.max),
            }),
            phases: summary.map(|_| PhaseQuantiles {
                sequence: self
                    .history
                    .sequence_summary()
                    .map(|(p50, p99)| PhaseQuantile {
                        p50: round(p50),
                        p99: round(p99),
                    }),
                deregister,
                drain,
                cleanup,
                exit,
            }),
            killed: self.killed,
            timeouts: self.timeouts,
            cut_short: self.cut_short,
            causes: self.causes,
            refused: self.refused.map(|counts| RefusedConnections {
                p99: self.history.refused_quantile(0.99),
                ..counts
            }),
            container_restart_shutdowns: self.container_restart_shutdowns,
            unobserved: self.unobserved,
            recommendation: Some(RecommendationStatus {
                grace_period_seconds: recommendation.grace_period_seconds,
                lower_bound: recommendation.lower_bound_seconds,
                upper_bound: recommendation.upper_bound_seconds,
                uncapped: recommendation.uncapped_seconds,
                deregister_delay_millis: recommendation.deregister_delay_ms,
                drain_budget_millis: recommendation.drain_budget_ms,
            })
            .filter(|r| *r != RecommendationStatus::default()),
            pods,
            histogram: (self.history.samples() > 0).then(|| self.history.to_state()),
        };
        let exceeded = |conditions: &[Condition]| {
            conditions
                .iter()
                .any(|c| c.type_ == CONDITION_GRACE_PERIOD_EXCEEDED && c.status == "True")
        };
        if let (true, false, Some(needed)) = (
            exceeded(&status.conditions),
            exceeded(&current.conditions),
            recommendation.uncapped_seconds,
        ) {
            self.notices.push(Notice::GracePeriodExceeded {
                needed_seconds: needed,
                max_seconds: settings.max_seconds,
            });
        }
        (status, recommendation)
    }

    /// Forgets everything observed: the history now describes another object.
    fn reset_history(&mut self) {
        self.history = History::new();
        self.killed = 0;
        self.timeouts = 0;
        self.cut_short = 0;
        self.causes = ShutdownCauses::default();
        self.refused = None;
        self.container_restart_shutdowns = 0;
        self.unobserved = 0;
        self.last_observation_ms = None;
        self.recorded_until_ms = None;
        self.applied = None;
    }

    fn load(&mut self, status: &ShutdownPolicyStatus) {
        self.loaded = true;
        self.history_target = status.target_uid.clone();
        self.history = status
            .histogram
            .as_ref()
            .map(History::from_state)
            .unwrap_or_default();
        self.killed = status.killed;
        self.timeouts = status.timeouts;
        self.cut_short = status.cut_short;
        self.causes = status.causes;
        self.refused = status.refused;
        self.container_restart_shutdowns = status.container_restart_shutdowns;
        self.unobserved = status.unobserved;
        self.last_observation_ms = status
            .last_observation_time
            .as_ref()
            .map(|t| t.0.as_millisecond());
        self.recorded_until_ms = self.last_observation_ms;
        self.applied = status.recommendation.and_then(|r| r.grace_period_seconds);
    }
}

/// Quantiles are bucket edges (5 % apart): tenths of a second are all the precision there is.
fn round(seconds: f64) -> f64 {
    (seconds * 10.0).round() / 10.0
}

#[allow(clippy::too_many_arguments)]
fn conditions(
    previous: &[Condition],
    recommendation: &Recommendation,
    settings: &crate::recommend::GracePeriodSettings,
    samples: u64,
    pods: Option<PodCounts>,
    policy: &ShutdownPolicy,
    now: Timestamp,
    generation: Option<i64>,
) -> Vec<Condition> {
    let target = &policy.spec.target_ref;
    let mut wanted: Vec<(&str, bool, &str, String)> = Vec::new();
    match recommendation.grace_period_seconds {
        Some(seconds) => wanted.push((
            CONDITION_RECOMMENDATION_PROVIDED,
            true,
            if recommendation.low_confidence {
                "KillOrTimeoutObserved"
            } else {
                "Recommended"
            },
            format!("new pods get terminationGracePeriodSeconds {seconds} (in updateMode Initial)"),
        )),
        None => wanted.push((
            CONDITION_RECOMMENDATION_PROVIDED,
            false,
            "NotEnoughSamples",
            format!(
                "{samples} of {} shutdowns observed; pods keep the workload's grace period",
                settings.min_samples
            ),
        )),
    }
    wanted.push(if recommendation.low_confidence {
        (
            CONDITION_LOW_CONFIDENCE,
            true,
            "NotEnoughSamples",
            format!("{samples} of {} shutdowns observed", settings.min_samples),
        )
    } else {
        (
            CONDITION_LOW_CONFIDENCE,
            false,
            "EnoughSamples",
            format!("{samples} shutdowns observed"),
        )
    });
    let not_injected = pods.map_or(0, |p| p.not_injected);
    wanted.push(if not_injected > 0 {
        (
            CONDITION_PODS_NOT_INJECTED,
            true,
            "PodsWithoutSidecar",
            format!(
                "{not_injected} running pod(s) of {} {} lack the lameduck sidecar (created before injection was enabled, or while the webhook \
                 was unavailable: it fails open); run `kubectl rollout restart {}/{} -n {}` to replace them",
                target.kind,
                target.name,
                target.kind.to_lowercase(),
                target.name,
                policy.metadata.namespace.as_deref().unwrap_or("default"),
            ),
        )
    } else {
        (CONDITION_PODS_NOT_INJECTED, false, "AllPodsInjected", "every running pod has the lameduck sidecar".to_string())
    });
    wanted.push(match (recommendation.capped(), recommendation.uncapped_seconds) {
        (true, Some(uncapped)) => (
            CONDITION_GRACE_PERIOD_EXCEEDED,
            true,
            "ShutdownsNeedMoreThanMax",
            format!(
                "the shutdowns need about {uncapped}s but gracePeriod.maxSeconds is {}; raise it or make the shutdown faster",
                settings.max_seconds
            ),
        ),
        _ => (CONDITION_GRACE_PERIOD_EXCEEDED, false, "WithinMax", format!("within gracePeriod.maxSeconds ({}s)", settings.max_seconds)),
    });
    // The CRD's CEL rule checks only how spec.drain.action starts: the grammar
    // (per-container entries, JSON arrays) is the parser's, which a copy in CEL would drift
    // from. The rest is checked here; the action is ignored while it cannot be read, and
    // the webhook warns on every pod it admits.
    if let Some(action) = policy.spec.drain.action.as_deref() {
        wanted.push(match policy.spec.drain.drain_actions() {
            Err(error) => (
                CONDITION_DRAIN_ACTION_INVALID,
                true,
                "CannotBeRead",
                format!("spec.drain.action is ignored, new pods get no drain action: {error}"),
            ),
            Ok(_) => (
                CONDITION_DRAIN_ACTION_INVALID,
                false,
                "Valid",
                format!("new pods' containers get the drain action {:?} unless their lameduck.dev/drain annotation names another", action.trim()),
            ),
        });
    }
    wanted
        .into_iter()
        .map(|(type_, ok, reason, message)| {
            let status = if ok { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                last_transition_time,
                observed_generation: generation,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ShutdownPolicySpec;
    use crate::observe::T0Source;
    use crate::recommend::PhaseDurations;

    fn policy() -> ShutdownPolicy {
        let mut policy = ShutdownPolicy::new(
            "deployment-web",
            serde_json::from_value::<ShutdownPolicySpec>(serde_json::json!({
                "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
            }))
            .unwrap(),
        );
        policy.metadata.namespace = Some("shop".into());
        policy.metadata.generation = Some(1);
        policy
    }

    fn observation(t0: i64, duration_ms: u64, killed: bool) -> Observation {
        Observation {
            t0_unix_ms: t0,
            t0_source: T0Source::Report,
            grace_seconds: 30,
            pod_grace_seconds: 30,
            cause: crate::observe::Cause::Deletion,
            pod_created_unix_ms: Some(t0 - 3_600_000),
            deadline_unix_ms: t0 + 30_000,
            finished_unix_ms: t0 + duration_ms as i64,
            duration_ms,
            killed_containers: if killed { vec!["web".into()] } else { vec![] },
            oom_killed_containers: vec![],
            outcome: None,
            sequence_ms: None,
            phases: PhaseDurations {
                deregister: Some(2000),
                ..Default::default()
            },
            deregister_lag_ms: Some(1500),
            container_restarts: vec![],
            container_restarts_omitted: 0,
            refused: None,
            open_at_release: 0,
            warnings: vec![],
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn status_survives_a_restart() {
        let mut policy = policy();
        let mut record = PolicyRecord::default();
        for i in 0..6 {
            record.push(
                format!("web-{i}"),
                observation(NOW + i * 1000, 8_000, i == 5),
            );
        }
        let now = Timestamp::from_millisecond(NOW + 10_000).unwrap();
        let (status, recommendation) = record.status(&policy, now);
        assert_eq!(status.samples, 6);
        assert_eq!(status.killed, 1);
        let applied = recommendation.grace_period_seconds.unwrap();
        assert!(applied >= 45, "the kill bump: {recommendation:?}");
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == CONDITION_RECOMMENDATION_PROVIDED && c.status == "True")
        );
        let notices = record.take_notices();
        assert!(notices.contains(&Notice::Killed {
            pod: "web-5".into(),
            grace_seconds: 30
        }));
        assert!(notices.contains(&Notice::RecommendationChanged {
            from: None,
            to: Some(applied)
        }));

        // Through JSON, as the API server stores it, into a fresh record: nothing is lost.
        let stored: ShutdownPolicyStatus =
            serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        policy.status = Some(stored);
        let mut restarted = PolicyRecord::default();
        let (again, _) = restarted.status(&policy, now);
        assert_eq!(again, status);
        assert!(restarted.take_notices().is_empty());
    }

    #[test]
    fn disruptions_are_counted_by_cause_and_cut_short_kills_are_not_the_apps() {
        use crate::observe::Cause;
        let mut policy = policy();
        let mut record = PolicyRecord::default();
        for i in 0..5 {
            record.push(
                format!("web-{i}"),
                observation(NOW + i * 1000, 8_000, false),
            );
        }
        let now = Timestamp::from_millisecond(NOW + 10_000).unwrap();
        let (before, _) = record.status(&policy, now);
        record.take_notices();
        // Evicted with 5 s instead of its 30 s, and SIGKILLed at those 5 s; deleted with
        // `--grace-period=3` and timed out.
        let mut evicted = observation(NOW + 20_000, 5_000, true);
        evicted.cause = Cause::Eviction;
        evicted.grace_seconds = 5;
        let mut shortened = observation(NOW + 21_000, 3_000, false);
        shortened.cause = Cause::ShortenedDeletion;
        shortened.grace_seconds = 3;
        shortened.outcome = Some(lameduck_proto::Outcome::Timeout);
        record.push("web-evicted".into(), evicted);
        record.push("web-shortened".into(), shortened);
        let later = Timestamp::from_millisecond(NOW + 30_000).unwrap();
        let (status, _) = record.status(&policy, later);
        assert_eq!((status.killed, status.timeouts), (0, 0));
        assert_eq!(status.cut_short, 2);
        assert_eq!(
            status.causes,
            ShutdownCauses {
                deletion: 5,
                eviction: 1,
                shortened_deletion: 1,
                ..Default::default()
            }
        );
        assert_eq!(status.samples, before.samples, "not samples");
        assert_eq!(status.recommendation, before.recommendation);
        assert!(
            !record
                .take_notices()
                .iter()
                .any(|n| matches!(n, Notice::Killed { .. } | Notice::TimedOut { .. })),
            "no PodKilled or timeout Event"
        );
        // Through JSON into a fresh record (a restart): the counts stay.
        policy.status =
            Some(serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap());
        let (again, _) = PolicyRecord::default().status(&policy, later);
        assert_eq!(again, status);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(
            json["causes"],
            serde_json::json!({"deletion": 5, "eviction": 1, "shortenedDeletion": 1})
        );
    }

    #[test]
    fn refused_connections_are_counted_and_raise_the_deregister_delay() {
        use crate::observe::Cause;
        let mut policy = policy();
        let mut record = PolicyRecord::default();
        // Five clean shutdowns measured by the kernel view: a lag of 1.5 s, learned as
        // 1.5 s × 1.2 ≈ 1.9 s.
        for i in 0..5 {
            let mut clean = observation(NOW + i * 1000, 8_000, false);
            clean.refused = Some(0);
            record.push(format!("web-{i}"), clean);
        }
        // One not measured (an older sidecar): counted nowhere in `refused`.
        record.push("web-old".into(), observation(NOW + 5_000, 8_000, false));
        let now = Timestamp::from_millisecond(NOW + 10_000).unwrap();
        let (before, _) = record.status(&policy, now);
        let refused = before.refused.unwrap();
        assert_eq!(
            (refused.total, refused.measured, refused.shutdowns),
            (0, 5, 0)
        );
        assert_eq!(refused.p99, Some(0));
        let learned = before
            .recommendation
            .unwrap()
            .deregister_delay_millis
            .unwrap();
        assert!((1_800..=1_900).contains(&learned), "{learned}");

        // A shutdown whose 2 s deregister phase let 4 connections through: the delay rises
        // to max(2 s × 1.5, 2 s + 1 s) = 3 s at once.
        let mut harmed = observation(NOW + 20_000, 8_000, false);
        harmed.refused = Some(4);
        record.push("web-harmed".into(), harmed);
        // An eviction with 5 s instead of 30, killed, that refused 9: counted, but cut short:
        // neither in the percentile nor a reason to raise the delay.
        let mut evicted = observation(NOW + 21_000, 5_000, true);
        evicted.cause = Cause::Eviction;
        evicted.grace_seconds = 5;
        evicted.refused = Some(9);
        evicted.phases.deregister = Some(20_000);
        record.push("web-evicted".into(), evicted);
        let later = Timestamp::from_millisecond(NOW + 30_000).unwrap();
        let (status, _) = record.status(&policy, later);
        let refused = status.refused.unwrap();
        assert_eq!(
            (refused.total, refused.measured, refused.shutdowns),
            (13, 7, 2)
        );
        // One Event, for the shutdown that was not cut short.
        let notices: Vec<_> = record
            .take_notices()
            .into_iter()
            .filter(|n| matches!(n, Notice::Refused { .. }))
            .collect();
        assert_eq!(
            notices,
            [Notice::Refused {
                pod: "web-harmed".into(),
                refused: 4,
                deregister_ms: Some(2_000)
            }]
        );
        assert_eq!(refused.p99, Some(4), "the eviction's 9 is not a sample");
        assert_eq!(
            status.recommendation.unwrap().deregister_delay_millis,
            Some(3_000)
        );
        // Through JSON into a fresh record (a restart): the counts and the raise stay.
        policy.status =
            Some(serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap());
        let (again, _) = PolicyRecord::default().status(&policy, later);
        assert_eq!(again, status);
        // A half-life later the floor is gone; the learned lag is back.
        let next_day = Timestamp::from_millisecond(NOW + 20_000 + 24 * 3_600_000 + 1).unwrap();
        let (decayed, _) = PolicyRecord::default().status(&policy, next_day);
        assert_eq!(
            decayed.recommendation.unwrap().deregister_delay_millis,
            Some(learned)
        );
    }

    #[test]
    fn an_unreadable_drain_action_is_reported_in_a_condition() {
        let condition = |policy: &ShutdownPolicy| {
            let (status, _) =
                PolicyRecord::default().status(policy, Timestamp::from_millisecond(NOW).unwrap());
            status
                .conditions
                .into_iter()
                .find(|c| c.type_ == CONDITION_DRAIN_ACTION_INVALID)
        };
        let mut policy = policy();
        assert_eq!(condition(&policy), None, "no action, no condition");
        policy.spec.drain.action = Some("web=signal:SIGQUIT;api=none".into());
        let valid = condition(&policy).unwrap();
        assert_eq!(
            (valid.status.as_str(), valid.reason.as_str()),
            ("False", "Valid")
        );
        policy.spec.drain.action = Some("signal:SIGSTOP".into());
        let invalid = condition(&policy).unwrap();
        assert_eq!(invalid.status, "True");
        assert!(
            invalid.message.contains("unknown signal"),
            "{}",
            invalid.message
        );
    }

    #[test]
    fn grace_period_exceeded_is_announced_once_when_it_turns_true() {
        let mut policy = policy();
        policy.spec.grace_period.max_seconds = 20;
        let mut record = PolicyRecord::default();
        for i in 0..6 {
            record.push(
                format!("web-{i}"),
                observation(NOW + i * 1000, 30_000, false),
            );
        }
        let now = Timestamp::from_millisecond(NOW + 60_000).unwrap();
        let (status, recommendation) = record.status(&policy, now);
        assert!(recommendation.capped(), "{recommendation:?}");
        let exceeded: Vec<_> = record
            .take_notices()
            .into_iter()
            .filter(|n| matches!(n, Notice::GracePeriodExceeded { .. }))
            .collect();
        assert_eq!(
            exceeded,
            [Notice::GracePeriodExceeded {
                needed_seconds: recommendation.uncapped_seconds.unwrap(),
                max_seconds: 20
            }]
        );
        // Still exceeded at the next write (and after a restart): no second Event.
        policy.status = Some(status);
        record.push("web-7".into(), observation(NOW + 70_000, 30_000, false));
        let later = Timestamp::from_millisecond(NOW + 120_000).unwrap();
        record.status(&policy, later);
        assert!(
            !record
                .take_notices()
                .iter()
                .any(|n| matches!(n, Notice::GracePeriodExceeded { .. }))
        );
        let mut restarted = PolicyRecord::default();
        restarted.status(&policy, later);
        assert!(restarted.take_notices().is_empty());
    }

    #[test]
    fn a_new_leader_folds_only_what_the_old_one_had_not_recorded() {
        let mut policy = policy();
        let mut old_leader = PolicyRecord::default();
        for i in 0..3 {
            old_leader.push(
                format!("web-{i}"),
                observation(NOW + i * 1000, 4_000, false),
            );
        }
        let now = Timestamp::from_millisecond(NOW + 10_000).unwrap();
        let (status, _) = old_leader.status(&policy, now);
        assert_eq!(status.samples, 3);
        policy.status = Some(status);

        // A follower saw the same three pods, then two more while nobody led.
        let mut follower = PolicyRecord::default();
        for i in 0..5 {
            follower.push(
                format!("web-{i}"),
                observation(NOW + i * 1000, 4_000, false),
            );
        }
        follower.push_unobserved();
        follower.forget_unobserved();
        // Long-finished observations go while following.
        follower.push("old".into(), observation(NOW - 600_000, 4_000, false));
        follower.prune_before(NOW - 120_000);
        let (status, _) = follower.status(&policy, now);
        assert_eq!(status.samples, 5, "3 recorded before + 2 from the gap");
        assert_eq!(status.unobserved, 0);
    }

    #[test]
    fn a_policy_created_again_under_its_name_is_loaded_afresh() {
        let mut first = policy();
        first.metadata.uid = Some("p-1".into());
        let mut record = PolicyRecord::default();
        for i in 0..3 {
            record.push(
                format!("web-{i}"),
                observation(NOW + i * 1000, 4_000, false),
            );
        }
        let now = Timestamp::from_millisecond(NOW + 10_000).unwrap();
        assert_eq!(record.status(&first, now).0.samples, 3);
        // Deleted and created again between two writes: another object, an empty status.
        let mut second = policy();
        second.metadata.uid = Some("p-2".into());
        record.push("web-9".into(), observation(NOW + 9_000, 4_000, false));
        let (status, _) = record.status(&second, now);
        assert_eq!(status.samples, 1, "{status:?}");
    }

    #[test]
    fn a_new_target_keeps_the_history_of_the_same_workload() {
        let mut policy = policy();
        let mut record = PolicyRecord::default();
        let target = TargetIdentity {
            uid: "d-1".into(),
            created_unix_ms: Some(NOW - 7_200_000),
        };
        record.set_target(target.clone());
        for i in 0..3 {
            record.push(
                format!("web-{i}"),
                observation(NOW + i * 1000, 4_000, false),
            );
        }
        let now = Timestamp::from_millisecond(NOW + 10_000).unwrap();
        let (status, _) = record.status(&policy, now);
        assert_eq!(status.target_uid.as_deref(), Some("d-1"));
        policy.status = Some(status);
        // A new leader: the same workload reported again, nothing is reset.
        let mut restarted = PolicyRecord::default();
        restarted.set_target(target);
        let (again, _) = restarted.status(&policy, now);
        assert_eq!(again.samples, 3);
        assert!(
            restarted
                .take_notices()
                .iter()
                .all(|n| !matches!(n, Notice::HistoryReset { .. }))
        );
    }

    #[test]
    fn pods_not_injected_says_how_to_fix_it() {
        let mut record = PolicyRecord::default();
        record.set_pods(PodCounts {
            injected: 1,
            not_injected: 2,
        });
        let (status, _) = record.status(&policy(), Timestamp::from_millisecond(NOW).unwrap());
        let condition = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_PODS_NOT_INJECTED)
            .unwrap();
        assert_eq!(condition.status, "True");
        assert!(
            condition
                .message
                .contains("kubectl rollout restart deployment/web -n shop"),
            "{}",
            condition.message
        );
        assert!(status.recommendation.is_none());
        let low = status
            .conditions
            .iter()
            .find(|c| c.type_ == CONDITION_LOW_CONFIDENCE)
            .unwrap();
        assert_eq!(low.status, "True");
    }

    #[test]
    fn transition_times_stay_while_the_status_does_not_change() {
        let mut policy = policy();
        let mut record = PolicyRecord::default();
        let (first, _) = record.status(&policy, Timestamp::from_millisecond(NOW).unwrap());
        policy.status = Some(first.clone());
        let (second, _) =
            record.status(&policy, Timestamp::from_millisecond(NOW + 60_000).unwrap());
        assert_eq!(first, second);
    }
}
