//! Transport decompression: Discord's `zlib-stream`.
//!
//! Owns one zlib context per connection and the rule that a gateway message is complete when a
//! WebSocket message ends with `00 00 ff ff`; a message may span several WebSocket messages.
//! Input is inflated as it arrives, so compressed bytes are never buffered, and output beyond
//! `max_message_size` is inflated into a scratch buffer and discarded (the zlib context must
//! still see every byte). It knows nothing about JSON.

use flate2::{Decompress, FlushDecompress, Status};

/// The zlib `SYNC_FLUSH` marker that ends every gateway message.
pub const SUFFIX: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Capacity an output buffer starts with when a message arrives; most dispatches fit.
const INITIAL_CAPACITY: usize = 4 << 10;

/// What a WebSocket message amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Inflated {
    /// More WebSocket messages are needed to finish this gateway message.
    Incomplete,
    /// A whole gateway message.
    Message(Vec<u8>),
    /// A whole gateway message larger than the limit, dropped; `size` is its inflated size.
    Oversize { size: usize },
}

/// The compressed stream is corrupt; the connection must be replaced.
#[derive(Debug, thiserror::Error)]
pub enum InflateError {
    #[error("gateway frame does not inflate: {0}")]
    Corrupt(#[from] flate2::DecompressError),
    #[error("gateway frame does not inflate: zlib made no progress")]
    Stalled,
}

/// One connection's zlib-stream state.
pub struct Inflater {
    zlib: Decompress,
    out: Vec<u8>,
    limit: usize,
    /// Bytes of the current message inflated past the limit and discarded.
    discarded: usize,
    scratch: Vec<u8>,
}

impl Inflater {
    pub fn new(max_message_size: usize) -> Inflater {
        Inflater {
            zlib: Decompress::new(true),
            out: Vec::new(),
            limit: max_message_size,
            discarded: 0,
            scratch: Vec::new(),
        }
    }

    /// Feeds one WebSocket binary message.
    pub fn push(&mut self, mut input: &[u8]) -> Result<Inflated, InflateError> {
        let complete = input.ends_with(&SUFFIX);
        loop {
            let (before_in, before_out) = (self.zlib.total_in(), self.zlib.total_out());
            let status = if self.discarded > 0 {
                self.scratch.resize(64 << 10, 0);
                self.zlib
                    .decompress(input, &mut self.scratch, FlushDecompress::Sync)?
            } else {
                if self.out.capacity() - self.out.len() < 1024 {
                    self.out.reserve(self.out.len().max(INITIAL_CAPACITY));
                }
                self.zlib
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)?
            };
            let consumed = (self.zlib.total_in() - before_in) as usize;
            let produced = (self.zlib.total_out() - before_out) as usize;
            input = &input[consumed..];
            if self.discarded > 0 {
                self.discarded += produced;
            } else if self.out.len() > self.limit {
                self.discarded = self.out.len();
                self.out = Vec::new();
            }
            let out_full = if self.discarded > 0 {
                produced == self.scratch.len()
            } else {
                self.out.len() == self.out.capacity()
            };
            if (input.is_empty() && !out_full) || status == Status::StreamEnd {
                break;
            }
            if consumed == 0 && produced == 0 {
                // No progress with input left means the stream is stuck: treat as corrupt.
                return Err(InflateError::Stalled);
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
        // The message leaves as it is; the next one allocates when it arrives, so an idle
        // shard holds no output buffer.
        Ok(Inflated::Message(std::mem::take(&mut self.out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    fn stream(msgs: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut z = Compress::new(Compression::default(), true);
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

    #[test]
    fn messages_share_one_context() {
        let frames = stream(&[b"{\"op\":10}", b"{\"op\":11}", b"{\"op\":11}"]);
        let mut inflater = Inflater::new(1 << 20);
        for (frame, want) in
            frames
                .iter()
                .zip([&b"{\"op\":10}"[..], b"{\"op\":11}", b"{\"op\":11}"])
        {
            assert_eq!(
                inflater.push(frame).unwrap(),
                Inflated::Message(want.to_vec())
            );
        }
    }

    #[test]
    fn a_message_split_across_frames_is_joined() {
        let big: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let frames = stream(&[&big]);
        let mut inflater = Inflater::new(1 << 22);
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
            Inflated::Message(big)
        );
    }

    #[test]
    fn an_oversize_message_is_dropped_and_the_stream_goes_on() {
        let big = vec![b'x'; 100_000];
        let frames = stream(&[&big, b"{\"op\":11}"]);
        let mut inflater = Inflater::new(10_000);
        assert_eq!(
            inflater.push(&frames[0]).unwrap(),
            Inflated::Oversize { size: 100_000 }
        );
        assert_eq!(
            inflater.push(&frames[1]).unwrap(),
            Inflated::Message(b"{\"op\":11}".to_vec())
        );
    }

    #[test]
    fn garbage_does_not_inflate() {
        let mut inflater = Inflater::new(1 << 20);
        let mut garbage = b"this is not zlib".to_vec();
        garbage.extend_from_slice(&SUFFIX);
        assert!(inflater.push(&garbage).is_err());
    }
}
