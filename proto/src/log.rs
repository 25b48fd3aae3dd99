//! The log format setting the operator and the sidecar share (`LAMEDUCK_LOG_FORMAT`).

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines (`plain`; `text` is accepted as another name for it).
    #[default]
    #[cfg_attr(feature = "cli", value(alias = "text"))]
    Plain,
    /// One JSON object per line.
    Json,
}
