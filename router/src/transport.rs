//! Transport: the HTTP/1.1 connections deliveries go out on, a small pool of them per endpoint.
//!
//! Owns connecting (TCP as hyper-util connects, both address families raced; then TLS with the
//! system's roots for `https`), keeping idle connections for the next request, and one POST's
//! round trip within the attempt's time: write it, read the status and `Retry-After`, and read
//! the body to its end so the connection can be used again. It must not decide what a status
//! means (`retry` does) or sign anything (`signer`, `sigv4`). It follows no redirect: a 3xx is
//! an answer like any other, which `retry` dead-letters (followed, a 301/302/303 turns the
//! signed POST into a GET without the events, and its 2xx would count them as delivered).
//!
//! The client half of HTTP/1.1 is written here, on `httparse`, and driven by the request's own
//! task: a request is one vectored write of its head and body, then reads until its answer has
//! been parsed and its body skipped. Unbatched, delivery sends a request per event. Side by side
//! against the bench sink, a load client on reqwest took 22-26 CPU µs per request, one on
//! hyper's connection API (a task per connection, a channel to it and back per request) 11-13,
//! and a raw write with `httparse` 9
//! (`bench/runs/2026-11-23T0830-load-client-reqwest-hyper-raw.txt`). reqwest stays for Discord's
//! REST API. Not supported, unlike reqwest: proxies from `HTTPS_PROXY` and the like (delivery
//! connects to endpoints directly), and HTTP/2 (a pool of HTTP/1.1 connections, one request
//! each at a time, up to the endpoint's `max_in_flight`).
//!
//! No task watches an idle connection, so what the endpoint did to one meanwhile is found out
//! when it is next taken. First a poll of the stream that costs no system call (tokio's
//! readiness, and whatever rustls holds): anything readable, a close included, and the
//! connection is dropped. Then, for a connection idle a second or more (`LOOK_AFTER`), a look at
//! the socket itself without reading (`MSG_PEEK`), for what tokio's driver has not polled yet.
//! The endpoint can still close a kept connection just as a request goes out; one that ends
//! before any byte of an answer is then replaced once and the request sent again on a new one.
//! The endpoint may have read it, so it can see a `webhook-id` twice, as it can after any retry
//! (Go's client does the same for requests with an idempotency key, which `webhook-id` is).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::either::Either;
use tower_service::Service;

/// How long an idle connection is kept for reuse.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long a connection can have been idle and be taken without a look at its socket first.
/// Servers close idle connections after seconds (Node 5 s, nginx 75 s); a busy endpoint's
/// connections are idle for microseconds, and a look is a system call per request.
const LOOK_AFTER: Duration = Duration::from_secs(1);
/// The most of an answer's body read to keep its connection; past it the connection is closed
/// (the status stands).
const BODY_LIMIT: u64 = 1 << 20;
/// The longest answer head (status line and headers) taken, and the longest chunk-size or
/// trailer line.
const HEAD_LIMIT: usize = 64 << 10;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 100;
/// What a connection's read buffer starts with, and how much room a read is given.
const READ_ROOM: usize = 4 << 10;

/// Why a round trip failed. The request may have reached the endpoint for `Timeout` and
/// `Transport`; for `Connect` only when it went out once on a kept connection that the endpoint
/// closed without answering, before a new connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// No connection: the name did not resolve, the port refused, or TLS failed.
    #[error("could not connect to {authority}: {reason}")]
    Connect { authority: String, reason: String },
    /// No answer (its status line and headers) within the attempt's time.
    #[error("no answer from {authority} within {timeout:?}")]
    Timeout {
        authority: String,
        timeout: Duration,
    },
    /// The connection failed while the request or its answer was on its way, or the answer was
    /// not HTTP.
    #[error("the exchange with {authority} failed: {source}")]
    Transport {
        authority: String,
        #[source]
        source: io::Error,
    },
}

/// What came back, as much of it as delivery uses.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<HeaderValue>,
}

/// The `User-Agent` of every HTTP request the router makes.
pub const USER_AGENT: &str = concat!("shardhook/", env!("CARGO_PKG_VERSION"));

/// TLS settings shared by every endpoint's pool.
pub type Tls = Arc<rustls::ClientConfig>;

/// The TLS settings every HTTPS client of the router uses (delivery, and reqwest for Discord's
/// REST API): the platform's verifier and roots, as reqwest had by default, and HTTP/1.1.
/// Built once per process: the verifier holds the system's roots, about a megabyte.
pub fn platform_tls() -> Result<Tls, rustls::Error> {
    static TLS: std::sync::OnceLock<Result<Tls, rustls::Error>> = std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    })
    .clone()
}

