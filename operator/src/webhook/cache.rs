//! Metadata-only reflector caches of ReplicaSets, Deployments, StatefulSets, DaemonSets
//! and Namespaces: the opt-in decision reads them without an API call on the admission path.

use std::future::Future;

use futures::{StreamExt, future};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use lameduck_proto::names;

use super::decide::{MetaSummary, MetadataIndex};

/// The reader side of the caches.
#[derive(Clone)]
pub struct MetadataCaches {
    replica_sets: Store<PartialObjectMeta<ReplicaSet>>,
    deployments: Store<PartialObjectMeta<Deployment>>,
    stateful_sets: Store<PartialObjectMeta<StatefulSet>>,
    daemon_sets: Store<PartialObjectMeta<DaemonSet>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
}

fn summary<K>(
    store: &Store<PartialObjectMeta<K>>,
    namespace: &str,
    name: &str,
) -> Option<MetaSummary>
where
    K: Resource<DynamicType = ()> + Clone,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .map(|m| MetaSummary::from_meta(&m.metadata))
}

impl MetadataIndex for MetadataCaches {
    fn workload(&self, kind: &str, namespace: &str, name: &str) -> Option<MetaSummary> {
        match kind {
            "ReplicaSet" => summary(&self.replica_sets, namespace, name),
            "Deployment" => summary(&self.deployments, namespace, name),
            "StatefulSet" => summary(&self.stateful_sets, namespace, name),
            "DaemonSet" => summary(&self.daemon_sets, namespace, name),
            _ => None,
        }
    }

    fn namespace_label(&self, namespace: &str) -> Option<String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .and_then(|ns| ns.labels().get(names::NAMESPACE_LABEL_INJECT).cloned())
    }
}

impl MetadataCaches {
    /// The Namespace cache (the controller reads the opt-in label from it too).
    pub fn namespaces(&self) -> Store<PartialObjectMeta<Namespace>> {
        self.namespaces.clone()
    }

    /// Resolves once every cache has its initial list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.replica_sets.wait_until_ready().await?;
        self.deployments.wait_until_ready().await?;
        self.stateful_sets.wait_until_ready().await?;
        self.daemon_sets.wait_until_ready().await?;
        self.namespaces.wait_until_ready().await
    }
}

/// Starts the caches: returns the readers and the future that keeps them current (run it
/// until shutdown; watch errors are retried with backoff and logged).
pub fn start(client: &Client) -> (MetadataCaches, impl Future<Output = ()> + Send + 'static) {
    let (replica_sets, rs) = reflect(Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()));
    let (deployments, deploy) = reflect(Api::<PartialObjectMeta<Deployment>>::all(client.clone()));
    let (stateful_sets, sts) = reflect(Api::<PartialObjectMeta<StatefulSet>>::all(client.clone()));
    let (daemon_sets, ds) = reflect(Api::<PartialObjectMeta<DaemonSet>>::all(client.clone()));
    let (namespaces, ns) = reflect(Api::<PartialObjectMeta<Namespace>>::all(client.clone()));
    let caches = MetadataCaches {
        replica_sets,
        deployments,
        stateful_sets,
        daemon_sets,
        namespaces,
    };
    let run = async move {
        future::join5(rs, deploy, sts, ds, ns).await;
    };
    (caches, run)
}

fn reflect<K>(
    api: Api<PartialObjectMeta<K>>,
) -> (
    Store<PartialObjectMeta<K>>,
    impl Future<Output = ()> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    // `Api<PartialObjectMeta<K>>` makes metadata-only list and watch requests.
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        // The caches need names, owners, labels and annotations; managedFields is the bulk.
        .modify(|meta: &mut PartialObjectMeta<K>| meta.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(move |event| {
            if let Err(error) = event {
                tracing::warn!(%kind, %error, "metadata watch failed; retrying");
            }
            future::ready(())
        });
    (reader, stream)
}
