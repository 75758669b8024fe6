//! A latency histogram recorded with atomics: `observe` is three relaxed atomic adds, no lock.
//! prometheus-client's `Histogram` takes a lock per observation, and delivery observes once
//! per batch from every shard's task; this one is read (and encoded for `/metrics`) the same
//! way, its buckets fixed at construction.
//!
//! Owns the counting and the encoding; which latencies are observed is `stats`'.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Exponential buckets from `start` seconds, each `factor` times the last, then `+Inf`.
#[derive(Debug)]
pub struct AtomicHistogram {
    /// Upper bounds in seconds, ascending; the last bucket (`+Inf`) has none.
    bounds: Box<[f64]>,
    /// Observations per bucket (not cumulative), one more than `bounds`.
    counts: Box<[AtomicU64]>,
    /// The sum of observations, in nanoseconds.
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    /// `length` buckets from `start` seconds, each `factor` times the last, and `+Inf`.
    pub fn exponential(start: f64, factor: f64, length: u16) -> AtomicHistogram {
        let bounds: Box<[f64]> = (0..length)
            .map(|i| start * factor.powi(i32::from(i)))
            .collect();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        AtomicHistogram {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = self.bounds.partition_point(|bound| *bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// What it holds now, to encode (`/metrics` registers a snapshot per scrape).
    pub fn frozen(&self) -> Frozen {
        let (sum, count, buckets) = self.snapshot();
        Frozen {
            sum,
            count,
            buckets,
        }
    }

    /// The sum in seconds, the count, and each bucket's (upper bound, count), `+Inf` last.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// A histogram as it was at one moment, encoded as Prometheus' text format wants.
#[derive(Debug)]
pub struct Frozen {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for Frozen {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Frozen {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_whose_bound_holds_them() {
        let h = AtomicHistogram::exponential(0.001, 2.0, 3); // 1, 2, 4 ms, +Inf
        for ms in [0, 1, 2, 3, 4, 5, 100] {
            h.observe(Duration::from_millis(ms));
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 7);
        assert!((sum - 0.115).abs() < 1e-9, "{sum}");
        let counts: Vec<u64> = buckets.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            counts,
            [2, 1, 2, 2],
            "le=1ms: 0 and 1; le=2: 2; le=4: 3, 4; +Inf: 5, 100"
        );
        assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    }

    #[test]
    fn it_encodes_as_prometheus_clients_own_histogram_does() {
        use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
        let ours = AtomicHistogram::exponential(0.0005, 2.0, 16);
        let theirs = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        for us in [0u64, 300, 500, 501, 2_000, 70_000, 9_000_000] {
            ours.observe(Duration::from_micros(us));
            theirs.observe(us as f64 / 1e6);
        }
        fn text(metric: impl prometheus_client::registry::Metric) -> String {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register("latency_seconds", "h", metric);
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        }
        let (ours, theirs) = (text(ours.frozen()), text(theirs));
        // The sums differ in their last digits (nanoseconds against f64 seconds).
        let without_sum = |t: &str| {
            t.lines()
                .filter(|l| !l.starts_with("latency_seconds_sum"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(without_sum(&ours), without_sum(&theirs));
    }
}
