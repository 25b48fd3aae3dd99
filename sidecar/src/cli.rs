//! Command line: every setting is a flag with an environment-variable equivalent, so the
//! binary runs outside a pod exactly as inside one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use lameduck_proto::{SidecarEnv, names, timing};

use crate::settings::{DrainMode, Settings};

/// The lameduck preStop sidecar.
#[derive(Debug, Parser)]
#[command(name = "lameduck", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging flags shared by every subcommand.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log level: error, warn, info, debug or trace.
    #[arg(
        long,
        env = "LAMEDUCK_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: tracing::Level,
    /// Log format.
    #[arg(long, env = names::ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written (to stderr): `plain` (or its other name, `text`) or `json`, as
/// for the operator.
pub use lameduck_proto::LogFormat;

/// Installs the tracing subscriber; logs go to stderr so stdout stays free.
pub fn init_logging(args: &LogArgs) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        // Container logs are files, not terminals: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match args.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The three roles of the binary.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: serve the sockets, coordinate shutdowns, write the termination report.
    Serve(ServeArgs),
    /// The preStop hook of an app container: block until the sidecar releases the container.
    Prestop(PrestopArgs),
    /// The startup probe: exit 0 once `serve` answers on its control socket.
    Probe(ProbeArgs),
}

impl Command {
    /// Runs the subcommand and turns its result into the process exit code.
    pub async fn run(self) -> ExitCode {
        match self {
            Command::Serve(args) => match args.into_settings(|name| std::env::var(name).ok()) {
                Ok(settings) => crate::serve::run(settings).await,
                Err(error) => {
                    // The exit code of a usage error, as for a flag that does not parse.
                    eprintln!("lameduck: {error}");
                    ExitCode::from(2)
                }
            },
            Command::Prestop(args) => {
                let action =
                    crate::drain_action::parse(args.drain_action.as_deref(), &args.container);
                crate::clients::prestop(
                    &args.dir,
                    &args.container,
                    args.grace_seconds,
                    args.fallback_delay(),
                    action,
                    std::time::Duration::from_secs(args.pod_grace_seconds),
                )
                .await
            }
            Command::Probe(args) => crate::clients::probe(&args.dir).await,
        }
    }
}

/// Flags of `serve`.
///
/// What the operator sets in the sidecar's environment ([`SidecarEnv`]: the grace period,
/// the drain settings, the report budget) is read with [`SidecarEnv::from_env`], the
/// parser the webhook's writer is tested against; these flags override it.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The shared directory: the binary is copied to DIR/bin, the sockets live in DIR/run.
    #[arg(long, env = names::ENV_DIR, default_value = names::MOUNT_PATH)]
    pub dir: PathBuf,
    /// Where the termination report is written when the sidecar stops.
    #[arg(long, env = names::ENV_TERMINATION_LOG, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// The pod's terminationGracePeriodSeconds [default: LAMEDUCK_GRACE_SECONDS, else 30].
    #[arg(long)]
    pub grace_seconds: Option<u64>,
    /// How the deregister phase ends: adaptively from SDK activity (auto), after a fixed
    /// delay (delay), or a fixed delay followed by an HTTP call to the app (http)
    /// [default: LAMEDUCK_DRAIN_MODE, else auto].
    #[arg(long, value_enum)]
    pub drain_mode: Option<DrainMode>,
    /// Fixed deregister delay used without an SDK, in milliseconds
    /// [default: LAMEDUCK_DELAY_MILLIS, else the drain defaults].
    #[arg(long)]
    pub delay_millis: Option<u64>,
    /// Shortest adaptive deregister phase, in milliseconds
    /// [default: LAMEDUCK_MIN_DELAY_MILLIS, else the drain defaults].
    #[arg(long)]
    pub min_delay_millis: Option<u64>,
    /// Adaptive phase: how long no new connection must arrive, in milliseconds
    /// [default: LAMEDUCK_QUIET_PERIOD_MILLIS, else the drain defaults].
    #[arg(long)]
    pub quiet_period_millis: Option<u64>,
    /// Longest adaptive deregister phase, in milliseconds
    /// [default: LAMEDUCK_MAX_DELAY_MILLIS, else the drain defaults].
    #[arg(long)]
    pub max_delay_millis: Option<u64>,
    /// Time kept back before the grace deadline for SIGTERM to end the app (milliseconds;
    /// never more than half the grace period).
    #[arg(long, env = names::ENV_EXIT_RESERVE_MILLIS, default_value_t = timing::DEFAULT_EXIT_RESERVE_MILLIS)]
    pub exit_reserve_millis: u64,
    /// Port of the app's HTTP drain endpoint on 127.0.0.1; required in mode http
    /// [default: LAMEDUCK_HTTP_DRAIN_PORT].
    #[arg(long)]
    pub http_drain_port: Option<u16>,
    /// Path of the app's HTTP drain endpoint (mode http)
    /// [default: LAMEDUCK_HTTP_DRAIN_PATH, else /drain].
    #[arg(long)]
    pub http_drain_path: Option<String>,
    /// Time the deregister phase must leave for drain and cleanup (milliseconds; the
    /// policy's learned p99 with its margin). 0: half of the budget
    /// [default: LAMEDUCK_DRAIN_BUDGET_MILLIS, else 0].
    #[arg(long)]
    pub drain_budget_millis: Option<u64>,
    /// Bytes of termination message the kubelet keeps for this container (12288 divided by
    /// the pod's containers, at most 4096) [default: LAMEDUCK_REPORT_MAX_BYTES, else 4096].
    #[arg(long)]
    pub report_max_bytes: Option<usize>,
    /// The node's address, the source of the kubelet's probes [default: HOST_IP].
    #[arg(long)]
    pub host_ip: Option<std::net::IpAddr>,
    /// Do not copy the binary to DIR/bin (for running several sidecars from one binary).
    #[arg(long, env = "LAMEDUCK_NO_INSTALL")]
    pub no_install: bool,
}

