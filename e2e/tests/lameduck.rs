//! End-to-end suite of lameduck on the local cluster (`make cluster-up`, then
//! `make e2e-test`): `helm upgrade --install` of charts/lameduck with the locally built
//! images, then the scenarios of docs/e2e.md with real pods, real rollouts and real load
//! (vegeta). Tests run one at a time (`--test-threads=1`), in name order: the uninstall
//! test (`t9_…`) comes last. Every test works in its own namespace and fails, never skips,
//! when the cluster, an image or vegeta is missing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use common::*;
use lameduck_e2e::with_namespace;
use serde_json::json;

// ---------------------------------------------------------------------------------------
// Scenarios

#[tokio::test]
async fn t1_annotated_deployment_is_injected_and_gets_a_policy() {
    installed().await;
    with_namespace("inject", |_client, ns| async move {
        let web = Web {
            name: "web",
            image: rust_web(),
            replicas: 2,
            inject: false,
            grace: 30,
            cleanup_millis: 200,
        };
        web.create(&ns).await?;
        for p in live_pods(&ns, "web")? {
            ensure!(
                !has_sidecar(&p),
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
            "TIMEOUTS",
            "REFUSED",
            "AGE",
        ] {
            ensure!(
                header.contains(col),
                "kubectl get sdp lacks column {col}: {header}"
            );
        }
        summary(
            "1 injection",
            "2/2 pods injected as in docs/architecture.md; policy deployment-web owned by the Deployment",
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn t10_namespace_label_opts_in_its_workloads() {
    installed().await;
    with_namespace("nslabel", |_client, ns| async move {
        Web {
            name: "plain",
            image: rust_web(),
            replicas: 1,
            inject: false,
            grace: 30,
            cleanup_millis: 200,
        }
        .create(&ns)
        .await?;
        ensure!(
            policy(&ns, "deployment-plain").is_err(),
            "a policy exists before anything opted in"
        );
        // Labelling the namespace alone (no change to the Deployment) makes the operator
        // adopt its workloads; new pods are injected and point at that policy.
        kubectl(&["label", "namespace", &ns, "lameduck.dev/inject=enabled"])?;
        let sdp = wait_for(
            "ShutdownPolicy deployment-plain after the namespace label",
            Duration::from_secs(60),
            || Ok(policy(&ns, "deployment-plain").ok()),
        )
        .await?;
        ensure!(
            sdp["spec"]["targetRef"]["name"] == "plain",
            "targetRef: {}",
            sdp["spec"]["targetRef"]
        );
        kubectl(&["rollout", "restart", "-n", &ns, "deployment/plain"])?;
        rollout_status(&ns, "plain")?;
        wait_pod_count(&ns, "plain", 1, Duration::from_secs(120)).await?;
        let pods = live_pods(&ns, "plain")?;
        ensure!(pods.len() == 1, "{} pods after the rollout", pods.len());
        check_injected(&pods[0], "plain", "deployment-plain")?;
        summary(
            "namespace opt-in",
            "lameduck.dev/inject=enabled on the namespace: policy deployment-plain created without touching the Deployment; the restarted pod is injected",
        );
        Ok(())
    })
    .await;
}

/// A liveness-probe kill of one container is not a pod deletion: the killed container
/// drains and cleans up (its hook ran), the pod's other container is left alone, the
/// restarted process serves again, and a rollout afterwards is as clean as ever.
#[tokio::test]
async fn t11_liveness_kill_restarts_one_container_and_the_pod_serves_again() {
    installed().await;
    with_namespace("liveness", |_client, ns| async move {
        let web = Web {
            name: "lv",
            image: rust_web(),
            replicas: 2,
            inject: true,
            grace: 30,
            cleanup_millis: 300,
        };
        let mut deployment = web.deployment(&ns);
        let spec = &mut deployment["spec"]["template"]["spec"];
        spec["containers"][0]["livenessProbe"] = serde_json::json!({
            "httpGet": {"path": "/livez", "port": 8080},
            "periodSeconds": 1, "failureThreshold": 1,
        });
        // A second SDK container in the same pod, on its own port, with its own records.
        spec["containers"]
            .as_array_mut()
            .context("containers")?
            .push(serde_json::json!({
                "name": "side",
                "image": rust_web(),
                "env": [
                    {"name": "LISTEN_ADDR", "value": "0.0.0.0:8081"},
                    {"name": "RECORDS_DIR", "value": "/side-records"},
                    {"name": "CLEANUP_MILLIS", "value": "100"},
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8081},
                                   "periodSeconds": 1},
                "volumeMounts": [{"name": "side-records", "mountPath": "/side-records"}],
            }));
        spec["volumes"]
            .as_array_mut()
            .context("volumes")?
            .push(serde_json::json!({"name": "side-records", "emptyDir": {}}));
        apply(&ns, &deployment)?;
        apply(
            &ns,
            &serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "lv"},
                "spec": {"selector": {"app": "lv"}, "ports": [{"port": 80, "targetPort": 8080}]},
            }),
        )?;
        rollout_status(&ns, "lv")?;
        let ip = kubectl_json(&["get", "service", "-n", &ns, "lv"])?["spec"]["clusterIP"]
            .as_str()
            .context("ClusterIP")?
            .to_string();
        wait_for("the Service", Duration::from_secs(30), || {
            Ok(http_ok(&ip).then_some(()))
        })
        .await?;
        let pod = live_pods(&ns, "lv")?.first().cloned().context("no pod")?;
        let name = pod["metadata"]["name"]
            .as_str()
            .context("pod name")?
            .to_string();
        let pod_ip = pod["status"]["podIP"]
            .as_str()
            .context("pod IP")?
            .to_string();
        let dir = repo_root().join(".state/e2e-load");
        std::fs::create_dir_all(&dir)?;

        let during = start_load(&ip, 50, dir.join(format!("{ns}-liveness.bin")))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        post(&pod_ip, 8080, "/fail-liveness")?;
        let restarted = Instant::now();
        let restart_count = |container: &str| -> Result<u64> {
            let p = kubectl_json(&["get", "pod", "-n", &ns, &name])?;
            let status = find(&p["status"]["containerStatuses"], container)
                .with_context(|| format!("no status for {container}"))?
                .clone();
            Ok(status["restartCount"].as_u64().unwrap_or(0)
                + u64::from(status["ready"] != true) * 1000)
        };
        // restartCount 1 and ready again (the ready flag is folded in as +1000 while not).
        wait_for("web restarted and ready", Duration::from_secs(120), || {
            Ok((restart_count("web")? == 1).then_some(()))
        })
        .await?;
        let took = restarted.elapsed();
        let liveness_load = during.stop()?;
        for _ in 0..10 {
            ensure!(
                http_get_status(&pod_ip, 8080, "/")? == 200,
                "the restarted container does not serve"
            );
        }
        ensure!(
            restart_count("side")? == 0,
            "the side container was restarted or not ready"
        );
        let side_log = kubectl(&["logs", "-n", &ns, &name, "-c", "side"])?;
        ensure!(
            !side_log.contains("draining"),
            "the other container was told to drain:\n{side_log}"
        );
        let web_previous = kubectl(&["logs", "-n", &ns, &name, "-c", "web", "--previous"])?;
        ensure!(
            web_previous.contains("draining") && web_previous.contains("shutdown complete: ok"),
            "the killed container did not drain and clean up:\n{web_previous}"
        );
        let web_now = kubectl(&["logs", "-n", &ns, &name, "-c", "web"])?;
        ensure!(
            !web_now.contains("draining"),
            "the restarted process was told to drain:\n{web_now}"
        );

        // A rollout afterwards, under load: as clean as without the liveness kill.
        let load = start_load(&ip, 50, dir.join(format!("{ns}-rollout.bin")))?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        kubectl(&["rollout", "restart", "-n", &ns, "deployment/lv"])?;
        rollout_status(&ns, "lv")?;
        wait_pod_count(&ns, "lv", 2, Duration::from_secs(180)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rollout = load.stop()?;
        kubectl(&["scale", "-n", &ns, "deployment/lv", "--replicas=0"])?;
        wait_pod_count(&ns, "lv", 0, Duration::from_secs(120)).await?;
        let flushed = records(&ns, "lv")?;
        let acknowledged = liveness_load.ok + rollout.ok;
        summary(
            "11 liveness kill of one container",
            &format!(
                "web killed and back in {:.0}s; while it restarted: {}; rollout afterwards: {}; \
                 records acknowledged {acknowledged}, flushed {flushed}",
                took.as_secs_f64(),
                load_summary(&liveness_load),
                load_summary(&rollout),
            ),
        );
        rollout.ensure_none_failed("the rollout after the liveness kill")?;
        ensure!(
            flushed >= acknowledged,
            "{} acknowledged records lost",
            acknowledged - flushed
        );
        Ok(())
    })
    .await;
}

/// One HTTP/1.0 request to a pod of the local cluster; the status code.
fn http_get_status(ip: &str, port: u16, path: &str) -> Result<u16> {
    request(ip, port, "GET", path)
}

/// `POST path` to a pod of the local cluster; fails unless it answers 200.
fn post(ip: &str, port: u16, path: &str) -> Result<()> {
    let status = request(ip, port, "POST", path)?;
    ensure!(
        status == 200,
        "POST {path} to {ip}:{port} answered {status}"
    );
    Ok(())
}

fn request(ip: &str, port: u16, method: &str, path: &str) -> Result<u16> {
    use std::io::{Read, Write};
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {response:?}"))
}

/// An eviction through the Eviction API and a `kubectl delete --grace-period` shorter than
/// the shutdown needs (grace 60 s, cleanup 10 s, both cut to 3 s): each is recorded with its
/// cause; `killed`, `timeouts`, the samples and the recommendation stay as the rollout left
/// them, and no PodKilled Event is raised.
#[tokio::test]
async fn t12_evictions_and_shortened_deletes_are_recorded_by_cause() {
    installed().await;
    with_namespace("disrupt", |_client, ns| async move {
        const POLICY: &str = "deployment-disrupt";
        // Off: the pods keep their 60 s, the deletions below shorten it.
        apply(&ns, &sdp_manifest("disrupt", "Off", 2))?;
        Web {
            name: "disrupt",
            image: rust_web(),
            replicas: 2,
            inject: true,
            grace: 60,
            cleanup_millis: 10_000,
        }
        .create(&ns)
        .await?;
        // A rollout first: two samples and a recommendation that must not move.
        restart_and_settle(&ns, "disrupt", 2).await?;
        let before = wait_samples(&ns, POLICY, 2, Duration::from_secs(90)).await?["status"].clone();
        ensure!(
            !before["recommendation"]["gracePeriodSeconds"].is_null(),
            "no recommendation after the rollout: {before}"
        );
        ensure!(
            before["causes"] == serde_json::json!({"deletion": 2}),
            "the rollout's causes: {}",
            before["causes"]
        );
        let victims: Vec<String> = live_pods(&ns, "disrupt")?
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect();
        let [evicted, deleted] = victims.as_slice() else {
            anyhow::bail!("want 2 running pods, have {victims:?}");
        };
        // The Eviction API with a shorter grace period, as `kubectl drain --grace-period=3`
        // sends it. (Not through kube's `Api::evict`: kube 5.0 writes `delete_options`, a
        // field the API server ignores, so the pod would get its own grace period.)
        let eviction = serde_json::json!({
            "apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": evicted, "namespace": ns},
            "deleteOptions": {"gracePeriodSeconds": 3},
        });
        let mut create = command("kubectl");
        create.args([
            "create",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/pods/{evicted}/eviction"),
            "-f",
            "-",
        ]);
        run(create, Some(&eviction.to_string())).context("evict through the Eviction API")?;
        kubectl(&["delete", "pod", "-n", &ns, deleted, "--grace-period=3", "--wait=false"])?;
        let after = wait_for("both disruptions recorded", Duration::from_secs(120), || {
            let st = policy(&ns, POLICY)?["status"].clone();
            let causes = &st["causes"];
            Ok((causes["eviction"] == 1 && causes["shortenedDeletion"] == 1).then_some(st))
        })
        .await?;
        eprintln!("{}", serde_json::to_string_pretty(&after)?);
        for field in ["killed", "timeouts", "samples"] {
            ensure!(
                after[field] == before[field],
                "{field}: {} before the disruptions, {} after",
                before[field],
                after[field]
            );
        }
        ensure!(
            after["recommendation"] == before["recommendation"],
            "the recommendation moved: {} -> {}",
            before["recommendation"],
            after["recommendation"]
        );
        // 10 s of cleanup in 3 s (+2 s the kubelet adds after the preStop hook): killed.
        ensure!(
            after["cutShort"] == 2,
            "cutShort {}, want both disruptions",
            after["cutShort"]
        );
        let events = kubectl_json(&["get", "events", "-n", &ns])?;
        let killed_events: Vec<&serde_json::Value> = events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["reason"] == "PodKilled" || e["reason"] == "ShutdownTimedOut")
            .collect();
        ensure!(killed_events.is_empty(), "Events for cut-short shutdowns: {killed_events:?}");
        summary(
            "disruptions by cause",
            &format!(
                "eviction and delete --grace-period=3 of a 60 s / 10 s-cleanup pod: causes {}, cutShort {}, killed {} and timeouts {} unchanged, recommendation {}s unchanged",
                after["causes"],
                after["cutShort"],
                after["killed"],
                after["timeouts"],
                after["recommendation"]["gracePeriodSeconds"]
            ),
        );
        Ok(())
    })
    .await;
}

