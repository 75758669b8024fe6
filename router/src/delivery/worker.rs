//! One shard's delivery loop: take events from the shard's queue (filtered), batch them, and
//! send the batches in order, or several at once with `ordering = "none"`; interactions are
//! taken out as they are read and go in a lane of their own (`interactions`).
//!
//! Owns reading the queue (ahead, while a batch is out), batching decisions (size, bytes,
//! linger) and the unordered senders; what happens to each batch is `spooling`'s and
//! `attempt`'s.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::ReusableBoxFuture;
use tracing::Instrument;

use super::batch::Batch;
use super::carbon;
use super::interactions::deliver_interaction;
use super::shared::Shared;
use super::spooling::{deliver, drain, Outgoing};
use super::{SharedSpool, INTERACTION_CREATE, SPOOL_RETRY};
use crate::config::{EndpointFormat, Ordering};
use crate::gateway::dispatch::Dispatch;

/// Batches of one shard in flight at once with `ordering = "none"`.
const UNORDERED_IN_FLIGHT: usize = 16;
/// Batches of one shard built and waiting for a sender with `ordering = "none"`, besides
/// those in flight: a sender that finishes takes the next at once instead of a task being
/// spawned for it.
const UNORDERED_QUEUED: usize = UNORDERED_IN_FLIGHT;

/// The batches of one shard waiting to be sent with `ordering = "none"`, and how many sender
/// tasks are running. A sender takes batches until none wait, then ends.
#[derive(Default)]
struct Unsent {
    queue: std::collections::VecDeque<(Outgoing, tokio::sync::OwnedSemaphorePermit)>,
    senders: usize,
}

/// One shard's senders with `ordering = "none"`: up to `UNORDERED_IN_FLIGHT` tasks, each
/// delivering waiting batches one at a time, so a busy shard spawns no task per batch.
struct Senders {
    /// Room for batches in flight or waiting; `send` waits for it.
    room: Arc<tokio::sync::Semaphore>,
    unsent: Arc<Mutex<Unsent>>,
    tasks: JoinSet<()>,
}

impl Senders {
    fn new() -> Senders {
        Senders {
            room: Arc::new(tokio::sync::Semaphore::new(
                UNORDERED_IN_FLIGHT + UNORDERED_QUEUED,
            )),
            unsent: Arc::default(),
            tasks: JoinSet::new(),
        }
    }

    /// Queues `request` for a sender, starting one if fewer than `UNORDERED_IN_FLIGHT` run;
    /// waits while `UNORDERED_IN_FLIGHT + UNORDERED_QUEUED` batches are in flight or waiting.
    async fn send(&mut self, shared: &Arc<Shared>, spool: &SharedSpool, outgoing: Outgoing) {
        let permit = self
            .room
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        // Senders that ended are reaped, so the set holds only running ones. One that
        // panicked did not count itself out.
        while let Some(ended) = self.tasks.try_join_next() {
            if ended.is_err() {
                unsent.senders -= 1;
            }
        }
        unsent.queue.push_back((outgoing, permit));
        let spawn = unsent.senders < UNORDERED_IN_FLIGHT;
        if spawn {
            unsent.senders += 1;
        }
        drop(unsent);
        if spawn {
            self.tasks.spawn(
                send_unsent(shared.clone(), spool.clone(), self.unsent.clone()).in_current_span(),
            );
        }
    }

