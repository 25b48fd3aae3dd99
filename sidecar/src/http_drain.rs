//! The drain fallback for applications without an SDK: `POST http://127.0.0.1:<port><path>`.

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Calls the application's drain endpoint and returns the HTTP status. The caller bounds
/// the wait with the shutdown deadline.
pub async fn call(port: u16, path: &str) -> Result<u16, String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to 127.0.0.1:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
        .header(hyper::header::USER_AGENT, "lameduck-sidecar")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("invalid drain path {path:?}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("POST {path}: {e}"))?;
    Ok(response.status().as_u16())
}
