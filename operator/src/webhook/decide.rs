//! The opt-in decision (docs/tuning.md, "Which workloads get a policy") and the resolution
//! of a pod's owning workload. Pure: the metadata comes through [`MetadataIndex`], which the
//! webhook backs with metadata-only reflector stores and the tests with a map.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lameduck_proto::names;
use lameduck_proto::opt_in::{self, InjectChoice};

use super::policy::WorkloadRef;

/// Label the ReplicaSet controller puts on pods and in ReplicaSet names (`<deploy>-<hash>`).
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// What the decision needs to know about a cached object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaSummary {
    /// The object's `lameduck.dev/inject` annotation.
    pub inject: Option<String>,
    /// Kind and name of its controller owner reference.
    pub controller: Option<(String, String)>,
    /// The object's UID (for Events about the workload).
    pub uid: Option<String>,
}

impl MetaSummary {
    /// Extracts the summary from object metadata.
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        Self {
            inject: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::ANNOTATION_INJECT))
                .cloned(),
            controller: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| (o.kind.clone(), o.name.clone())),
            uid: meta.uid.clone(),
        }
    }
}

/// Read access to the metadata caches. Implementations never call the API server.
pub trait MetadataIndex: Send + Sync + 'static {
    /// A ReplicaSet, Deployment, StatefulSet or DaemonSet by kind, namespace and name.
    fn workload(&self, kind: &str, namespace: &str, name: &str) -> Option<MetaSummary>;
    /// The value of the namespace's `lameduck.dev/inject` label.
    fn namespace_label(&self, namespace: &str) -> Option<String>;
}

/// An index that knows nothing: only pod annotations decide (the offline `inject` command
/// and the tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyIndex;

impl MetadataIndex for EmptyIndex {
    fn workload(&self, _: &str, _: &str, _: &str) -> Option<MetaSummary> {
        None
    }
    fn namespace_label(&self, _: &str) -> Option<String> {
        None
    }
}

/// Why a pod is injected: the precedence is shared with the operator's workload adoption.
pub use lameduck_proto::opt_in::OptIn;

/// The opt-in decision for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Inject; the workload names the policy.
    Inject {
        reason: OptIn,
        workload: WorkloadRef,
        workload_uid: Option<String>,
    },
    /// The pod or its workload says `lameduck.dev/inject: "false"`.
    OptedOut,
    /// Nothing asks for injection.
    NotOptedIn,
}

/// Decides whether the pod is injected: first match wins — the pod's `lameduck.dev/inject`
/// annotation, then its workload's, then the namespace label `lameduck.dev/inject=enabled`
/// ([`opt_in::choose`]).
pub fn decide(pod: &ObjectMeta, namespace: &str, index: &dyn MetadataIndex) -> Decision {
    let pod_annotation = pod
        .annotations
        .as_ref()
        .and_then(|a| a.get(names::ANNOTATION_INJECT))
        .map(String::as_str);
    let (workload, meta) = resolve_workload(pod, namespace, index);
    let workload_annotation = meta.as_ref().and_then(|m| m.inject.as_deref());
    let namespace_enabled =
        opt_in::namespace_label_enables(index.namespace_label(namespace).as_deref());
    let choice = opt_in::choose(pod_annotation, workload_annotation, namespace_enabled);
    match choice {
        InjectChoice::Inject(reason) => Decision::Inject {
            reason,
            workload,
            workload_uid: meta.and_then(|m| m.uid),
        },
        InjectChoice::OptedOut => Decision::OptedOut,
        InjectChoice::NotOptedIn => Decision::NotOptedIn,
    }
}

/// The pod's top-level workload and, when cached, its metadata summary.
///
/// Pod → ReplicaSet → Deployment; StatefulSet, DaemonSet, Job and other controllers are
/// their own top level. A ReplicaSet the cache has not seen yet (it was created moments
/// ago) is resolved to its Deployment through the `pod-template-hash` naming convention.
/// A bare pod is `Pod/<name>`, or `Pod/<generateName without its trailing '-'>`.
pub fn resolve_workload(
    pod: &ObjectMeta,
    namespace: &str,
    index: &dyn MetadataIndex,
) -> (WorkloadRef, Option<MetaSummary>) {
    let controller = pod
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let Some(owner) = controller else {
        let name = match pod.name.as_deref().filter(|n| !n.is_empty()) {
            Some(name) => name.to_owned(),
            None => pod
                .generate_name
                .as_deref()
                .unwrap_or_default()
                .trim_end_matches('-')
                .to_owned(),
        };
        return (
            WorkloadRef {
                kind: "Pod".to_owned(),
                name,
            },
            None,
        );
    };
    let owner_ref = WorkloadRef {
        kind: owner.kind.clone(),
        name: owner.name.clone(),
    };
    if owner.kind != "ReplicaSet" {
        let meta = index.workload(&owner.kind, namespace, &owner.name);
        return (owner_ref, meta);
    }
    let replica_set = index.workload("ReplicaSet", namespace, &owner.name);
    let deployment_name = match replica_set.as_ref() {
        Some(rs) => rs
            .controller
            .as_ref()
            .filter(|(kind, _)| kind == "Deployment")
            .map(|(_, n)| n.clone()),
        None => pod
            .labels
            .as_ref()
            .and_then(|l| l.get(POD_TEMPLATE_HASH))
            .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
            .and_then(|prefix| prefix.strip_suffix('-'))
            .filter(|name| index.workload("Deployment", namespace, name).is_some())
            .map(str::to_owned),
    };
    match deployment_name {
        Some(name) => {
            let meta = index.workload("Deployment", namespace, &name);
            (
                WorkloadRef {
                    kind: "Deployment".to_owned(),
                    name,
                },
                meta,
            )
        }
        None => (owner_ref, replica_set),
    }
}
