//! The state every connection and REST route of one double shares: sessions, identify
//! buckets, the live connections' fault channels, and what was observed.
//!
//! Owns the lock around them and the change counter tests wait on; what each connection does
//! with them is `connection`'s.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::fault::Fault;
use crate::observed::Observed;
use crate::rest_limits::RestLimits;
use crate::rules::SimConfig;

/// One simulated session.
pub(crate) struct SimSession {
    pub(crate) shard: u32,
    pub(crate) total: u32,
    /// Sent payloads, oldest first, for replay; `first_seq` is the seq of `events[0]`.
    pub(crate) events: VecDeque<Arc<str>>,
    pub(crate) first_seq: u64,
    pub(crate) seq: u64,
    pub(crate) invalidated: bool,
    /// When the last connection of this session ended; `None` while connected.
    pub(crate) disconnected_at: Option<Instant>,
}

pub(crate) struct Inner {
    pub(crate) observed: Observed,
    pub(crate) sessions: HashMap<String, SimSession>,
    /// Last accepted IDENTIFY per bucket.
    pub(crate) buckets: HashMap<u32, Instant>,
    pub(crate) identifies_remaining: u32,
    /// The control channel of each shard's current connection, by `(shard, total)`: during a
    /// reshard two sets of shards are connected at once.
    pub(crate) live: HashMap<(u32, u32), mpsc::UnboundedSender<Fault>>,
    /// Traffic events created per shard of a set, against `events_per_shard`.
    pub(crate) traffic: HashMap<(u32, u32), u64>,
    /// Guilds the bot is in now: `SimConfig::guilds`, plus those added since.
    pub(crate) guilds: u32,
    pub(crate) next_session: u64,
    pub(crate) next_message: u64,
    /// REST rate-limit windows.
    pub(crate) rest_limits: RestLimits,
}

pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) addr: SocketAddr,
    pub(crate) inner: Mutex<Inner>,
    /// Bumped on every change to `Observed`, so tests await conditions instead of sleeping.
    pub(crate) changed: watch::Sender<u64>,
}

impl Inner {
    /// The guilds of shard `shard` of `total`, by Discord's rule.
    pub(crate) fn guilds_of(&self, shard: u32, total: u32) -> Vec<u64> {
        crate::events::guilds_of(shard, total, u64::from(self.guilds)).collect()
    }

    /// The live connections, other than `(shard, total)`'s, whose shard also covers `guild`:
    /// during a reshard both sets receive each guild's events, as on Discord.
    pub(crate) fn also_covering(
        &self,
        guild: u64,
        shard: u32,
        total: u32,
    ) -> Vec<mpsc::UnboundedSender<Fault>> {
        self.live
            .iter()
            .filter(|((s, t), _)| {
                (*s, *t) != (shard, total) && crate::events::shard_of(guild, *t) == *s
            })
            .map(|(_, tx)| tx.clone())
            .collect()
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes what tests observe, then wakes whoever waits on it.
    pub(crate) fn observe<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// The shard count `GET /gateway/bot` recommends: `SimConfig::shards`, or more once the
    /// guilds need more.
    pub(crate) fn recommended_shards(&self) -> u32 {
        let guilds = self.lock().guilds;
        let needed = guilds.div_ceil(self.config.guilds_per_shard.max(1));
        self.config.shards.max(needed)
    }

    pub(crate) fn gateway_url(&self) -> String {
        format!("ws://{}/gateway", self.addr)
    }

    pub(crate) fn resume_url(&self) -> String {
        format!("ws://{}/resume", self.addr)
    }
}
