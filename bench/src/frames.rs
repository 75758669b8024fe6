//! The load: a realistic mix of dispatches, built once and compressed once as `zlib-stream`
//! frames and once as `zstd-stream` frames, so the source only copies bytes onto sockets.
//!
//! A stream must begin with a zlib header and every later byte may refer back up to 32 KiB into
//! what came before. Output of a *fresh* raw-deflate compressor never refers back past its own
//! start, so any such piece can follow any byte-aligned point of a stream: every connection gets
//! its own HELLO (with the header) and READY, then the shared chunks of events, and between
//! chunks a fresh piece for a heartbeat ACK if one is due. Inside a chunk frames share one
//! compression context, with a sync flush after each message, as Discord's do.
//!
//! zstd is the same idea with frames: a stream may be any sequence of zstd frames, and a frame
//! never refers back past its own start. Each chunk is one frame, flushed (`ZSTD_e_flush`)
//! after every message as Discord does and ended with the chunk's last message; a piece is a
//! whole frame of its own.

use bytes::Bytes;
use flate2::{Compress, Compression as Level, FlushCompress};
use shardhook::config::Compression;
use zstd::stream::raw::{InBuffer, Operation, OutBuffer};

/// Events per chunk: frames in a chunk share a compression context; between chunks the source
/// may interleave an ACK.
const CHUNK: usize = 256;

/// Seq of the first traffic event; READY is seq 1.
pub const FIRST_SEQ: u64 = 2;

/// zstd level of the load and its pieces: the fastest, as zlib's `Compression::fast()` is.
const ZSTD_LEVEL: i32 = 1;

/// The shared, pre-compressed traffic of one shard's session.
pub struct Load {
    /// The traffic as `zlib-stream` frames, each ending with `00 00 ff ff`.
    pub zlib: Encoded,
    /// The same traffic as `zstd-stream` frames.
    pub zstd: Encoded,
    /// Events in all (per shard).
    pub events: usize,
    /// Uncompressed bytes per shard, for the record.
    pub raw_bytes: usize,
    /// Events of each kind, in `KINDS` order.
    pub mix: [usize; 4],
}

/// The load compressed one way.
#[derive(Default)]
pub struct Encoded {
    /// Chunks of frames, each frame one dispatch.
    pub chunks: Vec<Vec<Bytes>>,
    /// Compressed bytes per shard, for the record.
    pub wire_bytes: usize,
}

/// The compression named `zstd-stream`, or else `zlib-stream`.
pub fn compression_named(name: &str) -> Compression {
    Compression::named(name).unwrap_or(Compression::ZlibStream)
}

/// The compression a gateway URL's query asks for with `compress=`.
pub fn compression_of(query: &str) -> Compression {
    query
        .split('&')
        .find_map(|p| p.strip_prefix("compress="))
        .map_or(Compression::ZlibStream, compression_named)
}

pub const KINDS: [&str; 4] = [
    "MESSAGE_CREATE",
    "TYPING_START",
    "PRESENCE_UPDATE",
    "GUILD_CREATE",
];

const WORDS: &[&str] = &[
    "the",
    "raid",
    "tonight",
    "anyone",
    "online",
    "gg",
    "lol",
    "server",
    "bot",
    "ping",
    "when",
    "update",
    "patch",
    "notes",
    "queue",
    "ranked",
    "match",
    "please",
    "thanks",
    "channel",
    "role",
    "voice",
    "stream",
    "music",
    "play",
    "skip",
    "what",
    "is",
    "this",
    "ok",
    "nice",
    "meme",
    "link",
    "https://example.com/watch?v=dQw4w9WgXcQ",
    "<@1100000000000000003>",
    ":smile:",
    "yes",
    "no",
];

fn words(rng: &mut fastrand::Rng, len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.usize(..WORDS.len())]);
    }
    s
}

fn id(rng: &mut fastrand::Rng) -> u64 {
    1_100_000_000_000_000_000 + rng.u64(..100_000_000_000_000_000)
}

