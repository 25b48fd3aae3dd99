//! The termination report: what the sidecar writes to its termination message when it
//! exits, and what the operator reads back from the pod status.

use serde::{Deserialize, Serialize};

/// Version of the report shape, the `"v"` field.
pub const REPORT_VERSION: u32 = 1;

/// The kubelet keeps at most this many bytes of a termination message.
pub const REPORT_MAX_BYTES: usize = 4096;

/// How a shutdown (or one application's part of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The application acknowledged with `done {ok: true}` before the deadline.
    Acked,
    /// The deadline came before `done`.
    Timeout,
    /// No application was connected: the fixed delay or the HTTP drain fallback was used.
    NoApp,
    /// The application answered `done {ok: false}`.
    AppError,
    /// The application's connection closed before `done`.
    Disconnected,
    /// The sidecar was stopped without any preStop hook having asked for a shutdown.
    NoPrestop,
    /// An outcome this version does not know.
    #[serde(other)]
    Unknown,
}

impl Outcome {
    /// The wire name, as in the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Acked => "acked",
            Outcome::Timeout => "timeout",
            Outcome::NoApp => "no-app",
            Outcome::AppError => "app-error",
            Outcome::Disconnected => "disconnected",
            Outcome::NoPrestop => "no-prestop",
            Outcome::Unknown => "unknown",
        }
    }

    /// How bad an outcome is, to summarise several applications as the worst of them.
    fn severity(self) -> u8 {
        match self {
            Outcome::Acked => 0,
            Outcome::NoApp => 1,
            Outcome::NoPrestop => 2,
            Outcome::Unknown => 3,
            Outcome::AppError => 4,
            Outcome::Disconnected => 5,
            Outcome::Timeout => 6,
        }
    }

    /// The worse of two outcomes (a timeout outweighs a disconnect outweighs an error…).
    pub fn worst(self, other: Outcome) -> Outcome {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Phase durations in milliseconds; a phase that did not run is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasesMs {
    /// From T0 to the end of the deregister phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deregister: Option<u64>,
    /// From `drain` sent to the last `drained` (or the HTTP fallback's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<u64>,
    /// From the last `drained` to the last `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<u64>,
}

/// One application process's part of the shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppReport {
    /// The container it runs in.
    pub container: String,
    /// Its process id, when it said hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// How it finished.
    pub outcome: Outcome,
    /// Its error text for `app-error`, shortened to keep the report within bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The termination report, one JSON object of at most [`REPORT_MAX_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TerminationReport {
    /// Report version, [`REPORT_VERSION`].
    pub v: u32,
    /// When the first preStop client reached the sidecar (RFC 3339, milliseconds, UTC);
    /// absent when no preStop hook ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t0: Option<String>,
    /// The grace period the sidecar planned with.
    pub grace_seconds: u64,
    /// The overall outcome: the worst of the applications' outcomes.
    pub outcome: Outcome,
    /// Phase durations.
    #[serde(default)]
    pub phases_ms: PhasesMs,
    /// Milliseconds from T0 to the last connection accepted by any application (the
    /// deregister lag); absent when no SDK reported activity after T0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_accept_ms: Option<u64>,
    /// Milliseconds from T0 to the moment the last preStop hook was released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<u64>,
    /// Per-application outcomes.
    #[serde(default)]
    pub apps: Vec<AppReport>,
    /// Applications left out to stay within [`REPORT_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub apps_omitted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TerminationReport {
    /// Serializes the report in at most [`REPORT_MAX_BYTES`] bytes: error texts are
    /// shortened first, then applications are left out (counted in `apps_omitted`), so
    /// the result is always one complete JSON object.
    pub fn to_bounded_json(&self) -> String {
        let mut report = self.clone();
        let mut json = serde_json::to_string(&report).unwrap_or_default();
        if json.len() <= REPORT_MAX_BYTES {
            return json;
        }
        for app in &mut report.apps {
            if let Some(error) = &mut app.error {
                truncate_chars(error, 64);
            }
        }
        json = serde_json::to_string(&report).unwrap_or_default();
        while json.len() > REPORT_MAX_BYTES && !report.apps.is_empty() {
            report.apps.pop();
            report.apps_omitted += 1;
            json = serde_json::to_string(&report).unwrap_or_default();
        }
        json
    }

    /// Parses a termination message; anything else than a v1 report is an error.
    pub fn parse(message: &str) -> Result<Self, String> {
        let report: Self = serde_json::from_str(message.trim()).map_err(|e| e.to_string())?;
        if report.v != REPORT_VERSION {
            return Err(format!("unsupported report version {}", report.v));
        }
        Ok(report)
    }
}

fn truncate_chars(text: &mut String, max_chars: usize) {
    if let Some((index, _)) = text.char_indices().nth(max_chars) {
        text.truncate(index);
        text.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(apps: usize, error_len: usize) -> TerminationReport {
        TerminationReport {
            v: REPORT_VERSION,
            t0: Some("2026-11-26T12:00:00.123Z".into()),
            grace_seconds: 30,
            outcome: Outcome::AppError,
            phases_ms: PhasesMs {
                deregister: Some(1200),
                drain: Some(40),
                cleanup: Some(900),
            },
            last_accept_ms: Some(800),
            released_ms: Some(2140),
            apps: (0..apps)
                .map(|i| AppReport {
                    container: format!("c{i}"),
                    pid: Some(i as u32),
                    outcome: Outcome::AppError,
                    error: Some("é".repeat(error_len)),
                })
                .collect(),
            apps_omitted: 0,
        }
    }

    #[test]
    fn matches_the_documented_shape() {
        let json = report(1, 3).to_bounded_json();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["v"], 1);
        assert_eq!(value["outcome"], "app-error");
        assert_eq!(value["phases_ms"]["deregister"], 1200);
        assert_eq!(value["apps"][0]["container"], "c0");
        assert!(value.get("apps_omitted").is_none());
        assert_eq!(TerminationReport::parse(&json).unwrap(), report(1, 3));
    }

    #[test]
    fn stays_within_the_kubelet_limit() {
        for (apps, error_len) in [(1, 10_000), (200, 5), (500, 500)] {
            let json = report(apps, error_len).to_bounded_json();
            assert!(
                json.len() <= REPORT_MAX_BYTES,
                "{apps} apps: {} bytes",
                json.len()
            );
            let parsed = TerminationReport::parse(&json).unwrap();
            assert_eq!(parsed.apps.len() + parsed.apps_omitted, apps);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "garbage",
            "{}",
            r#"{"v":2,"grace_seconds":1,"outcome":"acked"}"#,
        ] {
            assert!(TerminationReport::parse(bad).is_err(), "{bad}");
        }
        let unknown = r#"{"v":1,"grace_seconds":1,"outcome":"vanished"}"#;
        assert_eq!(
            TerminationReport::parse(unknown).unwrap().outcome,
            Outcome::Unknown
        );
    }

    #[test]
    fn worst_outcome_wins() {
        assert_eq!(Outcome::Acked.worst(Outcome::Timeout), Outcome::Timeout);
        assert_eq!(Outcome::Timeout.worst(Outcome::Acked), Outcome::Timeout);
        assert_eq!(Outcome::NoApp.worst(Outcome::Acked), Outcome::NoApp);
    }
}
