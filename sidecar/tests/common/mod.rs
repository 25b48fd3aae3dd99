//! A harness that does what the kubelet does to a pod with the lameduck sidecar: start
//! `serve`, wait for its startup probe, start app processes, and on deletion exec the
//! preStop hook, then SIGTERM the app, SIGKILL it at the grace deadline, then SIGTERM the
//! sidecar and read its termination report. Real processes, real Unix sockets.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lameduck_proto::TerminationReport;

pub mod netns;

/// The sidecar binary cargo built for these tests.
pub fn sidecar_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lameduck-sidecar"))
}

/// The Rust example service, built by `cargo build --workspace --bins` (`make build`).
pub fn example_bin() -> PathBuf {
    let path = sidecar_bin().with_file_name("lameduck-example-web");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p lameduck-example-web` (make test does)",
        path.display()
    );
    path
}

/// Sends a signal to a process.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    assert!(
        rc == 0 || signal == libc::SIGKILL,
        "kill({pid}, {signal}) failed"
    );
}

/// Waits for a child until `deadline`; None when it is still running.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A running `lameduck-sidecar serve` in its own directory (the pod's emptyDir).
pub struct Sidecar {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub grace: Duration,
    pub started_to_ready: Duration,
    args: Vec<String>,
    /// How many times the container was started (log files are kept per run).
    runs: usize,
    /// Where and how it runs: a command it is started under (`ip netns exec …`) and the
    /// environment the webhook would give it.
    launch: Launch,
}

/// A command prefix and environment for the sidecar's process.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// The command the sidecar runs under, e.g. `ip netns exec <ns>`.
    pub wrap: Vec<String>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
}

impl Sidecar {
    /// Starts `serve` with `args` added and waits for `probe` to succeed.
    pub fn start(grace_seconds: u64, args: &[&str]) -> Sidecar {
        Sidecar::start_with(grace_seconds, args, Launch::default())
    }

    /// [`Sidecar::start`] under `launch`.
    pub fn start_with(grace_seconds: u64, args: &[&str], launch: Launch) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all = vec!["--grace-seconds".to_owned(), grace_seconds.to_string()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let child = spawn_sidecar(dir.path(), &all, 1, &launch);
        let mut sidecar = Sidecar {
            dir,
            child,
            grace: Duration::from_secs(grace_seconds),
            started_to_ready: Duration::ZERO,
            args: all,
            runs: 1,
            launch,
        };
        sidecar.wait_ready();
        sidecar
    }

    /// SIGKILLs the sidecar (a crash, or the OOM killer); the kubelet may restart it.
    pub fn kill(&mut self) {
        signal(self.child.id(), libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// What the kubelet does to a native sidecar that died outside a pod deletion: start
    /// the container again, same volume, and wait for its startup probe.
    pub fn restart(&mut self) {
        self.runs += 1;
        self.child = spawn_sidecar(self.dir.path(), &self.args, self.runs, &self.launch);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.probe() {
            assert!(
                Instant::now() < deadline,
                "the sidecar never became ready:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(2));
        }
        self.started_to_ready = started.elapsed();
    }

    /// Runs the startup probe once.
    pub fn probe(&self) -> bool {
        Command::new(sidecar_bin())
            .args(["probe", "--dir"])
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status()
            .expect("run probe")
            .success()
    }

    /// `LAMEDUCK_SOCKET` for app processes.
    pub fn app_socket(&self) -> PathBuf {
        self.dir.path().join("run/app.sock")
    }

    /// Starts the preStop hook of `container` (what the kubelet execs in the app container).
    pub fn exec_prestop(&self, container: &str) -> Hook {
        exec_prestop(self.dir.path(), container, 5000)
    }

    /// The sidecar's log so far, every run of it.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                std::fs::read_to_string(self.dir.path().join(sidecar_log(run))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("--- restarted ---\n")
    }

    /// The raw termination message the last run wrote.
    pub fn termination_message(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("termination-log"))
            .unwrap_or_else(|e| panic!("no termination report ({e}):\n{}", self.log()))
    }

    /// SIGTERM (the kubelet stops native sidecars after the app containers), then the report.
    pub fn stop(&mut self) -> (TerminationReport, String) {
        signal(self.child.id(), libc::SIGTERM);
        let status = wait_until(&mut self.child, Instant::now() + Duration::from_secs(5))
            .unwrap_or_else(|| panic!("the sidecar ignored SIGTERM:\n{}", self.log()));
        assert!(
            status.success(),
            "the sidecar exited with {status}:\n{}",
            self.log()
        );
        let raw = std::fs::read_to_string(self.dir.path().join("termination-log"))
            .unwrap_or_else(|e| panic!("no termination report ({e}):\n{}", self.log()));
        assert!(raw.len() <= 4096, "report of {} bytes", raw.len());
        let report = TerminationReport::parse(&raw)
            .unwrap_or_else(|e| panic!("unparsable report {raw:?}: {e}"));
        (report, self.log())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sidecar_log(run: usize) -> String {
    if run == 1 {
        "sidecar.log".to_owned()
    } else {
        format!("sidecar-{run}.log")
    }
}

fn spawn_sidecar(dir: &Path, args: &[String], run: usize, launch: &Launch) -> Child {
    let mut command = match launch.wrap.split_first() {
        Some((program, wrap)) => {
            let mut command = Command::new(program);
            command.args(wrap).arg(sidecar_bin());
            command
        }
        None => Command::new(sidecar_bin()),
    };
    command
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .arg("--termination-log")
        .arg(dir.join("termination-log"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file(dir, &sidecar_log(run))))
        .spawn()
        .expect("spawn the sidecar")
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).expect("create log file")
}

/// A running preStop hook.
pub struct Hook {
    pub child: Child,
    pub started: Instant,
    log: PathBuf,
}

impl Hook {
    /// Waits for the hook like the kubelet: at most until `deadline`. Returns how long it
    /// ran, or None if it was still running.
    pub fn wait(&mut self, deadline: Instant) -> Option<Duration> {
        let status = wait_until(&mut self.child, deadline)?;
        assert!(
            status.success(),
            "the preStop hook failed with {status}: {}",
            self.log()
        );
        Some(self.started.elapsed())
    }

    /// The hook's stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Execs `lameduck-sidecar prestop` against `dir`.
pub fn exec_prestop(dir: &Path, container: &str, fallback_millis: u64) -> Hook {
    exec_prestop_with(dir, container, fallback_millis, &[])
}

/// Execs `lameduck-sidecar prestop` against `dir` with `extra` flags.
pub fn exec_prestop_with(
    dir: &Path,
    container: &str,
    fallback_millis: u64,
    extra: &[&str],
) -> Hook {
    exec_prestop_in(&Launch::default(), dir, container, fallback_millis, extra)
}

/// [`exec_prestop_with`] under `launch` (in the app container's namespaces, with its
/// environment).
pub fn exec_prestop_in(
    launch: &Launch,
    dir: &Path,
    container: &str,
    fallback_millis: u64,
    extra: &[&str],
) -> Hook {
    static HOOKS: AtomicU64 = AtomicU64::new(0);
    let n = HOOKS.fetch_add(1, Ordering::Relaxed);
    let log = dir.join(format!("prestop-{container}-{n}.log"));
    let mut command = match launch.wrap.split_first() {
        Some((program, wrap)) => {
            let mut command = Command::new(program);
            command.args(wrap).arg(sidecar_bin());
            command
        }
        None => Command::new(sidecar_bin()),
    };
    let child = command
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .args(["prestop", "--container", container, "--dir"])
        .arg(dir)
        .arg("--fallback-delay-millis")
        .arg(fallback_millis.to_string())
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("hook log")))
        .spawn()
        .expect("spawn prestop");
    Hook {
        child,
        started: Instant::now(),
        log,
    }
}

/// The example service, one process.
pub struct App {
    pub child: Child,
    pub addr: String,
    pub records: PathBuf,
    pub stdout: PathBuf,
}

impl App {
    /// Starts the example with the SDK connected to `sidecar` as container `container`.
    pub fn start(sidecar: &Sidecar, container: &str, cleanup_millis: u64) -> App {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let records = sidecar.dir.path().join(format!("records-{container}"));
        let stdout = sidecar.dir.path().join(format!("app-{container}.out"));
        let child = Command::new(example_bin())
            .env("LAMEDUCK_SOCKET", sidecar.app_socket())
            .env("LAMEDUCK_CONTAINER", container)
            .env("LISTEN_ADDR", &addr)
            .env("REQUEST_MILLIS", "20")
            .env("CLEANUP_MILLIS", cleanup_millis.to_string())
            .env("RECORDS_DIR", &records)
            .env("HOSTNAME", container)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(log_file(
                sidecar.dir.path(),
                &format!("app-{container}.out"),
            )))
            .stderr(Stdio::from(log_file(
                sidecar.dir.path(),
                &format!("app-{container}.err"),
            )))
            .spawn()
            .expect("spawn the example app");
        let app = App {
            child,
            addr,
            records,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_get(&app.addr, "/healthz").is_err() {
            assert!(
                Instant::now() < deadline,
                "the example app never answered on {}",
                app.addr
            );
            thread::sleep(Duration::from_millis(10));
        }
        app
    }

    /// Lines in the records file: what survived the shutdown.
    pub fn flushed_records(&self) -> usize {
        std::fs::read_dir(&self.records)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| {
                        std::fs::read_to_string(e.path())
                            .unwrap_or_default()
                            .lines()
                            .count()
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// What the app printed.
    pub fn output(&self) -> String {
        let err = self.stdout.with_extension("err");
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 GET on a new connection; Ok(status) or the error.
pub fn http_get(addr: &str, path: &str) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let status = response.split_whitespace().nth(1).ok_or("empty response")?;
    status
        .parse()
        .map_err(|_| format!("bad status line in {response:?}"))
}

/// Counts of a load run.
#[derive(Debug, Default)]
pub struct LoadCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

/// Constant load on `addr` from `clients` threads, each request on a new connection (like
/// a client behind a load balancer), until `stop` is set.
pub fn start_load(
    addr: &str,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<LoadCounts>, Vec<thread::JoinHandle<()>>) {
    let counts = Arc::new(LoadCounts::default());
    let handles = (0..clients)
        .map(|_| {
            let (addr, stop, counts) = (addr.to_owned(), stop.clone(), counts.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_get(&addr, "/") {
                        Ok(200) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        _ => counts.failed.fetch_add(1, Ordering::Relaxed),
                    };
                    thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    (counts, handles)
}

/// What the kubelet did to one app container.
#[derive(Debug)]
pub struct Termination {
    /// How long the preStop hook ran.
    pub prestop: Duration,
    /// When SIGTERM was sent, from the deletion.
    pub sigterm_at: Duration,
    /// When SIGKILL was sent, if it was.
    pub sigkill_at: Option<Duration>,
    /// When the app exited, from the deletion.
    pub exited_at: Duration,
}

/// Deletes the "pod" the way the kubelet does for one app container: runs the preStop
/// hook (bounded by the grace period plus the kubelet's one-off 2 s extension), sends
/// SIGTERM, and SIGKILLs at the deadline (at least 2 s after SIGTERM, as the kubelet grants).
pub fn kubelet_terminate(hook: &mut Hook, app: &mut Child, grace: Duration) -> Termination {
    let deleted = hook.started;
    let deadline = deleted + grace;
    let prestop = hook.wait(deadline + Duration::from_secs(2));
    let prestop = prestop.unwrap_or_else(|| {
        let _ = hook.child.kill();
        hook.started.elapsed()
    });
    let sigterm_at = deleted.elapsed();
    signal(app.id(), libc::SIGTERM);
    let kill_at = deadline.max(Instant::now() + Duration::from_secs(2));
    let (sigkill_at, exited_at) = match wait_until(app, kill_at) {
        Some(_) => (None, deleted.elapsed()),
        None => {
            let at = deleted.elapsed();
            signal(app.id(), libc::SIGKILL);
            let _ = app.wait();
            (Some(at), deleted.elapsed())
        }
    };
    Termination {
        prestop,
        sigterm_at,
        sigkill_at,
        exited_at,
    }
}

/// A raw protocol client on the app socket, for cases no well-behaved SDK produces.
pub struct RawApp {
    pub stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl RawApp {
    /// Connects to the sidecar's app socket.
    pub fn connect(sidecar: &Sidecar) -> RawApp {
        let stream = UnixStream::connect(sidecar.app_socket()).expect("connect app socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        RawApp { stream, reader }
    }

    /// Sends raw bytes (errors ignored: the peer may have closed already).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends one JSON message.
    pub fn send(&mut self, message: serde_json::Value) {
        self.send_raw(format!("{message}\n").as_bytes());
    }

    /// Reads one message if one arrives within `wait`; None otherwise (or at end of
    /// stream).
    pub fn recv_within(&mut self, wait: Duration) -> Option<serde_json::Value> {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let message = self.recv();
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        message
    }

    /// Reads one message; None at end of stream (or a reset).
    pub fn recv(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("the sidecar sent invalid JSON")),
        }
    }

    /// Says hello as `container` and checks the welcome.
    pub fn hello(sidecar: &Sidecar, container: &str) -> RawApp {
        let mut app = RawApp::connect(sidecar);
        app.send(serde_json::json!({"type":"hello","v":1,"container":container,"pid":4242}));
        let welcome = app.recv().expect("welcome");
        assert_eq!(welcome["type"], "welcome");
        app
    }

    /// Reads until a message of type `kind` arrives.
    pub fn expect(&mut self, kind: &str) -> serde_json::Value {
        let message = self
            .recv()
            .unwrap_or_else(|| panic!("connection closed while waiting for {kind}"));
        assert_eq!(message["type"], kind, "expected {kind}, got {message}");
        message
    }
}
