use proptest::prelude::*;

use super::*;

const SECOND: i64 = 1000;
const HOUR: i64 = 3600 * SECOND;
const DAY: i64 = 24 * HOUR;

fn sample(at_unix_ms: i64, duration_ms: u64) -> Sample {
    Sample {
        at_unix_ms,
        duration_ms,
        grace_seconds: 30,
        killed: false,
        deregister_lag_ms: None,
        phases: PhaseDurations::default(),
    }
}

fn killed(at_unix_ms: i64, grace_seconds: u32) -> Sample {
    Sample {
        grace_seconds,
        killed: true,
        ..sample(at_unix_ms, u64::from(grace_seconds) * 1000 + 1500)
    }
}

fn history(samples: &[Sample], settings: &GracePeriodSettings) -> History {
    let mut history = History::new();
    for s in samples {
        history.record(s, settings);
    }
    history
}

#[test]
fn no_recommendation_below_min_samples() {
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..4).map(|i| sample(i * SECOND, 10_000)).collect();
    let r = history(&samples, &settings).recommend(
        &settings,
        &DeregisterSettings::default(),
        4 * SECOND,
        None,
    );
    assert!(r.low_confidence);
    assert_eq!(r.grace_period_seconds, None);
    assert_eq!(r.target_seconds, None);
}

#[test]
fn recommendation_is_quantile_with_margin_and_buffer() {
    let settings = GracePeriodSettings::default();
    let samples: Vec<_> = (0..100).map(|i| sample(i * SECOND, 10_000)).collect();
    let r = history(&samples, &settings).recommend(
        &settings,
        &DeregisterSettings::default(),
        100 * SECOND,
        None,
    );
    // q = upper edge of the bucket holding 10 s (≤ 10.5 s); × 1.2 + 2 → 14.x → 15.
    assert!(!r.low_confidence);
    assert_eq!(r.target_seconds, Some(15));
    assert_eq!(r.grace_period_seconds, Some(15));
    assert_eq!(r.lower_bound_seconds, Some(13)); // 15 × 0.9 = 13.5
    assert_eq!(r.upper_bound_seconds, Some(17)); // 15 × 1.1 = 16.5
    assert!(!r.capped());
}

#[test]
fn bounds_narrow_as_history_grows() {
    let settings = GracePeriodSettings {
        min_samples: 1,
        ..GracePeriodSettings::default()
    };
    let dereg = DeregisterSettings::default();
    let few = history(&[sample(0, 60_000)], &settings).recommend(&settings, &dereg, 0, None);
    let many: Vec<_> = (0..400).map(|i| sample(i, 60_000)).collect();
    let many = history(&many, &settings).recommend(&settings, &dereg, 400, None);
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
    let samples: Vec<_> = (0..10).map(|i| sample(i, 120_000)).collect();
    let r =
        history(&samples, &settings).recommend(&settings, &DeregisterSettings::default(), 10, None);
    assert_eq!(r.target_seconds, Some(60));
    assert!(r.uncapped_seconds.unwrap() > 140);
    assert!(r.capped());
}

#[test]
fn a_recent_kill_lifts_the_recommendation() {
    let settings = GracePeriodSettings::default();
    let dereg = DeregisterSettings::default();
    let mut samples: Vec<_> = (0..20).map(|i| sample(i * SECOND, 5_000)).collect();
    samples.push(killed(30 * SECOND, 30));
    let h = history(&samples, &settings);
    let r = h.recommend(&settings, &dereg, 31 * SECOND, Some(10));
    assert_eq!(r.kill_floor_seconds, Some(45));
    assert_eq!(r.grace_period_seconds, Some(45));
    // A half-life later the floor is gone; the killed sample itself stays in the histogram.
    let later = h.recommend(&settings, &dereg, 30 * SECOND + DAY + 1, Some(45));
    assert_eq!(later.kill_floor_seconds, None);
}

#[test]
fn a_kill_recommends_even_with_little_history() {
    let settings = GracePeriodSettings::default();
    let r = history(&[killed(0, 30)], &settings).recommend(
        &settings,
        &DeregisterSettings::default(),
        1,
        None,
    );
    assert!(r.low_confidence);
    assert_eq!(r.grace_period_seconds, Some(45));
}

#[test]
fn the_kill_floor_is_capped_at_max() {
    let settings = GracePeriodSettings {
        max_seconds: 40,
        ..GracePeriodSettings::default()
    };
    let r = history(&[killed(0, 30)], &settings).recommend(
        &settings,
        &DeregisterSettings::default(),
        1,
        None,
    );
    assert_eq!(r.grace_period_seconds, Some(40));
}

#[test]
fn deregister_delay_is_learned_within_limits() {
    let settings = GracePeriodSettings::default();
    let limits = DeregisterSettings {
        min_delay_ms: 1_000,
        max_delay_ms: 15_000,
    };
    let mut samples: Vec<_> = (0..50).map(|i| sample(i, 8_000)).collect();
    assert_eq!(
        history(&samples, &settings).deregister_delay_ms(&settings, &limits),
        None
    );
    for (i, s) in samples.iter_mut().enumerate() {
        s.deregister_lag_ms = Some(2_000 + i as u64 * 10); // 2.0 … 2.49 s
    }
    let delay = history(&samples, &settings)
        .deregister_delay_ms(&settings, &limits)
        .unwrap();
    assert!((2_940..=3_100).contains(&delay), "{delay}"); // ≈ 2.5 s × 1.2
    for s in &mut samples {
        s.deregister_lag_ms = Some(100);
    }
    assert_eq!(
        history(&samples, &settings).deregister_delay_ms(&settings, &limits),
        Some(1_000)
    );
    for s in &mut samples {
        s.deregister_lag_ms = Some(60_000);
    }
    assert_eq!(
        history(&samples, &settings).deregister_delay_ms(&settings, &limits),
        Some(15_000)
    );
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
            ..sample(i, 4_000)
        })
        .collect();
    let [deregister, drain, cleanup, exit] = history(&samples, &settings).phase_summaries();
    assert!(deregister.unwrap().0 >= 3.0 && deregister.unwrap().1 <= 3.2);
    assert!(drain.unwrap().1 <= 0.21);
    assert_eq!(cleanup, None);
    assert_eq!(exit, Some((0.1, 0.1)));
}

