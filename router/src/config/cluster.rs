//! The `[cluster]` section: several routers sharing one bot's shards through Redis.
//!
//! Owns its schema, defaults and the checks of its own fields; what the routers do with it is
//! `cluster`'s. Without the section nothing changes: one process runs every shard.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[cluster]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The Redis (or Valkey) every router of the bot uses: `redis://[:password@]host:port[/db]`
    /// (`rediss://` for TLS). Shown redacted.
    #[serde(serialize_with = "redacted")]
    pub redis_url: String,
    /// This router's name among the bot's routers; unique per process. Default: the host
    /// name and the process id.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    /// How long a shard's lease, and this router's membership, outlive its last renewal. A
    /// dead router's shards move to the others this long after it died.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// This router's share of the shards relative to the others' (rendezvous weight): 2 takes
    /// about twice the shards of a router with 1.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// The control address other routers forward gateway commands to (and `421` answers name)
    /// for the shards this router owns. Default: `control.listen` as bound.
    #[serde(default)]
    pub advertise: Option<String>,
    /// How long any one Redis call may take before it counts as failed.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub redis_timeout: Duration,
}

fn redacted<S: serde::Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::secret::redact_url(url))
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "router".to_owned());
    format!("{host}-{}", std::process::id())
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_weight() -> f64 {
    1.0
}

fn default_redis_timeout() -> Duration {
    Duration::from_secs(2)
}

impl ClusterConfig {
    /// What is wrong with a field, as (key, message), if anything.
    pub(super) fn problem(&self) -> Option<(&'static str, String)> {
        match reqwest::Url::parse(&self.redis_url) {
            Ok(url) if matches!(url.scheme(), "redis" | "rediss" | "valkey" | "valkeys") => {}
            Ok(url) => {
                return Some((
                    "cluster.redis_url",
                    format!(
                        "scheme `{}` is not redis:// or rediss:// ({})",
                        url.scheme(),
                        crate::secret::redact_url(&self.redis_url)
                    ),
                ))
            }
            // Not echoed: an unparsable URL cannot be redacted, and it may hold a password.
            Err(e) => return Some(("cluster.redis_url", format!("is not a URL: {e}"))),
        }
        if self.node_id.is_empty()
            || !self
                .node_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
        {
            return Some((
                "cluster.node_id",
                format!(
                    "`{}` must be non-empty letters, digits, `-`, `_`, `.` or `:`",
                    self.node_id
                ),
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Some((
                "cluster.lease_ttl",
                format!(
                    "{:?} is too short: renewals run every third of it; at least 1s",
                    self.lease_ttl
                ),
            ));
        }
        if !(self.weight.is_finite() && self.weight > 0.0) {
            return Some((
                "cluster.weight",
                format!("{} must be a positive number", self.weight),
            ));
        }
        if self.redis_timeout.is_zero() || self.redis_timeout >= self.lease_ttl {
            return Some((
                "cluster.redis_timeout",
                format!(
                    "{:?} must be above zero and below cluster.lease_ttl ({:?})",
                    self.redis_timeout, self.lease_ttl
                ),
            ));
        }
        None
    }
}
