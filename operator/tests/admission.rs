//! AdmissionReview fixtures in, golden answers out. `UPDATE_GOLDEN=1 cargo test` rewrites
//! the golden files; review the diff.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{MapIndex, validate_injected_pod};
use k8s_openapi::api::core::v1::Pod;
use lameduck_operator::webhook::admission::{AdmissionOutcome, Admitter, InvalidReview, Problem};
use lameduck_operator::webhook::patch::InjectionConfig;
use lameduck_operator::webhook::policy::{
    DrainMode, DrainSettings, HttpDrain, NoPolicies, PolicyLookup, PolicySettings, UpdateMode,
    WorkloadRef,
};
use lameduck_proto::{DrainActions, names};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission")
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/admission")
}

fn index() -> MapIndex {
    MapIndex::default()
        .with_workload(
            "ReplicaSet",
            "shop",
            "web-7d4b9c6f5",
            None,
            Some(("Deployment", "web")),
        )
        .with_workload("Deployment", "shop", "web", Some("true"), None)
        .with_workload("Deployment", "shop", "api", Some("true"), None)
        .with_workload("StatefulSet", "shop", "db", Some("true"), None)
        .with_workload("DaemonSet", "shop", "agent", Some("true"), None)
        .with_namespace_label("shop", "disabled")
        .with_namespace_label("batch", names::NAMESPACE_INJECT_ENABLED)
}

/// A policy for Pod/web only: Initial mode with a recommendation and the HTTP drain.
struct OnePolicy;

impl PolicyLookup for OnePolicy {
    fn lookup(
        &self,
        namespace: &str,
        workload: &WorkloadRef,
        _workload_uid: Option<&str>,
    ) -> Option<PolicySettings> {
        (namespace == "shop" && workload.policy_name() == "pod-web").then(|| PolicySettings {
            policy_name: "pod-web".into(),
            update_mode: UpdateMode::Initial,
            recommended_grace_seconds: Some(45),
            drain: Some(DrainSettings {
                mode: DrainMode::Http,
                delay_millis: 3000,
                min_delay_millis: 2500,
                quiet_period_millis: 500,
                max_delay_millis: 10_000,
                http: Some(HttpDrain {
                    port: 8080,
                    path: "/drain".into(),
                }),
                budget_millis: Some(2_400),
            }),
            drain_actions: None,
            drain_action_error: None,
        })
    }
}

/// Policies with a drain action: Pod/edge's default is `signal:SIGTERM`; Pod/broken's
/// `spec.drain.action` cannot be read.
struct ActionPolicies;

impl PolicyLookup for ActionPolicies {
    fn lookup(
        &self,
        _namespace: &str,
        workload: &WorkloadRef,
        _workload_uid: Option<&str>,
    ) -> Option<PolicySettings> {
        let policy_name = workload.policy_name();
        let (drain_actions, drain_action_error) = match policy_name.as_str() {
            "pod-edge" => (Some("signal:SIGTERM".parse().expect("an action")), None),
            "pod-broken" => (
                None,
                "signal:SIGSTOP"
                    .parse::<DrainActions>()
                    .err()
                    .map(|e| e.to_string()),
            ),
            _ => return None,
        };
        Some(PolicySettings {
            policy_name,
            update_mode: UpdateMode::Off,
            recommended_grace_seconds: None,
            drain: None,
            drain_actions,
            drain_action_error,
        })
    }
}

fn admitter(policies: Arc<dyn PolicyLookup>) -> Admitter {
    Admitter {
        config: Arc::new(InjectionConfig {
            sidecar_image: "registry.example/lameduck-sidecar:0.1.0".into(),
            ..InjectionConfig::default()
        }),
        policies,
        index: Arc::new(index()),
    }
}

