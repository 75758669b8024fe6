//! The task that keeps resume checkpoints up to date: it reads each shard's session (from its
//! handle) and how far that session is safe (from delivery's durable progress), and writes the
//! checkpoints that moved.
//!
//! The local store's keeper (`store::local`): it reads both shards and delivery; the record
//! and its atomic write are `state::checkpoint`'s.

use std::collections::BTreeMap;
use std::path::Path;

use crate::delivery::DeliveryHandle;
use crate::gateway::handle::ShardHandle;
use crate::state::checkpoint::{Checkpoint, CheckpointStore, FileStore};

/// Writes the shards' checkpoints whenever durable progress moves: all of them in one write.
pub struct Checkpointer {
    shard_count: u32,
    /// The bot, recorded in each checkpoint.
    bot: String,
    shards: Vec<ShardHandle>,
    delivery: DeliveryHandle,
    store: Box<dyn CheckpointStore>,
    /// What the store holds, by shard: a shard without a session now keeps its last one.
    written: BTreeMap<u32, Checkpoint>,
    /// When the store was last written, in Unix seconds.
    last_write: u64,
}

impl Checkpointer {
    /// A checkpointer for the router's shards (`parts`), reading durable progress from its
    /// delivery and writing under `state_dir`.
    pub fn new(state_dir: &Path, parts: super::Parts) -> Checkpointer {
        let shards = parts.shards;
        let first = shards.iter().map(|s| s.id()).min().unwrap_or(0);
        let end = shards.iter().map(|s| s.id() + 1).max().unwrap_or(0);
        Checkpointer {
            shard_count: parts.shard_count,
            bot: parts.bot,
            shards,
            delivery: parts.delivery,
            store: Box::new(FileStore::new(state_dir, first..end)),
            written: BTreeMap::new(),
            last_write: 0,
        }
    }

    /// The checkpoint a shard has now (`DeliveryHandle::resume_point`), if it differs from
    /// the one written. Nothing is copied for a shard whose checkpoint stands.
    fn changed(&self, shard: &ShardHandle) -> Option<Checkpoint> {
        let now = self.delivery.resume_point(shard, None)?;
        let same = self
            .written
            .get(&shard.id())
            .is_some_and(|w| now.is_recorded_in(w));
        (!same).then(|| Checkpoint {
            written_at: None,
            ..now.checkpoint(self.shard_count, &self.bot)
        })
    }

    /// Writes every checkpoint in one write if any changed, or a minute has passed since the
    /// last write; returns how many changed.
    pub fn write_changed(&mut self) -> usize {
        self.write(false)
    }

    /// Writes every checkpoint now, changed or not (at shutdown: the sessions were alive until
    /// now); returns how many changed.
    pub fn write_final(&mut self) -> usize {
        self.write(true)
    }

    fn write(&mut self, always: bool) -> usize {
        let changed: Vec<Checkpoint> = self
            .shards
            .iter()
            .filter_map(|shard| self.changed(shard))
            .collect();
        let now = crate::delivery::signer::unix_now();
        let stale =
            now.saturating_sub(self.last_write) >= crate::state::checkpoint::REFRESH.as_secs();
        if changed.is_empty() && !(always || stale)
            || (changed.is_empty() && self.written.is_empty())
        {
            return 0;
        }
        let mut next = self.written.clone();
        for mut cp in changed.iter().cloned() {
            cp.written_at = Some(now);
            next.insert(cp.shard_id, cp);
        }
        // A standing checkpoint is written again with this time too: it still holds.
        for cp in next.values_mut() {
            cp.written_at = Some(now);
        }
        let all: Vec<Checkpoint> = next.values().cloned().collect();
        match self.store.save(&all) {
            Ok(()) => {
                self.written = next;
                self.last_write = now;
                changed.len()
            }
            Err(e) => {
                tracing::error!(
                    changed = changed.len(),
                    "failed to write the resume checkpoints: {e}"
                );
                0
            }
        }
    }

    /// Writes changed checkpoints every `interval` until `stop` resolves. The write and its
    /// fsyncs go on tokio's blocking pool: on a runtime worker, a slow disk would stall every
    /// shard and delivery that worker carries, for as long as it takes.
    pub async fn run(
        mut self,
        interval: std::time::Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Checkpointer {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = &mut stop => return self,
                _ = tick.tick() => {
                    self = tokio::task::spawn_blocking(move || {
                        self.write_changed();
                        self
                    })
                    .await
                    .expect("writing checkpoints does not panic");
                }
            }
        }
    }
}
