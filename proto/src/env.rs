//! The environment contract between the operator and the pods it injects: what the
//! webhook writes into the sidecar's and the app containers' `env`, and how the sidecar
//! reads it back. Both sides go through these types, so a variable cannot be written under
//! one name or format and read under another. The names are in [`crate::names`].

use crate::action::DrainAction;
use crate::drain::{DRAIN_DEFAULTS, DrainMode, DrainSettings, HttpDrain, UnknownDrainMode};
use crate::names;
use crate::traffic::{self, ContainerPorts, ProbePort};

/// Kubernetes' default `terminationGracePeriodSeconds`, assumed when nothing says otherwise.
pub const DEFAULT_GRACE_SECONDS: u64 = 30;

/// A variable of the contract that is set but cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}={value:?}: {reason}")]
pub struct EnvError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected instead.
    pub reason: String,
}

/// What the webhook tells the injected sidecar through plain environment values: the
/// pod's grace period, the drain settings and the termination-report budget.
///
/// The sidecar container also gets [`SidecarEnv::FIELD_REFS`] (downward API). The sidecar's
/// own knobs (`LAMEDUCK_DIR`, `LAMEDUCK_TERMINATION_LOG`, `LAMEDUCK_EXIT_RESERVE_MILLIS`,
/// logging) are not part of the contract: the webhook never sets them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarEnv {
    /// The pod's terminationGracePeriodSeconds, as finally admitted.
    pub grace_seconds: u64,
    /// The drain settings.
    pub drain: DrainSettings,
    /// Bytes of termination message the kubelet keeps for the sidecar
    /// (see [`crate::report_budget`]).
    pub report_max_bytes: usize,
    /// The TCP ports each selected container declares (the kernel view's ports).
    pub ports: Vec<ContainerPorts>,
    /// The kubelet's probes that connect to the pod.
    pub probes: Vec<ProbePort>,
}

impl Default for SidecarEnv {
    /// What a sidecar assumes with none of the variables set.
    fn default() -> Self {
        Self {
            grace_seconds: DEFAULT_GRACE_SECONDS,
            drain: DrainSettings::default(),
            report_max_bytes: crate::REPORT_MAX_BYTES,
            ports: Vec::new(),
            probes: Vec::new(),
        }
    }
}

impl SidecarEnv {
    /// The downward-API variables of the sidecar container: (name, `fieldRef.fieldPath`).
    pub const FIELD_REFS: [(&'static str, &'static str); 3] = [
        (names::ENV_POD_NAME, "metadata.name"),
        (names::ENV_POD_NAMESPACE, "metadata.namespace"),
        (names::ENV_HOST_IP, "status.hostIP"),
    ];

    /// Every variable [`SidecarEnv::to_env`] may write and [`SidecarEnv::from_env`] reads.
    pub const NAMES: [&'static str; 12] = [
        names::ENV_GRACE_SECONDS,
        names::ENV_DRAIN_MODE,
        names::ENV_DELAY_MILLIS,
        names::ENV_MIN_DELAY_MILLIS,
        names::ENV_QUIET_PERIOD_MILLIS,
        names::ENV_MAX_DELAY_MILLIS,
        names::ENV_REPORT_MAX_BYTES,
        names::ENV_DRAIN_BUDGET_MILLIS,
        names::ENV_HTTP_DRAIN_PORT,
        names::ENV_HTTP_DRAIN_PATH,
        names::ENV_PORTS,
        names::ENV_PROBES,
    ];

