//! The example service as a process: without a sidecar (SIGTERM fallback) and with a fake
//! sidecar on a real Unix socket. Blocking std I/O only.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(10);

struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
    addr: String,
}

impl Service {
    fn start(records_dir: &Path, socket: Option<&Path>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lameduck-example-web"));
        command
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("REQUEST_MILLIS", "50")
            .env("CLEANUP_MILLIS", "200")
            .env("RECORDS_DIR", records_dir)
            .env("HOSTNAME", "test-pod")
            .env("LAMEDUCK_CONTAINER", "web")
            .env_remove("LAMEDUCK_SOCKET")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(socket) = socket {
            command.env("LAMEDUCK_SOCKET", socket);
        }
        let mut child = command.spawn().expect("start the example");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Self {
            child,
            lines,
            addr: String::new(),
        };
        let listening = service.expect_line("listening on ");
        service.addr = listening.trim_start_matches("listening on ").to_string();
        service
    }

    /// Waits for the next stdout line starting with `prefix` (earlier lines are skipped).
    fn expect_line(&self, prefix: &str) -> String {
        let until = Instant::now() + STEP;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => continue,
                Err(e) => panic!("no stdout line starting with {prefix:?}: {e}"),
            }
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> i32 {
        let until = Instant::now() + STEP;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().expect("exited, not killed by a signal");
            }
            assert!(Instant::now() < until, "the example did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` on a new connection; returns the whole response (the server closes or the
/// body is complete).
fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(STEP)).expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    response
}

fn record_lines(dir: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(dir.join("test-pod.records")).expect("records file");
    text.lines()
        .map(|l| l.parse().expect("a record is a number"))
        .collect()
}

#[test]
fn sigterm_without_a_sidecar_flushes_every_acknowledged_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut service = Service::start(dir.path(), None);
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let response = get(&service.addr, "/");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let body = response.split("\r\n\r\n").nth(1).expect("body");
        let seq: u64 = body
            .trim()
            .trim_start_matches("ok ")
            .parse()
            .expect("ok <seq>");
        acknowledged.push(seq);
    }
    assert!(get(&service.addr, "/healthz").starts_with("HTTP/1.1 200"));

    service.signal("TERM");
    assert!(service.expect_line("draining").contains("source: signal"));
    service.expect_line("server stopped");
    assert_eq!(service.expect_line("flushed"), "flushed 5 records");
    assert_eq!(
        service.expect_line("shutdown complete"),
        "shutdown complete: ok"
    );
    assert_eq!(service.wait_exit(), 0);
    assert_eq!(record_lines(dir.path()), acknowledged);
}

#[test]
fn with_a_sidecar_drains_acknowledges_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("app.sock");
    let listener = UnixListener::bind(&socket).expect("bind");
    let records = dir.path().join("records");

    // The fake sidecar answers hello in the background while the service starts.
    let (conn_sender, conn) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(STEP)).expect("timeout");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut hello = String::new();
        reader.read_line(&mut hello).expect("hello");
        let mut writer = stream;
        writeln!(
            writer,
            "{}",
            json!({"type": "welcome", "v": 1, "grace_seconds": 30})
        )
        .expect("welcome");
        conn_sender
            .send((hello, reader, writer))
            .expect("hand over");
    });
    let started = Instant::now();
    let mut service = Service::start(&records, Some(&socket));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "connect waited for nothing"
    );
    let (hello, mut reader, mut writer) = conn.recv_timeout(STEP).expect("the example connected");
    let hello: Value = serde_json::from_str(&hello).expect("hello is JSON");
    assert_eq!(hello["type"], "hello");
    assert_eq!(hello["container"], "web");
    let mut read = move || -> Value {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read from the example");
            let message: Value = serde_json::from_str(&line).expect("a JSON line");
            if message["type"] != "activity" {
                return message;
            }
        }
    };
    let mut send = move |message: Value| {
        writeln!(writer, "{message}").expect("write to the example");
    };

    assert!(get(&service.addr, "/").starts_with("HTTP/1.1 200"));

    send(json!({"type": "deregister"}));
    std::thread::sleep(Duration::from_millis(100));
    let response = get(&service.addr, "/");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    send(json!({"type": "drain", "deadline_unix_ms": now + 10_000}));
    assert!(service.expect_line("draining").contains("source: sidecar"));
    assert_eq!(read()["type"], "drained");
    let done = read();
    assert_eq!(done, json!({"type": "done", "ok": true}));
    assert_eq!(service.expect_line("flushed"), "flushed 2 records");
    assert_eq!(service.wait_exit(), 0);
    assert_eq!(record_lines(&records), [1, 2]);
}

#[test]
fn prepare_records_dir_creates_it_open_to_every_user() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ns").join("web");
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-example-web"))
        .arg("prepare-records-dir")
        .env("RECORDS_DIR", &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777, "{mode:o}");
    // An unknown command is refused, not served.
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-example-web"))
        .arg("serve-forever")
        .env("RECORDS_DIR", &dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn count_records_reads_every_variant_directory() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("a.records"), "1\n").unwrap();
    for (dir, files) in [("go-web", vec!["1\n2\n", "3\n\n"]), ("rust-web", vec![])] {
        std::fs::create_dir(root.path().join(dir)).unwrap();
        for (i, text) in files.into_iter().enumerate() {
            std::fs::write(root.path().join(dir).join(format!("p{i}.records")), text).unwrap();
        }
    }
    // Not a records file: not counted.
    std::fs::write(root.path().join("go-web").join("notes.txt"), "x\ny\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-example-web"))
        .arg("count-records")
        .env("RECORDS_DIR", root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        ".\t1\ngo-web\t3\nrust-web\t0\n"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lameduck-example-web"))
        .arg("count-records")
        .env("RECORDS_DIR", root.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a missing directory is an error: {out:?}"
    );
}
