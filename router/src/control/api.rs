//! The control API: handlers send gateway commands back through the router, and operators
//! read status, health and metrics.
//!
//! Owns the HTTP surface (`POST /v1/gateway/commands`, `/healthz`, `/readyz`, `/v1/shards`,
//! `/metrics`, and `ANY /api/v10/{path}` when the REST proxy is on, or those alone through
//! `rest_app` when it has `rest.listen`), authenticating commands
//! and REST requests with the same Standard Webhooks keys as outgoing
//! events (stale timestamps refused, and replayed ids through `replay`), choosing the shard
//! (`(guild_id >> 22) % shard_count`), and checking a command before it is queued. Pacing is
//! the shard's limiter's job; `app` is built apart from serving so tests can drive it.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::delivery::signer::{unix_now, Signer, TOLERANCE_SECS};
use crate::delivery::DeliveryHandle;
use crate::gateway::handle::{CommandRefused, ShardHandle, ShardState};
use crate::gateway::payload::op;
use crate::rest::{BodyError, ProxyRequest, RestProxy};
use crate::state::request_ids::{Claim, SpentIds};
use crate::store::{Alone, Owners};

/// Discord's limit on a payload a client sends.
pub const MAX_COMMAND_BYTES: usize = 4096;

/// The largest command body: Discord's payload limit, with room for the envelope's `guild_id`
/// or `shard_id` and whitespace. Larger bodies get 413 before their signature is checked.
pub const MAX_BODY_BYTES: usize = 8 * 1024;

/// The longest `webhook-id` a command may carry (the router's own are about 30 bytes).
const MAX_ID_BYTES: usize = 256;

/// Opcodes a client may send as commands, with their names for error messages. IDENTIFY,
/// RESUME and HEARTBEAT are the router's own business.
const COMMANDS: [(u8, &str); 4] = [
    (op::PRESENCE_UPDATE, "presence update"),
    (op::VOICE_STATE_UPDATE, "voice state update"),
    (op::REQUEST_GUILD_MEMBERS, "request guild members"),
    (op::REQUEST_SOUNDBOARD_SOUNDS, "request soundboard sounds"),
];

/// What the control API reads and where it sends commands.
pub struct ControlState {
    shards: BTreeMap<u32, ShardHandle>,
    shard_count: u32,
    signer: Signer,
    delivery: DeliveryHandle,
    /// `webhook-id`s of accepted commands, to refuse replays.
    ids: Arc<dyn SpentIds>,
    /// Those of proxied REST requests: a set with a cap of its own, so a burst of REST calls
    /// leaves room for commands.
    rest_ids: Arc<dyn SpentIds>,
    /// The REST proxy, when `rest.enabled`.
    rest: Option<Arc<RestProxy>>,
    /// Who runs which shard (the store's): commands for another router's shards get 421.
    owners: Arc<dyn Owners>,
    /// Whether the proxy has a listener of its own (`rest.listen`, served by `rest_app`)
    /// rather than the control API's.
    rest_apart: bool,
}

impl ControlState {
    /// What the API serves: `shards` of a bot with `shard_count`, commands verified with
    /// `signer` and their ids kept in `ids`, delivery's state read from `delivery`.
    pub fn new(
        shards: &[ShardHandle],
        shard_count: u32,
        signer: Signer,
        ids: Arc<dyn SpentIds>,
        delivery: DeliveryHandle,
    ) -> ControlState {
        ControlState {
            shards: shards.iter().map(|s| (s.id(), s.clone())).collect(),
            shard_count,
            signer,
            delivery,
            rest_ids: ids.clone(),
            ids,
            rest: None,
            owners: Arc::new(Alone),
            rest_apart: false,
        }
    }

    /// Keeps proxied REST requests' ids in `ids`, apart from the commands'.
    pub(crate) fn with_rest_ids(mut self, ids: Arc<dyn SpentIds>) -> ControlState {
        self.rest_ids = ids;
        self
    }

