//! A listener wrapper that counts accepted connections for `activity` reports.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::{TcpListener, TcpStream};

use crate::shared::Shared;

/// A listener that counts every accepted connection (`accepted_total`), made by
/// [`Lameduck::listener`](crate::Lameduck::listener).
///
/// With the `axum` feature (on by default) it implements `axum::serve::Listener` for any
/// wrapped listener that does, so it can be handed to `axum::serve` as it is. The counts
/// tell the sidecar when load balancers stopped sending new connections.
pub struct Listener<L = TcpListener> {
    inner: L,
    shared: Arc<Shared>,
}

impl<L> Listener<L> {
    pub(crate) fn new(inner: L, shared: Arc<Shared>) -> Self {
        shared.listener_in_use.store(true, Ordering::SeqCst);
        Self { inner, shared }
    }

    /// The wrapped listener.
    pub fn get_ref(&self) -> &L {
        &self.inner
    }

    /// Unwraps the listener; connections accepted from it are no longer counted.
    pub fn into_inner(self) -> L {
        self.inner
    }
}

impl Listener<TcpListener> {
    /// Accepts one connection and counts it.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let accepted = self.inner.accept().await?;
        self.shared.count_accept();
        Ok(accepted)
    }

    /// The local address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

impl<L: fmt::Debug> fmt::Debug for Listener<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("inner", &self.inner)
            .field(
                "accepted_total",
                &self.shared.accepted_total.load(Ordering::Relaxed),
            )
            .finish()
    }
}

#[cfg(feature = "axum")]
impl<L: axum::serve::Listener> axum::serve::Listener for Listener<L> {
    type Io = L::Io;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The wrapped listener logs and retries accept errors itself.
        let accepted = axum::serve::Listener::accept(&mut self.inner).await;
        self.shared.count_accept();
        accepted
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        axum::serve::Listener::local_addr(&self.inner)
    }
}
