//! Prometheus native histogram buckets: exponential, so one histogram resolves a millisecond
//! and a quarter of an hour alike, with no bucket bounds to choose.
//!
//! Schema 3 (Prometheus' naming): bucket `i` holds the values in `(2^((i-1)/8), 2^(i/8)]`,
//! so each bucket is about 9% wider than the one below it, and a quantile read from them is
//! within about 4.5% of the truth. Indexes run from [`MIN_INDEX`] (2^-20, about a
//! microsecond) to [`MAX_INDEX`] (2^20, about 12 days or a million tokens): every latency and
//! token count the server sees fits. At or below 2^-20 a value goes to the zero bucket;
//! above 2^20, and NaN, to the last bucket. That is 321 atomics per histogram, 2.5 KiB.

use std::sync::atomic::{AtomicU64, Ordering};

/// Prometheus' schema number: 2^3 buckets per power of two.
pub const SCHEMA: i32 = 3;
/// The smallest bucket index: values at or below 2^(MIN_INDEX/8) go to the zero bucket.
const MIN_INDEX: i32 = -160;
/// The largest bucket index; larger values are clamped into it.
const MAX_INDEX: i32 = 160;

/// The zero bucket's upper bound, 2^-20 (= 2^(MIN_INDEX/8)): the lower bound of the first
/// regular bucket. A constant, so the per-token observation does not recompute it.
pub const ZERO_THRESHOLD: f64 = 1.0 / (1u64 << 20) as f64;

/// One histogram's exponential buckets.
#[derive(Debug)]
pub struct NativeBuckets {
    zero: AtomicU64,
    /// Index `i` of the array counts bucket `MIN_INDEX + 1 + i`.
    counts: Box<[AtomicU64]>,
}

impl Default for NativeBuckets {
    fn default() -> Self {
        Self {
            zero: AtomicU64::new(0),
            counts: (MIN_INDEX + 1..=MAX_INDEX)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl NativeBuckets {
    /// Counts `value` (a logarithm and one atomic add).
    pub fn observe(&self, value: f64) {
        match bucket_index(value) {
            None => self.zero.fetch_add(1, Ordering::Relaxed),
            Some(index) => {
                self.counts[(index - MIN_INDEX - 1) as usize].fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// The buckets as read now: the zero bucket's count, and every non-empty bucket as
    /// `(index, count)` in increasing order.
    pub fn snapshot(&self) -> NativeSnapshot {
        let buckets = self
            .counts
            .iter()
            .zip(MIN_INDEX + 1..)
            .filter_map(|(count, index)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then_some((index, count))
            })
            .collect();
        NativeSnapshot {
            zero_count: self.zero.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// [`NativeBuckets`] as read at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeSnapshot {
    /// Observations at or below [`ZERO_THRESHOLD`] (negative ones included: the server
    /// observes none).
    pub zero_count: u64,
    /// `(index, count)` of each non-empty bucket, by increasing index.
    pub buckets: Vec<(i32, u64)>,
}

/// The bucket of `value`, or `None` for the zero bucket.
fn bucket_index(value: f64) -> Option<i32> {
    if value <= ZERO_THRESHOLD {
        return None;
    }
    if !value.is_finite() {
        return Some(MAX_INDEX);
    }
    // `ceil(log2(value) * 8)`. log2 is exact at powers of two, so those bounds land in the
    // bucket they close; elsewhere a value within rounding of a bound may land next door.
    let scaled = value.log2() * f64::from(1 << SCHEMA);
    let index = scaled.ceil() as i32;
    Some(index.clamp(MIN_INDEX + 1, MAX_INDEX))
}

/// The upper bound of bucket `index`: 2^(index/8).
#[cfg(test)]
fn upper_bound(index: i32) -> f64 {
    (f64::from(index) / f64::from(1 << SCHEMA)).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zero_threshold_is_the_first_buckets_lower_bound() {
        assert_eq!(ZERO_THRESHOLD, upper_bound(MIN_INDEX));
    }

    #[test]
    fn each_value_lands_in_the_bucket_whose_bounds_hold_it() {
        for value in [
            1e-6, 0.001, 0.0123, 0.5, 1.0, 1.5, 2.0, 3.7, 60.0, 961.0, 131_072.0,
        ] {
            let index = bucket_index(value).unwrap();
            let (lower, upper) = (upper_bound(index - 1), upper_bound(index));
            assert!(
                lower < value && value <= upper * (1.0 + 1e-12),
                "{value}: {index}"
            );
        }
        // Powers of two close their bucket.
        assert_eq!(bucket_index(1.0), Some(0));
        assert_eq!(bucket_index(2.0), Some(8));
        assert_eq!(bucket_index(0.5), Some(-8));
    }

    #[test]
    fn tiny_values_go_to_the_zero_bucket_and_huge_ones_to_the_last() {
        let buckets = NativeBuckets::default();
        for value in [
            0.0,
            -1.0,
            1e-9,
            ZERO_THRESHOLD,
            3.0,
            3.0,
            1e30,
            f64::INFINITY,
        ] {
            buckets.observe(value);
        }
        let snapshot = buckets.snapshot();
        assert_eq!(snapshot.zero_count, 4);
        assert_eq!(snapshot.buckets, [(13, 2), (MAX_INDEX, 2)]);
    }
}
