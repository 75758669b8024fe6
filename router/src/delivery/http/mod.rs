//! Delivery's HTTP client: the connections deliveries go out on, a small pool of them per
//! endpoint, on one of two transports (the endpoint's `transport`).
//!
//! Owns connecting (TCP as hyper-util connects, both address families raced; then TLS with the
//! system's roots for `https`, and the ALPN offer), keeping idle connections for the next
//! request, and one POST's round trip within the attempt's time: write it, read the status and
//! `Retry-After`, and read the body to its end so the connection can be used again. It must not
//! decide what a status means (`retry` does) or sign anything (`signer`, `sigv4`). It follows no
//! redirect: a 3xx is an answer like any other, which `retry` dead-letters (followed, a
//! 301/302/303 turns the signed POST into a GET without the events, and its 2xx would count
//! them as delivered).
//!
//! `transport = "builtin"`: the client half of HTTP/1.1 written here, on `httparse`
//! (`connection`), driven by the request's own task: a request is one vectored write of its
//! head and body, then reads until its answer has been parsed and its body skipped.
//! `transport = "hyper"` (`hyper_pool`): hyper's client connections, HTTP/1.1 driven by the
//! request's own task too, or HTTP/2 when the endpoint takes `h2` in ALPN. Side by side
//! against the bench sink, a load client on reqwest took 22-26 CPU µs per request, one on
//! hyper's connection API (a task per connection, a channel to it and back per request) 11-13,
//! and a raw write with `httparse` 9
//! (`bench/runs/2026-11-23T0830-load-client-reqwest-hyper-raw.txt`); the two transports inside
//! the router are compared in `bench/RESULTS.md`, "The transport decision (issue 18)". reqwest
//! stays for Discord's REST API. Not supported, unlike reqwest: proxies from `HTTPS_PROXY` and
//! the like (delivery connects to endpoints directly).
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

use std::io::{self};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::Instant;
use tokio_util::either::Either;
use tower_service::Service;

use crate::config::{Http2, Transport};
use crate::tls::Tls;
use crate::USER_AGENT;
use connection::{Conn, Head, Stream};
use hyper_pool::HyperPool;

mod connection;
mod hyper_pool;
#[cfg(test)]
pub(crate) mod tests;

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
/// `Exchange`; for `Connect` only when it went out once on a kept connection that the endpoint
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
    Exchange {
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
    /// Connections opened, and of those over TLS, how many resumed an earlier TLS session (a
    /// handshake without certificates, a round trip shorter).
    opened: AtomicU64,
    resumed: AtomicU64,
    /// For `transport = "hyper"`: its connections, HTTP/1.1 or HTTP/2. `idle` then stays empty.
    hyper: Option<HyperPool>,
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
    #[error("ca_file {}: {reason}", path.display())]
    CaFile {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Pool {
    /// A pool for `url` on the hand-written client, as the tests of its internals want it.
    #[cfg(test)]
    fn new(url: &reqwest::Url, max_idle: usize, tls: &Tls) -> Result<Pool, BadUrl> {
        Pool::with(url, max_idle, tls, Transport::Builtin, Http2::Never)
    }

    /// A pool for `url`, keeping at most `max_idle` idle connections (the endpoint's in-flight
    /// cap: more could never be busy at once), on `transport`; `http2` says whether hyper's
    /// connections offer and speak HTTP/2 (the builtin transport speaks HTTP/1.1 only).
    pub fn with(
        url: &reqwest::Url,
        max_idle: usize,
        tls: &Tls,
        transport: Transport,
        http2: Http2,
    ) -> Result<Pool, BadUrl> {
        let shown = || crate::secret::redact_url(url.as_str());
        let invalid = |reason: String| BadUrl::Invalid {
            url: shown(),
            reason,
        };
        let secure = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => return Err(BadUrl::Scheme(shown())),
        };
        let host = url.host_str().ok_or_else(|| BadUrl::NoHost(shown()))?;
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
            let tls = match transport {
                Transport::Builtin => tls.clone(),
                // The same settings (and so the same TLS session cache), other ALPN offers.
                Transport::Hyper => {
                    let mut offers = rustls::ClientConfig::clone(tls);
                    offers.alpn_protocols = HyperPool::alpn(http2);
                    std::sync::Arc::new(offers)
                }
            };
            Some((tls, name))
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
        let hyper = match transport {
            Transport::Builtin => None,
            Transport::Hyper => {
                let absolute = format!("{origin}{target}");
                let pool = HyperPool::new(http2, &target, absolute, &authority, max_idle);
                Some(pool.map_err(invalid)?)
            }
        };
        let origin = Uri::try_from(origin).map_err(|e| invalid(e.to_string()))?;
        Ok(Pool {
            hyper,
            connector,
            origin,
            preamble: preamble.into_bytes().into_boxed_slice(),
            authority,
            target,
            tls,
            idle: Mutex::new(Vec::new()),
            max_idle,
            opened: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
        })
    }

    /// Connections opened so far, and how many of them resumed a TLS session.
    pub fn connections(&self) -> (u64, u64) {
        (
            self.opened.load(Ordering::Relaxed),
            self.resumed.load(Ordering::Relaxed),
        )
    }

    /// Opens a connection (TCP, and TLS for `https`) and keeps it idle for the next request, so
    /// that request pays no handshake. A failure is only logged: the first request will try
    /// again and say why it failed.
    pub async fn warm(&self) {
        if let Some(hyper) = &self.hyper {
            return hyper.warm(self).await;
        }
        match self.connect().await {
            Ok(conn) => self.keep(conn),
            Err(e) => tracing::warn!("could not open a connection ahead of the first request: {e}"),
        }
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
        if let Some(hyper) = &self.hyper {
            return hyper.post(self, headers, body, timeout).await;
        }
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
                    return Err(Failure::Exchange {
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
        let (stream, _h2) = self.open().await?;
        Ok(Conn {
            stream,
            read: BytesMut::with_capacity(READ_ROOM),
            head: Vec::new(),
            heard: false,
        })
    }

    /// A new stream: TCP, then TLS for `https`; and whether the endpoint took `h2` in ALPN.
    async fn open(&self) -> Result<(Stream, bool), Failure> {
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
        let (stream, h2) = match &self.tls {
            None => (Either::Left(tcp), false),
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| failed(format!("TLS: {e}")))?;
                let session = tls.get_ref().1;
                if session.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    self.resumed.fetch_add(1, Ordering::Relaxed);
                }
                let h2 = session.alpn_protocol() == Some(b"h2");
                (Either::Right(Box::new(tls)), h2)
            }
        };
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok((stream, h2))
    }

    /// Idle connections kept now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        match &self.hyper {
            Some(hyper) => hyper.kept().0,
            None => self.idle.lock().unwrap().len(),
        }
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
