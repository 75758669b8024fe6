//! The `[[endpoints]]`, `[delivery]`, `[batch]` and `[events]` sections: where events go and
//! how they are sent, batched, retried and filtered.
//!
//! Owns their schema and defaults; checks across sections are `Config::validate`'s.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One `[[endpoints]]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// A unique name; it, not the URL, decides which shards hash to this endpoint.
    pub name: String,
    /// Where to POST: a Worker, a Lambda function URL, any HTTP(S) URL. Shown (by `check`, in
    /// dead letters and logs) without its userinfo and query, which may hold credentials.
    #[serde(serialize_with = "redacted_url")]
    pub url: String,
    /// Share of shards relative to the other endpoints (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Timeout per attempt (default: `delivery.timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Requests in flight at once to this endpoint (default 12), each carrying the batches of
    /// every shard ready when it left: the lever between requests and latency. While requests
    /// are out, the next leaves a sixth (one in `max_in_flight / 2`) of the measured round
    /// trip after the last, or just after an answer comes back if that is sooner (but no sooner
    /// than half that share after the last), so the answered shards' next batches go at once;
    /// the other half of the slots is kept for answers that come late. So about six to twelve
    /// requests go per round trip, a batch waits at most a sixth of one for its request, and a
    /// busy bot's requests are few and full: an endpoint 50 ms away gets about 150 requests a
    /// second, each up to `batch.max_events` events.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Requests per second and burst, e.g. `{ per_second = 50, burst = 100 }`.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// `"none"` (default), or `"aws-iam"` for Lambda function URLs with IAM auth: requests are
    /// also signed with AWS SigV4 (service `lambda`), with credentials from the standard AWS
    /// chain (environment, profile files, container endpoint, IMDSv2), kept fresh.
    #[serde(default)]
    pub auth: EndpointAuth,
    /// The AWS region for `auth = "aws-iam"`; default: read from a function URL's host
    /// (`<id>.lambda-url.<region>.on.aws`).
    #[serde(default)]
    pub region: Option<String>,
    /// For an `https` endpoint behind an internal PKI: a PEM file of the CA certificate(s) that
    /// sign its certificate. Only these are then trusted for it (default: the platform's roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// HTTP/2 to this endpoint: `"auto"` (default: when an `https` endpoint offers `h2` in
    /// ALPN, deliveries share a few multiplexed connections), `"never"` (a pool of HTTP/1.1
    /// connections), or `"always"` (`h2` only; for an `http` URL, HTTP/2 without TLS).
    #[serde(default)]
    pub http2: Http2,
    /// What requests to this endpoint look like: `"shardhook"` (default: batches in
    /// shardhook's envelope, Standard Webhooks signatures) or `"carbon"` (one request per
    /// event in Discord's webhook-event envelope, signed with Ed25519, as a Carbon app's
    /// gateway forwarder sends them; needs `signing.ed25519_private_key`). A shard fails over
    /// only to endpoints of its home endpoint's format.
    #[serde(default)]
    pub format: EndpointFormat,
}

/// The request shape and signature an endpoint takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointFormat {
    /// shardhook's batch envelope, signed per Standard Webhooks.
    #[default]
    Shardhook,
    /// Discord's application webhook events, one per request, signed with Ed25519, as
    /// `@buape/carbon`'s gateway forwarder sends them.
    Carbon,
}

impl EndpointFormat {
    /// Whether this is the default format (spool records and dead letters leave it out).
    pub fn is_shardhook(&self) -> bool {
        *self == EndpointFormat::Shardhook
    }
}

/// Whether an endpoint is spoken to over HTTP/2.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Http2 {
    /// When an `https` endpoint offers `h2` in ALPN; HTTP/1.1 otherwise.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Never,
    /// HTTP/2 only.
    Always,
}

fn redacted_url<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::secret::redact_url(url))
}

/// How an endpoint authenticates requests besides the webhook signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointAuth {
    /// The webhook signature only.
    #[default]
    None,
    /// AWS SigV4 as well (service `lambda`), for Lambda function URLs with IAM auth.
    AwsIam,
}

