//! A batch: events of one shard and one session, in seq order, and the request body they make.
//!
//! Owns the wire format's body and the batch's `webhook-id`. Each event's `d` is spliced in
//! byte for byte from the gateway message; nothing is re-serialised. When to close a batch is
//! `delivery`'s decision; this module only says whether an event fits.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::EndpointFormat;
use crate::gateway::dispatch::Dispatch;

/// Bytes a batch's envelope adds besides its events, and each event adds besides name and `d`.
const ENVELOPE: usize = 96;
const PER_EVENT: usize = 32;

/// An interaction the router already acknowledged with a deferred response: if its batch is
/// dead-lettered, the router edits that response so the user is not left with a spinner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeferredInteraction {
    pub application_id: String,
    pub token: String,
}

/// Events on their way to one request.
pub struct Batch {
    /// The first event, held inline: unbatched delivery makes a batch per event, and a `Vec`
    /// would be one more allocation for each.
    first: Dispatch,
    /// The events after the first.
    more: Vec<Dispatch>,
    bytes: usize,
    /// Deferred interactions, by position in the batch (0 is `first`, `i` is `more[i - 1]`).
    deferred: Vec<(usize, DeferredInteraction)>,
}

/// Whether `id` can be a batch's `webhook-id`: sent as a header, signed, and written to the
/// spool and dead letters. The router's own ids always are; one read back from a file (a
/// dead letter, a spool record) is checked before it is sent.
pub fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("its webhook_id is empty");
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("its webhook_id holds a character a header cannot carry (a control character, a space or non-ASCII)");
    }
    Ok(())
}

/// A finished batch, ready to send (and re-send: the same id and body on every attempt).
#[derive(Debug, Clone)]
pub struct Request {
    /// `webhook-id`: unique per batch, the same on every retry.
    pub id: String,
    pub body: Bytes,
    pub shard_id: u32,
    /// The session and seq range the batch covers, for durable progress.
    pub session_id: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: usize,
    /// When the batch's first event was read from the gateway.
    pub first_received: Instant,
    /// Interactions in the batch the router deferred.
    pub deferred: Vec<DeferredInteraction>,
    /// The body's format: only endpoints of this format may take it.
    pub format: EndpointFormat,
}

impl Batch {
    pub fn new(first: Dispatch) -> Batch {
        let bytes = ENVELOPE + first.session_id.len() + event_size(&first);
        Batch {
            first,
            more: Vec::new(),
            bytes,
            deferred: Vec::new(),
        }
    }

    /// Marks the last event as an interaction the router deferred; its event object gets
    /// `"deferred":true`.
    pub fn mark_deferred(&mut self, interaction: DeferredInteraction) {
        self.deferred.push((self.more.len(), interaction));
    }

    pub fn len(&self) -> usize {
        1 + self.more.len()
    }

    /// Whether `event` may join: same session, and the body stays within `max_bytes`.
    pub fn accepts(&self, event: &Dispatch, max_bytes: usize) -> bool {
        let first = &self.first.session_id;
        let same_session = Arc::ptr_eq(first, &event.session_id) || *first == event.session_id;
        same_session && self.bytes + event_size(event) <= max_bytes
    }

    pub fn push(&mut self, event: Dispatch) {
        self.bytes += event_size(&event);
        self.more.push(event);
    }

    /// The request body and id. Body:
    /// `{"v":1,"shard_id":N,"shard_count":N,"session_id":"..","events":[{"t":"..","s":N,"d":..}]}`.
    pub fn finish(self) -> Request {
        let first = &self.first;
        let last = self.more.last().unwrap_or(first);
        let mut number = itoa::Buffer::new();
        let mut body = Vec::with_capacity(self.bytes);
        body.extend_from_slice(b"{\"v\":1,\"shard_id\":");
        body.extend_from_slice(number.format(first.shard_id).as_bytes());
        body.extend_from_slice(b",\"shard_count\":");
        body.extend_from_slice(number.format(first.shard_count).as_bytes());
        body.extend_from_slice(b",\"session_id\":");
        serde_json::to_writer(&mut body, &*first.session_id).expect("writing to a Vec cannot fail");
        body.extend_from_slice(b",\"events\":[");
        for (i, event) in std::iter::once(first).chain(&self.more).enumerate() {
            if i > 0 {
                body.push(b',');
            }
            // The name borrowed from Discord's JSON without escapes, so it is safe unquoted.
            body.extend_from_slice(b"{\"t\":\"");
            body.extend_from_slice(event.name_bytes());
            body.extend_from_slice(b"\",\"s\":");
            body.extend_from_slice(number.format(event.seq).as_bytes());
            body.extend_from_slice(b",\"d\":");
            body.extend_from_slice(event.data());
            if self.deferred.iter().any(|(at, _)| *at == i) {
                body.extend_from_slice(b",\"deferred\":true");
            }
            body.push(b'}');
        }
        body.extend_from_slice(b"]}");
        Request {
            id: webhook_id(first.shard_id, &first.session_id, first.seq, last.seq),
            body: Bytes::from(body),
            shard_id: first.shard_id,
            session_id: first.session_id.clone(),
            first_seq: first.seq,
            last_seq: last.seq,
            events: 1 + self.more.len(),
            first_received: first.received_at,
            deferred: self.deferred.into_iter().map(|(_, d)| d).collect(),
            format: EndpointFormat::Shardhook,
        }
    }
}

