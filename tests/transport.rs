//! End-to-end tests of delivery's HTTP versions: the double's events, through the router, to a
//! local HTTPS endpoint on 127.0.0.1 behind a private CA (the endpoint's `ca_file`), which
//! offers `h2` in ALPN or does not, and records which HTTP version each request came in.
//!
//! The endpoint is hyper's server side and the signatures are checked with the
//! `standardwebhooks` crate: nothing here shares the router's client code.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shardhook::config::{EndpointConfig, Http2};
use shardhook_simulator::SimConfig;
use support::pipe::Pipe;
use support::within;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn testdata(file: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata")).join(file)
}

/// One request as the endpoint saw it.
struct Seen {
    version: Version,
    headers: http::HeaderMap,
    body: Bytes,
}

/// An HTTPS endpoint for `localhost` (the test CA's certificate) offering `alpn`, answering 204
/// over whichever HTTP version the client took.
struct Endpoint {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    changes: watch::Receiver<usize>,
    /// While true, TCP connections are accepted (and counted) but their TLS handshakes wait.
    hold: watch::Sender<bool>,
}

impl Endpoint {
    async fn start(alpn: &[&[u8]]) -> Endpoint {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_file(testdata("tls-localhost.pem")).unwrap();
        let key = PrivateKeyDer::from_pem_file(testdata("tls-localhost.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}/hook",
            listener.local_addr().unwrap().port()
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (changed, changes) = watch::channel(0);
        let changed = Arc::new(changed);
        let (s, c) = (seen.clone(), connections.clone());
        let (hold, held) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, changed) = (acceptor.clone(), s.clone(), changed.clone());
                let mut held = held.clone();
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if held.wait_for(|held| !*held).await.is_err() {
                        return;
                    }
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    let service = hyper::service::service_fn(move |request| {
                        record(seen.clone(), changed.clone(), request)
                    });
                    let io = TokioIo::new(tls);
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                });
            }
        });
        Endpoint {
            url,
            seen,
            connections,
            changes,
            hold,
        }
    }

    /// `(shard, seq)` of every event received, with how many times each came.
    fn events(&self) -> HashMap<(u32, u64), usize> {
        let mut events = HashMap::new();
        for request in self.seen.lock().unwrap().iter() {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            for batch in body["batches"].as_array().unwrap() {
                let shard = batch["shard_id"].as_u64().unwrap() as u32;
                for event in batch["events"].as_array().unwrap() {
                    *events
                        .entry((shard, event["s"].as_u64().unwrap()))
                        .or_default() += 1;
                }
            }
        }
        events
    }
}

async fn record(
    seen: Arc<Mutex<Vec<Seen>>>,
    changed: Arc<watch::Sender<usize>>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        version: parts.version,
        headers: parts.headers,
        body,
    });
    changed.send_modify(|n| *n += 1);
    Ok(Response::builder().status(204).body(Empty::new()).unwrap())
}

/// Two shards of 30 events each, delivered with `http2` to `endpoint`.
/// Returns the pipe once every event the double sent arrived.
async fn deliver_to(endpoint: &mut Endpoint, http2: Http2) -> Pipe {
    deliver_from(2, endpoint, http2).await
}

