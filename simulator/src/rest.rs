//! The double's REST API: `GET /gateway/bot` and the routes the handler examples call
//! (create message, interaction callback, edit original), each recorded in `Observed`.
//!
//! Owns the answers' shapes and the bot-token check; the gateway is `connection`'s.

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::events;
use crate::observed::RestCall;
use crate::shared::Shared;

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
pub(crate) async fn create_message(
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
pub(crate) async fn interaction_callback(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    record_rest(&shared, "POST", &uri, true, &body);
    StatusCode::NO_CONTENT.into_response()
}

/// `PATCH /webhooks/{application_id}/{token}/messages/@original`.
pub(crate) async fn edit_original(
    AxumState(shared): AxumState<Arc<Shared>>,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    record_rest(&shared, "PATCH", &uri, true, &body);
    let content: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    axum::Json(serde_json::json!({"id": "1", "content": content["content"]})).into_response()
}
