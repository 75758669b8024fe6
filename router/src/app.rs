//! The one way a router starts and stops: `App::start` assembles everything `shardhook run`
//! runs from a config (delivery, the shards, the control API and REST proxy, checkpoints in
//! files or the cluster's coordinator), and `App::run` keeps it running until its shutdown
//! token is cancelled, then stops it in order. `main`, `demo` and tests start a router through
//! it, so what they run is what users run.
//!
//! Owns the wiring and the shutdown sequence only: one `CancellationToken` tells every loop
//! to stop. Each part's behaviour is its own module's.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::checkpointer::Checkpointer;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::control::{ControlState, LocalIds, SpentIds};
use crate::delivery::{DeliveryStats, Pipeline};
use crate::gateway::handle::ShardHandle;
use crate::router::Router;
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
    checkpoints: Option<JoinHandle<Checkpointer>>,
    coordinator: Option<JoinHandle<()>>,
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
        let mut pipeline = match options.env {
            Some(env) => Pipeline::with_env(&config, env),
            None => Pipeline::new(&config),
        }
        .map_err(fail)?;
        if options.latency_samples {
            pipeline.stats().keep_samples();
        }
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
        pipeline.learn_application_id().await;
        let cluster = match &config.cluster {
            Some(_) => {
                let cluster = Cluster::new(&config, control_addr).map_err(fail)?;
                tracing::info!(node_id = cluster.node_id(), "joining the cluster");
                cluster.keep_state_in_redis(&mut pipeline);
                Some(cluster)
            }
            None => None,
        };
        let router = Router::start_in(&config, |id| pipeline.sink(id), cluster.as_ref())
            .await
            .map_err(fail)?;
        // Spent request ids: the cluster's, one set for every router of the bot; else this
        // router's, in its state directory.
        let ids: Arc<dyn SpentIds> = match &cluster {
            Some(cluster) => cluster.spent_ids(),
            None => Arc::new(
                LocalIds::open(&config.state.dir, crate::unix_now()).map_err(|e| {
                    fail(format!(
                        "failed to read spent command ids in {}: {e}",
                        config.state.dir.display()
                    ))
                })?,
            ),
        };
        let state = ControlState::new(
            router.shards(),
            router.shard_count(),
            signer,
            ids,
            pipeline.handle(),
        );
        let state = match &cluster {
            Some(cluster) => state.with_cluster(cluster.view()),
            None => state,
        };
        let state = if config.rest.enabled {
            // In a cluster the global limit and the invalid-request count are the bot's.
            let proxy = match &cluster {
                Some(cluster) => {
                    crate::rest::RestProxy::with_limits(&config, cluster.rest_limits())
                }
                None => crate::rest::RestProxy::new(&config),
            }
            .map_err(fail)?;
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
        // A router alone keeps its checkpoints in files; in a cluster the coordinator keeps
        // them in Redis, and on shutdown hands every shard over before the router stops.
        let (checkpoints, coordinator) = match &cluster {
            None => {
                let checkpointer = Checkpointer::new(&config.state.dir, &router, pipeline.handle());
                let task = checkpointer.run(
                    config.state.checkpoint_interval,
                    shutdown.clone().cancelled_owned(),
                );
                (Some(tokio::spawn(task)), None)
            }
            Some(cluster) => {
                let parts = router.cluster_parts(&config, pipeline.handle());
                let task = cluster
                    .coordinator(parts)
                    .run(shutdown.clone().cancelled_owned());
                (None, Some(tokio::spawn(task)))
            }
        };
        Ok(App {
            config,
            shutdown,
            pipeline,
            router,
            control: control_addr,
            servers,
            checkpoints,
            coordinator,
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
            checkpoints,
            coordinator,
            ..
        } = self;
        let ran = match coordinator {
            Some(task) => {
                router
                    .run_until(async move {
                        let _ = task.await;
                    })
                    .await
            }
            None => router.run_until(shutdown.clone().cancelled_owned()).await,
        };
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
        if let Some(Ok(mut checkpointer)) = match checkpoints {
            Some(task) => Some(task.await),
            None => None,
        } {
            let wrote = checkpointer.write_final();
            tracing::info!(wrote, "resume checkpoints written");
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
