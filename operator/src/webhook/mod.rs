//! The mutating admission webhook that injects the preStop sidecar.
//!
//! Pure parts: [`policy`] (the ShutdownPolicy seam), [`decide`] (opt-in and workload
//! resolution), [`patch`] (the JSONPatch builder) with [`traffic`] (ports and probes for
//! the sidecar) and [`drain_action`] (each container's drain action), [`admission`]
//! (AdmissionReview in → AdmissionReview out). I/O part: [`server`] (axum over rustls,
//! events, metrics endpoints). The stores the decision reads are the replica's watches
//! ([`crate::watches`]), shared with the controller.

pub mod admission;
pub mod decide;
pub mod drain_action;
#[doc(hidden)]
pub mod fuzzing;
pub mod patch;
pub mod policy;
pub mod server;
pub mod traffic;

pub use admission::{AdmissionOutcome, Admitter};
pub use patch::InjectionConfig;
pub use policy::{NoPolicies, PolicyLookup};
