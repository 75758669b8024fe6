//! The double's side of transport compression: one zlib or zstd stream per connection, each
//! message flushed so the client can decompress it at once, as Discord sends them.
//!
//! Owns its own compression code (flate2 and zstd used directly, not the router's inflater), so
//! a framing mistake in the router cannot agree with itself here.

use flate2::{Compress as Deflater, Compression as Level, FlushCompress};

use crate::protocol::Compress;

/// The four bytes that end each `zlib-stream` message (an empty stored block of a sync flush).
pub const ZLIB_SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// One connection's compression context: the whole connection is one stream.
pub(crate) enum Compressor {
    Zlib(Deflater),
    Zstd(zstd::stream::raw::Encoder<'static>),
}

impl Compressor {
    pub(crate) fn new(compress: Compress) -> Compressor {
        match compress {
            Compress::ZlibStream => Compressor::Zlib(Deflater::new(Level::fast(), true)),
            // Level 1, the fastest, as zlib's is; the level does not change the framing.
            Compress::ZstdStream => Compressor::Zstd(
                zstd::stream::raw::Encoder::new(1).expect("a zstd compression context"),
            ),
        }
    }

    /// One gateway message's bytes, flushed so the client can decompress it at once.
    pub(crate) fn compress(&mut self, input: &[u8]) -> Vec<u8> {
        match self {
            Compressor::Zlib(z) => deflate(z, input),
            Compressor::Zstd(z) => zstd_flushed(z, input),
        }
    }

    /// Whether a message may be split across WebSocket messages (`Fault::SplitNext`).
    pub(crate) fn splits(&self) -> bool {
        matches!(self, Compressor::Zlib(_))
    }
}

/// Compresses one message and flushes (`ZSTD_e_flush`) without ending the frame, as Discord
/// does, so the client's decoder yields exactly this message. The router's inflater tests use
/// it to make frames as Discord would.
pub fn zstd_flushed(z: &mut zstd::stream::raw::Encoder<'static>, input: &[u8]) -> Vec<u8> {
    use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    let mut src = InBuffer::around(input);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(64));
        }
        let pos = out.len();
        let mut dst = OutBuffer::around_pos(&mut out, pos);
        if src.pos() < input.len() {
            z.run(&mut src, &mut dst)
                .expect("compressing into a growing Vec does not fail");
        } else if z
            .flush(&mut dst)
            .expect("flushing into a growing Vec does not fail")
            == 0
        {
            return out;
        }
    }
}

/// Compresses one message with a sync flush, so it ends with `00 00 ff ff`.
fn deflate(z: &mut Deflater, input: &[u8]) -> Vec<u8> {
    let start = z.total_in();
    let mut out = Vec::with_capacity(input.len() / 2 + 64);
    loop {
        let done = (z.total_in() - start) as usize;
        z.compress_vec(&input[done..], &mut out, FlushCompress::Sync)
            .expect("compressing into a growing Vec does not fail");
        if (z.total_in() - start) as usize == input.len() && out.ends_with(&ZLIB_SUFFIX) {
            return out;
        }
        out.reserve(out.capacity().max(64));
    }
}
