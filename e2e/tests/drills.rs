//! Reliability drills on the local cluster (`make cluster-up`, then `make e2e-drills`):
//! leader failover, certificate rotation under load, the sidecar killed mid-deregister, a burst
//! of 200 pods, the node-level view of a rolling restart, a rollout of the operator itself
//! under pod creation, and an operator task dying. Like `lameduck.rs` the tests
//! run one at a time (`--test-threads=1`), each in its own namespace, against the chart
//! installed with the local images, and fail (never skip) when something is missing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::*;
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use lameduck_e2e::{NODE_NAME, with_namespace};
use serde_json::{Value, json};

/// The chart's operator Lease and admin port.
const LEASE: &str = "lameduck-operator";
const ADMIN_PORT: u16 = 8080;
/// The webhook's name in the chart's MutatingWebhookConfiguration.
const WEBHOOK: &str = "inject.lameduck.dev";

// ---------------------------------------------------------------------------------------
// Prometheus text, as the API server and the operator expose it

/// One sample line: name, labels, value.
fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.rsplit_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| {
                let (k, v) = kv.split_once("=\"")?;
                Some((k.trim().to_owned(), v.trim_end_matches('"').to_owned()))
            })
            .collect();
        out.push((labels, value));
    }
    out
}

fn matches(labels: &BTreeMap<String, String>, filter: &[(&str, &str)]) -> bool {
    filter
        .iter()
        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
}

/// Sum of the samples of `name` whose labels include `filter`.
fn metric_sum(text: &str, name: &str, filter: &[(&str, &str)]) -> f64 {
    samples(text, name)
        .into_iter()
        .filter(|(l, _)| matches(l, filter))
        .map(|(_, v)| v)
        .sum()
}

/// Cumulative histogram buckets (upper bound → count), summed over matching series.
fn buckets(text: &str, name: &str, filter: &[(&str, &str)]) -> BTreeMap<u64, f64> {
    let mut out = BTreeMap::new();
    for (labels, value) in samples(text, &format!("{name}_bucket")) {
        if !matches(&labels, filter) {
            continue;
        }
        let le = match labels.get("le").map(String::as_str) {
            Some("+Inf") => f64::INFINITY,
            Some(le) => le.parse().unwrap_or(f64::NAN),
            None => continue,
        };
        // Keyed by the bound's bits: f64 is not Ord, positive bounds order like their bits.
        *out.entry(le.to_bits()).or_insert(0.0) += value;
    }
    out
}

/// The `q` quantile of the observations between two scrapes, by linear interpolation
/// inside the bucket (as Prometheus' histogram_quantile does), with the count.
fn quantile(before: &BTreeMap<u64, f64>, after: &BTreeMap<u64, f64>, q: f64) -> (f64, f64) {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            (
                f64::from_bits(*le),
                c - before.get(le).copied().unwrap_or(0.0),
            )
        })
        .collect();
    let total = delta.last().map(|(_, c)| *c).unwrap_or(0.0);
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in &delta {
        if *count >= rank {
            if le.is_infinite() {
                return (lower, total);
            }
            let inside = count - below;
            let fraction = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return (lower + (le - lower) * fraction, total);
        }
        lower = *le;
        below = *count;
    }
    (f64::NAN, total)
}

fn apiserver_metrics() -> Result<String> {
    kubectl(&["get", "--raw", "/metrics"])
}

fn operator_pods() -> Result<Vec<String>> {
    Ok(operator_pod_items()?
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect())
}

/// `/metrics` of one operator pod, through the API server's pod proxy.
fn operator_metrics(pod: &str) -> Result<String> {
    kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{SYSTEM_NS}/pods/{pod}:{ADMIN_PORT}/proxy/metrics"),
    ])
}

fn lease_holder() -> Result<String> {
    let lease = kubectl_json(&["get", "lease", "-n", SYSTEM_NS, LEASE])?;
    lease["spec"]["holderIdentity"]
        .as_str()
        .filter(|h| !h.is_empty())
        .map(String::from)
        .context("the operator Lease has no holder")
}

/// A pod that stays Pending (a scheduling gate) so that hundreds fit on one node: only
/// its admission matters.
fn gated_pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "gated"},
                     "annotations": {"lameduck.dev/inject": "true"}},
        "spec": {
            "schedulingGates": [{"name": "e2e.lameduck.dev/never"}],
            "containers": [{"name": "web", "image": rust_web()}],
        },
    })
}

fn is_injected(pod: &Value) -> bool {
    init_names(pod).first().map(String::as_str) == Some("lameduck")
}

