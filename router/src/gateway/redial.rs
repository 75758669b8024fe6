//! Where and when a shard connects next: the gateway URL with the query Discord wants, and
//! the backoff between attempts.
//!
//! Owns those two answers only; the connection itself is `shard`'s.

use std::time::Duration;

/// First step of the reconnect backoff after an attempt that did not get back to Active.
const BASE_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Capped exponential backoff with full jitter; the first retry after an active connection is
/// immediate.
pub(super) fn backoff(attempts: u32) -> Duration {
    if attempts == 0 {
        return Duration::ZERO;
    }
    let cap = BASE_BACKOFF
        .saturating_mul(1 << (attempts - 1).min(16))
        .min(MAX_BACKOFF);
    cap.mul_f64(fastrand::f64())
}

/// `base` with the gateway's query set on the parsed URL (whatever query or path it had kept
/// as a URL has them, the query replaced), or why it is not a URL.
pub(super) fn with_query(
    base: &str,
    compression: crate::config::Compression,
) -> Result<String, String> {
    let mut url = reqwest::Url::parse(base).map_err(|e| format!("`{base}` is not a URL: {e}"))?;
    if !matches!(url.scheme(), "ws" | "wss") {
        return Err(format!("`{base}` is not a ws:// or wss:// URL"));
    }
    match compression {
        crate::config::Compression::None => url.set_query(Some("v=10&encoding=json")),
        compressed => url.set_query(Some(&format!("v=10&encoding=json&compress={compressed}"))),
    }
    Ok(url.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_capped_and_jittered() {
        assert_eq!(backoff(0), Duration::ZERO);
        for attempts in 1..40 {
            let cap = BASE_BACKOFF
                .saturating_mul(1 << (attempts - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(backoff(attempts) <= cap);
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(10)).collect();
        assert!(spread.len() > 1, "backoff is jittered");
    }

    #[test]
    fn gateway_urls_get_version_and_compression_set_on_the_parsed_url() {
        use crate::config::Compression;
        let url = |base| with_query(base, Compression::ZlibStream);
        assert_eq!(
            url("wss://gateway.discord.gg/").unwrap(),
            "wss://gateway.discord.gg/?v=10&encoding=json&compress=zlib-stream"
        );
        assert_eq!(
            with_query("wss://gateway.discord.gg", Compression::ZstdStream).unwrap(),
            "wss://gateway.discord.gg/?v=10&encoding=json&compress=zstd-stream"
        );
        assert_eq!(
            with_query(
                "wss://gateway.discord.gg/?compress=zlib-stream",
                Compression::None
            )
            .unwrap(),
            "wss://gateway.discord.gg/?v=10&encoding=json"
        );
        // A query the URL already had is replaced, not appended to; a path is kept.
        assert_eq!(
            url("wss://gateway-us-east1-b.discord.gg/?v=9&encoding=etf").unwrap(),
            "wss://gateway-us-east1-b.discord.gg/?v=10&encoding=json&compress=zlib-stream"
        );
        assert_eq!(
            url("ws://127.0.0.1:9/resume").unwrap(),
            "ws://127.0.0.1:9/resume?v=10&encoding=json&compress=zlib-stream"
        );
        assert!(url("not a url").unwrap_err().contains("not a URL"));
        assert!(url("https://x/").unwrap_err().contains("ws://"));
    }
}
