//! Waiting for Discord's rate limits: per-route buckets, kept by twilight's limiter
//! (`twilight-http-ratelimiting`); the global limit, a slot per request reserved in
//! `state::rest_limits` (twilight's own global window lets a second's worth of requests
//! through twice in one second at its turn), so twilight's is set out of reach; and a pause of every globally limited route when
//! Discord answers a global 429, which twilight's limiter has no way to express.
//!
//! Owns reading Discord's `X-RateLimit-*` headers and 429 bodies into what the limiter learns,
//! and the wait's deadline (`rest.max_wait`): past it the caller is told how long to wait
//! instead. Sending is `proxy`'s.

use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::time::Instant;
use twilight_http_ratelimiting::{Endpoint, Method, Permit, RateLimitHeaders, RateLimiter};

use crate::state::rest_limits::{Learned, RestLimits, Slot, Turn};

/// The shortest `Retry-After` told to a caller: Discord's header is in whole seconds too.
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a 429 from Discord says, read from its headers and body.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    /// `user`, `global` or `shared` (`X-RateLimit-Scope`; `global` also from the body).
    pub scope: &'static str,
    /// How long to wait.
    pub retry_after: Duration,
}

/// Reads a 429's scope and wait from `headers` and the JSON `body`.
pub fn rate_limited(headers: &HeaderMap, body: &[u8]) -> RateLimited {
    #[derive(serde::Deserialize, Default)]
    struct Body {
        #[serde(default)]
        retry_after: Option<f64>,
        #[serde(default)]
        global: bool,
    }
    let parsed: Body = serde_json::from_slice(body).unwrap_or_default();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let global = parsed.global || header("x-ratelimit-global") == Some("true");
    let scope = match header("x-ratelimit-scope") {
        _ if global => "global",
        Some("shared") => "shared",
        _ => "user",
    };
    let seconds = parsed
        .retry_after
        .or_else(|| header("retry-after").and_then(|v| v.parse().ok()))
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .unwrap_or(1.0);
    RateLimited {
        scope,
        retry_after: Duration::from_secs_f64(seconds.min(3600.0)),
    }
}

/// What a response's `X-RateLimit-*` says of its bucket, for the bot's shared windows.
pub fn learned(headers: &HeaderMap) -> Option<Learned> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let reset_after: f64 = header(RateLimitHeaders::RESET_AFTER)?.parse().ok()?;
    if !reset_after.is_finite() || reset_after < 0.0 {
        return None;
    }
    Some(Learned {
        limit: header(RateLimitHeaders::LIMIT)?.parse().ok()?,
        remaining: header(RateLimitHeaders::REMAINING)?.parse().ok()?,
        reset_after: Duration::from_secs_f64(reset_after.min(3600.0)),
    })
}

/// A bucket's state from a response's `X-RateLimit-*` headers, if it has them all, as
/// twilight's limiter takes it: `learned` and the bucket's name.
pub fn bucket_headers(headers: &HeaderMap) -> Option<RateLimitHeaders> {
    let learned = learned(headers)?;
    let bucket = headers.get(RateLimitHeaders::BUCKET)?.to_str().ok()?;
    Some(RateLimitHeaders {
        bucket: bucket.as_bytes().to_vec(),
        limit: u16::try_from(learned.limit).ok()?,
        remaining: u16::try_from(learned.remaining).ok()?,
        reset_at: std::time::Instant::now() + learned.reset_after,
    })
}

/// How often a request waiting for another to learn its bucket asks again.
const LEARNING_POLL: Duration = Duration::from_millis(20);

/// The method as twilight's limiter names it; `None` for methods Discord's API has no route
/// for.
pub fn method(method: &axum::http::Method) -> Option<Method> {
    Some(match method.as_str() {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PATCH" => Method::Patch,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        _ => return None,
    })
}

/// The router's rate limiter for Discord's REST API.
#[derive(Debug)]
pub struct Limiter {
    /// Twilight's, for the buckets alone: its global limit is out of reach.
    buckets: RateLimiter,
    /// The global limit, the bot's (`state::rest_limits`): a slot reserved per request.
    limits: std::sync::Arc<dyn RestLimits>,
    per_second: u16,
    /// Until when a global 429 from Discord holds every route the global limit covers.
    paused_until: Mutex<Option<Instant>>,
}

