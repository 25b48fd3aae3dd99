//! A pod's network as the kernel-view tests need it: a "pod" network namespace (the
//! sidecar and a plain server), a "client" namespace joined to it by a veth pair, and in
//! the client namespace a second address standing for the node, the source of the
//! kubelet's probes. The server runs as PID 1 of its own PID namespace, as in a container,
//! so that the preStop hook's `signal:` reaches it for real.
//!
//! Needs root and iproute2's `ip` (`apt-get install iproute2`), util-linux's `unshare` and
//! `nsenter`, and python3: a test that cannot have them fails and says so, it is never
//! skipped.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::Launch;

/// The pod's address on the veth link.
pub const POD_IP: &str = "10.213.0.1";
/// A second address of the pod that the client namespace reaches from the node's address.
pub const POD_IP_FOR_NODE: &str = "10.213.0.4";
/// The client's address.
pub const CLIENT_IP: &str = "10.213.0.2";
/// The node's address (the kubelet's probes come from it): `HOST_IP`.
pub const NODE_IP: &str = "10.213.0.3";

/// The two namespaces; deleted on drop.
pub struct Net {
    /// The pod's namespace.
    pub pod: String,
    /// The clients' namespace.
    pub client: String,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Fails the test with what is missing and how to get it.
pub fn require_tools() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the network-namespace tests need root (they create namespaces and veth pairs): run `cargo test` as root"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("python3", "python3"),
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        let found = found
            || (tool == "ip"
                && Command::new(tool)
                    .arg("-V")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok());
        assert!(
            found,
            "the network-namespace tests need `{tool}`: install it with `apt-get install -y {package}`"
        );
    }
}

impl Net {
    /// Creates the namespaces, the veth pair and the addresses.
    pub fn new() -> Net {
        require_tools();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let net = Net {
            pod: format!("ldk-pod-{id}"),
            client: format!("ldk-cli-{id}"),
        };
        // Names of links are namespace-local: the same ones in every pair.
        let (pod, client) = (net.pod.as_str(), net.client.as_str());
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", pod],
            vec!["netns", "add", client],
            vec![
                "link", "add", "veth-pod", "netns", pod, "type", "veth", "peer", "name",
                "veth-cli", "netns", client,
            ],
            vec!["-n", pod, "link", "set", "lo", "up"],
            vec!["-n", client, "link", "set", "lo", "up"],
            vec!["-n", pod, "addr", "add", "10.213.0.1/24", "dev", "veth-pod"],
            vec!["-n", pod, "addr", "add", "10.213.0.4/24", "dev", "veth-pod"],
            vec![
                "-n",
                client,
                "addr",
                "add",
                "10.213.0.2/24",
                "dev",
                "veth-cli",
            ],
            vec![
                "-n",
                client,
                "addr",
                "add",
                "10.213.0.3/24",
                "dev",
                "veth-cli",
            ],
            vec!["-n", pod, "link", "set", "veth-pod", "up"],
            vec!["-n", client, "link", "set", "veth-cli", "up"],
            // What goes to the pod's second address leaves from the node's address.
            vec![
                "-n",
                client,
                "route",
                "add",
                "10.213.0.4/32",
                "dev",
                "veth-cli",
                "src",
                "10.213.0.3",
            ],
        ];
        for step in steps {
            if let Err(e) = run("ip", &step) {
                panic!("cannot set up the test network: {e}");
            }
        }
        net
    }

    /// Runs `f` on a thread inside the client namespace.
    pub fn in_client<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.client);
        thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid descriptor; it changes only this thread's namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns into {path} failed");
            f()
        })
    }

    /// How a process starts in the pod's namespace.
    pub fn pod_launch(&self, env: &[(&str, &str)]) -> Launch {
        Launch {
            wrap: vec!["ip".into(), "netns".into(), "exec".into(), self.pod.clone()],
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.pod]);
        let _ = run("ip", &["netns", "del", &self.client]);
    }
}

/// The plain server (`tests/netns/server.py`), PID 1 of its own PID namespace in the pod's
/// network namespace.
pub struct Server {
    /// `unshare`, which waits for the server and takes it down with it.
    pub child: Child,
    /// The server's pid as this process sees it.
    pub pid: u32,
    /// Where it writes the time its listener closed.
    pub closed_file: PathBuf,
    /// Its output.
    pub log: PathBuf,
}

impl Server {
    /// Starts it on `port`; after a drain request it serves `drain` longer, then closes.
    pub fn start(net: &Net, dir: &Path, port: u16, drain: Duration) -> Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netns/server.py");
        let closed_file = dir.join("server-closed");
        let log = dir.join("server.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &net.pod])
            .args(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg("python3")
            .arg("-u")
            .arg(&script)
            .arg(port.to_string())
            .arg(format!("{:.3}", drain.as_secs_f64()))
            .arg(&closed_file)
            .stdout(Stdio::from(File::create(&log).expect("server log")))
            .stderr(Stdio::from(File::create(dir.join("server.err")).unwrap()))
            .spawn()
            .expect("start the server");
        let unshare = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        // `unshare --fork` waits for its one child: the server, PID 1 inside.
        let pid = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
                    .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next() {
                break pid.parse().expect("a pid");
            }
            assert!(Instant::now() < deadline, "the server did not start");
            thread::sleep(Duration::from_millis(10));
        };
        let server = Server {
            child,
            pid,
            closed_file,
            log,
        };
        while !server.output().contains("ready") {
            assert!(
                Instant::now() < deadline,
                "the server never became ready: {}",
                server.output()
            );
            thread::sleep(Duration::from_millis(10));
        }
        server
    }

    /// How a process starts in the server's container: its network, PID and mount
    /// namespaces (PID 1 is the server; `/proc` is the container's).
    pub fn container_launch(&self, env: &[(&str, &str)]) -> Launch {
        Launch {
            wrap: vec![
                "nsenter".into(),
                "-t".into(),
                self.pid.to_string(),
                "-n".into(),
                "-p".into(),
                "-m".into(),
                "--".into(),
            ],
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// When its listener closed, if it did.
    pub fn closed_at(&self) -> Option<SystemTime> {
        let text = std::fs::read_to_string(&self.closed_file).ok()?;
        let secs: f64 = text.trim().parse().ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
    }

    /// What it printed.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET on a new connection from the calling thread's namespace; the status, or the
/// error (`ConnectionRefused` once the listener closed).
pub fn get(addr: SocketAddr) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {response:?}")))
}

/// The kubelet: a GET from the node's address every `period` until `stop`; stops by
/// itself at the first refusal (the kubelet stops probing a container that exited).
/// Returns the probes answered and refused.
pub fn start_probes(
    net: &Net,
    port: u16,
    period: Duration,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u64, u64)> {
    let addr: SocketAddr = format!("{POD_IP_FOR_NODE}:{port}").parse().unwrap();
    net.in_client(move || {
        let (mut answered, mut refused) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            match get(addr) {
                Ok(_) => answered += 1,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused += 1;
                    break;
                }
                Err(_) => {}
            }
            let next = Instant::now() + period;
            while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                thread::sleep(Duration::from_millis(10));
            }
        }
        (answered, refused)
    })
}
