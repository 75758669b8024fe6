//! The one way a router starts and stops: `App::start` chooses the store once (`store`: files
//! for a router alone, the cluster's Redis for one of many) and assembles everything
//! `shardhook run` runs from a config and that store (delivery, the shards, the control API
//! and REST proxy, the store's keeper of checkpoints and tenure), and `App::run` keeps it running until its shutdown
//! token is cancelled, then stops it in order. `main`, `demo` and tests start a router through
//! it, so what they run is what users run.
//!
//! Owns the wiring and the shutdown sequence only: one `CancellationToken` tells every loop
//! to stop. Each part's behaviour is its own module's.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::control::ControlState;
use crate::delivery::{DeliveryStats, Pipeline};
use crate::gateway::handle::ShardHandle;
use crate::rest::RestProxy;
use crate::router::Router;
use crate::store::{Finale, LocalStore, Store};
use crate::Signer;

/// Why a router could not start, or stopped with an error, in words that say where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AppError(String);

fn fail(e: impl std::fmt::Display) -> AppError {
    AppError(e.to_string())
}

/// What a start may ask beyond the config.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Keep every delivery latency, for exact quantiles (the demo's report).
    pub latency_samples: bool,
    /// The environment the AWS credentials chain reads, instead of the process's (tests).
    pub env: Option<Vec<(String, String)>>,
}

/// A started router: its shards connect, its control API answers.
pub struct App {
    config: Config,
    shutdown: CancellationToken,
    pipeline: Pipeline,
    router: Router,
    control: SocketAddr,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    /// The store's keeper, and what it leaves for after delivery.
    keeper: JoinHandle<Finale>,
    /// Cancelled once the keeper has returned: the shards may close.
    kept: CancellationToken,
}

impl App {
    /// Starts the router `config` describes; it stops when `shutdown` is cancelled (or once
    /// every shard has stopped). Listeners are bound here, so a taken port fails the start.
    pub async fn start(
        config: Config,
        shutdown: CancellationToken,
        options: StartOptions,
    ) -> Result<App, AppError> {
        let signer = Signer::for_commands(&config).map_err(fail)?;
        let control = tokio::net::TcpListener::bind(config.control.listen)
            .await
            .map_err(|e| {
                fail(format!(
                    "failed to listen on control.listen {}: {e}",
                    config.control.listen
                ))
            })?;
        let control_addr = control.local_addr().map_err(fail)?;
        let rest_listener = match config.rest.listen.filter(|_| config.rest.enabled) {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| fail(format!("failed to listen on rest.listen {addr}: {e}")))?,
            ),
            None => None,
        };
        // The one choice between a router alone and one of many: everything kept beyond one
        // request comes from the store from here on.
        let store: Arc<dyn Store> = match &config.cluster {
            Some(_) => {
                let cluster = Cluster::new(&config, control_addr).map_err(fail)?;
                tracing::info!(node_id = cluster.node_id(), "joining the cluster");
                Arc::new(cluster)
            }
            None => Arc::new(LocalStore::of(&config).map_err(fail)?),
        };
        let env = options.env.unwrap_or_else(|| std::env::vars().collect());
        let mut pipeline = Pipeline::build(&config, env, store.keeping()).map_err(fail)?;
        if options.latency_samples {
            pipeline.stats().keep_samples();
        }
        pipeline.learn_application_id().await;
        let router = Router::start_in(&config, |id| pipeline.sink(id), store.as_ref())
            .await
            .map_err(fail)?;
        let ids = store.spent_ids().map_err(fail)?;
        let state = ControlState::new(
            router.shards(),
            router.shard_count(),
            signer,
            ids.commands,
            pipeline.handle(),
        )
        .with_rest_ids(ids.rest)
        .with_owners(store.owners());
        let state = if config.rest.enabled {
            let proxy = RestProxy::with_limits(&config, store.rest_limits()).map_err(fail)?;
            match rest_listener {
                Some(_) => state.with_rest_apart(proxy),
                None => state.with_rest(proxy),
            }
        } else {
            state
        };
        let state = Arc::new(state);
        tracing::info!(addr = %control_addr, "control API listening");
        let mut servers = Vec::new();
        if let Some(listener) = rest_listener {
            tracing::info!(addr = %listener.local_addr().map_err(fail)?, "REST proxy listening");
            let app = crate::control::rest_app(state.clone());
            let (limits, stopping) = (config.control.clone(), shutdown.clone().cancelled_owned());
            servers.push(tokio::spawn(async move {
                crate::control::serve_app(listener, app, &limits, stopping).await
            }));
        }
        let (limits, stopping) = (config.control.clone(), shutdown.clone().cancelled_owned());
        servers.push(tokio::spawn(async move {
            crate::control::serve(control, state, &limits, stopping).await
        }));
        // The keeper writes checkpoints (in a cluster: holds leases, and on shutdown hands
        // every shard over) until shutdown; the shards close once it returns.
        let kept = CancellationToken::new();
        let keeper = {
            let task = store.keeper(router.parts(&config, pipeline.handle()), shutdown.clone());
            let kept = kept.clone();
            tokio::spawn(async move {
                let finale = task.await;
                kept.cancel();
                finale
            })
        };
        Ok(App {
            config,
            shutdown,
            pipeline,
            router,
            control: control_addr,
            servers,
            keeper,
            kept,
        })
    }

    /// Where the control API answers (`control.listen` as bound).
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// Every shard of the bot this router runs or stands by for.
    pub fn shards(&self) -> &[ShardHandle] {
        self.router.shards()
    }

    /// Delivery's counters.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.pipeline.stats()
    }

    /// Runs until the shutdown token is cancelled or every shard has stopped, then stops in
    /// order: the shards close resumably (in a cluster, handed over first), queued events are
    /// delivered up to `delivery.shutdown_timeout`, and the checkpoints say where to resume.
    pub async fn run(self) -> Result<(), AppError> {
        let App {
            config,
            shutdown,
            pipeline,
            router,
            servers,
            keeper,
            kept,
            ..
        } = self;
        let ran = router.run_until(kept.cancelled_owned()).await;
        // Whether cancelled or because every shard stopped, everything else stops too.
        shutdown.cancel();
        let stats = pipeline.stats();
        let deadline = config.delivery.shutdown_timeout;
        tracing::info!(?deadline, "shards stopped; delivering queued events");
        if tokio::time::timeout(deadline, pipeline.finish())
            .await
            .is_err()
        {
            tracing::warn!(
                ?deadline,
                "queued events were not all delivered in time; Discord replays them on the next start"
            );
        }
        for server in servers {
            server.abort();
        }
        if let Ok(finale) = keeper.await {
            finale();
        }
        let s = stats.snapshot();
        tracing::info!(
            delivered = s.events_delivered,
            dead_lettered = s.events_dead_lettered,
            retries = s.retries,
            "stopped"
        );
        ran.map_err(fail)
    }
}
