//! The `ShutdownPolicy` custom resource (`lameduck.dev/v1alpha1`).
//!
//! One ShutdownPolicy governs the pods of one workload: its spec bounds and tunes the
//! grace-period recommender and the sidecar's drain; its status holds what was observed
//! (quantiles, kills, the decaying histograms themselves) and the recommendation.
//!
//! The CRD is generated from these types: [`crd_yaml`] prints it (the CLI's `crd`
//! subcommand calls it) and `crds/shutdownpolicies.lameduck.dev.yaml` is its committed copy
//! (and the chart's `crds/` another), checked by a test. Regenerate it with
//! `LAMEDUCK_UPDATE_CRDS=1 cargo test -p lameduck-operator --lib committed_crd`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::core::{CustomResourceExt, Duration as KubeDuration};
use kube::{CustomResource, KubeSchema};
use lameduck_proto::{BadDrainAction, DrainActions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::recommend::{DeregisterSettings, GracePeriodSettings, HistoryState};

/// API group of lameduck's resources.
pub const GROUP: &str = "lameduck.dev";
/// The committed CRD file, relative to the repository root.
pub const CRD_PATH: &str = "crds/shutdownpolicies.lameduck.dev.yaml";
/// The chart's copy of the CRD, relative to the repository root.
pub const CHART_CRD_PATH: &str = "charts/lameduck/crds/shutdownpolicies.lameduck.dev.yaml";

/// Condition type: a recommendation exists (status `True`) or not yet (`False`).
pub const CONDITION_RECOMMENDATION_PROVIDED: &str = "RecommendationProvided";
/// Condition type: fewer than `minSamples` shutdowns were observed.
pub const CONDITION_LOW_CONFIDENCE: &str = "LowConfidence";
/// Condition type: running pods of the workload lack the sidecar.
pub const CONDITION_PODS_NOT_INJECTED: &str = "PodsNotInjected";
/// Condition type: shutdowns need more than `gracePeriod.maxSeconds`.
pub const CONDITION_GRACE_PERIOD_EXCEEDED: &str = "GracePeriodExceeded";
/// Condition type: `spec.drain.action` cannot be read and is ignored.
pub const CONDITION_DRAIN_ACTION_INVALID: &str = "DrainActionInvalid";

/// Describes how lameduck shuts down the pods of one workload and what it learned from
/// observing them. Created by the operator for every injected workload (named
/// `<kind>-<name>`, owned by the workload); create one yourself first to choose the bounds:
/// the operator adopts it and never changes its spec.
// Several printer columns share a type: not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lameduck.dev",
    version = "v1alpha1",
    kind = "ShutdownPolicy",
    plural = "shutdownpolicies",
    singular = "shutdownpolicy",
    shortname = "sdp",
    category = "lameduck",
    namespaced,
    status = "ShutdownPolicyStatus",
    derive = "PartialEq",
    doc = "ShutdownPolicy tunes the graceful shutdown of one workload's pods and records how long their shutdowns take.",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.targetRef.name",
        description = "The workload this policy governs."
    ),
    printcolumn(
        name = "Mode",
        type_ = "string",
        json_path = ".spec.updateMode",
        description = "Initial: new pods get the recommendation; Off: recommend only."
    ),
    printcolumn(
        name = "Samples",
        type_ = "integer",
        json_path = ".status.samples",
        description = "Observed shutdowns."
    ),
    printcolumn(
        name = "P99",
        type_ = "number",
        json_path = ".status.durations.p99",
        description = "99th percentile of the shutdown duration, in seconds."
    ),
    printcolumn(
        name = "Recommended",
        type_ = "integer",
        json_path = ".status.recommendation.gracePeriodSeconds",
        description = "Recommended terminationGracePeriodSeconds."
    ),
    printcolumn(
        name = "Killed",
        type_ = "integer",
        json_path = ".status.killed",
        description = "Pods SIGKILLed at their deadline."
    ),
    printcolumn(
        name = "Timeouts",
        type_ = "integer",
        json_path = ".status.timeouts",
        description = "Shutdowns whose application did not acknowledge before the sidecar's deadline."
    ),
    printcolumn(
        name = "Refused",
        type_ = "integer",
        json_path = ".status.refused.total",
        description = "Connections the pods refused after their listeners closed: clients still sent to a pod that had let go."
    ),
    printcolumn(
        name = "Restarts",
        type_ = "integer",
        json_path = ".status.containerRestartShutdowns",
        description = "Container-level shutdowns (a container killed by a failed probe and restarted), not counted as samples.",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownPolicySpec {
    /// The workload whose pods this policy governs. Cannot be changed.
    #[x_kube(validation = Rule::new("self == oldSelf").message("targetRef cannot be changed: create another ShutdownPolicy for another workload"))]
    pub target_ref: TargetRef,
    /// Whether the recommendation is applied: `Initial` (default) gives new pods the
    /// recommended terminationGracePeriodSeconds at admission; `Off` only records and
    /// recommends.
    #[serde(default)]
    pub update_mode: UpdateMode,
    /// How the grace period is derived from the observed shutdowns.
    #[serde(default)]
    pub grace_period: GracePeriodSpec,
    /// How the sidecar lets traffic drain away before the application is told to stop.
    #[serde(default)]
    pub drain: DrainSpec,
}

/// A reference to the workload governed by a policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind in ['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job', 'CronJob', 'Pod'] || self.apiVersion != 'apps/v1'").message("targetRef.kind must name a workload kind such as Deployment, StatefulSet or DaemonSet"))]
pub struct TargetRef {
    /// API version of the workload: `apps/v1`, or `batch/v1` for a Job or CronJob.
    #[x_kube(validation = Rule::new("self != ''").message("targetRef.apiVersion must not be empty, e.g. apps/v1"))]
    pub api_version: String,
    /// Kind of the workload: `Deployment`, `StatefulSet`, `DaemonSet`, `Job` or `CronJob`
    /// (whose policy covers the pods of all its Jobs).
    #[x_kube(validation = Rule::new("self != ''").message("targetRef.kind must not be empty, e.g. Deployment"))]
    pub kind: String,
    /// Name of the workload, in the policy's namespace.
    #[x_kube(validation = Rule::new("self != ''").message("targetRef.name must not be empty"))]
    pub name: String,
}

/// Whether the recommendation is applied to new pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateMode {
    /// Record and recommend only; pods keep the workload's terminationGracePeriodSeconds.
    Off,
    /// New pods get the recommended grace period when they are created.
    #[default]
    Initial,
}

