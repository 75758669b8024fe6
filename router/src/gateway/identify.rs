//! The identify queue: Discord lets each `shard_id % max_concurrency` bucket IDENTIFY once per
//! 5 seconds.
//!
//! Owns the per-bucket pacing for one process. A permit is held while the IDENTIFY is sent and
//! the send time is recorded when the permit drops, so the 5 s runs from the real send. With a
//! state directory, each bucket's last IDENTIFY is also written to `identify/bucket-N` (Unix
//! milliseconds), so a router restarted at once (after a crash or `kill -9`) still waits out
//! the 5 s its previous run started. Processes running at the same time (a cluster) also take
//! a turn from a `SharedTurns` the queue is given, which paces the bucket across all of them.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use crate::state::files;

/// Discord's spacing between IDENTIFYs of one bucket.
pub const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5);

/// A bucket's turn across processes, and the bot's daily session starts: `turn` resolves when
/// this process may send one IDENTIFY in `bucket` now (no other process did within 5 s, and a
/// session start is left and now spent).
pub trait SharedTurns: Send + Sync + std::fmt::Debug {
    /// Waits for `bucket`'s turn.
    fn turn(&self, bucket: u32) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Paces IDENTIFYs per bucket.
#[derive(Debug)]
pub struct IdentifyQueue {
    /// The turn across processes, in a cluster.
    shared: Option<Arc<dyn SharedTurns>>,
    /// When each bucket last sent an IDENTIFY. Tokio's mutex is fair, so shards of one bucket
    /// identify in the order they asked.
    buckets: Vec<Arc<Mutex<Option<Instant>>>>,
    /// Where each bucket's last IDENTIFY is recorded, if anywhere.
    dir: Option<PathBuf>,
    /// Records being written on tokio's blocking pool, for `flush`.
    writes: Writes,
}

/// Record writes under way.
type Writes = Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>;

/// The right to send one IDENTIFY now. Dropping it stamps the bucket.
pub struct IdentifyPermit {
    last: OwnedMutexGuard<Option<Instant>>,
    /// The bucket's record file, if the queue keeps them.
    record: Option<PathBuf>,
    writes: Writes,
}

impl Drop for IdentifyPermit {
    fn drop(&mut self) {
        *self.last = Some(Instant::now());
        if let Some(path) = self.record.take() {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let write = move || {
                let written = files::create_dir(path.parent().unwrap_or(Path::new(".")))
                    .and_then(|()| files::create(&path))
                    .and_then(|mut file| file.write_all(millis.to_string().as_bytes()));
                if let Err(e) = written {
                    tracing::warn!(path = %path.display(), "could not record the IDENTIFY time; a restart within 5 s may identify early: {e}");
                }
            };
            // On tokio's blocking pool: a shard's task must not wait for the disk.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let mut writes = self.writes.lock().unwrap_or_else(|p| p.into_inner());
                    writes.retain(|w| !w.is_finished());
                    writes.push(runtime.spawn_blocking(write));
                }
                Err(_) => write(),
            }
        }
    }
}

/// Where a bucket's last IDENTIFY is recorded.
fn record_path(dir: &Path, bucket: usize) -> PathBuf {
    dir.join(format!("bucket-{bucket}"))
}

impl IdentifyQueue {
    /// A queue that remembers nothing across runs.
    #[cfg(test)]
    pub(crate) fn new(max_concurrency: u32) -> IdentifyQueue {
        let buckets = (0..max_concurrency.max(1))
            .map(|_| Arc::new(Mutex::new(None)))
            .collect();
        IdentifyQueue {
            shared: None,
            buckets,
            dir: None,
            writes: Writes::default(),
        }
    }