    /// Waits until every queued batch is delivered.
    async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Shared {
    /// When the first open circuit will allow a probe (soon, if none is open).
    pub(super) fn next_reopen(&self) -> Instant {
        self.endpoints
            .iter()
            .filter_map(|e| e.circuit.reopens_at())
            .min()
            .unwrap_or_else(|| Instant::now() + SPOOL_RETRY)
            .max(Instant::now() + Duration::from_millis(10))
    }

    /// Whether `event` passes `events.include` and `exclude`. Without filters (the common
    /// case) its name is not read at all: this runs for every event.
    fn wanted(&self, event: &Dispatch) -> bool {
        if self.include.is_empty() && self.exclude.is_empty() {
            return true;
        }
        let name = event.name();
        (self.include.is_empty() || self.include.contains(name)) && !self.exclude.contains(name)
    }

    /// Whether `event` is forwarded; one that is filtered out counts as done for checkpoints.
    fn keep(&self, event: &Dispatch) -> bool {
        if self.wanted(event) {
            return true;
        }
        self.progress
            .skipped(event.shard_id, &event.session_id, event.seq);
        self.stats
            .events_filtered
            .fetch_add(1, AtomicOrdering::Relaxed);
        false
    }
}

/// One shard's queue as its worker reads it. The worker goes on reading while a batch is on
/// its way, so an interaction is seen, and sent in its lane, at once; the other events it reads
/// meanwhile are held for the next batches.
///
/// Checkpoints stay true with events read out of their turn: the oldest held event is always
/// registered in `progress` as under way (the batch it goes into then replaces that record), so
/// an interaction that finishes first cannot make the events held before it look safe.
pub(super) struct Intake {
    rx: mpsc::Receiver<Dispatch>,
    /// Events read ahead, oldest first.
    held: VecDeque<Dispatch>,
    /// How many `held` may hold: past it the worker stops reading, the shard's queue fills and
    /// the shard stops reading its gateway connection (backpressure), as without read-ahead.
    limit: usize,
    /// `held.len()`, for the queue depth that status pages and metrics show.
    depth: Arc<AtomicUsize>,
    /// Interactions on their way, a task each.
    lanes: JoinSet<()>,
    /// The shard's queue is closed: the shard has stopped.
    closed: bool,
}

impl Intake {
    pub(super) fn new(
        rx: mpsc::Receiver<Dispatch>,
        limit: usize,
        depth: Arc<AtomicUsize>,
    ) -> Intake {
        Intake {
            rx,
            held: VecDeque::new(),
            limit,
            depth,
            lanes: JoinSet::new(),
            closed: false,
        }
    }

    /// Sorts an event just read: filtered out (done), an interaction (off to its lane), or one
    /// to batch.
    fn sort(&mut self, shared: &Arc<Shared>, event: Dispatch) -> Option<Dispatch> {
        if !shared.keep(&event) {
            return None;
        }
        if !event.is_named(INTERACTION_CREATE) {
            return Some(event);
        }
        // Every lane taken: it goes with the shard's other events, in order, not at once.
        let Ok(lane) = shared.lanes.clone().try_acquire_owned() else {
            let unlaned = shared
                .stats
                .interactions_unlaned
                .fetch_add(1, AtomicOrdering::Relaxed);
            if unlaned.is_multiple_of(100) {
                tracing::warn!(
                    max_lanes = shared.config.interactions.max_lanes,
                    "every interaction lane is taken (interactions.max_lanes): this interaction goes with its shard's other events, in order"
                );
            }
            return Some(event);
        };
        shared
            .progress
            .started(event.shard_id, &event.session_id, event.seq, event.seq);
        let delivering = deliver_interaction(shared.clone(), event);
        self.lanes.spawn(
            async move {
                delivering.await;
                drop(lane);
            }
            .in_current_span(),
        );
        // Lanes that ended are reaped here, where they begin, so the set stays small.
        while self.lanes.try_join_next().is_some() {}
        None
    }

    /// The next event to batch without waiting: the oldest held, else one already queued.
    fn now(&mut self, shared: &Arc<Shared>) -> Option<Dispatch> {
        if let Some(event) = self.held.pop_front() {
            self.depth.store(self.held.len(), AtomicOrdering::Relaxed);
            return Some(event);
        }
        while let Ok(event) = self.rx.try_recv() {
            if let Some(event) = self.sort(shared, event) {
                return Some(event);
            }
        }
        None
    }

    /// Waits for the next event to batch; `None` once the queue is closed and nothing is held.
    async fn next(&mut self, shared: &Arc<Shared>) -> Option<Dispatch> {
        if let Some(event) = self.now(shared) {
            return Some(event);
        }
        loop {
            let Some(event) = self.rx.recv().await else {
                self.closed = true;
                return None;
            };
            if let Some(event) = self.sort(shared, event) {
                return Some(event);
            }
        }
    }

    /// An event to batch already there (or, with linger, arriving before `linger` ends), if
    /// any. The batch's one timer is passed in: a timer per wait would be registered and
    /// removed for nearly every event of a busy shard.
    async fn more(
        &mut self,
        shared: &Arc<Shared>,
        mut linger: Pin<&mut Sleep>,
    ) -> Option<Dispatch> {
        loop {
            if let Some(event) = self.now(shared) {
                return Some(event);
            }
            if self.closed || Instant::now() >= linger.deadline() {
                return None;
            }
            let event = tokio::select! {
                event = self.rx.recv() => match event {
                    Some(event) => event,
                    None => {
                        self.closed = true;
                        return None;
                    }
                },
                _ = &mut linger => return None,
            };
            if let Some(event) = self.sort(shared, event) {
                return Some(event);
            }
        }
    }

