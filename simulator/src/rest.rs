//! The double's REST API: `GET /gateway/bot` and the routes the handler examples call
//! (create message and uploads, interaction callback, edit original, get member), each
//! recorded in `Observed` with the status it was answered.
//!
//! Owns the answers' shapes, the bot-token check, and which bucket each route is in; the
//! limits themselves are `rest_limits`', the gateway `connection`'s.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::events;
use crate::observed::RestCall;
use crate::rest_limits::Verdict;
use crate::shared::Shared;
use tokio::time::Instant;

pub(crate) async fn gateway_bot(
    AxumState(shared): AxumState<Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    let expected = format!("Bot {}", shared.config.token);
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        let body = serde_json::json!({"message": "401: Unauthorized", "code": 0});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let remaining = shared.lock().identifies_remaining;
    let body = serde_json::json!({
        "url": shared.gateway_url(),
        "shards": shared.recommended_shards(),
        "session_start_limit": {
            "total": shared.config.session_start_limit,
            "remaining": remaining,
            "reset_after": 86_400_000u64,
            "max_concurrency": shared.config.max_concurrency,
        }
    });
    axum::Json(body).into_response()
}

/// `GET /users/@me`: the bot's user, whose id is its application's.
pub(crate) async fn current_user(
    AxumState(shared): AxumState<Arc<Shared>>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&shared, &headers) {
        let body = serde_json::json!({"message": "401: Unauthorized", "code": 0});
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let body = serde_json::json!({
        "id": events::APPLICATION_ID.to_string(),
        "username": "shardhook-sim",
        "discriminator": "0",
        "bot": true,
        "global_name": null,
        "avatar": null,
    });
    axum::Json(body).into_response()
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let expected = format!("Bot {}", shared.config.token);
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

/// One REST request as it arrived.
struct Call<'a> {
    method: &'static str,
    uri: &'a Uri,
    headers: &'a HeaderMap,
    body: &'a Bytes,
}

/// Which bucket a route is in, and its rules.
struct Rules<'a> {
    /// The bucket's name (Discord sends an opaque hash; the double, the route's name).
    bucket: &'static str,
    /// The major parameter's value (channel, guild, or webhook id and token).
    major: &'a str,
    /// Interaction callbacks and webhook-token routes: not under the global limit, and
    /// authorised by their token, not the bot's.
    webhook: bool,
}

/// Serves `call` under `rules`: the bot token checked (unless a webhook route), then the
/// rate limits, then `answer`; records the call with the status answered.
fn serve(shared: &Shared, call: Call, rules: Rules, answer: impl FnOnce() -> Response) -> Response {
    let ok = rules.webhook || authorized(shared, call.headers);
    let mut at = Instant::now();
    let response = if !ok {
        let body = serde_json::json!({"message": "401: Unauthorized", "code": 0});
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    } else {
        let config = &shared.config;
        let verdict = {
            // The time the limits judged by, read under their lock: the record's `at` orders
            // the calls as the limits saw them.
            let mut inner = shared.lock();
            at = Instant::now();
            inner.rest_limits.check(
                rules.bucket,
                rules.major,
                rules.webhook,
                config.rest_route_limit,
                config.rest_route_window,
                config.rest_global_limit,
                at,
            )
        };
        let (mut response, headers) = match verdict {
            Verdict::Allowed(headers) => (answer(), headers),
            Verdict::Limited {
                headers,
                retry_after,
                global,
            } => {
                let body = serde_json::json!({
                    "message": "You are being rate limited.",
                    "retry_after": (retry_after.as_secs_f64() * 1000.0).ceil() / 1000.0,
                    "global": global,
                });
                let response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
                (response, headers)
            }
        };
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    };
    record(shared, &call, ok, response.status().as_u16(), at);
    response
}

fn record(shared: &Shared, call: &Call, authorized: bool, status: u16, at: Instant) {
    let header = |name: &str| {
        call.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let path = call.uri.path().trim_start_matches("/api/v10").to_owned();
    let body = serde_json::from_slice(call.body).unwrap_or(serde_json::Value::Null);
    let record = RestCall {
        method: call.method.to_owned(),
        path,
        authorized,
        body,
        raw: call.body.clone(),
        content_type: header("content-type"),
        content_length: header("content-length"),
        audit_log_reason: header("x-audit-log-reason"),
        at,
        status,
    };
    shared.observe(|i| i.observed.rest_calls.push(record));
}

/// `POST /channels/{id}/messages`: answers a message object like Discord's. A multipart
/// upload is answered with its files as attachments.
pub(crate) async fn create_message(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        method: "POST",
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let rules = Rules {
        bucket: "create-message",
        major: &channel_id,
        webhook: false,
    };
    serve(&shared, call, rules, || {
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
    })
}

/// `POST /interactions/{id}/{token}/callback`: 204 like Discord's.
pub(crate) async fn interaction_callback(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    Path((id, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        method: "POST",
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let major = format!("{id}/{token}");
    let rules = Rules {
        bucket: "interaction-callback",
        major: &major,
        webhook: true,
    };
    serve(&shared, call, rules, || {
        StatusCode::NO_CONTENT.into_response()
    })
}

/// `PATCH /webhooks/{application_id}/{token}/messages/@original`.
pub(crate) async fn edit_original(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    Path((application_id, token)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call {
        method: "PATCH",
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let major = format!("{application_id}/{token}");
    let rules = Rules {
        bucket: "edit-original",
        major: &major,
        webhook: true,
    };
    serve(&shared, call, rules, || {
        let content: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        axum::Json(serde_json::json!({"id": "1", "content": content["content"]})).into_response()
    })
}

/// `GET /guilds/{guild_id}/members/{user_id}`: a member of a guild the bot is in; 403 Missing
/// Access (code 50001) for any other guild, as Discord answers.
pub(crate) async fn get_member(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    Path((guild_id, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let body = Bytes::new();
    let call = Call {
        method: "GET",
        uri: &uri,
        headers: &headers,
        body: &body,
    };
    let rules = Rules {
        bucket: "get-member",
        major: &guild_id,
        webhook: false,
    };
    let guilds = u64::from(shared.config.guilds);
    let known = guild_id
        .parse::<u64>()
        .is_ok_and(|g| (0..guilds).any(|n| events::guild_id(n) == g));
    serve(&shared, call, rules, || {
        if !known {
            let body = serde_json::json!({"message": "Missing Access", "code": 50001});
            return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
        }
        let member = serde_json::json!({
            "user": {"id": user_id, "username": format!("user-{user_id}")},
            "roles": [],
            "joined_at": "2026-01-01T00:00:00+00:00",
            "deaf": false,
            "mute": false,
        });
        axum::Json(member).into_response()
    })
}
