//! The pure patch builder: from a pod and the injection settings to the JSONPatch of the
//! injected pod (docs/architecture.md, "The pod after injection"). No I/O; the webhook and
//! `inject` both use it.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, ExecAction, ObjectFieldSelector, Pod, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use lameduck_proto::{
    AppEnv, ContainerPorts, DrainAction, DrainActions, ProbePort, SidecarEnv, names,
};
use serde_json::{Value, json};

use super::drain_action;
use super::policy::DrainSettings;
use super::traffic;

/// Kubernetes' default `terminationGracePeriodSeconds`.
// The sidecar assumes the same when it is not told; 30 always fits an i64.
pub const DEFAULT_GRACE_SECONDS: i64 = lameduck_proto::env::DEFAULT_GRACE_SECONDS as i64;
/// UID and GID the sidecar runs as (the distroless `nonroot` user).
pub const SIDECAR_UID: i64 = 65532;
/// `sizeLimit` of the shared emptyDir volume.
pub const VOLUME_SIZE_LIMIT: &str = "32Mi";

/// Operator-wide injection settings (from the command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectionConfig {
    /// Image of the sidecar; its binary is [`names::SIDECAR_IMAGE_BINARY`].
    pub sidecar_image: String,
    /// `imagePullPolicy` of the sidecar.
    pub image_pull_policy: String,
    /// Drain settings for pods whose workload has no ShutdownPolicy (or one without drain).
    pub default_drain: DrainSettings,
}

impl Default for InjectionConfig {
    fn default() -> Self {
        Self {
            sidecar_image: "lameduck-sidecar:dev".to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            // As the command line's defaults: a workload without a policy learns nothing.
            default_drain: DrainSettings::default().unlearned(),
        }
    }
}

/// Everything the builder needs besides the pod: resolved by the caller (webhook: from the
/// caches and the policy lookup; `inject`: from the document and the defaults).
#[derive(Clone, Copy, Debug)]
pub struct InjectionPlan<'a> {
    /// Operator-wide settings.
    pub config: &'a InjectionConfig,
    /// Value of the `lameduck.dev/policy` annotation.
    pub policy_name: &'a str,
    /// Drain settings for the sidecar.
    pub drain: &'a DrainSettings,
    /// Grace period imposed by the policy (`Initial` mode with a recommendation).
    pub grace_override: Option<i64>,
    /// The policy's default drain actions (`spec.drain.action`), for containers the
    /// `lameduck.dev/drain` annotation does not name.
    pub drain_actions: Option<&'a DrainActions>,
}

/// The result of planning an injection for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum PatchOutcome {
    /// The pod gets the patch.
    Injected(Injection),
    /// The pod already has the `lameduck` init container: nothing to do (reinvocation).
    AlreadyInjected,
    /// Injection is impossible or pointless for this pod; the reason says why.
    NotApplicable(String),
}

/// A planned injection.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    /// The JSONPatch to apply to the pod.
    pub patch: Patch,
    /// App containers that got the preStop hook.
    pub containers: Vec<String>,
    /// Selected containers left alone because they already had a preStop hook.
    pub skipped: Vec<String>,
    /// Names in `lameduck.dev/containers` that match no container.
    pub unknown: Vec<String>,
    /// The grace period the pod ends up with.
    pub grace_seconds: i64,
    /// Something about the pod's annotations worth a warning in the admission answer
    /// (a drain action that cannot be read, a name that matches no container).
    pub warnings: Vec<String>,
}

