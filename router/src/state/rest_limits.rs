//! The REST limits that hold for the bot, not for one router: Discord's global limit
//! (`rest.global_per_second`), its invalid-request count (`rest.invalid_request_limit`) and
//! each route bucket's window. Behind `RestLimits`: `LocalLimits` keeps them in this process;
//! in a cluster, `cluster`'s Redis keeps them for every router of the bot, so N routers behind
//! one IP still send at most `global_per_second` a second, count one invalid-request total,
//! and spend one bucket's `remaining` between them.
//!
//! Route buckets: a router alone has twilight's limiter (in `rest`), which learns each bucket
//! from Discord's headers, so `LocalLimits` lets every request through its route check. In a
//! cluster each router's twilight sees only its own requests: the shared window is the one
//! that counts.
//!
//! The global limit is a GCRA (generic cell rate algorithm): each globally limited request
//! reserves the next slot, one every `1 / global_per_second` seconds, so requests are paced
//! evenly and no second, wherever it is placed, holds more than the limit. (A window that lets
//! a second's worth go at once, a second after the last, put two bursts within one second at
//! Discord as soon as arrival times jittered.) A reservation further off than the caller can
//! wait is not made: the caller is told how long to wait instead.
//!
//! Owns the bookkeeping only; waiting, deadlines and which routes are exempt are `rest`'s.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::request_ids::Answer;
use super::sliding_log::SlidingLog;

/// Discord's invalid-request window.
pub const INVALID_WINDOW: Duration = Duration::from_secs(10 * 60);

/// What a global-limit reservation came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Reserved: the request goes after this wait (zero: now).
    In(Duration),
    /// The next slot is further off than the caller can wait: it is not reserved. Try again
    /// after this long.
    TooFar(Duration),
    /// The shared store cannot answer: nothing was reserved.
    Unavailable(String),
}

/// What a route bucket's check came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Taken: the request may go now.
    Go,
    /// The bucket is spent until its reset, this far off (within the caller's wait): try then.
    After(Duration),
    /// Another request is learning the bucket (its first, or the first since its reset): try
    /// again shortly.
    Learning,
    /// Spent until further off than the caller can wait.
    TooFar(Duration),
    /// The shared store cannot answer: nothing was taken.
    Unavailable(String),
}

/// What a response said of its route bucket (`X-RateLimit-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    /// Requests the window allows.
    pub limit: u32,
    /// Requests left in it.
    pub remaining: u32,
    /// Until it resets.
    pub reset_after: Duration,
}

/// The bot's REST limits.
pub trait RestLimits: Send + Sync + std::fmt::Debug {
    /// Takes one request of the route bucket `key` (method, route and major parameter, no
    /// token), unless it is spent for longer than `max_wait`.
    fn take_route<'a>(&'a self, key: &'a str, max_wait: Duration) -> Answer<'a, Turn>;
    /// Records what Discord said of the bucket `key` in a response.
    fn learn_route<'a>(&'a self, key: &'a str, learned: Learned) -> Answer<'a, ()>;
    /// Reserves the next slot of the global limit, `per_second` slots a second, unless it is
    /// more than `max_wait` away.
    fn reserve(&self, per_second: u16, max_wait: Duration) -> Answer<'_, Slot>;
    /// Counts an answer of 401, 403 or 429 (not `shared`) from Discord.
    fn record_invalid(&self) -> Answer<'_, ()>;
    /// Invalid answers in the last 10 minutes, and how long until fewer than `limit` are (zero
    /// when fewer already are); `Err` when the shared store cannot answer.
    fn invalid(&self, limit: u32) -> Answer<'_, Result<(usize, Duration), String>>;
}

/// The next slot of a GCRA at `per_second`, from the theoretical arrival time `tat` (the
/// earliest the next slot may be), at `now`: the wait, and the next `tat` if reserved.
pub fn gcra(tat: Option<Instant>, now: Instant, per_second: u16) -> (Duration, Instant) {
    let interval = Duration::from_secs(1) / u32::from(per_second.max(1));
    let at = tat.map_or(now, |t| t.max(now));
    (at - now, at + interval)
}

