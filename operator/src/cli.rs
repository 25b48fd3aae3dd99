//! The command line: `run`, `crd`, `inject`, `cleanup`. Every flag can also be set by environment.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use lameduck_proto::{DRAIN_DEFAULTS, names};

use crate::webhook::patch::InjectionConfig;
use crate::webhook::policy::{DrainMode, DrainSettings, HttpDrain};

/// Log output format (`RUST_LOG` sets the filter): `plain` (or its other name, `text`) or
/// `json`, as for the sidecar.
pub use lameduck_proto::LogFormat;

/// The lameduck operator.
#[derive(Debug, Parser)]
#[command(name = "lameduck-operator", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, env = names::ENV_LOG_FORMAT, value_enum, default_value_t = LogFormat::Plain, global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: the injection webhook (and the ShutdownPolicy controller).
    Run(Box<RunArgs>),
    /// Print the ShutdownPolicy CRD YAML.
    Crd,
    /// Inject the sidecar into the pod templates of Kubernetes YAML, offline.
    Inject(InjectArgs),
    /// Delete what the operator created in its namespace (the self-managed certificate
    /// Secret, the leader Lease); the chart runs it after `helm uninstall`.
    Cleanup(CleanupArgs),
}

/// `cleanup` arguments.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The operator's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "lameduck-system")]
    pub namespace: String,
    /// The certificate Secret; deleted only if the operator wrote it.
    #[arg(
        long,
        env = "LAMEDUCK_CERT_SECRET",
        default_value = "lameduck-webhook-tls"
    )]
    pub cert_secret: String,
    /// The leader-election Lease.
    #[arg(long, env = "LAMEDUCK_LEASE", default_value = crate::controller::LEASE_NAME)]
    pub lease: String,
}

/// `inject` arguments.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Input file with one or more YAML documents; `-` reads standard input.
    #[arg(
        short = 'f',
        long = "filename",
        env = "LAMEDUCK_INJECT_FILE",
        default_value = "-"
    )]
    pub file: PathBuf,
    /// Sidecar settings.
    #[command(flatten)]
    pub injection: InjectionArgs,
}

/// What the injected sidecar looks like (shared by `run` and `inject`).
#[derive(Debug, Clone, Args)]
pub struct InjectionArgs {
    /// Image of the sidecar.
    #[arg(long, env = "LAMEDUCK_SIDECAR_IMAGE", default_value = concat!("lameduck-sidecar:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// imagePullPolicy of the sidecar.
    #[arg(
        long,
        env = "LAMEDUCK_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_image_pull_policy: String,
    /// Default drain mode for workloads without a ShutdownPolicy.
    #[arg(long, env = "LAMEDUCK_DEFAULT_DRAIN_MODE", value_enum, default_value_t = DRAIN_DEFAULTS.mode)]
    pub default_drain_mode: DrainMode,
    /// Default fixed deregister delay (no SDK).
    #[arg(long, env = "LAMEDUCK_DEFAULT_DRAIN_DELAY", default_value_t = DRAIN_DEFAULTS.delay.into())]
    pub default_drain_delay: humantime::Duration,
    /// Default minimum adaptive deregister delay. A workload without a ShutdownPolicy has
    /// learned nothing, so its pods wait at least the fixed delay.
    #[arg(long, env = "LAMEDUCK_DEFAULT_DRAIN_MIN_DELAY", default_value_t = DRAIN_DEFAULTS.min_delay.into())]
    pub default_drain_min_delay: humantime::Duration,
    /// Default quiet period that ends the adaptive deregister phase.
    #[arg(long, env = "LAMEDUCK_DEFAULT_DRAIN_QUIET_PERIOD", default_value_t = DRAIN_DEFAULTS.quiet_period.into())]
    pub default_drain_quiet_period: humantime::Duration,
    /// Default maximum adaptive deregister delay.
    #[arg(long, env = "LAMEDUCK_DEFAULT_DRAIN_MAX_DELAY", default_value_t = DRAIN_DEFAULTS.max_delay.into())]
    pub default_drain_max_delay: humantime::Duration,
    /// Default HTTP drain port (with `--default-drain-mode http`).
    #[arg(long, env = "LAMEDUCK_DEFAULT_DRAIN_HTTP_PORT")]
    pub default_drain_http_port: Option<u16>,
    /// Default HTTP drain path (with `--default-drain-mode http`).
    #[arg(
        long,
        env = "LAMEDUCK_DEFAULT_DRAIN_HTTP_PATH",
        default_value = DRAIN_DEFAULTS.http_path
    )]
    pub default_drain_http_path: String,
}

