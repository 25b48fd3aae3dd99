//! lameduck demo service (axum): holds each request in flight for a while and appends a
//! record per acknowledged request to an in-memory batch that only its cleanup writes to
//! disk. If the pod is killed before cleanup, the records are lost — and that is visible:
//! lost data = acknowledged requests − lines in the records file.
//!
//! Environment:
//! - `LISTEN_ADDR` (default `0.0.0.0:8080`)
//! - `REQUEST_MILLIS` (default 20): how long each `GET /` is held in flight
//! - `CLEANUP_MILLIS` (default 500): how long cleanup takes before the flush
//! - `RECORDS_DIR` (default `/tmp/records`): records go to `<dir>/<HOSTNAME or pid>.records`
//! - `LAMEDUCK_SOCKET`, `LAMEDUCK_CONTAINER`: set by the lameduck webhook
//!
//! `lameduck-example-web prepare-records-dir` creates `RECORDS_DIR` and opens it to every
//! user (mode 1777), then exits: run as root in an init container, it readies a hostPath
//! directory (created root-owned by the kubelet) for the app, which runs as user 65532.
//! `lameduck-example-web count-records` prints, for `RECORDS_DIR` and each directory in it,
//! `<name>\t<records>` (the root is `.`): how many records reached the disk, read where
//! they are (on the node) when the records cannot be read from outside the cluster.
//!
//! Stdout carries one line per step of the shutdown, for people and test harnesses:
//! `listening on ADDR`, `draining (source: S, deadline in N ms, in flight: N)`,
//! `server stopped`, `flushed N records`, `shutdown complete: ok` (or `: failed: …`).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use tokio::net::TcpListener;

/// Settings read from the environment.
#[derive(Debug)]
struct Settings {
    listen_addr: String,
    request: Duration,
    cleanup: Duration,
    records_dir: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        Ok(Self {
            listen_addr: env_or("LISTEN_ADDR", "0.0.0.0:8080"),
            request: Duration::from_millis(millis("REQUEST_MILLIS", 20)?),
            cleanup: Duration::from_millis(millis("CLEANUP_MILLIS", 500)?),
            records_dir: PathBuf::from(env_or("RECORDS_DIR", "/tmp/records")),
        })
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn millis(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value
            .trim()
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a number of milliseconds")),
        _ => Ok(default),
    }
}

/// The batching writer: records of acknowledged requests, kept in memory until cleanup.
#[derive(Debug, Clone, Default)]
struct Records {
    pending: Arc<Mutex<Vec<u64>>>,
}

impl Records {
    fn push(&self, seq: u64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seq);
    }

    /// Appends every pending record, one per line, to `path` and fsyncs it.
    async fn flush(&self, path: PathBuf) -> std::io::Result<usize> {
        let batch =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let count = batch.len();
        tokio::task::spawn_blocking(move || append_records(&path, &batch))
            .await
            .map_err(std::io::Error::other)??;
        Ok(count)
    }
}