impl EndpointConfig {
    /// An endpoint with every optional key at its default, as `[[endpoints]]` with only
    /// `name` and `url` would be.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> EndpointConfig {
        EndpointConfig {
            name: name.into(),
            url: url.into(),
            weight: default_weight(),
            timeout: None,
            max_in_flight: default_max_in_flight(),
            rate_limit: None,
            auth: EndpointAuth::None,
            region: None,
            ca_file: None,
            http2: Http2::default(),
            format: EndpointFormat::default(),
        }
    }

    /// The region to sign for: configured, or read from a Lambda function URL's host.
    pub fn aws_region(&self) -> Option<String> {
        self.region.clone().or_else(|| {
            let url = reqwest::Url::parse(&self.url).ok()?;
            let host = url.host_str()?;
            let rest = host.split_once(".lambda-url.")?.1;
            Some(rest.strip_suffix(".on.aws")?.to_owned())
        })
    }
}

fn default_weight() -> f64 {
    1.0
}

fn default_max_in_flight() -> usize {
    12
}

/// An endpoint's request rate.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second, sustained.
    pub per_second: u32,
    /// Requests allowed at once after a quiet spell (default: `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Whether a shard's batches leave one at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// A shard's next batch leaves after the previous one is delivered or dead-lettered.
    #[default]
    Shard,
    /// Several batches of a shard may be in flight; handlers must order by `s` themselves.
    None,
}

/// The `[delivery]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Attempts per batch before it is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Time per batch, from its first attempt, before it is dead-lettered.
    #[serde(default = "default_max_elapsed", with = "humantime_serde")]
    pub max_elapsed: Duration,
    /// Timeout per attempt unless an endpoint sets its own.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// First retry delay; each retry doubles it, with full jitter, up to `max_backoff`.
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// The longest wait between retries.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// `"shard"` (default) or `"none"`.
    #[serde(default)]
    pub ordering: Ordering,
    /// Events waiting per shard before the shard stops reading (backpressure): half in the
    /// shard's queue, half read ahead by its delivery worker while a batch is on its way (so it
    /// sees an interaction at once).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// On shutdown, how long queued events may take to deliver before the rest is left for
    /// Discord to replay on the next start (they are not checkpointed).
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Consecutive failures (connect errors, timeouts, 5xx) that open an endpoint's circuit.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit sends the endpoint's shards elsewhere before a probe.
    #[serde(default = "default_circuit_cooldown", with = "humantime_serde")]
    pub circuit_cooldown: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_attempts: default_max_attempts(),
            max_elapsed: default_max_elapsed(),
            timeout: default_timeout(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            ordering: Ordering::default(),
            queue: default_queue(),
            shutdown_timeout: default_shutdown_timeout(),
            circuit_failures: default_circuit_failures(),
            circuit_cooldown: default_circuit_cooldown(),
        }
    }
}

fn default_max_attempts() -> u32 {
    10
}
fn default_max_elapsed() -> Duration {
    Duration::from_secs(600)
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(30)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_queue() -> usize {
    1024
}
fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_cooldown() -> Duration {
    Duration::from_secs(5)
}

/// The `[batch]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Events per request at most (default 100). With no linger a batch takes only what queued
    /// while the shard's previous request was out: a quiet shard still sends each event alone
    /// at once, and a busy one as many as came during a round trip, so it keeps up with an
    /// endpoint tens of milliseconds away (one request per event tops out at one event per
    /// round trip).
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Body bytes per request at most; one event bigger than this still goes alone.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
    /// How long a batch waits for more events (default 0: it takes only what is queued).
    /// INTERACTION_CREATE never waits.
    #[serde(default, with = "humantime_serde")]
    pub linger: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_max_events(),
            max_bytes: default_max_bytes(),
            linger: Duration::ZERO,
        }
    }
}

fn default_max_events() -> usize {
    100
}
fn default_max_bytes() -> usize {
    1 << 20
}

/// The `[events]` section: filters by event name, applied before anything is sent.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Only these events (default: all).
    #[serde(default)]
    pub include: Vec<String>,
    /// Never these events.
    #[serde(default)]
    pub exclude: Vec<String>,
}
