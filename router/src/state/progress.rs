//! Durable progress per shard: the highest seq such that every event of the session up to it
//! is delivered, dead-lettered or spooled. Resuming from it loses nothing.
//!
//! Owns the bookkeeping only: delivery reports batches as they start and finish; checkpoints
//! read the result. Batches may finish out of order (`ordering = "none"`), so the durable seq
//! is the one just before the oldest batch still under way.
//!
//! Each shard has a cell of its own (its own mutex, taken by its batches alone); the map from
//! shard to cell is read without a lock (`arc-swap`) and copied only when a shard's cell is
//! made, once per shard. So batches of different shards never wait on each other here, and
//! the checkpointer's reads wait on no batch but the shard's own.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

#[derive(Debug, Default)]
struct ShardProgress {
    session: Option<Arc<str>>,
    /// Batches under way: first seq -> last seq.
    under_way: BTreeMap<u64, u64>,
    /// The highest seq finished, with nothing older still under way.
    durable: u64,
    /// The highest seq finished at all.
    finished: u64,
}

/// One shard's cell.
type Cell = Arc<Mutex<ShardProgress>>;

/// Durable progress of every shard in this process.
#[derive(Debug, Default)]
pub struct Progress {
    shards: ArcSwap<HashMap<u32, Cell>>,
}

fn lock(cell: &Cell) -> std::sync::MutexGuard<'_, ShardProgress> {
    cell.lock().unwrap_or_else(|p| p.into_inner())
}

impl Progress {
    /// The shard's cell, made the first time it is asked for.
    fn cell(&self, shard: u32) -> Cell {
        if let Some(cell) = self.shards.load().get(&shard) {
            return cell.clone();
        }
        let mut made = None;
        self.shards.rcu(|shards| {
            let mut shards = HashMap::clone(shards);
            made = Some(shards.entry(shard).or_default().clone());
            shards
        });
        made.expect("rcu runs its closure")
    }

    fn with<T>(
        &self,
        shard: u32,
        session: &Arc<str>,
        f: impl FnOnce(&mut ShardProgress) -> T,
    ) -> T {
        // The shard's cell as loaded, without a reference count of its own; made only once.
        let shards = self.shards.load();
        let made;
        let cell = match shards.get(&shard) {
            Some(cell) => cell,
            None => {
                made = self.cell(shard);
                &made
            }
        };
        let mut p = lock(cell);
        if p.session.as_deref() != Some(&**session) {
            // A new session: nothing of the old one can be resumed any more.
            *p = ShardProgress {
                session: Some(session.clone()),
                ..ShardProgress::default()
            };
        }
        f(&mut p)
    }

    /// A batch of `first..=last` is on its way.
    pub fn started(&self, shard: u32, session: &Arc<str>, first: u64, last: u64) {
        self.with(shard, session, |p| {
            p.under_way.insert(first, last);
        });
    }

    /// The batch starting at `first` is delivered, dead-lettered or spooled. A batch of a
    /// session that is no longer the shard's (drained from a spool late) changes nothing.
    pub fn finished(&self, shard: u32, session: &Arc<str>, first: u64) {
        let shards = self.shards.load();
        let Some(cell) = shards.get(&shard) else {
            return;
        };
        let mut p = lock(cell);
        if p.session.as_deref() != Some(&**session) {
            return;
        }
        if let Some(last) = p.under_way.remove(&first) {
            p.finished = p.finished.max(last);
        }
        p.durable = match p.under_way.keys().next() {
            Some(oldest) => p.durable.max(oldest - 1),
            None => p.finished,
        };
    }

    /// An event that is not sent at all (filtered out) is as good as delivered.
    pub fn skipped(&self, shard: u32, session: &Arc<str>, seq: u64) {
        self.started(shard, session, seq, seq);
        self.finished(shard, session, seq);
    }

    /// `(session, durable seq)` of a shard, once it has any.
    pub fn durable(&self, shard: u32) -> Option<(Arc<str>, u64)> {
        let shards = self.shards.load();
        let p = lock(shards.get(&shard)?);
        Some((p.session.clone()?, p.durable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_is_the_prefix_with_nothing_under_way() {
        let progress = Progress::default();
        let s: Arc<str> = Arc::from("s1");
        progress.started(0, &s, 1, 3);
        progress.started(0, &s, 4, 6);
        progress.started(0, &s, 7, 7);
        progress.finished(0, &s, 4);
        assert_eq!(
            progress.durable(0),
            Some((s.clone(), 0)),
            "1..=3 is still under way"
        );
        progress.finished(0, &s, 1);
        assert_eq!(progress.durable(0).unwrap().1, 6);
        progress.finished(0, &s, 7);
        assert_eq!(progress.durable(0).unwrap().1, 7);
        progress.skipped(0, &s, 8);
        assert_eq!(progress.durable(0).unwrap().1, 8);
    }

    #[test]
    fn a_new_session_starts_over() {
        let progress = Progress::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        progress.started(0, &a, 1, 10);
        progress.finished(0, &a, 1);
        progress.started(0, &b, 1, 2);
        assert_eq!(progress.durable(0), Some((b.clone(), 0)));
        assert_eq!(progress.durable(1), None);
        // A batch of the old session finishing late (drained from a spool) changes nothing.
        progress.started(0, &b, 3, 3);
        progress.finished(0, &a, 1);
        progress.finished(0, &b, 1);
        assert_eq!(progress.durable(0), Some((b.clone(), 2)));
    }

    #[test]
    fn one_shards_batches_never_wait_for_anothers() {
        let progress = Arc::new(Progress::default());
        let s: Arc<str> = Arc::from("s");
        progress.started(0, &s, 1, 1);
        // Shard 0's cell is held (a batch of it being recorded)...
        let cell = progress.cell(0);
        let held = lock(&cell);
        let (done, finished) = std::sync::mpsc::channel();
        let other = progress.clone();
        std::thread::spawn(move || {
            let s: Arc<str> = Arc::from("s");
            other.started(1, &s, 1, 5);
            other.finished(1, &s, 1);
            done.send(other.durable(1)).unwrap();
        });
        // ...and shard 1's batches, new cell and all, go on (with one lock for the process,
        // this would wait until the end of the test: a deadlock, caught here as a timeout).
        let durable = finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("shard 1 waited for shard 0's lock");
        assert_eq!(durable.map(|d| d.1), Some(5));
        drop(held);
    }
}
