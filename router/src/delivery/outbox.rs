//! One endpoint's outbox: the ready batches of many shards wait here, and each request takes
//! every batch ready when it leaves (wire format v2), so a thousand quiet shards share a few
//! requests instead of sending one each.
//!
//! Owns when a request goes and which batches it carries. A request goes when a batch is
//! ready and the endpoint has a free in-flight slot (`max_in_flight`); while others are out,
//! the next waits until a share of the measured round trip (round trip ÷ half of
//! `max_in_flight`) has passed since the last one left, unless a full request is ready, or an
//! answer comes back first: then it goes just after the answer (no sooner than half a share
//! after the last), so the answered shards' next batches, which already waited a round trip,
//! are not kept waiting a share more. That spreads requests over a round trip, half the slots'
//! worth or a little more, the other half of the slots kept for answers that come late (a slot
//! still busy when the next request is due would bunch the requests after it): a batch waits
//! at most a share for its request, and a busy endpoint gets a handful of requests per round
//! trip, each as full as the traffic makes it. A quiet endpoint has nothing out, so a lone
//! event goes at once. Per-shard order is the worker's (a shard submits its next batch once
//! this one's fate is known); the attempts are `attempt`'s; which endpoint a batch goes to is
//! `ring`'s.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use super::attempt::{attempt_until_done, Outcome, Target};
use super::batch::{self, Batch};
use super::shared::Shared;

/// How long after an answer the next request waits for the batches its shards send next.
const FOLLOW_UP: Duration = Duration::from_millis(1);

/// What became of a batch handed to an outbox.
pub(super) enum Fate {
    /// Delivered, or dead-lettered with its request: either way, safe.
    Done,
    /// The endpoint's circuit opened before its request could go (again): the batch is back,
    /// for the shard's next endpoint or its spool.
    Unavailable(Batch),
    /// The outbox went away with it (the pipeline was torn down): not safe, so its events stay
    /// behind the checkpoint and Discord replays them on resume.
    Lost,
}

/// A batch waiting for a request, and who waits for its fate.
struct Waiting {
    batch: Batch,
    fate: oneshot::Sender<Fate>,
}

/// Batches waiting, with their events and bytes (a full request's worth goes at once).
#[derive(Default)]
struct Ready {
    batches: VecDeque<Waiting>,
    events: usize,
    bytes: usize,
}

impl Ready {
    /// Whether a full request's worth is ready.
    fn full(&self, max_events: usize, max_bytes: usize) -> bool {
        self.events >= max_events || self.bytes >= max_bytes
    }
}

/// One endpoint's ready batches and its requests' timing.
#[derive(Default)]
pub(super) struct Outbox {
    ready: Mutex<Ready>,
    /// A batch arrived.
    wake: Notify,
    /// A request was answered.
    answered: Notify,
    /// Requests out now.
    in_flight: AtomicU64,
    /// A request's round trip, smoothed (microseconds; 0 until one is measured).
    round_trip_us: AtomicU64,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("batches", &self.lock().batches.len())
            .field("in_flight", &self.in_flight)
            .field("round_trip_us", &self.round_trip_us)
            .finish()
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `batch` to the next request; resolves once it is delivered, dead-lettered, or
    /// given back. The sending loop is woken only when it may act on it: the first batch
    /// ready, or a full request's worth (between the two it waits for its time, not for each
    /// batch: a wake-up per event was a tenth of the router's CPU).
    pub(super) async fn submit(&self, batch: Batch, max_events: usize, max_bytes: usize) -> Fate {
        let (fate, told) = oneshot::channel();
        let wake = {
            let mut ready = self.lock();
            let was_full = ready.full(max_events, max_bytes);
            ready.events += batch.len();
            ready.bytes += batch.bytes();
            ready.batches.push_back(Waiting { batch, fate });
            ready.batches.len() == 1 || (ready.full(max_events, max_bytes) && !was_full)
        };
        if wake {
            self.wake.notify_one();
        }
        told.await.unwrap_or(Fate::Lost)
    }

    /// Folds one request's round trip into the smoothed value (1/8 of each new sample).
    fn observe(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.round_trip_us.load(AtomicOrdering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / 8 + sample / 8
        };
        self.round_trip_us.store(new, AtomicOrdering::Relaxed);
    }