/// Bucket weights of a persisted histogram (`status.histogram.duration`), by index.
fn weights(p: &Value) -> BTreeMap<u64, f64> {
    p["status"]["histogram"]["duration"]["buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| Some((b["index"].as_u64()?, b["weight"].as_f64()?)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Drills

/// Kill the lease holder during a rollout under load: the other replica takes over within
/// 15 s, what was recorded before stays (weights only grow), no request fails.
#[tokio::test]
async fn d1_leader_failover_during_a_rollout_under_load() {
    installed().await;
    with_namespace("failover", |_client, ns| async move {
        apply(&ns, &sdp_manifest("lf", "Initial", 3))?;
        let ip = Web {
            name: "lf",
            image: rust_web(),
            replicas: 3,
            inject: true,
            grace: 30,
            cleanup_millis: 500,
        }
        .create(&ns)
        .await?;
        restart_and_settle(&ns, "lf", 3).await?;
        let before = wait_samples(&ns, "deployment-lf", 3, Duration::from_secs(90)).await?;
        let samples_before = before["status"]["samples"].as_u64().unwrap_or(0);
        let weights_before = weights(&before);
        ensure!(
            !weights_before.is_empty(),
            "no histogram persisted after {samples_before} samples: {}",
            before["status"]
        );

        let dir = repo_root().join(".state/e2e-load");
        std::fs::create_dir_all(&dir)?;
        let load = start_load(&ip, 50, dir.join(format!("{ns}-lf.bin")))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        kubectl(&["rollout", "restart", "-n", &ns, "deployment/lf"])?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let holder = lease_holder()?;
        // The API object goes at once; the kubelet still sends SIGTERM with a 2 s grace, and
        // the operator hands the Lease over at SIGTERM (after a last status write).
        kubectl(&[
            "delete", "pod", "-n", SYSTEM_NS, &holder, "--grace-period=0", "--force",
        ])?;
        let killed_at = Instant::now();
        let new_holder = wait_for("another replica to take the Lease", Duration::from_secs(60), || {
            let h = lease_holder()?;
            Ok((h != holder).then_some(h))
        })
        .await?;
        let takeover = killed_at.elapsed();
        rollout_status(&ns, "lf")?;
        wait_pod_count(&ns, "lf", 3, Duration::from_secs(180)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let report = load.stop()?;
        // Every replica watches pods, so the three old pods of the rollout are observed even
        // when they finished while nobody held the lease.
        let after = wait_samples(&ns, "deployment-lf", samples_before + 3, Duration::from_secs(90))
            .await?;
        // Anything still queued (a double count would show now).
        tokio::time::sleep(Duration::from_secs(8)).await;
        let after = policy(&ns, "deployment-lf").unwrap_or(after);
        let samples_after = after["status"]["samples"].as_u64().unwrap_or(0);
        let weights_after = weights(&after);
        let shrunk: Vec<String> = weights_before
            .iter()
            .filter(|(i, w)| weights_after.get(i).copied().unwrap_or(0.0) < **w)
            .map(|(i, w)| format!("bucket {i}: {w} -> {:?}", weights_after.get(i)))
            .collect();
        summary(
            "d1 leader failover",
            &format!(
                "lease {holder} -> {new_holder} in {:.1}s after a forced delete; samples {samples_before} -> {samples_after} (rollout of 3); {}",
                takeover.as_secs_f64(),
                load_summary(&report)
            ),
        );
        ensure!(
            takeover <= Duration::from_secs(15),
            "takeover took {takeover:?}, want within 15 s (12 s lease)"
        );
        ensure!(shrunk.is_empty(), "histogram weights recorded before the kill shrank: {shrunk:?}");
        ensure!(
            samples_after == samples_before + 3,
            "the rollout replaced 3 pods, the policy went from {samples_before} to {samples_after} samples"
        );
        ensure!(report.requests > 0, "no load was sent");
        report.ensure_none_failed("rollout during the leader failover")?;
        Ok(())
    })
    .await;
}

/// Rotate the CA while pods are created: every pod is injected and the API server records
/// no failed webhook call.
#[tokio::test]
async fn d2_certificate_rotation_under_pod_creation() {
    installed().await;
    with_namespace("rotate", |client, ns| async move {
        let secret = "lameduck-webhook-tls";
        let read_ca = || -> Result<String> {
            let s = kubectl_json(&["get", "secret", "-n", SYSTEM_NS, secret])?;
            Ok(s["data"]["ca.crt"].as_str().unwrap_or_default().to_owned())
        };
        let serving_expiry = |pod: &str| -> Result<f64> {
            let m = operator_metrics(pod)?;
            Ok(metric_sum(&m, "lameduck_webhook_serving_certificate_expiry_timestamp_seconds", &[]))
        };
        let replicas = operator_pods()?;
        ensure!(replicas.len() == 2, "want 2 operator replicas, have {replicas:?}");
        let mut expiry_before = BTreeMap::new();
        for pod in &replicas {
            expiry_before.insert(pod.clone(), serving_expiry(pod)?);
        }
        let old_ca = read_ca()?;
        let metrics_before = apiserver_metrics()?;

        let started = Instant::now();
        let mut created = 0usize;
        let mut rotated_at = None;
        let mut all_switched_at = None;
        // Two pods a second until both replicas serve the new certificate (they check the
        // Secret every 60 s), then ten more seconds.
        while started.elapsed() < Duration::from_secs(150) {
            let mut c = command("kubectl");
            c.args(["create", "-n", &ns, "-f", "-"]);
            run(c, Some(&gated_pod(&format!("rot-{created:03}")).to_string()))?;
            created += 1;
            if created == 10 {
                kubectl(&[
                    "annotate", "secret", "-n", SYSTEM_NS, secret,
                    "lameduck.dev/rotate=e2e", "--overwrite",
                ])?;
            }
            if rotated_at.is_none() && created > 10 && read_ca()? != old_ca {
                rotated_at = Some(started.elapsed());
            }
            if rotated_at.is_some() && all_switched_at.is_none() && created.is_multiple_of(4) {
                let mut switched = true;
                for pod in &replicas {
                    switched &= serving_expiry(pod)? != expiry_before[pod];
                }
                if switched {
                    all_switched_at = Some(started.elapsed());
                }
            }
            if let Some(at) = all_switched_at
                && started.elapsed() > at + Duration::from_secs(10)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        let rotated_at = rotated_at.context("the CA in the Secret never changed")?;
        let all_switched_at =
            all_switched_at.context("not every replica switched to the new certificate in 150 s")?;
        let metrics_after = apiserver_metrics()?;
        let pods = kubectl_json(&["get", "pods", "-n", &ns])?;
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let uninjected: Vec<&str> = items
            .iter()
            .filter(|p| !is_injected(p))
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        let filter = [("name", WEBHOOK)];
        let delta = |name: &str, filter: &[(&str, &str)]| {
            metric_sum(&metrics_after, name, filter) - metric_sum(&metrics_before, name, filter)
        };
        let duration = "apiserver_admission_webhook_admission_duration_seconds";
        let admit = [("name", WEBHOOK), ("operation", "CREATE"), ("type", "admit")];
        let (p99, n) = quantile(
            &buckets(&metrics_before, duration, &admit),
            &buckets(&metrics_after, duration, &admit),
            0.99,
        );
        let fail_open = delta("apiserver_admission_webhook_fail_open_count", &filter);
        let rejected = delta("apiserver_admission_webhook_rejection_count", &filter);
        let calls = delta("apiserver_admission_webhook_request_total", &filter);
        let ok_calls = delta(
            "apiserver_admission_webhook_request_total",
            &[("name", WEBHOOK), ("code", "200")],
        );
        let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let bundle_certs = configs
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={RELEASE}")))
            .await?
            .items
            .iter()
            .flat_map(|c| c.webhooks.iter().flatten())
            .filter_map(|w| w.client_config.ca_bundle.as_ref())
            .map(|b| String::from_utf8_lossy(&b.0).matches("BEGIN CERTIFICATE").count())
            .next()
            .unwrap_or(0);
        summary(
            "d2 certificate rotation",
            &format!(
                "{created} pods created over {:.0}s; CA rotated at {:.1}s, both replicas serving the new certificate at {:.1}s; caBundle holds {bundle_certs} CAs; webhook calls {calls} (200: {ok_calls}), fail-open {fail_open}, rejected {rejected}; uninjected {}; API server's webhook p99 {:.1} ms over {n} calls",
                started.elapsed().as_secs_f64(),
                rotated_at.as_secs_f64(),
                all_switched_at.as_secs_f64(),
                uninjected.len(),
                p99 * 1000.0
            ),
        );
        ensure!(items.len() == created, "{} pods exist, {created} created", items.len());
        ensure!(uninjected.is_empty(), "pods created without the sidecar: {uninjected:?}");
        ensure!(fail_open == 0.0 && rejected == 0.0, "webhook call failures during the rotation: fail-open {fail_open}, rejected {rejected}");
        ensure!(
            calls >= created as f64 && ok_calls == calls,
            "the API server recorded {calls} webhook calls, {ok_calls} with code 200, for {created} pods"
        );
        ensure!(bundle_certs == 2, "the caBundle should hold the new and the previous CA, has {bundle_certs}");
        Ok(())
    })
    .await;
}

/// The host PID of the sidecar of `pod` (containerd's processes are visible here).
fn sidecar_pid(pod: &str) -> Result<u32> {
    let want = format!("POD_NAME={pod}");
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).starts_with("/lameduck-sidecar\0serve") {
            continue;
        }
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()) {
            return Ok(pid);
        }
    }
    bail!(
        "no lameduck-sidecar process with {want} on this host (is the test running on the cluster's node as root?)"
    )
}

/// Kill the sidecar during the deregister phase of a pod deletion (the kubelet does not
/// restart it then): the app's preStop holds the container until the phase's planned end,
/// so no request routed to the pod meanwhile is refused; the app then gets SIGTERM and
/// exits on its own, and the shutdown is observed.
#[tokio::test]
async fn d3_sidecar_killed_mid_deregister() {
    installed().await;
    with_namespace("sidecar-kill", |client, ns| async move {
        // A fixed 10 s deregister phase, so that the kill lands inside it.
        let mut sdp = sdp_manifest("sk", "Off", 1);
        sdp["spec"]["drain"] = json!({"mode": "Delay", "delaySeconds": 10});
        apply(&ns, &sdp)?;
        let ip = Web {
            name: "sk",
            image: rust_web(),
            replicas: 2,
            inject: true,
            grace: 30,
            cleanup_millis: 500,
        }
        .create(&ns)
        .await?;
        let pod = live_pods(&ns, "sk")?
            .first()
            .and_then(|p| p["metadata"]["name"].as_str().map(String::from))
            .context("no pod")?;
        let log_path = repo_root().join(format!(".state/{ns}-{pod}.log"));
        let mut logs = command("kubectl")
            .args(["logs", "-f", "--timestamps", "-n", &ns, &pod, "-c", "web"])
            .stdout(std::fs::File::create(&log_path)?)
            .stderr(Stdio::null())
            .spawn()?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut watch = pods
            .watch(&WatchParams::default().fields(&format!("metadata.name={pod}")), "0")
            .await?
            .boxed();
        let dir = repo_root().join(".state/e2e-load");
        std::fs::create_dir_all(&dir)?;
        let load = start_load(&ip, 50, dir.join(format!("{ns}-sk.bin")))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        kubectl(&["delete", "pod", "-n", &ns, &pod, "--wait=false"])?;
        let deleted_at = std::time::SystemTime::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let pid = sidecar_pid(&pod)?;
        let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status()?;
        ensure!(status.success(), "kill -KILL {pid} failed");
        let killed_at = std::time::SystemTime::now();

        // The app container's final state, from the watch.
        let mut web_state = None;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, watch.next()).await {
            let p = match event? {
                WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) => p,
                _ => continue,
            };
            let terminated = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.name == "web"))
                .and_then(|c| c.state.as_ref()?.terminated.clone());
            if let Some(t) = terminated {
                web_state = Some(t);
                break;
            }
        }
        let _ = logs.kill();
        let _ = logs.wait();
        rollout_status(&ns, "sk")?;
        wait_pod_count(&ns, "sk", 2, Duration::from_secs(120)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let report = load.stop()?;
        let web = web_state.context("the app container did not terminate within 60 s")?;
        let log = std::fs::read_to_string(&log_path)?;
        let sigterm_line = log
            .lines()
            .find(|l| l.contains("signal received") && l.contains("SIGTERM"))
            .map(String::from);
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64()
        };
        let sigterm_unix = sigterm_line.as_deref().and_then(|l| {
            let ts = l.split_whitespace().next()?;
            ts.parse::<k8s_openapi::jiff::Timestamp>().ok().map(|t| t.as_millisecond() as f64 / 1000.0)
        });
        let sigterm_after_delete = sigterm_unix.map(|t| t - unix(deleted_at));
        let p = wait_samples(&ns, "deployment-sk", 1, Duration::from_secs(60)).await?;
        let st = &p["status"];
        summary(
            "d3 sidecar killed mid-deregister",
            &format!(
                "sidecar killed {:.1}s into the 10 s deregister phase; app SIGTERM {:.2}s after the deletion (planned end of the phase: 10 s); exit {} ({:?}); load {}; observed: samples {}, killed {}, unobserved {}",
                unix(killed_at) - unix(deleted_at),
                sigterm_after_delete.unwrap_or(f64::NAN),
                web.exit_code,
                web.reason,
                load_summary(&report),
                st["samples"],
                st["killed"],
                st["unobserved"]
            ),
        );
        let sigterm_after_delete = sigterm_after_delete.with_context(|| {
            format!("the app never logged a SIGTERM (`signal received`); its log:\n{log}")
        })?;
        // T0 is when the hook reached the sidecar, a moment after the delete call returned.
        ensure!(
            sigterm_after_delete >= 9.5,
            "SIGTERM came {sigterm_after_delete:.2}s after the deletion, before the deregister phase's planned end (10 s): the hook let the container go early"
        );
        ensure!(
            sigterm_after_delete <= 16.0,
            "SIGTERM came {sigterm_after_delete:.2}s after the deletion: the hook held the container far past the planned end (10 s)"
        );
        report.ensure_none_failed("traffic while the sidecar was gone")?;
        ensure!(web.exit_code == 0, "the app exited {} ({:?}): it was not allowed to finish after SIGTERM", web.exit_code, web.reason);
        ensure!(st["killed"].as_u64() == Some(0), "the shutdown was recorded as a kill: {st}");
        Ok(())
    })
    .await;
}

