//! Replays the shared test vectors (`proto/testdata/*.jsonl`, docs/protocol.md §8) whose
//! header lists `sdk`: the test plays the sidecar on a real Unix socket, the SDK plays an
//! application that drains and runs one cleanup function.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{FakeSidecar, STEP, now_unix_ms};
use serde_json::Value;

#[tokio::test]
async fn replays_every_sdk_transcript() {
    common::init_logging();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/testdata");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
        .collect();
    files.sort();
    let mut replayed = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read transcript");
        let steps: Vec<Value> = text
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).expect("transcript line is JSON"))
            .collect();
        let header = &steps[0];
        let for_sdk = header["for"]
            .as_array()
            .is_some_and(|f| f.iter().any(|s| s == "sdk"));
        if !for_sdk {
            continue;
        }
        let name = header["name"]
            .as_str()
            .expect("transcript name")
            .to_string();
        replay(&name, &steps[1..]).await;
        replayed.push(name);
    }
    for required in [
        "acked",
        "app_error",
        "forward_compatible",
        "sdk_deregister_plan",
        "sdk_rejects_garbage",
    ] {
        assert!(
            replayed.iter().any(|n| n == required),
            "{required} not replayed: {replayed:?}"
        );
    }
}

async fn replay(name: &str, steps: &[Value]) {
    let sidecar = FakeSidecar::new();
    let cleanup_fails = steps
        .iter()
        .any(|s| s["app"]["type"] == "done" && s["app"]["ok"] == false);
    let expects_done = steps.iter().any(|s| s["app"]["type"] == "done");
    let cleanups_run = Arc::new(AtomicUsize::new(0));

    let path = sidecar.path.clone();
    let runs = Arc::clone(&cleanups_run);
    let app = tokio::spawn(async move {
        let lameduck = lameduck::Builder::new()
            .socket(path)
            .container("web")
            .handle_signals(false)
            .connect()
            .await;
        lameduck.on_cleanup("flush", move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if cleanup_fails {
                Err("flush failed")
            } else {
                Ok(())
            }
        });
        let drain = lameduck.drain_started().await;
        (drain, lameduck.shutdown().await)
    });

    let mut conn = sidecar.accept().await;
    let deadline = now_unix_ms() + 10_000;
    for step in steps {
        if let Some(expected) = step.get("app") {
            let got = if expected["type"] == "activity" {
                conn.read().await
            } else {
                conn.read_non_activity().await
            };
            let got = got.unwrap_or_else(|| panic!("{name}: SDK closed, expected {expected}"));
            assert_contains(name, expected, &got, deadline);
        } else if let Some(message) = step.get("sidecar") {
            conn.send(&fill_wildcards(&substitute(message, deadline)))
                .await;
        } else if let Some(raw) = step.get("sidecar_raw") {
            let raw = raw.as_str().expect("sidecar_raw is a string");
            conn.send_raw(raw.replace("$deadline", &deadline.to_string()).as_bytes())
                .await;
        } else if let Some(side) = step.get("expect_closed") {
            assert_eq!(side, "app", "{name}: only the SDK's closing is tested here");
            conn.expect_closed().await;
        }
        // `app_raw`, `prestop` and `outcome` concern the sidecar (protocol.md §8).
    }

    if expects_done {
        let (drain, shutdown) = tokio::time::timeout(STEP, app)
            .await
            .unwrap_or_else(|_| panic!("{name}: the SDK did not finish"))
            .unwrap_or_else(|e| panic!("{name}: the application task failed: {e}"));
        assert_eq!(drain.source(), lameduck::DrainSource::Sidecar, "{name}");
        assert!(
            drain.deadline_unix_ms().abs_diff(deadline) < 1000,
            "{name}: {drain:?}"
        );
        assert_eq!(shutdown.is_ok(), !cleanup_fails, "{name}: {shutdown:?}");
        assert!(
            shutdown.acknowledged(),
            "{name}: done did not reach the sidecar"
        );
        assert_eq!(
            cleanups_run.load(Ordering::SeqCst),
            1,
            "{name}: cleanup runs exactly once"
        );
    } else {
        // The SDK dropped the connection and keeps running (no panic), waiting for a drain.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(
            !app.is_finished(),
            "{name}: the application task ended: {:?}",
            app.await
        );
        app.abort();
    }
}

/// Replaces the `"$deadline"` placeholder by the deadline number.
fn substitute(message: &Value, deadline: u64) -> Value {
    match message {
        Value::String(s) if s == "$deadline" => Value::from(deadline),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, deadline)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Gives `"*"` in a message the test sends a concrete value: the transcripts use it in
/// `welcome.grace_seconds`, which only needs to be some number.
fn fill_wildcards(message: &Value) -> Value {
    match message {
        Value::String(s) if s == "*" => Value::from(30),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill_wildcards(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every field of `expected` is in `got` with the same value (`"*"`: any value).
fn assert_contains(name: &str, expected: &Value, got: &Value, deadline: u64) {
    let expected = expected.as_object().expect("app step is an object");
    for (field, want) in expected {
        let have = got
            .get(field)
            .unwrap_or_else(|| panic!("{name}: {got} lacks {field}"));
        if want == "*" {
            continue;
        }
        assert_eq!(
            have,
            &substitute(want, deadline),
            "{name}: field {field} of {got}"
        );
    }
}
