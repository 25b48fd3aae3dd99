//! The drain settings the sidecar runs with: the deregister mode and its durations, and
//! their defaults. The ShutdownPolicy spec, the operator's `--default-drain-*` flags, the
//! sidecar's flags and the chart's `defaults.drain` all start from [`DRAIN_DEFAULTS`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the sidecar ends the deregister phase (traffic still arriving after deletion).
// Serialized as in the ShutdownPolicy spec (`Auto`, `Delay`, `HTTP`); the environment and
// the command lines use the lowercase names of `as_env`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum DrainMode {
    /// Adaptive when the application uses a lameduck SDK (ends when no new connection
    /// arrived for quietPeriodMillis, between minDelaySeconds and maxDelaySeconds); a fixed
    /// delaySeconds otherwise.
    #[default]
    #[cfg_attr(
        feature = "cli",
        value(help = "Adaptive with an SDK connected, the fixed delay without")
    )]
    Auto,
    /// Always wait delaySeconds.
    #[cfg_attr(feature = "cli", value(help = "Always the fixed delay"))]
    Delay,
    /// Wait delaySeconds, then call `POST http://127.0.0.1:<http.port><http.path>` on the
    /// application and wait for its answer (for applications without an SDK).
    #[serde(rename = "HTTP")]
    #[cfg_attr(
        feature = "cli",
        value(help = "The fixed delay, then POST http://127.0.0.1:<port><path> on the app")
    )]
    Http,
}

impl DrainMode {
    /// Every mode.
    pub const ALL: [DrainMode; 3] = [DrainMode::Auto, DrainMode::Delay, DrainMode::Http];

    /// The value of `LAMEDUCK_DRAIN_MODE` (and of the flags that take a mode).
    pub fn as_env(self) -> &'static str {
        match self {
            DrainMode::Auto => "auto",
            DrainMode::Delay => "delay",
            DrainMode::Http => "http",
        }
    }
}

impl fmt::Display for DrainMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_env())
    }
}

/// A drain mode that is not `auto`, `delay` or `http`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown drain mode {0:?}: expected auto, delay or http")]
pub struct UnknownDrainMode(pub String);

impl FromStr for DrainMode {
    type Err = UnknownDrainMode;

    /// Parses the environment form; the spec's spelling (`HTTP`) is accepted too, as case
    /// is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        DrainMode::ALL
            .into_iter()
            .find(|mode| mode.as_env().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDrainMode(s.to_owned()))
    }
}

/// The defaults of every drain setting (see [`DRAIN_DEFAULTS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainDefaults {
    /// The drain mode.
    pub mode: DrainMode,
    /// The fixed deregister delay, when no SDK is connected (and in `Delay`/`HTTP` mode).
    pub delay: Duration,
    /// The shortest adaptive deregister phase.
    pub min_delay: Duration,
    /// The silence (no new connection) that ends the adaptive deregister phase.
    pub quiet_period: Duration,
    /// The longest adaptive deregister phase.
    pub max_delay: Duration,
    /// The path of the application's HTTP drain endpoint.
    pub http_path: &'static str,
}

/// The drain defaults: a ShutdownPolicy without `spec.drain`, the operator without
/// `--default-drain-*` flags and a sidecar without drain settings all use these.
pub const DRAIN_DEFAULTS: DrainDefaults = DrainDefaults {
    mode: DrainMode::Auto,
    delay: Duration::from_secs(5),
    min_delay: Duration::from_secs(1),
    quiet_period: Duration::from_secs(1),
    max_delay: Duration::from_secs(15),
    http_path: "/drain",
};

/// The HTTP drain fallback target inside the pod (loopback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpDrain {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Request path, e.g. `/drain`.
    pub path: String,
}

