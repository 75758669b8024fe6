use super::*;
use crate::config::Http2;
use crate::tls::{trusting, with_http2, Tls};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Time enough for anything a test server answers at once.
const ENOUGH: Duration = Duration::from_secs(30);

fn pool(url: &str, max_idle: usize) -> Pool {
    let tls = trusting(rustls::RootCertStore::empty());
    pool_with(url, max_idle, &tls)
}

/// A pool for `url` with `tls`.
fn pool_with(url: &str, max_idle: usize, tls: &Tls) -> Pool {
    Pool::new(
        &reqwest::Url::parse(url).unwrap(),
        max_idle,
        tls,
        Http2::Auto,
    )
    .unwrap()
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

/// hyper takes a chunk size past the body limit and waits for its bytes, until the attempt's
/// deadline: the status stands all the same, and the connection goes.
#[tokio::test]
async fn a_chunk_size_past_the_body_limit_costs_the_connection_and_its_status_stands() {
    // A chunk size that would overflow the body's total.
    let (url, accepted, _seen) = serve(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nx\r\nffffffffffffffff\r\nyy0\r\n\r\n",
    )
    .await;
    let pool = pool(&url, 4);
    for _ in 0..2 {
        let answer = pool
            .post(headers(), Bytes::new(), Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(answer.status, 200);
    }
    assert_eq!((accepted.load(Ordering::SeqCst), pool.idle()), (2, 0));
}

/// hyper says the same of both: a signed length, and two lengths that differ.
#[tokio::test]
async fn a_signed_or_doubled_length_is_a_transport_failure_saying_so() {
    for answer in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nab"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    ] {
        let (url, _accepted, _seen) = serve(answer).await;
        let failure = post_once(&url).await.unwrap_err();
        assert!(matches!(failure, Failure::Exchange { .. }), "{failure:?}");
        assert!(
            failure.to_string().contains("invalid content-length"),
            "{failure}"
        );
    }
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
        pool.hyper.idle_since(0, Instant::now() - LOOK_AFTER);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_look_at_the_socket_sees_bytes_and_a_close_that_tokio_has_not_polled() {
    let (listener, url) = listen().await;
    let pool = pool(&url, 1);
    let open = || async {
        match pool.hyper.open(&pool).await.unwrap() {
            hyper_pool::Opened::H1(conn) => conn,
            hyper_pool::Opened::H2(_) => panic!("HTTP/2 over plain http"),
        }
    };
    let conn = open().await;
    let (server, _) = listener.accept().await.unwrap();
    assert!(conn.untouched());
    // No await in between that could let tokio's driver poll the client's socket: only
    // the socket itself knows.
    server.try_write(b"x").unwrap();
    assert!(!conn.untouched(), "bytes");
    let conn = open().await;
    let (server, _) = listener.accept().await.unwrap();
    assert!(conn.untouched());
    drop(server);
    assert!(!conn.untouched(), "a close");
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
        pool.hyper.idle_since(0, Instant::now() - LOOK_AFTER);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(
        late.load(Ordering::SeqCst),
        0,
        "nothing sent to a closed connection"
    );
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
    assert!(matches!(failure, Failure::Exchange { .. }), "{failure:?}");
    assert!(
        failure
            .to_string()
            .contains("connection closed before message completed"),
        "{failure}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the kept one, one new one"
    );
}

/// An https endpoint with a certificate for `localhost` from a test CA
/// (`router/testdata/tls-*.pem`, valid until 2126), answering 204; and TLS settings that
/// trust that CA alone.
pub(crate) async fn serve_tls() -> (String, Tls, Arc<AtomicUsize>) {
    serve_tls_answering(b"HTTP/1.1 204 No Content\r\n\r\n").await
}

/// `n` posts to `url` through one pool with `tls`, each answered with `status`.
async fn posts_over_tls(url: &str, tls: &Tls, n: usize, status: u16) {
    let pool = pool_with(url, 2, tls);
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
    let cert =
        CertificateDer::from_pem_slice(include_bytes!("../../../testdata/tls-localhost.pem"))
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../../../testdata/tls-localhost.key"))
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(
            CertificateDer::from_pem_slice(include_bytes!("../../../testdata/tls-ca.pem")).unwrap(),
        )
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
    let refused = Pool::new(&url, 1, &tls, Http2::Auto).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "ftp://example.com/x: only http and https URLs can be endpoints"
    );
    let ipv6 = pool_with("http://[::1]:8080/a", 1, &tls);
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
async fn connections_idle_too_long_are_closed_oldest_first() {
    let (url, accepted, _seen) = serve(b"HTTP/1.1 204 No Content\r\n\r\n").await;
    let pool = pool(&url, 4);
    let posts = (0..3).map(|_| pool.post(headers(), Bytes::new(), ENOUGH));
    futures_util::future::join_all(posts).await;
    assert_eq!(pool.idle(), 3);
    let long_ago = Instant::now() - IDLE_FOR - Duration::from_secs(1);
    pool.hyper.idle_since(0, long_ago);
    pool.hyper.idle_since(1, long_ago);
    let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(
        pool.idle(),
        1,
        "the freshest carried it and is kept again; the two kept too long are closed"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "no new connection");
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
        // A chunk longer than it says.
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
        assert!(matches!(failure, Failure::Exchange { .. }), "{failure:?}");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "{then:?}: not sent again"
        );
    }
}

