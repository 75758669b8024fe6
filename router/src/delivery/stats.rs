//! What delivery did, counted: events and requests delivered, retried, dead-lettered, filtered
//! and spooled, per endpoint and per shard, and delivery and deferral latencies.
//!
//! Owns the counters and their snapshot; delivery's tasks update them, `control::metrics` and
//! `shardhook demo` read them. Memory stays flat however long the router runs: counters are
//! atomics (a row per shard, made once), latencies go to bounded histograms, and exact samples
//! for quantiles are kept only when asked for (`keep_samples`: the demo and tests), and then
//! only the first `SAMPLES`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::time::Duration;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Counters of what delivery did. Cheap to update from every task.
#[derive(Debug)]
pub struct DeliveryStats {
    /// Events answered 2xx.
    pub events_delivered: AtomicU64,
    /// Requests (batches) answered 2xx.
    pub requests_delivered: AtomicU64,
    /// Attempts after the first, over all batches.
    pub retries: AtomicU64,
    /// Events set aside in the dead-letter file.
    pub events_dead_lettered: AtomicU64,
    /// Requests (batches) set aside in the dead-letter file.
    pub requests_dead_lettered: AtomicU64,
    /// Events dropped by `events.include`/`events.exclude`.
    pub events_filtered: AtomicU64,
    /// Events written to the spool because no endpoint could take them.
    pub events_spooled: AtomicU64,
    /// Events delivered per endpoint, in config order.
    pub per_endpoint: Vec<AtomicU64>,
    /// Retried attempts, dead-lettered requests and rate-limit waits per endpoint.
    pub retries_by_endpoint: Vec<AtomicU64>,
    /// Requests dead-lettered per endpoint, in config order.
    pub dead_letters_by_endpoint: Vec<AtomicU64>,
    /// Requests dead-lettered with no endpoint to blame: a corrupted spool record, a replay no
    /// endpoint could take.
    pub dead_letters_unattributed: AtomicU64,
    /// In a cluster: dead letters in Redis' stream as last written.
    pub cluster_dead_letters: Arc<AtomicU64>,
    /// In a cluster: the stream's bound (`cluster.dead_letters_max`); 0 without a cluster.
    pub cluster_dead_letters_max: AtomicU64,
    /// In a cluster: shard leases this router took (a shard coming to it: at start, on a
    /// takeover, on a rebalance). Churn shows as this rising across the routers.
    pub cluster_leases_taken: AtomicU64,
    /// Sends that waited for an endpoint's `rate_limit`, per endpoint, in config order.
    pub rate_limit_waits: Vec<AtomicU64>,
    /// Events delivered per shard, a counter per endpoint index: a row is made the first time a
    /// shard delivers (the map copied), then read without a lock.
    pub(crate) delivered_by: ArcSwap<BTreeMap<u32, Arc<[AtomicU64]>>>,
    /// Delivery latency: from the gateway read of a batch's first event to its 2xx.
    pub(crate) latency: Histogram,
    /// Interactions deferred by the router.
    pub interactions_deferred: AtomicU64,
    /// Interactions that found every lane taken (`interactions.max_lanes`) and went with
    /// their shard's other events.
    pub interactions_unlaned: AtomicU64,
    /// From the gateway read of an interaction to its deferral's answer.
    pub(crate) defer_latency: Histogram,
    /// Whether exact samples are kept (`keep_samples`).
    sampling: AtomicBool,
    latencies: Mutex<Vec<Duration>>,
    defer_latencies: Mutex<Vec<Duration>>,
}

/// Exact samples kept of each latency, when samples are kept at all.
const SAMPLES: usize = 100_000;

impl Default for DeliveryStats {
    fn default() -> Self {
        DeliveryStats::new(0)
    }
}

/// Keeps `value` among `samples` if samples are kept and there is room.
fn sample(sampling: &AtomicBool, samples: &Mutex<Vec<Duration>>, value: Duration) {
    if !sampling.load(AtomicOrdering::Relaxed) {
        return;
    }
    let mut samples = samples.lock().unwrap_or_else(|p| p.into_inner());
    if samples.len() < SAMPLES {
        samples.push(value);
    }
}

