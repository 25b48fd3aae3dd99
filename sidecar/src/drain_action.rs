//! The drain action of a container without an SDK, run by its preStop hook once the
//! sidecar let the container go (docs/protocol.md §5): `signal:` to the container's PID 1,
//! `exec:` a command, `http:` a POST on loopback, or `none`. The hook runs inside the app
//! container — its PID namespace, its network namespace — so PID 1 is the server and
//! `/proc/net/tcp` shows the pod's sockets.
//!
//! After `signal`, `exec` and `http` the hook waits until the container's listeners are
//! closed and its connections gone, so that the kubelet's SIGTERM comes after the server
//! really drained — but never past `until`, the release deadline the sidecar announced:
//! SIGTERM must still come before the kubelet's SIGKILL, whatever the server does.

use std::path::Path;
use std::time::Duration;

use lameduck_proto::DrainAction;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{info, warn};

use crate::kernel::{self, view::serving};

/// How often the hook looks at the socket table while it waits.
const POLL: Duration = Duration::from_millis(50);

/// Reads the action from `LAMEDUCK_DRAIN_ACTION`; a value that does not parse is logged
/// and behaves as `none` (the hook never fails the pod).
pub fn parse(value: Option<&str>, container: &str) -> DrainAction {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => DrainAction::None,
        Some(value) => value.parse().unwrap_or_else(|error| {
            warn!(
                container,
                "{error}; no drain action, SIGTERM follows the hook"
            );
            DrainAction::None
        }),
    }
}

/// How a drain action ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Drained {
    /// No action.
    Nothing,
    /// The listeners closed and the connections were gone.
    Closed,
    /// `until` came first.
    OutOfTime,
    /// The action could not be carried out (the reason is logged).
    Failed,
}

/// Runs `action` and waits until the container stopped serving, at most until `until`.
pub async fn run(action: &DrainAction, container: &str, until: Instant) -> Drained {
    if *action == DrainAction::None {
        return Drained::Nothing;
    }
    let proc_net = Path::new(kernel::PROC_NET);
    // Before the action: afterwards the listeners may be gone, and with them their ports.
    let mut ports = kernel::listening_ports_of_processes(Path::new("/proc"), proc_net);
    if ports.is_empty() {
        // Processes not readable (another user's): every listener of the pod. Other
        // containers' listeners then hold the hook until `until`, which the phase budget
        // bounds.
        ports = kernel::read_sockets(proc_net)
            .map(|s| kernel::listening_ports(&s))
            .unwrap_or_default();
        if !ports.is_empty() {
            info!(
                container,
                ?ports,
                "listeners not attributable to the container's processes; waiting for every listener of the pod"
            );
        }
    }
    let started = Instant::now();
    info!(container, %action, ?ports, "drain action");
    let carried_out = match action {
        DrainAction::None => return Drained::Nothing,
        DrainAction::Signal(name) => signal_pid1(action, name),
        DrainAction::Exec(argv) => exec(argv, until).await,
        DrainAction::Http { port, path } => {
            match timeout(
                until.saturating_duration_since(Instant::now()),
                crate::http_drain::call(*port, path),
            )
            .await
            {
                Ok(Ok(status)) => {
                    info!(container, status, "drain call answered");
                    true
                }
                Ok(Err(error)) => {
                    warn!(container, "drain call failed: {error}");
                    // Refused: the server may have closed already; the wait says.
                    true
                }
                Err(_) => {
                    warn!(
                        container,
                        "drain call: no answer before the release deadline"
                    );
                    false
                }
            }
        }
    };
    if !carried_out {
        return Drained::Failed;
    }
    let drained = wait_closed(&ports, until).await;
    match drained {
        Drained::Closed => info!(
            container,
            waited_ms = started.elapsed().as_millis() as u64,
            "the container's listeners are closed and its connections gone"
        ),
        _ => warn!(
            container,
            ?ports,
            "the container still serves at the release deadline; letting the kubelet's SIGTERM follow"
        ),
    }
    drained
}

/// `kill(1, sig)`: the container's PID 1. A PID 1 ignores signals it has no handler for,
/// as servers with a graceful stop do have.
fn signal_pid1(action: &DrainAction, name: &str) -> bool {
    let signal = action
        .signal_number()
        .and_then(rustix::process::Signal::from_named_raw);
    let (Some(signal), Some(pid)) = (signal, rustix::process::Pid::from_raw(1)) else {
        warn!("unknown signal {name}");
        return false;
    };
    match rustix::process::kill_process(pid, signal) {
        Ok(()) => true,
        Err(error) => {
            warn!("cannot send {name} to PID 1: {error}");
            false
        }
    }
}

/// Runs the command in the container, at most until `until`.
async fn exec(argv: &[String], until: Instant) -> bool {
    let Some((program, args)) = argv.split_first() else {
        return false;
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            warn!("cannot run {program}: {error}");
            return false;
        }
    };
    tokio::select! {
        status = child.wait() => match status {
            Ok(status) if status.success() => true,
            Ok(status) => {
                warn!("{program} exited with {status}");
                true
            }
            Err(error) => {
                warn!("waiting for {program}: {error}");
                true
            }
        },
        _ = sleep_until(until) => {
            warn!("{program} still runs at the release deadline; stopped");
            false
        }
    }
}

/// Waits until none of `ports` listens and no connection on them is open.
async fn wait_closed(ports: &[u16], until: Instant) -> Drained {
    let proc_net = Path::new(kernel::PROC_NET);
    loop {
        match kernel::read_sockets(proc_net) {
            Ok(sockets) => {
                let (listening, open) = serving(&sockets, ports);
                if !listening && open == 0 {
                    return Drained::Closed;
                }
            }
            Err(error) => {
                warn!("cannot read the socket table ({error}); not waiting for the listeners");
                return Drained::Failed;
            }
        }
        if Instant::now() >= until {
            return Drained::OutOfTime;
        }
        tokio::select! {
            _ = sleep(POLL) => {}
            _ = sleep_until(until) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_action_is_none() {
        assert_eq!(parse(Some("teleport:now"), "web"), DrainAction::None);
        assert_eq!(parse(Some("signal:SIGKILL"), "web"), DrainAction::None);
        assert_eq!(parse(Some("  "), "web"), DrainAction::None);
        assert_eq!(parse(None, "web"), DrainAction::None);
        assert_eq!(
            parse(Some("signal:quit"), "web"),
            DrainAction::Signal("SIGQUIT".into())
        );
    }

    #[tokio::test]
    async fn none_returns_at_once_and_a_failing_command_does_not_wait() {
        let until = Instant::now() + Duration::from_secs(30);
        assert_eq!(
            run(&DrainAction::None, "web", until).await,
            Drained::Nothing
        );
        let started = Instant::now();
        let missing = DrainAction::Exec(vec!["/nonexistent/drain".into()]);
        assert_eq!(run(&missing, "web", until).await, Drained::Failed);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_command_past_the_deadline_is_stopped() {
        let until = Instant::now() + Duration::from_millis(300);
        let slow = DrainAction::Exec(vec!["sleep".into(), "30".into()]);
        let started = Instant::now();
        assert_eq!(run(&slow, "web", until).await, Drained::Failed);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