    /// Only the shards `owners` says this router runs take commands and count for
    /// readiness; `/v1/shards` says who runs each (a router alone: itself, named by no one).
    pub(crate) fn with_owners(mut self, owners: Arc<dyn Owners>) -> ControlState {
        self.owners = owners;
        self
    }

    /// Whether this process runs `shard` now.
    fn runs(&self, shard: u32) -> bool {
        self.shards.contains_key(&shard) && self.owners.holds(shard)
    }

    /// Also serves `ANY /api/v10/{path}` through `proxy`, verified with the same keys and
    /// spent ids as commands.
    pub fn with_rest(mut self, proxy: RestProxy) -> ControlState {
        self.rest = Some(Arc::new(proxy));
        self
    }

    /// Serves the REST proxy through `rest_app` alone, on a listener of its own
    /// (`rest.listen`); `app` leaves it out.
    pub fn with_rest_apart(mut self, proxy: RestProxy) -> ControlState {
        self.rest_apart = true;
        self.with_rest(proxy)
    }
}

/// The control API's routes, with the REST proxy's unless it has a listener of its own.
pub fn app(state: Arc<ControlState>) -> axum::Router {
    let router = if state.rest_apart {
        axum::Router::new()
    } else {
        rest_routes()
    };
    router
        // The limit is checked as the body is read, before the handler (and so any HMAC) runs.
        .route(
            "/v1/gateway/commands",
            post(command).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
        )
        .route("/v1/shards", get(shards))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// What a probe past `control.max_connections` is served, in one of the reserved slots
/// (`control.reserved_connections`): health, readiness and metrics, so probes and scrapes are
/// answered under a flood; anything else it sends on that connection is told to come back
/// (503, `Retry-After: 1`).
pub fn probe_app(state: Arc<ControlState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                Json(json!({
                    "message": "every connection slot of the control API is taken (control.max_connections); try again",
                    "code": 0,
                })),
            )
        })
        .with_state(state)
}

/// The REST proxy's routes alone, for `rest.listen` (nothing when the proxy is off).
pub fn rest_app(state: Arc<ControlState>) -> axum::Router {
    rest_routes().with_state(state)
}

fn rest_routes() -> axum::Router<Arc<ControlState>> {
    // The body is read by the handler itself, within rest.max_body, as it arrives; with the
    // proxy off the handler answers 404.
    axum::Router::new().route("/api/v10/{*path}", any(rest))
}

fn refuse(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(json!({ "error": error.into() }))).into_response()
}

/// The REST proxy's own refusals, in Discord's error shape (`message`, `code` 0), so a client
/// library shows the router's reason rather than a generic error.
fn refuse_as_discord(status: StatusCode, error: impl Into<String>) -> Response {
    (status, Json(json!({ "message": error.into(), "code": 0 }))).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandRequest<'a> {
    #[serde(default)]
    guild_id: Option<Snowflake>,
    #[serde(default)]
    shard_id: Option<ShardTarget>,
    op: u8,
    #[serde(borrow)]
    d: &'a RawValue,
}

/// A snowflake as Discord writes it (a string) or as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Snowflake {
    Text(String),
    Number(u64),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ShardTarget {
    One(u32),
    All(String),
}

async fn command(
    State(state): State<Arc<ControlState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, expires) = match authenticate(&state, &headers, &[&body]).await {
        Ok(claimed) => claimed,
        Err(refusal) => return refusal,
    };
    let (response, accepted) = execute(&state, &body).await;
    settle(&state.ids, &id, expires, accepted).await;
    response
}

/// Verifies a signed request's headers over `signed` (the parts of its body, joined) and
/// claims its `webhook-id`: the id and when it expires, or the refusal to answer.
#[allow(clippy::result_large_err)]
async fn authenticate(
    state: &ControlState,
    headers: &HeaderMap,
    signed: &[&[u8]],
) -> Result<(String, u64), Response> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Err(e) = state.signer.verify_parts(
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        signed,
        unix_now(),
    ) {
        return Err(refuse(StatusCode::UNAUTHORIZED, e.to_string()));
    }
    claim(&state.ids, headers)
        .await
        .map_err(|(status, error)| refuse(status, error))
}

