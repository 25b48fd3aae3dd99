//! Against a real API server (the local cluster, `make cluster-up`): the CRD installs, the
//! API server refuses invalid policies with the CEL messages, applies the defaults, shows
//! the printer columns, and keeps the status — histogram included — exactly; and the
//! controller's history rules hold through a namespace's deletion and re-creation.
//!
//! Run by the cluster stage only: `cargo test -p lameduck-operator --features cluster-tests
//! --test cluster`. Fails (never skips) when no cluster is reachable.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use lameduck_operator::api::{ShutdownPolicy, ShutdownPolicyStatus};
use lameduck_operator::recommend::{GracePeriodSettings, History, PhaseDurations, Sample};
use serde_json::json;

mod common;
use common::cluster::{client, install_crd};

async fn namespace(client: &Client, name: &str) -> Api<ShutdownPolicy> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(name, &DeleteParams::default()).await;
    for _ in 0..120 {
        let ns: Namespace = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .unwrap();
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => return Api::namespaced(client.clone(), name),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await, // still terminating
        }
    }
    panic!("could not create namespace {name}");
}

fn policy(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "lameduck.dev/v1alpha1", "kind": "ShutdownPolicy", "metadata": {"name": name}, "spec": spec})
}

fn target() -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"})
}

#[tokio::test]
async fn crd_validates_defaults_prints_and_keeps_the_status() {
    let client = client().await;
    install_crd(&client).await;
    let policies = namespace(&client, "lameduck-it-crd").await;
    let dynamic: Api<kube::core::DynamicObject> = Api::namespaced_with(
        client.clone(),
        "lameduck-it-crd",
        &kube::core::ApiResource::erase::<ShutdownPolicy>(&()),
    );

    let rejected = [
        (
            json!({"targetRef": target(), "gracePeriod": {"minSeconds": 700, "maxSeconds": 600}}),
            "gracePeriod.minSeconds must be less than or equal to gracePeriod.maxSeconds",
        ),
        (
            json!({"targetRef": target(), "gracePeriod": {"percentile": 0}}),
            "gracePeriod.percentile must be greater than 0 and at most 1",
        ),
        (
            json!({"targetRef": target(), "gracePeriod": {"percentile": 1.5}}),
            "gracePeriod.percentile must be greater than 0 and at most 1",
        ),
        (
            json!({"targetRef": target(), "gracePeriod": {"killBumpRatio": 0.5}}),
            "gracePeriod.killBumpRatio must be between 1 and 10",
        ),
        (
            json!({"targetRef": target(), "gracePeriod": {"halfLife": "yesterday"}}),
            "gracePeriod.halfLife must be a duration of at least 1m",
        ),
        (
            json!({"targetRef": target(), "drain": {"mode": "HTTP"}}),
            "drain.http (port and path) is required when drain.mode is HTTP",
        ),
        (
            json!({"targetRef": target(), "drain": {"minDelaySeconds": 20, "maxDelaySeconds": 15}}),
            "drain.minDelaySeconds must be less than or equal to drain.maxDelaySeconds",
        ),
        (
            json!({"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ""}}),
            "targetRef.name must not be empty",
        ),
        (
            json!({"targetRef": target(), "drain": {"action": "kill -QUIT 1"}}),
            "drain.action must be signal:<NAME>, exec:<command>, http:<port><path> or none",
        ),
    ];
    for (i, (spec, message)) in rejected.into_iter().enumerate() {
        let object: kube::core::DynamicObject =
            serde_json::from_value(policy(&format!("bad-{i}"), spec.clone())).unwrap();
        match dynamic.create(&PostParams::default(), &object).await {
            Ok(_) => panic!("accepted an invalid policy: {spec}"),
            Err(kube::Error::Api(status)) => assert!(
                status.message.contains(message),
                "{spec}: {}",
                status.message
            ),
            Err(error) => panic!("{spec}: {error}"),
        }
    }

    // A drain action that starts like one passes; the operator reads the rest (the
    // condition DrainActionInvalid).
    for (i, action) in ["web=signal:SIGQUIT; api=none", "signal:SIGSTOP", ""]
        .into_iter()
        .enumerate()
    {
        let object: kube::core::DynamicObject = serde_json::from_value(policy(
            &format!("action-{i}"),
            json!({"targetRef": target(), "drain": {"action": action}}),
        ))
        .unwrap();
        dynamic
            .create(&PostParams::default(), &object)
            .await
            .unwrap_or_else(|e| panic!("{action:?} refused: {e}"));
        // Gone again: the table below reads the namespace's only policy.
        dynamic
            .delete(&format!("action-{i}"), &DeleteParams::default())
            .await
            .expect("delete");
    }

    // Defaults are applied by the API server.
    let object: ShutdownPolicy =
        serde_json::from_value(policy("deployment-web", json!({"targetRef": target()}))).unwrap();
    let created = policies
        .create(&PostParams::default(), &object)
        .await
        .expect("create a valid policy");
    assert_eq!(created.spec.grace_period.min_seconds, 5);
    assert_eq!(created.spec.grace_period.half_life, "24h");
    assert_eq!(created.spec.drain.max_delay_seconds, 15);

    // targetRef is immutable.
    let moved = json!({"spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "other"}}});
    let error = policies
        .patch(
            "deployment-web",
            &PatchParams::default(),
            &Patch::Merge(&moved),
        )
        .await
        .expect_err("targetRef changed");
    assert!(
        error.to_string().contains("targetRef cannot be changed"),
        "{error}"
    );

    // The status, histogram included, comes back exactly.
    let settings = GracePeriodSettings::default();
    let mut history = History::new();
    for i in 0..40 {
        history.record(
            &Sample {
                at_unix_ms: 1_800_000_000_000 + i * 997,
                duration_ms: 1_000 + (i as u64 * 7_919) % 20_000,
                sequence_ms: Some(900 + (i as u64 * 7_919) % 20_000),
                grace_seconds: 30,
                killed: i == 39,
                timed_out: i == 38 || i == 39,
                deregister_lag_ms: Some(700 + i as u64 * 13),
                phases: PhaseDurations {
                    deregister: Some(1_000),
                    drain: Some(20),
                    cleanup: Some(i as u64 * 31),
                    exit: Some(0),
                },
                // The refusal histogram and a recent refusal go through the schema too.
                refused: Some(if i == 37 { 5 } else { 0 }),
                open_at_release: 0,
            },
            &settings,
        );
    }
    let status = ShutdownPolicyStatus {
        samples: history.samples(),
        killed: 1,
        timeouts: 2,
        container_restart_shutdowns: 3,
        refused: Some(lameduck_operator::api::RefusedConnections {
            total: 5,
            measured: 40,
            shutdowns: 1,
            p99: history.refused_quantile(0.99),
        }),
        histogram: Some(history.to_state()),
        ..Default::default()
    };
    policies
        .patch_status(
            "deployment-web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .expect("patch the status");
    let stored = policies
        .get_status("deployment-web")
        .await
        .expect("get the status");
    let stored_status = stored.status.expect("status");
    assert_eq!(stored_status, status);
    assert_eq!(
        History::from_state(stored_status.histogram.as_ref().unwrap()),
        history
    );

    // `kubectl get sdp` columns.
    let request = http::Request::get(
        "/apis/lameduck.dev/v1alpha1/namespaces/lameduck-it-crd/shutdownpolicies",
    )
    .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Vec::new())
    .unwrap();
    let table: serde_json::Value = client.request(request).await.expect("table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Name",
            "Target",
            "Mode",
            "Samples",
            "P99",
            "Recommended",
            "Killed",
            "Timeouts",
            "Refused",
            "Restarts",
            "Age"
        ]
    );
    // Container restarts only in `-o wide`: the default view stays narrow.
    let priorities: Vec<i64> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["priority"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(priorities, [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(table["rows"][0]["cells"][3], 40);
    assert_eq!(table["rows"][0]["cells"][6], 1);
    assert_eq!(table["rows"][0]["cells"][7], 2);
    assert_eq!(table["rows"][0]["cells"][8], 5);
    assert_eq!(table["rows"][0]["cells"][9], 3);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .delete("lameduck-it-crd", &DeleteParams::default())
        .await;
}

/// A shutdown of a pod of the Deployment created at `created_ms`, observed now.
fn observation(created_ms: i64, i: i64) -> lameduck_operator::observe::Observation {
    let now = k8s_openapi::jiff::Timestamp::now().as_millisecond();
    let t0 = now - 10_000 + i * 100;
    lameduck_operator::observe::Observation {
        t0_unix_ms: t0,
        t0_source: lameduck_operator::observe::T0Source::Report,
        grace_seconds: 30,
        pod_grace_seconds: 30,
        cause: lameduck_operator::observe::Cause::Deletion,
        pod_created_unix_ms: Some(created_ms + 1_000),
        deadline_unix_ms: t0 + 30_000,
        finished_unix_ms: t0 + 3_000,
        duration_ms: 3_000,
        killed_containers: vec![],
        oom_killed_containers: vec![],
        outcome: Some(lameduck_proto::Outcome::Acked),
        sequence_ms: Some(2_600),
        phases: PhaseDurations {
            deregister: Some(1_000),
            drain: Some(100),
            cleanup: Some(1_500),
            exit: Some(400),
        },
        deregister_lag_ms: Some(500),
        container_restarts: vec![],
        container_restarts_omitted: 0,
        refused: Some(0),
        open_at_release: 0,
        warnings: vec![],
    }
}

/// The workload as the operator's watches hold it.
fn slim(
    deployment: &k8s_openapi::api::apps::v1::Deployment,
) -> lameduck_operator::controller::workloads::SlimDeployment {
    serde_json::from_value(serde_json::to_value(deployment).expect("encode"))
        .expect("decode as the watches do")
}

fn annotated_deployment() -> k8s_openapi::api::apps::v1::Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "annotations": {"lameduck.dev/inject": "true"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "lameduck/testapp:dev"}]}}
        }
    }))
    .unwrap()
}