/// Plans the injection of the preStop sidecar into `pod`. Pure.
pub fn build_patch(pod: &Pod, plan: &InjectionPlan<'_>) -> PatchOutcome {
    let Some(spec) = pod.spec.as_ref() else {
        return PatchOutcome::NotApplicable("the pod has no spec".to_owned());
    };
    let init_containers = spec.init_containers.as_deref().unwrap_or_default();
    if init_containers
        .iter()
        .any(|c| c.name == names::SIDECAR_CONTAINER_NAME)
    {
        return PatchOutcome::AlreadyInjected;
    }
    if spec
        .containers
        .iter()
        .any(|c| c.name == names::SIDECAR_CONTAINER_NAME)
    {
        return PatchOutcome::NotApplicable(format!(
            "a container is already named {:?}",
            names::SIDECAR_CONTAINER_NAME
        ));
    }
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    if volumes.iter().any(|v| v.name == names::VOLUME_NAME) {
        return PatchOutcome::NotApplicable(format!(
            "a volume is already named {:?}",
            names::VOLUME_NAME
        ));
    }

    let annotations = pod.metadata.annotations.as_ref();
    let (selected, unknown) = select_containers(
        &spec.containers,
        annotations.and_then(|a| a.get(names::ANNOTATION_CONTAINERS)),
    );
    if selected.is_empty() {
        return PatchOutcome::NotApplicable(format!(
            "{} selects none of the pod's containers",
            names::ANNOTATION_CONTAINERS
        ));
    }
    if let Some(c) = selected.iter().map(|i| &spec.containers[*i]).find(|c| {
        c.volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == names::MOUNT_PATH)
    }) {
        return PatchOutcome::NotApplicable(format!(
            "container {:?} already mounts something at {}",
            c.name,
            names::MOUNT_PATH
        ));
    }

    let original_grace = spec
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_SECONDS);
    let grace_seconds = plan.grace_override.unwrap_or(original_grace);

    let mut ops = Vec::new();
    let mut containers = Vec::new();
    let mut skipped = Vec::new();

    // Metadata: label and annotations.
    let mut new_annotations = BTreeMap::new();
    new_annotations.insert(names::ANNOTATION_POLICY, plan.policy_name.to_owned());
    match plan.grace_override {
        Some(_) => {
            new_annotations.insert(names::ANNOTATION_GRACE_PERIOD_SOURCE, "recommended".into());
            new_annotations.insert(
                names::ANNOTATION_ORIGINAL_GRACE_PERIOD,
                original_grace.to_string(),
            );
        }
        None => {
            new_annotations.insert(names::ANNOTATION_GRACE_PERIOD_SOURCE, "workload".into());
        }
    }
    for (i, container) in spec.containers.iter().enumerate() {
        if !selected.contains(&i) {
            continue;
        }
        if container
            .lifecycle
            .as_ref()
            .is_some_and(|l| l.pre_stop.is_some())
        {
            skipped.push(container.name.clone());
        } else {
            containers.push(container.name.clone());
        }
    }
    if !skipped.is_empty() {
        new_annotations.insert(names::ANNOTATION_SKIPPED_CONTAINERS, skipped.join(","));
    }
    let all_names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let actions = drain_action::resolve(
        annotations
            .and_then(|a| a.get(names::ANNOTATION_DRAIN))
            .map(String::as_str),
        plan.drain_actions,
        &containers,
        &all_names,
    );
    add_map_entries(
        &mut ops,
        "labels",
        pod.metadata.labels.is_some(),
        [(names::LABEL_INJECTED, "true".to_owned())]
            .into_iter()
            .collect(),
    );
    add_map_entries(
        &mut ops,
        "annotations",
        annotations.is_some(),
        new_annotations,
    );

    // Spec: volume, sidecar, app containers, grace period.
    let volume = json!({
        "name": names::VOLUME_NAME,
        "emptyDir": {"sizeLimit": VOLUME_SIZE_LIMIT},
    });
    match spec.volumes {
        Some(_) => ops.push(add(&["spec", "volumes", "-"], volume)),
        None => ops.push(add(&["spec", "volumes"], json!([volume]))),
    }
    // The kubelet shares 12288 bytes of termination messages among every container of the
    // pod: the regular and init containers, the sidecar, and one spare slot for a later
    // `kubectl debug` ephemeral container.
    let report_max_bytes =
        lameduck_proto::report_budget(spec.containers.len() + init_containers.len() + 1 + 1);
    // The sidecar serves the hooked containers: their ports are the ones whose traffic
    // it watches; every probe into the pod is a connection it must not count as traffic.
    let traffic = PodTraffic {
        ports: traffic::served_ports(
            spec.containers
                .iter()
                .filter(|c| containers.contains(&c.name)),
        ),
        probes: traffic::probe_ports(spec),
    };
    let sidecar = to_value(&sidecar_container(
        plan,
        grace_seconds,
        report_max_bytes,
        traffic,
    ));
    if init_containers.is_empty() {
        ops.push(add(&["spec", "initContainers"], json!([sidecar])));
    } else {
        ops.push(add(&["spec", "initContainers", "0"], sidecar));
    }
    for (i, container) in spec.containers.iter().enumerate() {
        if !containers.contains(&container.name) {
            continue;
        }
        patch_app_container(
            &mut ops,
            i,
            container,
            grace_seconds,
            plan.drain.delay_millis,
            actions.per_container.get(&container.name),
        );
    }
    if plan.grace_override.is_some() {
        ops.push(add(
            &["spec", "terminationGracePeriodSeconds"],
            json!(grace_seconds),
        ));
    }

    PatchOutcome::Injected(Injection {
        patch: Patch(ops),
        containers,
        skipped,
        unknown,
        grace_seconds,
        warnings: actions.warnings,
    })
}