const GUILD: u64 = 1_100_000_000_000_000_100;

fn message_create(rng: &mut fastrand::Rng) -> String {
    // Base envelope is ~750 bytes; content and an optional embed bring it to 0.5-2 KB.
    let len = rng.usize(0..900);
    let content = words(rng, len);
    let embeds = if rng.u8(..4) == 0 {
        let len = rng.usize(100..400);
        serde_json::json!([{"type": "rich", "title": words(rng, 40), "description": words(rng, len), "color": 5814783}])
    } else {
        serde_json::json!([])
    };
    serde_json::json!({
        "id": id(rng).to_string(), "type": 0, "channel_id": id(rng).to_string(),
        "guild_id": GUILD.to_string(),
        "author": {"id": id(rng).to_string(), "username": words(rng, 8), "discriminator": "0", "global_name": words(rng, 10), "avatar": "a1b2c3d4e5f60718293a4b5c6d7e8f90", "public_flags": 0},
        "member": {"roles": [id(rng).to_string(), id(rng).to_string()], "joined_at": "2025-03-01T12:00:00.000000+00:00", "deaf": false, "mute": false, "flags": 0, "nick": null, "premium_since": null, "pending": false},
        "content": content, "timestamp": "2026-11-22T00:00:00.000000+00:00", "edited_timestamp": null,
        "tts": false, "mention_everyone": false, "mentions": [], "mention_roles": [], "attachments": [],
        "embeds": embeds, "pinned": false, "flags": 0, "nonce": id(rng).to_string(), "components": [],
    })
    .to_string()
}

fn typing_start(rng: &mut fastrand::Rng) -> String {
    serde_json::json!({
        "user_id": id(rng).to_string(), "timestamp": 1_790_000_000u64 + rng.u64(..100_000),
        "channel_id": id(rng).to_string(), "guild_id": GUILD.to_string(),
        "member": {"user": {"id": id(rng).to_string(), "username": words(rng, 8), "global_name": null, "avatar": null, "discriminator": "0"}, "roles": [], "joined_at": "2025-03-01T12:00:00.000000+00:00", "deaf": false, "mute": false},
    })
    .to_string()
}

fn presence_update(rng: &mut fastrand::Rng) -> String {
    let status = ["online", "idle", "dnd"][rng.usize(..3)];
    serde_json::json!({
        "user": {"id": id(rng).to_string()}, "guild_id": GUILD.to_string(),
        "status": status,
        "activities": [{"name": words(rng, 12), "type": 0, "created_at": 1_790_000_000_000u64 + rng.u64(..1_000_000), "state": words(rng, 30)}],
        "client_status": {"desktop": "online"},
    })
    .to_string()
}

/// A large guild: ~100 channels, ~60 roles, ~250 members and presences (~90 KB).
fn guild_create(rng: &mut fastrand::Rng) -> String {
    let channels: Vec<_> = (0..100)
        .map(|i| serde_json::json!({"id": id(rng).to_string(), "type": i % 3, "name": words(rng, 12), "position": i, "permission_overwrites": [], "topic": words(rng, 40), "nsfw": false, "parent_id": null}))
        .collect();
    let roles: Vec<_> = (0..60)
        .map(|i| serde_json::json!({"id": id(rng).to_string(), "name": words(rng, 10), "color": rng.u32(..0xffffff), "hoist": false, "position": i, "permissions": "1071698660929", "managed": false, "mentionable": true}))
        .collect();
    let members: Vec<_> = (0..250)
        .map(|_| serde_json::json!({"user": {"id": id(rng).to_string(), "username": words(rng, 8), "global_name": words(rng, 10), "avatar": null, "discriminator": "0"}, "roles": [id(rng).to_string()], "joined_at": "2025-03-01T12:00:00.000000+00:00", "deaf": false, "mute": false}))
        .collect();
    let presences: Vec<_> = (0..250)
        .map(|_| serde_json::json!({"user": {"id": id(rng).to_string()}, "status": "online", "activities": [], "client_status": {"mobile": "online"}}))
        .collect();
    serde_json::json!({
        "id": GUILD.to_string(), "name": words(rng, 20), "owner_id": id(rng).to_string(),
        "member_count": 25_000, "large": true, "unavailable": false,
        "channels": channels, "roles": roles, "members": members, "presences": presences,
        "voice_states": [], "threads": [], "emojis": [], "stickers": [],
        "joined_at": "2025-03-01T12:00:00.000000+00:00",
    })
    .to_string()
}

