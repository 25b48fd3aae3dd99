use proptest::prelude::*;

use super::*;

const SECOND: i64 = 1000;
const HOUR: i64 = 3600 * SECOND;
const DAY: i64 = 24 * HOUR;

/// A shutdown with a report: the sequence took `sequence_ms`, the exit 100 ms after it.
fn reported(at_unix_ms: i64, sequence_ms: u64) -> Sample {
    Sample {
        at_unix_ms,
        duration_ms: sequence_ms + 100,
        sequence_ms: Some(sequence_ms),
        grace_seconds: 30,
        killed: false,
        timed_out: false,
        deregister_lag_ms: None,
        phases: PhaseDurations {
            exit: Some(100),
            ..PhaseDurations::default()
        },
        refused: None,
        open_at_release: 0,
    }
}

/// A shutdown without a report (no sidecar report): only the whole duration is known.
fn unreported(at_unix_ms: i64, duration_ms: u64) -> Sample {
    Sample {
        sequence_ms: None,
        phases: PhaseDurations::default(),
        duration_ms,
        ..reported(at_unix_ms, 0)
    }
}

fn killed(at_unix_ms: i64, grace_seconds: u32) -> Sample {
    Sample {
        grace_seconds,
        killed: true,
        ..unreported(at_unix_ms, u64::from(grace_seconds) * 1000 + 1500)
    }
}

/// The sidecar gave up at `G − 2 s` before the application acknowledged.
fn timed_out(at_unix_ms: i64, grace_seconds: u32) -> Sample {
    let deadline = u64::from(grace_seconds) * 1000 - exit_reserve_ms(grace_seconds);
    Sample {
        grace_seconds,
        timed_out: true,
        ..reported(at_unix_ms, deadline + 1)
    }
}

fn history(samples: &[Sample], settings: &GracePeriodSettings) -> History {
    let mut history = History::new();
    for s in samples {
        history.record(s, settings);
    }
    history
}

fn recommend(
    h: &History,
    settings: &GracePeriodSettings,
    now: i64,
    applied: Option<u32>,
) -> Recommendation {
    h.recommend(settings, &DeregisterSettings::default(), now, applied)
}

#[test]
fn no_recommendation_below_min_samples() {
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..4).map(|i| reported(i * SECOND, 10_000)).collect();
    let r = recommend(&history(&samples, &settings), &settings, 4 * SECOND, None);
    assert!(r.low_confidence);
    assert_eq!(r.grace_period_seconds, None);
    assert_eq!(r.target_seconds, None);
}

#[test]
fn the_target_covers_sequence_reserve_exit_precision_and_buffer() {
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..100).map(|i| reported(i * SECOND, 10_000)).collect();
    let h = history(&samples, &settings);
    let r = recommend(&h, &settings, 100 * SECOND, None);
    // q(sequence) = upper edge of the bucket holding 10 s (≤ 10.5 s) × 1.2 = 12.6
    // + 2 s exit reserve + q(exit) 0.1 s + 1 s precision + 1 s buffer = 16.7 → 17.
    assert!(!r.low_confidence);
    assert_eq!(r.target_seconds, Some(17));
    // 100 samples: ±12.5 %.
    assert_eq!(r.lower_bound_seconds, Some(14)); // 17 × 0.875 = 14.9
    assert_eq!(r.upper_bound_seconds, Some(20)); // 17 × 1.125 = 19.1
    // A new value starts at the upper bound: safe first.
    assert_eq!(r.grace_period_seconds, Some(20));
    assert!(!r.capped());
    // The sidecar's deadline, G − 2 s, leaves the sequence its p99 plus the margin.
    let deadline = f64::from(r.grace_period_seconds.unwrap()) - 2.0;
    assert!(deadline >= 10.5 * 1.2, "deadline {deadline}");
}

#[test]
fn without_a_report_the_whole_duration_counts_as_sequence() {
    let settings = GracePeriodSettings::default();
    let with_report: Vec<_> = (0..20).map(|i| reported(i * SECOND, 6_000)).collect();
    let without: Vec<_> = (0..20).map(|i| unreported(i * SECOND, 6_000)).collect();
    let a = recommend(
        &history(&with_report, &settings),
        &settings,
        20 * SECOND,
        None,
    );
    let b = recommend(&history(&without, &settings), &settings, 20 * SECOND, None);
    // 6 s + 1 s of finishedAt precision, as sequence: more than the reported 6 s.
    assert!(b.target_seconds > a.target_seconds, "{a:?} {b:?}");
}

#[test]
fn an_older_status_without_sequence_uses_the_duration() {
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..20).map(|i| reported(i * SECOND, 6_000)).collect();
    let mut state = history(&samples, &settings).to_state();
    state.sequence = HistogramState::default();
    let old = History::from_state(&state);
    let r = recommend(&old, &settings, 20 * SECOND, None);
    // q(duration 6.1 s) ≤ 6.3 s, + 1 s precision = 7.3 × 1.2 + 2 + 0.1 + 1 + 1 = 12.9 → 13.
    assert_eq!(r.target_seconds, Some(13));
}

