//! The grace-period recommender: pure code, no I/O.
//!
//! Every observed shutdown becomes a [`Sample`]. A [`History`] keeps decaying histograms
//! of the total shutdown duration, of each phase and of the deregister lag, plus the
//! recent kills; [`History::recommend`] turns it into a [`Recommendation`]:
//!
//! - `target = clamp(ceil(q(percentile) × (1 + marginFraction) + bufferSeconds), min, max)`
//!   once `minSamples` shutdowns were observed (before that: low confidence, no target);
//! - a pod killed at its deadline `G` within the last half-life lifts the target to at least
//!   `ceil(G × killBumpRatio)` (capped at max): a censored sample pushes up, never averages
//!   away. Such a sample is recorded at `G` or at the current quantile, whichever is higher,
//!   so it can only move the distribution up;
//! - lower and upper bounds are `target × (1 ∓ 1/√samples)`: wide on short history;
//! - hysteresis: the applied value only follows the target when it moves by at least
//!   `max(2 s, 10 %)` of the applied value, or when a kill floor requires it;
//! - the deregister lag (T0 → last accepted connection) is learned the same way and becomes
//!   the `minDelay` of new pods' sidecars.
//!
//! The state round-trips exactly through [`HistoryState`] (serde), which the controller
//! keeps in the ShutdownPolicy status.

pub mod histogram;

use serde::{Deserialize, Serialize};

pub use histogram::{BucketWeight, DecayingHistogram, HistogramState};

/// Milliseconds in a second.
const SECOND_MS: f64 = 1000.0;
/// At most this many recent kills are remembered (the largest grace periods win).
const MAX_RECENT_KILLS: usize = 16;
/// Hysteresis: the smallest move of the applied value, in seconds.
const HYSTERESIS_MIN_SECONDS: f64 = 2.0;
/// Hysteresis: the smallest move of the applied value, as a fraction of it.
const HYSTERESIS_FRACTION: f64 = 0.1;

/// How the grace period is derived from the observations (the policy's `spec.gracePeriod`).
#[derive(Debug, Clone, PartialEq)]
pub struct GracePeriodSettings {
    /// Lowest grace period ever recommended, in seconds.
    pub min_seconds: u32,
    /// Highest grace period ever recommended, in seconds.
    pub max_seconds: u32,
    /// Quantile of the observed durations the recommendation covers, in `(0, 1]`.
    pub percentile: f64,
    /// Relative safety margin added to the quantile.
    pub margin_fraction: f64,
    /// Absolute safety margin added after the relative one, in seconds.
    pub buffer_seconds: f64,
    /// Observed shutdowns needed before anything is recommended.
    pub min_samples: u32,
    /// A kill at grace period `G` lifts the recommendation to at least `G × killBumpRatio`.
    pub kill_bump_ratio: f64,
    /// Half-life of the sample weights, in milliseconds.
    pub half_life_ms: i64,
}

impl Default for GracePeriodSettings {
    fn default() -> Self {
        Self {
            min_seconds: 5,
            max_seconds: 600,
            percentile: 0.99,
            margin_fraction: 0.2,
            buffer_seconds: 2.0,
            min_samples: 5,
            kill_bump_ratio: 1.5,
            half_life_ms: 24 * 3_600_000,
        }
    }
}

/// Limits of the learned deregister delay (the policy's `spec.drain`), in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct DeregisterSettings {
    /// The learned delay is never below this (`drain.minDelaySeconds`).
    pub min_delay_ms: u64,
    /// The learned delay is never above this (`drain.maxDelaySeconds`).
    pub max_delay_ms: u64,
}

impl Default for DeregisterSettings {
    fn default() -> Self {
        Self {
            min_delay_ms: 1_000,
            max_delay_ms: 15_000,
        }
    }
}

/// Durations of the shutdown phases in milliseconds; a phase that did not run is absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseDurations {
    /// T0 → end of the deregister phase.
    pub deregister: Option<u64>,
    /// `drain` sent → the application drained.
    pub drain: Option<u64>,
    /// Drained → the application's `done`.
    pub cleanup: Option<u64>,
    /// preStop hook released → last application container exited.
    pub exit: Option<u64>,
}

