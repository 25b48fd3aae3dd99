//! The termination report: what the sidecar writes to its termination message when it
//! exits, and what the operator reads back from the pod status.

use serde::{Deserialize, Serialize};

/// Version of the report shape, the `"v"` field. Version 2 added `restarts`, version 3
/// `refused` and `connections` (the kernel's view); a reader also accepts versions 1 and 2
/// (the same shape without them).
pub const REPORT_VERSION: u32 = 3;

/// The kubelet keeps at most this many bytes of one container's termination message.
pub const REPORT_MAX_BYTES: usize = 4096;

/// The kubelet keeps at most this many bytes of termination messages per pod, shared
/// equally by every container of the pod (regular, init and ephemeral).
pub const POD_TERMINATION_MESSAGES_MAX_BYTES: usize = 12288;

/// The smallest report budget a sidecar plans with; a pod would need more than 24
/// containers to leave less, and a report this small still holds the outcome and phases.
pub const REPORT_MIN_BYTES: usize = 512;

/// Longest error text kept for one application (characters); longer texts are cut when
/// they arrive, so a long error can never crowd the rest of the report out.
pub const ERROR_MAX_CHARS: usize = 256;

/// The bytes of termination message the kubelet keeps for each container of a pod with
/// `containers` containers in all (regular + init + ephemeral): 12288 / containers, at most
/// 4096, never planned below [`REPORT_MIN_BYTES`].
pub fn report_budget(containers: usize) -> usize {
    (POD_TERMINATION_MESSAGES_MAX_BYTES / containers.max(1))
        .clamp(REPORT_MIN_BYTES, REPORT_MAX_BYTES)
}

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

/// A container-level shutdown that was followed by a new process of the same container:
/// the kubelet killed the container (failed liveness or startup probe) and restarted it,
/// the pod was not deleted. Reported apart so that it is not mixed with the pod's own
/// shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReport {
    /// The container that was stopped and restarted.
    pub container: String,
    /// When its preStop hook reached the sidecar (RFC 3339, milliseconds, UTC).
    pub t0: String,
    /// How its applications finished.
    pub outcome: Outcome,
    /// Phase durations of that container's sequence.
    #[serde(default)]
    pub phases_ms: PhasesMs,
    /// Milliseconds from its T0 to the release of its hook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ms: Option<u64>,
}

/// The connections one served port had open at the two moments that matter to clients
/// with long-lived connections (keep-alive, gRPC streams, WebSockets), from the kernel's
/// socket table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConnections {
    /// The container that declares the port, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The port.
    pub port: u16,
    /// Established connections when the drain started (end of the deregister phase).
    pub at_drain: u32,
    /// Established connections when the hook was released.
    pub at_release: u32,
}

/// The termination report, one JSON object within the kubelet's per-container budget
/// ([`report_budget`], at most [`REPORT_MAX_BYTES`]).
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
    /// Applications left out to stay within the byte budget.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub apps_omitted: usize,
    /// Container-level shutdowns of this pod's life that were followed by a restart of the
    /// container (oldest first); not part of the pod's own shutdown above.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<RestartReport>,
    /// Restart records left out (oldest first) to stay within the byte budget.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts_omitted: usize,
    /// Connection attempts the pod answered with a reset after its listeners closed, until
    /// the report was written (the kernel's `OutRsts` over that window): clients that were
    /// still sent to the pod after it let go. Absent when the kernel view was unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
    /// Per served port, the connections open at drain and at release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<PortConnections>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl TerminationReport {
    /// Serializes the report in at most `max_bytes` bytes (capped at [`REPORT_MAX_BYTES`],
    /// at least [`REPORT_MIN_BYTES`]), so that the kubelet's cut never falls inside it.
    /// What goes first: long error texts are shortened, then the oldest restart records
    /// are left out, then error texts, and only then applications (counted in
    /// `apps_omitted`). The result is always one complete JSON object.
    pub fn to_bounded_json(&self, max_bytes: usize) -> String {
        let max = max_bytes.clamp(REPORT_MIN_BYTES, REPORT_MAX_BYTES);
        let mut report = self.clone();
        let encode = |r: &Self| serde_json::to_string(r).unwrap_or_default();
        let mut json = encode(&report);
        if json.len() <= max {
            return json;
        }
        for app in &mut report.apps {
            if let Some(error) = &mut app.error {
                truncate_chars(error, 64);
            }
        }
        json = encode(&report);
        while json.len() > max && !report.restarts.is_empty() {
            report.restarts.remove(0);
            report.restarts_omitted += 1;
            json = encode(&report);
        }
        while json.len() > max && !report.connections.is_empty() {
            report.connections.pop();
            json = encode(&report);
        }
        if json.len() > max {
            for app in &mut report.apps {
                app.error = None;
            }
            json = encode(&report);
        }
        while json.len() > max && !report.apps.is_empty() {
            report.apps.pop();
            report.apps_omitted += 1;
            json = encode(&report);
        }
        json
    }

    /// Parses a termination message: a version 1, 2 or 3 report, anything else is an error.
    pub fn parse(message: &str) -> Result<Self, String> {
        let report: Self = serde_json::from_str(message.trim()).map_err(|e| e.to_string())?;
        if !(1..=REPORT_VERSION).contains(&report.v) {
            return Err(format!("unsupported report version {}", report.v));
        }
        Ok(report)
    }
}

