//! Replays the shared transcripts in `proto/testdata/` against the real sidecar: the test
//! plays the application (and runs the preStop hook where a transcript says so).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn transcripts() -> Vec<(String, Vec<Value>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let steps = std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display()))
                })
                .collect();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                steps,
            )
        })
        .collect()
}

/// Fills in `"*"` placeholders of a message the test sends.
fn concrete(message: &Value) -> Value {
    let mut message = message.clone();
    if let Some(fields) = message.as_object_mut() {
        for (key, value) in fields.iter_mut() {
            if value == "*" {
                *value = match key.as_str() {
                    "container" => "web".into(),
                    "error" => "cleanup failed".into(),
                    _ => 42.into(),
                };
            }
        }
    }
    message
}

/// Whether `got` has every field of `want` (`"*"` and `"$deadline"` match any value).
fn matches(want: &Value, got: &Value) -> bool {
    want.as_object().is_some_and(|fields| {
        fields.iter().all(|(key, value)| match value {
            Value::String(s) if s == "*" || s == "$deadline" => got.get(key).is_some(),
            _ => got.get(key) == Some(value),
        })
    })
}

#[test]
fn every_sidecar_transcript_replays() {
    let all = transcripts();
    assert!(
        all.len() >= 8,
        "expected the shared transcripts, found {}",
        all.len()
    );
    let mut replayed = 0;
    for (name, steps) in all {
        let header = &steps[0];
        if !header["for"]
            .as_array()
            .is_some_and(|f| f.iter().any(|s| s == "sidecar"))
        {
            continue;
        }
        replay(&name, &steps[1..]);
        replayed += 1;
    }
    assert!(replayed >= 8, "only {replayed} transcripts replayed");
}

fn replay(name: &str, steps: &[Value]) {
    let mut sidecar = Sidecar::start(
        10,
        &["--quiet-period-millis", "100", "--min-delay-millis", "100"],
    );
    let mut app = Some(RawApp::connect(&sidecar));
    let mut hook: Option<Hook> = None;
    for step in steps {
        if let Some(outcome) = step.get("outcome").and_then(Value::as_str) {
            let hook = hook
                .as_mut()
                .unwrap_or_else(|| panic!("{name}: outcome without prestop"));
            hook.wait(Instant::now() + Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{name}: hook hung"));
            assert!(
                hook.log().contains(&format!("outcome={outcome}")),
                "{name}: hook log: {}",
                hook.log()
            );
            continue;
        }
        let app_ref = app
            .as_mut()
            .unwrap_or_else(|| panic!("{name}: step {step} after close"));
        if let Some(message) = step.get("app") {
            app_ref.send(concrete(message));
        } else if let Some(raw) = step.get("app_raw").and_then(Value::as_str) {
            if raw == "$64k" {
                app_ref.send_raw(&vec![b'x'; 64 * 1024 + 1]);
            } else {
                app_ref.send_raw(raw.as_bytes());
            }
        } else if let Some(want) = step.get("sidecar") {
            let got = app_ref
                .recv()
                .unwrap_or_else(|| panic!("{name}: closed, expected {want}\n{}", sidecar.log()));
            assert!(matches(want, &got), "{name}: expected {want}, got {got}");
        } else if let Some(container) = step.get("prestop").and_then(Value::as_str) {
            hook = Some(sidecar.exec_prestop(container));
        } else if let Some(side) = step.get("expect_closed").and_then(Value::as_str) {
            match side {
                "sidecar" => assert!(
                    app_ref.recv().is_none(),
                    "{name}: the sidecar kept the connection open"
                ),
                _ => app = None,
            }
        } else if let Some(raw) = step.get("sidecar_raw").and_then(Value::as_str) {
            // The real sidecar sends its own bytes: only the message type can be compared.
            let want: Value = serde_json::from_str(&raw.replace("$deadline", "0")).unwrap();
            if want["type"] == "drain" || want["type"] == "deregister" {
                let got = app_ref.recv();
                let got = got.unwrap_or_else(|| panic!("{name}: closed, expected {want}"));
                assert_eq!(got["type"], want["type"], "{name}");
            }
        } else {
            panic!("{name}: unknown step {step}");
        }
    }
    assert!(sidecar.probe(), "{name}: the sidecar stopped serving");
    let (report, log) = sidecar.stop();
    assert!(!log.contains("panicked"), "{name}: {log}");
    if let Some(outcome) = steps
        .iter()
        .find_map(|s| s.get("outcome").and_then(Value::as_str))
    {
        assert_eq!(
            report.outcome.as_str(),
            outcome,
            "{name}: report {report:?}"
        );
    }
}
