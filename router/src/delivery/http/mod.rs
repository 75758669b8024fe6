//! Delivery's HTTP client: the connections deliveries go out on and a small pool of them per
//! endpoint, on hyper's client connections (`hyper_pool`): HTTP/1.1 driven by the request's own
//! task, or HTTP/2 when the endpoint takes `h2` in ALPN (the endpoint's `http2`).
//!
//! Owns connecting (TCP as hyper-util connects, both address families raced; then TLS with the
//! system's roots for `https`, and the ALPN offer), the counts of connections opened and TLS
//! sessions resumed, the answer's shape (`Answer`, `Failure`) and the limits on it. Keeping
//! connections and one POST's round trip within the attempt's time (write it, read the status
//! and `Retry-After`, read the body to its end so the connection can be used again) are
//! `hyper_pool`'s. It must not decide what a status means (`retry` does) or sign anything
//! (`signer`, `sigv4`). It follows no redirect: a 3xx is an answer like any other, which `retry`
//! dead-letters (followed, a 301/302/303 turns the signed POST into a GET without the events,
//! and its 2xx would count them as delivered).
//!
//! Why hyper's connection API and not reqwest, nor a client of our own: side by side against
//! the bench sink, a load client on reqwest took 22-26 CPU µs per request, one on hyper's
//! connection API 11-13, and a raw write with `httparse` 9
//! (`bench/runs/2026-11-23T0830-load-client-reqwest-hyper-raw.txt`); inside the router, on the
//! distant workload, a hand-written HTTP/1.1 client took 97 µs per event and hyper 91, so it
//! was removed (`bench/RESULTS.md`, "The transport decision (issue 18)"). reqwest stays for
//! Discord's REST API. Not supported, unlike reqwest: proxies from `HTTPS_PROXY` and the like
//! (delivery connects to endpoints directly).
//!
//! No task watches an idle HTTP/1.1 connection, so what the endpoint did to one meanwhile is
//! found out when it is next taken. First a poll of the connection that costs no system call
//! (tokio's readiness, and whatever rustls holds): anything readable, a close included, and the
//! connection is dropped. Then, for a connection idle a second or more (`LOOK_AFTER`), a look at
//! the socket itself without reading (`MSG_PEEK`), for what tokio's driver has not polled yet.
//! The endpoint can still close a kept connection just as a request goes out; one that ends
//! before any byte of an answer is then replaced once and the request sent again on a new one.
//! The endpoint may have read it, so it can see a `webhook-id` twice, as it can after any retry
//! (Go's client does the same for requests with an idempotency key, which `webhook-id` is).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tower_service::Service;

use crate::config::Http2;
use crate::tls::Tls;
use hyper_pool::HyperPool;

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

/// One endpoint's connections: where they go, how they are opened, and hyper's side of them.
pub struct Pool {
    /// `host[:port]`, as the `Host` header carries it and as errors name the endpoint.
    authority: String,
    /// `path?query`, as the request line carries it.
    target: String,
    tls: Option<(Tls, rustls::pki_types::ServerName<'static>)>,
    /// TCP connections: DNS, both address families raced, keepalive, Nagle off.
    connector: HttpConnector,
    /// `scheme://authority`, what `connector` is asked for.
    origin: Uri,
    /// The most idle HTTP/1.1 connections kept: the endpoint's in-flight cap, as more could
    /// never be busy at once.
    max_idle: usize,
    /// Connections opened, and of those over TLS, how many resumed an earlier TLS session (a
    /// handshake without certificates, a round trip shorter).
    opened: AtomicU64,
    resumed: AtomicU64,
    /// The connections themselves, HTTP/1.1 or HTTP/2, and the round trips on them.
    hyper: HyperPool,
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
    /// A pool for `url`, keeping at most `max_idle` idle HTTP/1.1 connections (the endpoint's
    /// in-flight cap: more could never be busy at once); `http2` says whether its connections
    /// offer and speak HTTP/2.
    pub fn new(
        url: &reqwest::Url,
        max_idle: usize,
        tls: &Tls,
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
            // The same settings (and so the same TLS session cache), this endpoint's ALPN offers.
            let mut offers = rustls::ClientConfig::clone(tls);
            offers.alpn_protocols = HyperPool::alpn(http2);
            Some((std::sync::Arc::new(offers), name))
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
        let absolute = format!("{origin}{target}");
        let hyper =
            HyperPool::new(http2, &target, absolute, &authority, max_idle).map_err(invalid)?;
        let origin = Uri::try_from(origin).map_err(|e| invalid(e.to_string()))?;
        Ok(Pool {
            hyper,
            connector,
            origin,
            authority,
            target,
            tls,
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

    /// Opens a connection (TCP, TLS for `https`, and its HTTP handshake) ahead of the first
    /// request, so that request pays no handshake. A failure is only logged: the first request
    /// will try again and say why it failed.
    pub async fn warm(&self) {
        self.hyper.warm(self).await;
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
        self.hyper.post(self, headers, body, timeout).await
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

    /// Idle HTTP/1.1 connections kept now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.hyper.kept().0
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
