//! The hand-off from shards to delivery: one dispatch event, as Discord sent it.
//!
//! Owns the `Dispatch` type that crosses the bounded channel between a shard and whatever
//! consumes events. The shard fills it without copying the inflated message; consumers read the
//! event name and `d` as byte slices of that message. Nothing here sends or parses anything.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

/// A dispatch (op 0) event received on a shard.
#[derive(Debug, Clone)]
pub struct Dispatch {
    /// The shard that received it.
    pub shard_id: u32,
    /// The total shard count the shard identified with.
    pub shard_count: u32,
    /// The gateway session it belongs to; `(shard_id, session_id, seq)` identifies the event.
    pub session_id: Arc<str>,
    /// Discord's sequence number, increasing within a session.
    pub seq: u64,
    /// When the shard read it, for delivery latency.
    pub received_at: tokio::time::Instant,
    /// The whole inflated gateway message; `name` and `data` index into it. The ranges are
    /// `u32`: every queued event is a slot in its shard's channel, whose first block of 32
    /// slots each idle shard holds, so the struct is kept small.
    payload: Bytes,
    name: Range<u32>,
    data: Range<u32>,
}

impl Dispatch {
    /// Builds a dispatch from a message and the byte ranges of its `t` and `d` within it.
    ///
    /// Panics if a range lies outside the message: both come from parsing that same message.
    pub(crate) fn new(
        shard: [u32; 2],
        session_id: Arc<str>,
        seq: u64,
        payload: Bytes,
        name: Range<usize>,
        data: Range<usize>,
    ) -> Dispatch {
        assert!(name.end <= payload.len() && data.end <= payload.len());
        let narrow = |r: Range<usize>| {
            let narrow = |i: usize| u32::try_from(i).expect("a gateway message under 4 GiB");
            narrow(r.start)..narrow(r.end)
        };
        Dispatch {
            shard_id: shard[0],
            shard_count: shard[1],
            session_id,
            seq,
            received_at: tokio::time::Instant::now(),
            payload,
            name: narrow(name),
            data: narrow(data),
        }
    }

    /// The event name, such as `MESSAGE_CREATE`.
    pub fn name(&self) -> &str {
        std::str::from_utf8(self.name_bytes()).unwrap_or_default()
    }

    /// The event name's bytes, without `name()`'s UTF-8 check: for the per-event work of
    /// delivery, which only compares or copies them.
    pub fn name_bytes(&self) -> &[u8] {
        self.slice(&self.name)
    }

    /// Whether the event is called `name`.
    pub fn is_named(&self, name: &str) -> bool {
        self.name_bytes() == name.as_bytes()
    }

    /// The event's `d`, byte for byte as Discord sent it.
    pub fn data(&self) -> &[u8] {
        self.slice(&self.data)
    }

    fn slice(&self, range: &Range<u32>) -> &[u8] {
        &self.payload[range.start as usize..range.end as usize]
    }
}

/// The byte range a borrowed sub-slice occupies within its parent buffer.
pub(crate) fn range_within(parent: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - parent.as_ptr() as usize;
    start..start + part.len()
}
