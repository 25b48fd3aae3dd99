//! The mutating admission webhook that injects the preStop sidecar.
//!
//! Pure parts: [`policy`] (the ShutdownPolicy seam), [`decide`] (opt-in and workload
//! resolution), [`patch`] (the JSONPatch builder), [`admission`] (AdmissionReview in →
//! AdmissionReview out). I/O parts: [`cache`] (metadata reflectors), [`server`] (axum over
//! rustls, events, metrics endpoints).

pub mod admission;
pub mod cache;
pub mod decide;
#[doc(hidden)]
pub mod fuzzing;
pub mod patch;
pub mod policy;
pub mod server;

pub use admission::{AdmissionOutcome, Admitter};
pub use patch::InjectionConfig;
pub use policy::{NoPolicies, PolicyLookup};
