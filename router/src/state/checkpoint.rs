//! Resume checkpoints: per shard, the session and the durable seq, kept so a restarted router
//! RESUMEs instead of identifying anew, and Discord replays whatever was received but not yet
//! safe.
//!
//! Owns the record and where it is kept, behind `CheckpointStore` (one durable write of every
//! shard's checkpoint at a time). `FileStore` keeps this process's shards in one file,
//! `state.dir/checkpoints/ids-A-B.json` for shards `A..B`, written atomically: a temporary
//! file, fsync, rename over the old one, fsync of the directory. Two fsyncs per write whatever
//! the shard count, where a file per shard cost two per busy shard. Files of other processes
//! splitting the same bot (other id ranges) are read, never written; the per-shard files of
//! earlier versions (`checkpoints/shard-N.json`) are read too, and this process's are removed
//! once its own file is written.
//!
//! How often to write is the caller's choice (`Checkpointer` writes every second and at
//! shutdown); a crash loses at most the progress since the last write, which Discord then
//! replays: duplicates, never losses.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How often a checkpoint that stands is written again anyway, so its `written_at` says the
/// session is alive (a quiet bot's would otherwise look too old to resume after a restart),
/// in files and in a cluster's Redis alike.
pub const REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// The bot the session is of (`Token::bot`): another bot's checkpoint is not resumed from.
    /// Absent in an earlier version's files.
    #[serde(default)]
    pub bot: Option<String>,
    /// When it was written, in Unix seconds: one older than `state.checkpoint_max_age` is not
    /// resumed from. Absent in an earlier version's files.
    #[serde(default)]
    pub written_at: Option<u64>,
}

/// Which checkpoints a start may resume from.
#[derive(Debug, Clone)]
pub struct Wanted<'a> {
    /// The shard count of this run.
    pub shard_count: u32,
    /// This run's bot (`Token::bot`).
    pub bot: &'a str,
    /// The oldest a checkpoint may be.
    pub max_age: std::time::Duration,
    /// Now, in Unix seconds.
    pub now: u64,
}

impl Wanted<'_> {
    /// Why `cp` must not be resumed from, if it must not.
    pub fn refuses(&self, cp: &Checkpoint) -> Option<String> {
        if cp.shard_count != self.shard_count {
            return Some(format!(
                "it is for {} shards; this run has {}",
                cp.shard_count, self.shard_count
            ));
        }
        if cp.bot.as_deref().is_some_and(|bot| bot != self.bot) {
            return Some("it is another bot's (its token is not this run's)".to_owned());
        }
        let age = cp.written_at.map(|at| self.now.saturating_sub(at));
        if let Some(age) = age.filter(|age| *age > self.max_age.as_secs()) {
            return Some(format!(
                "it is {age} s old, past state.checkpoint_max_age ({} s): Discord no longer keeps the session",
                self.max_age.as_secs()
            ));
        }
        None
    }
}

/// Where checkpoints are kept: one write carries every shard's, so its cost does not grow with
/// the shard count's fsyncs (a file here; a pipelined write in a shared store elsewhere).
pub trait CheckpointStore: Send {
    /// Replaces this process's checkpoints with `all`, durably, in one write.
    fn save(&mut self, all: &[Checkpoint]) -> std::io::Result<()>;
}

/// This process's checkpoints in one file under the state directory.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    /// The shards this process runs, which name its file.
    ids: Range<u32>,
    /// Whether the per-shard files of earlier versions are gone for these shards.
    upgraded: bool,
}

/// The file's contents.
#[derive(Serialize, Deserialize)]
struct Stored {
    checkpoints: Vec<Checkpoint>,
}

fn dir_of(state_dir: &Path) -> PathBuf {
    state_dir.join("checkpoints")
}

