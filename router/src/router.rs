//! The router: asks Discord how to shard, then starts and supervises this process's shards.
//!
//! Owns the start-up checks (token, shard plan, the daily identify budget), spawning one task
//! per shard with its tracing span, and shutdown. Shards hand dispatches to the sink they are
//! given; what consumes it is not this module's business.

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{info, info_span, Instrument};

use crate::config::{Config, ConfigError, ShardsConfig};
use crate::gateway::bot_info::{self, GatewayBot, GatewayBotError};
use crate::gateway::dispatch::Dispatch;
use crate::gateway::handle::{FatalClose, ShardHandle};
use crate::gateway::identify::IdentifyQueue;
use crate::gateway::shard::{Shard, ShardConfig};
use crate::gateway::tenure::{Tenure, Tenures};

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config is incomplete (no token).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client for Discord's REST API could not be built.
    #[error("failed to build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The platform's certificate roots could not be loaded.
    #[error("failed to set up TLS (the platform's certificate roots): {0}")]
    Tls(rustls::Error),
    /// `GET /gateway/bot` failed.
    #[error(transparent)]
    GatewayBot(#[from] GatewayBotError),
    #[error(
        "not enough identifies left today: {need} shard(s) to start, Discord reports {remaining} \
         of {total} remaining (resets in {reset_secs} s); starting anyway could get the token reset"
    )]
    /// Discord's daily session starts would not cover the shards that must identify.
    IdentifyBudget {
        /// Shards that must identify (those without a checkpoint).
        need: u32,
        /// Session starts Discord says are left.
        remaining: u32,
        /// Session starts per day.
        total: u32,
        /// Seconds until `remaining` resets.
        reset_secs: u64,
    },
}

/// Why the router stopped on its own.
#[derive(Debug, thiserror::Error)]
#[error("every shard stopped: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct AllShardsStopped(pub Vec<FatalClose>);

/// A started router: its shards are connecting or connected (or, in a cluster, standing by
/// for their leases).
pub struct Router {
    shards: Vec<ShardHandle>,
    shard_count: u32,
    tasks: JoinSet<Result<(), FatalClose>>,
    /// Each shard's tenure, in `shards`' order: held from the start by a router alone, granted
    /// and released by `cluster` in a cluster.
    tenures: Tenures,
    /// The identify queue, whose records are flushed when the router stops.
    identify: Arc<IdentifyQueue>,
    /// Which bot this is (`Token::bot`), for checkpoints.
    bot: String,
}

/// The shard count and the ids this process runs.
fn shard_plan(shards: &ShardsConfig, bot: &GatewayBot) -> (u32, Range<u32>) {
    match shards {
        ShardsConfig::Auto => (bot.shards.max(1), 0..bot.shards.max(1)),
        ShardsConfig::Explicit { total, ids } => (*total, ids.clone()),
    }
}

impl Router {
    /// Asks Discord for the gateway, checks the plan, and starts every shard of this process,
    /// all handing their dispatches to `sink`, resuming from the checkpoints in `state.dir`:
    /// the gateway alone, for a program that consumes dispatches itself (a whole router,
    /// delivery and control API included, is `app::App`).
    pub async fn start(
        config: &Config,
        sink: mpsc::Sender<Dispatch>,
    ) -> Result<Router, StartError> {
        let store = crate::store::LocalStore::of(config)?;
        Router::start_in(config, |_| sink.clone(), &store).await
    }

