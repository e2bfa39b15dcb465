//! The three instruments: [`Counter`], [`Gauge`] and [`Histogram`], each a few atomics.
//!
//! The engine thread is the only writer and a scrape the only reader, so every operation is
//! `Relaxed`: a scrape needs each number to be one that was really written, not an order
//! between numbers. A histogram's buckets are counted separately and summed at render time,
//! so within one scrape `+Inf` always equals `_count`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::native::{NativeBuckets, NativeSnapshot};

/// A count that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (one atomic add).
    pub fn inc_by(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicF64);

impl Gauge {
    /// Replaces the value (one atomic store).
    pub fn set(&self, value: f64) {
        self.0.store(value);
    }

    /// The latest value.
    pub fn get(&self) -> f64 {
        self.0.load()
    }
}

/// An `f64` in an `AtomicU64`'s bits: std has no atomic float.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn store(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Adds `delta`. There is no float `fetch_add`, so this loops on compare-exchange;
    /// with one writer the first exchange succeeds.
    fn add(&self, delta: f64) {
        let mut current = self.0.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(current) + delta).to_bits();
            match self
                .0
                .compare_exchange_weak(current, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// A W3C trace id (32 hex digits, not all zero): what an exemplar links to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(u128);

impl TraceId {
    /// Parses 32 hex digits (either case); `None` for anything else, or for the all-zero
    /// id, which W3C Trace Context reserves as invalid.
    pub fn parse(text: &str) -> Option<Self> {
        // `from_str_radix` alone would also take a sign and shorter strings.
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(text, 16)
            .ok()
            .filter(|&id| id != 0)
            .map(TraceId)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// One traced observation, shown beside the bucket it fell in (OpenMetrics only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exemplar {
    /// The trace of the request observed.
    pub trace_id: TraceId,
    /// The value observed.
    pub value: f64,
    /// When, in seconds since the Unix epoch.
    pub timestamp: f64,
}

/// Observations counted into fixed buckets, with their sum and, per bucket, the latest
/// [`Exemplar`].
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds (inclusive), increasing; the `+Inf` bucket is implied.
    bounds: Box<[f64]>,
    /// Per bucket, not cumulative: one more than `bounds`, the last for `+Inf`.
    counts: Box<[AtomicU64]>,
    sum: AtomicF64,
    /// Parallel to `counts`. Locked only for traced observations and at render time.
    exemplars: Box<[Mutex<Option<Exemplar>>]>,
    /// The same observations in exponential buckets, for scrapers that read native
    /// histograms.
    native: NativeBuckets,
}

impl Histogram {
    /// A histogram over `bounds`, which are sorted and deduplicated here so that any list
    /// makes a valid histogram (non-finite bounds are dropped: `+Inf` is always there).
    pub fn new(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let buckets = bounds.len() + 1;
        Self {
            bounds: bounds.into_boxed_slice(),
            counts: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicF64::default(),
            exemplars: (0..buckets).map(|_| Mutex::new(None)).collect(),
            native: NativeBuckets::default(),
        }
    }

    /// Counts `value`: a search of the bounds, a logarithm, two atomic adds and one
    /// compare-exchange.
    pub fn observe(&self, value: f64) {
        self.count(value);
    }

    /// Counts `value` and, for a traced request, makes it its bucket's exemplar (one short
    /// lock, and a clock read).
    pub fn observe_traced(&self, value: f64, trace_id: Option<TraceId>) {
        let bucket = self.count(value);
        if let Some(trace_id) = trace_id {
            let exemplar = Exemplar {
                trace_id,
                value,
                timestamp: unix_seconds(),
            };
            *lock(&self.exemplars[bucket]) = Some(exemplar);
        }
    }

    /// Adds `value` to its bucket and the sum; returns the bucket's index.
    fn count(&self, value: f64) -> usize {
        // `le` is inclusive: a value equal to a bound belongs to that bound's bucket. NaN is
        // below no bound, so it goes to `+Inf`.
        let bucket = if value.is_nan() {
            self.bounds.len()
        } else {
            self.bounds.partition_point(|&bound| bound < value)
        };
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.native.observe(value);
        self.sum.add(value);
        bucket
    }

    /// What a scrape shows: bounds, cumulative counts, sum and exemplars.
    pub fn snapshot(&self) -> HistogramSnapshot<'_> {
        let mut cumulative = 0;
        let buckets = self
            .counts
            .iter()
            .zip(self.exemplars.iter())
            .enumerate()
            .map(|(index, (count, exemplar))| {
                cumulative += count.load(Ordering::Relaxed);
                BucketSnapshot {
                    upper_bound: self.bounds.get(index).copied().unwrap_or(f64::INFINITY),
                    cumulative_count: cumulative,
                    exemplar: *lock(exemplar),
                }
            })
            .collect();
        HistogramSnapshot {
            bounds: &self.bounds,
            buckets,
            sum: self.sum.load(),
            native: self.native.snapshot(),
        }
    }
}

