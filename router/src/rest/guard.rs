//! The invalid-request guard: Discord bans an IP for about an hour once it answers 10,000
//! requests from it with 401, 403 or 429 (429s of scope `shared` aside) within 10 minutes. The
//! proxy counts those answers over a sliding 10 minutes (`state::rest_limits`, the bot's count
//! in a cluster) and, at `rest.invalid_request_limit`, refuses further requests itself until
//! the window allows.
//!
//! Owns which answers count; the count is `state::rest_limits`', logging and the 503 `proxy`'s.

/// Whether an answer counts towards Discord's invalid-request limit.
pub fn counts(status: u16, scope: Option<&str>) -> bool {
    match status {
        401 | 403 => true,
        429 => scope != Some("shared"),
        _ => false,
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
}