/// `tls` for a client that speaks HTTP/2 as well: reqwest, for Discord's REST API.
pub fn with_http2(tls: &Tls) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::clone(tls);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// One endpoint's connections: where they go and the idle ones.
pub struct Pool {
    /// `host[:port]`, as the `Host` header carries it and as errors name the endpoint.
    authority: String,
    /// `path?query`, as the request line carries it.
    target: String,
    /// The start of every request's head: its request line, `Host` and `User-Agent`.
    preamble: Box<[u8]>,
    tls: Option<(Tls, rustls::pki_types::ServerName<'static>)>,
    /// TCP connections: DNS, both address families raced, keepalive, Nagle off.
    connector: HttpConnector,
    /// `scheme://authority`, what `connector` is asked for.
    origin: Uri,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .field("target", &self.target)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a URL cannot be a delivery target.
#[derive(Debug, thiserror::Error)]
pub enum BadUrl {
    #[error("{0}: only http and https URLs can be endpoints")]
    Scheme(String),
    #[error("{0}: no host")]
    NoHost(String),
    #[error("{url}: {reason}")]
    Invalid { url: String, reason: String },
}

impl Pool {
    /// A pool for `url`, keeping at most `max_idle` idle connections (the endpoint's in-flight
    /// cap: more could never be busy at once).
    pub fn new(url: &reqwest::Url, max_idle: usize, tls: &Tls) -> Result<Pool, BadUrl> {
        let invalid = |reason: String| BadUrl::Invalid {
            url: url.to_string(),
            reason,
        };
        let secure = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(BadUrl::Scheme(url.to_string())),
        };
        let host = url
            .host_str()
            .ok_or_else(|| BadUrl::NoHost(url.to_string()))?;
        let authority = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        // `host_str` keeps an IPv6 literal's brackets, which a TLS server name does not have.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = if secure {
            let name = rustls::pki_types::ServerName::try_from(bare)
                .map_err(|e| invalid(format!("not a TLS server name: {e}")))?;
            Some((tls.clone(), name))
        } else {
            None
        };
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        // Requests are small and each waits for its answer: Nagle would hold them back.
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(15)));
        let origin = format!("{}://{}", url.scheme(), authority);
        // The URL parser has percent-encoded anything a request line or header cannot carry.
        let preamble =
            format!("POST {target} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: {USER_AGENT}\r\n");
        Ok(Pool {
            connector,
            origin: Uri::try_from(origin).map_err(|e| invalid(e.to_string()))?,
            preamble: preamble.into_bytes().into_boxed_slice(),
            authority,
            target,
            tls,
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// POSTs `body` with `headers` (the pool adds `Host`, `User-Agent` and the length) and
    /// reads the answer to its end, all within `timeout`. A kept connection the endpoint has
    /// closed meanwhile is replaced (see the module's doc). Once the status is in, it is the
    /// answer: a body that is too slow or too big only costs the connection.
    pub async fn post(
        &self,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let deadline = Instant::now() + timeout;
        let (mut conn, head) = tokio::time::timeout_at(deadline, self.exchange(&headers, &body))
            .await
            .map_err(|_elapsed| Failure::Timeout {
                authority: self.authority.clone(),
                timeout,
            })??;
        // A connection that closes after this answer is not worth reading to its end.
        if !head.close {
            let skipped = tokio::time::timeout_at(deadline, conn.skip_body(head.body)).await;
            if matches!(skipped, Ok(Ok(()))) && conn.read.is_empty() {
                self.keep(conn);
            }
        }
        Ok(Answer {
            status: head.status,
            retry_after: head.retry_after,
        })
    }

    /// Sends the request and reads its answer's head, on a kept connection or a new one.
    async fn exchange(&self, headers: &HeaderMap, body: &[u8]) -> Result<(Conn, Head), Failure> {
        let mut kept = self.take();
        loop {
            let reused = kept.is_some();
            let mut conn = match kept.take() {
                Some(conn) => conn,
                // Boxed: connecting (TLS especially) is a big future, rare once connections
                // are kept, and inline it would make every shard's delivery task that much
                // bigger, busy or idle.
                None => Box::pin(self.connect()).await?,
            };
            match conn.ask(&self.preamble, headers, body).await {
                Ok(head) => return Ok((conn, head)),
                // Closed after `take` looked at it, before a byte of an answer came.
                Err(e) if reused && !conn.heard && closed(&e) => {
                    tracing::debug!(endpoint = %self.authority, "a kept connection closed before it answered ({e}); sending again on a new one");
                    continue;
                }
                Err(source) => {
                    return Err(Failure::Transport {
                        authority: self.authority.clone(),
                        source,
                    })
                }
            }
        }
    }

    /// The most recently used idle connection not idle too long and to which the endpoint has
    /// sent nothing since its last answer, a close included, if any. Connections are closed
    /// outside the pool's lock.
    fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let (expired, last) = {
                let mut idle = self.idle.lock().expect("the pool's lock is never poisoned");
                // Oldest first: close those kept too long.
                let expired = idle.partition_point(|i| now - i.since >= IDLE_FOR);
                let expired: Vec<Idle> = idle.drain(..expired).collect();
                (expired, idle.pop())
            };
            drop(expired);
            let mut last = last?;
            if last.conn.quiet() && (now - last.since < LOOK_AFTER || last.conn.untouched()) {
                return Some(last.conn);
            }
        }
    }

    fn keep(&self, conn: Conn) {
        let mut idle = self.idle.lock().expect("the pool's lock is never poisoned");
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A new connection: TCP, then TLS for `https`.
    async fn connect(&self) -> Result<Conn, Failure> {
        let failed = |reason: String| Failure::Connect {
            authority: self.authority.clone(),
            reason,
        };
        let tcp = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| failed(with_causes(&e)))?
            .into_inner();
        let stream = match &self.tls {
            None => Either::Left(tcp),
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| failed(format!("TLS: {e}")))?;
                Either::Right(Box::new(tls))
            }
        };
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_ROOM),
            head: Vec::new(),
            heard: false,
        })
    }

    /// Idle connections kept now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

