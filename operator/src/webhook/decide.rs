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
    /// A ReplicaSet, Deployment, StatefulSet, DaemonSet, Job or CronJob by kind, namespace
    /// and name.
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
/// Pod → ReplicaSet → Deployment; Pod → Job → CronJob; StatefulSet, DaemonSet, a Job
/// without a CronJob and other controllers are their own top level. A ReplicaSet the cache
/// has not seen yet (it was created moments ago) is resolved to its Deployment through the
/// `pod-template-hash` naming convention; a Job likewise to its CronJob through the
/// CronJob controller's naming (see [`through_parent`]). A bare pod is `Pod/<name>`, or
/// `Pod/<generateName without its trailing '-'>`.
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
    match owner.kind.as_str() {
        // The ReplicaSet controller names a ReplicaSet `<deployment>-<pod-template-hash>`.
        "ReplicaSet" => {
            let guessed = pod
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_TEMPLATE_HASH))
                .and_then(|hash| owner.name.strip_suffix(hash.as_str()))
                .and_then(|prefix| prefix.strip_suffix('-'));
            through_parent(owner_ref, "Deployment", guessed, namespace, index)
        }
        // Each run of a CronJob is a new Job, `<cronjob>-<scheduled time in minutes since
        // the epoch>`: its pods are the CronJob's, and record into the CronJob's policy.
        "Job" => {
            let guessed = scheduled_by(&owner.name);
            through_parent(owner_ref, "CronJob", guessed, namespace, index)
        }
        _ => {
            let meta = index.workload(&owner.kind, namespace, &owner.name);
            (owner_ref, meta)
        }
    }
}

/// Resolves an intermediate controller (a ReplicaSet, a Job) to the `parent_kind` object
/// that controls it: the controller owner of the cached intermediate; an intermediate the
/// cache has not seen yet (created moments before its pods) to `guessed`, the parent's
/// name by its controller's naming convention, when that parent is cached. Otherwise the
/// intermediate is its own top level (a cached one is believed over its name).
fn through_parent(
    intermediate: WorkloadRef,
    parent_kind: &str,
    guessed: Option<&str>,
    namespace: &str,
    index: &dyn MetadataIndex,
) -> (WorkloadRef, Option<MetaSummary>) {
    let cached = index.workload(&intermediate.kind, namespace, &intermediate.name);
    let parent = match cached.as_ref() {
        Some(meta) => meta
            .controller
            .as_ref()
            .filter(|(kind, _)| kind == parent_kind)
            .map(|(_, name)| name.clone()),
        None => guessed
            .filter(|name| index.workload(parent_kind, namespace, name).is_some())
            .map(str::to_owned),
    };
    match parent {
        Some(name) => {
            let meta = index.workload(parent_kind, namespace, &name);
            (
                WorkloadRef {
                    kind: parent_kind.to_owned(),
                    name,
                },
                meta,
            )
        }
        None => (intermediate, cached),
    }
}