#[test]
fn hysteresis_examples() {
    assert_eq!(apply_hysteresis(None, 17, None), 17);
    assert_eq!(apply_hysteresis(Some(30), 31, None), 30);
    assert_eq!(apply_hysteresis(Some(30), 32, None), 30); // 2 s < 10 % of 30
    assert_eq!(apply_hysteresis(Some(30), 33, None), 33);
    assert_eq!(apply_hysteresis(Some(10), 12, None), 12); // 2 s ≥ 10 % of 10
    assert_eq!(apply_hysteresis(Some(10), 11, None), 10);
    assert_eq!(apply_hysteresis(Some(200), 181, None), 200);
    assert_eq!(apply_hysteresis(Some(200), 180, None), 180);
    assert_eq!(apply_hysteresis(Some(44), 45, Some(45)), 45); // a kill floor always wins
}

#[test]
fn state_json_is_camel_case_and_sparse() {
    let settings = GracePeriodSettings::default();
    let h = history(&[sample(0, 1_000), killed(5, 10)], &settings);
    let json = serde_json::to_value(h.to_state()).unwrap();
    assert_eq!(json["samples"], 2);
    assert_eq!(json["duration"]["buckets"].as_array().unwrap().len(), 2);
    assert_eq!(json["recentKills"][0]["gracePeriodSeconds"], 10);
    assert!(json["duration"]["referenceUnixMs"].is_i64());
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

fn sample_strategy() -> impl Strategy<Value = Sample> {
    (
        0i64..30 * DAY,
        0u64..4_000_000,
        1u32..600,
        prop::bool::weighted(0.1),
        prop::option::of(0u64..20_000),
    )
        .prop_map(|(at, duration, grace, killed, lag)| Sample {
            at_unix_ms: at,
            duration_ms: duration,
            grace_seconds: grace,
            killed,
            deregister_lag_ms: lag,
            phases: PhaseDurations {
                deregister: lag,
                drain: Some(duration / 4),
                cleanup: Some(duration / 2),
                exit: None,
            },
        })
}

fn sorted_samples(max: usize) -> impl Strategy<Value = Vec<Sample>> {
    prop::collection::vec(sample_strategy(), 0..max).prop_map(|mut samples| {
        samples.sort_by_key(|s| s.at_unix_ms);
        samples
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn bounds_are_always_respected(
        settings in settings_strategy(),
        samples in sorted_samples(60),
        applied in prop::option::of(0u32..2000),
        later in 0i64..3 * DAY,
    ) {
        let h = history(&samples, &settings);
        let now = samples.last().map_or(0, |s| s.at_unix_ms) + later;
        let r = h.recommend(&settings, &DeregisterSettings::default(), now, applied);
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
        let mut h = history(&samples, &settings).duration_histogram().clone();
        let now = samples.last().map_or(0, |s| s.at_unix_ms);
        if let Some(before) = h.quantile_ms(q) {
            // Any sample at or above the quantile, with any weight.
            h.add_weighted(before as u64 + extra, weight, now, settings.half_life_ms);
            prop_assert!(h.quantile_ms(q).unwrap() >= before);
        }
    }

    #[test]
    fn a_kill_never_lowers_the_recommendation(
        settings in settings_strategy(),
        samples in sorted_samples(60),
        applied in prop::option::of(0u32..2000),
        grace in 1u32..900,
        after in 0i64..DAY,
    ) {
        let dereg = DeregisterSettings::default();
        let mut h = history(&samples, &settings);
        let at = samples.last().map_or(0, |s| s.at_unix_ms) + after;
        let before = h.recommend(&settings, &dereg, at, applied);
        h.record(&killed(at, grace), &settings);
        let after = h.recommend(&settings, &dereg, at, applied);
        prop_assert!(after.grace_period_seconds >= before.grace_period_seconds, "{before:?} → {after:?}");
        prop_assert!(after.target_seconds >= before.target_seconds, "{before:?} → {after:?}");
        prop_assert!(after.grace_period_seconds.is_some());
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
    fn hysteresis_holds(applied in 0u32..2000, targets in prop::collection::vec(0u32..2000, 1..20)) {
        let mut current = applied;
        for target in targets {
            let next = apply_hysteresis(Some(current), target, None);
            let band = 2.0f64.max(0.1 * f64::from(current));
            if (f64::from(target) - f64::from(current)).abs() < band {
                prop_assert_eq!(next, current);
            } else {
                prop_assert_eq!(next, target);
            }
            current = next;
        }
    }

    #[test]
    fn hysteresis_is_monotone_in_the_target(applied in 0u32..2000, a in 0u32..2000, b in 0u32..2000, floor in prop::option::of(0u32..2000)) {
        let (low, high) = (a.min(b), a.max(b));
        prop_assert!(apply_hysteresis(Some(applied), low, floor) <= apply_hysteresis(Some(applied), high, floor));
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
        let dereg = DeregisterSettings::default();
        prop_assert_eq!(restored.recommend(&settings, &dereg, now, None), h.recommend(&settings, &dereg, now, None));
    }
}