/// The no-op webhook's name (`loadgen admit`): the baseline d4 sets lameduck's against.
const NOOP_WEBHOOK: &str = "noop.bench.lameduck.dev";

/// Runs the no-op admission webhook (`loadgen admit`, e2e/loadgen) in `ns` and registers it
/// for the pods of `ns` only, like lameduck's for the same pods: allowed, no patch,
/// failurePolicy Ignore. Returns when the API server calls it.
async fn register_noop_webhook(client: &kube::Client, ns: &str) -> Result<()> {
    let dns = format!("noop.{ns}.svc");
    apply(
        ns,
        &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "noop-webhook", "labels": {"app": "noop-webhook"}},
                "spec": {"containers": [{"name": "admit", "image": loadgen_image(),
                                         "args": ["admit", "-dns-name", dns],
                                         "ports": [{"containerPort": 8443}]}]}}),
    )?;
    apply(
        ns,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "noop"},
                "spec": {"selector": {"app": "noop-webhook"},
                         "ports": [{"port": 443, "targetPort": 8443}]}}),
    )?;
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "pod/noop-webhook",
        "--timeout=120s",
    ])?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let logs = pods.logs("noop-webhook", &Default::default()).await?;
    let ca = logs
        .lines()
        .find_map(|l| l.strip_prefix("caBundle: "))
        .with_context(|| format!("no caBundle line in the no-op webhook's log: {logs}"))?;
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": NOOP_WEBHOOK},
        "webhooks": [{
            "name": NOOP_WEBHOOK, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "failurePolicy": "Ignore", "timeoutSeconds": 10, "reinvocationPolicy": "Never",
            "clientConfig": {"service": {"name": "noop", "namespace": ns, "path": "/", "port": 443},
                             "caBundle": ca},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"], "scope": "Namespaced"}]}]}))?;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    api.create(&PostParams::default(), &config).await?;
    // The API server picks the configuration up within moments; a call answered 200
    // shows it reaches the server.
    let filter = [("name", NOOP_WEBHOOK), ("code", "200")];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    loop {
        let pod: Pod = serde_json::from_value(gated_pod(&format!("noop-check-{i}")))?;
        pods.create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await?;
        if metric_sum(
            &apiserver_metrics()?,
            "apiserver_admission_webhook_request_total",
            &filter,
        ) > 0.0
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the API server never called the no-op webhook"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// 200 annotated pods at once: all injected; the webhook's p99 as the API server sees it,
/// next to a no-op webhook's (`loadgen admit`) registered for the same pods: on a 2-core
/// machine the API server's own CPU dominates both, and their ratio is the honest figure.
#[tokio::test]
async fn d4_burst_of_200_pods() {
    installed().await;
    with_namespace("burst", |client, ns| async move {
        let result = burst_of_200_pods(&client, &ns).await;
        // Cluster-scoped: deleted whatever happened, before the namespace goes.
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let _ = api.delete(NOOP_WEBHOOK, &Default::default()).await;
        result
    })
    .await;
}

async fn burst_of_200_pods(client: &kube::Client, ns: &str) -> Result<()> {
    {
        const N: usize = 200;
        register_noop_webhook(client, ns).await?;
        let filter = [
            ("name", WEBHOOK),
            ("operation", "CREATE"),
            ("type", "admit"),
        ];
        let noop_filter = [
            ("name", NOOP_WEBHOOK),
            ("operation", "CREATE"),
            ("type", "admit"),
        ];
        let metric = "apiserver_admission_webhook_admission_duration_seconds";
        let text = apiserver_metrics()?;
        let before = buckets(&text, metric, &filter);
        let noop_before = buckets(&text, metric, &noop_filter);
        let replicas = operator_pods()?;
        let own_metric = "lameduck_webhook_admission_duration_seconds";
        let mut own_before = BTreeMap::new();
        for pod in &replicas {
            own_before.insert(
                pod.clone(),
                buckets(&operator_metrics(pod)?, own_metric, &[]),
            );
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let started = Instant::now();
        let results = futures::future::join_all((0..N).map(|i| {
            let pods = pods.clone();
            async move {
                let pod: Pod = serde_json::from_value(gated_pod(&format!("burst-{i:03}")))?;
                anyhow::Ok(pods.create(&PostParams::default(), &pod).await?)
            }
        }))
        .await;
        let took = started.elapsed();
        let mut errors = Vec::new();
        let mut uninjected = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(p) => {
                    let v = serde_json::to_value(&p)?;
                    if !is_injected(&v) {
                        uninjected.push(i);
                    }
                }
                Err(e) => errors.push(format!("pod {i}: {e:#}")),
            }
        }
        let text = apiserver_metrics()?;
        let after = buckets(&text, metric, &filter);
        let noop_after = buckets(&text, metric, &noop_filter);
        let (p50, n) = quantile(&before, &after, 0.50);
        let (p99, _) = quantile(&before, &after, 0.99);
        let (noop_p50, noop_n) = quantile(&noop_before, &noop_after, 0.50);
        let (noop_p99, _) = quantile(&noop_before, &noop_after, 0.99);
        let mut own_before_all = BTreeMap::new();
        let mut own_after_all = BTreeMap::new();
        for pod in &replicas {
            for (le, c) in &own_before[pod] {
                *own_before_all.entry(*le).or_insert(0.0) += c;
            }
            for (le, c) in buckets(&operator_metrics(pod)?, own_metric, &[]) {
                *own_after_all.entry(le).or_insert(0.0) += c;
            }
        }
        let (own_p99, own_n) = quantile(&own_before_all, &own_after_all, 0.99);
        summary(
            "d4 burst",
            &format!(
                "{N} pods created concurrently in {:.1}s: {} errors, {} uninjected; API server's webhook admission duration over {n} calls: p50 {:.1} ms, p99 {:.1} ms; the no-op webhook over {noop_n} calls of the same burst: p50 {:.1} ms, p99 {:.1} ms (p99 ratio lameduck / no-op {:.2}); the operator's own handler p99 {:.2} ms over {own_n}",
                took.as_secs_f64(),
                errors.len(),
                uninjected.len(),
                p50 * 1000.0,
                p99 * 1000.0,
                noop_p50 * 1000.0,
                noop_p99 * 1000.0,
                p99 / noop_p99,
                own_p99 * 1000.0,
            ),
        );
        ensure!(
            noop_n >= N as f64,
            "the API server recorded {noop_n} no-op webhook calls for {N} pods"
        );
        ensure!(
            noop_p99.is_finite(),
            "no p99 of the no-op webhook from {metric}"
        );
        ensure!(
            errors.is_empty(),
            "pod creation failed: {:?}",
            &errors[..errors.len().min(5)]
        );
        ensure!(uninjected.is_empty(), "pods not injected: {uninjected:?}");
        ensure!(
            n >= N as f64,
            "the API server recorded {n} webhook calls for {N} pods"
        );
        ensure!(p99.is_finite(), "no p99 from {metric}");
        Ok(())
    }
}

/// Every container the kubelet SIGKILLed on the node while a watch ran.
#[derive(Debug, Default)]
struct Kills {
    /// namespace/pod → grace period of the pod.
    killed: BTreeMap<String, i64>,
    /// Pods seen terminating.
    terminated: BTreeSet<String>,
}

/// While 3 replicas of two workloads restart, watch every pod on the node: the only
/// SIGKILLs are of pods whose policy's maximum was reached, and their Event says so.
#[tokio::test]
async fn d5_node_level_view_of_a_rolling_restart() {
    installed().await;
    with_namespace("node", |client, ns| async move {
        // `ok` finishes well within its grace period; `capped` needs 8 s of cleanup but its
        // policy caps the grace period at 5 s.
        apply(&ns, &sdp_manifest("ok", "Initial", 3))?;
        let mut capped = sdp_manifest("capped", "Initial", 1);
        capped["spec"]["gracePeriod"]["minSeconds"] = json!(1);
        capped["spec"]["gracePeriod"]["maxSeconds"] = json!(5);
        apply(&ns, &capped)?;
        for (name, grace, cleanup_millis) in [("ok", 30, 1000), ("capped", 5, 8000)] {
            Web {
                name,
                image: rust_web(),
                replicas: 3,
                inject: true,
                grace,
                cleanup_millis,
            }
            .create(&ns)
            .await?;
        }
        // The node-level view: every pod of the node, all namespaces.
        let all: Api<Pod> = Api::all(client.clone());
        let mut watch = all
            .watch(&WatchParams::default().fields(&format!("spec.nodeName={NODE_NAME}")), "0")
            .await?
            .boxed();
        let kills = std::sync::Arc::new(std::sync::Mutex::new(Kills::default()));
        let seen = kills.clone();
        let collector = tokio::spawn(async move {
            while let Some(event) = watch.next().await {
                let Ok(WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p)) = event else {
                    continue;
                };
                let key = format!(
                    "{}/{}",
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default()
                );
                let grace = p.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
                let statuses = p.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
                let mut kills = seen.lock().unwrap();
                for c in statuses {
                    if let Some(t) = c.state.and_then(|s| s.terminated) {
                        kills.terminated.insert(key.clone());
                        if t.exit_code == 137 && t.reason.as_deref() != Some("OOMKilled") {
                            kills.killed.insert(key.clone(), grace);
                        }
                    }
                }
            }
        });
        let started = Instant::now();
        for name in ["ok", "capped"] {
            kubectl(&["rollout", "restart", "-n", &ns, &format!("deployment/{name}")])?;
        }
        for name in ["ok", "capped"] {
            rollout_status(&ns, name)?;
            wait_pod_count(&ns, name, 3, Duration::from_secs(180)).await?;
        }
        let rollout = started.elapsed();
        tokio::time::sleep(Duration::from_secs(3)).await;
        collector.abort();
        let kills = std::mem::take(&mut *kills.lock().unwrap());
        let capped_policy = wait_for("the capped policy to record its kills", Duration::from_secs(60), || {
            let p = policy(&ns, "deployment-capped")?;
            Ok((p["status"]["killed"].as_u64().unwrap_or(0) > 0).then_some(p))
        })
        .await?;
        let ok_policy = policy(&ns, "deployment-ok")?;
        let events = kubectl_json(&["get", "events", "-n", &ns])?;
        let notes: Vec<String> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == "PodKilled")
            .filter_map(|e| e["note"].as_str().or(e["message"].as_str()).map(String::from))
            .collect();
        let prefix = format!("{ns}/");
        let (ours, elsewhere): (Vec<_>, Vec<_>) =
            kills.killed.iter().partition(|(k, _)| k.starts_with(&prefix));
        let killed_capped = ours.iter().filter(|(k, _)| k.starts_with(&format!("{prefix}capped-"))).count();
        let killed_ok: Vec<_> = ours.iter().filter(|(k, _)| k.starts_with(&format!("{prefix}ok-"))).collect();
        summary(
            "d5 node-level view",
            &format!(
                "rollout of 2x3 replicas in {:.0}s; {} pods seen terminating on the node; SIGKILLed: capped {killed_capped} (max 5 s, needs ~9 s), ok {}, other namespaces {}; policies killed: capped {}, ok {}; PodKilled Event: {:?}",
                rollout.as_secs_f64(),
                kills.terminated.len(),
                killed_ok.len(),
                elsewhere.len(),
                capped_policy["status"]["killed"],
                ok_policy["status"]["killed"],
                notes.first()
            ),
        );
        ensure!(killed_ok.is_empty(), "pods of `ok` were SIGKILLed: {killed_ok:?}");
        ensure!(elsewhere.is_empty(), "pods of other namespaces were SIGKILLed meanwhile: {elsewhere:?}");
        ensure!(killed_capped > 0, "no pod of `capped` was SIGKILLed (8 s cleanup, 5 s max): the drill proves nothing");
        for (pod, grace) in &ours {
            ensure!(**grace >= 5, "{pod} was killed at {grace}s, below its policy's max of 5 s");
        }
        ensure!(ok_policy["status"]["killed"].as_u64() == Some(0), "policy ok recorded kills: {}", ok_policy["status"]);
        ensure!(
            notes.iter().any(|n| n.contains("gracePeriod.maxSeconds (5s) is reached")),
            "no PodKilled Event says the maximum was reached: {notes:?}"
        );
        Ok(())
    })
    .await;
}

