//! shardhook keeps a Discord bot's gateway shards connected and forwards every dispatch event,
//! signed, to the HTTP endpoint its shard hashes to.
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
//! - `inflater`: transport decompression (zlib-stream, zstd-stream).
//! - `payload`: gateway payloads in and out, without a JSON tree for `d`.
//! - `dispatch`: the event handed from a shard to its consumer.
//! - `delivery`: per-shard queues, batching, signing, sending, retries, failover, dead letters.
//! - `batch`: a batch's body (with `d` spliced byte for byte) and `webhook-id`.
//! - `signer`: Standard Webhooks signatures and keys.
//! - `ring`: weighted rendezvous hashing of shard ids over endpoints.
//! - `endpoint`: one endpoint's pacing, in-flight cap and circuit.
//! - `transport`: delivery's HTTP/1.1 connections, a pool per endpoint.
//! - `circuit`: the circuit breaker.
//! - `retry`: the retry decision and backoff.
//! - `deadletter`: the dead-letter file.
//! - `sigv4`: AWS Signature Version 4 for Lambda function URLs with IAM auth.
//! - `control`: the control API (gateway commands, health, readiness, status, metrics).
//! - `metrics`: Prometheus exposition of the shards' and pipeline's counters.
//! - `allocations` (unit tests only): counts allocations per thread.

mod api;
mod batch;
pub mod checkpoint;
mod circuit;
mod close_code;
pub mod config;
pub mod control;
mod deadletter;
pub mod delivery;
mod dispatch;
mod endpoint;
mod identify;
mod inflater;
pub mod intents;
pub mod metrics;
mod payload;
mod progress;
mod ratelimiter;
mod retry;
mod ring;
mod router;
mod secret;
mod session;
mod shard;
pub mod signer;
pub mod sigv4;
mod spool;
mod transport;

pub use api::{GatewayBot, SessionStartLimit};
pub use config::Config;
pub use deadletter::{read as read_dead_letters, DeadLetter};
pub use delivery::{DeliveryStats, Pipeline, StatsSnapshot};
pub use dispatch::Dispatch;
pub use router::{AllShardsStopped, Router, StartError};
pub use secret::Token;
pub use session::Session;
pub use shard::{CommandRefused, FatalClose, ShardHandle, ShardState, ShardStatus, ShardStopped};
pub use signer::{Signer, SigningKey};

#[cfg(test)]
mod allocations;