impl InjectionArgs {
    /// The injection configuration these flags describe.
    pub fn config(&self) -> anyhow::Result<InjectionConfig> {
        let Self {
            sidecar_image,
            sidecar_image_pull_policy,
            default_drain_mode,
            default_drain_delay,
            default_drain_min_delay,
            default_drain_quiet_period,
            default_drain_max_delay,
            default_drain_http_port,
            default_drain_http_path,
        } = self;
        let mode = *default_drain_mode;
        let http = match (mode, default_drain_http_port) {
            (DrainMode::Http, None) => {
                anyhow::bail!("--default-drain-mode http needs --default-drain-http-port")
            }
            (_, port) => port.map(|port| HttpDrain {
                port,
                path: default_drain_http_path.clone(),
            }),
        };
        let millis = |d: &humantime::Duration| lameduck_proto::drain::millis(**d);
        Ok(InjectionConfig {
            sidecar_image: sidecar_image.clone(),
            image_pull_policy: sidecar_image_pull_policy.clone(),
            default_drain: DrainSettings {
                mode,
                delay_millis: millis(default_drain_delay),
                min_delay_millis: millis(default_drain_min_delay),
                quiet_period_millis: millis(default_drain_quiet_period),
                max_delay_millis: millis(default_drain_max_delay),
                http,
                budget_millis: None,
            }
            // Only workloads without a ShutdownPolicy use these: nothing is learned.
            .unlearned(),
        })
    }
}

/// `run` arguments.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Address of the TLS webhook server (`/mutate`).
    #[arg(long, env = "LAMEDUCK_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Address of the plain-HTTP admin server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "LAMEDUCK_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// After SIGTERM, how long the webhook keeps admitting while `/readyz` fails, so that
    /// the API server stops sending admissions here before the listener closes (pod
    /// creation meanwhile is not admitted uninjected). The pod's grace period must exceed
    /// the delay plus `--shutdown-drain`.
    #[arg(long, env = "LAMEDUCK_SHUTDOWN_DELAY", value_parser = humantime::parse_duration, default_value = "10s")]
    pub shutdown_delay: Duration,
    /// How long open webhook connections may finish their requests once the listener is
    /// closed (HTTP/2 connections are told to go away).
    #[arg(long, env = "LAMEDUCK_SHUTDOWN_DRAIN", value_parser = humantime::parse_duration, default_value = "10s")]
    pub shutdown_drain: Duration,
    /// The operator's namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE", default_value = "lameduck-system")]
    pub namespace: String,
    /// The operator pod's name, the Events' reporting instance (downward API).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Certificates.
    #[command(flatten)]
    pub certs: CertArgs,
    /// Sidecar settings.
    #[command(flatten)]
    pub injection: InjectionArgs,
}

