//! Reconcile and status-writer tests against a mocked API server: a scenario walks the
//! requests the controller must send, asserting method, path and body, and answers them.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;
use crate::api::{
    CONDITION_RECOMMENDATION_PROVIDED, PodCounts, ShutdownPolicy, ShutdownPolicyStatus,
};
use crate::controller::metrics::CauseLabels;
use crate::controller::workloads::SlimDeployment;
use crate::observe::{Cause, Observation, T0Source};
use crate::recommend::PhaseDurations;

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const NOW: i64 = 1_800_000_000_000;

fn deployment() -> SlimDeployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "uid": "d-1", "annotations": {"lameduck.dev/inject": "true"}},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}}}
    }))
    .unwrap()
}

fn user_policy(name: &str) -> ShutdownPolicy {
    let mut policy: ShutdownPolicy = serde_json::from_value(json!({
        "apiVersion": "lameduck.dev/v1alpha1", "kind": "ShutdownPolicy",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": "7", "generation": 1},
        "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                 "gracePeriod": {"maxSeconds": 120, "minSamples": 3}}
    }))
    .unwrap();
    policy.status = None;
    policy
}

fn context(policies: Vec<ShutdownPolicy>) -> (Arc<Context>, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let mut writer = reflector::store::Writer::default();
    for policy in policies {
        writer.apply_watcher_event(&Event::Apply(policy));
    }
    let index = PolicyIndex::from_store(writer.as_reader());
    (
        Arc::new(Context::new(
            client,
            index,
            ControllerMetrics::default(),
            Some("test".into()),
        )),
        handle,
    )
}

/// One expected request: method, path (query included) and a check of its JSON body.
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
    check: impl FnOnce(&Value),
    reply: Value,
) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .unwrap_or_else(|| panic!("client dropped before {method} {path}"));
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().to_string(), path);
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    check(&body);
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
}

fn pod_list() -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {},
        "items": [
            {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
             "metadata": {"name": "web-a", "namespace": "shop", "labels": {"app": "web", "lameduck.dev/injected": "true"}}},
            {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
             "metadata": {"name": "web-old", "namespace": "shop", "labels": {"app": "web"}}}
        ]
    })
}

const PODS_PATH: &str = "/api/v1/namespaces/shop/pods?&labelSelector=app%3Dweb";

#[tokio::test]
async fn an_annotated_deployment_gets_an_owned_policy() {
    let (ctx, mut api) = context(vec![]);
    let scenario = tokio::spawn(async move {
        expect(
            &mut api,
            Method::POST,
            "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies?&fieldManager=lameduck-operator",
            |body| {
                assert_eq!(body["metadata"]["name"], "deployment-web");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "d-1");
                assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
                assert_eq!(body["spec"]["targetRef"], json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}));
                assert_eq!(body["spec"]["updateMode"], "Initial");
            },
            serde_json::to_value(user_policy("deployment-web")).unwrap(),
        )
        .await;
        expect(&mut api, Method::GET, PODS_PATH, |_| {}, pod_list()).await;
    });
    let action = workloads::reconcile(Arc::new(deployment()), ctx.clone())
        .await
        .unwrap();
    scenario.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let status = recorded_status(&ctx, "deployment-web");
    assert_eq!(
        status.pods,
        Some(PodCounts {
            injected: 1,
            not_injected: 1
        })
    );
}

/// A context whose Namespace cache holds `shop` with the given labels.
fn context_with_namespace(labels: Value) -> (Arc<Context>, ApiHandle) {
    let (ctx, api) = context(vec![]);
    let mut ctx = Arc::into_inner(ctx).unwrap();
    let mut writer = reflector::store::Writer::default();
    let namespace: kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> =
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": labels}
        }))
        .unwrap();
    writer.apply_watcher_event(&Event::Apply(namespace));
    ctx.namespaces = Some(writer.as_reader());
    (Arc::new(ctx), api)
}

fn unannotated_deployment() -> SlimDeployment {
    let mut deployment = deployment();
    deployment.metadata.annotations = None;
    deployment
}