/// Indexes of the selected regular containers, and the unknown names of the annotation.
fn select_containers(containers: &[Container], list: Option<&String>) -> (Vec<usize>, Vec<String>) {
    let Some(list) = list.map(|l| l.trim()).filter(|l| !l.is_empty()) else {
        return ((0..containers.len()).collect(), Vec::new());
    };
    let wanted: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let selected = containers
        .iter()
        .enumerate()
        .filter(|(_, c)| wanted.contains(&c.name.as_str()))
        .map(|(i, _)| i)
        .collect();
    let unknown = wanted
        .iter()
        .filter(|n| !containers.iter().any(|c| c.name == **n))
        .map(|n| (*n).to_owned())
        .collect();
    (selected, unknown)
}

/// Mount, env and preStop hook for one selected app container. The env tells an SDK the
/// grace period the kubelet enforces and the wait of a preStop hook that cannot reach the
/// sidecar (the same fixed delay), so that it plans its own deadline when the sidecar is
/// out of reach, and the hook the container's drain action; values the container already
/// sets are kept.
fn patch_app_container(
    ops: &mut Vec<PatchOperation>,
    index: usize,
    container: &Container,
    grace_seconds: i64,
    fallback_delay_millis: u64,
    drain_action: Option<&DrainAction>,
) {
    let i = index.to_string();
    let base = ["spec", "containers", i.as_str()];
    fn path<'a>(base: &[&'a str], rest: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(rest).copied().collect()
    }

    let mount = json!({"name": names::VOLUME_NAME, "mountPath": names::MOUNT_PATH});
    match container.volume_mounts {
        Some(_) => ops.push(add(&path(&base, &["volumeMounts", "-"]), mount)),
        None => ops.push(add(&path(&base, &["volumeMounts"]), json!([mount]))),
    }

    let existing = container.env.as_deref().unwrap_or_default();
    let app_env = AppEnv {
        container: container.name.clone(),
        grace_seconds: u64::try_from(grace_seconds).unwrap_or(0),
        fallback_delay_millis,
        drain_action: drain_action.cloned(),
    };
    let env: Vec<Value> = app_env
        .to_env()
        .into_iter()
        .filter(|(name, _)| !existing.iter().any(|e| e.name == *name))
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    match container.env {
        Some(_) => {
            for var in env {
                ops.push(add(&path(&base, &["env", "-"]), var));
            }
        }
        None if !env.is_empty() => ops.push(add(&path(&base, &["env"]), Value::Array(env))),
        None => {}
    }

    let mut command = vec![
        names::POD_BIN_PATH.to_owned(),
        "prestop".to_owned(),
        "--container".to_owned(),
        container.name.clone(),
    ];
    if let Some(probe_grace) = probe_grace_seconds(container).filter(|g| *g < grace_seconds) {
        // The kubelet cuts a probe kill's hook at the probe's own grace period: the
        // container's shutdown must plan with it, or its app gets SIGTERM mid-sequence.
        command.extend(["--grace-seconds".to_owned(), probe_grace.to_string()]);
    }
    let pre_stop = json!({"exec": {"command": command}});
    match container.lifecycle {
        Some(_) => ops.push(add(&path(&base, &["lifecycle", "preStop"]), pre_stop)),
        None => ops.push(add(
            &path(&base, &["lifecycle"]),
            json!({"preStop": pre_stop}),
        )),
    }
}