/// Webhook certificate flags.
#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    /// Serving certificate chain file (PEM) provided from outside (e.g. cert-manager); with
    /// `--tls-key-file` it replaces the self-managed certificates. Reloaded when it changes.
    #[arg(long, env = "LAMEDUCK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving key file (PEM) provided from outside.
    #[arg(long, env = "LAMEDUCK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Secret (in the operator's namespace) holding the self-managed CA and serving
    /// certificate, shared by the replicas.
    #[arg(
        long,
        env = "LAMEDUCK_CERT_SECRET",
        default_value = "lameduck-webhook-tls"
    )]
    pub cert_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps current (empty: none).
    #[arg(
        long,
        env = "LAMEDUCK_WEBHOOK_CONFIGURATION",
        default_value = "lameduck"
    )]
    pub webhook_configuration: String,
    /// Service in front of the webhook; the serving certificate covers
    /// `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local`.
    #[arg(
        long,
        env = "LAMEDUCK_WEBHOOK_SERVICE",
        default_value = "lameduck-webhook"
    )]
    pub service_name: String,
    /// More names (DNS names or IP addresses) for the serving certificate.
    #[arg(long = "cert-name", env = "LAMEDUCK_CERT_NAMES", value_delimiter = ',')]
    pub cert_names: Vec<String>,
    /// Lifetime of the self-managed CA.
    #[arg(long, env = "LAMEDUCK_CA_VALIDITY", value_parser = humantime::parse_duration, default_value = "3650days")]
    pub ca_validity: Duration,
    /// Lifetime of the self-managed serving certificate.
    #[arg(long, env = "LAMEDUCK_CERT_VALIDITY", value_parser = humantime::parse_duration, default_value = "90days")]
    pub cert_validity: Duration,
    /// How often certificates are checked (Secret, caBundle, files).
    #[arg(long, env = "LAMEDUCK_CERT_CHECK_INTERVAL", value_parser = humantime::parse_duration, default_value = "60s")]
    pub cert_check_interval: Duration,
}

/// `inject`: reads the file (or stdin), writes the injected YAML to stdout and a summary
/// per object to stderr.
pub fn inject(args: &InjectArgs) -> anyhow::Result<()> {
    let InjectArgs { file, injection } = args;
    let config = injection.config()?;
    let input = if file.as_os_str() == "-" {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading standard input")?;
        input
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let (output, reports) = crate::inject::inject_yaml(&input, &config)?;
    print!("{output}");
    for report in reports {
        eprintln!("{}: {}", report.object, report.result);
    }
    Ok(())
}

/// `cleanup`: deletes the operator's run-time objects and prints one line per object.
pub async fn cleanup(args: &CleanupArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let results =
        crate::cleanup::cleanup(client, &args.namespace, &args.cert_secret, &args.lease).await?;
    for (object, result) in results {
        println!("{object}: {result}");
    }
    Ok(())
}

/// `crd`: prints the ShutdownPolicy CRD.
pub fn crd() {
    print!("{}", crate::api::crd_yaml());
}

/// Sets up tracing: `RUST_LOG` filter (default `info`), plain or JSON lines on stderr.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn http_drain_mode_needs_a_port() {
        let cli = Cli::try_parse_from([
            "lameduck-operator",
            "inject",
            "--default-drain-mode",
            "http",
        ])
        .expect("parses");
        let Command::Inject(args) = cli.command else {
            panic!("inject")
        };
        assert!(args.injection.config().is_err());
    }

    #[test]
    fn without_flags_the_drain_settings_are_the_shared_defaults_unlearned() {
        let cli = Cli::try_parse_from(["lameduck-operator", "inject"]).expect("parses");
        let Command::Inject(args) = cli.command else {
            panic!("inject")
        };
        let config = args.injection.config().expect("config");
        assert_eq!(config.default_drain, DrainSettings::default().unlearned());
        assert_eq!(config.default_drain.min_delay_millis, 5_000);
    }

    #[test]
    fn both_names_of_the_plain_log_format_are_accepted() {
        for (value, want) in [
            ("plain", LogFormat::Plain),
            ("text", LogFormat::Plain),
            ("json", LogFormat::Json),
        ] {
            let cli = Cli::try_parse_from(["lameduck-operator", "--log-format", value, "crd"])
                .expect("parses");
            assert_eq!(cli.log_format, want, "{value}");
        }
    }

    #[test]
    fn drain_durations_become_milliseconds() {
        let cli = Cli::try_parse_from([
            "lameduck-operator",
            "inject",
            "--default-drain-delay",
            "2500ms",
            "--default-drain-max-delay",
            "1m",
        ])
        .expect("parses");
        let Command::Inject(args) = cli.command else {
            panic!("inject")
        };
        let config = args.injection.config().expect("config");
        assert_eq!(config.default_drain.delay_millis, 2500);
        assert_eq!(config.default_drain.max_delay_millis, 60_000);
    }
}
