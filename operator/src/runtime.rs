//! `run`: wires the operator together — certificates, the replica's watches, the webhook
//! and admin servers, Events and the leader-only controller — supervises every task, and
//! shuts down the way lameduck shuts down everyone else's pods.
//!
//! Supervision: every long-running task is owned by a [`Supervisor`]. A task that ends
//! before shutdown (a watch stream, the certificate loop, the controller losing its lease)
//! ends the process with a log line naming it, after the same graceful shutdown a SIGTERM
//! gets; the kubelet restarts the container.
//!
//! Shutdown (SIGTERM): `/readyz` fails at once and the controller hands over its lease
//! (writing what it observed first), but the webhook keeps admitting for
//! `--shutdown-delay`: until the API server's endpoints and the node's service rules stop
//! sending admissions here, a closed listener would make the API server skip the webhook
//! (`failurePolicy: Ignore`) and admit pods without the sidecar. Then the listener closes
//! and open connections finish for up to `--shutdown-drain` (HTTP/2 ones are told to go
//! away, so the API server reconnects to another replica). A second signal exits at once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, anyhow};
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::certs::{CertFiles, CertManager, CertPolicy, CertResolver};
use crate::cli::RunArgs;
use crate::client_metrics::ClientMetrics;
use crate::controller::{self, ControllerConfig, ControllerMetrics};
use crate::metrics::Metrics;
use crate::watches::{Change, Watches};
use crate::webhook::admission::Admitter;
use crate::webhook::policy::PolicyLookup;
use crate::webhook::server::{self, Readiness};

/// The process's long-running tasks, by name. Each is expected to run until shutdown.
#[derive(Default)]
pub struct Supervisor {
    tasks: JoinSet<anyhow::Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// Spawns `task` under `name`.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits for the next task to end: its name and why (`Ok` if it returned `Ok`).
    /// Pending forever when no task is left.
    pub async fn next_exit(&mut self) -> (&'static str, anyhow::Result<()>) {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(error) => (
                error.id(),
                Err(if error.is_panic() {
                    anyhow!("panicked")
                } else {
                    anyhow!("cancelled")
                }),
            ),
        };
        (self.names.remove(&id).unwrap_or("unnamed task"), result)
    }

    /// Stops every task still running.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }
}

/// Ready when every watch has its initial list (the ShutdownPolicy index included: a pod
/// admitted before it would miss its recommended grace period), a serving certificate is
/// loaded, and the process is not shutting down.
struct OperatorReadiness {
    watches: Watches,
    resolver: Arc<CertResolver>,
    shutting_down: AtomicBool,
}

impl Readiness for OperatorReadiness {
    fn check(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Err("shutting down")
        } else if !self.resolver.is_loaded() {
            Err("no serving certificate yet")
        } else if !self.watches.is_ready() {
            Err("watches not synced yet")
        } else {
            Ok(())
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT, or until one of its tasks ends (an error then).
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        webhook_addr,
        admin_addr,
        shutdown_delay,
        shutdown_drain,
        namespace,
        pod_name,
        certs,
        injection,
    } = args;
    let config = Arc::new(injection.config()?);
    let metrics = Arc::new(Metrics::default());
    let client_metrics = metrics
        .with_registry(ClientMetrics::register)
        .unwrap_or_default();
    let kube_config = kube::Config::infer()
        .await
        .context("reading the API server's configuration")?;
    let client = kube::client::ClientBuilder::try_from(kube_config)
        .context("connecting to the API server")?
        .with_layer(&client_metrics)
        .build();
    let mut tasks = Supervisor::default();
    // Cancelled after the shutdown delay: the servers stop accepting, the loops stop.
    let stop = CancellationToken::new();
    // Cancelled at the first signal: the controller hands over its lease.
    let hand_over = CancellationToken::new();
    let resolver = Arc::new(CertResolver::default());