impl FileStore {
    /// The store of the process running shards `ids`, under `state_dir`.
    pub fn new(state_dir: &Path, ids: Range<u32>) -> FileStore {
        FileStore {
            dir: dir_of(state_dir),
            ids,
            upgraded: false,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir
            .join(format!("ids-{}-{}.json", self.ids.start, self.ids.end))
    }

    /// Removes the per-shard files an earlier version wrote for this process's shards: its own
    /// file, just written, now holds what they held.
    fn remove_old_files(&mut self) {
        for id in self.ids.clone() {
            let old = self.dir.join(format!("shard-{id}.json"));
            match std::fs::remove_file(&old) {
                Ok(()) => {
                    tracing::info!(path = %old.display(), "removed a checkpoint file of an earlier version, now kept in one file")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %old.display(), "could not remove an old checkpoint file: {e}")
                }
            }
        }
        self.upgraded = true;
    }
}

impl CheckpointStore for FileStore {
    fn save(&mut self, all: &[Checkpoint]) -> std::io::Result<()> {
        super::files::create_dir(&self.dir)?;
        let path = self.path();
        let tmp = path.with_extension("json.tmp");
        let mut file = super::files::create(&tmp)?;
        let stored = Stored {
            checkpoints: all.to_vec(),
        };
        file.write_all(&serde_json::to_vec(&stored).expect("checkpoints serialise"))?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        if !self.upgraded {
            self.remove_old_files();
        }
        Ok(())
    }
}

/// Reads every checkpoint under `state_dir` that `wanted` takes: this process's file, those of
/// other processes of the bot, and per-shard files of earlier versions. Where two files hold a
/// shard, the one written last wins. A file that does not parse, or a checkpoint of another
/// shard count or bot or too old, is reported and skipped: its shards identify anew.
pub fn load_all(state_dir: &Path, wanted: &Wanted<'_>) -> HashMap<u32, Checkpoint> {
    let mut found: HashMap<u32, (SystemTime, Checkpoint)> = HashMap::new();
    let Ok(entries) = std::fs::read_dir(dir_of(state_dir)) else {
        return HashMap::new();
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let written = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| parse(&bytes).map_err(|e| e.to_string()));
        let checkpoints = match parsed {
            Ok(checkpoints) => checkpoints,
            Err(e) => {
                tracing::error!(path = %path.display(), "ignoring an unreadable checkpoint file: {e}");
                continue;
            }
        };
        for cp in checkpoints {
            if let Some(why) = wanted.refuses(&cp) {
                tracing::warn!(
                    path = %path.display(),
                    shard_id = cp.shard_id,
                    "not resuming from a checkpoint: {why}; the shard identifies anew"
                );
                continue;
            }
            let newer = found.get(&cp.shard_id).is_none_or(|(at, _)| written > *at);
            if newer {
                found.insert(cp.shard_id, (written, cp));
            }
        }
    }
    found.into_iter().map(|(id, (_, cp))| (id, cp)).collect()
}