/// Whether `e` says the connection ended (rather than the answer being wrong).
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// TLS settings that trust no certificate at all: for tests, which must not depend on the
/// machine's roots.
#[cfg(test)]
pub(crate) fn trusting(roots: rustls::RootCertStore) -> Tls {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// `error` and what caused it, down the chain: hyper-util's connect error says only "tcp
/// connect error", its cause which address refused.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// The bytes of a connection, plain or inside TLS; tokio-util's `Either` passes reads and
/// writes (vectored too) to whichever it is.
type Stream = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// The TCP connection under `stream`.
fn tcp_of(stream: &Stream) -> &TcpStream {
    match stream {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// One HTTP/1.1 connection and its buffers, kept with it for the next request.
struct Conn {
    stream: Stream,
    /// Bytes read and not yet taken: empty between exchanges on a connection fit to keep.
    read: BytesMut,
    /// The request head being written; its allocation serves every request on the connection.
    head: Vec<u8>,
    /// Some of an answer to the request being sent has come (so it reached the endpoint).
    heard: bool,
}

/// An answer's head, as much of it as the transport uses.
#[derive(Debug)]
struct Head {
    status: u16,
    retry_after: Option<HeaderValue>,
    body: Framing,
    /// The endpoint will close the connection after this answer.
    close: bool,
}

/// Where an answer's body ends (RFC 9112, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// At the connection's close: the connection cannot be kept.
    Close,
}

impl Conn {
    /// Whether the stream has nothing to read, as far as tokio's driver and rustls know: one
    /// poll with a waker that does nothing, which makes no system call unless tokio thinks the
    /// socket is readable. Pending is the only good answer: bytes, an end or an error all mean
    /// the connection cannot carry another exchange.
    fn quiet(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(&mut self.stream)
            .poll_read(&mut cx, &mut buf)
            .is_pending()
    }

    /// Whether the endpoint has sent nothing since the last answer, a close included. Looks
    /// without reading (`MSG_PEEK`), at the socket itself: tokio's readiness knows only what
    /// its driver has polled.
    fn untouched(&self) -> bool {
        let mut byte = [MaybeUninit::uninit()];
        match socket2::SockRef::from(tcp_of(&self.stream)).peek(&mut byte) {
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
            // A close (0), or bytes nobody asked for.
            Ok(_) => false,
        }
    }

    /// Writes the request and reads its answer's head. An endpoint may answer before it has
    /// read the whole request (a 413 for a body too big) and close: when the write fails, the
    /// answer is looked for all the same.
    async fn ask(&mut self, preamble: &[u8], headers: &HeaderMap, body: &[u8]) -> io::Result<Head> {
        self.heard = false;
        if let Err(e) = self.send(preamble, headers, body).await {
            if !closed(&e) {
                return Err(context("sending the request", e));
            }
            return match self.read_head().await {
                Ok(head) => Ok(Head {
                    close: true,
                    ..head
                }),
                Err(_) => Err(context("sending the request", e)),
            };
        }
        self.read_head().await
    }

    /// Writes the request: its head, built in `head`, and `body`, in vectored writes.
    async fn send(&mut self, preamble: &[u8], headers: &HeaderMap, body: &[u8]) -> io::Result<()> {
        self.head.clear();
        self.head.extend_from_slice(preamble);
        self.head.extend_from_slice(b"content-length: ");
        self.head
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.head.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            self.head.extend_from_slice(name.as_str().as_bytes());
            self.head.extend_from_slice(b": ");
            self.head.extend_from_slice(value.as_bytes());
            self.head.extend_from_slice(b"\r\n");
        }
        self.head.extend_from_slice(b"\r\n");
        let (mut head, mut body) = (&self.head[..], body);
        while !head.is_empty() || !body.is_empty() {
            let written = self
                .stream
                .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
                .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            let of_head = written.min(head.len());
            head = &head[of_head..];
            body = &body[written - of_head..];
        }
        self.stream.flush().await
    }

    /// Reads until an answer's head is in, past any 1xx interim answers.
    async fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if !self.read.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut parsed = httparse::Response::new(&mut headers);
                match parsed.parse(&self.read) {
                    Ok(httparse::Status::Complete(length)) => {
                        let head = Head::of(&parsed)?;
                        self.read.advance(length);
                        match head {
                            Some(head) => return Ok(head),
                            None => continue,
                        }
                    }
                    Ok(httparse::Status::Partial) if self.read.len() > HEAD_LIMIT => {
                        return Err(not_http(format!(
                            "an answer head longer than {HEAD_LIMIT} bytes"
                        )))
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(e) => return Err(not_http(format!("the answer is not HTTP/1.1: {e}"))),
                }
            }
            self.fill("before it answered").await?;
        }
    }

    /// Reads what the endpoint sent next onto `read`; the end of the stream is an error, said
    /// to have come `when`.
    async fn fill(&mut self, when: &str) -> io::Result<()> {
        if self.read.capacity() - self.read.len() < READ_ROOM / 4 {
            self.read.reserve(READ_ROOM);
        }
        match self.stream.read_buf(&mut self.read).await {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the endpoint closed the connection {when}"),
            )),
            Ok(_) => {
                self.heard = true;
                Ok(())
            }
            Err(e) => Err(context(&format!("reading {when}"), e)),
        }
    }

    /// Reads an answer's body to its end and drops it. An error leaves the connection unfit
    /// to keep.
    async fn skip_body(&mut self, framing: Framing) -> io::Result<()> {
        match framing {
            Framing::Empty => Ok(()),
            Framing::Length(length) if length > BODY_LIMIT => Err(too_big()),
            Framing::Length(length) => self.skip(length).await,
            Framing::Chunked => self.skip_chunks().await,
            // Nothing reusable is left of the connection once this body ends.
            Framing::Close => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }

    /// Drops the next `length` bytes of the stream.
    async fn skip(&mut self, mut length: u64) -> io::Result<()> {
        loop {
            let here = length.min(self.read.len() as u64);
            self.read.advance(here as usize);
            length -= here;
            if length == 0 {
                return Ok(());
            }
            self.fill("in the middle of an answer's body").await?;
        }
    }

    /// Drops a chunked body and its trailers.
    async fn skip_chunks(&mut self) -> io::Result<()> {
        let mut total = 0;
        loop {
            match httparse::parse_chunk_size(&self.read) {
                Ok(httparse::Status::Complete((used, 0))) => {
                    self.read.advance(used);
                    break;
                }
                Ok(httparse::Status::Complete((used, size))) => {
                    if size > BODY_LIMIT - total {
                        return Err(too_big());
                    }
                    total += size;
                    self.read.advance(used);
                    self.skip(size).await?;
                    while self.read.len() < 2 {
                        self.fill("in a chunked body").await?;
                    }
                    if self.read[..2] != *b"\r\n" {
                        return Err(not_http("a chunk not followed by a line end".to_owned()));
                    }
                    self.read.advance(2);
                }
                Ok(httparse::Status::Partial) if self.read.len() > HEAD_LIMIT => {
                    return Err(not_http("a chunk size line too long".to_owned()))
                }
                Ok(httparse::Status::Partial) => self.fill("in a chunked body").await?,
                Err(_) => return Err(not_http("a chunk size that is not hex".to_owned())),
            }
        }
        // Trailers, each a line, to an empty line.
        loop {
            match self.read.windows(2).position(|w| w == b"\r\n") {
                Some(0) => {
                    self.read.advance(2);
                    return Ok(());
                }
                Some(end) => self.read.advance(end + 2),
                None if self.read.len() > HEAD_LIMIT => {
                    return Err(not_http("a trailer line too long".to_owned()))
                }
                None => self.fill("in a chunked body's trailers").await?,
            }
        }
    }
}

