//! One shard's delivery loop: take events from the shard's queue (filtered), batch them, and
//! send the batches in order, or several at once with `ordering = "none"`.
//!
//! Owns batching decisions (size, bytes, linger, an interaction closes its batch) and the
//! unordered senders; what happens to each batch is `spooling`'s and `attempt`'s.

use std::pin::{pin, Pin};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant, Sleep};
use tokio_util::sync::ReusableBoxFuture;
use tracing::Instrument;

use super::batch::{Batch, Request};
use super::shared::Shared;
use super::spooling::{deliver, drain};
use super::{SharedSpool, INTERACTION_CREATE, SPOOL_RETRY};
use crate::config::Ordering;
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
    queue: std::collections::VecDeque<(Request, tokio::sync::OwnedSemaphorePermit)>,
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
    async fn send(&mut self, shared: &Arc<Shared>, spool: &SharedSpool, request: Request) {
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
        unsent.queue.push_back((request, permit));
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
    pub(super) fn wanted(&self, event: &Dispatch) -> bool {
        if self.include.is_empty() && self.exclude.is_empty() {
            return true;
        }
        let name = event.name();
        (self.include.is_empty() || self.include.contains(name)) && !self.exclude.contains(name)
    }

    /// Whether `event` is forwarded; one that is filtered out counts as done for checkpoints.
    pub(super) fn keep(&self, event: &Dispatch) -> bool {
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

    /// The next event for this shard already queued that passes the filters, without waiting.
    pub(super) fn queued(&self, rx: &mut mpsc::Receiver<Dispatch>) -> Option<Dispatch> {
        while let Ok(event) = rx.try_recv() {
            if self.keep(&event) {
                return Some(event);
            }
        }
        None
    }

    /// The next event for this shard that passes the filters.
    pub(super) async fn next(&self, rx: &mut mpsc::Receiver<Dispatch>) -> Option<Dispatch> {
        loop {
            let event = rx.recv().await?;
            if self.keep(&event) {
                return Some(event);
            }
        }
    }

    /// An event already queued (or, with linger, arriving before `linger` ends), if any. The
    /// batch's one timer is passed in: a timer per wait would be registered and removed for
    /// nearly every event of a busy shard.
    pub(super) async fn more(
        &self,
        rx: &mut mpsc::Receiver<Dispatch>,
        mut linger: Pin<&mut Sleep>,
    ) -> Option<Dispatch> {
        loop {
            if let Some(event) = self.queued(rx) {
                return Some(event);
            }
            if Instant::now() >= linger.deadline() {
                return None;
            }
            let event = tokio::select! {
                event = rx.recv() => event?,
                _ = &mut linger => return None,
            };
            if self.keep(&event) {
                return Some(event);
            }
        }
    }
}

/// One shard's delivery loop: batch, then send in order (or several at once).
pub(super) async fn worker(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Dispatch>,
    spool: SharedSpool,
) {
    let batching = &shared.config.batch;
    let mut senders = match shared.config.delivery.ordering {
        Ordering::Shard => None,
        Ordering::None => Some(Senders::new()),
    };
    let mut carry: Option<Dispatch> = None;
    // Sending a batch in order (signing, the HTTP exchange, retries, dead letters) is most of
    // this loop's state. Inline, it would sit in every shard's task all its life, idle or not.
    // Boxed instead: the box is reused while events wait, so a busy shard allocates it once,
    // and dropped before the loop waits for one, so an idle shard holds none.
    let mut sending: Option<ReusableBoxFuture<'_, ()>> = None;
    loop {
        // Boxed, as the send below is, and only when something waits: most shards never
        // spool anything.
        if !spool.lock().await.is_empty() {
            Box::pin(drain(&shared, &spool)).await;
        }
        let first = match carry.take().or_else(|| shared.queued(&mut rx)) {
            Some(event) => event,
            None => {
                // Nothing to send: this shard waits, and holds no send while it does.
                sending = None;
                let spooled = !spool.lock().await.is_empty();
                tokio::select! {
                    event = shared.next(&mut rx) => match event {
                        Some(event) => event,
                        None => break,
                    },
                    // Batches wait in the spool: look again when a circuit may allow a probe.
                    _ = sleep_until(shared.next_reopen()), if spooled => continue,
                }
            }
        };
        let urgent = first.is_named(INTERACTION_CREATE);
        let deferred = shared.deferred(&first).await;
        let mut batch = Batch::new(first);
        if let Some(interaction) = deferred {
            batch.mark_deferred(interaction);
        }
        if !urgent && batching.max_events > 1 {
            let mut linger = pin!(sleep_until(Instant::now() + batching.linger));
            while batch.len() < batching.max_events {
                let Some(event) = shared.more(&mut rx, linger.as_mut()).await else {
                    break;
                };
                if !batch.accepts(&event, batching.max_bytes) {
                    carry = Some(event);
                    break;
                }
                let urgent = event.is_named(INTERACTION_CREATE);
                let deferred = shared.deferred(&event).await;
                batch.push(event);
                if let Some(interaction) = deferred {
                    batch.mark_deferred(interaction);
                }
                if urgent {
                    break;
                }
            }
        }
        let request = batch.finish();
        shared.progress.started(
            request.shard_id,
            &request.session_id,
            request.first_seq,
            request.last_seq,
        );
        match senders.as_mut() {
            None => {
                let send = deliver(&shared, &spool, request);
                let boxed = match sending.as_mut() {
                    Some(boxed) => {
                        boxed.set(send);
                        boxed
                    }
                    None => sending.insert(ReusableBoxFuture::new(send)),
                };
                boxed.await;
            }
            Some(senders) => senders.send(&shared, &spool, request).await,
        }
    }
    if let Some(senders) = senders {
        senders.finish().await;
    }
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
        let Some((request, _room)) = next else {
            return;
        };
        deliver(&shared, &spool, request).await;
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
            rx,
            Arc::new(tokio::sync::Mutex::new(spool)),
        );
        let size = std::mem::size_of_val(&looping);
        let send = std::mem::size_of_val(&deliver(
            &pipeline.shared,
            &Arc::new(tokio::sync::Mutex::new(ShardSpool::open(
                &state,
                1,
                pipeline.shared.spool_usage.clone(),
            ))),
            Batch::new(Dispatch::new(
                [0, 1],
                Arc::from("s"),
                1,
                bytes::Bytes::from_static(b"{}"),
                0..0,
                0..2,
            ))
            .finish(),
        ));
        assert!(
            size < send,
            "the loop ({size} bytes) holds a send ({send} bytes)"
        );
        assert!(size <= 2048, "the loop is {size} bytes");
        let _ = std::fs::remove_dir_all(&state);
    }
}
