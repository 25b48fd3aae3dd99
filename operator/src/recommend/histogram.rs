//! A histogram with exponentially growing buckets whose sample weights decay with a
//! half-life, after the Vertical Pod Autoscaler's `DecayingHistogram`.
//!
//! A sample recorded at time `t` gets the weight `2^((t − reference) / halfLife)`: newer
//! samples weigh more, so a sample one half-life older counts half as much. Quantiles
//! only depend on the ratio of weights, so the absolute values never matter; before they
//! could overflow, the reference time is moved forward by whole half-lives and every
//! weight is divided by the matching power of two (an exact operation in floating point).

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

/// Upper edge of the first bucket, in milliseconds: bucket 0 holds `[0, 100 ms)`.
pub const FIRST_BUCKET_MS: f64 = 100.0;
/// Ratio between the edges of consecutive buckets (5 % resolution).
pub const BUCKET_RATIO: f64 = 1.05;
/// Largest duration with a bucket of its own (one hour); longer samples share the last one.
pub const LAST_BUCKET_MS: f64 = 3_600_000.0;

/// Number of buckets: `[0, 100 ms)`, then ratio-1.05 buckets up to one hour, then one
/// bucket for everything longer.
pub static BUCKET_COUNT: LazyLock<usize> = LazyLock::new(|| {
    let finite = ((LAST_BUCKET_MS / FIRST_BUCKET_MS).ln() / BUCKET_RATIO.ln()).ceil() as usize;
    finite + 2
});

/// Lower edges of every bucket in milliseconds (`EDGES[0] = 0`).
static EDGES: LazyLock<Vec<f64>> = LazyLock::new(|| {
    let mut edges = Vec::with_capacity(*BUCKET_COUNT);
    edges.push(0.0);
    for i in 1..*BUCKET_COUNT {
        edges.push(FIRST_BUCKET_MS * BUCKET_RATIO.powi(i as i32 - 1));
    }
    edges
});

/// The reference time moves forward once a new sample would weigh more than
/// `2^MAX_DECAY_EXPONENT` (VPA uses the same bound), far below `f64` overflow.
const MAX_DECAY_EXPONENT: i64 = 100;

/// The bucket index for a duration in milliseconds.
pub fn bucket_index(duration_ms: u64) -> usize {
    let value = duration_ms as f64;
    if value < FIRST_BUCKET_MS {
        return 0;
    }
    let last = *BUCKET_COUNT - 1;
    let mut index = ((value / FIRST_BUCKET_MS).ln() / BUCKET_RATIO.ln()) as usize + 1;
    index = index.min(last);
    // ln() may be off by one ulp at an edge: settle on the table, which is the truth.
    let edges = &*EDGES;
    while index > 1 && value < edges[index] {
        index -= 1;
    }
    while index < last && value >= edges[index + 1] {
        index += 1;
    }
    index
}

/// Lower edge of a bucket in milliseconds.
pub fn bucket_start_ms(index: usize) -> f64 {
    EDGES[index.min(*BUCKET_COUNT - 1)]
}

/// Upper edge of a bucket in milliseconds; the last, open-ended bucket reports its lower edge.
pub fn bucket_end_ms(index: usize) -> f64 {
    let last = *BUCKET_COUNT - 1;
    if index >= last {
        EDGES[last]
    } else {
        EDGES[index + 1]
    }
}

/// One non-empty bucket of a persisted histogram.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BucketWeight {
    /// Bucket index: 0 is `[0, 100 ms)`, bucket `i ≥ 1` starts at `100 ms × 1.05^(i−1)`.
    pub index: u16,
    /// Sum of the decayed weights of the samples in the bucket, relative to the reference time.
    pub weight: f64,
}

/// The persisted form of a [`DecayingHistogram`]: reference time plus sparse buckets.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistogramState {
    /// Reference time of the weights, in Unix milliseconds: a sample recorded at this
    /// instant weighs 1.
    pub reference_unix_ms: i64,
    /// Non-empty buckets in increasing index order.
    #[serde(default)]
    pub buckets: Vec<BucketWeight>,
}

