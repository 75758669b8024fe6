//! The gateway's wire numbers as the double knows them, written out from Discord's
//! documentation (gateway opcodes, the `compress` query values) and not taken from the router,
//! so a wrong number on either side shows up as a broken rule instead of agreeing with itself.
//!
//! Owns only constants and names; `connection` uses them.

/// Gateway opcodes (Discord's "Gateway Opcodes" table).
pub(crate) mod opcode {
    /// Receive: an event was dispatched.
    pub const DISPATCH: u8 = 0;
    /// Send and receive: keep the connection alive.
    pub const HEARTBEAT: u8 = 1;
    /// Send: start a new session.
    pub const IDENTIFY: u8 = 2;
    /// Send: update the client's presence.
    pub const PRESENCE_UPDATE: u8 = 3;
    /// Send: join, move or leave a voice channel.
    pub const VOICE_STATE_UPDATE: u8 = 4;
    /// Send: resume a previous session.
    pub const RESUME: u8 = 6;
    /// Receive: reconnect and resume.
    pub const RECONNECT: u8 = 7;
    /// Send: request members of a guild.
    pub const REQUEST_GUILD_MEMBERS: u8 = 8;
    /// Receive: the session was invalidated.
    pub const INVALID_SESSION: u8 = 9;
    /// Receive: sent on connect, with the heartbeat interval.
    pub const HELLO: u8 = 10;
    /// Receive: a heartbeat was received.
    pub const HEARTBEAT_ACK: u8 = 11;
    /// Send: request soundboard sounds of guilds.
    pub const REQUEST_SOUNDBOARD_SOUNDS: u8 = 31;
}

/// Transport compression a client may ask for with `compress=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// One zlib stream for the connection, each message ending in a sync flush.
    ZlibStream,
    /// One zstd stream for the connection, each message flushed.
    ZstdStream,
}

impl Compress {
    /// The compression a `compress=` value names.
    pub fn named(value: &str) -> Option<Compress> {
        match value {
            "zlib-stream" => Some(Compress::ZlibStream),
            "zstd-stream" => Some(Compress::ZstdStream),
            _ => None,
        }
    }

    /// The `compress=` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Compress::ZlibStream => "zlib-stream",
            Compress::ZstdStream => "zstd-stream",
        }
    }
}