#[test]
fn bounds_narrow_as_history_grows() {
    let settings = GracePeriodSettings {
        min_samples: 1,
        ..GracePeriodSettings::default()
    };
    let few = recommend(
        &history(&[reported(0, 60_000)], &settings),
        &settings,
        0,
        None,
    );
    let many: Vec<_> = (0..400).map(|i| reported(i, 60_000)).collect();
    let many = recommend(&history(&many, &settings), &settings, 400, None);
    assert_eq!(few.target_seconds, many.target_seconds);
    let spread =
        |r: &Recommendation| r.upper_bound_seconds.unwrap() - r.lower_bound_seconds.unwrap();
    assert!(spread(&few) > 4 * spread(&many), "{few:?} {many:?}");
}

#[test]
fn long_shutdowns_are_capped_and_say_so() {
    let settings = GracePeriodSettings {
        max_seconds: 60,
        ..GracePeriodSettings::default()
    };
    let samples: Vec<_> = (0..10).map(|i| reported(i, 120_000)).collect();
    let r = recommend(&history(&samples, &settings), &settings, 10, None);
    assert_eq!(r.target_seconds, Some(60));
    assert_eq!(r.grace_period_seconds, Some(60));
    assert!(r.uncapped_seconds.unwrap() > 140);
    assert!(r.capped());
}

#[test]
fn a_recent_kill_lifts_the_recommendation() {
    let settings = GracePeriodSettings::default();
    let mut samples: Vec<_> = (0..20).map(|i| reported(i * SECOND, 5_000)).collect();
    samples.push(killed(30 * SECOND, 30));
    let h = history(&samples, &settings);
    let r = recommend(&h, &settings, 31 * SECOND, Some(10));
    assert_eq!(r.floor_seconds, Some(45));
    assert!(r.target_seconds >= Some(45), "{r:?}");
    assert!(r.grace_period_seconds >= Some(45), "{r:?}");
    assert_eq!(h.samples_since_kill_or_timeout(), 0);
    // A half-life later the floor is gone; the killed sample itself stays in the histogram.
    let later = recommend(&h, &settings, 30 * SECOND + DAY + 1, Some(45));
    assert_eq!(later.floor_seconds, None);
}

#[test]
fn a_kill_recommends_even_with_little_history() {
    let settings = GracePeriodSettings::default();
    let r = recommend(&history(&[killed(0, 30)], &settings), &settings, 1, None);
    assert!(r.low_confidence);
    assert_eq!(r.grace_period_seconds, Some(45));
}

#[test]
fn the_kill_floor_is_capped_at_max() {
    let settings = GracePeriodSettings {
        max_seconds: 40,
        ..GracePeriodSettings::default()
    };
    let r = recommend(&history(&[killed(0, 30)], &settings), &settings, 1, None);
    assert_eq!(r.grace_period_seconds, Some(40));
}

#[test]
fn a_timeout_pushes_the_recommendation_up_at_once() {
    // 6 shutdowns of 2.6 s, the recommendation applied, then one pod of that grace period
    // times out at its deadline G − 2 s.
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..6).map(|i| reported(i * SECOND, 2_600)).collect();
    let mut h = history(&samples, &settings);
    let before = recommend(&h, &settings, 6 * SECOND, None);
    let applied = before.grace_period_seconds.unwrap();
    h.record(&timed_out(7 * SECOND, applied), &settings);
    let after = recommend(&h, &settings, 8 * SECOND, Some(applied));
    assert!(
        after.grace_period_seconds.unwrap() > applied,
        "{before:?} → {after:?}"
    );
    // The new deadline leaves the sequence 1.5 × the deadline it timed out at.
    let old_deadline = f64::from(applied) - 2.0;
    let new_deadline = f64::from(after.grace_period_seconds.unwrap()) - 2.0;
    assert!(
        new_deadline >= old_deadline * 1.5,
        "{old_deadline} → {new_deadline}"
    );
}

#[test]
fn a_timeout_at_a_small_grace_period_needs_one_more_second_at_least() {
    // killBumpRatio 1: the floor is still above the grace period that timed out.
    let settings = GracePeriodSettings {
        kill_bump_ratio: 1.0,
        min_seconds: 1,
        ..GracePeriodSettings::default()
    };
    for grace in [1, 2, 3, 5, 30] {
        let h = history(&[timed_out(0, grace)], &settings);
        let r = recommend(&h, &settings, 1, Some(grace));
        assert!(r.grace_period_seconds.unwrap() > grace, "{grace}: {r:?}");
        let h = history(&[killed(0, grace)], &settings);
        let r = recommend(&h, &settings, 1, Some(grace));
        assert!(r.grace_period_seconds.unwrap() > grace, "{grace}: {r:?}");
    }
}