/// How the grace period is derived from the observed shutdowns: it covers the shutdown
/// sequence's `percentile` × (1 + marginFraction), the sidecar's 2 s exit reserve, the
/// exit's `percentile`, one second for the precision of `finishedAt` and bufferSeconds,
/// within minSeconds and maxSeconds; kills and timeouts push it up at once.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minSeconds <= self.maxSeconds").message("gracePeriod.minSeconds must be less than or equal to gracePeriod.maxSeconds"))]
pub struct GracePeriodSpec {
    /// The lowest grace period ever recommended, in seconds (at least 1).
    #[x_kube(validation = Rule::new("self >= 1").message("gracePeriod.minSeconds must be at least 1 second"))]
    #[serde(default = "grace_period_defaults::min_seconds")]
    pub min_seconds: u32,
    /// The highest grace period ever recommended, in seconds (at most 3600; the cluster
    /// autoscaler stops waiting after 600 s by default).
    #[x_kube(validation = Rule::new("self >= 1 && self <= 3600").message("gracePeriod.maxSeconds must be between 1 and 3600 seconds"))]
    #[serde(default = "grace_period_defaults::max_seconds")]
    pub max_seconds: u32,
    /// The share of observed shutdowns the grace period must cover: 0.99 means 99 % of
    /// them fit, before the margins. Greater than 0, at most 1.
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("gracePeriod.percentile must be greater than 0 and at most 1, e.g. 0.99 for the 99th percentile"))]
    #[serde(default = "grace_period_defaults::percentile")]
    pub percentile: f64,
    /// Relative safety margin added to the observed percentile of the shutdown sequence:
    /// 0.2 adds 20 %.
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 10.0").message("gracePeriod.marginFraction must be between 0 and 10, e.g. 0.2 for 20 %"))]
    #[serde(default = "grace_period_defaults::margin_fraction")]
    pub margin_fraction: f64,
    /// Absolute safety margin added after everything else (the sidecar's exit reserve and
    /// one second for the precision of `finishedAt` are already counted), in seconds.
    #[x_kube(validation = Rule::new("self <= 600").message("gracePeriod.bufferSeconds must be at most 600 seconds"))]
    #[serde(default = "grace_period_defaults::buffer_seconds")]
    pub buffer_seconds: u32,
    /// Observed shutdowns needed before anything is recommended; until then the
    /// workload's own grace period stays and the LowConfidence condition is True.
    #[x_kube(validation = Rule::new("self >= 1").message("gracePeriod.minSamples must be at least 1"))]
    #[serde(default = "grace_period_defaults::min_samples")]
    pub min_samples: u32,
    /// A pod SIGKILLed at grace period G lifts the recommendation to at least
    /// G × killBumpRatio, and a shutdown that timed out at the sidecar's deadline D lifts
    /// that deadline to at least D × killBumpRatio (both capped at maxSeconds, and at least
    /// G + 1), for one half-life. At least 1.
    #[x_kube(validation = Rule::new("self >= 1.0 && self <= 10.0").message("gracePeriod.killBumpRatio must be between 1 and 10: a kill must never lower the grace period"))]
    #[serde(default = "grace_period_defaults::kill_bump_ratio")]
    pub kill_bump_ratio: f64,
    /// How fast old observations fade: an observation one half-life old weighs half as
    /// much as a new one. A Go duration such as `24h` or `90m`, at least `1m`.
    #[x_kube(validation = Rule::new(r"self.matches('^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$') && duration(self) >= duration('1m')").message("gracePeriod.halfLife must be a duration of at least 1m, such as 24h or 90m"))]
    #[serde(default = "grace_period_defaults::half_life")]
    pub half_life: String,
}

