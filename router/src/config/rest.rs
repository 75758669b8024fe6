//! The `[rest]` section: the REST proxy handlers call Discord through.
//!
//! Owns its schema and defaults; the checks across fields are `Config::validate`'s, and what the
//! proxy does with them is `rest`'s.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secret::RestSecret;

/// How REST callers prove who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestAuth {
    /// A Standard Webhooks signature over the method, path and body, with a `webhook-id` spent
    /// once (replay protection): the templates' way.
    #[default]
    Hmac,
    /// `Authorization: <secret>` or `Authorization: Bot <secret>` (the secret from
    /// `SHARDHOOK_REST_SECRET`): what discordeno's and discord.js's REST proxy settings send.
    /// No replay protection: keep the proxy on a private route.
    SharedSecret,
}

/// The `[rest]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RestConfig {
    /// Serve `ANY /api/v10/{path}` on the control listener (or `listen`): a signed request from a handler
    /// is sent on to `discord.api_url` with the bot token added, within Discord's rate limits.
    #[serde(default)]
    pub enabled: bool,
    /// Serve the REST proxy on this address instead of `control.listen`, which then answers
    /// 404 for `/api/v10/...`: a listener the handlers reach (through a tunnel or a VPC) apart
    /// from the operators' one with `/metrics` and `/v1/shards`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Largest request body accepted, in bytes (a larger one gets 413 before it is verified).
    /// Discord takes uploads up to 10 MiB for most bots; the default leaves room above that.
    #[serde(default = "default_max_body")]
    pub max_body: usize,
    /// How long a request may wait in the router for its rate limit; past it the caller gets
    /// 429 with `Retry-After` rather than a held isolate.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Requests a second under Discord's global limit (50 unless Discord raised the bot's).
    /// Interaction callbacks and webhook-token routes are not counted, as Discord exempts them.
    #[serde(default = "default_global_per_second")]
    pub global_per_second: u16,
    /// Answers of 401, 403 and 429 in a sliding 10 minutes past which further requests get
    /// 503: Discord bans an IP for about an hour at 10,000.
    #[serde(default = "default_invalid_request_limit")]
    pub invalid_request_limit: u32,
    /// How callers authenticate: `"hmac"` (the default) or `"shared-secret"`.
    #[serde(default)]
    pub auth: RestAuth,
    /// The shared secret for `auth = "shared-secret"`, at least 32 bytes. Set it with
    /// `SHARDHOOK_REST_SECRET` (wins), not in the file.
    #[serde(default, skip_serializing, deserialize_with = "rest_secret")]
    pub secret: Option<RestSecret>,
}

fn rest_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RestSecret>, D::Error> {
    let text = super::signing::secret_text(d)?;
    RestSecret::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            enabled: false,
            listen: None,
            max_body: default_max_body(),
            max_wait: default_max_wait(),
            global_per_second: default_global_per_second(),
            invalid_request_limit: default_invalid_request_limit(),
            auth: RestAuth::Hmac,
            secret: None,
        }
    }
}

fn default_max_body() -> usize {
    25 * 1024 * 1024
}

fn default_max_wait() -> Duration {
    Duration::from_secs(10)
}

fn default_global_per_second() -> u16 {
    50
}

fn default_invalid_request_limit() -> u32 {
    8000
}
