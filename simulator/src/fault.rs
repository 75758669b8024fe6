//! The faults a test can inject on a shard's current connection.
//!
//! Owns only their names; `connection` carries them out.

/// A fault to inject on a shard's current connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Drop the TCP connection without a close frame.
    Drop,
    /// Stop answering heartbeats (until the connection is replaced).
    StopHeartbeatAcks,
    /// Send op 7 RECONNECT.
    Reconnect,
    /// Send op 9; `resumable: false` also invalidates the session.
    InvalidateSession {
        /// Op 9's `d`.
        resumable: bool,
    },
    /// Close with this code (4007 and 4009 also invalidate the session).
    Close(u16),
    /// Split the next message's compressed bytes across this many WebSocket messages
    /// (`zlib-stream` only: Discord sends each `zstd-stream` message whole, so there it is a
    /// no-op).
    SplitNext(usize),
    /// Send a binary frame that does not inflate.
    CorruptFrame,
    /// Send a message that is not JSON.
    InvalidJson,
    /// Send a dispatch (ledgered, `t` = `OVERSIZE_TEST`) about this many bytes long.
    Oversize(usize),
    /// Send a dispatch (ledgered) with this name and `d`, e.g. an INTERACTION_CREATE.
    Dispatch {
        /// Its `t`.
        name: String,
        /// Its `d`, as JSON text.
        d: String,
    },
    /// An event of a guild this shard covers, made on another set's shard (during a reshard
    /// both sets get each guild's events, as on Discord): sent as a new event of this session,
    /// ledgered with the same guild and message.
    #[doc(hidden)]
    Relay {
        /// Its `t`.
        name: String,
        /// Its `d`, as JSON text.
        d: String,
        /// The guild it belongs to.
        guild: u64,
        /// The message id it carries (the logical event, the same on every set).
        message: u64,
    },
}