/// A checkpoint file's records: this version's (`{"checkpoints": [...]}`) or an earlier
/// version's single record.
pub(crate) fn parse(bytes: &[u8]) -> Result<Vec<Checkpoint>, serde_json::Error> {
    match serde_json::from_slice::<Stored>(bytes) {
        Ok(stored) => Ok(stored.checkpoints),
        Err(_) => serde_json::from_slice::<Checkpoint>(bytes).map(|cp| vec![cp]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn checkpoint(shard_id: u32, seq: u64) -> Checkpoint {
        Checkpoint {
            shard_id,
            shard_count: 4,
            session_id: format!("s{shard_id}"),
            resume_url: "wss://x".into(),
            seq,
            bot: Some("id:1".into()),
            written_at: Some(NOW - 10),
        }
    }

    fn wanted(shard_count: u32) -> Wanted<'static> {
        Wanted {
            shard_count,
            bot: "id:1",
            max_age: std::time::Duration::from_secs(900),
            now: NOW,
        }
    }

    fn temp(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shardhook-cp-{tag}-{}", std::process::id()))
    }

    #[test]
    fn every_shard_goes_in_one_file_and_other_shard_counts_are_ignored() {
        let dir = temp("one");
        let mut store = FileStore::new(&dir, 0..4);
        store.save(&[checkpoint(0, 1), checkpoint(3, 42)]).unwrap();
        store.save(&[checkpoint(0, 2), checkpoint(3, 43)]).unwrap();
        let files: Vec<_> = std::fs::read_dir(dir_of(&dir)).unwrap().collect();
        assert_eq!(files.len(), 1, "one file, its temporary renamed over it");
        let loaded = load_all(&dir, &wanted(4));
        assert_eq!(loaded.get(&3).map(|c| c.seq), Some(43));
        assert_eq!(loaded.get(&0).map(|c| c.seq), Some(2));
        #[cfg(unix)]
        {
            use crate::state::files::mode_of;
            assert_eq!(mode_of(&dir_of(&dir)).unwrap(), 0o700);
            assert_eq!(mode_of(&store.path()).unwrap(), 0o600);
        }
        assert!(load_all(&dir, &wanted(8)).is_empty());
        std::fs::write(dir_of(&dir).join("ids-9-9.json"), "{not json").unwrap();
        assert_eq!(
            load_all(&dir, &wanted(4)).len(),
            2,
            "an unreadable file is skipped"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_earlier_versions_files_are_read_once_then_removed() {
        let dir = temp("upgrade");
        crate::state::files::create_dir(&dir_of(&dir)).unwrap();
        for cp in [checkpoint(1, 10), checkpoint(2, 20)] {
            let old = dir_of(&dir).join(format!("shard-{}.json", cp.shard_id));
            std::fs::write(old, serde_json::to_vec(&cp).unwrap()).unwrap();
        }
        let loaded = load_all(&dir, &wanted(4));
        assert_eq!(loaded.get(&1).map(|c| c.seq), Some(10));
        assert_eq!(loaded.get(&2).map(|c| c.seq), Some(20));
        // Shard 2 moved on; shard 1 has no session now, so its checkpoint is carried over.
        let mut store = FileStore::new(&dir, 0..4);
        store.save(&[checkpoint(1, 10), checkpoint(2, 21)]).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir_of(&dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ids-0-4.json"]);
        let loaded = load_all(&dir, &wanted(4));
        assert_eq!(loaded.get(&2).map(|c| c.seq), Some(21));
        assert_eq!(loaded.get(&1).map(|c| c.seq), Some(10));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn processes_splitting_a_bot_keep_files_of_their_own() {
        let dir = temp("split");
        FileStore::new(&dir, 0..2)
            .save(&[checkpoint(0, 5), checkpoint(1, 6)])
            .unwrap();
        FileStore::new(&dir, 2..4)
            .save(&[checkpoint(2, 7), checkpoint(3, 8)])
            .unwrap();
        let loaded = load_all(&dir, &wanted(4));
        let seqs: Vec<u64> = (0..4).map(|id| loaded[&id].seq).collect();
        assert_eq!(seqs, [5, 6, 7, 8]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn another_bots_and_stale_checkpoints_are_not_resumed_from() {
        let dir = temp("foreign");
        let mut store = FileStore::new(&dir, 0..4);
        let other_bot = Checkpoint {
            bot: Some("id:2".into()),
            ..checkpoint(0, 5)
        };
        let stale = Checkpoint {
            written_at: Some(NOW - 901),
            ..checkpoint(1, 6)
        };
        let older_version = Checkpoint {
            bot: None,
            written_at: None,
            ..checkpoint(2, 7)
        };
        store
            .save(&[other_bot, stale, older_version, checkpoint(3, 8)])
            .unwrap();
        let mut ids: Vec<u32> = load_all(&dir, &wanted(4)).into_keys().collect();
        ids.sort();
        assert_eq!(ids, [2, 3], "another bot's and a stale one are refused");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
