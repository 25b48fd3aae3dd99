//! The grace-period recommender: pure code, no I/O.
//!
//! Every observed shutdown becomes a [`Sample`]. A [`History`] keeps decaying histograms
//! of the shutdown sequence (T0 → the last preStop hook released, from the termination
//! report's millisecond timings), of the exit after it (hook released → last application
//! container gone, from `finishedAt`), of the total duration, of each phase and of the
//! deregister lag, plus the recent kills and timeouts; [`History::recommend`] turns it
//! into a [`Recommendation`]:
//!
//! - the grace period must cover the sequence with its margin, the sidecar's exit reserve
//!   (it releases the hooks by `T0 + G − min(2 s, G/2)`) and the exit:
//!   `estimate = ceil(q(sequence) × (1 + marginFraction) + exitReserve + q(exit) + 1 s +
//!   bufferSeconds)`, where `q` is the `percentile` and the 1 s covers the one-second
//!   precision of `finishedAt`; nothing is estimated below `minSamples` shutdowns;
//! - kills and timeouts are censored samples: the true duration is only known to be longer.
//!   They are recorded at their lower bound or at the current quantile, whichever is higher
//!   (so they never pull a quantile down), and for one half-life each sets a floor: a kill at
//!   G at least `max(ceil(G × killBumpRatio), G + 1)`, a timeout at the sidecar's deadline D
//!   at least `max(ceil(D × killBumpRatio + exitReserve), G + 1)`;
//! - `target = clamp(max(estimate, floor), minSeconds, maxSeconds)`; the bounds are
//!   `estimate × (1 ∓ w)`, never below the floor, where `w` = ±100 % below 4 samples, ±50 %
//!   below 16, ±25 % below 64, … (`1/√n` with n rounded down to a power of 4);
//! - safe first: a new value is the upper bound (wide while the history is short); the
//!   applied value rises at once whenever the target is above it, and comes down (to the
//!   upper bound) only when at least `minSamples` shutdowns were observed since the last
//!   kill or timeout and the upper bound is below it by at least `max(2 s, 20 %)`;
//! - the deregister lag (T0 → last accepted connection) is learned the same way and becomes
//!   the `minDelay` of new pods' sidecars; the drain and cleanup phases give the time the
//!   sidecar must leave them (the drain budget);
//! - connections refused after the listeners closed raise the deregister delay at once, for
//!   one half-life, above the deregister phase that let them through ([`refused`]); their
//!   per-shutdown counts are kept in a histogram of their own.
//!
//! The state round-trips exactly through [`HistoryState`] (serde), which the controller
//! keeps in the ShutdownPolicy status.

pub mod histogram;
pub mod refused;

use serde::{Deserialize, Serialize};

pub use histogram::{BucketWeight, DecayingHistogram, HistogramState};
pub use refused::RecentRefusal;

/// Milliseconds in a second.
const SECOND_MS: f64 = 1000.0;
/// At most this many recent kills (and as many timeouts) are remembered; the largest
/// grace periods win.
const MAX_RECENT_CENSORED: usize = 16;
/// A decrease of the applied value must be at least this many seconds…
const DECREASE_MIN_SECONDS: f64 = 2.0;
/// …and at least this fraction of the applied value: a grace period changes rarely.
const DECREASE_FRACTION: f64 = 0.2;

/// What the sidecar keeps back of the grace period for the application's exit after
/// SIGTERM: it releases every preStop hook by `T0 + G − min(2 s, G/2)`
/// (`LAMEDUCK_EXIT_RESERVE_MILLIS`, which the webhook leaves at its default). The
/// recommender plans with the whole 2 s, the reserve of any G of 4 s or more.
pub const EXIT_RESERVE_MS: u64 = lameduck_proto::timing::DEFAULT_EXIT_RESERVE_MILLIS;
/// `finishedAt` and `deletionTimestamp` have one-second precision: a duration read from
/// them may be up to this much short of the truth.
pub const SECOND_PRECISION_MS: u64 = 1_000;

