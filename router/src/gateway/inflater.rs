//! Transport decompression: Discord's `zlib-stream` and `zstd-stream`.
//!
//! Owns one decompression context per connection and the rule for where a gateway message
//! ends. With zlib a message is complete when the compressed stream's last four bytes are
//! `00 00 ff ff`, and it may span several WebSocket messages (even the suffix may be split).
//! With zstd every WebSocket message is one whole gateway message: Discord flushes the stream
//! after each (without ending the zstd frame) and never splits one, so a message is complete
//! once its bytes are consumed and the decoder has nothing more to give. Input is decompressed
//! as it arrives, so compressed bytes are never buffered, and output beyond
//! `max_message_size` is decompressed into a scratch buffer and discarded (the context must
//! still see every byte). It knows nothing about JSON.

use std::mem::MaybeUninit;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use crate::config::Compression;

/// The zlib `SYNC_FLUSH` marker that ends every `zlib-stream` gateway message.
pub const SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Capacity the connection's own buffer starts with, for a message that did not fit a chunk.
const INITIAL_CAPACITY: usize = 4 << 10;

/// Size of the chunks messages are inflated into, one after another (see [`Inflater::push`]).
const CHUNK_CAPACITY: usize = 16 << 10;
/// A message starts a new chunk when less than this is left of the current one; most
/// dispatches are smaller, so they are inflated in place.
const CHUNK_ROOM: usize = 4 << 10;

/// Size of the buffer an oversize message's remainder is decompressed into and dropped.
const SCRATCH_CAPACITY: usize = 64 << 10;

thread_local! {
    /// What is left of this thread's current chunk.
    static CHUNK: std::cell::Cell<Option<BytesMut>> = const { std::cell::Cell::new(None) };
}

/// Largest zstd window accepted, as a power of two: 8 MiB. The decoder keeps a window-sized
/// history per connection, sized by the frame header the sender chose, so this bounds the
/// memory one connection can demand. Discord's docs name no window size; RFC 8878 asks
/// decoders to support up to 8 MiB and encoders to stay within it, and every standard zstd
/// level (1-19) does. libzstd's own default ceiling, 128 MiB, would let one header cost that
/// much per shard. A stream that needs more fails with an error naming the limit.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;
// `InflateError::ZstdWindow` names the limit in words.
const _: () = assert!(1 << ZSTD_WINDOW_LOG_MAX == 8 << 20);

/// What a WebSocket message amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflated {
    /// Nothing to hand on: more WebSocket messages are needed to finish this gateway message,
    /// or this one carried no bytes of one.
    Incomplete,
    /// A whole gateway message.
    Message(Bytes),
    /// A whole gateway message larger than the limit, dropped; `size` is its inflated size.
    Oversize { size: usize },
}

/// The compressed stream is corrupt; the connection must be replaced.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    #[error("gateway frame does not inflate: {0}")]
    Corrupt(#[from] flate2::DecompressError),
    #[error("gateway frame does not inflate (zstd-stream): {0}")]
    Zstd(std::io::Error),
    #[error("gateway frame does not inflate (zstd-stream): window over the 8 MiB limit")]
    ZstdWindow,
    #[error("gateway frame does not inflate: {0} made no progress")]
    Stalled(Compression),
    /// zlib-stream never ends while the connection lasts; bytes after its end are not
    /// Discord's.
    #[error(
        "gateway frame does not inflate: the zlib stream ended, and {trailing} more bytes came"
    )]
    Ended { trailing: usize },
}

/// One connection's decompression context.
enum Codec {
    Zlib(Decompress),
    Zstd(Decoder<'static>),
}

/// What one decompression call did.
struct Step {
    consumed: usize,
    produced: usize,
    /// The compressed stream itself ended (zlib only; zstd-stream starts a new frame if more
    /// input follows).
    ended: bool,
}

impl Codec {
    /// The context for `compression`; none for an uncompressed connection.
    fn new(compression: Compression) -> Option<Codec> {
        Some(match compression {
            Compression::None => return None,
            Compression::ZlibStream => Codec::Zlib(Decompress::new(true)),
            Compression::ZstdStream => {
                // Creating a context and setting a constant, valid parameter fail only when
                // allocation does, which aborts anyway.
                let mut decoder = Decoder::new().expect("a zstd decompression context");
                decoder
                    .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .expect("a valid zstd window limit");
                Codec::Zstd(decoder)
            }
        })
    }

