//! Metrics of the operator's own requests to the API server: a tower layer in the kube
//! client's stack counts every request by verb and answer, times the ones that are not
//! watches, and keeps a gauge of the watches open per resource (a watch is open from its
//! answer until its body is dropped).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `get` (and list), `watch`, `create`, `patch`, `update`, `delete`, `other`.
    pub verb: &'static str,
    /// The HTTP status code of the answer, or `error` when none came.
    pub code: String,
}

/// Labels of the duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// As in [`RequestLabels`] (watches are not timed: they stay open).
    pub verb: &'static str,
}

/// Labels of the open-watch gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The watched resource (`pods`, `deployments`, …).
    pub resource: String,
}

/// The kube client's request metrics; also the tower layer that records them.
#[derive(Clone, Debug)]
pub struct ClientMetrics {
    /// Requests sent, by verb and answer.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to the answer's headers, by verb (watches excluded).
    pub duration: Family<VerbLabels, Histogram>,
    /// Watches open now, by resource.
    pub open_watches: Family<ResourceLabels, Gauge>,
}

impl Default for ClientMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            // 1 ms … ~16 s.
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
            open_watches: Family::default(),
        }
    }
}

impl ClientMetrics {
    /// Creates the metrics and registers them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "kube_requests",
            "Requests of the operator to the API server, by verb and answer",
            metrics.requests.clone(),
        );
        registry.register(
            "kube_request_duration_seconds",
            "Time to the API server's answer, by verb (watches excluded)",
            metrics.duration.clone(),
        );
        registry.register(
            "kube_open_watches",
            "Watches the operator has open on the API server, by resource",
            metrics.open_watches.clone(),
        );
        metrics
    }
}

/// What a request is, from its method and URI: the verb, and for a watch its resource.
pub fn classify(method: &Method, uri: &http::Uri) -> (&'static str, Option<String>) {
    let watch = uri.query().is_some_and(|q| {
        q.split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET => "get",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    };
    // A collection's path ends with its resource: /apis/apps/v1/deployments,
    // /api/v1/namespaces/shop/pods.
    let resource = watch.then(|| {
        uri.path()
            .rsplit('/')
            .find(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_owned()
    });
    (verb, resource)
}

impl<S> Layer<S> for ClientMetrics {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Measured {
            inner,
            metrics: self.clone(),
        }
    }
}

/// The kube client's service, measured.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: ClientMetrics,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Measured<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = Response<WatchBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let (verb, resource) = classify(request.method(), request.uri());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            let code = match &result {
                Ok(response) => response.status().as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            metrics
                .requests
                .get_or_create(&RequestLabels { verb, code })
                .inc();
            if resource.is_none() {
                metrics
                    .duration
                    .get_or_create(&VerbLabels { verb })
                    .observe(started.elapsed().as_secs_f64());
            }
            result.map(|response| {
                let open = resource
                    .filter(|_| response.status().is_success())
                    .map(|resource| {
                        let gauge = metrics
                            .open_watches
                            .get_or_create(&ResourceLabels { resource })
                            .clone();
                        gauge.inc();
                        OpenWatch(gauge)
                    });
                response.map(|body| WatchBody { inner: body, open })
            })
        })
    }
}

/// Decrements its gauge when dropped: the watch's body is gone.
#[derive(Debug)]
struct OpenWatch(Gauge);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pin_project_lite::pin_project! {
    /// An answer's body; for a watch, it holds the open-watch count up while it lives.
    pub struct WatchBody<B> {
        #[pin]
        inner: B,
        open: Option<OpenWatch>,
    }
}

impl<B: Body> Body for WatchBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_method_and_watch_parameter() {
        let uri = |s: &str| s.parse::<http::Uri>().unwrap();
        assert_eq!(
            classify(
                &Method::GET,
                &uri("/apis/apps/v1/deployments?&watch=true&timeoutSeconds=290")
            ),
            ("watch", Some("deployments".to_owned()))
        );
        assert_eq!(
            classify(
                &Method::GET,
                &uri("/api/v1/namespaces/shop/pods?labelSelector=a%3Db&watch=true")
            ),
            ("watch", Some("pods".to_owned()))
        );
        assert_eq!(
            classify(&Method::GET, &uri("/api/v1/namespaces?limit=100")),
            ("get", None)
        );
        assert_eq!(
            classify(
                &Method::PATCH,
                &uri("/apis/lameduck.dev/v1alpha1/namespaces/shop/shutdownpolicies/a/status")
            ),
            ("patch", None)
        );
        assert_eq!(classify(&Method::POST, &uri("/api/v1/x")).0, "create");
    }

    #[tokio::test]
    async fn a_watch_counts_as_open_until_its_body_is_dropped() {
        let metrics = ClientMetrics::default();
        let mut service = metrics.layer(tower::service_fn(|_req: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(
                http_body_util::Empty::<bytes::Bytes>::new(),
            ))
        }));
        let watch = Request::get("/apis/apps/v1/deployments?watch=true")
            .body(())
            .unwrap();
        let response = service.call(watch).await.unwrap();
        let open = |m: &ClientMetrics| {
            m.open_watches
                .get_or_create(&ResourceLabels {
                    resource: "deployments".into(),
                })
                .get()
        };
        assert_eq!(open(&metrics), 1);
        let list = Request::get("/apis/apps/v1/deployments").body(()).unwrap();
        drop(service.call(list).await.unwrap());
        assert_eq!(open(&metrics), 1, "a list is not a watch");
        drop(response);
        assert_eq!(open(&metrics), 0);
        let counted = |verb| {
            metrics
                .requests
                .get_or_create(&RequestLabels {
                    verb,
                    code: "200".into(),
                })
                .get()
        };
        assert_eq!((counted("watch"), counted("get")), (1, 1));
    }
}
