//! The disk spool: batches that cannot leave (every candidate endpoint's circuit is open) wait
//! here, in per-shard order, and survive restarts.
//!
//! Owns the on-disk format and nothing else: `state.dir/spool/shard-N.log`, one append-only
//! file per shard, deleted when it has been drained. Simple segment files were chosen over an
//! embedded store: the access pattern is a strict per-shard FIFO (append at the tail, read at
//! the head), which a file does with no compaction, no extra dependency, and a format a person
//! can inspect. Records are `[length u32 LE][crc32 u32 LE][payload]`, the payload a JSON
//! object with the batch's id, shard, session, seq range and body.
//!
//! fsync policy: every append is `sync_data`ed before it returns, because a spooled batch
//! counts as safe for resume checkpoints; an outage is when this path runs, so its cost is
//! paid only then. Torn writes: an append that fails part way (a full disk) is cut back to the
//! last whole record before it returns, and `open` cuts a file at its first record with a bad
//! header or checksum (a crash mid-append), moving the cut bytes aside to
//! `shard-N.log.cut-<unix seconds>` for a person to look at. Such a record was never reported
//! appended, so its batch was never counted safe: Discord replays it after the restart. A record
//! found corrupt later, while the spool is open, is logged loudly and returned as raw bytes for
//! the dead-letter file. Whether to spool and when to drain is `delivery`'s business; this
//! module does blocking file I/O, which delivery runs on tokio's blocking pool.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::EndpointFormat;

/// Record header: length and checksum.
const HEADER: usize = 8;

/// A spooled batch.
#[derive(Debug, Serialize, Deserialize)]
pub struct SpooledBatch {
    pub id: String,
    pub shard_id: u32,
    pub session_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: usize,
    pub body: Box<RawValue>,
    /// The body's format (absent: shardhook's, as in records of earlier versions).
    #[serde(default, skip_serializing_if = "EndpointFormat::is_shardhook")]
    pub format: EndpointFormat,
    /// Attempts made before it was spooled: they go on counting from here when it is sent
    /// again (absent in earlier versions' records: none).
    #[serde(default)]
    pub attempts: u32,
}

/// What the head of a shard's spool holds.
#[derive(Debug)]
pub enum Head {
    Batch(SpooledBatch),
    /// A record that failed its checksum or does not parse: its raw bytes.
    Corrupt(Vec<u8>),
}

/// Why the spool could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({used} of {limit} bytes in {dir}); the shard waits")]
    Full { used: u64, limit: u64, dir: PathBuf },
    #[error("failed to write the spool file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A future a `RemoteSpool` call answers with.
pub type Answer<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// What a `RemoteSpool::push` came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Added.
    Added,
    /// Not added: the shard is another router's now.
    NotHeld,
}

/// A record read back from a `RemoteSpool`: its bytes, or the bytes of one it refused.
pub type Checked = Result<Vec<u8>, Vec<u8>>;

/// Shards' spools kept beyond this machine (a cluster's Redis: a stream per shard), in the
/// records' JSON; `delivery` keeps the count and the order.
pub trait RemoteSpool: Send + Sync {
    /// Batches in `shard`'s spool.
    fn len(&self, shard: u32) -> Answer<'_, u64>;
    /// Adds a record at the end of `shard`'s spool, if this router still holds the shard
    /// (fenced: a router whose lease moved on cannot add to the new holder's spool).
    fn push(&self, shard: u32, record: Vec<u8>) -> Answer<'_, Pushed>;
    /// The oldest record of `shard`'s spool, with the id that removes it: `Err` holds the
    /// bytes of a record the backend refused (it failed its MAC; the backend logged why).
    fn first(&self, shard: u32) -> Answer<'_, Option<(String, Checked)>>;
    /// Removes the record `id` from `shard`'s spool.
    fn remove(&self, shard: u32, id: String) -> Answer<'_, ()>;
}

/// Bytes spooled across every shard, against the bound.
#[derive(Debug)]
pub struct SpoolUsage {
    pub used: AtomicU64,
    pub limit: u64,
}

