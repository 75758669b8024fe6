//! Replay protection for signed requests (gateway commands, REST calls): a `webhook-id` is
//! spent once its request is acted on, and a spent id is refused until its timestamp is out of
//! the signature's window.
//!
//! Owns the decision (claim an id while its command is checked, spend it if the command was
//! accepted, release it otherwise) behind a small interface, `SpentIds`, so that where ids are
//! kept can change: `LocalIds` keeps them in memory, bounded and expiring, and in the state
//! directory, so they outlive a restart; in a cluster, `cluster`'s Redis ids are one set for
//! every router of the bot. The file format is `state::spent_ids`'.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::state::spent_ids::SpentIdsLog;

/// Ids kept at most: past this, new commands are refused until ids expire. Only holders of the
/// key can add ids, and a bot sends at most 120 commands a minute a shard, so this is far above
/// any real rate over the 10 minutes an id lives.
pub const CAPACITY: usize = 100_000;

/// What `SpentIds::claim` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The id is new; it is held for this command until spent or released.
    Claimed,
    /// The id was spent, or is held by a command being checked now.
    Seen,
    /// No room for another id until some expire.
    Full,
    /// Where the ids are kept cannot answer now (a cluster's Redis): nothing is acted on.
    Unavailable(String),
}

/// What a `SpentIds` call answers with.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where the ids of accepted commands are kept.
pub trait SpentIds: Send + Sync {
    /// Holds `id` (until Unix second `expires`) for a command being checked, unless it is
    /// spent or held already. `now` is Unix seconds.
    fn claim<'a>(&'a self, id: &'a str, expires: u64, now: u64) -> Answer<'a, Claim>;
    /// The command was not accepted: its id may come again.
    fn release<'a>(&'a self, id: &'a str) -> Answer<'a, ()>;
    /// The command was accepted: its id stays spent until it expires, across restarts.
    fn spend(self: Arc<Self>, id: String, expires: u64) -> Answer<'static, io::Result<()>>;
}

/// Ids in memory, bounded and expiring, spent ones also in the state directory.
///
/// Spends that come together are synced together (group commit): each adds its line to
/// `pending` and waits for the file; whoever holds the file writes every pending line and
/// syncs once, and those whose lines it synced return without a sync of their own. So N
/// requests answered at once cost one `fdatasync`, not N in a row on their answers' path.
pub struct LocalIds {
    cache: Mutex<Cache>,
    pending: Mutex<Pending>,
    log: Mutex<SpentIdsLog>,
    /// The sequence number of the last pending line synced.
    synced: std::sync::atomic::AtomicU64,
}

/// Lines waiting for the file.
#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    count: usize,
    /// The sequence number of the last line added.
    last: u64,
}

#[derive(Default)]
struct Cache {
    /// Id to (expires, spent).
    ids: HashMap<Box<str>, (u64, bool)>,
    /// The same ids by expiry, to drop the expired ones first.
    by_expiry: BTreeSet<(u64, Box<str>)>,
    capacity: usize,
    /// How many of `ids` are spent, kept as they change: a spend needs the count to know
    /// when to compact the file, and counting them would walk every id on every spend.
    spent: usize,
}

impl Cache {
    fn expire(&mut self, now: u64) {
        while let Some((expires, _)) = self.by_expiry.first() {
            if *expires >= now {
                break;
            }
            if let Some((_, id)) = self.by_expiry.pop_first() {
                if let Some((_, true)) = self.ids.remove(&id) {
                    self.spent -= 1;
                }
            }
        }
    }

    fn remove(&mut self, id: &str) {
        if let Some((expires, spent)) = self.ids.remove(id) {
            self.by_expiry.remove(&(expires, Box::from(id)));
            if spent {
                self.spent -= 1;
            }
        }
    }

    fn spent(&self) -> Vec<(String, u64)> {
        self.ids
            .iter()
            .filter(|(_, (_, spent))| *spent)
            .map(|(id, (expires, _))| (id.to_string(), *expires))
            .collect()
    }
}

impl LocalIds {
    /// Reads the gateway commands' ids spent in earlier runs from `state_dir`, keeping those
    /// still live at `now`.
    pub fn open(state_dir: &Path, now: u64) -> io::Result<LocalIds> {
        LocalIds::with_capacity(state_dir, now, CAPACITY)
    }

