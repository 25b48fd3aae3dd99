//! End-to-end suite of lameduck on the local cluster (`make cluster-up`, then
//! `make e2e-test`): `helm upgrade --install` of charts/lameduck with the locally built
//! images, then the scenarios of issue 7 with real pods, real rollouts and real load
//! (vegeta). Tests run one at a time (`--test-threads=1`), in name order: the uninstall
//! test (`t9_…`) comes last. Every test works in its own namespace and fails, never skips,
//! when the cluster, an image or vegeta is missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lameduck_e2e::{client, kubeconfig_path, with_namespace};
use serde_json::{Value, json};

const RELEASE: &str = "lameduck";
const SYSTEM_NS: &str = "lameduck-system";
const RUST_WEB: &str = "lameduck/example-rust-web:dev";
/// Records survive their pods here (hostPath), one directory per test namespace.
const RECORDS_ROOT: &str = "/var/lib/lameduck-e2e";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ is inside the repository")
        .to_path_buf()
}

/// PATH with the pinned kubectl and helm first (what `eval "$(e2e/cluster/env.sh)"` does).
fn tool_path() -> &'static str {
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

fn command(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("PATH", tool_path())
        .env("KUBECONFIG", kubeconfig_path())
        .current_dir(repo_root());
    c
}

fn run(mut c: Command, input: Option<&str>) -> Result<String> {
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

fn kubectl(args: &[&str]) -> Result<String> {
    let mut c = command("kubectl");
    c.args(args);
    run(c, None)
}

fn kubectl_json(args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl(&all)?;
    serde_json::from_str(&out).with_context(|| format!("kubectl {args:?}: not JSON"))
}

fn apply(ns: &str, manifest: &Value) -> Result<String> {
    let mut c = command("kubectl");
    c.args(["apply", "-n", ns, "-f", "-"]);
    run(c, Some(&manifest.to_string()))
}

fn helm(args: &[&str]) -> Result<String> {
    let mut c = command("helm");
    c.args(args);
    run(c, None)
}

async fn wait_for<T>(
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
fn summary(test: &str, result: &str) {
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
async fn installed() {
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

fn binary_hash(path: &str) -> String {
    let p = repo_root().join(path);
    let out = Command::new("sha256sum").arg(&p).output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)[..16].to_string(),
        _ => panic!(
            "{} missing: run `make lameduck-images` (or `make e2e-test`)",
            p.display()
        ),
    }
}

async fn install() -> Result<()> {
    let started = Instant::now();
    // A new operator binary under the same tag must restart the operator pods.
    let op_hash = binary_hash("target/x86_64-unknown-linux-gnu/release/lameduck-operator");
    let out = helm(&[
        "upgrade",
        "--install",
        RELEASE,
        "charts/lameduck",
        "-n",
        SYSTEM_NS,
        "--create-namespace",
        "--set",
        "operator.image.repository=lameduck/operator",
        "--set",
        "operator.image.tag=dev",
        "--set",
        "operator.image.pullPolicy=Never",
        "--set",
        "sidecar.image.repository=lameduck/sidecar",
        "--set",
        "sidecar.image.tag=dev",
        "--set",
        "sidecar.image.pullPolicy=Never",
        "--set-string",
        &format!("operator.podAnnotations.e2e\\.lameduck\\.dev/binary={op_hash}"),
        "--wait",
        "--timeout",
        "180s",
    ])?;
    // The release status, without the NOTES.
    for line in out.lines().take_while(|l| !l.starts_with("NOTES")) {
        eprintln!("{line}");
    }
    // The operator writes the caBundle after start; until then the API server cannot call
    // the webhook (failurePolicy Ignore: pods are created uninjected).
    let probe = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe", "namespace": "default",
                     "annotations": {"lameduck.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": RUST_WEB}]},
    })
    .to_string();
    wait_for(
        "the webhook to inject a dry-run pod",
        Duration::from_secs(90),
        || {
            let mut c = command("kubectl");
            c.args(["create", "--dry-run=server", "-o", "json", "-f", "-"]);
            let pod: Value = serde_json::from_str(&run(c, Some(&probe))?)?;
            Ok(init_names(&pod)
                .contains(&"lameduck".to_string())
                .then_some(()))
        },
    )
    .await?;
    summary(
        "install",
        &format!(
            "helm upgrade --install + webhook injecting in {:.1}s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

fn init_names(pod: &Value) -> Vec<String> {
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

struct Web<'a> {
    name: &'a str,
    image: &'a str,
    replicas: u32,
    inject: bool,
    grace: u32,
    cleanup_millis: u32,
}

impl Web<'_> {
    fn deployment(&self, ns: &str) -> Value {
        let records = format!("{RECORDS_ROOT}/{ns}/{}", self.name);
        std::fs::create_dir_all(&records).expect("records dir");
        // The app runs as UID 65532.
        Command::new("chmod")
            .args(["-R", "0777", &format!("{RECORDS_ROOT}/{ns}")])
            .status()
            .expect("chmod");
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
                        "containers": [{
                            "name": "web",
                            "image": self.image,
                            "imagePullPolicy": "Never",
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
                                     "hostPath": {"path": records, "type": "Directory"}}],
                    },
                },
            },
        })
    }

    /// Deployment + Service; returns the Service's ClusterIP once it answers.
    async fn create(&self, ns: &str) -> Result<String> {
        apply(ns, &self.deployment(ns))?;
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

fn http_ok(ip: &str) -> bool {
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

fn rollout_status(ns: &str, name: &str) -> Result<()> {
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

fn pods(ns: &str, app: &str) -> Result<Vec<Value>> {
    let list = kubectl_json(&["get", "pods", "-n", ns, "-l", &format!("app={app}")])?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Waits until exactly `n` pods of `app` exist (terminating ones included).
async fn wait_pod_count(ns: &str, app: &str, n: usize, timeout: Duration) -> Result<()> {
    wait_for(&format!("{n} pods of {ns}/{app}"), timeout, || {
        Ok((pods(ns, app)?.len() == n).then_some(()))
    })
    .await
}

fn policy(ns: &str, name: &str) -> Result<Value> {
    kubectl_json(&["get", "shutdownpolicy", "-n", ns, name])
}

/// Lines of every records file under the test's directory for `app`.
fn records(ns: &str, app: &str) -> Result<u64> {
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

fn vegeta_bin() -> String {
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

struct Load {
    child: Child,
    out: PathBuf,
}

/// `vegeta attack` against `http://<ClusterIP>/` until stopped.
fn start_load(ip: &str, rate: u32, out: PathBuf) -> Result<Load> {
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
struct LoadReport {
    requests: u64,
    ok: u64,
    failed: u64,
    codes: BTreeMap<String, u64>,
    errors: Vec<String>,
}

impl Load {
    fn stop(mut self) -> Result<LoadReport> {
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

// ---------------------------------------------------------------------------------------
// Scenarios

fn find<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn env_names(c: &Value) -> Vec<String> {
    c["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The pod spec matches DESIGN.md "The pod after injection".
fn check_injected(pod: &Value, app: &str, policy_name: &str) -> Result<()> {
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

fn live_pods(ns: &str, app: &str) -> Result<Vec<Value>> {
    Ok(pods(ns, app)?
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .collect())
}

#[tokio::test]
async fn t1_annotated_deployment_is_injected_and_gets_a_policy() {
    installed().await;
    with_namespace("inject", |_client, ns| async move {
        let web = Web {
            name: "web",
            image: RUST_WEB,
            replicas: 2,
            inject: false,
            grace: 30,
            cleanup_millis: 200,
        };
        web.create(&ns).await?;
        for p in live_pods(&ns, "web")? {
            ensure!(
                init_names(&p).is_empty(),
                "pod before annotation already injected"
            );
        }
        kubectl(&[
            "annotate",
            "-n",
            &ns,
            "deployment/web",
            "lameduck.dev/inject=true",
        ])?;
        kubectl(&["rollout", "restart", "-n", &ns, "deployment/web"])?;
        rollout_status(&ns, "web")?;
        wait_pod_count(&ns, "web", 2, Duration::from_secs(120)).await?;
        let pods = live_pods(&ns, "web")?;
        ensure!(pods.len() == 2, "{} pods after rollout", pods.len());
        for p in &pods {
            check_injected(p, "web", "deployment-web")?;
        }
        let deploy = kubectl_json(&["get", "deployment", "-n", &ns, "web"])?;
        let uid = deploy["metadata"]["uid"].clone();
        let sdp = wait_for(
            "ShutdownPolicy deployment-web",
            Duration::from_secs(60),
            || policy(&ns, "deployment-web").map(Some),
        )
        .await?;
        let owner = &sdp["metadata"]["ownerReferences"];
        ensure!(
            owner
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["kind"] == "Deployment" && o["name"] == "web" && o["uid"] == uid),
            "policy not owned by the Deployment: {owner}"
        );
        let table = kubectl(&["get", "sdp", "-n", &ns])?;
        eprintln!("{table}");
        let header = table.lines().next().unwrap_or_default();
        for col in [
            "TARGET",
            "MODE",
            "SAMPLES",
            "P99",
            "RECOMMENDED",
            "KILLED",
            "AGE",
        ] {
            ensure!(
                header.contains(col),
                "kubectl get sdp lacks column {col}: {header}"
            );
        }
        summary(
            "1 injection",
            "2/2 pods injected as in DESIGN.md; policy deployment-web owned by the Deployment",
        );
        Ok(())
    })
    .await;
}

fn load_summary(r: &LoadReport) -> String {
    format!(
        "{} requests, {} ok, {} failed (codes {:?})",
        r.requests, r.ok, r.failed, r.codes
    )
}

#[tokio::test]
async fn t2_rolling_restart_under_load_loses_nothing() {
    installed().await;
    with_namespace("load", |_client, ns| async move {
        let mut ips = BTreeMap::new();
        for (name, inject) in [("ld", true), ("plain", false)] {
            let web = Web {
                name,
                image: RUST_WEB,
                replicas: 3,
                inject,
                grace: 30,
                cleanup_millis: 500,
            };
            ips.insert(name, web.create(&ns).await?);
        }
        let dir = repo_root().join(".state/e2e-load");
        std::fs::create_dir_all(&dir)?;
        let started = Instant::now();
        let mut loads = BTreeMap::new();
        for (name, ip) in &ips {
            loads.insert(*name, start_load(ip, 50, dir.join(format!("{ns}-{name}.bin")))?);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        for name in ips.keys() {
            kubectl(&["rollout", "restart", "-n", &ns, &format!("deployment/{name}")])?;
        }
        for name in ips.keys() {
            rollout_status(&ns, name)?;
            wait_pod_count(&ns, name, 3, Duration::from_secs(180)).await?;
        }
        let rollout = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut reports = BTreeMap::new();
        for (name, load) in loads {
            let r = load.stop()?;
            eprintln!("{name}: {}", load_summary(&r));
            for e in r.errors.iter().take(5) {
                eprintln!("  {name} error: {e}");
            }
            reports.insert(name, r);
        }
        // The records of the new pods are flushed when they shut down too.
        for name in ips.keys() {
            kubectl(&["scale", "-n", &ns, &format!("deployment/{name}"), "--replicas=0"])?;
        }
        for name in ips.keys() {
            wait_pod_count(&ns, name, 0, Duration::from_secs(120)).await?;
        }
        let ld = &reports["ld"];
        let plain = &reports["plain"];
        let ld_records = records(&ns, "ld")?;
        let plain_records = records(&ns, "plain")?;
        let ld_lost = ld.ok.saturating_sub(ld_records);
        let plain_lost = plain.ok.saturating_sub(plain_records);
        summary(
            "2 rollout under load",
            &format!(
                "injected: {} / lost records {ld_lost}; not injected: {} / lost records {plain_lost}; rollout+drain {:.0}s at 50 req/s each",
                load_summary(ld),
                load_summary(plain),
                rollout.as_secs_f64()
            ),
        );
        ensure!(ld.requests > 0, "no load was sent to the injected app");
        ensure!(
            ld.failed == 0,
            "the injected app failed {} of {} requests during its rolling restart: {:?} {:?}",
            ld.failed,
            ld.requests,
            ld.codes,
            &ld.errors[..ld.errors.len().min(5)]
        );
        ensure!(
            ld_lost == 0,
            "the injected app acknowledged {} requests but flushed {ld_records} records",
            ld.ok
        );
        Ok(())
    })
    .await;
}

fn sdp_manifest(deploy: &str, update_mode: &str, min_samples: u32) -> Value {
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

async fn wait_samples(ns: &str, name: &str, n: u64, timeout: Duration) -> Result<Value> {
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

fn condition<'a>(p: &'a Value, type_: &str) -> Option<&'a Value> {
    p["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[tokio::test]
async fn t3_observations_land_in_the_policy() {
    installed().await;
    with_namespace("observe", |_client, ns| async move {
        apply(&ns, &sdp_manifest("obs", "Initial", 3))?;
        let web = Web {
            name: "obs",
            image: RUST_WEB,
            replicas: 3,
            inject: true,
            grace: 30,
            cleanup_millis: 1000,
        };
        web.create(&ns).await?;
        kubectl(&["rollout", "restart", "-n", &ns, "deployment/obs"])?;
        rollout_status(&ns, "obs")?;
        wait_pod_count(&ns, "obs", 3, Duration::from_secs(120)).await?;
        let p = wait_samples(&ns, "deployment-obs", 3, Duration::from_secs(90)).await?;
        let st = &p["status"];
        eprintln!("{}", serde_json::to_string_pretty(st)?);
        for phase in ["deregister", "drain", "cleanup"] {
            ensure!(
                !st["phases"][phase].is_null(),
                "status.phases.{phase} missing (termination report not read?): {}",
                st["phases"]
            );
        }
        let cleanup_p50 = &st["phases"]["cleanup"];
        ensure!(!st["durations"].is_null(), "status.durations missing: {st}");
        let rec = st["recommendation"]["gracePeriodSeconds"].as_u64();
        ensure!(
            rec.is_some(),
            "no recommendation with {} samples (minSamples 3): {}",
            st["samples"],
            st["recommendation"]
        );
        ensure!(
            condition(&p, "RecommendationProvided").map(|c| c["status"] == "True") == Some(true),
            "RecommendationProvided not True: {}",
            st["conditions"]
        );
        ensure!(st["killed"].as_u64() == Some(0), "killed {}", st["killed"]);
        summary(
            "3 observations",
            &format!(
                "samples {}, p99 {}s, phases cleanup {cleanup_p50}, recommended {}s",
                st["samples"],
                st["durations"]["p99"],
                rec.unwrap()
            ),
        );
        Ok(())
    })
    .await;
}

fn grace_of(p: &Value) -> u64 {
    p["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn t4_fast_cleanup_converges_and_initial_mode_applies() {
    installed().await;
    with_namespace("fast", |_client, ns| async move {
        apply(&ns, &sdp_manifest("fast", "Initial", 3))?;
        apply(&ns, &sdp_manifest("fastoff", "Off", 3))?;
        for name in ["fast", "fastoff"] {
            Web {
                name,
                image: RUST_WEB,
                replicas: 3,
                inject: true,
                grace: 30,
                cleanup_millis: 2000,
            }
            .create(&ns)
            .await?;
        }
        let mut recs = BTreeMap::new();
        for round in 1..=2 {
            for name in ["fast", "fastoff"] {
                kubectl(&["rollout", "restart", "-n", &ns, &format!("deployment/{name}")])?;
            }
            for name in ["fast", "fastoff"] {
                rollout_status(&ns, name)?;
                wait_pod_count(&ns, name, 3, Duration::from_secs(120)).await?;
                let p = wait_samples(
                    &ns,
                    &format!("deployment-{name}"),
                    3 * round,
                    Duration::from_secs(90),
                )
                .await?;
                recs.insert(
                    name,
                    p["status"]["recommendation"]["gracePeriodSeconds"].as_u64(),
                );
            }
            eprintln!("round {round}: recommendations {recs:?}");
        }
        let rec = recs["fast"].context("no recommendation for fast")?;
        let fast_policy = policy(&ns, "deployment-fast")?;
        let phases = &fast_policy["status"]["phases"];
        summary(
            "5 fast cleanup (recommendation)",
            &format!("recommended {rec}s after 2 rollouts; phases {phases}"),
        );
        // Pods created after the recommendation carry it (Initial) or not (Off).
        let fast = live_pods(&ns, "fast")?;
        let graces: Vec<u64> = fast.iter().map(grace_of).collect();
        let off: Vec<u64> = live_pods(&ns, "fastoff")?.iter().map(grace_of).collect();
        ensure!(
            graces.iter().all(|g| *g == rec),
            "Initial mode: pods have grace {graces:?}, recommendation {rec}"
        );
        for p in &fast {
            ensure!(
                p["metadata"]["annotations"]["lameduck.dev/grace-period-source"] == "recommended"
                    && p["metadata"]["annotations"]["lameduck.dev/original-grace-period"] == "30",
                "annotations {}",
                p["metadata"]["annotations"]
            );
        }
        ensure!(
            off.iter().all(|g| *g == 30),
            "updateMode Off: pods have grace {off:?}, want the workload's 30"
        );
        ensure!(
            rec <= 8,
            "recommended grace {rec}s for a 2 s cleanup, want <= 8 (phases: {phases})"
        );
        summary(
            "5 fast cleanup",
            &format!(
                "recommended {rec}s (Initial pods {graces:?}); Off pods keep {off:?} (recommended {:?})",
                recs["fastoff"]
            ),
        );
        Ok(())
    })
    .await;
}

fn killed(ns: &str, name: &str) -> Result<u64> {
    Ok(policy(ns, name)?["status"]["killed"].as_u64().unwrap_or(0))
}

/// One rolling restart of `name`, waiting until its old pods are gone.
async fn restart_and_settle(ns: &str, name: &str, replicas: usize) -> Result<()> {
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

#[tokio::test]
async fn t6_slow_cleanup_kills_are_recorded_then_avoided() {
    installed().await;
    with_namespace("slow", |_client, ns| async move {
        const POLICY: &str = "deployment-slow";
        apply(&ns, &sdp_manifest("slow", "Initial", 2))?;
        Web {
            name: "slow",
            image: RUST_WEB,
            replicas: 2,
            inject: true,
            grace: 30,
            cleanup_millis: 40_000,
        }
        .create(&ns)
        .await?;
        let started = Instant::now();
        // Round 1: 40 s of cleanup in a 30 s grace period: the old pods are SIGKILLed.
        restart_and_settle(&ns, "slow", 2).await?;
        let k1 = wait_for("a recorded kill", Duration::from_secs(90), || {
            let k = killed(&ns, POLICY)?;
            Ok((k > 0).then_some(k))
        })
        .await?;
        let rec1 = policy(&ns, POLICY)?["status"]["recommendation"]["gracePeriodSeconds"]
            .as_u64()
            .unwrap_or(0);
        ensure!(rec1 >= 45, "recommendation {rec1}s after a kill at 30 s, want >= ceil(30 x 1.5)");
        let events = kubectl_json(&["get", "events", "-n", &ns])?;
        let on_workload = events["items"].as_array().into_iter().flatten().any(|e| {
            e["reason"] == "PodKilled"
                && e["involvedObject"]["kind"] == "Deployment"
                && e["involvedObject"]["name"] == "slow"
        });
        ensure!(on_workload, "no PodKilled Event on Deployment slow");
        // Round 2 replaces the pods of round 1 (created before the bump: they may be killed).
        restart_and_settle(&ns, "slow", 2).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let k2 = killed(&ns, POLICY)?;
        // Round 3 under load: its old pods carry the bumped grace period.
        let ip = kubectl_json(&["get", "service", "-n", &ns, "slow"])?["spec"]["clusterIP"]
            .as_str()
            .context("ClusterIP")?
            .to_string();
        let dir = repo_root().join(".state/e2e-load");
        std::fs::create_dir_all(&dir)?;
        let before = records(&ns, "slow")?;
        let load = start_load(&ip, 20, dir.join(format!("{ns}-slow.bin")))?;
        restart_and_settle(&ns, "slow", 2).await?;
        let report = load.stop()?;
        kubectl(&["scale", "-n", &ns, "deployment/slow", "--replicas=0"])?;
        wait_pod_count(&ns, "slow", 0, Duration::from_secs(240)).await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let k3 = killed(&ns, POLICY)?;
        let flushed = records(&ns, "slow")? - before;
        let p = policy(&ns, POLICY)?;
        let rec = &p["status"]["recommendation"]["gracePeriodSeconds"];
        summary(
            "4 slow cleanup",
            &format!(
                "killed after rounds 1/2/3+scale-down: {k1}/{k2}/{k3}; recommended {rec1}s after round 1, {rec}s at the end; round 3 load {} with {flushed} records flushed; {:.0}s",
                load_summary(&report),
                started.elapsed().as_secs_f64()
            ),
        );
        ensure!(
            k3 == k2,
            "pods were still killed after two more rollouts: killed {k2} -> {k3} (phases {})",
            p["status"]["phases"]
        );
        ensure!(report.failed == 0, "round 3 failed requests: {:?}", report.codes);
        ensure!(
            flushed >= report.ok,
            "{} acknowledged requests but only {flushed} records flushed",
            report.ok
        );
        Ok(())
    })
    .await;
}

fn scale_operator(replicas: u32) -> Result<()> {
    kubectl(&[
        "scale",
        "-n",
        SYSTEM_NS,
        &format!("deployment/{RELEASE}"),
        &format!("--replicas={replicas}"),
    ])
    .map(|_| ())
}

#[tokio::test]
async fn t5_webhook_outage_creates_uninjected_pods_and_reports_them() {
    installed().await;
    with_namespace("outage", |_client, ns| async move {
        scale_operator(0)?;
        let outcome = async {
            wait_for(
                "the operator pods to go",
                Duration::from_secs(90),
                || {
                    let l = kubectl_json(&[
                        "get",
                        "pods",
                        "-n",
                        SYSTEM_NS,
                        "-l",
                        "app.kubernetes.io/component=operator",
                    ])?;
                    Ok(l["items"].as_array().is_none_or(|a| a.is_empty()).then_some(()))
                },
            )
            .await?;
            let started = Instant::now();
            Web {
                name: "outage",
                image: RUST_WEB,
                replicas: 2,
                inject: true,
                grace: 30,
                cleanup_millis: 200,
            }
            .create(&ns)
            .await?;
            let created = started.elapsed();
            let pods = live_pods(&ns, "outage")?;
            for p in &pods {
                ensure!(
                    init_names(p).is_empty(),
                    "pod created during the outage was injected"
                );
            }
            anyhow::Ok(created)
        }
        .await;
        scale_operator(2)?;
        rollout_status(SYSTEM_NS, RELEASE)?;
        let created = outcome?;
        let p = wait_for(
            "policy deployment-outage to report 2 pods not injected",
            Duration::from_secs(120),
            || {
                let p = policy(&ns, "deployment-outage")?;
                Ok((p["status"]["pods"]["notInjected"].as_u64() == Some(2)).then_some(p))
            },
        )
        .await?;
        let cond = condition(&p, "PodsNotInjected").cloned();
        ensure!(
            cond.as_ref().map(|c| c["status"] == "True") == Some(true),
            "PodsNotInjected condition not True: {cond:?}"
        );
        summary(
            "6 webhook outage",
            &format!(
                "2 pods created uninjected in {:.1}s with the operator at 0; status.pods {} ; PodsNotInjected: {}",
                created.as_secs_f64(),
                p["status"]["pods"],
                cond.map(|c| c["message"].clone()).unwrap_or_default()
            ),
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn t9_helm_uninstall_keeps_crds_and_injected_pods() {
    installed().await;
    with_namespace("uninstall", |_client, ns| async move {
        Web {
            name: "keep",
            image: RUST_WEB,
            replicas: 1,
            inject: true,
            grace: 30,
            cleanup_millis: 200,
        }
        .create(&ns)
        .await?;
        let before = live_pods(&ns, "keep")?;
        ensure!(before.len() == 1, "{} pods", before.len());
        check_injected(&before[0], "keep", "deployment-keep")?;
        let uid = before[0]["metadata"]["uid"].clone();
        helm(&["uninstall", RELEASE, "-n", SYSTEM_NS, "--wait", "--timeout", "120s"])?;
        let selector = format!("app.kubernetes.io/instance={RELEASE}");
        let left = kubectl(&[
            "get",
            "deployments,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets",
            "-n",
            SYSTEM_NS,
            "-l",
            &selector,
            "-o",
            "name",
        ])?;
        ensure!(left.trim().is_empty(), "left in {SYSTEM_NS}: {left}");
        let left = kubectl(&[
            "get",
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations",
            "-l",
            &selector,
            "-o",
            "name",
        ])?;
        ensure!(left.trim().is_empty(), "cluster objects left: {left}");
        kubectl(&["get", "crd", "shutdownpolicies.lameduck.dev"])
            .context("the CRD must survive helm uninstall")?;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let after = live_pods(&ns, "keep")?;
        ensure!(
            after.len() == 1 && after[0]["metadata"]["uid"] == uid,
            "the injected pod was replaced or removed"
        );
        let statuses = &after[0]["status"]["containerStatuses"];
        ensure!(
            statuses
                .as_array()
                .into_iter()
                .flatten()
                .all(|s| s["ready"] == true && s["restartCount"] == 0),
            "injected pod not ready after uninstall: {statuses}"
        );
        ensure!(
            policy(&ns, "deployment-keep").is_ok(),
            "ShutdownPolicy gone with the release"
        );
        let rest = kubectl(&["get", "secrets,leases", "-n", SYSTEM_NS, "-o", "name"])?;
        summary(
            "7 helm uninstall",
            &format!(
                "release objects gone, CRD and policy kept, injected pod running; operator-created objects left in {SYSTEM_NS}: {}",
                rest.split_whitespace().collect::<Vec<_>>().join(" ")
            ),
        );
        let table = std::fs::read_to_string(repo_root().join(".state/e2e-summary.tsv"))?;
        eprintln!("\n==== e2e summary ====\n{table}");
        Ok(())
    })
    .await;
}
