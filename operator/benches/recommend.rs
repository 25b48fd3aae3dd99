//! Recommender throughput: `cargo bench -p lameduck-operator --bench recommend`.
//!
//! `record` is what the observer does per terminated pod; `recommend` is what the status
//! writer does per policy and batch. The goal is ≥ 100k observations/s on one core.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lameduck_operator::recommend::{
    DeregisterSettings, GracePeriodSettings, History, PhaseDurations, Sample,
};

const BATCH: u64 = 10_000;

fn samples() -> Vec<Sample> {
    // A cheap deterministic spread of durations (0.2 s … 120 s), some kills, one per second.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..BATCH as i64)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let duration_ms = 200 + state % 120_000;
            Sample {
                at_unix_ms: 1_800_000_000_000 + i * 1000,
                duration_ms,
                sequence_ms: Some(duration_ms.saturating_sub(100)),
                grace_seconds: 60,
                killed: state.is_multiple_of(97),
                timed_out: state.is_multiple_of(89),
                deregister_lag_ms: Some(state % 5_000),
                phases: PhaseDurations {
                    deregister: Some(state % 5_000),
                    drain: Some(duration_ms / 4),
                    cleanup: Some(duration_ms / 2),
                    exit: Some(100),
                },
                refused: None,
                open_at_release: 0,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let settings = GracePeriodSettings::default();
    let samples = samples();
    let mut group = c.benchmark_group("recommender");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("record", |b| {
        b.iter(|| {
            let mut history = History::new();
            for sample in &samples {
                history.record(black_box(sample), &settings);
            }
            history
        })
    });
    group.finish();

    let mut history = History::new();
    for sample in &samples {
        history.record(sample, &settings);
    }
    let dereg = DeregisterSettings::default();
    c.bench_function("recommender/recommend", |b| {
        b.iter(|| black_box(&history).recommend(&settings, &dereg, 1_800_010_000_000, Some(90)))
    });
    c.bench_function("recommender/state_round_trip", |b| {
        b.iter(|| {
            let json = serde_json::to_string(&black_box(&history).to_state()).unwrap_or_default();
            serde_json::from_str::<lameduck_operator::recommend::HistoryState>(&json)
                .map(|s| History::from_state(&s))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
