//! Workload adoption: every Deployment, StatefulSet, DaemonSet, Job and CronJob that opted
//! in gets a ShutdownPolicy `<kind>-<name>` owned by it, or adopts the user's policy that
//! targets it (its spec is never touched); and its running pods are counted with and
//! without the sidecar, for the `PodsNotInjected` condition.
//!
//! A CronJob's Jobs get no policy of their own: each run is a new Job with a new name, so
//! a per-Job policy would never gather enough samples. Their pods record into the
//! CronJob's policy (the webhook resolves them to the CronJob).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::core::{Resource, ResourceExt, Selector};
use kube::runtime::controller::Action;
use kube::{Api, Client};
use lameduck_proto::names::{self, ANNOTATION_INJECT, LABEL_INJECTED};
use lameduck_proto::opt_in;

use super::record::TargetIdentity;
use super::{Context, Error, Result};
use crate::api::{PodCounts, ShutdownPolicy, ShutdownPolicySpec, TargetRef};
use crate::watches::{Reflected, Watches};

/// How often a workload is looked at again without any change (pod counts drift).
const RECHECK: Duration = Duration::from_secs(300);

/// A workload as the operator keeps it: its metadata, its selector, its pod template's
/// metadata and a CronJob's running Jobs, nothing else. Watches decode straight into it:
/// serde skips the rest of the object (the template's pod spec, the rest of the status)
/// without building it. At 500 Deployments
/// the pod specs decoded on every status change raised the heap's high-water mark by
/// several MiB on every replica.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(bound = "")]
pub struct Slim<K> {
    /// The object's metadata.
    pub metadata: ObjectMeta,
    /// What reconciling reads of the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SlimSpec>,
    /// What reconciling reads of the status (a CronJob's active Jobs).
    #[serde(default, skip_serializing_if = "SlimStatus::is_empty")]
    pub status: Option<SlimStatus>,
    #[serde(skip)]
    kind: PhantomData<fn() -> K>,
}

/// The part of a workload's spec the operator reads.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SlimSpec {
    /// The pod selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The pod template, its metadata only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SlimTemplate>,
    /// A CronJob's Job template: its spec holds the pod template.
    #[serde(
        default,
        rename = "jobTemplate",
        skip_serializing_if = "Option::is_none"
    )]
    pub job_template: Option<Box<SlimJobTemplate>>,
}

impl SlimSpec {
    /// The pod template: `spec.template`, or a CronJob's
    /// `spec.jobTemplate.spec.template`.
    pub fn pod_template(&self) -> Option<&SlimTemplate> {
        self.template
            .as_ref()
            .or_else(|| self.job_template.as_ref()?.spec.as_ref()?.template.as_ref())
    }

    fn pod_template_mut(&mut self) -> Option<&mut SlimTemplate> {
        if self.template.is_some() {
            return self.template.as_mut();
        }
        self.job_template.as_mut()?.spec.as_mut()?.template.as_mut()
    }
}

/// A CronJob's Job template.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SlimJobTemplate {
    /// The Job's spec: its pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<SlimSpec>,
}

/// The part of a workload's status the operator reads: a CronJob's running Jobs (the
/// other kinds have no `status.active` list, and keep nothing).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SlimStatus {
    /// References to the CronJob's running Jobs.
    #[serde(
        default,
        deserialize_with = "active_jobs",
        skip_serializing_if = "Option::is_none"
    )]
    pub active: Option<Vec<ObjectReference>>,
}

/// A CronJob's `status.active` is a list of Jobs; a Job's is the number of its running
/// pods, which is ignored (the whole Job would fail to decode otherwise).
fn active_jobs<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Vec<ObjectReference>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Active {
        Jobs(Vec<ObjectReference>),
        Other(serde::de::IgnoredAny),
    }
    Ok(
        match <Option<Active> as serde::Deserialize>::deserialize(deserializer)? {
            Some(Active::Jobs(jobs)) => Some(jobs),
            Some(Active::Other(_)) | None => None,
        },
    )
}

impl SlimStatus {
    fn is_empty(status: &Option<Self>) -> bool {
        status.as_ref().is_none_or(|s| s.active.is_none())
    }
}