async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..240 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("timed out after 60 s waiting for {what}");
}

/// The controller's rules against the real API server: a namespace is deleted with its
/// Deployment and policy while shutdowns are still observed, and created again with a
/// Deployment of the same name: the new policy starts from 0 samples, and nothing is
/// created or recorded in the namespace while it terminates.
#[tokio::test]
async fn a_namespace_created_again_with_the_same_workload_starts_from_no_samples() {
    let client = client().await;
    install_crd(&client).await;
    let ns = format!("lameduck-it-history-{}", std::process::id());
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(history_scenario(
        client.clone(),
        ns.clone(),
    )))
    .await;
    // Whatever happened: release the ConfigMap that holds the namespace, delete it.
    let configmaps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), &ns);
    let _ = configmaps
        .patch(
            "hold",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn history_scenario(client: Client, ns: String) {
    use std::sync::Arc;

    use futures::StreamExt;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;
    use kube::core::PartialObjectMeta;
    use kube::runtime::controller::Action;
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    use lameduck_operator::controller::{
        Context, ControllerMetrics, PolicyIndex, PolicyKey, workloads, writer,
    };

    let namespaces: Api<Namespace> = Api::all(client.clone());

    // What the leader reads: the policies (of this test's namespace only: the status
    // writer writes every policy it knows, and other tests run at the same time) and the
    // namespaces, from their watches.
    let (policy_cache, policy_writer) = reflector::store();
    tokio::spawn(
        watcher(
            Api::<ShutdownPolicy>::namespaced(client.clone(), &ns),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(policy_writer)
        .for_each(|_| std::future::ready(())),
    );
    let index = PolicyIndex::from_store(policy_cache);
    let (namespace_cache, cache_writer) = reflector::store();
    tokio::spawn(
        watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(cache_writer)
        .for_each(|_| std::future::ready(())),
    );
    index
        .store()
        .wait_until_ready()
        .await
        .expect("policy cache");
    namespace_cache
        .wait_until_ready()
        .await
        .expect("namespace cache");
    let mut ctx = Context::new(
        client.clone(),
        index.clone(),
        ControllerMetrics::default(),
        None,
    );
    ctx.namespaces = Some(namespace_cache.clone());
    let ctx = Arc::new(ctx);
    let cached_policy = |ns: &str| index.find(ns, "Deployment", "web");

    // 1. The first namespace: Deployment web, its policy, 9 shutdowns recorded.
    let policies = namespace(&client, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let first = deployments
        .create(&PostParams::default(), &annotated_deployment())
        .await
        .expect("create Deployment web");
    let first_created = first
        .creation_timestamp()
        .expect("created")
        .0
        .as_millisecond();
    workloads::reconcile(Arc::new(slim(&first)), ctx.clone())
        .await
        .expect("reconcile web");
    eventually("the policy in the cache", async || cached_policy(&ns)).await;
    for i in 0..9 {
        ctx.book
            .lock()
            .unwrap()
            .entry(ns.clone(), "deployment-web".into())
            .push(format!("web-{i}"), observation(first_created, i));
    }
    writer::write_statuses(&ctx, k8s_openapi::jiff::Timestamp::now())
        .await
        .expect("status write");
    let recorded = eventually("9 samples in the cached policy", async || {
        cached_policy(&ns).filter(|p| p.status.as_ref().is_some_and(|s| s.samples == 9))
    })
    .await;
    let status = recorded.status.clone().expect("status");
    assert_eq!(status.target_uid, first.uid());
    assert!(
        status
            .recommendation
            .and_then(|r| r.grace_period_seconds)
            .is_some()
    );

    // 2. The namespace is deleted; a ConfigMap with a finalizer keeps it terminating.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let hold: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "hold", "finalizers": ["lameduck.dev/test-hold"]}
    }))
    .unwrap();
    configmaps
        .create(&PostParams::default(), &hold)
        .await
        .expect("create the hold");
    namespaces
        .delete(&ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    eventually("the namespace terminating in the cache", async || {
        ctx.namespace_terminating(&ns).then_some(())
    })
    .await;
    // Shutdowns observed while it terminates, and a status tick: nothing is recorded.
    for i in 9..12 {
        ctx.book
            .lock()
            .unwrap()
            .entry(ns.clone(), "deployment-web".into())
            .push(format!("web-{i}"), observation(first_created, i));
    }
    writer::write_statuses(&ctx, k8s_openapi::jiff::Timestamp::now())
        .await
        .expect("status write while terminating");
    eventually("the policy deleted with the namespace", async || {
        (policies.get_opt("deployment-web").await.ok()?.is_none() && cached_policy(&ns).is_none())
            .then_some(())
    })
    .await;
    // The old Deployment reconciled meanwhile: no policy is created again…
    let action = workloads::reconcile(Arc::new(slim(&first)), ctx.clone())
        .await
        .expect("reconcile in a terminating namespace");
    assert_eq!(action, Action::await_change());
    // …not even when the Namespace cache has not seen the deletion: the API server's
    // refusal (403, NamespaceTerminating) ends the reconcile without an error.
    let blind = Arc::new(Context::new(
        client.clone(),
        index.clone(),
        ControllerMetrics::default(),
        None,
    ));
    let action = workloads::reconcile(Arc::new(slim(&first)), blind)
        .await
        .expect("a refused create is not an error");
    assert_eq!(action, Action::await_change());
    assert!(
        policies
            .get_opt("deployment-web")
            .await
            .expect("get")
            .is_none()
    );
    ctx.book.lock().unwrap().retain(
        |key: &PolicyKey| cached_policy(&key.namespace).is_some(),
        |namespace| ctx.namespace_terminating(namespace),
        k8s_openapi::jiff::Timestamp::now().as_millisecond(),
    );
    assert!(
        ctx.book.lock().unwrap().is_empty(),
        "nothing in memory outlives the namespace"
    );

    // 3. The namespace is gone; it is created again with a Deployment web.
    configmaps
        .patch(
            "hold",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("release the hold");
    eventually("the namespace gone", async || {
        namespaces.get_opt(&ns).await.ok()?.is_none().then_some(())
    })
    .await;
    let policies = namespace(&client, &ns).await;
    let second = deployments
        .create(&PostParams::default(), &annotated_deployment())
        .await
        .expect("create Deployment web again");
    assert_ne!(second.uid(), first.uid());
    eventually("the new namespace in the cache", async || {
        (namespace_cache
            .get(&reflector::ObjectRef::new(&ns))
            .is_some_and(|n| n.metadata.deletion_timestamp.is_none()))
        .then_some(())
    })
    .await;
    workloads::reconcile(Arc::new(slim(&second)), ctx.clone())
        .await
        .expect("reconcile the new web");
    let fresh = eventually("the new policy in the cache", async || cached_policy(&ns)).await;
    assert_ne!(fresh.uid(), recorded.uid());
    // A late shutdown of a pod of the first Deployment: older than the new one, not its.
    ctx.book
        .lock()
        .unwrap()
        .entry(ns.clone(), "deployment-web".into())
        .push("web-late".into(), observation(first_created, 20));
    writer::write_statuses(&ctx, k8s_openapi::jiff::Timestamp::now())
        .await
        .expect("status write");
    let fresh = eventually("the new policy's first status", async || {
        policies
            .get_status("deployment-web")
            .await
            .ok()
            .filter(|p| p.status.as_ref().is_some_and(|s| s.target_uid.is_some()))
    })
    .await;
    let status = fresh.status.expect("status");
    assert_eq!(status.target_uid, second.uid());
    assert_eq!(
        status.samples, 0,
        "a new workload with an old name: {status:?}"
    );
    assert_eq!(status.recommendation, None);
}
