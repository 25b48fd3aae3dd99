//! The controller's metrics: per-policy counters, the reconcile duration and the errors.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::PolicyKey;
use crate::observe::{Cause, Observation};
use lameduck_proto::Outcome;

/// Label set of the per-policy metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
}

/// Label set of the per-policy counters by cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// Why the pod went ([`Cause::as_str`]: `deletion`, `eviction`, …).
    pub cause: &'static str,
}

impl CauseLabels {
    /// The labels of one policy and cause.
    pub fn new(key: &PolicyKey, cause: Cause) -> Self {
        Self {
            namespace: key.namespace.clone(),
            policy: key.name.clone(),
            cause: cause.as_str(),
        }
    }
}

/// Label set of the container-restart shutdown counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
    /// How the container's applications finished (`acked`, `timeout`, …; `omitted` for
    /// restarts the report left out to fit its byte budget).
    pub outcome: &'static str,
}

/// Label set of the reconcile duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `deployments`, `statefulsets`, `daemonsets`, `jobs`, `cronjobs` (adoption) or
    /// `status` (the writer).
    pub controller: &'static str,
}

/// Label set of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// As in [`ControllerLabels`].
    pub controller: &'static str,
    /// What failed: [`Error::kind`].
    pub kind: &'static str,
}

/// The controller's metrics.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    /// Observed shutdowns, per policy and cause.
    pub observations: Family<CauseLabels, Counter>,
    /// Kills and timeouts that a shorter grace period than the pod's own caused, per
    /// policy and cause (not in `kills` or `timeouts`).
    pub cut_short: Family<CauseLabels, Counter>,
    /// Pods SIGKILLed at their own deadline, per policy.
    pub kills: Family<PolicyLabels, Counter>,
    /// Shutdowns whose application did not acknowledge before the sidecar's deadline
    /// (within the pod's own grace period), per policy.
    pub timeouts: Family<PolicyLabels, Counter>,
    /// Connections refused after the listeners closed, per policy and cause (a series
    /// appears with the first shutdown that measured them, 0 included).
    pub refused_connections: Family<CauseLabels, Counter>,
    /// Container-level shutdowns followed by a restart of the container, per policy and
    /// outcome.
    pub container_restart_shutdowns: Family<RestartLabels, Counter>,
    /// Terminating pods that disappeared unobserved, per policy.
    pub unobserved: Family<PolicyLabels, Counter>,
    /// The applied grace-period recommendation, per policy.
    pub recommendation: Family<PolicyLabels, Gauge>,
    /// What the shutdowns need, before `gracePeriod.maxSeconds` caps it, per policy.
    pub needed: Family<PolicyLabels, Gauge>,
    /// 1 while `GracePeriodExceeded` is true, else 0, per policy.
    pub exceeded: Family<PolicyLabels, Gauge>,
    /// Running pods of the workload without the sidecar, per policy.
    pub without_sidecar: Family<PolicyLabels, Gauge>,
    /// Terminating injected pods being followed.
    pub terminating: Gauge,
    /// Reconcile and status-write errors, by controller and kind of error.
    pub errors: Family<ErrorLabels, Counter>,
    /// Time a reconcile (adoption) or a status-write pass takes, by controller.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Status patches sent.
    pub status_patches: Counter,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            observations: Family::default(),
            cut_short: Family::default(),
            kills: Family::default(),
            timeouts: Family::default(),
            refused_connections: Family::default(),
            container_restart_shutdowns: Family::default(),
            unobserved: Family::default(),
            recommendation: Family::default(),
            needed: Family::default(),
            exceeded: Family::default(),
            without_sidecar: Family::default(),
            terminating: Gauge::default(),
            errors: Family::default(),
            // 1 ms … ~16 s: a reconcile is one or two API calls, a status pass one patch per
            // policy with news.
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            status_patches: Counter::default(),
        }
    }
}

