//! The task that keeps resume checkpoints up to date: it reads each shard's session (from its
//! handle) and how far that session is safe (from delivery's durable progress), and writes the
//! checkpoints that moved.
//!
//! It sits with the composition root because it reads both shards and delivery; the record
//! and its atomic write are `state::checkpoint`'s.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::delivery::DeliveryHandle;
use crate::gateway::handle::ShardHandle;
use crate::state::checkpoint::{save, Checkpoint};

/// Writes each shard's checkpoint whenever its durable progress moves.
pub struct Checkpointer {
    state_dir: PathBuf,
    shard_count: u32,
    shards: Vec<ShardHandle>,
    delivery: DeliveryHandle,
    written: HashMap<u32, Checkpoint>,
}

impl Checkpointer {
    /// A checkpointer for `shards` of a bot with `shard_count` shards, reading durable
    /// progress from `delivery` and writing under `state_dir`.
    pub fn new(
        state_dir: &Path,
        shard_count: u32,
        shards: &[ShardHandle],
        delivery: DeliveryHandle,
    ) -> Checkpointer {
        Checkpointer {
            state_dir: state_dir.to_owned(),
            shard_count,
            shards: shards.to_vec(),
            delivery,
            written: HashMap::new(),
        }
    }

    /// The checkpoint a shard has now: its session and how far that session is safe.
    fn current(&self, shard: &ShardHandle) -> Option<Checkpoint> {
        let status = shard.status().borrow().clone();
        let session = status.session_id?;
        let resume_url = status.resume_url?;
        // A session with nothing safe yet resumes from 0: Discord replays all of it.
        let seq = match self.delivery.durable(shard.id()) {
            Some((durable_session, seq)) if durable_session == session => seq,
            _ => 0,
        };
        Some(Checkpoint {
            shard_id: shard.id(),
            shard_count: self.shard_count,
            session_id: session.to_string(),
            resume_url: resume_url.to_string(),
            seq,
        })
    }

    /// Writes the checkpoints that changed; returns how many.
    pub fn write_changed(&mut self) -> usize {
        let mut wrote = 0;
        for shard in &self.shards {
            let Some(cp) = self.current(shard) else {
                continue;
            };
            if self.written.get(&cp.shard_id) == Some(&cp) {
                continue;
            }
            match save(&self.state_dir, &cp) {
                Ok(()) => {
                    wrote += 1;
                    self.written.insert(cp.shard_id, cp);
                }
                Err(e) => tracing::error!(
                    shard_id = cp.shard_id,
                    dir = %self.state_dir.display(),
                    "failed to write a resume checkpoint: {e}"
                ),
            }
        }
        wrote
    }

    /// Writes changed checkpoints every `interval` until `stop` resolves. The writes and their
    /// fsyncs go on tokio's blocking pool: on a runtime worker, a slow disk would stall every
    /// shard and delivery that worker carries, for as long as it takes (two fsyncs per busy
    /// shard every interval).
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