/// A histogram as read at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramSnapshot<'a> {
    /// The finite upper bounds.
    pub bounds: &'a [f64],
    /// One per bound, then `+Inf`.
    pub buckets: Vec<BucketSnapshot>,
    /// Sum of all observations.
    pub sum: f64,
    /// The same observations in exponential buckets. Read after the classic buckets, so a
    /// scrape racing an observation may count it in one and not the other.
    pub native: NativeSnapshot,
}

impl HistogramSnapshot<'_> {
    /// Observations in all: the `+Inf` bucket's cumulative count.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |b| b.cumulative_count)
    }
}

/// One bucket as read at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSnapshot {
    /// Its `le`: observations at most this (`+Inf` for the last bucket).
    pub upper_bound: f64,
    /// Observations in this bucket and every bucket below it.
    pub cumulative_count: u64,
    /// The latest traced observation that fell in this bucket (not below it).
    pub exemplar: Option<Exemplar>,
}

/// A poisoned exemplar slot still holds a valid `Option`: metrics never panic over it.
fn lock(slot: &Mutex<Option<Exemplar>>) -> std::sync::MutexGuard<'_, Option<Exemplar>> {
    slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_is_inclusive_and_counts_are_cumulative() {
        let histogram = Histogram::new(&[1.0, 0.1, 10.0, 1.0]);
        for value in [0.0, 0.1, 0.100_001, 1.0, 10.0, 10.5, f64::INFINITY] {
            histogram.observe(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.bounds, &[0.1, 1.0, 10.0]);
        let cumulative: Vec<u64> = snapshot
            .buckets
            .iter()
            .map(|b| b.cumulative_count)
            .collect();
        assert_eq!(cumulative, [2, 4, 5, 7]);
        assert_eq!(snapshot.buckets[3].upper_bound, f64::INFINITY);
        assert_eq!(snapshot.count(), 7);
    }

    #[test]
    fn the_sum_adds_every_observation() {
        let histogram = Histogram::new(&[1.0]);
        for value in [0.25, 0.5, 3.0] {
            histogram.observe(value);
        }
        assert_eq!(histogram.snapshot().sum, 3.75);
    }

    #[test]
    fn each_bucket_keeps_its_latest_traced_observation() {
        let histogram = Histogram::new(&[1.0, 2.0]);
        let first = TraceId::parse("0af7651916cd43dd8448eb211c80319c").unwrap();
        let second = TraceId::parse("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap();
        histogram.observe_traced(1.5, Some(first));
        histogram.observe_traced(2.0, Some(second));
        histogram.observe_traced(0.5, None);
        let buckets = histogram.snapshot().buckets;
        assert_eq!(buckets[0].exemplar, None);
        let exemplar = buckets[1].exemplar.unwrap();
        assert_eq!(exemplar.trace_id, second);
        assert_eq!(exemplar.value, 2.0);
        assert!(exemplar.timestamp > 1.6e9, "{exemplar:?}");
        assert_eq!(buckets[2].exemplar, None);
    }

    #[test]
    fn trace_ids_are_32_hex_digits_and_not_zero() {
        let id = TraceId::parse("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap();
        assert_eq!(id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            TraceId::parse("00000000000000000000000000000001")
                .unwrap()
                .to_string(),
            "00000000000000000000000000000001"
        );
        for bad in [
            "",
            "4bf92f3577b34da6a3ce929d0e0e473",
            "4bf92f3577b34da6a3ce929d0e0e47360",
            "+bf92f3577b34da6a3ce929d0e0e4736",
            "4bf92f3577b34da6a3ce929d0e0e473g",
            "00000000000000000000000000000000",
        ] {
            assert_eq!(TraceId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn gauges_hold_floats_and_counters_add() {
        let gauge = Gauge::default();
        gauge.set(0.375);
        assert_eq!(gauge.get(), 0.375);
        let counter = Counter::default();
        counter.inc_by(2);
        counter.inc_by(3);
        assert_eq!(counter.get(), 5);
    }
}
