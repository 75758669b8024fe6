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
}
