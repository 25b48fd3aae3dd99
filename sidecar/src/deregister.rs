//! When the deregister phase ends: pure timing logic, no I/O.
//!
//! With an SDK connected the phase ends once no new connection has been accepted for
//! `max(quiet period, 3 × recent mean gap between accepts)` and at least `min_delay` has
//! passed — or at `max_delay`. A trickle of traffic (one request every 2 s, say) therefore
//! keeps the phase open instead of being mistaken for silence.
//!
//! Whatever the rule, the phase ends by the **latest drain start** of the phase budget
//! ([`latest_drain_start`]): drain and cleanup always keep their share of the time
//! between T0 and the release deadline.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many recent accepts the mean gap is computed over.
const RECENT_ACCEPTS: usize = 16;

/// The rule in force for one shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A fixed delay from T0.
    Fixed(Duration),
    /// Adaptive from observed accepts.
    Adaptive {
        /// Shortest phase.
        min_delay: Duration,
        /// Quiet period.
        quiet_period: Duration,
        /// Longest phase.
        max_delay: Duration,
    },
}

/// Accepts observed since T0.
#[derive(Debug, Clone, Default)]
pub struct Accepts {
    recent: VecDeque<Instant>,
}

impl Accepts {
    /// Records that some application's accepted-connection count grew at `at`.
    pub fn record(&mut self, at: Instant) {
        if self.recent.len() == RECENT_ACCEPTS {
            self.recent.pop_front();
        }
        self.recent.push_back(at);
    }

    /// The last accept, if any.
    pub fn last(&self) -> Option<Instant> {
        self.recent.back().copied()
    }

    /// Mean gap between the recent accepts (needs two).
    pub fn mean_gap(&self) -> Option<Duration> {
        let (first, last) = (self.recent.front()?, self.recent.back()?);
        let gaps = u32::try_from(self.recent.len() - 1)
            .ok()
            .filter(|&n| n > 0)?;
        Some((*last - *first) / gaps)
    }
}

/// Share of the budget kept for drain and cleanup when nothing is learned: one half.
const UNLEARNED_KEEP: (u32, u32) = (1, 2);
/// Drain and cleanup never keep less than this share of the budget, whatever was learned.
const MIN_KEEP: (u32, u32) = (1, 4);
/// …and never more: the deregister phase may always use at least a quarter of it.
const MAX_KEEP: (u32, u32) = (3, 4);

fn share(d: Duration, (num, den): (u32, u32)) -> Duration {
    d * num / den
}

/// The phase budget: the latest moment `drain` may be sent so that drain and cleanup keep
/// their time before `deadline`. The time kept is the learned drain + cleanup time
/// (`learned`, the policy's p99 with its margin, when the webhook passed one) clamped to
/// between a quarter and three quarters of the budget `deadline − t0`, or half of the
/// budget when nothing is learned.
pub fn latest_drain_start(t0: Instant, deadline: Instant, learned: Option<Duration>) -> Instant {
    let budget = deadline.saturating_duration_since(t0);
    let keep = match learned.filter(|l| !l.is_zero()) {
        Some(learned) => learned.clamp(share(budget, MIN_KEEP), share(budget, MAX_KEEP)),
        None => share(budget, UNLEARNED_KEEP),
    };
    deadline - keep.min(budget)
}

/// The latest moment the phase can end under `rule`, whatever traffic does: what the
/// sidecar announces as the planned end, so that a client that loses the sidecar holds on
/// exactly as long as the sidecar could have.
pub fn latest_end(rule: Rule, t0: Instant, cap: Instant) -> Instant {
    let end = match rule {
        Rule::Fixed(delay) => t0 + delay,
        Rule::Adaptive {
            min_delay,
            max_delay,
            ..
        } => t0 + max_delay.max(min_delay),
    };
    end.min(cap)
}