/// One observed pod shutdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the shutdown began (T0), Unix milliseconds.
    pub at_unix_ms: i64,
    /// T0 → last application container exit. For a killed pod this is a lower bound.
    pub duration_ms: u64,
    /// The pod's grace period.
    pub grace_seconds: u32,
    /// The pod was SIGKILLed at its deadline: its true duration is only known to be ≥ G.
    pub killed: bool,
    /// T0 → the last connection accepted by the application, when an SDK reported it.
    pub deregister_lag_ms: Option<u64>,
    /// Phase durations from the termination report.
    pub phases: PhaseDurations,
}

/// A kill remembered for the kill bump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentKill {
    /// When the killed shutdown began, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The grace period the pod was killed at.
    pub grace_period_seconds: u32,
}

/// Persisted histograms of the phases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseHistogramStates {
    /// Deregister phase.
    #[serde(default)]
    pub deregister: HistogramState,
    /// Drain phase.
    #[serde(default)]
    pub drain: HistogramState,
    /// Cleanup phase.
    #[serde(default)]
    pub cleanup: HistogramState,
    /// Exit (preStop released → container exited).
    #[serde(default)]
    pub exit: HistogramState,
}

/// The persisted form of a [`History`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryState {
    /// Observed shutdowns, killed ones included.
    #[serde(default)]
    pub samples: u64,
    /// Total shutdown durations.
    #[serde(default)]
    pub duration: HistogramState,
    /// Observed shutdowns that reported a deregister lag.
    #[serde(default)]
    pub deregister_lag_samples: u64,
    /// Deregister lags.
    #[serde(default)]
    pub deregister_lag: HistogramState,
    /// Phase durations.
    #[serde(default)]
    pub phases: PhaseHistogramStates,
    /// Kills within the last half-life.
    #[serde(default)]
    pub recent_kills: Vec<RecentKill>,
}

/// Quantiles of a duration distribution, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DurationSummary {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest (the upper edge of the highest non-empty bucket).
    pub max: f64,
}

/// What the recommender concludes at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Recommendation {
    /// The grace period to apply, after hysteresis and bounds; `None`: keep the workload's.
    pub grace_period_seconds: Option<u32>,
    /// The target before hysteresis.
    pub target_seconds: Option<u32>,
    /// The target before the min/max clamp (`uncapped > max` means max is too small).
    pub uncapped_seconds: Option<u32>,
    /// Lower bound of a reasonable grace period (wide on short history).
    pub lower_bound_seconds: Option<u32>,
    /// Upper bound of a reasonable grace period (wide on short history).
    pub upper_bound_seconds: Option<u32>,
    /// Fewer than `minSamples` shutdowns observed.
    pub low_confidence: bool,
    /// The floor set by a recent kill, if any.
    pub kill_floor_seconds: Option<u32>,
    /// The learned deregister delay for new pods, in milliseconds.
    pub deregister_delay_ms: Option<u64>,
}

impl Recommendation {
    /// Whether the shutdowns need more than `maxSeconds`.
    pub fn capped(&self) -> bool {
        matches!((self.uncapped_seconds, self.target_seconds), (Some(u), Some(t)) if u > t)
    }
}

