//! Helpers for the suites that run against the local cluster's API server
//! (`--features cluster-tests`).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A client for the local cluster (`KUBECONFIG`, else `.state/kubeconfig`); panics with how
/// to start one if none answers within 5 s.
pub async fn client() -> Client {
    let path = match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => std::path::PathBuf::from(p),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.state/kubeconfig"),
    };
    let attempt = async {
        let kc = Kubeconfig::read_from(&path).map_err(|e| e.to_string())?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let client = Client::try_from(config).map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
            .await
            .map_err(|_| "API server did not answer in 5 s".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(client)
    };
    match attempt.await {
        Ok(client) => client,
        Err(e) => panic!(
            "no cluster reachable with kubeconfig {}: {e}\nrun `make cluster-up` first",
            path.display()
        ),
    }
}

/// Applies the ShutdownPolicy CRD as the code defines it and waits until it is
/// established. A fresh cluster has none until the chart is installed, and the operator's
/// watches (the webhook's included) are not ready without it.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = lameduck_operator::api::crd();
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