/// The sidecar's exit reserve for a grace period of `grace_seconds`: `min(2 s, G/2)`.
pub fn exit_reserve_ms(grace_seconds: u32) -> u64 {
    lameduck_proto::timing::exit_reserve_millis(u64::from(grace_seconds) * 1000)
}

/// How the grace period is derived from the observations (the policy's `spec.gracePeriod`).
#[derive(Debug, Clone, PartialEq)]
pub struct GracePeriodSettings {
    /// Lowest grace period ever recommended, in seconds.
    pub min_seconds: u32,
    /// Highest grace period ever recommended, in seconds.
    pub max_seconds: u32,
    /// Quantile of the observed durations the recommendation covers, in `(0, 1]`.
    pub percentile: f64,
    /// Relative safety margin added to the quantile of the sequence.
    pub margin_fraction: f64,
    /// Absolute safety margin added after everything else, in seconds.
    pub buffer_seconds: f64,
    /// Observed shutdowns needed before anything is estimated.
    pub min_samples: u32,
    /// A kill at grace period `G` lifts the recommendation to at least `G × killBumpRatio`
    /// (a timeout at deadline `D`: the deadline to at least `D × killBumpRatio`).
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
            buffer_seconds: 1.0,
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
    /// The limits of the drain defaults (a policy without `spec.drain`).
    fn default() -> Self {
        use lameduck_proto::{DRAIN_DEFAULTS, drain::millis};
        Self {
            min_delay_ms: millis(DRAIN_DEFAULTS.min_delay),
            max_delay_ms: millis(DRAIN_DEFAULTS.max_delay),
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
    /// preStop hook released → last application container exited (`finishedAt`, so up to
    /// a second short).
    pub exit: Option<u64>,
}

/// One observed pod shutdown.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the shutdown began (T0), Unix milliseconds.
    pub at_unix_ms: i64,
    /// T0 → last application container exit (`finishedAt`, second precision). For a
    /// killed pod this is a lower bound.
    pub duration_ms: u64,
    /// T0 → the release of the last preStop hook, from the termination report
    /// (`released_ms`); `None` without a report. For a timeout this is the sidecar's
    /// deadline, a lower bound of what the sequence needed.
    pub sequence_ms: Option<u64>,
    /// The pod's grace period.
    pub grace_seconds: u32,
    /// The pod was SIGKILLed at its deadline: its true duration is only known to be ≥ G.
    pub killed: bool,
    /// The application did not acknowledge before the sidecar's deadline: the sequence
    /// needed more than [`Sample::sequence_ms`].
    pub timed_out: bool,
    /// T0 → the last connection accepted by the application, when an SDK reported it.
    pub deregister_lag_ms: Option<u64>,
    /// Phase durations from the termination report.
    pub phases: PhaseDurations,
    /// Connections refused after the listeners closed, when the report measured them.
    pub refused: Option<u64>,
    /// Connections the pod's containers still had open when their hooks were released
    /// (the report's `connections`): after the process exits, data a client sends on
    /// one of them is answered with a reset that a longer deregister phase cannot avoid.
    pub open_at_release: u64,
}

impl Sample {
    /// The sequence duration recorded for this shutdown: the report's `released_ms`, or,
    /// without a report, the whole duration plus the second `finishedAt` may be short
    /// (an upper bound: it includes the exit).
    pub fn sequence_estimate_ms(&self) -> u64 {
        self.sequence_ms
            .unwrap_or_else(|| self.duration_ms.saturating_add(SECOND_PRECISION_MS))
    }

    /// Whether the true duration is only known to be longer than measured.
    pub fn censored(&self) -> bool {
        self.killed || self.timed_out
    }

    /// The sidecar's deadline this shutdown timed out at, as milliseconds after T0: the
    /// release the report gives, else `G − min(2 s, G/2)`.
    fn deadline_ms(&self) -> u64 {
        self.sequence_ms.unwrap_or_else(|| {
            (u64::from(self.grace_seconds) * 1000)
                .saturating_sub(exit_reserve_ms(self.grace_seconds))
        })
    }
}

/// A kill remembered for the floor it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentKill {
    /// When the killed shutdown began, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The grace period the pod was killed at.
    pub grace_period_seconds: u32,
}

