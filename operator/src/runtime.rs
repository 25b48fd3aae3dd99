//! `run`: wires the operator together — certificates, metadata caches, the webhook and
//! admin servers, Events, the policy index and the leader-only controller —
//! and shuts it down gracefully on SIGTERM (a second signal exits at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::certs::{CertFiles, CertManager, CertPolicy, CertResolver};
use crate::cli::RunArgs;
use crate::controller::{self, ControllerConfig, ControllerMetrics, PolicyIndex};
use crate::metrics::Metrics;
use crate::webhook::admission::Admitter;
use crate::webhook::policy::PolicyLookup;
use crate::webhook::{cache, server};

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        webhook_addr,
        admin_addr,
        shutdown_drain,
        namespace,
        pod_name,
        certs,
        injection,
    } = args;
    let config = Arc::new(injection.config()?);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let token = CancellationToken::new();
    let metrics = Arc::new(Metrics::default());
    let resolver = Arc::new(CertResolver::default());
    let ready = Arc::new(AtomicBool::new(false));

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
            tokio::spawn(files.watch(resolver.clone(), certs.cert_check_interval, token.clone()));
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
            let interval = certs.cert_check_interval;
            let token = token.clone();
            tokio::spawn(async move {
                loop {
                    match manager.reconcile().await {
                        Ok(stored) => {
                            expiry.set(stored.serving_not_after);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "webhook certificate reconcile failed; retrying")
                        }
                    }
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(interval) => {}
                    }
                }
            });
        }
    }

    // Metadata caches for the opt-in decision.
    let (caches, caches_run) = cache::start(&client);
    let caches_task = tokio::spawn(caches_run);
    {
        let caches = caches.clone();
        let resolver = resolver.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            if caches.wait_until_ready().await.is_ok() {
                tracing::info!("metadata caches synced");
            }
            while !resolver.is_loaded() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            ready.store(true, Ordering::Relaxed);
            tracing::info!("webhook ready");
        });
    }

    // The grace-period seam: every replica keeps a ShutdownPolicy index for the webhook;
    // the controller (adoption, observations, status) runs on the Lease holder only.
    let controller_metrics = metrics
        .with_registry(ControllerMetrics::register)
        .unwrap_or_default();
    let (policy_index, policy_reflector) = {
        let metrics = controller_metrics.clone();
        PolicyIndex::with_deletions(client.clone(), move |policy| {
            metrics.forget_policy(
                policy.metadata.namespace.as_deref().unwrap_or_default(),
                policy.metadata.name.as_deref().unwrap_or_default(),
            );
        })
    };
    tokio::spawn(policy_reflector);
    let policies: Arc<dyn PolicyLookup> = Arc::new(policy_index.clone());
    let identity = pod_name
        .clone()
        .unwrap_or_else(|| format!("lameduck-operator-{}", std::process::id()));
    let mut controller = tokio::spawn(controller::run(
        client.clone(),
        ControllerConfig::new(policy_index, identity, namespace.clone())
            .with_metrics(controller_metrics)
            .with_namespaces(caches.namespaces()),
    ));

    let (events_tx, events_rx) = mpsc::channel(256);
    tokio::spawn(server::publish_events(client.clone(), pod_name, events_rx));

    let state = server::WebhookState {
        admitter: Admitter {
            config,
            policies,
            index: Arc::new(caches),
        },
        metrics,
        events: Some(events_tx),
        ready,
    };
    let acceptor = TlsAcceptor::from(Arc::new(resolver.server_config()));
    let webhook_listener = server::bind(webhook_addr).await?;
    let admin_listener = server::bind(admin_addr).await?;
    tracing::info!(%webhook_addr, %admin_addr, "serving");
    let webhook = tokio::spawn(server::serve_tls(
        webhook_listener,
        acceptor,
        server::webhook_router(state.clone()),
        token.clone(),
        shutdown_drain,
    ));
    let admin = tokio::spawn(server::serve_plain(
        admin_listener,
        server::admin_router(state),
        token.clone(),
    ));

    // Losing the lease ends the process: it restarts as a follower (the webhook keeps
    // serving on the other replica meanwhile).
    let controller_failure = tokio::select! {
        () = shutdown_signal() => None,
        result = &mut controller => Some(match result {
            Ok(Ok(())) => anyhow::anyhow!("the controller stopped"),
            Ok(Err(error)) => anyhow::Error::new(error).context("the ShutdownPolicy controller stopped"),
            Err(error) => anyhow::anyhow!("the controller task failed: {error}"),
        }),
    };
    controller.abort();
    tracing::info!("shutting down: draining the webhook server");
    token.cancel();
    tokio::select! {
        _ = async { let _ = tokio::join!(webhook, admin); } => {}
        () = shutdown_signal() => tracing::warn!("second signal: exiting now"),
    }
    caches_task.abort();
    match controller_failure {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

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
