//! The router's configuration: a TOML file plus environment overrides.
//!
//! Owns the config schema (its doc comments are the user docs), loading it from a file, the
//! environment overrides, and validation with errors that name the key. It does not talk to
//! Discord: values only Discord can check (is the token valid?) are checked by the shard.
//!
//! Environment overrides: `DISCORD_TOKEN` sets `discord.token`; any `SHARDHOOK__SECTION__KEY`
//! sets `section.key` (the value is read as a TOML value when it parses as one, else as a
//! string), so `SHARDHOOK__DISCORD__API_URL=http://127.0.0.1:9000/api/v10` points the router at
//! a local double.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod intents;
use crate::secret::SigningKey;
use crate::secret::Token;

/// Where `run` and `check` look for a config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "shardhook.toml";

/// Prefix of the environment variables that override config keys.
const ENV_PREFIX: &str = "SHARDHOOK__";

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach Discord and which shards to run.
    #[serde(default)]
    pub discord: DiscordConfig,
    /// The keys outgoing requests are signed with.
    #[serde(default)]
    pub signing: SigningConfig,
    /// Where events go: `[[endpoints]]`, one table per endpoint.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Retries, dead letters and ordering.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// How events are grouped into requests.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Which events are forwarded.
    #[serde(default)]
    pub events: EventsConfig,
    /// Where the router keeps files.
    #[serde(default)]
    pub state: StateConfig,
    /// The control API: gateway commands from handlers, status, health, metrics.
    #[serde(default)]
    pub control: ControlConfig,
    /// What the router does for interactions itself.
    #[serde(default)]
    pub interactions: InteractionsConfig,
}

/// The `[control]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the control API (`POST /v1/gateway/commands`, `/healthz`, `/readyz`,
    /// `/v1/shards`, `/metrics`). Keep it on loopback or a private network.
    #[serde(default = "default_control_listen")]
    pub listen: std::net::SocketAddr,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: default_control_listen(),
        }
    }
}

fn default_control_listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
}

/// The `[interactions]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionsConfig {
    /// Acknowledge every INTERACTION_CREATE at once with a deferred response (type 5, or 6 for
    /// components) so a cold handler cannot miss Discord's 3 s; the event is forwarded with
    /// `"deferred": true`. The handler then edits or follows up instead of answering.
    #[serde(default)]
    pub auto_defer: bool,
    /// Shown to the user (by editing the deferred response) if the event is dead-lettered.
    #[serde(default = "default_error_message")]
    pub error_message: String,
}

impl Default for InteractionsConfig {
    fn default() -> Self {
        InteractionsConfig {
            auto_defer: false,
            error_message: default_error_message(),
        }
    }
}

fn default_error_message() -> String {
    "Sorry, something went wrong handling this. Please try again.".to_owned()
}

/// The `[signing]` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The current key, `whsec_<base64>`; better: the `SHARDHOOK_SIGNING_SECRET` environment
    /// variable (wins). `shardhook keygen` prints a new one.
    #[serde(default, serialize_with = "redacted")]
    pub secret: Option<SigningKey>,
    /// Keys being rotated out: requests carry a signature by each, after the current one's.
    #[serde(default, serialize_with = "redacted_list")]
    pub previous_secrets: Vec<SigningKey>,
}

fn redacted<S: serde::Serializer, T>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

fn redacted_list<S: serde::Serializer, T>(value: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(value.iter().map(|_| "<redacted>"))
}

impl<'de> Deserialize<'de> for SigningKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        SigningKey::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// One `[[endpoints]]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// A unique name; it, not the URL, decides which shards hash to this endpoint.
    pub name: String,
    /// Where to POST: a Worker, a Lambda function URL, any HTTP(S) URL.
    pub url: String,
    /// Share of shards relative to the other endpoints (default 1).
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// Timeout per attempt (default: `delivery.timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Requests in flight at once to this endpoint (default 64).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Requests per second and burst, e.g. `{ per_second = 50, burst = 100 }`.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// `"none"` (default), or `"aws-iam"` for Lambda function URLs with IAM auth: requests are
    /// also signed with AWS SigV4 (service `lambda`) using `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    #[serde(default)]
    pub auth: EndpointAuth,
    /// The AWS region for `auth = "aws-iam"`; default: read from a function URL's host
    /// (`<id>.lambda-url.<region>.on.aws`).
    #[serde(default)]
    pub region: Option<String>,
}