/// A timeout remembered for the floor it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentTimeout {
    /// When the shutdown began, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The pod's grace period.
    pub grace_period_seconds: u32,
    /// The sidecar's deadline it timed out at, in milliseconds after T0.
    pub deadline_millis: u64,
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
    /// Shutdowns observed since the last kill or timeout (absent in older statuses: 0,
    /// which only delays the next decrease).
    #[serde(default)]
    pub samples_since_kill_or_timeout: u64,
    /// Total shutdown durations (T0 → last application container exit).
    #[serde(default)]
    pub duration: HistogramState,
    /// Sequence durations (T0 → last preStop hook released).
    #[serde(default)]
    pub sequence: HistogramState,
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
    /// Timeouts within the last half-life.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_timeouts: Vec<RecentTimeout>,
    /// Connections refused per shutdown, of the shutdowns that measured them (a count n is
    /// recorded as (n + 1) × 100 ms).
    #[serde(default, skip_serializing_if = "HistogramState::is_empty")]
    pub refused: HistogramState,
    /// Shutdowns that refused connections within the last half-life.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_refusals: Vec<RecentRefusal>,
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
    /// The grace period to apply; `None`: keep the workload's.
    pub grace_period_seconds: Option<u32>,
    /// What the evidence requires now: `clamp(max(estimate, floor))`. The applied value is
    /// never below it unless capped.
    pub target_seconds: Option<u32>,
    /// The target before the min/max clamp (`uncapped > max` means max is too small).
    pub uncapped_seconds: Option<u32>,
    /// Lower bound of a reasonable grace period (wide on short history).
    pub lower_bound_seconds: Option<u32>,
    /// Upper bound of a reasonable grace period (wide on short history): what a new value
    /// is set to.
    pub upper_bound_seconds: Option<u32>,
    /// Fewer than `minSamples` shutdowns observed.
    pub low_confidence: bool,
    /// The floor set by a recent kill or timeout, if any.
    pub floor_seconds: Option<u32>,
    /// The learned deregister delay for new pods, in milliseconds.
    pub deregister_delay_ms: Option<u64>,
    /// The time new pods' sidecars must leave for drain and cleanup, in milliseconds.
    pub drain_budget_ms: Option<u64>,
    /// The floor recent refusals set under the deregister delay, in milliseconds.
    pub refused_floor_ms: Option<u64>,
}

impl Recommendation {
    /// Whether the shutdowns need more than `maxSeconds`.
    pub fn capped(&self) -> bool {
        matches!((self.uncapped_seconds, self.target_seconds), (Some(u), Some(t)) if u > t)
    }
}

/// The observations of one workload: decaying histograms, recent kills and timeouts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    samples: u64,
    samples_since_censored: u64,
    duration: DecayingHistogram,
    sequence: DecayingHistogram,
    deregister_lag_samples: u64,
    deregister_lag: DecayingHistogram,
    phases: [DecayingHistogram; 4],
    recent_kills: Vec<RecentKill>,
    recent_timeouts: Vec<RecentTimeout>,
    refused: DecayingHistogram,
    recent_refusals: Vec<RecentRefusal>,
}

