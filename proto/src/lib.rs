//! Wire formats of lameduck: the app ↔ sidecar messages, the preStop control messages,
//! the termination report and the names (annotations, labels, environment variables,
//! paths) that the operator, the sidecar and the SDKs must agree on.
//!
//! This crate does no I/O: it is serde types, a sans-io line codec and constants.
//! `docs/protocol.md` is the normative description of the same formats.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codec;
pub mod control;
pub mod message;
pub mod names;
pub mod report;
pub mod timing;

pub use codec::{CodecError, LineDecoder, MAX_LINE_BYTES, decode_line, encode_line};
pub use control::{ControlReply, ControlRequest};
pub use message::{AppMessage, PROTOCOL_VERSION, SidecarMessage};
pub use report::{
    AppReport, ERROR_MAX_CHARS, Outcome, POD_TERMINATION_MESSAGES_MAX_BYTES, PhasesMs,
    REPORT_MAX_BYTES, REPORT_MIN_BYTES, REPORT_VERSION, RestartReport, TerminationReport,
    report_budget, truncate_chars,
};
