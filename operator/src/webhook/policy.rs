//! The grace-period seam between the webhook and the ShutdownPolicy controller.
//!
//! The webhook asks a [`PolicyLookup`] which ShutdownPolicy governs a new pod's workload
//! and what it prescribes. The answer must come from memory (a reflector store): the lookup
//! runs on the admission path and must not call the API server. The ShutdownPolicy side
//! implements the trait from its reflector; until it does, [`NoPolicies`] answers `None` and
//! the webhook uses the operator's defaults ([`crate::webhook::InjectionConfig`]).

use std::fmt;

/// The workload that owns a pod: its controller, followed up to the top-level workload
/// (Pod → ReplicaSet → Deployment). A bare pod is its own workload (kind `Pod`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadRef {
    /// Kubernetes kind, e.g. `Deployment`, `StatefulSet`, `DaemonSet`, `Job`, `Pod`.
    pub kind: String,
    /// Object name. For a bare pod created with `generateName` this is the prefix
    /// without its trailing `-`.
    pub name: String,
}

impl WorkloadRef {
    /// The name of the ShutdownPolicy that governs this workload: `<kind>-<name>`,
    /// lowercased (e.g. `deployment-web`, `pod-debug`).
    pub fn policy_name(&self) -> String {
        format!("{}-{}", self.kind, self.name).to_lowercase()
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// `spec.updateMode` of a ShutdownPolicy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpdateMode {
    /// Recommend only; new pods keep the workload's grace period.
    Off,
    /// New pods get the recommended grace period at admission.
    #[default]
    Initial,
}

/// How the sidecar ends the deregister phase (`spec.drain.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DrainMode {
    /// Adaptive with an SDK connected, fixed delay without.
    #[default]
    Auto,
    /// Always the fixed delay.
    Delay,
    /// Fixed delay, then `POST http://127.0.0.1:<port><path>` on the app.
    Http,
}

impl DrainMode {
    /// The value of `LAMEDUCK_DRAIN_MODE` the sidecar understands.
    pub fn as_env(self) -> &'static str {
        match self {
            DrainMode::Auto => "auto",
            DrainMode::Delay => "delay",
            DrainMode::Http => "http",
        }
    }
}

/// The HTTP drain fallback target inside the pod (loopback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpDrain {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Request path, e.g. `/drain`.
    pub path: String,
}

/// Drain settings handed to the sidecar as environment variables (milliseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainSettings {
    /// Drain mode.
    pub mode: DrainMode,
    /// Fixed deregister delay when no SDK is connected.
    pub delay_millis: u64,
    /// Minimum adaptive deregister delay. The controller puts the learned deregister lag
    /// here when it has one (`recommendation.deregisterDelay`).
    pub min_delay_millis: u64,
    /// Silence that ends the adaptive deregister phase.
    pub quiet_period_millis: u64,
    /// Upper bound of the adaptive deregister phase.
    pub max_delay_millis: u64,
    /// Target of the HTTP fallback; used when `mode` is [`DrainMode::Http`].
    pub http: Option<HttpDrain>,
    /// The time the deregister phase must leave for drain and cleanup, learned by the
    /// policy (`recommendation.drainBudgetMillis`); `None`: the sidecar's fixed share.
    pub budget_millis: Option<u64>,
}

impl Default for DrainSettings {
    /// The defaults of `ShutdownPolicy.spec.drain` (docs/protocol.md §4, docs/tuning.md).
    fn default() -> Self {
        Self {
            mode: DrainMode::Auto,
            delay_millis: 5_000,
            min_delay_millis: 1_000,
            quiet_period_millis: 1_000,
            max_delay_millis: 15_000,
            http: None,
            budget_millis: None,
        }
    }
}

/// What a ShutdownPolicy prescribes for the pods of one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySettings {
    /// The ShutdownPolicy's name (annotated on the pod as `lameduck.dev/policy`).
    pub policy_name: String,
    /// `spec.updateMode`.
    pub update_mode: UpdateMode,
    /// `status.recommendation.gracePeriodSeconds`, when there is one.
    pub recommended_grace_seconds: Option<i64>,
    /// `spec.drain` merged with the learned minimum delay; `None` keeps the operator's
    /// defaults.
    pub drain: Option<DrainSettings>,
}

impl PolicySettings {
    /// The grace period to impose on a new pod: the recommendation, only in `Initial` mode.
    pub fn grace_override(&self) -> Option<i64> {
        match self.update_mode {
            UpdateMode::Initial => self.recommended_grace_seconds.filter(|s| *s > 0),
            UpdateMode::Off => None,
        }
    }
}

/// Finds the ShutdownPolicy for a pod's workload. Implementations read from memory only.
pub trait PolicyLookup: Send + Sync + 'static {
    /// The policy for `workload` in `namespace`, if one exists. `workload_uid` (when the
    /// webhook's cache knows it) keeps what a policy learned about an earlier workload of
    /// the same name away from the new one's pods.
    fn lookup(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        workload_uid: Option<&str>,
    ) -> Option<PolicySettings>;
}

/// The lookup used until the ShutdownPolicy reflector is wired in: no policy anywhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPolicies;

impl PolicyLookup for NoPolicies {
    fn lookup(
        &self,
        _namespace: &str,
        _workload: &WorkloadRef,
        _workload_uid: Option<&str>,
    ) -> Option<PolicySettings> {
        None
    }
}
