//! Helpers for the end-to-end tests that run against the local single-node cluster
//! (`e2e/cluster`, `make cluster-up`): a client from the cluster's kubeconfig that fails
//! loudly when the cluster is not there, throw-away namespaces, pod builders for the
//! `lameduck/testapp` image and log/timestamp helpers.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// The node the local cluster registers.
pub const NODE_NAME: &str = "lameduck-node";
/// The smoke-test image (`e2e/cluster/testapp`), imported by `make cluster-up`.
pub const TESTAPP_IMAGE: &str = "lameduck/testapp:dev";
/// A finalizer the tests put on their pods so that the final status (and the kubelet's
/// containers) stay readable after termination; the test removes it at the end.
pub const HOLD_FINALIZER: &str = "e2e.lameduck.dev/hold";

/// The kubeconfig: `$KUBECONFIG`, else the one `make cluster-up` writes (`.state/kubeconfig`).
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("KUBECONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("e2e/ is inside the repository")
            .join(".state/kubeconfig"),
    }
}

/// A client for the local cluster. Panics with a message that says to run
/// `make cluster-up` when the kubeconfig is missing or the API server does not answer:
/// the cluster tests fail, they never skip.
pub async fn client() -> Client {
    let path = kubeconfig_path();
    match try_client(&path).await {
        Ok(c) => c,
        Err(e) => panic!(
            "local cluster not reachable (kubeconfig {}): {e:#}\n\
             run `make cluster-up` first (then `export KUBECONFIG={}`)",
            path.display(),
            path.display()
        ),
    }
}

async fn try_client(path: &PathBuf) -> Result<Client> {
    let kc = Kubeconfig::read_from(path).context("reading kubeconfig")?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .context("loading kubeconfig")?;
    let client = Client::try_from(config)?;
    tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
        .await
        .map_err(|_| anyhow!("API server did not answer within 5 s"))?
        .context("asking the API server for its version")?;
    Ok(client)
}

/// Runs `body` in a fresh namespace `e2e-<prefix>-<suffix>` and deletes the namespace
/// afterwards, also when the body panics (the panic is then re-raised). Finalizers the
/// test left on pods are removed first so that the namespace can go.
pub async fn with_namespace<F, Fut>(prefix: &str, body: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let client = client().await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let ns = format!(
        "e2e-{prefix}-{:05x}",
        (nanos ^ std::process::id()) & 0xfffff
    );
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": ns, "labels": {"e2e.lameduck.dev/test": prefix}}
    }))
    .unwrap();
    ns_api
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}"));
    wait_for_default_service_account(&client, &ns).await;

    let outcome = tokio::spawn(body(client.clone(), ns.clone())).await;

    if let Err(e) = release_pods(&client, &ns).await {
        eprintln!("cleanup of {ns}: releasing pods: {e:#}");
    }
    if let Err(e) = ns_api.delete(&ns, &DeleteParams::background()).await {
        eprintln!("cleanup of {ns}: deleting namespace: {e}");
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("test in namespace {ns} failed: {e:#}"),
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => panic!("test in namespace {ns} was cancelled: {join}"),
    }
}

async fn wait_for_default_service_account(client: &Client, ns: &str) {
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), ns);
    for _ in 0..100 {
        if sa.get_opt("default").await.ok().flatten().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("namespace {ns} got no default service account within 10 s");
}

/// Removes the hold finalizer from every pod in `ns`.
pub async fn release_pods(client: &Client, ns: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for pod in pods.list(&ListParams::default()).await? {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod
            .metadata
            .finalizers
            .unwrap_or_default()
            .iter()
            .any(|f| f == HOLD_FINALIZER)
        {
            release_pod(&pods, &name).await?;
        }
    }
    Ok(())
}

/// Removes the hold finalizer from one pod.
pub async fn release_pod(pods: &Api<Pod>, name: &str) -> Result<()> {
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    match pods
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("releasing pod {name}")),
    }
}