impl Default for GracePeriodSpec {
    fn default() -> Self {
        use grace_period_defaults as d;
        Self {
            min_seconds: d::min_seconds(),
            max_seconds: d::max_seconds(),
            percentile: d::percentile(),
            margin_fraction: d::margin_fraction(),
            buffer_seconds: d::buffer_seconds(),
            min_samples: d::min_samples(),
            kill_bump_ratio: d::kill_bump_ratio(),
            half_life: d::half_life(),
        }
    }
}

/// Defaults of `spec.gracePeriod` (serde needs one function per field).
mod grace_period_defaults {
    pub fn min_seconds() -> u32 {
        5
    }
    pub fn max_seconds() -> u32 {
        600
    }
    pub fn percentile() -> f64 {
        0.99
    }
    pub fn margin_fraction() -> f64 {
        0.2
    }
    pub fn buffer_seconds() -> u32 {
        1
    }
    pub fn min_samples() -> u32 {
        5
    }
    pub fn kill_bump_ratio() -> f64 {
        1.5
    }
    pub fn half_life() -> String {
        "24h".into()
    }
}

impl GracePeriodSpec {
    /// The recommender's settings for this spec.
    pub fn settings(&self) -> GracePeriodSettings {
        // The schema only admits durations of at least 1m; anything else falls back to 24h.
        let half_life = self
            .half_life
            .parse::<KubeDuration>()
            .ok()
            .filter(|d| !d.is_negative())
            .map_or(
                std::time::Duration::from_secs(24 * 3600),
                std::time::Duration::from,
            );
        GracePeriodSettings {
            min_seconds: self.min_seconds,
            max_seconds: self.max_seconds,
            percentile: self.percentile,
            margin_fraction: self.margin_fraction,
            buffer_seconds: f64::from(self.buffer_seconds),
            min_samples: self.min_samples,
            kill_bump_ratio: self.kill_bump_ratio,
            half_life_ms: i64::try_from(half_life.as_millis())
                .unwrap_or(i64::MAX)
                .max(1),
        }
    }
}

/// How the sidecar ends the deregister phase: defined with the sidecar's settings, as the
/// operator, the sidecar and the chart must agree on its values.
pub use lameduck_proto::DrainMode;