    // Certificates: external files, or self-managed in a Secret.
    match (&certs.tls_cert_file, &certs.tls_key_file) {
        (Some(cert), Some(key)) => {
            let files = CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            };
            files
                .load(&resolver)
                .context("loading the webhook certificate files")?;
            let watch = files.watch(resolver.clone(), certs.cert_check_interval, stop.clone());
            tasks.spawn("certificate files", async move {
                watch.await;
                Ok(())
            });
        }
        _ => {
            let mut names = vec![
                format!("{}.{}.svc", certs.service_name, namespace),
                format!("{}.{}.svc.cluster.local", certs.service_name, namespace),
            ];
            names.extend(certs.cert_names.iter().cloned());
            let manager = CertManager {
                client: client.clone(),
                namespace: namespace.clone(),
                secret_name: certs.cert_secret.clone(),
                webhook_config: Some(certs.webhook_configuration.clone()).filter(|n| !n.is_empty()),
                policy: CertPolicy {
                    names,
                    ca_validity: certs.ca_validity,
                    serving_validity: certs.cert_validity,
                    renew_fraction: 1.0 / 3.0,
                },
                resolver: resolver.clone(),
            };
            let expiry = metrics.serving_cert_expiry.clone();
            let run = manager.run(
                certs.cert_check_interval,
                move |stored| {
                    expiry.set(stored.serving_not_after);
                },
                stop.clone(),
            );
            tasks.spawn("certificates", async move {
                run.await;
                Ok(())
            });
        }
    }

    // One watch per kind: the webhook reads the stores, the leader's controllers subscribe.
    let (watches, watches_run) = Watches::start(&client);
    tasks.spawn("watches", async move {
        watches_run.await;
        Err(anyhow!("the watch streams ended"))
    });
    let controller_metrics = metrics
        .with_registry(ControllerMetrics::register)
        .unwrap_or_default();
    {
        // A deleted policy's metric series go with it.
        let deletions = watches.policies.reflected().subscribe();
        let metrics = controller_metrics.clone();
        tasks.spawn("policy metrics", async move {
            deletions
                .for_each(|change| {
                    if let Change::Deleted(policy) = change {
                        metrics.forget_policy(
                            policy.namespace.as_deref().unwrap_or_default(),
                            &policy.name,
                        );
                    }
                    std::future::ready(())
                })
                .await;
            Err(anyhow!("the ShutdownPolicy watch ended"))
        });
    }
    let readiness = Arc::new(OperatorReadiness {
        watches: watches.clone(),
        resolver: resolver.clone(),
        shutting_down: AtomicBool::new(false),
    });

    // The controller (adoption, observations, status) runs on the Lease holder only.
    let policies: Arc<dyn PolicyLookup> = Arc::new(watches.policies.clone());
    let identity = pod_name
        .clone()
        .unwrap_or_else(|| format!("lameduck-operator-{}", std::process::id()));
    {
        let controller = controller::run(
            client.clone(),
            ControllerConfig::new(watches.clone(), identity, namespace.clone())
                .with_metrics(controller_metrics),
            hand_over.clone(),
        );
        let hand_over = hand_over.clone();
        tasks.spawn("controller", async move {
            controller.await.context("the ShutdownPolicy controller")?;
            // Only the hand-over at shutdown ends it without an error; keep it "running"
            // until the supervisor stops everything.
            if hand_over.is_cancelled() {
                std::future::pending::<()>().await;
            }
            Err(anyhow!("the ShutdownPolicy controller stopped"))
        });
    }

    let (events_tx, events_rx) = mpsc::channel(256);
    tasks.spawn("events", async move {
        server::publish_events(client.clone(), pod_name, events_rx).await;
        std::future::pending::<()>().await;
        Ok(())
    });

    let state = server::WebhookState {
        admitter: Admitter {
            config,
            policies,
            index: Arc::new(watches.clone()),
        },
        metrics,
        events: Some(events_tx),
        ready: readiness.clone(),
    };
    let acceptor = TlsAcceptor::from(Arc::new(resolver.server_config()));
    let webhook_listener = server::bind(webhook_addr).await?;
    let admin_listener = server::bind(admin_addr).await?;
    tracing::info!(%webhook_addr, %admin_addr, "serving");
    tasks.spawn(
        WEBHOOK_SERVER,
        server::serve_tls(
            webhook_listener,
            acceptor,
            server::webhook_router(state.clone()),
            stop.clone(),
            shutdown_drain,
        )
        .map(Ok),
    );
    tasks.spawn(
        ADMIN_SERVER,
        server::serve_plain(admin_listener, server::admin_router(state), stop.clone()).map(Ok),
    );

    let failure = tokio::select! {
        () = shutdown_signal() => None,
        (name, result) = tasks.next_exit() => {
            let error = match result {
                Ok(()) => anyhow!("task `{name}` ended"),
                Err(error) => error.context(format!("task `{name}` failed")),
            };
            tracing::error!("{error:#}; shutting down so that the kubelet restarts the operator");
            Some(error)
        }
    };
    readiness.shutting_down.store(true, Ordering::Relaxed);
    hand_over.cancel();
    tracing::info!(
        delay = ?shutdown_delay,
        "shutting down: /readyz fails; the webhook keeps admitting until the API server stops sending here"
    );
    let interrupted = tokio::select! {
        () = tokio::time::sleep(shutdown_delay) => false,
        () = shutdown_signal() => true,
    };
    stop.cancel();
    if interrupted {
        tracing::warn!("second signal: exiting now");
    } else {
        tracing::info!("closing the webhook listener; draining open connections");
        let servers = async {
            let mut running = [WEBHOOK_SERVER, ADMIN_SERVER].len();
            while running > 0 {
                let (name, _) = tasks.next_exit().await;
                if name == WEBHOOK_SERVER || name == ADMIN_SERVER {
                    running -= 1;
                }
            }
        };
        tokio::select! {
            () = servers => {}
            () = shutdown_signal() => tracing::warn!("second signal: exiting now"),
        }
    }
    tasks.shutdown().await;
    match failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Task names the shutdown waits for.
