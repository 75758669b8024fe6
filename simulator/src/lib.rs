//! A local Discord double for shardhook's tests, its demo, its benchmark and handler
//! development (`shardhook simulate`, next to `wrangler dev`): REST `GET /gateway/bot` and a v10
//! JSON gateway with `zlib-stream` or `zstd-stream`, enforcing Discord's rules, with fault
//! knobs and a ledger of every event it sent; and a receiving endpoint that verifies each
//! request's Standard Webhooks signature.
//!
//! It is a crate of its own and shares no code with the router: its own opcodes
//! (`protocol`), its own compression (`compress`), its own signature check (the
//! `standardwebhooks` crate). A router mistake then shows up here as a broken rule, a frame
//! that does not decompress or a request that does not verify, instead of agreeing with itself.
//!
//! # Layout
//! - `server`: the running double (`Simulator`): listener, routes, gateway upgrade, faults in,
//!   observations out.
//! - `rules`: how it behaves (`SimConfig`) and the numbers of the rules it enforces.
//! - `shared`: the state its connections and routes share (sessions, buckets, live connections).
//! - `connection`: one gateway connection: HELLO, IDENTIFY/RESUME checks, heartbeats,
//!   traffic, replay, rules, faults.
//! - `rest`: `GET /gateway/bot` and the REST routes the handler examples call.
//! - `rest_limits`: Discord's REST rate limits: per-route buckets, the global limit, 429s.
//! - `events`: READY, GUILD_CREATE and traffic payloads shaped like Discord's.
//! - `protocol`: opcodes and `compress` values, from Discord's documentation.
//! - `compress`: zlib-stream and zstd-stream, as Discord frames them.
//! - `fault`: the faults a test can inject.
//! - `observed`: what it saw, for tests to assert on.
//! - `receiver`: a local verifying endpoint with scripted replies.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod compress;
mod connection;
pub mod events;
mod fault;
mod observed;
mod protocol;
pub mod receiver;
mod rest;
mod rest_limits;
mod rules;
mod server;
mod shared;

pub use compress::{zstd_flushed, ZLIB_SUFFIX};
pub use fault::Fault;
pub use observed::{IdentifyRecord, LedgerEntry, Observed, RestCall, ResumeRecord};
pub use protocol::Compress;
pub use rules::{
    SimConfig, DEFAULT_TOKEN, IDENTIFY_INTERVAL, IDENTIFY_TOLERANCE, MAX_CLIENT_PAYLOAD,
    SEND_LIMIT, SEND_WINDOW,
};
pub use server::Simulator;
