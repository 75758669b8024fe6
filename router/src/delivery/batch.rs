//! A batch: events of one shard and one session, in seq order; and the request body that one
//! or many shards' batches make together (wire format v2).
//!
//! Owns the wire format's body and a request's `webhook-id`. Each event's `d` is spliced in
//! byte for byte from the gateway message; nothing is re-serialised, and a batch keeps its
//! events (not a copy) until a request is written. When to close a batch is `worker`'s
//! decision and which batches share a request `outbox`'s; this module only says whether an
//! event fits.

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::EndpointFormat;
use crate::gateway::dispatch::Dispatch;

/// Bytes a request's envelope adds besides its batches, each batch besides its events, and
/// each event besides name and `d`.
const ENVELOPE: usize = 48;
const PER_BATCH: usize = 64;
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

/// A finished request, ready to send (and re-send: the same id and body on every attempt).
#[derive(Debug, Clone)]
pub struct Request {
    /// `webhook-id`: unique per request, the same on every retry.
    pub id: String,
    pub body: Bytes,
    /// The shard of its (first) batch: where the ring sends it, and whose dead letter it is.
    pub shard_id: u32,
    /// The session and seq range its (first) batch covers, for durable progress and the
    /// spool, which take requests of one batch.
    pub session_id: Arc<str>,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Events in all its batches.
    pub events: usize,
    /// When its earliest event was read from the gateway.
    pub first_received: Instant,
    /// Interactions in the batch the router deferred.
    pub deferred: Vec<DeferredInteraction>,
    /// The body's format: only endpoints of this format may take it.
    pub format: EndpointFormat,
    /// Attempts made so far: a request its endpoints' open circuits gave back (to the spool)
    /// keeps counting when it is tried again, for `max_attempts` and Carbon's attempt header.
    pub attempts: u32,
}

impl Batch {
    pub fn new(first: Dispatch) -> Batch {
        let bytes = PER_BATCH + first.session_id.len() + event_size(&first);
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

    /// What the batch adds to a request body, about.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn shard_id(&self) -> u32 {
        self.first.shard_id
    }

    pub fn session_id(&self) -> &Arc<str> {
        &self.first.session_id
    }

    pub fn first_seq(&self) -> u64 {
        self.first.seq
    }

    pub fn last_seq(&self) -> u64 {
        self.more.last().unwrap_or(&self.first).seq
    }

    /// When its first event was read from the gateway.
    pub fn first_received(&self) -> Instant {
        self.first.received_at
    }

    /// Whether `event` may join: same session, and the batch stays within `max_bytes`.
    pub fn accepts(&self, event: &Dispatch, max_bytes: usize) -> bool {
        let first = &self.first.session_id;
        let same_session = Arc::ptr_eq(first, &event.session_id) || *first == event.session_id;
        same_session && ENVELOPE + self.bytes + event_size(event) <= max_bytes
    }

    pub fn push(&mut self, event: Dispatch) {
        self.bytes += event_size(&event);
        self.more.push(event);
    }

    /// This batch alone in a request (an interaction's lane, the spool).
    pub fn finish(self) -> Request {
        request(std::slice::from_ref(&self))
    }

    /// Writes the batch's object:
    /// `{"shard_id":N,"session_id":"..","events":[{"t":"..","s":N,"d":..}]}`.
    fn write(&self, body: &mut Vec<u8>) {
        let first = &self.first;
        let mut number = itoa::Buffer::new();
        body.extend_from_slice(b"{\"shard_id\":");
        body.extend_from_slice(number.format(first.shard_id).as_bytes());
        body.extend_from_slice(b",\"session_id\":");
        serde_json::to_writer(&mut *body, &*first.session_id)
            .expect("writing to a Vec cannot fail");
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
    }
}

