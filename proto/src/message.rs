//! Messages exchanged over the application socket (`LAMEDUCK_SOCKET`).
//!
//! Every message is one JSON object on one line with a `"type"` field. Unknown fields are
//! ignored and unknown types decode to `Unknown`, so that either side can grow new messages
//! without breaking the other.

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks, sent in `hello` and `welcome`.
///
/// It changes only for incompatible changes; new fields and new message types do not bump it.
pub const PROTOCOL_VERSION: u32 = 1;

/// A message from an application process to the sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AppMessage {
    /// First message of every connection: who is speaking.
    Hello {
        /// Protocol version, [`PROTOCOL_VERSION`].
        v: u32,
        /// The container the process runs in (`LAMEDUCK_CONTAINER`).
        container: String,
        /// The process id, for logs and the report.
        pid: u32,
    },
    /// Connection counters, sent on change and at most every 100 ms while deregistering.
    Activity {
        /// Connections (or requests, for HTTP/1 keep-alive aware apps) accepted since start.
        accepted_total: u64,
        /// Requests in flight right now.
        inflight: u64,
    },
    /// The application stopped accepting and its in-flight requests finished.
    Drained {
        /// How many requests were in flight when `drain` arrived.
        inflight_at_start: u64,
    },
    /// Cleanup finished; the application may be stopped.
    Done {
        /// Whether every cleanup step succeeded.
        ok: bool,
        /// What failed, when `ok` is false.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A message type this version does not know; ignored.
    #[serde(other)]
    Unknown,
}

/// A message from the sidecar to an application process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SidecarMessage {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version, [`PROTOCOL_VERSION`].
        v: u32,
        /// The pod's grace period in seconds.
        grace_seconds: u64,
    },
    /// The container is being stopped (the pod deleted, or the container killed by a probe):
    /// keep serving, close idle connections, report activity.
    Deregister {
        /// Wall-clock time (Unix milliseconds) by which the deregister phase ends at the
        /// latest. An SDK that loses the sidecar keeps serving until then (§6). Absent from
        /// sidecars that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase_end_unix_ms: Option<u64>,
        /// Wall-clock deadline (Unix milliseconds) of the whole sequence, the same value
        /// `drain` will carry. Absent from sidecars that predate it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_unix_ms: Option<u64>,
    },
    /// Stop accepting, finish in-flight work, run cleanup, answer `drained` then `done`.
    Drain {
        /// Wall-clock deadline (Unix milliseconds) by which `done` must arrive.
        deadline_unix_ms: u64,
    },
    /// A message type this version does not know; ignored.
    #[serde(other)]
    Unknown,
}