/// How an endpoint authenticates requests besides the webhook signature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointAuth {
    #[default]
    None,
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
    64
}

/// An endpoint's request rate.
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
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
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// `"shard"` (default) or `"none"`.
    #[serde(default)]
    pub ordering: Ordering,
    /// Events queued per shard before the shard stops reading (backpressure).
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
    /// Events per request at most (default 1: one request per event).
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
    1
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

/// The `[state]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The directory for dead letters (`dead-letters.jsonl`) and resume checkpoints
    /// (`checkpoints/shard-N.json`).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// How often resume checkpoints are written (and always at shutdown).
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Bound on the disk spool (`spool/shard-N.log`), in bytes: past it, shards wait.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
            checkpoint_interval: default_checkpoint_interval(),
            spool_max_bytes: default_spool_max_bytes(),
        }
    }
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

/// The `[discord]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    /// The bot token. Prefer the `DISCORD_TOKEN` environment variable, which wins over this key.
    #[serde(default)]
    pub token: Option<Token>,
    /// Discord's REST base; the gateway URL is asked of `GET {api_url}/gateway/bot`.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Gateway intents: a list of names (`["GUILDS", "GUILD_MESSAGES"]`) or a number.
    #[serde(default = "default_intents", deserialize_with = "deserialize_intents")]
    pub intents: u64,
    /// `"auto"` (Discord's recommended count, all shards in this process) or
    /// `{ total = 16, ids = "0..8" }` to run a slice of a bigger bot.
    #[serde(default)]
    pub shards: ShardsConfig,
    /// How long to wait for a gateway connection and its HELLO (e.g. `"10s"`).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Largest inflated gateway message accepted, in bytes. A bigger one is skipped with an
    /// error naming its size, so one pathological event cannot exhaust memory.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Transport compression asked of Discord: `"zlib-stream"` or `"zstd-stream"`.
    #[serde(default)]
    pub compression: Compression,
}

/// How Discord compresses a gateway connection (the `compress` query parameter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Compression {
    /// One zlib stream per connection, each message ending with a sync flush.
    #[default]
    #[serde(rename = "zlib-stream")]
    ZlibStream,
    /// One zstd stream per connection, flushed after each message: fewer bytes on the wire for
    /// about the same CPU, and more memory per connection (the decoder keeps the window
    /// Discord compresses with, up to 8 MiB, where zlib keeps 32 KiB).
    #[serde(rename = "zstd-stream")]
    ZstdStream,
}

impl Compression {
    pub const ALL: [Compression; 2] = [Compression::ZlibStream, Compression::ZstdStream];

    /// The compression a `compress=` value names, if any.
    pub fn named(value: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.as_str() == value)
    }

    /// The value of `compress=` in the gateway URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::ZlibStream => "zlib-stream",
            Compression::ZstdStream => "zstd-stream",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for DiscordConfig {
    fn default() -> Self {
        DiscordConfig {
            token: None,
            api_url: default_api_url(),
            intents: default_intents(),
            shards: ShardsConfig::default(),
            connect_timeout: default_connect_timeout(),
            max_message_size: default_max_message_size(),
            compression: Compression::default(),
        }
    }
}

fn default_api_url() -> String {
    "https://discord.com/api/v10".to_owned()
}

fn default_intents() -> u64 {
    ["GUILDS", "GUILD_MESSAGES", "DIRECT_MESSAGES"]
        .iter()
        .filter_map(|n| intents::bit_of(n))
        .fold(0, |a, b| a | b)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_message_size() -> usize {
    64 << 20
}

fn deserialize_intents<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = toml::Value::deserialize(d)?;
    intents::from_value(&value).map_err(serde::de::Error::custom)
}

/// Which shards this process runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ShardsConfig {
    /// Discord's recommended shard count; this process runs all of them.
    #[default]
    Auto,
    /// A fixed shard count, of which this process runs `ids`.
    Explicit { total: u32, ids: Range<u32> },
}

impl<'de> Deserialize<'de> for ShardsConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = toml::Value::deserialize(d)?;
        ShardsConfig::from_value(&value).map_err(serde::de::Error::custom)
    }
}