fn event_size(event: &Dispatch) -> usize {
    PER_EVENT + event.name_bytes().len() + event.data().len()
}

/// `msg_{shard}_{session hash, 16 hex digits}_{first seq}_{last seq}`, written without
/// `format!`: it is built once per request, and the formatting machinery was ~1.5% of an
/// unbatched router's CPU.
pub(super) fn webhook_id(shard_id: u32, session: &str, first: u64, last: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut number = itoa::Buffer::new();
    let mut id = String::with_capacity(64);
    id.push_str("msg_");
    id.push_str(number.format(shard_id));
    id.push('_');
    let hash = session_hash(session);
    for shift in (0..16).rev() {
        id.push(HEX[(hash >> (shift * 4)) as usize & 0xf] as char);
    }
    id.push('_');
    id.push_str(number.format(first));
    id.push('_');
    id.push_str(number.format(last));
    id
}

/// A stable hash of a session id, so ids carry no characters a `webhook-id` must not have.
fn session_hash(session: &str) -> u64 {
    session.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_that_cannot_be_a_header_value_is_refused() {
        assert_eq!(check_id("msg_2a9f"), Ok(()));
        for bad in ["", "msg\nx", "msg x", "msg_é", "msg\r"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_webhook_id_names_shard_session_hash_and_seq_range() {
        let hash = session_hash("abc");
        assert_eq!(
            webhook_id(7, "abc", 12, 345),
            format!("msg_7_{hash:016x}_12_345")
        );
        // Leading zeros of the hash are kept: the id's fields have fixed positions.
        assert_eq!(webhook_id(0, "", 0, 0), "msg_0_cbf29ce484222325_0_0");
        let small = (0..)
            .map(|n| n.to_string())
            .find(|s| session_hash(s) >> 60 == 0)
            .unwrap();
        let id = webhook_id(1, &small, 2, 3);
        assert_eq!(id, format!("msg_1_{:016x}_2_3", session_hash(&small)));
        assert_eq!(&id[6..7], "0");
    }

    fn dispatch(session: &Arc<str>, seq: u64, name: &str, d: &str) -> Dispatch {
        let message = format!(r#"{{"t":"{name}","s":{seq},"op":0,"d":{d}}}"#);
        let t = message.find(name).unwrap();
        let d_at = message.find("\"d\":").unwrap() + 4;
        let len = message.len();
        Dispatch::new(
            [3, 16],
            session.clone(),
            seq,
            Bytes::from(message),
            t..t + name.len(),
            d_at..len - 1,
        )
    }

    #[test]
    fn the_body_splices_d_byte_for_byte() {
        let session: Arc<str> = Arc::from("abc\"def");
        let d = r#"{"content":"h\u00e9llo \"x\"","n":1.50,"e":[ ]}"#;
        let mut batch = Batch::new(dispatch(&session, 41, "MESSAGE_CREATE", d));
        batch.push(dispatch(&session, 42, "TYPING_START", "{}"));
        let request = batch.finish();
        let body = std::str::from_utf8(&request.body).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"v":1,"shard_id":3,"shard_count":16,"session_id":"abc\"def","events":[{{"t":"MESSAGE_CREATE","s":41,"d":{d}}},{{"t":"TYPING_START","s":42,"d":{{}}}}]}}"#
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["events"][1]["s"], 42);
        assert!(!request.id.contains('.'));
        assert!(request.id.starts_with("msg_3_") && request.id.ends_with("_41_42"));
        assert_eq!(request.events, 2);
    }

    #[test]
    fn only_the_marked_events_say_deferred() {
        let session: Arc<str> = Arc::from("s");
        let interaction = DeferredInteraction {
            application_id: "1".into(),
            token: "t".into(),
        };
        let mut batch = Batch::new(dispatch(&session, 1, "MESSAGE_CREATE", "{}"));
        batch.push(dispatch(&session, 2, "INTERACTION_CREATE", "{}"));
        batch.mark_deferred(interaction.clone());
        batch.push(dispatch(&session, 3, "MESSAGE_CREATE", "{}"));
        let request = batch.finish();
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        let flags: Vec<_> = (0..3).map(|i| body["events"][i].get("deferred")).collect();
        assert_eq!(flags, [None, Some(&serde_json::Value::Bool(true)), None]);
        assert_eq!(request.deferred, [interaction]);
    }

    #[test]
    fn a_batch_of_one_event_makes_three_allocations() {
        let session: Arc<str> = Arc::from("abc");
        let event = dispatch(&session, 41, "MESSAGE_CREATE", r#"{"content":"hi"}"#);
        let (request, allocations) = crate::allocations::during(|| Batch::new(event).finish());
        // The body, the webhook-id, and the body's shared handle (every attempt clones it).
        assert_eq!(allocations, 3);
        assert_eq!(
            (request.events, request.first_seq, request.last_seq),
            (1, 41, 41)
        );
    }

    #[test]
    fn another_session_or_too_many_bytes_do_not_fit() {
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let batch = Batch::new(dispatch(&a, 1, "X", "{}"));
        assert!(batch.accepts(&dispatch(&a, 2, "X", "{}"), 1 << 20));
        assert!(!batch.accepts(&dispatch(&b, 2, "X", "{}"), 1 << 20));
        assert!(!batch.accepts(
            &dispatch(&Arc::from("a"), 2, "X", &format!("\"{}\"", "x".repeat(500))),
            300
        ));
    }
}