/// A container running the test image.
pub fn testapp_container(name: &str, args: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "image": TESTAPP_IMAGE,
        "imagePullPolicy": "Never",
        "args": args,
    })
}

/// Creates a pod from a JSON manifest (namespace filled in).
pub async fn create_pod(pods: &Api<Pod>, manifest: serde_json::Value) -> Result<Pod> {
    let pod: Pod = serde_json::from_value(manifest).context("pod manifest")?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    pods.create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating pod {name}"))
}

/// Waits until `cond` holds for the pod (polling every 200 ms) and returns it.
pub async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&Pod) -> bool,
) -> Result<Pod> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let pod = pods.get_opt(name).await?;
        if let Some(p) = &pod
            && cond(p)
        {
            return Ok(pod.unwrap());
        }
        if tokio::time::Instant::now() >= deadline {
            let status = pod
                .and_then(|p| p.status)
                .map(|s| serde_json::to_string(&s).unwrap_or_default())
                .unwrap_or_else(|| "pod not found".into());
            bail!("pod {name}: timed out after {timeout:?} waiting for {what}; status: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The pod is Running and all its containers are ready.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Every container of the pod (init/sidecar and regular) has terminated.
pub fn all_containers_terminated(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let statuses: Vec<_> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    let expected = pod
        .spec
        .as_ref()
        .map(|s| s.containers.len() + s.init_containers.as_ref().map_or(0, Vec::len))
        .unwrap_or(0);
    statuses.len() == expected
        && statuses.iter().all(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .is_some()
        })
}

/// The terminated state of one container (regular or init), if it has terminated.
pub fn terminated_state(
    pod: &Pod,
    container: &str,
) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .terminated
        .clone()
}

/// Follows a container's log until the container exits; resolves to its lines.
pub fn follow_logs(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
) -> tokio::task::JoinHandle<Result<Vec<String>>> {
    let pods = pods.clone();
    let (pod, container) = (pod.to_string(), container.to_string());
    tokio::spawn(async move {
        let lp = LogParams {
            follow: true,
            container: Some(container.clone()),
            ..LogParams::default()
        };
        let stream = pods
            .log_stream(&pod, &lp)
            .await
            .with_context(|| format!("log stream of {pod}/{container}"))?;
        let lines: Vec<String> = stream.lines().try_collect().await?;
        Ok(lines)
    })
}

/// A parsed testapp log line: `<RFC 3339 time> <event> [key=value...]`.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Timestamp,
    pub name: String,
    pub line: String,
}

/// Parses testapp log lines; lines that are not events are ignored.
pub fn parse_events(lines: &[String]) -> Vec<Event> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let at: Timestamp = parts.next()?.parse().ok()?;
            let name = parts.next()?.to_string();
            Some(Event {
                at,
                name,
                line: l.clone(),
            })
        })
        .collect()
}

/// The time of the first event named `name`.
pub fn event_time(events: &[Event], name: &str) -> Result<Timestamp> {
    events
        .iter()
        .find(|e| e.name == name)
        .map(|e| e.at)
        .ok_or_else(|| {
            let all: Vec<_> = events.iter().map(|e| e.line.as_str()).collect();
            anyhow!("no `{name}` event in the log: {all:#?}")
        })
}

/// Waits until every watch stream item or the deadline; a small helper for tests that
/// count watch events (returns the items seen).
pub async fn collect_until<S, T>(
    stream: S,
    timeout: Duration,
    mut done: impl FnMut(&T) -> bool,
) -> Vec<T>
where
    S: futures::Stream<Item = T>,
{
    let mut out = Vec::new();
    let mut stream = std::pin::pin!(stream);
    let deadline = tokio::time::Instant::now() + timeout;
    while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.next()).await {
        let stop = done(&item);
        out.push(item);
        if stop {
            break;
        }
    }
    out
}