impl ShardsConfig {
    fn from_value(value: &toml::Value) -> Result<ShardsConfig, String> {
        const ALLOWED: &str = "allowed: \"auto\" or { total = N, ids = \"A..B\" }";
        let table = match value {
            toml::Value::String(s) if s == "auto" => return Ok(ShardsConfig::Auto),
            toml::Value::Table(t) => t,
            other => return Err(format!("unexpected value {other}; {ALLOWED}")),
        };
        if let Some(key) = table.keys().find(|k| *k != "total" && *k != "ids") {
            return Err(format!("unknown key `{key}`; {ALLOWED}"));
        }
        let total = match table.get("total") {
            Some(toml::Value::Integer(n)) if (1..=u32::MAX as i64).contains(n) => *n as u32,
            Some(other) => {
                return Err(format!("`total` must be a positive integer, found {other}"))
            }
            None => return Err(format!("`total` is missing; {ALLOWED}")),
        };
        let ids = match table.get("ids") {
            None => 0..total,
            Some(toml::Value::String(s)) => parse_range(s)?,
            Some(other) => {
                return Err(format!(
                    "`ids` must be a range string like \"0..8\", found {other}"
                ))
            }
        };
        if ids.is_empty() || ids.end > total {
            return Err(format!(
                "`ids` {}..{} must be a non-empty range within 0..{total}",
                ids.start, ids.end
            ));
        }
        Ok(ShardsConfig::Explicit { total, ids })
    }
}

/// Parses `"A..B"` (exclusive) or `"A..=B"` (inclusive).
fn parse_range(s: &str) -> Result<Range<u32>, String> {
    let bad = || format!("`ids` = \"{s}\" is not a range like \"0..8\" or \"0..=7\"");
    let (start, end, inclusive) = match s.split_once("..=") {
        Some((a, b)) => (a, b, true),
        None => s
            .split_once("..")
            .map(|(a, b)| (a, b, false))
            .ok_or_else(bad)?,
    };
    let start: u32 = start.trim().parse().map_err(|_| bad())?;
    let end: u32 = end.trim().parse().map_err(|_| bad())?;
    Ok(start..if inclusive {
        end.checked_add(1).ok_or_else(bad)?
    } else {
        end
    })
}