    /// Takes the oldest ready batches, up to `max_events` events and `max_bytes` bytes (the
    /// first always, whatever its size).
    fn take(&self, max_events: usize, max_bytes: usize) -> Vec<Waiting> {
        let mut ready = self.lock();
        let mut taken: Vec<Waiting> = Vec::new();
        let (mut events, mut bytes) = (0, 0);
        while let Some(next) = ready.batches.front() {
            let (n, b) = (next.batch.len(), next.batch.bytes());
            if !taken.is_empty() && (events + n > max_events || bytes + b > max_bytes) {
                break;
            }
            events += n;
            bytes += b;
            taken.push(ready.batches.pop_front().expect("just looked"));
        }
        ready.events -= events;
        ready.bytes -= bytes;
        taken
    }
}

/// The endpoint at `index`'s sending loop: for the life of the pipeline.
pub(super) async fn run(shared: Arc<Shared>, index: usize) {
    let endpoint = &shared.endpoints[index];
    let outbox = &endpoint.outbox;
    let (max_events, max_bytes) = (
        shared.config.batch.max_events,
        shared.config.batch.max_bytes,
    );
    let per_round_trip = (shared.config.endpoints[index].max_in_flight as u64 / 2).max(1);
    let mut last_sent = Instant::now();
    loop {
        // A batch is ready.
        loop {
            let mut woken = pin!(outbox.wake.notified());
            woken.as_mut().enable();
            if !outbox.lock().batches.is_empty() {
                break;
            }
            woken.await;
        }
        // Requests out: this one leaves a share of the round trip after the last, unless a
        // full request is ready (the endpoint falls behind otherwise). An answer that comes
        // back first brings it forward to just after the answer (no sooner than half a share
        // after the last): the answered shards' next batches, which waited a round trip for
        // it, are submitted within that moment and go at once instead of waiting a share more.
        let round_trip = outbox.round_trip_us.load(AtomicOrdering::Relaxed);
        if outbox.in_flight.load(AtomicOrdering::Relaxed) > 0 && round_trip > 0 {
            let share = Duration::from_micros(round_trip / per_round_trip);
            let mut due_sleep = pin!(sleep_until(last_sent + share));
            loop {
                let mut woken = pin!(outbox.wake.notified());
                woken.as_mut().enable();
                let mut answered = pin!(outbox.answered.notified());
                answered.as_mut().enable();
                if outbox.lock().full(max_events, max_bytes) {
                    break;
                }
                tokio::select! {
                    _ = &mut due_sleep => break,
                    _ = woken => {}
                    _ = answered => {
                        let sooner = (Instant::now() + FOLLOW_UP).max(last_sent + share / 2);
                        if sooner < due_sleep.deadline() {
                            due_sleep.as_mut().reset(sooner);
                        }
                    }
                }
            }
        }
        let (slot, waited) = endpoint.ready().await;
        if waited {
            shared.stats.rate_limit_waits[index].fetch_add(1, AtomicOrdering::Relaxed);
        }
        let taken = outbox.take(max_events, max_bytes);
        last_sent = Instant::now();
        outbox.in_flight.fetch_add(1, AtomicOrdering::Relaxed);
        tokio::spawn(send(shared.clone(), index, taken, slot).in_current_span());
    }
}

/// One request of `taken` batches, attempted until it is done or its endpoint is unavailable;
/// then each batch's waiter learns its fate.
async fn send(shared: Arc<Shared>, index: usize, taken: Vec<Waiting>, slot: OwnedSemaphorePermit) {
    let endpoint = &shared.endpoints[index];
    let (batches, fates): (Vec<Batch>, Vec<_>) =
        taken.into_iter().map(|w| (w.batch, w.fate)).unzip();
    let request = batch::request(&batches);
    let started = Instant::now();
    let (outcome, attempts) =
        attempt_until_done(&shared, request, Target::Endpoint(index), Some(slot)).await;
    endpoint
        .outbox
        .in_flight
        .fetch_sub(1, AtomicOrdering::Relaxed);
    endpoint.outbox.answered.notify_waiters();
    match outcome {
        Outcome::Delivered => {
            if attempts == 1 {
                endpoint.outbox.observe(started.elapsed());
            }
            shared
                .stats
                .requests_delivered
                .fetch_add(1, AtomicOrdering::Relaxed);
            for batch in &batches {
                shared.stats.delivered(
                    batch.shard_id(),
                    index,
                    batch.len() as u64,
                    batch.first_received().elapsed(),
                );
            }
            for fate in fates {
                let _ = fate.send(Fate::Done);
            }
        }
        Outcome::DeadLettered => {
            for fate in fates {
                let _ = fate.send(Fate::Done);
            }
        }
        Outcome::Unavailable(_) => {
            for (batch, fate) in batches.into_iter().zip(fates) {
                let _ = fate.send(Fate::Unavailable(batch));
            }
        }
    }
}
