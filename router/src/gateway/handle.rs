//! A shard as the rest of the router sees it: its state (`ShardState`), a snapshot of its
//! status published on every change (`ShardStatus`), and a handle (`ShardHandle`) to read both
//! and to queue gateway commands under the connection's send budget.
//!
//! Owns the outside view only; the task behind it is `shard`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::gateway::close_code;
use crate::gateway::command_limiter::CommandLimiter;

/// Commands admitted but not yet sent. Kept below any connection's budget, since commands
/// queued when a connection drops are charged to the next connection's limiter.
pub(super) const COMMAND_QUEUE: usize = 32;

/// Where a shard is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardState {
    /// Connecting and sending IDENTIFY for a new session.
    Identifying,
    /// Connecting and sending RESUME for the current session.
    Resuming,
    /// READY or RESUMED received; events flow.
    Active,
    /// Between connections, waiting out a backoff.
    Disconnected {
        /// Connection attempts since the shard was last active.
        reconnect_attempts: u32,
    },
    /// Not run by this process now: another router of the cluster holds its lease, or none
    /// does yet.
    Standby,
    /// Stopped for good by a close code that reconnecting cannot fix.
    FatallyClosed {
        /// The close code.
        code: u16,
    },
}

/// A snapshot of a shard, published on every state change.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    /// Where the shard is in its life.
    pub state: ShardState,
    /// The current session, once READY arrived.
    pub session_id: Option<Arc<str>>,
    /// Sessions started with IDENTIFY (READY received).
    pub sessions: u32,
    /// Sessions continued with RESUME (RESUMED received).
    pub resumes: u32,
    /// Connections that ended and were replaced.
    pub reconnects: u32,
    /// Gateway messages skipped for exceeding `discord.max_message_size`.
    pub oversize_skipped: u32,
    /// Round trip of the last acknowledged heartbeat.
    pub latency: Option<Duration>,
    /// Why the last connection ended, for humans.
    pub last_disconnect: Option<String>,
    /// Connections that ended, by cause (`zombie`, `op7`, `close_code`...).
    pub reconnect_causes: std::collections::BTreeMap<&'static str, u64>,
    /// When the current session started (READY).
    pub session_started: Option<Instant>,
    /// The current session's `resume_gateway_url`.
    pub resume_url: Option<Arc<str>>,
}

impl ShardStatus {
    pub(super) fn new() -> ShardStatus {
        ShardStatus {
            state: ShardState::Disconnected {
                reconnect_attempts: 0,
            },
            session_id: None,
            sessions: 0,
            resumes: 0,
            reconnects: 0,
            oversize_skipped: 0,
            latency: None,
            last_disconnect: None,
            reconnect_causes: Default::default(),
            session_started: None,
            resume_url: None,
        }
    }
}

/// The current connection's command limiter, shared with the shard's handles so a caller can
/// be told "not now" (and for how long) instead of queueing without bound.
pub(super) type CommandGate = Arc<std::sync::Mutex<Option<Arc<CommandLimiter>>>>;

/// A running shard, as seen from outside: its status and a way to send it commands.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    pub(super) id: u32,
    pub(super) status: watch::Receiver<ShardStatus>,
    pub(super) last_seq: Arc<AtomicU64>,
    pub(super) received: Arc<AtomicU64>,
    pub(super) commands: mpsc::Sender<String>,
    pub(super) gate: CommandGate,
}

/// The shard has stopped and takes no more commands.
#[derive(Debug, thiserror::Error)]
#[error("shard {0} has stopped")]
pub struct ShardStopped(pub u32);

/// Why a command was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandRefused {
    /// The shard has no active session now.
    #[error("the shard is not connected")]
    NotConnected,
    /// The connection's budget of 120 payloads per 60 s is spent for this long.
    #[error("the shard's send budget is spent; retry in {0:?}")]
    RateLimited(Duration),
    /// The shard has stopped for good.
    #[error("the shard has stopped")]
    Stopped,
}

