//! Wire formats of lameduck: the app ↔ sidecar messages, the preStop control messages,
//! the termination report and the names (annotations, labels, environment variables,
//! paths) that the operator, the sidecar and the SDKs must agree on, and the settings they
//! share: the drain mode and defaults ([`drain`]), the environment the operator writes and
//! the sidecar reads ([`env`]), the opt-in precedence ([`opt_in`]) and the log format.
//!
//! This crate does no I/O: it is serde types, a sans-io line codec, constants and pure
//! functions. Features: `schema` derives `schemars::JsonSchema` for what the
//! ShutdownPolicy CRD embeds, `cli` derives `clap::ValueEnum` for what flags take; both are
//! off by default so that the SDKs do not pull schemars or clap.
//! `docs/protocol.md` is the normative description of the same formats.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod action;
pub mod codec;
pub mod control;
pub mod drain;
pub mod env;
pub mod log;
pub mod message;
pub mod names;
pub mod opt_in;
pub mod report;
pub mod timing;
pub mod traffic;

pub use action::{BadDrainAction, DrainAction, DrainActions};
pub use codec::{CodecError, LineDecoder, MAX_LINE_BYTES, decode_line, encode_line};
pub use control::{ControlReply, ControlRequest};
pub use drain::{DRAIN_DEFAULTS, DrainDefaults, DrainMode, DrainSettings, HttpDrain};
pub use env::{AppEnv, EnvError, SidecarEnv};
pub use log::LogFormat;
pub use message::{AppMessage, PROTOCOL_VERSION, SidecarMessage};
pub use report::{
    AppReport, ERROR_MAX_CHARS, Outcome, POD_TERMINATION_MESSAGES_MAX_BYTES, PhasesMs,
    PortConnections, REPORT_MAX_BYTES, REPORT_MIN_BYTES, REPORT_VERSION, RestartReport,
    TerminationReport, report_budget, truncate_chars,
};
pub use traffic::{ContainerPorts, ProbePort};

/// The README's examples, compiled as doctests so that what it shows keeps working.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