fn append_records(path: &Path, records: &[u64]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = String::with_capacity(records.len() * 8);
    for seq in records {
        text.push_str(&seq.to_string());
        text.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[derive(Debug, Clone)]
struct AppState {
    seq: Arc<AtomicU64>,
    records: Records,
    request: Duration,
    /// Set by `POST /fail-liveness`: `/livez` answers 500 from then on, so that a liveness
    /// probe kills this process (the restarted one starts healthy).
    broken: Arc<std::sync::atomic::AtomicBool>,
}

async fn index(State(state): State<AppState>) -> String {
    tokio::time::sleep(state.request).await;
    let seq = state.seq.fetch_add(1, Ordering::SeqCst) + 1;
    // Recorded before the response: every acknowledged request has a record.
    state.records.push(seq);
    format!("ok {seq}\n")
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn livez(State(state): State<AppState>) -> axum::http::StatusCode {
    if state.broken.load(Ordering::SeqCst) {
        axum::http::StatusCode::INTERNAL_SERVER_ERROR
    } else {
        axum::http::StatusCode::OK
    }
}

async fn fail_liveness(State(state): State<AppState>) -> &'static str {
    state.broken.store(true, Ordering::SeqCst);
    println!("liveness broken on request");
    "liveness broken\n"
}

/// Creates the records directory and opens it to every user (1777, like /tmp: each pod
/// writes its own file), so that the app, running as 65532, can write to a hostPath the
/// kubelet created for root.
fn prepare_records_dir(dir: &Path) -> ExitCode {
    use std::os::unix::fs::PermissionsExt;
    let result = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777)));
    match result {
        Ok(()) => {
            println!("records directory {} ready (mode 1777)", dir.display());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("lameduck-example-web: prepare {}: {err}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Records (non-empty lines of `*.records` files) directly in `dir`.
fn records_in(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "records") && path.is_file() {
            let text = std::fs::read_to_string(&path)?;
            n += text.lines().filter(|l| !l.trim().is_empty()).count() as u64;
        }
    }
    Ok(n)
}

/// `<name>\t<records>` for `dir` itself (`.`) and each directory in it, sorted by name.
fn count_records(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut counts = vec![(".".to_owned(), records_in(dir)?)];
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        let name = sub.file_name().map(|n| n.to_string_lossy().into_owned());
        counts.push((name.unwrap_or_default(), records_in(&sub)?));
    }
    Ok(counts)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("lameduck-example-web: {err}");
            return ExitCode::from(2);
        }
    };
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("prepare-records-dir") => return prepare_records_dir(&settings.records_dir),
        Some("count-records") => {
            return match count_records(&settings.records_dir) {
                Ok(counts) => {
                    for (name, n) in counts {
                        println!("{name}\t{n}");
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!(
                        "lameduck-example-web: count {}: {err}",
                        settings.records_dir.display()
                    );
                    ExitCode::FAILURE
                }
            };
        }
        Some(other) => {
            eprintln!(
                "lameduck-example-web: unknown command {other:?} (prepare-records-dir or count-records)"
            );
            return ExitCode::from(2);
        }
    }

    let lameduck = lameduck::connect().await;

    let records = Records::default();
    let file_name = match std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()) {
        Some(host) => format!("{host}.records"),
        None => format!("{}.records", std::process::id()),
    };
    let records_path = settings.records_dir.join(file_name);
    let cleanup = settings.cleanup;
    lameduck.on_cleanup("flush records", {
        let records = records.clone();
        move || async move {
            tokio::time::sleep(cleanup).await;
            let count = records.flush(records_path).await?;
            println!("flushed {count} records");
            Ok::<(), std::io::Error>(())
        }
    });

    let listener = match TcpListener::bind(&settings.listen_addr).await {
        Ok(listener) => lameduck.listener(listener),
        Err(err) => {
            eprintln!(
                "lameduck-example-web: cannot listen on {}: {err}",
                settings.listen_addr
            );
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => println!("listening on {addr}"),
        Err(_) => println!("listening on {}", settings.listen_addr),
    }

    let state = AppState {
        seq: Arc::default(),
        records,
        request: settings.request,
        broken: Arc::default(),
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/fail-liveness", axum::routing::post(fail_liveness))
        .with_state(state)
        .layer(lameduck.layer());

    // The server stops accepting once the drain starts; the line is printed in the same
    // future so that it always comes before `server stopped`.
    let drain_started = lameduck.drain_started();
    let stop_accepting = async move {
        let drain = drain_started.await;
        println!(
            "draining (source: {}, deadline in {} ms, in flight: {})",
            drain.source(),
            drain.remaining().as_millis(),
            drain.inflight_at_start()
        );
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(stop_accepting);
    match lameduck.until_deadline(server).await {
        Some(Ok(())) => println!("server stopped"),
        Some(Err(err)) => println!("server failed: {err}"),
        None => println!("server stopped at the drain deadline"),
    }

    let shutdown = lameduck.shutdown().await;
    if shutdown.is_ok() {
        println!("shutdown complete: ok");
        ExitCode::SUCCESS
    } else {
        let failures: Vec<String> = shutdown
            .failures()
            .iter()
            .map(ToString::to_string)
            .collect();
        println!("shutdown complete: failed: {}", failures.join("; "));
        ExitCode::FAILURE
    }
}
