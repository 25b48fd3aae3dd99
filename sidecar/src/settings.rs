//! The sidecar's settings and the timing rules derived from them.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use lameduck_proto::{ContainerPorts, ProbePort, names};

/// How the deregister phase ends: one definition for the operator, the sidecar and the
/// ShutdownPolicy spec.
pub use lameduck_proto::DrainMode;

/// Everything `serve` needs, resolved from flags and environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shared directory (binary in `bin/`, sockets in `run/`).
    pub dir: PathBuf,
    /// Termination message path.
    pub termination_log: PathBuf,
    /// The pod's grace period G.
    pub grace: Duration,
    /// Deregister mode.
    pub drain_mode: DrainMode,
    /// Fixed deregister delay.
    pub delay: Duration,
    /// Shortest adaptive deregister phase.
    pub min_delay: Duration,
    /// Quiet period that ends the adaptive phase.
    pub quiet_period: Duration,
    /// Longest adaptive deregister phase.
    pub max_delay: Duration,
    /// Requested reserve before the grace deadline.
    pub exit_reserve: Duration,
    /// HTTP drain port (mode http).
    pub http_drain_port: Option<u16>,
    /// HTTP drain path (mode http).
    pub http_drain_path: String,
    /// Time the deregister phase leaves for drain and cleanup, when learned.
    pub drain_budget: Option<Duration>,
    /// Bytes of termination message the kubelet keeps for this container.
    pub report_max_bytes: usize,
    /// Copy the binary to `bin/` at start.
    pub install: bool,
    /// The TCP ports each container declares: the kernel view watches them.
    pub ports: Vec<ContainerPorts>,
    /// The kubelet's probes that connect to the pod: not traffic.
    pub probes: Vec<ProbePort>,
    /// The node's address, the probes' source (downward API `status.hostIP`).
    pub host_ip: Option<IpAddr>,
}

impl Settings {
    /// Time from T0 to the moment every preStop hook must have returned: `G − reserve`,
    /// with the reserve capped at half of G so that short grace periods still leave time
    /// for the shutdown itself.
    #[cfg(test)]
    pub fn release_budget(&self) -> Duration {
        self.release_budget_within(self.grace)
    }

    /// The release budget for a container whose hook may be cut at `grace` (at most the
    /// pod's grace period).
    pub fn release_budget_within(&self, grace: Duration) -> Duration {
        let grace = grace.min(self.grace);
        grace.saturating_sub(self.exit_reserve.min(grace / 2))
    }

    /// Path of the application socket.
    pub fn app_socket(&self) -> PathBuf {
        run_dir(&self.dir).join(names::APP_SOCKET)
    }

    /// Path of the control socket.
    pub fn control_socket(&self) -> PathBuf {
        run_dir(&self.dir).join(names::CONTROL_SOCKET)
    }

    /// The ports `container` declares.
    pub fn ports_of(&self, container: &str) -> Vec<u16> {
        self.ports
            .iter()
            .filter(|c| c.container == container)
            .flat_map(|c| c.ports.iter().copied())
            .collect()
    }

    /// Path of the file that keeps the shutdowns in progress across a sidecar restart.
    pub fn state_file(&self) -> PathBuf {
        run_dir(&self.dir).join(names::STATE_FILE)
    }
}

/// The directory holding the sockets.
pub fn run_dir(dir: &std::path::Path) -> PathBuf {
    dir.join(names::RUN_DIR)
}

#[cfg(test)]
pub(crate) fn test_settings() -> Settings {
    use lameduck_proto::DRAIN_DEFAULTS;
    Settings {
        dir: PathBuf::from("/nonexistent"),
        termination_log: PathBuf::from("/nonexistent/log"),
        grace: Duration::from_secs(30),
        drain_mode: DRAIN_DEFAULTS.mode,
        delay: DRAIN_DEFAULTS.delay,
        min_delay: DRAIN_DEFAULTS.min_delay,
        quiet_period: DRAIN_DEFAULTS.quiet_period,
        max_delay: DRAIN_DEFAULTS.max_delay,
        exit_reserve: Duration::from_secs(2),
        http_drain_port: None,
        http_drain_path: DRAIN_DEFAULTS.http_path.into(),
        drain_budget: None,
        report_max_bytes: lameduck_proto::REPORT_MAX_BYTES,
        install: false,
        ports: Vec::new(),
        probes: Vec::new(),
        host_ip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_capped_at_half_the_grace_period() {
        let mut settings = test_settings();
        assert_eq!(settings.release_budget(), Duration::from_secs(28));
        settings.grace = Duration::from_secs(2);
        assert_eq!(settings.release_budget(), Duration::from_secs(1));
        settings.grace = Duration::ZERO;
        assert_eq!(settings.release_budget(), Duration::ZERO);
    }
}