/// The shortest `terminationGracePeriodSeconds` the container's liveness or startup probe
/// sets (the grace period the kubelet gives when that probe kills it), if any.
fn probe_grace_seconds(container: &Container) -> Option<i64> {
    [&container.liveness_probe, &container.startup_probe]
        .into_iter()
        .flatten()
        .filter_map(|probe| probe.termination_grace_period_seconds)
        .map(|g| g.max(0))
        .min()
}

/// Adds entries to `metadata.<field>`, creating the map when the pod has none.
fn add_map_entries(
    ops: &mut Vec<PatchOperation>,
    field: &str,
    exists: bool,
    entries: BTreeMap<&str, String>,
) {
    if exists {
        for (key, value) in entries {
            ops.push(add(&["metadata", field, key], Value::String(value)));
        }
    } else {
        ops.push(add(&["metadata", field], json!(entries)));
    }
}

/// What the sidecar is told about the pod's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodTraffic {
    /// The TCP ports each hooked container declares.
    pub ports: Vec<ContainerPorts>,
    /// The kubelet's probes that connect to the pod.
    pub probes: Vec<ProbePort>,
}

/// The injected native sidecar, for a pod whose grace period is `grace_seconds`, whose
/// containers leave it `report_max_bytes` of termination message and serve `traffic`.
pub fn sidecar_container(
    plan: &InjectionPlan<'_>,
    grace_seconds: i64,
    report_max_bytes: usize,
    traffic: PodTraffic,
) -> Container {
    let config = plan.config;
    let contract = SidecarEnv {
        grace_seconds: u64::try_from(grace_seconds).unwrap_or(0),
        drain: plan.drain.clone(),
        report_max_bytes,
        ports: traffic.ports,
        probes: traffic.probes,
    };
    let env = SidecarEnv::FIELD_REFS
        .iter()
        .map(|(name, field_path)| field_env(name, field_path))
        .chain(
            contract
                .to_env()
                .into_iter()
                .map(|(name, value)| value_env(name, value)),
        )
        .collect();
    let quantities = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
            .collect()
    };
    Container {
        name: names::SIDECAR_CONTAINER_NAME.to_owned(),
        image: Some(config.sidecar_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(vec!["serve".to_owned()]),
        restart_policy: Some("Always".to_owned()),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "5m"), ("memory", "8Mi")])),
            limits: Some(quantities(&[("memory", "32Mi")])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    names::SIDECAR_IMAGE_BINARY.to_owned(),
                    "probe".to_owned(),
                ]),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(30),
            ..Default::default()
        }),
        termination_message_policy: Some("File".to_owned()),
        volume_mounts: Some(vec![VolumeMount {
            name: names::VOLUME_NAME.to_owned(),
            mount_path: names::MOUNT_PATH.to_owned(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..Default::default()
    }
}

fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

fn to_value(container: &Container) -> Value {
    // Serializing a k8s-openapi struct to a Value cannot fail (no maps with non-string keys).
    serde_json::to_value(container).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn web_pod() -> Pod {
        pod(json!({
            "metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "web", "image": "web"}, {"name": "worker", "image": "worker"}]}
        }))
    }

    fn plan<'a>(
        config: &'a InjectionConfig,
        drain: &'a DrainSettings,
        grace_override: Option<i64>,
    ) -> InjectionPlan<'a> {
        InjectionPlan {
            config,
            policy_name: "deployment-web",
            drain,
            grace_override,
            drain_actions: None,
        }
    }

    /// The patched pod.
    fn patched(pod: &Pod, plan: &InjectionPlan<'_>) -> Pod {
        let PatchOutcome::Injected(injection) = build_patch(pod, plan) else {
            panic!("not injected");
        };
        let mut value = serde_json::to_value(pod).unwrap();
        json_patch::patch(&mut value, &injection.patch).unwrap();
        serde_json::from_value(value).unwrap()
    }

    fn env(container: &Container, name: &str) -> Option<String> {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn sidecar(pod: &Pod) -> &Container {
        &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0]
    }

    #[test]
    fn the_sidecars_env_and_the_apps_env_agree_on_the_grace_period() {
        let config = InjectionConfig::default();
        let drain = DrainSettings::default();
        for (spec_grace, grace_override, want) in [
            (None, None, "30"),
            (Some(45), None, "45"),
            (Some(45), Some(12), "12"),
        ] {
            let mut pod = web_pod();
            pod.spec.as_mut().unwrap().termination_grace_period_seconds = spec_grace;
            let pod = patched(&pod, &plan(&config, &drain, grace_override));
            let spec = pod.spec.as_ref().unwrap();
            assert_eq!(
                spec.termination_grace_period_seconds
                    .unwrap_or(DEFAULT_GRACE_SECONDS)
                    .to_string(),
                want
            );
            assert_eq!(
                env(sidecar(&pod), names::ENV_GRACE_SECONDS).as_deref(),
                Some(want)
            );
            for app in &spec.containers {
                assert_eq!(
                    env(app, names::ENV_GRACE_SECONDS).as_deref(),
                    Some(want),
                    "{}",
                    app.name
                );
            }
        }
    }

    /// The sidecar reads its settings with [`SidecarEnv::from_env`]: what it reads from the
    /// env the webhook wrote must be exactly the plan's drain settings, the pod's grace
    /// period and its report budget, and nothing may be written that it does not read.
    #[test]
    fn the_sidecar_reads_back_exactly_what_the_webhook_wrote() {
        use lameduck_proto::HttpDrain;
        use lameduck_proto::drain::DrainMode;

        let config = InjectionConfig::default();
        let http = DrainSettings {
            mode: DrainMode::Http,
            delay_millis: 2_500,
            min_delay_millis: 3_500,
            quiet_period_millis: 700,
            max_delay_millis: 20_000,
            http: Some(HttpDrain {
                port: 8081,
                path: "/admin/drain".into(),
            }),
            budget_millis: Some(4_200),
        };
        for (drain, grace_override) in [
            (DrainSettings::default(), None),
            (http, Some(41)),
            (
                DrainSettings {
                    mode: DrainMode::Delay,
                    ..DrainSettings::default()
                },
                Some(12),
            ),
        ] {
            let pod = patched(&web_pod(), &plan(&config, &drain, grace_override));
            let sidecar = sidecar(&pod);
            let written: Vec<(String, String)> = sidecar
                .env
                .iter()
                .flatten()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect();
            for (name, _) in &written {
                assert!(
                    SidecarEnv::NAMES.contains(&name.as_str()),
                    "{name} is written but the sidecar never reads it"
                );
            }
            let field_refs: Vec<(String, String)> = sidecar
                .env
                .iter()
                .flatten()
                .filter_map(|e| {
                    let field = e.value_from.as_ref()?.field_ref.as_ref()?;
                    Some((e.name.clone(), field.field_path.clone()))
                })
                .collect();
            assert_eq!(
                field_refs,
                SidecarEnv::FIELD_REFS.map(|(n, f)| (n.to_owned(), f.to_owned()))
            );
            let read = SidecarEnv::from_env(|name| {
                written
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            })
            .expect("the sidecar parses what the webhook wrote");
            let containers = pod.spec.as_ref().unwrap().containers.len();
            assert_eq!(
                read,
                SidecarEnv {
                    grace_seconds: grace_override.map_or(30, |g| g as u64),
                    drain: drain.clone(),
                    report_max_bytes: lameduck_proto::report_budget(containers + 2),
                    ports: Vec::new(),
                    probes: Vec::new(),
                }
            );
        }
    }

    /// The sidecar watches the ports of the containers it serves (not of one left alone
    /// with its own hook), and knows every probe into the pod, that one's included.
    #[test]
    fn the_sidecar_reads_back_the_served_ports_and_every_probe() {
        use lameduck_proto::{ContainerPorts, ProbePort};

        let config = InjectionConfig::default();
        let drain = DrainSettings::default();
        let pod = pod(json!({
            "metadata": {"name": "web-1"},
            "spec": {"containers": [
                {"name": "web", "image": "web",
                 "ports": [{"containerPort": 8080, "name": "http"}],
                 "readinessProbe": {"httpGet": {"port": "http"}, "periodSeconds": 1}},
                {"name": "envoy", "image": "envoy",
                 "ports": [{"containerPort": 15001}],
                 "livenessProbe": {"tcpSocket": {"port": 15001}},
                 "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}
            ]}
        }));
        let pod = patched(&pod, &plan(&config, &drain, None));
        let sidecar = sidecar(&pod);
        let read = SidecarEnv::from_env(|name| env(sidecar, name)).unwrap();
        assert_eq!(
            read.ports,
            [ContainerPorts {
                container: "web".into(),
                ports: vec![8080]
            }]
        );
        assert_eq!(
            read.probes,
            [
                ProbePort {
                    port: 8080,
                    period_millis: 1_000
                },
                ProbePort {
                    port: 15001,
                    period_millis: 10_000
                }
            ]
        );
    }

    #[test]
    fn a_probes_shorter_grace_period_reaches_the_containers_hook() {
        let config = InjectionConfig::default();
        let drain = DrainSettings::default();
        let prestop_of = |pod: &Pod| -> Vec<String> {
            let container = &pod.spec.as_ref().unwrap().containers[0];
            let hook = container
                .lifecycle
                .as_ref()
                .unwrap()
                .pre_stop
                .as_ref()
                .unwrap();
            hook.exec.as_ref().unwrap().command.clone().unwrap()
        };
        for (liveness, startup, want) in [
            (None, None, None),
            (Some(10), None, Some("10")),
            (Some(10), Some(4), Some("4")),
            (Some(60), None, None), // not shorter than the pod's 30 s
        ] {
            let mut pod = web_pod();
            let c = &mut pod.spec.as_mut().unwrap().containers[0];
            let probe = |g: Option<i64>| {
                g.map(|g| Probe {
                    termination_grace_period_seconds: Some(g),
                    ..Default::default()
                })
            };
            c.liveness_probe = probe(liveness);
            c.startup_probe = probe(startup);
            let command = prestop_of(&patched(&pod, &plan(&config, &drain, None)));
            let flag = command
                .iter()
                .position(|a| a == "--grace-seconds")
                .map(|i| command[i + 1].as_str());
            assert_eq!(flag, want, "{liveness:?} {startup:?}: {command:?}");
        }
    }

    #[test]
    fn app_containers_get_the_fallback_delay_of_the_drain_settings() {
        let config = InjectionConfig::default();
        let drain = DrainSettings {
            delay_millis: 3_500,
            ..DrainSettings::default()
        };
        let pod = patched(&web_pod(), &plan(&config, &drain, None));
        for app in &pod.spec.as_ref().unwrap().containers {
            assert_eq!(
                env(app, names::ENV_FALLBACK_DELAY_MILLIS).as_deref(),
                Some("3500")
            );
        }
        assert_eq!(
            env(sidecar(&pod), names::ENV_DELAY_MILLIS).as_deref(),
            Some("3500")
        );
    }

    #[test]
    fn values_the_container_sets_are_kept() {
        let config = InjectionConfig::default();
        let drain = DrainSettings::default();
        let pod = pod(json!({
            "metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "web", "image": "web", "env": [
                {"name": "LAMEDUCK_GRACE_SECONDS", "value": "7"},
                {"name": "LAMEDUCK_FALLBACK_DELAY_MILLIS", "value": "100"},
                {"name": "OTHER", "value": "x"}
            ]}]}
        }));
        let pod = patched(&pod, &plan(&config, &drain, None));
        let app = &pod.spec.as_ref().unwrap().containers[0];
        let names: Vec<&str> = app.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "LAMEDUCK_GRACE_SECONDS",
                "LAMEDUCK_FALLBACK_DELAY_MILLIS",
                "OTHER",
                "LAMEDUCK_SOCKET",
                "LAMEDUCK_CONTAINER"
            ]
        );
        assert_eq!(env(app, names::ENV_GRACE_SECONDS).as_deref(), Some("7"));
        assert_eq!(
            env(app, names::ENV_FALLBACK_DELAY_MILLIS).as_deref(),
            Some("100")
        );
    }

    #[test]
    fn the_report_budget_counts_every_container_the_sidecar_and_a_spare_slot() {
        let config = InjectionConfig::default();
        let drain = DrainSettings::default();
        let budget = |pod: &Pod| env(sidecar(pod), names::ENV_REPORT_MAX_BYTES);
        // 2 containers + the sidecar + a spare: 4 → 12288 / 4.
        let two = patched(&web_pod(), &plan(&config, &drain, None));
        assert_eq!(budget(&two).as_deref(), Some("3072"));
        // 1 container + 2 init containers (a mesh proxy and its init) + the sidecar + a spare.
        let meshed = pod(json!({
            "metadata": {"name": "web-1"},
            "spec": {
                "initContainers": [{"name": "mesh-init", "image": "m"}, {"name": "proxy", "image": "p", "restartPolicy": "Always"}],
                "containers": [{"name": "web", "image": "web"}]
            }
        }));
        let meshed = patched(&meshed, &plan(&config, &drain, None));
        assert_eq!(
            budget(&meshed),
            Some(lameduck_proto::report_budget(5).to_string())
        );
        assert_eq!(budget(&meshed).as_deref(), Some("2457"));
        // A single container: the kubelet's 4096 per message at most.
        let single = pod(
            json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "a", "image": "a"}]}}),
        );
        assert_eq!(
            budget(&patched(&single, &plan(&config, &drain, None))).as_deref(),
            Some("4096")
        );
    }

    #[test]
    fn the_drain_budget_is_passed_only_when_learned() {
        let config = InjectionConfig::default();
        let unlearned = DrainSettings::default();
        let pod = patched(&web_pod(), &plan(&config, &unlearned, None));
        assert_eq!(env(sidecar(&pod), names::ENV_DRAIN_BUDGET_MILLIS), None);
        let learned = DrainSettings {
            budget_millis: Some(3_781),
            ..DrainSettings::default()
        };
        let pod = patched(&web_pod(), &plan(&config, &learned, None));
        assert_eq!(
            env(sidecar(&pod), names::ENV_DRAIN_BUDGET_MILLIS).as_deref(),
            Some("3781")
        );
        // The app containers never get it: it is the sidecar's plan.
        for app in &pod.spec.as_ref().unwrap().containers {
            assert_eq!(env(app, names::ENV_DRAIN_BUDGET_MILLIS), None);
        }
    }
}