/// Runs one fixture; returns the outcome and the patched pod (if patched).
fn run(case: &str, expected: AdmissionOutcome, policies: Arc<dyn PolicyLookup>) -> Option<Pod> {
    let body = std::fs::read(fixtures().join(format!("{case}.json"))).expect("fixture");
    let reviewed = admitter(policies).review(&body).expect("a valid review");
    assert_eq!(reviewed.outcome, expected, "{case}: outcome");
    let response = reviewed.review.response.as_ref().expect("a response");
    assert!(response.allowed, "{case}: every answer allows the pod");
    assert_eq!(
        response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002",
        "{case}: uid echoed"
    );
    let patch: Option<Value> = response
        .patch
        .as_ref()
        .map(|p| serde_json::from_slice(p).expect("patch is JSON"));

    let answer = json!({
        "outcome": expected.as_str(),
        "warnings": response.warnings,
        "patch": patch,
    });
    compare_golden(case, &answer);

    let patch = patch?;
    let request: Value = serde_json::from_slice(&body).expect("json");
    let mut object = request["request"]["object"].clone();
    let ops: json_patch::Patch = serde_json::from_value(patch).expect("a JSONPatch");
    json_patch::patch(&mut object, &ops).unwrap_or_else(|e| panic!("{case}: patch applies: {e}"));
    let pod: Pod = serde_json::from_value(object).expect("the patched object is a Pod");
    validate_injected_pod(&pod).unwrap_or_else(|e| panic!("{case}: invalid pod: {e}"));

    // Idempotent: the patched pod, reviewed again (reinvocation), is left alone.
    let mut again: Value = serde_json::from_slice(&body).expect("json");
    again["request"]["object"] = serde_json::to_value(&pod).expect("pod to json");
    let reviewed = admitter(Arc::new(NoPolicies))
        .review(&serde_json::to_vec(&again).expect("json"))
        .expect("review");
    assert_eq!(
        reviewed.outcome,
        AdmissionOutcome::AlreadyInjected,
        "{case}: reinvocation"
    );
    assert!(reviewed.review.response.expect("response").patch.is_none());
    Some(pod)
}

fn compare_golden(case: &str, answer: &Value) {
    let path = golden_dir().join(format!("{case}.json"));
    let text = serde_json::to_string_pretty(answer).expect("json") + "\n";
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &text).expect("write golden");
        return;
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} missing: run UPDATE_GOLDEN=1 cargo test and review it",
            path.display()
        )
    });
    assert_eq!(golden, text, "{case}: differs from {}", path.display());
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a k8s_openapi::api::core::v1::Container {
    let spec = pod.spec.as_ref().expect("spec");
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .expect("container")
}

fn env<'a>(c: &'a k8s_openapi::api::core::v1::Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn has_prestop(pod: &Pod, name: &str) -> bool {
    container(pod, name)
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .is_some()
}

#[test]
fn single_container() {
    let pod = run(
        "single_container",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    let web = container(&pod, "web");
    assert_eq!(
        env(web, names::ENV_SOCKET),
        Some(names::POD_APP_SOCKET_PATH)
    );
    assert_eq!(env(web, names::ENV_CONTAINER), Some("web"));
    let command = web
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|p| p.exec.as_ref());
    assert_eq!(
        command.and_then(|e| e.command.clone()),
        Some(vec![
            names::POD_BIN_PATH.into(),
            "prestop".into(),
            "--container".into(),
            "web".into()
        ])
    );
    assert_eq!(annotation(&pod, names::ANNOTATION_POLICY), Some("pod-web"));
    assert_eq!(
        annotation(&pod, names::ANNOTATION_GRACE_PERIOD_SOURCE),
        Some("workload")
    );
    let sidecar = container(&pod, names::SIDECAR_CONTAINER_NAME);
    assert_eq!(env(sidecar, names::ENV_GRACE_SECONDS), Some("30"));
    assert_eq!(env(sidecar, names::ENV_DRAIN_MODE), Some("auto"));
}