impl Head {
    /// The head of a final answer, or None for an interim (1xx) one.
    fn of(parsed: &httparse::Response<'_, '_>) -> io::Result<Option<Head>> {
        let status = parsed.code.expect("a complete parse has a status");
        match status {
            101 => return Err(not_http("an upgrade (101) to another protocol".to_owned())),
            100..=199 => return Ok(None),
            _ => {}
        }
        let mut head = Head {
            status,
            retry_after: None,
            body: Framing::Close,
            // HTTP/1.0 closes unless asked not to, which this client does not ask.
            close: parsed.version == Some(0),
        };
        let (mut length, mut chunked, mut encoded) = (None, false, false);
        for header in parsed.headers.iter() {
            let value = header.value;
            if header.name.eq_ignore_ascii_case("content-length") {
                // A list of the same length is allowed (RFC 9110, 8.6).
                for item in value.split(|&b| b == b',') {
                    let parsed = decimal(item.trim_ascii()).ok_or_else(|| {
                        not_http("a content-length that is not a number".to_owned())
                    })?;
                    if length.is_some_and(|l| l != parsed) {
                        return Err(not_http("two different content-lengths".to_owned()));
                    }
                    length = Some(parsed);
                }
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                encoded = true;
                // Chunked only when it is the last coding applied.
                chunked = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if header.name.eq_ignore_ascii_case("connection") {
                head.close |= value
                    .split(|&b| b == b',')
                    .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
            } else if header.name.eq_ignore_ascii_case("retry-after") {
                head.retry_after = HeaderValue::from_bytes(value).ok();
            }
        }
        // Both: framed by the encoding, but a sign of a confused intermediary (RFC 9112, 6.3).
        head.close |= encoded && length.is_some();
        head.body = match (status, encoded, length) {
            (204 | 304, _, _) => Framing::Empty,
            (_, true, _) if chunked => Framing::Chunked,
            (_, true, _) => Framing::Close,
            (_, false, Some(0)) => Framing::Empty,
            (_, false, Some(length)) => Framing::Length(length),
            (_, false, None) => Framing::Close,
        };
        Ok(Some(head))
    }
}

/// Digits only: `u64::from_str` would also take a sign.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `e`, saying what was being done, of the same kind (which `closed` reads).
fn context(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn not_http(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("an answer body over {BODY_LIMIT} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Time enough for anything a test server answers at once.
    const ENOUGH: Duration = Duration::from_secs(30);

    fn pool(url: &str, max_idle: usize) -> Pool {
        let tls = trusting(rustls::RootCertStore::empty());
        Pool::new(&reqwest::Url::parse(url).unwrap(), max_idle, &tls).unwrap()
    }

    /// A listener on a free loopback port, and the `http` URL of its root.
    async fn listen() -> (TcpListener, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        (listener, url)
    }

    /// One POST with an empty body through a pool of its own.
    async fn post_once(url: &str) -> Result<Answer, Failure> {
        pool(url, 4).post(headers(), Bytes::new(), ENOUGH).await
    }

    fn headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("webhook-id", HeaderValue::from_static("msg_1"));
        h
    }

    /// Reads one request (head and `content-length` body) from `tcp`; None at end of stream.
    async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(buf[..end + 4].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let body = String::from_utf8(buf[end + 4..end + 4 + length].to_vec()).unwrap();
                    buf.drain(..end + 4 + length);
                    return Some(format!("{head}{body}"));
                }
            }
            let mut chunk = [0u8; 4096];
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A server that answers every request on every connection with `answer`, counting
    /// connections, and sending each request's text on `seen`.
    async fn serve(
        answer: &'static [u8],
    ) -> (
        String,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook?x=1", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (seen, rx) = tokio::sync::mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(request) = read_request(&mut tcp, &mut buf).await {
                        let _ = seen.send(request);
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted, rx)
    }