/// Shortens `text` in place to at most `max_chars` characters (plus an ellipsis).
pub fn truncate_chars(text: &mut String, max_chars: usize) {
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
            restarts: Vec::new(),
            restarts_omitted: 0,
            refused: None,
            connections: vec![],
        }
    }

    fn restart(i: usize) -> RestartReport {
        RestartReport {
            container: format!("c{i}"),
            t0: "2026-11-26T11:00:00.123Z".into(),
            outcome: Outcome::Acked,
            phases_ms: PhasesMs {
                deregister: Some(1000),
                drain: Some(5),
                cleanup: Some(10),
            },
            released_ms: Some(1015),
        }
    }

    #[test]
    fn matches_the_documented_shape() {
        let json = report(1, 3).to_bounded_json(REPORT_MAX_BYTES);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["v"], 3);
        assert!(value.get("restarts").is_none(), "empty lists stay out");
        assert!(value.get("connections").is_none(), "empty lists stay out");
        assert!(value.get("refused").is_none(), "no kernel view, no figure");
        assert_eq!(value["outcome"], "app-error");
        assert_eq!(value["phases_ms"]["deregister"], 1200);
        assert_eq!(value["apps"][0]["container"], "c0");
        assert!(value.get("apps_omitted").is_none());
        assert_eq!(TerminationReport::parse(&json).unwrap(), report(1, 3));
    }

    #[test]
    fn stays_within_the_kubelet_limit() {
        for (apps, error_len) in [(1, 10_000), (200, 5), (500, 500)] {
            let json = report(apps, error_len).to_bounded_json(REPORT_MAX_BYTES);
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
    fn budget_is_the_kubelets_share_per_container() {
        assert_eq!(report_budget(1), 4096);
        assert_eq!(report_budget(3), 4096);
        assert_eq!(report_budget(4), 3072);
        assert_eq!(report_budget(7), 1755);
        assert_eq!(report_budget(0), 4096);
        assert_eq!(report_budget(100), REPORT_MIN_BYTES);
    }

    #[test]
    fn trimming_drops_old_restarts_and_errors_before_any_app() {
        let mut full = report(2, 3000);
        full.restarts = (0..30).map(restart).collect();
        for budget in [report_budget(4), report_budget(6), REPORT_MIN_BYTES] {
            let json = full.to_bounded_json(budget);
            assert!(json.len() <= budget, "{} > {budget}", json.len());
            let parsed = TerminationReport::parse(&json).unwrap();
            assert_eq!(parsed.apps.len(), 2, "both apps kept at {budget} bytes");
            assert_eq!(parsed.apps_omitted, 0);
            assert_eq!(parsed.restarts.len() + parsed.restarts_omitted, 30);
            if let Some(last) = parsed.restarts.last() {
                assert_eq!(last.container, "c29", "the newest restarts are kept");
            }
            assert_eq!(parsed.phases_ms, full.phases_ms);
        }
    }

    #[test]
    fn a_long_error_in_a_crowded_pod_still_parses_after_the_kubelets_cut() {
        // What the kubelet keeps of a message is its first `budget` bytes: the report
        // must already fit, or the cut makes it unparseable.
        for containers in [4, 6] {
            let budget = report_budget(containers);
            let json = report(1, 20_000).to_bounded_json(budget);
            let kept: String = json.chars().take(budget).collect();
            let parsed = TerminationReport::parse(&kept).unwrap();
            assert_eq!(parsed.outcome, Outcome::AppError);
            assert_eq!(parsed.apps.len(), 1);
        }
    }

    #[test]
    fn version_one_reports_still_parse() {
        let v1 = r#"{"v":1,"t0":"2026-11-26T12:00:00.123Z","grace_seconds":30,"outcome":"acked","phases_ms":{"deregister":1200},"apps":[]}"#;
        let parsed = TerminationReport::parse(v1).unwrap();
        assert_eq!(parsed.v, 1);
        assert!(parsed.restarts.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "garbage",
            "{}",
            r#"{"v":4,"grace_seconds":1,"outcome":"acked"}"#,
            r#"{"v":0,"grace_seconds":1,"outcome":"acked"}"#,
        ] {
            assert!(TerminationReport::parse(bad).is_err(), "{bad}");
        }
        let unknown = r#"{"v":2,"grace_seconds":1,"outcome":"vanished"}"#;
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
