//! The ShutdownPolicy controller: workload adoption, the pod observer and the status
//! writer. They run on the Lease holder only; losing the lease ends [`run`] with
//! [`Error::LostLease`] (the process exits and restarts as a follower).
//!
//! The operator's `run` subcommand wires it (`crate::runtime`): the replica's watches
//! ([`crate::watches::Watches`]) are started first, on every replica; [`run`] subscribes
//! to them when it wins the lease.

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
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use lameduck_proto::names::NAMESPACE_LABEL_INJECT;
use lameduck_proto::opt_in;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use lookup::PolicyIndex;
pub use record::PolicyRecord;

use crate::observe::Observation;
use crate::watches::{Change, Watches};
use lameduck_proto::Outcome;
use tokio_util::sync::CancellationToken;

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

/// Label set of the reconcile duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `deployments`, `statefulsets`, `daemonsets` (adoption) or `status` (the writer).
    pub controller: &'static str,
}

/// Label set of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// As in [`ControllerLabels`].
    pub controller: &'static str,
    /// What failed: [`Error::kind`].
    pub kind: &'static str,
}

impl Error {
    /// A short name of what failed, for the error counter: `api_<status code>` for an
    /// answer of the API server, `api` for other client errors, `lease`, `lost_lease`,
    /// `missing_field`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube {
                source: kube::Error::Api(status),
                ..
            } => match status.code {
                400 => "api_400",
                403 => "api_403",
                404 => "api_404",
                409 => "api_409",
                422 => "api_422",
                429 => "api_429",
                500..=599 => "api_5xx",
                _ => "api_other",
            },
            Self::Kube { .. } => "api",
            Self::Lease(_) => "lease",
            Self::LostLease => "lost_lease",
            Self::MissingField(_) => "missing_field",
        }
    }
}

/// The controller's metrics.
#[derive(Debug, Clone)]
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
    /// Reconcile and status-write errors, by controller and kind of error.
    pub errors: Family<ErrorLabels, Counter>,
    /// Time a reconcile (adoption) or a status-write pass takes, by controller.
    pub reconcile_duration: Family<ControllerLabels, Histogram>,
    /// Status patches sent.
    pub status_patches: Counter,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            observations: Family::default(),
            kills: Family::default(),
            timeouts: Family::default(),
            container_restart_shutdowns: Family::default(),
            unobserved: Family::default(),
            recommendation: Family::default(),
            terminating: Gauge::default(),
            errors: Family::default(),
            // 1 ms … ~16 s: a reconcile is one or two API calls, a status pass one patch per
            // policy with news.
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            status_patches: Counter::default(),
        }
    }
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
            "Reconcile and status-write errors, by controller and kind of error",
            metrics.errors.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time a reconcile (adoption) or a status-write pass takes, by controller",
            metrics.reconcile_duration.clone(),
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
    /// The replica's watches (their futures must be running): the ShutdownPolicy index
    /// shared with the webhook, the workloads that trigger adoption, and the Namespaces
    /// whose `lameduck.dev/inject=enabled` label opts in every workload of the namespace
    /// that does not say otherwise.
    pub watches: Watches,
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
}

