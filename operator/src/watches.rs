//! One watch per resource kind per replica: a reflector keeps a [`Store`] current and fans
//! its changes out to whoever subscribes, at any time.
//!
//! Every replica runs these watches from start-up (the webhook reads the stores on the
//! admission path); the leader's controllers subscribe when they win the lease. A change
//! reaches the subscribers only after the store holds it, so a reconcile triggered by a
//! change always reads that change (a controller with its own second watch could be
//! triggered before the store it reads caught up, and decide on the old state).
//!
//! kube's shared streams (`reflect_shared`) cannot serve a subscriber that arrives after
//! the writer was moved into its stream, and their receivers apply backpressure to the
//! root stream: a follower's idle controller would stall the webhook's caches. A tokio
//! broadcast never blocks the reflector: a subscriber that falls behind by more than the
//! channel's capacity is given every object of the store again (a full resync), which is
//! what a controller needs after missing changes.

use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, OnceLock};

use futures::{FutureExt, Stream, StreamExt, stream};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use lameduck_proto::names;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::controller::PolicyIndex;
use crate::controller::workloads::{
    SlimCronJob, SlimDaemonSet, SlimDeployment, SlimJob, SlimStatefulSet, Workload,
};
use crate::webhook::decide::{MetaSummary, MetadataIndex};

/// Changes a subscriber may fall behind by before it is resynced from the store.
const FAN_OUT_CAPACITY: usize = 1024;

/// Objects per page of a watch's initial list. The default (500) holds a few MiB of JSON and
/// its decoded objects at once, a peak the allocator keeps long after the list.
pub const LIST_PAGE_SIZE: u32 = 100;

/// The configuration of every watch: any cached version, small pages.
pub fn list_config() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .page_size(LIST_PAGE_SIZE)
}

/// One change of a watched object, as the store already holds it.
#[derive(Debug)]
pub enum Change<K> {
    /// Created, modified, or listed (initially or after a resync).
    Applied(Arc<K>),
    /// Deleted.
    Deleted(Gone),
}

/// What is left of a deleted object: enough to forget what described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gone {
    /// Its namespace (none for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: Option<String>,
}

impl Gone {
    fn of<K: Resource>(object: &K) -> Self {
        let meta = object.meta();
        Self {
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
        }
    }
}

/// What the channel carries: references, not objects. The channel keeps its last
/// [`FAN_OUT_CAPACITY`] entries; objects there would keep that many old versions alive
/// (a ShutdownPolicy's status is rewritten every few seconds).
enum Sent<K>
where
    K: Resource,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    Applied(ObjectRef<K>),
    Deleted(Gone),
}

impl<K> Clone for Sent<K>
where
    K: Resource,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        match self {
            Self::Applied(reference) => Self::Applied(reference.clone()),
            Self::Deleted(gone) => Self::Deleted(gone.clone()),
        }
    }
}

/// A reflector's store and the fan-out of its changes. Cheap to clone.
pub struct Reflected<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    /// Created by the first subscriber: a follower, whose controllers never subscribe,
    /// does not hold [`FAN_OUT_CAPACITY`] slots per kind for nobody.
    changes: Arc<OnceLock<broadcast::Sender<Sent<K>>>>,
}

impl<K> Clone for Reflected<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<K> Reflected<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    /// The store (read it; ready once the initial list is in).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Every change from now on. A subscriber that falls more than the channel's capacity
    /// behind gets every object of the store as `Applied` instead of what it missed. An
    /// object applied and deleted again before the subscriber reads the change is passed
    /// on only as deleted.
    pub fn subscribe(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let store = self.store.clone();
        let receiver = self
            .changes
            .get_or_init(|| broadcast::channel(FAN_OUT_CAPACITY).0)
            .subscribe();
        BroadcastStream::new(receiver).flat_map(move |received| match received {
            Ok(Sent::Applied(reference)) => stream::iter(
                store
                    .get(&reference)
                    .map(Change::Applied)
                    .into_iter()
                    .collect::<Vec<_>>(),
            ),
            Ok(Sent::Deleted(gone)) => stream::iter(vec![Change::Deleted(gone)]),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                tracing::warn!(
                    kind = %K::kind(&Default::default()),
                    missed,
                    "a subscriber fell behind its watch; resyncing it from the store"
                );
                stream::iter(
                    store
                        .state()
                        .into_iter()
                        .map(Change::Applied)
                        .collect::<Vec<_>>(),
                )
            }
        })
    }

    /// The objects created, modified or listed from now on (see [`Reflected::subscribe`]).
    pub fn applied(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.subscribe().filter_map(|change| {
            std::future::ready(match change {
                Change::Applied(object) => Some(object),
                Change::Deleted(_) => None,
            })
        })
    }

    /// A reflected store fed by hand (tests): no watch behind it.
    pub fn from_store(store: Store<K>) -> Self {
        Self {
            store,
            changes: Arc::default(),
        }
    }
}

