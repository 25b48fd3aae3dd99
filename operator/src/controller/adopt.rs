//! Adoption: one kube-runtime controller per workload kind, triggered by the replica's
//! watches, that gives every opted-in workload its ShutdownPolicy.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector;

use super::metrics::{ControllerLabels, ErrorLabels};
use super::{Context, Error, Result, workloads};
use crate::watches::{Change, Watches};

/// Reconciles of one workload kind that may run at once.
const RECONCILE_CONCURRENCY: u16 = 4;

/// Adoption of one workload kind, triggered by the replica's watches (subscribed now: the
/// first pass reconciles every workload the store already holds).
pub(super) async fn adopt<W: workloads::Workload>(ctx: Arc<Context>, watches: &Watches) {
    let workloads = W::reflected(watches);
    let reader = workloads.store();
    // A deleted workload's remaining shutdowns are not recorded (its record closes).
    let trigger = {
        let ctx = ctx.clone();
        workloads.subscribe().filter_map(move |change| {
            std::future::ready(match change {
                Change::Applied(workload) => Some(workload),
                Change::Deleted(gone) => {
                    if let Some(namespace) = gone.namespace {
                        workloads::close_target_named::<W>(
                            &ctx,
                            namespace,
                            &gone.name,
                            gone.uid.as_deref(),
                        );
                    }
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
pub(super) const STATUS_CONTROLLER: &str = "status";

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
