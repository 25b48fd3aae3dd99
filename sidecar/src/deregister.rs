//! When the deregister phase ends: pure timing logic, no I/O.
//!
//! With an SDK connected the phase ends once no new connection has been accepted for
//! `max(quiet period, 3 × recent mean gap between accepts)` and at least `min_delay` has
//! passed — or at `max_delay`. A trickle of traffic (one request every 2 s, say) therefore
//! keeps the phase open instead of being mistaken for silence.

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

/// The moment the phase ends given what is known now; never past `deadline`.
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

    proptest! {
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
