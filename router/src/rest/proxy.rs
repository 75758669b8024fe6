//! Sending a verified request on to Discord: the bot token added, the rate limits waited for,
//! the invalid-request guard consulted, and Discord's answer returned as it came.
//!
//! Owns the request's way from the control API to `discord.api_url` and back. Authenticating
//! the caller is the control API's (it holds the keys and the spent ids); buckets are
//! `limiter`'s, the window `guard`'s.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::time::Instant;
use twilight_http_ratelimiting::{Endpoint, RateLimitHeaders};

use super::body::{self, BodyError, Spooled};
use super::guard;
use super::limiter::{self, Limiter};
use super::route::Route;
use super::stats::RestStats;
use crate::config::{Config, ConfigError, RestConfig};
use crate::secret::Token;
use crate::state::rest_limits::RestLimits;

/// How long Discord has to answer a request once it is sent (an upload included).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Request headers passed on to Discord besides the body's; all others are dropped (the
/// caller's `Authorization` above all).
const PASSED_ON: [&str; 3] = ["content-type", "x-audit-log-reason", "accept"];

/// Answer headers not passed back: they describe the connection to Discord, not the answer.
const HOP_BY_HOP: [&str; 5] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "upgrade",
];

/// Why the REST proxy could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestError {
    /// The config has no token, or another key is missing.
    #[error("the REST proxy needs a bot token: {0}")]
    Config(#[from] ConfigError),
    /// The TLS roots or the HTTP client could not be set up.
    #[error("the REST proxy's HTTP client could not be built: {0}")]
    Client(String),
}

/// A request the control API has verified, on its way to Discord.
#[derive(Debug)]
pub struct ProxyRequest {
    /// The caller's method.
    pub method: Method,
    /// The path after `/api/v10/` (no leading `/`), without the query.
    pub path: String,
    /// The query, without `?`, if any.
    pub query: Option<String>,
    /// The caller's headers; only `PASSED_ON` go on.
    pub headers: HeaderMap,
    /// The body, received within `rest.max_body` (and verified) before it is sent on.
    pub body: Spooled,
}

impl ProxyRequest {
    /// The request for `uri` (under `/api/v10/`), as received.
    pub fn new(method: Method, uri: &axum::http::Uri, headers: HeaderMap, body: Spooled) -> Self {
        ProxyRequest {
            method,
            path: uri
                .path()
                .strip_prefix("/api/v10/")
                .unwrap_or_default()
                .to_owned(),
            query: uri.query().map(str::to_owned),
            headers,
            body,
        }
    }
}

/// The REST proxy: one token, one rate limiter and one invalid-request window for every
/// handler.
#[derive(Debug)]
pub struct RestProxy {
    client: reqwest::Client,
    /// `discord.api_url` without its trailing `/`.
    api_url: String,
    token: Token,
    settings: RestConfig,
    /// Where bodies too large for memory are held on their way (`state.dir`).
    state_dir: PathBuf,
    limiter: Limiter,
    /// The bot's global limit and invalid-request count: this router's, or the cluster's.
    limits: std::sync::Arc<dyn RestLimits>,
    /// The invalid-request count as last read, for `/metrics`.
    invalid_seen: std::sync::atomic::AtomicUsize,
    stats: RestStats,
}

