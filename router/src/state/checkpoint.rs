//! Resume checkpoints: per shard, the session and the durable seq, kept on disk so a restarted
//! router RESUMEs instead of identifying anew, and Discord replays whatever was received but
//! not yet safe.
//!
//! Owns the file format (`state.dir/checkpoints/shard-N.json`) and writing it atomically:
//! write a temporary file, fsync it, rename it over the old one, fsync the directory. How
//! often to write is the caller's choice (`Checkpointer` writes every second and at
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
    super::files::create_dir(&dir)?;
    let path = path_of(state_dir, checkpoint.shard_id);
    let tmp = path.with_extension("json.tmp");
    let mut file = super::files::create(&tmp)?;
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
        #[cfg(unix)]
        {
            use crate::state::files::mode_of;
            assert_eq!(mode_of(&dir_of(&dir)).unwrap(), 0o700);
            assert_eq!(mode_of(&path_of(&dir, 3)).unwrap(), 0o600);
        }
        assert!(load_all(&dir, 8).is_empty());
        std::fs::write(path_of(&dir, 1), "{not json").unwrap();
        assert_eq!(load_all(&dir, 4).len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
