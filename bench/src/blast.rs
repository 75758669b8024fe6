//! The load source: `GET /gateway/bot` and a gateway that, after IDENTIFY and READY, waits for
//! the go signal and then replays the pre-compressed frames of `frames::Load` on every shard,
//! as fast as the reader takes them or at a set rate, recording when each frame went out. Each
//! connection gets `zlib-stream` or `zstd-stream` frames, as its `compress` query asks.
//!
//! It enforces none of Discord's rules (the real double in `shardhook_simulator` does); it only
//! answers heartbeats, between chunks, so the reader's zombie detection stays quiet.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use futures_util::SinkExt;
use shardhook::config::Compression;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::frames::{self, Load};

/// Frames written before a flush in throughput mode.
const FLUSH_EVERY: usize = 32;

pub struct Blaster {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
}

pub struct Shared {
    pub load: Arc<Load>,
    pub shards: u32,
    /// The clock every timestamp is measured against (the sink uses it too).
    pub epoch: Instant,
    /// Connections that have identified in the current round.
    pub identified: AtomicUsize,
    /// `Some(rate)` events/s over all shards once the round starts; `None` before.
    go: watch::Sender<Option<Option<f64>>>,
    /// Nanoseconds since `epoch` each frame went out, per shard, indexed by event.
    pub sent_at: Vec<Vec<AtomicU64>>,
    /// Frames written in the current round.
    pub frames_out: AtomicU64,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// In a paced round, each shard's permits to write its next frame, released by the pacer.
    pacing: Mutex<Vec<Arc<Semaphore>>>,
    /// Tells the pacer thread of the current round to stop.
    pacer_stop: Mutex<Arc<AtomicBool>>,
}

