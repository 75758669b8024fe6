//! The running double: its listener, its routes, and the handle tests and commands hold
//! (`Simulator`) to inject faults and read what it observed.
//!
//! Owns start-up, shutdown and the gateway upgrade (version, encoding and `compress` checks);
//! the REST answers are `rest`'s, each gateway connection `connection`'s.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::connection;
use crate::fault::Fault;
use crate::observed::Observed;
use crate::protocol::Compress;
use crate::rest::{
    create_message, current_user, edit_original, gateway_bot, get_member, interaction_callback,
};
use crate::rules::SimConfig;
use crate::shared::{Inner, Shared};

/// A running double. Dropping it stops it.
pub struct Simulator {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Simulator {
    /// Starts the double on `listener`.
    pub fn start(listener: TcpListener, config: SimConfig) -> std::io::Result<Simulator> {
        Simulator::serve(listener, config, std::future::pending())
    }

    /// Binds `addr` (use port 0 for a free one) and starts the double.
    pub async fn bind(addr: SocketAddr, config: SimConfig) -> std::io::Result<Simulator> {
        Simulator::start(TcpListener::bind(addr).await?, config)
    }

    /// Starts the double on `listener` until `shutdown` resolves.
    pub fn serve(
        listener: TcpListener,
        config: SimConfig,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                observed: Observed::default(),
                sessions: HashMap::new(),
                buckets: HashMap::new(),
                identifies_remaining: config.session_start_limit,
                live: HashMap::new(),
                traffic: HashMap::new(),
                guilds: config.guilds,
                next_session: 1,
                next_message: 1,
                rest_limits: Default::default(),
            }),
            config,
            addr,
            changed: watch::channel(0).0,
        });
        let app = Router::new()
            .route("/api/v10/gateway/bot", get(gateway_bot))
            .route("/api/v10/users/@me", get(current_user))
            .route(
                "/api/v10/channels/{channel_id}/messages",
                post(create_message),
            )
            .route(
                "/api/v10/interactions/{id}/{token}/callback",
                post(interaction_callback),
            )
            .route(
                "/api/v10/webhooks/{application_id}/{token}/messages/@original",
                patch(edit_original),
            )
            .route(
                "/api/v10/guilds/{guild_id}/members/{user_id}",
                get(get_member),
            )
            // Uploads are bigger than axum's default limit.
            .layer(axum::extract::DefaultBodyLimit::max(
                crate::rules::MAX_REST_BODY,
            ))
            .route("/gateway", get(upgrade_gateway))
            .route("/gateway/", get(upgrade_gateway))
            .route("/resume", get(upgrade_resume))
            .route("/resume/", get(upgrade_resume))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
            if let Err(e) = served {
                tracing::error!("the simulator stopped: {e}");
            }
        });
        Ok(Simulator { shared, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The REST base to give the router as `discord.api_url`.
    pub fn api_url(&self) -> String {
        format!("http://{}/api/v10", self.shared.addr)
    }

    /// Injects a fault on `shard`'s current connection (of every set connected: during a
    /// reshard, the old set's and the new one's); false if it has none.
    pub fn inject(&self, shard: u32, fault: Fault) -> bool {
        let inner = self.shared.lock();
        let mut sent = false;
        for ((s, _), tx) in &inner.live {
            if *s == shard && tx.send(fault.clone()).is_ok() {
                sent = true;
            }
        }
        sent
    }

    /// Injects a fault on shard `shard` of the set of `total` shards; false if it has no
    /// connection.
    pub fn inject_in(&self, shard: u32, total: u32, fault: Fault) -> bool {
        let inner = self.shared.lock();
        inner
            .live
            .get(&(shard, total))
            .is_some_and(|tx| tx.send(fault).is_ok())
    }

    /// The bot joins `n` more guilds: `GET /gateway/bot` recommends more shards once they
    /// need them (`SimConfig::guilds_per_shard`), a shard over `guild_cap` is closed with 4011
    /// at its next IDENTIFY, and traffic spreads over them.
    pub fn add_guilds(&self, n: u32) {
        self.shared.observe(|i| i.guilds += n);
    }

    /// The shard count `GET /gateway/bot` recommends now.
    pub fn recommended_shards(&self) -> u32 {
        self.shared.recommended_shards()
    }

    /// Reads what the double observed.
    pub fn observed<T>(&self, f: impl FnOnce(&Observed) -> T) -> T {
        f(&self.shared.lock().observed)
    }

    /// Waits until `f` returns `Some` over what the double observed.
    pub async fn wait_for<T>(&self, mut f: impl FnMut(&Observed) -> Option<T>) -> T {
        let mut changed = self.shared.changed.subscribe();
        loop {
            if let Some(out) = f(&self.shared.lock().observed) {
                return out;
            }
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Every globally limited REST request gets a global 429 for `retry_after` from now, as
    /// when a bot crosses Discord's global limit.
    pub fn rest_global_429(&self, retry_after: std::time::Duration) {
        self.shared.lock().rest_limits.pause_globally(retry_after);
    }

    /// Shards with a connection whose session is READY or RESUMED now, in id order (a shard
    /// of two sets connected at once is listed once).
    pub fn live_shards(&self) -> Vec<u32> {
        let mut live: Vec<u32> = self.shared.lock().live.keys().map(|(s, _)| *s).collect();
        live.sort_unstable();
        live.dedup();
        live
    }

    /// Each live connection's `(shard, total)`, sorted.
    pub fn live_sets(&self) -> Vec<(u32, u32)> {
        let mut live: Vec<(u32, u32)> = self.shared.lock().live.keys().copied().collect();
        live.sort_unstable();
        live
    }

    /// A receiver that wakes whenever what the double observed changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }
}

#[derive(Deserialize)]
struct GatewayQuery {
    v: Option<u8>,
    encoding: Option<String>,
    compress: Option<String>,
}
async fn upgrade_gateway(
    ws: WebSocketUpgrade,
    query: Query<GatewayQuery>,
    state: AxumState<Arc<Shared>>,
) -> Response {
    upgrade(ws, query, state, false)
}

async fn upgrade_resume(
    ws: WebSocketUpgrade,
    query: Query<GatewayQuery>,
    state: AxumState<Arc<Shared>>,
) -> Response {
    upgrade(ws, query, state, true)
}

fn upgrade(
    ws: WebSocketUpgrade,
    Query(query): Query<GatewayQuery>,
    AxumState(shared): AxumState<Arc<Shared>>,
    via_resume_url: bool,
) -> Response {
    if query.v != Some(10) || query.encoding.as_deref().is_some_and(|e| e != "json") {
        return (
            StatusCode::BAD_REQUEST,
            "this double speaks gateway v=10 encoding=json\n",
        )
            .into_response();
    }
    let compress = match query.compress.as_deref() {
        None => None,
        Some(value) => match Compress::named(value) {
            Some(compression) => Some(compression),
            None => {
                let refusal =
                    format!("unsupported compress={value} (zlib-stream or zstd-stream)\n");
                return (StatusCode::BAD_REQUEST, refusal).into_response();
            }
        },
    };
    ws.max_message_size(1 << 20)
        .on_upgrade(move |socket| connection::serve(socket, shared, compress, via_resume_url))
}