    fn compression(&self) -> Compression {
        match self {
            Codec::Zlib(_) => Compression::ZlibStream,
            Codec::Zstd(_) => Compression::ZstdStream,
        }
    }

    /// Whether the WebSocket message `input` ends a gateway message. For zlib, `tail` holds
    /// the last four compressed bytes before `input` and is updated: the suffix itself may be
    /// split across WebSocket messages, so the last message may hold only its `ff ff`.
    fn ends_message(&self, tail: &mut [u8; 4], input: &[u8]) -> bool {
        match self {
            Codec::Zlib(_) => {
                let keep = 4 - input.len().min(4);
                tail.copy_within(4 - keep.., 0);
                tail[keep..].copy_from_slice(&input[input.len() - (4 - keep)..]);
                *tail == SUFFIX
            }
            Codec::Zstd(_) => true,
        }
    }

    /// Decompresses from `input` into `out`, which need not be initialised: the first
    /// `produced` bytes of it are afterwards.
    fn step(&mut self, input: &[u8], out: &mut [MaybeUninit<u8>]) -> Result<Step, InflateError> {
        match self {
            Codec::Zlib(z) => {
                let (before_in, before_out) = (z.total_in(), z.total_out());
                let status = z.decompress_uninit(input, out, FlushDecompress::Sync)?;
                Ok(Step {
                    consumed: (z.total_in() - before_in) as usize,
                    produced: (z.total_out() - before_out) as usize,
                    ended: status == Status::StreamEnd,
                })
            }
            Codec::Zstd(z) => {
                let mut src = InBuffer::around(input);
                let mut spare = Spare {
                    buf: out,
                    filled: 0,
                };
                let mut dst = OutBuffer::around(&mut spare);
                z.run(&mut src, &mut dst).map_err(|e| {
                    // libzstd's name for ZSTD_error_frameParameter_windowTooLarge.
                    if e.to_string().contains("requires too much memory") {
                        InflateError::ZstdWindow
                    } else {
                        InflateError::Zstd(e)
                    }
                })?;
                Ok(Step {
                    consumed: src.pos(),
                    produced: dst.pos(),
                    ended: false,
                })
            }
        }
    }
}

/// After the end of a zlib stream (which zlib-stream never sends) nothing more may come.
fn ended(rest: &[u8]) -> Result<(), InflateError> {
    match rest.len() {
        0 => Ok(()),
        trailing => Err(InflateError::Ended { trailing }),
    }
}

/// Memory zstd may write into without it being initialised first (zstd's own `WriteBuf` for
/// a slice wants it initialised).
struct Spare<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    /// How many bytes from the start zstd wrote.
    filled: usize,
}

#[allow(unsafe_code)] // zstd's WriteBuf for memory not yet initialised: see SAFETY.
                      // SAFETY: `capacity` and `as_mut_ptr` describe `buf` exactly, and `as_slice` covers only the
                      // bytes zstd reported writing (`filled_until`, which zstd-safe bounds by `capacity`).
unsafe impl zstd::zstd_safe::WriteBuf for Spare<'_> {
    fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `filled` bytes were written by zstd.
        unsafe { std::slice::from_raw_parts(self.buf.as_ptr().cast(), self.filled) }
    }

    fn capacity(&self) -> usize {
        self.buf.len()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.buf.as_mut_ptr().cast()
    }

    unsafe fn filled_until(&mut self, n: usize) {
        self.filled = n;
    }
}

/// One connection's transport decompression state.
pub struct Inflater {
    codec: Codec,
    out: Vec<u8>,
    limit: usize,
    /// Bytes of the current message inflated past the limit and discarded.
    discarded: usize,
    scratch: Vec<u8>,
    /// The last four compressed bytes seen (zlib's end-of-message check).
    tail: [u8; 4],
}

impl Inflater {
    /// The connection's decompression state; none when `compression` is `None`.
    pub fn new(compression: Compression, max_message_size: usize) -> Option<Inflater> {
        Some(Inflater {
            codec: Codec::new(compression)?,
            out: Vec::new(),
            limit: max_message_size,
            discarded: 0,
            scratch: Vec::new(),
            tail: [0; 4],
        })
    }

