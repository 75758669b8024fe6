//! The REST proxy: handlers call Discord's REST API through the router, which holds the bot
//! token and keeps one rate limiter and one invalid-request window for all of them.
//!
//! Owns receiving a request's body within `rest.max_body` without holding a large one in memory
//! (`body`), forwarding a request the control API has authenticated (`proxy`), waiting for
//! Discord's per-route buckets (`limiter`, on twilight's limiter) and global limit (paced
//! evenly by `state::rest_limits`, the bot's in a cluster, rather than twilight's window), refusing
//! requests before Discord would ban the IP (`guard`), the route templates metrics are
//! labelled by (`route`), and the counters (`stats`). It must not authenticate callers (the
//! control API does, with the keys and spent ids it already has) nor touch the gateway.

mod body;
mod guard;
mod limiter;
mod proxy;
mod route;
mod stats;

pub use body::BodyError;
pub use proxy::{ProxyRequest, RestProxy};