#[tokio::test]
async fn a_deployment_in_an_opted_in_namespace_gets_a_policy() {
    let (ctx, mut api) = context_with_namespace(json!({"lameduck.dev/inject": "enabled"}));
    let scenario = tokio::spawn(async move {
        expect(
            &mut api,
            Method::POST,
            "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies?&fieldManager=lameduck-operator",
            |body| assert_eq!(body["metadata"]["name"], "deployment-web"),
            serde_json::to_value(user_policy("deployment-web")).unwrap(),
        )
        .await;
        expect(&mut api, Method::GET, PODS_PATH, |_| {}, pod_list()).await;
    });
    workloads::reconcile(Arc::new(unannotated_deployment()), ctx)
        .await
        .unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_deployment_without_opt_in_gets_nothing() {
    for labels in [json!({}), json!({"lameduck.dev/inject": "disabled"})] {
        let (ctx, mut api) = context_with_namespace(labels);
        // The context (and its client) stays alive: a dropped client would end the stream.
        let action = workloads::reconcile(Arc::new(unannotated_deployment()), ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), api.next_request())
                .await
                .is_err(),
            "no API request for a workload that did not opt in"
        );
    }
}

#[tokio::test]
async fn a_user_policy_is_adopted_without_touching_its_spec() {
    let (ctx, mut api) = context(vec![user_policy("web-bounds")]);
    let scenario = tokio::spawn(async move {
        expect(
            &mut api,
            Method::PATCH,
            "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies/web-bounds?&fieldManager=lameduck-operator",
            |body| {
                assert!(body.get("spec").is_none(), "adoption must not touch the spec: {body}");
                assert_eq!(body["metadata"]["resourceVersion"], "7");
                assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Deployment");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "d-1");
            },
            serde_json::to_value(user_policy("web-bounds")).unwrap(),
        )
        .await;
        expect(&mut api, Method::GET, PODS_PATH, |_| {}, pod_list()).await;
    });
    workloads::reconcile(Arc::new(deployment()), ctx.clone())
        .await
        .unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn an_owned_policy_needs_no_write() {
    let mut owned = user_policy("deployment-web");
    owned.metadata.owner_references = workloads::owner_reference(&deployment()).map(|o| vec![o]);
    let (ctx, mut api) = context(vec![owned]);
    let scenario = tokio::spawn(async move {
        expect(&mut api, Method::GET, PODS_PATH, |_| {}, pod_list()).await;
    });
    workloads::reconcile(Arc::new(deployment()), ctx)
        .await
        .unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn unannotated_workloads_are_left_alone() {
    let (ctx, mut api) = context(vec![]);
    let mut plain = deployment();
    plain.metadata.annotations = None;
    assert_eq!(
        workloads::reconcile(Arc::new(plain), ctx.clone())
            .await
            .unwrap(),
        Action::await_change()
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), api.next_request())
            .await
            .is_err(),
        "no API call"
    );
}

/// The status the book's record of `shop/<policy>` gives now (a user-created policy).
fn recorded_status(ctx: &Context, policy: &str) -> ShutdownPolicyStatus {
    let mut book = ctx.book.lock().unwrap();
    let record = book.entry("shop".into(), policy.into());
    let (status, _) = record.status(
        &user_policy(policy),
        Timestamp::from_millisecond(NOW).unwrap(),
    );
    status
}

fn observation(i: i64) -> Observation {
    let t0 = NOW - 60_000 + i * 1000;
    Observation {
        t0_unix_ms: t0,
        t0_source: T0Source::Report,
        grace_seconds: 30,
        pod_grace_seconds: 30,
        cause: Cause::Deletion,
        pod_created_unix_ms: Some(t0 - 3_600_000),
        deadline_unix_ms: t0 + 30_000,
        finished_unix_ms: t0 + 6_000,
        duration_ms: 6_000,
        killed_containers: vec![],
        oom_killed_containers: vec![],
        outcome: Some(lameduck_proto::Outcome::Acked),
        sequence_ms: Some(5_900),
        phases: PhaseDurations {
            deregister: Some(2_000),
            drain: Some(100),
            cleanup: Some(3_000),
            exit: Some(0),
        },
        deregister_lag_ms: Some(1_200),
        container_restarts: vec![],
        container_restarts_omitted: 0,
        refused: None,
        open_at_release: 0,
        warnings: vec![],
    }
}