impl Blaster {
    pub async fn start(load: Arc<Load>, shards: u32, epoch: Instant) -> Blaster {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let sent_at = (0..shards)
            .map(|_| (0..load.events).map(|_| AtomicU64::new(0)).collect())
            .collect();
        let shared = Arc::new(Shared {
            load,
            shards,
            epoch,
            identified: AtomicUsize::new(0),
            go: watch::channel(None).0,
            sent_at,
            frames_out: AtomicU64::new(0),
            pacing: Mutex::new(Vec::new()),
            pacer_stop: Mutex::new(Arc::new(AtomicBool::new(false))),
            tasks: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/api/v10/gateway/bot", get(gateway_bot))
            .route("/gateway", get(upgrade))
            .route("/gateway/", get(upgrade))
            .with_state(shared.clone());
        tokio::spawn(crate::serve_without_nagle(listener, app));
        Blaster { addr, shared }
    }

    pub fn api_url(&self) -> String {
        format!("http://{}/api/v10", self.addr)
    }

    pub fn gateway_url(&self) -> String {
        format!("ws://{}/gateway", self.addr)
    }

    /// Readies a new round: connections from the last one are dropped.
    pub fn reset(&self) {
        for task in self.shared.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
        self.shared
            .pacer_stop
            .lock()
            .unwrap()
            .store(true, Ordering::SeqCst);
        self.shared.identified.store(0, Ordering::SeqCst);
        self.shared.frames_out.store(0, Ordering::SeqCst);
        self.shared.go.send_replace(None);
        for shard in &self.shared.sent_at {
            for t in shard {
                t.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Starts the traffic on every identified connection: `rate` events/s over all shards, or
    /// as fast as the readers take them.
    ///
    /// Paced, each shard sleeps on tokio's timer until its next frame is due. The timer has 1 ms
    /// resolution, so a shard's frames of one millisecond leave in one burst, and all shards'
    /// bursts at once. With `fine`, a thread of its own releases the frames one at a time
    /// instead, shards interleaved (`std::thread::sleep` wakes within ~0.1 ms); the thread
    /// costs CPU on the same cores.
    pub fn go(&self, rate: Option<f64>, fine: bool) {
        *self.shared.pacing.lock().unwrap() = Vec::new();
        if let (Some(rate), true) = (rate, fine) {
            let shards = self.shared.shards as usize;
            let permits: Vec<Arc<Semaphore>> =
                (0..shards).map(|_| Arc::new(Semaphore::new(0))).collect();
            *self.shared.pacing.lock().unwrap() = permits.clone();
            let stop = Arc::new(AtomicBool::new(false));
            *self.shared.pacer_stop.lock().unwrap() = stop.clone();
            let total = self.shared.load.events * shards;
            std::thread::spawn(move || {
                let start = std::time::Instant::now();
                for i in 0..total {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    let now = std::time::Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    permits[i % shards].add_permits(1);
                }
            });
        }
        self.shared.go.send_replace(Some(rate));
    }
}

async fn gateway_bot(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let body = serde_json::json!({
        "url": format!("ws://{host}/gateway"),
        "shards": shared.shards,
        "session_start_limit": {"total": 1_000_000, "remaining": 1_000_000, "reset_after": 86_400_000u64,
            // Every shard its own bucket, so a thousand shards identify at once.
            "max_concurrency": shared.shards},
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(body.to_string().into())
        .expect("a valid response")
}

async fn upgrade(
    ws: WebSocketUpgrade,
    RawQuery(query): RawQuery,
    State(shared): State<Arc<Shared>>,
) -> Response {
    let compression = frames::compression_of(query.as_deref().unwrap_or(""));
    ws.max_message_size(1 << 20)
        .on_upgrade(move |socket| async move {
            let task = tokio::spawn(serve(socket, shared.clone(), compression));
            shared.tasks.lock().unwrap().push(task);
        })
}

/// Whether a text message from the client is a heartbeat (op 1), and its IDENTIFY shard if any.
fn client_op(text: &str) -> (u64, Option<u32>) {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let op = v["op"].as_u64().unwrap_or(u64::MAX);
    let shard = v["d"]["shard"][0].as_u64().map(|s| s as u32);
    (op, shard)
}

async fn serve(mut socket: WebSocket, shared: Arc<Shared>, compression: Compression) {
    let hello = r#"{"op":10,"d":{"heartbeat_interval":41250},"s":null,"t":null}"#;
    if socket
        .send(Message::Binary(frames::piece(compression, hello, true)))
        .await
        .is_err()
    {
        return;
    }
    let ack = frames::piece(compression, r#"{"op":11}"#, false);
    // Until IDENTIFY.
    let shard = loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => match client_op(&text) {
                (2, shard) => break shard.unwrap_or(0),
                (1, _) if socket.send(Message::Binary(ack.clone())).await.is_err() => {
                    return;
                }
                _ => {}
            },
            Some(Ok(_)) => {}
            _ => return,
        }
    };
    let ready = serde_json::json!({
        "v": 10, "user": {"id": "1100000000000000001", "username": "bench", "discriminator": "0", "bot": true},
        "guilds": [], "session_id": format!("bench-{shard}"),
        "resume_gateway_url": format!("ws://127.0.0.1/resume"), "shard": [shard, shared.shards],
        "application": {"id": "1100000000000000001", "flags": 0},
    });
    let ready = frames::dispatch("READY", 1, &ready.to_string());
    if socket
        .send(Message::Binary(frames::piece(compression, &ready, false)))
        .await
        .is_err()
    {
        return;
    }
    shared.identified.fetch_add(1, Ordering::SeqCst);
    let mut go = shared.go.subscribe();
    let mut acks_due = 0usize;
    // Until the round starts, answer heartbeats at once.
    let rate = loop {
        if let Some(rate) = *go.borrow_and_update() {
            break rate;
        }
        tokio::select! {
            changed = go.changed() => if changed.is_err() { return },
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => if client_op(&text).0 == 1
                    && socket.send(Message::Binary(ack.clone())).await.is_err() { return; },
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    };
    let paced = rate.is_some();
    let permits = shared.pacing.lock().unwrap().get(shard as usize).cloned();
    let per_shard = rate.map(|r| r / shared.shards as f64);
    let start = Instant::now();
    let sent_at = &shared.sent_at[shard as usize % shared.sent_at.len()];
    let mut n = 0usize;
    for chunk in &shared.load.encoded(compression).chunks {
        // Heartbeats that arrived meanwhile are answered between chunks, never inside one.
        while let Some(Some(Ok(message))) = futures_util::FutureExt::now_or_never(socket.recv()) {
            if let Message::Text(text) = message {
                if client_op(&text).0 == 1 {
                    acks_due += 1;
                }
            }
        }
        for _ in 0..std::mem::take(&mut acks_due) {
            if socket.feed(Message::Binary(ack.clone())).await.is_err() {
                return;
            }
        }
        for frame in chunk {
            if let Some(permits) = &permits {
                // Behind the pacer: write on. Otherwise flush what is written, then wait.
                let permit = match permits.try_acquire() {
                    Ok(permit) => permit,
                    Err(_) => {
                        if socket.flush().await.is_err() {
                            return;
                        }
                        permits.acquire().await.expect("never closed")
                    }
                };
                permit.forget();
            } else if let Some(r) = per_shard {
                let due = start + Duration::from_secs_f64(n as f64 / r);
                if due > Instant::now() {
                    if socket.flush().await.is_err() {
                        return;
                    }
                    tokio::time::sleep_until(due).await;
                }
            }
            let at = shared.epoch.elapsed().as_nanos() as u64;
            sent_at[n].store(at, Ordering::Relaxed);
            if socket.feed(Message::Binary(frame.clone())).await.is_err() {
                return;
            }
            n += 1;
            if !paced && n.is_multiple_of(FLUSH_EVERY) && socket.flush().await.is_err() {
                return;
            }
        }
        shared
            .frames_out
            .fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    if socket.flush().await.is_err() {
        return;
    }
    // Done: keep the connection, answering heartbeats, until the round is reset.
    while let Some(Ok(message)) = socket.recv().await {
        if let Message::Text(text) = message {
            if client_op(&text).0 == 1 && socket.send(Message::Binary(ack.clone())).await.is_err() {
                return;
            }
        }
    }
}