/// A gateway envelope, keys in Discord's order.
pub fn dispatch(name: &str, seq: u64, d: &str) -> String {
    format!(r#"{{"t":"{name}","s":{seq},"op":0,"d":{d}}}"#)
}

/// Compresses `text` with a sync flush into `out`; returns the bytes added.
fn deflate_into(z: &mut Compress, text: &[u8], out: &mut Vec<u8>) {
    let start_in = z.total_in();
    loop {
        out.reserve(text.len() / 2 + 128);
        let done = (z.total_in() - start_in) as usize;
        z.compress_vec(&text[done..], out, FlushCompress::Sync)
            .expect("compressing into a Vec does not fail");
        if (z.total_in() - start_in) as usize == text.len() && out.ends_with(&[0, 0, 0xff, 0xff]) {
            return;
        }
    }
}

/// Compresses `text` into `out` and flushes (`ZSTD_e_flush`), or ends the frame (`end`).
fn zstd_into(
    z: &mut zstd::stream::raw::Encoder<'static>,
    text: &[u8],
    out: &mut Vec<u8>,
    end: bool,
) {
    let mut src = InBuffer::around(text);
    loop {
        out.reserve(text.len() / 2 + 128);
        let pos = out.len();
        let mut dst = OutBuffer::around_pos(out, pos);
        let left = if src.pos() < text.len() {
            z.run(&mut src, &mut dst)
                .expect("compressing into a Vec does not fail");
            continue;
        } else if end {
            z.finish(&mut dst, true)
        } else {
            z.flush(&mut dst)
        };
        if left.expect("compressing into a Vec does not fail") == 0 {
            return;
        }
    }
}

fn zstd_encoder() -> zstd::stream::raw::Encoder<'static> {
    zstd::stream::raw::Encoder::new(ZSTD_LEVEL).expect("a zstd context")
}

/// One message as a self-contained piece. zlib: with the zlib header (`first`) or raw deflate;
/// zstd: a whole frame.
pub fn piece(compression: Compression, text: &str, first: bool) -> Bytes {
    let mut out = Vec::new();
    match compression {
        Compression::ZlibStream => {
            let mut z = Compress::new(Level::fast(), first);
            deflate_into(&mut z, text.as_bytes(), &mut out);
        }
        Compression::ZstdStream => zstd_into(&mut zstd_encoder(), text.as_bytes(), &mut out, true),
        Compression::None => panic!("the blast benchmark measures compressed gateways"),
    }
    Bytes::from(out)
}

impl Load {
    /// The load as `compression` frames.
    pub fn encoded(&self, compression: Compression) -> &Encoded {
        match compression {
            Compression::ZlibStream => &self.zlib,
            Compression::ZstdStream => &self.zstd,
            Compression::None => panic!("the blast benchmark measures compressed gateways"),
        }
    }

