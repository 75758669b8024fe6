//! The sink: answers every POST with 204 and records, per request, the shard and seq range it
//! carried (from `webhook-id`, `msg_{shard}_{hash}_{first}_{last}`) and when it arrived, on the
//! blaster's clock. It verifies one signature per round, not every one, to stay cheap.
//!
//! It is HTTP/1.1 written by hand on a `TcpStream` and `httparse`, not a framework: it shares
//! the 2 cores with the contestant, so whatever it costs per request is taken from every
//! unbatched contestant's throughput. Per read it answers every request that read completed, in
//! one write. It takes what the contestants send (a `Content-Length` body, keep-alive) and
//! answers anything else with 400 and closes, so a contestant that sent it fails its round
//! instead of being counted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::frames::FIRST_SEQ;

/// One request as the sink saw it.
#[derive(Clone, Copy)]
pub struct Arrival {
    pub shard: u32,
    pub first: u64,
    pub last: u64,
    pub at_nanos: u64,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub shared: Arc<SinkShared>,
}

pub struct SinkShared {
    epoch: Instant,
    signer: shardhook::Signer,
    /// Traffic events (seq >= FIRST_SEQ) received this round.
    pub events: AtomicU64,
    /// The round's event count: `done` is notified when `events` reaches it.
    target: AtomicU64,
    /// Whether a signature was checked this round, and whether it failed.
    checked: AtomicBool,
    pub bad_signature: AtomicBool,
    /// Set when a request could not be taken (malformed, chunked, no length).
    pub bad_request: AtomicBool,
    pub arrivals: Mutex<Vec<Arrival>>,
    /// Notified once per round, when the target is reached or a request was refused.
    pub done: Notify,
}

/// The biggest body the sink takes: a batch is at most `batch.max_bytes` (1 MiB by default).
const MAX_BODY: usize = 64 << 20;

/// What the sink answers to every request it takes.
const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

impl Sink {
    pub async fn start(epoch: Instant, signer: shardhook::Signer) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(SinkShared {
            epoch,
            signer,
            events: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            checked: AtomicBool::new(false),
            bad_signature: AtomicBool::new(false),
            bad_request: AtomicBool::new(false),
            arrivals: Mutex::new(Vec::with_capacity(1 << 20)),
            done: Notify::new(),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                // Nagle off, as a real endpoint would have it (see `serve_without_nagle`).
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, accepting.clone()));
            }
        });
        Sink { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Starts a round that ends at `target` events.
    pub fn reset(&self, target: u64) {
        self.shared.events.store(0, Ordering::SeqCst);
        self.shared.target.store(target, Ordering::SeqCst);
        self.shared.checked.store(false, Ordering::SeqCst);
        self.shared.arrivals.lock().unwrap().clear();
    }
}

/// One connection: reads, answers each complete request, and keeps the rest for the next read.
async fn serve(mut tcp: TcpStream, s: Arc<SinkShared>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(NO_CONTENT.len() * 16);
    loop {
        loop {
            match take(&mut buf, &s) {
                Taken::One => out.extend_from_slice(NO_CONTENT),
                Taken::Incomplete(more) => {
                    buf.reserve(more);
                    break;
                }
                Taken::Refused(why) => {
                    eprintln!("sink: refused a request: {why}");
                    s.bad_request.store(true, Ordering::SeqCst);
                    s.done.notify_one();
                    // The requests before it were taken and counted: answer them first.
                    out.extend_from_slice(BAD_REQUEST);
                    let _ = tcp.write_all(&out).await;
                    return;
                }
            }
        }
        if !out.is_empty() {
            if tcp.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

enum Taken {
    One,
    /// Not all of the next request is here: at least this many more bytes are wanted.
    Incomplete(usize),
    Refused(String),
}

/// Takes the first request in `buf` if all of it is there, and records it.
fn take(buf: &mut BytesMut, s: &SinkShared) -> Taken {
    let mut headers = [httparse::EMPTY_HEADER; 24];
    let mut request = httparse::Request::new(&mut headers);
    let head = match request.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Taken::Incomplete(4096),
        Err(e) => return Taken::Refused(format!("unparseable head: {e}")),
    };
    let (mut length, mut id, mut timestamp, mut signature) = (None, "", "", "");
    for h in request.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("");
        if h.name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if h.name.eq_ignore_ascii_case("webhook-id") {
            id = value;
        } else if h.name.eq_ignore_ascii_case("webhook-timestamp") {
            timestamp = value;
        } else if h.name.eq_ignore_ascii_case("webhook-signature") {
            signature = value;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Taken::Refused(format!("transfer-encoding {value} (wants content-length)"));
        }
    }
    let Some(length) = length else {
        return Taken::Refused("no content-length".into());
    };
    if length > MAX_BODY {
        return Taken::Refused(format!("content-length {length} is over {MAX_BODY}"));
    }
    if buf.len() < head + length {
        return Taken::Incomplete(head + length - buf.len());
    }
    let body = &buf[head..head + length];
    let at_nanos = s.epoch.elapsed().as_nanos() as u64;
    if !s.checked.swap(true, Ordering::Relaxed) {
        let verified = s.signer.verify(
            Some(id),
            Some(timestamp),
            Some(signature),
            body,
            shardhook::unix_now(),
        );
        if verified.is_err() {
            s.bad_signature.store(true, Ordering::SeqCst);
        }
    }
    if let Some((shard, first, last)) = parse_id(id) {
        let first = first.max(FIRST_SEQ);
        if last >= first {
            let n = last - first + 1;
            let before = s.events.fetch_add(n, Ordering::Relaxed);
            s.arrivals.lock().unwrap().push(Arrival {
                shard,
                first,
                last,
                at_nanos,
            });
            let target = s.target.load(Ordering::Relaxed);
            if before < target && before + n >= target {
                s.done.notify_one();
            }
        }
    }
    buf.advance(head + length);
    Taken::One
}

/// `(shard, first, last)` from a `webhook-id` of the form `msg_{shard}_{hash}_{first}_{last}`.
fn parse_id(id: &str) -> Option<(u32, u64, u64)> {
    let mut parts = id.strip_prefix("msg_")?.split('_');
    let shard = parts.next()?.parse().ok()?;
    let _hash = parts.next()?;
    let first = parts.next()?.parse().ok()?;
    let last = parts.next()?.parse().ok()?;
    Some((shard, first, last))
}
