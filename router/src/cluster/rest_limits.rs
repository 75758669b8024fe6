//! The bot's REST limits in a cluster: Discord's global limit and invalid-request count kept in
//! Redis for every router of the bot, so routers behind one IP send at most
//! `rest.global_per_second` a second between them, paced evenly, and stop at one
//! `rest.invalid_request_limit` together.
//!
//! Route buckets are kept in Redis too: each response's `X-RateLimit-*` is recorded there and
//! each request takes one of the bucket's `remaining` there, so two routers sending on one
//! channel spend one window between them (each router's twilight limiter, which sees only its
//! own requests, still orders its own). Windows in Redis rather than each bucket routed to one
//! node (as nirn-proxy does): no request crosses between routers, and a router that dies
//! takes no bucket with it.
//!
//! Owns the bridge from `state::rest_limits`' `RestLimits` to `store`'s calls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::store::Store;
use crate::state::request_ids::Answer;
use crate::state::rest_limits::{Learned, RestLimits, Slot, Turn};

/// REST limits in the cluster's Redis.
#[derive(Debug)]
pub(super) struct RedisLimits {
    pub(super) store: Store,
    pub(super) node: String,
    /// Makes each counted answer a member of its own.
    pub(super) counted: AtomicU64,
}

impl RestLimits for RedisLimits {
    fn take_route<'a>(&'a self, key: &'a str, max_wait: Duration) -> Answer<'a, Turn> {
        Box::pin(async move {
            match self.store.take_route(key, max_wait).await {
                Ok((1, _)) => Turn::Go,
                Ok((2, wait)) => Turn::After(wait),
                Ok((3, _)) => Turn::Learning,
                Ok((_, wait)) => Turn::TooFar(wait),
                Err(e) => Turn::Unavailable(e.to_string()),
            }
        })
    }

    fn learn_route<'a>(&'a self, key: &'a str, learned: Learned) -> Answer<'a, ()> {
        Box::pin(async move {
            let Learned {
                limit,
                remaining,
                reset_after,
            } = learned;
            if let Err(e) = self
                .store
                .learn_route(key, limit, remaining, reset_after)
                .await
            {
                tracing::warn!("could not record a route bucket's window in Redis: {e}");
            }
        })
    }

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