#[tokio::test]
async fn observations_are_written_in_one_status_patch_and_announced() {
    let policy = user_policy("deployment-web");
    let (ctx, mut api) = context(vec![policy.clone()]);
    {
        let mut book = ctx.book.lock().unwrap();
        for i in 0..4 {
            book.entry("shop".into(), "deployment-web".into())
                .push(format!("web-{i}"), observation(i));
        }
    }
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let scenario = {
        let written = written.clone();
        tokio::spawn(async move {
            expect(
                &mut api,
                Method::PATCH,
                "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies/deployment-web/status?&fieldManager=lameduck-operator",
                |body| *written.lock().unwrap() = body.clone(),
                serde_json::to_value(user_policy("deployment-web")).unwrap(),
            )
            .await;
            // RecommendationChanged, on the policy and on the Deployment.
            for object in ["deployment-web", "web"] {
                expect(
                    &mut api,
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/shop/events?",
                    |body| {
                        assert_eq!(body["reason"], "RecommendationChanged");
                        assert_eq!(body["regarding"]["name"], object);
                        assert!(body["note"].as_str().unwrap().contains("→ 18s"), "{body}");
                    },
                    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"}, "eventTime": null}),
                )
                .await;
            }
        })
    };
    let patches = writer::write_statuses(&ctx, Timestamp::from_millisecond(NOW).unwrap())
        .await
        .unwrap();
    scenario.await.unwrap();
    assert_eq!(patches, 1);
    let body = written.lock().unwrap().clone();
    let status: ShutdownPolicyStatus = serde_json::from_value(body["status"].clone()).unwrap();
    assert_eq!(status.samples, 4);
    assert_eq!(status.observed_generation, Some(1));
    // Sequence 5.9 s → bucket edge 6.02 s × 1.2 + 2 s reserve + 0.1 s exit + 1 s precision
    // + 1 s buffer = 11.3 → target 12 s; 4 samples: a new value is the upper bound, +50 %.
    let recommendation = status.recommendation.unwrap();
    assert_eq!(recommendation.upper_bound, Some(18));
    assert_eq!(recommendation.grace_period_seconds, Some(18));
    assert!(recommendation.drain_budget_millis.is_some());
    assert!(status.phases.and_then(|p| p.sequence).is_some());
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == CONDITION_RECOMMENDATION_PROVIDED && c.status == "True")
    );
    assert!(status.histogram.is_some());
    assert!(
        body["status"]["pods"].is_null(),
        "absent fields are nulled: {body}"
    );

    // Once the API server holds that status, a tick with nothing new writes nothing.
    let mut stored = policy;
    stored.status = Some(status);
    let (ctx2, mut api2) = context(vec![stored.clone()]);
    assert_eq!(
        writer::write_statuses(&ctx2, Timestamp::from_millisecond(NOW + 5_000).unwrap())
            .await
            .unwrap(),
        0
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), api2.next_request())
            .await
            .is_err()
    );
    assert_eq!(stored.name_any(), "deployment-web");
}

#[test]
fn a_deleted_policy_leaves_no_metric_series() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ControllerMetrics::register(&mut registry);
    for policy in ["deployment-web", "deployment-api"] {
        let labels = PolicyLabels {
            namespace: "shop".into(),
            policy: policy.into(),
        };
        let key = PolicyKey {
            namespace: "shop".into(),
            name: policy.into(),
        };
        for cause in [Cause::Deletion, Cause::Eviction] {
            metrics
                .observations
                .get_or_create(&CauseLabels::new(&key, cause))
                .inc();
        }
        metrics
            .cut_short
            .get_or_create(&CauseLabels::new(&key, Cause::Eviction))
            .inc();
        metrics.kills.get_or_create(&labels).inc();
        metrics.unobserved.get_or_create(&labels).inc();
        metrics.timeouts.get_or_create(&labels).inc();
        metrics.recommendation.get_or_create(&labels).set(7);
        metrics.needed.get_or_create(&labels).set(9);
        metrics.exceeded.get_or_create(&labels).set(1);
        metrics.without_sidecar.get_or_create(&labels).set(2);
        let mut restarted = observation(0);
        restarted.container_restarts = vec![
            ("web".into(), lameduck_proto::Outcome::Timeout),
            ("web".into(), lameduck_proto::Outcome::Acked),
        ];
        restarted.container_restarts_omitted = 2;
        metrics.count_container_restarts(
            &PolicyKey {
                namespace: "shop".into(),
                name: policy.into(),
            },
            &restarted,
        );
    }
    metrics.forget_policy("shop", "deployment-web");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains("deployment-web"), "{text}");
    // 2 observations (by cause), 1 cut short, kills, unobserved, timeouts, 4 gauges and 3
    // restart outcomes.
    assert_eq!(
        text.matches("policy=\"deployment-api\"").count(),
        13,
        "{text}"
    );
    assert!(
        text.contains("container_restart_shutdowns_total{namespace=\"shop\",policy=\"deployment-api\",outcome=\"omitted\"} 2"),
        "{text}"
    );
}