/// How the sidecar lets traffic drain away before the application is told to stop.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minDelaySeconds <= self.maxDelaySeconds").message("drain.minDelaySeconds must be less than or equal to drain.maxDelaySeconds"))]
#[x_kube(validation = Rule::new("self.mode != 'HTTP' || has(self.http)").message("drain.http (port and path) is required when drain.mode is HTTP"))]
pub struct DrainSpec {
    /// `Auto` (default), `Delay` or `HTTP`.
    #[serde(default = "drain_defaults::mode")]
    pub mode: DrainMode,
    /// The fixed deregister delay when no SDK is connected (and in `Delay`/`HTTP` mode), in
    /// seconds.
    #[x_kube(validation = Rule::new("self <= 600").message("drain.delaySeconds must be at most 600 seconds"))]
    #[serde(default = "drain_defaults::delay_seconds")]
    pub delay_seconds: u32,
    /// The adaptive deregister phase lasts at least this long, in seconds. The operator
    /// raises it to the deregister lag it learned for the workload
    /// (`status.recommendation.deregisterDelayMillis`), never lowers it. Until it has
    /// learned one, the phase lasts at least delaySeconds.
    #[x_kube(validation = Rule::new("self <= 600").message("drain.minDelaySeconds must be at most 600 seconds"))]
    #[serde(default = "drain_defaults::min_delay_seconds")]
    pub min_delay_seconds: u32,
    /// The adaptive deregister phase ends once no new connection was accepted for this long
    /// (or three times the recent mean gap between connections, if longer), in milliseconds.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 600000").message("drain.quietPeriodMillis must be between 1 and 600000 milliseconds"))]
    #[serde(default = "drain_defaults::quiet_period_millis")]
    pub quiet_period_millis: u32,
    /// The adaptive deregister phase lasts at most this long, in seconds.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 600").message("drain.maxDelaySeconds must be between 1 and 600 seconds"))]
    #[serde(default = "drain_defaults::max_delay_seconds")]
    pub max_delay_seconds: u32,
    /// The application's drain endpoint for mode `HTTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpDrainSpec>,
    /// The default drain action of the workload's containers, for a container that takes
    /// no part in the protocol (no SDK connected): what its preStop hook does once the
    /// deregister phase is over, before SIGTERM. The pod template's `lameduck.dev/drain`
    /// annotation wins for the containers it names. One action for every container, or
    /// one per container (`web=signal:SIGQUIT;api=none`, a container not named gets
    /// none):
    /// - `signal:SIGQUIT`: the signal to the container's PID 1 (SIGHUP, SIGINT, SIGQUIT,
    ///   SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH), e.g. nginx's graceful stop;
    /// - `exec:nginx -s quit`, or `exec:["/bin/sh","-c","kill -QUIT 1"]`: a command run in
    ///   the container;
    /// - `http:8080/drain`: `POST http://127.0.0.1:8080/drain`;
    /// - `none`: nothing, SIGTERM follows.
    ///
    /// After signal, exec and http the hook waits until the container's listeners are
    /// closed and its connections gone. A value that does not start like one of these
    /// is refused; one that still cannot be read (an unknown signal, port 0, …) is ignored
    /// (no action) and reported in the condition DrainActionInvalid.
    // The rule checks only how the value starts, and never refuses what the parser reads
    // (`lameduck_proto::DrainActions`): the whole grammar (JSON arrays, per-container
    // entries) copied into CEL would drift from it; the operator checks the rest.
    #[x_kube(validation = Rule::new(r"self.matches('^\\s*($|(?i:none)\\s*$|(?i:signal|exec|http)\\s*:|[a-z0-9]([-a-z0-9]*[a-z0-9])?\\s*=)')").message("drain.action must be signal:<NAME>, exec:<command>, http:<port><path> or none, or <container>=<action> entries separated by ;"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub action: Option<String>,
}

impl Default for DrainSpec {
    fn default() -> Self {
        use drain_defaults as d;
        Self {
            mode: d::mode(),
            delay_seconds: d::delay_seconds(),
            min_delay_seconds: d::min_delay_seconds(),
            quiet_period_millis: d::quiet_period_millis(),
            max_delay_seconds: d::max_delay_seconds(),
            http: None,
            action: None,
        }
    }
}

/// Defaults of `spec.drain` (serde needs one function per field): the shared drain
/// defaults, in the spec's units.
mod drain_defaults {
    use std::time::Duration;

    use lameduck_proto::DRAIN_DEFAULTS;

    pub fn mode() -> super::DrainMode {
        DRAIN_DEFAULTS.mode
    }
    pub fn delay_seconds() -> u32 {
        seconds(DRAIN_DEFAULTS.delay)
    }
    pub fn min_delay_seconds() -> u32 {
        seconds(DRAIN_DEFAULTS.min_delay)
    }
    pub fn quiet_period_millis() -> u32 {
        u32::try_from(DRAIN_DEFAULTS.quiet_period.as_millis()).unwrap_or(u32::MAX)
    }
    pub fn max_delay_seconds() -> u32 {
        seconds(DRAIN_DEFAULTS.max_delay)
    }
    pub fn http_path() -> String {
        DRAIN_DEFAULTS.http_path.into()
    }

    /// Whole seconds: the spec's unit (the defaults are whole seconds; a test checks it).
    fn seconds(duration: Duration) -> u32 {
        u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
    }
}

impl DrainSpec {
    /// `action`, read: `Ok(None)` when unset (or blank), the reason when it cannot be read.
    pub fn drain_actions(&self) -> Result<Option<DrainActions>, BadDrainAction> {
        match self.action.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(value) => value.parse().map(Some),
        }
    }

    /// The limits of the learned deregister delay.
    pub fn deregister_settings(&self) -> DeregisterSettings {
        DeregisterSettings {
            min_delay_ms: u64::from(self.min_delay_seconds) * 1000,
            max_delay_ms: u64::from(self.max_delay_seconds) * 1000,
        }
    }
}

/// The application's HTTP drain endpoint, called on loopback inside the pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HttpDrainSpec {
    /// TCP port the application listens on (1–65535).
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("drain.http.port must be between 1 and 65535"))]
    pub port: u32,
    /// Request path, starting with `/`.
    #[serde(default = "drain_defaults::http_path")]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("drain.http.path must start with /, e.g. /drain"))]
    pub path: String,
}

