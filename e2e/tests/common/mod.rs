//! Helpers shared by the end-to-end suites (`lameduck.rs`, `drills.rs`): the pinned
//! kubectl and helm, the chart installation, the example workloads, vegeta load and the
//! ShutdownPolicy readers. Each suite uses a subset.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lameduck_e2e::{client, kubeconfig_path};
use serde_json::{Value, json};

pub const RELEASE: &str = "lameduck";
pub const SYSTEM_NS: &str = "lameduck-system";
/// Records survive their pods here (hostPath), one directory per test namespace.
pub const RECORDS_ROOT: &str = "/var/lib/lameduck-e2e";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the repository")
        .to_path_buf()
}

/// The Rust example's image in the local registry, by digest, as `make images` published it
/// (`EXAMPLE_RUST_WEB` in `.state/examples.env`): the kubelet pulls it like any image.
pub fn rust_web() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| published_example("EXAMPLE_RUST_WEB"))
}

/// The load generator's image (`e2e/loadgen`), as [`rust_web`].
pub fn loadgen_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| published_example("LOADGEN"))
}

/// Caddy, unmodified, built from its Go module (`make publish-examples`), as [`rust_web`].
pub fn caddy_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| published_example("CADDY"))
}

/// A reference from `.state/examples.env` (hack/publish.sh examples).
fn published_example(var: &str) -> String {
    let path = repo_root().join(".state/examples.env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `make images` (it publishes the example images to the local registry)",
            path.display()
        )
    });
    text.lines()
        .find_map(|line| line.strip_prefix(var)?.strip_prefix('=').map(str::to_owned))
        .unwrap_or_else(|| panic!("{var} missing from {}: run `make images`", path.display()))
}

/// PATH with the pinned kubectl and helm first (what `eval "$(e2e/cluster/env.sh)"` does).
pub fn tool_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let out = Command::new("bash")
            .arg("-c")
            .arg("eval \"$(e2e/cluster/env.sh)\" && printf %s \"$PATH\"")
            .current_dir(repo_root())
            .output()
            .expect("running e2e/cluster/env.sh");
        assert!(
            out.status.success(),
            "e2e/cluster/env.sh failed: {}\nrun `make cluster-up` first",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
}

pub fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", tool_path())
        .env("KUBECONFIG", kubeconfig_path())
        .current_dir(repo_root());
    c
}

pub fn run(mut c: Command, input: Option<&str>) -> Result<String> {
    let what = format!("{c:?}");
    c.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().with_context(|| format!("starting {what}"))?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .context("writing stdin")?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn kubectl(args: &[&str]) -> Result<String> {
    let mut c = command("kubectl");
    c.args(args);
    run(c, None)
}

pub fn kubectl_json(args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("kubectl {args:?}: not JSON"))
}

pub fn apply(ns: &str, manifest: &Value) -> Result<String> {
    let mut c = command("kubectl");
    c.args(["apply", "-n", ns, "-f", "-"]);
    run(c, Some(&manifest.to_string()))
}

pub fn helm(args: &[&str]) -> Result<String> {
    let mut c = command("helm");
    c.args(args);
    run(c, None)
}

pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    let mut last_err = String::new();
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what} (last error: {last_err})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One row of the summary table (appended to `.state/e2e-summary.tsv`, printed by the
/// last test).
pub fn summary(test: &str, result: &str) {
    let path = repo_root().join(".state/e2e-summary.tsv");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("summary file");
    writeln!(f, "{test}\t{result}").unwrap();
    eprintln!("SUMMARY {test}: {result}");
}

// ---------------------------------------------------------------------------------------
// The chart

/// `helm upgrade --install` of the chart with the local images, once per test process,
/// then waits until the webhook injects (a server-side dry-run of an annotated pod).
pub async fn installed() {
    // Fails with "run make cluster-up" when the API server is not there.
    let _ = client().await;
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    if let Some(r) = DONE.get() {
        return r.clone().expect("chart installation failed earlier");
    }
    let r = install().await.map_err(|e| format!("{e:#}"));
    let r = DONE.get_or_init(|| r);
    if let Err(e) = r {
        panic!("helm install of charts/lameduck failed: {e}");
    }
}

pub fn binary_hash(path: &str) -> String {
    let p = repo_root().join(path);
    let out = Command::new("sha256sum").arg(&p).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)[..16].to_string(),
        _ => panic!(
            "{} missing: run `make images` (or `make e2e-test`)",
            p.display()
        ),
    }
}