#[tokio::test]
async fn a_kept_connection_closed_as_the_request_arrives_is_replaced_and_the_request_sent_again() {
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
async fn garbage_instead_of_http_is_a_transport_failure_naming_the_endpoint() {
    let (url, _accepted, _seen) = serve(b"SMTP ready, not HTTP at all\r\n\r\n").await;
    let pool = pool(&url, 4);
    let failure = pool
        .post(headers(), Bytes::new(), ENOUGH)
        .await
        .unwrap_err();
    let authority = url.trim_start_matches("http://").split('/').next().unwrap();
    assert!(
        matches!(&failure, Failure::Exchange { authority: a, .. } if a == authority),
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
    assert!(matches!(failure, Failure::Exchange { .. }), "{failure:?}");
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

#[tokio::test]
async fn a_warmed_connection_carries_the_first_request_without_a_handshake() {
    let (url, tls, handshakes) = serve_tls().await;
    let pool = pool_with(&url, 2, &tls);
    pool.warm().await;
    assert_eq!(pool.connections(), (1, 0), "opened before any request");
    let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
    assert_eq!(answer.status, 204);
    assert_eq!(pool.connections(), (1, 0), "the request opened none");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_new_connection_resumes_the_tls_session_of_an_earlier_one() {
    let (url, tls, handshakes) = serve_tls().await;
    // No idle connection is kept, so every request opens one.
    let pool = pool_with(&url, 0, &tls);
    for _ in 0..3 {
        let answer = pool.post(headers(), Bytes::new(), ENOUGH).await.unwrap();
        assert_eq!(answer.status, 204);
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 3);
    assert_eq!(
        pool.connections(),
        (3, 2),
        "(opened, resumed): the first handshake is full, the others resume it"
    );
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

#[tokio::test]
async fn what_rustls_holds_past_an_answer_keeps_its_connection_from_being_used() {
    // A 4 KiB answer, then a stale one in the same TLS record: rustls (or hyper's read buffer)
    // holds it after the first answer has been read.
    const ROOM: usize = 4 << 10;
    let head = |length: usize| format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n");
    let length = ROOM - head(ROOM).len();
    let mut answer = head(length).into_bytes();
    answer.resize(ROOM, b'x');
    answer.extend_from_slice(b"HTTP/1.1 500 Stale\r\ncontent-length: 0\r\n\r\n");
    let answer: &'static [u8] = answer.leak();
    let (url, tls, handshakes) = serve_tls_answering(answer).await;
    posts_over_tls(&url, &tls, 2, 200).await;
    assert_eq!(handshakes.load(Ordering::SeqCst), 2);
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
    let url = serve_then_stall(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly".to_vec()).await;
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
async fn a_list_of_one_length_keeps_the_connection() {
    let (answers, accepted, kept) =
        two_posts_answered(b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok").await;
    assert_eq!(answers.map(|a| a.status), [200, 200]);
    assert_eq!((accepted, kept), (1, 1));
}
