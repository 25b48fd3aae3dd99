//! The property the fuzz target and the long random test check: any body either is
//! rejected as malformed or gets an "allowed" answer whose patch applies to the pod and
//! yields a pod that a second admission leaves alone. Panics when the property fails.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use lameduck_proto::names;
use serde_json::Value;

use super::admission::{AdmissionOutcome, Admitter};
use super::decide::{MetaSummary, MetadataIndex};
use super::patch::InjectionConfig;
use super::policy::NoPolicies;

/// Every namespace opts in, so that every pod reaches the patch builder.
struct EveryNamespace;

impl MetadataIndex for EveryNamespace {
    fn workload(&self, _: &str, _: &str, _: &str) -> Option<MetaSummary> {
        None
    }
    fn namespace_label(&self, _: &str) -> Option<String> {
        Some(names::NAMESPACE_INJECT_ENABLED.to_owned())
    }
}

fn admitter() -> Admitter {
    Admitter {
        config: Arc::new(InjectionConfig::default()),
        policies: Arc::new(NoPolicies),
        index: Arc::new(EveryNamespace),
    }
}

/// Checks the property for one body; returns the outcome (`None`: rejected as malformed).
pub fn check_review(body: &[u8]) -> Option<AdmissionOutcome> {
    let admitter = admitter();
    let reviewed = admitter.review(body).ok()?;
    let response = reviewed
        .review
        .response
        .as_ref()
        .expect("a review always has a response");
    assert!(response.allowed, "every answer allows the pod");
    let Some(patch) = response.patch.as_ref() else {
        assert_ne!(
            reviewed.outcome,
            AdmissionOutcome::Injected,
            "injected without a patch"
        );
        return Some(reviewed.outcome);
    };
    let ops: json_patch::Patch = serde_json::from_slice(patch).expect("the patch is a JSONPatch");
    // The typed decode skips unknown fields without validating them (e.g. a lone
    // surrogate escape in a field no type reads); a generic value cannot hold those, and
    // the API server never sends them: nothing more to check then.
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Some(reviewed.outcome);
    };
    let mut object = request["request"]["object"].clone();
    // The generic path is lenient (an `apiVersion: v0` without `kind` still reads as a
    // pod); the API server only ever sends valid pods, so the property is about those.
    let valid_pod = serde_json::from_value::<Pod>(object.clone()).is_ok();
    json_patch::patch(&mut object, &ops).expect("the patch applies to the pod");
    if !valid_pod {
        return Some(reviewed.outcome);
    }
    let pod: Pod = serde_json::from_value(object).expect("the patched object is a pod");

    let mut again = request;
    again["request"]["object"] = serde_json::to_value(&pod).expect("a pod serializes");
    let body = serde_json::to_vec(&again).expect("json");
    let second = admitter.review(&body).expect("the patched review decodes");
    assert_eq!(
        second.outcome,
        AdmissionOutcome::AlreadyInjected,
        "reinvocation leaves the pod alone"
    );
    Some(reviewed.outcome)
}
