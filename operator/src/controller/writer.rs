//! The status writer: on every tick, folds the observations gathered since the last one
//! into each policy's status and patches it — at most one status patch per policy per tick,
//! and none when nothing changed. Kills, timeouts, history resets and recommendation
//! changes become Events. A policy being deleted, or in a namespace being deleted, gets
//! nothing.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::record::Notice;
use super::{Context, Error, PolicyKey, Result};
use crate::api::{
    CONDITION_GRACE_PERIOD_EXCEEDED, RecommendationStatus, ShutdownPolicy, ShutdownPolicyStatus,
};

/// Top-level status fields that are omitted when empty; a merge patch must null them so
/// that a value that went away is removed.
const OPTIONAL_STATUS_FIELDS: [&str; 11] = [
    "conditions",
    "observedGeneration",
    "targetUID",
    "lastObservationTime",
    "durations",
    "phases",
    "causes",
    "refused",
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
        // Nothing is recorded into a policy that is going away, or whose namespace is.
        let closing = policy.metadata.deletion_timestamp.is_some()
            || ctx.namespace_terminating(&key.namespace);
        let (status, grace, needed, notices) = {
            let mut book = ctx.book();
            let record = book.entry(key.namespace.clone(), key.name.clone());
            if closing {
                record.close(None);
            }
            if record.is_closing() {
                continue;
            }
            let (status, recommendation) = record.status(&policy, now);
            (
                status,
                recommendation.grace_period_seconds,
                recommendation.uncapped_seconds,
                record.take_notices(),
            )
        };
        let labels = key.labels();
        if let Some(seconds) = grace {
            ctx.metrics
                .recommendation
                .get_or_create(&labels)
                .set(i64::from(seconds));
        }
        if let Some(seconds) = needed {
            ctx.metrics
                .needed
                .get_or_create(&labels)
                .set(i64::from(seconds));
        }
        let exceeded = status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_GRACE_PERIOD_EXCEEDED && c.status == "True");
        ctx.metrics
            .exceeded
            .get_or_create(&labels)
            .set(i64::from(exceeded));
        if let Some(pods) = status.pods {
            ctx.metrics
                .without_sidecar
                .get_or_create(&labels)
                .set(i64::from(pods.not_injected));
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
            note: Some(killed_note(
                &pod,
                grace_seconds,
                policy.spec.grace_period.max_seconds,
                status.recommendation.as_ref(),
            )),
            action: "ObserveShutdown".into(),
            secondary: None,
        },
        Notice::TimedOut {
            pod,
            grace_seconds,
            deadline_ms,
        } => Event {
            type_: EventType::Warning,
            reason: "ShutdownTimedOut".into(),
            note: Some(timed_out_note(
                &pod,
                grace_seconds,
                deadline_ms,
                policy.spec.grace_period.max_seconds,
                status.recommendation.as_ref(),
            )),
            action: "ObserveShutdown".into(),
            secondary: None,
        },
        Notice::Refused {
            pod,
            refused,
            deregister_ms,
        } => Event {
            type_: EventType::Warning,
            reason: "ConnectionsRefused".into(),
            note: Some(refused_note(
                &pod,
                refused,
                deregister_ms,
                u64::from(policy.spec.drain.max_delay_seconds) * 1000,
                status.recommendation.as_ref(),
            )),
            action: "ObserveShutdown".into(),
            secondary: None,
        },
        Notice::HistoryReset {
            previous_uid,
            uid,
            samples,
        } => Event {
            type_: EventType::Normal,
            reason: "HistoryReset".into(),
            note: Some(format!(
                "{} {} is a new object (uid {uid}); the {samples} shutdowns recorded for the earlier one (uid {previous_uid}) are forgotten",
                target.kind, target.name
            )),
            action: "Recommend".into(),
            secondary: None,
        },
        Notice::GracePeriodExceeded {
            needed_seconds,
            max_seconds,
        } => Event {
            type_: EventType::Warning,
            reason: "GracePeriodExceeded".into(),
            note: Some(exceeded_note(needed_seconds, max_seconds)),
            action: "Recommend".into(),
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

/// The note of a `GracePeriodExceeded` Event: what the shutdowns need, the cap, and the
/// limits of the platform that a raised cap still meets.
fn exceeded_note(needed_seconds: u32, max_seconds: u32) -> String {
    format!(
        "the shutdowns need about {needed_seconds}s but gracePeriod.maxSeconds is {max_seconds}s: \
         pods will be SIGKILLed before their cleanup ends; raise maxSeconds or make the shutdown \
         faster (the Cluster Autoscaler waits at most 600s for a drain, spot nodes give 30s to 2min)"
    )
}

/// The note of a `PodKilled` Event. When the grace period is already at the policy's
/// `gracePeriod.maxSeconds`, a longer one will not come: the note says so, because only
/// the user can fix that (raise the maximum or make the shutdown faster).
fn killed_note(
    pod: &str,
    grace_seconds: u32,
    max_seconds: u32,
    recommendation: Option<&RecommendationStatus>,
) -> String {
    let recommended = recommendation.and_then(|r| r.grace_period_seconds);
    let at_max = grace_seconds >= max_seconds || recommended.is_some_and(|r| r >= max_seconds);
    if at_max {
        let need = recommendation
            .and_then(|r| r.uncapped)
            .filter(|u| *u > max_seconds)
            .map_or(String::new(), |u| {
                format!(" (the shutdowns need about {u}s)")
            });
        format!(
            "pod {pod} was SIGKILLed at its {grace_seconds}s deadline before its shutdown finished; \
             the policy's gracePeriod.maxSeconds ({max_seconds}s) is reached{need}: raise it or make the shutdown faster"
        )
    } else {
        format!(
            "pod {pod} was SIGKILLed at its {grace_seconds}s deadline before its shutdown finished; \
             new pods get at least {}s",
            recommended.unwrap_or(grace_seconds)
        )
    }
}

/// The note of a `ConnectionsRefused` Event: clients were still sent to the pod after its
/// listeners closed. It says what new pods' sidecars wait now, or that the policy's
/// `drain.maxDelaySeconds` stops the raise.
fn refused_note(
    pod: &str,
    refused: u64,
    deregister_ms: Option<u64>,
    max_delay_ms: u64,
    recommendation: Option<&RecommendationStatus>,
) -> String {
    let seconds = |ms: u64| format!("{:.1}s", ms as f64 / 1000.0);
    let phase = deregister_ms.map_or(String::new(), |ms| {
        format!(" (its deregister phase lasted {})", seconds(ms))
    });
    let head = format!(
        "pod {pod} refused {refused} connection(s) after its listeners closed{phase}: clients were still sent to it after it let go"
    );
    match recommendation.and_then(|r| r.deregister_delay_millis) {
        Some(delay) if delay >= max_delay_ms => format!(
            "{head}; the policy's drain.maxDelaySeconds ({}) is reached: raise it",
            seconds(max_delay_ms)
        ),
        Some(delay) => format!(
            "{head}; new pods' sidecars deregister for at least {}",
            seconds(delay)
        ),
        None => head,
    }
}

/// The note of a `ShutdownTimedOut` Event: the application did not acknowledge before the
/// sidecar's deadline, so its preStop hook was released early (SIGTERM came while it was
/// still draining or cleaning up). Like a kill, it says what new pods get, or that the
/// maximum stops it.
fn timed_out_note(
    pod: &str,
    grace_seconds: u32,
    deadline_ms: Option<u64>,
    max_seconds: u32,
    recommendation: Option<&RecommendationStatus>,
) -> String {
    let deadline = deadline_ms.map_or(String::new(), |ms| {
        format!(" ({:.1}s after the deletion)", ms as f64 / 1000.0)
    });
    let recommended = recommendation.and_then(|r| r.grace_period_seconds);
    let head = format!(
        "pod {pod}: the application did not finish its shutdown before the sidecar's deadline{deadline} \
         in a {grace_seconds}s grace period; SIGTERM came during its drain or cleanup"
    );
    match recommended {
        Some(r) if r > grace_seconds => format!("{head}; new pods get {r}s"),
        _ if grace_seconds >= max_seconds || recommended.is_some_and(|r| r >= max_seconds) => {
            format!(
                "{head}; the policy's gracePeriod.maxSeconds ({max_seconds}s) is reached: raise it or make the shutdown faster"
            )
        }
        _ => head,
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

    #[test]
    fn a_kill_at_the_maximum_says_so() {
        let at_max = RecommendationStatus {
            grace_period_seconds: Some(10),
            uncapped: Some(16),
            ..Default::default()
        };
        let note = killed_note("web-1", 10, 10, Some(&at_max));
        assert!(
            note.contains("gracePeriod.maxSeconds (10s) is reached"),
            "{note}"
        );
        assert!(note.contains("about 16s"), "{note}");
        let below = RecommendationStatus {
            grace_period_seconds: Some(45),
            ..Default::default()
        };
        let note = killed_note("web-1", 30, 600, Some(&below));
        assert!(note.contains("new pods get at least 45s"), "{note}");
        assert!(!note.contains("maxSeconds"), "{note}");
    }

    #[test]
    fn a_refusal_note_says_what_new_pods_wait_or_that_the_maximum_stops_it() {
        let raised = RecommendationStatus {
            deregister_delay_millis: Some(3_150),
            ..Default::default()
        };
        let note = refused_note("web-1", 6, Some(2_100), 15_000, Some(&raised));
        assert!(note.contains("pod web-1 refused 6 connection(s)"), "{note}");
        assert!(note.contains("lasted 2.1s"), "{note}");
        assert!(
            note.contains("at least 3.1s") || note.contains("at least 3.2s"),
            "{note}"
        );
        let at_max = RecommendationStatus {
            deregister_delay_millis: Some(15_000),
            ..Default::default()
        };
        let note = refused_note("web-1", 1, None, 15_000, Some(&at_max));
        assert!(
            note.contains("drain.maxDelaySeconds (15.0s) is reached"),
            "{note}"
        );
    }

    #[test]
    fn a_timeout_note_says_what_new_pods_get_or_that_the_maximum_stops_it() {
        let raised = RecommendationStatus {
            grace_period_seconds: Some(9),
            ..Default::default()
        };
        let note = timed_out_note("web-1", 5, Some(3_001), 600, Some(&raised));
        assert!(note.contains("pod web-1"), "{note}");
        assert!(note.contains("(3.0s after the deletion)"), "{note}");
        assert!(note.contains("new pods get 9s"), "{note}");
        let at_max = RecommendationStatus {
            grace_period_seconds: Some(10),
            ..Default::default()
        };
        let note = timed_out_note("web-1", 10, None, 10, Some(&at_max));
        assert!(note.contains("maxSeconds (10s) is reached"), "{note}");
    }
}
