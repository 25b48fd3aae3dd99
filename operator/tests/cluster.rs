//! Against a real API server (the local cluster, `make cluster-up`): the CRD installs, the
//! API server refuses invalid policies with the CEL messages, applies the defaults, shows
//! the printer columns, and keeps the status — histogram included — exactly.
//!
//! Run by the cluster stage only: `cargo test -p lameduck-operator --features cluster-tests
//! --test cluster`. Fails (never skips) when no cluster is reachable.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::CustomResourceExt;
use kube::{Api, Client, Config};
use lameduck_operator::api::{ShutdownPolicy, ShutdownPolicyStatus};
use lameduck_operator::recommend::{GracePeriodSettings, History, PhaseDurations, Sample};
use serde_json::json;

fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.state/kubeconfig"))
        })
}

async fn client() -> Client {
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!(
            "no cluster: cannot read {} ({e}); start one with `make cluster-up` or set KUBECONFIG",
            path.display()
        )
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    let client = Client::try_from(config).unwrap_or_else(|e| panic!("client: {e}"));
    client.apiserver_version().await.unwrap_or_else(|e| {
        panic!(
            "no cluster reachable through {}: {e}; start one with `make cluster-up`",
            path.display()
        )
    });
    client
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = ShutdownPolicy::crd();
    let name = crd.metadata.name.clone().unwrap_or_default();
    crds.patch(
        &name,
        &PatchParams::apply("lameduck-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    for _ in 0..60 {
        let current = crds.get(&name).await.expect("get the CRD");
        let established = current.status.and_then(|s| s.conditions).is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("the ShutdownPolicy CRD was not established within 30 s");
}

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
            },
            &settings,
        );
    }
    let status = ShutdownPolicyStatus {
        samples: history.samples(),
        killed: 1,
        timeouts: 2,
        container_restart_shutdowns: 3,
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
    assert_eq!(priorities, [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(table["rows"][0]["cells"][3], 40);
    assert_eq!(table["rows"][0]["cells"][6], 1);
    assert_eq!(table["rows"][0]["cells"][7], 2);
    assert_eq!(table["rows"][0]["cells"][8], 3);

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .delete("lameduck-it-crd", &DeleteParams::default())
        .await;
}