impl ServeArgs {
    /// The settings: the environment the operator wrote (read through `lookup`, which maps
    /// a variable's name to its value), overridden by the flags given.
    fn into_settings(self, lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
        let SidecarEnv {
            grace_seconds,
            drain,
            report_max_bytes,
            ports,
            probes,
        } = SidecarEnv::from_env(&lookup).map_err(|error| error.to_string())?;
        // A field-ref variable, not part of the operator's settings: a value that is not an
        // address (an older kubelet leaves it empty) only means probes are told apart by
        // their rate alone.
        let host_ip = self.host_ip.or_else(|| {
            lookup(names::ENV_HOST_IP).and_then(|value| match value.trim().parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    if !value.trim().is_empty() {
                        tracing::warn!(value, "{} is not an address; ignored", names::ENV_HOST_IP);
                    }
                    None
                }
            })
        });
        let ms = std::time::Duration::from_millis;
        let drain_mode = self.drain_mode.unwrap_or(drain.mode);
        let (env_port, env_path) = match drain.http {
            Some(http) => (Some(http.port), Some(http.path)),
            None => (None, None),
        };
        let http_drain_port = self.http_drain_port.or(env_port);
        if drain_mode == DrainMode::Http && http_drain_port.is_none() {
            return Err(format!(
                "drain mode http needs --http-drain-port or {}",
                names::ENV_HTTP_DRAIN_PORT
            ));
        }
        Ok(Settings {
            dir: self.dir,
            termination_log: self.termination_log,
            grace: std::time::Duration::from_secs(self.grace_seconds.unwrap_or(grace_seconds)),
            drain_mode,
            delay: ms(self.delay_millis.unwrap_or(drain.delay_millis)),
            min_delay: ms(self.min_delay_millis.unwrap_or(drain.min_delay_millis)),
            quiet_period: ms(self
                .quiet_period_millis
                .unwrap_or(drain.quiet_period_millis)),
            max_delay: ms(self.max_delay_millis.unwrap_or(drain.max_delay_millis)),
            exit_reserve: ms(self.exit_reserve_millis),
            http_drain_port,
            http_drain_path: self
                .http_drain_path
                .or(env_path)
                .unwrap_or_else(|| lameduck_proto::DRAIN_DEFAULTS.http_path.to_owned()),
            drain_budget: self
                .drain_budget_millis
                .or(drain.budget_millis)
                .filter(|b| *b > 0)
                .map(ms),
            report_max_bytes: self.report_max_bytes.unwrap_or(report_max_bytes),
            install: !self.no_install,
            ports,
            probes,
            host_ip,
        })
    }
}

/// Flags of `prestop`.
#[derive(Debug, Args)]
pub struct PrestopArgs {
    /// The app container whose hook this is.
    #[arg(long, env = names::ENV_CONTAINER)]
    pub container: String,
    /// The grace period of a probe kill when the container's liveness or startup probe sets
    /// its own, shorter than the pod's (seconds): the container's shutdown plans with it.
    #[arg(long)]
    pub grace_seconds: Option<u64>,
    /// The shared directory (sockets in DIR/run).
    #[arg(long, env = names::ENV_DIR, default_value = names::MOUNT_PATH)]
    pub dir: PathBuf,
    /// How long to wait when the sidecar cannot be reached (milliseconds, at most 60000).
    #[arg(long, env = names::ENV_FALLBACK_DELAY_MILLIS, default_value_t = timing::DEFAULT_FALLBACK_DELAY_MILLIS)]
    pub fallback_delay_millis: u64,
    /// What to do to the container once the sidecar lets it go, when no SDK of it took
    /// part: signal:<NAME>, exec:<command>, http:<port><path> or none. A value that does not
    /// parse is logged and means none.
    #[arg(long, env = names::ENV_DRAIN_ACTION)]
    pub drain_action: Option<String>,
    /// The pod's grace period (seconds): bounds the drain action when the sidecar cannot
    /// be reached.
    #[arg(long, env = names::ENV_GRACE_SECONDS, default_value_t = lameduck_proto::env::DEFAULT_GRACE_SECONDS)]
    pub pod_grace_seconds: u64,
}