const WEBHOOK_SERVER: &str = "webhook server";
const ADMIN_SERVER: &str = "admin server";

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_supervisor_names_the_task_that_ended_and_why() {
        let mut tasks = Supervisor::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("watch", async { Err(anyhow!("stream ended")) });
        let (name, result) = tasks.next_exit().await;
        assert_eq!(name, "watch");
        assert_eq!(result.unwrap_err().to_string(), "stream ended");
        tasks.spawn("panics", async {
            panic!("boom");
        });
        let (name, result) = tasks.next_exit().await;
        assert_eq!(name, "panics");
        assert_eq!(result.unwrap_err().to_string(), "panicked");
        tasks.spawn("returns", async { Ok(()) });
        let (name, result) = tasks.next_exit().await;
        assert_eq!(name, "returns");
        assert!(result.is_ok());
        // The one left runs until the supervisor stops it.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), tasks.next_exit())
                .await
                .is_err()
        );
        tasks.shutdown().await;
    }

    fn listed<K>(listed: bool) -> crate::watches::Reflected<K>
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    {
        let mut writer = kube::runtime::reflector::store::Writer::default();
        if listed {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        }
        crate::watches::Reflected::from_store(writer.as_reader())
    }

    fn watches(policies_listed: bool) -> Watches {
        Watches {
            replica_sets: listed(true),
            deployments: listed(true),
            stateful_sets: listed(true),
            daemon_sets: listed(true),
            jobs: listed(true),
            cron_jobs: listed(true),
            namespaces: listed(true),
            policies: crate::controller::PolicyIndex::from_store(listed(policies_listed).store()),
        }
    }

    #[test]
    fn ready_only_with_every_store_listed_a_certificate_and_no_shutdown() {
        let resolver = Arc::new(CertResolver::default());
        let readiness = OperatorReadiness {
            watches: watches(false),
            resolver: resolver.clone(),
            shutting_down: AtomicBool::new(false),
        };
        assert_eq!(readiness.check(), Err("no serving certificate yet"));
        let cert = rcgen::generate_simple_self_signed(vec!["lameduck".into()]).unwrap();
        resolver
            .set_pem(
                cert.cert.pem().as_bytes(),
                cert.signing_key.serialize_pem().as_bytes(),
            )
            .unwrap();
        // The ShutdownPolicy index is not listed yet: admitted pods would miss their
        // recommended grace period.
        assert_eq!(readiness.check(), Err("watches not synced yet"));
        let readiness = OperatorReadiness {
            watches: watches(true),
            ..readiness
        };
        assert_eq!(readiness.check(), Ok(()));
        readiness.shutting_down.store(true, Ordering::Relaxed);
        assert_eq!(readiness.check(), Err("shutting down"));
    }
}
