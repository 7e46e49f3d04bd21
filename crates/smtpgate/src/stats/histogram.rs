//! Delivery latencies in fixed log-scale buckets: four per doubling, from 1 ms up to about
//! 12 days. Fixed bounds mean two histograms merge by adding counts, so minute buckets roll up
//! into hours and days and a query over many buckets still reads percentiles, within 19 %.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets per doubling of the latency.
const PER_DOUBLING: f64 = 4.0;
/// The last bucket: 2^30 ms, about 12 days; anything longer counts there.
const LAST: u8 = 120;

/// Counts per latency bucket (sparse: only buckets with counts are kept).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Histogram(BTreeMap<u8, u64>);

impl Histogram {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many latencies were recorded.
    pub fn count(&self) -> u64 {
        self.0.values().sum()
    }

    /// Counts one latency, `n` times.
    pub fn add(&mut self, ms: u64, n: u64) {
        *self.0.entry(index(ms)).or_default() += n;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (i, n) in &other.0 {
            *self.0.entry(*i).or_default() += n;
        }
    }

    /// The latency (in ms) below which the fraction `p` (0..=1) of recorded latencies lie: the
    /// upper bound of the bucket holding that rank. `None` when nothing was recorded.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((p.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in &self.0 {
            seen += n;
            if seen >= rank {
                return Some(upper_bound(*i));
            }
        }
        self.0.keys().next_back().map(|i| upper_bound(*i))
    }
}

/// The bucket of a latency: the smallest `i` with `ms <= 2^(i/4)`.
fn index(ms: u64) -> u8 {
    if ms <= 1 {
        return 0;
    }
    let i = ((ms as f64).log2() * PER_DOUBLING).ceil();
    // Rounding can put an exact bound one bucket high; step back when the lower one holds it.
    let i = if i >= 1.0 && ms <= upper_bound(i as u8 - 1) {
        i - 1.0
    } else {
        i
    };
    (i.min(LAST as f64)) as u8
}

/// The largest latency (ms) bucket `i` holds.
fn upper_bound(i: u8) -> u64 {
    (2f64.powf(i as f64 / PER_DOUBLING)).floor() as u64
}