    #[tokio::test]
    async fn a_post_carries_host_path_headers_and_body_and_its_connection_is_reused() {
        let (url, accepted, mut seen) = serve(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let pool = pool(&url, 4);
        for _ in 0..3 {
            let answer = pool
                .post(headers(), Bytes::from_static(b"{\"a\":1}"), ENOUGH)
                .await
                .unwrap();
            assert_eq!(answer.status, 204);
        }
        let request = seen.recv().await.unwrap();
        let authority = url.trim_start_matches("http://").split('/').next().unwrap();
        assert!(
            request.starts_with("POST /hook?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("host: {authority}\r\n")),
            "{request}"
        );
        assert!(request.contains("webhook-id: msg_1\r\n"), "{request}");
        assert!(request.contains("user-agent: shardhook/"), "{request}");
        assert_eq!(request.matches("content-length").count(), 1, "{request}");
        assert!(request.contains("content-length: 7\r\n"), "{request}");
        assert!(request.ends_with("\r\n\r\n{\"a\":1}"), "{request}");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, kept");
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn status_retry_after_and_a_chunked_body_are_read_and_the_connection_kept() {
        let (answers, accepted, _kept) = two_posts_answered(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n5\r\nslow \r\n5\r\ndown!\r\n0\r\n\r\n",
        )
        .await;
        for answer in answers {
            assert_eq!(
                answer,
                Answer {
                    status: 429,
                    retry_after: Some(HeaderValue::from_static("7")),
                }
            );
        }
        assert_eq!(accepted, 1);
    }

    /// Two posts through one pool to a server answering each with `answer`: the answers, how
    /// many connections the server accepted, and how many the pool keeps at the end.
    async fn two_posts_answered(answer: &'static [u8]) -> ([Answer; 2], usize, usize) {
        let (url, accepted, _seen) = serve(answer).await;
        let pool = pool(&url, 4);
        let first = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
        let second = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
        (
            [first, second],
            accepted.load(Ordering::SeqCst),
            pool.idle(),
        )
    }

    #[tokio::test]
    async fn an_interim_answer_is_passed_over_and_a_sized_body_read_to_keep_the_connection() {
        let (answers, accepted, kept) = two_posts_answered(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
        )
        .await;
        assert_eq!(answers.map(|a| a.status), [200, 200]);
        assert_eq!((accepted, kept), (1, 1));
    }

    #[tokio::test]
    async fn an_answer_that_leaves_its_connection_unfit_costs_it_and_its_status_stands() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nconnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nto the end of the stream",
            // A chunk size that would overflow the body's total; a chunk longer than it says.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\nffffffffffffffff\r\nyy0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nxyz\r\n0\r\n\r\n",
            // Both framings.
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n0\r\n\r\n",
        ] {
            let (answers, accepted, kept) = two_posts_answered(answer).await;
            assert_eq!(answers.map(|a| a.status), [200, 200]);
            assert_eq!((accepted, kept), (2, 0), "{answer:?}");
        }
    }

    #[tokio::test]
    async fn a_signed_or_doubled_length_is_a_transport_failure_saying_so() {
        for (answer, says) in [
            (
                &b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nab"[..],
                "a content-length that is not a number",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
                "two different content-lengths",
            ),
        ] {
            let (url, _accepted, _seen) = serve(answer).await;
            let failure = post_once(&url).await.unwrap_err();
            assert!(failure.to_string().contains(says), "{failure}");
        }
    }

    #[tokio::test]
    async fn an_answer_sent_before_the_body_was_read_is_the_answer() {
        // The endpoint answers 413 from the head alone and closes without reading the body.
        let (listener, url) = listen().await;
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let _ = tcp.read(&mut [0u8; 1024]).await.unwrap();
            tcp.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let pool = pool(&url, 4);
        let body = Bytes::from(vec![b'a'; 8 << 20]);
        let answer = pool.post(headers(), body, ENOUGH).await.unwrap();
        assert_eq!(answer.status, 413);
        assert_eq!(pool.idle(), 0);
    }

    /// A server whose first connection answers its first request with 204 and its second with
    /// `then`, then closes; later connections answer 204. Counts connections.
    async fn serve_then_break(then: &'static [u8]) -> (String, Arc<AtomicUsize>) {
        let (listener, url) = listen().await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while read_request(&mut tcp, &mut buf).await.is_some() {
                        tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                            .await
                            .unwrap();
                        if first {
                            read_request(&mut tcp, &mut buf).await.unwrap();
                            tcp.write_all(then).await.unwrap();
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn a_kept_connection_that_closes_part_way_through_an_answer_is_not_sent_again() {
        for then in [&b"HTTP/1.1 2"[..], b"HTTP/1.1 100 Continue\r\n\r\n"] {
            let (url, accepted) = serve_then_break(then).await;
            let pool = pool(&url, 4);
            assert_eq!(
                pool.post(headers(), Bytes::new(), ENOUGH)
                    .await
                    .unwrap()
                    .status,
                204
            );
            let failure = pool
                .post(headers(), Bytes::new(), ENOUGH)
                .await
                .unwrap_err();
            assert!(matches!(failure, Failure::Transport { .. }), "{failure:?}");
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                1,
                "{then:?}: not sent again"
            );
        }
    }

    #[tokio::test]
    async fn an_idle_connection_the_endpoint_wrote_to_unasked_is_not_used() {
        // Each connection answers, then, on cue, sends two stray bytes, as a server writing a
        // 204's "body" on its own would.
        let (listener, url) = listen().await;
        let (cue, cued) = tokio::sync::mpsc::unbounded_channel::<()>();
        let cued = Arc::new(tokio::sync::Mutex::new(cued));
        let (wrote, mut stray) = tokio::sync::mpsc::unbounded_channel::<()>();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (wrote, cued) = (wrote.clone(), cued.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while read_request(&mut tcp, &mut buf).await.is_some() {
                        tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                            .await
                            .unwrap();
                        cued.lock().await.recv().await.unwrap();
                        tcp.write_all(b"ok").await.unwrap();
                        wrote.send(()).unwrap();
                    }
                });
            }
        });
        let pool = pool(&url, 4);
        for round in 1..=3 {
            let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
            assert_eq!(answer.status, 204, "round {round}");
            cue.send(()).unwrap();
            stray.recv().await.unwrap();
            // Idle long enough to be looked at: the bytes are in the socket, whatever tokio's
            // driver has seen of them.
            pool.idle.lock().unwrap()[0].since = Instant::now() - LOOK_AFTER;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_look_at_the_socket_sees_bytes_and_a_close_that_tokio_has_not_polled() {
        let (listener, url) = listen().await;
        let pool = pool(&url, 1);
        let conn = pool.connect().await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(conn.untouched());
        // No await in between that could let tokio's driver poll the client's socket: only
        // the socket itself knows.
        server.try_write(b"x").unwrap();
        assert!(!conn.untouched(), "bytes");
        let conn = pool.connect().await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        assert!(conn.untouched());
        drop(server);
        assert!(!conn.untouched(), "a close");
    }

    #[tokio::test]
    async fn what_rustls_holds_past_an_answer_keeps_its_connection_from_being_used() {
        // An answer exactly as long as a read takes, then a stale one in the same TLS record:
        // rustls holds its plaintext after the first answer has been read.
        let head = |length: usize| format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
        let length = READ_ROOM - head(READ_ROOM).len();
        let mut answer = head(length).into_bytes();
        answer.resize(READ_ROOM, b'x');
        answer.extend_from_slice(b"HTTP/1.1 500 Stale\r\ncontent-length: 0\r\n\r\n");
        let answer: &'static [u8] = answer.leak();
        let (url, tls, handshakes) = serve_tls_answering(answer).await;
        posts_over_tls(&url, &tls, 2, 200).await;
        assert_eq!(handshakes.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_list_of_one_length_keeps_the_connection() {
        let (answers, accepted, kept) =
            two_posts_answered(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok").await;
        assert_eq!(answers.map(|a| a.status), [200, 200]);
        assert_eq!((accepted, kept), (1, 1));
    }

    #[tokio::test]
    async fn the_body_of_an_answer_that_closes_is_not_waited_for() {
        let url = serve_then_stall(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 10\r\n\r\nonly".to_vec(),
        )
        .await;
        let pool = pool(&url, 4);
        // Were the body read, the post would last until its deadline, an hour from now.
        let post = pool.post(headers(), Bytes::new(), Duration::from_secs(3600));
        let answer = tokio::time::timeout(ENOUGH, post).await.unwrap().unwrap();
        assert_eq!(answer.status, 200);
    }

    /// A server that answers one request per connection and keeps the connection open until
    /// told to close its write half (it says when it has), counting requests that still come
    /// on it as `late`.
    async fn serve_then_close_on_cue() -> (
        String,
        Arc<AtomicUsize>,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::UnboundedSender<()>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let (listener, url) = listen().await;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let late = Arc::new(AtomicUsize::new(0));
        let late_count = late.clone();
        let (cue, mut cued) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                read_request(&mut tcp, &mut buf).await.unwrap();
                tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .unwrap();
                cued.recv().await.unwrap();
                // Half closed: a request written to it after all would still be read, and
                // counted as sent where it should not have been.
                tcp.shutdown().await.unwrap();
                closed_tx.send(()).unwrap();
                let late = late_count.clone();
                tokio::spawn(async move {
                    if read_request(&mut tcp, &mut buf).await.is_some() {
                        late.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        (url, accepted, late, cue, closed)
    }

    #[tokio::test]
    async fn a_kept_connection_the_endpoint_closed_is_replaced_without_an_error() {
        let (url, accepted, late, cue, mut closed) = serve_then_close_on_cue().await;
        let pool = pool(&url, 4);
        for round in 1..=3 {
            let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
            assert_eq!(answer.status, 204, "round {round}");
            assert_eq!(pool.idle(), 1, "kept after round {round}");
            cue.send(()).unwrap();
            closed.recv().await.unwrap();
            // Idle long enough to be looked at before it is taken.
            pool.idle.lock().unwrap()[0].since = Instant::now() - LOOK_AFTER;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(
            late.load(Ordering::SeqCst),
            0,
            "nothing sent to a closed connection"
        );
    }

    #[tokio::test]
    async fn a_kept_connection_closed_as_the_request_arrives_is_replaced_and_the_request_sent_again(
    ) {
        // The first connection reads a second request and closes without a word: the endpoint
        // closing a kept connection after the pool's look at it, as the request arrives.
        let (url, accepted) = serve_then_break(b"").await;
        let pool = pool(&url, 4);
        for round in 1..=3 {
            let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
            assert_eq!(answer.status, 204, "round {round}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "replaced once");
    }

    #[tokio::test]
    async fn a_kept_connection_is_replaced_once_only() {
        // Every connection closes when its first request has been read: a new one does too.
        let (listener, url) = listen().await;
        let (first, mut answered) = tokio::sync::mpsc::unbounded_channel::<()>();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let mut buf = Vec::new();
                read_request(&mut tcp, &mut buf).await.unwrap();
                if n == 0 {
                    tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                        .await
                        .unwrap();
                    first.send(()).unwrap();
                    read_request(&mut tcp, &mut buf).await.unwrap();
                }
            }
        });
        let pool = pool(&url, 4);
        pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
        answered.recv().await.unwrap();
        let failure = pool
            .post(headers(), Bytes::new(), ENOUGH)
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Transport { .. }), "{failure:?}");
        assert!(
            failure
                .to_string()
                .contains("closed the connection before it answered"),
            "{failure}"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the kept one, one new one"
        );
    }

    #[tokio::test]
    async fn garbage_instead_of_http_is_a_transport_failure_naming_the_endpoint() {
        let (url, _accepted, _seen) = serve(b"SMTP ready, not HTTP at all\r\n\r\n").await;
        let pool = pool(&url, 4);
        let failure = pool
            .post(headers(), Bytes::new(), ENOUGH)
            .await
            .unwrap_err();
        let authority = url.trim_start_matches("http://").split('/').next().unwrap();
        assert!(
            matches!(&failure, Failure::Transport { authority: a, .. } if a == authority),
            "{failure:?}"
        );
        assert!(failure.to_string().contains(authority), "{failure}");
        assert_eq!(pool.idle(), 0, "a broken connection is not kept");
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_a_transport_failure() {
        let (listener, url) = listen().await;
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_request(&mut tcp, &mut Vec::new()).await.unwrap();
        });
        let failure = post_once(&url).await.unwrap_err();
        assert!(matches!(failure, Failure::Transport { .. }), "{failure:?}");
    }

    #[tokio::test]
    async fn a_refused_port_is_a_connect_failure() {
        let (listener, url) = listen().await;
        drop(listener);
        let failure = post_once(&url).await.unwrap_err();
        assert!(matches!(failure, Failure::Connect { .. }), "{failure:?}");
        assert!(failure.to_string().contains("refused"), "{failure}");
    }

    #[tokio::test]
    async fn no_more_idle_connections_are_kept_than_the_cap() {
        let (url, accepted, _seen) = serve(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let pool = pool(&url, 2);
        let posts = (0..5).map(|_| pool.post(headers(), Bytes::new(), ENOUGH));
        for answer in futures_util::future::join_all(posts).await {
            assert_eq!(answer.unwrap().status, 204);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            5,
            "five at once, five connections"
        );
        assert_eq!(pool.idle(), 2);
    }

    /// An https endpoint with a certificate for `localhost` from a test CA
    /// (`router/testdata/tls-*.pem`, valid until 2126), answering 204; and TLS settings that
    /// trust that CA alone.
    async fn serve_tls() -> (String, Tls, Arc<AtomicUsize>) {
        serve_tls_answering(b"HTTP/1.1 204 No Content\r\n\r\n").await
    }

    /// `n` posts to `url` through one pool with `tls`, each answered with `status`.
    async fn posts_over_tls(url: &str, tls: &Tls, n: usize, status: u16) {
        let pool = Pool::new(&reqwest::Url::parse(url).unwrap(), 2, tls).unwrap();
        for _ in 0..n {
            let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
            assert_eq!(answer.status, status);
        }
    }

    /// `serve_tls`, answering every request with `answer`.
    async fn serve_tls_answering(answer: &'static [u8]) -> (String, Tls, Arc<AtomicUsize>) {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cert = CertificateDer::from_pem_slice(include_bytes!("../testdata/tls-localhost.pem"))
            .unwrap();
        let key =
            PrivateKeyDer::from_pem_slice(include_bytes!("../testdata/tls-localhost.key")).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(include_bytes!("../testdata/tls-ca.pem")).unwrap())
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/",
            listener.local_addr().unwrap().port()
        );
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, count) = (acceptor.clone(), count.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    count.fetch_add(1, Ordering::SeqCst);
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        // Bodies here are empty: a request ends with its head.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            tls.write_all(answer).await.unwrap();
                        }
                    }
                });
            }
        });
        (url, Arc::new(client), handshakes)
    }

    #[tokio::test]
    async fn an_https_endpoint_is_reached_over_tls_on_one_kept_connection() {
        let (url, tls, handshakes) = serve_tls().await;
        posts_over_tls(&url, &tls, 3, 204).await;
        assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_https_endpoint_with_an_untrusted_certificate_is_a_connect_failure() {
        let (url, _trusting, handshakes) = serve_tls().await;
        // The pool trusts no root, the test CA included.
        let failure = post_once(&url).await.unwrap_err();
        match &failure {
            Failure::Connect { reason, .. } => assert!(reason.starts_with("TLS: "), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn reqwest_gets_http2_offered_and_the_shared_settings_stay_http1() {
        let mut shared = rustls::ClientConfig::clone(&trusting(rustls::RootCertStore::empty()));
        shared.alpn_protocols = vec![b"http/1.1".to_vec()];
        let shared = Arc::new(shared);
        let for_reqwest = with_http2(&shared);
        assert_eq!(
            for_reqwest.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(shared.alpn_protocols, [b"http/1.1".to_vec()]);
    }

    #[test]
    fn urls_that_cannot_be_endpoints_are_refused_by_name() {
        let tls = trusting(rustls::RootCertStore::empty());
        let url = reqwest::Url::parse("ftp://example.com/x").unwrap();
        let refused = Pool::new(&url, 1, &tls).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "ftp://example.com/x: only http and https URLs can be endpoints"
        );
        let ipv6 = Pool::new(
            &reqwest::Url::parse("http://[::1]:8080/a").unwrap(),
            1,
            &tls,
        );
        let ipv6 = ipv6.unwrap();
        assert_eq!(ipv6.authority, "[::1]:8080");
        assert_eq!(ipv6.origin, "http://[::1]:8080");
        let default_port = pool("https://example.com/w", 1);
        assert_eq!(default_port.authority, "example.com");
        assert_eq!(default_port.origin, "https://example.com");
        assert_eq!(default_port.target, "/w");
    }

    /// A server that reads one request per connection and then writes `answer` and keeps the
    /// connection open without another word.
    async fn serve_then_stall(answer: Vec<u8>) -> String {
        let (listener, url) = listen().await;
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    read_request(&mut tcp, &mut Vec::new()).await.unwrap();
                    tcp.write_all(&answer).await.unwrap();
                    // Holds the connection open until the client drops it.
                    let _ = tcp.read(&mut [0u8; 1]).await;
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn no_answer_within_the_time_is_a_timeout_and_the_connection_is_dropped() {
        let url = serve_then_stall(Vec::new()).await;
        let pool = pool(&url, 4);
        let failure = pool
            .post(headers(), Bytes::new(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(failure, Failure::Timeout { .. }), "{failure:?}");
        assert!(failure.to_string().contains("within 200ms"), "{failure}");
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn a_status_stands_when_its_body_is_too_slow_but_the_connection_goes() {
        let url =
            serve_then_stall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly".to_vec()).await;
        let pool = pool(&url, 4);
        let answer = pool
            .post(headers(), Bytes::new(), Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(pool.idle(), 0, "a connection mid-body is not kept");
    }

    #[tokio::test]
    async fn a_status_stands_when_its_body_is_too_big_but_the_connection_goes() {
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n",
            BODY_LIMIT + 1
        )
        .into_bytes();
        answer.resize(answer.len() + BODY_LIMIT as usize + 1, b'x');
        let pool = pool(&serve_then_stall(answer).await, 4);
        let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed_oldest_first() {
        let (url, accepted, _seen) = serve(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let pool = pool(&url, 4);
        let posts = (0..3).map(|_| pool.post(headers(), Bytes::new(), ENOUGH));
        futures_util::future::join_all(posts).await;
        assert_eq!(pool.idle(), 3);
        let long_ago = Instant::now() - IDLE_FOR - Duration::from_secs(1);
        {
            let mut idle = pool.idle.lock().unwrap();
            idle[0].since = long_ago;
            idle[1].since = long_ago;
        }
        assert!(pool.take().is_some(), "the freshest is taken");
        assert_eq!(pool.idle(), 0, "the two kept too long are closed");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }
}
