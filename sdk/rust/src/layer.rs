//! A tower layer that counts in-flight requests and closes HTTP/1 connections while the pod
//! is deregistering or draining.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, Version};
use tower_layer::Layer;
use tower_service::Service;

use crate::shared::Shared;

/// Tower layer made by [`Lameduck::layer`](crate::Lameduck::layer).
///
/// Every request is counted as in flight until its response is ready (the body may still be
/// streaming). Once the sidecar said `deregister`, or the drain started, HTTP/1 responses
/// carry `Connection: close` so that clients reconnect — through load balancers that no
/// longer route to this pod. When no [`Listener`](crate::Listener) counts connections, the
/// layer counts each request as an accepted connection instead.
#[derive(Clone)]
pub struct ShutdownLayer {
    shared: Arc<Shared>,
}

impl ShutdownLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl fmt::Debug for ShutdownLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ShutdownLayer {
    type Service = ShutdownService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShutdownService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`ShutdownLayer`] wraps around an HTTP service.
#[derive(Clone)]
pub struct ShutdownService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for ShutdownService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ShutdownService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // `Connection` is an HTTP/1 header; HTTP/2 connections are closed by the server's
        // GOAWAY once the drain starts.
        let http1 = request.version() <= Version::HTTP_11;
        let guard = InflightGuard::new(Arc::clone(&self.shared), is_kubelet_probe(&request));
        ResponseFuture {
            inner: self.inner.call(request),
            guard: Some(guard),
            http1,
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`ShutdownService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        guard: Option<InflightGuard>,
        http1: bool,
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(guard)) = (&mut result, this.guard.as_ref())
            && *this.http1
            && guard.shared.closing_connections()
        {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        // Dropping the guard ends the request's in-flight time (a cancelled request's guard
        // is dropped with the future).
        this.guard.take();
        Poll::Ready(result)
    }
}

/// Counts one request as in flight while it lives.
struct InflightGuard {
    shared: Arc<Shared>,
}

impl InflightGuard {
    fn new(shared: Arc<Shared>, kubelet_probe: bool) -> Self {
        shared.request_started(kubelet_probe);
        Self { shared }
    }
}

/// Whether a request is a kubelet liveness, readiness or startup probe
/// (`User-Agent: kube-probe/<version>`); those are not counted as traffic.
pub fn is_kubelet_probe<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(http::header::USER_AGENT)
        .and_then(|agent| agent.to_str().ok())
        .is_some_and(|agent| agent.starts_with("kube-probe/"))
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.shared.request_finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::Config;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(Config {
            socket: None,
            container: String::new(),
            fallback_grace: Duration::from_secs(30),
            hook_fallback: Duration::ZERO,
            handle_signals: false,
        }))
    }

    fn service(
        shared: &Arc<Shared>,
    ) -> ShutdownService<
        impl Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone,
    > {
        ShutdownLayer::new(Arc::clone(shared)).layer(tower::service_fn(|_: Request<()>| async {
            Ok(Response::new(()))
        }))
    }

    fn request(version: Version) -> Request<()> {
        Request::builder().version(version).body(()).unwrap()
    }

    #[tokio::test]
    async fn closes_http1_connections_only_while_deregistering() {
        let shared = shared();
        let response = service(&shared)
            .oneshot(request(Version::HTTP_11))
            .await
            .unwrap();
        assert!(response.headers().get(CONNECTION).is_none());

        shared.deregister.cancel();
        let response = service(&shared)
            .oneshot(request(Version::HTTP_11))
            .await
            .unwrap();
        assert_eq!(response.headers()[CONNECTION], "close");
        let response = service(&shared)
            .oneshot(request(Version::HTTP_2))
            .await
            .unwrap();
        assert!(
            response.headers().get(CONNECTION).is_none(),
            "not an HTTP/2 header"
        );
        // Every request but the kubelet's probes counts as traffic.
        assert_eq!(shared.arrivals(), 3);
        let probe = Request::builder()
            .uri("/healthz")
            .header(http::header::USER_AGENT, "kube-probe/1.34")
            .body(())
            .unwrap();
        assert!(is_kubelet_probe(&probe));
        let _ = service(&shared).oneshot(probe).await.unwrap();
        assert_eq!(shared.arrivals(), 3, "a kubelet probe counted as traffic");
    }

    #[tokio::test]
    async fn counts_inflight_until_the_response_or_cancellation() {
        let shared = shared();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(tokio::sync::Mutex::new(Some(released)));
        let mut service = ShutdownLayer::new(Arc::clone(&shared)).layer(tower::service_fn(
            move |_: Request<()>| {
                let released = Arc::clone(&released);
                async move {
                    if let Some(released) = released.lock().await.take() {
                        let _ = released.await;
                    }
                    Ok::<_, Infallible>(Response::new(()))
                }
            },
        ));
        let inflight = || shared.inflight.load(std::sync::atomic::Ordering::SeqCst);
        let held = service
            .ready()
            .await
            .unwrap()
            .call(request(Version::HTTP_11));
        let cancelled = service
            .ready()
            .await
            .unwrap()
            .call(request(Version::HTTP_11));
        assert_eq!(inflight(), 2);
        drop(cancelled);
        assert_eq!(inflight(), 1);
        let held = tokio::spawn(held);
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(inflight(), 0);
    }
}