#[test]
fn decreases_wait_for_shutdowns_without_kill_or_timeout() {
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..50).map(|i| reported(i * SECOND, 3_000)).collect();
    let mut h = history(&samples, &settings);
    // Far above what 3 s shutdowns need.
    assert!(recommend(&h, &settings, 50 * SECOND, Some(60)).grace_period_seconds < Some(20));
    h.record(&timed_out(51 * SECOND, 5), &settings);
    for i in 0..4 {
        h.record(&reported((52 + i) * SECOND, 3_000), &settings);
    }
    assert_eq!(
        recommend(&h, &settings, 60 * SECOND, Some(60)).grace_period_seconds,
        Some(60),
        "4 shutdowns since the timeout are not enough evidence (minSamples 5)"
    );
    h.record(&reported(57 * SECOND, 3_000), &settings);
    assert!(recommend(&h, &settings, 60 * SECOND, Some(60)).grace_period_seconds < Some(60));
}

#[test]
fn a_stable_workload_keeps_its_grace_period_over_rollouts() {
    // Rollouts of 3 replicas, each shutdown 4.5 s ± 5 %: the first recommendation is the
    // one every later rollout gets.
    let settings = GracePeriodSettings::default();
    let mut h = History::new();
    let mut applied = None;
    let mut applied_per_rollout = Vec::new();
    for rollout in 0..8i64 {
        for pod in 0..3i64 {
            let jitter = ((rollout * 3 + pod) * 37 % 11) as u64 * 45; // 0 … 450 ms
            h.record(
                &reported(rollout * 600 * SECOND + pod * SECOND, 4_300 + jitter),
                &settings,
            );
        }
        applied =
            recommend(&h, &settings, (rollout + 1) * 600 * SECOND, applied).grace_period_seconds;
        applied_per_rollout.push(applied);
    }
    let first = applied_per_rollout.iter().flatten().next().copied();
    assert!(first.is_some(), "{applied_per_rollout:?}");
    assert!(
        applied_per_rollout
            .iter()
            .flatten()
            .all(|g| Some(*g) == first),
        "{applied_per_rollout:?}"
    );
}

#[test]
fn deregister_delay_is_learned_within_limits() {
    let settings = GracePeriodSettings::default();
    let limits = DeregisterSettings {
        min_delay_ms: 1_000,
        max_delay_ms: 15_000,
    };
    let mut samples: Vec<_> = (0..50).map(|i| reported(i, 8_000)).collect();
    assert_eq!(
        history(&samples, &settings).deregister_delay_ms(&settings, &limits, 0),
        None
    );
    for (i, s) in samples.iter_mut().enumerate() {
        s.deregister_lag_ms = Some(2_000 + i as u64 * 10); // 2.0 … 2.49 s
    }
    let delay = history(&samples, &settings)
        .deregister_delay_ms(&settings, &limits, 0)
        .unwrap();
    assert!((2_940..=3_100).contains(&delay), "{delay}"); // ≈ 2.5 s × 1.2
    for s in &mut samples {
        s.deregister_lag_ms = Some(100);
    }
    assert_eq!(
        history(&samples, &settings).deregister_delay_ms(&settings, &limits, 0),
        Some(1_000)
    );
    for s in &mut samples {
        s.deregister_lag_ms = Some(60_000);
    }
    assert_eq!(
        history(&samples, &settings).deregister_delay_ms(&settings, &limits, 0),
        Some(15_000)
    );
}

#[test]
fn drain_budget_is_drain_plus_cleanup_with_the_margin() {
    let settings = GracePeriodSettings::default();
    let with = |drain: Option<u64>, cleanup: Option<u64>, n: i64| {
        let samples: Vec<_> = (0..n)
            .map(|i| Sample {
                phases: PhaseDurations {
                    deregister: Some(1_000),
                    drain,
                    cleanup,
                    exit: Some(0),
                },
                ..reported(i, 4_000)
            })
            .collect();
        history(&samples, &settings).drain_budget_ms(&settings)
    };
    // 1 s → edge ≤ 1.05 s, 2 s → ≤ 2.1 s: (≤ 3.15 s) × 1.2.
    let budget = with(Some(1_000), Some(2_000), 10).unwrap();
    assert!((3_600..=3_780).contains(&budget), "{budget}");
    assert_eq!(with(Some(1_000), Some(2_000), 4), None, "below minSamples");
    assert_eq!(with(None, None, 10), None, "nothing learned");
    let drain_only = with(Some(1_000), None, 10).unwrap();
    assert!((1_200..=1_260).contains(&drain_only), "{drain_only}");
}