/// A pod template's metadata.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SlimTemplate {
    /// Labels and annotations of the pods. Boxed: an `ObjectMeta` is 360 bytes even when
    /// empty, and a slimmed Job often keeps none (see [`slim_job`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<ObjectMeta>>,
}

impl<K: Resource<DynamicType = ()>> Resource for Slim<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A Deployment as the operator keeps it.
pub type SlimDeployment = Slim<Deployment>;
/// A StatefulSet as the operator keeps it.
pub type SlimStatefulSet = Slim<StatefulSet>;
/// A DaemonSet as the operator keeps it.
pub type SlimDaemonSet = Slim<DaemonSet>;
/// A Job as the operator keeps it (see [`slim_job`]).
pub type SlimJob = Slim<Job>;
/// A CronJob as the operator keeps it.
pub type SlimCronJob = Slim<CronJob>;

/// Which pods a workload runs, for counting them.
#[derive(Clone, Debug, PartialEq)]
pub enum PodSelection {
    /// Not known: no usable selector (the counts are left as they were).
    Unknown,
    /// None at all (a CronJob between two runs).
    Nothing,
    /// The pods this selector matches.
    Selected(LabelSelector),
}

/// Label the Job controller puts on its pods (Kubernetes 1.27 and later): the Job's uid.
pub const LABEL_JOB_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";

/// A workload kind lameduck adopts.
pub trait Workload:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + Send
    + Sync
    + serde::de::DeserializeOwned
    + 'static
{
    /// Annotations of the pod template.
    fn template_annotations(&self) -> Option<&BTreeMap<String, String>>;
    /// The pods the workload runs.
    fn pods(&self) -> PodSelection;
    /// Drops what no reader needs (the managed fields, the bulk of the metadata, at least).
    fn slim(&mut self);
    /// The replica's watch of this kind.
    fn reflected(watches: &Watches) -> &Reflected<Self>;
    /// The adoption controller's name in metrics (the plural resource name).
    const CONTROLLER: &'static str;

    /// The controller owner whose policy covers this workload's pods instead of a policy of
    /// its own: the CronJob of a Job it scheduled (each run is a new Job, with a new name).
    fn covered_by(&self) -> Option<&OwnerReference> {
        if Self::kind(&()) != "Job" {
            return None;
        }
        self.meta()
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "CronJob")
    }
}

macro_rules! workload {
    ($kind:ty, $field:ident, $controller:literal, $slim:path, $pods:path) => {
        impl Workload for Slim<$kind> {
            const CONTROLLER: &'static str = $controller;
            fn reflected(watches: &Watches) -> &Reflected<Self> {
                &watches.$field
            }
            fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
                self.spec
                    .as_ref()?
                    .pod_template()?
                    .metadata
                    .as_ref()?
                    .annotations
                    .as_ref()
            }
            fn pods(&self) -> PodSelection {
                $pods(self)
            }
            fn slim(&mut self) {
                $slim(self)
            }
        }
    };
}
workload!(
    Deployment,
    deployments,
    "deployments",
    slim_metadata,
    selected_pods
);
workload!(
    StatefulSet,
    stateful_sets,
    "statefulsets",
    slim_metadata,
    selected_pods
);
workload!(
    DaemonSet,
    daemon_sets,
    "daemonsets",
    slim_metadata,
    selected_pods
);
workload!(Job, jobs, "jobs", slim_job, job_pods);
workload!(
    CronJob,
    cron_jobs,
    "cronjobs",
    slim_metadata,
    active_jobs_pods
);

/// Keeps of a workload's metadata and its template's only what anything reads: names,
/// uid, owners, times and the `lameduck.dev/inject` annotation. The rest can be large and
/// is read by nobody: `kubectl apply` stores the whole object again in
/// `kubectl.kubernetes.io/last-applied-configuration`, and `managedFields` is bigger
/// still; every replica caches every workload of the cluster.
fn slim_metadata<K>(workload: &mut Slim<K>) {
    keep_inject(&mut workload.metadata);
    if let Some(meta) = workload
        .spec
        .as_mut()
        .and_then(|spec| spec.pod_template_mut())
        .and_then(|template| template.metadata.as_mut())
    {
        keep_inject(meta);
    }
}