/// What the operator observed and recommends. Written by the operator only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownPolicyStatus {
    /// RecommendationProvided, LowConfidence, PodsNotInjected, GracePeriodExceeded,
    /// DrainActionInvalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation the status was last computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The uid of the workload whose shutdowns the history describes. A workload deleted
    /// and created again under the same name is another object: its history starts over.
    #[serde(default, rename = "targetUID", skip_serializing_if = "Option::is_none")]
    pub target_uid: Option<String>,
    /// Observed shutdowns (killed ones included).
    #[serde(default)]
    pub samples: u64,
    /// When the last shutdown was observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_observation_time: Option<Time>,
    /// Quantiles of the shutdown duration (deletion → last application container exit),
    /// in seconds, recent shutdowns weighing more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durations: Option<DurationQuantiles>,
    /// Median and 99th percentile of each shutdown phase, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phases: Option<PhaseQuantiles>,
    /// Pods SIGKILLed at their deadline before their shutdown finished.
    #[serde(default)]
    pub killed: u64,
    /// Shutdowns where the application did not acknowledge before the sidecar's deadline.
    #[serde(default)]
    pub timeouts: u64,
    /// Shutdowns that a shorter grace period than the pod's own ended in a kill or a
    /// timeout (an eviction or a `kubectl delete --grace-period`): the disruption's, not
    /// the application's. Counted apart from `killed` and `timeouts`; not samples.
    #[serde(default)]
    pub cut_short: u64,
    /// Observed shutdowns by cause: why each pod went.
    #[serde(default, skip_serializing_if = "ShutdownCauses::is_empty")]
    pub causes: ShutdownCauses,
    /// Connections refused after the pods' listeners closed (clients still sent to a pod
    /// that had let go), from the sidecar's reports. Absent until a report measured them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusedConnections>,
    /// Container-level shutdowns reported by the sidecar: a container stopped by a failed
    /// liveness or startup probe and restarted, the pod not deleted. Counted apart; they
    /// are not samples of the pod's shutdown.
    #[serde(default)]
    pub container_restart_shutdowns: u64,
    /// Terminating pods that disappeared before their final status was seen.
    #[serde(default)]
    pub unobserved: u64,
    /// The current recommendation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<RecommendationStatus>,
    /// Running pods of the workload with and without the sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodCounts>,
    /// The recommender's decaying histograms, kept here so that a restart of the operator
    /// loses nothing it recorded. Internal; do not edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub histogram: Option<HistoryState>,
}

/// Connections refused after the listeners closed, as the sidecars measured them from the
/// kernel's view of the pod (the reset segments the pod sent between the closing of its
/// listeners and the report).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RefusedConnections {
    /// Connections refused in every observed shutdown, whatever its cause.
    pub total: u64,
    /// Shutdowns whose report measured them (the others' sidecars had no kernel view).
    pub measured: u64,
    /// Shutdowns that refused at least one connection.
    pub shutdowns: u64,
    /// 99th percentile of the connections refused per shutdown, recent shutdowns weighing
    /// more; shutdowns cut short by a shorter grace period than the pod's own are left
    /// out, as from every percentile. A refusal raises the deregister delay
    /// (`recommendation.deregisterDelayMillis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<u64>,
}

/// Observed shutdowns by cause. A cause that never occurred is left out.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownCauses {
    /// Deleted with their own grace period: rollouts, scale-downs, `kubectl delete`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deletion: u64,
    /// Deleted with a shorter grace period than their own (`kubectl delete --grace-period`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub shortened_deletion: u64,
    /// Evicted through the Eviction API (`kubectl drain`, the Cluster Autoscaler).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eviction: u64,
    /// Preempted by the scheduler for pods of higher priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preemption: u64,
    /// Deleted by the taint manager (a NoExecute taint not tolerated).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub taint: u64,
    /// Terminated by the kubelet (node shutdown, node-pressure eviction).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub kubelet: u64,
    /// Deleted by the pod garbage collector.
    #[serde(default, rename = "podGC", skip_serializing_if = "is_zero")]
    pub pod_gc: u64,
    /// A DisruptionTarget condition with another reason.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub other: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ShutdownCauses {
    /// Whether no shutdown was counted.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The counter of one cause.
    pub fn count_mut(&mut self, cause: crate::observe::Cause) -> &mut u64 {
        use crate::observe::Cause;
        match cause {
            Cause::Deletion => &mut self.deletion,
            Cause::ShortenedDeletion => &mut self.shortened_deletion,
            Cause::Eviction => &mut self.eviction,
            Cause::Preemption => &mut self.preemption,
            Cause::Taint => &mut self.taint,
            Cause::Kubelet => &mut self.kubelet,
            Cause::GarbageCollection => &mut self.pod_gc,
            Cause::Other => &mut self.other,
        }
    }
}

