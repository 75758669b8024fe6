//! Whether this process may run a shard now (`Tenure`), as the composition root tells each
//! shard: always, for a router alone; while it holds the shard's lease, in a cluster.
//!
//! Owns the value only. Who grants it is the router (alone) or `cluster` (leases); what a
//! shard does on each value is `shard`'s.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::gateway::session::Session;

/// Each shard's tenure sender, by shard id.
pub type Tenures = Arc<BTreeMap<u32, watch::Sender<Tenure>>>;

/// What a shard's task may do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenure {
    /// Not this process's shard now: stay disconnected (and, when connected, stop reading, hand
    /// on what was read, and close resumably).
    Standby,
    /// Run the shard. A new `grant` number means a new tenure: the shard starts it from
    /// `resume` (a checkpoint, or nothing: IDENTIFY), whatever session it had before, since
    /// another process may have moved it on meanwhile.
    Held {
        /// Which tenure this is; grants of one shard are numbered upward.
        grant: u64,
        /// The session to RESUME, if any.
        resume: Option<Session>,
    },
    /// The process is stopping: close resumably and end the task.
    Stopped,
}

impl Tenure {
    /// Whether the shard may be connected.
    pub fn runs(&self) -> bool {
        matches!(self, Tenure::Held { .. })
    }
}