#[test]
fn phases_are_summarised() {
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..10)
        .map(|i| Sample {
            phases: PhaseDurations {
                deregister: Some(3_000),
                drain: Some(200),
                cleanup: None,
                exit: Some(0),
            },
            ..reported(i, 4_000)
        })
        .collect();
    let h = history(&samples, &settings);
    let [deregister, drain, cleanup, exit] = h.phase_summaries();
    assert!(deregister.unwrap().0 >= 3.0 && deregister.unwrap().1 <= 3.2);
    assert!(drain.unwrap().1 <= 0.21);
    assert_eq!(cleanup, None);
    assert_eq!(exit, Some((0.1, 0.1)));
    let (p50, p99) = h.sequence_summary().unwrap();
    assert!((4.0..=4.2).contains(&p50) && p99 == p50, "{p50} {p99}");
}

#[test]
fn bounds_narrow_in_steps() {
    let widths: Vec<f64> = [1, 3, 4, 15, 16, 63, 64, 255, 256, 1024]
        .map(bound_width)
        .to_vec();
    assert_eq!(
        widths,
        [
            1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625, 0.03125
        ]
    );
    assert_eq!(bound_width(0), 1.0);
    assert!(bound_width(u64::MAX) > 0.0);
}

#[test]
fn next_grace_period_examples() {
    // Nothing applied yet, or the target rose above it: the upper bound.
    assert_eq!(next_grace_period(None, 17, 21, true), 21);
    assert_eq!(next_grace_period(Some(16), 17, 21, false), 21);
    assert_eq!(next_grace_period(Some(10), 12, 11, false), 12); // never below the target
    // Inside the band, or without evidence: it stays.
    assert_eq!(next_grace_period(Some(30), 20, 25, true), 30); // 5 s < 20 % of 30
    assert_eq!(next_grace_period(Some(30), 20, 24, false), 30);
    // Evidence and a whole band below: down to the upper bound.
    assert_eq!(next_grace_period(Some(30), 20, 24, true), 24);
    assert_eq!(next_grace_period(Some(8), 5, 6, true), 6); // 2 s ≥ 20 % of 8
    assert_eq!(next_grace_period(Some(8), 5, 7, true), 8);
}

#[test]
fn state_json_is_camel_case_and_sparse() {
    let settings = GracePeriodSettings::default();
    let h = history(
        &[reported(0, 1_000), killed(5, 10), timed_out(9, 5)],
        &settings,
    );
    let json = serde_json::to_value(h.to_state()).unwrap();
    assert_eq!(json["samples"], 3);
    assert_eq!(json["samplesSinceKillOrTimeout"], 0);
    assert_eq!(json["duration"]["buckets"].as_array().unwrap().len(), 3);
    assert!(!json["sequence"]["buckets"].as_array().unwrap().is_empty());
    assert_eq!(json["recentKills"][0]["gracePeriodSeconds"], 10);
    assert_eq!(json["recentTimeouts"][0]["deadlineMillis"], 3_001);
    assert!(json["duration"]["referenceUnixMs"].is_i64());
    let quiet = history(&[reported(0, 1_000)], &settings).to_state();
    assert!(
        serde_json::to_value(quiet)
            .unwrap()
            .get("recentTimeouts")
            .is_none()
    );
}

fn settings_strategy() -> impl Strategy<Value = GracePeriodSettings> {
    (
        1u32..120,
        0u32..900,
        1u32..=100,
        0.0f64..1.0,
        0.0f64..10.0,
        0u32..20,
        1.0f64..3.0,
        1i64..=72,
    )
        .prop_map(
            |(min, extra, pct, margin, buffer, min_samples, bump, hl_hours)| GracePeriodSettings {
                min_seconds: min,
                max_seconds: min + extra,
                percentile: f64::from(pct) / 100.0,
                margin_fraction: margin,
                buffer_seconds: buffer,
                min_samples,
                kill_bump_ratio: bump,
                half_life_ms: hl_hours * HOUR,
            },
        )
}

/// Any shutdown: with or without a report, acknowledged, timed out or killed. Durations
/// stay within the histogram's hour (the CRD caps `maxSeconds` at 3600).
fn sample_strategy() -> impl Strategy<Value = Sample> {
    (
        0i64..30 * DAY,
        0u64..3_000_000,
        prop::option::of(0u64..3_000_000),
        1u32..600,
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.1),
        prop::option::of(0u64..20_000),
        prop::option::of(0u64..30_000),
    )
        .prop_map(
            |(at, duration, sequence, grace, killed, timed_out, lag, exit)| Sample {
                at_unix_ms: at,
                duration_ms: duration,
                sequence_ms: sequence,
                grace_seconds: grace,
                killed,
                timed_out,
                deregister_lag_ms: lag,
                phases: PhaseDurations {
                    deregister: lag,
                    drain: Some(duration / 4),
                    cleanup: Some(duration / 2),
                    exit: sequence.and(exit),
                },
                // Measured by some, with refusals now and then (no new random input: the
                // lag's digits are as good).
                refused: lag.map(|lag| lag % 3),
                open_at_release: exit.map_or(0, |exit| exit % 2),
            },
        )
}