/// Starts the one watch of `api`'s kind: `slim` trims each object before it is stored
/// (what no reader needs), `label` names the kind in logs. Returns the reflected store and
/// the future that keeps it current; the future ends only if the watch stream ends.
pub fn reflect<K>(
    api: Api<K>,
    label: &'static str,
    slim: fn(&mut K),
) -> (Reflected<K>, impl Future<Output = ()> + Send + 'static)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (store, writer) = reflector::store();
    let changes: Arc<OnceLock<broadcast::Sender<Sent<K>>>> = Arc::default();
    let reflected = Reflected {
        store,
        changes: changes.clone(),
    };
    let driver = watcher(api, list_config())
        .default_backoff()
        .modify(slim)
        // The store applies each event before it is passed on: subscribers read it there.
        .reflect(writer)
        .for_each(move |event| {
            // Without a channel, or when `send` fails (no subscriber left), nothing waits
            // for the change: a later subscriber starts from the store.
            let send = |sent: Sent<K>| {
                if let Some(changes) = changes.get() {
                    let _ = changes.send(sent);
                }
            };
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    send(Sent::Applied(ObjectRef::from_obj(&object)));
                }
                Ok(watcher::Event::Delete(object)) => send(Sent::Deleted(Gone::of(&object))),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                Err(error) => tracing::warn!(kind = label, %error, "watch failed; retrying"),
            }
            std::future::ready(())
        });
    (reflected, driver)
}

/// The replica's watches, one per kind: what the webhook reads on the admission path and
/// what the leader's controllers are triggered by and read. Cheap to clone.
#[derive(Clone)]
pub struct Watches {
    /// ReplicaSets, metadata only (a pod's owner chain).
    pub replica_sets: Reflected<PartialObjectMeta<ReplicaSet>>,
    /// Deployments, decoded as [`Slim`](crate::controller::workloads::Slim) (metadata, selector, template metadata).
    pub deployments: Reflected<SlimDeployment>,
    /// StatefulSets, as [`Slim`](crate::controller::workloads::Slim).
    pub stateful_sets: Reflected<SlimStatefulSet>,
    /// DaemonSets, as [`Slim`](crate::controller::workloads::Slim).
    pub daemon_sets: Reflected<SlimDaemonSet>,
    /// Jobs, as [`Slim`](crate::controller::workloads::Slim) trimmed further
    /// ([`slim_job`](crate::controller::workloads::slim_job): finished Jobs pile up). The
    /// webhook reads a new pod's Job for its CronJob; adoption gives standalone Jobs their
    /// policy.
    pub jobs: Reflected<SlimJob>,
    /// CronJobs, as [`Slim`](crate::controller::workloads::Slim) (and their running Jobs).
    pub cron_jobs: Reflected<SlimCronJob>,
    /// Namespaces, metadata only (the opt-in label, the deletion timestamp).
    pub namespaces: Reflected<PartialObjectMeta<Namespace>>,
    /// ShutdownPolicies.
    pub policies: PolicyIndex,
}

impl Watches {
    /// Starts every watch: returns the stores and the future that keeps them current (it
    /// ends only if a watch stream ends: run it supervised, for the life of the process).
    pub fn start(client: &Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (replica_sets, rs) = reflect(
            Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
            "ReplicaSet",
            slim_replica_set,
        );
        let (deployments, deploy) = reflect(
            Api::<SlimDeployment>::all(client.clone()),
            "Deployment",
            SlimDeployment::slim,
        );
        let (stateful_sets, sts) = reflect(
            Api::<SlimStatefulSet>::all(client.clone()),
            "StatefulSet",
            SlimStatefulSet::slim,
        );
        let (daemon_sets, ds) = reflect(
            Api::<SlimDaemonSet>::all(client.clone()),
            "DaemonSet",
            SlimDaemonSet::slim,
        );
        let (jobs, job) = reflect(Api::<SlimJob>::all(client.clone()), "Job", SlimJob::slim);
        let (cron_jobs, cj) = reflect(
            Api::<SlimCronJob>::all(client.clone()),
            "CronJob",
            SlimCronJob::slim,
        );
        let (namespaces, ns) = reflect(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            "Namespace",
            slim_namespace,
        );
        let (policies, sdp) = PolicyIndex::start(client.clone());
        let watches = Self {
            replica_sets,
            deployments,
            stateful_sets,
            daemon_sets,
            jobs,
            cron_jobs,
            namespaces,
            policies,
        };
        let run = async move {
            futures::future::join3(
                futures::future::join5(rs, deploy, sts, ds, ns),
                futures::future::join(job, cj),
                sdp,
            )
            .await;
        };
        (watches, run)
    }

