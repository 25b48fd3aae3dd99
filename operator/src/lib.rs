//! The lameduck operator: the mutating webhook that injects the preStop sidecar, the
//! ShutdownPolicy controller that records observed shutdowns, and the grace-period
//! recommender.

// Module list: the webhook side (webhook/, certs.rs, inject) and the policy side
// (api.rs, recommend/, observe.rs, controller/) are added by their own changes.

pub mod api;
pub mod certs;
pub mod cleanup;
pub mod cli;
pub mod controller;
pub mod inject;
pub mod metrics;
pub mod observe;
pub mod recommend;
pub mod runtime;
pub mod watches;
pub mod webhook;