impl ShardHandle {
    /// The shard's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A receiver of the shard's status; `wait_for` on it awaits a state.
    pub fn status(&self) -> watch::Receiver<ShardStatus> {
        self.status.clone()
    }

    /// The last sequence number received on the current session.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Relaxed)
    }

    /// Dispatch events received since start.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The connection's command budget per 60 s, while connected.
    pub fn command_budget(&self) -> Option<u32> {
        self.limiter().map(|l| l.budget())
    }

    fn limiter(&self) -> Option<Arc<CommandLimiter>> {
        self.gate.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues a gateway command (a whole payload, `{"op":..,"d":..}`) now if the shard is
    /// active and its send budget allows, or says why not. Validating the command is the
    /// caller's job.
    pub fn try_send(&self, payload: String) -> Result<(), CommandRefused> {
        if self.status.borrow().state != ShardState::Active {
            return Err(CommandRefused::NotConnected);
        }
        let limiter = self.limiter().ok_or(CommandRefused::NotConnected)?;
        // Room in the queue first: a command refused for a full queue spends no slot of the
        // connection's budget.
        let room = self.commands.try_reserve().map_err(|e| match e {
            mpsc::error::TrySendError::Full(()) => {
                CommandRefused::RateLimited(Duration::from_secs(1))
            }
            mpsc::error::TrySendError::Closed(()) => CommandRefused::Stopped,
        })?;
        limiter.try_acquire().map_err(CommandRefused::RateLimited)?;
        room.send(payload);
        Ok(())
    }

    /// Queues a gateway command, waiting for the shard to be active and for its send budget.
    pub async fn send(&self, payload: String) -> Result<(), ShardStopped> {
        let mut status = self.status.clone();
        loop {
            status
                .wait_for(|s| s.state == ShardState::Active)
                .await
                .map_err(|_| ShardStopped(self.id))?;
            if let Some(limiter) = self.limiter() {
                limiter.acquire().await;
                return self
                    .commands
                    .send(payload)
                    .await
                    .map_err(|_| ShardStopped(self.id));
            }
            status.changed().await.map_err(|_| ShardStopped(self.id))?;
        }
    }
}

/// A shard stopped for good.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard}: the gateway closed with {code} ({meaning}); the shard is stopped", meaning = close_code::meaning(*code))]
pub struct FatalClose {
    /// The shard's id.
    pub shard: u32,
    /// The close code Discord sent.
    pub code: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active_handle(queue: usize) -> (ShardHandle, mpsc::Receiver<String>, Arc<CommandLimiter>) {
        let (commands, rx) = mpsc::channel(queue);
        let (_, status) = watch::channel(ShardStatus {
            state: ShardState::Active,
            ..ShardStatus::new()
        });
        let limiter = Arc::new(CommandLimiter::new(Duration::from_millis(41_250)));
        let handle = ShardHandle {
            id: 0,
            status,
            last_seq: Arc::default(),
            received: Arc::default(),
            commands,
            gate: Arc::new(std::sync::Mutex::new(Some(limiter.clone()))),
        };
        (handle, rx, limiter)
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_refused_for_a_full_queue_spends_no_slot_of_the_budget() {
        let (handle, mut rx, limiter) = active_handle(1);
        handle.try_send("first".into()).unwrap();
        let budget = limiter.budget();
        for _ in 0..budget * 2 {
            assert_eq!(
                handle.try_send("refused".into()),
                Err(CommandRefused::RateLimited(Duration::from_secs(1)))
            );
        }
        // The queue drains: the whole budget but the first command's slot is still there.
        assert_eq!(rx.recv().await.as_deref(), Some("first"));
        for n in 1..budget {
            handle.try_send(format!("c{n}")).unwrap();
            rx.recv().await.unwrap();
        }
        assert!(
            matches!(
                handle.try_send("over".into()),
                Err(CommandRefused::RateLimited(_))
            ),
            "the budget holds"
        );
    }
}
