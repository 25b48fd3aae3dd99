//! The grace-period seam between the webhook and the ShutdownPolicy controller.
//!
//! The webhook asks a [`PolicyLookup`] which ShutdownPolicy governs a new pod's workload
//! and what it prescribes. The answer must come from memory (a reflector store): the lookup
//! runs on the admission path and must not call the API server. The operator implements the
//! trait with its ShutdownPolicy reflector (`crate::controller::PolicyIndex`); [`NoPolicies`]
//! answers `None` everywhere (benchmarks, the fuzzer), and the webhook then uses the
//! operator's defaults ([`crate::webhook::InjectionConfig`]).

use std::fmt;

use lameduck_proto::{DrainActions, names};

/// `spec.updateMode` of a ShutdownPolicy.
pub use crate::api::UpdateMode;
/// The drain settings are the sidecar's: defined with the environment contract.
pub use lameduck_proto::drain::{DrainMode, DrainSettings, HttpDrain};

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
    /// The name of the ShutdownPolicy the operator creates for this workload
    /// ([`names::policy_name`]: `<kind>-<name>`, lowercased, e.g. `deployment-web`).
    pub fn policy_name(&self) -> String {
        names::policy_name(&self.kind, &self.name)
    }
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
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
    /// `spec.drain.action`, read: the default drain action of the workload's containers
    /// (the `lameduck.dev/drain` annotation wins).
    pub drain_actions: Option<DrainActions>,
    /// Why `spec.drain.action` is ignored, when it cannot be read.
    pub drain_action_error: Option<String>,
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

/// No policy anywhere: every pod gets the operator's defaults. For callers without a
/// cluster (benchmarks, the fuzzer).
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
