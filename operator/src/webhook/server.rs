//! The webhook's I/O shell: `/mutate` over rustls (axum on hyper, HTTP/1.1 and HTTP/2),
//! the plain-HTTP admin endpoints (`/metrics`, `/healthz`, `/readyz`), and the Events
//! about skipped containers, sent off the admission path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::admission::{Admitter, Problem, WorkloadNotice};
use crate::metrics::Metrics;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the handlers.
#[derive(Clone)]
pub struct WebhookState {
    /// The admission logic.
    pub admitter: Admitter,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Queue of Events to send; full → dropped and counted.
    pub events: Option<mpsc::Sender<WorkloadNotice>>,
    /// Whether the replica should be sent admissions (`/readyz`).
    pub ready: Arc<dyn Readiness>,
}

/// What `/readyz` reports: `Ok` when admissions may be sent here, else why not.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok(())`, or the reason the replica is not ready.
    fn check(&self) -> Result<(), &'static str>;
}

/// Always ready (tests, benchmarks).
#[derive(Clone, Copy, Debug, Default)]
pub struct AlwaysReady;

impl Readiness for AlwaysReady {
    fn check(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// A readiness flag set by hand.
impl Readiness for AtomicBool {
    fn check(&self) -> Result<(), &'static str> {
        if self.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not ready")
        }
    }
}

/// The TLS router: `POST /mutate`, `GET /healthz`.
pub fn webhook_router(state: WebhookState) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// The plain-HTTP admin router: `/metrics`, `/healthz`, `/readyz`.
pub fn admin_router(state: WebhookState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn mutate(State(state): State<WebhookState>, body: Bytes) -> Response {
    let start = Instant::now();
    match state.admitter.review(&body) {
        Ok(reviewed) => {
            let response = match serde_json::to_vec(&reviewed.review) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(error) => {
                    // Unreachable in practice; the API server applies failurePolicy Ignore.
                    tracing::error!(%error, "AdmissionReview does not serialize");
                    StatusCode::INTERNAL_SERVER_ERROR.into_response()
                }
            };
            state
                .metrics
                .observe_admission(reviewed.outcome.as_str(), start.elapsed());
            if let Some(events) = state.events.as_ref() {
                for notice in reviewed.notices {
                    if events.try_send(notice).is_err() {
                        state.metrics.events_dropped.inc();
                    }
                }
            }
            response
        }
        Err(error) => {
            state.metrics.observe_admission("invalid", start.elapsed());
            tracing::warn!(%error, "rejected a malformed AdmissionReview");
            (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response()
        }
    }
}

async fn metrics(State(state): State<WebhookState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(state): State<WebhookState>) -> Response {
    match state.ready.check() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// Serves `router` over TLS on `listener` until `token` is cancelled, then lets open
/// connections finish their requests for up to `drain`.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    token: CancellationToken,
    drain: Duration,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            () = token.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = TowerToHyperService::new(router);
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("webhook connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("webhook drain timed out"),
    }
}

/// Serves the admin router over plain HTTP until `token` is cancelled.
pub async fn serve_plain(listener: TcpListener, router: Router, token: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(token.cancelled_owned())
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "admin server failed");
    }
}

/// The Event's reason and note for a notice, and what tells it apart from another notice
/// of the same workload (for the rate limit).
fn event_text(notice: &WorkloadNotice) -> (&'static str, String, String) {
    match &notice.problem {
        Problem::PreStopHookExists { containers } => {
            let containers = containers.join(",");
            (
                "PreStopHookExists",
                format!(
                    "pod {}: containers {containers} already have a preStop hook; lameduck left them \
                     alone, so their shutdown is not coordinated (remove the hook or narrow \
                     lameduck.dev/containers)",
                    notice.pod
                ),
                format!("prestop:{containers}"),
            )
        }
        Problem::DrainAnnotation { warnings } => {
            let warnings = warnings.join("; ");
            (
                "DrainAnnotationInvalid",
                format!("pod {}: {warnings}", notice.pod),
                format!("drain:{warnings}"),
            )
        }
    }
}

/// Binds a TCP listener (a clear error naming the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
}

/// Sends Warning Events about admitted pods to their workloads, best effort: at most one
/// per workload and problem every ten minutes (a ReplicaSet creates many identical pods).
pub async fn publish_events(
    client: kube::Client,
    instance: Option<String>,
    mut notices: mpsc::Receiver<WorkloadNotice>,
) {
    let reporter = Reporter {
        controller: "lameduck-webhook".into(),
        instance,
    };
    let recorder = Recorder::new(client, reporter);
    let mut recent: HashMap<(String, String, String), Instant> = HashMap::new();
    while let Some(notice) = notices.recv().await {
        let (reason, note, what) = event_text(&notice);
        let key = (notice.namespace.clone(), notice.workload.to_string(), what);
        recent.retain(|_, at| at.elapsed() < Duration::from_secs(600));
        if recent.contains_key(&key) {
            continue;
        }
        recent.insert(key, Instant::now());
        let api_version = match notice.workload.kind.as_str() {
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => "apps/v1",
            "Job" | "CronJob" => "batch/v1",
            _ => "v1",
        };
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(notice.workload.kind.clone()),
            name: Some(notice.workload.name.clone()),
            namespace: Some(notice.namespace.clone()),
            uid: notice.workload_uid.clone(),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Inject".into(),
            secondary: None,
        };
        if let Err(error) = recorder.publish(&event, &reference).await {
            tracing::debug!(%error, workload = %notice.workload, "could not publish Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::policy::WorkloadRef;

    fn notice(problem: Problem) -> WorkloadNotice {
        WorkloadNotice {
            namespace: "shop".into(),
            pod: "web-7d4b9c6f5-".into(),
            workload: WorkloadRef {
                kind: "Deployment".into(),
                name: "web".into(),
            },
            workload_uid: None,
            problem,
        }
    }

    /// Each problem has its own reason and rate-limit key, so a hook left alone does not
    /// silence an unreadable drain annotation of the same workload.
    #[test]
    fn each_problem_is_its_own_event() {
        let hook = event_text(&notice(Problem::PreStopHookExists {
            containers: vec!["envoy".into()],
        }));
        let drain = event_text(&notice(Problem::DrainAnnotation {
            warnings: vec![
                "lameduck.dev/drain ignored, no container gets a drain action: …".into(),
            ],
        }));
        assert_eq!(hook.0, "PreStopHookExists");
        assert!(
            hook.1
                .contains("containers envoy already have a preStop hook")
        );
        assert_eq!(drain.0, "DrainAnnotationInvalid");
        assert_eq!(
            drain.1,
            "pod web-7d4b9c6f5-: lameduck.dev/drain ignored, no container gets a drain action: …"
        );
        assert_ne!(hook.2, drain.2);
    }
}
