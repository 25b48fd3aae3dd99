//! `inject` on a multi-document manifest: golden YAML out, and every injected template is a
//! valid pod. `UPDATE_GOLDEN=1 cargo test` rewrites the golden file.

mod common;

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use lameduck_operator::inject::inject_yaml;
use lameduck_operator::webhook::patch::InjectionConfig;
use serde::Deserialize;

#[test]
fn workloads_manifest() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let input = std::fs::read_to_string(dir.join("fixtures/inject/workloads.yaml")).expect("input");
    let config = InjectionConfig {
        sidecar_image: "registry.example/lameduck-sidecar:0.1.0".into(),
        ..InjectionConfig::default()
    };
    let (output, reports) = inject_yaml(&input, &config).expect("inject");
    let summary: Vec<String> = reports
        .iter()
        .map(|r| format!("{}: {}", r.object, r.result))
        .collect();
    assert_eq!(
        summary,
        [
            "Deployment/web: injected (web); left alone, they have a preStop hook: envoy",
            "StatefulSet/db: injected (postgres)",
            "DaemonSet/agent: injected (agent); warning: lameduck.dev/drain ignored, no container gets a drain action: drain action \"signal:SIGKILL\": unknown signal: expected one of SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2, SIGTERM, SIGWINCH",
            "Pod/debug: injected (shell)",
            "ReplicaSet/legacy: injected (legacy)",
            "Job/migrate: injected (migrate)",
            "CronJob/nightly: injected (report)",
            "Deployment/opted-out: opted out",
        ]
    );

    let golden = dir.join("golden/inject/workloads.yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(golden.parent().expect("dir")).expect("mkdir");
        std::fs::write(&golden, &output).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1)");
    assert_eq!(expected, output);

    // Every injected template is a valid pod, and injecting again changes nothing.
    let mut templates = 0;
    for doc in serde_norway::Deserializer::from_str(&output) {
        let doc = serde_json::Value::deserialize(doc).expect("yaml");
        let template = match doc["kind"].as_str() {
            Some("Pod") => doc.clone(),
            Some("CronJob") => doc["spec"]["jobTemplate"]["spec"]["template"].clone(),
            Some("List") => continue,
            _ => doc["spec"]["template"].clone(),
        };
        let pod: Pod = serde_json::from_value(template).expect("a pod template");
        common::validate_injected_pod(&pod).expect("valid injected pod");
        templates += 1;
    }
    assert_eq!(templates, 7);
    let (again, _) = inject_yaml(&output, &config).expect("inject again");
    assert_eq!(again, output, "inject is idempotent");
}

#[test]
fn invalid_yaml_is_an_error_not_a_panic() {
    let err = inject_yaml("kind: Pod\nspec: [unclosed", &InjectionConfig::default())
        .expect_err("invalid");
    assert!(err.to_string().contains("invalid YAML"), "{err}");
    let err = inject_yaml(
        "kind: Pod\nspec: {containers: 3}\n",
        &InjectionConfig::default(),
    )
    .expect_err("invalid template");
    assert!(err.to_string().contains("invalid pod template"), "{err}");
}