/// Index of the exit phase in [`History::phases`].
const EXIT: usize = 3;

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of recorded shutdowns.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Shutdowns recorded since the last kill or timeout.
    pub fn samples_since_kill_or_timeout(&self) -> u64 {
        self.samples_since_censored
    }

    /// The decaying histogram of total durations.
    pub fn duration_histogram(&self) -> &DecayingHistogram {
        &self.duration
    }

    /// The decaying histogram of sequence durations.
    pub fn sequence_histogram(&self) -> &DecayingHistogram {
        &self.sequence
    }

    /// Records one observed shutdown.
    pub fn record(&mut self, sample: &Sample, settings: &GracePeriodSettings) {
        let half_life = settings.half_life_ms.max(1);
        let at = sample.at_unix_ms;
        let censored = sample.censored();
        let grace_ms = u64::from(sample.grace_seconds) * 1000;
        // A censored value is a lower bound: it must not drag the quantile down.
        let lower_bound = |histogram: &DecayingHistogram, value: u64| match histogram
            .quantile_ms(settings.percentile)
        {
            Some(quantile) if censored => value.max(quantile.ceil() as u64),
            _ => value,
        };

        let mut duration_ms = sample.duration_ms;
        if sample.killed {
            duration_ms = duration_ms.max(grace_ms);
        }
        let duration_ms = lower_bound(&self.duration, duration_ms);
        self.duration.add(duration_ms, at, half_life);

        let mut sequence_ms = sample.sequence_estimate_ms();
        if sample.killed && sample.sequence_ms.is_none() {
            sequence_ms = sequence_ms.max(grace_ms);
        }
        let sequence_ms = lower_bound(&self.sequence, sequence_ms);
        self.sequence.add(sequence_ms, at, half_life);

        if let Some(lag) = sample.deregister_lag_ms {
            self.deregister_lag.add(lag, at, half_life);
            self.deregister_lag_samples += 1;
        }
        let phases = [
            sample.phases.deregister,
            sample.phases.drain,
            sample.phases.cleanup,
            sample.phases.exit,
        ];
        for (index, value) in phases.into_iter().enumerate() {
            let Some(mut value) = value else { continue };
            if index == EXIT {
                // The exit enters the grace period: a censored one only pushes it up.
                value = lower_bound(&self.phases[EXIT], value);
            }
            self.phases[index].add(value, at, half_life);
        }

        if sample.killed {
            remember(
                &mut self.recent_kills,
                RecentKill {
                    at_unix_ms: at,
                    grace_period_seconds: sample.grace_seconds,
                },
                |kill| kill.at_unix_ms,
                |kill| u64::from(kill.grace_period_seconds),
                half_life,
            );
        }
        if let Some(refused) = sample.refused {
            self.refused
                .add(refused::count_to_ms(refused), at, half_life);
            // Resets for data on connections the application cut at its exit are not
            // evidence that the deregister phase was short: at most one per connection
            // it left open is taken off (a client drops a connection that was reset).
            let evidence = refused.saturating_sub(sample.open_at_release);
            if evidence > 0 {
                remember(
                    &mut self.recent_refusals,
                    RecentRefusal {
                        at_unix_ms: at,
                        deregister_millis: sample
                            .phases
                            .deregister
                            .or(sample.deregister_lag_ms)
                            .unwrap_or(0),
                        refused: evidence,
                    },
                    |refusal| refusal.at_unix_ms,
                    |refusal| refusal.deregister_millis,
                    half_life,
                );
            }
        }
        if sample.timed_out {
            remember(
                &mut self.recent_timeouts,
                RecentTimeout {
                    at_unix_ms: at,
                    grace_period_seconds: sample.grace_seconds,
                    deadline_millis: sample.deadline_ms(),
                },
                |timeout| timeout.at_unix_ms,
                |timeout| timeout.deadline_millis,
                half_life,
            );
        }
        self.samples += 1;
        self.samples_since_censored = if censored {
            0
        } else {
            self.samples_since_censored + 1
        };
    }

    /// The floor at `now` set by the kills and timeouts of the last half-life, capped at
    /// max: a kill at G requires `max(ceil(G × killBumpRatio), G + 1)`, a timeout at the
    /// sidecar's deadline D (ms after T0) requires a deadline of `D × killBumpRatio`, that
    /// is `max(ceil(D × killBumpRatio + exitReserve), G + 1)`.
    pub fn floor(&self, settings: &GracePeriodSettings, now_unix_ms: i64) -> Option<u32> {
        let horizon = now_unix_ms.saturating_sub(settings.half_life_ms.max(1));
        let bump = settings.kill_bump_ratio.max(1.0);
        let kills = self
            .recent_kills
            .iter()
            .filter(|kill| kill.at_unix_ms > horizon)
            .map(|kill| {
                ceil_seconds(f64::from(kill.grace_period_seconds) * bump)
                    .max(kill.grace_period_seconds.saturating_add(1))
            });
        let timeouts = self
            .recent_timeouts
            .iter()
            .filter(|timeout| timeout.at_unix_ms > horizon)
            .map(|timeout| {
                ceil_seconds(
                    (timeout.deadline_millis as f64 * bump + EXIT_RESERVE_MS as f64) / SECOND_MS,
                )
                .max(timeout.grace_period_seconds.saturating_add(1))
            });
        kills
            .chain(timeouts)
            .max()
            .map(|floor| floor.min(settings.max_seconds))
    }

    /// What the quantiles require, in milliseconds: `q(sequence) × (1 + margin) +
    /// exitReserve + q(exit) + 1 s + buffer`. `None` when nothing was recorded.
    pub fn required_ms(&self, settings: &GracePeriodSettings) -> Option<f64> {
        let percentile = settings.percentile;
        let sequence = self.sequence.quantile_ms(percentile).or_else(|| {
            // A status written before the sequence was recorded: the whole duration (which
            // includes the exit) with its precision is an upper bound of the sequence.
            Some(self.duration.quantile_ms(percentile)? + SECOND_PRECISION_MS as f64)
        })?;
        let exit = self.phases[EXIT].quantile_ms(percentile).unwrap_or(0.0);
        Some(
            sequence * (1.0 + settings.margin_fraction.max(0.0))
                + EXIT_RESERVE_MS as f64
                + exit
                + SECOND_PRECISION_MS as f64
                + settings.buffer_seconds.max(0.0) * SECOND_MS,
        )
    }

    /// The recommendation at `now`, given the grace period applied so far.
    pub fn recommend(
        &self,
        settings: &GracePeriodSettings,
        deregister: &DeregisterSettings,
        now_unix_ms: i64,
        applied_seconds: Option<u32>,
    ) -> Recommendation {
        let low_confidence = self.samples < u64::from(settings.min_samples);
        let estimate = if low_confidence {
            None
        } else {
            self.required_ms(settings)
                .map(|required| ceil_seconds(required / SECOND_MS))
        };
        let floor = self.floor(settings, now_unix_ms);
        let at_least_floor = |seconds: u32| floor.map_or(seconds, |floor| seconds.max(floor));
        let clamp = |seconds: u32| clamp_seconds(seconds, settings);
        let uncapped = match (estimate, floor) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let target = uncapped.map(clamp);
        let width = bound_width(self.samples);
        let bound = |factor: f64, round: fn(f64) -> u32| {
            estimate
                .map(|e| at_least_floor(round(f64::from(e) * factor)))
                .or(floor)
                .map(clamp)
        };
        let lower = bound(1.0 - width, |s| s.floor().max(0.0) as u32);
        let upper = bound(1.0 + width, ceil_seconds);
        let evidence = self.samples_since_censored >= u64::from(settings.min_samples.max(1));
        let applied = match (target, upper) {
            (Some(target), Some(upper)) => Some(next_grace_period(
                applied_seconds.map(clamp),
                target,
                upper,
                evidence,
            )),
            _ => None,
        };
        Recommendation {
            grace_period_seconds: applied,
            target_seconds: target,
            uncapped_seconds: uncapped,
            lower_bound_seconds: lower,
            upper_bound_seconds: upper,
            low_confidence,
            floor_seconds: floor,
            deregister_delay_ms: self.deregister_delay_ms(settings, deregister, now_unix_ms),
            drain_budget_ms: self.drain_budget_ms(settings),
            refused_floor_ms: self.refused_floor_ms(settings, now_unix_ms),
        }
    }

    /// The learned deregister delay: the `percentile` of the deregister lags × (1 + margin)
    /// once `minSamples` lags were reported, raised to the floor of the refusals of the
    /// last half-life ([`History::refused_floor_ms`]), within the drain limits; `None`
    /// when neither says anything.
    pub fn deregister_delay_ms(
        &self,
        settings: &GracePeriodSettings,
        limits: &DeregisterSettings,
        now_unix_ms: i64,
    ) -> Option<u64> {
        let learned = if self.deregister_lag_samples < u64::from(settings.min_samples.max(1)) {
            None
        } else {
            self.deregister_lag
                .quantile_ms(settings.percentile)
                .map(|quantile| {
                    (quantile * (1.0 + settings.margin_fraction.max(0.0))).ceil() as u64
                })
        };
        let floor = self.refused_floor_ms(settings, now_unix_ms);
        let delay = match (learned, floor) {
            (Some(learned), Some(floor)) => learned.max(floor),
            (learned, floor) => learned.or(floor)?,
        };
        Some(
            delay
                .min(limits.max_delay_ms)
                .max(limits.min_delay_ms.min(limits.max_delay_ms)),
        )
    }

    /// The floor the shutdowns that refused connections within the last half-life set
    /// under the deregister delay ([`RecentRefusal::floor_ms`]), before the drain limits.
    pub fn refused_floor_ms(
        &self,
        settings: &GracePeriodSettings,
        now_unix_ms: i64,
    ) -> Option<u64> {
        let horizon = now_unix_ms.saturating_sub(settings.half_life_ms.max(1));
        self.recent_refusals
            .iter()
            .filter(|refusal| refusal.at_unix_ms > horizon)
            .map(|refusal| refusal.floor_ms(settings.kill_bump_ratio))
            .max()
    }

    /// The `q` quantile of the connections refused per shutdown, over the shutdowns that
    /// measured them (recent ones weighing more); `None` when none did.
    pub fn refused_quantile(&self, q: f64) -> Option<u64> {
        refused::count_quantile(&self.refused, q)
    }

    /// The time the sidecar must leave for drain and cleanup:
    /// `(q(drain) + q(cleanup)) × (1 + margin)`, rounded up to the millisecond; `None`
    /// below `minSamples` shutdowns or when neither phase was ever reported.
    pub fn drain_budget_ms(&self, settings: &GracePeriodSettings) -> Option<u64> {
        if self.samples < u64::from(settings.min_samples.max(1)) {
            return None;
        }
        let drain = self.phases[1].quantile_ms(settings.percentile);
        let cleanup = self.phases[2].quantile_ms(settings.percentile);
        if drain.is_none() && cleanup.is_none() {
            return None;
        }
        let sum = drain.unwrap_or(0.0) + cleanup.unwrap_or(0.0);
        Some((sum * (1.0 + settings.margin_fraction.max(0.0))).ceil() as u64)
    }

    /// Quantiles of the total duration, `None` when nothing was recorded.
    pub fn duration_summary(&self) -> Option<DurationSummary> {
        summary(&self.duration)
    }

    /// Median and 99th percentile of the sequence (T0 → last hook released), in seconds.
    pub fn sequence_summary(&self) -> Option<(f64, f64)> {
        Some((
            self.sequence.quantile_ms(0.5)? / SECOND_MS,
            self.sequence.quantile_ms(0.99)? / SECOND_MS,
        ))
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
            samples_since_kill_or_timeout: self.samples_since_censored,
            duration: self.duration.to_state(),
            sequence: self.sequence.to_state(),
            deregister_lag_samples: self.deregister_lag_samples,
            deregister_lag: self.deregister_lag.to_state(),
            phases: PhaseHistogramStates {
                deregister,
                drain,
                cleanup,
                exit,
            },
            recent_kills: self.recent_kills.clone(),
            recent_timeouts: self.recent_timeouts.clone(),
            refused: self.refused.to_state(),
            recent_refusals: self.recent_refusals.clone(),
        }
    }

    /// Restores a history from its persisted form (tolerating damaged buckets).
    pub fn from_state(state: &HistoryState) -> Self {
        let phases = &state.phases;
        let mut recent_kills = state.recent_kills.clone();
        recent_kills.sort_by_key(|kill| kill.at_unix_ms);
        recent_kills.truncate(MAX_RECENT_CENSORED);
        let mut recent_timeouts = state.recent_timeouts.clone();
        recent_timeouts.sort_by_key(|timeout| timeout.at_unix_ms);
        recent_timeouts.truncate(MAX_RECENT_CENSORED);
        let mut recent_refusals = state.recent_refusals.clone();
        recent_refusals.sort_by_key(|refusal| refusal.at_unix_ms);
        recent_refusals.truncate(MAX_RECENT_CENSORED);
        Self {
            samples: state.samples,
            samples_since_censored: state.samples_since_kill_or_timeout.min(state.samples),
            duration: DecayingHistogram::from_state(&state.duration),
            sequence: DecayingHistogram::from_state(&state.sequence),
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
            recent_timeouts,
            refused: DecayingHistogram::from_state(&state.refused),
            recent_refusals,
        }
    }
}