/// Drops the managed fields, the labels and every annotation but `lameduck.dev/inject`.
pub fn keep_inject(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.labels = None;
    meta.annotations = meta
        .annotations
        .take()
        .and_then(|mut annotations| annotations.remove_entry(ANNOTATION_INJECT))
        .map(|entry| BTreeMap::from([entry]));
}

/// A Job keeps only what adoption and the webhook read: name, namespace, uid, owners,
/// creation and deletion time, a selector the Job controller did not generate, and the
/// `lameduck.dev/inject` annotations of the Job and of its pod template; its labels, its
/// other annotations and a generated selector (`batch.kubernetes.io/controller-uid=<uid>`,
/// rebuilt from the uid when the pods are counted) are dropped.
///
/// Jobs are the one kind a cluster keeps thousands of: finished Jobs stay until their TTL
/// or their CronJob's history limit removes them, and every replica caches all of them
/// (the webhook needs a new pod's Job to find its CronJob). One watch serves both the
/// webhook and adoption, so the cache is held once, not a metadata-only cache for the
/// webhook next to the adoption controller's: what adoption reads on top of the metadata
/// is one annotation. Measured with a counting allocator, a kept Job costs about 1 KiB
/// (store entry included), 1.9 KiB with the template's annotation (one map per annotated
/// metadata); 5,000 finished Jobs cost every replica 5–9 MiB, next to the ~18 MiB a
/// follower uses at 5,000 pods. Kept whole but for the managed fields, 2.3–2.5 KiB.
pub fn slim_job(job: &mut SlimJob) {
    keep_inject(&mut job.metadata);
    let generated = generated_job_selector(&job.metadata);
    if let Some(spec) = job.spec.as_mut() {
        if spec.selector.is_some() && spec.selector == generated {
            spec.selector = None;
        }
        if let Some(template) = spec.pod_template_mut() {
            if let Some(meta) = template.metadata.as_mut() {
                keep_inject(meta);
            }
            if template
                .metadata
                .as_ref()
                .is_some_and(|meta| meta.annotations.is_none())
            {
                template.metadata = None;
            }
        }
    }
    job.status = None;
}

/// The selector the Job controller gives a Job (unless `manualSelector` is set): its
/// pods' `batch.kubernetes.io/controller-uid` label.
fn generated_job_selector(meta: &ObjectMeta) -> Option<LabelSelector> {
    Some(LabelSelector {
        match_labels: Some(BTreeMap::from([(
            LABEL_JOB_CONTROLLER_UID.to_owned(),
            meta.uid.clone()?,
        )])),
        match_expressions: None,
    })
}

/// A Job's pods: those of its selector, which [`slim_job`] dropped when it was the one the
/// Job controller generates.
fn job_pods(job: &SlimJob) -> PodSelection {
    match selected_pods(job) {
        PodSelection::Unknown => generated_job_selector(&job.metadata)
            .map_or(PodSelection::Unknown, PodSelection::Selected),
        selected => selected,
    }
}

/// The pods the workload's selector matches.
fn selected_pods<K>(workload: &Slim<K>) -> PodSelection {
    match workload.spec.as_ref().and_then(|s| s.selector.clone()) {
        Some(selector) => PodSelection::Selected(selector),
        None => PodSelection::Unknown,
    }
}

/// A CronJob has no selector: its pods are those of its running Jobs (`status.active`),
/// which the Job controller labels with the Job's uid. The Jobs of earlier runs have
/// finished and run no pods; pods that ran without the sidecar in a run that has ended
/// are not counted.
fn active_jobs_pods(cron_job: &SlimCronJob) -> PodSelection {
    let uids: Vec<String> = cron_job
        .status
        .as_ref()
        .and_then(|s| s.active.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|job| job.uid.clone())
        .collect();
    if uids.is_empty() {
        return PodSelection::Nothing;
    }
    PodSelection::Selected(LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: LABEL_JOB_CONTROLLER_UID.into(),
            operator: "In".into(),
            values: Some(uids),
        }]),
        match_labels: None,
    })
}