    /// `events` dispatches per shard with seqs from `FIRST_SEQ`, from a fixed seed.
    pub fn build(events: usize, seed: u64) -> Load {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (mut zlib, mut zstd) = (Encoded::default(), Encoded::default());
        let (mut raw_bytes, mut mix) = (0, [0usize; 4]);
        let mut guild_create_cache: Option<String> = None;
        for start in (0..events).step_by(CHUNK) {
            let mut z = Compress::new(Level::fast(), false);
            let mut zs = zstd_encoder();
            let mut frames = Vec::with_capacity(CHUNK);
            let mut zstd_frames = Vec::with_capacity(CHUNK);
            let end = (start + CHUNK).min(events);
            for i in start..end {
                // 85% messages, 8% typing, 6.8% presences, 0.2% (1 in 500) large guilds.
                let kind = match (rng.u32(..1000), i % 500 == 250) {
                    (_, true) => 3,
                    (0..=849, _) => 0,
                    (850..=929, _) => 1,
                    _ => 2,
                };
                let d = match kind {
                    0 => message_create(&mut rng),
                    1 => typing_start(&mut rng),
                    2 => presence_update(&mut rng),
                    _ => guild_create_cache
                        .get_or_insert_with(|| guild_create(&mut rng))
                        .clone(),
                };
                mix[kind] += 1;
                let text = dispatch(KINDS[kind], FIRST_SEQ + i as u64, &d);
                let mut out = Vec::new();
                deflate_into(&mut z, text.as_bytes(), &mut out);
                raw_bytes += text.len();
                zlib.wire_bytes += out.len();
                frames.push(Bytes::from(out));
                let mut out = Vec::new();
                zstd_into(&mut zs, text.as_bytes(), &mut out, i + 1 == end);
                zstd.wire_bytes += out.len();
                zstd_frames.push(Bytes::from(out));
            }
            zlib.chunks.push(frames);
            zstd.chunks.push(zstd_frames);
        }
        Load {
            zlib,
            zstd,
            events,
            raw_bytes,
            mix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Decompress, FlushDecompress};

    fn inflate(d: &mut Decompress, frame: &[u8]) -> String {
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(frame, &mut out, FlushDecompress::Sync)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    /// A connection's HELLO and READY pieces, then every chunk with an ACK piece after the
    /// first, decode through one context (`decode`) into the load's events in seq order.
    fn pieces_and_chunks_make_one_valid_stream(
        t: Compression,
        mut decode: impl FnMut(&[u8]) -> String,
    ) {
        let load = Load::build(600, 1);
        assert!(decode(&piece(t, r#"{"op":10}"#, true)).contains("op"));
        assert_eq!(decode(&piece(t, "READY", false)), "READY");
        let mut seq = FIRST_SEQ;
        for (c, chunk) in load.encoded(t).chunks.iter().enumerate() {
            if c == 1 {
                assert_eq!(decode(&piece(t, r#"{"op":11}"#, false)), r#"{"op":11}"#);
            }
            for frame in chunk {
                let text = decode(frame);
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["s"], seq);
                seq += 1;
            }
        }
        assert_eq!(seq, FIRST_SEQ + 600);
        assert!(load.encoded(t).wire_bytes < load.raw_bytes);
    }

    #[test]
    fn zlib_pieces_and_chunks_make_one_valid_stream() {
        let mut d = Decompress::new(true);
        pieces_and_chunks_make_one_valid_stream(Compression::ZlibStream, |f| inflate(&mut d, f));
    }

    /// Decompresses one WebSocket message of a zstd stream, as a reader does.
    fn unzstd(d: &mut zstd::stream::raw::Decoder<'static>, frame: &[u8]) -> String {
        let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut src = InBuffer::around(frame);
        let mut dst = OutBuffer::around(&mut out);
        d.run(&mut src, &mut dst).unwrap();
        assert_eq!(src.pos(), frame.len());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn compressions_are_read_from_names_and_queries() {
        for t in [Compression::ZlibStream, Compression::ZstdStream] {
            assert_eq!(compression_named(&t.to_string()), t);
            assert_eq!(
                compression_of(&format!("v=10&encoding=json&compress={t}")),
                t
            );
        }
        assert_eq!(compression_of("v=10"), Compression::ZlibStream);
    }

    #[test]
    fn zstd_pieces_and_chunks_make_one_valid_stream() {
        let mut d = zstd::stream::raw::Decoder::new().unwrap();
        pieces_and_chunks_make_one_valid_stream(Compression::ZstdStream, |f| unzstd(&mut d, f));
    }
}