    /// Puts back an event taken for a batch it did not fit; it is the next batch's first.
    fn put_back(&mut self, event: Dispatch) {
        self.held.push_front(event);
        self.depth.store(self.held.len(), AtomicOrdering::Relaxed);
    }

    /// Registers the oldest held event as under way (see the type's doc). Called as a batch
    /// starts, since the batch may have taken the one registered before.
    fn mark_oldest(&self, shared: &Shared) {
        if let Some(oldest) = self.held.front() {
            shared
                .progress
                .started(oldest.shard_id, &oldest.session_id, oldest.seq, oldest.seq);
        }
    }

    /// Whether to read ahead now: the queue is open and `held` has room.
    fn reading(&self) -> bool {
        !self.closed && self.held.len() < self.limit
    }

    /// Reads one event ahead, while a batch is on its way: held, or off to its lane.
    async fn read_ahead(&mut self, shared: &Arc<Shared>) {
        let Some(event) = self.rx.recv().await else {
            self.closed = true;
            return;
        };
        if let Some(event) = self.sort(shared, event) {
            if self.held.is_empty() {
                shared
                    .progress
                    .started(event.shard_id, &event.session_id, event.seq, event.seq);
            }
            self.held.push_back(event);
            self.depth.store(self.held.len(), AtomicOrdering::Relaxed);
        }
    }

    /// Waits for `sending` to finish, reading ahead meanwhile.
    async fn while_sending<F: Future<Output = T> + Unpin, T>(
        &mut self,
        shared: &Arc<Shared>,
        mut sending: F,
    ) -> T {
        loop {
            tokio::select! {
                biased;
                done = &mut sending => return done,
                _ = self.read_ahead(shared), if self.reading() => {}
            }
        }
    }