/// Claims the `webhook-id` of a request whose signature was verified: the id and when it
/// expires, or the refusal to answer (too long, already used, or no room to remember it).
#[allow(clippy::result_large_err)]
async fn claim(
    ids: &Arc<dyn SpentIds>,
    headers: &HeaderMap,
) -> Result<(String, u64), (StatusCode, String)> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let id = header("webhook-id").unwrap_or_default();
    let timestamp = header("webhook-timestamp").unwrap_or_default();
    if id.len() > MAX_ID_BYTES {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("webhook-id is longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    // A signature is good for TOLERANCE_SECS either side of its timestamp: after that the
    // id need not be remembered.
    let expires = timestamp.parse::<u64>().unwrap_or_default() + TOLERANCE_SECS;
    match ids.claim(id, expires, unix_now()).await {
        Claim::Claimed => Ok((id.to_owned(), expires)),
        Claim::Seen => Err((
            StatusCode::UNAUTHORIZED,
            format!("webhook-id {id} was already used"),
        )),
        Claim::Full => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in the last minutes to remember their ids; try again later"
                .to_owned(),
        )),
        Claim::Unavailable(why) => {
            tracing::warn!(webhook_id = %id, "could not check a request id against the spent ones: {why}");
            Err((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot check webhook-id {id} against the spent ones now ({why}); nothing was done, try again"),
            ))
        }
    }
}

/// Spends a claimed id if its request was acted on, else releases it for another try.
async fn settle(ids: &Arc<dyn SpentIds>, id: &str, expires: u64, acted_on: bool) {
    if !acted_on {
        ids.release(id).await;
        return;
    }
    if let Err(e) = ids.clone().spend(id.to_owned(), expires).await {
        // The request is on its way: say so, and that its id may be taken again after a
        // restart.
        tracing::error!(webhook_id = %id, "failed to record a spent request id; it could be replayed after a restart: {e}");
    }
}

