//! A mergeable latency sketch in the manner of DDSketch (Masson, Rim and
//! Lee, VLDB 2019): latencies fall into logarithmic buckets whose bounds
//! grow by a factor [`GAMMA`], so any latency is within
//! [`RELATIVE_ACCURACY`] (1%) of its bucket's [`value`]. Two sketches merge
//! exactly by adding their buckets' counts, which is what lets the read
//! model store one sketch per minute and still answer p99 over a month.
//!
//! Our own forty lines rather than the `sketches-ddsketch` crate: the read
//! model stores each bucket as a SQL row with its index and bounds, so
//! analysts can compute percentiles in SQL, and that crate does not expose
//! its buckets' indices (and collapses its lowest buckets past a limit).
//!
//! Latencies are whole microseconds; below 1 µs counts as 1 µs, so the
//! accuracy is 1% or 1 µs, whichever is larger.

use std::collections::BTreeMap;

/// Every latency lies within this fraction of its bucket's [`value`].
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// The ratio of a bucket's upper bound to its lower bound.
pub const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// The bucket holding `latency_us`: bucket `i` holds the latencies in
/// `(GAMMA^(i-1), GAMMA^i]` microseconds (see [`bounds`]), so 1 µs is in
/// bucket 0 and an hour in bucket 1,101.
pub fn bucket_of(latency_us: u64) -> i64 {
    let latency = latency_us.max(1) as f64;
    let mut bucket = (latency.ln() / GAMMA.ln()).ceil() as i64;
    // The logarithm may land one off at a bucket's edge; the bounds, which
    // are what the read model stores, decide.
    while latency > bounds(bucket).1 {
        bucket += 1;
    }
    while latency <= bounds(bucket).0 {
        bucket -= 1;
    }
    bucket
}

/// `(lower, upper)`, in microseconds: bucket `bucket` holds the latencies
/// above `lower` and at most `upper`.
pub fn bounds(bucket: i64) -> (f64, f64) {
    let upper = GAMMA.powf(bucket as f64);
    (upper / GAMMA, upper)
}

/// The bucket's estimate of its latencies, in microseconds: within
/// [`RELATIVE_ACCURACY`] of every latency the bucket holds.
pub fn value(bucket: i64) -> f64 {
    2.0 * bounds(bucket).1 / (GAMMA + 1.0)
}

/// Counts per bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencySketch {
    buckets: BTreeMap<i64, u64>,
    count: u64,
}

impl LatencySketch {
    pub fn add(&mut self, latency_us: u64) {
        self.add_bucket(bucket_of(latency_us), 1);
    }

    /// Adds `count` latencies of bucket `bucket`: how stored sketches merge.
    pub fn add_bucket(&mut self, bucket: i64, count: u64) {
        *self.buckets.entry(bucket).or_default() += count;
        self.count += count;
    }

    pub fn merge(&mut self, other: &LatencySketch) {
        for (&bucket, &count) in &other.buckets {
            self.add_bucket(bucket, count);
        }
    }

    /// How many latencies were added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `(bucket, count)` for every bucket holding a latency, in order.
    pub fn buckets(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        self.buckets.iter().map(|(&bucket, &count)| (bucket, count))
    }

    /// The `percent`th percentile in microseconds, by nearest rank: an
    /// estimate of the smallest latency that at least `percent`% of the
    /// latencies do not exceed (the one at rank `ceil(percent × n / 100)`
    /// in sorted order), within [`RELATIVE_ACCURACY`]. `None` when empty.
    pub fn percentile(&self, percent: u8) -> Option<f64> {
        let percent = u64::from(percent.min(100));
        // Integer arithmetic, so that the rank is exact.
        let rank = (percent * self.count).div_ceil(100).max(1);
        let mut seen = 0;
        for (&bucket, &count) in &self.buckets {
            seen += count;
            if seen >= rank {
                return Some(value(bucket));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_lies_in_its_bucket_within_the_stated_accuracy() {
        let mut latency = 0_u64;
        while latency < 10_000_000_000 {
            let bucket = bucket_of(latency);
            let (lower, upper) = bounds(bucket);
            let clamped = latency.max(1) as f64;
            assert!(lower < clamped && clamped <= upper, "{latency} in {bucket}: {lower}..{upper}");
            let error = (value(bucket) - clamped).abs() / clamped;
            assert!(error <= RELATIVE_ACCURACY + 1e-12, "{latency}: {error}");
            latency = latency * 21 / 20 + 1;
        }
        assert_eq!(bucket_of(0), bucket_of(1));
        assert_eq!(bucket_of(1), 0);
    }

    #[test]
    fn merged_sketches_answer_as_one_sketch_of_all_latencies() {
        let mut first = LatencySketch::default();
        let mut second = LatencySketch::default();
        let mut all = LatencySketch::default();
        for n in 1..=1_000_u64 {
            // 1 to 1,000 µs, each once, in a scrambled order.
            let latency = n * 37 % 1_000 + 1;
            if n % 3 == 0 {
                first.add(latency)
            } else {
                second.add(latency)
            }
            all.add(latency);
        }
        let mut merged = first.clone();
        merged.merge(&second);
        assert_eq!(merged, all);
        assert_eq!(merged.count(), 1_000);
        for percent in [1, 50, 95, 99, 100] {
            let exact = f64::from(u32::from(percent)) * 10.0;
            let estimate = merged.percentile(percent).unwrap();
            assert!(
                (estimate - exact).abs() <= exact * RELATIVE_ACCURACY,
                "p{percent}: {estimate}"
            );
        }
        assert_eq!(LatencySketch::default().percentile(50), None);
    }
}