/// The CronJob name a Job name `<cronjob>-<digits>` would come from.
fn scheduled_by(job_name: &str) -> Option<&str> {
    let (prefix, suffix) = job_name.rsplit_once('-')?;
    (!prefix.is_empty() && !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
        .then_some(prefix)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    /// Cached objects by kind, namespace and name.
    #[derive(Default)]
    struct Index(HashMap<(&'static str, &'static str), MetaSummary>);

    impl Index {
        fn with(mut self, kind: &'static str, name: &'static str, summary: MetaSummary) -> Self {
            self.0.insert((kind, name), summary);
            self
        }
    }

    impl MetadataIndex for Index {
        fn workload(&self, kind: &str, namespace: &str, name: &str) -> Option<MetaSummary> {
            if namespace != "shop" {
                return None;
            }
            self.0
                .iter()
                .find(|((k, n), _)| *k == kind && *n == name)
                .map(|(_, summary)| summary.clone())
        }
        fn namespace_label(&self, _: &str) -> Option<String> {
            None
        }
    }

    fn summary(inject: Option<&str>, controller: Option<(&str, &str)>, uid: &str) -> MetaSummary {
        MetaSummary {
            inject: inject.map(Into::into),
            controller: controller.map(|(k, n)| (k.into(), n.into())),
            uid: Some(uid.into()),
        }
    }

    fn job_pod(job: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(format!("{job}-x7k2p")),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: job.into(),
                uid: "job-uid".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn workload(kind: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            kind: kind.into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_cronjobs_pod_resolves_to_the_cronjob_through_the_job_cache() {
        // The Job's name says nothing: only its controller owner names the CronJob.
        let index = Index::default()
            .with(
                "Job",
                "manual-run",
                summary(None, Some(("CronJob", "report")), "j-1"),
            )
            .with("CronJob", "report", summary(Some("true"), None, "cj-1"));
        let (workload_ref, meta) = resolve_workload(&job_pod("manual-run"), "shop", &index);
        assert_eq!(workload_ref, workload("CronJob", "report"));
        assert_eq!(workload_ref.policy_name(), "cronjob-report");
        assert_eq!(meta, Some(summary(Some("true"), None, "cj-1")));
        // The CronJob's annotation opts the pod in.
        assert!(matches!(
            decide(&job_pod("manual-run"), "shop", &index),
            Decision::Inject { workload, workload_uid: Some(uid), .. }
                if workload.name == "report" && uid == "cj-1"
        ));
    }

    #[test]
    fn a_job_not_cached_yet_resolves_to_the_cronjob_its_name_comes_from() {
        let index = Index::default().with("CronJob", "nightly-report", summary(None, None, "cj-1"));
        let (workload_ref, meta) =
            resolve_workload(&job_pod("nightly-report-29000000"), "shop", &index);
        assert_eq!(workload_ref, workload("CronJob", "nightly-report"));
        assert_eq!(meta.and_then(|m| m.uid).as_deref(), Some("cj-1"));
        // Only in the namespace that holds the CronJob.
        let (workload_ref, meta) =
            resolve_workload(&job_pod("nightly-report-29000000"), "other", &index);
        assert_eq!(workload_ref, workload("Job", "nightly-report-29000000"));
        assert_eq!(meta, None);
    }

    #[test]
    fn a_standalone_job_is_its_own_workload() {
        let index = Index::default()
            .with("Job", "migrate", summary(Some("true"), None, "j-1"))
            .with("CronJob", "migrate", summary(None, None, "cj-1"));
        // Cached without a CronJob owner: the Job, even though a CronJob has its name.
        let (workload_ref, meta) = resolve_workload(&job_pod("migrate"), "shop", &index);
        assert_eq!(workload_ref, workload("Job", "migrate"));
        assert_eq!(workload_ref.policy_name(), "job-migrate");
        assert_eq!(meta, Some(summary(Some("true"), None, "j-1")));
        // A cached Job is believed over its name.
        let index = Index::default()
            .with("Job", "backup-42", summary(None, None, "j-2"))
            .with("CronJob", "backup", summary(None, None, "cj-2"));
        let (workload_ref, _) = resolve_workload(&job_pod("backup-42"), "shop", &index);
        assert_eq!(workload_ref, workload("Job", "backup-42"));
    }

    #[test]
    fn a_job_whose_prefix_names_no_cronjob_is_the_job() {
        let index = Index::default().with("CronJob", "backup", summary(None, None, "cj-1"));
        for job in [
            "cleanup-29000000",
            "backup-v2",
            "backup-",
            "-29000000",
            "backup",
        ] {
            let (workload_ref, meta) = resolve_workload(&job_pod(job), "shop", &index);
            assert_eq!(workload_ref, workload("Job", job), "{job}");
            assert_eq!(meta, None, "{job}");
        }
    }

    #[test]
    fn the_cronjob_name_is_everything_before_the_last_dash() {
        assert_eq!(scheduled_by("a-b-29000000"), Some("a-b"));
        assert_eq!(scheduled_by("a-b"), None);
        assert_eq!(scheduled_by("29000000"), None);
    }
}
