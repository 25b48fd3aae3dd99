//! From an AdmissionReview body to the AdmissionReview answer: decode, decide, build the
//! patch. No I/O; the server wraps it ([`super::server`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use lameduck_proto::names;

use super::decide::{Decision, MetadataIndex, decide};
use super::patch::{InjectionConfig, InjectionPlan, PatchOutcome, build_patch};
use super::policy::{PolicyLookup, WorkloadRef};

/// How one admission request ended; the label of the `outcome` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AdmissionOutcome {
    /// The pod got the sidecar.
    Injected,
    /// The pod already had the sidecar (reinvocation).
    AlreadyInjected,
    /// Nothing opted the pod in.
    NotOptedIn,
    /// The pod or its workload opted out.
    OptedOut,
    /// Opted in, but injection is impossible (e.g. a conflicting volume name).
    NotApplicable,
    /// Not a pod CREATE: answered "allowed" without looking.
    Ignored,
    /// Internal trouble: answered "allowed" without a patch.
    Error,
}

impl AdmissionOutcome {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionOutcome::Injected => "injected",
            AdmissionOutcome::AlreadyInjected => "already_injected",
            AdmissionOutcome::NotOptedIn => "not_opted_in",
            AdmissionOutcome::OptedOut => "opted_out",
            AdmissionOutcome::NotApplicable => "not_applicable",
            AdmissionOutcome::Ignored => "ignored",
            AdmissionOutcome::Error => "error",
        }
    }
}

/// A body that is not an AdmissionReview with a request: answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
pub enum InvalidReview {
    /// The body is not a JSON AdmissionReview.
    #[error("malformed AdmissionReview: {0}")]
    Json(#[source] serde_json::Error),
    /// The AdmissionReview carries no `request`.
    #[error("malformed AdmissionReview: it has no request")]
    NoRequest,
}

/// Something about an admitted pod worth a Warning Event on its workload: the server sends
/// it off the admission path. The admission warnings reach whoever created the pod, which
/// for a workload's pods is its controller, not a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadNotice {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name, or its generateName prefix.
    pub pod: String,
    /// The workload the Event is about.
    pub workload: WorkloadRef,
    /// The workload's UID, when the cache knows it.
    pub workload_uid: Option<String>,
    /// What is wrong.
    pub problem: Problem,
}

/// What a [`WorkloadNotice`] is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Selected containers left alone because they already had a preStop hook.
    PreStopHookExists {
        /// The skipped containers.
        containers: Vec<String>,
    },
    /// The pod's `lameduck.dev/drain` annotation cannot be read (the pod got no drain
    /// action) or names containers it cannot act on.
    DrainAnnotation {
        /// What the admission answer warned, without the `lameduck: ` prefix.
        warnings: Vec<String>,
    },
}

/// The answer to one AdmissionReview.
#[derive(Debug)]
pub struct Reviewed {
    /// The AdmissionReview to send back.
    pub review: AdmissionReview<DynamicObject>,
    /// How it ended.
    pub outcome: AdmissionOutcome,
    /// What is worth an Event on the workload.
    pub notices: Vec<WorkloadNotice>,
}

/// The admission logic with its read-only inputs.
#[derive(Clone)]
pub struct Admitter {
    /// Operator-wide injection settings.
    pub config: Arc<InjectionConfig>,
    /// ShutdownPolicy lookup (the grace-period seam).
    pub policies: Arc<dyn PolicyLookup>,
    /// Metadata caches for the opt-in decision.
    pub index: Arc<dyn MetadataIndex>,
}

impl Admitter {
    /// Decodes `body` and answers it. Only an undecodable body is an error.
    pub fn review(&self, body: &[u8]) -> Result<Reviewed, InvalidReview> {
        // The common case, a pod CREATE, decodes straight into a typed Pod: one pass over
        // the body instead of three (generic value, then its re-encoding into a Pod).
        // Anything else (other kinds, pods that do not decode) takes the generic path,
        // which tells the cases apart.
        if let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(body)
            && let Ok(request) = TryInto::<AdmissionRequest<Pod>>::try_into(review)
            && is_pod_create(&request)
            && let Some(pod) = request.object.as_ref()
        {
            let (response, outcome, notices) = self.admit_pod(&request, pod);
            return Ok(Reviewed {
                review: response.into_review(),
                outcome,
                notices,
            });
        }
        let review: AdmissionReview<DynamicObject> =
            serde_json::from_slice(body).map_err(InvalidReview::Json)?;
        let request: AdmissionRequest<DynamicObject> =
            review.try_into().map_err(|_| InvalidReview::NoRequest)?;
        let (response, outcome, notices) = self.admit(&request);
        Ok(Reviewed {
            review: response.into_review(),
            outcome,
            notices,
        })
    }

    /// Answers one request. Always "allowed": at worst without a patch.
    pub fn admit(
        &self,
        request: &AdmissionRequest<DynamicObject>,
    ) -> (AdmissionResponse, AdmissionOutcome, Vec<WorkloadNotice>) {
        if !is_pod_create(request) {
            return (
                AdmissionResponse::from(request),
                AdmissionOutcome::Ignored,
                Vec::new(),
            );
        }
        let pod = match request.object.as_ref().map(pod_from_dynamic) {
            Some(Ok(pod)) => pod,
            Some(Err(error)) => {
                tracing::warn!(uid = %request.uid, %error, "pod in AdmissionReview does not decode; admitted without injection");
                return (
                    AdmissionResponse::from(request),
                    AdmissionOutcome::Error,
                    Vec::new(),
                );
            }
            None => {
                tracing::warn!(uid = %request.uid, "pod CREATE without object; admitted without injection");
                return (
                    AdmissionResponse::from(request),
                    AdmissionOutcome::Error,
                    Vec::new(),
                );
            }
        };
        self.admit_pod(request, &pod)
    }

