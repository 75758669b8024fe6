//! Several routers sharing one bot's shards through Redis (`[cluster]`): `Cluster` is the
//! router's store (`store::Store`) when a config has a `[cluster]` table.
//!
//! Sits below the composition root and the control API, which use it, and above delivery and
//! the gateway, whose shards and progress it reads and whose tenures it grants. It owns:
//! - `store`: the keys in Redis and every call on them (with a timeout), atomic by Lua;
//! - `coordinator`: leases, fencing, rendezvous placement, takeover and handover;
//! - `turns`: IDENTIFY turns and the session-start budget across routers;
//! - `view`: who holds which shard, for the control API;
//! - `dead_letters`: every dead letter kept in Redis too, and moved to a file for `replay`;
//! - `spools`: each shard's spool as a Redis stream, drained by whichever router holds it;
//! - `status`: the report `shardhook cluster status` prints.
//!
//! It does not open gateway connections, deliver events, or read local checkpoint files: in a
//! cluster, the checkpoints, spools and dead letters are Redis'.

mod coordinator;
pub mod dead_letters;
mod request_keys;
mod rest_limits;
mod seal;
mod spent_ids;
mod spools;
pub mod status;
mod store;
mod turns;
mod view;

use std::sync::Arc;

pub use coordinator::Coordinator;
pub use store::{NodeInfo, StoreError};
pub use view::View;

use crate::config::{ClusterConfig, Config, ConfigError};
use crate::delivery::Keeping;
use crate::gateway::bot_info::SessionStartLimit;
use crate::gateway::identify::SharedTurns;
use crate::gateway::tenure::Tenure;
use crate::state::request_ids::SpentIds;
use crate::state::rest_limits::RestLimits;
use crate::store::{Finale, Later, NotEnoughIdentifies, Owners, Parts, SpentIdSets};
use store::Store;

/// Now, in Unix milliseconds (membership ages are compared across machines in these).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The config has no `[cluster]`, or no token.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `cluster.redis_url` was refused by the client.
    #[error("cluster.redis_url: {0}")]
    Store(#[from] StoreError),
    /// The config has no `[cluster]` section.
    #[error("no [cluster] section in the config")]
    NotConfigured,
    /// A file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What writing it said.
        source: std::io::Error,
    },
}

/// The store of the bot `config` names, and the bot's id: records sealed with its token.
pub(crate) fn open_store(config: &Config) -> Result<(Store, String), ClusterError> {
    let settings = config.cluster.as_ref().ok_or(ClusterError::NotConfigured)?;
    let token = config.token()?;
    let bot = token.bot();
    let seal = seal::Seal::of(token);
    let ca = match &settings.redis_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|e| ClusterError::File {
            path: path.clone(),
            source: e,
        })?),
        None => None,
    };
    let store = Store::new(&settings.redis_url, &bot, seal, ca, settings.redis_timeout)?;
    Ok((store, bot))
}

/// This router's membership of the bot's cluster.
#[derive(Debug)]
pub struct Cluster {
    store: Store,
    settings: ClusterConfig,
    me: NodeInfo,
    view: Arc<View>,
}

impl Cluster {
    /// Joins the cluster `config.cluster` describes, announcing `control` as this router's
    /// control address (unless `cluster.advertise` says otherwise). Redis is reached on first
    /// use: it need not be up yet.
    pub fn new(config: &Config, control: std::net::SocketAddr) -> Result<Cluster, ClusterError> {
        let settings = config.cluster.clone().ok_or(ClusterError::NotConfigured)?;
        let (store, _) = open_store(config)?;
        let me = NodeInfo {
            id: settings.node_id.clone(),
            weight: settings.weight,
            control: settings
                .advertise
                .clone()
                .unwrap_or_else(|| control.to_string()),
            started_ms: now_ms(),
        };
        Ok(Cluster {
            view: Arc::new(View::new(&me.id, store.clone())),
            store,
            settings,
            me,
        })
    }

    /// This router's node id.
    pub fn node_id(&self) -> &str {
        &self.me.id
    }

    /// The coordinator that runs this router's side of the cluster over `parts`.
    fn coordinator(&self, parts: Parts) -> Coordinator {
        Coordinator::new(
            self.store.clone(),
            self.me.clone(),
            self.settings.clone(),
            parts,
            self.view.clone(),
        )
    }
}

/// The bot's Redis as the router's store: spools and dead letters there (the machine's disk
/// alone is not safe when another router may take the shard), spent ids and REST limits for
/// every router of the bot, every shard of the bot started in standby and run here only while
/// this router holds its lease (the coordinator grants it, from the checkpoint in Redis).
impl crate::store::Store for Cluster {
    fn keeping(&self) -> Keeping {
        let held = Arc::default();
        Keeping::Shared {
            spools: Arc::new(spools::RedisSpools {
                store: self.store.clone(),
                node: self.me.id.clone(),
                view: self.view.clone(),
            }),
            dead_letters: Arc::new(dead_letters::RedisDeadLetters {
                store: self.store.clone(),
                max: self.settings.dead_letters_max,
                held: Arc::clone(&held),
            }),
            dead_letters_held: held,
            dead_letters_max: self.settings.dead_letters_max,
        }
    }

    /// One set in Redis for commands and REST calls alike: Redis bounds it by expiry alone.
    fn spent_ids(&self) -> Result<SpentIdSets, String> {
        let ids: Arc<dyn SpentIds> = Arc::new(spent_ids::RedisIds {
            store: self.store.clone(),
            node: self.me.id.clone(),
        });
        Ok(SpentIdSets {
            commands: ids.clone(),
            rest: ids,
        })
    }

    fn rest_limits(&self) -> Arc<dyn RestLimits> {
        Arc::new(rest_limits::RedisLimits {
            store: self.store.clone(),
            node: self.me.id.clone(),
            counted: Default::default(),
        })
    }

    fn owners(&self) -> Arc<dyn Owners> {
        self.view.clone()
    }

    /// Every shard of the bot may come to this router; the session-start budget is kept in
    /// Redis and spent identify by identify (`identify_turns`).
    fn begin(
        &self,
        total: u32,
        _planned: std::ops::Range<u32>,
        _limit: &SessionStartLimit,
    ) -> Result<Vec<(u32, Tenure)>, NotEnoughIdentifies> {
        Ok((0..total).map(|id| (id, Tenure::Standby)).collect())
    }

    /// IDENTIFY turns across the cluster, after recording the session starts `limit` says
    /// are left (unless another router recorded them since they last reset).
    fn identify_turns<'a>(
        &'a self,
        limit: &'a SessionStartLimit,
    ) -> Later<'a, Option<Arc<dyn SharedTurns>>> {
        Box::pin(async move {
            let reset = std::time::Duration::from_millis(limit.reset_after);
            if let Err(e) = self.store.offer_starts(limit.remaining, reset).await {
                tracing::warn!("could not record the session starts left in Redis: {e}");
            }
            Some(Arc::new(turns::RedisTurns {
                store: self.store.clone(),
                node: self.me.id.clone(),
            }) as Arc<dyn SharedTurns>)
        })
    }

    /// The coordinator: leases, checkpoints in Redis, and on shutdown every shard handed
    /// over before the shards close. Nothing is left for after delivery.
    fn keeper(
        &self,
        parts: Parts,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Later<'static, Finale> {
        let coordinator = self.coordinator(parts);
        Box::pin(async move {
            coordinator.run(shutdown.cancelled_owned()).await;
            Box::new(|| {}) as Finale
        })
    }
}
