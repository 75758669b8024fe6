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
//! It is hyper's connection API rather than reqwest, which the router keeps for Discord's REST
//! API. Per request reqwest parses the URL twice and goes through its redirect and timeout
//! layers and a pool keyed by scheme and host. Side by side against the bench sink, a load
//! client on reqwest took 22-26 CPU µs per request and one on hyper's connection API 11-13
//! (`bench/runs/2026-11-23T0830-load-client-reqwest-hyper-raw.txt`); unbatched, delivery sends a
//! request per event. Not supported, unlike reqwest: proxies from `HTTPS_PROXY` and the like
//! (delivery connects to endpoints directly), and HTTP/2 (a pool of HTTP/1.1 connections, one
//! request each at a time, up to the endpoint's `max_in_flight`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue, HOST, RETRY_AFTER};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower_service::Service;

/// How long an idle connection is kept for reuse.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// The most of an answer's body read to keep its connection; past it the connection is closed
/// (the status stands).
const BODY_LIMIT: usize = 1 << 20;

/// Why a round trip failed. The request may have reached the endpoint for `Timeout` and
/// `Transport`, never for `Connect`.
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
        source: hyper::Error,
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
    /// The `Host` header, and how errors name the endpoint.
    authority: HeaderValue,
    /// `path?query`, as the request line carries it.
    target: Uri,
    tls: Option<(Tls, rustls::pki_types::ServerName<'static>)>,
    /// TCP connections: DNS, both address families raced, keepalive, Nagle off.
    connector: HttpConnector,
    /// `scheme://authority`, what `connector` is asked for.
    origin: Uri,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

struct Idle {
    send: SendRequest<Full<Bytes>>,
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
        Ok(Pool {
            connector,
            origin: Uri::try_from(origin).map_err(|e| invalid(e.to_string()))?,
            authority: HeaderValue::try_from(authority).map_err(|e| invalid(e.to_string()))?,
            target: Uri::try_from(target).map_err(|e| invalid(e.to_string()))?,
            tls,
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// POSTs `body` with `headers` (the pool adds `Host`, `User-Agent` and the length) and
    /// reads the answer to its end, all within `timeout`. A kept connection the endpoint has
    /// closed meanwhile is replaced, and the request sent again, only when none of it was
    /// written. Once the status is in, it is the answer: a body that is too slow or too big
    /// only costs the connection.
    pub async fn post(
        &self,
        headers: HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, Failure> {
        let deadline = Instant::now() + timeout;
        // Written here rather than left to hyper, whose own value costs two allocations
        // (a buffer, then its shared handle) where this costs one; hyper sends it as given.
        let mut length = itoa::Buffer::new();
        let length = HeaderValue::from_str(length.format(body.len())).expect("digits");
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.target.clone();
        *request.headers_mut() = headers;
        let h = request.headers_mut();
        h.insert(HOST, self.authority.clone());
        h.insert(header::CONTENT_LENGTH, length);
        h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let (response, send) = tokio::time::timeout_at(deadline, self.exchange(request))
            .await
            .map_err(|_elapsed| Failure::Timeout {
                authority: self.authority().to_owned(),
                timeout,
            })??;
        let answer = Answer {
            status: response.status().as_u16(),
            retry_after: response.headers().get(RETRY_AFTER).cloned(),
        };
        let drained = tokio::time::timeout_at(deadline, drain(response.into_body())).await;
        if drained == Ok(true) {
            self.keep(send);
        }
        Ok(answer)
    }

    /// Sends `request` and waits for its answer's head, on a kept connection or a new one.
    async fn exchange(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, SendRequest<Full<Bytes>>), Failure> {
        loop {
            let (mut send, kept) = match self.take() {
                Some(send) => (send, true),
                // Boxed: connecting (TLS especially) is a big future, rare once connections
                // are kept, and inline it would make every shard's delivery task that much
                // bigger, busy or idle.
                None => (Box::pin(self.connect()).await?, false),
            };
            let sent = match send.ready().await {
                Ok(()) => send.try_send_request(request).await,
                Err(_) if kept => continue,
                Err(source) => return Err(self.transport(source)),
            };
            match sent {
                Ok(response) => return Ok((response, send)),
                Err(mut e) => match e.take_message() {
                    // Nothing was written: a kept connection closed under us. Use another.
                    Some(unsent) if kept => request = unsent,
                    _ => return Err(self.transport(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection not idle too long, if any. One the endpoint has
    /// closed is found out by `exchange`, which then takes the next.
    fn take(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().expect("the pool's lock is never poisoned");
        // Oldest first: close those kept too long.
        let expired = idle.partition_point(|i| i.since.elapsed() >= IDLE_FOR);
        idle.drain(..expired);
        idle.pop().map(|i| i.send)
    }

    fn keep(&self, send: SendRequest<Full<Bytes>>) {
        if send.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("the pool's lock is never poisoned");
        if idle.len() < self.max_idle {
            idle.push(Idle {
                send,
                since: Instant::now(),
            });
        }
    }

    /// A new connection, its reading and writing driven by a task of its own, which ends when
    /// the connection closes or its `SendRequest` is dropped.
    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Failure> {
        let failed = |reason: String| Failure::Connect {
            authority: self.authority().to_owned(),
            reason,
        };
        let tcp = self
            .connector
            .clone()
            .call(self.origin.clone())
            .await
            .map_err(|e| failed(with_causes(&e)))?
            .into_inner();
        let started = match &self.tls {
            None => start(tcp).await,
            Some((config, name)) => {
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| failed(format!("TLS: {e}")))?;
                start(tls).await
            }
        };
        started.map_err(|e| failed(e.to_string()))
    }

    fn authority(&self) -> &str {
        self.authority.to_str().unwrap_or("the endpoint")
    }

    fn transport(&self, source: hyper::Error) -> Failure {
        Failure::Transport {
            authority: self.authority().to_owned(),
            source,
        }
    }

    /// Idle connections kept now.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
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

/// An HTTP/1.1 connection over `io`, its reading and writing on a task of its own. The task's
/// result is the connection's end; its errors reach the request waiting on it.
async fn start<T>(io: T) -> hyper::Result<SendRequest<Full<Bytes>>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(send)
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

/// Reads `body` to its end; false if it failed or passed `BODY_LIMIT`.
async fn drain(mut body: Incoming) -> bool {
    let mut read = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                read += frame.data_ref().map_or(0, |d| d.len());
                if read > BODY_LIMIT {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
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
        let (url, accepted, _seen) = serve(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n5\r\nslow \r\n5\r\ndown!\r\n0\r\n\r\n",
        )
        .await;
        let pool = pool(&url, 4);
        for _ in 0..2 {
            let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
            assert_eq!(
                answer,
                Answer {
                    status: 429,
                    retry_after: Some(HeaderValue::from_static("7")),
                }
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A server that answers one request per connection and keeps the connection open until
    /// told to close it (it says when it has).
    async fn serve_then_close_on_cue() -> (
        String,
        Arc<AtomicUsize>,
        tokio::sync::mpsc::UnboundedSender<()>,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let (cue, mut cued) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                read_request(&mut tcp, &mut Vec::new()).await.unwrap();
                tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                    .await
                    .unwrap();
                cued.recv().await.unwrap();
                drop(tcp);
                closed_tx.send(()).unwrap();
            }
        });
        (url, accepted, cue, closed)
    }

    /// Three posts, the endpoint closing each connection after its answer while the pool
    /// keeps it; with `seen`, the next post waits until the connection's task has read the
    /// close and ended (the request then cannot be given to it), else it goes at once (the
    /// connection's task takes it, reads the close, and hands it back unsent).
    async fn a_kept_connection_closed_by_the_endpoint_is_replaced(seen: bool) {
        let (url, accepted, cue, mut closed) = serve_then_close_on_cue().await;
        let pool = pool(&url, 4);
        for round in 1..=3 {
            let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
            assert_eq!(answer.status, 204, "round {round}");
            assert_eq!(pool.idle(), 1, "kept after round {round}");
            cue.send(()).unwrap();
            closed.recv().await.unwrap();
            while seen && !pool.idle.lock().unwrap()[0].send.is_closed() {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_kept_connection_the_endpoint_closed_is_replaced_without_an_error() {
        a_kept_connection_closed_by_the_endpoint_is_replaced(false).await;
    }

    #[tokio::test]
    async fn a_kept_connection_whose_task_saw_the_close_is_replaced_without_an_error() {
        a_kept_connection_closed_by_the_endpoint_is_replaced(true).await;
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            read_request(&mut tcp, &mut Vec::new()).await.unwrap();
        });
        let failure = post_once(&url).await.unwrap_err();
        assert!(matches!(failure, Failure::Transport { .. }), "{failure:?}");
    }

    #[tokio::test]
    async fn a_refused_port_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
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
                            tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                                .await
                                .unwrap();
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
        let pool = Pool::new(&reqwest::Url::parse(&url).unwrap(), 2, &tls).unwrap();
        for _ in 0..3 {
            let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
            assert_eq!(answer.status, 204);
        }
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
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
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
        answer.resize(answer.len() + BODY_LIMIT + 1, b'x');
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
