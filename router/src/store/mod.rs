//! The one interface for what a router keeps beyond one request, chosen once at start (by
//! `app`): `LocalStore` (files under `state.dir`) for a router alone, `cluster::Cluster` (the
//! bot's Redis) for one router of many. It gives each layer what that layer keeps, as values:
//! - delivery: where each shard's spool and a copy of each dead letter are kept (`keeping`);
//! - the control API: the spent request ids (`spent_ids`) and who runs each shard (`owners`);
//! - the REST proxy: the bot's limits (`rest_limits`);
//! - the router: which shards start here and how each begins (`begin`), IDENTIFY turns beyond
//!   this process (`identify_turns`), and the keeper that writes checkpoints and holds tenure
//!   until shutdown (`keeper`: the checkpointer, or the cluster's coordinator).
//!
//! No layer asks whether it runs in a cluster: a feature that needs shared state adds a method
//! here, with both implementations. Owns the interface, `Parts` (what a keeper reads of the
//! router) and the local implementation; Redis' is `cluster`'s.

pub(crate) mod checkpointer;
mod local;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

pub(crate) use local::LocalStore;

use crate::delivery::{DeliveryHandle, Keeping};
use crate::gateway::bot_info::SessionStartLimit;
use crate::gateway::handle::ShardHandle;
use crate::gateway::identify::SharedTurns;
use crate::gateway::tenure::{Tenure, Tenures};
use crate::state::request_ids::SpentIds;
use crate::state::rest_limits::RestLimits;

/// A store's answer, later: the one boxed-future type the store's parts answer with.
pub use crate::state::request_ids::Answer as Later;

/// What runs once the router has stopped and delivery has finished (the local store writes
/// its final checkpoints then, with everything delivered recorded).
pub type Finale = Box<dyn FnOnce() + Send>;

/// What a keeper reads of the router it runs in.
pub struct Parts {
    /// The router's shards (in a cluster: every shard of the bot, most in standby).
    pub shards: Vec<ShardHandle>,
    /// Their tenures.
    pub tenures: Tenures,
    /// The bot's shard count.
    pub shard_count: u32,
    /// The bot (`Token::bot`), for checkpoints.
    pub bot: String,
    /// Delivery's durable progress.
    pub delivery: DeliveryHandle,
    /// `state.checkpoint_max_age`: an older checkpoint is not resumed from.
    pub checkpoint_max_age: Duration,
    /// `state.checkpoint_interval`: how often checkpoints that moved are written.
    pub checkpoint_interval: Duration,
    /// `delivery.shutdown_timeout`: how long a handover waits for delivery.
    pub drain_timeout: Duration,
}

/// Who runs a shard, as the control API tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The router's node id.
    pub node: String,
    /// Its control address, if it is live.
    pub control: Option<String>,
}

/// Who runs which shard, for the control API.
pub trait Owners: Send + Sync {
    /// Whether this router runs `shard` now.
    fn holds(&self, shard: u32) -> bool;
    /// Who runs each of `shards`, read now: `None` for a shard no other router is known to
    /// run (a router alone names no one).
    fn owners<'a>(&'a self, shards: &'a [u32]) -> Later<'a, BTreeMap<u32, Option<Owner>>>;
}

/// A router alone runs every shard it started, and names no other router.
#[derive(Debug, Clone, Copy)]
pub struct Alone;

impl Owners for Alone {
    fn holds(&self, _shard: u32) -> bool {
        true
    }

    fn owners<'a>(&'a self, _shards: &'a [u32]) -> Later<'a, BTreeMap<u32, Option<Owner>>> {
        Box::pin(std::future::ready(BTreeMap::new()))
    }
}

/// The session starts left would not cover the shards that must identify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotEnoughIdentifies {
    /// Shards that must identify (those without a checkpoint).
    pub need: u32,
    /// Session starts Discord says are left.
    pub remaining: u32,
    /// Session starts per day.
    pub total: u32,
    /// Seconds until `remaining` resets.
    pub reset_secs: u64,
}

/// Where spent request ids are kept.
pub struct SpentIdSets {
    /// Gateway commands'.
    pub commands: Arc<dyn SpentIds>,
    /// REST calls'.
    pub rest: Arc<dyn SpentIds>,
}

/// Everything a router keeps beyond one request.
pub trait Store: Send + Sync {
    /// Where delivery keeps each shard's spool and a copy of each dead letter.
    fn keeping(&self) -> Keeping;
    /// The request ids spent by accepted gateway commands, and those spent by REST calls
    /// (sets apart where they are bounded); `Err` says why they could not be read.
    fn spent_ids(&self) -> Result<SpentIdSets, String>;
    /// The bot's REST limits.
    fn rest_limits(&self) -> Arc<dyn RestLimits>;
    /// Who runs which shard.
    fn owners(&self) -> Arc<dyn Owners>;
    /// Of the bot's `total` shards, those this router starts (`planned`: its share by
    /// `discord.shards`), each with the tenure it begins with; refused when Discord's session
    /// starts left (`limit`) cannot cover the identifies they need.
    fn begin(
        &self,
        total: u32,
        planned: Range<u32>,
        limit: &SessionStartLimit,
    ) -> Result<Vec<(u32, Tenure)>, NotEnoughIdentifies>;
    /// IDENTIFY turns beyond this process, if others share the bot's `max_concurrency` buckets.
    fn identify_turns<'a>(
        &'a self,
        limit: &'a SessionStartLimit,
    ) -> Later<'a, Option<Arc<dyn SharedTurns>>>;
    /// The task that keeps the shards' checkpoints (and in a cluster, their tenure) until
    /// `shutdown`: once it returns the shards may close. Its `Finale` runs after delivery
    /// has finished.
    fn keeper(
        &self,
        parts: Parts,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Later<'static, Finale>;
}
