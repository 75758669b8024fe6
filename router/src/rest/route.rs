//! What the proxy reads from a request's path: the route template metrics are labelled by, and
//! whether Discord's global limit covers it.
//!
//! Owns these pure decisions; the buckets are `limiter`'s (twilight's, keyed by the major
//! parameters it reads from the same path), sending is `proxy`'s.

/// Distinct templates counted in metrics; past this, requests are counted under `other`.
pub const MAX_TEMPLATES: usize = 256;

/// A request's path (after `/api/v10/`, without its query) as the proxy classifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The path with ids and tokens replaced: `channels/{id}/messages`.
    pub template: String,
    /// Interaction callbacks and webhook-token routes: Discord's global limit does not cover
    /// them, so neither does the router's.
    pub exempt_from_global: bool,
    /// The route's major parameter (the channel, guild, webhook or interaction id), which
    /// Discord keeps a bucket for each of; empty for routes without one.
    pub major: String,
}

impl Route {
    /// Classifies `path` (no leading `/`, no query).
    pub fn of(path: &str) -> Route {
        let segments: Vec<&str> = path.split('/').collect();
        let mut template = Vec::with_capacity(segments.len());
        for (i, segment) in segments.iter().enumerate() {
            let previous = i.checked_sub(1).map(|p| segments[p]);
            let before_previous = i.checked_sub(2).map(|p| segments[p]);
            // The segment after `webhooks/{id}` or `interactions/{id}` is a token whatever
            // the id looks like: a route label must never carry one.
            let is_token = i == 2 && matches!(before_previous, Some("webhooks" | "interactions"));
            let shown = if is_snowflake(segment) {
                "{id}"
            } else if is_token {
                "{token}"
            } else if previous == Some("reactions") {
                "{emoji}"
            } else {
                segment
            };
            template.push(shown);
        }
        let exempt_from_global = match segments.as_slice() {
            ["interactions", ..] => true,
            ["webhooks", id, token, ..] => is_snowflake(id) && !token.is_empty(),
            _ => false,
        };
        let major = match segments.as_slice() {
            ["channels" | "guilds" | "webhooks" | "interactions", id, ..] if is_snowflake(id) => {
                (*id).to_owned()
            }
            _ => String::new(),
        };
        Route {
            template: template.join("/"),
            exempt_from_global,
            major,
        }
    }

    /// The route bucket a request on this route with `method` counts in, as the cluster keys
    /// it: method, template and major parameter (never a token: the template has none).
    pub fn bucket_key(&self, method: &str) -> String {
        format!("{method} {} {}", self.template, self.major)
    }
}

/// Why a path the proxy was asked for is refused before anything else: one that would reach
/// another of Discord's paths once normalised (`..`, `.`, their percent-encoded forms), or
/// alias a route bucket (an empty segment, a backslash). `path` is as sent, after `/api/v10/`.
pub fn unclean(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("the path names no route".to_owned());
    }
    if path.contains('\\') || path.to_ascii_lowercase().contains("%5c") {
        return Some("the path holds a backslash".to_owned());
    }
    for segment in path.split('/') {
        if segment.is_empty() {
            return Some("the path has an empty segment (`//` or a trailing `/`)".to_owned());
        }
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Some(format!("the path has a dot-segment (`{segment}`)"));
        }
    }
    None
}

fn is_snowflake(segment: &str) -> bool {
    !segment.is_empty() && segment.len() <= 20 && segment.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_tokens_and_emoji_leave_the_template() {
        let route = Route::of("channels/123/messages/456/reactions/%F0%9F%91%8D/@me");
        assert_eq!(
            route.template,
            "channels/{id}/messages/{id}/reactions/{emoji}/@me"
        );
        assert!(!route.exempt_from_global);
        let route = Route::of("webhooks/42/aW50ZXJhY3Rpb24/messages/@original");
        assert_eq!(route.template, "webhooks/{id}/{token}/messages/@original");
        assert!(route.exempt_from_global);
    }

    #[test]
    fn a_token_after_an_id_that_is_not_a_snowflake_is_masked_too() {
        assert_eq!(
            Route::of("interactions/notanid/s3cr3t/callback").template,
            "interactions/notanid/{token}/callback"
        );
        assert_eq!(
            Route::of("webhooks/x/s3cr3t/messages/@original").template,
            "webhooks/x/{token}/messages/@original"
        );
    }

    #[test]
    fn dot_segments_backslashes_and_empty_segments_are_unclean() {
        for path in [
            "channels/1/../../x",
            "channels/%2e%2e/x",
            "channels/%2E./x",
            "channels/./messages",
            "channels/1/messages/",
            "channels//messages",
            "channels/1\\messages",
            "channels/1%5Cmessages",
            "",
        ] {
            assert!(unclean(path).is_some(), "{path} passed");
        }
        for path in [
            "channels/1/messages",
            "channels/1/messages/2/reactions/%F0%9F%91%8D/@me",
            "webhooks/1/tok.en/messages/@original",
            "guilds/1/members/search",
        ] {
            assert_eq!(unclean(path), None, "{path}");
        }
    }

    #[test]
    fn interaction_callbacks_and_webhook_token_routes_are_exempt_from_the_global_limit() {
        assert!(Route::of("interactions/1/abc/callback").exempt_from_global);
        assert_eq!(
            Route::of("interactions/1/abc/callback").template,
            "interactions/{id}/{token}/callback"
        );
        assert!(Route::of("webhooks/1/abc").exempt_from_global);
        assert!(
            !Route::of("webhooks/1").exempt_from_global,
            "no token: the bot's own"
        );
        assert!(!Route::of("guilds/1/members/2").exempt_from_global);
        assert!(!Route::of("users/@me").exempt_from_global);
    }

    #[test]
    fn a_bucket_key_is_per_major_parameter_and_never_holds_a_token() {
        let post = |path: &str| Route::of(path).bucket_key("POST");
        assert_eq!(
            post("channels/123/messages"),
            "POST channels/{id}/messages 123"
        );
        assert_ne!(post("channels/123/messages"), post("channels/124/messages"));
        assert_ne!(
            post("channels/123/messages"),
            Route::of("channels/123/messages").bucket_key("GET")
        );
        // Two messages of one channel: one bucket, as Discord keeps it per channel.
        assert_eq!(
            Route::of("channels/1/messages/2").bucket_key("PATCH"),
            Route::of("channels/1/messages/3").bucket_key("PATCH")
        );
        let webhook = post("webhooks/77/s3cret-token/messages");
        assert_eq!(webhook, "POST webhooks/{id}/{token}/messages 77");
        assert!(!webhook.contains("s3cret"));
        assert_eq!(post("users/@me/channels"), "POST users/@me/channels ");
    }
}