impl Serialize for ShardsConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            ShardsConfig::Auto => s.serialize_str("auto"),
            ShardsConfig::Explicit { total, ids } => {
                let mut map = s.serialize_map(Some(2))?;
                map.serialize_entry("total", total)?;
                map.serialize_entry("ids", &format!("{}..{}", ids.start, ids.end))?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Token::new(&raw).ok_or_else(|| serde::de::Error::custom("the token is empty"))
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("failed to read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Syntax {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("no bot token: set DISCORD_TOKEN or discord.token")]
    MissingToken,
    #[error("no signing secret: set SHARDHOOK_SIGNING_SECRET or signing.secret (`shardhook keygen` makes one)")]
    MissingSecret,
    #[error("no endpoints: add at least one [[endpoints]] table with a name and a url")]
    NoEndpoints,
}

impl Config {
    /// Loads `path` (or `shardhook.toml` if it exists when no path is given) and applies the
    /// environment overrides from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => Some(read(path)?),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                Some(read(Path::new(DEFAULT_CONFIG_PATH))?)
            }
            None => None,
        };
        let file = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
        Config::from_toml(text.as_deref().unwrap_or(""), file, env)
    }

    /// Parses config text; `origin` names it in errors.
    pub fn from_toml(
        text: &str,
        origin: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            source: Box::new(e),
        })?;
        for (var, value) in env {
            // Secrets are set as strings directly, never parsed as TOML.
            let secret_key = match var.as_str() {
                "DISCORD_TOKEN" => Some(("discord", "token")),
                "SHARDHOOK_SIGNING_SECRET" => Some(("signing", "secret")),
                _ => None,
            };
            if let Some((section, key)) = secret_key {
                let section = table
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(Default::default()));
                if let toml::Value::Table(section) = section {
                    section.insert(key.into(), toml::Value::String(value));
                }
            } else if let Some(path) = var.strip_prefix(ENV_PREFIX) {
                apply_override(&mut table, &var, path, &value)?;
            }
        }
        let de = toml::Value::Table(table);
        let config: Config =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Invalid {
                key: e.path().to_string(),
                message: e.into_inner().message().to_owned(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the schema alone cannot: endpoint URLs, unique names, positive numbers.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = |field: &str| format!("endpoints[{i}].{field}");
            match reqwest::Url::parse(&endpoint.url) {
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(url) => {
                    return invalid(
                        key("url"),
                        format!("scheme `{}` is not http or https", url.scheme()),
                    )
                }
                Err(e) => {
                    return invalid(key("url"), format!("`{}` is not a URL: {e}", endpoint.url))
                }
            }
            if endpoint.name.is_empty()
                || self.endpoints[..i].iter().any(|e| e.name == endpoint.name)
            {
                return invalid(
                    key("name"),
                    format!("`{}` must be non-empty and unique", endpoint.name),
                );
            }
            if !(endpoint.weight.is_finite() && endpoint.weight > 0.0) {
                return invalid(
                    key("weight"),
                    format!("{} must be a positive number", endpoint.weight),
                );
            }
            if endpoint.max_in_flight == 0 {
                return invalid(key("max_in_flight"), "must be at least 1".to_owned());
            }
            if endpoint
                .rate_limit
                .is_some_and(|r| r.per_second == 0 || r.burst == Some(0))
            {
                return invalid(
                    key("rate_limit"),
                    "per_second and burst must be at least 1".to_owned(),
                );
            }
        }
        let d = &self.delivery;
        if d.max_attempts == 0 {
            return invalid("delivery.max_attempts".into(), "must be at least 1".into());
        }
        if d.queue == 0 {
            return invalid("delivery.queue".into(), "must be at least 1".into());
        }
        if d.circuit_failures == 0 {
            return invalid(
                "delivery.circuit_failures".into(),
                "must be at least 1".into(),
            );
        }
        if self.batch.max_events == 0 {
            return invalid("batch.max_events".into(), "must be at least 1".into());
        }
        Ok(())
    }

    /// The signing secret, or the error that says how to provide one.
    pub fn signing_key(&self) -> Result<&SigningKey, ConfigError> {
        self.signing
            .secret
            .as_ref()
            .ok_or(ConfigError::MissingSecret)
    }

    /// The bot token, or the error that says how to provide one.
    pub fn token(&self) -> Result<&Token, ConfigError> {
        self.discord.token.as_ref().ok_or(ConfigError::MissingToken)
    }

    /// The resolved config as TOML, secrets redacted (for `shardhook check`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# failed to render config: {e}"))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

