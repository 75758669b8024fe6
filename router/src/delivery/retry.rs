//! The retry decision, apart from the mechanism: is this attempt's outcome worth retrying, and
//! how long to wait.
//!
//! Owns the rules (retry connect errors, timeouts, 408, 429 and 5xx except 501; honour
//! `Retry-After` as seconds or an HTTP date) and capped exponential backoff with full jitter.
//! Pure functions: `delivery` performs the attempts and the sleeps.

use std::time::{Duration, SystemTime};

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The endpoint answered with a status and maybe a `Retry-After`.
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No connection could be made.
    Connect,
    /// The attempt took longer than its timeout.
    Timeout,
    /// Anything else on the way (a reset mid-response, a TLS error...).
    Exchange,
    /// Not sent: the endpoint needs AWS credentials and there are none (yet, or any more).
    NoCredentials,
}

/// What to do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAction {
    Successful,
    /// Try again, after `after` if the endpoint said so.
    Retry {
        after: Option<Duration>,
    },
    /// Give up: dead-letter the batch.
    DontRetry,
}

impl Attempt {
    /// Whether this outcome counts against the endpoint's health (for its circuit).
    pub fn is_endpoint_failure(&self) -> bool {
        match self {
            Attempt::Status { status, .. } => *status >= 500,
            // As good as down: its shards fail over, or spool until credentials come.
            Attempt::Connect | Attempt::Timeout | Attempt::Exchange | Attempt::NoCredentials => {
                true
            }
        }
    }
}

/// Decides from an attempt's outcome.
pub fn decide(attempt: &Attempt) -> RetryAction {
    match attempt {
        Attempt::Status { status, .. } if (200..300).contains(status) => RetryAction::Successful,
        Attempt::Status {
            status: 408 | 429,
            retry_after,
        } => RetryAction::Retry {
            after: *retry_after,
        },
        Attempt::Status { status: 501, .. } => RetryAction::DontRetry,
        Attempt::Status {
            status,
            retry_after,
        } if *status >= 500 => RetryAction::Retry {
            after: *retry_after,
        },
        Attempt::Status { .. } => RetryAction::DontRetry,
        Attempt::Connect | Attempt::Timeout | Attempt::Exchange | Attempt::NoCredentials => {
            RetryAction::Retry { after: None }
        }
    }
}

/// Parses `Retry-After`: delay seconds or an HTTP date, relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Capped exponential backoff with full jitter: a random delay in
/// `[0, min(max, initial * 2^(retry - 1))]`.
pub fn backoff(retry: u32, initial: Duration, max: Duration) -> Duration {
    let cap = initial
        .saturating_mul(1 << retry.saturating_sub(1).min(20))
        .min(max);
    cap.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> Attempt {
        Attempt::Status {
            status,
            retry_after: None,
        }
    }

    #[test]
    fn retries_on_temporary_errors() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(
                decide(&status(s)),
                RetryAction::Retry { after: None },
                "{s}"
            );
        }
        for a in [
            Attempt::Connect,
            Attempt::Timeout,
            Attempt::Exchange,
            Attempt::NoCredentials,
        ] {
            assert_eq!(decide(&a), RetryAction::Retry { after: None });
            assert!(a.is_endpoint_failure(), "{a:?}");
        }
    }

    #[test]
    fn does_not_retry_client_errors_or_501() {
        for s in [400, 401, 403, 404, 410, 413, 422, 501] {
            assert_eq!(decide(&status(s)), RetryAction::DontRetry, "{s}");
        }
    }

    #[test]
    fn succeeds_on_2xx() {
        for s in [200, 202, 204] {
            assert_eq!(decide(&status(s)), RetryAction::Successful);
        }
    }

    #[test]
    fn honours_retry_after_in_seconds_and_as_a_date() {
        let now = httpdate::parse_http_date("Sun, 22 Nov 2026 12:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 22 Nov 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        let after = Some(Duration::from_secs(7));
        let a = Attempt::Status {
            status: 429,
            retry_after: after,
        };
        assert_eq!(decide(&a), RetryAction::Retry { after });
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for retry in 1..30 {
            let cap = initial.saturating_mul(1 << (retry - 1).min(20)).min(max);
            assert!(backoff(retry, initial, max) <= cap);
        }
        let distinct: std::collections::HashSet<_> =
            (0..20).map(|_| backoff(5, initial, max)).collect();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn only_server_side_failures_count_against_an_endpoint() {
        assert!(status(503).is_endpoint_failure());
        assert!(Attempt::Connect.is_endpoint_failure());
        assert!(!status(429).is_endpoint_failure());
        assert!(!status(400).is_endpoint_failure());
    }
}
