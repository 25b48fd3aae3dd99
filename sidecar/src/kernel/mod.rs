//! The pod's traffic from the kernel: the network namespace the sidecar shares with the
//! app containers has its own socket table and TCP counters, readable without any
//! capability. `proc_net` parses them, `view` turns samples into traffic per served port
//! (both pure); this module reads the files, and `poller` samples them while a shutdown
//! is in progress.

pub mod poller;
pub mod proc_net;
pub mod view;

use std::path::Path;

pub use proc_net::{Socket, TcpCounters};
pub use view::{Observation, TrafficView};

/// Where the namespace's tables are (`/proc/net` is the reading process's namespace).
pub const PROC_NET: &str = "/proc/net";

/// Reads both socket tables. `tcp6` may be missing (IPv6 disabled); `tcp` may not.
pub fn read_sockets(proc_net: &Path) -> std::io::Result<Vec<Socket>> {
    let mut sockets = proc_net::parse_sockets(&std::fs::read_to_string(proc_net.join("tcp"))?);
    if let Ok(text) = std::fs::read_to_string(proc_net.join("tcp6")) {
        sockets.extend(proc_net::parse_sockets(&text));
    }
    Ok(sockets)
}

/// Reads the TCP counters; None when `snmp` cannot be read or parsed.
pub fn read_counters(proc_net: &Path) -> Option<TcpCounters> {
    let snmp = std::fs::read_to_string(proc_net.join("snmp")).ok()?;
    let netstat = std::fs::read_to_string(proc_net.join("netstat")).ok();
    proc_net::parse_counters(&snmp, netstat.as_deref())
}

/// The TCP ports on which the processes this one can see (its PID namespace: inside a
/// container, the container's processes) hold a listening socket. Sockets are matched to
/// processes by inode through `/proc/<pid>/fd`; processes whose descriptors cannot be read
/// (another user's) are skipped.
pub fn listening_ports_of_processes(proc_root: &Path, proc_net: &Path) -> Vec<u16> {
    let Ok(sockets) = read_sockets(proc_net) else {
        return Vec::new();
    };
    let own = std::process::id().to_string();
    let mut inodes = std::collections::HashSet::new();
    if let Ok(entries) = std::fs::read_dir(proc_root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
                continue;
            }
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path())
                    && let Some(inode) = target.to_str().and_then(proc_net::socket_inode)
                {
                    inodes.insert(inode);
                }
            }
        }
    }
    let mut ports: Vec<u16> = sockets
        .iter()
        .filter(|s| s.state == proc_net::state::LISTEN && inodes.contains(&s.inode))
        .map(|s| s.local_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Every TCP port listening in the namespace.
pub fn listening_ports(sockets: &[Socket]) -> Vec<u16> {
    let mut ports: Vec<u16> = sockets
        .iter()
        .filter(|s| s.state == proc_net::state::LISTEN)
        .map(|s| s.local_port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}