impl RestProxy {
    /// The proxy `config` describes, its global limit and invalid-request count kept in
    /// `limits` (a cluster's, for every router of the bot).
    pub fn with_limits(
        config: &Config,
        limits: std::sync::Arc<dyn RestLimits>,
    ) -> Result<RestProxy, RestError> {
        let token = config.token()?.clone();
        let tls = crate::tls::platform_tls().map_err(|e| RestError::Client(e.to_string()))?;
        let builder = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::with_http2(&tls))
            .user_agent(crate::USER_AGENT)
            .connect_timeout(config.discord.connect_timeout)
            .timeout(UPSTREAM_TIMEOUT);
        let client = config
            .discord
            .client(builder)
            .map_err(|e| RestError::Client(e.to_string()))?
            .build()
            .map_err(|e| RestError::Client(e.to_string()))?;
        let settings = config.rest.clone();
        Ok(RestProxy {
            client,
            api_url: config.discord.api_url.trim_end_matches('/').to_owned(),
            token,
            limiter: Limiter::new(settings.global_per_second, limits.clone()),
            limits,
            invalid_seen: Default::default(),
            settings,
            state_dir: config.state.dir.clone(),
            stats: RestStats::default(),
        })
    }

    /// The shared secret callers send as `Authorization`, when `rest.auth = "shared-secret"`.
    pub fn shared_secret(&self) -> Option<&crate::secret::RestSecret> {
        match self.settings.auth {
            crate::config::RestAuth::SharedSecret => self.settings.secret.as_ref(),
            crate::config::RestAuth::Hmac => None,
        }
    }

    /// The largest body accepted (`rest.max_body`).
    pub fn max_body(&self) -> usize {
        self.settings.max_body
    }

    /// Reads a request's body as it arrives, within `rest.max_body`, showing each part to
    /// `observe` (the signature check); large bodies are held in an unlinked file, not in
    /// memory.
    pub async fn receive(
        &self,
        body: axum::body::Body,
        observe: impl FnMut(&[u8]),
    ) -> Result<Spooled, BodyError> {
        body::receive(body, self.settings.max_body, &self.state_dir, observe).await
    }

    /// The counters `/metrics` shows.
    pub fn stats(&self) -> &RestStats {
        &self.stats
    }

    /// Invalid answers (401, 403, 429) from Discord in the last 10 minutes as last counted
    /// (the bot's, in a cluster), and the limit.
    pub fn invalid_requests(&self) -> (usize, u32) {
        (
            self.invalid_seen.load(std::sync::atomic::Ordering::Relaxed),
            self.settings.invalid_request_limit,
        )
    }

    /// Sends `request` to Discord when its rate limits allow, and returns Discord's answer, or
    /// the router's own refusal. The flag says whether the request may have reached Discord
    /// (its id then stays spent).
    pub async fn forward(&self, request: ProxyRequest) -> (Response, bool) {
        let route = Route::of(&request.path);
        let (response, reached) = self.send(request, &route).await;
        self.stats
            .answered(&route.template, response.status().as_u16());
        (response, reached)
    }

    async fn send(&self, request: ProxyRequest, route: &Route) -> (Response, bool) {
        // Before anything: a path that would reach another of Discord's paths once normalised,
        // or alias a route's bucket, never leaves.
        if let Some(why) = super::route::unclean(&request.path) {
            let error = format!("refused /api/v10/{}: {why}", request.path);
            return (refusal(StatusCode::BAD_REQUEST, &error), false);
        }
        let Some(method) = limiter::method(&request.method) else {
            let error = format!("Discord's API has no {} routes", request.method);
            return (refusal(StatusCode::METHOD_NOT_ALLOWED, &error), false);
        };
        let arrived = Instant::now();
        let limit = self.settings.invalid_request_limit;
        let wait = match self.limits.invalid(limit).await {
            Ok((count, wait)) => {
                self.invalid_seen
                    .store(count, std::sync::atomic::Ordering::Relaxed);
                (count >= limit as usize).then_some(wait)
            }
            Err(why) => {
                let error = format!(
                    "cannot read the bot's invalid-request count ({why}); nothing was sent"
                );
                tracing::warn!(route = %route.template, "{error}");
                return (refusal(StatusCode::SERVICE_UNAVAILABLE, &error), false);
            }
        };
        if let Some(wait) = wait {
            tracing::error!(
                route = %route.template,
                limit = self.settings.invalid_request_limit,
                "refused a REST request: Discord answered rest.invalid_request_limit requests with 401, 403 or 429 in the last 10 minutes, and more would risk a ban of this IP; fix the handler that makes them"
            );
            let error = "too many requests answered 401, 403 or 429 in the last 10 minutes";
            return (
                with_retry_after(refusal(StatusCode::SERVICE_UNAVAILABLE, error), wait),
                false,
            );
        }
        let endpoint = Endpoint {
            method,
            path: request.path.clone(),
        };
        let deadline = arrived + self.settings.max_wait;
        let bucket = route.bucket_key(request.method.as_str());
        let permit = match self
            .limiter
            .acquire(endpoint, &bucket, route.exempt_from_global, deadline)
            .await
        {
            Ok(permit) => permit,
            Err(wait) => {
                self.stats.rate_limited("router");
                let error = "rate limited: the wait would pass rest.max_wait";
                let body =
                    json!({ "message": error, "retry_after": wait.as_secs_f64(), "global": false });
                let response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
                return (with_retry_after(response, wait), false);
            }
        };
        self.stats.wait.observe(arrived.elapsed().as_secs_f64());
        let mut url = format!("{}/{}", self.api_url, request.path);
        if let Some(query) = &request.query {
            url.push('?');
            url.push_str(query);
        }
        let mut outgoing = self.client.request(request.method.clone(), url).header(
            header::AUTHORIZATION,
            format!("Bot {}", self.token.expose()),
        );
        for name in PASSED_ON {
            for value in request.headers.get_all(name) {
                outgoing = outgoing.header(name, value);
            }
        }
        // A body from a file is a stream to reqwest: its length is told, so it is not chunked.
        if let Spooled::File { len, .. } = &request.body {
            outgoing = outgoing.header(header::CONTENT_LENGTH, *len);
        }
        let outgoing = outgoing.body(request.body.into_request_body());
        let answer = match outgoing.send().await {
            Ok(answer) => answer,
            Err(e) => {
                // The permit is dropped: twilight's limiter takes it as cancelled.
                drop(permit);
                // Without the URL: its query is the caller's, and the error is theirs to see.
                let unsent = e.is_connect();
                let error = format!("Discord could not be reached: {}", e.without_url());
                tracing::warn!(route = %route.template, "{error}");
                // Only a connection never made is sure to have sent nothing: past that,
                // Discord may have the request, and its id must stay spent (a replay of it
                // would send it twice).
                return (refusal(StatusCode::BAD_GATEWAY, &error), !unsent);
            }
        };
        let status = answer.status();
        let headers = answer.headers().clone();
        if let Some(learned) = limiter::learned(&headers) {
            self.limits.learn_route(&bucket, learned).await;
        }
        let body = match answer.bytes().await {
            Ok(body) => body,
            Err(e) => {
                permit.complete(limiter::bucket_headers(&headers));
                let error = format!("Discord's answer broke off: {}", e.without_url());
                return (refusal(StatusCode::BAD_GATEWAY, &error), true);
            }
        };
        let scope = headers
            .get("x-ratelimit-scope")
            .and_then(|v| v.to_str().ok());
        if guard::counts(status.as_u16(), scope) {
            self.limits.record_invalid().await;
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            let limited = limiter::rate_limited(&headers, &body);
            self.stats.rate_limited(limited.scope);
            tracing::warn!(route = %route.template, scope = limited.scope, retry_after = ?limited.retry_after, "Discord answered 429");
            match limited.scope {
                "global" => {
                    self.limiter.pause_all(limited.retry_after);
                    permit.complete(None);
                }
                "shared" => {
                    let bucket = headers
                        .get(RateLimitHeaders::BUCKET)
                        .map(|v| v.as_bytes().to_vec())
                        .unwrap_or_default();
                    let secs = limited
                        .retry_after
                        .as_secs_f64()
                        .ceil()
                        .min(u16::MAX as f64);
                    permit.complete(Some(RateLimitHeaders::shared(bucket, secs as u16)));
                }
                _ => permit.complete(limiter::bucket_headers(&headers)),
            }
        } else {
            permit.complete(limiter::bucket_headers(&headers));
        }
        (answer_as_sent(status, &headers, body), true)
    }
}

/// Discord's answer, its connection's own headers aside.
fn answer_as_sent(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
}

fn refusal(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({ "message": error, "code": 0 }))).into_response()
}

/// `response` with `Retry-After` in whole seconds, rounded up.
fn with_retry_after(mut response: Response, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(value) = secs.to_string().parse() {
        response
            .headers_mut()
            .insert(HeaderName::from_static("retry-after"), value);
    }
    response
}
