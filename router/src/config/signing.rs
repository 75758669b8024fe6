//! The `[signing]` section, and reading secrets from config without ever echoing one.
//!
//! Owns the section's schema and how a secret's value is read: as a string (a list, or a
//! string of several, for `previous_secrets`), with errors that say what was wrong and never
//! what the value was. Parsing a key is `secret`'s; choosing which keys sign what is the
//! signer's.

use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::{Ed25519Key, SigningKey, Token};

/// The `[signing]` section.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The current key, `whsec_<base64>`; better: the `SHARDHOOK_SIGNING_SECRET` environment
    /// variable (wins). `shardhook keygen` prints a new one.
    #[serde(default, serialize_with = "redacted")]
    pub secret: Option<SigningKey>,
    /// Keys being rotated out: requests carry a signature by each, after the current one's.
    /// A list, or one string of keys separated by spaces or commas (as an environment
    /// variable gives it).
    #[serde(
        default,
        serialize_with = "redacted_list",
        deserialize_with = "key_list"
    )]
    pub previous_secrets: Vec<SigningKey>,
    /// The key gateway commands from handlers are signed with, if not `secret`: a handler
    /// that can send commands then holds no key that signs events, and one that only
    /// receives events holds none that sends commands. Better: `SHARDHOOK_CONTROL_SECRET`
    /// (wins). Unset, commands are verified with `secret` and `previous_secrets`.
    #[serde(default, serialize_with = "redacted")]
    pub control_secret: Option<SigningKey>,
    /// The Ed25519 private key (PKCS#8 PEM) that `format = "carbon"` endpoints are signed
    /// with; their app holds the public half. Better: `SHARDHOOK_ED25519_PRIVATE_KEY` (wins).
    /// `shardhook keygen --ed25519` prints a new pair.
    #[serde(default, serialize_with = "redacted")]
    pub ed25519_private_key: Option<Ed25519Key>,
}

fn redacted<S: serde::Serializer, T>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("<redacted>"),
        None => s.serialize_none(),
    }
}

fn redacted_list<S: serde::Serializer, T>(value: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(value.iter().map(|_| "<redacted>"))
}

/// A secret's text. Any value is read first as a TOML value, which cannot fail on a value the
/// file or environment could hold, so no serde message (which quotes the value it did not
/// expect) can carry the secret; a wrong type is named by its type alone.
pub(super) fn secret_text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(text) => Ok(text),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, found {} (value not shown)",
            other.type_str()
        ))),
    }
}

impl<'de> Deserialize<'de> for SigningKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SigningKey::parse(&secret_text(d)?).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Ed25519Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ed25519Key::parse(&secret_text(d)?).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Token::new(&secret_text(d)?).ok_or_else(|| serde::de::Error::custom("the token is empty"))
    }
}

/// `previous_secrets`: a list of keys, or one string holding keys separated by whitespace or
/// commas.
fn key_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SigningKey>, D::Error> {
    let texts: Vec<String> = match toml::Value::deserialize(d)? {
        toml::Value::String(text) => text
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|part| !part.is_empty())
            .map(str::to_owned)
            .collect(),
        toml::Value::Array(values) => values
            .into_iter()
            .enumerate()
            .map(|(i, value)| match value {
                toml::Value::String(text) => Ok(text),
                other => Err(serde::de::Error::custom(format!(
                    "entry {i}: expected a string, found {} (value not shown)",
                    other.type_str()
                ))),
            })
            .collect::<Result<_, _>>()?,
        other => {
            return Err(serde::de::Error::custom(format!(
                "expected a list of keys or a string of them, found {} (value not shown)",
                other.type_str()
            )))
        }
    };
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            SigningKey::parse(text).map_err(|e| serde::de::Error::custom(format!("entry {i}: {e}")))
        })
        .collect()
}

/// Config keys that hold a secret, as error paths name them.
const SECRET_KEYS: [&str; 5] = [
    "discord.token",
    "signing.secret",
    "signing.control_secret",
    "signing.previous_secrets",
    "signing.ed25519_private_key",
];

/// Whether an error at config key `key` could quote a secret's value: the key is a secret, an
/// entry of one, or a section (or the root) that holds one, where a value of the wrong type
/// would be quoted whole.
pub(super) fn may_hold_a_secret(key: &str) -> bool {
    SECRET_KEYS.iter().any(|secret| {
        let (section, _) = secret.split_once('.').unwrap_or((secret, ""));
        key.is_empty()
            || key == section
            || key
                .strip_prefix(secret)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
    })
}

/// `message` with anything it quotes (serde quotes an unexpected string as `"..."`) replaced
/// by `<redacted>`.
pub(super) fn without_quoted_values(message: &str) -> String {
    match (message.find('"'), message.rfind('"')) {
        (Some(first), Some(last)) if first < last => {
            format!("{}<redacted>{}", &message[..first], &message[last + 1..])
        }
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_may_hold_a_secret() {
        for key in [
            "",
            "discord",
            "discord.token",
            "signing",
            "signing.secret",
            "signing.previous_secrets",
            "signing.previous_secrets[1]",
            "signing.ed25519_private_key",
        ] {
            assert!(may_hold_a_secret(key), "{key}");
        }
        for key in ["discord.api_url", "endpoints[0].url", "signing.secretive"] {
            assert!(!may_hold_a_secret(key), "{key}");
        }
    }

    #[test]
    fn quoted_values_are_cut_out() {
        assert_eq!(
            without_quoted_values(r#"invalid type: string "whsec_abc", expected struct"#),
            "invalid type: string <redacted>, expected struct"
        );
        assert_eq!(
            without_quoted_values("unknown field `x`"),
            "unknown field `x`"
        );
    }
}