    /// The variables, in the order the webhook writes them. The drain budget is written
    /// only when learned, and the HTTP target only in mode `http`: the sidecar ignores it
    /// otherwise, and a pod spec that names it would suggest that it is called.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let drain = &self.drain;
        let mut env = vec![
            (names::ENV_GRACE_SECONDS, self.grace_seconds.to_string()),
            (names::ENV_DRAIN_MODE, drain.mode.as_env().to_owned()),
            (names::ENV_DELAY_MILLIS, drain.delay_millis.to_string()),
            (
                names::ENV_MIN_DELAY_MILLIS,
                drain.min_delay_millis.to_string(),
            ),
            (
                names::ENV_QUIET_PERIOD_MILLIS,
                drain.quiet_period_millis.to_string(),
            ),
            (
                names::ENV_MAX_DELAY_MILLIS,
                drain.max_delay_millis.to_string(),
            ),
            (
                names::ENV_REPORT_MAX_BYTES,
                self.report_max_bytes.to_string(),
            ),
        ];
        if let Some(budget) = drain.budget_millis.filter(|b| *b > 0) {
            env.push((names::ENV_DRAIN_BUDGET_MILLIS, budget.to_string()));
        }
        if let (DrainMode::Http, Some(http)) = (drain.mode, drain.http.as_ref()) {
            env.push((names::ENV_HTTP_DRAIN_PORT, http.port.to_string()));
            env.push((names::ENV_HTTP_DRAIN_PATH, http.path.clone()));
        }
        if self.ports.iter().any(|c| !c.ports.is_empty()) {
            env.push((names::ENV_PORTS, traffic::ports_to_env(&self.ports)));
        }
        if !self.probes.is_empty() {
            env.push((names::ENV_PROBES, traffic::probes_to_env(&self.probes)));
        }
        env
    }

    /// Reads the variables through `lookup` (e.g. `|name| std::env::var(name).ok()`).
    /// Unset or blank variables take their defaults ([`SidecarEnv::default`]); a budget of
    /// 0 means none was learned. The HTTP target is read whatever the mode: whether the
    /// mode `http` has one is for the caller to check, as a flag may still supply it.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let defaults = Self::default();
        let mode = match get(names::ENV_DRAIN_MODE) {
            Some(value) => value
                .parse::<DrainMode>()
                .map_err(|UnknownDrainMode(value)| EnvError {
                    name: names::ENV_DRAIN_MODE,
                    value,
                    reason: "expected auto, delay or http".to_owned(),
                })?,
            None => defaults.drain.mode,
        };
        let port = parse::<u16>(&get, names::ENV_HTTP_DRAIN_PORT)?;
        let path =
            get(names::ENV_HTTP_DRAIN_PATH).unwrap_or_else(|| DRAIN_DEFAULTS.http_path.into());
        let d = &defaults.drain;
        Ok(Self {
            grace_seconds: parse(&get, names::ENV_GRACE_SECONDS)?.unwrap_or(defaults.grace_seconds),
            drain: DrainSettings {
                mode,
                delay_millis: parse(&get, names::ENV_DELAY_MILLIS)?.unwrap_or(d.delay_millis),
                min_delay_millis: parse(&get, names::ENV_MIN_DELAY_MILLIS)?
                    .unwrap_or(d.min_delay_millis),
                quiet_period_millis: parse(&get, names::ENV_QUIET_PERIOD_MILLIS)?
                    .unwrap_or(d.quiet_period_millis),
                max_delay_millis: parse(&get, names::ENV_MAX_DELAY_MILLIS)?
                    .unwrap_or(d.max_delay_millis),
                http: port.map(|port| HttpDrain { port, path }),
                budget_millis: parse(&get, names::ENV_DRAIN_BUDGET_MILLIS)?.filter(|b| *b > 0),
            },
            report_max_bytes: parse(&get, names::ENV_REPORT_MAX_BYTES)?
                .unwrap_or(defaults.report_max_bytes),
            ports: match get(names::ENV_PORTS) {
                Some(value) => traffic::ports_from_env(&value).map_err(|reason| EnvError {
                    name: names::ENV_PORTS,
                    value,
                    reason,
                })?,
                None => Vec::new(),
            },
            probes: match get(names::ENV_PROBES) {
                Some(value) => traffic::probes_from_env(&value).map_err(|reason| EnvError {
                    name: names::ENV_PROBES,
                    value,
                    reason,
                })?,
                None => Vec::new(),
            },
        })
    }
}

/// What the webhook tells each selected app container (and so its SDK and its preStop
/// hook) through its environment. Values the container sets itself win: the webhook adds
/// only the variables it does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppEnv {
    /// The container's own name (sent in `hello`).
    pub container: String,
    /// The pod's grace period, so that an SDK that never reached the sidecar still knows
    /// when SIGKILL comes.
    pub grace_seconds: u64,
    /// What the preStop hook waits when the sidecar is unreachable: the drain settings'
    /// fixed delay.
    pub fallback_delay_millis: u64,
    /// The container's drain action, when the annotation or the policy sets one (the hook
    /// runs it when no SDK of the container is connected).
    pub drain_action: Option<DrainAction>,
}