fn quantile(samples: &Mutex<Vec<Duration>>, q: f64) -> Option<Duration> {
    let mut all = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if all.is_empty() {
        return None;
    }
    all.sort();
    let index = ((all.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    Some(all[index])
}

fn counters(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl DeliveryStats {
    pub(super) fn new(endpoints: usize) -> DeliveryStats {
        DeliveryStats {
            events_delivered: AtomicU64::new(0),
            requests_delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            events_dead_lettered: AtomicU64::new(0),
            requests_dead_lettered: AtomicU64::new(0),
            events_filtered: AtomicU64::new(0),
            events_spooled: AtomicU64::new(0),
            per_endpoint: counters(endpoints),
            retries_by_endpoint: counters(endpoints),
            dead_letters_by_endpoint: counters(endpoints),
            dead_letters_unattributed: AtomicU64::new(0),
            cluster_dead_letters: Arc::default(),
            cluster_dead_letters_max: AtomicU64::new(0),
            cluster_leases_taken: AtomicU64::new(0),
            rate_limit_waits: counters(endpoints),
            delivered_by: ArcSwap::default(),
            latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            interactions_deferred: AtomicU64::new(0),
            interactions_unlaned: AtomicU64::new(0),
            defer_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            sampling: AtomicBool::new(false),
            latencies: Mutex::default(),
            defer_latencies: Mutex::default(),
        }
    }

    /// Keeps exact samples of the latencies from now on (the first 100,000 of each), for
    /// `latency_quantile` and `defer_quantile`.
    pub fn keep_samples(&self) {
        self.sampling.store(true, AtomicOrdering::Relaxed);
    }

    /// Counts `events` events of `shard` that the endpoint at `index` took, `latency` after
    /// the first of them was read (the request that carried them is counted apart:
    /// `requests_delivered`).
    pub(super) fn delivered(&self, shard: u32, index: usize, events: u64, latency: Duration) {
        self.events_delivered
            .fetch_add(events, AtomicOrdering::Relaxed);
        self.per_endpoint[index].fetch_add(events, AtomicOrdering::Relaxed);
        // The shard's row, read without a lock; made (the map copied) once per shard.
        if let Some(row) = self.delivered_by.load().get(&shard) {
            row[index].fetch_add(events, AtomicOrdering::Relaxed);
        } else {
            self.delivered_by.rcu(|rows| {
                let mut rows = BTreeMap::clone(rows);
                rows.entry(shard)
                    .or_insert_with(|| counters(self.per_endpoint.len()).into());
                rows
            });
            self.delivered_by.load()[&shard][index].fetch_add(events, AtomicOrdering::Relaxed);
        }
        self.latency.observe(latency.as_secs_f64());
        sample(&self.sampling, &self.latencies, latency);
    }

    /// Counts an interaction the router deferred, `latency` after it was read.
    pub(super) fn deferred(&self, latency: Duration) {
        self.interactions_deferred
            .fetch_add(1, AtomicOrdering::Relaxed);
        self.defer_latency.observe(latency.as_secs_f64());
        sample(&self.sampling, &self.defer_latencies, latency);
    }

    /// The `q`-quantile (0..=1) of delivery latency so far, if samples are kept.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }

    /// The `q`-quantile of the time from the gateway read of an interaction to its deferral, if
    /// samples are kept.
    pub fn defer_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.defer_latencies, q)
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(AtomicOrdering::Relaxed)
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            events_delivered: Self::get(&self.events_delivered),
            requests_delivered: Self::get(&self.requests_delivered),
            retries: Self::get(&self.retries),
            events_dead_lettered: Self::get(&self.events_dead_lettered),
            requests_dead_lettered: Self::get(&self.requests_dead_lettered),
            events_filtered: Self::get(&self.events_filtered),
            events_spooled: Self::get(&self.events_spooled),
            per_endpoint: self.per_endpoint.iter().map(Self::get).collect(),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See `DeliveryStats::events_delivered`.
    pub events_delivered: u64,
    /// See `DeliveryStats::requests_delivered`.
    pub requests_delivered: u64,
    /// See `DeliveryStats::retries`.
    pub retries: u64,
    /// See `DeliveryStats::events_dead_lettered`.
    pub events_dead_lettered: u64,
    /// See `DeliveryStats::requests_dead_lettered`.
    pub requests_dead_lettered: u64,
    /// See `DeliveryStats::events_filtered`.
    pub events_filtered: u64,
    /// See `DeliveryStats::events_spooled`.
    pub events_spooled: u64,
    /// See `DeliveryStats::per_endpoint`.
    pub per_endpoint: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_deliveries_and_a_hundred_thousand_deferrals_leave_the_heap_flat() {
        let stats = DeliveryStats::new(2);
        let round = |n: u64| {
            for i in 0..n {
                let latency = Duration::from_micros(i % 100_000);
                stats.delivered((i % 1000) as u32, (i % 2) as usize, 3, latency);
                if i % 10 == 0 {
                    stats.deferred(latency);
                }
            }
        };
        // Warm-up: every shard's row is made once.
        round(1000);
        let ((), allocations) = crate::allocations::during(|| round(1_000_000));
        assert_eq!(allocations, 0, "the stats grew after warm-up");
        assert_eq!(stats.snapshot().events_delivered, 3 * 1_001_000);
        assert_eq!(
            stats.latency_quantile(0.5),
            None,
            "no samples unless asked for"
        );
    }

    #[test]
    fn samples_when_asked_for_are_bounded() {
        let stats = DeliveryStats::new(1);
        stats.keep_samples();
        for i in 0..(SAMPLES as u64 + 10) {
            stats.delivered(0, 0, 1, Duration::from_millis(i % 7));
        }
        assert_eq!(stats.latencies.lock().unwrap().len(), SAMPLES);
        assert_eq!(stats.latency_quantile(1.0), Some(Duration::from_millis(6)));
    }
}
