//! What delivery did, counted: events and requests delivered, retried, dead-lettered, filtered
//! and spooled, per endpoint and per shard, and delivery and deferral latencies.
//!
//! Owns the counters and their snapshot; delivery's tasks update them, `control::metrics` and
//! `shardhook demo` read them.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Mutex;
use std::time::Duration;

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
    /// Sends that waited for an endpoint's `rate_limit`, per endpoint, in config order.
    pub rate_limit_waits: Vec<AtomicU64>,
    /// Events delivered per (shard, endpoint index).
    pub(crate) delivered_by: Mutex<std::collections::HashMap<(u32, usize), u64>>,
    /// Delivery latency: from the gateway read of a batch's first event to its 2xx.
    pub(crate) latency: prometheus_client::metrics::histogram::Histogram,
    /// The first latencies, kept exactly for quantiles (bounded).
    pub(super) latencies: Mutex<Vec<Duration>>,
    /// Interactions deferred by the router, and how long after the gateway read each was.
    pub interactions_deferred: AtomicU64,
    pub(crate) defer_latencies: Mutex<Vec<Duration>>,
}

/// Latencies kept exactly for quantiles; the histogram keeps counting past this.
const LATENCY_SAMPLES: usize = 100_000;

impl Default for DeliveryStats {
    fn default() -> Self {
        DeliveryStats::new(0)
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
            rate_limit_waits: counters(endpoints),
            delivered_by: Mutex::default(),
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16),
            ),
            latencies: Mutex::default(),
            interactions_deferred: AtomicU64::new(0),
            defer_latencies: Mutex::default(),
        }
    }

    pub(super) fn record_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        let mut samples = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < LATENCY_SAMPLES {
            samples.push(latency);
        }
    }

    /// The `q`-quantile (0..=1) of delivery latency so far.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }

    /// The `q`-quantile of the time from the gateway read of an interaction to its deferral.
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
