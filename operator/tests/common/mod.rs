//! Shared test helpers: a map-backed metadata index and a structural Pod validator.
#![allow(dead_code)]

#[cfg(feature = "cluster-tests")]
pub mod cluster;

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::Pod;
use lameduck_operator::webhook::decide::{MetaSummary, MetadataIndex};
use lameduck_proto::names;

/// A metadata index built from literals.
#[derive(Default)]
pub struct MapIndex {
    pub workloads: HashMap<(String, String, String), MetaSummary>,
    pub namespaces: HashMap<String, String>,
}

impl MapIndex {
    pub fn with_workload(
        mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        inject: Option<&str>,
        controller: Option<(&str, &str)>,
    ) -> Self {
        self.workloads.insert(
            (kind.into(), namespace.into(), name.into()),
            MetaSummary {
                inject: inject.map(Into::into),
                controller: controller.map(|(k, n)| (k.into(), n.into())),
                uid: Some(format!("uid-{}", name)),
            },
        );
        self
    }

    pub fn with_namespace_label(mut self, namespace: &str, value: &str) -> Self {
        self.namespaces.insert(namespace.into(), value.into());
        self
    }
}

impl MetadataIndex for MapIndex {
    fn workload(&self, kind: &str, namespace: &str, name: &str) -> Option<MetaSummary> {
        self.workloads
            .get(&(kind.into(), namespace.into(), name.into()))
            .cloned()
    }
    fn namespace_label(&self, namespace: &str) -> Option<String> {
        self.namespaces.get(namespace).cloned()
    }
}

/// The checks the API server's validation would make on what the patch touches, plus
/// lameduck's own invariants for an injected pod.
pub fn validate_injected_pod(pod: &Pod) -> Result<(), String> {
    let spec = pod.spec.as_ref().ok_or("no spec")?;
    let volumes: HashSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let mut seen = HashSet::new();
    let init = spec.init_containers.as_deref().unwrap_or_default();
    for c in init.iter().chain(&spec.containers) {
        if !seen.insert(c.name.as_str()) {
            return Err(format!("duplicate container name {}", c.name));
        }
        let mut paths = HashSet::new();
        for m in c.volume_mounts.iter().flatten() {
            if !volumes.contains(m.name.as_str()) {
                return Err(format!("{}: mount of unknown volume {}", c.name, m.name));
            }
            if !paths.insert(m.mount_path.as_str()) {
                return Err(format!("{}: duplicate mount path {}", c.name, m.mount_path));
            }
        }
        let mut env = HashSet::new();
        for e in c.env.iter().flatten() {
            if !env.insert(e.name.as_str()) {
                return Err(format!("{}: duplicate env var {}", c.name, e.name));
            }
        }
    }
    let sidecar = init.first().ok_or("no init containers")?;
    if sidecar.name != names::SIDECAR_CONTAINER_NAME {
        return Err("the sidecar is not the first init container".into());
    }
    if sidecar.restart_policy.as_deref() != Some("Always") {
        return Err("the sidecar is not a native sidecar".into());
    }
    let sc = sidecar
        .security_context
        .as_ref()
        .ok_or("sidecar without securityContext")?;
    let restricted = sc.run_as_non_root == Some(true)
        && sc.allow_privilege_escalation == Some(false)
        && sc.read_only_root_filesystem == Some(true)
        && sc
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "RuntimeDefault")
        && sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.as_ref())
            .is_some_and(|d| d.iter().any(|c| c == "ALL"));
    if !restricted {
        return Err("sidecar securityContext does not meet the restricted profile".into());
    }
    if !volumes.contains(names::VOLUME_NAME) {
        return Err("no lameduck volume".into());
    }
    let labels = pod.metadata.labels.as_ref().ok_or("no labels")?;
    if labels.get(names::LABEL_INJECTED).map(String::as_str) != Some("true") {
        return Err("no injected label".into());
    }
    Ok(())
}
