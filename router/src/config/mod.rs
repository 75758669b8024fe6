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

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod cluster;
mod delivery;
mod discord;
pub mod intents;
mod rest;
mod signing;

use crate::secret::{SigningKey, Token};

pub use cluster::ClusterConfig;
pub use delivery::{
    BatchConfig, DeliveryConfig, EndpointAuth, EndpointConfig, EndpointFormat, EventsConfig, Http2,
    Ordering, RateLimitConfig,
};
pub use discord::{Compression, DiscordConfig, ShardsConfig};
pub use rest::{RestAuth, RestConfig};
pub use signing::SigningConfig;

/// Where `run` and `check` look for a config file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "shardhook.toml";

/// Prefix of the environment variables that override config keys.
const ENV_PREFIX: &str = "SHARDHOOK__";

/// Keys earlier versions read and this one does not: the table they sat in, the key, and what
/// to do instead. A config that still has one is refused (the schema denies unknown keys), with
/// this said, and the file named, beside the usual "unknown field". (Environment overrides
/// cannot reach into `[[endpoints]]`, so such a key is always the file's.)
const REMOVED_KEYS: [(&str, &str, &str); 1] = [(
    "endpoints",
    "transport",
    "the key was removed: hyper is the only HTTP client since the hand-written HTTP/1.1 \
     client was removed (bench/RESULTS.md, \"The transport decision\"); delete the key, and \
     use `http2` to choose the HTTP version",
)];

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
    /// The REST proxy handlers call Discord's API through.
    #[serde(default)]
    pub rest: RestConfig,
    /// Several routers sharing the bot's shards through Redis; absent: this process runs them
    /// all.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// The `[control]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Address of the control API (`POST /v1/gateway/commands`, `/healthz`, `/readyz`,
    /// `/v1/shards`, `/metrics`). Keep it on loopback or a private network.
    #[serde(default = "default_control_listen")]
    pub listen: std::net::SocketAddr,
    /// How long a connection has to send a request's headers, counted from when it is ready
    /// for a request: a new connection, or a kept one after its last answer.
    #[serde(default = "default_header_read_timeout", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection that completes no request for this long is closed, whatever it is doing
    /// (a body sent a byte at a time, an answer nobody reads).
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; more wait for a slot (a probe is served in one of
    /// `reserved_connections` instead). Four times as many may be held, served or waiting.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Slots one peer address may be served in at once; more of its connections wait. Four
    /// times as many may be held, served or waiting.
    #[serde(default = "default_max_connections_per_peer")]
    pub max_connections_per_peer: usize,
    /// Connections past `max_connections` kept for `/healthz`, `/readyz` and `/metrics`, so
    /// probes and scrapes are answered while the rest are taken.
    #[serde(default = "default_reserved_connections")]
    pub reserved_connections: usize,
    /// How long a new connection has to send its first byte before it is closed (it holds
    /// no slot until it has).
    #[serde(default = "default_first_byte_timeout", with = "humantime_serde")]
    pub first_byte_timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: default_control_listen(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_peer: default_max_connections_per_peer(),
            reserved_connections: default_reserved_connections(),
            first_byte_timeout: default_first_byte_timeout(),
        }
    }
}

fn default_max_connections_per_peer() -> usize {
    64
}

fn default_reserved_connections() -> usize {
    8
}

fn default_first_byte_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_connections() -> usize {
    128
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
    /// Interactions on their way in lanes of their own at once, across the router (each can
    /// last 3 s, or 15 minutes when deferred, while its endpoint fails). Past it, an
    /// interaction goes with its shard's other events, in order, as any event does (counted in
    /// `shardhook_interactions_unlaned_total`, warned about); nothing is dropped.
    #[serde(default = "default_max_lanes")]
    pub max_lanes: usize,
}

impl Default for InteractionsConfig {
    fn default() -> Self {
        InteractionsConfig {
            auto_defer: false,
            error_message: default_error_message(),
            max_lanes: default_max_lanes(),
        }
    }
}

fn default_max_lanes() -> usize {
    1024
}

fn default_error_message() -> String {
    "Sorry, something went wrong handling this. Please try again.".to_owned()
}

