//! Standard Webhooks 1.0 signatures: HMAC-SHA256 over `{id}.{timestamp}.{body}`.
//!
//! Owns producing the `webhook-signature` header value (one `v1,<base64>` per key: the current
//! key first, then the previous ones, for rotation) and verifying one. The keys themselves are
//! `secret`'s, parsed and keyed once; each signature clones a keyed HMAC state instead of
//! re-keying. It knows nothing about HTTP.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::Mac;

use crate::config::{Config, ConfigError};
use crate::secret::HmacSha256;
pub use crate::secret::SigningKey;

/// How far a verified timestamp may be from now, either way.
pub const TOLERANCE_SECS: u64 = 5 * 60;

/// Signs with the current key and the previous ones.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Current key first.
    keys: Vec<SigningKey>,
}

/// Why a signed request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// A header the signature needs is missing.
    #[error("missing header {0}")]
    Missing(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    BadTimestamp,
    /// `webhook-timestamp` is too far from now.
    #[error("webhook-timestamp is more than 5 minutes from now")]
    Stale,
    /// No `v1,` entry matches any key.
    #[error("no signature in webhook-signature matches")]
    NoMatch,
    /// More entries than any signer writes: refused unread.
    #[error("webhook-signature has more than {MAX_SIGNATURES} entries")]
    TooMany,
}

/// The most entries a `webhook-signature` header may have (the templates' bound too): a
/// signer writes one per key, and a rotation has a few. Past it the header is refused before
/// any is decoded or checked, so a header of thousands costs nothing.
pub const MAX_SIGNATURES: usize = 8;

impl Signer {
    /// The signer for outgoing events and incoming commands from `config`'s `[signing]`: the
    /// current key, then the previous ones.
    pub fn from_config(config: &Config) -> Result<Signer, ConfigError> {
        let current = config.signing_key()?.clone();
        Ok(Signer::new(
            current,
            config.signing.previous_secrets.clone(),
        ))
    }

    /// The verifier for gateway commands from handlers: `signing.control_secret` alone when it
    /// is set, else the keys events are signed with.
    pub fn for_commands(config: &Config) -> Result<Signer, ConfigError> {
        match &config.signing.control_secret {
            Some(key) => Ok(Signer::new(key.clone(), Vec::new())),
            None => Signer::from_config(config),
        }
    }

    /// A signer with `current` first, then `previous`.
    pub fn new(current: SigningKey, previous: Vec<SigningKey>) -> Signer {
        let mut keys = vec![current];
        keys.extend(previous);
        Signer { keys }
    }

    /// The `webhook-signature` header value: `v1,<base64>` per key, space-separated.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        self.sign_text(id, &timestamp.to_string(), body)
    }

    /// Like `sign`, with the timestamp as the `webhook-timestamp` header carries it.
    pub fn sign_text(&self, id: &str, timestamp: &str, body: &[u8]) -> String {
        // Exactly the header's size (`v1,` and 44 base64 characters per key, a space between
        // keys): a full `String` becomes a header value's bytes without another allocation.
        let mut header = String::with_capacity(self.keys.len() * 48 - 1);
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                header.push(' ');
            }
            header.push_str("v1,");
            let signature = key.mac_over(id, timestamp, body).finalize().into_bytes();
            STANDARD.encode_string(signature, &mut header);
        }
        header
    }

    /// Verifies headers against `body` with any of the keys, at time `now` (Unix seconds).
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        body: &[u8],
        now: u64,
    ) -> Result<(), VerifyError> {
        self.verify_parts(id, timestamp, signatures, &[body], now)
    }

    /// Like `verify`, over the concatenation of `parts` as the body, without joining them.
    pub fn verify_parts(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        parts: &[&[u8]],
        now: u64,
    ) -> Result<(), VerifyError> {
        let mut verifier = self.verifier(id, timestamp, signatures, now)?;
        for part in parts {
            verifier.update(part);
        }
        verifier.finish()
    }

    /// Checks the headers (all present, the timestamp within `TOLERANCE_SECS` of `now`) and
    /// starts verifying a body that is fed to the answer as it arrives, so a body need not be
    /// held whole to be verified.
    pub fn verifier(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signatures: Option<&str>,
        now: u64,
    ) -> Result<Verifier, VerifyError> {
        let id = id.ok_or(VerifyError::Missing("webhook-id"))?;
        let timestamp = timestamp.ok_or(VerifyError::Missing("webhook-timestamp"))?;
        let signatures = signatures.ok_or(VerifyError::Missing("webhook-signature"))?;
        let ts: u64 = timestamp.parse().map_err(|_| VerifyError::BadTimestamp)?;
        if ts.abs_diff(now) > TOLERANCE_SECS {
            return Err(VerifyError::Stale);
        }
        if signatures
            .split(' ')
            .filter(|s| !s.is_empty())
            .nth(MAX_SIGNATURES)
            .is_some()
        {
            return Err(VerifyError::TooMany);
        }
        let given = signatures
            .split(' ')
            .filter_map(|s| s.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        let macs = self
            .keys
            .iter()
            .map(|key| key.mac_over(id, timestamp, b""))
            .collect();
        Ok(Verifier { macs, given })
    }
}

/// A signature being checked over a body that arrives in parts: one HMAC state per key.
pub struct Verifier {
    macs: Vec<HmacSha256>,
    /// The decoded `v1,` signatures of the `webhook-signature` header.
    given: Vec<Vec<u8>>,
}

