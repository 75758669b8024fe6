//! Entry points for the coverage-guided fuzz targets under `fuzz/` and for the test that replays
//! their corpus (`tests/fuzz_corpus.rs`): each takes arbitrary bytes and drives one parser of
//! input from outside the process through its real code. A panic is a bug; so is a differential
//! check that fails (what was compressed does not inflate back to itself).
//!
//! Owns only turning bytes into calls; the parsers are their modules'. Not part of the API an
//! embedding program uses.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::Compression;
use crate::gateway::inflater::{Inflated, Inflater};
use crate::gateway::payload::{Hello, Incoming, Ready};

/// The gateway's envelope reader, and the typed `d`s the shard reads from control payloads.
pub fn gateway_payload(data: &[u8]) {
    if let Ok(incoming) = Incoming::parse(data) {
        let _ = incoming.data::<Hello>();
        let _ = incoming.data::<Ready>();
        let _ = incoming.data::<bool>();
        if let (Some(name), Some(d)) = (incoming.t, incoming.d) {
            // The ranges a dispatch is cut at must lie within the message.
            let name = crate::gateway::dispatch::range_within(data, name.as_bytes());
            let d = crate::gateway::dispatch::range_within(data, d.get().as_bytes());
            assert!(name.end <= data.len() && d.end <= data.len());
        }
    }
}

/// Splits `data` into pieces at points it chooses itself: each piece's length is the next
/// byte (0 means the rest).
fn pieces(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some((&len, rest)) = data.split_first() {
        let len = if len == 0 {
            rest.len()
        } else {
            (len as usize).min(rest.len())
        };
        out.push(&rest[..len]);
        data = &rest[len..];
    }
    out
}

/// The inflater, two ways. Its first byte picks the compression and the mode: arbitrary frames
/// (it must fail cleanly, never panic or run away), or messages that are compressed as Discord
/// does, then cut into frames at arbitrary points: each must inflate back to itself.
pub fn inflate(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let compression = match mode & 1 {
        0 => Compression::ZlibStream,
        _ => Compression::ZstdStream,
    };
    let limit = 1 << 16;
    let mut inflater =
        Inflater::new(compression, limit).expect("a compressed mode has an inflater");
    if mode & 2 == 0 {
        for frame in pieces(rest) {
            if inflater.push(frame).is_err() {
                return;
            }
        }
        return;
    }
    // Messages are the pieces of `rest`; the cut points are where they came from, shifted.
    let messages = pieces(rest);
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    let mut zlib = flate2::Compress::new(flate2::Compression::fast(), true);
    let mut zstd = zstd::stream::raw::Encoder::new(1).expect("a zstd context");
    for message in &messages {
        match compression {
            Compression::ZlibStream => deflate_flushed(&mut zlib, message, &mut stream),
            Compression::ZstdStream => zstd_flushed(&mut zstd, message, &mut stream),
            Compression::None => unreachable!("only compressed modes are fuzzed"),
        }
        ends.push(stream.len());
    }
    // Frames: each message's bytes, a zlib one also split in two where the seed says (Discord
    // sends zstd-stream messages whole).
    let mut start = 0;
    let mut got = Vec::new();
    for (i, end) in ends.iter().enumerate() {
        let frame = &stream[start..*end];
        let cut = match compression {
            Compression::ZlibStream => (mode as usize >> 2) % (frame.len() + 1),
            Compression::ZstdStream | Compression::None => frame.len(),
        };
        for part in [&frame[..cut], &frame[cut..]] {
            if part.is_empty() && cut != 0 {
                continue;
            }
            match inflater.push(part) {
                Ok(Inflated::Message(bytes)) => got.push(Some(bytes.to_vec())),
                Ok(Inflated::Oversize { .. }) => got.push(None),
                Ok(Inflated::Incomplete) => {}
                Err(e) => panic!("message {i} of a valid stream did not inflate: {e}"),
            }
        }
        start = *end;
    }
    let wanted: Vec<Option<Vec<u8>>> = messages
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| (m.len() <= limit).then(|| m.to_vec()))
        .collect();
    assert_eq!(
        got, wanted,
        "what was compressed did not inflate back to itself"
    );
}

