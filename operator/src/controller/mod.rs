//! The ShutdownPolicy controller: workload adoption, the pod observer and the status
//! writer. They run on the Lease holder only; losing the lease ends [`run`] with
//! [`Error::LostLease`] (the process exits and restarts as a follower).
//!
//! The operator's `run` subcommand wires it (`crate::runtime`): the replica's watches
//! ([`crate::watches::Watches`]) are started first, on every replica; [`run`] subscribes
//! to them when it wins the lease.

mod adopt;
pub mod book;
pub mod lookup;
pub mod metrics;
pub mod pods;
pub mod record;
pub mod workloads;
pub mod writer;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use lameduck_proto::names::NAMESPACE_LABEL_INJECT;
use lameduck_proto::opt_in;

pub use book::{PolicyKey, StatusBook};
pub use lookup::PolicyIndex;
pub use metrics::{
    ControllerLabels, ControllerMetrics, ErrorLabels, PolicyLabels, RESTARTS_OMITTED, RestartLabels,
};
pub use record::PolicyRecord;

use crate::watches::Watches;
use book::FOLLOWER_RETENTION;
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
            Ok(lease) => lease_is_free(lease.as_ref(), Timestamp::now(), warm_up),
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
                mark_handed_over(&lease_api, &config.lease_name).await;
                return Ok(());
            }
        }
    }
}

/// The Lease annotation a leader writes when it hands over at a graceful shutdown, after
/// its last status write: the time, RFC 3339.
pub const ANNOTATION_HANDED_OVER: &str = "lameduck.dev/handed-over-at";

/// Whether a new process may compete for the Lease at once: it does not exist yet, or
/// nobody holds it and a leader handed it over within `window` of `now` (it wrote every
/// observation first). A Lease without holder is not enough: a replica that finds another
/// holder's lease expired (a crashed or partitioned leader) clears it before taking it,
/// and a new process that won in between would never fold in the shutdowns it did not
/// see.
fn lease_is_free(lease: Option<&Lease>, now: Timestamp, window: Duration) -> bool {
    let Some(lease) = lease else {
        return true;
    };
    let held = lease
        .spec
        .as_ref()
        .and_then(|spec| spec.holder_identity.as_deref())
        .is_some_and(|holder| !holder.is_empty());
    let handed_over = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_HANDED_OVER))
        .and_then(|at| at.parse::<Timestamp>().ok())
        .is_some_and(|at| {
            let age = now.as_millisecond() - at.as_millisecond();
            (0..=i64::try_from(window.as_millis()).unwrap_or(i64::MAX)).contains(&age)
        });
    !held && handed_over
}

/// Marks the Lease as handed over now (see [`lease_is_free`]); the release itself follows
/// when the lease manager is dropped.
async fn mark_handed_over(lease_api: &Api<Lease>, name: &str) {
    let patch = serde_json::json!({"metadata": {"annotations": {
        ANNOTATION_HANDED_OVER: Timestamp::now().to_string()
    }}});
    if let Err(error) = lease_api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(%error, "could not mark the Lease as handed over; a new replica will wait its warm-up");
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
async fn lead(ctx: Arc<Context>, watches: Watches, status_interval: Duration) {
    // The statuses are loaded from the index, and adoption reads the namespace label: wait
    // until every watch has its initial list.
    if watches.wait_until_ready().await.is_err() {
        return;
    }
    let deployments = adopt::adopt::<workloads::SlimDeployment>(ctx.clone(), &watches);
    let statefulsets = adopt::adopt::<workloads::SlimStatefulSet>(ctx.clone(), &watches);
    let daemonsets = adopt::adopt::<workloads::SlimDaemonSet>(ctx.clone(), &watches);
    let jobs = adopt::adopt::<workloads::SlimJob>(ctx.clone(), &watches);
    let cron_jobs = adopt::adopt::<workloads::SlimCronJob>(ctx.clone(), &watches);
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
                    controller: adopt::STATUS_CONTROLLER,
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
                            controller: adopt::STATUS_CONTROLLER,
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
    tokio::join!(
        deployments,
        statefulsets,
        daemonsets,
        jobs,
        cron_jobs,
        writer
    );
}

#[cfg(test)]
mod tests;
