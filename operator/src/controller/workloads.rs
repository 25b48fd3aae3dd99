//! Workload adoption: every Deployment, StatefulSet and DaemonSet that opted in gets a
//! ShutdownPolicy `<kind>-<name>` owned by it, or adopts the user's policy that targets it
//! (its spec is never touched); and its running pods are counted with and without the
//! sidecar, for the `PodsNotInjected` condition.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
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

/// A workload as the operator keeps it: its metadata, its selector and its pod template's
/// metadata, nothing else. Watches decode straight into it: serde skips the rest of the
/// object (the template's pod spec, the status) without building it. At 500 Deployments
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
}

/// A pod template's metadata.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct SlimTemplate {
    /// Labels and annotations of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
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
    /// The pod selector.
    fn selector(&self) -> Option<&LabelSelector>;
    /// Drops the managed fields (the bulk of the metadata, which nothing reads).
    fn slim(&mut self);
    /// The replica's watch of this kind.
    fn reflected(watches: &Watches) -> &Reflected<Self>;
    /// The adoption controller's name in metrics (the plural resource name).
    const CONTROLLER: &'static str;
}

macro_rules! workload {
    ($kind:ty, $field:ident, $controller:literal) => {
        impl Workload for Slim<$kind> {
            const CONTROLLER: &'static str = $controller;
            fn reflected(watches: &Watches) -> &Reflected<Self> {
                &watches.$field
            }
            fn template_annotations(&self) -> Option<&BTreeMap<String, String>> {
                self.spec
                    .as_ref()?
                    .template
                    .as_ref()?
                    .metadata
                    .as_ref()?
                    .annotations
                    .as_ref()
            }
            fn selector(&self) -> Option<&LabelSelector> {
                self.spec.as_ref()?.selector.as_ref()
            }
            fn slim(&mut self) {
                self.metadata.managed_fields = None;
            }
        }
    };
}
workload!(Deployment, deployments, "deployments");
workload!(StatefulSet, stateful_sets, "statefulsets");
workload!(DaemonSet, daemon_sets, "daemonsets");

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
    let Some(selector) = workload.selector().cloned() else {
        return Ok(None);
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
        assert_eq!(slim.selector(), Some(&full.spec.as_ref().unwrap().selector));
        let policy = new_policy(&slim).unwrap();
        assert_eq!(policy.owner_references()[0].kind, "Deployment");
        assert_eq!(policy.owner_references()[0].api_version, "apps/v1");
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
}
