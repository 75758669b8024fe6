//! What a gateway close code means for the shard: the decision, apart from the mechanism.
//!
//! Owns the table of Discord's close codes. The shard acts on the answer; nothing here touches
//! a connection.

/// What to do after the gateway closed with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Reconnect and RESUME the session.
    Resume,
    /// Reconnect with a new session (IDENTIFY).
    Reidentify,
    /// Stop this shard: reconnecting cannot succeed until the operator acts.
    Fatal,
}

/// Decides from a close code sent by Discord.
pub fn action(code: u16) -> CloseAction {
    match code {
        4004 | 4010..=4014 => CloseAction::Fatal,
        4007 | 4009 => CloseAction::Reidentify,
        _ => CloseAction::Resume,
    }
}

/// Discord's meaning of a close code, for errors and logs.
pub fn meaning(code: u16) -> &'static str {
    match code {
        4000 => "unknown error",
        4001 => "unknown opcode",
        4002 => "decode error",
        4003 => "not authenticated",
        4004 => "authentication failed: the bot token is invalid",
        4005 => "already authenticated",
        4007 => "invalid seq",
        4008 => "rate limited",
        4009 => "session timed out",
        4010 => "invalid shard",
        4011 => "sharding required: the bot needs more shards",
        4012 => "invalid API version",
        4013 => "invalid intents",
        4014 => "disallowed intents: enable the privileged intents in the developer portal",
        1000 => "normal closure",
        1001 => "going away",
        _ => "unlisted close code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authentication_and_sharding_errors_are_fatal() {
        for code in [4004, 4010, 4011, 4012, 4013, 4014] {
            assert_eq!(action(code), CloseAction::Fatal, "{code}");
        }
    }

    #[test]
    fn invalid_seq_and_timeouts_start_a_new_session() {
        assert_eq!(action(4007), CloseAction::Reidentify);
        assert_eq!(action(4009), CloseAction::Reidentify);
    }

    #[test]
    fn everything_else_resumes() {
        for code in [1000, 1001, 1006, 4000, 4001, 4002, 4003, 4005, 4008, 4999] {
            assert_eq!(action(code), CloseAction::Resume, "{code}");
        }
    }
}