impl PrestopArgs {
    fn fallback_delay(&self) -> std::time::Duration {
        // Bounded: a mistyped value must not hold a pod's deletion for hours.
        std::time::Duration::from_millis(
            self.fallback_delay_millis
                .min(timing::MAX_FALLBACK_DELAY_MILLIS),
        )
    }
}

/// Flags of `probe`.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The shared directory (sockets in DIR/run).
    #[arg(long, env = names::ENV_DIR, default_value = names::MOUNT_PATH)]
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    fn serve_args(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from(["lameduck", "serve"].iter().chain(args)).expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        args
    }

    fn lookup(env: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| env.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn http_mode_needs_a_port() {
        let err = serve_args(&["--drain-mode", "http"])
            .into_settings(|_| None)
            .unwrap_err();
        assert!(err.contains("--http-drain-port"), "{err}");
        let env = vec![(names::ENV_DRAIN_MODE, "http".to_owned())];
        let err = serve_args(&[]).into_settings(lookup(env)).unwrap_err();
        assert!(err.contains(names::ENV_HTTP_DRAIN_PORT), "{err}");
    }

    /// The settings are what the operator's environment says ([`SidecarEnv::to_env`] is
    /// what the webhook writes), and a flag wins over its variable.
    #[test]
    fn the_settings_are_the_environment_the_operator_wrote() {
        use lameduck_proto::{DrainSettings, HttpDrain};
        let written = SidecarEnv {
            grace_seconds: 41,
            drain: DrainSettings {
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
            },
            report_max_bytes: 2_457,
            ports: vec![lameduck_proto::ContainerPorts {
                container: "web".into(),
                ports: vec![8080, 8443],
            }],
            probes: vec![lameduck_proto::ProbePort {
                port: 8080,
                period_millis: 10_000,
            }],
        };
        let mut env = written.to_env();
        env.push((names::ENV_HOST_IP, "10.0.0.7".to_owned()));
        let settings = serve_args(&[])
            .into_settings(lookup(env))
            .expect("settings");
        let ms = std::time::Duration::from_millis;
        assert_eq!(settings.grace, std::time::Duration::from_secs(41));
        assert_eq!(settings.drain_mode, DrainMode::Http);
        assert_eq!(
            (
                settings.delay,
                settings.min_delay,
                settings.quiet_period,
                settings.max_delay
            ),
            (ms(2_500), ms(3_500), ms(700), ms(20_000))
        );
        assert_eq!(settings.http_drain_port, Some(8081));
        assert_eq!(settings.http_drain_path, "/admin/drain");
        assert_eq!(settings.drain_budget, Some(ms(4_200)));
        assert_eq!(settings.report_max_bytes, 2_457);
        assert_eq!(settings.ports, written.ports);
        assert_eq!(settings.probes, written.probes);
        assert_eq!(settings.host_ip, Some([10, 0, 0, 7].into()));
        assert_eq!(settings.ports_of("web"), vec![8080, 8443]);
        assert!(settings.ports_of("api").is_empty());

        let flagged = serve_args(&["--delay-millis", "100", "--drain-mode", "delay"])
            .into_settings(lookup(written.to_env()))
            .expect("settings");
        assert_eq!(flagged.delay, ms(100));
        assert_eq!(flagged.drain_mode, DrainMode::Delay);
        assert_eq!(flagged.max_delay, ms(20_000));
    }

    #[test]
    fn a_node_address_that_is_not_one_is_ignored() {
        let env = vec![(names::ENV_HOST_IP, "not-an-ip".to_owned())];
        let settings = serve_args(&[])
            .into_settings(lookup(env))
            .expect("settings");
        assert_eq!(settings.host_ip, None);
    }

    #[test]
    fn nothing_set_means_the_drain_defaults() {
        let settings = serve_args(&[]).into_settings(|_| None).expect("settings");
        let defaults = crate::settings::test_settings();
        assert_eq!(settings.drain_mode, defaults.drain_mode);
        assert_eq!(
            (
                settings.delay,
                settings.min_delay,
                settings.quiet_period,
                settings.max_delay
            ),
            (
                defaults.delay,
                defaults.min_delay,
                defaults.quiet_period,
                defaults.max_delay
            )
        );
        assert_eq!(settings.grace, defaults.grace);
        assert_eq!(settings.drain_budget, None);
        assert_eq!(settings.http_drain_path, defaults.http_drain_path);
    }

    #[test]
    fn both_names_of_the_plain_log_format_are_accepted() {
        for value in ["plain", "text"] {
            let cli =
                Cli::try_parse_from(["lameduck", "--log-format", value, "probe"]).expect("parses");
            assert_eq!(cli.log.log_format, LogFormat::Plain);
        }
    }
}