/// `ANY /api/v10/{path}`: a signed request for Discord's REST API. The signature covers
/// `{METHOD} {path and query}\n{body}` as the body of a Standard Webhooks signature. The
/// headers are checked first; the body is then fed to the signature check as it arrives (held
/// by the proxy, in a file when large) and nothing is sent before the whole of it is verified.
async fn rest(
    State(state): State<Arc<ControlState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(proxy) = state.rest.clone() else {
        return refuse_as_discord(StatusCode::NOT_FOUND, "the REST proxy is not enabled");
    };
    let too_large = || {
        let error = BodyError::TooLarge(proxy.max_body());
        refuse_as_discord(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > proxy.max_body() as u64) {
        return too_large();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(secret) = proxy.shared_secret() {
        // `rest.auth = "shared-secret"`: the `Authorization` header first, as discordeno
        // (`<secret>`) and discord.js (`Bot <secret>`) send it; no signature, no request id.
        let given = header("authorization").unwrap_or_default();
        if !secret.matches(given.strip_prefix("Bot ").unwrap_or(given)) {
            return refuse_as_discord(
                StatusCode::UNAUTHORIZED,
                "missing or wrong Authorization: this REST proxy takes its shared secret (rest.auth = \"shared-secret\")",
            );
        }
        let body = match proxy.receive(body, |_| {}).await {
            Ok(body) => body,
            Err(e) => return body_refused(e, proxy.max_body()),
        };
        let request = ProxyRequest::new(method, &uri, headers, body);
        return proxy.forward(request).await.0;
    }
    let mut verifier = match state.signer.verifier(
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        unix_now(),
    ) {
        Ok(verifier) => verifier,
        Err(e) => return refuse_as_discord(StatusCode::UNAUTHORIZED, e.to_string()),
    };
    let target = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    verifier.update(format!("{method} {target}\n").as_bytes());
    let body = match proxy.receive(body, |part| verifier.update(part)).await {
        Ok(body) => body,
        Err(e) => return body_refused(e, proxy.max_body()),
    };
    if let Err(e) = verifier.finish() {
        return refuse_as_discord(StatusCode::UNAUTHORIZED, e.to_string());
    }
    let (id, expires) = match claim(&state.rest_ids, &headers).await {
        Ok(claimed) => claimed,
        Err((status, error)) => return refuse_as_discord(status, error),
    };
    let request = ProxyRequest::new(method, &uri, headers, body);
    let (response, reached) = proxy.forward(request).await;
    settle(&state.rest_ids, &id, expires, reached).await;
    response
}

/// The answer to a REST body that could not be received: 413 past `max_body`, 400 when it
/// broke off, 500 (logged) when it could not be kept.
fn body_refused(e: BodyError, max_body: usize) -> Response {
    match e {
        BodyError::TooLarge(_) => refuse_as_discord(
            StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TooLarge(max_body).to_string(),
        ),
        e @ BodyError::BrokeOff(_) => refuse_as_discord(StatusCode::BAD_REQUEST, e.to_string()),
        e => {
            tracing::error!("a REST request was refused: {e}");
            refuse_as_discord(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// What a command body asks: the payload to send, and to which shards.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Command {
    /// `{"op":..,"d":..}`, as the shard sends it.
    pub payload: String,
    /// The shards it goes to; `None` for every shard this process runs (presence only).
    pub shards: Option<Vec<u32>>,
}

/// Reads and checks a command body (op, size, target) for a bot of `shard_count` shards, or
/// says in words what is wrong. The decision, apart from queueing it.
pub(crate) fn parse_command(body: &[u8], shard_count: u32) -> Result<Command, String> {
    let request: CommandRequest =
        serde_json::from_slice(body).map_err(|e| format!("not a command: {e}"))?;
    let Some((_, name)) = COMMANDS.iter().find(|(code, _)| *code == request.op) else {
        let allowed: Vec<String> = COMMANDS.iter().map(|(c, n)| format!("{c} ({n})")).collect();
        return Err(format!(
            "op {} is not a command a client may send; allowed: {}",
            request.op,
            allowed.join(", ")
        ));
    };
    let payload = format!(r#"{{"op":{},"d":{}}}"#, request.op, request.d.get());
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "the {name} payload is {} bytes; Discord allows {MAX_COMMAND_BYTES}",
            payload.len()
        ));
    }
    let shards = match (&request.guild_id, &request.shard_id) {
        (Some(guild), None) => {
            let guild = match guild {
                Snowflake::Number(n) => *n,
                Snowflake::Text(t) => t
                    .parse::<u64>()
                    .map_err(|_| format!("guild_id `{t}` is not a snowflake"))?,
            };
            Some(vec![((guild >> 22) % shard_count.max(1) as u64) as u32])
        }
        (None, Some(ShardTarget::One(shard))) => Some(vec![*shard]),
        (None, Some(ShardTarget::All(all))) if all == "all" => {
            if request.op != op::PRESENCE_UPDATE {
                return Err("shard_id \"all\" is only for presence updates (op 3)".to_owned());
            }
            None
        }
        _ => {
            return Err(
                "give exactly one of guild_id or shard_id (a number, or \"all\" for presence)"
                    .to_owned(),
            )
        }
    };
    Ok(Command { payload, shards })
}

/// Checks a verified command and queues it on its shards: the answer, and whether any shard
/// took it (then its id is spent).
async fn execute(state: &ControlState, body: &[u8]) -> (Response, bool) {
    let refuse = |status, error: &dyn std::fmt::Display| (refuse(status, error.to_string()), false);
    let command = match parse_command(body, state.shard_count) {
        Ok(command) => command,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e),
    };
    let payload = command.payload;
    let targets: Vec<u32> = match command.shards {
        Some(shards) => shards,
        None => state
            .shards
            .keys()
            .copied()
            .filter(|s| state.runs(*s))
            .collect(),
    };
    // A shard another router of the cluster holds: its address, and nothing queued here.
    if let Some(shard) = targets.iter().copied().find(|s| !state.owners.holds(*s)) {
        let owner = state.owners.owners(&[shard]).await.remove(&shard).flatten();
        let body = json!({
            "error": format!("shard {shard} is run by another router of the cluster; send the command there"),
            "shard_id": shard,
            "owner": owner.as_ref().map(|o| o.node.clone()),
            "control": owner.and_then(|o| o.control),
        });
        return (
            (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response(),
            false,
        );
    }
    let mut queued = Vec::new();
    let mut refused = None;
    for shard in &targets {
        let Some(handle) = state.shards.get(shard) else {
            return refuse(
                StatusCode::NOT_FOUND,
                &format!("shard {shard} is not run by this process"),
            );
        };
        match handle.try_send(payload.clone()) {
            Ok(()) => queued.push(*shard),
            Err(e) => refused = Some((*shard, e)),
        }
    }
    let accepted = !queued.is_empty();
    let response = match refused {
        None => (StatusCode::ACCEPTED, Json(json!({ "queued": queued }))).into_response(),
        Some((shard, CommandRefused::RateLimited(wait))) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let body = json!({ "error": format!("shard {shard}'s send budget is spent"), "queued": queued, "retry_after": secs });
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, secs.to_string())],
                Json(body),
            )
                .into_response()
        }
        Some((shard, e)) => {
            let body = json!({ "error": format!("shard {shard}: {e}"), "queued": queued });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    };
    (response, accepted)
}

