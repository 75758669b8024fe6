//! A local receiving endpoint: verifies each request's Standard Webhooks signature and records
//! every event, with scripted replies for fault tests.
//!
//! `shardhook demo` and the tests use it as the serverless handler's stand-in. It owns only its
//! own bookkeeping, and verifies with the `standardwebhooks` crate (the Standard Webhooks
//! project's own Rust library), not with the router's signer, so a signing mistake in the
//! router shows up as a request that did not verify.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use standardwebhooks::Webhook;

/// A scripted reply to the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Answer with this status.
    Status(u16),
    /// Answer with this status and a `Retry-After` header.
    RetryAfter(u16, String),
    /// Wait this long, then answer 204 (a slow or hanging endpoint).
    Delay(Duration),
    /// Answer `302 Found` with this `Location` (a moved or misconfigured endpoint).
    Redirect(String),
}

/// One event as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// `shard_id` of the request.
    pub shard: u32,
    /// `session_id` of the request.
    pub session: String,
    /// The event's `s`.
    pub seq: u64,
    /// The event's `t`.
    pub name: String,
    /// The request's `webhook-id`.
    pub webhook_id: String,
    /// When the request was answered.
    pub at: Instant,
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The request's `webhook-id`.
    pub webhook_id: String,
    /// When it arrived.
    pub at: Instant,
    /// Whether the signature verified.
    pub verified: bool,
    /// The status answered.
    pub status: u16,
    /// Events in the body.
    pub events: usize,
    /// Its `user-agent`.
    pub user_agent: String,
    /// Its `content-type`.
    pub content_type: String,
    /// The signature headers and body as received, for independent verification.
    pub timestamp: String,
    /// Its `webhook-signature`.
    pub signature: String,
    /// Its body as received.
    pub body: Bytes,
    /// Every header as received, names lower-case.
    pub headers: Vec<(String, String)>,
}

/// What the receiver saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Events of requests answered 2xx.
    pub events: Vec<Arrival>,
    /// Every request, verified or not, in arrival order.
    pub requests: Vec<RequestRecord>,
}

struct Inner {
    name: String,
    verifier: Webhook,
    /// Share of unscripted requests answered with a fault (500, 503, 429, or too slow).
    fault_rate: Mutex<f64>,
    /// While down, every request gets 503 (an endpoint that is out for a stretch).
    down: std::sync::atomic::AtomicBool,
    seen: Mutex<Seen>,
    script: Mutex<VecDeque<Reply>>,
    changed: watch::Sender<u64>,
}

/// A running receiver. Dropping it stops accepting new connections.
pub struct Receiver {
    inner: Arc<Inner>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// Serves on `listener`, verifying with the Standard Webhooks `secret` (`whsec_...`).
    pub fn start(listener: TcpListener, name: &str, secret: &str) -> std::io::Result<Receiver> {
        let addr = listener.local_addr()?;
        let verifier = Webhook::new(secret).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the receiver's signing secret does not decode: {e}"),
            )
        })?;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            verifier,
            seen: Mutex::new(Seen::default()),
            script: Mutex::new(VecDeque::new()),
            fault_rate: Mutex::new(0.0),
            down: std::sync::atomic::AtomicBool::new(false),
            changed: watch::channel(0).0,
        });
        let app = axum::Router::new()
            .route("/", post(receive))
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { inner, addr, task })
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The URL to configure as the endpoint.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Replies for the next requests, in order; after them, 204.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner
            .script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(replies);
    }

    /// Answers this share of unscripted requests with a random fault: 500, 503, 429 with
    /// `Retry-After: 1`, or a 3 s delay (longer than a sensible timeout).
    pub fn set_fault_rate(&self, rate: f64) {
        *self
            .inner
            .fault_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = rate;
    }

    /// Takes the endpoint down (every request 503) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.inner
            .down
            .store(down, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads what it saw.
    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.inner.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A receiver that wakes whenever a request was recorded.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

impl Inner {
    fn random_fault(&self) -> Option<Reply> {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            return Some(Reply::Status(503));
        }
        let rate = *self.fault_rate.lock().unwrap_or_else(|p| p.into_inner());
        if rate <= 0.0 || fastrand::f64() >= rate {
            return None;
        }
        Some(match fastrand::u8(0..4) {
            0 => Reply::Status(500),
            1 => Reply::Status(503),
            2 => Reply::RetryAfter(429, "1".to_owned()),
            _ => Reply::Delay(Duration::from_secs(3)),
        })
    }

    fn record(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.send_modify(|n| *n += 1);
    }
}

/// Each event of a body with the batch object that holds it: wire format v2 lists batches of
/// many shards (`{"v":2,"shard_count":N,"batches":[{"shard_id":..,"events":[..]}]}`); a v1
/// body (a dead letter or spool record of an earlier version) is one batch itself.
fn events_of(body: &serde_json::Value) -> Vec<(serde_json::Value, serde_json::Value)> {
    let batches = match body["batches"].as_array() {
        Some(batches) => batches.clone(),
        None => vec![body.clone()],
    };
    batches
        .into_iter()
        .flat_map(|batch| {
            let events = batch["events"].as_array().cloned().unwrap_or_default();
            events.into_iter().map(move |event| (batch.clone(), event))
        })
        .collect()
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let at = Instant::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = inner.verifier.verify(&body, &headers).is_ok();
    let reply = inner
        .script
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop_front()
        .or_else(|| inner.random_fault());
    let (status, header_reply, delay) = match reply {
        _ if !verified => (401, None, None),
        Some(Reply::Status(s)) => (s, None, None),
        Some(Reply::RetryAfter(s, after)) => (s, Some(("retry-after", after)), None),
        Some(Reply::Redirect(to)) => (302, Some(("location", to)), None),
        Some(Reply::Delay(d)) => (204, None, Some(d)),
        None => (204, None, None),
    };
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let events = events_of(&parsed);
    let webhook_id = header("webhook-id").unwrap_or_default().to_owned();
    // The request is recorded as it arrives; its events only once it is answered 2xx, which a
    // client that gave up (timed out) may never see.
    inner.record(|seen| {
        seen.requests.push(RequestRecord {
            webhook_id: webhook_id.clone(),
            at,
            verified,
            status,
            events: events.len(),
            user_agent: header("user-agent").unwrap_or_default().to_owned(),
            content_type: header("content-type").unwrap_or_default().to_owned(),
            timestamp: header("webhook-timestamp").unwrap_or_default().to_owned(),
            signature: header("webhook-signature").unwrap_or_default().to_owned(),
            body: body.clone(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        v.to_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect(),
        })
    });
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    if (200..300).contains(&status) {
        let answered = Instant::now();
        inner.record(|seen| {
            for (batch, event) in &events {
                seen.events.push(Arrival {
                    shard: batch["shard_id"].as_u64().unwrap_or(u64::MAX) as u32,
                    session: batch["session_id"].as_str().unwrap_or_default().to_owned(),
                    seq: event["s"].as_u64().unwrap_or(0),
                    name: event["t"].as_str().unwrap_or_default().to_owned(),
                    webhook_id: webhook_id.clone(),
                    at: answered,
                });
            }
        });
    }
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match header_reply {
        Some(header) => (status, [header]).into_response(),
        None if !verified => (status, "signature did not verify\n").into_response(),
        None => status.into_response(),
    }
}