    /// Waits until every interaction on its way is delivered or dead-lettered.
    async fn finish(mut self) {
        while self.lanes.join_next().await.is_some() {}
    }
}

/// One shard's delivery loop: batch, then send in order (or several at once), reading on
/// while a batch is out so interactions go at once in their lane. `format` is the shard's home
/// endpoint's: Carbon's takes each event alone.
pub(super) async fn worker(
    shared: Arc<Shared>,
    mut intake: Intake,
    spool: SharedSpool,
    format: EndpointFormat,
) {
    let batching = &shared.config.batch;
    let mut senders = match shared.config.delivery.ordering {
        Ordering::Shard => None,
        Ordering::None => Some(Senders::new()),
    };
    // Sending a batch in order (signing, the HTTP exchange, retries, dead letters) is most of
    // this loop's state. Inline, it would sit in every shard's task all its life, idle or not.
    // Boxed instead: the box is reused while events wait, so a busy shard allocates it once,
    // and dropped before the loop waits for one, so an idle shard holds none.
    let mut sending: Option<ReusableBoxFuture<'_, ()>> = None;
    loop {
        // Boxed, as the send below is, and only when something waits: most shards never
        // spool anything.
        if !spool.is_empty().await {
            let draining = Box::pin(drain(&shared, &spool));
            intake.while_sending(&shared, draining).await;
        }
        let first = match intake.now(&shared) {
            Some(event) => event,
            None => {
                // Nothing to send: this shard waits, and holds no send while it does.
                sending = None;
                let spooled = !spool.is_empty().await;
                tokio::select! {
                    event = intake.next(&shared) => match event {
                        Some(event) => event,
                        None => break,
                    },
                    // Batches wait in the spool: look again when a circuit may allow a probe.
                    _ = sleep_until(shared.next_reopen()), if spooled => continue,
                    // Taken over in a cluster: the last holder's spool may wait in Redis.
                    _ = spool.taken_over() => continue,
                }
            }
        };
        let outgoing = match format {
            // Carbon takes one event per request, as its own forwarder sends them.
            EndpointFormat::Carbon => Outgoing::Alone(carbon::request_for(&shared, &first, None)),
            EndpointFormat::Shardhook => {
                let mut batch = Batch::new(first);
                if batching.max_events > 1 {
                    let mut linger = pin!(sleep_until(Instant::now() + batching.linger));
                    while batch.len() < batching.max_events {
                        let Some(event) = intake.more(&shared, linger.as_mut()).await else {
                            break;
                        };
                        if !batch.accepts(&event, batching.max_bytes) {
                            intake.put_back(event);
                            break;
                        }
                        batch.push(event);
                    }
                }
                // A request of one event has no room for another shard's batch: it goes
                // alone, without the outbox's hop (a fifth of the CPU per event unbatched).
                match batching.max_events {
                    1 => Outgoing::Alone(batch.finish()),
                    _ => Outgoing::Batch(batch),
                }
            }
        };
        let (shard, session, first_seq, last_seq) = outgoing.span();
        shared.progress.started(shard, session, first_seq, last_seq);
        intake.mark_oldest(&shared);
        match senders.as_mut() {
            None => {
                let send = deliver(&shared, &spool, outgoing);
                let boxed = match sending.as_mut() {
                    Some(boxed) => {
                        boxed.set(send);
                        boxed
                    }
                    None => sending.insert(ReusableBoxFuture::new(send)),
                };
                intake.while_sending(&shared, boxed).await;
            }
            Some(senders) => {
                let queued = Box::pin(senders.send(&shared, &spool, outgoing));
                intake.while_sending(&shared, queued).await;
            }
        }
    }
    if let Some(senders) = senders {
        senders.finish().await;
    }
    intake.finish().await;
}

/// A sender of `ordering = "none"`: delivers waiting batches of its shard, one at a time,
/// until none wait.
async fn send_unsent(shared: Arc<Shared>, spool: SharedSpool, unsent: Arc<Mutex<Unsent>>) {
    loop {
        let next = {
            let mut unsent = unsent.lock().unwrap_or_else(|p| p.into_inner());
            let next = unsent.queue.pop_front();
            if next.is_none() {
                unsent.senders -= 1;
            }
            next
        };
        let Some((outgoing, _room)) = next else {
            return;
        };
        deliver(&shared, &spool, outgoing).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, EndpointConfig, SigningConfig, StateConfig};
    use crate::delivery::Pipeline;
    use crate::secret::SigningKey;
    use crate::state::spool::ShardSpool;

    /// Every shard's delivery loop is a task for the life of the shard, busy or idle, and the
    /// size of its future is what each one costs. Sending a batch (the HTTP exchange, retries,
    /// dead letters) is boxed out of it; inline, the task was 3.5 KiB in a release build.
    #[tokio::test]
    async fn a_shards_delivery_loop_does_not_hold_a_send_inline() {
        let state =
            std::env::temp_dir().join(format!("shardhook-loop-size-{}", std::process::id()));
        let config = Config {
            signing: SigningConfig {
                secret: Some(SigningKey::parse(&SigningKey::generate()).unwrap()),
                previous_secrets: vec![],
                control_secret: None,
                ed25519_private_key: None,
            },
            endpoints: vec![EndpointConfig::new("a", "http://127.0.0.1:9/")],
            state: StateConfig {
                dir: state.clone(),
                ..StateConfig::default()
            },
            ..Config::default()
        };
        let pipeline = Pipeline::new(&config).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let spool = ShardSpool::open(&state, 0, pipeline.shared.spool_usage.clone());
        let looping = worker(
            pipeline.shared.clone(),
            Intake::new(rx, 1, Arc::default()),
            SharedSpool::Disk(Arc::new(tokio::sync::Mutex::new(spool))),
            EndpointFormat::Shardhook,
        );
        let size = std::mem::size_of_val(&looping);
        let send = std::mem::size_of_val(&deliver(
            &pipeline.shared,
            &SharedSpool::Disk(Arc::new(tokio::sync::Mutex::new(ShardSpool::open(
                &state,
                1,
                pipeline.shared.spool_usage.clone(),
            )))),
            Outgoing::Batch(Batch::new(Dispatch::new(
                [0, 1],
                Arc::from("s"),
                1,
                bytes::Bytes::from_static(b"{}"),
                0..0,
                0..2,
            ))),
        ));
        assert!(
            size < send,
            "the loop ({size} bytes) holds a send ({send} bytes)"
        );
        assert!(size <= 2048, "the loop is {size} bytes");
        let _ = std::fs::remove_dir_all(&state);
    }
}