/// This router's REST limits, in memory.
#[derive(Debug)]
pub struct LocalLimits {
    /// The global limit's next free slot.
    tat: Mutex<Option<Instant>>,
    /// When each counted invalid answer came, over Discord's 10 minutes.
    invalid: Mutex<SlidingLog>,
}

impl Default for LocalLimits {
    fn default() -> Self {
        LocalLimits {
            tat: Mutex::default(),
            // Bounded: no more than Discord's own ban threshold is ever useful to keep.
            invalid: Mutex::new(SlidingLog::new(INVALID_WINDOW, 10_000)),
        }
    }
}

impl LocalLimits {
    fn invalid_log(&self) -> std::sync::MutexGuard<'_, SlidingLog> {
        self.invalid.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RestLimits for LocalLimits {
    /// A router alone: twilight's limiter holds the buckets (see the module's doc).
    fn take_route<'a>(&'a self, _key: &'a str, _max_wait: Duration) -> Answer<'a, Turn> {
        Box::pin(std::future::ready(Turn::Go))
    }

    fn learn_route<'a>(&'a self, _key: &'a str, _learned: Learned) -> Answer<'a, ()> {
        Box::pin(std::future::ready(()))
    }

    fn reserve(&self, per_second: u16, max_wait: Duration) -> Answer<'_, Slot> {
        let now = Instant::now();
        let mut tat = self.tat.lock().unwrap_or_else(|p| p.into_inner());
        let (wait, next) = gcra(*tat, now, per_second);
        let slot = if wait > max_wait {
            Slot::TooFar(wait)
        } else {
            *tat = Some(next);
            Slot::In(wait)
        };
        Box::pin(std::future::ready(slot))
    }

    fn record_invalid(&self) -> Answer<'_, ()> {
        self.invalid_log().push(Instant::now());
        Box::pin(std::future::ready(()))
    }

    fn invalid(&self, limit: u32) -> Answer<'_, Result<(usize, Duration), String>> {
        let now = Instant::now();
        let mut answers = self.invalid_log();
        let count = answers.count(now);
        let wait = answers.until_fewer_than(limit as usize, now);
        Box::pin(std::future::ready(Ok((count, wait))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_global_limit_paces_evenly_and_no_second_holds_more_than_the_limit() {
        let limits = LocalLimits::default();
        let mut sent = Vec::new();
        // A burst of 40 at once, at 10 a second.
        for _ in 0..40 {
            match limits.reserve(10, Duration::from_secs(60)).await {
                Slot::In(wait) => sent.push(Instant::now() + wait),
                other => panic!("{other:?}"),
            }
        }
        for pair in sent.windows(2) {
            assert_eq!(
                pair[1] - pair[0],
                Duration::from_millis(100),
                "evenly paced"
            );
        }
        for (i, first) in sent.iter().enumerate() {
            let within = sent[i..]
                .iter()
                .filter(|t| **t < *first + Duration::from_secs(1))
                .count();
            assert!(within <= 10, "{within} in the second from {first:?}");
        }
        // The next slot is 4 s away: with 1 s to wait, nothing is reserved.
        assert_eq!(
            limits.reserve(10, Duration::from_secs(1)).await,
            Slot::TooFar(Duration::from_secs(4))
        );
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(
            limits.reserve(10, Duration::from_secs(1)).await,
            Slot::In(Duration::ZERO),
            "the refused reservation took no slot"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_invalid_count_says_when_it_falls_under_the_limit() {
        let limits = LocalLimits::default();
        limits.record_invalid().await;
        tokio::time::advance(Duration::from_secs(60)).await;
        limits.record_invalid().await;
        assert_eq!(limits.invalid(3).await, Ok((2, Duration::ZERO)));
        limits.record_invalid().await;
        assert_eq!(
            limits.invalid(3).await,
            Ok((3, INVALID_WINDOW - Duration::from_secs(60))),
            "until the first answer is 10 minutes old"
        );
        tokio::time::advance(INVALID_WINDOW - Duration::from_secs(60)).await;
        assert_eq!(limits.invalid(3).await, Ok((2, Duration::ZERO)));
    }
}
