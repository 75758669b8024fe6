//! The MAC on every record the routers keep in Redis, so a Redis (or anyone who can write to
//! it) cannot make a router act on a record no router wrote: resume at a host of its choosing,
//! sign and deliver a spooled batch of its making, redirect handlers to a node of its naming.
//!
//! The key is derived from the bot token, which every router of the bot holds and Redis never
//! sees (`HMAC-SHA256(token, "shardhook cluster records v1")`): nothing more to configure, and
//! a record of another bot's routers does not verify. Each MAC covers the record's key name
//! (`checkpoint:3`, `spool:3`, `node:alpha`, `dead-letters`) and its bytes, so a record moved
//! to another key fails too. A token reset makes the records written before it unverifiable:
//! checkpoints are then ignored (Discord ends the sessions with the token anyway), spooled
//! batches go to the dead-letter file for a deliberate `replay`, node records drop out until
//! their routers write them again a heartbeat later.
//!
//! Owns the key and the MAC's form (base64, unpadded); where records live is `store`'s.

use base64::Engine;
use hmac::Mac;
use serde::{Deserialize, Serialize};

use crate::secret::{HmacSha256, Token};

/// How a MAC is written down.
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// It carries no MAC (written by something else than a router of this version).
    #[error("the record under {key} carries no MAC")]
    Missing { key: String },
    /// Its MAC does not match its contents.
    #[error("the record under {key} fails its MAC (not written by a router of this bot)")]
    Mismatch { key: String },
}

/// The routers' shared key for records in Redis.
#[derive(Clone)]
pub struct Seal {
    key: HmacSha256,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(..)")
    }
}

impl Seal {
    /// The key of `token`'s routers.
    pub fn of(token: &Token) -> Seal {
        let mut derive = HmacSha256::new_from_slice(token.expose().as_bytes())
            .expect("HMAC takes any key length");
        derive.update(b"shardhook cluster records v1");
        let key = derive.finalize().into_bytes();
        Seal {
            key: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"),
        }
    }

    fn mac(&self, name: &str, record: &[u8]) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(name.as_bytes());
        mac.update(&[0]);
        mac.update(record);
        mac
    }

    /// The MAC of `record` kept under the key `name` (without the bot's prefix), in base64.
    pub fn sign(&self, name: &str, record: &[u8]) -> String {
        B64.encode(self.mac(name, record).finalize().into_bytes())
    }

    /// Whether `mac` (as `sign` wrote it) is `record`'s under `name`, in constant time.
    pub fn verify(&self, name: &str, record: &[u8], mac: Option<&str>) -> Result<(), Refused> {
        let Some(mac) = mac else {
            return Err(Refused::Missing {
                key: name.to_owned(),
            });
        };
        let bytes = B64.decode(mac).map_err(|_| Refused::Mismatch {
            key: name.to_owned(),
        })?;
        self.mac(name, record)
            .verify_slice(&bytes)
            .map_err(|_| Refused::Mismatch {
                key: name.to_owned(),
            })
    }
}

/// Why a sealed JSON record could not be opened.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unsealed {
    /// It does not parse.
    #[error("Redis key {key} holds something unreadable: {message}")]
    Unreadable { key: String, message: String },
    /// Its MAC fails or is missing.
    #[error("{0}")]
    Refused(Refused),
}

/// `value`'s JSON with its MAC under `name` as a last member, `mac`.
pub(super) fn sealed_json<T: Serialize>(seal: &Seal, name: &str, value: &T) -> String {
    let mut json = serde_json::to_string(value).expect("a record serialises");
    let mac = seal.sign(name, json.as_bytes());
    debug_assert!(json.ends_with('}'));
    json.pop();
    json.push_str(&format!(",\"mac\":\"{mac}\"}}"));
    json
}

/// The record `sealed_json` wrote under `name`, if it parses and its MAC holds: the MAC is of
/// the record as this version writes it, so members it does not know are not covered (nor
/// read).
pub(super) fn opened_json<T: Serialize + serde::de::DeserializeOwned>(
    seal: &Seal,
    name: &str,
    text: &str,
) -> Result<T, Unsealed> {
    #[derive(Deserialize)]
    struct Sealed<T> {
        #[serde(flatten)]
        value: T,
        mac: Option<String>,
    }
    let sealed: Sealed<T> = serde_json::from_str(text).map_err(|e| Unsealed::Unreadable {
        key: name.to_owned(),
        message: e.to_string(),
    })?;
    let json = serde_json::to_string(&sealed.value).expect("a record serialises");
    seal.verify(name, json.as_bytes(), sealed.mac.as_deref())
        .map_err(Unsealed::Refused)?;
    Ok(sealed.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(token: &str) -> Seal {
        Seal::of(&Token::new(token).unwrap())
    }

    #[test]
    fn a_record_verifies_under_its_own_key_name_and_bot_only() {
        let a = seal("MTIz.a.b");
        let mac = a.sign("checkpoint:3", b"{\"seq\":5}");
        assert_eq!(a.verify("checkpoint:3", b"{\"seq\":5}", Some(&mac)), Ok(()));
        assert!(a
            .verify("checkpoint:4", b"{\"seq\":5}", Some(&mac))
            .is_err());
        assert!(a
            .verify("checkpoint:3", b"{\"seq\":6}", Some(&mac))
            .is_err());
        assert!(seal("MTIz.a.c")
            .verify("checkpoint:3", b"{\"seq\":5}", Some(&mac))
            .is_err());
        assert!(matches!(
            a.verify("checkpoint:3", b"{}", None),
            Err(Refused::Missing { .. })
        ));
        assert!(a.verify("checkpoint:3", b"{}", Some("zz")).is_err());
    }

    #[test]
    fn the_seal_never_shows_its_key() {
        assert_eq!(format!("{:?}", seal("MTIz.a.b")), "Seal(..)");
    }
}
