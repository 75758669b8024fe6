//! The router's own hold on Discord's global limit: at most `rest.global_per_second` globally
//! limited requests let go in any one second, however that second is placed.
//!
//! Twilight's limiter counts the global limit in a window of one second opened by its first
//! request, and when that window turns every bucket waiting on it resumes at once: two windows'
//! worth can go within one second. Discord counts by its own clock, not the router's. In
//! `tests/rest.rs`' 200-caller test (the double allowing 150 a second, the router told 135),
//! twilight's window let 175 to 183 requests reach the double within one second and drew 3 to
//! 35 answers of 429 in three runs; this window, 148 to 153 and 0 or 1. So the sends of the
//! last second are kept, and a request goes only when fewer than the limit went in the second
//! before it.
//!
//! Owns that window and the decision; waiting, the deadline and which routes are exempt are
//! `limiter`'s.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Discord's global window.
pub const WINDOW: Duration = Duration::from_secs(1);

/// When each of the last second's globally limited requests was let go.
#[derive(Debug)]
pub struct GlobalWindow {
    limit: usize,
    /// Oldest first; never more than `limit`.
    sent: VecDeque<Instant>,
}

impl GlobalWindow {
    /// A window letting `limit` requests go in any one second.
    pub fn new(limit: u16) -> GlobalWindow {
        GlobalWindow {
            limit: usize::from(limit.max(1)),
            sent: VecDeque::with_capacity(usize::from(limit)),
        }
    }

    /// Lets a request go at `now` and counts it; else says when the oldest send leaves the
    /// window and a request may go.
    pub fn take(&mut self, now: Instant) -> Result<(), Instant> {
        while self.sent.front().is_some_and(|at| *at + WINDOW <= now) {
            self.sent.pop_front();
        }
        match self.sent.front() {
            Some(oldest) if self.sent.len() >= self.limit => Err(*oldest + WINDOW),
            _ => {
                self.sent.push_back(now);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_window_says_when_its_oldest_send_leaves() {
        let mut window = GlobalWindow::new(3);
        let start = Instant::now();
        window.take(start).unwrap();
        tokio::time::advance(Duration::from_millis(400)).await;
        window.take(Instant::now()).unwrap();
        window.take(Instant::now()).unwrap();
        assert_eq!(window.take(Instant::now()), Err(start + WINDOW));
        tokio::time::advance(Duration::from_millis(600)).await;
        window.take(Instant::now()).unwrap();
        assert_eq!(
            window.take(Instant::now()),
            Err(start + Duration::from_millis(400) + WINDOW),
            "the two sent at 400 ms are still in the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_second_anywhere_holds_more_than_the_limit_and_a_busy_caller_fills_each() {
        let mut window = GlobalWindow::new(5);
        let mut sent = Vec::new();
        let start = Instant::now();
        // Always someone waiting: each request goes as soon as the window lets it.
        while sent.len() < 40 {
            match window.take(Instant::now()) {
                Ok(()) => sent.push(Instant::now()),
                Err(at) => tokio::time::sleep_until(at).await,
            }
            // Uneven arrivals, as callers' are.
            tokio::time::advance(Duration::from_millis(sent.len() as u64 % 3 * 7)).await;
        }
        for (i, first) in sent.iter().enumerate() {
            let within = sent[i..].iter().filter(|t| **t < *first + WINDOW).count();
            assert!(within <= 5, "{within} sent in the second from {first:?}");
        }
        let took = sent.last().unwrap().duration_since(start);
        assert!(
            took < Duration::from_secs(8),
            "40 at 5 a second take under 8 s: {took:?}"
        );
    }
}