/// Whether the workload's pods are injected, in the webhook's order (docs/tuning.md,
/// "Which workloads get a policy"): `lameduck.dev/inject` on the pod template, then on the
/// workload (`"true"` or `"false"`, case and surrounding blanks ignored), then the
/// namespace's `lameduck.dev/inject=enabled` label (`namespace_enabled`). The rule is the
/// webhook's own ([`opt_in::choose`]): a workload gets a policy exactly when its new pods
/// get the sidecar.
pub fn opted_in<W: Workload>(workload: &W, namespace_enabled: bool) -> bool {
    let template = workload
        .template_annotations()
        .and_then(|a| a.get(ANNOTATION_INJECT));
    let own = workload.annotations().get(ANNOTATION_INJECT);
    opt_in::choose(
        template.map(String::as_str),
        own.map(String::as_str),
        namespace_enabled,
    )
    .injects()
}

/// The owner reference a policy gets to its workload (garbage-collected with it).
pub fn owner_reference<W: Workload>(workload: &W) -> Option<OwnerReference> {
    let mut owner = workload.controller_owner_ref(&())?;
    owner.block_owner_deletion = Some(true);
    Some(owner)
}

/// The policy the operator creates for a workload.
pub fn new_policy<W: Workload>(workload: &W) -> Option<ShutdownPolicy> {
    let kind = W::kind(&()).to_string();
    let name = workload.meta().name.clone()?;
    let mut policy = ShutdownPolicy::new(
        &names::policy_name(&kind, &name),
        ShutdownPolicySpec {
            target_ref: TargetRef {
                api_version: W::api_version(&()).to_string(),
                kind,
                name,
            },
            update_mode: Default::default(),
            grace_period: Default::default(),
            drain: Default::default(),
        },
    );
    policy.metadata.namespace = workload.meta().namespace.clone();
    policy.metadata.owner_references = Some(vec![owner_reference(workload)?]);
    policy.metadata.labels = Some(BTreeMap::from([(
        "app.kubernetes.io/managed-by".into(),
        "lameduck".into(),
    )]));
    Some(policy)
}

/// Closes the record of the workload's policy: the workload (or its namespace) is being
/// deleted, and the shutdowns of its last pods are not recorded. A policy that governs a
/// newer workload of the same name is left alone (the uid differs).
pub fn close_target<W: Workload>(ctx: &Context, workload: &W) {
    let (Some(namespace), Some(name)) = (workload.namespace(), workload.meta().name.as_deref())
    else {
        return;
    };
    close_target_named::<W>(ctx, namespace, name, workload.meta().uid.as_deref());
}

/// [`close_target`] by name: the workload is gone (a deletion the watch reported).
pub fn close_target_named<W: Workload>(
    ctx: &Context,
    namespace: String,
    name: &str,
    uid: Option<&str>,
) {
    let Some(policy) = ctx.policies.find(&namespace, &W::kind(&()), name) else {
        return;
    };
    ctx.book().entry(namespace, policy.name_any()).close(uid);
}

/// Whether an API error is the refusal to create anything in a namespace being deleted
/// (`403 Forbidden`, cause `NamespaceTerminating`).
pub fn namespace_terminating_error(error: &kube::Error) -> bool {
    let kube::Error::Api(status) = error else {
        return false;
    };
    status.is_forbidden()
        && status.details.as_ref().is_some_and(|details| {
            details
                .causes
                .iter()
                .any(|cause| cause.reason == "NamespaceTerminating")
        })
}

