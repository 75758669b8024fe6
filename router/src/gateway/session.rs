//! A gateway session: what a shard needs to RESUME after a disconnect.
//!
//! Owns the session's identity and progress. It is serialisable so a later change can persist
//! it and resume across restarts; it does not decide when to resume (that is `shard`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The resumable state of one shard's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// `session_id` from READY.
    pub id: Arc<str>,
    /// `resume_gateway_url` from READY: resumes must connect here, not to the general URL.
    pub resume_url: String,
    /// The last sequence number received.
    pub seq: u64,
}

impl Session {
    /// The session a resume checkpoint records.
    pub fn from_checkpoint(cp: &crate::state::checkpoint::Checkpoint) -> Session {
        Session {
            id: Arc::from(cp.session_id.as_str()),
            resume_url: cp.resume_url.clone(),
            seq: cp.seq,
        }
    }
}
