//! The lameduck operator: the mutating webhook that injects the preStop sidecar, the
//! ShutdownPolicy controller that records observed shutdowns, and the grace-period
//! recommender.
//!
//! The webhook side is [`webhook`], [`certs`] and [`inject`]; the policy side is [`api`],
//! [`recommend`], [`observe`] and [`controller`]; [`runtime`] runs both. What the operator
//! shares with the sidecar and the SDKs (names, drain settings, the environment contract,
//! the opt-in precedence) is in `lameduck-proto`.

pub mod api;
pub mod certs;
pub mod cleanup;
pub mod cli;
pub mod client_metrics;
pub mod controller;
pub mod inject;
pub mod metrics;
pub mod observe;
pub mod recommend;
pub mod runtime;
pub mod watches;
pub mod webhook;