#[test]
fn multi_container_owned_by_a_deployment() {
    let pod = run(
        "multi_container",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    assert!(has_prestop(&pod, "web") && has_prestop(&pod, "metrics"));
    assert_eq!(
        annotation(&pod, names::ANNOTATION_POLICY),
        Some("deployment-web")
    );
}

#[test]
fn owner_deployment_resolved_through_the_replicaset_cache() {
    let pod = run(
        "owner_deployment",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    assert_eq!(
        annotation(&pod, names::ANNOTATION_POLICY),
        Some("deployment-web")
    );
}

#[test]
fn owner_deployment_when_the_replicaset_is_not_cached_yet() {
    let pod = run(
        "owner_deployment_rs_not_cached",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    assert_eq!(
        annotation(&pod, names::ANNOTATION_POLICY),
        Some("deployment-api")
    );
}

#[test]
fn owner_statefulset() {
    let pod = run(
        "owner_statefulset",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    assert_eq!(
        annotation(&pod, names::ANNOTATION_POLICY),
        Some("statefulset-db")
    );
}

#[test]
fn owner_daemonset() {
    let pod = run(
        "owner_daemonset",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    assert_eq!(
        annotation(&pod, names::ANNOTATION_POLICY),
        Some("daemonset-agent")
    );
}

#[test]
fn namespace_label() {
    let pod = run(
        "namespace_label",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    assert_eq!(
        annotation(&pod, names::ANNOTATION_POLICY),
        Some("job-nightly")
    );
}

#[test]
fn existing_prestop_is_left_alone_and_reported() {
    let body = std::fs::read(fixtures().join("existing_prestop.json")).expect("fixture");
    let notices = admitter(Arc::new(NoPolicies))
        .review(&body)
        .expect("review")
        .notices;
    assert_eq!(
        notices.into_iter().map(|n| n.problem).collect::<Vec<_>>(),
        [Problem::PreStopHookExists {
            containers: vec!["web".to_owned()]
        }]
    );
    let pod = run(
        "existing_prestop",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    let web = container(&pod, "web");
    let exec = web
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|p| p.exec.as_ref());
    assert_eq!(
        exec.and_then(|e| e.command.clone()),
        Some(vec!["sleep".into(), "5".into()])
    );
    assert_eq!(
        env(web, names::ENV_SOCKET),
        None,
        "a skipped container is left as it is"
    );
    assert!(has_prestop(&pod, "worker"));
    assert_eq!(
        annotation(&pod, names::ANNOTATION_SKIPPED_CONTAINERS),
        Some("web")
    );
}

#[test]
fn containers_annotation_narrows_the_selection() {
    let pod = run(
        "containers_annotation",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    assert!(has_prestop(&pod, "web") && has_prestop(&pod, "worker"));
    assert!(!has_prestop(&pod, "envoy"));
}

#[test]
fn existing_init_containers_volumes_env_and_lifecycle() {
    let pod = run(
        "existing_init_containers",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    let init: Vec<_> = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .expect("init")
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(init, ["lameduck", "migrate", "istio-proxy"]);
    let web = container(&pod, "web");
    assert_eq!(
        env(web, names::ENV_SOCKET),
        Some("/custom.sock"),
        "user value kept"
    );
    assert!(
        web.lifecycle
            .as_ref()
            .and_then(|l| l.post_start.as_ref())
            .is_some()
    );
}

#[test]
fn pod_security_context_constraints() {
    let pod = run(
        "security_context",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    let sidecar = container(&pod, names::SIDECAR_CONTAINER_NAME);
    let sc = sidecar.security_context.as_ref().expect("sc");
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.run_as_non_root, Some(true));
}

#[test]
fn policy_in_initial_mode_sets_the_grace_period_and_drain() {
    let pod = run(
        "policy_initial",
        AdmissionOutcome::Injected,
        Arc::new(OnePolicy),
    )
    .expect("patched");
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.termination_grace_period_seconds, Some(45));
    assert_eq!(
        annotation(&pod, names::ANNOTATION_GRACE_PERIOD_SOURCE),
        Some("recommended")
    );
    assert_eq!(
        annotation(&pod, names::ANNOTATION_ORIGINAL_GRACE_PERIOD),
        Some("60")
    );
    let sidecar = container(&pod, names::SIDECAR_CONTAINER_NAME);
    assert_eq!(env(sidecar, names::ENV_GRACE_SECONDS), Some("45"));
    assert_eq!(env(sidecar, names::ENV_DRAIN_MODE), Some("http"));
    assert_eq!(env(sidecar, names::ENV_MIN_DELAY_MILLIS), Some("2500"));
    assert_eq!(env(sidecar, names::ENV_HTTP_DRAIN_PORT), Some("8080"));
    assert_eq!(env(sidecar, names::ENV_HTTP_DRAIN_PATH), Some("/drain"));
}

#[test]
fn not_injected_cases_answer_allowed_without_patch() {
    for (case, outcome) in [
        ("already_injected", AdmissionOutcome::AlreadyInjected),
        ("opt_out", AdmissionOutcome::OptedOut),
        ("not_opted_in", AdmissionOutcome::NotOptedIn),
        ("non_pod_kind", AdmissionOutcome::Ignored),
        ("pod_update", AdmissionOutcome::Ignored),
        ("volume_conflict", AdmissionOutcome::NotApplicable),
    ] {
        assert!(
            run(case, outcome, Arc::new(NoPolicies)).is_none(),
            "{case}: no patch"
        );
    }
}

#[test]
fn malformed_reviews_are_rejected() {
    for case in [
        "malformed_not_json",
        "malformed_no_request",
        "malformed_wrong_shape",
    ] {
        let body = std::fs::read(fixtures().join(format!("{case}.json"))).expect("fixture");
        let err = admitter(Arc::new(NoPolicies))
            .review(&body)
            .expect_err(case);
        assert!(
            err.to_string().starts_with("malformed AdmissionReview"),
            "{case}: {err}"
        );
        if case == "malformed_no_request" {
            assert!(matches!(err, InvalidReview::NoRequest));
        }
    }
}

/// The sidecar is told the hooked containers' TCP ports and every probe into the pod:
/// named ports resolved, periods in ms; exec probes and unresolvable names left out.
#[test]
fn ports_and_probes_reach_the_sidecar() {
    let pod = run(
        "ports_probes",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    let sidecar = container(&pod, names::SIDECAR_CONTAINER_NAME);
    assert_eq!(
        env(sidecar, names::ENV_PORTS),
        Some("web=8080,9102;api=9000")
    );
    // readiness httpGet "http" every 1 s, liveness tcpSocket (default 10 s), grpc every
    // 5 s; the startup exec probe and the liveness probe on the undeclared "admin" are out.
    assert_eq!(
        env(sidecar, names::ENV_PROBES),
        Some("8080/1000,8080/10000,9000/5000")
    );
    let read = lameduck_proto::SidecarEnv::from_env(|name| env(sidecar, name).map(str::to_owned))
        .expect("the sidecar reads it");
    assert_eq!(read.ports.len(), 2);
    assert_eq!(read.probes.len(), 3);
    // Without ports or probes, nothing is written.
    let plain = run(
        "single_container",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    let sidecar = container(&plain, names::SIDECAR_CONTAINER_NAME);
    assert_eq!(env(sidecar, names::ENV_PORTS), Some("web=8080"));
    assert_eq!(env(sidecar, names::ENV_PROBES), None);
}

#[test]
fn the_drain_annotation_sets_one_action_for_every_container() {
    let pod = run(
        "drain_annotation_all",
        AdmissionOutcome::Injected,
        Arc::new(NoPolicies),
    )
    .expect("patched");
    for name in ["web", "worker"] {
        assert_eq!(
            env(container(&pod, name), names::ENV_DRAIN_ACTION),
            Some("signal:SIGQUIT"),
            "{name}"
        );
    }
}

#[test]
fn the_drain_annotation_per_container_wins_over_the_policys_default() {
    let body =
        std::fs::read(fixtures().join("drain_annotation_per_container.json")).expect("fixture");
    let reviewed = admitter(Arc::new(ActionPolicies))
        .review(&body)
        .expect("review");
    let warnings = reviewed.review.response.expect("response").warnings;
    assert_eq!(
        warnings,
        Some(vec![
            "lameduck: lameduck.dev/drain names unknown containers: ghost".to_owned()
        ])
    );
    let pod = run(
        "drain_annotation_per_container",
        AdmissionOutcome::Injected,
        Arc::new(ActionPolicies),
    )
    .expect("patched");
    assert_eq!(
        env(container(&pod, "web"), names::ENV_DRAIN_ACTION),
        Some("exec:nginx -s quit")
    );
    assert_eq!(
        env(container(&pod, "worker"), names::ENV_DRAIN_ACTION),
        Some("signal:SIGTERM"),
        "the policy's spec.drain.action"
    );
}

/// A drain action that cannot be read never blocks the pod: it is injected without any
/// drain action, and the answer says why.
#[test]
fn a_bad_drain_action_warns_and_injects_the_safe_default() {
    for (case, policies, warning) in [
        (
            "drain_annotation_bad",
            Arc::new(NoPolicies) as Arc<dyn PolicyLookup>,
            "lameduck: lameduck.dev/drain ignored, no container gets a drain action: drain action \"signal:SIGKILL\": unknown signal",
        ),
        (
            "drain_policy_bad_action",
            Arc::new(ActionPolicies),
            "lameduck: ShutdownPolicy pod-broken: spec.drain.action ignored: drain action \"signal:SIGSTOP\": unknown signal",
        ),
    ] {
        let body = std::fs::read(fixtures().join(format!("{case}.json"))).expect("fixture");
        let reviewed = admitter(policies.clone()).review(&body).expect("review");
        let response = reviewed.review.response.expect("response");
        let warnings = response.warnings.unwrap_or_default();
        assert!(
            warnings.len() == 1 && warnings[0].starts_with(warning),
            "{case}: {warnings:?}"
        );
        // The annotation's problem also becomes an Event on the workload (whose pods a
        // controller creates: nobody reads its warnings); the policy's has its condition.
        let problems: Vec<_> = reviewed.notices.into_iter().map(|n| n.problem).collect();
        match case {
            "drain_annotation_bad" => assert_eq!(
                problems,
                [Problem::DrainAnnotation {
                    warnings: vec![warnings[0]["lameduck: ".len()..].to_owned()]
                }]
            ),
            _ => assert_eq!(problems, []),
        }
        let pod = run(case, AdmissionOutcome::Injected, policies).expect("patched");
        for name in ["web", "worker"] {
            assert!(has_prestop(&pod, name), "{case}: {name} still hooked");
            assert_eq!(
                env(container(&pod, name), names::ENV_DRAIN_ACTION),
                None,
                "{case}: {name}"
            );
        }
    }
}
