//! A sliding-window log: when each of the last events happened, so a count over any window of
//! a fixed length is exact (a GCRA cannot say "at most N in any 60 s" without halving the
//! burst). Used for a shard's gateway sends (`gateway::command_limiter`: 120 per 60 s) and the
//! REST proxy's invalid answers (`state::rest_limits`: Discord's 10-minute count).
//!
//! Owns the log and its arithmetic; the limits and what to do at them are its users'.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The times of the events of the last `window`, oldest first.
#[derive(Debug)]
pub struct SlidingLog {
    window: Duration,
    /// Most kept: past it the oldest is dropped (the count never needs more).
    cap: usize,
    times: VecDeque<Instant>,
}

impl SlidingLog {
    /// An empty log over `window`, keeping at most `cap` events. It grows on use.
    pub fn new(window: Duration, cap: usize) -> SlidingLog {
        SlidingLog {
            window,
            cap: cap.max(1),
            times: VecDeque::new(),
        }
    }

    /// Drops the events that left the window by `now`.
    fn expire(&mut self, now: Instant) {
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.times.pop_front();
        }
    }

    /// Events in the window ending at `now`.
    pub fn count(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.times.len()
    }

    /// Records an event at `now`.
    pub fn push(&mut self, now: Instant) {
        self.expire(now);
        if self.times.len() >= self.cap {
            self.times.pop_front();
        }
        self.times.push_back(now);
    }

    /// How long from `now` until fewer than `limit` events are in the window (zero if fewer
    /// already are).
    pub fn until_fewer_than(&mut self, limit: usize, now: Instant) -> Duration {
        self.expire(now);
        match self.times.len().checked_sub(limit.max(1)) {
            Some(over) => (self.times[over] + self.window).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// Records an event at `now` if fewer than `limit` are in the window; else says how long
    /// until one may be.
    pub fn try_push(&mut self, limit: usize, now: Instant) -> Result<(), Duration> {
        match self.until_fewer_than(limit, now) {
            Duration::ZERO => {
                self.push(now);
                Ok(())
            }
            wait => Err(wait),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn at_most_the_limit_in_any_window_and_the_wait_is_until_the_oldest_leaves() {
        let window = Duration::from_secs(60);
        let mut log = SlidingLog::new(window, 100);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(log.try_push(3, Instant::now()), Ok(()));
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        // Sent at 0, 10 and 20 s; now 30 s: the first leaves at 60 s.
        assert_eq!(
            log.try_push(3, Instant::now()),
            Err(Duration::from_secs(30))
        );
        assert_eq!(
            log.count(Instant::now()),
            3,
            "a refused push records nothing"
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(log.try_push(3, Instant::now()), Ok(()));
        // Now 10, 20 and 60 s: fewer than two once the one at 20 s leaves, at 80 s.
        assert_eq!(
            log.until_fewer_than(2, Instant::now()),
            Duration::from_secs(20)
        );
        assert_eq!(log.count(start + window * 3), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_bounds_the_log() {
        let mut log = SlidingLog::new(Duration::from_secs(60), 2);
        for _ in 0..5 {
            log.push(Instant::now());
        }
        assert_eq!(log.count(Instant::now()), 2);
    }
}
