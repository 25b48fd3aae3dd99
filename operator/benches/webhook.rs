//! Handler latency for a typical two-container Deployment pod, in process: AdmissionReview
//! bytes in → opt-in decision from the caches → patch → AdmissionReview bytes out.
//! Criterion measures the mean; a plain loop afterwards prints p50/p99/p99.9 per call.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use lameduck_operator::webhook::admission::{AdmissionOutcome, Admitter};
use lameduck_operator::webhook::decide::{MetaSummary, MetadataIndex};
use lameduck_operator::webhook::patch::InjectionConfig;
use lameduck_operator::webhook::policy::NoPolicies;

/// The Deployment `web` (annotated) owning ReplicaSet `web-7d4b9c6f5`.
struct Caches;

impl MetadataIndex for Caches {
    fn workload(&self, kind: &str, _: &str, name: &str) -> Option<MetaSummary> {
        match (kind, name) {
            ("ReplicaSet", "web-7d4b9c6f5") => Some(MetaSummary {
                controller: Some(("Deployment".into(), "web".into())),
                ..MetaSummary::default()
            }),
            ("Deployment", "web") => Some(MetaSummary {
                inject: Some("true".into()),
                ..MetaSummary::default()
            }),
            _ => None,
        }
    }
    fn namespace_label(&self, _: &str) -> Option<String> {
        None
    }
}

fn setup() -> (Admitter, Vec<u8>) {
    let body = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/admission/multi_container.json"),
    )
    .expect("fixture");
    let admitter = Admitter {
        config: Arc::new(InjectionConfig::default()),
        policies: Arc::new(NoPolicies),
        index: Arc::new(Caches),
    };
    (admitter, body)
}

/// What the HTTP handler does per request, minus the socket.
fn handle(admitter: &Admitter, body: &[u8]) -> Vec<u8> {
    let reviewed = admitter.review(body).expect("valid");
    debug_assert_eq!(reviewed.outcome, AdmissionOutcome::Injected);
    serde_json::to_vec(&reviewed.review).expect("json")
}

fn bench(c: &mut Criterion) {
    let (admitter, body) = setup();
    c.bench_function("admission: two-container deployment pod", |b| {
        b.iter(|| handle(&admitter, black_box(&body)))
    });
}

fn percentiles() {
    let (admitter, body) = setup();
    for _ in 0..2_000 {
        black_box(handle(&admitter, &body));
    }
    let mut samples: Vec<u128> = (0..50_000)
        .map(|_| {
            let start = Instant::now();
            black_box(handle(&admitter, black_box(&body)));
            start.elapsed().as_nanos()
        })
        .collect();
    samples.sort_unstable();
    let q = |p: f64| {
        samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "admission handler, 50000 calls: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs",
        q(0.50),
        q(0.99),
        q(0.999),
        q(1.0)
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    percentiles();
}