/// Adds `entry` to a list of recent censored shutdowns: entries older than a half-life
/// before the newest go, and of more than [`MAX_RECENT_CENSORED`] those that set the
/// highest floor stay (the newest breaks ties). The list stays sorted by time.
fn remember<T: Copy>(
    list: &mut Vec<T>,
    entry: T,
    at: impl Fn(&T) -> i64,
    weight: impl Fn(&T) -> u64,
    half_life_ms: i64,
) {
    let newest = list.iter().map(&at).chain([at(&entry)]).max();
    let horizon = newest.unwrap_or(at(&entry)).saturating_sub(half_life_ms);
    list.retain(|item| at(item) > horizon);
    list.push(entry);
    if list.len() > MAX_RECENT_CENSORED {
        list.sort_by_key(|item| (std::cmp::Reverse(weight(item)), std::cmp::Reverse(at(item))));
        list.truncate(MAX_RECENT_CENSORED);
    }
    list.sort_by_key(|item| at(item));
}

fn summary(histogram: &DecayingHistogram) -> Option<DurationSummary> {
    Some(DurationSummary {
        p50: histogram.quantile_ms(0.5)? / SECOND_MS,
        p90: histogram.quantile_ms(0.9)? / SECOND_MS,
        p99: histogram.quantile_ms(0.99)? / SECOND_MS,
        max: histogram.quantile_ms(1.0)? / SECOND_MS,
    })
}

