//! A batch's way to safety: handed to an endpoint's outbox (or, Carbon's, sent alone), or
//! appended to the shard's spool when no endpoint can take it (or older batches of the shard
//! already wait there), and the spool drained, oldest first, once an endpoint can.
//!
//! Owns the choice between sending and spooling and the draining; requests of many shards are
//! `outbox`'s, the attempts `attempt`'s and the file format `state::spool`'s.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;

use serde_json::value::RawValue;
use tokio::time::{sleep, Instant};
use tracing::error;

use super::attempt::{attempt_until_done, Outcome, Target};
use super::batch::{Batch, Request};
use super::outbox::Fate;
use super::shared::Shared;
use super::signer::unix_now;
use super::{SharedSpool, SPOOL_RETRY};
use crate::config::EndpointFormat;
use crate::state::dead_letter::DeadLetter;
use crate::state::spool::{Head, SpooledBatch};

/// What a shard's worker hands on: a batch in shardhook's format, which an endpoint's outbox
/// puts in a request with other shards' batches, or a request of its own (Carbon's).
pub(super) enum Outgoing {
    Batch(Batch),
    Alone(Request),
}

impl Outgoing {
    /// Its shard, session, and first and last seq: its record in durable progress.
    pub(super) fn span(&self) -> (u32, &Arc<str>, u64, u64) {
        match self {
            Outgoing::Batch(b) => (b.shard_id(), b.session_id(), b.first_seq(), b.last_seq()),
            Outgoing::Alone(r) => (r.shard_id, &r.session_id, r.first_seq, r.last_seq),
        }
    }

    fn into_request(self) -> Request {
        match self {
            Outgoing::Batch(b) => b.finish(),
            Outgoing::Alone(r) => r,
        }
    }
}

/// Sends one batch until it is delivered or dead-lettered, or spools it when no endpoint can
/// take it (and while older batches of the shard wait in the spool). Any of the three makes
/// its events safe for resume checkpoints (in a cluster the spool is in Redis, which outlives
/// this machine).
pub(super) async fn deliver(shared: &Shared, spool: &SharedSpool, outgoing: Outgoing) {
    let (shard, session, first, _) = outgoing.span();
    let session = session.clone();
    let safe = if !spool.is_empty().await {
        spool_request(shared, spool, outgoing.into_request()).await
    } else {
        match outgoing {
            Outgoing::Alone(request) => {
                match attempt_until_done(shared, request, Target::Ring, None).await {
                    (Outcome::Unavailable(request), _) => {
                        spool_request(shared, spool, request).await
                    }
                    _ => true,
                }
            }
            Outgoing::Batch(batch) => through_outboxes(shared, spool, batch).await,
        }
    };
    if safe {
        shared.progress.finished(shard, &session, first);
    }
}

/// Hands `batch` to the outbox of its shard's first endpoint whose circuit lets requests
/// through, then to the next one's while the one before gives it back, or to the spool when
/// none is left. Says whether the batch is safe.
async fn through_outboxes(shared: &Shared, spool: &SharedSpool, mut batch: Batch) -> bool {
    loop {
        let pick = shared.ring.pick(batch.shard_id() as u64, |i| {
            let endpoint = &shared.endpoints[i];
            endpoint.format == EndpointFormat::Shardhook && endpoint.circuit.would_allow()
        });
        let Some(index) = pick else {
            return spool_request(shared, spool, batch.finish()).await;
        };
        let limits = &shared.config.batch;
        let outbox = &shared.endpoints[index].outbox;
        match outbox
            .submit(batch, limits.max_events, limits.max_bytes)
            .await
        {
            Fate::Done => return true,
            Fate::Lost => return false,
            Fate::Unavailable(back) => batch = back,
        }
    }
}

/// Appends to the spool, waiting (backpressure) while it is full or cannot be written. Says
/// whether the batch is safe: not when the shard turned out to be another router's (its
/// spool is fenced), whose resume gets these events from Discord again.
pub(super) async fn spool_request(shared: &Shared, spool: &SharedSpool, request: Request) -> bool {
    let batch = SpooledBatch {
        id: request.id,
        shard_id: request.shard_id,
        session_id: request.session_id.to_string(),
        first_seq: request.first_seq,
        last_seq: request.last_seq,
        events: request.events,
        body: RawValue::from_string(String::from_utf8_lossy(&request.body).into_owned())
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON")),
        format: request.format,
        attempts: request.attempts,
    };
    let mut batch = Some(batch);
    loop {
        let trying = batch.take().expect("the batch is back after every try");
        let (appended, tried) = spool.append(trying).await;
        let batch = batch.insert(tried);
        match appended {
            Ok(true) => {
                shared
                    .stats
                    .events_spooled
                    .fetch_add(batch.events as u64, AtomicOrdering::Relaxed);
                return true;
            }
            Ok(false) => {
                tracing::warn!(
                    webhook_id = %batch.id,
                    shard_id = batch.shard_id,
                    first_seq = batch.first_seq,
                    last_seq = batch.last_seq,
                    "not spooled: the shard is another router's now, which resumes it from its last checkpoint (Discord replays these events to it)"
                );
                return false;
            }
            Err(e) => error!(webhook_id = %batch.id, "{e}"),
        }
        sleep(SPOOL_RETRY).await;
    }
}

/// Sends spooled batches, oldest first, while an endpoint can take them.
pub(super) async fn drain(shared: &Shared, spool: &SharedSpool) {
    loop {
        let Some((head, taken)) = spool.peek().await else {
            return;
        };
        match head {
            Head::Corrupt(raw) => {
                error!(
                    bytes = raw.len(),
                    "a spool record failed its checksum or MAC; its raw bytes go to the dead-letter file"
                );
                let text = serde_json::to_string(&String::from_utf8_lossy(&raw))
                    .expect("a string serialises");
                let letter = DeadLetter {
                    at: unix_now(),
                    webhook_id: String::new(),
                    shard_id: u32::MAX,
                    endpoint: String::new(),
                    url: String::new(),
                    status: None,
                    error: "corrupted or unverifiable spool record (checksum or MAC mismatch); body holds its raw bytes"
                        .to_owned(),
                    attempts: 0,
                    body: RawValue::from_string(text).expect("a JSON string"),
                    format: Default::default(),
                };
                let stats = &shared.stats;
                stats
                    .requests_dead_lettered
                    .fetch_add(1, AtomicOrdering::Relaxed);
                stats
                    .dead_letters_unattributed
                    .fetch_add(1, AtomicOrdering::Relaxed);
                if let Err(e) = shared.dead.append(&letter).await {
                    error!("{e}");
                }
            }
            Head::Batch(batch) => {
                let available = shared.ring.pick(batch.shard_id as u64, |i| {
                    let endpoint = &shared.endpoints[i];
                    endpoint.format == batch.format && endpoint.circuit.would_allow()
                });
                if available.is_none() {
                    return;
                }
                let body: Box<str> = batch.body.into();
                let session: Arc<str> = Arc::from(batch.session_id.as_str());
                let request = Request {
                    id: batch.id,
                    body: bytes::Bytes::from(body.into_boxed_bytes()),
                    shard_id: batch.shard_id,
                    session_id: session.clone(),
                    first_seq: batch.first_seq,
                    last_seq: batch.last_seq,
                    events: batch.events,
                    first_received: Instant::now(),
                    deferred: Vec::new(),
                    format: batch.format,
                    attempts: batch.attempts,
                };
                if let (Outcome::Unavailable(_), _) =
                    attempt_until_done(shared, request, Target::Ring, None).await
                {
                    return;
                }
            }
        }
        spool.pop(taken).await;
    }
}
