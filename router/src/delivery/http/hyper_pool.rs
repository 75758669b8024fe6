//! An endpoint's connections as hyper's client connection API speaks them: HTTP/1.1 kept idle
//! between requests and driven by the request's own task, or HTTP/2 multiplexed on a few
//! connections when the endpoint takes `h2`.
//!
//! Owns which HTTP version a connection speaks (ALPN, the endpoint's `http2` setting), the
//! HTTP/1.1 connections kept idle and the HTTP/2 connections shared, and one POST's round trip
//! on them. Connecting (TCP, TLS), the answer's shape (`Answer`, `Failure`) and the limits on it
//! are the pool's (`http`); what a status means is `retry`'s. The endpoint's in-flight cap
//! (`endpoint`) bounds the requests, and so the HTTP/2 streams, out at once.
//!
//! HTTP/1.1: no task per connection. A request polls its connection's future beside its own
//! (the answer's head, then its body), so the bytes move on the request's task with no hand-off
//! to another; between requests the connection sits idle, polled by nobody, and is looked at
//! when it is taken (a poll that makes no system call, then, after a second idle, a look at the
//! socket; see `http`). HTTP/2: a task per connection, as streams of many shards share it; the
//! request's task waits for its stream's answer.

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, RETRY_AFTER, TRANSFER_ENCODING,
    USER_AGENT,
};
use http::{Request, Response, Uri, Version};
use http_body_util::Full;
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{
    closed, tcp_of, with_causes, Answer, Failure, Pool, Stream, BODY_LIMIT, IDLE_FOR, LOOK_AFTER,
};
use crate::config::Http2;