    /// Feeds one WebSocket binary message.
    ///
    /// A message that starts in this call is inflated in place into this thread's current
    /// chunk and leaves as a slice of it, so events cost no allocation and no copy of their
    /// own: one chunk is allocated per several events, and freed when the last of them is
    /// dropped. An idle shard holds no chunk; there is one current chunk per runtime thread.
    /// A queued event keeps its whole chunk alive, so while one endpoint is down and others
    /// are not, its queued events may hold up to `CHUNK_CAPACITY` each (16 MiB for the default
    /// queue of 1024) instead of their own size.
    pub fn push(&mut self, input: &[u8]) -> Result<Inflated, InflateError> {
        let complete = self.codec.ends_message(&mut self.tail, input);
        if !self.out.is_empty() || self.discarded > 0 {
            return self.inflate(input, complete);
        }
        let mut chunk = CHUNK
            .take()
            .filter(|chunk| chunk.capacity() >= CHUNK_ROOM)
            .unwrap_or_else(|| BytesMut::with_capacity(CHUNK_CAPACITY));
        let result = self.inflate_in_place(&mut chunk, input, complete);
        // A message leaves the chunk empty; a failed one may not, and what is left belongs to
        // no message.
        chunk.clear();
        CHUNK.set(Some(chunk));
        result
    }

    /// Inflates a message that starts in `input` into `chunk`. A message that does not fit,
    /// or goes on in the next WebSocket message (which the task may read on another thread),
    /// moves to the connection's own buffer.
    fn inflate_in_place(
        &mut self,
        chunk: &mut BytesMut,
        mut input: &[u8],
        complete: bool,
    ) -> Result<Inflated, InflateError> {
        loop {
            let step = self.codec.step(input, chunk.spare_capacity_mut())?;
            // SAFETY: the step initialised this many bytes of the spare capacity;
            // `advance_mut` panics rather than go past it.
            #[allow(unsafe_code)]
            unsafe {
                chunk.advance_mut(step.produced)
            };
            input = &input[step.consumed..];
            if chunk.len() > self.limit {
                self.discarded = chunk.len();
                chunk.clear();
                return self.inflate(input, complete);
            }
            if step.ended {
                ended(input)?;
                break;
            }
            let full = chunk.len() == chunk.capacity();
            if input.is_empty() && !full {
                break;
            }
            if full {
                self.out.extend_from_slice(chunk);
                chunk.clear();
                return self.inflate(input, complete);
            }
            if step.consumed == 0 && step.produced == 0 {
                return Err(InflateError::Stalled(self.codec.compression()));
            }
        }
        if chunk.is_empty() {
            // Only a flush, or only a zstd frame header: there is nothing to parse.
            return Ok(Inflated::Incomplete);
        }
        if !complete {
            self.out.extend_from_slice(chunk);
            chunk.clear();
            return Ok(Inflated::Incomplete);
        }
        Ok(Inflated::Message(chunk.split().freeze()))
    }

