//! Messages on the control socket, between the sidecar and its own clients
//! (`lameduck prestop` and `lameduck probe`). Same framing as the application socket.

use serde::{Deserialize, Serialize};

use crate::report::Outcome;

/// A request from a preStop hook or the startup probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The kubelet runs the preStop hook of `container`: start (or join) the shutdown
    /// sequence and answer `release` when that container may receive SIGTERM.
    Prestop {
        /// The app container whose hook is running.
        container: String,
        /// A grace period shorter than the pod's that can apply to this container: the
        /// `terminationGracePeriodSeconds` of its liveness or startup probe, which the
        /// kubelet uses when the probe kills it. The container's shutdown plans with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_seconds: Option<u64>,
    },
    /// Startup probe: answered with `ready` once the sidecar serves both sockets.
    Probe {},
    /// A request type this version does not know; answered by closing the connection.
    #[serde(other)]
    Unknown,
}

/// A reply from the sidecar on the control socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlReply {
    /// The sidecar serves; answer to `probe`.
    Ready {},
    /// The shutdown sequence runs; `release` will come by `release_by_unix_ms` at the latest,
    /// so a client may stop waiting on its own after that moment.
    Accepted {
        /// Wall-clock time (Unix milliseconds) of the hard deadline of this hook.
        release_by_unix_ms: u64,
        /// Wall-clock time (Unix milliseconds) by which the deregister phase ends at the
        /// latest. A client that loses the sidecar keeps the container until then (traffic
        /// may still be routed to the pod), reconnecting meanwhile. Absent from sidecars
        /// that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deregister_end_unix_ms: Option<u64>,
    },
    /// The container may be stopped now.
    Release {
        /// How the container's applications finished.
        outcome: Outcome,
    },
    /// A reply type this version does not know; ignored.
    #[serde(other)]
    Unknown,
}