    /// Like `open`, for REST calls' ids: a set of their own, with a cap of their own, so a
    /// burst of REST calls cannot leave no room for a gateway command's id.
    pub fn open_rest(state_dir: &Path, now: u64) -> io::Result<LocalIds> {
        LocalIds::from_file(
            state_dir,
            crate::state::spent_ids::REST_FILE_NAME,
            now,
            CAPACITY,
        )
    }

    /// Like `open`, holding at most `capacity` ids.
    pub fn with_capacity(state_dir: &Path, now: u64, capacity: usize) -> io::Result<LocalIds> {
        LocalIds::from_file(state_dir, crate::state::spent_ids::FILE_NAME, now, capacity)
    }

    fn from_file(state_dir: &Path, name: &str, now: u64, capacity: usize) -> io::Result<LocalIds> {
        let (log, live) = SpentIdsLog::open_file(state_dir, name, now)?;
        let mut cache = Cache {
            capacity,
            ..Cache::default()
        };
        for (id, expires) in live {
            let id: Box<str> = id.into();
            cache.by_expiry.insert((expires, id.clone()));
            if cache.ids.insert(id, (expires, true)).is_none() {
                cache.spent += 1;
            }
        }
        Ok(LocalIds {
            cache: Mutex::new(cache),
            pending: Mutex::default(),
            log: Mutex::new(log),
            synced: Default::default(),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SpentIds for LocalIds {
    fn claim<'a>(&'a self, id: &'a str, expires: u64, now: u64) -> Answer<'a, Claim> {
        Box::pin(std::future::ready(LocalIds::claim(self, id, expires, now)))
    }

    fn release<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        LocalIds::release(self, id);
        Box::pin(std::future::ready(()))
    }

    /// The file is synced off the runtime's threads.
    fn spend(self: Arc<Self>, id: String, expires: u64) -> Answer<'static, io::Result<()>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || LocalIds::spend(&self, &id, expires))
                .await
                .map_err(io::Error::other)?
        })
    }
}

impl LocalIds {
    /// `SpentIds::claim`, at once.
    pub fn claim(&self, id: &str, expires: u64, now: u64) -> Claim {
        let mut cache = self.cache();
        cache.expire(now);
        if cache.ids.contains_key(id) {
            return Claim::Seen;
        }
        if cache.ids.len() >= cache.capacity {
            return Claim::Full;
        }
        cache.by_expiry.insert((expires, id.into()));
        cache.ids.insert(id.into(), (expires, false));
        Claim::Claimed
    }

    /// `SpentIds::release`, at once.
    pub fn release(&self, id: &str) {
        let mut cache = self.cache();
        if cache.ids.get(id).is_some_and(|(_, spent)| !spent) {
            cache.remove(id);
        }
    }

