//! The webhook's TLS server without a cluster, for load tests (`bench/webhook.sh`):
//! a single-threaded runtime (one core), a fresh rcgen certificate, caches that say the
//! Deployment `web` is annotated. Prints the CA to `$1` and the port on stdout.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use lameduck_operator::certs::{CertResolver, generate_ca, issue_serving, unix_now};
use lameduck_operator::metrics::Metrics;
use lameduck_operator::webhook::admission::Admitter;
use lameduck_operator::webhook::decide::{MetaSummary, MetadataIndex};
use lameduck_operator::webhook::patch::InjectionConfig;
use lameduck_operator::webhook::policy::NoPolicies;
use lameduck_operator::webhook::server::{self, WebhookState};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

struct Caches;

impl MetadataIndex for Caches {
    fn workload(&self, kind: &str, _: &str, name: &str) -> Option<MetaSummary> {
        match (kind, name) {
            ("ReplicaSet", "web-7d4b9c6f5") => Some(MetaSummary {
                controller: Some(("Deployment".into(), "web".into())),
                ..MetaSummary::default()
            }),
            ("Deployment", "web") => Some(MetaSummary {
                inject: Some("true".into()),
                ..MetaSummary::default()
            }),
            _ => None,
        }
    }
    fn namespace_label(&self, _: &str) -> Option<String> {
        None
    }
}

fn main() -> anyhow::Result<()> {
    let ca_path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/lameduck-bench-ca.pem".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let now = unix_now();
        let ca = generate_ca(Duration::from_secs(86_400), now)?;
        let serving = issue_serving(&ca.1, &["127.0.0.1".into()], Duration::from_secs(3600), now)?;
        std::fs::write(&ca_path, &ca.0)?;
        let resolver = Arc::new(CertResolver::default());
        resolver.set_pem(serving.0.as_bytes(), serving.1.as_bytes())?;
        let state = WebhookState {
            admitter: Admitter {
                config: Arc::new(InjectionConfig::default()),
                policies: Arc::new(NoPolicies),
                index: Arc::new(Caches),
            },
            metrics: Arc::new(Metrics::default()),
            events: None,
            ready: Arc::new(AtomicBool::new(true)),
        };
        let listener = server::bind("127.0.0.1:0".parse()?).await?;
        println!("{}", listener.local_addr()?.port());
        let token = CancellationToken::new();
        let acceptor = TlsAcceptor::from(Arc::new(resolver.server_config()));
        let serve = server::serve_tls(
            listener,
            acceptor,
            server::webhook_router(state),
            token.clone(),
            Duration::from_secs(5),
        );
        tokio::select! {
            () = serve => {}
            () = lameduck_operator::runtime::shutdown_signal() => token.cancel(),
        }
        Ok(())
    })
}