/// Quantiles of a duration, in seconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct DurationQuantiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Longest.
    pub max: f64,
}

/// Median and 99th percentile, in seconds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseQuantile {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Quantiles of the shutdown phases.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct PhaseQuantiles {
    /// The whole sequence: deletion → the last preStop hook released (deregister, drain
    /// and cleanup as the sidecar timed them), what the sidecar's deadline must cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<PhaseQuantile>,
    /// Deletion → traffic stopped arriving (the deregister phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister: Option<PhaseQuantile>,
    /// The application finishing in-flight work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<PhaseQuantile>,
    /// The application's cleanup (its deferred work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<PhaseQuantile>,
    /// preStop hook released → the application container exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit: Option<PhaseQuantile>,
}

/// The recommendation for new pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RecommendationStatus {
    /// The terminationGracePeriodSeconds new pods get in `Initial` mode. It rises at once
    /// when the shutdowns need more (or after a kill or a timeout); it comes down only
    /// after enough shutdowns without either, by at least max(2 s, 20 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_seconds: Option<u32>,
    /// The smallest reasonable grace period; wide while the history is short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_bound: Option<u32>,
    /// The largest reasonable grace period; wide while the history is short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper_bound: Option<u32>,
    /// The target before gracePeriod.minSeconds/maxSeconds were applied: above maxSeconds
    /// means the shutdowns need more than the policy allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncapped: Option<u32>,
    /// The deregister delay learned from how long traffic kept arriving after deletion,
    /// in milliseconds: new pods' sidecars wait at least this long. A shutdown that
    /// refused connections raises it at once, for one half-life, to
    /// max(its deregister phase × killBumpRatio, the phase + 1 s), within
    /// drain.minDelaySeconds and drain.maxDelaySeconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister_delay_millis: Option<u64>,
    /// The time new pods' sidecars leave for drain and cleanup before the deadline, in
    /// milliseconds: the learned drain + cleanup percentiles with the margin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_budget_millis: Option<u64>,
}

/// Running pods of the workload.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    /// Pods with the lameduck sidecar.
    pub injected: u32,
    /// Running pods without the sidecar (created before injection was enabled, or while the
    /// webhook was unavailable); `kubectl rollout restart` replaces them.
    pub not_injected: u32,
}