impl ControllerConfig {
    /// Defaults: Lease `lameduck-operator`, 12 s lease (a crashed leader is replaced within
    /// about 13 s: the lease runs out at most 12 s after its last renewal), status every 5 s.
    pub fn new(
        watches: Watches,
        identity: impl Into<String>,
        lease_namespace: impl Into<String>,
    ) -> Self {
        Self {
            watches,
            identity: identity.into(),
            lease_namespace: lease_namespace.into(),
            lease_name: LEASE_NAME.into(),
            lease_seconds: 12,
            status_interval: Duration::from_secs(5),
            metrics: ControllerMetrics::default(),
        }
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
    /// The status book. A panic while it was held (which ends the process: every task is
    /// supervised) leaves its contents as they were; an observation is never dropped for
    /// the lock's sake.
    pub fn book(&self) -> std::sync::MutexGuard<'_, StatusBook> {
        self.book.lock().unwrap_or_else(|poisoned| {
            tracing::error!("the status book's lock was poisoned by a panic; using its contents");
            poisoned.into_inner()
        })
    }

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
                    opt_in::namespace_label_enables(
                        ns.labels().get(NAMESPACE_LABEL_INJECT).map(String::as_str),
                    )
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
/// writer until the lease is lost ([`Error::LostLease`]), leader election fails, or
/// `shutdown` is cancelled. On `shutdown` a leader writes what it observed one last time and
/// returns `Ok(())`; dropping the future releases the lease, so the next leader starts at
/// once and nothing observed is lost.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let lease_api: Api<Lease> = Api::namespaced(client.clone(), &config.lease_namespace);
    let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
        .with_namespace(&config.lease_namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_seconds)
        .with_grace(config.lease_seconds.div_ceil(3).max(1))
        .build()
        .await?;
    let mut ctx = Context::new(
        client,
        config.watches.policies.clone(),
        config.metrics.clone(),
        Some(config.identity.clone()),
    );
    ctx.namespaces = Some(config.watches.namespaces.store());
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
            ctx.book().prune_before(cutoff);
        }
    };
    tokio::pin!(follower_pruning);
    // A new process competes for a Lease that someone holds only after it has watched
    // pods for a while: a replica that ran before it saw the shutdowns it did not (a
    // leader that crashed wrote none of its last ones), and takes over when the lease runs
    // out; a new process that won instead would never fold those observations in.
    let warm_up = Duration::from_secs(config.lease_seconds * 2);
    loop {
        let free = match lease_api.get_opt(&config.lease_name).await {
            Ok(lease) => lease_is_free(lease.as_ref()),
            Err(error) => {
                tracing::warn!(%error, "reading the Lease failed; retrying");
                false
            }
        };
        if free || started.elapsed() >= warm_up {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
            () = &mut observer => return Err(Error::LostLease),
            () = &mut follower_pruning => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    let (mut leader, lease_task) = manager.watch().await;
    tracing::info!(identity = %config.identity, lease = %config.lease_name, "waiting for the leader lease");
    {
        while !*leader.borrow_and_update() {
            tokio::select! {
                changed = leader.changed() => {
                    if changed.is_err() {
                        return Err(lease_error(lease_task).await);
                    }
                }
                () = &mut observer => return Err(Error::LostLease),
                () = &mut follower_pruning => {}
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
    tracing::info!(identity = %config.identity, "leading: starting the ShutdownPolicy controller");
    // The old leader counted those it saw; the followers' counts would double them.
    ctx.book().forget_unobserved();
    let work = lead(ctx.clone(), config.watches.clone(), config.status_interval);
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
            () = shutdown.cancelled() => {
                // Still the leader: what was observed since the last write goes into the
                // statuses now, before the lease is released.
                match writer::write_statuses(&ctx, Timestamp::now()).await {
                    Ok(patches) => {
                        ctx.metrics.status_patches.inc_by(patches as u64);
                        tracing::info!(patches, "wrote the statuses before handing over the lease");
                    }
                    Err(error) => tracing::warn!(%error, "last status write failed"),
                }
                return Ok(());
            }
        }
    }
}

/// Whether nobody holds the Lease: it does not exist yet, or its holder released it
/// (a graceful shutdown writes every observation first).
fn lease_is_free(lease: Option<&Lease>) -> bool {
    lease
        .and_then(|lease| lease.spec.as_ref())
        .and_then(|spec| spec.holder_identity.as_deref())
        .is_none_or(str::is_empty)
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
async fn lead(ctx: Arc<Context>, watches: Watches, status_interval: Duration) {
    // The statuses are loaded from the index, and adoption reads the namespace label: wait
    // until every watch has its initial list.
    if watches.wait_until_ready().await.is_err() {
        return;
    }
    let deployments = adopt::<Deployment>(ctx.clone(), &watches);
    let statefulsets = adopt::<StatefulSet>(ctx.clone(), &watches);
    let daemonsets = adopt::<DaemonSet>(ctx.clone(), &watches);
    let writer = async {
        let mut ticks = tokio::time::interval(status_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let started = std::time::Instant::now();
            let written = writer::write_statuses(&ctx, Timestamp::now()).await;
            ctx.metrics
                .reconcile_duration
                .get_or_create(&ControllerLabels {
                    controller: STATUS_CONTROLLER,
                })
                .observe(started.elapsed().as_secs_f64());
            match written {
                Ok(patches) => {
                    ctx.metrics.status_patches.inc_by(patches as u64);
                }
                Err(error) => {
                    ctx.metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            controller: STATUS_CONTROLLER,
                            kind: error.kind(),
                        })
                        .inc();
                    tracing::warn!(%error, "status write failed");
                }
            }
            let store = ctx.policies.store();
            ctx.book().retain(
                |key| {
                    store
                        .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace))
                        .is_some()
                },
                |namespace| ctx.namespace_terminating(namespace),
                Timestamp::now().as_millisecond(),
            );
        }
    };
    tokio::join!(deployments, statefulsets, daemonsets, writer);
}