    /// A queue that records each bucket's IDENTIFY under `state_dir/identify/` and starts
    /// from the records an earlier run left there.
    pub fn persistent(max_concurrency: u32, state_dir: &Path) -> IdentifyQueue {
        let dir = state_dir.join("identify");
        let (now, wall) = (Instant::now(), SystemTime::now());
        let buckets = (0..max_concurrency.max(1))
            .map(|bucket| {
                let recorded = std::fs::read_to_string(record_path(&dir, bucket as usize))
                    .ok()
                    .and_then(|text| text.trim().parse::<u64>().ok())
                    .map(|millis| UNIX_EPOCH + Duration::from_millis(millis));
                // How long ago, by the wall clock (a record from the future counts as now);
                // one older than the interval no longer matters.
                let ago = recorded.map(|at| wall.duration_since(at).unwrap_or_default());
                let last = ago
                    .filter(|ago| *ago < IDENTIFY_INTERVAL)
                    .map(|ago| now - ago);
                Arc::new(Mutex::new(last))
            })
            .collect();
        IdentifyQueue {
            shared: None,
            buckets,
            dir: Some(dir),
            writes: Writes::default(),
        }
    }

    /// This queue, also taking each turn from `shared` (the other processes of a cluster).
    pub fn shared_with(mut self, shared: Arc<dyn SharedTurns>) -> IdentifyQueue {
        self.shared = Some(shared);
        self
    }

    /// The bucket a shard identifies in.
    pub fn bucket_of(&self, shard_id: u32) -> usize {
        shard_id as usize % self.buckets.len()
    }

    /// Waits until `shard_id`'s bucket may identify.
    pub async fn acquire(&self, shard_id: u32) -> IdentifyPermit {
        let bucket = self.bucket_of(shard_id);
        let last = self.buckets[bucket].clone().lock_owned().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + IDENTIFY_INTERVAL).await;
        }
        if let Some(shared) = &self.shared {
            shared.turn(bucket as u32).await;
        }
        let record = self.dir.as_ref().map(|d| record_path(d, bucket));
        IdentifyPermit {
            last,
            record,
            writes: self.writes.clone(),
        }
    }

    /// Waits until every IDENTIFY so far is recorded, so a process started next reads them.
    pub async fn flush(&self) {
        let writes = std::mem::take(&mut *self.writes.lock().unwrap_or_else(|p| p.into_inner()));
        for write in writes {
            let _ = write.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_identify_per_bucket_per_five_seconds() {
        let queue = Arc::new(IdentifyQueue::new(2));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for shard in 0..6u32 {
            let queue = queue.clone();
            tasks.push(tokio::spawn(async move {
                drop(queue.acquire(shard).await);
                (shard, Instant::now() - start)
            }));
        }
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        for bucket in 0..2 {
            let mut at: Vec<Duration> = times
                .iter()
                .filter(|(s, _)| s % 2 == bucket)
                .map(|(_, t)| *t)
                .collect();
            at.sort();
            assert_eq!(at, [0, 5, 10].map(Duration::from_secs), "bucket {bucket}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_router_waits_out_the_previous_runs_identify() {
        let dir = std::env::temp_dir().join(format!("shardhook-identify-{}", fastrand::u64(..)));
        let first = IdentifyQueue::persistent(2, &dir);
        drop(first.acquire(1).await);
        first.flush().await;
        drop(first);
        // A new process on the same state directory: bucket 1 waits, bucket 0 does not.
        let second = IdentifyQueue::persistent(2, &dir);
        let start = Instant::now();
        drop(second.acquire(0).await);
        assert_eq!(Instant::now() - start, Duration::ZERO);
        drop(second.acquire(3).await);
        let waited = Instant::now() - start;
        assert!(
            waited > Duration::from_millis(4500) && waited <= IDENTIFY_INTERVAL,
            "bucket 1 waited {waited:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn recording_an_identify_never_waits_for_the_disk() {
        let dir =
            std::env::temp_dir().join(format!("shardhook-identify-fifo-{}", std::process::id()));
        let queue = IdentifyQueue::persistent(1, &dir);
        // The record is a FIFO: writing it blocks until something reads it, as a write to a
        // stalled disk would. On this test's one runtime thread, a write there would hang it.
        let fifo = record_path(&dir.join("identify"), 0);
        files::create_dir(fifo.parent().unwrap()).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        drop(queue.acquire(0).await);
        // Reached: the shard went on. Now let the write through so the runtime can end.
        let reader = std::thread::spawn(move || {
            let mut opened = std::fs::File::open(&fifo).unwrap();
            std::fs::remove_file(&fifo).unwrap();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut opened, &mut text).unwrap();
            text
        });
        assert!(
            reader.join().unwrap().parse::<u64>().is_ok(),
            "the record was written"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
