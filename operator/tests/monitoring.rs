//! The chart's alert rules and dashboard query only metrics the operator exports: a
//! renamed or removed metric fails here, not silently in someone's Prometheus.

use std::collections::BTreeSet;

use lameduck_operator::client_metrics::ClientMetrics;
use lameduck_operator::controller::ControllerMetrics;
use lameduck_operator::metrics::Metrics;

/// Every metric name the operator exports (the names of the `# TYPE` lines). A family is
/// encoded only once it has a series: the test gives every family one.
fn exported() -> BTreeSet<String> {
    use lameduck_operator::client_metrics::{RequestLabels, ResourceLabels, VerbLabels};
    use lameduck_operator::controller::metrics::CauseLabels;
    use lameduck_operator::controller::{
        ControllerLabels, ErrorLabels, PolicyKey, PolicyLabels, RestartLabels,
    };
    use lameduck_operator::observe::Cause;

    let metrics = Metrics::default();
    metrics.observe_admission("injected", std::time::Duration::from_micros(50));
    metrics.events_dropped.inc();
    metrics.serving_cert_expiry.set(1);
    let client = metrics.with_registry(ClientMetrics::register).unwrap();
    client
        .requests
        .get_or_create(&RequestLabels {
            verb: "get",
            code: "200".into(),
        })
        .inc();
    client
        .duration
        .get_or_create(&VerbLabels { verb: "get" })
        .observe(0.01);
    client
        .open_watches
        .get_or_create(&ResourceLabels {
            resource: "pods".into(),
        })
        .set(1);
    let controller = metrics.with_registry(ControllerMetrics::register).unwrap();
    let key = PolicyKey {
        namespace: "shop".into(),
        name: "deployment-web".into(),
    };
    let policy = PolicyLabels {
        namespace: key.namespace.clone(),
        policy: key.name.clone(),
    };
    let by_cause = CauseLabels::new(&key, Cause::Deletion);
    controller.observations.get_or_create(&by_cause).inc();
    controller.cut_short.get_or_create(&by_cause).inc();
    controller
        .refused_connections
        .get_or_create(&by_cause)
        .inc();
    for family in [
        &controller.kills,
        &controller.timeouts,
        &controller.unobserved,
    ] {
        family.get_or_create(&policy).inc();
    }
    for family in [
        &controller.recommendation,
        &controller.needed,
        &controller.exceeded,
        &controller.without_sidecar,
    ] {
        family.get_or_create(&policy).set(1);
    }
    controller
        .container_restart_shutdowns
        .get_or_create(&RestartLabels {
            namespace: key.namespace.clone(),
            policy: key.name.clone(),
            outcome: "acked",
        })
        .inc();
    controller.terminating.set(1);
    controller
        .errors
        .get_or_create(&ErrorLabels {
            controller: "status",
            kind: "api",
        })
        .inc();
    controller
        .reconcile_duration
        .get_or_create(&ControllerLabels {
            controller: "status",
        })
        .observe(0.01);
    controller.status_patches.inc();
    metrics
        .encode()
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn read(path: &str) -> String {
    let file = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The `lameduck_…` names a text mentions.
fn mentioned(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("lameduck_") {
        let rest = &text[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        names.insert(rest[..end].to_owned());
    }
    names
}

/// The names in `text` the operator does not export.
fn unknown(text: &str) -> Vec<String> {
    let exported = exported();
    mentioned(text)
        .into_iter()
        .filter(|name| {
            // A counter's samples end in `_total`, a histogram's in `_bucket`, `_sum`, `_count`.
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            !exported.contains(name) && !exported.contains(base)
        })
        .collect()
}

#[test]
fn alert_rules_query_exported_metrics() {
    let path = "charts/lameduck/files/alerts.yaml";
    let text = read(path);
    assert!(mentioned(&text).len() >= 8, "{:?}", mentioned(&text));
    assert_eq!(
        unknown(&text),
        Vec::<String>::new(),
        "in {path}: not exported by the operator"
    );
}

#[test]
fn dashboard_queries_exported_metrics() {
    let path = "charts/lameduck/files/dashboard.json";
    let text = read(path);
    assert!(mentioned(&text).len() >= 10, "{:?}", mentioned(&text));
    assert_eq!(
        unknown(&text),
        Vec::<String>::new(),
        "in {path}: not exported by the operator"
    );
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "lameduck");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
}

#[test]
fn an_unknown_name_is_caught() {
    // The check itself: a name the operator does not export is reported, suffixes of the
    // exported ones are not.
    assert_eq!(
        unknown("rate(lameduck_kills_total[5m]) + lameduck_kills_sum + lameduck_no_such_metric"),
        ["lameduck_no_such_metric"]
    );
}
