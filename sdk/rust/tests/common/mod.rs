//! A fake sidecar for the SDK's tests: a real Unix socket in a temporary directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use lameduck::{Builder, Lameduck};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UnixListener};

/// How long any single step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// The sidecar's end of the application socket.
pub struct FakeSidecar {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    /// `None` while stopped.
    listener: Option<UnixListener>,
}

impl FakeSidecar {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let listener = UnixListener::bind(&path).expect("bind the app socket");
        Self {
            _dir: dir,
            path,
            listener: Some(listener),
        }
    }

    /// Stops listening, as a killed sidecar does: the socket file stays and connecting to
    /// it is refused. Connections already accepted are the test's to drop.
    pub fn stop(&mut self) {
        self.listener = None;
    }

    /// Listens again on the same path, as a restarted sidecar does.
    pub fn restart(&mut self) {
        assert!(self.listener.is_none(), "the fake sidecar is listening");
        std::fs::remove_file(&self.path).expect("remove the old socket");
        self.listener = Some(UnixListener::bind(&self.path).expect("bind the app socket again"));
    }

    /// Accepts the SDK's next connection.
    pub async fn accept(&self) -> Conn {
        let listener = self.listener.as_ref().expect("the fake sidecar is stopped");
        let (stream, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .expect("the SDK did not connect in time")
            .expect("accept");
        let (reader, writer) = stream.into_split();
        Conn {
            reader: BufReader::new(reader),
            writer,
        }
    }

    /// Accepts a connection and answers its `hello` with a `welcome`.
    pub async fn accept_welcomed(&self, grace_seconds: u64) -> Conn {
        let mut conn = self.accept().await;
        let hello = conn.read().await.expect("hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        conn.send(&serde_json::json!({"type": "welcome", "v": 1, "grace_seconds": grace_seconds}))
            .await;
        conn
    }
}

/// One accepted connection.
pub struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    /// The next message from the SDK, or `None` once it closed the connection.
    pub async fn read(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = tokio::time::timeout(STEP, self.reader.read_line(&mut line))
            .await
            .expect("no line from the SDK in time")
            .expect("read from the SDK");
        if n == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "unterminated line {line:?}");
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}")))
    }

    /// The next message that is not `activity`.
    pub async fn read_non_activity(&mut self) -> Option<Value> {
        loop {
            match self.read().await {
                Some(message) if message["type"] == "activity" => continue,
                other => return other,
            }
        }
    }

    pub async fn send(&mut self, message: &Value) {
        let mut line = serde_json::to_vec(message).expect("json");
        line.push(b'\n');
        self.send_raw(&line).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .await
            .expect("write to the SDK");
    }

    /// Waits until the SDK closes the connection; only `activity` may come before.
    pub async fn expect_closed(&mut self) {
        if let Some(message) = self.read_non_activity().await {
            panic!("expected the SDK to close the connection, got {message}");
        }
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// Logs of the SDK on the test's output (`RUST_LOG` to change the level).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("lameduck=debug")),
        )
        .with_test_writer()
        .try_init();
}

/// One HTTP/1.1 request on a new connection; returns the raw response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut buffer = [0u8; 1024];
    // Read until the headers and the short body arrived (keep-alive: no EOF before close).
    loop {
        let n = tokio::time::timeout(STEP, stream.read(&mut buffer))
            .await
            .expect("read")
            .expect("read");
        response.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&response);
        if n == 0
            || text.contains("\r\n\r\n") && text.ends_with('\n') && !text.ends_with("\r\n\r\n")
        {
            return text.into_owned();
        }
    }
}

/// Serves `GET /` (held `hold` in flight) through the SDK's listener and layer.
pub async fn serve(
    lameduck: &Lameduck,
    hold: Duration,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = lameduck.listener(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route(
            "/",
            get(move || async move {
                tokio::time::sleep(hold).await;
                "ok\n"
            }),
        )
        .layer(lameduck.layer());
    let signal = lameduck.drain_signal();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
            .expect("serve");
    });
    (addr, server)
}

/// Starts the SDK against `sidecar` (container `web`, signals left alone) in a task: its
/// `connect` waits for the welcome the test sends.
pub async fn connect_to(sidecar: &FakeSidecar) -> tokio::task::JoinHandle<Lameduck> {
    let path = sidecar.path.clone();
    tokio::spawn(async move {
        Builder::new()
            .socket(path)
            .container("web")
            .handle_signals(false)
            .connect()
            .await
    })
}