impl AppEnv {
    /// The variables, in the order the webhook writes them; the socket is always
    /// [`names::POD_APP_SOCKET_PATH`].
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            (names::ENV_SOCKET, names::POD_APP_SOCKET_PATH.to_owned()),
            (names::ENV_CONTAINER, self.container.clone()),
            (names::ENV_GRACE_SECONDS, self.grace_seconds.to_string()),
            (
                names::ENV_FALLBACK_DELAY_MILLIS,
                self.fallback_delay_millis.to_string(),
            ),
        ];
        if let Some(action) = &self.drain_action {
            env.push((names::ENV_DRAIN_ACTION, action.to_string()));
        }
        env
    }
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Option<T>, EnvError> {
    get(name)
        .map(|value| {
            value.parse::<T>().map_err(|_| EnvError {
                name,
                reason: "expected a non-negative integer in range".to_owned(),
                value,
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn lookup(env: &[(&'static str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn drain_mode() -> impl Strategy<Value = DrainMode> {
        prop::sample::select(DrainMode::ALL.to_vec())
    }

    proptest! {
        /// What the webhook writes is what the sidecar reads, for every setting.
        #[test]
        fn what_is_written_is_read_back(
            grace_seconds in 0u64..100_000,
            mode in drain_mode(),
            delays in prop::array::uniform4(0u64..10_000_000),
            port in 1u16..,
            path in "/[a-z/]{0,20}",
            budget in prop::option::of(1u64..10_000_000),
            report_max_bytes in 512usize..=4096,
            served in prop::collection::vec(1u16.., 0..3),
            probe_periods in prop::collection::vec(1u64..100_000, 0..3),
        ) {
            let env = SidecarEnv {
                grace_seconds,
                drain: DrainSettings {
                    mode,
                    delay_millis: delays[0],
                    min_delay_millis: delays[1],
                    quiet_period_millis: delays[2],
                    max_delay_millis: delays[3],
                    // Only mode http carries its target through the environment.
                    http: (mode == DrainMode::Http).then_some(HttpDrain { port, path }),
                    budget_millis: budget,
                },
                report_max_bytes,
                ports: if served.is_empty() {
                    vec![]
                } else {
                    vec![ContainerPorts { container: "web".into(), ports: served.clone() }]
                },
                probes: probe_periods
                    .iter()
                    .map(|&period_millis| ProbePort { port: 8080, period_millis })
                    .collect(),
            };
            let written = env.to_env();
            for (name, _) in &written {
                prop_assert!(SidecarEnv::NAMES.contains(name), "{name} is not read back");
            }
            prop_assert_eq!(SidecarEnv::from_env(lookup(&written)), Ok(env));
        }
    }

    #[test]
    fn nothing_set_means_the_defaults() {
        assert_eq!(SidecarEnv::from_env(|_| None), Ok(SidecarEnv::default()));
        assert_eq!(
            SidecarEnv::from_env(|_| Some("  ".to_owned())),
            Ok(SidecarEnv::default())
        );
    }

    #[test]
    fn a_value_that_does_not_parse_names_its_variable() {
        let env = [(names::ENV_DELAY_MILLIS, "5s".to_owned())];
        let error = SidecarEnv::from_env(lookup(&env)).unwrap_err();
        assert_eq!(error.name, names::ENV_DELAY_MILLIS);
        let env = [(names::ENV_DRAIN_MODE, "fast".to_owned())];
        let error = SidecarEnv::from_env(lookup(&env)).unwrap_err();
        assert_eq!(error.name, names::ENV_DRAIN_MODE);
    }

    #[test]
    fn the_http_target_is_written_only_in_mode_http() {
        let mut env = SidecarEnv::default();
        env.drain.http = Some(HttpDrain {
            port: 8080,
            path: "/drain".into(),
        });
        let names_of = |env: &SidecarEnv| -> Vec<&str> {
            env.to_env().into_iter().map(|(name, _)| name).collect()
        };
        assert!(!names_of(&env).contains(&names::ENV_HTTP_DRAIN_PORT));
        env.drain.mode = DrainMode::Http;
        assert!(names_of(&env).contains(&names::ENV_HTTP_DRAIN_PORT));
    }
}