/// The ShutdownPolicy CRD, its descriptions reflowed: the doc comments they come from
/// break lines at 100 columns, which `kubectl explain` would print as they are.
pub fn crd() -> CustomResourceDefinition {
    let crd = ShutdownPolicy::crd();
    let mut value = serde_json::to_value(&crd).unwrap_or_default();
    reflow_descriptions(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

fn reflow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = reflow(text);
                    }
                    _ => reflow_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

/// Joins the lines of each paragraph; a blank line still separates paragraphs and a line
/// starting a list item (`- `, `* `) keeps its break.
fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            let mut joined = String::with_capacity(paragraph.len());
            for line in paragraph.lines().map(str::trim).filter(|l| !l.is_empty()) {
                if !joined.is_empty() {
                    let item = line.starts_with("- ") || line.starts_with("* ");
                    joined.push(if item { '\n' } else { ' ' });
                }
                joined.push_str(line);
            }
            joined
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The ShutdownPolicy CRD as YAML, as committed in `crds/` and installed by the chart.
/// The operator's `crd` subcommand prints this.
pub fn crd_yaml() -> String {
    let crd = crd();
    let body = serde_norway::to_string(&crd).unwrap_or_default();
    let body = quote_yaml11_booleans(&body);
    format!("# Generated from operator/src/api.rs by `lameduck-operator crd`; do not edit.\n{body}")
}

/// Quotes plain scalars such as `Off` that YAML 1.1 parsers (kubectl's, helm's) read as
/// booleans: the `updateMode` enum value `Off` must stay a string.
fn quote_yaml11_booleans(yaml: &str) -> String {
    const BOOLEANS: [&str; 16] = [
        "y", "Y", "n", "N", "yes", "Yes", "YES", "no", "No", "NO", "on", "On", "ON", "off", "Off",
        "OFF",
    ];
    let mut out = String::with_capacity(yaml.len() + 64);
    for line in yaml.lines() {
        let quoted = BOOLEANS.iter().find_map(|word| {
            let prefix = line.strip_suffix(word)?;
            (prefix.ends_with("- ") || prefix.ends_with(": ")).then(|| format!("{prefix}'{word}'"))
        });
        out.push_str(quoted.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn committed_crd_matches_the_code() {
        // The chart carries its own copy: Helm installs CRDs only from the chart's `crds/`.
        for path in [CRD_PATH, CHART_CRD_PATH] {
            let file = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
            if std::env::var_os("LAMEDUCK_UPDATE_CRDS").is_some() {
                std::fs::write(&file, crd_yaml()).unwrap();
            }
            let committed = std::fs::read_to_string(&file).unwrap_or_default();
            assert!(
                committed == crd_yaml(),
                "{path} differs from the ShutdownPolicy types in operator/src/api.rs; regenerate it with \
                 `LAMEDUCK_UPDATE_CRDS=1 cargo test -p lameduck-operator --lib committed_crd` (or \
                 `cargo run -p lameduck-operator -- crd > {path}`) and commit it"
            );
        }
    }

    #[test]
    fn the_drain_defaults_are_the_shared_ones_in_the_specs_units() {
        let spec = DrainSpec::default();
        let defaults = lameduck_proto::DRAIN_DEFAULTS;
        let secs = |s: u32| std::time::Duration::from_secs(u64::from(s));
        assert_eq!(spec.mode, defaults.mode);
        assert_eq!(secs(spec.delay_seconds), defaults.delay);
        assert_eq!(secs(spec.min_delay_seconds), defaults.min_delay);
        assert_eq!(secs(spec.max_delay_seconds), defaults.max_delay);
        assert_eq!(
            std::time::Duration::from_millis(spec.quiet_period_millis.into()),
            defaults.quiet_period
        );
    }

    #[test]
    fn the_charts_drain_defaults_are_the_shared_ones() {
        let file = format!(
            "{}/../charts/lameduck/values.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let values: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let drain = &values["defaults"]["drain"];
        let defaults = lameduck_proto::DRAIN_DEFAULTS;
        assert_eq!(drain["mode"], serde_json::to_value(defaults.mode).unwrap());
        for (key, want) in [
            ("delay", defaults.delay),
            ("minDelay", defaults.min_delay),
            ("quietPeriod", defaults.quiet_period),
            ("maxDelay", defaults.max_delay),
        ] {
            let value = drain[key].as_str().unwrap_or_default();
            assert_eq!(
                humantime::parse_duration(value).ok(),
                Some(want),
                "defaults.drain.{key}"
            );
        }
    }

    #[test]
    fn descriptions_read_as_prose() {
        assert_eq!(
            reflow("One line\nbroken at 100.\n\nA second\nparagraph:\n- an item\n- another"),
            "One line broken at 100.\n\nA second paragraph:\n- an item\n- another"
        );
        let crd = serde_json::to_value(crd()).unwrap().to_string();
        // Only paragraph breaks and list items are left.
        for (i, _) in crd.match_indices("\\n") {
            let after = &crd[i + 2..];
            assert!(
                after.starts_with("\\n")
                    || crd[..i].ends_with("\\n")
                    || after.starts_with("- ")
                    || after.starts_with("* "),
                "a hard line break in a description: …{}…",
                &crd[i.saturating_sub(60)..(i + 60).min(crd.len())]
            );
        }
    }

    #[test]
    fn crd_yaml_reads_back_as_the_crd() {
        let yaml = crd_yaml();
        assert!(
            yaml.contains("- 'Off'"),
            "YAML 1.1 would read a bare Off as false"
        );
        let parsed: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(parsed, serde_json::to_value(crd()).unwrap());
    }

    #[test]
    fn defaults_fill_an_almost_empty_spec() {
        let policy: ShutdownPolicySpec = serde_json::from_value(serde_json::json!({
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
        }))
        .unwrap();
        assert_eq!(policy.update_mode, UpdateMode::Initial);
        assert_eq!(policy.grace_period, GracePeriodSpec::default());
        assert_eq!(
            policy.grace_period.settings(),
            GracePeriodSettings::default()
        );
        assert_eq!(
            policy.drain.deregister_settings(),
            DeregisterSettings::default()
        );
        let drain: DrainSpec =
            serde_json::from_value(serde_json::json!({"mode": "HTTP", "http": {"port": 8080}}))
                .unwrap();
        assert_eq!(drain.mode, DrainMode::Http);
        assert_eq!(drain.http.unwrap().path, "/drain");
        let half_life: GracePeriodSpec =
            serde_json::from_value(serde_json::json!({"halfLife": "90m"})).unwrap();
        assert_eq!(half_life.settings().half_life_ms, 90 * 60_000);
    }

    #[test]
    fn schema_documents_every_spec_field_with_defaults_and_rules() {
        let crd = serde_json::to_value(ShutdownPolicy::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(version["subresources"]["status"], serde_json::json!({}));
        let columns: Vec<_> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_uppercase())
            .collect();
        assert_eq!(
            columns,
            [
                "TARGET",
                "MODE",
                "SAMPLES",
                "P99",
                "RECOMMENDED",
                "KILLED",
                "TIMEOUTS",
                "REFUSED",
                "RESTARTS",
                "AGE"
            ]
        );
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "sdp");
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut undocumented = Vec::new();
        walk(spec, "spec", &mut undocumented);
        assert!(
            undocumented.is_empty(),
            "fields without a description: {undocumented:?}"
        );
        let grace = &spec["properties"]["gracePeriod"];
        assert_eq!(grace["properties"]["minSeconds"]["default"], 5);
        assert_eq!(grace["properties"]["halfLife"]["default"], "24h");
        assert!(
            grace["x-kubernetes-validations"][0]["message"]
                .as_str()
                .unwrap()
                .contains("minSeconds")
        );
    }

    /// The CEL rule of `drain.action` as the API server reads it: the CEL string literal
    /// unescaped, RE2's ASCII `\s`.
    fn drain_action_rule() -> regex::Regex {
        let crd = serde_json::to_value(crd()).unwrap();
        let action = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["drain"]["properties"]["action"];
        assert_eq!(action["maxLength"], 4096, "bounds the rule's cost");
        let rule = action["x-kubernetes-validations"][0]["rule"]
            .as_str()
            .unwrap();
        let literal = rule
            .strip_prefix("self.matches('")
            .and_then(|r| r.strip_suffix("')"))
            .unwrap_or_else(|| panic!("not a single matches(): {rule}"));
        let pattern = literal
            .replace("\\\\", "\\")
            .replace("\\s", "[\\t\\n\\f\\r ]");
        regex::Regex::new(&pattern).unwrap()
    }

    #[test]
    fn the_drain_action_rule_refuses_only_what_cannot_be_an_action() {
        let rule = drain_action_rule();
        for valid in [
            "",
            "  ",
            "none",
            " NONE ",
            "signal:SIGQUIT",
            "Signal : quit",
            "exec:nginx -s quit",
            r#"exec:["/bin/sh","-c","kill -QUIT 1"]"#,
            "exec:env A=1 stop",
            "http:8080/drain",
            "web=signal:SIGQUIT; api=http:8081/drain\nproxy=none",
            " web = none",
        ] {
            assert!(rule.is_match(valid), "{valid:?} refused");
            assert!(
                valid.trim().is_empty() || valid.parse::<DrainActions>().is_ok(),
                "{valid:?} is not an action"
            );
        }
        // What the CEL rule lets through, the parser may still refuse: the condition says.
        for let_through in ["signal:SIGSTOP", "http:0/drain", "web=sleep 5"] {
            assert!(rule.is_match(let_through), "{let_through:?}");
            assert!(let_through.parse::<DrainActions>().is_err());
        }
        for refused in [
            "SIGQUIT",
            "sleep 5",
            "kill -QUIT 1",
            "teleport:now",
            "-web=none",
            "Web=none",
        ] {
            assert!(!rule.is_match(refused), "{refused:?} accepted");
            assert!(refused.parse::<DrainActions>().is_err(), "{refused:?}");
        }
    }

    proptest! {
        /// Whatever the parser reads, the API server accepts.
        #[test]
        fn the_drain_action_rule_accepts_every_action(
            actions in prop::collection::vec(
                (
                    prop::option::of("[a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?"),
                    prop_oneof![
                        prop::sample::select(lameduck_proto::action::SIGNALS.iter().map(|(n, _)| format!("signal:{n}")).collect::<Vec<_>>()),
                        "[a-z/]{1,8}( -?[a-z0-9=]{1,6}){0,3}".prop_map(|c| format!("exec:{c}")),
                        (1u16.., "(/[a-z]{0,6}){0,2}").prop_map(|(p, path)| format!("http:{p}{path}")),
                        Just("none".to_owned()),
                    ],
                    "[ \t]{0,2}",
                ),
                1..4,
            )
        ) {
            let rule = drain_action_rule();
            let value = match actions.iter().all(|(name, _, _)| name.is_some()) {
                true => actions
                    .iter()
                    .map(|(name, action, space)| format!("{space}{}{space}={action}", name.as_deref().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(";"),
                false => format!("{}{}", actions[0].2, actions[0].1),
            };
            if value.parse::<DrainActions>().is_ok() {
                prop_assert!(rule.is_match(&value), "{value:?} refused");
            }
        }
    }

    fn walk(schema: &serde_json::Value, path: &str, undocumented: &mut Vec<String>) {
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                let path = format!("{path}.{name}");
                if property["description"].as_str().is_none_or(str::is_empty) {
                    undocumented.push(path.clone());
                }
                walk(property, &path, undocumented);
            }
        }
    }
}