fn sorted_samples(max: usize) -> impl Strategy<Value = Vec<Sample>> {
    prop::collection::vec(sample_strategy(), 0..max).prop_map(|mut samples| {
        samples.sort_by_key(|s| s.at_unix_ms);
        samples
    })
}

/// What a shutdown shows of its sequence: the report's release, or the whole duration and
/// its second of precision; a pod killed without a report needed at least its G.
fn observed_sequence_ms(sample: &Sample) -> u64 {
    let mut sequence = sample.sequence_estimate_ms();
    if sample.killed && sample.sequence_ms.is_none() {
        sequence = sequence.max(u64::from(sample.grace_seconds) * 1000);
    }
    sequence
}

/// The weighted `q` quantile of the observed sequences, computed directly from the samples
/// with the recommender's weights (`2^(t / halfLife)`). The threshold is lowered by a
/// relative 1e-9: the histogram sums the same weights in another order.
fn weighted_percentile_ms(samples: &[Sample], q: f64, half_life_ms: i64) -> Option<f64> {
    let newest = samples.iter().map(|s| s.at_unix_ms).max()?;
    let mut weighted: Vec<(u64, f64)> = samples
        .iter()
        .map(|s| {
            let age = (s.at_unix_ms - newest) as f64 / half_life_ms as f64;
            (observed_sequence_ms(s), age.exp2())
        })
        .collect();
    weighted.sort_by_key(|(value, _)| *value);
    let total: f64 = weighted.iter().map(|(_, w)| w).sum();
    let threshold = q * total * (1.0 - 1e-9);
    let mut cumulative = 0.0;
    for (value, weight) in &weighted {
        cumulative += weight;
        if cumulative >= threshold {
            return Some(*value as f64);
        }
    }
    weighted.last().map(|(value, _)| *value as f64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn uncapped_target_minus_the_exit_reserve_covers_the_sequence_percentile_with_margin(
        settings in settings_strategy(),
        samples in sorted_samples(60),
        later in 0i64..3 * DAY,
    ) {
        let h = history(&samples, &settings);
        let now = samples.last().map_or(0, |s| s.at_unix_ms) + later;
        let r = recommend(&h, &settings, now, None);
        if let (false, Some(uncapped)) = (r.low_confidence, r.uncapped_seconds) {
            let percentile = weighted_percentile_ms(&samples, settings.percentile, settings.half_life_ms.max(1)).unwrap();
            let covered_ms = f64::from(uncapped) * 1000.0 - EXIT_RESERVE_MS as f64;
            prop_assert!(
                covered_ms >= percentile * (1.0 + settings.margin_fraction),
                "uncapped {uncapped} s − reserve < {percentile} ms × {}", 1.0 + settings.margin_fraction
            );
        }
    }

    #[test]
    fn the_applied_value_is_never_below_the_target_unless_capped(
        settings in settings_strategy(),
        samples in sorted_samples(60),
        applied in prop::option::of(0u32..2000),
        later in 0i64..3 * DAY,
    ) {
        let h = history(&samples, &settings);
        let now = samples.last().map_or(0, |s| s.at_unix_ms) + later;
        let r = recommend(&h, &settings, now, applied);
        if let (Some(grace), Some(target)) = (r.grace_period_seconds, r.target_seconds) {
            prop_assert!(grace >= target, "{r:?}");
            if r.uncapped_seconds > Some(grace) {
                prop_assert_eq!(grace, settings.max_seconds, "below what is needed only at the cap: {:?}", r);
            }
        }
    }

    #[test]
    fn bounds_are_always_respected(
        settings in settings_strategy(),
        samples in sorted_samples(60),
        applied in prop::option::of(0u32..2000),
        later in 0i64..3 * DAY,
    ) {
        let h = history(&samples, &settings);
        let now = samples.last().map_or(0, |s| s.at_unix_ms) + later;
        let r = recommend(&h, &settings, now, applied);
        let within = |v: Option<u32>| v.is_none_or(|v| (settings.min_seconds..=settings.max_seconds).contains(&v));
        prop_assert!(within(r.grace_period_seconds), "{r:?}");
        prop_assert!(within(r.target_seconds) && within(r.lower_bound_seconds) && within(r.upper_bound_seconds), "{r:?}");
        if let (Some(low), Some(target), Some(high)) = (r.lower_bound_seconds, r.target_seconds, r.upper_bound_seconds) {
            prop_assert!(low <= target && target <= high, "{r:?}");
        }
        prop_assert_eq!(r.low_confidence, (samples.len() as u64) < u64::from(settings.min_samples));
        prop_assert_eq!(r.grace_period_seconds.is_some(), r.target_seconds.is_some());
    }

    #[test]
    fn more_weight_on_long_samples_never_lowers_the_quantile(
        samples in sorted_samples(60),
        q in 0.01f64..=1.0,
        extra in 1u64..4_000_000,
        weight in 0.01f64..100.0,
    ) {
        let settings = GracePeriodSettings::default();
        let mut h = history(&samples, &settings).sequence_histogram().clone();
        let now = samples.last().map_or(0, |s| s.at_unix_ms);
        if let Some(before) = h.quantile_ms(q) {
            // Any sample at or above the quantile, with any weight.
            h.add_weighted(before as u64 + extra, weight, now, settings.half_life_ms);
            prop_assert!(h.quantile_ms(q).unwrap() >= before);
        }
    }

    #[test]
    fn a_timeout_or_a_kill_never_lowers_the_recommendation(
        settings in settings_strategy(),
        samples in sorted_samples(60),
        applied in prop::option::of(0u32..2000),
        censored in sample_strategy(),
        kind in 0u8..3,
        after in 0i64..DAY,
    ) {
        let mut h = history(&samples, &settings);
        let at = samples.last().map_or(0, |s| s.at_unix_ms) + after;
        let before = recommend(&h, &settings, at, applied);
        // The pod ran with the applied grace period when there is one.
        let grace = before.grace_period_seconds.unwrap_or(censored.grace_seconds).max(1);
        let censored = Sample {
            at_unix_ms: at,
            grace_seconds: grace,
            killed: kind != 1,
            timed_out: kind != 0,
            ..censored
        };
        h.record(&censored, &settings);
        let after = recommend(&h, &settings, at, before.grace_period_seconds);
        prop_assert!(after.grace_period_seconds >= before.grace_period_seconds, "{before:?} → {after:?}");
        prop_assert!(after.target_seconds >= before.target_seconds, "{before:?} → {after:?}");
        let applied = after.grace_period_seconds;
        prop_assert!(applied.is_some());
        // Never where it was: above the grace period that was not enough, unless capped.
        prop_assert!(
            applied > Some(grace) || applied == Some(settings.max_seconds),
            "{censored:?}: {before:?} → {after:?}"
        );
    }

    #[test]
    fn identical_durations_converge_and_stay(
        settings in settings_strategy(),
        sequence in 0u64..600_000,
        exit in 0u64..5_000,
        reported_ in any::<bool>(),
        applied in prop::option::of(1u32..2000),
    ) {
        let mut h = History::new();
        let mut current = applied;
        let mut values = Vec::new();
        for i in 0..1_000i64 {
            let mut sample = reported(i * 60 * SECOND, sequence);
            sample.phases.exit = Some(exit);
            if !reported_ {
                sample = unreported(i * 60 * SECOND, sequence + exit);
            }
            h.record(&sample, &settings);
            let r = recommend(&h, &settings, i * 60 * SECOND, current);
            if let (Some(grace), Some(target)) = (r.grace_period_seconds, r.target_seconds) {
                prop_assert!(grace >= target, "{i}: {r:?}");
                // The same shutdown every time: the target never moves once estimated.
                if !r.low_confidence {
                    values.push((grace, target));
                }
            }
            current = r.grace_period_seconds;
        }
        let targets: std::collections::BTreeSet<u32> = values.iter().map(|(_, t)| *t).collect();
        prop_assert!(targets.len() <= 1, "targets {targets:?}");
        // Converges: after the first, only decreases of a whole band, a bounded number.
        let mut changes = 0;
        for pair in values.windows(2) {
            let ((a, _), (b, _)) = (pair[0], pair[1]);
            prop_assert!(b <= a, "rose from {a} to {b} with the same shutdowns");
            if b < a {
                changes += 1;
                prop_assert!(f64::from(a - b) >= 2.0f64.max(0.2 * f64::from(a)), "{a} → {b}");
            }
        }
        // The bounds step at 4, 16, 64 and 256 samples within these 1000.
        prop_assert!(changes <= 6, "{changes} changes: {values:?}");
        // Stays: the last 500 shutdowns change nothing.
        if values.len() > 500 {
            let tail = &values[values.len() - 500..];
            prop_assert!(tail.iter().all(|v| *v == tail[0]), "still moving: {:?}", &tail[..5]);
        }
    }

    #[test]
    fn stable_shutdowns_never_time_out_or_get_killed_once_recommended(
        sequence in 200u64..300_000,
        jitter in 0.0f64..0.2,
        exit in 0u64..1_500,
        seed in any::<u64>(),
    ) {
        // Rollouts of 3 pods; each pod runs with the recommendation of when it was created,
        // its sequence within [s, s × (1 + jitter)] with jitter below the 20 % margin.
        let settings = GracePeriodSettings::default();
        let mut h = History::new();
        let mut applied = None;
        let mut state = seed | 1;
        for rollout in 0..10i64 {
            let grace = applied.unwrap_or(3600);
            for pod in 0..3i64 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let s = sequence + (sequence as f64 * jitter * (state % 1000) as f64 / 1000.0) as u64;
                let deadline = u64::from(grace) * 1000 - exit_reserve_ms(grace);
                prop_assert!(s <= deadline, "rollout {rollout}: sequence {s} ms > deadline {deadline} ms (G {grace})");
                prop_assert!(s + exit <= u64::from(grace) * 1000, "rollout {rollout}: killed (G {grace})");
                let mut sample = reported(rollout * 600 * SECOND + pod * SECOND, s);
                sample.grace_seconds = grace;
                sample.phases.exit = Some(exit);
                h.record(&sample, &settings);
            }
            applied = recommend(&h, &settings, (rollout + 1) * 600 * SECOND, applied).grace_period_seconds;
        }
    }

    #[test]
    fn next_grace_period_never_goes_below_the_target(
        applied in prop::option::of(0u32..2000),
        target in 0u32..2000,
        extra in 0u32..2000,
        evidence in any::<bool>(),
    ) {
        let next = next_grace_period(applied, target, target + extra, evidence);
        prop_assert!(next >= target);
        if let Some(applied) = applied.filter(|&a| !evidence || a < target) {
            prop_assert!(next >= applied, "without evidence it never comes down");
        }
    }

    #[test]
    fn decay_halves_the_weight_per_half_life(
        samples in sorted_samples(40),
        hl_minutes in 1i64..10_000,
        duration in 0u64..4_000_000,
        at in 0i64..30 * DAY,
    ) {
        let half_life = hl_minutes * 60_000;
        let settings = GracePeriodSettings { half_life_ms: half_life, ..GracePeriodSettings::default() };
        let h = history(&samples, &settings);
        let now = samples.last().map_or(0, |s| s.at_unix_ms);
        let (w0, w1) = (h.duration_histogram().weight_at(now, half_life), h.duration_histogram().weight_at(now + half_life, half_life));
        prop_assert!((w0 / 2.0 - w1).abs() <= 1e-9 * w0.max(1e-300), "{w0} {w1}");
        // A sample one half-life newer weighs twice as much.
        let mut one = DecayingHistogram::new();
        one.add(duration, at, half_life);
        let single = one.total_weight();
        one.add(duration, at + half_life, half_life);
        prop_assert!((one.total_weight() - 3.0 * single).abs() <= 1e-9 * single, "{single} {}", one.total_weight());
    }

    #[test]
    fn persistence_round_trips_exactly(settings in settings_strategy(), samples in sorted_samples(60), now in 0i64..40 * DAY) {
        let h = history(&samples, &settings);
        let state = h.to_state();
        let json = serde_json::to_string(&state).unwrap();
        let parsed: HistoryState = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&parsed, &state);
        let restored = History::from_state(&parsed);
        prop_assert_eq!(&restored, &h);
        prop_assert_eq!(serde_json::to_string(&restored.to_state()).unwrap(), json);
        prop_assert_eq!(recommend(&restored, &settings, now, None), recommend(&h, &settings, now, None));
    }
}