/// One shard's spool file.
#[derive(Debug)]
pub struct ShardSpool {
    path: PathBuf,
    usage: Arc<SpoolUsage>,
    /// Where the next unread record starts.
    head: u64,
    /// Length of the file (where the next record goes).
    tail: u64,
    /// A full disk, for tests: appends write this many bytes of a record, then fail.
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl ShardSpool {
    /// Opens (or finds empty) `shard`'s spool under `state_dir`, counting what it holds. A file
    /// that ends in a torn record is cut there (see the module's doc).
    pub fn open(state_dir: &Path, shard: u32, usage: Arc<SpoolUsage>) -> ShardSpool {
        let path = state_dir.join("spool").join(format!("shard-{shard}.log"));
        let tail = match cut_torn(&path) {
            Ok(tail) => tail,
            Err(e) => {
                tracing::error!(shard_id = shard, path = %path.display(), "could not check the spool file for torn records: {e}");
                std::fs::metadata(&path).map_or(0, |m| m.len())
            }
        };
        usage.used.fetch_add(tail, Ordering::Relaxed);
        if tail > 0 {
            tracing::warn!(shard_id = shard, bytes = tail, path = %path.display(), "found spooled batches from an earlier run; they go first");
        }
        ShardSpool {
            path,
            usage,
            head: 0,
            tail,
            #[cfg(test)]
            fail_after: None,
        }
    }

    /// Writes `record` at the end of `file`.
    fn write_record(&self, file: &mut File, record: &[u8]) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_after.filter(|n| *n < record.len()) {
            file.write_all(&record[..n])?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ));
        }
        file.write_all(record)
    }

    pub fn is_empty(&self) -> bool {
        self.head >= self.tail
    }

    fn io(&self, source: std::io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Appends a batch and syncs it to disk.
    pub fn append(&mut self, batch: &SpooledBatch) -> Result<(), SpoolError> {
        let payload = serde_json::to_vec(batch).expect("spooled batches serialise");
        let size = (HEADER + payload.len()) as u64;
        let used = self.usage.used.load(Ordering::Relaxed);
        if used + size > self.usage.limit {
            return Err(SpoolError::Full {
                used,
                limit: self.usage.limit,
                dir: self.path.parent().map(Path::to_owned).unwrap_or_default(),
            });
        }
        if let Some(dir) = self.path.parent() {
            super::files::create_dir(dir).map_err(|e| self.io(e))?;
        }
        let mut record = Vec::with_capacity(size as usize);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        record.extend_from_slice(&payload);
        let mut file = super::files::options()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.io(e))?;
        let written = self
            .write_record(&mut file, &record)
            .and_then(|()| file.sync_data());
        if let Err(e) = written {
            // What was written of this record must not stay: the next append would follow it,
            // and a reader would take the torn bytes for the start of a record.
            if let Err(cut) = file.set_len(self.tail).and_then(|()| file.sync_data()) {
                tracing::error!(path = %self.path.display(), "could not cut a failed append back to the last whole record: {cut}");
            }
            return Err(self.io(e));
        }
        self.tail += size;
        let now = self.usage.used.fetch_add(size, Ordering::Relaxed) + size;
        if now * 10 >= self.usage.limit * 8 && (now - size) * 10 < self.usage.limit * 8 {
            tracing::warn!(
                used = now,
                limit = self.usage.limit,
                "the spool is over 80% full"
            );
        }
        Ok(())
    }

    /// Reads the oldest record without removing it.
    pub fn peek(&self) -> Option<(Head, u64)> {
        if self.is_empty() {
            return None;
        }
        let mut file = File::open(&self.path).ok()?;
        file.seek(SeekFrom::Start(self.head)).ok()?;
        let mut header = [0u8; HEADER];
        let remaining = self.tail - self.head;
        if remaining < HEADER as u64 || file.read_exact(&mut header).is_err() {
            return Some((Head::Corrupt(Vec::new()), remaining));
        }
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len > remaining - HEADER as u64 {
            // The length cannot be right: nothing after this point can be trusted.
            let mut rest = Vec::new();
            let _ = file.read_to_end(&mut rest);
            return Some((Head::Corrupt(rest), remaining));
        }
        let mut payload = vec![0u8; len as usize];
        if file.read_exact(&mut payload).is_err() {
            return Some((Head::Corrupt(Vec::new()), remaining));
        }
        let size = HEADER as u64 + len;
        if crc32fast::hash(&payload) != crc {
            return Some((Head::Corrupt(payload), size));
        }
        match serde_json::from_slice(&payload) {
            Ok(batch) => Some((Head::Batch(batch), size)),
            Err(_) => Some((Head::Corrupt(payload), size)),
        }
    }

    /// Removes the oldest record (`size` as `peek` reported it); deletes the file once drained.
    pub fn pop(&mut self, size: u64) {
        self.head = (self.head + size).min(self.tail);
        if self.is_empty() {
            if let Err(e) = std::fs::remove_file(&self.path) {
                tracing::error!(path = %self.path.display(), "failed to remove a drained spool file: {e}");
            }
            self.usage.used.fetch_sub(self.tail, Ordering::Relaxed);
            self.head = 0;
            self.tail = 0;
        }
    }
}

