//! Secrets the router holds: the bot token.
//!
//! Owns the newtype that keeps a secret out of `Debug`, `Display` and serialised config. Reading
//! the secret's text is an explicit call (`expose`) so every use is easy to find; nothing here
//! decides where a secret comes from (that is `config`).

use std::fmt;

/// A Discord bot token. Prints as `<redacted>` everywhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token, dropping a leading `Bot ` that users often paste along with it.
    pub fn new(raw: &str) -> Option<Token> {
        let raw = raw.trim_start();
        let raw = raw.strip_prefix("Bot ").unwrap_or(raw).trim();
        (!raw.is_empty()).then(|| Token(raw.to_owned()))
    }

    /// The token's text, for the IDENTIFY payload and the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl serde::Serialize for Token {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_prints_its_text() {
        let token = Token::new("Bot abc.def.ghi").unwrap();
        assert_eq!(token.expose(), "abc.def.ghi");
        assert_eq!(format!("{token:?} {token}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&token).unwrap(), "\"<redacted>\"");
    }

    #[test]
    fn empty_token_is_refused() {
        assert!(Token::new("  ").is_none());
        assert!(Token::new("Bot ").is_none());
    }
}