    /// Resolves once every store has its initial list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.replica_sets.store().wait_until_ready().await?;
        self.deployments.store().wait_until_ready().await?;
        self.stateful_sets.store().wait_until_ready().await?;
        self.daemon_sets.store().wait_until_ready().await?;
        self.jobs.store().wait_until_ready().await?;
        self.cron_jobs.store().wait_until_ready().await?;
        self.namespaces.store().wait_until_ready().await?;
        self.policies.store().wait_until_ready().await
    }

    /// Whether every store has its initial list.
    pub fn is_ready(&self) -> bool {
        self.unlisted().is_empty()
    }

    /// The kinds whose watch has not delivered its initial list yet (or has ended): what a
    /// replica that stays unready is waiting for, e.g. `ShutdownPolicy` while its CRD is
    /// not installed.
    pub fn unlisted(&self) -> Vec<&'static str> {
        fn listed<K>(reflected: &Reflected<K>) -> bool
        where
            K: Resource + Clone + Send + Sync + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone + Default,
        {
            // A dropped writer (the watch ended) is not ready either.
            matches!(
                reflected.store().wait_until_ready().now_or_never(),
                Some(Ok(()))
            )
        }
        [
            ("ReplicaSet", listed(&self.replica_sets)),
            ("Deployment", listed(&self.deployments)),
            ("StatefulSet", listed(&self.stateful_sets)),
            ("DaemonSet", listed(&self.daemon_sets)),
            ("Job", listed(&self.jobs)),
            ("CronJob", listed(&self.cron_jobs)),
            ("Namespace", listed(&self.namespaces)),
            ("ShutdownPolicy", listed(self.policies.reflected())),
        ]
        .into_iter()
        .filter_map(|(kind, listed)| (!listed).then_some(kind))
        .collect()
    }
}

/// A ReplicaSet is read for its owner (the Deployment), its uid and the inject annotation
/// only (the metadata caches drop managedFields, the bulk, and whatever nobody reads).
fn slim_replica_set(meta: &mut PartialObjectMeta<ReplicaSet>) {
    crate::controller::workloads::keep_inject(&mut meta.metadata);
}

/// A Namespace is read for its opt-in label and its deletion only.
fn slim_namespace(meta: &mut PartialObjectMeta<Namespace>) {
    let metadata = &mut meta.metadata;
    metadata.managed_fields = None;
    metadata.annotations = None;
    metadata.labels = metadata
        .labels
        .take()
        .and_then(|mut labels| labels.remove_entry(names::NAMESPACE_LABEL_INJECT))
        .map(|entry| std::collections::BTreeMap::from([entry]));
}

fn meta_summary<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<MetaSummary>
where
    K: Resource + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .map(|object| MetaSummary::from_meta(object.meta()))
}

impl MetadataIndex for Watches {
    fn workload(&self, kind: &str, namespace: &str, name: &str) -> Option<MetaSummary> {
        match kind {
            "ReplicaSet" => meta_summary(&self.replica_sets.store(), namespace, name),
            "Deployment" => meta_summary(&self.deployments.store(), namespace, name),
            "StatefulSet" => meta_summary(&self.stateful_sets.store(), namespace, name),
            "DaemonSet" => meta_summary(&self.daemon_sets.store(), namespace, name),
            "Job" => meta_summary(&self.jobs.store(), namespace, name),
            "CronJob" => meta_summary(&self.cron_jobs.store(), namespace, name),
            _ => None,
        }
    }

