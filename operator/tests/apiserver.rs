//! The webhook against a real kube-apiserver (the local cluster: `make cluster-up`).
//! Built only with `--features cluster-tests`; without a reachable cluster it fails and
//! says how to get one. Run: `make webhook-cluster-test`, or
//! `KUBECONFIG=.state/kubeconfig cargo test -p lameduck-operator --features cluster-tests --test apiserver`.
//!
//! The webhook runs in this process on 127.0.0.1 and is registered by URL with its own CA
//! (self-managed certificates in a Secret, `caBundle` written by the operator's code).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use lameduck_operator::certs::{CertManager, CertPolicy, CertResolver};
use lameduck_operator::metrics::Metrics;
use lameduck_operator::watches::Watches;
use lameduck_operator::webhook::admission::Admitter;
use lameduck_operator::webhook::patch::InjectionConfig;
use lameduck_operator::webhook::policy::NoPolicies;
use lameduck_operator::webhook::server::{self, WebhookState};
use lameduck_proto::names;
use serde_json::json;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

mod common;
use common::cluster::{client, install_crd};

struct Webhook {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    resolver: Arc<CertResolver>,
    port: u16,
}

async fn start_webhook(client: &Client) -> Webhook {
    let resolver = Arc::new(CertResolver::default());
    // The webhook's watches include ShutdownPolicies: without the CRD they never list.
    install_crd(client).await;
    let (caches, run) = Watches::start(client);
    tokio::spawn(run);
    if tokio::time::timeout(Duration::from_secs(60), caches.wait_until_ready())
        .await
        .is_err()
    {
        panic!(
            "the webhook's watches did not list within 60 s; still waiting for: {:?}",
            caches.unlisted()
        );
    }
    let state = WebhookState {
        admitter: Admitter {
            config: Arc::new(InjectionConfig::default()),
            policies: Arc::new(NoPolicies),
            index: Arc::new(caches),
        },
        metrics: Arc::new(Metrics::default()),
        events: None,
        ready: Arc::new(AtomicBool::new(true)),
    };
    let listener = server::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let token = CancellationToken::new();
    let acceptor = TlsAcceptor::from(Arc::new(resolver.server_config()));
    let task = tokio::spawn(server::serve_tls(
        listener,
        acceptor,
        server::webhook_router(state),
        token.clone(),
        Duration::from_secs(5),
    ));
    Webhook {
        token,
        task,
        resolver,
        port,
    }
}

fn webhook_configuration(name: &str, namespace: &str, port: u16) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "inject.lameduck.dev".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/mutate")),
                ..Default::default()
            },
            failure_policy: Some("Ignore".into()),
            side_effects: "None".into(),
            reinvocation_policy: Some("IfNeeded".into()),
            timeout_seconds: Some(5),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [("kubernetes.io/metadata.name".into(), namespace.into())].into(),
                ),
                ..Default::default()
            }),
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            ..Default::default()
        }]),
    }
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "web", "image": "lameduck/testapp:dev"},
                           {"name": "worker", "image": "lameduck/testapp:dev"}],
            "nodeSelector": {"lameduck.dev/no-such-node": "true"}
        }
    }))
    .expect("pod")
}

fn injected(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|i| {
            i.first()
                .is_some_and(|c| c.name == names::SIDECAR_CONTAINER_NAME)
        })
}

