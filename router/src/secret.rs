//! Secrets the router holds: the bot token, the Standard Webhooks signing keys
//! (`whsec_<base64>`), parsed and keyed once, and the Ed25519 key Carbon endpoints are signed
//! with (PKCS#8 PEM).
//!
//! Owns the newtype that keeps a secret out of `Debug`, `Display` and serialised config. Reading
//! the secret's text is an explicit call (`expose`) so every use is easy to find; nothing here
//! decides where a secret comes from (that is `config`). Also owns how a URL is shown
//! (`redact_url`): its userinfo and query can hold credentials.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) type HmacSha256 = Hmac<Sha256>;

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

    /// Which bot the token is for, without the secret: the bot's user id where the token's first
    /// segment is its base64 (as Discord's are), else a hash of that segment. Checkpoints carry
    /// it, so a state directory copied to another bot's router is not resumed from.
    pub fn bot(&self) -> String {
        use sha2::Digest;
        let first = self.0.split('.').next().unwrap_or_default();
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(first.trim_end_matches('='))
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
        match decoded {
            Some(id) => format!("id:{id}"),
            None => {
                let hash = sha2::Sha256::digest(first.as_bytes());
                let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("sha256:{hex}")
            }
        }
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

/// The shared secret REST callers send as `Authorization` when `rest.auth = "shared-secret"`
/// (the way discordeno's and discord.js's REST proxy settings authenticate). Prints as
/// `<redacted>`.
#[derive(Clone)]
pub struct RestSecret(HmacSha256);

/// A REST secret shorter than 32 bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the REST secret must be at least 32 bytes (it has {0}); `shardhook keygen` prints a fit one"
)]
pub struct ShortRestSecret(usize);

impl RestSecret {
    /// The least a secret may hold, in bytes.
    pub const MIN_BYTES: usize = 32;

    /// Wraps `secret`, at least `MIN_BYTES` long.
    pub fn parse(secret: &str) -> Result<RestSecret, ShortRestSecret> {
        let secret = secret.trim();
        if secret.len() < RestSecret::MIN_BYTES {
            return Err(ShortRestSecret(secret.len()));
        }
        let mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
        Ok(RestSecret(mac))
    }

    /// Whether `given` is the secret, compared in constant time: both are MAC'd under the
    /// secret itself and the tags compared by `verify_slice`.
    pub fn matches(&self, given: &str) -> bool {
        let mut expected = self.0.clone();
        expected.update(b"shardhook rest secret");
        let tag = expected.finalize().into_bytes();
        match HmacSha256::new_from_slice(given.as_bytes()) {
            Ok(mut candidate) => {
                candidate.update(b"shardhook rest secret");
                candidate.verify_slice(&tag).is_ok()
            }
            Err(_) => false,
        }
    }
}

impl fmt::Debug for RestSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The prefix Standard Webhooks secrets carry.
pub const SECRET_PREFIX: &str = "whsec_";

