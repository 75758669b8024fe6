//! What the REST proxy counts, for `/metrics`: requests by route template and status, the time
//! requests waited for their rate limits, 429s by scope, and (read from the guard at scrape
//! time) the invalid-request window.
//!
//! Owns the counters only; their names and exposition are `control::metrics`'.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use super::route::MAX_TEMPLATES;

/// The scopes 429s are counted by: Discord's three, and `router` for those the router answered
/// itself because the wait would pass `rest.max_wait`.
pub const SCOPES: [&str; 4] = ["user", "global", "shared", "router"];

/// The proxy's counters.
#[derive(Debug)]
pub struct RestStats {
    /// (route template, status) to requests answered.
    requests: Mutex<HashMap<(String, u16), u64>>,
    /// Seconds each request waited for its rate limit before it was sent.
    pub(crate) wait: Histogram,
    /// 429s by `SCOPES`' index.
    rate_limited: [AtomicU64; 4],
}

impl Default for RestStats {
    fn default() -> Self {
        RestStats {
            requests: Mutex::new(HashMap::new()),
            wait: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            rate_limited: Default::default(),
        }
    }
}

impl RestStats {
    /// Counts an answer of `status` on the route `template`.
    pub fn answered(&self, template: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let key = (template.to_owned(), status);
        if let Some(n) = requests.get_mut(&key) {
            *n += 1;
            return;
        }
        // Callers are authenticated, but their paths are still theirs: the label set is bounded.
        let key = if requests.len() >= MAX_TEMPLATES {
            ("other".to_owned(), status)
        } else {
            key
        };
        *requests.entry(key).or_default() += 1;
    }

    /// Counts a 429 of `scope` (one of `SCOPES`).
    pub fn rate_limited(&self, scope: &str) {
        if let Some(i) = SCOPES.iter().position(|s| *s == scope) {
            self.rate_limited[i].fetch_add(1, Relaxed);
        }
    }

    /// Requests by (template, status), as counted so far.
    pub fn requests(&self) -> Vec<((String, u16), u64)> {
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// 429s by scope.
    pub fn rate_limited_by_scope(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        SCOPES
            .iter()
            .zip(&self.rate_limited)
            .map(|(scope, n)| (*scope, n.load(Relaxed)))
    }
}