impl Limiter {
    /// A limiter allowing `global_per_second` globally limited requests a second, counted in
    /// `limits` (this router's, or the cluster's for every router of the bot). Starts
    /// twilight's actor task: call within a tokio runtime.
    pub fn new(global_per_second: u16, limits: std::sync::Arc<dyn RestLimits>) -> Limiter {
        Limiter {
            // Twilight's docs: u16::MAX practically disables its global limit.
            buckets: RateLimiter::new(u16::MAX),
            limits,
            per_second: global_per_second,
            paused_until: Mutex::new(None),
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        paused.filter(|until| *until > Instant::now())
    }

    /// Holds every globally limited route for `retry_after` from now.
    pub fn pause_all(&self, retry_after: Duration) {
        let until = Instant::now() + retry_after;
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Waits until `endpoint` may be sent, by `deadline` at the latest; else says how long the
    /// caller should wait before trying again. `exempt` routes ignore the global limit;
    /// `bucket` names the route bucket in the bot's shared windows (`Route::bucket_key`).
    pub async fn acquire(
        &self,
        endpoint: Endpoint,
        bucket: &str,
        exempt: bool,
        deadline: Instant,
    ) -> Result<Permit, Duration> {
        let retry = |until: Instant| (until - Instant::now()).max(MIN_RETRY_AFTER);
        if !exempt {
            self.wait_out_pause(deadline).await.map_err(retry)?;
        }
        // A bucket spent until after the deadline: told at once, not after holding the
        // caller until the deadline.
        if let Some(bucket) = self.buckets.bucket(endpoint.clone()).await {
            let resets = bucket
                .reset_at
                .saturating_duration_since(std::time::Instant::now());
            if bucket.remaining == 0 && Instant::now() + resets > deadline {
                return Err(resets.max(MIN_RETRY_AFTER));
            }
        }
        let permit =
            match tokio::time::timeout_at(deadline, self.buckets.acquire(endpoint.clone())).await {
                Ok(permit) => permit,
                Err(_) => {
                    let reset = self.buckets.bucket(endpoint).await.map(|b| {
                        b.reset_at
                            .saturating_duration_since(std::time::Instant::now())
                    });
                    return Err(reset.unwrap_or_default().max(MIN_RETRY_AFTER));
                }
            };
        // The bot's window of the bucket: other routers' requests count in it too.
        self.wait_for_route(bucket, deadline).await.map_err(retry)?;
        if !exempt {
            // A global 429 may have come while this request was queued for its bucket. Past
            // the deadline the permit is dropped: twilight's limiter takes it as cancelled.
            self.wait_out_pause(deadline).await.map_err(retry)?;
            // Last, so a request counts in the global window when it is sent, not while it
            // still waits for its bucket.
            self.wait_for_global(deadline).await.map_err(retry)?;
        }
        Ok(permit)
    }

    /// Takes one of the route bucket's requests in the bot's window, waiting for its reset or
    /// for another request to learn it, by `deadline`; else says when to try again.
    async fn wait_for_route(&self, bucket: &str, deadline: Instant) -> Result<(), Instant> {
        loop {
            let max_wait = deadline.saturating_duration_since(Instant::now());
            let wait = match self.limits.take_route(bucket, max_wait).await {
                Turn::Go => return Ok(()),
                Turn::After(wait) => wait,
                Turn::Learning => LEARNING_POLL,
                Turn::TooFar(wait) => return Err(Instant::now() + wait),
                Turn::Unavailable(why) => {
                    tracing::warn!("could not take a turn of the bot's route bucket: {why}");
                    return Err(Instant::now() + Duration::from_secs(1));
                }
            };
            if Instant::now() + wait > deadline {
                return Err(Instant::now() + wait);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Reserves the global limit's next slot and waits for it, by `deadline`; else says when
    /// to try again (nothing reserved).
    async fn wait_for_global(&self, deadline: Instant) -> Result<(), Instant> {
        let max_wait = deadline.saturating_duration_since(Instant::now());
        match self.limits.reserve(self.per_second, max_wait).await {
            Slot::In(wait) => {
                tokio::time::sleep(wait).await;
                Ok(())
            }
            Slot::TooFar(wait) => Err(Instant::now() + wait),
            Slot::Unavailable(why) => {
                tracing::warn!("could not reserve a slot of the bot's global limit: {why}");
                Err(Instant::now() + Duration::from_secs(1))
            }
        }
    }

    /// Sleeps out a global pause that ends by `deadline`; else when it ends.
    async fn wait_out_pause(&self, deadline: Instant) -> Result<(), Instant> {
        while let Some(until) = self.paused_until() {
            if until > deadline {
                return Err(until);
            }
            tokio::time::sleep_until(until).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::rest_limits::LocalLimits;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_429_is_global_by_its_body_or_header_and_waits_its_retry_after() {
        let global = rate_limited(
            &headers(&[("retry-after", "3")]),
            br#"{"message":"You are being rate limited.","retry_after":2.5,"global":true}"#,
        );
        assert_eq!(global.scope, "global");
        assert_eq!(global.retry_after, Duration::from_millis(2500));
        let shared = rate_limited(
            &headers(&[("x-ratelimit-scope", "shared"), ("retry-after", "4")]),
            b"not json",
        );
        assert_eq!(shared.scope, "shared");
        assert_eq!(shared.retry_after, Duration::from_secs(4));
        let user = rate_limited(&headers(&[("x-ratelimit-scope", "user")]), b"{}");
        assert_eq!(
            (user.scope, user.retry_after),
            ("user", Duration::from_secs(1))
        );
    }

    #[test]
    fn bucket_headers_need_all_four() {
        let all = headers(&[
            ("x-ratelimit-bucket", "abcd"),
            ("x-ratelimit-limit", "5"),
            ("x-ratelimit-remaining", "4"),
            ("x-ratelimit-reset-after", "0.75"),
        ]);
        let parsed = bucket_headers(&all).unwrap();
        assert_eq!(
            (parsed.bucket.as_slice(), parsed.limit, parsed.remaining),
            (&b"abcd"[..], 5, 4)
        );
        let mut missing = all.clone();
        missing.remove("x-ratelimit-limit");
        assert!(bucket_headers(&missing).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_global_limit_paces_requests_on_other_buckets_but_not_exempt_ones() {
        let limiter = Limiter::new(2, std::sync::Arc::new(LocalLimits::default()));
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let endpoint = |channel: u32| Endpoint {
            method: Method::Post,
            path: format!("channels/{channel}/messages"),
        };
        // Two a second, evenly: one now, the next half a second later.
        for channel in 0..2 {
            let permit = limiter
                .acquire(endpoint(channel), "", false, deadline)
                .await;
            permit.unwrap().complete(None);
        }
        assert_eq!(Instant::now() - start, Duration::from_millis(500));
        let exempt = Endpoint {
            method: Method::Post,
            path: "interactions/1/t/callback".into(),
        };
        let permit = limiter.acquire(exempt, "", true, deadline).await.unwrap();
        permit.complete(None);
        assert_eq!(
            Instant::now() - start,
            Duration::from_millis(500),
            "exempt: no wait"
        );
        let permit = limiter
            .acquire(endpoint(2), "", false, deadline)
            .await
            .unwrap();
        permit.complete(None);
        assert_eq!(Instant::now() - start, Duration::from_secs(1));
        // Past the deadline: refused with when it would have gone, and no slot taken.
        let soon = Instant::now() + Duration::from_millis(100);
        let refused = limiter
            .acquire(endpoint(3), "", false, soon)
            .await
            .unwrap_err();
        assert_eq!(
            refused, MIN_RETRY_AFTER,
            "500 ms away, told at least MIN_RETRY_AFTER"
        );
        limiter
            .acquire(endpoint(4), "", false, deadline)
            .await
            .unwrap()
            .complete(None);
        assert_eq!(Instant::now() - start, Duration::from_millis(1500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_global_pause_past_the_deadline_is_refused_with_its_length() {
        let limiter = Limiter::new(50, std::sync::Arc::new(LocalLimits::default()));
        limiter.pause_all(Duration::from_secs(5));
        let endpoint = Endpoint {
            method: Method::Post,
            path: "channels/1/messages".into(),
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        let refused = limiter.acquire(endpoint.clone(), "", false, deadline).await;
        assert_eq!(refused.unwrap_err(), Duration::from_secs(5));
        // Exempt routes pass.
        let exempt = Endpoint {
            method: Method::Post,
            path: "interactions/1/t/callback".into(),
        };
        let permit = limiter.acquire(exempt, "", true, deadline).await.unwrap();
        permit.complete(None);
        // Within the deadline, the request waits the pause out.
        let start = Instant::now();
        let deadline = start + Duration::from_secs(10);
        let permit = limiter
            .acquire(endpoint, "", false, deadline)
            .await
            .unwrap();
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        permit.complete(None);
    }
}
