//! Gateway payloads: reading what Discord sends without a JSON tree, writing what we send.
//!
//! Owns the opcodes and the (de)serialisation of the few payload shapes the shard needs. It
//! never parses a dispatch's `d`: that stays a borrowed `RawValue` so delivery can forward it
//! byte for byte. It knows nothing about connections or state.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::secret::Token;

/// Gateway opcodes (Discord API v10).
pub mod op {
    pub const DISPATCH: u8 = 0;
    pub const HEARTBEAT: u8 = 1;
    pub const IDENTIFY: u8 = 2;
    pub const PRESENCE_UPDATE: u8 = 3;
    pub const VOICE_STATE_UPDATE: u8 = 4;
    pub const RESUME: u8 = 6;
    pub const RECONNECT: u8 = 7;
    pub const REQUEST_GUILD_MEMBERS: u8 = 8;
    pub const INVALID_SESSION: u8 = 9;
    pub const HELLO: u8 = 10;
    pub const HEARTBEAT_ACK: u8 = 11;
    pub const REQUEST_SOUNDBOARD_SOUNDS: u8 = 31;
}

/// One payload from the gateway, borrowing from the inflated message.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    pub op: u8,
    #[serde(default)]
    pub s: Option<u64>,
    #[serde(default, borrow)]
    pub t: Option<&'a str>,
    #[serde(default, borrow)]
    pub d: Option<&'a RawValue>,
}

impl<'a> Incoming<'a> {
    /// Parses a gateway message. Only the envelope is read; `d` is left as raw bytes.
    pub fn parse(message: &'a [u8]) -> Result<Incoming<'a>, serde_json::Error> {
        serde_json::from_slice(message)
    }

    /// Reads `d` as a small typed struct (HELLO, READY): for control payloads, never dispatches
    /// in general.
    pub fn data<T: Deserialize<'a>>(&self) -> Result<T, serde_json::Error> {
        let raw = self.d.map(RawValue::get).unwrap_or("null");
        serde_json::from_str(raw)
    }
}

/// `d` of HELLO.
#[derive(Debug, Deserialize)]
pub struct Hello {
    pub heartbeat_interval: u64,
}

/// The fields of READY the shard keeps.
#[derive(Debug, Deserialize)]
pub struct Ready<'a> {
    #[serde(borrow)]
    pub session_id: Cow<'a, str>,
    #[serde(borrow)]
    pub resume_gateway_url: Cow<'a, str>,
}

#[derive(Serialize)]
struct Outgoing<D> {
    op: u8,
    d: D,
}

#[derive(Serialize)]
struct IdentifyData<'a> {
    token: &'a str,
    intents: u64,
    properties: Properties,
    shard: [u32; 2],
    large_threshold: u32,
}

#[derive(Serialize)]
struct Properties {
    os: &'static str,
    browser: &'static str,
    device: &'static str,
}

#[derive(Serialize)]
struct ResumeData<'a> {
    token: &'a str,
    session_id: &'a str,
    seq: u64,
}

/// The IDENTIFY payload. Contains the token: send it, never log it.
pub fn identify(token: &Token, intents: u64, shard: [u32; 2]) -> String {
    let d = IdentifyData {
        token: token.expose(),
        intents,
        properties: Properties {
            os: std::env::consts::OS,
            browser: "shardhook",
            device: "shardhook",
        },
        shard,
        large_threshold: 250,
    };
    to_json(op::IDENTIFY, d)
}

/// The RESUME payload. Contains the token: send it, never log it.
pub fn resume(token: &Token, session_id: &str, seq: u64) -> String {
    let d = ResumeData {
        token: token.expose(),
        session_id,
        seq,
    };
    to_json(op::RESUME, d)
}

/// A HEARTBEAT carrying the last sequence number received.
pub fn heartbeat(seq: Option<u64>) -> String {
    to_json(op::HEARTBEAT, seq)
}

fn to_json<D: Serialize>(op: u8, d: D) -> String {
    serde_json::to_string(&Outgoing { op, d }).expect("gateway payloads serialise infallibly")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatch_envelope_is_read_and_d_left_raw() {
        let msg =
            br#"{"t":"MESSAGE_CREATE","s":42,"op":0,"d":{"content":"hi \"there\"","n":1.50}}"#;
        let p = Incoming::parse(msg).unwrap();
        assert_eq!((p.op, p.s, p.t), (0, Some(42), Some("MESSAGE_CREATE")));
        assert_eq!(p.d.unwrap().get(), r#"{"content":"hi \"there\"","n":1.50}"#);
    }

    #[test]
    fn control_payloads_parse_with_null_or_missing_d() {
        let p = Incoming::parse(br#"{"op":11}"#).unwrap();
        assert_eq!((p.op, p.s, p.t), (11, None, None));
        let p = Incoming::parse(br#"{"op":9,"d":false,"s":null,"t":null}"#).unwrap();
        assert!(!p.data::<bool>().unwrap());
        let p = Incoming::parse(br#"{"op":10,"d":{"heartbeat_interval":41250}}"#).unwrap();
        assert_eq!(p.data::<Hello>().unwrap().heartbeat_interval, 41250);
    }

    #[test]
    fn invalid_json_is_an_error() {
        assert!(Incoming::parse(b"{\"op\":0,").is_err());
        assert!(Incoming::parse(b"[]").is_err());
    }

    #[test]
    fn outgoing_payloads_have_discords_shape() {
        let token = Token::new("tok\"en").unwrap();
        let v: serde_json::Value = serde_json::from_str(&identify(&token, 513, [1, 4])).unwrap();
        assert_eq!(v["op"], 2);
        assert_eq!(v["d"]["token"], "tok\"en");
        assert_eq!(v["d"]["shard"], serde_json::json!([1, 4]));
        assert_eq!(heartbeat(None), r#"{"op":1,"d":null}"#);
        assert_eq!(heartbeat(Some(7)), r#"{"op":1,"d":7}"#);
        let v: serde_json::Value = serde_json::from_str(&resume(&token, "abc", 9)).unwrap();
        assert_eq!(
            (v["op"].as_u64(), v["d"]["seq"].as_u64()),
            (Some(6), Some(9))
        );
    }
}