/// Ensures the workload's policy exists (creating or adopting it) and reports its pod counts.
#[tracing::instrument(skip(workload, ctx), fields(kind = %W::kind(&()), name = %workload.name_any(), namespace = workload.namespace().unwrap_or_default()))]
pub async fn reconcile<W: Workload>(workload: Arc<W>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = workload
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    // Nothing is created in, or recorded for, what is being deleted. A namespace's deletion
    // triggers a reconcile of its workloads too (the watch on Namespaces).
    if workload.meta().deletion_timestamp.is_some() || ctx.namespace_terminating(&namespace) {
        close_target(&ctx, workload.as_ref());
        return Ok(Action::await_change());
    }
    // A CronJob's Jobs record into the CronJob's policy.
    if workload.covered_by().is_some() {
        return Ok(Action::await_change());
    }
    // A change of the namespace label triggers a reconcile too.
    if !opted_in(workload.as_ref(), ctx.namespace_opted_in(&namespace)) {
        return Ok(Action::await_change());
    }
    let name = workload.name_any();
    let kind = W::kind(&()).to_string();
    let uid = workload.uid().ok_or(Error::MissingField("metadata.uid"))?;
    let policies: Api<ShutdownPolicy> = Api::namespaced(ctx.client.clone(), &namespace);

    let policy = match ctx.policies.find(&namespace, &kind, &name) {
        Some(existing) => {
            let owned = existing.owner_references().iter().any(|o| o.uid == uid);
            if !owned {
                adopt(&policies, &existing, workload.as_ref()).await?;
            }
            existing.name_any()
        }
        None => {
            let policy =
                new_policy(workload.as_ref()).ok_or(Error::MissingField("metadata.name"))?;
            let policy_name = policy.name_any();
            match policies
                .create(
                    &PostParams {
                        field_manager: Some(super::FIELD_MANAGER.into()),
                        ..Default::default()
                    },
                    &policy,
                )
                .await
            {
                Ok(_) => tracing::info!(policy = %policy_name, "created ShutdownPolicy"),
                Err(kube::Error::Api(status)) if status.code == 409 => {}
                // The Namespace cache had not seen the deletion yet.
                Err(error) if namespace_terminating_error(&error) => {
                    tracing::debug!(policy = %policy_name, "namespace being deleted: no ShutdownPolicy");
                    close_target(&ctx, workload.as_ref());
                    return Ok(Action::await_change());
                }
                Err(error) => {
                    return Err(Error::Kube {
                        action: "create ShutdownPolicy",
                        object: format!("{namespace}/{policy_name}"),
                        source: error,
                    });
                }
            }
            policy_name
        }
    };

    let target = TargetIdentity {
        uid,
        created_unix_ms: workload
            .meta()
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond()),
    };
    let counts = count_pods(&ctx.client, &namespace, workload.as_ref()).await?;
    let mut book = ctx.book();
    let record = book.entry(namespace.clone(), policy);
    record.set_target(target);
    if let Some(counts) = counts {
        record.set_pods(counts);
    }
    Ok(Action::requeue(RECHECK))
}

