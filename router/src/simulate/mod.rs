//! A local Discord double: REST `GET /gateway/bot` and a v10 JSON gateway with `zlib-stream` or
//! `zstd-stream`, enforcing Discord's rules, with fault knobs and a ledger of every event it
//! sent.
//!
//! Tests, `shardhook demo`, benchmarks and users (`shardhook simulate`, next to `wrangler dev`)
//! share it. It owns its own sessions, the identify and send-rate rules it enforces, and what
//! it observed; it shares no code path with the router's shard, so a router mistake shows up
//! as a rule violation here instead of agreeing with itself.

mod connection;

#[cfg(test)]
pub(crate) use connection::zstd_flushed;
pub mod events;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Query, State as AxumState};
use axum::http::Uri;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::Compression;

/// How the double behaves. `Default` is a small, Discord-like bot.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The bot token it accepts (`Authorization: Bot ...` and IDENTIFY/RESUME).
    pub token: String,
    /// The shard count `GET /gateway/bot` recommends; IDENTIFY with fewer gets close 4011.
    pub shards: u32,
    /// Guilds in all, spread over shards by Discord's rule `(guild_id >> 22) % total`.
    pub guilds: u32,
    /// Traffic dispatches per second on each identified connection (0 for none).
    pub rate: f64,
    /// Stop traffic on a shard after this many traffic events across its sessions.
    pub events_per_shard: Option<u64>,
    /// `session_start_limit.max_concurrency`.
    pub max_concurrency: u32,
    /// `session_start_limit.total` and the starting `remaining`.
    pub session_start_limit: u32,
    /// The heartbeat interval sent in HELLO.
    pub heartbeat_interval: Duration,
    /// How long a disconnected session can still be resumed.
    pub resume_window: Duration,
    /// Intents refused with close 4014 (privileged intents not enabled for the bot).
    pub disallowed_intents: u64,
    /// Every n-th MESSAGE_CREATE has content `!ping` (0 for never).
    pub ping_every: u64,
    /// The first this many connections never get HELLO: a gateway that accepts the
    /// WebSocket, then stalls.
    pub withhold_hello: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            token: DEFAULT_TOKEN.to_owned(),
            shards: 1,
            guilds: 2,
            rate: 10.0,
            events_per_shard: None,
            max_concurrency: 1,
            session_start_limit: 1000,
            heartbeat_interval: Duration::from_millis(41_250),
            resume_window: Duration::from_secs(120),
            disallowed_intents: 0,
            ping_every: 5,
            withhold_hello: 0,
        }
    }
}

/// The token `shardhook simulate` accepts unless told otherwise.
pub const DEFAULT_TOKEN: &str = "shardhook-simulated-token";

/// Discord's identify spacing per bucket.
pub const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5);
/// Slack allowed on the identify spacing for scheduling jitter between sender and receiver.
pub const IDENTIFY_TOLERANCE: Duration = Duration::from_millis(100);
/// Payloads a client may send per connection per window.
pub const SEND_LIMIT: usize = 120;
pub const SEND_WINDOW: Duration = Duration::from_secs(60);
/// Largest payload a client may send.
pub const MAX_CLIENT_PAYLOAD: usize = 4096;
/// Events kept per session for replay on RESUME; older ones make a resume fail like Discord's.
const REPLAY_BUFFER: usize = 20_000;

/// A fault to inject on a shard's current connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Stop answering heartbeats (until the connection is replaced).
    StopHeartbeatAcks,
    /// Send op 7 RECONNECT.
    Reconnect,
    /// Send op 9; `resumable: false` also invalidates the session.
    InvalidateSession { resumable: bool },
    /// Close with this code (4007 and 4009 also invalidate the session).
    Close(u16),
    /// Split the next message's compressed bytes across this many WebSocket messages
    /// (`zlib-stream` only: Discord sends each `zstd-stream` message whole, so there it is a
    /// no-op).
    SplitNext(usize),
    /// Send a binary frame that does not inflate.
    CorruptFrame,
    /// Send a message that is not JSON.
    InvalidJson,
    /// Send a dispatch (ledgered, `t` = `OVERSIZE_TEST`) about this many bytes long.
    Oversize(usize),
    /// Send a dispatch (ledgered) with this name and `d`, e.g. an INTERACTION_CREATE.
    Dispatch { name: String, d: String },
}

/// One event the double created: `(shard, session, seq)` identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerEntry {
    pub shard: u32,
    pub session: String,
    pub seq: u64,
    pub event: String,
}

/// An IDENTIFY the double received.
#[derive(Debug, Clone)]
pub struct IdentifyRecord {
    pub shard: u32,
    pub at: Instant,
    /// False when it broke the bucket's 5 s rule (answered with op 9).
    pub accepted: bool,
}

/// A RESUME the double received.
#[derive(Debug, Clone)]
pub struct ResumeRecord {
    pub shard: u32,
    pub session: String,
    pub seq: u64,
    /// Whether the client connected to `resume_gateway_url` as Discord requires.
    pub via_resume_url: bool,
    pub accepted: bool,
}