    /// Inflates into the connection's own buffer, which grows as needed, or past the limit
    /// into the scratch buffer.
    fn inflate(&mut self, mut input: &[u8], complete: bool) -> Result<Inflated, InflateError> {
        loop {
            let (step, room) = if self.discarded > 0 {
                self.scratch.reserve(SCRATCH_CAPACITY);
                let spare = self.scratch.spare_capacity_mut();
                let room = spare.len();
                let step = self.codec.step(input, spare)?;
                self.discarded += step.produced;
                (step, room)
            } else {
                if self.out.capacity() - self.out.len() < 1024 {
                    self.out.reserve(self.out.len().max(INITIAL_CAPACITY));
                }
                let spare = self.out.spare_capacity_mut();
                let room = spare.len();
                let step = self.codec.step(input, spare)?;
                // SAFETY: as in `inflate_in_place`.
                #[allow(unsafe_code)]
                unsafe {
                    self.out.advance_mut(step.produced)
                };
                if self.out.len() > self.limit {
                    self.discarded = self.out.len();
                    self.out = Vec::new();
                }
                (step, room)
            };
            input = &input[step.consumed..];
            if step.ended {
                ended(input)?;
                break;
            }
            let out_full = step.produced == room;
            if input.is_empty() && !out_full {
                break;
            }
            if step.consumed == 0 && step.produced == 0 {
                // No progress with input left means the stream is stuck: treat as corrupt.
                return Err(InflateError::Stalled(self.codec.compression()));
            }
        }
        if !complete {
            return Ok(Inflated::Incomplete);
        }
        if self.discarded > 0 {
            let size = std::mem::take(&mut self.discarded);
            self.scratch = Vec::new();
            return Ok(Inflated::Oversize { size });
        }
        if self.out.is_empty() {
            return Ok(Inflated::Incomplete);
        }
        // Grown by doubling, the buffer may be nearly twice the message, and a queued
        // GUILD_CREATE can be megabytes. Shrinking rarely copies (glibc's realloc splits the
        // chunk, or mremaps a mapped one).
        let mut message = std::mem::take(&mut self.out);
        message.shrink_to_fit();
        Ok(Inflated::Message(message.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression as Level, FlushCompress};

    use shardhook_simulator::zstd_flushed;

    fn stream(msgs: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut z = Compress::new(Level::default(), true);
        msgs.iter().map(|m| compress_all(&mut z, m)).collect()
    }

    fn compress_all(z: &mut Compress, msg: &[u8]) -> Vec<u8> {
        let start = z.total_in();
        let mut out = Vec::with_capacity(msg.len() / 2 + 64);
        loop {
            let done = (z.total_in() - start) as usize;
            z.compress_vec(&msg[done..], &mut out, FlushCompress::Sync)
                .unwrap();
            if (z.total_in() - start) as usize == msg.len() && out.ends_with(&SUFFIX) {
                return out;
            }
            out.reserve(out.capacity().max(64));
        }
    }

    /// Discord's zstd-stream: one encoder for the connection, flushed after each message.
    fn zstd_stream(msgs: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut z = zstd::stream::raw::Encoder::new(3).unwrap();
        msgs.iter().map(|m| zstd_flushed(&mut z, m)).collect()
    }

    fn big() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    const SMALL: [&[u8]; 3] = [b"{\"op\":10}", b"{\"op\":11}", b"{\"op\":11}"];

    #[test]
    fn an_uncompressed_connection_has_no_inflater() {
        assert!(Inflater::new(Compression::None, 1 << 20).is_none());
    }

    #[test]
    fn messages_share_one_context() {
        let frames = stream(&SMALL);
        let mut inflater = Inflater::new(Compression::ZlibStream, 1 << 20).unwrap();
        for (frame, want) in frames.iter().zip(SMALL) {
            assert_eq!(
                inflater.push(frame).unwrap(),
                Inflated::Message(Bytes::copy_from_slice(want))
            );
        }
    }

    #[test]
    fn a_message_split_across_frames_is_joined() {
        let big = big();
        let frames = stream(&[&big]);
        let mut inflater = Inflater::new(Compression::ZlibStream, 1 << 22).unwrap();
        let frame = &frames[0];
        let third = frame.len() / 3;
        assert_eq!(
            inflater.push(&frame[..third]).unwrap(),
            Inflated::Incomplete
        );
        assert_eq!(
            inflater.push(&frame[third..2 * third]).unwrap(),
            Inflated::Incomplete
        );
        assert_eq!(
            inflater.push(&frame[2 * third..]).unwrap(),
            Inflated::Message(big.into())
        );
    }

    #[test]
    fn a_message_bigger_than_a_chunk_keeps_no_spare_capacity() {
        let big = big();
        let frames = stream(&[&big]);
        let mut inflater = Inflater::new(Compression::ZlibStream, 1 << 22).unwrap();
        let Inflated::Message(message) = inflater.push(&frames[0]).unwrap() else {
            panic!("one frame is one message");
        };
        let message = message.try_into_mut().expect("the only reference");
        assert_eq!(message.len(), big.len());
        assert_eq!(message.capacity(), big.len());
    }

    #[test]
    fn a_suffix_split_across_frames_still_ends_the_message() {
        let frames = stream(&[b"{\"op\":11}", b"{\"op\":1}"]);
        let mut inflater = Inflater::new(Compression::ZlibStream, 1 << 20).unwrap();
        for (frame, want) in frames.iter().zip([&b"{\"op\":11}"[..], b"{\"op\":1}"]) {
            // The last WebSocket message carries only `ff ff` of `00 00 ff ff`, the one
            // before it one byte, and so on.
            let cut = frame.len() - 2;
            assert_eq!(
                inflater.push(&frame[..cut - 1]).unwrap(),
                Inflated::Incomplete
            );
            assert_eq!(
                inflater.push(&frame[cut - 1..cut]).unwrap(),
                Inflated::Incomplete
            );
            assert_eq!(
                inflater.push(&frame[cut..]).unwrap(),
                Inflated::Message(Bytes::copy_from_slice(want))
            );
        }
    }

    /// The frames of `msgs` as the double sends them with `compression`.
    fn encoded(compression: Compression, msgs: &[&[u8]]) -> Vec<Vec<u8>> {
        match compression {
            Compression::ZlibStream => stream(msgs),
            Compression::ZstdStream => zstd_stream(msgs),
            Compression::None => unreachable!("no inflater without compression"),
        }
    }

    /// A message over the limit is dropped and reported with its size, and the stream goes on:
    /// the next message comes whole.
    fn oversize_is_dropped_and_the_stream_goes_on(compression: Compression) {
        let big = big();
        let frames = encoded(compression, &[b"{\"op\":10}", &big, b"{\"op\":11}"]);
        let mut inflater = Inflater::new(compression, 10_000).unwrap();
        assert_eq!(
            inflater.push(&frames[0]).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":10}"))
        );
        assert_eq!(
            inflater.push(&frames[1]).unwrap(),
            Inflated::Oversize { size: big.len() }
        );
        assert_eq!(
            inflater.push(&frames[2]).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":11}"))
        );
    }

    /// Messages of sizes that fill a chunk, start a new one, or overflow what is left of one
    /// into the connection's buffer all come whole, and inflating later ones does not
    /// touch the earlier ones' bytes, which share a chunk.
    fn messages_stay_whole_across_chunks(compression: Compression) {
        // Sizes chosen against a fresh chunk: the second fills the first chunk's rest
        // exactly.
        CHUNK.set(None);
        let sizes = [
            3000,
            CHUNK_CAPACITY - 3000,
            50,
            CHUNK_CAPACITY - 3000 - 100,
            CHUNK_CAPACITY,
            CHUNK_CAPACITY - CHUNK_ROOM + 1,
            5000,
            CHUNK_CAPACITY + 1,
            CHUNK_ROOM,
            1,
        ];
        let msgs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| (0..size).map(|j| (i * 7 + j % 241) as u8).collect())
            .collect();
        let borrowed: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
        let frames = encoded(compression, &borrowed);
        let mut inflater = Inflater::new(compression, 1 << 20).unwrap();
        let got: Vec<Inflated> = frames.iter().map(|f| inflater.push(f).unwrap()).collect();
        for ((got, want), size) in got.into_iter().zip(&msgs).zip(sizes) {
            assert_eq!(
                got,
                Inflated::Message(Bytes::copy_from_slice(want)),
                "the message of {size} bytes"
            );
        }
    }

    #[test]
    fn messages_stay_whole_across_chunks_zlib() {
        messages_stay_whole_across_chunks(Compression::ZlibStream);
    }

    #[test]
    fn messages_stay_whole_across_chunks_zstd() {
        messages_stay_whole_across_chunks(Compression::ZstdStream);
    }

    #[test]
    fn an_oversize_message_is_dropped_and_the_stream_goes_on() {
        oversize_is_dropped_and_the_stream_goes_on(Compression::ZlibStream);
    }

    #[test]
    fn garbage_does_not_inflate() {
        let mut inflater = Inflater::new(Compression::ZlibStream, 1 << 20).unwrap();
        let mut garbage = b"this is not zlib".to_vec();
        garbage.extend_from_slice(&SUFFIX);
        assert!(inflater.push(&garbage).is_err());
    }

    #[test]
    fn zstd_messages_share_one_context_and_each_frame_is_one_message() {
        let mut msgs: Vec<&[u8]> = SMALL.to_vec();
        // Later messages refer back into earlier ones: the context must carry over.
        msgs.push(b"{\"op\":0,\"t\":\"MESSAGE_CREATE\",\"d\":{\"content\":\"hello\"}}");
        msgs.push(b"{\"op\":0,\"t\":\"MESSAGE_CREATE\",\"d\":{\"content\":\"hello again\"}}");
        let frames = zstd_stream(&msgs);
        let mut inflater = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        for (frame, want) in frames.iter().zip(&msgs) {
            assert_eq!(
                inflater.push(frame).unwrap(),
                Inflated::Message(Bytes::copy_from_slice(want))
            );
        }
        let mut fresh = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        assert!(
            fresh.push(&frames[4]).is_err(),
            "a later frame alone does not decode: the stream is one context"
        );
    }

    #[test]
    fn a_zstd_message_bigger_than_the_output_buffer_comes_whole() {
        let big = big();
        let frames = zstd_stream(&[b"{\"op\":10}", &big, b"{\"op\":11}"]);
        let mut inflater = Inflater::new(Compression::ZstdStream, 1 << 22).unwrap();
        inflater.push(&frames[0]).unwrap();
        assert_eq!(
            inflater.push(&frames[1]).unwrap(),
            Inflated::Message(big.into())
        );
        assert_eq!(
            inflater.push(&frames[2]).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":11}"))
        );
    }

    #[test]
    fn a_zstd_oversize_message_is_dropped_and_the_stream_goes_on() {
        oversize_is_dropped_and_the_stream_goes_on(Compression::ZstdStream);
    }

    #[test]
    fn zstd_garbage_and_corrupt_blocks_do_not_decompress() {
        let mut inflater = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        let err = inflater.push(b"this is not zstd").unwrap_err();
        assert!(err.to_string().contains("zstd-stream"), "{err}");

        // Mid-stream, a block header of the reserved type 3 (the simulator's corrupt frame).
        let frames = zstd_stream(&[b"{\"op\":10}"]);
        let mut inflater = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        inflater.push(&frames[0]).unwrap();
        assert!(inflater
            .push(&[0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff])
            .is_err());
    }

    #[test]
    fn a_zstd_window_over_the_limit_is_refused() {
        let mut z = zstd::stream::raw::Encoder::new(3).unwrap();
        z.set_parameter(zstd::stream::raw::CParameter::WindowLog(
            ZSTD_WINDOW_LOG_MAX + 1,
        ))
        .unwrap();
        let frame = zstd_flushed(&mut z, b"{\"op\":10}");
        let mut inflater = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        let err = inflater.push(&frame).unwrap_err().to_string();
        assert!(err.contains("8 MiB"), "{err}");

        let mut z = zstd::stream::raw::Encoder::new(3).unwrap();
        z.set_parameter(zstd::stream::raw::CParameter::WindowLog(
            ZSTD_WINDOW_LOG_MAX,
        ))
        .unwrap();
        let frame = zstd_flushed(&mut z, b"{\"op\":10}");
        let mut inflater = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        assert_eq!(
            inflater.push(&frame).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":10}"))
        );
    }

    #[test]
    fn a_message_that_fails_part_way_leaves_nothing_for_the_next() {
        // A whole zstd frame, then garbage, in one WebSocket message: the frame inflates into
        // the thread's chunk before the garbage fails.
        let mut frame = zstd::bulk::compress(b"{\"op\":11}", 3).unwrap();
        frame.extend_from_slice(b"this is not zstd");
        let mut failing = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        assert!(failing.push(&frame).is_err());
        // Another connection on the same thread.
        let frames = stream(&[b"{\"op\":10}"]);
        let mut next = Inflater::new(Compression::ZlibStream, 1 << 20).unwrap();
        assert_eq!(
            next.push(&frames[0]).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":10}"))
        );
    }

    /// `size` bytes that compress poorly, as a large message may.
    fn noise(seed: u64, size: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..size).map(|_| rng.u8(..)).collect()
    }

    /// A message of exactly the limit comes whole, one byte more is dropped, both when the
    /// limit is crossed in the chunk and in the connection's buffer; the next message comes
    /// whole either way.
    fn the_limit_is_inclusive(compression: Compression) {
        for limit in [100, CHUNK_CAPACITY - 1, CHUNK_CAPACITY, 40_000] {
            for size in [limit - 1, limit, limit + 1] {
                let message = noise(size as u64, size);
                let frames = encoded(compression, &[&message, b"{\"op\":11}"]);
                let mut inflater = Inflater::new(compression, limit).unwrap();
                let want = if size > limit {
                    Inflated::Oversize { size }
                } else {
                    Inflated::Message(message.into())
                };
                assert_eq!(
                    inflater.push(&frames[0]).unwrap(),
                    want,
                    "{size} of {limit}"
                );
                assert_eq!(
                    inflater.push(&frames[1]).unwrap(),
                    Inflated::Message(Bytes::from_static(b"{\"op\":11}")),
                    "after {size} of {limit}"
                );
            }
        }
    }

    #[test]
    fn the_limit_is_inclusive_zlib() {
        the_limit_is_inclusive(Compression::ZlibStream);
    }

    #[test]
    fn the_limit_is_inclusive_zstd() {
        the_limit_is_inclusive(Compression::ZstdStream);
    }

    /// Empty WebSocket messages and messages that inflate to nothing hand nothing on.
    fn nothing_in_is_nothing_out(compression: Compression) {
        let frames = encoded(compression, &[b"", b"{\"op\":10}"]);
        let mut inflater = Inflater::new(compression, 1 << 20).unwrap();
        assert_eq!(inflater.push(&[]).unwrap(), Inflated::Incomplete);
        assert_eq!(inflater.push(&frames[0]).unwrap(), Inflated::Incomplete);
        assert_eq!(inflater.push(&[]).unwrap(), Inflated::Incomplete);
        assert_eq!(
            inflater.push(&frames[1]).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":10}"))
        );
    }

    #[test]
    fn nothing_in_is_nothing_out_zlib() {
        nothing_in_is_nothing_out(Compression::ZlibStream);
    }

    #[test]
    fn nothing_in_is_nothing_out_zstd() {
        nothing_in_is_nothing_out(Compression::ZstdStream);
    }

    #[test]
    fn a_split_message_and_another_connection_on_the_same_thread_stay_apart() {
        for size in [10, 3000, 5000, 20_000] {
            let message = noise(9, size);
            let frames = stream(&[&message]);
            let cut = frames[0].len() / 2;
            let other = stream(&[b"{\"op\":10}"]);
            let (mut split, mut whole) = (
                Inflater::new(Compression::ZlibStream, 1 << 20).unwrap(),
                Inflater::new(Compression::ZlibStream, 1 << 20).unwrap(),
            );
            assert_eq!(split.push(&frames[0][..cut]).unwrap(), Inflated::Incomplete);
            assert_eq!(
                whole.push(&other[0]).unwrap(),
                Inflated::Message(Bytes::from_static(b"{\"op\":10}"))
            );
            assert_eq!(
                split.push(&frames[0][cut..]).unwrap(),
                Inflated::Message(message.into()),
                "{size} bytes"
            );
        }
    }

    #[test]
    fn bytes_after_the_end_of_the_zlib_stream_fail() {
        let finished = |msg: &[u8]| {
            let mut z = Compress::new(Level::default(), true);
            let mut out = Vec::with_capacity(1024);
            z.compress_vec(msg, &mut out, FlushCompress::Finish)
                .unwrap();
            out
        };
        // The end, then more in the same WebSocket message.
        let mut frame = finished(b"{\"op\":10}");
        frame.extend_from_slice(&SUFFIX);
        let mut inflater = Inflater::new(Compression::ZlibStream, 1 << 20).unwrap();
        let err = inflater.push(&frame).unwrap_err().to_string();
        assert!(err.contains("zlib stream ended, and 4 more bytes"), "{err}");
        // The end, then more in the next WebSocket message.
        let mut inflater = Inflater::new(Compression::ZlibStream, 1 << 20).unwrap();
        assert_eq!(
            inflater.push(&finished(b"{\"op\":10}")).unwrap(),
            Inflated::Incomplete
        );
        assert!(inflater.push(&stream(&[b"{\"op\":11}"])[0]).is_err());
    }

    #[test]
    fn zstd_frames_ended_and_begun_again_decode_as_one_stream() {
        // Not what Discord sends, but a valid stream: a sender may end a frame and start
        // another (the benchmark's source does, between chunks).
        let mut out = Vec::new();
        for msg in [&b"{\"op\":10}"[..], b"{\"op\":11}"] {
            out.push(zstd::bulk::compress(msg, 3).unwrap());
        }
        let mut inflater = Inflater::new(Compression::ZstdStream, 1 << 20).unwrap();
        assert_eq!(
            inflater.push(&out[0]).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":10}"))
        );
        assert_eq!(
            inflater.push(&out[1]).unwrap(),
            Inflated::Message(Bytes::from_static(b"{\"op\":11}"))
        );
    }
}