/// One message compressed with a sync flush, as Discord's zlib-stream frames end.
fn deflate_flushed(z: &mut flate2::Compress, input: &[u8], out: &mut Vec<u8>) {
    if input.is_empty() {
        return;
    }
    let start = z.total_in();
    loop {
        out.reserve(input.len() + 64);
        let done = (z.total_in() - start) as usize;
        z.compress_vec(&input[done..], out, flate2::FlushCompress::Sync)
            .expect("compressing into a growing Vec does not fail");
        if (z.total_in() - start) as usize == input.len() && out.ends_with(&[0, 0, 0xff, 0xff]) {
            return;
        }
    }
}

/// One message compressed and flushed without ending the frame, as Discord's zstd-stream does.
fn zstd_flushed(z: &mut zstd::stream::raw::Encoder<'static>, input: &[u8], out: &mut Vec<u8>) {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    if input.is_empty() {
        return;
    }
    let mut src = InBuffer::around(input);
    loop {
        out.reserve(input.len() / 2 + 128);
        let pos = out.len();
        let mut dst = OutBuffer::around_pos(out, pos);
        if src.pos() < input.len() {
            z.run(&mut src, &mut dst)
                .expect("compressing does not fail");
        } else if z.flush(&mut dst).expect("flushing does not fail") == 0 {
            return;
        }
    }
}

/// The config: TOML up to the first NUL, then environment lines `NAME=VALUE`.
pub fn config(data: &[u8]) {
    let (toml, env) = match data.iter().position(|b| *b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(toml) = std::str::from_utf8(toml) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Err(e) = crate::config::Config::from_toml(toml, std::path::Path::new("fuzz.toml"), env) {
        // Errors are shown to users: they must render.
        let _ = e.to_string();
    }
}

/// A directory of this process's own for files the targets write.
fn scratch() -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 4;
    std::env::temp_dir().join(format!("shardhook-fuzz-{}-{n}", std::process::id()))
}

/// A spool file of these bytes, opened (torn records cut) and read to its end.
pub fn spool(data: &[u8]) {
    use crate::state::spool::{ShardSpool, SpoolUsage};
    let dir = scratch();
    let spool_dir = dir.join("spool");
    let _ = std::fs::create_dir_all(&spool_dir);
    let written = std::fs::File::create(spool_dir.join("shard-0.log"))
        .and_then(|mut file| file.write_all(data));
    if written.is_err() {
        return;
    }
    let usage = std::sync::Arc::new(SpoolUsage {
        used: AtomicU64::new(0),
        limit: 1 << 30,
    });
    let mut spool = ShardSpool::open(&dir, 0, usage);
    let mut records = 0;
    while let Some((_, size)) = spool.peek() {
        assert!(size > 0, "a record of no bytes would never end the spool");
        spool.pop(size);
        records += 1;
        assert!(records <= data.len(), "more records than bytes");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A checkpoint file's contents.
pub fn checkpoint(data: &[u8]) {
    let _ = crate::state::checkpoint::parse(data);
}

/// A control command: the signature headers, then the body. The input is `id`, `timestamp`
/// and `signature` lines, then the body after an empty line.
pub fn control_command(data: &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.lines();
    let (id, timestamp, signature) = (lines.next(), lines.next(), lines.next());
    let key = crate::secret::SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .expect("the test key parses");
    let signer = crate::delivery::signer::Signer::new(key, vec![]);
    let _ = signer.verify(id, timestamp, signature, body, 1_614_265_330);
    if let Ok(command) = crate::control::parse_command(body, 16) {
        assert!(command.payload.len() <= crate::control::MAX_COMMAND_BYTES);
        assert!(serde_json::from_str::<serde::de::IgnoredAny>(&command.payload).is_ok());
    }
}
