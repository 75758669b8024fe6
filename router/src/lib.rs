//! shardhook keeps a Discord bot's gateway shards connected and hands every dispatch event to a
//! consumer through a bounded channel.
//!
//! # Layout
//! - `config`: the TOML schema, environment overrides and validation.
//! - `secret`: the redacted token newtype.
//! - `intents`: intent names and bits.
//! - `api`: `GET /gateway/bot`.
//! - `router`: start-up checks, one task per shard, shutdown.
//! - `shard`: one shard's connection and state machine.
//! - `session`: what a shard needs to resume.
//! - `identify`: the per-bucket identify queue.
//! - `ratelimiter`: the per-shard command limiter.
//! - `close_code`: what each close code means for the shard.
//! - `inflater`: zlib-stream decompression.
//! - `payload`: gateway payloads in and out, without a JSON tree for `d`.
//! - `dispatch`: the event handed from a shard to its consumer.
//! - `simulate`: a local Discord double for tests, the demo and handler development.
//! - `demo`: `shardhook demo`, the embedded default.

mod api;
mod close_code;
pub mod config;
pub mod demo;
mod dispatch;
mod identify;
mod inflater;
pub mod intents;
mod payload;
mod ratelimiter;
mod router;
mod secret;
mod session;
mod shard;
pub mod simulate;

pub use api::{GatewayBot, SessionStartLimit};
pub use config::Config;
pub use dispatch::Dispatch;
pub use router::{run, AllShardsStopped, Router, RunError, StartError};
pub use secret::Token;
pub use session::Session;
pub use shard::{FatalClose, ShardHandle, ShardState, ShardStatus, ShardStopped};
