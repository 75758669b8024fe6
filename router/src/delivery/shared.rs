//! What every delivery task of the process shares (`Shared`): the endpoints and the ring that
//! picks among them, the signers (Standard Webhooks, and Ed25519 for Carbon endpoints), the
//! application id Carbon bodies carry, the AWS credentials, the config, the filters, the
//! dead-letter file, the counters, and durable progress.
//!
//! Owns only the record; `pipeline` builds it, and the tasks' behaviour on it lives with them
//! (`worker` reads a shard's queue through it, `interactions` defers and apologises, `attempt`
//! sends).

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use super::aws_credentials::AwsCredentials;
use super::endpoint::Endpoint;
use super::ring::Ring;
use super::signer::Signer;
use super::stats::DeliveryStats;
use crate::config::{Config, EndpointFormat};
use crate::secret::Ed25519Key;
use crate::state::dead_letter::DeadLetters;
use crate::state::spool::SpoolUsage;

/// What the delivery tasks share.
pub(super) struct Shared {
    pub(super) client: reqwest::Client,
    pub(super) signer: Signer,
    /// What `format = "carbon"` endpoints are signed with; validated present when one is
    /// configured.
    pub(super) ed25519: Option<Ed25519Key>,
    /// The bot's application id, for Carbon bodies: from `GET /users/@me` at start, else from
    /// the first READY.
    pub(super) application_id: OnceLock<Arc<str>>,
    pub(super) endpoints: Vec<Endpoint>,
    /// What `auth = "aws-iam"` endpoints sign with; `None` when no endpoint has it.
    pub(super) aws_credentials: Option<AwsCredentials>,
    pub(super) ring: Ring,
    pub(super) config: Config,
    pub(super) include: HashSet<String>,
    pub(super) exclude: HashSet<String>,
    pub(super) dead: DeadLetters,
    pub(super) stats: Arc<DeliveryStats>,
    /// What is safe per shard, for resume checkpoints.
    pub(super) progress: crate::state::progress::Progress,
    /// Bytes spooled across shards, against `state.spool_max_bytes`.
    pub(super) spool_usage: Arc<SpoolUsage>,
    /// Interactions' lanes free now, of `interactions.max_lanes`.
    pub(super) lanes: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    /// The format of a shard's home endpoint (its first choice by the ring): its requests are
    /// built in it, and fail over only to endpoints of it.
    pub(super) fn home_format(&self, shard_id: u32) -> EndpointFormat {
        self.ring
            .pick(shard_id as u64, |_| true)
            .map_or(EndpointFormat::Shardhook, |i| self.endpoints[i].format)
    }
}