pub async fn install() -> Result<()> {
    let started = Instant::now();
    // Fails with "run make images" when the operator binary is missing.
    let _ = binary_hash("target/x86_64-unknown-linux-gnu/release/lameduck-operator");
    let out = run(command("hack/install-local.sh"), None)?;
    eprint!("{out}");
    summary(
        "install",
        &format!(
            "helm upgrade --install + webhook injecting in {:.1}s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

pub fn init_names(pod: &Value) -> Vec<String> {
    pod["spec"]["initContainers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Workloads

/// The init container that readies the records hostPath for the app (the example's
/// `prepare-records-dir`, as root: the kubelet creates the directory root-owned).
pub fn records_dir_init() -> Value {
    json!({
        "name": "records-dir",
        "image": rust_web(),
        "args": ["prepare-records-dir"],
        "env": [{"name": "RECORDS_DIR", "value": "/records"}],
        "securityContext": {"runAsUser": 0, "runAsNonRoot": false},
        "volumeMounts": [{"name": "records", "mountPath": "/records"}],
    })
}

/// Whether the pod has the lameduck sidecar.
pub fn has_sidecar(pod: &Value) -> bool {
    init_names(pod).iter().any(|n| n == "lameduck")
}

pub struct Web<'a> {
    pub name: &'a str,
    pub image: &'a str,
    pub replicas: u32,
    pub inject: bool,
    pub grace: u32,
    pub cleanup_millis: u32,
}

impl Web<'_> {
    pub fn deployment(&self, ns: &str) -> Value {
        // The kubelet creates the hostPath for root; the init container opens it to the app,
        // which runs as 65532 (the manifest needs no preparation of the node).
        let records = format!("{RECORDS_ROOT}/{ns}/{}", self.name);
        let mut annotations = json!({});
        if self.inject {
            annotations["lameduck.dev/inject"] = json!("true");
        }
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": self.name, "annotations": annotations},
            "spec": {
                "replicas": self.replicas,
                "selector": {"matchLabels": {"app": self.name}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": {"app": self.name}},
                    "spec": {
                        "terminationGracePeriodSeconds": self.grace,
                        "initContainers": [records_dir_init()],
                        "containers": [{
                            "name": "web",
                            "image": self.image,
                            "ports": [{"containerPort": 8080}],
                            "env": [
                                {"name": "RECORDS_DIR", "value": "/records"},
                                {"name": "REQUEST_MILLIS", "value": "20"},
                                {"name": "CLEANUP_MILLIS", "value": self.cleanup_millis.to_string()},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                               "periodSeconds": 1},
                            "volumeMounts": [{"name": "records", "mountPath": "/records"}],
                        }],
                        "volumes": [{"name": "records",
                                     "hostPath": {"path": records, "type": "DirectoryOrCreate"}}],
                    },
                },
            },
        })
    }

    /// Deployment + Service; returns the Service's ClusterIP once it answers.
    pub async fn create(&self, ns: &str) -> Result<String> {
        self.create_deployment(ns, &self.deployment(ns)).await
    }

    /// Like [`Web::create`], each `GET /` held `request_millis` in flight (20 ms otherwise):
    /// the HTTP server's graceful shutdown then has requests to wait for.
    pub async fn create_with_request_millis(
        &self,
        ns: &str,
        request_millis: u32,
    ) -> Result<String> {
        let mut deployment = self.deployment(ns);
        let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .context("the web container's env")?;
        for var in env.iter_mut() {
            if var["name"] == "REQUEST_MILLIS" {
                var["value"] = json!(request_millis.to_string());
            }
        }
        self.create_deployment(ns, &deployment).await
    }

    async fn create_deployment(&self, ns: &str, deployment: &Value) -> Result<String> {
        apply(ns, deployment)?;
        apply(
            ns,
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": self.name},
                "spec": {"selector": {"app": self.name},
                         "ports": [{"port": 80, "targetPort": 8080}]},
            }),
        )?;
        rollout_status(ns, self.name)?;
        let svc = kubectl_json(&["get", "service", "-n", ns, self.name])?;
        let ip = svc["spec"]["clusterIP"]
            .as_str()
            .context("ClusterIP")?
            .to_string();
        wait_for(
            &format!("Service {}/{} at {ip}:80", ns, self.name),
            Duration::from_secs(30),
            || Ok(http_ok(&ip).then_some(())),
        )
        .await?;
        Ok(ip)
    }
}

