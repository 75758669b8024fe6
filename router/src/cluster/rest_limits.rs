//! The bot's REST limits in a cluster: Discord's global limit and invalid-request count kept in
//! Redis for every router of the bot, so routers behind one IP send at most
//! `rest.global_per_second` a second between them, paced evenly, and stop at one
//! `rest.invalid_request_limit` together.
//!
//! Owns the bridge from `state::rest_limits`' `RestLimits` to `store`'s calls. Per-route
//! buckets stay each router's (twilight's limiter, learning from Discord's headers): a route
//! used from two routers at once can draw a 429 of scope `user` that one router alone would
//! not, which counts against the invalid-request limit like any other.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::store::Store;
use crate::state::request_ids::Answer;
use crate::state::rest_limits::{RestLimits, Slot};

/// REST limits in the cluster's Redis.
#[derive(Debug)]
pub(super) struct RedisLimits {
    pub(super) store: Store,
    pub(super) node: String,
    /// Makes each counted answer a member of its own.
    pub(super) counted: AtomicU64,
}

impl RestLimits for RedisLimits {
    fn reserve(&self, per_second: u16, max_wait: Duration) -> Answer<'_, Slot> {
        Box::pin(async move {
            match self.store.global_slot(per_second, max_wait).await {
                Ok((true, wait)) => Slot::In(wait),
                Ok((false, wait)) => Slot::TooFar(wait),
                Err(e) => Slot::Unavailable(e.to_string()),
            }
        })
    }

    fn record_invalid(&self) -> Answer<'_, ()> {
        Box::pin(async move {
            let n = self.counted.fetch_add(1, Ordering::Relaxed);
            let member = format!("{}:{}:{n}", self.node, super::now_ms());
            if let Err(e) = self.store.record_invalid(&member).await {
                tracing::error!("could not count an invalid answer from Discord in Redis: {e}");
            }
        })
    }

    fn invalid(&self, limit: u32) -> Answer<'_, Result<(usize, Duration), String>> {
        Box::pin(async move {
            self.store
                .invalid_count(limit)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