/// Cuts `path` at its first record with a bad header or checksum, moving the cut bytes to a
/// file beside it; returns the length kept. A missing file is an empty spool.
fn cut_torn(path: &Path) -> std::io::Result<u64> {
    let mut file = match super::files::options().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut reader = std::io::BufReader::new(&mut file);
    let mut good = 0u64;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; HEADER];
        if len - good < HEADER as u64 || reader.read_exact(&mut header).is_err() {
            break;
        }
        let size = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as u64;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if size > len - good - HEADER as u64 {
            break;
        }
        payload.resize(size as usize, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        good += HEADER as u64 + size;
    }
    drop(reader);
    if good < len {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = path.with_extension(format!("log.cut-{now}"));
        let mut cut = Vec::with_capacity((len - good) as usize);
        file.seek(SeekFrom::Start(good))?;
        file.read_to_end(&mut cut)?;
        let mut kept = super::files::create(&aside)?;
        kept.write_all(&cut)?;
        kept.sync_all()?;
        file.set_len(good)?;
        file.sync_all()?;
        tracing::error!(
            path = %path.display(),
            kept = good,
            cut = len - good,
            aside = %aside.display(),
            "the spool file ended in a torn record (a crash or a full disk mid-append); cut it there: that batch was never counted safe, so Discord replays its events"
        );
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(first: u64) -> SpooledBatch {
        SpooledBatch {
            id: format!("msg_{first}"),
            shard_id: 0,
            session_id: "s".into(),
            first_seq: first,
            last_seq: first,
            events: 1,
            body: RawValue::from_string(format!(r#"{{"s":{first}}}"#)).unwrap(),
            format: EndpointFormat::Shardhook,
            attempts: first as u32,
        }
    }

    fn usage(limit: u64) -> Arc<SpoolUsage> {
        Arc::new(SpoolUsage {
            used: AtomicU64::new(0),
            limit,
        })
    }

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("shardhook-spool-{tag}-{}", std::process::id()))
    }

    fn first_seq(head: Head) -> u64 {
        match head {
            Head::Batch(b) => b.first_seq,
            Head::Corrupt(raw) => panic!("corrupt: {raw:?}"),
        }
    }

    #[test]
    fn batches_come_back_in_order_and_survive_reopening() {
        let dir = dir("order");
        let mut spool = ShardSpool::open(&dir, 0, usage(1 << 20));
        for first in 1..=3 {
            spool.append(&batch(first)).unwrap();
        }
        #[cfg(unix)]
        {
            use crate::state::files::mode_of;
            assert_eq!(mode_of(&dir.join("spool")).unwrap(), 0o700);
            assert_eq!(mode_of(&dir.join("spool/shard-0.log")).unwrap(), 0o600);
        }
        let (head, size) = spool.peek().unwrap();
        assert_eq!(first_seq(head), 1);
        spool.pop(size);
        let reopened = ShardSpool::open(&dir, 0, usage(1 << 20));
        // A restart reads from the start of the file: the popped batch comes again
        // (at least once), then the rest in order.
        assert_eq!(first_seq(reopened.peek().unwrap().0), 1);
        let Some((Head::Batch(head), _)) = reopened.peek() else {
            panic!("a batch first");
        };
        assert_eq!(
            head.attempts, 1,
            "the attempts made before spooling are kept"
        );
        for want in 2..=3 {
            let (head, size) = spool.peek().unwrap();
            assert_eq!(first_seq(head), want);
            spool.pop(size);
        }
        assert!(spool.is_empty());
        assert!(
            !dir.join("spool/shard-0.log").exists(),
            "a drained spool file is removed"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_corrupted_record_is_reported_and_skipped() {
        let dir = dir("corrupt");
        let mut spool = ShardSpool::open(&dir, 0, usage(1 << 20));
        spool.append(&batch(1)).unwrap();
        spool.append(&batch(2)).unwrap();
        // Flip a byte in the first record's payload.
        let path = dir.join("spool/shard-0.log");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 3] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let (head, size) = spool.peek().unwrap();
        assert!(matches!(head, Head::Corrupt(ref raw) if !raw.is_empty()));
        spool.pop(size);
        assert_eq!(first_seq(spool.peek().unwrap().0), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_full_spool_refuses_with_a_clear_error() {
        let dir = dir("full");
        let mut spool = ShardSpool::open(&dir, 0, usage(150));
        spool.append(&batch(1)).unwrap();
        let err = spool.append(&batch(2)).unwrap_err().to_string();
        assert!(err.contains("spool is full"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Every batch's first seq, reading a freshly opened spool to its end.
    fn drained(dir: &Path) -> Vec<u64> {
        let mut spool = ShardSpool::open(dir, 0, usage(1 << 20));
        let mut seqs = Vec::new();
        while let Some((head, size)) = spool.peek() {
            seqs.push(first_seq(head));
            spool.pop(size);
        }
        seqs
    }

    #[test]
    fn a_record_torn_by_a_crash_is_cut_on_open_and_later_appends_read_whole() {
        let dir = dir("torn");
        let mut spool = ShardSpool::open(&dir, 0, usage(1 << 20));
        spool.append(&batch(1)).unwrap();
        spool.append(&batch(2)).unwrap();
        // A crash half way through a third record: its header and part of its payload.
        let path = dir.join("spool/shard-0.log");
        let whole = std::fs::metadata(&path).unwrap().len();
        let payload = serde_json::to_vec(&batch(3)).unwrap();
        let mut torn = (payload.len() as u32).to_le_bytes().to_vec();
        torn.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        torn.extend_from_slice(&payload[..payload.len() / 2]);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(&torn).unwrap();
        drop(file);
        // The restart: the torn record is cut (and kept aside), then appends go on.
        let mut spool = ShardSpool::open(&dir, 0, usage(1 << 20));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
        spool.append(&batch(4)).unwrap();
        assert_eq!(
            drained(&dir),
            [1, 2, 4],
            "no corrupt record, nothing after it lost"
        );
        let aside: Vec<_> = std::fs::read_dir(dir.join("spool"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".cut-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(std::fs::read(&aside[0]).unwrap(), torn);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_append_that_fills_the_disk_is_cut_back_and_the_next_append_reads_whole() {
        let dir = dir("full-disk");
        let mut spool = ShardSpool::open(&dir, 0, usage(1 << 20));
        spool.append(&batch(1)).unwrap();
        let path = dir.join("spool/shard-0.log");
        let whole = std::fs::metadata(&path).unwrap().len();
        spool.fail_after = Some(13);
        let err = spool.append(&batch(2)).unwrap_err().to_string();
        assert!(
            err.contains("no space left") && err.contains("shard-0.log"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), whole, "cut back");
        spool.fail_after = None;
        spool.append(&batch(3)).unwrap();
        assert_eq!(drained(&dir), [1, 3]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
