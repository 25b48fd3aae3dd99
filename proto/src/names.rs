//! Names shared by the operator, the sidecar and the SDKs.

/// Pod or workload annotation that opts in (`"true"`) or out (`"false"`) of injection.
pub const ANNOTATION_INJECT: &str = "lameduck.dev/inject";
/// Pod annotation narrowing injection to a comma-separated list of container names.
pub const ANNOTATION_CONTAINERS: &str = "lameduck.dev/containers";
/// Pod annotation listing containers left alone because they already had a preStop hook.
pub const ANNOTATION_SKIPPED_CONTAINERS: &str = "lameduck.dev/skipped-containers";
/// Pod annotation naming the ShutdownPolicy that governs the pod.
pub const ANNOTATION_POLICY: &str = "lameduck.dev/policy";
/// Pod annotation saying where the grace period came from: `recommended` or `workload`.
pub const ANNOTATION_GRACE_PERIOD_SOURCE: &str = "lameduck.dev/grace-period-source";
/// Pod annotation keeping the workload's own grace period when a recommendation replaced it.
pub const ANNOTATION_ORIGINAL_GRACE_PERIOD: &str = "lameduck.dev/original-grace-period";
/// Label put on every injected pod (value `"true"`); the operator watches only these pods.
pub const LABEL_INJECTED: &str = "lameduck.dev/injected";
/// Namespace label that opts every pod of the namespace in (value [`NAMESPACE_INJECT_ENABLED`]).
pub const NAMESPACE_LABEL_INJECT: &str = "lameduck.dev/inject";
/// The value of [`NAMESPACE_LABEL_INJECT`] that enables injection.
pub const NAMESPACE_INJECT_ENABLED: &str = "enabled";

/// Environment variable (operator and sidecar): log format, `plain` or `json` (`text` is
/// accepted for `plain`).
pub const ENV_LOG_FORMAT: &str = "LAMEDUCK_LOG_FORMAT";

/// The name of the ShutdownPolicy the operator creates for a workload: `<kind>-<name>`,
/// lowercased (e.g. `deployment-web`, `pod-debug`). The webhook annotates pods with it and
/// looks the policy up by it first.
pub fn policy_name(kind: &str, name: &str) -> String {
    format!("{kind}-{name}").to_lowercase()
}

/// Name of the injected native sidecar container.
pub const SIDECAR_CONTAINER_NAME: &str = "lameduck";
/// Name of the pod-private emptyDir volume shared by the sidecar and the app containers.
pub const VOLUME_NAME: &str = "lameduck";
/// Where the shared volume is mounted in the sidecar and in every selected app container.
pub const MOUNT_PATH: &str = "/lameduck";
/// Path of the sidecar binary inside the sidecar image.
pub const SIDECAR_IMAGE_BINARY: &str = "/lameduck-sidecar";

/// Sub-directory of the shared volume holding the copied binary.
pub const BIN_DIR: &str = "bin";
/// File name of the copied binary inside [`BIN_DIR`].
pub const BIN_NAME: &str = "lameduck";
/// Sub-directory of the shared volume holding the sockets.
pub const RUN_DIR: &str = "run";
/// File name of the socket applications connect to, inside [`RUN_DIR`].
pub const APP_SOCKET: &str = "app.sock";
/// File name of the socket preStop clients and the startup probe connect to, inside [`RUN_DIR`].
pub const CONTROL_SOCKET: &str = "control.sock";

/// Full in-pod path of the copied binary that app containers exec as their preStop hook.
pub const POD_BIN_PATH: &str = "/lameduck/bin/lameduck";
/// Full in-pod path of the application socket.
pub const POD_APP_SOCKET_PATH: &str = "/lameduck/run/app.sock";

