//! A fake sidecar for the SDK's tests: a real Unix socket in a temporary directory.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long any single step may take before the test fails.
pub const STEP: Duration = Duration::from_secs(5);

/// The sidecar's end of the application socket.
pub struct FakeSidecar {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    listener: UnixListener,
}

impl FakeSidecar {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.sock");
        let listener = UnixListener::bind(&path).expect("bind the app socket");
        Self {
            _dir: dir,
            path,
            listener,
        }
    }

    /// Accepts the SDK's next connection.
    pub async fn accept(&self) -> Conn {
        let (stream, _) = tokio::time::timeout(STEP, self.listener.accept())
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