/// Creates pods until one comes back injected (the API server picks up a new or changed
/// webhook configuration within a second or so).
async fn create_until_injected(pods: &Api<Pod>, prefix: &str) -> Pod {
    for i in 0..30 {
        let created = pods
            .create(&PostParams::default(), &pod(&format!("{prefix}-{i}")))
            .await
            .expect("create pod");
        if injected(&created) {
            return created;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("{prefix}: no pod came back injected in 15 s");
}

#[tokio::test]
async fn webhook_through_a_real_api_server() {
    let client = client().await;
    let suffix = std::process::id();
    let ns_name = format!("lameduck-webhook-test-{suffix}");
    let mwc_name = format!("lameduck-webhook-test-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({
        // `lameduck.dev/webhook: disabled` keeps an installed lameduck release's webhook
        // out of this namespace, so only the webhook under test injects here.
        "metadata": {"name": ns_name, "labels": {
            names::NAMESPACE_LABEL_INJECT: names::NAMESPACE_INJECT_ENABLED,
            "lameduck.dev/webhook": "disabled",
        }}
    }))
    .expect("ns");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    let webhook = start_webhook(&client).await;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configs
        .create(
            &PostParams::default(),
            &webhook_configuration(&mwc_name, &ns_name, webhook.port),
        )
        .await
        .expect("create webhook configuration");

    let manager = CertManager {
        client: client.clone(),
        namespace: ns_name.clone(),
        secret_name: "lameduck-webhook-tls".into(),
        webhook_config: Some(mwc_name.clone()),
        policy: CertPolicy {
            names: vec!["127.0.0.1".into()],
            ca_validity: Duration::from_secs(365 * 86_400),
            serving_validity: Duration::from_secs(30 * 86_400),
            renew_fraction: 1.0 / 3.0,
        },
        resolver: webhook.resolver.clone(),
    };
    let first = manager.reconcile().await.expect("certificates created");
    let bundle = configs
        .get(&mwc_name)
        .await
        .expect("mwc")
        .webhooks
        .expect("webhooks")[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("caBundle written");
    assert_eq!(
        bundle.0,
        first
            .ca_bundle(lameduck_operator::certs::unix_now())
            .into_bytes()
    );

    // 1. Pods come back injected.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    let injected_pod = create_until_injected(&pods, "injected").await;
    let labels = injected_pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(names::LABEL_INJECTED).map(String::as_str),
        Some("true")
    );
    let spec = injected_pod.spec.as_ref().expect("spec");
    for c in &spec.containers {
        let exec = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|p| p.exec.as_ref());
        assert_eq!(
            exec.and_then(|e| e.command.clone()),
            Some(vec![
                names::POD_BIN_PATH.into(),
                "prestop".into(),
                "--container".into(),
                c.name.clone()
            ])
        );
    }
    let sidecar = &spec.init_containers.as_ref().expect("init")[0];
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .any(|v| v.name == names::VOLUME_NAME)
    );

    // 2. Rotation (new CA and serving certificate), picked up without a restart.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_name);
    let expire = json!({"metadata": {"annotations": {"lameduck.dev/ca-not-after": "1"}}});
    secrets
        .patch(
            "lameduck-webhook-tls",
            &PatchParams::default(),
            &Patch::Merge(&expire),
        )
        .await
        .expect("age the CA");
    let rotated = manager.reconcile().await.expect("rotated");
    assert_ne!(rotated.ca_crt, first.ca_crt, "a new CA");
    assert_ne!(rotated.tls_crt, first.tls_crt, "a new serving certificate");
    create_until_injected(&pods, "rotated").await;

    // 3. Webhook stopped: pods are still created (failurePolicy Ignore), uninjected.
    webhook.token.cancel();
    let _ = webhook.task.await;
    let created = pods
        .create(&PostParams::default(), &pod("webhook-down"))
        .await
        .expect("created without the webhook");
    assert!(!injected(&created));

    let _ = configs.delete(&mwc_name, &DeleteParams::default()).await;
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;
}

/// `lameduck-operator cleanup` (the chart's post-delete hook) against the real API server:
/// deletes the Secret the operator wrote and the Lease, leaves a Secret provided from
/// outside, and finds nothing to do the second time.
#[tokio::test]
async fn cleanup_deletes_only_what_the_operator_created() {
    use k8s_openapi::api::coordination::v1::Lease;
    use lameduck_operator::cleanup::{Cleaned, cleanup};

    let client = client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_name = format!("lameduck-cleanup-{}", std::process::id());
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": ns_name, "labels": {"lameduck.dev/webhook": "disabled"}}
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns_name);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns_name);
    let secret = |name: &str, annotations: serde_json::Value| -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "stringData": {"tls.crt": "x"}
        }))
        .unwrap()
    };
    let pp = PostParams::default();
    secrets
        .create(
            &pp,
            &secret("own", json!({"lameduck.dev/ca-not-after": "1"})),
        )
        .await
        .unwrap();
    secrets
        .create(
            &pp,
            &secret("external", json!({"cert-manager.io/issuer-name": "ca"})),
        )
        .await
        .unwrap();
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "lameduck-operator"}})).unwrap();
    leases.create(&pp, &lease).await.unwrap();

    let first = cleanup(client.clone(), &ns_name, "own", "lameduck-operator")
        .await
        .unwrap();
    let external = cleanup(client.clone(), &ns_name, "external", "lameduck-operator")
        .await
        .unwrap();
    let again = cleanup(client.clone(), &ns_name, "own", "lameduck-operator")
        .await
        .unwrap();
    let own_left = secrets.get_opt("own").await.unwrap();
    let external_left = secrets.get_opt("external").await.unwrap();
    let lease_left = leases.get_opt("lameduck-operator").await.unwrap();
    let _ = namespaces.delete(&ns_name, &DeleteParams::default()).await;

    let results = |r: &[(String, Cleaned)]| r.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>();
    assert_eq!(
        results(&first),
        [Cleaned::Deleted, Cleaned::Deleted],
        "{first:?}"
    );
    assert!(
        matches!(results(&external)[..], [Cleaned::Kept(_), Cleaned::Absent]),
        "{external:?}"
    );
    assert_eq!(
        results(&again),
        [Cleaned::Absent, Cleaned::Absent],
        "{again:?}"
    );
    assert!(own_left.is_none() && lease_left.is_none());
    assert!(
        external_left.is_some(),
        "a Secret provided from outside must stay"
    );
}