impl ControllerMetrics {
    /// Creates the metrics and registers them (prefix of the registry applies).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "observations",
            "Observed pod shutdowns, per ShutdownPolicy and cause (deletion, shortenedDeletion, eviction, preemption, taint, kubelet, podGC, other)",
            metrics.observations.clone(),
        );
        registry.register(
            "cut_short",
            "Kills and timeouts caused by a shorter grace period than the pod's own (not the application's), per ShutdownPolicy and cause",
            metrics.cut_short.clone(),
        );
        registry.register(
            "kills",
            "Pods SIGKILLed at their deadline, per ShutdownPolicy",
            metrics.kills.clone(),
        );
        registry.register(
            "timeouts",
            "Shutdowns whose application did not acknowledge before the sidecar's deadline, per ShutdownPolicy",
            metrics.timeouts.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections the pods refused after their listeners closed (clients still sent to a pod that had let go), per ShutdownPolicy and cause",
            metrics.refused_connections.clone(),
        );
        registry.register(
            "container_restart_shutdowns",
            "Container-level shutdowns followed by a restart of the container (not pod deletions), per ShutdownPolicy and outcome",
            metrics.container_restart_shutdowns.clone(),
        );
        registry.register(
            "unobserved",
            "Terminating pods that disappeared unobserved, per ShutdownPolicy",
            metrics.unobserved.clone(),
        );
        registry.register(
            "recommended_grace_period_seconds",
            "Recommended terminationGracePeriodSeconds, per ShutdownPolicy",
            metrics.recommendation.clone(),
        );
        registry.register(
            "needed_grace_period_seconds",
            "The grace period the observed shutdowns need, before gracePeriod.maxSeconds caps it, per ShutdownPolicy",
            metrics.needed.clone(),
        );
        registry.register(
            "grace_period_exceeded",
            "1 while the shutdowns need more than gracePeriod.maxSeconds (condition GracePeriodExceeded), per ShutdownPolicy",
            metrics.exceeded.clone(),
        );
        registry.register(
            "pods_without_sidecar",
            "Running pods of the workload without the lameduck sidecar, per ShutdownPolicy",
            metrics.without_sidecar.clone(),
        );
        registry.register(
            "terminating_pods",
            "Terminating injected pods being followed",
            metrics.terminating.clone(),
        );
        registry.register(
            "controller_errors",
            "Reconcile and status-write errors, by controller and kind of error",
            metrics.errors.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time a reconcile (adoption) or a status-write pass takes, by controller",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "status_patches",
            "ShutdownPolicy status patches sent",
            metrics.status_patches.clone(),
        );
        metrics
    }
}

impl ControllerMetrics {
    /// Drops the per-policy series of a deleted policy, so that a cluster with changing
    /// workloads does not accumulate series of policies long gone.
    pub fn forget_policy(&self, namespace: &str, policy: &str) {
        let labels = PolicyLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
        };
        for cause in Cause::ALL {
            let labels = CauseLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                cause: cause.as_str(),
            };
            self.observations.remove(&labels);
            self.cut_short.remove(&labels);
            self.refused_connections.remove(&labels);
        }
        self.kills.remove(&labels);
        self.timeouts.remove(&labels);
        self.unobserved.remove(&labels);
        self.recommendation.remove(&labels);
        self.needed.remove(&labels);
        self.exceeded.remove(&labels);
        self.without_sidecar.remove(&labels);
        for outcome in RESTART_OUTCOMES {
            self.container_restart_shutdowns.remove(&RestartLabels {
                namespace: namespace.to_owned(),
                policy: policy.to_owned(),
                outcome: outcome.as_str(),
            });
        }
        self.container_restart_shutdowns.remove(&RestartLabels {
            namespace: namespace.to_owned(),
            policy: policy.to_owned(),
            outcome: RESTARTS_OMITTED,
        });
    }
}

/// Every outcome a restart record can carry (the label values of the restart counter).
const RESTART_OUTCOMES: [Outcome; 7] = [
    Outcome::Acked,
    Outcome::Timeout,
    Outcome::NoApp,
    Outcome::AppError,
    Outcome::Disconnected,
    Outcome::NoPrestop,
    Outcome::Unknown,
];

/// The outcome label of restarts the report left out to fit its byte budget.
pub const RESTARTS_OMITTED: &str = "omitted";

impl ControllerMetrics {
    /// Counts the container restarts an observation reports, by outcome.
    pub fn count_container_restarts(&self, key: &PolicyKey, observation: &Observation) {
        let omitted = (observation.container_restarts_omitted > 0)
            .then_some((RESTARTS_OMITTED, observation.container_restarts_omitted));
        let reported = observation
            .container_restarts
            .iter()
            .map(|(_, outcome)| (outcome.as_str(), 1));
        for (outcome, count) in reported.chain(omitted) {
            self.container_restart_shutdowns
                .get_or_create(&RestartLabels {
                    namespace: key.namespace.clone(),
                    policy: key.name.clone(),
                    outcome,
                })
                .inc_by(count);
        }
    }
}
