//! The ShutdownPolicy controller: workload adoption, the pod observer and the status
//! writer. They run on the Lease holder only; losing the lease ends [`run`] with
//! [`Error::LostLease`] (the process exits and restarts as a follower).
//!
//! The `run` subcommand wires it in [`crate::runtime`]: every replica keeps a
//! [`PolicyIndex`] (`PolicyIndex::with_deletions`) that the webhook reads, and [`run`] with
//! a [`ControllerConfig`] competes for the Lease.

pub mod lookup;
pub mod pods;
pub mod record;
pub mod workloads;
pub mod writer;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use lameduck_proto::names::{NAMESPACE_INJECT_ENABLED, NAMESPACE_LABEL_INJECT};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use lookup::PolicyIndex;
pub use record::PolicyRecord;

use crate::api::ShutdownPolicy;
use crate::observe::Observation;
use lameduck_proto::Outcome;

/// Field manager of the operator's writes.
pub const FIELD_MANAGER: &str = "lameduck-operator";
/// Name of the leader-election Lease (in the operator's namespace).
pub const LEASE_NAME: &str = "lameduck-operator";

/// Errors of the controller; each names the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was being done.
        action: &'static str,
        /// The object concerned (`namespace/name`).
        object: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Leader election failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica holds the lease now; the process should exit and restart as a follower.
    #[error("lost the leader lease")]
    LostLease,
    /// An object lacks a field the controller needs.
    #[error("object without {0}")]
    MissingField(&'static str),
    /// A lock was poisoned by a panicking task.
    #[error("internal state poisoned")]
    Poisoned,
}

/// The controller's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A policy's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl PolicyKey {
    fn labels(&self) -> PolicyLabels {
        PolicyLabels {
            namespace: self.namespace.clone(),
            policy: self.name.clone(),
        }
    }
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The leader's working copies of the policies' statuses.
#[derive(Debug, Default)]
pub struct StatusBook {
    records: HashMap<PolicyKey, PolicyRecord>,
}

impl StatusBook {
    /// The record of one policy, created empty (it loads the status at the next write).
    pub fn entry(&mut self, namespace: String, name: String) -> &mut PolicyRecord {
        self.records
            .entry(PolicyKey { namespace, name })
            .or_default()
    }

    /// Drops queued observations of pods that finished before `unix_ms`, and the records
    /// left with nothing (followers: they only queue).
    pub fn prune_before(&mut self, unix_ms: i64) {
        self.records.retain(|_, record| {
            record.prune_before(unix_ms);
            record.is_loaded() || record.has_pending()
        });
    }

    /// Forgets the queued counts of unobserved pods (on taking the lease).
    pub fn forget_unobserved(&mut self) {
        for record in self.records.values_mut() {
            record.forget_unobserved();
        }
    }

    /// Forgets what describes objects that are gone: everything in a namespace being
    /// deleted, the record of a policy that no longer exists (what it queued included), and
    /// observations that waited [`FOLLOWER_RETENTION`] for a policy that never appeared.
    pub fn retain(
        &mut self,
        exists: impl Fn(&PolicyKey) -> bool,
        namespace_terminating: impl Fn(&str) -> bool,
        now_unix_ms: i64,
    ) {
        self.records.retain(|key, record| {
            if namespace_terminating(&key.namespace) {
                return false;
            }
            if exists(key) {
                return true;
            }
            if record.is_loaded() || record.is_closing() {
                return false;
            }
            record.prune_before(now_unix_ms - FOLLOWER_RETENTION.as_millis() as i64);
            record.has_pending_observations()
        });
    }

    /// Number of policies with a record (the memory the book holds).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no policy has a record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Label set of the per-policy metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub policy: String,
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

/// Label set of the reconcile error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `workloads` or `status`.
    pub controller: &'static str,
}