/// A pod that ran with the applied recommendation and timed out at the sidecar's deadline.
fn timed_out_observation(i: i64, grace_seconds: u32) -> Observation {
    let t0 = NOW - 30_000 + i * 1000;
    let deadline = u64::from(grace_seconds) * 1000 - 2_000;
    Observation {
        grace_seconds,
        pod_grace_seconds: grace_seconds,
        cause: Cause::Deletion,
        deadline_unix_ms: t0 + i64::from(grace_seconds) * 1000,
        finished_unix_ms: t0 + deadline as i64 + 500,
        duration_ms: deadline + 500,
        outcome: Some(lameduck_proto::Outcome::Timeout),
        sequence_ms: Some(deadline + 1),
        phases: PhaseDurations {
            deregister: Some(1_001),
            exit: Some(499),
            ..PhaseDurations::default()
        },
        ..observation(i)
    }
}

#[tokio::test]
async fn a_timeout_raises_the_recommendation_and_is_announced_on_policy_and_workload() {
    // The policy already recommends a grace period from 6 shutdowns of 2.6 s.
    let mut policy = user_policy("deployment-web");
    let mut earlier = PolicyRecord::default();
    for i in 0..6 {
        let mut quick = observation(i - 100);
        quick.sequence_ms = Some(2_600);
        earlier.push(format!("old-{i}"), quick);
    }
    let (status, _) = earlier.status(&policy, Timestamp::from_millisecond(NOW - 60_000).unwrap());
    let applied = status
        .recommendation
        .and_then(|r| r.grace_period_seconds)
        .unwrap();
    policy.status = Some(status);
    let (ctx, mut api) = context(vec![policy]);
    ctx.book
        .lock()
        .unwrap()
        .entry("shop".into(), "deployment-web".into())
        .push("web-t".into(), timed_out_observation(0, applied));
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let reasons = Arc::new(std::sync::Mutex::new(Vec::new()));
    let scenario = {
        let (written, reasons) = (written.clone(), reasons.clone());
        tokio::spawn(async move {
            expect(
                &mut api,
                Method::PATCH,
                "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies/deployment-web/status?&fieldManager=lameduck-operator",
                |body| *written.lock().unwrap() = body.clone(),
                serde_json::to_value(user_policy("deployment-web")).unwrap(),
            )
            .await;
            for _ in 0..4 {
                expect(
                    &mut api,
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/shop/events?",
                    |body| {
                        reasons.lock().unwrap().push((
                            body["reason"].as_str().unwrap_or_default().to_owned(),
                            body["regarding"]["kind"].as_str().unwrap_or_default().to_owned(),
                            body["type"].as_str().unwrap_or_default().to_owned(),
                        ))
                    },
                    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"}, "eventTime": null}),
                )
                .await;
            }
        })
    };
    writer::write_statuses(&ctx, Timestamp::from_millisecond(NOW).unwrap())
        .await
        .unwrap();
    scenario.await.unwrap();
    let body = written.lock().unwrap().clone();
    let status: ShutdownPolicyStatus = serde_json::from_value(body["status"].clone()).unwrap();
    assert_eq!(status.timeouts, 1);
    assert_eq!(status.killed, 0);
    let raised = status
        .recommendation
        .and_then(|r| r.grace_period_seconds)
        .unwrap();
    assert!(
        raised > applied,
        "a timeout at {applied}s left the recommendation at {raised}s"
    );
    let reasons = reasons.lock().unwrap().clone();
    let warning = |kind: &str| {
        (
            "ShutdownTimedOut".to_owned(),
            kind.to_owned(),
            "Warning".to_owned(),
        )
    };
    assert!(reasons.contains(&warning("ShutdownPolicy")), "{reasons:?}");
    assert!(reasons.contains(&warning("Deployment")), "{reasons:?}");
    assert_eq!(
        reasons
            .iter()
            .filter(|(reason, _, _)| reason == "RecommendationChanged")
            .count(),
        2,
        "{reasons:?}"
    );
}

/// Like [`expect`], answering with an error status.
async fn expect_error(handle: &mut ApiHandle, method: Method, path: &str, code: u16, reply: Value) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
        .unwrap_or_else(|| panic!("client dropped before {method} {path}"));
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().to_string(), path);
    send.send_response(
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&reply).unwrap()))
            .unwrap(),
    );
}

/// Fails when the controller sends any request within 100 ms.
async fn expect_silence(handle: &mut ApiHandle, what: &str) {
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await
    {
        panic!("{what}: unexpected {} {}", request.method(), request.uri());
    }
}