/// Gated pods created in `ns`, one started every `period` (each creation runs on its own,
/// so a slow answer does not lower the rate) until `stop` is set: the names created and the
/// creation errors.
fn create_pods_until(
    client: kube::Client,
    ns: String,
    prefix: &'static str,
    period: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<String>, Vec<String>)> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::namespaced(client, &ns);
        let mut ticks = tokio::time::interval(period);
        let mut creations = tokio::task::JoinSet::new();
        let mut i = 0usize;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            ticks.tick().await;
            let name = format!("{prefix}-{i:04}");
            i += 1;
            let pods = pods.clone();
            creations.spawn(async move {
                let pod: Pod =
                    serde_json::from_value(gated_pod(&name)).map_err(|e| format!("{name}: {e}"))?;
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => Ok(name),
                    Err(e) => Err(format!("{name}: {e}")),
                }
            });
        }
        let (mut created, mut errors) = (Vec::new(), Vec::new());
        while let Some(joined) = creations.join_next().await {
            match joined {
                Ok(Ok(name)) => created.push(name),
                Ok(Err(error)) => errors.push(error),
                Err(error) => errors.push(format!("creation task: {error}")),
            }
        }
        (created, errors)
    })
}

/// The policy of a new Deployment `name` of 2 injected replicas (cleanup 300 ms), the
/// Deployment itself, and the samples its policy holds.
async fn two_injected_replicas(ns: &str, name: &str) -> Result<u64> {
    apply(ns, &sdp_manifest(name, "Initial", 3))?;
    Web {
        name,
        image: rust_web(),
        replicas: 2,
        inject: true,
        grace: 30,
        cleanup_millis: 300,
    }
    .create(ns)
    .await?;
    policy_samples(ns, &format!("deployment-{name}"))
}