/// The relative half-width of the bounds after `samples` shutdowns: `1/√n`, with n rounded
/// down to a power of 4, so ±100 % below 4 samples, ±50 % below 16, ±25 % below 64,
/// ±12.5 % below 256… The bounds move in these steps only, so a stable workload's value
/// changes at a handful of sample counts and then stays.
pub fn bound_width(samples: u64) -> f64 {
    let halvings = (u64::BITS - 1 - samples.max(1).leading_zeros()) / 2;
    0.5f64.powi(halvings as i32)
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

/// The grace period to apply next, safe first:
///
/// - with nothing applied yet, or when the target rose above the applied value, the upper
///   bound (never below the target): the value is set high enough to stay;
/// - it comes down, to the upper bound, only with `evidence` (enough shutdowns since the
///   last kill or timeout) and when the upper bound is below it by at least
///   `max(2 s, 20 %)` of it;
/// - otherwise it stays.
pub fn next_grace_period(
    applied_seconds: Option<u32>,
    target_seconds: u32,
    upper_bound_seconds: u32,
    evidence: bool,
) -> u32 {
    let upper = upper_bound_seconds.max(target_seconds);
    let Some(applied) = applied_seconds else {
        return upper;
    };
    if applied < target_seconds {
        return upper;
    }
    let room = f64::from(applied) - f64::from(upper);
    if evidence && room >= DECREASE_MIN_SECONDS.max(DECREASE_FRACTION * f64::from(applied)) {
        upper
    } else {
        applied
    }
}

#[cfg(test)]
mod tests;