/// The observations of one workload: decaying histograms and recent kills.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    samples: u64,
    duration: DecayingHistogram,
    deregister_lag_samples: u64,
    deregister_lag: DecayingHistogram,
    phases: [DecayingHistogram; 4],
    recent_kills: Vec<RecentKill>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of recorded shutdowns.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// The decaying histogram of total durations.
    pub fn duration_histogram(&self) -> &DecayingHistogram {
        &self.duration
    }

    /// Records one observed shutdown.
    pub fn record(&mut self, sample: &Sample, settings: &GracePeriodSettings) {
        let half_life = settings.half_life_ms.max(1);
        let mut duration_ms = sample.duration_ms;
        if sample.killed {
            duration_ms = duration_ms.max(u64::from(sample.grace_seconds) * 1000);
            // Censored: the true value is ≥ G, so it must not drag the quantile down.
            if let Some(quantile) = self.duration.quantile_ms(settings.percentile) {
                duration_ms = duration_ms.max(quantile.ceil() as u64);
            }
            self.remember_kill(sample, half_life);
        }
        self.duration.add(duration_ms, sample.at_unix_ms, half_life);
        self.samples += 1;
        if let Some(lag) = sample.deregister_lag_ms {
            self.deregister_lag.add(lag, sample.at_unix_ms, half_life);
            self.deregister_lag_samples += 1;
        }
        let phases = [
            sample.phases.deregister,
            sample.phases.drain,
            sample.phases.cleanup,
            sample.phases.exit,
        ];
        for (histogram, value) in self.phases.iter_mut().zip(phases) {
            if let Some(value) = value {
                histogram.add(value, sample.at_unix_ms, half_life);
            }
        }
    }

    fn remember_kill(&mut self, sample: &Sample, half_life_ms: i64) {
        let newest = self
            .recent_kills
            .iter()
            .map(|k| k.at_unix_ms)
            .chain([sample.at_unix_ms])
            .max();
        let horizon = newest
            .unwrap_or(sample.at_unix_ms)
            .saturating_sub(half_life_ms);
        self.recent_kills.retain(|kill| kill.at_unix_ms > horizon);
        self.recent_kills.push(RecentKill {
            at_unix_ms: sample.at_unix_ms,
            grace_period_seconds: sample.grace_seconds,
        });
        if self.recent_kills.len() > MAX_RECENT_KILLS {
            // Keep the kills that set the highest floor; the newest breaks ties.
            self.recent_kills.sort_by_key(|kill| {
                (
                    std::cmp::Reverse(kill.grace_period_seconds),
                    std::cmp::Reverse(kill.at_unix_ms),
                )
            });
            self.recent_kills.truncate(MAX_RECENT_KILLS);
        }
        self.recent_kills.sort_by_key(|kill| kill.at_unix_ms);
    }

    /// The kill floor at `now`: `ceil(G × killBumpRatio)` of the largest kill within the last
    /// half-life, capped at max.
    pub fn kill_floor(&self, settings: &GracePeriodSettings, now_unix_ms: i64) -> Option<u32> {
        let horizon = now_unix_ms.saturating_sub(settings.half_life_ms.max(1));
        self.recent_kills
            .iter()
            .filter(|kill| kill.at_unix_ms > horizon)
            .map(|kill| {
                ceil_seconds(
                    f64::from(kill.grace_period_seconds) * settings.kill_bump_ratio.max(1.0),
                )
            })
            .max()
            .map(|floor| floor.min(settings.max_seconds))
    }

    /// The recommendation at `now`, given the grace period applied so far (for hysteresis).
    pub fn recommend(
        &self,
        settings: &GracePeriodSettings,
        deregister: &DeregisterSettings,
        now_unix_ms: i64,
        applied_seconds: Option<u32>,
    ) -> Recommendation {
        let low_confidence = self.samples < u64::from(settings.min_samples);
        let from_quantile = if low_confidence {
            None
        } else {
            self.duration
                .quantile_ms(settings.percentile)
                .map(|quantile| {
                    ceil_seconds(
                        quantile / SECOND_MS * (1.0 + settings.margin_fraction.max(0.0))
                            + settings.buffer_seconds.max(0.0),
                    )
                })
        };
        let kill_floor = self.kill_floor(settings, now_unix_ms);
        let uncapped = match (from_quantile, kill_floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let clamp = |seconds: u32| clamp_seconds(seconds, settings);
        let target = uncapped.map(clamp);
        let width = 1.0 / (self.samples.max(1) as f64).sqrt();
        let lower = uncapped.map(|u| clamp((f64::from(u) * (1.0 - width)).floor().max(0.0) as u32));
        let upper = uncapped.map(|u| clamp(ceil_seconds(f64::from(u) * (1.0 + width))));
        let applied =
            target.map(|target| apply_hysteresis(applied_seconds.map(clamp), target, kill_floor));
        Recommendation {
            grace_period_seconds: applied,
            target_seconds: target,
            uncapped_seconds: uncapped,
            lower_bound_seconds: lower,
            upper_bound_seconds: upper,
            low_confidence,
            kill_floor_seconds: kill_floor,
            deregister_delay_ms: self.deregister_delay_ms(settings, deregister),
        }
    }

    /// The learned deregister delay: the `percentile` of the deregister lags × (1 + margin),
    /// within the drain limits; `None` before `minSamples` lags were reported.
    pub fn deregister_delay_ms(
        &self,
        settings: &GracePeriodSettings,
        limits: &DeregisterSettings,
    ) -> Option<u64> {
        if self.deregister_lag_samples < u64::from(settings.min_samples.max(1)) {
            return None;
        }
        let quantile = self.deregister_lag.quantile_ms(settings.percentile)?;
        let delay = (quantile * (1.0 + settings.margin_fraction.max(0.0))).ceil() as u64;
        Some(
            delay
                .min(limits.max_delay_ms)
                .max(limits.min_delay_ms.min(limits.max_delay_ms)),
        )
    }

    /// Quantiles of the total duration, `None` when nothing was recorded.
    pub fn duration_summary(&self) -> Option<DurationSummary> {
        summary(&self.duration)
    }

    /// Median and 99th percentile of each phase (deregister, drain, cleanup, exit), in seconds.
    pub fn phase_summaries(&self) -> [Option<(f64, f64)>; 4] {
        self.phases.each_ref().map(|histogram| {
            Some((
                histogram.quantile_ms(0.5)? / SECOND_MS,
                histogram.quantile_ms(0.99)? / SECOND_MS,
            ))
        })
    }

    /// The persisted form.
    pub fn to_state(&self) -> HistoryState {
        let [deregister, drain, cleanup, exit] =
            self.phases.each_ref().map(DecayingHistogram::to_state);
        HistoryState {
            samples: self.samples,
            duration: self.duration.to_state(),
            deregister_lag_samples: self.deregister_lag_samples,
            deregister_lag: self.deregister_lag.to_state(),
            phases: PhaseHistogramStates {
                deregister,
                drain,
                cleanup,
                exit,
            },
            recent_kills: self.recent_kills.clone(),
        }
    }

    /// Restores a history from its persisted form (tolerating damaged buckets).
    pub fn from_state(state: &HistoryState) -> Self {
        let phases = &state.phases;
        let mut recent_kills = state.recent_kills.clone();
        recent_kills.sort_by_key(|kill| kill.at_unix_ms);
        recent_kills.truncate(MAX_RECENT_KILLS);
        Self {
            samples: state.samples,
            duration: DecayingHistogram::from_state(&state.duration),
            deregister_lag_samples: state.deregister_lag_samples,
            deregister_lag: DecayingHistogram::from_state(&state.deregister_lag),
            phases: [
                &phases.deregister,
                &phases.drain,
                &phases.cleanup,
                &phases.exit,
            ]
            .map(DecayingHistogram::from_state),
            recent_kills,
        }
    }
}

