//! Durable progress per shard: the highest seq such that every event of the session up to it
//! is delivered, dead-lettered or spooled. Resuming from it loses nothing.
//!
//! Owns the bookkeeping only: delivery reports batches as they start and finish; checkpoints
//! read the result. Batches may finish out of order (`ordering = "none"`), so the durable seq
//! is the one just before the oldest batch still under way.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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

/// Durable progress of every shard in this process.
#[derive(Debug, Default)]
pub struct Progress {
    shards: Mutex<HashMap<u32, ShardProgress>>,
}

impl Progress {
    fn with<T>(
        &self,
        shard: u32,
        session: &Arc<str>,
        f: impl FnOnce(&mut ShardProgress) -> T,
    ) -> T {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let p = shards.entry(shard).or_default();
        if p.session.as_deref() != Some(&**session) {
            // A new session: nothing of the old one can be resumed any more.
            *p = ShardProgress {
                session: Some(session.clone()),
                ..ShardProgress::default()
            };
        }
        f(p)
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
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = shards
            .get_mut(&shard)
            .filter(|p| p.session.as_deref() == Some(&**session))
        else {
            return;
        };
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
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let p = shards.get(&shard)?;
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
}