impl HistogramState {
    /// Whether no bucket holds a weight.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// An exponential-bucket histogram of durations whose weights decay with a half-life.
#[derive(Debug, Clone, PartialEq)]
pub struct DecayingHistogram {
    reference_unix_ms: i64,
    weights: Vec<f64>,
    /// Indices of the lowest and highest non-zero bucket (`None` when empty).
    span: Option<(usize, usize)>,
}

impl Default for DecayingHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl DecayingHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            reference_unix_ms: 0,
            weights: vec![0.0; *BUCKET_COUNT],
            span: None,
        }
    }

    /// Whether no sample with a non-zero weight was recorded.
    pub fn is_empty(&self) -> bool {
        self.span.is_none()
    }

    /// The reference time of the weights (Unix milliseconds).
    pub fn reference_unix_ms(&self) -> i64 {
        self.reference_unix_ms
    }

    /// The raw weight of one bucket (relative to the reference time).
    pub fn bucket_weight(&self, index: usize) -> f64 {
        self.weights.get(index).copied().unwrap_or(0.0)
    }

    /// Records a duration observed at `at_unix_ms`, with weight 1 at that instant.
    pub fn add(&mut self, duration_ms: u64, at_unix_ms: i64, half_life_ms: i64) {
        self.add_weighted(duration_ms, 1.0, at_unix_ms, half_life_ms);
    }

    /// Records a duration with `weight` (at its own time) observed at `at_unix_ms`.
    pub fn add_weighted(
        &mut self,
        duration_ms: u64,
        weight: f64,
        at_unix_ms: i64,
        half_life_ms: i64,
    ) {
        if !(weight.is_finite() && weight > 0.0) {
            return;
        }
        let half_life_ms = half_life_ms.max(1);
        if self.is_empty() {
            // Whole half-lives since the epoch: deterministic, and scaling stays exact.
            self.reference_unix_ms = at_unix_ms.div_euclid(half_life_ms) * half_life_ms;
        } else if at_unix_ms.saturating_sub(self.reference_unix_ms)
            > MAX_DECAY_EXPONENT * half_life_ms
        {
            let shift = (at_unix_ms - self.reference_unix_ms).div_euclid(half_life_ms);
            self.shift_reference(shift, half_life_ms);
        }
        let exponent = (at_unix_ms - self.reference_unix_ms) as f64 / half_life_ms as f64;
        let scaled = weight * exponent.exp2();
        if !(scaled.is_finite() && scaled > 0.0) {
            return;
        }
        let index = bucket_index(duration_ms);
        self.weights[index] += scaled;
        self.span = Some(match self.span {
            None => (index, index),
            Some((low, high)) => (low.min(index), high.max(index)),
        });
    }

    /// Moves the reference time forward by `half_lives` and divides every weight by
    /// `2^half_lives`; buckets that underflow to zero are dropped.
    fn shift_reference(&mut self, half_lives: i64, half_life_ms: i64) {
        let factor = (-(half_lives as f64)).exp2();
        let mut span: Option<(usize, usize)> = None;
        for (index, weight) in self.weights.iter_mut().enumerate() {
            *weight *= factor;
            if *weight > 0.0 {
                span = Some(span.map_or((index, index), |(low, _)| (low, index)));
            } else {
                *weight = 0.0;
            }
        }
        self.span = span;
        self.reference_unix_ms += half_lives * half_life_ms;
    }

    /// Sum of the weights, relative to the reference time.
    pub fn total_weight(&self) -> f64 {
        match self.span {
            None => 0.0,
            Some((low, high)) => self.weights[low..=high].iter().sum(),
        }
    }

    /// The total weight as seen at `now`: every sample's weight after decaying until then
    /// (a sample recorded at `now` counts 1).
    pub fn weight_at(&self, now_unix_ms: i64, half_life_ms: i64) -> f64 {
        let exponent = (self.reference_unix_ms - now_unix_ms) as f64 / half_life_ms.max(1) as f64;
        self.total_weight() * exponent.exp2()
    }

    /// The weighted quantile `q ∈ (0, 1]` in milliseconds: the upper edge of the first bucket
    /// where the cumulative weight reaches `q` of the total (so it never under-estimates by
    /// more than nothing and over-estimates by at most one bucket, 5 %). `None` when empty.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let (low, high) = self.span?;
        let total = self.total_weight();
        let threshold = q.clamp(0.0, 1.0) * total;
        let mut cumulative = 0.0;
        for index in low..=high {
            cumulative += self.weights[index];
            if cumulative >= threshold && self.weights[index] > 0.0 {
                return Some(bucket_end_ms(index));
            }
        }
        Some(bucket_end_ms(high))
    }

    /// The persisted form (sparse buckets).
    pub fn to_state(&self) -> HistogramState {
        let buckets = match self.span {
            None => Vec::new(),
            Some((low, high)) => (low..=high)
                .filter(|&index| self.weights[index] > 0.0)
                .map(|index| BucketWeight {
                    index: index as u16,
                    weight: self.weights[index],
                })
                .collect(),
        };
        HistogramState {
            reference_unix_ms: self.reference_unix_ms,
            buckets,
        }
    }

    /// Restores a histogram from its persisted form; buckets out of range or with a weight
    /// that is not a positive finite number are ignored (the state comes from the API server).
    pub fn from_state(state: &HistogramState) -> Self {
        let mut histogram = Self::new();
        histogram.reference_unix_ms = state.reference_unix_ms;
        for bucket in &state.buckets {
            let index = usize::from(bucket.index);
            if index < *BUCKET_COUNT && bucket.weight.is_finite() && bucket.weight > 0.0 {
                histogram.weights[index] += bucket.weight;
                histogram.span = Some(match histogram.span {
                    None => (index, index),
                    Some((low, high)) => (low.min(index), high.max(index)),
                });
            }
        }
        histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn buckets_cover_100ms_to_an_hour_at_5_percent() {
        assert_eq!(*BUCKET_COUNT, 218);
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(99), 0);
        assert_eq!(bucket_index(100), 1);
        assert_eq!(bucket_index(104), 1);
        assert_eq!(bucket_index(105), 2);
        assert_eq!(bucket_index(u64::MAX), *BUCKET_COUNT - 1);
        assert!(bucket_start_ms(*BUCKET_COUNT - 1) >= LAST_BUCKET_MS);
        for ms in [100u64, 1_000, 2_345, 30_000, 599_999, 3_599_999] {
            let index = bucket_index(ms);
            assert!(
                bucket_start_ms(index) <= ms as f64 && (ms as f64) < bucket_end_ms(index),
                "{ms}"
            );
            assert!(bucket_end_ms(index) / bucket_start_ms(index) <= BUCKET_RATIO + 1e-9);
        }
    }

    #[test]
    fn quantiles_are_bucket_upper_edges() {
        let mut histogram = DecayingHistogram::new();
        assert_eq!(histogram.quantile_ms(0.5), None);
        for seconds in 1..=100u64 {
            histogram.add(seconds * 1000, 0, HOUR);
        }
        let p50 = histogram.quantile_ms(0.5).unwrap();
        assert!((50_000.0..=52_500.0).contains(&p50), "{p50}");
        let p99 = histogram.quantile_ms(0.99).unwrap();
        assert!((99_000.0..=104_000.0).contains(&p99), "{p99}");
        let max = histogram.quantile_ms(1.0).unwrap();
        assert!((100_000.0..=105_000.0).contains(&max), "{max}");
    }

    #[test]
    fn newer_samples_weigh_more() {
        let mut histogram = DecayingHistogram::new();
        histogram.add(1_000, 0, HOUR);
        histogram.add(10_000, 2 * HOUR, HOUR);
        // Weights 1 and 4: the median is the newer sample.
        assert!(histogram.quantile_ms(0.5).unwrap() > 10_000.0);
        assert_eq!(histogram.weight_at(2 * HOUR, HOUR), 1.25);
    }

    #[test]
    fn reference_moves_before_overflow() {
        let mut histogram = DecayingHistogram::new();
        histogram.add(1_000, 0, 1_000);
        histogram.add(2_000, 1_000_000, 1_000); // a thousand half-lives later
        assert!(histogram.reference_unix_ms() > 0);
        assert!(histogram.total_weight().is_finite());
        assert_eq!(
            histogram.quantile_ms(0.01).unwrap(),
            bucket_end_ms(bucket_index(2_000))
        );
    }

    #[test]
    fn state_ignores_garbage_buckets() {
        let state = HistogramState {
            reference_unix_ms: 5,
            buckets: vec![
                BucketWeight {
                    index: 9999,
                    weight: 1.0,
                },
                BucketWeight {
                    index: 3,
                    weight: f64::NAN,
                },
                BucketWeight {
                    index: 4,
                    weight: -1.0,
                },
                BucketWeight {
                    index: 5,
                    weight: 2.0,
                },
            ],
        };
        let histogram = DecayingHistogram::from_state(&state);
        assert_eq!(histogram.total_weight(), 2.0);
        assert_eq!(
            histogram.to_state().buckets,
            vec![BucketWeight {
                index: 5,
                weight: 2.0
            }]
        );
    }
}