/// The controller's metrics.
#[derive(Debug, Clone, Default)]
pub struct ControllerMetrics {
    /// Observed shutdowns, per policy.
    pub observations: Family<PolicyLabels, Counter>,
    /// Pods SIGKILLed at their own deadline, per policy.
    pub kills: Family<PolicyLabels, Counter>,
    /// Shutdowns whose application did not acknowledge before the sidecar's deadline
    /// (within the pod's own grace period), per policy.
    pub timeouts: Family<PolicyLabels, Counter>,
    /// Container-level shutdowns followed by a restart of the container, per policy and
    /// outcome.
    pub container_restart_shutdowns: Family<RestartLabels, Counter>,
    /// Terminating pods that disappeared unobserved, per policy.
    pub unobserved: Family<PolicyLabels, Counter>,
    /// The applied grace-period recommendation, per policy.
    pub recommendation: Family<PolicyLabels, Gauge>,
    /// Terminating injected pods being followed.
    pub terminating: Gauge,
    /// Reconcile and status-write errors.
    pub errors: Family<ControllerLabels, Counter>,
    /// Status patches sent.
    pub status_patches: Counter,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them (prefix of the registry applies).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "observations",
            "Observed pod shutdowns, per ShutdownPolicy",
            metrics.observations.clone(),
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
            "terminating_pods",
            "Terminating injected pods being followed",
            metrics.terminating.clone(),
        );
        registry.register(
            "controller_errors",
            "Reconcile and status-write errors",
            metrics.errors.clone(),
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
        self.observations.remove(&labels);
        self.kills.remove(&labels);
        self.timeouts.remove(&labels);
        self.unobserved.remove(&labels);
        self.recommendation.remove(&labels);
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

/// How the controller runs.
#[derive(Clone)]
pub struct ControllerConfig {
    /// The ShutdownPolicy index (shared with the webhook; its reflector must be running).
    pub policies: PolicyIndex,
    /// This replica's identity in the lease (the pod name).
    pub identity: String,
    /// Namespace of the Lease (the operator's own).
    pub lease_namespace: String,
    /// Name of the Lease.
    pub lease_name: String,
    /// Lease duration in seconds.
    pub lease_seconds: u64,
    /// Time between two status writes (at most one patch per policy per interval).
    pub status_interval: Duration,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// The Namespace cache (the webhook's): its `lameduck.dev/inject=enabled` label opts
    /// in every workload of the namespace that does not say otherwise. Without it, only
    /// annotations opt workloads in.
    pub namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
}

impl ControllerConfig {
    /// Defaults: Lease `lameduck-operator`, 12 s lease (a crashed leader is replaced within
    /// about 13 s: the lease runs out at most 12 s after its last renewal), status every 5 s.
    pub fn new(
        policies: PolicyIndex,
        identity: impl Into<String>,
        lease_namespace: impl Into<String>,
    ) -> Self {
        Self {
            policies,
            identity: identity.into(),
            lease_namespace: lease_namespace.into(),
            lease_name: LEASE_NAME.into(),
            lease_seconds: 12,
            status_interval: Duration::from_secs(5),
            metrics: ControllerMetrics::default(),
            namespaces: None,
        }
    }

    /// Reads the namespace opt-in label from `namespaces` (a running reflector's store).
    pub fn with_namespaces(mut self, namespaces: Store<PartialObjectMeta<Namespace>>) -> Self {
        self.namespaces = Some(namespaces);
        self
    }

    /// Uses registered metrics.
    pub fn with_metrics(mut self, metrics: ControllerMetrics) -> Self {
        self.metrics = metrics;
        self
    }
}

/// Shared state of the controller's tasks.
pub struct Context {
    /// API client.
    pub client: Client,
    /// The ShutdownPolicy index.
    pub policies: PolicyIndex,
    /// Working copies of the statuses.
    pub book: Mutex<StatusBook>,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// The Namespace cache, when namespaces can opt in.
    pub namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
}

impl Context {
    /// Whether `namespace` is being deleted (a deletion timestamp in the Namespace cache).
    /// Nothing is created or recorded there any more.
    pub fn namespace_terminating(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_some_and(|store| {
            store
                .get(&reflector::ObjectRef::new(namespace))
                .is_some_and(|ns| ns.metadata.deletion_timestamp.is_some())
        })
    }

    /// Whether `namespace` carries `lameduck.dev/inject=enabled`.
    pub fn namespace_opted_in(&self, namespace: &str) -> bool {
        self.namespaces.as_ref().is_some_and(|store| {
            store
                .get(&reflector::ObjectRef::new(namespace))
                .is_some_and(|ns| {
                    ns.labels().get(NAMESPACE_LABEL_INJECT).map(String::as_str)
                        == Some(NAMESPACE_INJECT_ENABLED)
                })
        })
    }

    /// A context for `client`.
    pub fn new(
        client: Client,
        policies: PolicyIndex,
        metrics: ControllerMetrics,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            policies,
            book: Mutex::new(StatusBook::default()),
            metrics,
            namespaces: None,
        }
    }
}

