//! Discord's REST API, as far as start-up needs it: `GET /gateway/bot`, and `GET /users/@me`
//! for the application id Carbon bodies carry.
//!
//! Owns the request and the shape of its answer. It never logs or returns the token; errors
//! carry the URL and status only.

use serde::Deserialize;

use crate::secret::Token;

/// The answer of `GET /gateway/bot`.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayBot {
    /// The gateway URL to connect to.
    pub url: String,
    /// Discord's recommended shard count.
    pub shards: u32,
    pub session_start_limit: SessionStartLimit,
}

/// How many IDENTIFYs the bot has left today and how fast it may spend them.
#[derive(Debug, Clone, Deserialize)]
pub struct SessionStartLimit {
    pub total: u32,
    pub remaining: u32,
    /// Milliseconds until `remaining` resets to `total`.
    pub reset_after: u64,
    pub max_concurrency: u32,
}

/// Why `GET /gateway/bot` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayBotError {
    #[error("GET {url} failed: {source}")]
    Request { url: String, source: reqwest::Error },
    #[error("GET {url}: Discord refused the bot token (401 Unauthorized)")]
    Unauthorized { url: String },
    #[error("GET {url} answered {status}: {body}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("GET {url} answered with a body that is not the expected JSON: {source}")]
    Body {
        url: String,
        source: serde_json::Error,
    },
}

/// Asks Discord where the gateway is and how to shard.
pub async fn gateway_bot(
    client: &reqwest::Client,
    api_url: &str,
    token: &Token,
) -> Result<GatewayBot, GatewayBotError> {
    get(client, api_url, "gateway/bot", token).await
}

/// The bot's user id, which is its application's id (`GET /users/@me`).
pub async fn application_id(
    client: &reqwest::Client,
    api_url: &str,
    token: &Token,
) -> Result<String, GatewayBotError> {
    #[derive(Deserialize)]
    struct User {
        id: String,
    }
    let user: User = get(client, api_url, "users/@me", token).await?;
    Ok(user.id)
}

/// `GET {api_url}/{path}` with the bot token, its JSON answer read as `T`.
async fn get<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    api_url: &str,
    path: &str,
    token: &Token,
) -> Result<T, GatewayBotError> {
    let url = format!("{}/{path}", api_url.trim_end_matches('/'));
    let request_error = |source| GatewayBotError::Request {
        url: url.clone(),
        source,
    };
    let response = client
        .get(&url)
        .header("authorization", format!("Bot {}", token.expose()))
        .send()
        .await
        .map_err(|e| request_error(e.without_url()))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| request_error(e.without_url()))?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return Err(GatewayBotError::Unauthorized { url });
    }
    if !status.is_success() {
        let body = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        return Err(GatewayBotError::Status { url, status, body });
    }
    serde_json::from_slice(&body).map_err(|source| GatewayBotError::Body { url, source })
}
