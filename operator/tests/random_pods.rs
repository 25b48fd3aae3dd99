//! Random pods through the whole admission path (the stable-toolchain companion of the
//! cargo-fuzz target): every answer allows, every patch applies, the result is a pod that
//! a second admission leaves alone. `PROPTEST_CASES=N` runs longer.

use lameduck_operator::webhook::AdmissionOutcome;
use lameduck_operator::webhook::fuzzing::check_review;
use proptest::prelude::*;
use serde_json::{Value, json};

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("web".to_owned()),
        Just("worker".to_owned()),
        Just("lameduck".to_owned()),
        "[a-z][a-z0-9-]{0,12}",
    ]
}

fn maybe<T: Strategy>(s: T) -> impl Strategy<Value = Option<T::Value>> {
    prop::option::of(s)
}

fn container() -> impl Strategy<Value = Value> {
    (
        name(),
        maybe(prop::collection::vec(
            (
                prop_oneof![Just("LAMEDUCK_SOCKET".to_owned()), "[A-Z_]{1,8}"],
                "[ -~]{0,8}",
            ),
            0..3,
        )),
        maybe(prop::collection::vec(
            (
                prop_oneof![Just("lameduck".to_owned()), "[a-z]{1,6}"],
                prop_oneof![Just("/lameduck".to_owned()), "/[a-z]{1,6}"],
            ),
            0..3,
        )),
        prop_oneof![
            Just(Value::Null),
            Just(json!({})),
            Just(json!({"preStop": {"exec": {"command": ["sleep", "1"]}}})),
            Just(json!({"postStart": {"exec": {"command": ["true"]}}}))
        ],
        maybe(Just("Always".to_owned())),
    )
        .prop_map(|(name, env, mounts, lifecycle, restart)| {
            let mut c = json!({"name": name, "image": "x"});
            if let Some(env) = env {
                c["env"] = env
                    .into_iter()
                    .map(|(n, v)| json!({"name": n, "value": v}))
                    .collect();
            }
            if let Some(mounts) = mounts {
                c["volumeMounts"] = mounts
                    .into_iter()
                    .map(|(n, p)| json!({"name": n, "mountPath": p}))
                    .collect();
            }
            if !lifecycle.is_null() {
                c["lifecycle"] = lifecycle;
            }
            if let Some(r) = restart {
                c["restartPolicy"] = json!(r);
            }
            c
        })
}

fn pod() -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(container(), 0..4),
        maybe(prop::collection::vec(container(), 0..3)),
        maybe(prop::collection::vec(prop_oneof![Just("lameduck".to_owned()), "[a-z]{1,6}"], 0..3)),
        maybe(prop::collection::btree_map(
            prop_oneof![
                Just("lameduck.dev/inject".to_owned()),
                Just("lameduck.dev/containers".to_owned()),
                "[a-z./]{1,10}"
            ],
            prop_oneof![Just("true".to_owned()), Just("false".to_owned()), Just("web, worker".to_owned()), "[ -~]{0,10}"],
            0..4,
        )),
        maybe(prop::collection::btree_map("[a-z]{1,5}", "[a-z]{0,5}", 0..3)),
        maybe(0i64..700),
        maybe(Just("Job".to_owned())),
    )
        .prop_map(|(containers, init, volumes, annotations, labels, grace, owner)| {
            let mut spec = json!({"containers": containers});
            if let Some(init) = init {
                spec["initContainers"] = json!(init);
            }
            if let Some(volumes) = volumes {
                spec["volumes"] = volumes.into_iter().map(|n| json!({"name": n, "emptyDir": {}})).collect();
            }
            if let Some(grace) = grace {
                spec["terminationGracePeriodSeconds"] = json!(grace);
            }
            let mut metadata = json!({"generateName": "p-"});
            if let Some(a) = annotations {
                metadata["annotations"] = json!(a);
            }
            if let Some(l) = labels {
                metadata["labels"] = json!(l);
            }
            if let Some(kind) = owner {
                metadata["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": kind, "name": "j", "uid": "u", "controller": true}]);
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
        })
}

fn review(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ns",
            "operation": "CREATE",
            "userInfo": {},
            "object": object,
        }
    }))
    .expect("json")
}

proptest! {
    #[test]
    fn random_pods_keep_the_admission_properties(pod in pod()) {
        let outcome = check_review(&review(pod));
        prop_assert!(outcome.is_some());
        prop_assert_ne!(outcome, Some(AdmissionOutcome::Error));
    }

    #[test]
    fn random_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = check_review(&body);
    }
}

/// Inputs the fuzzer (operator/fuzz) found, kept as regressions.
#[test]
fn fuzzer_findings_hold_the_property() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/fixtures/fuzz") {
        let path = entry.expect("entry").path();
        let body = std::fs::read(&path).expect("readable");
        check_review(&body);
        n += 1;
    }
    assert!(n > 0, "no findings in {}", dir.display());
}