/// How long a follower keeps an observation: the leader records observations every few
/// seconds, so anything older was recorded by it (or its successor saw it as a follower).
const FOLLOWER_RETENTION: Duration = Duration::from_secs(120);

/// Reconciles of one workload kind that may run at once.
const RECONCILE_CONCURRENCY: u16 = 4;

/// Adoption of one workload kind, triggered by the replica's watches (subscribed now: the
/// first pass reconciles every workload the store already holds).
async fn adopt<W: workloads::Workload>(ctx: Arc<Context>, watches: &Watches) {
    let workloads = W::reflected(watches);
    let reader = workloads.store();
    // A deleted workload's remaining shutdowns are not recorded (its record closes).
    let trigger = {
        let ctx = ctx.clone();
        workloads.subscribe().filter_map(move |change| {
            std::future::ready(match change {
                Change::Applied(workload) => Some(workload),
                Change::Deleted(workload) => {
                    workloads::close_target(&ctx, workload.as_ref());
                    None
                }
            })
        })
    };
    // A namespace's opt-in label changed: look at its workloads again. The namespace store
    // holds the change before it is passed on, so the reconcile reads the new label.
    let in_namespace = {
        let reader = reader.clone();
        move |namespace: Arc<PartialObjectMeta<Namespace>>| {
            let name = namespace.name_any();
            reader
                .state()
                .into_iter()
                .filter(|workload| workload.namespace().as_deref() == Some(name.as_str()))
                .map(|workload| reflector::ObjectRef::from_obj(workload.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    Controller::for_shared_stream(trigger, reader)
        .owns_shared_stream(watches.policies.reflected().applied())
        .watches_shared_stream(watches.namespaces.applied(), in_namespace)
        .reconcile_all_on(futures::stream::once(std::future::ready(())))
        // Each reconcile may create a policy and list pods: at start-up with hundreds of
        // workloads, unbounded concurrency holds hundreds of responses in memory at once
        // (a peak the allocator keeps).
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
        )
        .run(timed_reconcile::<W>, error_policy::<W>, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "workload reconcile");
            }
        })
        .await;
}

/// The status writer's label in the controller metrics.
const STATUS_CONTROLLER: &str = "status";

/// [`workloads::reconcile`], timed into the reconcile duration histogram.
async fn timed_reconcile<W: workloads::Workload>(
    workload: Arc<W>,
    ctx: Arc<Context>,
) -> Result<Action> {
    let started = std::time::Instant::now();
    let result = workloads::reconcile::<W>(workload, ctx.clone()).await;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ControllerLabels {
            controller: W::CONTROLLER,
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy<W: workloads::Workload>(
    _workload: Arc<W>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels {
            controller: W::CONTROLLER,
            kind: error.kind(),
        })
        .inc();
    tracing::warn!(%error, "workload reconcile failed");
    Action::requeue(Duration::from_secs(30))
}

#[cfg(test)]
mod tests;