/// Everything the double saw and did, for tests to assert on.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every event created, in creation order (replays are not new entries).
    pub ledger: Vec<LedgerEntry>,
    /// Sessions invalidated: their unreceived events are lost as they would be on Discord.
    pub invalidated: HashSet<String>,
    pub identifies: Vec<IdentifyRecord>,
    pub resumes: Vec<ResumeRecord>,
    /// Gateway commands (op 3, 4, 8, 31, ...) received, by shard.
    pub commands: Vec<(u32, serde_json::Value)>,
    /// Rules the client broke, in words. A correct router leaves this empty.
    pub violations: Vec<String>,
    /// Connections accepted on the gateway.
    pub connections: u64,
    /// The `compress` each accepted connection asked for, in order (`None`: uncompressed).
    pub compress: Vec<Option<String>>,
    /// Events sent again on RESUME.
    pub replayed: u64,
    /// REST calls a handler or the router made (create message, interaction callbacks...).
    pub rest_calls: Vec<RestCall>,
}

/// A REST call the double served.
#[derive(Debug, Clone)]
pub struct RestCall {
    pub method: String,
    /// The path below the API base, e.g. `/channels/123/messages`.
    pub path: String,
    /// Whether `Authorization: Bot <token>` was right (interaction callbacks need none).
    pub authorized: bool,
    pub body: serde_json::Value,
}

/// One simulated session.
struct SimSession {
    shard: u32,
    total: u32,
    /// Sent payloads, oldest first, for replay; `first_seq` is the seq of `events[0]`.
    events: std::collections::VecDeque<Arc<str>>,
    first_seq: u64,
    seq: u64,
    invalidated: bool,
    /// When the last connection of this session ended; `None` while connected.
    disconnected_at: Option<Instant>,
}

struct Inner {
    observed: Observed,
    sessions: HashMap<String, SimSession>,
    /// Last accepted IDENTIFY per bucket.
    buckets: HashMap<u32, Instant>,
    identifies_remaining: u32,
    /// The control channel of each shard's current connection.
    live: HashMap<u32, mpsc::UnboundedSender<Fault>>,
    /// Traffic events created per shard, against `events_per_shard`.
    traffic: HashMap<u32, u64>,
    next_session: u64,
    next_message: u64,
}

struct Shared {
    config: SimConfig,
    addr: SocketAddr,
    inner: Mutex<Inner>,
    /// Bumped on every change to `Observed`, so tests await conditions instead of sleeping.
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes what tests observe, then wakes whoever waits on it.
    fn observe<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
        out
    }

    fn gateway_url(&self) -> String {
        format!("ws://{}/gateway", self.addr)
    }

    fn resume_url(&self) -> String {
        format!("ws://{}/resume", self.addr)
    }
}

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
                next_session: 1,
                next_message: 1,
            }),
            config,
            addr,
            changed: watch::channel(0).0,
        });
        let app = Router::new()
            .route("/api/v10/gateway/bot", get(gateway_bot))
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

    /// Injects a fault on `shard`'s current connection; false if it has none.
    pub fn inject(&self, shard: u32, fault: Fault) -> bool {
        let inner = self.shared.lock();
        inner
            .live
            .get(&shard)
            .is_some_and(|tx| tx.send(fault).is_ok())
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

async fn gateway_bot(AxumState(shared): AxumState<Arc<Shared>>, headers: HeaderMap) -> Response {
    let expected = format!("Bot {}", shared.config.token);
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        let body = serde_json::json!({"message": "401: Unauthorized", "code": 0});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let remaining = shared.lock().identifies_remaining;
    let body = serde_json::json!({
        "url": shared.gateway_url(),
        "shards": shared.config.shards,
        "session_start_limit": {
            "total": shared.config.session_start_limit,
            "remaining": remaining,
            "reset_after": 86_400_000u64,
            "max_concurrency": shared.config.max_concurrency,
        }
    });
    axum::Json(body).into_response()
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let expected = format!("Bot {}", shared.config.token);
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

/// Records a REST call; `None` body means it was not JSON.
fn record_rest(shared: &Shared, method: &str, uri: &Uri, authorized: bool, body: &[u8]) {
    let path = uri.path().trim_start_matches("/api/v10").to_owned();
    let body = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    shared.observe(|i| {
        i.observed.rest_calls.push(RestCall {
            method: method.to_owned(),
            path,
            authorized,
            body,
        })
    });
}

/// `POST /channels/{id}/messages`: answers a message object like Discord's.
async fn create_message(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    axum::extract::Path(channel_id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let ok = authorized(&shared, &headers);
    record_rest(&shared, "POST", &uri, ok, &body);
    if !ok {
        let body = serde_json::json!({"message": "401: Unauthorized", "code": 0});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let content: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let n = shared.observe(|i| {
        i.next_message += 1;
        i.next_message
    });
    let message = serde_json::json!({
        "id": events::snowflake(n).to_string(),
        "channel_id": channel_id,
        "content": content["content"],
        "author": {"id": events::APPLICATION_ID.to_string(), "username": "shardhook-sim", "bot": true},
        "type": 0,
    });
    axum::Json(message).into_response()
}

/// `POST /interactions/{id}/{token}/callback`: 204 like Discord's.
async fn interaction_callback(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    record_rest(&shared, "POST", &uri, true, &body);
    StatusCode::NO_CONTENT.into_response()
}

/// `PATCH /webhooks/{application_id}/{token}/messages/@original`.
async fn edit_original(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    record_rest(&shared, "PATCH", &uri, true, &body);
    let content: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(serde_json::json!({"id": "1", "content": content["content"]})).into_response()
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
        Some(value) => match Compression::named(value) {
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