/// The API server's webhook call counters since `before`: (calls, calls with code 200,
/// fail-open, rejected).
fn webhook_calls(before: &str, after: &str) -> (f64, f64, f64, f64) {
    let delta = |name: &str, filter: &[(&str, &str)]| {
        metric_sum(after, name, filter) - metric_sum(before, name, filter)
    };
    let filter = [("name", WEBHOOK)];
    (
        delta("apiserver_admission_webhook_request_total", &filter),
        delta(
            "apiserver_admission_webhook_request_total",
            &[("name", WEBHOOK), ("code", "200")],
        ),
        delta("apiserver_admission_webhook_fail_open_count", &filter),
        delta("apiserver_admission_webhook_rejection_count", &filter),
    )
}

/// Roll the operator itself while pods are created at more than 5 a second and an injected
/// workload rolls too: every pod is admitted with the sidecar (a replica going away keeps
/// admitting until the API server stops sending it admissions), the API server records no
/// failed webhook call, and the shutdowns that happened meanwhile are all recorded.
#[tokio::test]
async fn d6_operator_rollout_under_pod_creation() {
    installed().await;
    with_namespace("self-rollout", |client, ns| async move {
        ensure!(operator_pods()?.len() == 2, "want 2 operator replicas, have {:?}", operator_pods()?);
        let samples_before = two_injected_replicas(&ns, "obs").await?;
        let metrics_before = apiserver_metrics()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Instant::now();
        // 8 pods a second for the whole rollout of the operator.
        let creator =
            create_pods_until(client.clone(), ns.clone(), "roll", Duration::from_millis(125), stop.clone());
        tokio::time::sleep(Duration::from_secs(3)).await;
        kubectl(&["rollout", "restart", "-n", SYSTEM_NS, &format!("deployment/{RELEASE}")])?;
        // The workload's two old pods shut down while the operator's replicas change.
        tokio::time::sleep(Duration::from_secs(2)).await;
        kubectl(&["rollout", "restart", "-n", &ns, "deployment/obs"])?;
        rollout_status(SYSTEM_NS, RELEASE)?;
        // Until the old replicas are gone (they keep admitting for their shutdown delay).
        wait_for("the old operator pods to be gone", Duration::from_secs(120), || {
            Ok((operator_pod_items()?.len() == 2).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (created, errors) = creator.await?;
        let took = started.elapsed();
        let metrics_after = apiserver_metrics()?;
        rollout_status(&ns, "obs")?;
        let (calls, ok_calls, fail_open, rejected) = webhook_calls(&metrics_before, &metrics_after);
        let pods = kubectl_json(&["get", "pods", "-n", &ns, "-l", "app=gated"])?;
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let uninjected: Vec<&str> = items
            .iter()
            .filter(|p| !is_injected(p))
            .filter_map(|p| p["metadata"]["name"].as_str())
            .collect();
        // The two old pods of the workload: their observations land in the policy.
        let after = wait_samples(&ns, "deployment-obs", samples_before + 2, Duration::from_secs(120)).await;
        let samples_after = policy_samples(&ns, "deployment-obs")?;
        let rate = created.len() as f64 / took.as_secs_f64();
        summary(
            "d6 operator rollout",
            &format!(
                "{} pods created over {:.0}s ({rate:.1}/s) while the operator rolled: {} creation errors, {} uninjected; webhook calls {calls} (200: {ok_calls}), fail-open {fail_open}, rejected {rejected}; policy samples {samples_before} -> {samples_after} (rollout of 2 during the operator's)",
                created.len(),
                took.as_secs_f64(),
                errors.len(),
                uninjected.len(),
            ),
        );
        ensure!(errors.is_empty(), "pod creation failed: {:?}", &errors[..errors.len().min(5)]);
        ensure!(rate >= 5.0, "created {rate:.1} pods/s, want at least 5");
        ensure!(items.len() == created.len(), "{} gated pods exist, {} created", items.len(), created.len());
        ensure!(uninjected.is_empty(), "pods admitted without the sidecar during the operator's rollout: {uninjected:?}");
        ensure!(
            fail_open == 0.0 && rejected == 0.0,
            "webhook call failures during the operator's rollout: fail-open {fail_open}, rejected {rejected}"
        );
        ensure!(
            calls >= created.len() as f64 && ok_calls == calls,
            "the API server recorded {calls} webhook calls, {ok_calls} with code 200, for {} pods",
            created.len()
        );
        after.map_err(|e| anyhow::anyhow!("observations lost during the operator's rollout: {e:#}"))?;
        ensure!(
            samples_after == samples_before + 2,
            "the workload replaced 2 pods, its policy went from {samples_before} to {samples_after} samples"
        );
        Ok(())
    })
    .await;
}

/// The restart count of an operator pod's container.
fn operator_restarts(pod: &str) -> Result<u64> {
    let p = kubectl_json(&["get", "pod", "-n", SYSTEM_NS, pod])?;
    Ok(p["status"]["containerStatuses"][0]["restartCount"]
        .as_u64()
        .unwrap_or(0))
}

/// A task of the operator dies: the leader's controller task ends when another identity
/// takes its Lease. The process exits (the supervisor ends it with a log line naming the
/// task), the kubelet restarts it, it serves again, and the shutdowns of a rollout that
/// ran meanwhile are all recorded.
#[tokio::test]
async fn d7_a_task_dies_the_process_restarts_and_resumes() {
    installed().await;
    with_namespace("task-dies", |_client, ns| async move {
        let samples_before = two_injected_replicas(&ns, "td").await?;
        let holder = lease_holder()?;
        let restarts_before = operator_restarts(&holder)?;
        // Another identity takes the Lease, as a partitioned leader would find it taken.
        let now = k8s_openapi::jiff::Timestamp::now();
        // A Lease's MicroTime: six fractional digits.
        let now = format!("{}.{:06}Z", now.strftime("%Y-%m-%dT%H:%M:%S"), now.subsec_microsecond());
        let patch = json!({"spec": {"holderIdentity": "e2e-intruder", "acquireTime": now, "renewTime": now}});
        kubectl(&["patch", "lease", "-n", SYSTEM_NS, LEASE, "--type=merge", "-p", &patch.to_string()])?;
        let stolen_at = Instant::now();
        kubectl(&["rollout", "restart", "-n", &ns, "deployment/td"])?;
        let restarted = wait_for("the old leader's container to restart", Duration::from_secs(90), || {
            Ok((operator_restarts(&holder)? > restarts_before).then_some(()))
        })
        .await;
        let log = kubectl(&["logs", "-n", SYSTEM_NS, &holder, "--previous"]).unwrap_or_default();
        restarted?;
        let restart_after = stolen_at.elapsed();
        wait_for("the restarted operator to be ready", Duration::from_secs(90), || {
            let p = kubectl_json(&["get", "pod", "-n", SYSTEM_NS, &holder])?;
            Ok((p["status"]["containerStatuses"][0]["ready"] == true).then_some(()))
        })
        .await?;
        let new_holder = wait_for("a replica to hold the Lease", Duration::from_secs(60), || {
            let h = lease_holder()?;
            Ok((h != "e2e-intruder").then_some(h))
        })
        .await?;
        rollout_status(&ns, "td")?;
        let after = wait_samples(&ns, "deployment-td", samples_before + 2, Duration::from_secs(120)).await;
        let samples_after = policy_samples(&ns, "deployment-td")?;
        let named = log
            .lines()
            .find(|l| l.contains("task `controller` failed"))
            .unwrap_or("")
            .to_owned();
        summary(
            "d7 a task dies",
            &format!(
                "the Lease taken from {holder}: its controller task ended, the process exited and was restarted after {:.1}s, ready again; Lease now {new_holder}; samples {samples_before} -> {samples_after} (rollout of 2 meanwhile); exit line: {}",
                restart_after.as_secs_f64(),
                named.trim()
            ),
        );
        ensure!(!named.is_empty(), "the previous container's log does not name the failed task:\n{log}");
        after.map_err(|e| anyhow::anyhow!("observations lost while the operator restarted: {e:#}"))?;
        ensure!(
            samples_after == samples_before + 2,
            "the workload replaced 2 pods, its policy went from {samples_before} to {samples_after} samples"
        );
        Ok(())
    })
    .await;
}
