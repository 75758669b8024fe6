//! Discord's REST rate limits as the double enforces them: a bucket per route and major
//! parameter (a fixed window opened by its first request, `SimConfig::rest_route_limit`
//! requests per `rest_route_window`), the bot's global limit (`rest_global_limit` a second,
//! interaction callbacks and webhook-token routes exempt), and a global 429 a test can impose.
//!
//! Owns the windows and the headers and 429 bodies Discord sends with them, written from
//! Discord's documentation, not from the router's limiter. Which route is which is `rest`'s.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The global limit's window.
const GLOBAL_WINDOW: Duration = Duration::from_secs(1);

/// What the limits said of one request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Served; these `X-RateLimit-*` headers go with the answer.
    Allowed(Vec<(&'static str, String)>),
    /// Refused with 429: its headers, and the `retry_after` and `global` of its body.
    Limited {
        headers: Vec<(&'static str, String)>,
        retry_after: Duration,
        global: bool,
    },
}

/// One bucket's window.
#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    used: u32,
}

/// The windows of every bucket and the global one.
#[derive(Debug, Default)]
pub(crate) struct RestLimits {
    buckets: HashMap<(String, String), Window>,
    global: Option<Window>,
    /// A global 429 a test imposed, until then.
    paused_until: Option<Instant>,
}

/// Seconds as Discord writes them, rounded up to the millisecond (never earlier than true).
fn seconds(d: Duration) -> String {
    let millis = d.as_nanos().div_ceil(1_000_000);
    format!("{}.{:03}", millis / 1000, millis % 1000)
}

fn retry_after_header(d: Duration) -> String {
    d.as_secs_f64().ceil().max(1.0).to_string()
}

impl RestLimits {
    /// Every globally limited request gets a global 429 for `retry_after` from now.
    pub(crate) fn pause_globally(&mut self, retry_after: Duration) {
        self.paused_until = Some(Instant::now() + retry_after);
    }

    /// Counts a request on `bucket` (its name, Discord's hash stand-in) for the major parameter
    /// `major`, at `now`, against `limit` per `window`; `exempt` routes skip the global limit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check(
        &mut self,
        bucket: &str,
        major: &str,
        exempt: bool,
        limit: u32,
        window: Duration,
        global_limit: u32,
        now: Instant,
    ) -> Verdict {
        if !exempt {
            if let Some(until) = self.paused_until.filter(|u| *u > now) {
                return global_429(until - now);
            }
            let global = match self.global {
                Some(w) if now < w.opened + GLOBAL_WINDOW => w,
                _ => Window {
                    opened: now,
                    used: 0,
                },
            };
            if global.used >= global_limit {
                return global_429(global.opened + GLOBAL_WINDOW - now);
            }
            self.global = Some(Window {
                used: global.used + 1,
                ..global
            });
        }
        let key = (bucket.to_owned(), major.to_owned());
        let current = match self.buckets.get(&key) {
            Some(w) if now < w.opened + window => *w,
            _ => Window {
                opened: now,
                used: 0,
            },
        };
        let reset_after = current.opened + window - now;
        let reset_at = SystemTime::now() + reset_after;
        let reset_epoch = reset_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let headers = |remaining: u32| {
            vec![
                ("x-ratelimit-bucket", bucket.to_owned()),
                ("x-ratelimit-limit", limit.to_string()),
                ("x-ratelimit-remaining", remaining.to_string()),
                ("x-ratelimit-reset", format!("{reset_epoch:.3}")),
                ("x-ratelimit-reset-after", seconds(reset_after)),
            ]
        };
        if current.used >= limit {
            if !exempt {
                // A refused request was not served: it does not use the global window.
                if let Some(g) = self.global.as_mut() {
                    g.used -= 1;
                }
            }
            let mut headers = headers(0);
            headers.push(("x-ratelimit-scope", "user".to_owned()));
            headers.push(("retry-after", retry_after_header(reset_after)));
            return Verdict::Limited {
                headers,
                retry_after: reset_after,
                global: false,
            };
        }
        let used = current.used + 1;
        self.buckets.insert(key, Window { used, ..current });
        Verdict::Allowed(headers(limit - used))
    }
}

fn global_429(retry_after: Duration) -> Verdict {
    Verdict::Limited {
        headers: vec![
            ("x-ratelimit-global", "true".to_owned()),
            ("x-ratelimit-scope", "global".to_owned()),
            ("retry-after", retry_after_header(retry_after)),
        ],
        retry_after,
        global: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_allows_its_limit_per_window_and_says_when_it_resets() {
        let mut limits = RestLimits::default();
        let w = Duration::from_secs(2);
        let check = |l: &mut RestLimits, major: &str| {
            l.check("create", major, false, 2, w, 50, Instant::now())
        };
        assert!(matches!(check(&mut limits, "1"), Verdict::Allowed(_)));
        assert!(matches!(check(&mut limits, "1"), Verdict::Allowed(_)));
        let Verdict::Limited {
            retry_after,
            global,
            ..
        } = check(&mut limits, "1")
        else {
            panic!("the third request in the window is refused")
        };
        assert_eq!((retry_after, global), (w, false));
        assert!(
            matches!(check(&mut limits, "2"), Verdict::Allowed(_)),
            "another channel"
        );
        tokio::time::advance(w).await;
        assert!(matches!(check(&mut limits, "1"), Verdict::Allowed(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_limit_spares_exempt_routes() {
        let mut limits = RestLimits::default();
        let w = Duration::from_secs(1);
        for n in 0..3 {
            let major = n.to_string();
            assert!(matches!(
                limits.check("b", &major, false, 5, w, 3, Instant::now()),
                Verdict::Allowed(_)
            ));
        }
        let refused = limits.check("b", "9", false, 5, w, 3, Instant::now());
        assert!(matches!(refused, Verdict::Limited { global: true, .. }));
        let exempt = limits.check("cb", "t", true, 5, w, 3, Instant::now());
        assert!(matches!(exempt, Verdict::Allowed(_)));
        limits.pause_globally(Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(2)).await;
        let paused = limits.check("b", "9", false, 5, w, 3, Instant::now());
        assert!(
            matches!(paused, Verdict::Limited { global: true, retry_after, .. } if retry_after == w)
        );
    }
}
