//! Spent request ids in a cluster: one set for every router of the bot, in Redis, so a signed
//! gateway command or REST call accepted by one router is refused by every other (a captured
//! request replayed to another router, or after its shard moved).
//!
//! Owns the bridge from `control`'s `SpentIds` to `store`'s calls. An id is claimed with
//! `SET NX` when its request is checked, by whichever router gets it first, and expires with
//! the signature's window; a request not acted on frees it. With Redis away nothing is acted
//! on: the request is answered 503 (failing closed, since a replay could not be told apart).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::store::Store;
use crate::state::request_ids::{Answer, Claim, SpentIds};

/// Request ids in the cluster's Redis.
pub(super) struct RedisIds {
    pub(super) store: Store,
    pub(super) node: String,
}

impl SpentIds for RedisIds {
    fn claim<'a>(&'a self, id: &'a str, expires: u64, now: u64) -> Answer<'a, Claim> {
        Box::pin(async move {
            // Kept a second past the window, against routers' clocks a little apart.
            let ttl = Duration::from_secs(expires.saturating_sub(now) + 1);
            match self.store.claim_id(id, &self.node, ttl).await {
                Ok(true) => Claim::Claimed,
                Ok(false) => Claim::Seen,
                Err(e) => Claim::Unavailable(e.to_string()),
            }
        })
    }

    fn release<'a>(&'a self, id: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.store.release_id(id, &self.node).await {
                // Left claimed: the request may not be sent again with this id (a fresh id
                // goes), which is the safe side.
                tracing::warn!(webhook_id = %id, "could not free a request id in Redis: {e}");
            }
        })
    }

    /// Already kept since its claim, until the window ends.
    fn spend(self: Arc<Self>, _id: String, _expires: u64) -> Answer<'static, io::Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}