impl Verifier {
    /// Feeds the next part of the body.
    pub fn update(&mut self, part: &[u8]) {
        for mac in &mut self.macs {
            mac.update(part);
        }
    }

    /// Whether any given signature matches under any key, over all the parts fed.
    pub fn finish(self) -> Result<(), VerifyError> {
        let matches = self.macs.into_iter().any(|mac| {
            self.given
                .iter()
                .any(|sig| mac.clone().verify_slice(sig).is_ok())
        });
        matches.then_some(()).ok_or(VerifyError::NoMatch)
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keyed states: nothing of them is shown.
        f.debug_struct("Verifier")
            .field("keys", &self.macs.len())
            .finish_non_exhaustive()
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: u64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn a_header_of_more_than_eight_entries_is_refused_unread_even_with_a_match() {
        let signer = Signer::new(SigningKey::parse(SPEC_SECRET).unwrap(), vec![]);
        let (now, ts) = (SPEC_TS, SPEC_TS.to_string());
        let padded = |n: usize| {
            let mut entries = vec!["v1,AAAA"; n - 1];
            entries.push(SPEC_SIG);
            entries.join(" ")
        };
        let check = |header: &str| {
            signer.verify_parts(
                Some(SPEC_ID),
                Some(ts.as_str()),
                Some(header),
                &[SPEC_BODY],
                now,
            )
        };
        assert_eq!(
            check(&padded(8)),
            Ok(()),
            "eight: a rotation's worth and more"
        );
        assert_eq!(check(&padded(9)), Err(VerifyError::TooMany));
        assert_eq!(check(&padded(8000)), Err(VerifyError::TooMany));
    }

    #[test]
    fn matches_the_specification_example() {
        let signer = Signer::new(SigningKey::parse(SPEC_SECRET).unwrap(), vec![]);
        assert_eq!(signer.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn the_signature_header_fills_its_allocation_exactly() {
        for previous in 0..3 {
            let old = (0..previous)
                .map(|_| SigningKey::parse(&SigningKey::generate()).unwrap())
                .collect();
            let signer = Signer::new(SigningKey::parse(SPEC_SECRET).unwrap(), old);
            let (header, allocations) =
                crate::allocations::during(|| signer.sign_text(SPEC_ID, "1614265330", SPEC_BODY));
            assert_eq!(header.len(), header.capacity(), "{previous} previous keys");
            assert_eq!(allocations, 1);
        }
    }

    #[test]
    fn rotation_signs_with_every_key_current_first() {
        let new = SigningKey::parse(&SigningKey::generate()).unwrap();
        let old = SigningKey::parse(SPEC_SECRET).unwrap();
        let header = Signer::new(new, vec![old.clone()]).sign(SPEC_ID, SPEC_TS, SPEC_BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], SPEC_SIG);
        // A verifier that only knows the old key still accepts.
        let old_only = Signer::new(old, vec![]);
        let ts = SPEC_TS.to_string();
        assert_eq!(
            old_only.verify(Some(SPEC_ID), Some(&ts), Some(&header), SPEC_BODY, SPEC_TS),
            Ok(())
        );
    }

    #[test]
    fn verification_refuses_tampering_staleness_and_missing_headers() {
        let signer = Signer::new(SigningKey::parse(SPEC_SECRET).unwrap(), vec![]);
        let ts = SPEC_TS.to_string();
        let ok = |body: &[u8], sig: &str, now| {
            signer.verify(Some(SPEC_ID), Some(&ts), Some(sig), body, now)
        };
        assert_eq!(ok(SPEC_BODY, SPEC_SIG, SPEC_TS), Ok(()));
        assert_eq!(
            ok(b"{\"test\": 1}", SPEC_SIG, SPEC_TS),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            ok(SPEC_BODY, &SPEC_SIG[..20], SPEC_TS),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            ok(SPEC_BODY, SPEC_SIG, SPEC_TS + 301),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            signer.verify(None, Some(&ts), Some(SPEC_SIG), SPEC_BODY, SPEC_TS),
            Err(VerifyError::Missing("webhook-id"))
        );
    }

    #[test]
    fn a_body_fed_in_parts_verifies_as_the_whole_and_the_headers_are_checked_first() {
        let signer = Signer::new(SigningKey::parse(SPEC_SECRET).unwrap(), vec![]);
        let ts = SPEC_TS.to_string();
        let verifier = || signer.verifier(Some(SPEC_ID), Some(&ts), Some(SPEC_SIG), SPEC_TS);
        for split in [0, 1, 7, SPEC_BODY.len()] {
            let mut v = verifier().unwrap();
            let (a, b) = SPEC_BODY.split_at(split);
            v.update(a);
            v.update(b);
            assert_eq!(v.finish(), Ok(()), "split at {split}");
        }
        let mut short = verifier().unwrap();
        short.update(&SPEC_BODY[1..]);
        assert_eq!(short.finish(), Err(VerifyError::NoMatch));
        let stale = signer.verifier(Some(SPEC_ID), Some(&ts), Some(SPEC_SIG), SPEC_TS + 301);
        assert_eq!(stale.unwrap_err(), VerifyError::Stale);
    }

    #[test]
    fn bad_secrets_are_refused_and_keys_never_print() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(
            SigningKey::parse("whsec_YWJj").is_err(),
            "3 bytes is too short"
        );
        let key = SigningKey::parse(SPEC_SECRET).unwrap();
        assert_eq!(format!("{key:?}"), "<redacted>");
        let generated = SigningKey::generate();
        assert!(SigningKey::parse(&generated).is_ok());
        assert_ne!(generated, SigningKey::generate());
    }
}