/// A context whose Namespace cache holds `shop` being deleted.
fn context_in_terminating_namespace(policies: Vec<ShutdownPolicy>) -> (Arc<Context>, ApiHandle) {
    let (ctx, api) = context(policies);
    let mut ctx = Arc::into_inner(ctx).unwrap();
    let mut writer = reflector::store::Writer::default();
    let namespace: kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace> =
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "deletionTimestamp": "2027-01-15T08:00:00Z"}
        }))
        .unwrap();
    writer.apply_watcher_event(&Event::Apply(namespace));
    ctx.namespaces = Some(writer.as_reader());
    (Arc::new(ctx), api)
}

/// The Deployment `web` as another object: `uid`, created at `created`.
fn deployment_with_uid(uid: &str, created: &str) -> SlimDeployment {
    let mut deployment = deployment();
    deployment.metadata.uid = Some(uid.into());
    deployment.metadata.creation_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().unwrap()),
    );
    deployment
}

/// A policy of Deployment `web` (uid `owner`) with `samples` shutdowns of 6 s recorded.
fn policy_with_history(owner: &SlimDeployment, samples: i64) -> ShutdownPolicy {
    let mut policy = user_policy("deployment-web");
    policy.metadata.uid = Some("p-1".into());
    policy.metadata.owner_references = workloads::owner_reference(owner).map(|o| vec![o]);
    let mut record = PolicyRecord::default();
    record.set_target(record::TargetIdentity {
        uid: owner.metadata.uid.clone().unwrap(),
        created_unix_ms: None,
    });
    for i in 0..samples {
        record.push(format!("old-{i}"), observation(i - 200));
    }
    let (status, _) = record.status(&policy, Timestamp::from_millisecond(NOW - 120_000).unwrap());
    assert_eq!(status.samples, samples as u64);
    policy.status = Some(status);
    policy
}

#[tokio::test]
async fn a_workload_in_a_terminating_namespace_gets_no_policy_and_records_nothing() {
    let web = deployment();
    let policy = policy_with_history(&web, 6);
    let (ctx, mut api) = context_in_terminating_namespace(vec![policy]);
    ctx.book
        .lock()
        .unwrap()
        .entry("shop".into(), "deployment-web".into())
        .push("web-late".into(), observation(1));
    // Another workload of the namespace, without a policy: none is created.
    let mut api_deployment = deployment();
    api_deployment.metadata.name = Some("api".into());
    for workload in [web, api_deployment] {
        let action = workloads::reconcile(Arc::new(workload), ctx.clone())
            .await
            .unwrap();
        assert_eq!(action, Action::await_change());
    }
    expect_silence(&mut api, "reconcile in a terminating namespace").await;
    {
        let mut book = ctx.book.lock().unwrap();
        let record = book.entry("shop".into(), "deployment-web".into());
        assert!(record.is_closing());
        assert!(!record.has_pending(), "the queued shutdown is dropped");
        record.push("web-later".into(), observation(2));
        assert!(!record.has_pending(), "and nothing more is taken");
    }
    let patches = writer::write_statuses(&ctx, Timestamp::from_millisecond(NOW).unwrap())
        .await
        .unwrap();
    assert_eq!(patches, 0);
    expect_silence(&mut api, "status write in a terminating namespace").await;
    // The book forgets the namespace's records.
    let mut book = ctx.book.lock().unwrap();
    book.retain(|_| true, |namespace| namespace == "shop", NOW);
    assert!(book.is_empty());
}

#[tokio::test]
async fn a_create_refused_in_a_terminating_namespace_is_not_an_error() {
    // The Namespace cache has not seen the deletion yet: the API server refuses the create.
    let (ctx, mut api) = context(vec![]);
    let scenario = tokio::spawn(async move {
        expect_error(
            &mut api,
            Method::POST,
            "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies?&fieldManager=lameduck-operator",
            403,
            json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "shutdownpolicies.lameduck.dev \"deployment-web\" is forbidden: unable to create new content in namespace shop because it is being terminated",
                "details": {"name": "deployment-web", "group": "lameduck.dev", "kind": "shutdownpolicies",
                            "causes": [{"reason": "NamespaceTerminating", "message": "namespace shop is being terminated", "field": "metadata.namespace"}]}
            }),
        )
        .await;
        // No pod count follows: the reconcile stops there.
        expect_silence(&mut api, "after the refused create").await;
    });
    let action = workloads::reconcile(Arc::new(deployment()), ctx.clone())
        .await
        .unwrap();
    scenario.await.unwrap();
    assert_eq!(action, Action::await_change());
}