/// The drain settings of one pod's sidecar, in milliseconds as in its environment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainSettings {
    /// Drain mode.
    pub mode: DrainMode,
    /// Fixed deregister delay when no SDK is connected.
    pub delay_millis: u64,
    /// Minimum adaptive deregister delay. The operator puts the learned deregister lag
    /// here when it has one (`recommendation.deregisterDelayMillis`).
    pub min_delay_millis: u64,
    /// Silence that ends the adaptive deregister phase.
    pub quiet_period_millis: u64,
    /// Upper bound of the adaptive deregister phase.
    pub max_delay_millis: u64,
    /// Target of the HTTP fallback; used when `mode` is [`DrainMode::Http`].
    pub http: Option<HttpDrain>,
    /// The time the deregister phase must leave for drain and cleanup, learned by the
    /// policy (`recommendation.drainBudgetMillis`); `None`: the sidecar's fixed share.
    pub budget_millis: Option<u64>,
}

impl Default for DrainSettings {
    /// [`DRAIN_DEFAULTS`], without an HTTP target or a learned budget.
    fn default() -> Self {
        Self {
            mode: DRAIN_DEFAULTS.mode,
            delay_millis: millis(DRAIN_DEFAULTS.delay),
            min_delay_millis: millis(DRAIN_DEFAULTS.min_delay),
            quiet_period_millis: millis(DRAIN_DEFAULTS.quiet_period),
            max_delay_millis: millis(DRAIN_DEFAULTS.max_delay),
            http: None,
            budget_millis: None,
        }
    }
}

impl DrainSettings {
    /// The settings for pods of a workload whose deregister lag is not learned yet: the
    /// adaptive phase waits at least the fixed `delay` (capped by `max_delay`), as the
    /// fixed mode would.
    ///
    /// Why: what ends the adaptive phase is arrivals, and a client on kept-alive
    /// connections makes none on most pods. Without a learned lag the phase would then
    /// end at `min_delay` (1 s), before kube-proxy and the load balancers have dropped
    /// the pod (their propagation is often longer on a busy node), and a client that
    /// re-dials is refused. Once the policy has learned the workload's lag
    /// (`recommendation.deregisterDelayMillis`), that replaces this floor.
    pub fn unlearned(mut self) -> Self {
        self.min_delay_millis = self
            .min_delay_millis
            .max(self.delay_millis)
            .min(self.max_delay_millis);
        self
    }
}

/// A duration in whole milliseconds, saturating (the environment carries milliseconds).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_spelling_and_the_env_spelling_name_the_same_modes() {
        for mode in DrainMode::ALL {
            assert_eq!(mode.as_env().parse::<DrainMode>(), Ok(mode));
            let spec = serde_json::to_value(mode).unwrap();
            assert_eq!(spec.as_str().unwrap().parse::<DrainMode>(), Ok(mode));
            assert_eq!(serde_json::from_value::<DrainMode>(spec).unwrap(), mode);
        }
        assert_eq!(
            serde_json::to_value(DrainMode::ALL).unwrap(),
            serde_json::json!(["Auto", "Delay", "HTTP"])
        );
        assert!("fast".parse::<DrainMode>().is_err());
    }

    #[test]
    fn the_default_settings_are_the_defaults_in_milliseconds() {
        let settings = DrainSettings::default();
        assert_eq!(
            (
                settings.delay_millis,
                settings.min_delay_millis,
                settings.quiet_period_millis,
                settings.max_delay_millis
            ),
            (5_000, 1_000, 1_000, 15_000)
        );
    }

    #[test]
    fn an_unlearned_workload_waits_at_least_the_fixed_delay_within_the_maximum() {
        assert_eq!(DrainSettings::default().unlearned().min_delay_millis, 5_000);
        let short_cap = DrainSettings {
            max_delay_millis: 3_000,
            ..DrainSettings::default()
        };
        assert_eq!(short_cap.unlearned().min_delay_millis, 3_000);
        let long_min = DrainSettings {
            min_delay_millis: 8_000,
            ..DrainSettings::default()
        };
        assert_eq!(long_min.unlearned().min_delay_millis, 8_000);
    }
}