    /// Starts the shards `store` says begin here (`Store::begin`), each with a queue of its
    /// own: `sink_for(shard_id)` is called once for each; identifies are paced with whoever
    /// else `store` says shares the bot's turns.
    pub(crate) async fn start_in(
        config: &Config,
        mut sink_for: impl FnMut(u32) -> mpsc::Sender<Dispatch>,
        store: &dyn crate::store::Store,
    ) -> Result<Router, StartError> {
        let token = config.token()?.clone();
        let tls = crate::tls::platform_tls().map_err(StartError::Tls)?;
        let builder = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::with_http2(&tls))
            .user_agent(crate::USER_AGENT)
            .timeout(config.discord.connect_timeout);
        let client = config
            .discord
            .client(builder)
            .map_err(StartError::Config)?
            .build()
            .map_err(StartError::Client)?;
        let gateway = bot_info::gateway_bot(&client, &config.discord.api_url, &token).await?;
        let (total, planned) = shard_plan(&config.discord.shards, &gateway);
        let limit = &gateway.session_start_limit;
        let bot = token.bot();
        let begin =
            store
                .begin(total, planned.clone(), limit)
                .map_err(|n| StartError::IdentifyBudget {
                    need: n.need,
                    remaining: n.remaining,
                    total: n.total,
                    reset_secs: n.reset_secs,
                })?;
        info!(
            total,
            ids = ?planned,
            max_concurrency = limit.max_concurrency,
            identifies_remaining = limit.remaining,
            "starting shards"
        );
        let mut queue = IdentifyQueue::persistent(limit.max_concurrency, &config.state.dir);
        if let Some(turns) = store.identify_turns(limit).await {
            queue = queue.shared_with(turns);
        }
        let queue = Arc::new(queue);
        let mut tenures = std::collections::BTreeMap::new();
        let mut tasks = JoinSet::new();
        let mut shards = Vec::with_capacity(begin.len());
        for (id, first) in begin {
            let shard_config = ShardConfig {
                id,
                total,
                token: token.clone(),
                intents: config.discord.intents,
                gateway_url: gateway.url.clone(),
                connect_timeout: config.discord.connect_timeout,
                max_message_size: config.discord.max_message_size,
                compression: config.discord.compression,
            };
            let (tenure, tenure_rx) = watch::channel(first);
            tenures.insert(id, tenure);
            let (shard, handle) = Shard::new(shard_config, queue.clone(), sink_for(id), tenure_rx);
            tasks.spawn(shard.run().instrument(info_span!("shard", shard_id = id)));
            shards.push(handle);
        }
        Ok(Router {
            shards,
            shard_count: total,
            tasks,
            tenures: Arc::new(tenures),
            identify: queue,
            bot,
        })
    }

    /// This process's shards, in id order.
    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }

    /// Which bot the router runs, as checkpoints record it (`Token::bot`: the bot's user id,
    /// never the token).
    pub fn bot(&self) -> &str {
        &self.bot
    }

    /// What the store's keeper reads of this router: its shards and their tenures, and
    /// `delivery`'s progress.
    pub(crate) fn parts(
        &self,
        config: &Config,
        delivery: crate::delivery::DeliveryHandle,
    ) -> crate::store::Parts {
        crate::store::Parts {
            shards: self.shards.clone(),
            tenures: self.tenures.clone(),
            shard_count: self.shard_count,
            bot: self.bot.clone(),
            delivery,
            checkpoint_max_age: config.state.checkpoint_max_age,
            checkpoint_interval: config.state.checkpoint_interval,
            drain_timeout: config.delivery.shutdown_timeout,
        }
    }

    /// The total shard count this process identified with.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Runs until `shutdown` resolves (then closes every shard resumably and returns `Ok`) or
    /// every shard has stopped fatally.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AllShardsStopped> {
        tokio::pin!(shutdown);
        let mut fatal = Vec::new();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                joined = self.tasks.join_next() => match joined {
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(err))) => fatal.push(err),
                    Some(Err(join)) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                    Some(Err(_)) => {}
                    None => {
                        self.identify.flush().await;
                        return Err(AllShardsStopped(fatal));
                    }
                },
            }
        }
        info!("shutting down: closing every shard resumably");
        for tenure in self.tenures.values() {
            tenure.send_replace(Tenure::Stopped);
        }
        while self.tasks.join_next().await.is_some() {}
        self.identify.flush().await;
        Ok(())
    }
}
