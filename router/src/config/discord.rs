//! The `[discord]` section: the token, the API and gateway, intents, compression, and which
//! shards this process runs.
//!
//! Owns its schema and defaults, and reading the token and the shard plan from TOML; checks
//! across sections are `Config::validate`'s.

use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::intents;
use crate::secret::Token;

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
    /// Transport compression asked of Discord: `"zlib-stream"`, `"zstd-stream"` or `"none"`.
    #[serde(default)]
    pub compression: Compression,
    /// An HTTP(S) proxy for Discord's REST API (`GET /gateway/bot`, the REST proxy, deferring
    /// interactions), e.g. `"http://10.0.0.1:3128"`. Unset, the router talks to Discord
    /// directly and ignores `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY`: the bot token goes
    /// in every such request, and an environment variable set for something else must not
    /// send it to a proxy. Shown redacted.
    #[serde(default, serialize_with = "redacted_proxy")]
    pub proxy: Option<String>,
}

fn redacted_proxy<S: serde::Serializer>(proxy: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match proxy {
        Some(url) => s.serialize_some(&crate::secret::redact_url(url)),
        None => s.serialize_none(),
    }
}

impl DiscordConfig {
    /// `builder` set to reach Discord: through `proxy` if one is named, else directly,
    /// whatever the environment's proxy variables say.
    pub(crate) fn client(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, super::ConfigError> {
        match &self.proxy {
            Some(url) => reqwest::Proxy::all(url.as_str())
                .map(|proxy| builder.proxy(proxy))
                .map_err(|e| super::ConfigError::Invalid {
                    key: "discord.proxy".to_owned(),
                    message: format!("is not a proxy URL: {e}"),
                }),
            None => Ok(builder.no_proxy()),
        }
    }

    /// What is wrong with `proxy`, if anything.
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        let url = self.proxy.as_deref()?;
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => None,
            Ok(parsed) => Some((
                "discord.proxy",
                format!(
                    "scheme `{}` is not http:// or https:// ({})",
                    parsed.scheme(),
                    crate::secret::redact_url(url)
                ),
            )),
            Err(e) => Some(("discord.proxy", format!("is not a URL: {e}"))),
        }
    }
}

/// How Discord compresses a gateway connection (the `compress` query parameter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum Compression {
    /// One zlib stream per connection, each message ending with a sync flush: about a fifth of
    /// the bytes on the wire, for a context of about 47 KiB per connection.
    #[serde(rename = "zlib-stream")]
    ZlibStream,
    /// One zstd stream per connection, flushed after each message: fewer bytes on the wire for
    /// about the same CPU, and more memory per connection (the decoder keeps the window
    /// Discord compresses with, up to 8 MiB, where zlib keeps 32 KiB).
    #[serde(rename = "zstd-stream")]
    ZstdStream,
    /// No compression, the default: text frames as Discord writes them. No decompression
    /// context per connection (zlib's is about 47 KiB, most of a connected shard's memory) and
    /// no inflating, for several times the bytes received. Memory is what a small VPS lacks;
    /// inbound bytes are what it is rarely billed for.
    #[default]
    #[serde(rename = "none")]
    None,
}

impl Compression {
    /// Every compression the router speaks.
    pub const ALL: [Compression; 3] = [
        Compression::ZlibStream,
        Compression::ZstdStream,
        Compression::None,
    ];

    /// The compression a `compress=` value names, if any.
    pub fn named(value: &str) -> Option<Compression> {
        Compression::ALL.into_iter().find(|c| c.as_str() == value)
    }

    /// Its name in the config, and the value of `compress=` in the gateway URL (which `None`
    /// leaves out).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::ZlibStream => "zlib-stream",
            Compression::ZstdStream => "zstd-stream",
            Compression::None => "none",
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
            proxy: None,
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
    Explicit {
        /// The shard count every process of the bot identifies with.
        total: u32,
        /// The shard ids this process runs.
        ids: Range<u32>,
    },
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
