//! Each hooked container's drain action (`LAMEDUCK_DRAIN_ACTION`): the pod's
//! `lameduck.dev/drain` annotation (copied from the pod template), else the
//! ShutdownPolicy's `spec.drain.action`, else none. Pure.
//!
//! A value that cannot be read never blocks the pod: the pod is injected without any drain
//! action (the hook's behaviour before drain actions existed) and the admission answer
//! warns, saying why.

use std::collections::BTreeMap;

use lameduck_proto::{DrainAction, DrainActions, names};

/// The drain actions of a pod's hooked containers and what to warn about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvedActions {
    /// The action per hooked container; a container without one is absent.
    pub per_container: BTreeMap<String, DrainAction>,
    /// Warnings for the admission answer (without the `lameduck: ` prefix).
    pub warnings: Vec<String>,
}

/// Resolves the drain action of each of `hooked` (the containers that get the preStop
/// hook) from the annotation's value and the policy's default; `all` are the names of
/// every container of the pod, to tell a misspelt name from a container left alone.
pub fn resolve(
    annotation: Option<&str>,
    policy_default: Option<&DrainActions>,
    hooked: &[String],
    all: &[&str],
) -> ResolvedActions {
    let mut warnings = Vec::new();
    let annotated = match annotation.map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(value) => match value.parse::<DrainActions>() {
            Ok(actions) => Some(actions),
            Err(error) => {
                warnings.push(format!(
                    "{} ignored, no container gets a drain action: {error}",
                    names::ANNOTATION_DRAIN
                ));
                return ResolvedActions {
                    per_container: BTreeMap::new(),
                    warnings,
                };
            }
        },
    };
    if let Some(annotated) = &annotated {
        let unknown: Vec<&str> = annotated
            .per_container
            .keys()
            .map(String::as_str)
            .filter(|name| !all.contains(name))
            .collect();
        if !unknown.is_empty() {
            warnings.push(format!(
                "{} names unknown containers: {}",
                names::ANNOTATION_DRAIN,
                unknown.join(",")
            ));
        }
        let unhooked: Vec<&str> = annotated
            .per_container
            .keys()
            .map(String::as_str)
            .filter(|name| all.contains(name) && !hooked.iter().any(|h| h == name))
            .collect();
        if !unhooked.is_empty() {
            warnings.push(format!(
                "{} names containers without the lameduck preStop hook, whose action is not run: {}",
                names::ANNOTATION_DRAIN,
                unhooked.join(",")
            ));
        }
    }
    let per_container = hooked
        .iter()
        .filter_map(|name| {
            let action = annotated
                .as_ref()
                .and_then(|a| a.for_container(name))
                .or_else(|| policy_default.and_then(|p| p.for_container(name)))?;
            Some((name.clone(), action.clone()))
        })
        .collect();
    ResolvedActions {
        per_container,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooked() -> Vec<String> {
        vec!["web".into(), "api".into()]
    }

    const ALL: [&str; 3] = ["web", "api", "envoy"];

    fn signal(name: &str) -> DrainAction {
        DrainAction::Signal(name.into())
    }

    #[test]
    fn one_action_for_every_hooked_container() {
        let resolved = resolve(Some("signal:SIGQUIT"), None, &hooked(), &ALL);
        assert_eq!(resolved.warnings, Vec::<String>::new());
        assert_eq!(
            resolved.per_container,
            BTreeMap::from([
                ("api".into(), signal("SIGQUIT")),
                ("web".into(), signal("SIGQUIT"))
            ])
        );
    }

    #[test]
    fn the_annotation_wins_per_container_and_the_policy_fills_in() {
        let policy: DrainActions = "signal:SIGTERM".parse().unwrap();
        let resolved = resolve(
            Some("web=exec:nginx -s quit"),
            Some(&policy),
            &hooked(),
            &ALL,
        );
        assert_eq!(resolved.warnings, Vec::<String>::new());
        assert_eq!(
            resolved.per_container,
            BTreeMap::from([
                ("api".into(), signal("SIGTERM")),
                (
                    "web".into(),
                    DrainAction::Exec(vec!["nginx".into(), "-s".into(), "quit".into()])
                )
            ])
        );
        // Without an annotation, the policy's default alone; without either, nothing.
        let resolved = resolve(None, Some(&policy), &hooked(), &ALL);
        assert_eq!(resolved.per_container.len(), 2);
        assert_eq!(
            resolve(Some("  "), None, &hooked(), &ALL),
            Default::default()
        );
    }

    #[test]
    fn a_bad_value_warns_and_leaves_every_container_without_an_action() {
        let policy: DrainActions = "signal:SIGTERM".parse().unwrap();
        for bad in [
            "signal:SIGKILL",
            "sleep 5",
            "web=http:0/drain",
            "web=none;web=none",
        ] {
            let resolved = resolve(Some(bad), Some(&policy), &hooked(), &ALL);
            assert!(resolved.per_container.is_empty(), "{bad}");
            assert_eq!(resolved.warnings.len(), 1, "{bad}");
            assert!(
                resolved.warnings[0].starts_with("lameduck.dev/drain ignored"),
                "{bad}: {:?}",
                resolved.warnings
            );
        }
    }

    #[test]
    fn names_that_are_not_hooked_containers_are_pointed_out() {
        let resolved = resolve(
            Some("web=none;envoy=signal:SIGTERM;ghost=none"),
            None,
            &hooked(),
            &ALL,
        );
        assert_eq!(
            resolved.per_container,
            BTreeMap::from([("web".into(), DrainAction::None)])
        );
        assert_eq!(resolved.warnings.len(), 2, "{:?}", resolved.warnings);
        assert!(resolved.warnings[0].ends_with("unknown containers: ghost"));
        assert!(resolved.warnings[1].ends_with("not run: envoy"));
    }
}
