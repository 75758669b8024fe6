//! The invalid-request guard: Discord bans an IP for about an hour once it answers 10,000
//! requests from it with 401, 403 or 429 (429s of scope `shared` aside) within 10 minutes. The
//! guard counts those answers over a sliding 10 minutes and, at `rest.invalid_request_limit`,
//! refuses further requests itself until the window allows.
//!
//! Owns the window and the decision; logging and the 503 are `proxy`'s.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Discord's invalid-request window.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);

/// Whether an answer counts towards Discord's invalid-request limit.
pub fn counts(status: u16, scope: Option<&str>) -> bool {
    match status {
        401 | 403 => true,
        429 => scope != Some("shared"),
        _ => false,
    }
}

/// Invalid answers within the last `WINDOW`, bounded by the limit.
#[derive(Debug)]
pub struct Guard {
    limit: usize,
    /// When each counted answer came, oldest first; never more than `limit`.
    answers: Mutex<VecDeque<Instant>>,
}

impl Guard {
    /// A guard that refuses at `limit` invalid answers in the window.
    pub fn new(limit: u32) -> Guard {
        Guard {
            limit: limit as usize,
            answers: Mutex::new(VecDeque::new()),
        }
    }

    fn answers(&self, now: Instant) -> std::sync::MutexGuard<'_, VecDeque<Instant>> {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        while answers.front().is_some_and(|at| *at + WINDOW <= now) {
            answers.pop_front();
        }
        answers
    }

    /// Records an invalid answer at `now`.
    pub fn record(&self, now: Instant) {
        let mut answers = self.answers(now);
        if answers.len() == self.limit {
            answers.pop_front();
        }
        answers.push_back(now);
    }

    /// `None` if a request may go at `now`; else how long until the window allows one.
    pub fn refusal(&self, now: Instant) -> Option<Duration> {
        let answers = self.answers(now);
        (answers.len() >= self.limit).then(|| {
            let oldest = answers.front().copied().unwrap_or(now);
            (oldest + WINDOW).saturating_duration_since(now)
        })
    }

    /// Invalid answers in the window at `now`.
    pub fn count(&self, now: Instant) -> usize {
        self.answers(now).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_429s_and_successes_do_not_count() {
        assert!(counts(401, None) && counts(403, None) && counts(429, Some("user")));
        assert!(counts(429, Some("global")) && counts(429, None));
        assert!(!counts(429, Some("shared")) && !counts(200, None) && !counts(404, None));
    }

    #[tokio::test(start_paused = true)]
    async fn the_guard_refuses_at_the_limit_until_the_oldest_answer_leaves_the_window() {
        let guard = Guard::new(3);
        let start = Instant::now();
        guard.record(start);
        tokio::time::advance(Duration::from_secs(60)).await;
        guard.record(Instant::now());
        assert_eq!(guard.refusal(Instant::now()), None, "two of three");
        guard.record(Instant::now());
        assert_eq!(guard.count(Instant::now()), 3);
        assert_eq!(
            guard.refusal(Instant::now()),
            Some(WINDOW - Duration::from_secs(60)),
            "until the first answer is 10 minutes old"
        );
        tokio::time::advance(WINDOW - Duration::from_secs(60)).await;
        assert_eq!(guard.refusal(Instant::now()), None);
        assert_eq!(guard.count(Instant::now()), 2);
    }
}
