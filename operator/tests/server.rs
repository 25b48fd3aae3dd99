//! The webhook over real TLS in process: admission over HTTPS, HTTP 400 for malformed
//! reviews, metrics, and a rotated certificate served without a restart.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use lameduck_operator::certs::{CertResolver, generate_ca, issue_serving, unix_now};
use lameduck_operator::metrics::Metrics;
use lameduck_operator::webhook::admission::Admitter;
use lameduck_operator::webhook::decide::EmptyIndex;
use lameduck_operator::webhook::patch::InjectionConfig;
use lameduck_operator::webhook::policy::NoPolicies;
use lameduck_operator::webhook::server::{self, WebhookState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

const DAY: Duration = Duration::from_secs(86_400);

struct Running {
    addr: std::net::SocketAddr,
    resolver: Arc<CertResolver>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(cert: &(String, String, i64)) -> Running {
    let resolver = Arc::new(CertResolver::default());
    resolver
        .set_pem(cert.0.as_bytes(), cert.1.as_bytes())
        .expect("cert");
    let state = WebhookState {
        admitter: Admitter {
            config: Arc::new(InjectionConfig::default()),
            policies: Arc::new(NoPolicies),
            index: Arc::new(EmptyIndex),
        },
        metrics: Arc::new(Metrics::default()),
        events: None,
        ready: Arc::new(AtomicBool::new(true)),
    };
    let listener = server::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let token = CancellationToken::new();
    let acceptor = TlsAcceptor::from(Arc::new(resolver.server_config()));
    let task = tokio::spawn(server::serve_tls(
        listener,
        acceptor,
        server::webhook_router(state),
        token.clone(),
        Duration::from_secs(5),
    ));
    Running {
        addr,
        resolver,
        token,
        task,
    }
}

/// One HTTP/1.1 request over a fresh TLS connection trusting `ca_pem`; returns the status,
/// the body and the DER of the certificate the server presented.
async fn post(addr: std::net::SocketAddr, ca_pem: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("ca")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let presented = tls.get_ref().1.peer_certificates().expect("peer cert")[0].to_vec();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: webhook\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.expect("write");
    tls.write_all(body).await.expect("write");
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body, presented)
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/admission")
            .join(name),
    )
    .expect("fixture")
}

#[tokio::test]
async fn admission_over_tls_and_rotation_without_restart() {
    let now = unix_now();
    let names = vec![
        "127.0.0.1".to_owned(),
        "lameduck-webhook.lameduck.svc".to_owned(),
    ];
    let ca = generate_ca(365 * DAY, now).expect("ca");
    let first = issue_serving(&ca.1, &names, 30 * DAY, now).expect("serving");
    let running = start(&first).await;

    let (status, body, presented) =
        post(running.addr, &ca.0, &fixture("single_container.json")).await;
    assert_eq!(status, 200, "{body}");
    let review: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(review["response"]["allowed"], true);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    let first_der = presented;

    let (status, body, _) = post(running.addr, &ca.0, &fixture("malformed_not_json.json")).await;
    assert_eq!(status, 400);
    assert!(body.starts_with("malformed AdmissionReview"), "{body}");

    // Rotation: a new serving certificate (and a new CA, trusted through the bundle).
    let ca2 = generate_ca(365 * DAY, now).expect("ca");
    let second = issue_serving(&ca2.1, &names, 30 * DAY, now).expect("serving");
    running
        .resolver
        .set_pem(second.0.as_bytes(), second.1.as_bytes())
        .expect("set");
    let bundle = format!("{}{}", ca2.0, ca.0);
    let (status, _, presented) =
        post(running.addr, &bundle, &fixture("single_container.json")).await;
    assert_eq!(status, 200);
    assert_ne!(
        presented, first_der,
        "the rotated certificate is served without a restart"
    );

    running.token.cancel();
    tokio::time::timeout(Duration::from_secs(5), running.task)
        .await
        .expect("graceful shutdown finishes")
        .expect("server task");
}
