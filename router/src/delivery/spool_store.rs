//! Where a shard's spool is kept (`SharedSpool`): a file on this machine's disk for a router
//! alone, or a stream in the cluster's Redis, which outlives the machine and which whichever
//! router holds the shard drains.
//!
//! Owns the choice and the calls on either; the file format is `state::spool`'s, the stream's
//! keys `cluster`'s (through `RemoteSpool`), and when to spool or drain `spooling`'s.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::state::spool::{Head, Pushed, RemoteSpool, ShardSpool, SpoolUsage, SpooledBatch};

/// A shard's spool, shared by its batches in flight.
#[derive(Clone)]
pub(crate) enum SharedSpool {
    /// The shard's file under `state.dir/spool/`.
    Disk(Arc<tokio::sync::Mutex<ShardSpool>>),
    /// The shard's stream in the cluster's Redis.
    Remote(Arc<RemoteShardSpool>),
}

/// A shard's stream, and what this router knows of its length.
pub(crate) struct RemoteShardSpool {
    shard: u32,
    backend: Arc<dyn RemoteSpool>,
    /// Batches in the stream, as last counted: only the shard's holder adds or removes them.
    len: AtomicU64,
    /// The count must be read again (at start, and when the shard was taken over: its last
    /// holder may have added some).
    stale: AtomicBool,
    /// Bytes this router added, against `state.spool_max_bytes`.
    usage: Arc<SpoolUsage>,
    /// One append, peek or removal at a time, as the file's mutex gives the disk spool.
    turn: tokio::sync::Mutex<()>,
    /// Wakes the shard's idle delivery loop when the shard was taken over.
    moved: tokio::sync::Notify,
}

/// What `peek` found at the head, and how to remove it.
pub(crate) enum Taken {
    /// A record of the file, `size` bytes long.
    Disk(u64),
    /// An entry of the stream, by id, `size` bytes long.
    Remote(String, u64),
}

impl RemoteShardSpool {
    pub(crate) fn new(shard: u32, backend: Arc<dyn RemoteSpool>, usage: Arc<SpoolUsage>) -> Self {
        RemoteShardSpool {
            shard,
            backend,
            len: AtomicU64::new(0),
            stale: AtomicBool::new(true),
            usage,
            turn: tokio::sync::Mutex::new(()),
            moved: tokio::sync::Notify::new(),
        }
    }

    /// The shard was taken over: its stream may hold what another router added.
    pub(crate) fn count_again(&self) {
        self.stale.store(true, Ordering::Relaxed);
        self.moved.notify_one();
    }
}

/// Runs `f` on the shard's spool file on tokio's blocking pool: appends fsync, and reads and
/// deletes touch the disk, which on a runtime worker would stall every shard and delivery that
/// worker carries for as long as a slow disk takes.
async fn on_disk<T: Send + 'static>(
    spool: &Arc<tokio::sync::Mutex<ShardSpool>>,
    f: impl FnOnce(&mut ShardSpool) -> T + Send + 'static,
) -> T {
    let mut spool = spool.clone().lock_owned().await;
    tokio::task::spawn_blocking(move || f(&mut spool))
        .await
        .expect("spool file I/O does not panic")
}

impl SharedSpool {
    /// Resolves when the shard was taken over from another router (never, on disk): its
    /// spool may hold batches to drain though no event of this router's came.
    pub(crate) async fn taken_over(&self) {
        match self {
            SharedSpool::Disk(_) => std::future::pending().await,
            SharedSpool::Remote(stream) => stream.moved.notified().await,
        }
    }

    /// Whether nothing waits in the spool (the stream's count is read again when stale; an
    /// unreadable count reads as "something may wait", so the drain finds out).
    pub(crate) async fn is_empty(&self) -> bool {
        match self {
            SharedSpool::Disk(file) => file.lock().await.is_empty(),
            SharedSpool::Remote(stream) => {
                if stream.stale.swap(false, Ordering::Relaxed) {
                    match stream.backend.len(stream.shard).await {
                        Ok(len) => stream.len.store(len, Ordering::Relaxed),
                        Err(e) => {
                            tracing::warn!(
                                shard_id = stream.shard,
                                "could not count the shard's spool in Redis: {e}"
                            );
                            stream.stale.store(true, Ordering::Relaxed);
                            return false;
                        }
                    }
                }
                stream.len.load(Ordering::Relaxed) == 0
            }
        }
    }