/// The worked example of docs/tuning.md: the demo's Go service, sequence 2.6 s, exit read 0.
#[test]
fn the_documented_example_holds() {
    let settings = GracePeriodSettings::default();
    let mut h = History::new();
    let mut applied = None;
    let mut applied_at = Vec::new();
    for i in 0..64i64 {
        let mut sample = reported(i * 60 * SECOND, 2_600);
        sample.phases.exit = Some(0);
        h.record(&sample, &settings);
        let r = recommend(&h, &settings, i * 60 * SECOND, applied);
        if i == 5 {
            assert_eq!(r.target_seconds, Some(8), "{r:?}");
            assert_eq!(r.upper_bound_seconds, Some(12), "{r:?}");
        }
        applied = r.grace_period_seconds;
        applied_at.push(applied);
    }
    // 12 s from the 5th sample on, still 12 s at 16 samples, 9 s at 64.
    assert_eq!(applied_at[3], None);
    assert!(
        applied_at[4..63].iter().all(|g| *g == Some(12)),
        "{applied_at:?}"
    );
    assert_eq!(applied_at[63], Some(9));
    // A pod with G = 5 s that timed out at its 3 s deadline: a floor of 7 s.
    let h = history(&[timed_out(0, 5)], &settings);
    assert_eq!(h.floor(&settings, 0), Some(7));
}

