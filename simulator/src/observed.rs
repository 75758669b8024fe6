//! What the double saw and did (`Observed`), for tests to assert on: the ledger of every
//! event it created, identifies, resumes, gateway commands, REST calls, and the rules a client
//! broke.
//!
//! Owns only the records; `shared` keeps them behind a lock and wakes whoever waits.

use std::collections::HashSet;

use tokio::time::Instant;

/// One event the double created: `(shard, session, seq)` identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LedgerEntry {
    /// The shard it was sent on.
    pub shard: u32,
    /// The session it belongs to.
    pub session: String,
    /// Its sequence number in the session.
    pub seq: u64,
    /// Its name (`t`).
    pub event: String,
    /// When it was created, just before it was sent (latency is measured from here).
    pub at: Instant,
    /// For a traffic event: its guild and its message id, the same on every set of shards
    /// that got it (during a reshard), so a test can tell a guild's events apart from their
    /// copies.
    pub message: Option<(u64, u64)>,
}

/// An IDENTIFY the double received.
#[derive(Debug, Clone)]
pub struct IdentifyRecord {
    /// The shard it was for.
    pub shard: u32,
    /// When it arrived.
    pub at: Instant,
    /// False when it broke the bucket's 5 s rule (answered with op 9).
    pub accepted: bool,
}

/// A RESUME the double received.
#[derive(Debug, Clone)]
pub struct ResumeRecord {
    /// The shard of the session (`u32::MAX` when the session is unknown).
    pub shard: u32,
    /// The session it named.
    pub session: String,
    /// The last seq it said it had.
    pub seq: u64,
    /// Whether the client connected to `resume_gateway_url` as Discord requires.
    pub via_resume_url: bool,
    /// Whether the session was resumed (otherwise op 9 was sent).
    pub accepted: bool,
    /// When it arrived.
    pub at: Instant,
    /// How long the session had been without a connection (`None`: it still had one, which
    /// the RESUME took over).
    pub offline: Option<std::time::Duration>,
}

/// Everything the double saw and did, for tests to assert on.
#[derive(Debug, Default)]
pub struct Observed {
    /// Every event created, in creation order (replays are not new entries).
    pub ledger: Vec<LedgerEntry>,
    /// Sessions invalidated: their unreceived events are lost as they would be on Discord.
    pub invalidated: HashSet<String>,
    /// Every IDENTIFY, in order.
    pub identifies: Vec<IdentifyRecord>,
    /// Every RESUME, in order.
    pub resumes: Vec<ResumeRecord>,
    /// Gateway commands (op 3, 4, 8, 31, ...) received, by shard.
    pub commands: Vec<(u32, serde_json::Value)>,
    /// Rules the client broke, in words. A correct router leaves this empty.
    pub violations: Vec<String>,
    /// Connections accepted on the gateway.
    pub connections: u64,
    /// The `compress` each accepted connection asked for, in order (`None`: uncompressed).
    pub compress: Vec<Option<String>>,
    /// Events sent again on RESUME.
    pub replayed: u64,
    /// REST calls a handler or the router made (create message, interaction callbacks...).
    pub rest_calls: Vec<RestCall>,
}

/// A REST call the double served.
#[derive(Debug, Clone)]
pub struct RestCall {
    /// `GET`, `POST`, `PATCH`...
    pub method: String,
    /// The path below the API base, e.g. `/channels/123/messages`.
    pub path: String,
    /// Whether `Authorization: Bot <token>` was right (interaction callbacks need none).
    pub authorized: bool,
    /// The request body as JSON (`null` when it was not JSON).
    pub body: serde_json::Value,
    /// The request body as it came.
    pub raw: bytes::Bytes,
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// Its `Content-Length` (`None`: the body came chunked, or there was none).
    pub content_length: Option<String>,
    /// Its `X-Audit-Log-Reason`.
    pub audit_log_reason: Option<String>,
    /// When the double's limits judged it (read under their lock, so calls sort as the limits
    /// saw them); for a call refused 401, when it arrived.
    pub at: Instant,
    /// The status the double answered.
    pub status: u16,
}