#[tokio::test]
async fn another_forbidden_create_is_still_an_error() {
    let (ctx, mut api) = context(vec![]);
    let scenario = tokio::spawn(async move {
        expect_error(
            &mut api,
            Method::POST,
            "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies?&fieldManager=lameduck-operator",
            403,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                   "message": "shutdownpolicies.lameduck.dev is forbidden: User cannot create resource"}),
        )
        .await;
    });
    let error = workloads::reconcile(Arc::new(deployment()), ctx.clone())
        .await
        .expect_err("RBAC refusal");
    scenario.await.unwrap();
    assert!(error.to_string().contains("shop/deployment-web"), "{error}");
}

#[tokio::test]
async fn a_workload_created_again_under_its_name_starts_from_no_samples() {
    // The policy recorded 6 shutdowns of the Deployment web with uid d-0; web was deleted
    // and created again (uid d-1) before the policy was garbage-collected.
    let old = deployment_with_uid("d-0", "2027-01-15T07:00:00Z");
    let policy = policy_with_history(&old, 6);
    let previous = policy.status.clone().unwrap();
    assert_eq!(previous.target_uid.as_deref(), Some("d-0"));
    assert!(
        previous
            .recommendation
            .and_then(|r| r.grace_period_seconds)
            .is_some()
    );
    let (ctx, mut api) = context(vec![policy]);
    let new = deployment_with_uid("d-1", "2027-01-15T07:58:00Z");
    let created_ms = new
        .metadata
        .creation_timestamp
        .as_ref()
        .unwrap()
        .0
        .as_millisecond();
    {
        let mut book = ctx.book.lock().unwrap();
        let record = book.entry("shop".into(), "deployment-web".into());
        // One shutdown of a pod of the old Deployment, one of the new one.
        let mut old_pod = observation(1);
        old_pod.pod_created_unix_ms = Some(created_ms - 60_000);
        record.push("web-old".into(), old_pod);
        let mut new_pod = observation(2);
        new_pod.pod_created_unix_ms = Some(created_ms + 5_000);
        record.push("web-new".into(), new_pod);
    }
    // The reconcile of the new Deployment: the old one still owns the policy (no adoption
    // over another controller), the pods are counted.
    let scenario = tokio::spawn(async move {
        expect(&mut api, Method::GET, PODS_PATH, |_| {}, pod_list()).await;
        api
    });
    workloads::reconcile(Arc::new(new), ctx.clone())
        .await
        .unwrap();
    let mut api = scenario.await.unwrap();
    let written = Arc::new(std::sync::Mutex::new(Value::Null));
    let reasons = Arc::new(std::sync::Mutex::new(Vec::new()));
    let scenario = {
        let (written, reasons) = (written.clone(), reasons.clone());
        tokio::spawn(async move {
            expect(
                &mut api,
                Method::PATCH,
                "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies/deployment-web/status?&fieldManager=lameduck-operator",
                |body| *written.lock().unwrap() = body.clone(),
                serde_json::to_value(user_policy("deployment-web")).unwrap(),
            )
            .await;
            for _ in 0..4 {
                expect(
                    &mut api,
                    Method::POST,
                    "/apis/events.k8s.io/v1/namespaces/shop/events?",
                    |body| reasons.lock().unwrap().push(body["reason"].as_str().unwrap_or_default().to_owned()),
                    json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "shop"}, "eventTime": null}),
                )
                .await;
            }
        })
    };
    writer::write_statuses(&ctx, Timestamp::from_millisecond(NOW).unwrap())
        .await
        .unwrap();
    scenario.await.unwrap();
    let body = written.lock().unwrap().clone();
    let status: ShutdownPolicyStatus = serde_json::from_value(body["status"].clone()).unwrap();
    assert_eq!(status.target_uid.as_deref(), Some("d-1"));
    assert_eq!(
        status.samples, 1,
        "only the new Deployment's pod: {status:?}"
    );
    assert_eq!(
        status.recommendation, None,
        "1 of 3 samples: nothing recommended"
    );
    assert!(
        body["status"]["recommendation"].is_null(),
        "the old recommendation is removed: {body}"
    );
    let reasons = reasons.lock().unwrap().clone();
    assert_eq!(
        reasons,
        [
            "HistoryReset",
            "HistoryReset",
            "RecommendationChanged",
            "RecommendationChanged"
        ]
    );
}

