//! The per-connection limiter for payloads the shard sends, since Discord allows 120 per 60 s
//! per connection.
//!
//! Owns the budget arithmetic for gateway commands (heartbeats and the IDENTIFY/RESUME are
//! reserved out of the 120, so commands never crowd out a heartbeat); heartbeats themselves
//! bypass it. It leaves when a command may be queued to `shard`'s handle.

use std::time::Duration;

use crate::state::sliding_log::SlidingLog;

/// Discord's window for sent payloads.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Payloads Discord allows per window per connection before closing with 4008.
pub const LIMIT: u32 = 120;
/// Payloads kept back beyond the heartbeats: IDENTIFY or RESUME, and an on-demand heartbeat.
const RESERVED_EXTRA: u32 = 2;

/// Paces a shard's gateway commands: at most `budget` in any 60 s window, which is exactly
/// Discord's rule. A GCRA (governor) cannot express a fixed count per window without halving
/// the burst, so this keeps a log of send times instead (`state::sliding_log`); delivery's
/// `Pacer` serves per-second rates.
#[derive(Debug)]
pub struct CommandLimiter {
    budget: u32,
    sent: std::sync::Mutex<SlidingLog>,
}

impl CommandLimiter {
    /// A limiter whose commands plus the heartbeats at `heartbeat_interval` stay within
    /// Discord's 120 per 60 s in any window.
    pub fn new(heartbeat_interval: Duration) -> CommandLimiter {
        let budget = command_budget(heartbeat_interval);
        CommandLimiter {
            budget,
            // Grown on use: most shards never send a command, and a full window is ~2 KiB.
            sent: std::sync::Mutex::new(SlidingLog::new(WINDOW, budget as usize)),
        }
    }

    /// Commands allowed per 60 s window.
    pub fn budget(&self) -> u32 {
        self.budget
    }

    /// Takes a slot now, or says how long until one frees up.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let now = tokio::time::Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        sent.try_push(self.budget as usize, now)
    }

    /// Waits for a slot.
    pub async fn acquire(&self) {
        while let Err(wait) = self.try_acquire() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The commands a connection may send per window once heartbeats and IDENTIFY are set aside.
pub fn command_budget(heartbeat_interval: Duration) -> u32 {
    let interval = heartbeat_interval.as_millis().max(1);
    let heartbeats = WINDOW.as_millis().div_ceil(interval) as u32 + 1;
    LIMIT.saturating_sub(heartbeats + RESERVED_EXTRA).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn heartbeats_are_reserved_out_of_the_120() {
        // Discord's usual 41.25 s interval: 2 beats in a window, +1 for phase, +2 extra.
        assert_eq!(command_budget(Duration::from_millis(41_250)), 115);
        assert_eq!(command_budget(Duration::from_secs(1)), 120 - 61 - 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_budget_is_available_at_once_then_the_next_waits_for_the_window() {
        let limiter = CommandLimiter::new(Duration::from_millis(41_250));
        for _ in 0..limiter.budget() {
            assert!(limiter.try_acquire().is_ok());
        }
        assert_eq!(limiter.try_acquire(), Err(WINDOW));
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(limiter.try_acquire(), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(limiter.try_acquire().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn no_sixty_second_window_exceeds_the_budget() {
        let limiter = CommandLimiter::new(Duration::from_millis(41_250));
        let start = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..400 {
            limiter.acquire().await;
            sent.push(Instant::now() - start);
        }
        // Slide a 60 s window over every send time and count what falls inside.
        for (i, t) in sent.iter().enumerate() {
            let inside = sent[i..].iter().take_while(|u| **u < *t + WINDOW).count() as u32;
            assert!(
                inside <= limiter.budget(),
                "{inside} commands within 60 s from {t:?}"
            );
        }
        // And the limiter is not needlessly slow: it sustains at least 70% of the budget.
        let total = *sent.last().unwrap();
        let windows = total.as_secs_f64() / WINDOW.as_secs_f64();
        assert!(
            400.0 / windows >= 0.7 * limiter.budget() as f64,
            "took {total:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn try_acquire_reports_the_wait() {
        let limiter = CommandLimiter::new(Duration::from_millis(41_250));
        while limiter.try_acquire().is_ok() {}
        let wait = limiter.try_acquire().unwrap_err();
        assert!(wait > Duration::ZERO && wait <= WINDOW, "{wait:?}");
        tokio::time::advance(wait).await;
        assert!(limiter.try_acquire().is_ok());
    }
}