/// Environment variable (app containers): path of the application socket.
pub const ENV_SOCKET: &str = "LAMEDUCK_SOCKET";
/// Environment variable (app containers): the container's own name.
pub const ENV_CONTAINER: &str = "LAMEDUCK_CONTAINER";
/// Environment variable (sidecar and app containers): the pod's grace period in seconds.
/// App containers get it too, so that an SDK that never reached the sidecar still knows
/// when SIGKILL comes.
pub const ENV_GRACE_SECONDS: &str = "LAMEDUCK_GRACE_SECONDS";
/// Environment variable (sidecar): the shared directory, default [`MOUNT_PATH`].
pub const ENV_DIR: &str = "LAMEDUCK_DIR";
/// Environment variable (sidecar): where the termination report is written.
pub const ENV_TERMINATION_LOG: &str = "LAMEDUCK_TERMINATION_LOG";
/// Environment variable (sidecar): drain mode, `auto`, `delay` or `http`.
pub const ENV_DRAIN_MODE: &str = "LAMEDUCK_DRAIN_MODE";
/// Environment variable (sidecar): fixed deregister delay without an SDK, in milliseconds.
pub const ENV_DELAY_MILLIS: &str = "LAMEDUCK_DELAY_MILLIS";
/// Environment variable (sidecar): minimum adaptive deregister delay, in milliseconds.
pub const ENV_MIN_DELAY_MILLIS: &str = "LAMEDUCK_MIN_DELAY_MILLIS";
/// Environment variable (sidecar): quiet period ending the adaptive deregister phase, in ms.
pub const ENV_QUIET_PERIOD_MILLIS: &str = "LAMEDUCK_QUIET_PERIOD_MILLIS";
/// Environment variable (sidecar): maximum adaptive deregister delay, in milliseconds.
pub const ENV_MAX_DELAY_MILLIS: &str = "LAMEDUCK_MAX_DELAY_MILLIS";
/// Environment variable (sidecar): time kept back before the deadline for SIGTERM → exit, ms.
pub const ENV_EXIT_RESERVE_MILLIS: &str = "LAMEDUCK_EXIT_RESERVE_MILLIS";
/// Environment variable (sidecar): TCP port of the HTTP drain fallback on loopback.
pub const ENV_HTTP_DRAIN_PORT: &str = "LAMEDUCK_HTTP_DRAIN_PORT";
/// Environment variable (sidecar): path of the HTTP drain fallback.
pub const ENV_HTTP_DRAIN_PATH: &str = "LAMEDUCK_HTTP_DRAIN_PATH";
/// Environment variable (preStop client, so app containers): wait when the sidecar is
/// unreachable, in ms. An SDK that never reached the sidecar assumes the hook spent it.
pub const ENV_FALLBACK_DELAY_MILLIS: &str = "LAMEDUCK_FALLBACK_DELAY_MILLIS";
/// Environment variable (sidecar): the time the deregister phase must leave for drain and
/// cleanup, in ms (the policy's learned drain + cleanup p99 with its margin). Unset or 0:
/// a fixed share of the budget.
pub const ENV_DRAIN_BUDGET_MILLIS: &str = "LAMEDUCK_DRAIN_BUDGET_MILLIS";
/// Environment variable (sidecar): the TCP ports each selected container declares,
/// `web=8080,8443;api=9090` (see `traffic`).
pub const ENV_PORTS: &str = "LAMEDUCK_PORTS";
/// Environment variable (sidecar): the kubelet's TCP probes of the pod,
/// `8080/1000,9090/10000` (port/periodMillis; see `traffic`).
pub const ENV_PROBES: &str = "LAMEDUCK_PROBES";
/// Environment variable (sidecar, downward API `status.hostIP`): the node's address, the
/// source of the kubelet's probes.
pub const ENV_HOST_IP: &str = "HOST_IP";
/// Environment variable (app containers, read by the preStop hook): the container's drain
/// action (see `action`), when the annotation or the policy sets one.
pub const ENV_DRAIN_ACTION: &str = "LAMEDUCK_DRAIN_ACTION";
/// Annotation (workload, pod template or pod): the drain action of the containers without
/// an SDK, one for all (`signal:SIGQUIT`) or per container (`web=signal:SIGQUIT;api=none`).
pub const ANNOTATION_DRAIN: &str = "lameduck.dev/drain";
/// Environment variable (sidecar): the bytes of termination message the kubelet keeps for
/// this pod's containers (see `report::report_budget`).
pub const ENV_REPORT_MAX_BYTES: &str = "LAMEDUCK_REPORT_MAX_BYTES";
/// File name, inside [`RUN_DIR`], where the sidecar keeps the shutdowns in progress so that
/// a restarted sidecar resumes them.
pub const STATE_FILE: &str = "state.json";
/// Environment variable (sidecar, downward API): the pod's name.
pub const ENV_POD_NAME: &str = "POD_NAME";
/// Environment variable (sidecar, downward API): the pod's namespace.
pub const ENV_POD_NAMESPACE: &str = "POD_NAMESPACE";
