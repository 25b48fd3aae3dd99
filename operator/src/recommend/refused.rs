//! Connections refused after a pod's listeners closed (the termination report's `refused`):
//! direct evidence that traffic still arrived after the pod let go, so the deregister
//! phase was too short. Pure.
//!
//! **The rule.** A shutdown that refused connections after a deregister phase of D ms sets,
//! for one half-life, a floor under the learned deregister delay:
//! `max(ceil(D × killBumpRatio), D + 1 s)`, within `drain.minDelaySeconds` and
//! `drain.maxDelaySeconds` — the kill rule's shape (a censored sample: the phase needed
//! more than D, how much more is unknown), applied to the deregister phase. The floor acts
//! at once, before `minSamples` deregister lags were learned: one refusal is enough
//! evidence. Without the phase in the report the deregister lag stands for D, else the
//! floor is the step alone.
//!
//! **Per-shutdown counts** go into a decaying histogram like the durations: a count `n` is
//! recorded as `(n + 1) × 100` in its millisecond buckets and read back as
//! `floor(edge / 100) − 1`, which is exact below 19 and at most 5 % high above (the
//! buckets' resolution), up to 35,999 refused connections in one shutdown.

use serde::{Deserialize, Serialize};

use super::histogram::DecayingHistogram;

/// What a refusal adds to the deregister phase it followed, at least.
pub const REFUSED_STEP_MS: u64 = 1_000;

/// The histogram value that stands for a count (see the module's documentation).
pub fn count_to_ms(count: u64) -> u64 {
    count.saturating_add(1).saturating_mul(100)
}

/// The count a histogram quantile stands for.
pub fn count_from_ms(quantile_ms: f64) -> u64 {
    ((quantile_ms / 100.0).floor() as u64).saturating_sub(1)
}

/// The `q` quantile of the per-shutdown counts recorded in `histogram`.
pub fn count_quantile(histogram: &DecayingHistogram, q: f64) -> Option<u64> {
    histogram.quantile_ms(q).map(count_from_ms)
}

/// A shutdown that refused connections, remembered for the floor it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecentRefusal {
    /// When the shutdown began, Unix milliseconds.
    pub at_unix_ms: i64,
    /// Its deregister phase (T0 → the end of the phase), in milliseconds.
    pub deregister_millis: u64,
    /// Connections it refused.
    pub refused: u64,
}

impl RecentRefusal {
    /// The deregister delay this refusal asks for: `max(ceil(D × bump), D + step)`.
    pub fn floor_ms(&self, kill_bump_ratio: f64) -> u64 {
        let bumped = (self.deregister_millis as f64 * kill_bump_ratio.max(1.0)).ceil() as u64;
        bumped.max(self.deregister_millis.saturating_add(REFUSED_STEP_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_back_exactly_while_small_and_within_5_percent_above() {
        for count in [0u64, 1, 2, 5, 18] {
            let mut histogram = DecayingHistogram::new();
            histogram.add(count_to_ms(count), 0, 1000);
            assert_eq!(count_quantile(&histogram, 0.99), Some(count), "{count}");
        }
        for count in [19u64, 100, 1_234, 35_000] {
            let mut histogram = DecayingHistogram::new();
            histogram.add(count_to_ms(count), 0, 1000);
            let read = count_quantile(&histogram, 0.99).unwrap();
            assert!(
                read >= count && read as f64 <= count as f64 * 1.05 + 1.0,
                "{count} → {read}"
            );
        }
    }

    #[test]
    fn the_floor_is_the_phase_bumped_or_one_step_more() {
        let refusal = |deregister_millis| RecentRefusal {
            at_unix_ms: 0,
            deregister_millis,
            refused: 3,
        };
        // 2 s × 1.5 = 3 s = 2 s + 1 s.
        assert_eq!(refusal(2_000).floor_ms(1.5), 3_000);
        // Short phases: the step wins; long ones: the ratio.
        assert_eq!(refusal(400).floor_ms(1.5), 1_400);
        assert_eq!(refusal(8_000).floor_ms(1.5), 12_000);
        assert_eq!(refusal(8_000).floor_ms(1.0), 9_000);
        assert_eq!(refusal(0).floor_ms(1.5), REFUSED_STEP_MS);
    }
}
