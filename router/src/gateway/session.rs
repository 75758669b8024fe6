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
    /// This session, if its resume URL passes `resume_url::check`: a session read back from a
    /// checkpoint (a file, or Redis in a cluster) that names another host is dropped, and the
    /// shard identifies anew rather than send the token there.
    pub(crate) fn checked(self, gateway_url: &str) -> Option<Session> {
        match super::resume_url::check(&self.resume_url, gateway_url) {
            Ok(()) => Some(self),
            Err(refused) => {
                tracing::error!(
                    session_id = %self.id,
                    "the checkpoint's resume URL was refused ({refused}); identifying anew instead of sending the token there"
                );
                None
            }
        }
    }

    /// The session READY starts; its resume URL only if it is on the gateway's domain
    /// (`resume_url`), else the gateway URL.
    pub(crate) fn from_ready(ready: super::payload::Ready<'_>, gateway_url: &str) -> Session {
        Session {
            id: Arc::from(ready.session_id.as_ref()),
            resume_url: super::resume_url::from_ready(
                ready.resume_gateway_url.into_owned(),
                gateway_url,
            ),
            seq: 0,
        }
    }

    /// The session a resume checkpoint records.
    pub fn from_checkpoint(cp: &crate::state::checkpoint::Checkpoint) -> Session {
        Session {
            id: Arc::from(cp.session_id.as_str()),
            resume_url: cp.resume_url.clone(),
            seq: cp.seq,
        }
    }
}