    /// Adds `batch` at the end; an error says why not (the caller waits and tries again).
    /// `Ok(false)`: not added, and never will be: the shard is another router's now.
    pub(crate) async fn append(&self, batch: SpooledBatch) -> (Result<bool, String>, SpooledBatch) {
        match self {
            SharedSpool::Disk(file) => {
                on_disk(file, move |spool| {
                    let appended = spool.append(&batch).map_err(|e| e.to_string());
                    (appended.map(|()| true), batch)
                })
                .await
            }
            SharedSpool::Remote(stream) => {
                let record = serde_json::to_vec(&batch).expect("a batch serialises");
                let size = record.len() as u64;
                let usage = &stream.usage;
                if usage.used.load(Ordering::Relaxed) + size > usage.limit {
                    let full = format!(
                        "the spool is full ({} of {} bytes added to Redis by this router); the shard waits",
                        usage.used.load(Ordering::Relaxed),
                        usage.limit
                    );
                    return (Err(full), batch);
                }
                let _turn = stream.turn.lock().await;
                let pushed = stream.backend.push(stream.shard, record).await;
                if pushed == Ok(Pushed::Added) {
                    stream.len.fetch_add(1, Ordering::Relaxed);
                    usage.used.fetch_add(size, Ordering::Relaxed);
                }
                (pushed.map(|p| p == Pushed::Added), batch)
            }
        }
    }

    /// The oldest batch, without removing it.
    pub(crate) async fn peek(&self) -> Option<(Head, Taken)> {
        match self {
            SharedSpool::Disk(file) => on_disk(file, |spool| spool.peek())
                .await
                .map(|(head, size)| (head, Taken::Disk(size))),
            SharedSpool::Remote(stream) => {
                let _turn = stream.turn.lock().await;
                match stream.backend.first(stream.shard).await {
                    Ok(Some((id, record))) => {
                        let size = record.as_ref().map_or_else(Vec::len, Vec::len) as u64;
                        let head = match record {
                            Ok(record) => match serde_json::from_slice(&record) {
                                Ok(batch) => Head::Batch(batch),
                                Err(_) => Head::Corrupt(record),
                            },
                            Err(refused) => Head::Corrupt(refused),
                        };
                        Some((head, Taken::Remote(id, size)))
                    }
                    Ok(None) => {
                        stream.len.store(0, Ordering::Relaxed);
                        None
                    }
                    Err(e) => {
                        tracing::warn!(
                            shard_id = stream.shard,
                            "could not read the shard's spool in Redis: {e}"
                        );
                        None
                    }
                }
            }
        }
    }

    /// Removes what `peek` found.
    pub(crate) async fn pop(&self, taken: Taken) {
        match (self, taken) {
            (SharedSpool::Disk(file), Taken::Disk(size)) => {
                on_disk(file, move |spool| spool.pop(size)).await
            }
            (SharedSpool::Remote(stream), Taken::Remote(id, size)) => {
                let _turn = stream.turn.lock().await;
                match stream.backend.remove(stream.shard, id).await {
                    Ok(()) => {
                        let _ = stream.len.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                            Some(n.saturating_sub(1))
                        });
                        let _ = stream.usage.used.fetch_update(
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                            |n| Some(n.saturating_sub(size)),
                        );
                    }
                    // It is sent again by the next drain: a duplicate, not a loss.
                    Err(e) => tracing::warn!(
                        shard_id = stream.shard,
                        "could not remove a delivered batch from the shard's spool in Redis: {e}; it may be sent again"
                    ),
                }
            }
            _ => unreachable!("a spool removes only what it found"),
        }
    }
}
