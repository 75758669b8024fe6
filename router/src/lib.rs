//! shardhook keeps a Discord bot's gateway shards connected and forwards every dispatch event,
//! signed, to the HTTP endpoint its shard hashes to.
//!
//! # Layout
//! The folders follow the path of an event, and imports point one way: down this list.
//! - `app`: the one entry that starts a router from a config and stops it in order when its
//!   shutdown token is cancelled; `main`, `demo` and tests start routers through it.
//! - `router`: the shards: start-up checks, one task per shard (those the store says begin
//!   here), shutdown.
//! - `control/`: the control API (`api`: gateway commands, health, readiness, status), the
//!   `server` loop that bounds its connections, and Prometheus `metrics`.
//! - `cluster/`: several routers sharing one bot through Redis, as the router's store:
//!   leases with fencing tokens, rendezvous placement, takeover and handover, checkpoints in
//!   Redis, IDENTIFY turns across routers, spent request ids and REST limits (route buckets
//!   included) for the bot, every record MAC'd (`seal`).
//! - `rest/`: the REST proxy handlers call Discord through: the bot token added, per-route
//!   buckets and the global limit waited for (`limiter`), the invalid-request `guard`, route
//!   templates and counters; the control API authenticates its callers.
//! - `store/`: the one interface for what a router keeps beyond one request (`Store`), chosen
//!   once by `app`: files under `state.dir` (`local`, whose keeper is the `checkpointer`), or
//!   the cluster's Redis (`cluster` implements it). Layers take its parts as values.
//! - `delivery/`: from a shard's queue to an endpoint's 2xx: the `pipeline` and its per-shard
//!   `worker`, each endpoint's `outbox` (one request carries the ready batches of many shards),
//!   `interactions` (defer and apologise), each `attempt` (sign, send, retry, dead letter), where a shard's spool is kept (`spool_store`: the disk, or a cluster's Redis),
//!   `stats`, the body of a `batch`, endpoint choice (`ring`), one `endpoint`'s `pacer` and
//!   `circuit`, the `retry` decision, the `signer`, `sigv4` for Lambda, and the HTTP client on
//!   hyper (`http`).
//! - `gateway/`: from `GET /gateway/bot` (`bot_info`) to a `Dispatch` (`dispatch`): the
//!   `shard` and its `handle`, `session`, `identify` queue, `command_limiter`, `close_code`,
//!   `inflater`, `payload`.
//! - `state/`: what is kept: `checkpoint` records, the `spool`, `dead_letter`s, the spent
//!   request ids that stop replays (`request_ids`, over `spent_ids`' file), the REST limits
//!   (`rest_limits`), the durable `progress` checkpoints are made from, and `files`, which
//!   keeps all of it private to the router's user.
//! - `config/`: the TOML schema, environment overrides and validation, with `intents`;
//!   `secret` (the token and signing keys, and how a URL is shown) and `tls` (the HTTPS
//!   clients' settings) are leaves every folder may use.
//!
//! `fuzzing` (hidden, feature `fuzzing`) gives the fuzz targets under `fuzz/` their entry
//! points into the parsers; the binary (feature `cli`, on by default) brings the simulator.
//!
//! The Discord double, the verifying receiver and `shardhook demo`'s script live outside the
//! library: the simulator is its own crate (`shardhook-simulator`), so it cannot share a bug
//! with the router, and `demo` is part of the binary.

#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(
    clippy::dbg_macro,
    clippy::todo,
    clippy::unimplemented,
    clippy::mem_forget,
    clippy::rc_buffer,
    clippy::lossy_float_literal
)]

pub mod app;
pub mod cluster;
pub mod config;
mod control;
mod delivery;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gateway;
mod rest;
mod router;
mod secret;
mod state;
mod store;
mod tls;

pub use config::Config;
/// The largest gateway command body the control API reads (413 past it, unverified).
pub use control::MAX_BODY_BYTES;
pub use delivery::signer::{unix_now, Signer, VerifyError};
pub use delivery::{
    DeliveryError, DeliveryHandle, DeliveryStats, Pipeline, RefusedLetter, Replayed, StatsSnapshot,
};
pub use gateway::dispatch::Dispatch;
pub use gateway::handle::{
    CommandRefused, FatalClose, ShardHandle, ShardState, ShardStatus, ShardStopped,
};
pub use router::{AllShardsStopped, Router, StartError};
pub use secret::{BadEd25519Key, BadSecret, Ed25519Key, SigningKey, Token};
pub use state::dead_letter::{read as read_dead_letters, DeadLetter};

/// The `User-Agent` of every HTTP request the router makes.
pub(crate) const USER_AGENT: &str = concat!("shardhook/", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
#[allow(unsafe_code)]
mod allocations;