#[tokio::test]
async fn a_deleted_workload_closes_its_record_but_not_a_newer_ones() {
    let old = deployment_with_uid("d-0", "2027-01-15T07:00:00Z");
    let new = deployment_with_uid("d-1", "2027-01-15T07:58:00Z");
    let policy = policy_with_history(&old, 3);
    let (ctx, mut api) = context(vec![policy]);
    let scenario = tokio::spawn(async move {
        expect(&mut api, Method::GET, PODS_PATH, |_| {}, pod_list()).await;
        api
    });
    workloads::reconcile(Arc::new(new.clone()), ctx.clone())
        .await
        .unwrap();
    let _api = scenario.await.unwrap();
    // The old object's delete event comes late: the new workload's record stays open.
    workloads::close_target(&ctx, &old);
    let closing = |ctx: &Context| {
        ctx.book
            .lock()
            .unwrap()
            .entry("shop".into(), "deployment-web".into())
            .is_closing()
    };
    assert!(!closing(&ctx));
    workloads::close_target(&ctx, &new);
    assert!(closing(&ctx));
}

#[tokio::test]
async fn nothing_is_written_into_a_policy_being_deleted() {
    let mut policy = policy_with_history(&deployment(), 3);
    policy.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::from_millisecond(NOW).unwrap(),
        ));
    let (ctx, mut api) = context(vec![policy]);
    ctx.book
        .lock()
        .unwrap()
        .entry("shop".into(), "deployment-web".into())
        .push("web-1".into(), observation(1));
    let patches = writer::write_statuses(&ctx, Timestamp::from_millisecond(NOW).unwrap())
        .await
        .unwrap();
    assert_eq!(patches, 0);
    expect_silence(&mut api, "status write into a policy being deleted").await;
}

#[test]
fn the_book_forgets_what_describes_objects_that_are_gone() {
    let key = |name: &str| PolicyKey {
        namespace: "shop".into(),
        name: name.into(),
    };
    let mut book = StatusBook::default();
    // A policy that existed (its record was loaded) and is gone: dropped, queue included.
    let gone = book.entry("shop".into(), "deployment-gone".into());
    let _ = gone.status(
        &user_policy("deployment-gone"),
        Timestamp::from_millisecond(NOW).unwrap(),
    );
    gone.push("web-1".into(), observation(1));
    // Observations waiting for a policy that has not appeared yet: kept while recent.
    book.entry("shop".into(), "deployment-soon".into())
        .push("soon-1".into(), observation(50));
    book.entry("shop".into(), "deployment-never".into())
        .push("never-1".into(), observation(-400));
    // A live policy: kept.
    book.entry("shop".into(), "deployment-web".into());
    book.retain(|k| *k == key("deployment-web"), |_| false, NOW);
    assert_eq!(book.len(), 2);
    let mut left: Vec<String> = [
        "deployment-web",
        "deployment-soon",
        "deployment-gone",
        "deployment-never",
    ]
    .into_iter()
    .filter(|name| {
        book.entry("shop".into(), (*name).into()).has_pending() || *name == "deployment-web"
    })
    .map(str::to_owned)
    .collect();
    left.sort();
    assert_eq!(left, ["deployment-soon", "deployment-web"]);
}

#[test]
fn a_lease_is_free_only_when_nobody_holds_it() {
    let lease = |annotations: Value, spec: Value| -> k8s_openapi::api::coordination::v1::Lease {
        serde_json::from_value(json!({
            "metadata": {"name": "lameduck-operator", "annotations": annotations},
            "spec": spec
        }))
        .unwrap()
    };
    let now = Timestamp::from_second(1_800_000_000).unwrap();
    let window = Duration::from_secs(24);
    let at = |seconds_ago: i64| json!({ANNOTATION_HANDED_OVER: Timestamp::from_second(1_800_000_000 - seconds_ago).unwrap().to_string()});
    assert!(lease_is_free(None, now, window), "no Lease yet");
    assert!(
        lease_is_free(Some(&lease(at(3), json!({}))), now, window),
        "handed over 3 s ago and released"
    );
    assert!(lease_is_free(
        Some(&lease(at(3), json!({"holderIdentity": ""}))),
        now,
        window
    ));
    // Released, but not by a graceful hand-over: another replica cleared an expired lease
    // of a crashed or partitioned leader before taking it.
    assert!(!lease_is_free(
        Some(&lease(json!({}), json!({}))),
        now,
        window
    ));
    // A hand-over long ago says nothing about this release.
    assert!(!lease_is_free(
        Some(&lease(at(600), json!({}))),
        now,
        window
    ));
    // Held, or held by a replica that crashed (its renewals stopped): a new process waits.
    assert!(!lease_is_free(
        Some(&lease(
            at(3),
            json!({"holderIdentity": "lameduck-abc", "leaseDurationSeconds": 12})
        )),
        now,
        window
    ));
}

fn cron_job(active: Value) -> workloads::SlimCronJob {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "report", "namespace": "shop", "uid": "cj-1"},
        "spec": {"schedule": "* * * * *",
                 "jobTemplate": {"spec": {"template": {"metadata": {"annotations": {"lameduck.dev/inject": "true"}}}}}},
        "status": {"active": active}
    }))
    .unwrap()
}