/// Adds the workload as controller owner of a user-created policy; the spec stays as it is.
async fn adopt<W: Workload>(
    policies: &Api<ShutdownPolicy>,
    policy: &ShutdownPolicy,
    workload: &W,
) -> Result<()> {
    let Some(owner) = owner_reference(workload) else {
        return Ok(());
    };
    let mut owners: Vec<OwnerReference> = policy.owner_references().to_vec();
    // Another controller owner would make the API server refuse a second one.
    if owners.iter().any(|o| o.controller == Some(true)) {
        return Ok(());
    }
    owners.push(owner);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": policy.resource_version(), "ownerReferences": owners}
    });
    let name = policy.name_any();
    policies
        .patch(
            &name,
            &PatchParams {
                field_manager: Some(super::FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| Error::Kube {
            action: "adopt ShutdownPolicy",
            object: name.clone(),
            source,
        })?;
    tracing::info!(policy = %name, "adopted ShutdownPolicy");
    Ok(())
}

/// Counts the workload's running pods with and without the sidecar.
async fn count_pods<W: Workload>(
    client: &Client,
    namespace: &str,
    workload: &W,
) -> Result<Option<PodCounts>> {
    let selector = match workload.pods() {
        PodSelection::Unknown => return Ok(None),
        PodSelection::Nothing => return Ok(Some(PodCounts::default())),
        PodSelection::Selected(selector) => selector,
    };
    let Ok(selector) = Selector::try_from(selector) else {
        return Ok(None);
    };
    if selector.selects_all() {
        return Ok(None);
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list_metadata(&ListParams::default().labels_from(&selector))
        .await
        .map_err(|source| Error::Kube {
            action: "list pods",
            object: format!("{namespace}/{}", workload.name_any()),
            source,
        })?;
    let mut counts = PodCounts::default();
    for pod in list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        if pod
            .labels()
            .get(LABEL_INJECTED)
            .is_some_and(|v| v == "true")
        {
            counts.injected += 1;
        } else {
            counts.not_injected += 1;
        }
    }
    Ok(Some(counts))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn deployment(annotations: &[(&str, &str)], template: &[(&str, &str)]) -> SlimDeployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop", "uid": "d-1",
                         "annotations": annotations.iter().cloned().collect::<BTreeMap<_, _>>()},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"annotations": template.iter().cloned().collect::<BTreeMap<_, _>>()}}}
        }))
        .unwrap()
    }

    #[test]
    fn opt_in_is_read_from_the_template_then_the_workload_then_the_namespace() {
        let inject = |own: &[(&str, &str)], template: &[(&str, &str)], namespace: bool| {
            opted_in(&deployment(own, template), namespace)
        };
        assert!(inject(&[(ANNOTATION_INJECT, "true")], &[], false));
        assert!(inject(&[], &[(ANNOTATION_INJECT, "true")], false));
        assert!(inject(&[(ANNOTATION_INJECT, " True ")], &[], false));
        assert!(!inject(
            &[(ANNOTATION_INJECT, "true")],
            &[(ANNOTATION_INJECT, "false")],
            false
        ));
        assert!(inject(
            &[(ANNOTATION_INJECT, "false")],
            &[(ANNOTATION_INJECT, "true")],
            false
        ));
        assert!(!inject(&[], &[], false));
        // The namespace label counts only where the workload and template say nothing.
        assert!(inject(&[], &[], true));
        assert!(inject(&[(ANNOTATION_INJECT, "maybe")], &[], true));
        assert!(!inject(&[(ANNOTATION_INJECT, "false")], &[], true));
        assert!(!inject(&[], &[(ANNOTATION_INJECT, "false")], true));
    }

    #[test]
    fn a_full_object_decodes_into_what_reconciling_reads() {
        let mut value = serde_json::to_value(deployment(
            &[(ANNOTATION_INJECT, "true")],
            &[(ANNOTATION_INJECT, "true")],
        ))
        .unwrap();
        let slim_value = value.clone();
        value["metadata"]["managedFields"] =
            serde_json::json!([{"manager": "kubectl", "operation": "Update"}]);
        value["spec"]["replicas"] = serde_json::json!(3);
        value["spec"]["strategy"] = serde_json::json!({"type": "RollingUpdate"});
        value["spec"]["template"]["spec"] = serde_json::json!({
            "containers": [{"name": "app", "image": "app", "env": [{"name": "A", "value": "b"}]}]
        });
        value["status"] = serde_json::json!({"replicas": 3, "conditions": [{"type": "Available"}]});
        // The real type reads the whole object; the slim one keeps only what it needs.
        let full: Deployment = serde_json::from_value(value.clone()).unwrap();
        let mut slim: SlimDeployment = serde_json::from_value(value).unwrap();
        slim.slim();
        assert!(slim.metadata.managed_fields.is_none());
        assert_eq!(serde_json::to_value(&slim).unwrap(), slim_value);
        assert_eq!(slim.metadata.annotations, full.metadata.annotations);
        assert_eq!(
            slim.template_annotations(),
            full.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
        );
        assert_eq!(
            slim.pods(),
            PodSelection::Selected(full.spec.as_ref().unwrap().selector.clone())
        );
        let policy = new_policy(&slim).unwrap();
        assert_eq!(policy.owner_references()[0].kind, "Deployment");
        assert_eq!(policy.owner_references()[0].api_version, "apps/v1");
    }

    #[test]
    fn only_the_inject_annotation_is_kept() {
        let mut value = serde_json::to_value(deployment(
            &[(ANNOTATION_INJECT, "true")],
            &[(ANNOTATION_INJECT, "false")],
        ))
        .unwrap();
        let applied = "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\"}".repeat(50);
        value["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] =
            serde_json::json!(applied);
        value["metadata"]["labels"] = serde_json::json!({"team": "shop"});
        value["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] =
            serde_json::json!("true");
        value["spec"]["template"]["metadata"]["labels"] = serde_json::json!({"app": "web"});
        let mut slim: SlimDeployment = serde_json::from_value(value).unwrap();
        slim.slim();
        assert_eq!(
            slim.metadata.annotations,
            Some(BTreeMap::from([(ANNOTATION_INJECT.into(), "true".into())]))
        );
        assert_eq!(slim.metadata.labels, None);
        assert_eq!(
            slim.template_annotations(),
            Some(&BTreeMap::from([(
                ANNOTATION_INJECT.into(),
                "false".into()
            )]))
        );
        // What reconciling decides from is unchanged.
        assert!(!opted_in(&slim, true));
    }

    #[test]
    fn new_policy_is_named_after_and_owned_by_the_workload() {
        let policy = new_policy(&deployment(&[(ANNOTATION_INJECT, "true")], &[])).unwrap();
        assert_eq!(policy.name_any(), "deployment-web");
        assert_eq!(policy.namespace().as_deref(), Some("shop"));
        assert_eq!(
            policy.spec.target_ref,
            TargetRef {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: "web".into()
            }
        );
        let owner = &policy.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Deployment", "d-1", Some(true))
        );
    }

    fn job(annotations: Value, template: Value, owner: Option<Value>) -> SlimJob {
        let mut value = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "migrate", "namespace": "shop", "uid": "j-1",
                         "labels": {"batch.kubernetes.io/job-name": "migrate"},
                         "annotations": annotations,
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j-1"}},
                     "backoffLimit": 2,
                     "template": {"metadata": {"labels": {"batch.kubernetes.io/job-name": "migrate"},
                                               "annotations": template},
                                  "spec": {"restartPolicy": "Never", "containers": [{"name": "app", "image": "app"}]}}},
            "status": {"active": 1, "startTime": "2026-01-01T00:00:00Z"}
        });
        if let Some(owner) = owner {
            value["metadata"]["ownerReferences"] = json!([owner]);
        }
        let mut job: SlimJob = serde_json::from_value(value).unwrap();
        job.slim();
        job
    }

    fn cron_job(annotations: Value, template: Value, active: Value) -> SlimCronJob {
        let mut cron_job: SlimCronJob = serde_json::from_value(json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "report", "namespace": "shop", "uid": "cj-1", "annotations": annotations},
            "spec": {"schedule": "* * * * *",
                     "jobTemplate": {"metadata": {"labels": {"app": "report"}},
                                     "spec": {"template": {"metadata": {"annotations": template},
                                                           "spec": {"containers": [{"name": "app", "image": "app"}]}}}}},
            "status": {"active": active, "lastScheduleTime": "2026-01-01T00:00:00Z"}
        }))
        .unwrap();
        cron_job.slim();
        cron_job
    }

    fn cron_job_owner() -> Value {
        json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": "report", "uid": "cj-1", "controller": true})
    }

    #[test]
    fn a_job_keeps_only_what_adoption_and_the_webhook_read() {
        let kept = job(
            json!({ANNOTATION_INJECT: "true", "kubectl.kubernetes.io/last-applied-configuration": "{}"}),
            json!({ANNOTATION_INJECT: "false", "prometheus.io/scrape": "true"}),
            None,
        );
        assert_eq!(
            serde_json::to_value(&kept).unwrap(),
            json!({
                "metadata": {"name": "migrate", "namespace": "shop", "uid": "j-1",
                             "annotations": {ANNOTATION_INJECT: "true"}},
                "spec": {"template": {"metadata": {"annotations": {ANNOTATION_INJECT: "false"}}}}
            })
        );
        // Without the annotation, nothing is kept of the annotations or the template.
        let plain = job(json!({"a": "b"}), json!({"a": "b"}), None);
        assert_eq!(plain.metadata.annotations, None);
        assert_eq!(
            plain.spec.as_ref().unwrap().template,
            Some(SlimTemplate::default())
        );
        // The generated selector is rebuilt from the uid; a manual one is kept.
        assert_eq!(
            plain.pods(),
            PodSelection::Selected(generated_job_selector(&plain.metadata).unwrap())
        );
        let mut manual = job(json!({}), json!({}), None);
        let custom = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "migrate".into())])),
            match_expressions: None,
        };
        manual.spec.as_mut().unwrap().selector = Some(custom.clone());
        manual.slim();
        assert_eq!(manual.pods(), PodSelection::Selected(custom));
        // A Job's status.active is a count, not a list of Jobs: ignored, the Job decodes.
        assert!(kept.status.is_none());
    }

    #[test]
    fn jobs_and_cronjobs_opt_in_like_the_other_kinds() {
        let inject = json!({ANNOTATION_INJECT: "true"});
        let opt_out = json!({ANNOTATION_INJECT: "false"});
        assert!(opted_in(&job(inject.clone(), json!({}), None), false));
        assert!(opted_in(&job(json!({}), inject.clone(), None), false));
        assert!(!opted_in(
            &job(inject.clone(), opt_out.clone(), None),
            false
        ));
        assert!(opted_in(&job(json!({}), json!({}), None), true));
        // A CronJob's pod template is spec.jobTemplate.spec.template.
        let none = json!([]);
        assert!(opted_in(
            &cron_job(inject.clone(), json!({}), none.clone()),
            false
        ));
        assert!(opted_in(
            &cron_job(json!({}), inject.clone(), none.clone()),
            false
        ));
        assert!(!opted_in(
            &cron_job(inject, opt_out.clone(), none.clone()),
            false
        ));
        assert!(opted_in(
            &cron_job(json!({}), json!({}), none.clone()),
            true
        ));
        assert!(!opted_in(&cron_job(opt_out, json!({}), none), true));
    }

    #[test]
    fn jobs_and_cronjobs_get_policies_named_after_and_owned_by_them() {
        let policy = new_policy(&job(json!({}), json!({}), None)).unwrap();
        assert_eq!(policy.name_any(), "job-migrate");
        assert_eq!(
            policy.spec.target_ref,
            TargetRef {
                api_version: "batch/v1".into(),
                kind: "Job".into(),
                name: "migrate".into()
            }
        );
        let owner = &policy.owner_references()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.uid.as_str()
            ),
            ("batch/v1", "Job", "j-1")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );

        let policy = new_policy(&cron_job(json!({}), json!({}), json!([]))).unwrap();
        assert_eq!(policy.name_any(), "cronjob-report");
        assert_eq!(
            policy.spec.target_ref,
            TargetRef {
                api_version: "batch/v1".into(),
                kind: "CronJob".into(),
                name: "report".into()
            }
        );
        let owner = &policy.owner_references()[0];
        assert_eq!(
            (
                owner.api_version.as_str(),
                owner.kind.as_str(),
                owner.uid.as_str()
            ),
            ("batch/v1", "CronJob", "cj-1")
        );
    }

    #[test]
    fn only_a_cronjobs_jobs_are_covered_by_their_owner() {
        assert!(job(json!({}), json!({}), None).covered_by().is_none());
        let scheduled = job(json!({}), json!({}), Some(cron_job_owner()));
        assert_eq!(scheduled.covered_by().unwrap().name, "report");
        // Another controller (a workflow engine's custom resource) does not count.
        let other = job(
            json!({}),
            json!({}),
            Some(
                json!({"apiVersion": "example.com/v1", "kind": "Workflow", "name": "w", "uid": "w-1", "controller": true}),
            ),
        );
        assert!(other.covered_by().is_none());
        assert!(
            cron_job(json!({}), json!({}), json!([]))
                .covered_by()
                .is_none()
        );
    }

    #[test]
    fn a_cronjobs_pods_are_those_of_its_running_jobs() {
        assert_eq!(
            cron_job(json!({}), json!({}), json!([])).pods(),
            PodSelection::Nothing
        );
        let running = cron_job(
            json!({}),
            json!({}),
            json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "report-1", "namespace": "shop", "uid": "j-1"},
                   {"apiVersion": "batch/v1", "kind": "Job", "name": "report-2", "namespace": "shop", "uid": "j-2"}]),
        );
        let PodSelection::Selected(selector) = running.pods() else {
            panic!("{:?}", running.pods());
        };
        let selector = Selector::try_from(selector).unwrap();
        assert_eq!(
            selector.to_string(),
            "batch.kubernetes.io/controller-uid in (j-1,j-2)"
        );
        // Kept through a round trip (the status is part of what is cached).
        let again: SlimCronJob =
            serde_json::from_value(serde_json::to_value(&running).unwrap()).unwrap();
        assert_eq!(again.pods(), running.pods());
        // A Job's pods are those its selector matches.
        let PodSelection::Selected(selector) = job(json!({}), json!({}), None).pods() else {
            panic!("a Job has a selector");
        };
        assert_eq!(
            Selector::try_from(selector).unwrap().to_string(),
            "batch.kubernetes.io/controller-uid=j-1"
        );
    }
}
