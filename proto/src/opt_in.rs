//! Which pods get the sidecar: the precedence of the opt-in settings. The webhook decides
//! for each new pod with it, and the operator with the same rule which workloads get a
//! ShutdownPolicy, so that every injected workload has a policy and no other does.

use crate::names;

/// The setting that opted a pod in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OptIn {
    /// The pod's (or its pod template's) `lameduck.dev/inject` annotation.
    Pod,
    /// The owning workload's `lameduck.dev/inject` annotation.
    Workload,
    /// The namespace label `lameduck.dev/inject=enabled`.
    Namespace,
}

/// The outcome of the opt-in precedence for one pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InjectChoice {
    /// Inject; the setting says why.
    Inject(OptIn),
    /// The pod or its workload says `lameduck.dev/inject: "false"`.
    OptedOut,
    /// Nothing asks for injection.
    NotOptedIn,
}

impl InjectChoice {
    /// Whether the pod gets the sidecar.
    pub fn injects(self) -> bool {
        matches!(self, InjectChoice::Inject(_))
    }
}

/// The value of a `lameduck.dev/inject` annotation: `"true"` or `"false"`, case and
/// surrounding blanks ignored; anything else says nothing.
pub fn inject_annotation(value: Option<&str>) -> Option<bool> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("true") => Some(true),
        Some("false") => Some(false),
        _ => None,
    }
}

/// Whether the value of a namespace's `lameduck.dev/inject` label enables injection.
pub fn namespace_label_enables(value: Option<&str>) -> bool {
    value == Some(names::NAMESPACE_INJECT_ENABLED)
}

/// The precedence: first match wins — the pod's `lameduck.dev/inject` annotation
/// (`pod`), then its workload's (`workload`), then the namespace label (`namespace_enabled`,
/// see [`namespace_label_enables`]). A `"false"` annotation opts out even in an enabled
/// namespace.
pub fn choose(pod: Option<&str>, workload: Option<&str>, namespace_enabled: bool) -> InjectChoice {
    let annotated = [(pod, OptIn::Pod), (workload, OptIn::Workload)]
        .into_iter()
        .find_map(|(value, why)| inject_annotation(value).map(|inject| (inject, why)));
    match annotated {
        Some((true, why)) => InjectChoice::Inject(why),
        Some((false, _)) => InjectChoice::OptedOut,
        None if namespace_enabled => InjectChoice::Inject(OptIn::Namespace),
        None => InjectChoice::NotOptedIn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_setting_that_says_something_wins() {
        use InjectChoice::*;
        for (pod, workload, namespace, want) in [
            (Some("true"), Some("false"), false, Inject(OptIn::Pod)),
            (Some("false"), Some("true"), true, OptedOut),
            (None, Some(" TRUE "), false, Inject(OptIn::Workload)),
            (Some("maybe"), Some("false"), true, OptedOut),
            (None, None, true, Inject(OptIn::Namespace)),
            (Some(""), None, false, NotOptedIn),
        ] {
            assert_eq!(
                choose(pod, workload, namespace),
                want,
                "{pod:?} {workload:?}"
            );
        }
        assert!(namespace_label_enables(Some("enabled")));
        assert!(!namespace_label_enables(Some("true")));
    }
}