fn job(owner: Option<Value>) -> workloads::SlimJob {
    let mut value = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "report-29000000", "namespace": "shop", "uid": "j-1"},
        "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "j-1"}},
                 "template": {"metadata": {"annotations": {"lameduck.dev/inject": "true"}}}}
    });
    if let Some(owner) = owner {
        value["metadata"]["ownerReferences"] = json!([owner]);
    }
    serde_json::from_value(value).unwrap()
}

const CREATE_POLICY_PATH: &str =
    "/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies?&fieldManager=lameduck-operator";

#[tokio::test]
async fn an_annotated_cronjob_gets_an_owned_policy_and_counts_its_running_jobs_pods() {
    let (ctx, mut api) = context(vec![]);
    let scenario = tokio::spawn(async move {
        expect(
            &mut api,
            Method::POST,
            CREATE_POLICY_PATH,
            |body| {
                assert_eq!(body["metadata"]["name"], "cronjob-report");
                assert_eq!(
                    body["metadata"]["ownerReferences"][0],
                    json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": "report",
                           "uid": "cj-1", "controller": true, "blockOwnerDeletion": true})
                );
                assert_eq!(
                    body["spec"]["targetRef"],
                    json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": "report"})
                );
            },
            serde_json::to_value(user_policy("cronjob-report")).unwrap(),
        )
        .await;
        // The pods of its running Job, by the Job controller's uid label.
        expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/shop/pods?&labelSelector=batch.kubernetes.io%2Fcontroller-uid+in+%28j-1%29",
            |_| {},
            pod_list(),
        )
        .await;
    });
    let running = json!([{"apiVersion": "batch/v1", "kind": "Job", "name": "report-29000000",
                          "namespace": "shop", "uid": "j-1"}]);
    let action = workloads::reconcile(Arc::new(cron_job(running)), ctx.clone())
        .await
        .unwrap();
    scenario.await.unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    let status = recorded_status(&ctx, "cronjob-report");
    assert_eq!(status.target_uid.as_deref(), Some("cj-1"));
    assert_eq!(
        status.pods,
        Some(PodCounts {
            injected: 1,
            not_injected: 1
        })
    );
}

#[tokio::test]
async fn a_cronjob_between_runs_counts_no_pods_without_listing() {
    let (ctx, mut api) = context(vec![]);
    let scenario = tokio::spawn(async move {
        expect(
            &mut api,
            Method::POST,
            CREATE_POLICY_PATH,
            |body| assert_eq!(body["metadata"]["name"], "cronjob-report"),
            serde_json::to_value(user_policy("cronjob-report")).unwrap(),
        )
        .await;
        expect_silence(&mut api, "no pod list for a CronJob without running Jobs").await;
    });
    workloads::reconcile(Arc::new(cron_job(json!([]))), ctx.clone())
        .await
        .unwrap();
    scenario.await.unwrap();
    let status = recorded_status(&ctx, "cronjob-report");
    assert_eq!(status.pods, Some(PodCounts::default()));
}

#[tokio::test]
async fn an_annotated_standalone_job_gets_an_owned_policy() {
    let (ctx, mut api) = context(vec![]);
    let scenario = tokio::spawn(async move {
        expect(
            &mut api,
            Method::POST,
            CREATE_POLICY_PATH,
            |body| {
                assert_eq!(body["metadata"]["name"], "job-report-29000000");
                assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "Job");
                assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "j-1");
                assert_eq!(body["spec"]["targetRef"]["apiVersion"], "batch/v1");
            },
            serde_json::to_value(user_policy("job-report-29000000")).unwrap(),
        )
        .await;
        expect(
            &mut api,
            Method::GET,
            "/api/v1/namespaces/shop/pods?&labelSelector=batch.kubernetes.io%2Fcontroller-uid%3Dj-1",
            |_| {},
            pod_list(),
        )
        .await;
    });
    workloads::reconcile(Arc::new(job(None)), ctx.clone())
        .await
        .unwrap();
    scenario.await.unwrap();
}

#[tokio::test]
async fn a_cronjobs_job_gets_no_policy_of_its_own() {
    let (ctx, mut api) = context(vec![]);
    let owner = json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": "report",
                       "uid": "cj-1", "controller": true});
    let action = workloads::reconcile(Arc::new(job(Some(owner))), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    expect_silence(&mut api, "no policy for a Job its CronJob's policy covers").await;
}