/// A signing key. Prints as `<redacted>`.
#[derive(Clone)]
pub struct SigningKey {
    mac: HmacSha256,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A secret that is not `whsec_` followed by base64 of at least 16 bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a signing secret must be `whsec_` followed by base64 of 16 to 128 bytes ({0})")]
pub struct BadSecret(&'static str);

impl SigningKey {
    /// Parses `whsec_<base64>`.
    pub fn parse(secret: &str) -> Result<SigningKey, BadSecret> {
        let b64 = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(BadSecret("the `whsec_` prefix is missing"))?;
        let bytes = STANDARD
            .decode(b64)
            .map_err(|_| BadSecret("the part after `whsec_` is not base64"))?;
        if !(16..=128).contains(&bytes.len()) {
            return Err(BadSecret("the key has the wrong length"));
        }
        let mac = HmacSha256::new_from_slice(&bytes).map_err(|_| BadSecret("unusable key"))?;
        Ok(SigningKey { mac })
    }

    /// A new random secret, as `shardhook keygen` prints it: 32 bytes from the operating
    /// system's cryptographic generator (`getrandom`), not a fast guessable one.
    pub fn generate() -> String {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source is readable");
        format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
    }

    /// The keyed HMAC state after `{id}.{timestamp}.{body}`, for signing or verifying.
    pub(crate) fn mac_over(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// The Ed25519 private key `format = "carbon"` endpoints are signed with, as Discord signs its
/// webhook events. Prints as `<redacted>`; only its public half is ever shown.
#[derive(Clone)]
pub struct Ed25519Key(ed25519_dalek::SigningKey);

impl fmt::Debug for Ed25519Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A value for `signing.ed25519_private_key` that is not an Ed25519 key in PKCS#8 PEM.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("an Ed25519 private key must be PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`, as `shardhook keygen --ed25519` prints it): {0}")]
pub struct BadEd25519Key(&'static str);

impl Ed25519Key {
    /// Parses PKCS#8 PEM. Line breaks written as `\n` (as an environment variable often carries
    /// a PEM) are read as line breaks, as Carbon's own forwarder reads them.
    pub fn parse(pem: &str) -> Result<Ed25519Key, BadEd25519Key> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let pem = pem.trim().replace("\\n", "\n");
        if !pem.starts_with("-----BEGIN PRIVATE KEY-----") {
            return Err(BadEd25519Key(
                "it does not start with `-----BEGIN PRIVATE KEY-----`",
            ));
        }
        ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .map(Ed25519Key)
            .map_err(|_| BadEd25519Key("it is not an Ed25519 key in PKCS#8 form"))
    }

    /// A new key, as `shardhook keygen --ed25519` prints it: the private key in PKCS#8 PEM and
    /// the public key in hex (as Carbon's `publicKey` takes it). The seed is 32 bytes from the
    /// operating system's cryptographic generator (`getrandom`).
    ///
    /// The PEM is PKCS#8 version 1, the seed alone, as `openssl genpkey -algorithm ed25519`
    /// writes it: OpenSSL 3.0 (and so Node 20's `createPrivateKey`, which Carbon's own
    /// forwarder reads its key with) refuses the version 2 form with the public key inside.
    pub fn generate() -> (String, String) {
        use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePrivateKey, KeypairBytes};
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source is readable");
        let pem = KeypairBytes {
            secret_key: seed,
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .expect("an Ed25519 seed encodes as PKCS#8");
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        (pem.to_string(), Ed25519Key(key).public_hex())
    }

    /// The public key in lower-case hex (64 digits).
    pub fn public_hex(&self) -> String {
        hex(self.0.verifying_key().as_bytes())
    }

    /// The signature over `parts` joined, in lower-case hex (128 digits).
    pub(crate) fn sign_hex(&self, parts: &[&[u8]]) -> String {
        use ed25519_dalek::Signer;
        // Ed25519 hashes the message twice, so it takes it whole.
        let mut message = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
        for part in parts {
            message.extend_from_slice(part);
        }
        hex(&self.0.sign(&message).to_bytes())
    }
}

/// `bytes` in lower-case hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// `url` as output and logs may show it: userinfo (`user:password@`) and the query (`?key=...`)
/// replaced by `<redacted>`, the fragment dropped. Text that is not a URL is not shown at all.
pub fn redact_url(url: &str) -> String {
    use std::fmt::Write;
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return "<not a URL>".to_owned();
    };
    let mut shown = format!("{}:", parsed.scheme());
    if let Some(host) = parsed.host_str() {
        shown.push_str("//");
        if !parsed.username().is_empty() || parsed.password().is_some() {
            shown.push_str("<redacted>@");
        }
        shown.push_str(host);
        if let Some(port) = parsed.port() {
            let _ = write!(shown, ":{port}");
        }
    }
    shown.push_str(parsed.path());
    if parsed.query().is_some() {
        shown.push_str("?<redacted>");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_userinfo_or_query() {
        assert_eq!(
            redact_url("https://user:pa55@example.com:8443/hook/?key=abc#frag"),
            "https://<redacted>@example.com:8443/hook/?<redacted>"
        );
        assert_eq!(
            redact_url("http://token@[::1]/x"),
            "http://<redacted>@[::1]/x"
        );
        assert_eq!(
            redact_url("https://example.workers.dev/"),
            "https://example.workers.dev/"
        );
        assert_eq!(redact_url("not a url user:pw"), "<not a URL>");
    }

    #[test]
    fn generated_secrets_do_not_follow_a_seeded_fast_generator() {
        // Were they drawn from fastrand, the same seed would give the same secret.
        fastrand::seed(7);
        let first = SigningKey::generate();
        fastrand::seed(7);
        let second = SigningKey::generate();
        assert_ne!(first, second);
        assert!(SigningKey::parse(&first).is_ok());
    }

    #[test]
    fn a_tokens_bot_is_its_user_id_or_a_hash_never_the_secret() {
        // Discord's tokens start with the bot's user id in base64.
        let token = Token::new("MTEwMDAwMDAwMDAwMDAwMDAwMQ.GhIjKl.secret-part").unwrap();
        assert_eq!(token.bot(), "id:1100000000000000001");
        let other = Token::new("shardhook-simulated-token").unwrap();
        let bot = other.bot();
        assert!(
            bot.starts_with("sha256:") && !bot.contains("simulated"),
            "{bot}"
        );
        assert_ne!(bot, Token::new("another-token").unwrap().bot());
    }

    #[test]
    fn token_never_prints_its_text() {
        let token = Token::new("Bot abc.def.ghi").unwrap();
        assert_eq!(token.expose(), "abc.def.ghi");
        assert_eq!(format!("{token:?} {token}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&token).unwrap(), "\"<redacted>\"");
    }

    #[test]
    fn an_ed25519_key_round_trips_through_pem_and_never_prints() {
        let (pem, public) = Ed25519Key::generate();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert_eq!(public.len(), 64);
        let key = Ed25519Key::parse(&pem).unwrap();
        assert_eq!(key.public_hex(), public);
        // As an environment variable often carries it: `\n` for each line break.
        let escaped = pem.trim_end().replace('\n', "\\n");
        assert_eq!(Ed25519Key::parse(&escaped).unwrap().public_hex(), public);
        assert_eq!(format!("{key:?}"), "<redacted>");
        assert_ne!(Ed25519Key::generate().1, public);
        for bad in [
            "",
            "whsec_abc",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        ] {
            let err = Ed25519Key::parse(bad).unwrap_err().to_string();
            assert!(err.contains("PKCS#8") && !err.contains("AAAA"), "{err}");
        }
    }

    #[test]
    fn ed25519_keys_are_written_and_read_in_openssls_pkcs8_form() {
        // `openssl genpkey -algorithm ed25519`, and the public half its `pkey -pubout` gave.
        let openssl = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBW2PvcDvCu3bQo61bQHOrdcaF2PwlePKlom7icMFqwH\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            Ed25519Key::parse(openssl).unwrap().public_hex(),
            "b4064319d931457f907e9a42d93bea262e6499070d5214089755c9268e6366de"
        );
        // Ours has the same 48-byte shape (version 1, no public key), which OpenSSL 3.0 reads.
        let (pem, _) = Ed25519Key::generate();
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.len(), 3, "{pem}");
        assert!(lines[1].starts_with("MC4CAQAwBQYDK2VwBCIEI"), "{pem}");
        assert_eq!(lines[1].len(), 64);
    }

    #[test]
    fn ed25519_keys_do_not_follow_a_seeded_fast_generator() {
        fastrand::seed(7);
        let first = Ed25519Key::generate().1;
        fastrand::seed(7);
        assert_ne!(first, Ed25519Key::generate().1);
    }

    #[test]
    fn empty_token_is_refused() {
        assert!(Token::new("  ").is_none());
        assert!(Token::new("Bot ").is_none());
    }

    #[test]
    fn a_rest_secret_matches_itself_only_and_is_at_least_32_bytes() {
        let secret = "0123456789abcdef0123456789abcdef";
        let parsed = RestSecret::parse(secret).unwrap();
        assert!(parsed.matches(secret));
        assert!(!parsed.matches("0123456789abcdef0123456789abcdeF"));
        assert!(!parsed.matches(""));
        assert!(!parsed.matches(&format!("{secret}x")));
        assert_eq!(RestSecret::parse("short").unwrap_err(), ShortRestSecret(5));
        assert_eq!(format!("{parsed:?}"), "<redacted>");
    }
}
