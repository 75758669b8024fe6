//! Resume checkpoints: per shard, the session and the durable seq, kept on disk so a restarted
//! router RESUMEs instead of identifying anew, and Discord replays whatever was received but
//! not yet safe.
//!
//! Owns the file format (`state.dir/checkpoints/shard-N.json`) and writing it atomically:
//! write a temporary file, fsync it, rename it over the old one, fsync the directory. How
//! often to write is the caller's choice (`shardhook run` writes every second and at
//! shutdown); a crash loses at most the progress since the last write, which Discord then
//! replays: duplicates, never losses.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One shard's checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub shard_id: u32,
    /// The shard count the session was identified with; a checkpoint for another count is
    /// ignored.
    pub shard_count: u32,
    pub session_id: String,
    pub resume_url: String,
    /// Every event of the session up to this seq is delivered, dead-lettered or spooled.
    pub seq: u64,
}

fn dir_of(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoints")
}

fn path_of(state_dir: &Path, shard: u32) -> PathBuf {
    dir_of(state_dir).join(format!("shard-{shard}.json"))
}

/// Writes one checkpoint atomically and durably.
pub fn save(state_dir: &Path, checkpoint: &Checkpoint) -> std::io::Result<()> {
    let dir = dir_of(state_dir);
    std::fs::create_dir_all(&dir)?;
    let path = path_of(state_dir, checkpoint.shard_id);
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec(checkpoint).expect("checkpoints serialise"))?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Reads every checkpoint for `shard_count` shards. A file that does not parse is reported and
/// skipped: that shard identifies anew.
pub fn load_all(state_dir: &Path, shard_count: u32) -> HashMap<u32, Checkpoint> {
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir_of(state_dir)) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<Checkpoint>(&bytes).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(cp) if cp.shard_count == shard_count => {
                found.insert(cp.shard_id, cp);
            }
            Ok(cp) => tracing::warn!(
                path = %path.display(),
                "ignoring a checkpoint for {} shards; this run has {shard_count}",
                cp.shard_count
            ),
            Err(e) => {
                tracing::error!(path = %path.display(), "ignoring an unreadable checkpoint: {e}")
            }
        }
    }
    found
}

/// Writes each shard's checkpoint whenever its durable progress moves.
pub struct Checkpointer {
    state_dir: PathBuf,
    shard_count: u32,
    shards: Vec<crate::shard::ShardHandle>,
    delivery: crate::delivery::DeliveryHandle,
    written: HashMap<u32, Checkpoint>,
}

impl Checkpointer {
    pub fn new(
        state_dir: &Path,
        shard_count: u32,
        shards: &[crate::shard::ShardHandle],
        delivery: crate::delivery::DeliveryHandle,
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
    fn current(&self, shard: &crate::shard::ShardHandle) -> Option<Checkpoint> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_other_shard_counts_are_ignored() {
        let dir = std::env::temp_dir().join(format!("shardhook-cp-{}", std::process::id()));
        let cp = Checkpoint {
            shard_id: 3,
            shard_count: 4,
            session_id: "s".into(),
            resume_url: "wss://x".into(),
            seq: 42,
        };
        save(&dir, &cp).unwrap();
        save(
            &dir,
            &Checkpoint {
                seq: 43,
                ..cp.clone()
            },
        )
        .unwrap();
        assert_eq!(load_all(&dir, 4).get(&3).map(|c| c.seq), Some(43));
        assert!(load_all(&dir, 8).is_empty());
        std::fs::write(path_of(&dir, 1), "{not json").unwrap();
        assert_eq!(load_all(&dir, 4).len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