/// The `[state]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// The directory for dead letters (`dead-letters.jsonl`), resume checkpoints
    /// (`checkpoints/ids-A-B.json`), the spool and other state.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// How often resume checkpoints are written (and always at shutdown).
    #[serde(default = "default_checkpoint_interval", with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// A checkpoint older than this is not resumed from (the shard identifies anew): Discord
    /// keeps a session resumable for minutes, not hours, and a RESUME it refuses costs a round
    /// trip and a session start anyway.
    #[serde(default = "default_checkpoint_max_age", with = "humantime_serde")]
    pub checkpoint_max_age: Duration,
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
            checkpoint_max_age: default_checkpoint_max_age(),
            spool_max_bytes: default_spool_max_bytes(),
        }
    }
}

fn default_checkpoint_max_age() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_checkpoint_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("failed to read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The config file is not TOML. The offending line is not quoted: it may hold a secret.
    #[error("config file {path} is not valid TOML: line {line}, column {column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The line (from 1) where parsing failed.
        line: usize,
        /// The column (from 1, in characters) where parsing failed.
        column: usize,
        /// Why it does not parse.
        message: String,
    },
    /// A key has a value it cannot take, or is unknown.
    #[error("config key `{key}`: {message}")]
    Invalid {
        /// The key's dotted path, e.g. `endpoints[0].url`.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// An environment override does not fit the key it names.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable's name.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// No bot token anywhere.
    #[error("no bot token: set DISCORD_TOKEN or discord.token")]
    MissingToken,
    /// No signing secret anywhere.
    #[error("no signing secret: set SHARDHOOK_SIGNING_SECRET or signing.secret (`shardhook keygen` makes one)")]
    MissingSecret,
    /// No endpoint to deliver to.
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
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| syntax_error(text, origin, &e))?;
        for (var, value) in env {
            // Secrets are set as strings directly, never parsed as TOML.
            let secret_key = match var.as_str() {
                "DISCORD_TOKEN" => Some(("discord", "token")),
                "SHARDHOOK_SIGNING_SECRET" => Some(("signing", "secret")),
                "SHARDHOOK_CONTROL_SECRET" => Some(("signing", "control_secret")),
                "SHARDHOOK_ED25519_PRIVATE_KEY" => Some(("signing", "ed25519_private_key")),
                "SHARDHOOK_REST_SECRET" => Some(("rest", "secret")),
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
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let mut message = e.into_inner().message().to_owned();
            if let Some(hint) = removed_key_hint(&key, &message) {
                message = format!("in {}: {hint} ({message})", origin.display());
            }
            // Secrets are read so their values never reach a message; this is the net under
            // that, for a section (or the whole file) of the wrong type, quoted whole.
            let message = if signing::may_hold_a_secret(&key) {
                signing::without_quoted_values(&message)
            } else {
                message
            };
            ConfigError::Invalid { key, message }
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the schema alone cannot: endpoint URLs, unique names, positive numbers.
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if let Some((key, message)) = self.cluster.as_ref().and_then(|c| c.problem()) {
            return invalid(key.to_owned(), message);
        }
        if let Some((key, message)) = self.discord.problem() {
            return invalid(key.to_owned(), message);
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = |field: &str| format!("endpoints[{i}].{field}");
            match reqwest::Url::parse(&endpoint.url) {
                Ok(url) if url.scheme() == "http" && endpoint.ca_file.is_some() => {
                    return invalid(
                        key("ca_file"),
                        "is for https endpoints; this one's url is http".into(),
                    )
                }
                Ok(url) if matches!(url.scheme(), "http" | "https") => {}
                Ok(url) => {
                    return invalid(
                        key("url"),
                        format!("scheme `{}` is not http or https", url.scheme()),
                    )
                }
                // Not echoed: an unparsable URL cannot be redacted, and it may hold credentials.
                Err(e) => return invalid(key("url"), format!("not a URL: {e}")),
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
            if endpoint.format == EndpointFormat::Carbon
                && self.signing.ed25519_private_key.is_none()
            {
                return invalid(
                    key("format"),
                    format!(
                        "endpoint `{}` has format = \"carbon\", which is signed with Ed25519: set \
                         SHARDHOOK_ED25519_PRIVATE_KEY or signing.ed25519_private_key (`shardhook \
                         keygen --ed25519` makes a pair)",
                        endpoint.name
                    ),
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
        let c = &self.control;
        if c.max_connections == 0 {
            return invalid(
                "control.max_connections".into(),
                "must be at least 1".into(),
            );
        }
        if c.max_connections_per_peer == 0 {
            return invalid(
                "control.max_connections_per_peer".into(),
                "must be at least 1".into(),
            );
        }
        if c.first_byte_timeout.is_zero() {
            return invalid(
                "control.first_byte_timeout".into(),
                "must be more than zero".into(),
            );
        }
        if c.header_read_timeout.is_zero() || c.idle_timeout.is_zero() {
            return invalid(
                "control".into(),
                "header_read_timeout and idle_timeout must be more than 0".into(),
            );
        }
        if self.batch.max_events == 0 {
            return invalid("batch.max_events".into(), "must be at least 1".into());
        }
        let r = &self.rest;
        if r.global_per_second == 0 || r.invalid_request_limit == 0 || r.max_body == 0 {
            return invalid(
                "rest".into(),
                "global_per_second, invalid_request_limit and max_body must be at least 1".into(),
            );
        }
        match r.listen {
            Some(_) if !r.enabled => {
                return invalid(
                    "rest.listen".into(),
                    "is set but rest.enabled is false: enable the proxy, or remove rest.listen"
                        .into(),
                )
            }
            Some(addr) if addr == self.control.listen && addr.port() != 0 => {
                return invalid(
                    "rest.listen".into(),
                    format!("is control.listen's address ({addr}); give it one of its own, or remove it to serve the proxy on control.listen"),
                )
            }
            _ => {}
        }
        if r.enabled && r.auth == RestAuth::SharedSecret && r.secret.is_none() {
            return invalid(
                "rest.auth".into(),
                "is \"shared-secret\" but no secret is set: set SHARDHOOK_REST_SECRET (at least 32 random bytes, e.g. `openssl rand -base64 32`)".into(),
            );
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

/// What to do about `key`, if the deserializer refused it as unknown and it is a key earlier
/// versions read (`REMOVED_KEYS`).
fn removed_key_hint(key: &str, message: &str) -> Option<&'static str> {
    if !message.starts_with("unknown field") {
        return None;
    }
    let (table, name) = key.rsplit_once('.')?;
    // `endpoints[0]` is in the `endpoints` array of tables.
    let table = table.split_once('[').map_or(table, |(array, _)| array);
    REMOVED_KEYS
        .iter()
        .find(|(t, n, _)| *t == table && *n == name)
        .map(|(_, _, hint)| *hint)
}

/// The error for text that is not TOML: where, and why, without the line itself (toml's own
/// message quotes it, and it may be the token's).
fn syntax_error(text: &str, origin: &Path, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |span| span.start).min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax {
        path: origin.to_owned(),
        line,
        column,
        message: e.message().to_owned(),
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
    fn discord_proxy_must_be_an_http_url_and_is_shown_redacted() {
        let config = parse("[discord]\nproxy = \"http://user:pw@10.0.0.1:3128\"").unwrap();
        assert_eq!(
            config.discord.proxy.as_deref(),
            Some("http://user:pw@10.0.0.1:3128")
        );
        let shown = toml::to_string(&config).unwrap();
        assert!(!shown.contains("pw"), "{shown}");
        for bad in ["socks5://10.0.0.1:1080", "not a url"] {
            match parse(&format!("[discord]\nproxy = \"{bad}\"")) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "discord.proxy"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(parse("").unwrap().discord.proxy.is_none(), "unset: direct");
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
    fn http2_is_read_and_checked_by_key() {
        let endpoint = "[[endpoints]]\nname = \"a\"\nurl = \"https://x\"\n";
        let config = parse(&format!("{endpoint}http2 = \"always\"")).unwrap();
        assert_eq!(config.endpoints[0].http2, Http2::Always);
        assert_eq!(parse(endpoint).unwrap().endpoints[0].http2, Http2::Auto);
        let err = parse(&format!("{endpoint}http2 = \"sometimes\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("endpoints[0].http2") && err.contains("auto") && err.contains("never"),
            "{err}"
        );
    }

    #[test]
    fn the_removed_transport_key_is_refused_by_name() {
        let endpoint = "[[endpoints]]\nname = \"a\"\nurl = \"https://x\"\n";
        for value in ["builtin", "hyper"] {
            let err = parse(&format!("{endpoint}transport = \"{value}\""))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(
                    "config key `endpoints[0].transport`: in test.toml: the key was removed"
                ) && err.contains("hyper is the only HTTP client")
                    && err.contains("unknown field `transport`"),
                "{err}"
            );
        }
        // Any other unknown key is just that.
        let err = parse(&format!("{endpoint}transprt = \"hyper\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config key `endpoints[0].transprt`: unknown field `transprt`"),
            "{err}"
        );
    }

    #[test]
    fn a_ca_file_is_for_https_endpoints_only() {
        let https = "[[endpoints]]\nname = \"a\"\nurl = \"https://x\"\nca_file = \"/etc/ca.pem\"";
        let config = parse(https).unwrap();
        assert_eq!(
            config.endpoints[0].ca_file.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        let err = parse(&https.replace("https://", "http://"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("endpoints[0].ca_file") && err.contains("https"),
            "{err}"
        );
    }

    #[test]
    fn compression_is_none_by_default_and_zlib_or_zstd_on_request() {
        assert_eq!(parse("").unwrap().discord.compression, Compression::None);
        let config = parse("[discord]\ncompression = \"zlib-stream\"").unwrap();
        assert_eq!(config.discord.compression, Compression::ZlibStream);
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

    const OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn with_env(text: &str, var: &str, value: &str) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Path::new("t"),
            vec![(var.to_owned(), value.to_owned())],
        )
    }

    #[test]
    fn previous_secrets_take_a_string_as_the_environment_gives_it_or_a_list() {
        let var = "SHARDHOOK__SIGNING__PREVIOUS_SECRETS";
        let one = with_env("", var, OLD).unwrap();
        assert_eq!(one.signing.previous_secrets.len(), 1);
        let two = with_env("", var, &format!("{OLD} {}", SigningKey::generate())).unwrap();
        assert_eq!(two.signing.previous_secrets.len(), 2);
        let listed = with_env("", var, &format!("[\"{OLD}\", \"{OLD}\"]")).unwrap();
        assert_eq!(listed.signing.previous_secrets.len(), 2);
        let in_file = parse(&format!("[signing]\nprevious_secrets = \"{OLD}\"")).unwrap();
        assert_eq!(in_file.signing.previous_secrets.len(), 1);
    }

    #[test]
    fn the_control_secret_comes_from_its_variable_and_is_never_shown() {
        let control = SigningKey::generate();
        let config = with_env("", "SHARDHOOK_CONTROL_SECRET", &control).unwrap();
        assert!(config.signing.control_secret.is_some());
        let shown = config.to_redacted_toml();
        assert!(shown.contains("control_secret = \"<redacted>\""), "{shown}");
        assert!(!shown.contains(&control[6..]), "{shown}");
        let err = with_env("", "SHARDHOOK_CONTROL_SECRET", "whsec_!!!")
            .unwrap_err()
            .to_string();
        assert!(err.contains("signing.control_secret"), "{err}");
    }

    #[test]
    fn errors_about_secrets_never_show_the_value() {
        let secret_part = &OLD[6..];
        let cases = [
            with_env(
                "",
                "SHARDHOOK__SIGNING__PREVIOUS_SECRETS",
                &format!("{OLD}!"),
            ),
            with_env(
                "",
                "SHARDHOOK__SIGNING__PREVIOUS_SECRETS",
                &format!("[\"{OLD}!\"]"),
            ),
            with_env("", "SHARDHOOK__SIGNING__SECRET", &format!("{OLD}!")),
            with_env("", "SHARDHOOK__SIGNING", OLD),
            with_env("", "SHARDHOOK__DISCORD", "tok.SECRET"),
            parse(&format!("signing = \"{OLD}\"")),
            parse(&format!("[signing]\nsecret = [\"{OLD}\"]")),
            parse(&format!("[signing]\nprevious_secrets = [\"{OLD}\", 5]")),
            parse("[discord]\ntoken = { text = \"tok.SECRET\" }"),
        ];
        for case in cases {
            let err = case.unwrap_err().to_string();
            assert!(
                !err.contains(secret_part) && !err.contains("SECRET"),
                "{err}"
            );
            assert!(err.contains("signing") || err.contains("discord"), "{err}");
        }
        let err = parse("[discord]\ntoken = 12").unwrap_err().to_string();
        assert!(
            err.contains("discord.token") && err.contains("expected a string, found integer"),
            "{err}"
        );
    }

    #[test]
    fn a_syntax_error_names_the_line_without_quoting_it() {
        let text = "[discord]\napi_url = \"http://x\"\ntoken = \"tok.SECRET.abc\" x\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("test.toml") && err.contains("line 3"), "{err}");
        assert!(!err.contains("SECRET"), "{err}");
        let err = parse("[signing]\nsecret = \"whsec_abc")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && !err.contains("whsec_abc"),
            "{err}"
        );
    }

    #[test]
    fn control_limits_have_defaults_and_refuse_zero() {
        let config = parse("").unwrap();
        assert_eq!(config.control.header_read_timeout, Duration::from_secs(5));
        assert_eq!(config.control.idle_timeout, Duration::from_secs(30));
        assert_eq!(config.control.max_connections, 128);
        let err = parse("[control]\nmax_connections = 0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("control.max_connections"), "{err}");
        let err = parse("[control]\nidle_timeout = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("idle_timeout"), "{err}");
    }

    #[test]
    fn the_rest_proxy_is_off_by_default_with_discords_numbers_and_refuses_zero() {
        let rest = parse("").unwrap().rest;
        assert!(!rest.enabled);
        assert_eq!(rest.max_wait, Duration::from_secs(10));
        assert_eq!(rest.global_per_second, 50);
        assert_eq!(rest.invalid_request_limit, 8000);
        let rest = parse("[rest]\nenabled = true\nmax_wait = \"2s\"")
            .unwrap()
            .rest;
        assert!(rest.enabled);
        assert_eq!(rest.max_wait, Duration::from_secs(2));
        let err = parse("[rest]\nglobal_per_second = 0")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rest") && err.contains("global_per_second"),
            "{err}"
        );
        let err = parse("[rest]\nmax_bodey = 1").unwrap_err().to_string();
        assert!(err.contains("max_bodey"), "{err}");
    }

    #[test]
    fn a_shared_secret_proxy_needs_a_secret_of_32_bytes_from_the_environment() {
        assert_eq!(parse("").unwrap().rest.auth, RestAuth::Hmac);
        let table = "[rest]\nenabled = true\nauth = \"shared-secret\"";
        let err = parse(table).unwrap_err().to_string();
        assert!(
            err.contains("rest.auth") && err.contains("SHARDHOOK_REST_SECRET"),
            "{err}"
        );
        let short = with_env(table, "SHARDHOOK_REST_SECRET", "too-short-a-secret")
            .unwrap_err()
            .to_string();
        assert!(short.contains("at least 32 bytes"), "{short}");
        assert!(!short.contains("too-short-a-secret"), "{short}");
        let long = "a".repeat(32);
        let config = with_env(table, "SHARDHOOK_REST_SECRET", &long).unwrap();
        assert!(config.rest.secret.unwrap().matches(&long));
        let err = parse("[rest]\nauth = \"basic\"").unwrap_err().to_string();
        assert!(err.contains("rest.auth") || err.contains("auth"), "{err}");
    }

    #[test]
    fn rest_listen_is_an_address_of_its_own_for_an_enabled_proxy() {
        assert_eq!(parse("").unwrap().rest.listen, None);
        let rest = parse("[rest]\nenabled = true\nlisten = \"10.0.0.5:8081\"")
            .unwrap()
            .rest;
        assert_eq!(rest.listen, Some("10.0.0.5:8081".parse().unwrap()));
        let err = parse("[rest]\nenabled = true\nlisten = \"localhost\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("rest.listen"), "{err}");
        let err = parse("[rest]\nlisten = \"127.0.0.1:8081\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rest.listen") && err.contains("rest.enabled is false"),
            "{err}"
        );
        let err = parse("[rest]\nenabled = true\nlisten = \"127.0.0.1:8080\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("rest.listen") && err.contains("control.listen"),
            "{err}"
        );
        let both_ephemeral =
            "[control]\nlisten = \"127.0.0.1:0\"\n[rest]\nenabled = true\nlisten = \"127.0.0.1:0\"";
        assert!(parse(both_ephemeral).is_ok());
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