/// A CronJob's pods record into the CronJob's policy: every run is a new Job with a new
/// name, so only a policy of the CronJob gathers samples across runs.
#[tokio::test]
async fn t13_cronjob_pods_record_into_the_cronjobs_policy() {
    installed().await;
    with_namespace("cronjob", |_client, ns| async move {
        let name = "tick";
        let policy_name = format!("cronjob-{name}");
        // The web app's pod, run by a CronJob: it serves until its pod is deleted.
        let web = Web {
            name,
            image: rust_web(),
            replicas: 1,
            inject: false,
            grace: 30,
            cleanup_millis: 200,
        };
        let mut template = web.deployment(&ns)["spec"]["template"].clone();
        template["spec"]["restartPolicy"] = json!("Never");
        apply(
            &ns,
            &json!({
                "apiVersion": "batch/v1", "kind": "CronJob",
                "metadata": {"name": name, "annotations": {"lameduck.dev/inject": "true"}},
                "spec": {
                    "schedule": "* * * * *",
                    // One run at a time; a deleted pod ends its Job (no replacement).
                    "concurrencyPolicy": "Forbid",
                    "jobTemplate": {"spec": {
                        "backoffLimit": 0,
                        "activeDeadlineSeconds": 600,
                        "template": template,
                    }},
                },
            }),
        )?;
        let cron_job = kubectl_json(&["get", "cronjob", "-n", &ns, name])?;
        let uid = cron_job["metadata"]["uid"].clone();
        let sdp = wait_for(
            &format!("ShutdownPolicy {policy_name}"),
            Duration::from_secs(60),
            || Ok(policy(&ns, &policy_name).ok()),
        )
        .await?;
        let owners = &sdp["metadata"]["ownerReferences"];
        ensure!(
            owners
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["kind"] == "CronJob" && o["name"] == name && o["uid"] == uid),
            "policy not owned by the CronJob: {owners}"
        );
        ensure!(
            sdp["spec"]["targetRef"]
                == json!({"apiVersion": "batch/v1", "kind": "CronJob", "name": name}),
            "targetRef: {}",
            sdp["spec"]["targetRef"]
        );
        // The first run starts within a minute; its pod serves once the sidecar is up.
        let pod = wait_for(
            "a ready pod of the CronJob's first Job",
            Duration::from_secs(150),
            || {
                Ok(pods(&ns, name)?.into_iter().find(|p| {
                    p["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                }))
            },
        )
        .await?;
        // No second run meanwhile: one pod, one sample.
        kubectl(&[
            "patch",
            "cronjob",
            "-n",
            &ns,
            name,
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ])?;
        let pod_name = pod["metadata"]["name"]
            .as_str()
            .context("pod name")?
            .to_owned();
        let job = pod["metadata"]["ownerReferences"][0]["name"]
            .as_str()
            .unwrap_or_default();
        ensure!(
            job.starts_with(&format!("{name}-")),
            "pod {pod_name} owned by {job}, not by a Job of the CronJob"
        );
        check_injected(&pod, name, &policy_name)?;
        ensure!(
            pod["metadata"]["annotations"]["lameduck.dev/policy"] == json!(policy_name),
            "pod {pod_name}: lameduck.dev/policy {}",
            pod["metadata"]["annotations"]["lameduck.dev/policy"]
        );
        ensure!(
            policy(&ns, &format!("job-{job}")).is_err(),
            "the CronJob's Job {job} got a policy of its own"
        );
        kubectl(&["delete", "pod", "-n", &ns, &pod_name, "--wait=false"])?;
        let p = wait_samples(&ns, &policy_name, 1, Duration::from_secs(90)).await?;
        ensure!(
            p["status"]["killed"].as_u64() == Some(0),
            "killed {}",
            p["status"]["killed"]
        );
        summary(
            "13 cronjob",
            &format!(
                "policy {policy_name} owned by the CronJob; pod {pod_name} of Job {job} annotated with it; its shutdown recorded (samples {})",
                p["status"]["samples"]
            ),
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn t2_rolling_restart_under_load_loses_nothing() {
    installed().await;
    with_namespace("load", |_client, ns| async move {
        let mut ips = BTreeMap::new();
        for (name, inject) in [("ld", true), ("plain", false)] {
            let web = Web {
                name,
                image: rust_web(),
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
        ld.ensure_none_failed("the injected app during its rolling restart")?;
        ensure!(
            ld_lost == 0,
            "the injected app acknowledged {} requests but flushed {ld_records} records",
            ld.ok
        );
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn t3_observations_land_in_the_policy() {
    installed().await;
    with_namespace("observe", |_client, ns| async move {
        apply(&ns, &sdp_manifest("obs", "Initial", 3))?;
        let web = Web {
            name: "obs",
            image: rust_web(),
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

#[tokio::test]
async fn t4_fast_cleanup_converges_and_initial_mode_applies() {
    installed().await;
    with_namespace("fast", |_client, ns| async move {
        apply(&ns, &sdp_manifest("fast", "Initial", 3))?;
        apply(&ns, &sdp_manifest("fastoff", "Off", 3))?;
        for name in ["fast", "fastoff"] {
            Web {
                name,
                image: rust_web(),
                replicas: 3,
                inject: true,
                grace: 30,
                cleanup_millis: 2000,
            }
            .create(&ns)
            .await?;
        }
        let mut recs = BTreeMap::new();
        // Every recommendation `fast` made: its pods carry the one of their creation.
        let mut fast_recs = std::collections::BTreeSet::new();
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
                let rec = p["status"]["recommendation"]["gracePeriodSeconds"].as_u64();
                if name == "fast" {
                    fast_recs.extend(rec);
                }
                recs.insert(name, rec);
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
            graces.iter().all(|g| fast_recs.contains(g)),
            "Initial mode: pods have grace {graces:?}, recommendations {fast_recs:?}"
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
        // Sequence ≈ 5 s deregister (no lag learned yet when both rounds' pods were
        // created: the fixed delay) + 2 s cleanup → × 1.2 + 2 s exit reserve + exit + 1 s
        // precision + 1 s buffer ≈ 13 s, × 1.5 while fewer than 16 samples are known.
        ensure!(
            (17..=24).contains(&rec),
            "recommended grace {rec}s for a 5 s phase and a 2 s cleanup, want 17–24 (phases: {phases})"
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

#[tokio::test]
async fn t6_slow_cleanup_kills_are_recorded_then_avoided() {
    installed().await;
    with_namespace("slow", |_client, ns| async move {
        const POLICY: &str = "deployment-slow";
        apply(&ns, &sdp_manifest("slow", "Initial", 2))?;
        Web {
            name: "slow",
            image: rust_web(),
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
        report.ensure_none_failed("round 3")?;
        ensure!(
            flushed >= report.ok,
            "{} acknowledged requests but only {flushed} records flushed",
            report.ok
        );
        Ok(())
    })
    .await;
}

/// One rolling restart of the convergence test, as the table shows it.
struct RolloutRow {
    /// The grace periods of the pods shut down in this rollout.
    graces: Vec<u64>,
    /// Whether every one of them carried a recommendation (annotation `recommended`).
    all_recommended: bool,
    /// The recommendation after the rollout's shutdowns were recorded.
    recommended_after: Option<u64>,
    /// Samples, p99 of the shutdown and of the sequence, after the rollout.
    samples: u64,
    p99: f64,
    sequence_p99: f64,
    /// Timeouts and kills recorded during the rollout.
    timeouts: u64,
    kills: u64,
    /// Load during the rollout.
    requests: u64,
    failed: u64,
}

#[tokio::test]
async fn t7_stable_shutdowns_converge_without_timeouts_or_kills() {
    installed().await;
    with_namespace("converge", |_client, ns| async move {
        const NAME: &str = "conv";
        const POLICY: &str = "deployment-conv";
        const ROLLOUTS: usize = 5;
        const RATE: u32 = 100;
        apply(&ns, &sdp_manifest(NAME, "Initial", 5))?;
        // A 2 s cleanup, and requests held ~1 s in flight: the HTTP server's graceful
        // shutdown has work to wait for. vegeta keeps its connections alive.
        let ip = Web {
            name: NAME,
            image: rust_web(),
            replicas: 3,
            inject: true,
            grace: 30,
            cleanup_millis: 2000,
        }
        .create_with_request_millis(&ns, 1000)
        .await?;
        let dir = repo_root().join(".state/e2e-load");
        std::fs::create_dir_all(&dir)?;
        let mut rows: Vec<RolloutRow> = Vec::new();
        let mut acknowledged = 0;
        for rollout in 1..=ROLLOUTS {
            let old = live_pods(&ns, NAME)?;
            let graces: Vec<u64> = old.iter().map(grace_of).collect();
            let all_recommended = old.iter().all(|p| {
                p["metadata"]["annotations"]["lameduck.dev/grace-period-source"] == "recommended"
            });
            let (timeouts_before, kills_before) = (timeouts(&ns, POLICY)?, killed(&ns, POLICY)?);
            let load = start_load(&ip, RATE, dir.join(format!("{ns}-{rollout}.bin")))?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            restart_and_settle(&ns, NAME, 3).await?;
            let p = wait_samples(&ns, POLICY, 3 * rollout as u64, Duration::from_secs(90)).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let report = load.stop()?;
            acknowledged += report.ok;
            let st = &p["status"];
            rows.push(RolloutRow {
                graces,
                all_recommended,
                recommended_after: st["recommendation"]["gracePeriodSeconds"].as_u64(),
                samples: st["samples"].as_u64().unwrap_or(0),
                p99: st["durations"]["p99"].as_f64().unwrap_or(0.0),
                sequence_p99: st["phases"]["sequence"]["p99"].as_f64().unwrap_or(0.0),
                timeouts: timeouts(&ns, POLICY)?.saturating_sub(timeouts_before),
                kills: killed(&ns, POLICY)?.saturating_sub(kills_before),
                requests: report.requests,
                failed: report.failed,
            });
            for e in report.errors.iter().take(5) {
                eprintln!("  rollout {rollout} error: {e}");
            }
        }
        // The last pods flush their records too.
        let final_graces: Vec<u64> = live_pods(&ns, NAME)?.iter().map(grace_of).collect();
        kubectl(&["scale", "-n", &ns, &format!("deployment/{NAME}"), "--replicas=0"])?;
        wait_pod_count(&ns, NAME, 0, Duration::from_secs(120)).await?;
        let flushed = records(&ns, NAME)?;
        let lost = acknowledged.saturating_sub(flushed);
        // The scale-down's shutdowns are recorded too: the totals cover every shutdown.
        let last = wait_samples(
            &ns,
            POLICY,
            3 * ROLLOUTS as u64 + 3,
            Duration::from_secs(90),
        )
        .await?;
        let (total_timeouts, total_kills) = (
            last["status"]["timeouts"].as_u64().unwrap_or(0),
            last["status"]["killed"].as_u64().unwrap_or(0),
        );

        let mut table = String::from(
            "| rollout | G of the pods shut down | recommended after | samples | p99 / sequence p99 | timeouts | kills | requests / failed |\n|---|---|---|---|---|---|---|---|\n",
        );
        for (i, row) in rows.iter().enumerate() {
            table.push_str(&format!(
                "| {} | {:?}{} | {} | {} | {:.1} s / {:.1} s | {} | {} | {} / {} |\n",
                i + 1,
                row.graces,
                if row.all_recommended { " (recommended)" } else { "" },
                row.recommended_after.map_or("none".into(), |g| format!("{g} s")),
                row.samples,
                row.p99,
                row.sequence_p99,
                row.timeouts,
                row.kills,
                row.requests,
                row.failed,
            ));
        }
        eprintln!(
            "\n{table}\nnew pods after the last rollout: G {final_graces:?}; records: {acknowledged} acknowledged, {flushed} flushed; policy totals with the scale-down: timeouts {total_timeouts}, kills {total_kills}"
        );
        let timeouts: u64 = rows.iter().map(|r| r.timeouts).sum();
        let kills: u64 = rows.iter().map(|r| r.kills).sum();
        let failed: u64 = rows.iter().map(|r| r.failed).sum();
        summary(
            "convergence",
            &format!(
                "{ROLLOUTS} rollouts at {RATE} req/s: G {:?} → recommended {:?}; timeouts {timeouts}, kills {kills}, failed {failed}, records lost {lost}",
                rows.iter().map(|r| r.graces.clone()).collect::<Vec<_>>(),
                rows.iter().map(|r| r.recommended_after).collect::<Vec<_>>()
            ),
        );
        ensure!(
            timeouts == 0 && total_timeouts == 0,
            "{total_timeouts} shutdowns timed out\n{table}"
        );
        ensure!(
            kills == 0 && total_kills == 0,
            "{total_kills} pods were SIGKILLed\n{table}"
        );
        ensure!(failed == 0, "{failed} requests failed\n{table}");
        ensure!(
            lost == 0,
            "{acknowledged} requests acknowledged but {flushed} records flushed"
        );
        // From the first rollout whose pods all carried a recommendation, the grace period
        // stays: the pods shut down, the recommendation after, and the last new pods.
        let first = rows
            .iter()
            .position(|r| r.all_recommended)
            .with_context(|| format!("no rollout shut down only pods with a recommendation\n{table}"))?;
        ensure!(
            first + 1 < ROLLOUTS,
            "only the last rollout shut down recommended pods: nothing to compare\n{table}"
        );
        let applied = rows[first].graces[0];
        for (i, row) in rows.iter().enumerate().skip(first) {
            ensure!(
                row.graces.iter().all(|g| *g == applied) && row.recommended_after == Some(applied),
                "rollout {}: G {:?}, recommended {:?}, want {applied} s from rollout {}\n{table}",
                i + 1,
                row.graces,
                row.recommended_after,
                first + 1
            );
        }
        ensure!(
            final_graces.iter().all(|g| *g == applied),
            "new pods after the last rollout have G {final_graces:?}, want {applied}"
        );
        Ok(())
    })
    .await;
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
                || Ok(operator_pod_items()?.is_empty().then_some(())),
            )
            .await?;
            let started = Instant::now();
            Web {
                name: "outage",
                image: rust_web(),
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
                    !has_sidecar(p),
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
            image: rust_web(),
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
        helm(&[
            "uninstall",
            RELEASE,
            "-n",
            SYSTEM_NS,
            "--wait",
            "--timeout",
            "120s",
        ])?;
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
        // The post-delete hook removed what the operator created at run time, and its own
        // Job, ServiceAccount and RBAC (hook-succeeded).
        let rest = kubectl(&[
            "get",
            "secrets,leases,jobs,serviceaccounts,roles",
            "-n",
            SYSTEM_NS,
            "-o",
            "name",
        ])?;
        let rest: Vec<&str> = rest
            .split_whitespace()
            .filter(|name| name.contains("lameduck"))
            .collect();
        ensure!(
            rest.is_empty(),
            "left in {SYSTEM_NS} after helm uninstall: {} (the cleanup hook deletes the Secret \
             lameduck-webhook-tls and the Lease lameduck-operator)",
            rest.join(" ")
        );
        summary(
            "7 helm uninstall",
            &format!(
                "release objects gone, CRD and policy kept, injected pod running; the cleanup hook \
                 deleted the Secret and the Lease, nothing named lameduck left in {SYSTEM_NS}"
            ),
        );
        let table = std::fs::read_to_string(repo_root().join(".state/e2e-summary.tsv"))?;
        eprintln!("\n==== e2e summary ====\n{table}");
        Ok(())
    })
    .await;
}

/// An unmodified third-party server (Caddy, built from its Go module, no SDK) with the
/// annotation only: the sidecar reads the pod's connections from the kernel, waits until
/// they stop arriving, and only then lets SIGTERM through; the load comes from pods, a new
/// connection per request. Next to it, the same server without lameduck; and, to show the
/// measurement can see harm, an SDK service with its deregister phase forced to 0 s: it
/// closes its listener at once while kube-proxy still sends it clients, and lameduck's own
/// count must show those refusals.
#[tokio::test]
async fn t14_unmodified_server_annotation_only() {
    installed().await;
    with_namespace("nosdk", |_client, ns| async move {
        const REPLICAS: usize = 2;
        // The forced-short phase: a fixed delay of 0 s.
        apply(
            &ns,
            &json!({"apiVersion": "lameduck.dev/v1alpha1", "kind": "ShutdownPolicy",
                    "metadata": {"name": "deployment-short"},
                    "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "short"},
                             "drain": {"mode": "Delay", "delaySeconds": 0}}}),
        )?;
        let caddy = |name: &str, inject: bool| {
            let annotations = if inject {
                json!({"lameduck.dev/inject": "true"})
            } else {
                json!({})
            };
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": name, "annotations": annotations},
                   "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": name}},
                            "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                            "template": {"metadata": {"labels": {"app": name}},
                                         "spec": {"terminationGracePeriodSeconds": 30,
                                                  "containers": [{"name": "caddy", "image": caddy_image(),
                                                                  "args": ["respond", "--listen", ":8080", "ok"],
                                                                  "env": [{"name": "HOME", "value": "/tmp"},
                                                                          {"name": "XDG_DATA_HOME", "value": "/tmp/data"},
                                                                          {"name": "XDG_CONFIG_HOME", "value": "/tmp/config"}],
                                                                  "ports": [{"containerPort": 8080}],
                                                                  "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                                                     "periodSeconds": 1}}]}}}})
        };
        let variants = [("plain", false), ("lameduck", true), ("short", true)];
        let mut ips = BTreeMap::new();
        // The forced-short variant must still be there when the refused clients come: the
        // sidecar counts until the pod's last app container exits, and Caddy exits at
        // once. The Rust example closes its listener at `drain` and cleans up for 3 s.
        let short = json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "short", "annotations": {"lameduck.dev/inject": "true"}},
               "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": "short"}},
                        "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                        "template": {"metadata": {"labels": {"app": "short"}},
                                     "spec": {"terminationGracePeriodSeconds": 30,
                                              "containers": [{"name": "web", "image": rust_web(),
                                                              "env": [{"name": "CLEANUP_MILLIS", "value": "3000"}],
                                                              "ports": [{"containerPort": 8080}],
                                                              "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                                                                 "periodSeconds": 1}}]}}}});
        for (name, inject) in variants {
            let manifest = if name == "short" { short.clone() } else { caddy(name, inject) };
            apply(&ns, &manifest)?;
            apply(
                &ns,
                &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}}),
            )?;
        }
        for (name, inject) in variants {
            rollout_status(&ns, name)?;
            let pods = live_pods(&ns, name)?;
            ensure!(
                pods.iter().all(|p| has_sidecar(p) == inject),
                "{name}: sidecar expected {inject}"
            );
            let ip = kubectl(&["get", "service", "-n", &ns, name, "-o", "jsonpath={.spec.clusterIP}"])?;
            ips.insert(name, ip.trim().to_owned());
        }
        let loads = variants
            .iter()
            .map(|(name, _)| PodLoad::start(&ns, &format!("load-{name}"), &format!("http://{}/", ips[name]), 40, false))
            .collect::<Result<Vec<_>>>()?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        for (name, _) in variants {
            kubectl(&["rollout", "restart", "-n", &ns, &format!("deployment/{name}")])?;
        }
        for (name, _) in variants {
            rollout_status(&ns, name)?;
            wait_pod_count(&ns, name, REPLICAS, Duration::from_secs(180)).await?;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut reports = BTreeMap::new();
        for ((name, _), load) in variants.iter().zip(loads) {
            reports.insert(*name, load.stop()?);
        }
        let lameduck = wait_samples(&ns, "deployment-lameduck", REPLICAS as u64, Duration::from_secs(90)).await?;
        let short = wait_samples(&ns, "deployment-short", REPLICAS as u64, Duration::from_secs(90)).await?;
        let g = |name: &str, key: &str| reports[name]["loadgen"][key].clone();
        let refused = |p: &serde_json::Value| p["status"]["refused"]["total"].as_u64();
        summary(
            "unmodified server",
            &format!(
                "Caddy, {REPLICAS} replicas each, 40 req/s from pods, a connection per request; plain: {} of {} failed {}; lameduck (annotation only): {} of {} failed {}, lameduck's refused count {:?}, deregister p50 {:?}; the Rust example with a forced 0 s phase and a 3 s cleanup: {} of {} failed {}, lameduck's refused count {:?}",
                g("plain", "failed"), g("plain", "requests"), g("plain", "failures_by_kind"),
                g("lameduck", "failed"), g("lameduck", "requests"), g("lameduck", "failures_by_kind"),
                refused(&lameduck), lameduck["status"]["phases"]["deregister"]["p50"],
                g("short", "failed"), g("short", "requests"), g("short", "failures_by_kind"),
                refused(&short),
            ),
        );
        ensure!(g("lameduck", "failed") == 0, "requests failed with lameduck: {}", g("lameduck", "failures_by_kind"));
        // No client failed, so nothing was refused: the readiness probes that meet the
        // closed listener (one a second) are never counted (docs/protocol.md §7).
        ensure!(
            refused(&lameduck) == Some(0),
            "lameduck's refused count with the real phase, no client refused: {}",
            lameduck["status"]["refused"]
        );
        ensure!(
            refused(&short).is_some_and(|n| n > 0),
            "a 0 s deregister phase refused nothing by lameduck's count: {} (load generator: {})",
            short["status"]["refused"],
            g("short", "failures_by_kind")
        );
        Ok(())
    })
    .await;
}