/// A shutdown that refused connections after a deregister phase of D raises the deregister
/// delay at once to `max(D × killBumpRatio, D + 1 s)`, for one half-life, within the drain
/// limits; repeated refusals keep raising it up to `maxDelay`.
#[test]
fn refused_connections_raise_the_deregister_delay_at_once() {
    let settings = GracePeriodSettings::default();
    let limits = DeregisterSettings {
        min_delay_ms: 1_000,
        max_delay_ms: 15_000,
    };
    let shutdown = |at: i64, deregister: u64, refused: Option<u64>| Sample {
        deregister_lag_ms: Some(1_500),
        phases: PhaseDurations {
            deregister: Some(deregister),
            ..PhaseDurations::default()
        },
        refused,
        ..reported(at, 4_000)
    };
    // Two clean shutdowns: too few lags to learn anything (minSamples 5).
    let mut h = history(
        &[shutdown(0, 2_100, Some(0)), shutdown(SECOND, 2_100, None)],
        &settings,
    );
    assert_eq!(h.deregister_delay_ms(&settings, &limits, 2 * SECOND), None);
    // One refused 6 connections after 2.1 s: max(3.15 s, 3.1 s), before minSamples.
    h.record(&shutdown(2 * SECOND, 2_100, Some(6)), &settings);
    assert_eq!(
        h.deregister_delay_ms(&settings, &limits, 3 * SECOND),
        Some(3_150)
    );
    assert_eq!(h.refused_floor_ms(&settings, 3 * SECOND), Some(3_150));
    // The next pods waited 3.15 s and still refused: 4.725 s, then capped at maxDelay.
    h.record(&shutdown(HOUR, 3_150, Some(2)), &settings);
    assert_eq!(
        h.deregister_delay_ms(&settings, &limits, HOUR + 1),
        Some(4_725)
    );
    h.record(&shutdown(2 * HOUR, 12_000, Some(1)), &settings);
    assert_eq!(
        h.deregister_delay_ms(&settings, &limits, 2 * HOUR + 1),
        Some(15_000)
    );
    // A half-life after the last refusal the floor is gone: the learned lag (enough
    // samples now) is the delay again, 1.5 s × 1.2 at its bucket's edge.
    for i in 0..5 {
        h.record(&shutdown(3 * HOUR + i, 2_000, Some(0)), &settings);
    }
    let later = 2 * HOUR + DAY + 1;
    assert_eq!(h.refused_floor_ms(&settings, later), None);
    let learned = h.deregister_delay_ms(&settings, &limits, later).unwrap();
    assert!((1_800..=1_900).contains(&learned), "{learned}");
    // Per-shutdown counts: the shutdowns that measured them (9 of 10), recent weigh more.
    assert_eq!(h.refused_quantile(0.5), Some(0));
    assert!(h.refused_quantile(1.0) >= Some(6));
}