/// Runs the controller: waits for the lease, then adoption, the pod observer and the status
/// writer until the lease is lost ([`Error::LostLease`]) or leader election fails. Returns
/// only with an error; cancel it (drop the future) to stop, which releases the lease.
pub async fn run(client: Client, config: ControllerConfig) -> Result<()> {
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_seconds)
        .with_grace(config.lease_seconds.div_ceil(3).max(1))
        .build()
        .await?;
    let (mut leader, lease_task) = manager.watch().await;
    let mut ctx = Context::new(
        client,
        config.policies.clone(),
        config.metrics.clone(),
        Some(config.identity.clone()),
    );
    ctx.namespaces = config.namespaces.clone();
    let ctx = Arc::new(ctx);
    // Every replica observes pods, the followers too: pods that finish while the lease
    // changes hands (up to a lease duration) are gone from the API by the time a new
    // leader lists them. The new leader folds what it saw after the last observation the
    // old leader recorded (PolicyRecord::status); followers keep only recent observations.
    let observer = pods::observe_pods(ctx.clone());
    tokio::pin!(observer);
    let follower_pruning = async {
        let mut ticks = tokio::time::interval(FOLLOWER_RETENTION / 4);
        loop {
            ticks.tick().await;
            let cutoff = Timestamp::now().as_millisecond() - FOLLOWER_RETENTION.as_millis() as i64;
            if let Ok(mut book) = ctx.book.lock() {
                book.prune_before(cutoff);
            }
        }
    };
    tracing::info!(identity = %config.identity, lease = %config.lease_name, "waiting for the leader lease");
    {
        tokio::pin!(follower_pruning);
        while !*leader.borrow_and_update() {
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        return Err(lease_error(lease_task).await);
                    }
                }
                () = &mut observer => return Err(Error::LostLease),
                () = &mut follower_pruning => {}
            }
        }
    }
    tracing::info!(identity = %config.identity, "leading: starting the ShutdownPolicy controller");
    if let Ok(mut book) = ctx.book.lock() {
        // The old leader counted those it saw; the followers' counts would double them.
        book.forget_unobserved();
    }
    let work = lead(ctx, config.status_interval);
    tokio::pin!(work);
    loop {
        tokio::select! {
            () = &mut work => return Err(Error::LostLease),
            () = &mut observer => return Err(Error::LostLease),
            changed = leader.changed() => {
                if changed.is_err() {
                    return Err(lease_error(lease_task).await);
                }
                if !*leader.borrow_and_update() {
                    tracing::warn!("lost the leader lease; exiting");
                    return Err(Error::LostLease);
                }
            }
        }
    }
}

async fn lease_error(
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
) -> Error {
    match task.await {
        Ok(Err(error)) => Error::Lease(error),
        _ => Error::LostLease,
    }
}