pub fn http_ok(ip: &str) -> bool {
    use std::io::Read;
    let Ok(addr) = format!("{ip}:80").parse() else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.contains(" 200 ")
}

pub fn rollout_status(ns: &str, name: &str) -> Result<()> {
    kubectl(&[
        "rollout",
        "status",
        "-n",
        ns,
        &format!("deployment/{name}"),
        "--timeout=240s",
    ])
    .map(|_| ())
}

pub fn pods(ns: &str, app: &str) -> Result<Vec<Value>> {
    let list = kubectl_json(&["get", "pods", "-n", ns, "-l", &format!("app={app}")])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Waits until exactly `n` pods of `app` exist (terminating ones included).
pub async fn wait_pod_count(ns: &str, app: &str, n: usize, timeout: Duration) -> Result<()> {
    wait_for(&format!("{n} pods of {ns}/{app}"), timeout, || {
        Ok((pods(ns, app)?.len() == n).then_some(()))
    })
    .await
}

pub fn policy(ns: &str, name: &str) -> Result<Value> {
    kubectl_json(&["get", "shutdownpolicy", "-n", ns, name])
}

/// Lines of every records file under the test's directory for `app`.
pub fn records(ns: &str, app: &str) -> Result<u64> {
    let dir = format!("{RECORDS_ROOT}/{ns}/{app}");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| dir.clone())? {
        let text = std::fs::read_to_string(entry?.path())?;
        n += text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// Load

pub fn vegeta_bin() -> String {
    let bin = std::env::var("VEGETA").unwrap_or_else(|_| {
        let cache = std::env::var("CACHE_DIR").unwrap_or_else(|_| {
            format!(
                "{}/lameduck",
                std::env::var("XDG_CACHE_HOME")
                    .unwrap_or_else(|_| format!("{}/.cache", std::env::var("HOME").unwrap()))
            )
        });
        format!("{cache}/bin/vegeta")
    });
    assert!(
        Path::new(&bin).exists(),
        "vegeta not found at {bin}: run `make vegeta` (or `make e2e-test`)"
    );
    bin
}

pub struct Load {
    pub child: Child,
    pub out: PathBuf,
}

/// `vegeta attack` against `http://<ClusterIP>/` until stopped.
pub fn start_load(ip: &str, rate: u32, out: PathBuf) -> Result<Load> {
    assert!(
        ip.starts_with("10.96."),
        "load only ever targets the cluster's own Service range, not {ip}"
    );
    let mut child = Command::new(vegeta_bin())
        .args([
            "attack",
            &format!("-rate={rate}/s"),
            "-duration=600s",
            "-timeout=5s",
            "-output",
        ])
        .arg(&out)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting vegeta")?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("GET http://{ip}/\n").as_bytes())?;
    Ok(Load { child, out })
}

#[derive(Debug)]
pub struct LoadReport {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub codes: BTreeMap<String, u64>,
    pub errors: Vec<String>,
}

impl LoadReport {
    /// Fails when any request failed, with the status codes and the first errors.
    pub fn ensure_none_failed(&self, what: &str) -> Result<()> {
        ensure!(
            self.failed == 0,
            "{what}: {} of {} requests failed: {:?} {:?}",
            self.failed,
            self.requests,
            self.codes,
            &self.errors[..self.errors.len().min(5)]
        );
        Ok(())
    }
}

impl Load {
    pub fn stop(mut self) -> Result<LoadReport> {
        // SIGINT: vegeta stops attacking and closes its results file.
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        let out = Command::new(vegeta_bin())
            .args(["report", "-type=json"])
            .arg(&self.out)
            .output()?;
        ensure!(out.status.success(), "vegeta report failed");
        let r: Value = serde_json::from_slice(&out.stdout)?;
        let codes: BTreeMap<String, u64> = r["status_codes"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        let requests = r["requests"].as_u64().unwrap_or(0);
        let ok = codes.get("200").copied().unwrap_or(0);
        let errors = r["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok(LoadReport {
            requests,
            ok,
            failed: requests - ok,
            codes,
            errors,
        })
    }
}

pub fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

pub fn env_names(c: &Value) -> Vec<String> {
    c["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod spec matches docs/architecture.md, "The pod after injection".
pub fn check_injected(pod: &Value, app: &str, policy_name: &str) -> Result<()> {
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    let spec = &pod["spec"];
    let side = &spec["initContainers"][0];
    ensure!(
        side["name"] == "lameduck",
        "{name}: first init container is {}, want lameduck",
        side["name"]
    );
    ensure!(
        side["restartPolicy"] == "Always",
        "{name}: sidecar not native"
    );
    ensure!(
        side["args"] == json!(["serve"]),
        "{name}: sidecar args {}",
        side["args"]
    );
    for env in ["POD_NAME", "POD_NAMESPACE", "LAMEDUCK_GRACE_SECONDS"] {
        ensure!(
            env_names(side).iter().any(|e| e == env),
            "{name}: sidecar lacks env {env}"
        );
    }
    ensure!(
        side["startupProbe"]["exec"]["command"] == json!(["/lameduck-sidecar", "probe"]),
        "{name}: startupProbe {}",
        side["startupProbe"]
    );
    ensure!(
        side["terminationMessagePolicy"] == "File",
        "{name}: terminationMessagePolicy"
    );
    let sc = &side["securityContext"];
    ensure!(
        sc["runAsNonRoot"] == true
            && sc["readOnlyRootFilesystem"] == true
            && sc["allowPrivilegeEscalation"] == false
            && sc["capabilities"]["drop"] == json!(["ALL"])
            && sc["seccompProfile"]["type"] == "RuntimeDefault",
        "{name}: sidecar securityContext not restricted: {sc}"
    );
    let vol = find(&spec["volumes"], "lameduck").context("volume lameduck")?;
    ensure!(
        vol["emptyDir"]["sizeLimit"] == "32Mi",
        "{name}: volume lameduck {vol}"
    );
    let c = find(&spec["containers"], "web").context("container web")?;
    ensure!(
        find(&c["volumeMounts"], "lameduck").map(|m| &m["mountPath"]) == Some(&json!("/lameduck")),
        "{name}: app lacks the /lameduck mount"
    );
    let env: BTreeMap<String, String> = c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["name"].as_str()?.into(), e["value"].as_str()?.into())))
        .collect();
    ensure!(
        env.get("LAMEDUCK_SOCKET").map(String::as_str) == Some("/lameduck/run/app.sock")
            && env.get("LAMEDUCK_CONTAINER").map(String::as_str) == Some("web"),
        "{name}: app env {env:?}"
    );
    // The app and the sidecar plan with the grace period the kubelet enforces.
    let sidecar_grace = side["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == "LAMEDUCK_GRACE_SECONDS")
        .and_then(|e| e["value"].as_str());
    let grace = grace_of(pod).to_string();
    ensure!(
        env.get("LAMEDUCK_GRACE_SECONDS").map(String::as_str) == Some(grace.as_str())
            && sidecar_grace == Some(grace.as_str()),
        "{name}: LAMEDUCK_GRACE_SECONDS app {:?}, sidecar {sidecar_grace:?}, pod {grace}",
        env.get("LAMEDUCK_GRACE_SECONDS")
    );
    ensure!(
        env.contains_key("LAMEDUCK_FALLBACK_DELAY_MILLIS"),
        "{name}: app env lacks LAMEDUCK_FALLBACK_DELAY_MILLIS: {env:?}"
    );
    ensure!(
        c["lifecycle"]["preStop"]["exec"]["command"]
            == json!(["/lameduck/bin/lameduck", "prestop", "--container", "web"]),
        "{name}: preStop {}",
        c["lifecycle"]
    );
    ensure!(
        pod["metadata"]["labels"]["lameduck.dev/injected"] == "true",
        "{name}: label lameduck.dev/injected"
    );
    ensure!(
        pod["metadata"]["annotations"]["lameduck.dev/policy"] == policy_name,
        "{name}: annotation lameduck.dev/policy = {}",
        pod["metadata"]["annotations"]["lameduck.dev/policy"]
    );
    let _ = app;
    Ok(())
}

pub fn live_pods(ns: &str, app: &str) -> Result<Vec<Value>> {
    Ok(pods(ns, app)?
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect())
}

pub fn load_summary(r: &LoadReport) -> String {
    format!(
        "{} requests, {} ok, {} failed (codes {:?})",
        r.requests, r.ok, r.failed, r.codes
    )
}

pub fn sdp_manifest(deploy: &str, update_mode: &str, min_samples: u32) -> Value {
    json!({
        "apiVersion": "lameduck.dev/v1alpha1", "kind": "ShutdownPolicy",
        "metadata": {"name": format!("deployment-{deploy}")},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deploy},
            "updateMode": update_mode,
            "gracePeriod": {"minSamples": min_samples},
        },
    })
}