fn summary(histogram: &DecayingHistogram) -> Option<DurationSummary> {
    Some(DurationSummary {
        p50: histogram.quantile_ms(0.5)? / SECOND_MS,
        p90: histogram.quantile_ms(0.9)? / SECOND_MS,
        p99: histogram.quantile_ms(0.99)? / SECOND_MS,
        max: histogram.quantile_ms(1.0)? / SECOND_MS,
    })
}

fn ceil_seconds(seconds: f64) -> u32 {
    if seconds.is_nan() {
        0
    } else {
        seconds.ceil().clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

fn clamp_seconds(seconds: u32, settings: &GracePeriodSettings) -> u32 {
    seconds
        .min(settings.max_seconds)
        .max(settings.min_seconds.min(settings.max_seconds))
}

/// Hysteresis: the applied value follows `target` only when it moved by at least
/// `max(2 s, 10 % of the applied value)`, or when the applied value is below a kill floor.
pub fn apply_hysteresis(
    applied_seconds: Option<u32>,
    target_seconds: u32,
    kill_floor_seconds: Option<u32>,
) -> u32 {
    let Some(applied) = applied_seconds else {
        return target_seconds;
    };
    if kill_floor_seconds.is_some_and(|floor| applied < floor && target_seconds > applied) {
        return target_seconds;
    }
    let moved = (f64::from(target_seconds) - f64::from(applied)).abs();
    if moved >= HYSTERESIS_MIN_SECONDS.max(HYSTERESIS_FRACTION * f64::from(applied)) {
        target_seconds
    } else {
        applied
    }
}

#[cfg(test)]
mod tests;