/// Resets for data on connections the application still had open when its hook was
/// released (cut at its exit) are not evidence of a short phase: one per open connection
/// is taken off before the refusal rule.
#[test]
fn resets_of_connections_left_open_at_release_raise_nothing() {
    let settings = GracePeriodSettings::default();
    let limits = DeregisterSettings {
        min_delay_ms: SECOND as u64,
        max_delay_ms: 15 * SECOND as u64,
    };
    let shutdown = |refused: u64, open: u64| Sample {
        phases: PhaseDurations {
            deregister: Some(2_000),
            ..PhaseDurations::default()
        },
        refused: Some(refused),
        open_at_release: open,
        ..reported(0, 4_000)
    };
    let h = history(&[shutdown(3, 3)], &settings);
    assert_eq!(h.refused_floor_ms(&settings, SECOND), None);
    assert_eq!(h.deregister_delay_ms(&settings, &limits, SECOND), None);
    // More resets than connections left open: some clients were refused.
    let h = history(&[shutdown(5, 3)], &settings);
    assert_eq!(h.refused_floor_ms(&settings, SECOND), Some(3_000));
}

/// Refusals survive the status round trip, and a refusal never lowers the delay.
#[test]
fn refusals_round_trip_and_never_lower_the_delay() {
    let settings = GracePeriodSettings::default();
    let limits = DeregisterSettings::default();
    let mut h = History::new();
    for i in 0..8 {
        h.record(
            &Sample {
                deregister_lag_ms: Some(4_000),
                refused: Some(0),
                ..reported(i * SECOND, 6_000)
            },
            &settings,
        );
    }
    let before = h.deregister_delay_ms(&settings, &limits, 10 * SECOND);
    // A refusal after a short phase (its floor is below the learned delay).
    h.record(
        &Sample {
            deregister_lag_ms: Some(4_000),
            phases: PhaseDurations {
                deregister: Some(500),
                ..PhaseDurations::default()
            },
            refused: Some(3),
            ..reported(10 * SECOND, 6_000)
        },
        &settings,
    );
    let after = h.deregister_delay_ms(&settings, &limits, 11 * SECOND);
    assert!(after >= before, "{before:?} → {after:?}");
    let restored = History::from_state(&h.to_state());
    assert_eq!(restored, h);
    assert_eq!(restored.to_state().recent_refusals.len(), 1);
}
