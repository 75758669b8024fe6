//! The identify queue: Discord lets each `shard_id % max_concurrency` bucket IDENTIFY once per
//! 5 seconds.
//!
//! Owns the per-bucket pacing for one process. A permit is held while the IDENTIFY is sent and
//! the send time is recorded when the permit drops, so the 5 s runs from the real send. It
//! does not coordinate across processes (each process runs its own slice of buckets).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

/// Discord's spacing between IDENTIFYs of one bucket.
pub const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5);

/// Paces IDENTIFYs per bucket.
#[derive(Debug)]
pub struct IdentifyQueue {
    /// When each bucket last sent an IDENTIFY. Tokio's mutex is fair, so shards of one bucket
    /// identify in the order they asked.
    buckets: Vec<Arc<Mutex<Option<Instant>>>>,
}

/// The right to send one IDENTIFY now. Dropping it stamps the bucket.
pub struct IdentifyPermit {
    last: OwnedMutexGuard<Option<Instant>>,
}

impl Drop for IdentifyPermit {
    fn drop(&mut self) {
        *self.last = Some(Instant::now());
    }
}

impl IdentifyQueue {
    pub fn new(max_concurrency: u32) -> IdentifyQueue {
        let buckets = (0..max_concurrency.max(1))
            .map(|_| Arc::new(Mutex::new(None)))
            .collect();
        IdentifyQueue { buckets }
    }

    /// The bucket a shard identifies in.
    pub fn bucket_of(&self, shard_id: u32) -> usize {
        shard_id as usize % self.buckets.len()
    }

    /// Waits until `shard_id`'s bucket may identify.
    pub async fn acquire(&self, shard_id: u32) -> IdentifyPermit {
        let last = self.buckets[self.bucket_of(shard_id)]
            .clone()
            .lock_owned()
            .await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + IDENTIFY_INTERVAL).await;
        }
        IdentifyPermit { last }
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
}