    /// Answers a pod CREATE whose pod decoded.
    fn admit_pod<T: kube::Resource>(
        &self,
        request: &AdmissionRequest<T>,
        pod: &Pod,
    ) -> (AdmissionResponse, AdmissionOutcome, Vec<WorkloadNotice>) {
        let response = AdmissionResponse::from(request);
        // The API server always sends a name or a generateName; without either the
        // object may lack `metadata` entirely, where the patch's `add /metadata/labels`
        // would not apply. Such a pod cannot be created anyway: leave it alone.
        let named = |n: &Option<String>| n.as_deref().is_some_and(|n| !n.is_empty());
        if !named(&pod.metadata.name) && !named(&pod.metadata.generate_name) {
            return (response, AdmissionOutcome::NotApplicable, Vec::new());
        }
        let namespace = request
            .namespace
            .as_deref()
            .or(pod.metadata.namespace.as_deref())
            .unwrap_or("default");

        let (workload, workload_uid) = match decide(&pod.metadata, namespace, self.index.as_ref()) {
            Decision::Inject {
                workload,
                workload_uid,
                ..
            } => (workload, workload_uid),
            Decision::OptedOut => return (response, AdmissionOutcome::OptedOut, Vec::new()),
            Decision::NotOptedIn => return (response, AdmissionOutcome::NotOptedIn, Vec::new()),
        };
        let policy = self
            .policies
            .lookup(namespace, &workload, workload_uid.as_deref());
        let policy_name = match &policy {
            Some(p) => p.policy_name.clone(),
            None => workload.policy_name(),
        };
        let plan = InjectionPlan {
            config: &self.config,
            policy_name: &policy_name,
            drain: policy
                .as_ref()
                .and_then(|p| p.drain.as_ref())
                .unwrap_or(&self.config.default_drain),
            grace_override: policy.as_ref().and_then(|p| p.grace_override()),
            drain_actions: policy.as_ref().and_then(|p| p.drain_actions.as_ref()),
        };
        let injection = match build_patch(pod, &plan) {
            PatchOutcome::Injected(injection) => injection,
            PatchOutcome::AlreadyInjected => {
                return (response, AdmissionOutcome::AlreadyInjected, Vec::new());
            }
            PatchOutcome::NotApplicable(reason) => {
                tracing::info!(%namespace, %workload, %reason, "opted-in pod not injected");
                let response =
                    with_warnings(response, vec![format!("lameduck: not injected: {reason}")]);
                return (response, AdmissionOutcome::NotApplicable, Vec::new());
            }
        };

        let mut warnings = Vec::new();
        if let Some(error) = policy.as_ref().and_then(|p| p.drain_action_error.as_ref()) {
            warnings.push(format!(
                "lameduck: ShutdownPolicy {policy_name}: spec.drain.action ignored: {error}"
            ));
        }
        warnings.extend(injection.warnings.iter().map(|w| format!("lameduck: {w}")));
        if !injection.unknown.is_empty() {
            warnings.push(format!(
                "lameduck: {} names unknown containers: {}",
                names::ANNOTATION_CONTAINERS,
                injection.unknown.join(",")
            ));
        }
        let mut problems = Vec::new();
        if !injection.skipped.is_empty() {
            warnings.push(format!(
                "lameduck: containers with their own preStop hook left alone: {}",
                injection.skipped.join(",")
            ));
            problems.push(Problem::PreStopHookExists {
                containers: injection.skipped.clone(),
            });
        }
        if !injection.warnings.is_empty() {
            problems.push(Problem::DrainAnnotation {
                warnings: injection.warnings.clone(),
            });
        }
        let notices = problems
            .into_iter()
            .map(|problem| WorkloadNotice {
                namespace: namespace.to_owned(),
                pod: workload_pod_name(pod),
                workload: workload.clone(),
                workload_uid: workload_uid.clone(),
                problem,
            })
            .collect();
        match response.clone().with_patch(injection.patch) {
            Ok(patched) => (
                with_warnings(patched, warnings),
                AdmissionOutcome::Injected,
                notices,
            ),
            Err(error) => {
                tracing::warn!(%namespace, %workload, %error, "patch does not serialize; admitted without injection");
                (response, AdmissionOutcome::Error, Vec::new())
            }
        }
    }
}

/// A CREATE of a core/v1 Pod (not of a subresource): the only request that is looked at.
fn is_pod_create<T: kube::Resource>(request: &AdmissionRequest<T>) -> bool {
    request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.operation == Operation::Create
        && request.sub_resource.is_none()
}

fn with_warnings(mut response: AdmissionResponse, warnings: Vec<String>) -> AdmissionResponse {
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    response
}

fn workload_pod_name(pod: &Pod) -> String {
    pod.metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default()
}

/// Re-reads the generic object as a typed Pod.
pub fn pod_from_dynamic(object: &DynamicObject) -> Result<Pod, serde_json::Error> {
    serde_json::to_value(object).and_then(serde_json::from_value)
}