/// Streams one HTTP/2 connection is given before another is opened: under what servers allow
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`: nginx 128, Cloudflare 256, hyper 200, Go 250).
const STREAMS_PER_CONNECTION: usize = 100;
/// The most HTTP/2 connections to one endpoint.
const MAX_H2_CONNECTIONS: usize = 8;

type H1Sender = http1::SendRequest<Full<Bytes>>;
type H1Connection = http1::Connection<TokioIo<Heard>, Full<Bytes>>;
type H2Sender = http2::SendRequest<Full<Bytes>>;
/// An HTTP/2 connection's sender, and the count of its streams out that a request joined.
type Picked = (H2Sender, Arc<AtomicUsize>);

/// An endpoint's HTTP/1.1 and HTTP/2 connections.
pub(super) struct HyperPool {
    http2: Http2,
    /// The request's URI as HTTP/1.1 writes it (origin form) and as HTTP/2 needs it (absolute).
    target: Uri,
    absolute: Uri,
    host: HeaderValue,
    idle: Mutex<Vec<IdleH1>>,
    h2: Mutex<Vec<H2Conn>>,
    /// HTTP/2 connections wanted: enough for the endpoint's in-flight cap.
    h2_wanted: usize,
    /// The endpoint took `h2` at the last connection (or `http2 = "always"`): new requests go
    /// to the HTTP/2 connections.
    speaks_h2: AtomicBool,
    /// Held while an HTTP/2 connection is being opened, so requests that find none open one.
    opening: tokio::sync::Mutex<()>,
    /// A connection was opened, so whether the endpoint takes `h2` is known. Until then
    /// requests wait for the one being opened instead of opening more beside it.
    known: AtomicBool,
}

/// An idle HTTP/1.1 connection: hyper's two halves, and a duplicate of its socket to look at.
struct IdleH1 {
    conn: H1,
    since: Instant,
}

pub(super) struct H1 {
    sender: H1Sender,
    connection: H1Connection,
    /// Set when a byte of an answer arrives, reset as a request goes out.
    heard: Arc<AtomicBool>,
    /// The socket under the connection, duplicated, to peek at while hyper holds the stream.
    socket: socket2::Socket,
    /// The connection's future has ended: it is not polled again.
    over: bool,
}

struct H2Conn {
    sender: H2Sender,
    /// Requests out on it now.
    streams: Arc<AtomicUsize>,
}

/// A connection as it came out of its handshake.
pub(super) enum Opened {
    /// Boxed: it is moved once per connection opened, and the H2 variant is small.
    H1(Box<H1>),
    H2(H2Sender),
}

impl HyperPool {
    pub(super) fn new(
        http2: Http2,
        target: &str,
        absolute: String,
        host: &str,
        max_in_flight: usize,
    ) -> Result<HyperPool, String> {
        Ok(HyperPool {
            http2,
            target: Uri::try_from(target).map_err(|e| e.to_string())?,
            absolute: Uri::try_from(absolute).map_err(|e| e.to_string())?,
            host: HeaderValue::try_from(host).map_err(|e| e.to_string())?,
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(Vec::new()),
            h2_wanted: max_in_flight
                .div_ceil(STREAMS_PER_CONNECTION)
                .clamp(1, MAX_H2_CONNECTIONS),
            speaks_h2: AtomicBool::new(http2 == Http2::Always),
            opening: tokio::sync::Mutex::new(()),
            known: AtomicBool::new(false),
        })
    }

    /// The ALPN offers for this endpoint's TLS.
    pub(super) fn alpn(http2: Http2) -> Vec<Vec<u8>> {
        match http2 {
            Http2::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Http2::Never => vec![b"http/1.1".to_vec()],
            Http2::Always => vec![b"h2".to_vec()],
        }
    }

    /// Opens a connection ahead of the first request: one more HTTP/2 connection while fewer
    /// than wanted are open, else an idle HTTP/1.1 one.
    pub(super) async fn warm(&self, pool: &Pool) {
        // One at a time: until the first is open, whether the endpoint takes `h2` is unknown.
        let _one = self.opening.lock().await;
        if self.speaks_h2.load(Ordering::Relaxed) && self.live_h2() >= self.h2_wanted {
            return;
        }
        match self.open(pool).await {
            Ok(Opened::H1(conn)) => self.keep(*conn, pool.max_idle),
            Ok(Opened::H2(sender)) => self.add_h2(sender),
            Err(e) => tracing::warn!("could not open a connection ahead of the first request: {e}"),
        }
    }

    pub(super) async fn post(
        &self,
        pool: &Pool,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let deadline = Instant::now() + timeout;
        let timed_out = || Failure::Timeout {
            authority: pool.authority.clone(),
            timeout,
        };
        // An HTTP/1.1 connection this request opened itself.
        let mut fresh = None;
        if !self.known.load(Ordering::Acquire) {
            // The first requests (and `warm`) would each open a connection before any learns
            // that the endpoint multiplexes: the first opens, under the lock, the rest use it.
            let _one = tokio::time::timeout_at(deadline, self.opening.lock())
                .await
                .map_err(|_elapsed| timed_out())?;
            if !self.known.load(Ordering::Acquire) {
                match tokio::time::timeout_at(deadline, Box::pin(self.open(pool)))
                    .await
                    .map_err(|_elapsed| timed_out())??
                {
                    Opened::H1(conn) => fresh = Some(*conn),
                    Opened::H2(sender) => self.add_h2(sender),
                }
            }
        }
        if self.speaks_h2.load(Ordering::Relaxed) {
            let sender = match self.pick_h2() {
                Some(picked) => Some(picked),
                None => tokio::time::timeout_at(deadline, self.open_h2(pool))
                    .await
                    .map_err(|_elapsed| timed_out())??,
            };
            if let Some((sender, streams)) = sender {
                return self
                    .post_h2(pool, sender, &streams, headers, body, deadline, timed_out)
                    .await;
            }
        }
        let mut kept = if fresh.is_some() { None } else { self.take() };
        loop {
            let reused = kept.is_some();
            let mut conn = match kept.take().or_else(|| fresh.take()) {
                Some(conn) => conn,
                None => match tokio::time::timeout_at(deadline, Box::pin(self.open(pool)))
                    .await
                    .map_err(|_elapsed| timed_out())??
                {
                    Opened::H1(conn) => *conn,
                    // The endpoint took `h2` (its offer changed, or the first connection).
                    Opened::H2(sender) => {
                        let streams = Arc::new(AtomicUsize::new(0));
                        self.h2.lock().expect("never poisoned").push(H2Conn {
                            sender: sender.clone(),
                            streams: streams.clone(),
                        });
                        streams.fetch_add(1, Ordering::Relaxed);
                        return self
                            .post_h2(pool, sender, &streams, headers, body, deadline, timed_out)
                            .await;
                    }
                },
            };
            let request = self.request(Version::HTTP_11, &headers, &body);
            conn.heard.store(false, Ordering::Relaxed);
            let asked = tokio::time::timeout_at(deadline, conn.ask(request)).await;
            let response = match asked {
                Err(_elapsed) => return Err(timed_out()),
                Ok(Ok(response)) => response,
                // Closed after `take` looked at it, before a byte of an answer came.
                Ok(Err(e)) if reused && !conn.heard.load(Ordering::Relaxed) && unanswered(&e) => {
                    tracing::debug!(endpoint = %pool.authority, "a kept connection closed before it answered ({e}); sending again on a new one");
                    continue;
                }
                Ok(Err(e)) => return Err(exchange(pool, &e)),
            };
            let answer = answer_of(&response);
            // A connection that closes after this answer is not worth reading to its end.
            if closes(&response) {
                return Ok(answer);
            }
            let mut body = response.into_body();
            let drained = tokio::time::timeout_at(deadline, conn.drain(&mut body)).await;
            if matches!(drained, Ok(true)) && conn.settle() {
                self.keep(conn, pool.max_idle);
            }
            return Ok(answer);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn post_h2(
        &self,
        pool: &Pool,
        mut sender: H2Sender,
        streams: &AtomicUsize,
        headers: HeaderMap,
        body: Bytes,
        deadline: Instant,
        timed_out: impl Fn() -> Failure,
    ) -> Result<Answer, Failure> {
        let request = self.request(Version::HTTP_2, &headers, &body);
        let exchanged = tokio::time::timeout_at(deadline, async {
            let response = sender.send_request(request).await?;
            let answer = answer_of(&response);
            let mut body = response.into_body();
            // The stream is done once its body is: read it, within the limit, and drop it.
            let mut read = 0u64;
            while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                if let Ok(data) = frame?.into_data() {
                    read += data.len() as u64;
                    if read > BODY_LIMIT {
                        break;
                    }
                }
            }
            Ok::<_, hyper::Error>(answer)
        })
        .await;
        streams.fetch_sub(1, Ordering::Relaxed);
        match exchanged {
            Err(_elapsed) => Err(timed_out()),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(exchange(pool, &e)),
        }
    }

    /// The request for one attempt: hyper adds the length from the body.
    fn request(&self, version: Version, headers: &HeaderMap, body: &Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = http::Method::POST;
        *request.version_mut() = version;
        let all = request.headers_mut();
        all.reserve(headers.len() + 2);
        if version == Version::HTTP_2 {
            *request.uri_mut() = self.absolute.clone();
        } else {
            *request.uri_mut() = self.target.clone();
            request.headers_mut().insert(HOST, self.host.clone());
        }
        let all = request.headers_mut();
        all.insert(USER_AGENT, HeaderValue::from_static(crate::USER_AGENT));
        for (name, value) in headers {
            all.append(name, value.clone());
        }
        request
    }

    /// A new connection: TCP, TLS for `https`, and the handshake of the HTTP version the
    /// endpoint took; an HTTP/2 connection gets its task here.
    pub(super) async fn open(&self, pool: &Pool) -> Result<Opened, Failure> {
        let failed = |reason: String| Failure::Connect {
            authority: pool.authority.clone(),
            reason,
        };
        let (stream, took_h2) = pool.open().await?;
        let h2 = match (&pool.tls, self.http2) {
            (Some(_), Http2::Always) if !took_h2 => {
                return Err(failed(
                    "the endpoint did not take h2 in ALPN (http2 = \"always\")".to_owned(),
                ))
            }
            (Some(_), _) => took_h2,
            // No TLS, no ALPN: HTTP/2 with prior knowledge only when told.
            (None, http2) => http2 == Http2::Always,
        };
        self.speaks_h2.store(h2, Ordering::Relaxed);
        self.known.store(true, Ordering::Release);
        if h2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(TokioIo::new(stream))
                .await
                .map_err(|e| failed(format!("HTTP/2: {}", with_causes(&e))))?;
            let authority = pool.authority.clone();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(endpoint = %authority, "an HTTP/2 connection ended: {}", with_causes(&e));
                }
            });
            return Ok(Opened::H2(sender));
        }
        let socket = socket2::SockRef::from(tcp_of(&stream))
            .try_clone()
            .map_err(|e| failed(format!("duplicating the socket: {e}")))?;
        let heard = Arc::new(AtomicBool::new(false));
        let io = TokioIo::new(Heard {
            stream,
            heard: heard.clone(),
        });
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|e| failed(with_causes(&e)))?;
        Ok(Opened::H1(Box::new(H1 {
            sender,
            connection,
            heard,
            socket,
            over: false,
        })))
    }

    /// An HTTP/2 connection with room for a stream, counted as taken, if one is open and
    /// another is not wanted.
    fn pick_h2(&self) -> Option<Picked> {
        let mut h2 = self.h2.lock().expect("the pool's lock is never poisoned");
        h2.retain(|c| !c.sender.is_closed());
        let open = h2.len();
        let least = h2
            .iter()
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))?;
        let load = least.streams.load(Ordering::Relaxed);
        if load >= STREAMS_PER_CONNECTION && open < self.h2_wanted {
            return None;
        }
        least.streams.fetch_add(1, Ordering::Relaxed);
        Some((least.sender.clone(), least.streams.clone()))
    }

    /// Opens another HTTP/2 connection, one opening at a time, and takes a stream of it; None
    /// when the endpoint no longer takes `h2` (its HTTP/1.1 connection is then kept idle).
    async fn open_h2(&self, pool: &Pool) -> Result<Option<Picked>, Failure> {
        let _one = self.opening.lock().await;
        if let Some(picked) = self.pick_h2() {
            return Ok(Some(picked));
        }
        match self.open(pool).await? {
            Opened::H2(sender) => {
                self.add_h2(sender);
                Ok(self.pick_h2())
            }
            Opened::H1(conn) => {
                self.keep(*conn, pool.max_idle);
                Ok(None)
            }
        }
    }

    fn add_h2(&self, sender: H2Sender) {
        self.h2
            .lock()
            .expect("the pool's lock is never poisoned")
            .push(H2Conn {
                sender,
                streams: Arc::new(AtomicUsize::new(0)),
            });
    }

    /// HTTP/2 connections open now.
    fn live_h2(&self) -> usize {
        let h2 = self.h2.lock().expect("the pool's lock is never poisoned");
        h2.iter().filter(|c| !c.sender.is_closed()).count()
    }

    /// The most recently used idle HTTP/1.1 connection not idle too long and to which the
    /// endpoint has sent nothing since its last answer, a close included, if any (see `http`).
    /// Connections are closed outside the lock.
    fn take(&self) -> Option<H1> {
        let now = Instant::now();
        loop {
            let (expired, last) = {
                let mut idle = self.idle.lock().expect("the pool's lock is never poisoned");
                let expired = idle.partition_point(|i| now - i.since >= IDLE_FOR);
                let expired: Vec<IdleH1> = idle.drain(..expired).collect();
                (expired, idle.pop())
            };
            drop(expired);
            let mut last = last?;
            if last.conn.settle() && (now - last.since < LOOK_AFTER || last.conn.untouched()) {
                return Some(last.conn);
            }
        }
    }

    fn keep(&self, conn: H1, max_idle: usize) {
        let mut idle = self.idle.lock().expect("the pool's lock is never poisoned");
        if idle.len() < max_idle {
            idle.push(IdleH1 {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// Idle HTTP/1.1 connections kept now, and HTTP/2 connections open.
    #[cfg(test)]
    pub(super) fn kept(&self) -> (usize, usize) {
        (self.idle.lock().unwrap().len(), self.live_h2())
    }

    /// Says the `i`th idle HTTP/1.1 connection, oldest first, was kept `since`.
    #[cfg(test)]
    pub(super) fn idle_since(&self, i: usize, since: Instant) {
        self.idle.lock().unwrap()[i].since = since;
    }
}

impl H1 {
    /// Sends `request` and waits for its answer's head, driving the connection meanwhile.
    async fn ask(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let mut response = std::pin::pin!(self.sender.send_request(request));
        self.beside(|cx| response.as_mut().poll(cx)).await
    }

    /// Reads the answer's body to its end and drops it; false if it failed or was too big.
    async fn drain(&mut self, body: &mut Incoming) -> bool {
        let mut read = 0u64;
        loop {
            match self.beside(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        read += data.len() as u64;
                        if read > BODY_LIMIT {
                            return false;
                        }
                    }
                }
            }
        }
    }

    /// Polls `work` until it is ready, and the connection beside it so its bytes move. Should
    /// the connection end first, `work` learns so from hyper (its answer fails or its body
    /// ends) and is polled once more at once.
    async fn beside<T>(&mut self, mut work: impl FnMut(&mut Context<'_>) -> Poll<T>) -> T {
        let (connection, over) = (&mut self.connection, &mut self.over);
        poll_fn(|cx| {
            if let Poll::Ready(out) = work(cx) {
                return Poll::Ready(out);
            }
            if !*over && Pin::new(&mut *connection).poll(cx).is_ready() {
                *over = true;
                return work(cx);
            }
            Poll::Pending
        })
        .await
    }

    /// Lets the connection take in what it holds without waiting (a poll with a waker that
    /// does nothing); says whether it can carry another request: not ended, ready for one.
    fn settle(&mut self) -> bool {
        if !self.over {
            let mut cx = Context::from_waker(Waker::noop());
            self.over = Pin::new(&mut self.connection).poll(&mut cx).is_ready();
        }
        !self.over && self.sender.is_ready()
    }

    /// Whether the endpoint has sent nothing since the last answer, a close included: a look
    /// at the socket without reading (`MSG_PEEK`).
    pub(super) fn untouched(&self) -> bool {
        let mut byte = [MaybeUninit::uninit()];
        match self.socket.peek(&mut byte) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            Ok(_) => false,
        }
    }
}

/// The stream of an HTTP/1.1 connection, saying when a byte of an answer arrives.
struct Heard {
    stream: Stream,
    heard: Arc<AtomicBool>,
}

impl AsyncRead for Heard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.heard.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncWrite for Heard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn answer_of(response: &Response<Incoming>) -> Answer {
    Answer {
        status: response.status().as_u16(),
        retry_after: response.headers().get(RETRY_AFTER).cloned(),
    }
}

/// Whether the endpoint will close the connection after `response` (HTTP/1.0 does unless
/// asked not to, which this client does not ask).
/// Nor is one whose body ends only at the close (neither a length nor an encoding), or that
/// has both, a sign of a confused intermediary (RFC 9112, 6.3).
fn closes(response: &Response<Incoming>) -> bool {
    let headers = response.headers();
    let (length, encoded) = (
        headers.contains_key(CONTENT_LENGTH),
        headers.contains_key(TRANSFER_ENCODING),
    );
    let to_the_close = !length && !encoded && !response.body().is_end_stream();
    response.version() == Version::HTTP_10
        || to_the_close
        || (length && encoded)
        || headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

/// Whether hyper's error says the connection ended before any of an answer came, rather than
/// the answer being wrong.
fn unanswered(e: &hyper::Error) -> bool {
    let io_closed = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(closed);
    e.is_incomplete_message() || e.is_canceled() || e.is_closed() || io_closed
}

fn exchange(pool: &Pool, e: &hyper::Error) -> Failure {
    let kind = if unanswered(e) {
        io::ErrorKind::UnexpectedEof
    } else {
        io::ErrorKind::InvalidData
    };
    Failure::Exchange {
        authority: pool.authority.clone(),
        source: io::Error::new(kind, with_causes(e)),
    }
}
