//! Inflates the same zlib-stream (20,000 sync-flushed messages of 0.5-2 KB in one context, as
//! Discord sends them) with whichever flate2 backend this binary was built with, into a 16 KiB
//! uninitialised buffer as the router's inflater does; prints the best of 7 passes in ns per
//! message.
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::mem::MaybeUninit;
use std::time::Instant;

fn main() {
    let words = [
        "content",
        "author",
        "guild_id",
        "channel_id",
        "hello",
        "world",
        "emoji",
        "the",
        "id",
        "1234567890123456",
        "username",
        "avatar",
        "a",
        "of",
        "message",
    ];
    let mut seed = 7u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut z = Compress::new(Compression::default(), true);
    let mut frames = Vec::new();
    let mut raw_total = 0;
    for _ in 0..20000 {
        let len = 500 + (rnd() % 1500) as usize;
        let mut msg =
            String::from("{\"op\":0,\"t\":\"MESSAGE_CREATE\",\"s\":1,\"d\":{\"content\":\"");
        while msg.len() < len {
            msg.push_str(words[(rnd() % words.len() as u64) as usize]);
            msg.push(' ');
        }
        msg.push_str("\"}}");
        raw_total += msg.len();
        let mut out = Vec::with_capacity(msg.len() + 64);
        z.compress_vec(msg.as_bytes(), &mut out, FlushCompress::Sync)
            .unwrap();
        frames.push(out);
    }
    let mut best = f64::MAX;
    for _ in 0..7 {
        let mut d = Decompress::new(true);
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 16 << 10];
        let start = Instant::now();
        let mut produced = 0u64;
        for f in &frames {
            let before = d.total_out();
            d.decompress_uninit(f, &mut buf, FlushDecompress::Sync)
                .unwrap();
            produced += d.total_out() - before;
        }
        assert_eq!(produced as usize, raw_total);
        best = best.min(start.elapsed().as_nanos() as f64 / frames.len() as f64);
    }
    println!(
        "{best:.0} ns per message ({} bytes avg)",
        raw_total / frames.len()
    );
}