/// One request carrying `batches` (at least one), in this order. Body:
/// `{"v":2,"shard_count":N,"batches":[<batch>,...]}`. Its id is the batch's own for one batch
/// (`msg_{shard}_{session hash}_{first seq}_{last seq}`), and for several
/// `msg_{batches}b_{hash of their ids, 16 hex digits}`: the same for the same batches, so it
/// stays the same on every attempt.
pub fn request(batches: &[Batch]) -> Request {
    let first = batches
        .first()
        .expect("a request carries at least one batch");
    let bytes = ENVELOPE + batches.iter().map(|b| b.bytes).sum::<usize>();
    let mut body = Vec::with_capacity(bytes);
    let mut number = itoa::Buffer::new();
    body.extend_from_slice(b"{\"v\":2,\"shard_count\":");
    body.extend_from_slice(number.format(first.first.shard_count).as_bytes());
    body.extend_from_slice(b",\"batches\":[");
    let mut events = 0;
    let mut first_received = first.first_received();
    let mut deferred = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        batch.write(&mut body);
        events += batch.len();
        first_received = first_received.min(batch.first_received());
        deferred.extend(batch.deferred.iter().map(|(_, d)| d.clone()));
    }
    body.extend_from_slice(b"]}");
    let id = match batches {
        [one] => webhook_id(
            one.shard_id(),
            one.session_id(),
            one.first_seq(),
            one.last_seq(),
        ),
        many => combined_id(many),
    };
    Request {
        id,
        body: Bytes::from(body),
        shard_id: first.shard_id(),
        session_id: first.session_id().clone(),
        first_seq: first.first_seq(),
        last_seq: first.last_seq(),
        events,
        first_received,
        deferred,
        format: EndpointFormat::Shardhook,
        attempts: 0,
    }
}

/// `msg_{n}b_{16 hex digits}`: a hash over each batch's shard, session and seq range.
fn combined_id(batches: &[Batch]) -> String {
    let hash = batches.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        [
            b.shard_id() as u64,
            session_hash(b.session_id()),
            b.first_seq(),
            b.last_seq(),
        ]
        .iter()
        .flat_map(|n| n.to_le_bytes())
        .fold(h, |h, byte| {
            (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
    });
    let mut number = itoa::Buffer::new();
    let mut id = String::with_capacity(32);
    id.push_str("msg_");
    id.push_str(number.format(batches.len()));
    id.push_str("b_");
    push_hex(&mut id, hash);
    id
}

fn push_hex(id: &mut String, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        id.push(HEX[(value >> (shift * 4)) as usize & 0xf] as char);
    }
}

fn event_size(event: &Dispatch) -> usize {
    PER_EVENT + event.name_bytes().len() + event.data().len()
}

/// `msg_{shard}_{session hash, 16 hex digits}_{first seq}_{last seq}`, written without
/// `format!`: it is built once per request, and the formatting machinery was ~1.5% of an
/// unbatched router's CPU.
pub(super) fn webhook_id(shard_id: u32, session: &str, first: u64, last: u64) -> String {
    let mut number = itoa::Buffer::new();
    let mut id = String::with_capacity(64);
    id.push_str("msg_");
    id.push_str(number.format(shard_id));
    id.push('_');
    push_hex(&mut id, session_hash(session));
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
                r#"{{"v":2,"shard_count":16,"batches":[{{"shard_id":3,"session_id":"abc\"def","events":[{{"t":"MESSAGE_CREATE","s":41,"d":{d}}},{{"t":"TYPING_START","s":42,"d":{{}}}}]}}]}}"#
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["batches"][0]["events"][1]["s"], 42);
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
        let flags: Vec<_> = (0..3)
            .map(|i| body["batches"][0]["events"][i].get("deferred"))
            .collect();
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
    fn many_shards_batches_share_one_request_in_order() {
        let a: Arc<str> = Arc::from("a");
        let b: Arc<str> = Arc::from("b");
        let mut first = Batch::new(dispatch(&a, 7, "MESSAGE_CREATE", r#"{"n":1}"#));
        first.push(dispatch(&a, 8, "MESSAGE_CREATE", r#"{"n":2}"#));
        let second = Batch::new(with_shard(dispatch(&b, 3, "TYPING_START", "[ 1 ]"), 9));
        let batches = [first, second];
        let request = request(&batches);
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["v"], 2);
        assert_eq!(body["shard_count"], 16);
        let shards: Vec<_> = body["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["shard_id"].clone(), b["session_id"].clone()))
            .collect();
        assert_eq!(shards, [(3.into(), "a".into()), (9.into(), "b".into())]);
        assert_eq!(body["batches"][0]["events"][1]["s"], 8);
        // `d` byte for byte, whitespace and all.
        assert!(std::str::from_utf8(&request.body)
            .unwrap()
            .contains(r#""s":3,"d":[ 1 ]}"#));
        assert_eq!(request.events, 3);
        // The id names the batches, not one shard, and is the same for the same batches.
        assert!(request.id.starts_with("msg_2b_"), "{}", request.id);
        assert_eq!(super::request(&batches).id, request.id);
        assert_ne!(super::request(&batches[..1]).id, request.id);
        assert_eq!(check_id(&request.id), Ok(()));
    }

    fn with_shard(mut event: Dispatch, shard_id: u32) -> Dispatch {
        event.shard_id = shard_id;
        event
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