/// The leader's work: never returns while the API server is reachable.
async fn lead(ctx: Arc<Context>, status_interval: Duration) {
    // The statuses are loaded from the index: wait until it has listed every policy.
    if ctx.policies.store().wait_until_ready().await.is_err() {
        return;
    }
    // Adoption reads the namespace label: without the listed namespaces, workloads opted
    // in by their namespace would wait for their next change.
    if let Some(namespaces) = &ctx.namespaces
        && namespaces.wait_until_ready().await.is_err()
    {
        return;
    }
    let deployments = adopt::<Deployment>(ctx.clone());
    let statefulsets = adopt::<StatefulSet>(ctx.clone());
    let daemonsets = adopt::<DaemonSet>(ctx.clone());
    let writer = async {
        let mut ticks = tokio::time::interval(status_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match writer::write_statuses(&ctx, Timestamp::now()).await {
                Ok(patches) => {
                    ctx.metrics.status_patches.inc_by(patches as u64);
                }
                Err(error) => {
                    ctx.metrics
                        .errors
                        .get_or_create(&ControllerLabels {
                            controller: "status",
                        })
                        .inc();
                    tracing::warn!(%error, "status write failed");
                }
            }
            let store = ctx.policies.store().clone();
            if let Ok(mut book) = ctx.book.lock() {
                book.retain(
                    |key| {
                        store
                            .get(
                                &kube::runtime::reflector::ObjectRef::new(&key.name)
                                    .within(&key.namespace),
                            )
                            .is_some()
                    },
                    |namespace| ctx.namespace_terminating(namespace),
                    Timestamp::now().as_millisecond(),
                );
            }
        }
    };
    tokio::join!(deployments, statefulsets, daemonsets, writer);
}

/// How long a follower keeps an observation: the leader records observations every few
/// seconds, so anything older was recorded by it (or its successor saw it as a follower).
const FOLLOWER_RETENTION: Duration = Duration::from_secs(120);

/// Objects per page of a watch's initial list. The default (500) holds a few MiB of JSON and
/// its decoded objects at once, a peak the allocator keeps long after the list.
pub(crate) const LIST_PAGE_SIZE: u32 = 100;

/// The configuration of the controller's watches: any cached version, small pages.
pub(crate) fn list_config() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .page_size(LIST_PAGE_SIZE)
}

/// Reconciles of one workload kind that may run at once.
const RECONCILE_CONCURRENCY: u16 = 4;

async fn adopt<W: workloads::Workload>(ctx: Arc<Context>) {
    let workloads = Api::<W>::all(ctx.client.clone());
    let policies = Api::<ShutdownPolicy>::all(ctx.client.clone());
    // The controller's cache of every workload keeps only what reconciling reads.
    let (reader, writer) = reflector::store();
    // A deleted workload's remaining shutdowns are not recorded (its record closes).
    let on_delete = {
        let ctx = ctx.clone();
        move |event: &Result<watcher::Event<W>, watcher::Error>| {
            if let Ok(watcher::Event::Delete(workload)) = event {
                workloads::close_target(&ctx, workload);
            }
        }
    };
    let trigger = watcher(workloads, list_config())
        .default_backoff()
        .modify(W::slim)
        .reflect(writer)
        .inspect(on_delete)
        .applied_objects();
    // A namespace's opt-in label changed: look at its workloads again.
    let in_namespace = {
        let reader = reader.clone();
        move |namespace: PartialObjectMeta<Namespace>| {
            let name = namespace.name_any();
            reader
                .state()
                .into_iter()
                .filter(|workload| workload.namespace().as_deref() == Some(name.as_str()))
                .map(|workload| reflector::ObjectRef::from_obj(workload.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let namespaces = Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone());
    Controller::for_stream(trigger, reader)
        .owns(policies, list_config())
        .watches(namespaces, list_config(), in_namespace)
        // Each reconcile may create a policy and list pods: at start-up with hundreds of
        // workloads, unbounded concurrency holds hundreds of responses in memory at once
        // (a peak the allocator keeps).
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .run(workloads::reconcile::<W>, error_policy::<W>, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "workload reconcile");
            }
        })
        .await;
}

fn error_policy<W: workloads::Workload>(
    _workload: Arc<W>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ControllerLabels {
            controller: "workloads",
        })
        .inc();
    tracing::warn!(%error, "workload reconcile failed");
    Action::requeue(Duration::from_secs(30))
}

#[cfg(test)]
mod tests;
