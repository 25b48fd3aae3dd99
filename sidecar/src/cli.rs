//! Command line: every setting is a flag with an environment-variable equivalent, so the
//! binary runs outside a pod exactly as inside one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use lameduck_proto::{names, timing};

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
    #[arg(long, env = "LAMEDUCK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the tracing subscriber; logs go to stderr so stdout stays free.
pub fn init_logging(args: &LogArgs) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        // Container logs are files, not terminals: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match args.log_format {
        LogFormat::Text => builder.init(),
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
            Command::Serve(args) => crate::serve::run(args.into_settings()).await,
            Command::Prestop(args) => {
                crate::clients::prestop(
                    &args.dir,
                    &args.container,
                    args.grace_seconds,
                    args.fallback_delay(),
                )
                .await
            }
            Command::Probe(args) => crate::clients::probe(&args.dir).await,
        }
    }
}

/// Flags of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The shared directory: the binary is copied to DIR/bin, the sockets live in DIR/run.
    #[arg(long, env = names::ENV_DIR, default_value = names::MOUNT_PATH)]
    pub dir: PathBuf,
    /// Where the termination report is written when the sidecar stops.
    #[arg(long, env = names::ENV_TERMINATION_LOG, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// The pod's terminationGracePeriodSeconds.
    #[arg(long, env = names::ENV_GRACE_SECONDS, default_value_t = 30)]
    pub grace_seconds: u64,
    /// How the deregister phase ends: adaptively from SDK activity (auto), after a fixed
    /// delay (delay), or a fixed delay followed by an HTTP call to the app (http).
    #[arg(long, env = names::ENV_DRAIN_MODE, value_enum, default_value_t = DrainMode::Auto)]
    pub drain_mode: DrainMode,
    /// Fixed deregister delay used without an SDK (milliseconds).
    #[arg(long, env = names::ENV_DELAY_MILLIS, default_value_t = 5000)]
    pub delay_millis: u64,
    /// Shortest adaptive deregister phase (milliseconds).
    #[arg(long, env = names::ENV_MIN_DELAY_MILLIS, default_value_t = 1000)]
    pub min_delay_millis: u64,
    /// Adaptive phase: how long no new connection must arrive (milliseconds).
    #[arg(long, env = names::ENV_QUIET_PERIOD_MILLIS, default_value_t = 1000)]
    pub quiet_period_millis: u64,
    /// Longest adaptive deregister phase (milliseconds).
    #[arg(long, env = names::ENV_MAX_DELAY_MILLIS, default_value_t = 15000)]
    pub max_delay_millis: u64,
    /// Time kept back before the grace deadline for SIGTERM to end the app (milliseconds;
    /// never more than half the grace period).
    #[arg(long, env = names::ENV_EXIT_RESERVE_MILLIS, default_value_t = timing::DEFAULT_EXIT_RESERVE_MILLIS)]
    pub exit_reserve_millis: u64,
    /// Port of the app's HTTP drain endpoint on 127.0.0.1 (mode http).
    #[arg(long, env = names::ENV_HTTP_DRAIN_PORT, required_if_eq("drain_mode", "http"))]
    pub http_drain_port: Option<u16>,
    /// Path of the app's HTTP drain endpoint (mode http).
    #[arg(long, env = names::ENV_HTTP_DRAIN_PATH, default_value = "/drain")]
    pub http_drain_path: String,
    /// Time the deregister phase must leave for drain and cleanup (milliseconds; the
    /// policy's learned p99 with its margin). 0: half of the budget.
    #[arg(long, env = names::ENV_DRAIN_BUDGET_MILLIS, default_value_t = 0)]
    pub drain_budget_millis: u64,
    /// Bytes of termination message the kubelet keeps for this container (12288 divided by
    /// the pod's containers, at most 4096).
    #[arg(long, env = names::ENV_REPORT_MAX_BYTES, default_value_t = lameduck_proto::REPORT_MAX_BYTES)]
    pub report_max_bytes: usize,
    /// Do not copy the binary to DIR/bin (for running several sidecars from one binary).
    #[arg(long, env = "LAMEDUCK_NO_INSTALL")]
    pub no_install: bool,
}

impl ServeArgs {
    fn into_settings(self) -> Settings {
        let ms = std::time::Duration::from_millis;
        Settings {
            dir: self.dir,
            termination_log: self.termination_log,
            grace: std::time::Duration::from_secs(self.grace_seconds),
            drain_mode: self.drain_mode,
            delay: ms(self.delay_millis),
            min_delay: ms(self.min_delay_millis),
            quiet_period: ms(self.quiet_period_millis),
            max_delay: ms(self.max_delay_millis),
            exit_reserve: ms(self.exit_reserve_millis),
            http_drain_port: self.http_drain_port,
            http_drain_path: self.http_drain_path,
            drain_budget: Some(ms(self.drain_budget_millis)).filter(|d| !d.is_zero()),
            report_max_bytes: self.report_max_bytes,
            install: !self.no_install,
        }
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

    #[test]
    fn http_mode_needs_a_port() {
        let err = Cli::try_parse_from(["lameduck", "serve", "--drain-mode", "http"]).unwrap_err();
        assert!(err.to_string().contains("--http-drain-port"), "{err}");
    }
}