    fn namespace_label(&self, namespace: &str) -> Option<String> {
        self.namespaces
            .store()
            .get(&ObjectRef::new(namespace))
            .and_then(|ns| ns.labels().get(names::NAMESPACE_LABEL_INJECT).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    fn config_map(name: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "shop"},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_resynced_from_the_store() {
        let (reader, mut writer) = reflector::store::<ConfigMap>();
        for i in 0..3 {
            writer.apply_watcher_event(&Event::Apply(config_map(&format!("cm-{i}"))));
        }
        let reflected = Reflected::from_store(reader);
        let subscriber = reflected.subscribe();
        // More changes than the channel holds: the oldest are overwritten.
        for _ in 0..FAN_OUT_CAPACITY + 5 {
            let _ = reflected
                .changes
                .get()
                .expect("subscribed")
                .send(Sent::Applied(ObjectRef::from_obj(&config_map("cm-0"))));
        }
        drop(reflected);
        let changes: Vec<_> = subscriber.collect().await;
        let resynced: Vec<String> = changes
            .iter()
            .take(3)
            .filter_map(|c| match c {
                Change::Applied(o) => o.metadata.name.clone(),
                Change::Deleted(_) => None,
            })
            .collect();
        let mut sorted = resynced.clone();
        sorted.sort();
        assert_eq!(sorted, ["cm-0", "cm-1", "cm-2"], "{resynced:?}");
        // The resync stands in for what was missed; what is still in the channel follows.
        assert_eq!(changes.len(), 3 + FAN_OUT_CAPACITY);
    }

    #[test]
    fn namespaces_and_replica_sets_keep_only_what_is_read() {
        let mut ns: PartialObjectMeta<Namespace> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {
                names::NAMESPACE_LABEL_INJECT: "enabled",
                "kubernetes.io/metadata.name": "shop"},
                "annotations": {"owner": "team-a"}}
        }))
        .unwrap();
        slim_namespace(&mut ns);
        assert_eq!(ns.metadata.annotations, None);
        assert_eq!(
            ns.metadata
                .labels
                .as_ref()
                .map(|l| l.keys().cloned().collect::<Vec<_>>()),
            Some(vec![names::NAMESPACE_LABEL_INJECT.to_owned()])
        );
        let mut rs: PartialObjectMeta<ReplicaSet> = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "shop", "uid": "u1",
                "labels": {"pod-template-hash": "abc"},
                "annotations": {"deployment.kubernetes.io/revision": "3"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                    "name": "web", "uid": "d1", "controller": true}]}
        }))
        .unwrap();
        slim_replica_set(&mut rs);
        let summary = MetaSummary::from_meta(&rs.metadata);
        assert_eq!(
            summary.controller,
            Some(("Deployment".into(), "web".into()))
        );
        assert_eq!(summary.uid.as_deref(), Some("u1"));
        assert_eq!((rs.metadata.labels, rs.metadata.annotations), (None, None));
    }

    #[test]
    fn no_channel_is_held_until_someone_subscribes() {
        let (reader, _writer) = reflector::store::<ConfigMap>();
        let reflected = Reflected::from_store(reader);
        let clone = reflected.clone();
        assert!(reflected.changes.get().is_none());
        let _subscriber = clone.subscribe();
        // Clones share the channel: the reflector's copy sends to the later subscriber.
        assert!(reflected.changes.get().is_some());
    }

    #[tokio::test]
    async fn subscribers_see_applies_and_deletions_in_order() {
        let (reader, mut writer) = reflector::store::<ConfigMap>();
        writer.apply_watcher_event(&Event::Apply(config_map("a")));
        let reflected = Reflected::from_store(reader);
        let subscriber = reflected.subscribe();
        let _ = reflected
            .changes
            .get()
            .expect("subscribed")
            .send(Sent::Applied(ObjectRef::from_obj(&config_map("a"))));
        // Applied, then deleted before the subscriber read either: the store no longer has
        // it, so only the deletion is passed on.
        let _ = reflected
            .changes
            .get()
            .expect("subscribed")
            .send(Sent::Applied(ObjectRef::from_obj(&config_map("b"))));
        let _ = reflected
            .changes
            .get()
            .expect("subscribed")
            .send(Sent::Deleted(Gone::of(&config_map("b"))));
        drop(reflected);
        let changes: Vec<_> = subscriber.collect().await;
        match changes.as_slice() {
            [Change::Applied(a), Change::Deleted(gone)] => {
                assert_eq!(a.metadata.name.as_deref(), Some("a"));
                assert_eq!(gone.name, "b");
                assert_eq!(gone.namespace.as_deref(), Some("shop"));
            }
            other => panic!("{other:?}"),
        }
    }
}
