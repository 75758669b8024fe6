//! IDENTIFY turns across the cluster: a bucket identifies once per 5 s whichever router
//! sends it, and the bot's daily session starts are spent from one count.
//!
//! Owns waiting for a turn; the bucket lock and the count are `store`'s, and the pacing
//! within this process the identify queue's.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tracing::{error, warn};

use super::store::{Store, Turn};
use crate::gateway::identify::{SharedTurns, IDENTIFY_INTERVAL};

/// Held past Discord's 5 s: the lock is taken just before the IDENTIFY is sent.
const TURN_MARGIN: Duration = Duration::from_millis(250);
/// How long to wait before asking again when Redis did not answer.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);
/// The longest single wait for session starts to reset, so a new count is seen.
const EXHAUSTED_RETRY: Duration = Duration::from_secs(60);

/// Turns taken from Redis for one router.
#[derive(Debug)]
pub(super) struct RedisTurns {
    pub(super) store: Store,
    pub(super) node: String,
}

impl SharedTurns for RedisTurns {
    fn turn(&self, bucket: u32) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                let wait = match self
                    .store
                    .turn(bucket, &self.node, IDENTIFY_INTERVAL + TURN_MARGIN)
                    .await
                {
                    Ok(Turn::Go) => return,
                    Ok(Turn::Wait(wait)) => wait,
                    Ok(Turn::Exhausted(reset)) => {
                        error!(
                            bucket,
                            reset_in = ?reset,
                            "no session starts left today across the cluster: waiting for Discord to reset them"
                        );
                        reset.min(EXHAUSTED_RETRY)
                    }
                    Err(e) => {
                        warn!(bucket, "could not take an IDENTIFY turn: {e}; retrying");
                        UNREACHABLE_RETRY
                    }
                };
                tokio::time::sleep(wait).await;
            }
        })
    }
}