/// The moment the phase ends given what is known now; never past `deadline` (the latest
/// drain start of the budget).
pub fn phase_end(rule: Rule, t0: Instant, accepts: &Accepts, deadline: Instant) -> Instant {
    let end = match rule {
        Rule::Fixed(delay) => t0 + delay,
        Rule::Adaptive {
            min_delay,
            quiet_period,
            max_delay,
        } => {
            let quiet = accepts
                .mean_gap()
                .map_or(quiet_period, |gap| quiet_period.max(gap * 3));
            let quiet_from = accepts.last().map_or(t0, |last| last.max(t0));
            (quiet_from + quiet)
                .max(t0 + min_delay)
                .min(t0 + max_delay.max(min_delay))
        }
    };
    end.min(deadline)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn adaptive() -> Rule {
        Rule::Adaptive {
            min_delay: S,
            quiet_period: S,
            max_delay: 15 * S,
        }
    }

    #[test]
    fn silent_pod_ends_after_quiet_period_and_min_delay() {
        let t0 = Instant::now();
        let end = phase_end(adaptive(), t0, &Accepts::default(), t0 + 30 * S);
        assert_eq!(end, t0 + S);
    }

    #[test]
    fn late_accepts_extend_the_phase() {
        let t0 = Instant::now();
        let mut accepts = Accepts::default();
        accepts.record(t0 + 2500 * MS);
        assert_eq!(
            phase_end(adaptive(), t0, &accepts, t0 + 30 * S),
            t0 + 3500 * MS
        );
    }

    #[test]
    fn a_trickle_is_not_mistaken_for_silence() {
        let t0 = Instant::now();
        let mut accepts = Accepts::default();
        for i in 0..4 {
            accepts.record(t0 + i * 2 * S);
        }
        // Gaps of 2 s: the quiet period stretches to 6 s after the last accept at 6 s.
        assert_eq!(
            phase_end(adaptive(), t0, &accepts, t0 + 30 * S),
            t0 + 12 * S
        );
    }

    #[test]
    fn max_delay_and_deadline_cap_the_phase() {
        let t0 = Instant::now();
        let mut accepts = Accepts::default();
        accepts.record(t0 + 14 * S);
        accepts.record(t0 + 14500 * MS);
        assert_eq!(
            phase_end(adaptive(), t0, &accepts, t0 + 30 * S),
            t0 + 15 * S
        );
        assert_eq!(
            phase_end(adaptive(), t0, &accepts, t0 + 10 * S),
            t0 + 10 * S
        );
        assert_eq!(
            phase_end(Rule::Fixed(5 * S), t0, &accepts, t0 + 3 * S),
            t0 + 3 * S
        );
    }

    #[test]
    fn the_budget_keeps_drain_and_cleanup_their_share() {
        let t0 = Instant::now();
        let deadline = t0 + 28 * S;
        // Nothing learned: half of the budget.
        assert_eq!(latest_drain_start(t0, deadline, None), t0 + 14 * S);
        assert_eq!(
            latest_drain_start(t0, deadline, Some(Duration::ZERO)),
            t0 + 14 * S
        );
        // Learned 10 s: kept as learned.
        assert_eq!(latest_drain_start(t0, deadline, Some(10 * S)), t0 + 18 * S);
        // Learned 1 s: never less than a quarter (7 s).
        assert_eq!(latest_drain_start(t0, deadline, Some(S)), t0 + 21 * S);
        // Learned 60 s: never more than three quarters (21 s).
        assert_eq!(latest_drain_start(t0, deadline, Some(60 * S)), t0 + 7 * S);
        // A zero budget.
        assert_eq!(latest_drain_start(t0, t0, None), t0);
    }

    #[test]
    fn latest_end_is_the_rules_upper_bound_within_the_cap() {
        let t0 = Instant::now();
        assert_eq!(latest_end(adaptive(), t0, t0 + 28 * S), t0 + 15 * S);
        assert_eq!(latest_end(adaptive(), t0, t0 + 14 * S), t0 + 14 * S);
        assert_eq!(latest_end(Rule::Fixed(5 * S), t0, t0 + 14 * S), t0 + 5 * S);
        assert_eq!(latest_end(Rule::Fixed(5 * S), t0, t0 + 2 * S), t0 + 2 * S);
    }

    proptest! {
        /// Whatever the traffic, the phase never ends after its announced latest end, and
        /// `drain` always leaves at least a quarter of the budget.
        #[test]
        fn the_announced_end_bounds_the_phase(
            grace_s in 1u64..120,
            learned_ms in prop::option::of(0u64..200_000),
            offsets in prop::collection::vec(0u32..120_000, 0..40),
        ) {
            let t0 = Instant::now();
            let deadline = t0 + Duration::from_secs(grace_s);
            let cap = latest_drain_start(t0, deadline, learned_ms.map(Duration::from_millis));
            prop_assert!(deadline - cap >= (deadline - t0) / 4);
            let latest = latest_end(adaptive(), t0, cap);
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            let mut accepts = Accepts::default();
            for offset in sorted {
                accepts.record(t0 + offset * MS);
                let end = phase_end(adaptive(), t0, &accepts, cap);
                prop_assert!(end <= latest);
            }
        }

        #[test]
        fn end_is_within_bounds(offsets in prop::collection::vec(0u32..20_000, 0..40)) {
            let t0 = Instant::now();
            let deadline = t0 + 28 * S;
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            let mut accepts = Accepts::default();
            for offset in sorted {
                accepts.record(t0 + offset * MS);
                let end = phase_end(adaptive(), t0, &accepts, deadline);
                prop_assert!(end >= t0 + S && end <= t0 + 15 * S);
                // Never before the quiet period after the last accept, unless capped.
                prop_assert!(end >= (t0 + offset * MS + S).min(t0 + 15 * S));
            }
        }
    }
}
