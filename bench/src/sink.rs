//! The sink: answers every POST with 204 and records, per request, the shard and seq range it
//! carried (from `webhook-id`, `msg_{shard}_{hash}_{first}_{last}`) and when it arrived, on the
//! blaster's clock. It verifies one signature per round, not every one, to stay cheap.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio::net::TcpListener;
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
    pub requests: AtomicU64,
    /// Whether a signature was checked this round, and whether it failed.
    checked: AtomicBool,
    pub bad_signature: AtomicBool,
    pub arrivals: Mutex<Vec<Arrival>>,
    /// Woken on every request.
    pub notify: Notify,
}

impl Sink {
    pub async fn start(epoch: Instant, signer: shardhook::Signer) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(SinkShared {
            epoch,
            signer,
            events: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            checked: AtomicBool::new(false),
            bad_signature: AtomicBool::new(false),
            arrivals: Mutex::new(Vec::with_capacity(1 << 20)),
            notify: Notify::new(),
        });
        let app = axum::Router::new()
            .route("/", post(receive))
            .with_state(shared.clone());
        tokio::spawn(crate::serve_without_nagle(listener, app));
        Sink { addr, shared }
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn reset(&self) {
        self.shared.events.store(0, Ordering::SeqCst);
        self.shared.requests.store(0, Ordering::SeqCst);
        self.shared.checked.store(false, Ordering::SeqCst);
        self.shared.arrivals.lock().unwrap().clear();
    }
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

async fn receive(State(s): State<Arc<SinkShared>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let at_nanos = s.epoch.elapsed().as_nanos() as u64;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let id = header("webhook-id");
    if !s.checked.swap(true, Ordering::Relaxed) {
        let verified = s.signer.verify(
            Some(id),
            Some(header("webhook-timestamp")),
            Some(header("webhook-signature")),
            &body,
            shardhook::signer::unix_now(),
        );
        if verified.is_err() {
            s.bad_signature.store(true, Ordering::SeqCst);
        }
    }
    if let Some((shard, first, last)) = parse_id(id) {
        let first = first.max(FIRST_SEQ);
        if last >= first {
            s.events.fetch_add(last - first + 1, Ordering::Relaxed);
            s.arrivals.lock().unwrap().push(Arrival {
                shard,
                first,
                last,
                at_nanos,
            });
        }
    }
    s.requests.fetch_add(1, Ordering::Relaxed);
    s.notify.notify_waiters();
    StatusCode::NO_CONTENT
}