async fn ready(State(state): State<Arc<ControlState>>) -> Response {
    let not_ready: Vec<u32> = state
        .shards
        .values()
        .filter(|s| state.runs(s.id()) && s.status().borrow().state != ShardState::Active)
        .map(|s| s.id())
        .collect();
    if not_ready.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "not_ready": not_ready })),
        )
            .into_response()
    }
}

async fn shards(State(state): State<Arc<ControlState>>) -> Response {
    // Who runs each shard, read now (in a cluster, from Redis: not kept fresh at every
    // lease renewal).
    let ids: Vec<u32> = state.shards.keys().copied().collect();
    let owners = state.owners.owners(&ids).await;
    let list: Vec<_> = state
        .shards
        .values()
        .map(|shard| {
            let s = shard.status().borrow().clone();
            let state_name = match s.state {
                ShardState::Identifying => "identifying".to_owned(),
                ShardState::Resuming => "resuming".to_owned(),
                ShardState::Active => "active".to_owned(),
                ShardState::Disconnected { .. } => "disconnected".to_owned(),
                ShardState::Standby => "standby".to_owned(),
                ShardState::FatallyClosed { code } => format!("fatally_closed ({code})"),
            };
            let owner = owners.get(&shard.id()).cloned().flatten();
            json!({
                "shard_id": shard.id(),
                "state": state_name,
                "session_id": s.session_id.as_deref(),
                "session_age_secs": s.session_started.map(|t| t.elapsed().as_secs()),
                "last_seq": shard.last_seq(),
                "heartbeat_latency_ms": s.latency.map(|l| l.as_secs_f64() * 1000.0),
                "endpoint": state.delivery.route(shard.id()),
                "queue_depth": state.delivery.queue_depth(shard.id()),
                "events_received": shard.received(),
                "resumes": s.resumes,
                "reconnects": s.reconnects,
                "command_budget": shard.command_budget(),
                "owner": owner.as_ref().map(|o| o.node.clone()),
                "owner_control": owner.as_ref().and_then(|o| o.control.clone()),
            })
        })
        .collect();
    Json(list).into_response()
}

async fn metrics(State(state): State<Arc<ControlState>>) -> Response {
    let shards: Vec<ShardHandle> = state.shards.values().cloned().collect();
    let text = crate::control::metrics::render(&shards, &state.delivery, state.rest.as_deref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