fn apply_override(
    table: &mut toml::Table,
    var: &str,
    path: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(ConfigError::Env {
            var: var.to_owned(),
            message: "expected SHARDHOOK__SECTION__KEY".to_owned(),
        });
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = keys.split_last().expect("split yields at least one key");
    let mut node = table;
    for key in parents {
        let entry = node
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(Default::default()));
        node = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Env {
                    var: var.to_owned(),
                    message: format!("`{key}` is not a section"),
                })
            }
        };
    }
    node.insert(last.clone(), parsed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compress_value_names_its_compression() {
        for compression in Compression::ALL {
            assert_eq!(Compression::named(compression.as_str()), Some(compression));
        }
        assert_eq!(Compression::named("gzip"), None);
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("test.toml"), Vec::new())
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let config = parse("").unwrap();
        assert_eq!(config.discord.api_url, "https://discord.com/api/v10");
        assert_eq!(config.discord.shards, ShardsConfig::Auto);
        assert!(matches!(config.token(), Err(ConfigError::MissingToken)));
    }

    #[test]
    fn explicit_shards_take_a_range() {
        let config = parse("[discord]\nshards = { total = 16, ids = \"4..=7\" }").unwrap();
        assert_eq!(
            config.discord.shards,
            ShardsConfig::Explicit {
                total: 16,
                ids: 4..8
            }
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[discord]\napi_ulr = \"x\"").unwrap_err().to_string();
        assert!(err.contains("api_ulr") && err.contains("api_url"), "{err}");
        let err = parse("[discrod]").unwrap_err().to_string();
        assert!(err.contains("discrod"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_allowed() {
        let err = parse("[discord]\nshards = { total = 4, ids = \"2..9\" }")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("discord.shards") && err.contains("0..4"),
            "{err}"
        );
        let err = parse("[discord]\nshards = \"many\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("discord.shards") && err.contains("auto"),
            "{err}"
        );
        let err = parse("[discord]\nintents = [\"GUILDZ\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("discord.intents") && err.contains("GUILDZ"),
            "{err}"
        );
        let err = parse("[discord]\nconnect_timeout = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("discord.connect_timeout"), "{err}");
    }

    #[test]
    fn environment_overrides_win_and_the_token_stays_redacted() {
        let env = vec![
            ("DISCORD_TOKEN".to_owned(), "Bot s3cret-token".to_owned()),
            (
                "SHARDHOOK__DISCORD__API_URL".to_owned(),
                "http://127.0.0.1:1/api".to_owned(),
            ),
            ("SHARDHOOK__DISCORD__INTENTS".to_owned(), "513".to_owned()),
        ];
        let config = Config::from_toml("[discord]\ntoken = \"file\"", Path::new("t"), env).unwrap();
        assert_eq!(config.token().unwrap().expose(), "s3cret-token");
        assert_eq!(config.discord.api_url, "http://127.0.0.1:1/api");
        assert_eq!(config.discord.intents, 513);
        let shown = format!("{}\n{config:?}", config.to_redacted_toml());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn endpoints_and_delivery_settings_parse_and_validate() {
        let text = r#"
            [signing]
            secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            [[endpoints]]
            name = "worker"
            url = "https://example.workers.dev/events"
            weight = 2
            timeout = "3s"
            rate_limit = { per_second = 50, burst = 100 }
            [[endpoints]]
            name = "lambda"
            url = "https://abc.lambda-url.us-east-1.on.aws/"
            [delivery]
            ordering = "none"
            max_elapsed = "2m"
            [batch]
            max_events = 100
            linger = "5ms"
        "#;
        let config = parse(text).unwrap();
        assert_eq!(config.endpoints.len(), 2);
        assert_eq!(config.endpoints[0].timeout, Some(Duration::from_secs(3)));
        assert_eq!(config.delivery.ordering, Ordering::None);
        assert_eq!(config.batch.linger, Duration::from_millis(5));
        assert!(config.signing_key().is_ok());
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("MfKQ9r8"), "{shown}");
    }

    #[test]
    fn bad_endpoints_and_secrets_name_the_key() {
        let err = parse("[[endpoints]]\nname = \"a\"\nurl = \"ftp://x\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("endpoints[0].url") && err.contains("ftp"),
            "{err}"
        );
        let two = "[[endpoints]]\nname = \"a\"\nurl = \"http://x\"\n[[endpoints]]\nname = \"a\"\nurl = \"http://y\"";
        let err = parse(two).unwrap_err().to_string();
        assert!(err.contains("endpoints[1].name"), "{err}");
        let err = parse("[signing]\nsecret = \"hunter2\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("signing.secret") && err.contains("whsec_"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse("[delivery]\nordering = \"random\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("delivery.ordering") && err.contains("shard"),
            "{err}"
        );
    }

    #[test]
    fn compression_is_zlib_by_default_and_zstd_on_request() {
        assert_eq!(
            parse("").unwrap().discord.compression,
            Compression::ZlibStream
        );
        let config = parse("[discord]\ncompression = \"zstd-stream\"").unwrap();
        assert_eq!(config.discord.compression, Compression::ZstdStream);
        let env = vec![(
            "SHARDHOOK__DISCORD__COMPRESSION".to_owned(),
            "zstd-stream".to_owned(),
        )];
        let config = Config::from_toml("", Path::new("t"), env).unwrap();
        assert_eq!(config.discord.compression, Compression::ZstdStream);
        assert!(config
            .to_redacted_toml()
            .contains("compression = \"zstd-stream\""));
        let err = parse("[discord]\ncompression = \"zstd\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("discord.compression")
                && err.contains("zlib-stream")
                && err.contains("zstd-stream"),
            "{err}"
        );
    }

    #[test]
    fn an_override_of_an_unknown_key_is_an_error() {
        let env = vec![("SHARDHOOK__DISCORD__NOPE".to_owned(), "1".to_owned())];
        let err = Config::from_toml("", Path::new("t"), env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }
}
