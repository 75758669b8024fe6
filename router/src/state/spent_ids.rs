//! Spent command ids: the `webhook-id`s of gateway commands the control API accepted, with when
//! each stops mattering, kept so a command cannot be replayed after a restart.
//!
//! Owns the files (`state.dir/spent-command-ids.jsonl` for gateway commands,
//! `spent-rest-ids.jsonl` for REST calls, one `{"id":...,"expires":...}` per line): appending
//! ids, synced before their requests are answered (several at once when they come together:
//! `request_ids` groups them), and reading back the ids that have not expired, rewriting the
//! file with only those. Which ids to keep and for how
//! long is the control API's business.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::files;

/// The gateway commands' file in `state.dir`.
pub const FILE_NAME: &str = "spent-command-ids.jsonl";
/// The REST calls' file in `state.dir`.
pub const REST_FILE_NAME: &str = "spent-rest-ids.jsonl";

#[derive(Serialize, Deserialize)]
struct Line<'a> {
    /// Borrowed unless it holds an escape.
    #[serde(borrow)]
    id: Cow<'a, str>,
    /// Unix seconds after which a command with this id is refused as stale anyway.
    expires: u64,
}

/// The append-only log of spent ids.
#[derive(Debug)]
pub struct SpentIdsLog {
    path: PathBuf,
    file: File,
    /// Lines in the file, to know when rewriting it is worth it.
    lines: usize,
    /// Syncs made, for tests of grouping.
    syncs: u64,
}

impl SpentIdsLog {
    /// Opens the log under `state_dir`, returning it with the ids that expire at `now` or
    /// later; the file is rewritten with only those. A line that does not parse is skipped
    /// with a warning: it can only make a replay possible, never lose an event.
    #[cfg(test)]
    pub fn open(state_dir: &Path, now: u64) -> io::Result<(SpentIdsLog, Vec<(String, u64)>)> {
        SpentIdsLog::open_file(state_dir, FILE_NAME, now)
    }

    /// Like `open`, for the file `name` under `state_dir`.
    pub fn open_file(
        state_dir: &Path,
        name: &str,
        now: u64,
    ) -> io::Result<(SpentIdsLog, Vec<(String, u64)>)> {
        let path = state_dir.join(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut live = Vec::new();
        for (i, line) in text.lines().enumerate() {
            match serde_json::from_str::<Line>(line) {
                Ok(l) if l.expires >= now => live.push((l.id.into_owned(), l.expires)),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), line = i + 1, "skipping an unreadable spent command id: {e}")
                }
            }
        }
        let log = SpentIdsLog::rewrite(state_dir, &path, &live)?;
        Ok((log, live))
    }

    /// Replaces the file with `live` atomically (temporary file, sync, rename).
    fn rewrite(state_dir: &Path, path: &Path, live: &[(String, u64)]) -> io::Result<SpentIdsLog> {
        files::create_dir(state_dir)?;
        let tmp = path.with_extension("jsonl.tmp");
        let mut out = Vec::new();
        for (id, expires) in live {
            push_line(&mut out, id, *expires);
        }
        let mut file = files::create(&tmp)?;
        file.write_all(&out)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let file = files::options().append(true).open(path)?;
        Ok(SpentIdsLog {
            path: path.to_owned(),
            file,
            lines: live.len(),
            syncs: 0,
        })
    }

    /// Appends one spent id and syncs it.
    #[cfg(test)]
    pub fn append(&mut self, id: &str, expires: u64) -> io::Result<()> {
        let mut line = Vec::with_capacity(id.len() + 32);
        push_line(&mut line, id, expires);
        self.append_lines(&line, 1)
    }

    /// Appends `count` lines made by `push_line` in one write, and syncs them once.
    pub fn append_lines(&mut self, lines: &[u8], count: usize) -> io::Result<()> {
        self.file.write_all(lines)?;
        self.file.sync_data()?;
        self.syncs += 1;
        self.lines += count;
        Ok(())
    }

    /// Syncs made so far.
    #[cfg(test)]
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Lines in the file, live or expired.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// Rewrites the file with only `live`.
    pub fn compact(&mut self, live: &[(String, u64)]) -> io::Result<()> {
        let dir = self.path.parent().map(Path::to_owned).unwrap_or_default();
        *self = SpentIdsLog::rewrite(&dir, &self.path, live)?;
        Ok(())
    }
}

/// Adds the line for `id` to `out`.
pub fn push_line(out: &mut Vec<u8>, id: &str, expires: u64) {
    serde_json::to_writer(
        &mut *out,
        &Line {
            id: Cow::Borrowed(id),
            expires,
        },
    )
    .expect("a line serialises");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_reopening_until_they_expire() {
        let dir = std::env::temp_dir().join(format!("shardhook-ids-{}", std::process::id()));
        let (mut log, live) = SpentIdsLog::open(&dir, 100).unwrap();
        assert!(live.is_empty());
        log.append("cmd_a", 150).unwrap();
        log.append("cmd_\"b\"\n", 200).unwrap();
        drop(log);
        let (_, live) = SpentIdsLog::open(&dir, 120).unwrap();
        assert_eq!(
            live,
            vec![("cmd_a".to_owned(), 150), ("cmd_\"b\"\n".to_owned(), 200)]
        );
        let mut text = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
        text.push_str("not json\n");
        std::fs::write(dir.join(FILE_NAME), text).unwrap();
        let (log, live) = SpentIdsLog::open(&dir, 160).unwrap();
        assert_eq!(live, vec![("cmd_\"b\"\n".to_owned(), 200)]);
        assert_eq!(log.lines(), 1, "rewritten with the live id only");
        #[cfg(unix)]
        assert_eq!(files::mode_of(&dir.join(FILE_NAME)).unwrap(), 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
