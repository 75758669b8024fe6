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
    /// With `rediss://`: a PEM file of the CA that signed the Redis server's certificate (a
    /// private CA), trusted instead of the system's roots. Default: the system's roots.
    #[serde(default)]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// The most dead letters the cluster's Redis stream holds; past it a router's shard waits
    /// (nothing dropped) until `shardhook cluster dead-letters` moves them out. An error is
    /// logged from nine tenths of it.
    #[serde(default = "default_dead_letters_max")]
    pub dead_letters_max: u64,
}

fn default_dead_letters_max() -> u64 {
    100_000
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
        if let Some(path) = &self.redis_ca_file {
            let tls =
                self.redis_url.starts_with("rediss://") || self.redis_url.starts_with("valkeys://");
            if !tls {
                return Some((
                    "cluster.redis_ca_file",
                    "is set, but cluster.redis_url is not rediss:// (TLS)".to_owned(),
                ));
            }
            match std::fs::read_to_string(path) {
                Ok(pem) if pem.contains("-----BEGIN CERTIFICATE-----") => {}
                Ok(_) => {
                    return Some((
                        "cluster.redis_ca_file",
                        format!("{} holds no PEM certificate", path.display()),
                    ))
                }
                Err(e) => {
                    return Some((
                        "cluster.redis_ca_file",
                        format!("cannot read {}: {e}", path.display()),
                    ))
                }
            }
        }
        if self.dead_letters_max == 0 {
            return Some(("cluster.dead_letters_max", "must be at least 1".to_owned()));
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

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, std::path::Path::new("t.toml"), Vec::new())
    }

    fn refused(text: &str) -> (String, String) {
        match parse(text) {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("expected an invalid key, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_in_and_the_password_is_never_shown() {
        let config = parse("[cluster]\nredis_url = \"redis://:hunter2@10.0.0.9:6379/2\"").unwrap();
        let cluster = config.cluster.as_ref().unwrap();
        assert_eq!(cluster.lease_ttl, std::time::Duration::from_secs(10));
        assert_eq!(cluster.weight, 1.0);
        assert!(cluster
            .node_id
            .ends_with(&format!("-{}", std::process::id())));
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(
            shown.contains("redis://<redacted>@10.0.0.9:6379/2"),
            "{shown}"
        );
        assert!(
            parse("").unwrap().cluster.is_none(),
            "no section: a router alone"
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let (key, message) = refused("[cluster]\nredis_url = \"http://:pw@redis:6379\"");
        assert_eq!(key, "cluster.redis_url");
        assert!(
            message.contains("`http`") && !message.contains("pw"),
            "{message}"
        );
        let (key, message) = refused("[cluster]\nredis_url = \"not a url :pw\"");
        assert_eq!(key, "cluster.redis_url");
        assert!(!message.contains("pw"), "{message}");
        let url = "redis_url = \"redis://127.0.0.1\"";
        assert_eq!(
            refused(&format!("[cluster]\n{url}\nnode_id = \"a b\"")).0,
            "cluster.node_id"
        );
        assert_eq!(
            refused(&format!("[cluster]\n{url}\nlease_ttl = \"500ms\"")).0,
            "cluster.lease_ttl"
        );
        assert_eq!(
            refused(&format!("[cluster]\n{url}\nweight = 0.0")).0,
            "cluster.weight"
        );
        assert_eq!(
            refused(&format!(
                "[cluster]\n{url}\nlease_ttl = \"2s\"\nredis_timeout = \"2s\""
            ))
            .0,
            "cluster.redis_timeout"
        );
        assert!(
            parse(&format!("[cluster]\n{url}\nleas_ttl = \"2s\"")).is_err(),
            "unknown keys"
        );
    }

    #[test]
    fn a_redis_ca_file_must_be_a_readable_pem_for_a_tls_url() {
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/tls-ca.pem");
        let tls = "redis_url = \"rediss://redis.internal:6380\"";
        assert!(parse(&format!("[cluster]\n{tls}\nredis_ca_file = {ca:?}"))
            .unwrap()
            .cluster
            .unwrap()
            .redis_ca_file
            .is_some());
        let (key, message) = refused(&format!(
            "[cluster]\nredis_url = \"redis://redis.internal\"\nredis_ca_file = {ca:?}"
        ));
        assert_eq!(key, "cluster.redis_ca_file");
        assert!(message.contains("not rediss://"), "{message}");
        let (key, message) = refused(&format!(
            "[cluster]\n{tls}\nredis_ca_file = \"/nonexistent/ca.pem\""
        ));
        assert_eq!(key, "cluster.redis_ca_file");
        assert!(message.contains("/nonexistent/ca.pem"), "{message}");
        let not_pem = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let (key, message) = refused(&format!("[cluster]\n{tls}\nredis_ca_file = {not_pem:?}"));
        assert_eq!(key, "cluster.redis_ca_file");
        assert!(message.contains("no PEM certificate"), "{message}");
    }
}