    /// `SpentIds::spend`, blocking on the file.
    pub fn spend(&self, id: &str, expires: u64) -> io::Result<()> {
        let spent = {
            let mut cache = self.cache();
            let newly = match cache.ids.get_mut(id) {
                Some(entry) if !entry.1 => {
                    entry.1 = true;
                    true
                }
                _ => false,
            };
            if newly {
                cache.spent += 1;
            }
            cache.spent
        };
        use std::sync::atomic::Ordering;
        let mine = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            crate::state::spent_ids::push_line(&mut pending.lines, id, expires);
            pending.count += 1;
            pending.last += 1;
            pending.last
        };
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if self.synced.load(Ordering::Acquire) >= mine {
            // The holder before synced this one's line with its own.
            return Ok(());
        }
        let (lines, count, upto) = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let lines = std::mem::take(&mut pending.lines);
            (lines, std::mem::take(&mut pending.count), pending.last)
        };
        if let Err(e) = log.append_lines(&lines, count) {
            // Back in front, for the next holder to write; this request is told.
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            let mut back = lines;
            back.extend_from_slice(&pending.lines);
            pending.lines = back;
            pending.count += count;
            return Err(e);
        }
        self.synced.store(upto, Ordering::Release);
        // Expired ids only leave the file when it is rewritten: now and then, not per request;
        // only then are the live ones listed.
        if log.lines() > 2 * spent + 1024 {
            let live = self.cache().spent();
            log.compact(&live)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("shardhook-replay-{tag}-{}", std::process::id()))
    }

    #[test]
    fn an_id_is_spent_only_by_an_accepted_command_and_stays_spent_across_a_restart() {
        let dir = dir("restart");
        let ids = LocalIds::open(&dir, 1000).unwrap();
        assert_eq!(ids.claim("a", 1300, 1000), Claim::Claimed);
        assert_eq!(
            ids.claim("a", 1300, 1000),
            Claim::Seen,
            "held while checked"
        );
        ids.release("a");
        assert_eq!(
            ids.claim("a", 1300, 1001),
            Claim::Claimed,
            "a refused command spends nothing"
        );
        ids.spend("a", 1300).unwrap();
        ids.release("a");
        assert_eq!(ids.claim("a", 1300, 1002), Claim::Seen, "spent stays spent");
        assert_eq!(ids.claim("b", 1300, 1002), Claim::Claimed);
        drop(ids);
        // A restart: "a" was spent, "b" only claimed.
        let ids = LocalIds::open(&dir, 1010).unwrap();
        assert_eq!(ids.claim("a", 1300, 1010), Claim::Seen);
        assert_eq!(ids.claim("b", 1300, 1010), Claim::Claimed);
        drop(ids);
        // Past its expiry the id is dropped, on reopening and in memory.
        let ids = LocalIds::open(&dir, 1301).unwrap();
        assert_eq!(ids.claim("a", 1600, 1301), Claim::Claimed);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_spend_does_not_walk_every_spent_id() {
        let dir = dir("incremental");
        let ids = LocalIds::open(&dir, 0).unwrap();
        for n in 0..5_000 {
            let id = format!("id{n}");
            assert_eq!(ids.claim(&id, 1_000, 0), Claim::Claimed);
            ids.spend(&id, 1_000).unwrap();
        }
        assert_eq!(ids.claim("last", 1_000, 0), Claim::Claimed);
        let (spent, allocations) = crate::allocations::during(|| ids.spend("last", 1_000));
        spent.unwrap();
        assert!(
            allocations < 16,
            "{allocations} allocations for one spend among 5,000"
        );
        assert_eq!(ids.cache().spent, 5_001);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_cache_is_bounded_and_expired_ids_make_room() {
        let dir = dir("bounded");
        let ids = LocalIds::with_capacity(&dir, 0, 2).unwrap();
        assert_eq!(ids.claim("a", 100, 0), Claim::Claimed);
        ids.spend("a", 100).unwrap();
        assert_eq!(ids.claim("b", 200, 0), Claim::Claimed);
        assert_eq!(ids.claim("c", 200, 50), Claim::Full);
        assert_eq!(ids.claim("c", 200, 101), Claim::Claimed, "a expired");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_file_is_rewritten_once_expired_lines_pile_up() {
        let dir = dir("compact");
        let ids = LocalIds::open(&dir, 0).unwrap();
        for n in 0..1100u64 {
            let id = format!("cmd_{n}");
            assert_eq!(ids.claim(&id, n, n), Claim::Claimed);
            ids.spend(&id, n).unwrap();
        }
        let lines = std::fs::read_to_string(dir.join(crate::state::spent_ids::FILE_NAME))
            .unwrap()
            .lines()
            .count();
        assert!(lines < 1100, "{lines} lines");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn spends_that_come_together_are_synced_together() {
        let dir = dir("group");
        let ids = Arc::new(LocalIds::open(&dir, 0).unwrap());
        for n in 0..16 {
            assert_eq!(ids.claim(&format!("id{n}"), 1_000, 0), Claim::Claimed);
        }
        // A sync in progress holds the file while 16 requests are accepted.
        let held = ids.log.lock().unwrap();
        let spends: Vec<_> = (0..16)
            .map(|n| {
                let ids = ids.clone();
                std::thread::spawn(move || LocalIds::spend(&ids, &format!("id{n}"), 1_000))
            })
            .collect();
        while ids.pending.lock().unwrap().count < 16 {
            std::thread::yield_now();
        }
        let before = held.syncs();
        drop(held);
        for spend in spends {
            spend.join().unwrap().unwrap();
        }
        assert_eq!(
            ids.log.lock().unwrap().syncs() - before,
            1,
            "one sync for 16"
        );
        drop(ids);
        let reopened = LocalIds::open(&dir, 1).unwrap();
        for n in 0..16 {
            assert_eq!(reopened.claim(&format!("id{n}"), 1_000, 1), Claim::Seen);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
