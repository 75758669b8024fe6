//! Delivery: every dispatch leaves as a signed POST to the endpoint its shard hashes to, paced,
//! retried, and delivered or dead-lettered.
//!
//! Owns the pipeline from the per-shard queues (bounded: a full one stops that shard's reading)
//! through filtering, batching, ordering, the requests that carry many shards' batches
//! (`outbox`), signing, sending, retrying, failover and dead letters, and the delivery
//! counters. It leaves the body format to `batch`, the retry rules to `retry`,
//! endpoint choice to `ring`, and endpoint health to `circuit`; where a shard's spool is kept
//! (the disk, or a cluster's Redis) is `spool_store`'s.

mod attempt;
mod aws_chain;
mod aws_credentials;
pub(crate) mod batch;
mod carbon;
mod circuit;
mod endpoint;
pub(crate) mod http;
mod interactions;
mod outbox;
mod pacer;
mod pipeline;
mod retry;
pub(crate) mod ring;
mod shared;
pub(crate) mod signer;
mod sigv4;
mod spool_store;
mod spooling;
mod stats;
mod worker;

use std::time::Duration;

pub(crate) use pipeline::Keeping;
pub use pipeline::{DeliveryError, DeliveryHandle, Pipeline, RefusedLetter, Replayed};
pub use stats::{DeliveryStats, StatsSnapshot};

/// The event Discord gives 3 s to acknowledge: it never waits for a batch to fill.
const INTERACTION_CREATE: &str = "INTERACTION_CREATE";
/// How often a full or failing spool is tried again, and a spool waiting on circuits looked at.
const SPOOL_RETRY: Duration = Duration::from_millis(250);

use spool_store::SharedSpool;