/// `shards` shards of 30 events each, all identified at once, delivered with `http2` to
/// `endpoint`. Returns the pipe once every event the double sent arrived.
async fn deliver_from(shards: u32, endpoint: &mut Endpoint, http2: Http2) -> Pipe {
    let sim = SimConfig {
        shards,
        max_concurrency: shards,
        guilds: 4,
        rate: 200.0,
        events_per_shard: Some(30),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    };
    let url = endpoint.url.clone();
    let p = Pipe::start(sim, vec![], |c| {
        c.endpoints = vec![EndpointConfig {
            ca_file: Some(testdata("tls-ca.pem")),
            http2,
            ..EndpointConfig::new("tls", url)
        }];
    })
    .await;
    within("every event at the HTTPS endpoint", async {
        let mut sim = p.sim.changes();
        loop {
            let expected: Vec<(u32, u64)> = p
                .sim
                .observed(|o| o.ledger.iter().map(|e| (e.shard, e.seq)).collect());
            let traffic = p.sim.observed(|o| {
                o.ledger
                    .iter()
                    .filter(|e| e.event == "MESSAGE_CREATE")
                    .count()
            });
            let arrived = endpoint.events();
            if traffic == 30 * shards as usize {
                // Every event is queued in the router: a held endpoint may finish handshakes.
                endpoint.hold.send_replace(false);
            }
            if traffic == 30 * shards as usize && expected.iter().all(|k| arrived.contains_key(k)) {
                return;
            }
            tokio::select! {
                _ = sim.changed() => {}
                _ = endpoint.changes.changed() => {}
            }
        }
    })
    .await;
    p
}

/// Every request verifies with the pipe's key, and every event came once.
fn assert_signed_exactly_once(endpoint: &Endpoint, p: &Pipe) {
    let webhook = standardwebhooks::Webhook::new(&p.secret).unwrap();
    for request in endpoint.seen.lock().unwrap().iter() {
        webhook
            .verify(&request.body, &request.headers)
            .expect("a signed request");
    }
    let events = endpoint.events();
    let ledger = p.sim.observed(|o| o.ledger.len());
    assert_eq!(events.len(), ledger);
    assert!(events.values().all(|n| *n == 1), "{events:?}");
}

#[tokio::test]
async fn events_arrive_signed_over_http2_when_the_endpoint_offers_h2() {
    let mut endpoint = Endpoint::start(&[b"h2", b"http/1.1"]).await;
    let p = deliver_to(&mut endpoint, Http2::Auto).await;
    assert_signed_exactly_once(&endpoint, &p);
    let versions: Vec<Version> = endpoint
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert!(
        versions.iter().all(|v| *v == Version::HTTP_2),
        "{versions:?}"
    );
    // Two shards' requests multiplexed: one connection (the router's in-flight cap of 256
    // wants one HTTP/2 connection per 100 streams, so at most 3).
    let connections = endpoint.connections.load(Ordering::SeqCst);
    assert!((1..=3).contains(&connections), "{connections} connections");
    p.stop().await;
}

/// Sixteen shards' first batches race the connections opened ahead of them: until the first
/// connection has said the endpoint takes `h2`, they wait for it rather than each open one.
/// The endpoint holds its TLS handshakes until every event is queued, so all sixteen race.
#[tokio::test]
async fn many_shards_first_requests_multiplex_instead_of_opening_a_connection_each() {
    let mut endpoint = Endpoint::start(&[b"h2", b"http/1.1"]).await;
    endpoint.hold.send_replace(true);
    let p = deliver_from(16, &mut endpoint, Http2::Auto).await;
    assert_signed_exactly_once(&endpoint, &p);
    let connections = endpoint.connections.load(Ordering::SeqCst);
    assert!((1..=3).contains(&connections), "{connections} connections");
    p.stop().await;
}

#[tokio::test]
async fn an_endpoint_that_offers_only_http1_gets_http1() {
    let mut endpoint = Endpoint::start(&[b"http/1.1"]).await;
    let p = deliver_to(&mut endpoint, Http2::Auto).await;
    assert_signed_exactly_once(&endpoint, &p);
    let versions: Vec<Version> = endpoint
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert!(
        versions.iter().all(|v| *v == Version::HTTP_11),
        "{versions:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn http2_never_keeps_to_http1_even_when_h2_is_offered() {
    let mut endpoint = Endpoint::start(&[b"h2", b"http/1.1"]).await;
    let p = deliver_to(&mut endpoint, Http2::Never).await;
    assert_signed_exactly_once(&endpoint, &p);
    let versions: Vec<Version> = endpoint
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.version)
        .collect();
    assert!(
        versions.iter().all(|v| *v == Version::HTTP_11),
        "{versions:?}"
    );
    p.stop().await;
}
