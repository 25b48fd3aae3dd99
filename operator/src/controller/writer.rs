//! The status writer: on every tick, folds the observations gathered since the last one
//! into each policy's status and patches it — at most one status patch per policy per tick,
//! and none when nothing changed. Kills and recommendation changes become Events.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::record::Notice;
use super::{Context, Error, PolicyKey, Result};
use crate::api::{ShutdownPolicy, ShutdownPolicyStatus};

/// Top-level status fields that are omitted when empty; a merge patch must null them so
/// that a value that went away is removed.
const OPTIONAL_STATUS_FIELDS: [&str; 8] = [
    "conditions",
    "observedGeneration",
    "lastObservationTime",
    "durations",
    "phases",
    "recommendation",
    "pods",
    "histogram",
];

/// One pass over every known policy. Returns the number of status patches sent.
pub async fn write_statuses(ctx: &Context, now: Timestamp) -> Result<usize> {
    let mut patches = 0;
    for policy in ctx.policies.store().state() {
        let (Some(namespace), Some(name)) = (policy.namespace(), policy.metadata.name.clone())
        else {
            continue;
        };
        let key = PolicyKey { namespace, name };
        let (status, grace, notices) = {
            let mut book = ctx.book.lock().map_err(|_| Error::Poisoned)?;
            let record = book.entry(key.namespace.clone(), key.name.clone());
            let (status, recommendation) = record.status(&policy, now);
            (
                status,
                recommendation.grace_period_seconds,
                record.take_notices(),
            )
        };
        if let Some(seconds) = grace {
            ctx.metrics
                .recommendation
                .get_or_create(&key.labels())
                .set(i64::from(seconds));
        }
        if policy.status.as_ref() != Some(&status) {
            patch_status(ctx, &key, &status).await?;
            patches += 1;
        }
        for notice in notices {
            publish(ctx, &policy, &status, notice).await;
        }
    }
    Ok(patches)
}

/// The merge patch that makes `.status` equal to `status`.
pub fn status_patch(status: &ShutdownPolicyStatus) -> serde_json::Value {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(fields) = value.as_object_mut() {
        for field in OPTIONAL_STATUS_FIELDS {
            fields.entry(field).or_insert(serde_json::Value::Null);
        }
    }
    serde_json::json!({ "status": value })
}

async fn patch_status(ctx: &Context, key: &PolicyKey, status: &ShutdownPolicyStatus) -> Result<()> {
    let api: Api<ShutdownPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let params = PatchParams {
        field_manager: Some(super::FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api
        .patch_status(&key.name, &params, &Patch::Merge(status_patch(status)))
        .await
    {
        Ok(_) => Ok(()),
        // Deleted meanwhile: nothing to write.
        Err(kube::Error::Api(response)) if response.code == 404 => Ok(()),
        Err(source) => Err(Error::Kube {
            action: "patch ShutdownPolicy status",
            object: key.to_string(),
            source,
        }),
    }
}

async fn publish(
    ctx: &Context,
    policy: &ShutdownPolicy,
    status: &ShutdownPolicyStatus,
    notice: Notice,
) {
    let target = &policy.spec.target_ref;
    let workload = ObjectReference {
        api_version: Some(target.api_version.clone()),
        kind: Some(target.kind.clone()),
        name: Some(target.name.clone()),
        namespace: policy.namespace(),
        ..Default::default()
    };
    let p99 = status.durations.map(|d| d.p99).unwrap_or_default();
    let event = match notice {
        Notice::Killed { pod, grace_seconds } => Event {
            type_: EventType::Warning,
            reason: "PodKilled".into(),
            note: Some(format!(
                "pod {pod} was SIGKILLed at its {grace_seconds}s deadline before its shutdown finished; \
                 new pods get at least {}s",
                status
                    .recommendation
                    .and_then(|r| r.grace_period_seconds)
                    .unwrap_or(grace_seconds)
            )),
            action: "ObserveShutdown".into(),
            secondary: None,
        },
        Notice::RecommendationChanged { from, to } => Event {
            type_: EventType::Normal,
            reason: "RecommendationChanged".into(),
            note: Some(format!(
                "recommended terminationGracePeriodSeconds {} → {} ({} shutdowns observed, p99 {p99}s)",
                from.map_or("none".into(), |s| format!("{s}s")),
                to.map_or("none".into(), |s| format!("{s}s")),
                status.samples
            )),
            action: "Recommend".into(),
            secondary: None,
        },
    };
    for reference in [policy.object_ref(&()), workload] {
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason = %event.reason, object = ?reference.name, "could not publish event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_nulled_in_the_patch() {
        let patch = status_patch(&ShutdownPolicyStatus {
            samples: 3,
            ..Default::default()
        });
        assert_eq!(patch["status"]["samples"], 3);
        assert!(patch["status"]["recommendation"].is_null());
        assert!(
            patch["status"]
                .as_object()
                .unwrap()
                .contains_key("recommendation")
        );
    }
}