pub async fn wait_samples(ns: &str, name: &str, n: u64, timeout: Duration) -> Result<Value> {
    wait_for(
        &format!("{n} samples in ShutdownPolicy {ns}/{name}"),
        timeout,
        || {
            let p = policy(ns, name)?;
            Ok((p["status"]["samples"].as_u64().unwrap_or(0) >= n).then_some(p))
        },
    )
    .await
}

pub fn condition<'a>(p: &'a Value, type_: &str) -> Option<&'a Value> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn grace_of(p: &Value) -> u64 {
    p["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(0)
}

pub fn policy_samples(ns: &str, name: &str) -> Result<u64> {
    Ok(policy(ns, name)?["status"]["samples"].as_u64().unwrap_or(0))
}

/// Every operator pod of the release, terminating ones included.
pub fn operator_pod_items() -> Result<Vec<Value>> {
    let list = kubectl_json(&[
        "get",
        "pods",
        "-n",
        SYSTEM_NS,
        "-l",
        "app.kubernetes.io/component=operator",
    ])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

pub fn killed(ns: &str, name: &str) -> Result<u64> {
    Ok(policy(ns, name)?["status"]["killed"].as_u64().unwrap_or(0))
}

pub fn timeouts(ns: &str, name: &str) -> Result<u64> {
    Ok(policy(ns, name)?["status"]["timeouts"]
        .as_u64()
        .unwrap_or(0))
}

/// One rolling restart of `name`, waiting until its old pods are gone.
pub async fn restart_and_settle(ns: &str, name: &str, replicas: usize) -> Result<()> {
    kubectl(&[
        "rollout",
        "restart",
        "-n",
        ns,
        &format!("deployment/{name}"),
    ])?;
    rollout_status(ns, name)?;
    wait_pod_count(ns, name, replicas, Duration::from_secs(240)).await
}

pub fn scale_operator(replicas: u32) -> Result<()> {
    kubectl(&[
        "scale",
        "-n",
        SYSTEM_NS,
        &format!("deployment/{RELEASE}"),
        &format!("--replicas={replicas}"),
    ])
    .map(|_| ())
}

/// Load from a pod (`loadgen attack`, e2e/loadgen) rather than from the node: the kubelet's
/// probes come from the node's address, and load from a pod looks like a client's.
pub struct PodLoad {
    ns: String,
    name: String,
}

impl PodLoad {
    /// Starts `loadgen attack` against `url` at `rate` req/s in pod `name` of `ns`, a new
    /// connection per request unless `keepalive`, and waits until it runs.
    pub fn start(ns: &str, name: &str, url: &str, rate: u32, keepalive: bool) -> Result<Self> {
        apply(
            ns,
            &json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"e2e.lameduck.dev/role": "load"}},
                    "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                             "containers": [{"name": "loadgen", "image": loadgen_image(),
                                             "args": ["attack", "-target", url,
                                                      "-rate", rate.to_string(),
                                                      "-duration", "3600s", "-timeout", "5s",
                                                      format!("-keepalive={keepalive}")]}]}}),
        )?;
        kubectl(&[
            "wait",
            "-n",
            ns,
            "--for=condition=Ready",
            &format!("pod/{name}"),
            "--timeout=120s",
        ])?;
        Ok(Self {
            ns: ns.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Stops the load and returns its report (vegeta's, with `loadgen` figures).
    pub fn stop(self) -> Result<Value> {
        kubectl(&["exec", "-n", &self.ns, &self.name, "--", "/loadgen", "stop"])?;
        kubectl(&[
            "wait",
            "-n",
            &self.ns,
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{}", self.name),
            "--timeout=60s",
        ])?;
        let text = kubectl(&["logs", "-n", &self.ns, &self.name])?;
        serde_json::from_str(&text).with_context(|| format!("load report of {}: {text}", self.name))
    }
}
