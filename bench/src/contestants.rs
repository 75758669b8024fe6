//! The contestants, each run as a child process so its CPU and memory are its own:
//! shardhook through its library's one start entry (`App::start`, as `shardhook run`), and the limit, a reader
//! that only inflates the frames and scans each message's envelope (name, seq, `d`'s extent).
//! shardhook and the limit take the compression compression (`zlib-stream` or `zstd-stream`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flate2::{Decompress, FlushDecompress};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use shardhook::config::{
    BatchConfig, Compression, Config, EndpointConfig, ShardsConfig, SigningConfig, StateConfig,
};
use shardhook::app::{App, CancellationToken, StartOptions};
use shardhook::{SigningKey, Token};
use tokio_tungstenite::tungstenite::Message;

use crate::frames::FIRST_SEQ;

/// How the shardhook contestant batches and orders.
pub struct Batching {
    pub max_events: usize,
    pub linger_ms: u64,
    /// `delivery.ordering = "shard"` (the default); otherwise `"none"`.
    pub ordered: bool,
}

/// The shardhook contestant's state directory (checkpoints, spool): one per process, removed
/// by [`remove_state`] when the contestant is told to stop.
pub fn state_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shardhook-bench-{}", std::process::id()))
}

/// Removes this process's state directory, if it made one (each is ~4 MiB, mostly the spool).
pub fn remove_state() {
    let _ = std::fs::remove_dir_all(state_dir());
}

/// Runs shardhook against `api_url`, posting to `sink_url`, until killed.
pub async fn shardhook(
    api_url: &str,
    sink_url: &str,
    secret: &str,
    batching: Batching,
    compression: Compression,
) {
    let key = SigningKey::parse(secret).expect("a valid secret");
    let mut config = Config::default();
    config.discord.token = Token::new("bench-token");
    config.discord.api_url = api_url.to_owned();
    config.discord.compression = compression;
    config.discord.shards = ShardsConfig::Auto;
    config.signing = SigningConfig {
        secret: Some(key),
        previous_secrets: vec![],
        control_secret: None,
        ed25519_private_key: None,
    };
    config.endpoints = vec![EndpointConfig::new("sink", sink_url)];
    config.state = StateConfig {
        dir: state_dir(),
        ..StateConfig::default()
    };
    config.batch = BatchConfig {
        max_events: batching.max_events,
        linger: Duration::from_millis(batching.linger_ms),
        ..BatchConfig::default()
    };
    if !batching.ordered {
        config.delivery.ordering = shardhook::config::Ordering::None;
    }
    // Its control API on a port of its own: contestants may run side by side.
    config.control.listen = "127.0.0.1:0".parse().expect("an address");
    let shutdown = CancellationToken::new();
    let app = App::start(config, shutdown, StartOptions::default())
        .await
        .expect("the router starts");
    let _ = app.run().await;
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    t: Option<&'a str>,
    s: Option<u64>,
    #[allow(dead_code)]
    op: u8,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
}

/// Reads `shards` connections, inflating and scanning every message; prints `done` once
/// `events` traffic events per shard were scanned, then keeps reading until killed.
pub async fn limit(gateway_url: &str, shards: u32, events: u64, compression: Compression) {
    let scanned = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let target = events * shards as u64;
    for shard in 0..shards {
        let url = format!("{gateway_url}/?v=10&encoding=json&compress={compression}");
        let (scanned, done) = (scanned.clone(), done.clone());
        tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            let mut decoder = Decoder::new(compression);
            let mut text: Vec<u8> = Vec::with_capacity(1 << 16);
            let mut bytes_of_d = 0usize;
            while let Some(Ok(message)) = ws.next().await {
                let Message::Binary(frame) = message else {
                    continue;
                };
                if !decoder.message(&frame, &mut text) {
                    continue;
                }
                let envelope: Envelope = serde_json::from_slice(&text).expect("json");
                match (envelope.t, envelope.s) {
                    (_, None) if text.starts_with(br#"{"op":10"#) => {
                        let identify = serde_json::json!({"op": 2, "d": {
                            "token": "bench-token", "intents": 513,
                            "properties": {"os": "linux", "browser": "bench", "device": "bench"},
                            "shard": [shard, shards]}});
                        ws.send(Message::Text(identify.to_string().into()))
                            .await
                            .expect("identify");
                    }
                    (Some(_), Some(s)) if s >= FIRST_SEQ => {
                        bytes_of_d += envelope.d.map_or(0, |d| d.get().len());
                        if scanned.fetch_add(1, Ordering::Relaxed) + 1 == target {
                            done.notify_one();
                        }
                    }
                    _ => {}
                }
            }
            std::hint::black_box(bytes_of_d);
        });
    }
    done.notified().await;
    println!("done");
    std::future::pending::<()>().await;
}

/// The limit's decompression: the least a reader must do per message.
enum Decoder {
    /// Bytes are kept until the `00 00 ff ff` suffix, then inflated in one go.
    Zlib { z: Decompress, compressed: Vec<u8> },
    /// Every WebSocket message is one gateway message.
    Zstd(zstd::stream::raw::Decoder<'static>),
}

impl Decoder {
    fn new(compression: Compression) -> Decoder {
        match compression {
            Compression::ZlibStream => Decoder::Zlib {
                z: Decompress::new(true),
                compressed: Vec::new(),
            },
            Compression::ZstdStream => {
                Decoder::Zstd(zstd::stream::raw::Decoder::new().expect("a zstd context"))
            }
            Compression::None => panic!("the blast benchmark measures compressed gateways"),
        }
    }

    /// Decompresses one WebSocket message into `text`; false while a gateway message is
    /// incomplete.
    fn message(&mut self, frame: &[u8], text: &mut Vec<u8>) -> bool {
        text.clear();
        match self {
            Decoder::Zlib { z, compressed } => {
                compressed.extend_from_slice(frame);
                if !compressed.ends_with(&[0, 0, 0xff, 0xff]) {
                    return false;
                }
                let start = z.total_in();
                loop {
                    let used = (z.total_in() - start) as usize;
                    if text.capacity() - text.len() < 4096 {
                        text.reserve(text.capacity());
                    }
                    z.decompress_vec(&compressed[used..], text, FlushDecompress::Sync)
                        .expect("inflate");
                    if (z.total_in() - start) as usize == compressed.len()
                        && text.len() < text.capacity()
                    {
                        break;
                    }
                }
                compressed.clear();
            }
            Decoder::Zstd(d) => {
                use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
                let mut src = InBuffer::around(frame);
                loop {
                    if text.capacity() - text.len() < 4096 {
                        text.reserve(text.capacity());
                    }
                    let pos = text.len();
                    d.run(&mut src, &mut OutBuffer::around_pos(text, pos))
                        .expect("zstd");
                    if src.pos() == frame.len() && text.len() < text.capacity() {
                        break;
                    }
                }
            }
        }
        true
    }
}

/// The peer: a forwarder a bot author could write on twilight-gateway (zlib-stream), posting
/// each message's raw text, signed the same way (Standard Webhooks, the same `Signer`), with
/// reqwest's pooled keep-alive client and up to 64 requests in flight like shardhook's
/// endpoint default. Unlike shardhook it keeps no per-shard order and retries nothing.
pub async fn twilight(gateway_url: &str, sink_url: &str, secret: &str, shards: u32) {
    use twilight_gateway::queue::InMemoryQueue;
    use twilight_gateway::{ConfigBuilder, Intents, Message as TwMessage, Shard, ShardId};
    use twilight_model::gateway::event::GatewayEventDeserializer;

    let signer = Arc::new(shardhook::Signer::new(
        SigningKey::parse(secret).expect("a valid secret"),
        vec![],
    ));
    let client = reqwest::Client::new();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(64));
    let queue = InMemoryQueue::new(
        shards as u16,
        1_000_000,
        Duration::from_secs(86_400),
        1_000_000,
    );
    let config = ConfigBuilder::new("bench-token".into(), Intents::GUILD_MESSAGES)
        .proxy_url(gateway_url.to_owned())
        .queue(queue)
        .build();
    for id in 0..shards {
        let mut shard = Shard::with_config(ShardId::new(id, shards), config.clone());
        let (signer, client, in_flight) = (signer.clone(), client.clone(), in_flight.clone());
        let sink_url = sink_url.to_owned();
        tokio::spawn(async move {
            while let Some(item) = shard.next().await {
                let Ok(TwMessage::Text(text)) = item else {
                    continue;
                };
                let Some(event) = GatewayEventDeserializer::from_json(&text) else {
                    continue;
                };
                let Some(seq) = event.sequence() else {
                    continue;
                };
                let webhook_id = format!("msg_{id}_0_{seq}_{seq}");
                let permit = in_flight.clone().acquire_owned().await.expect("open");
                let (signer, client, url) = (signer.clone(), client.clone(), sink_url.clone());
                tokio::spawn(async move {
                    let ts = shardhook::unix_now();
                    let signature = signer.sign(&webhook_id, ts, text.as_bytes());
                    let _ = client
                        .post(url)
                        .header("content-type", "application/json")
                        .header("webhook-id", webhook_id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", signature)
                        .body(text)
                        .send()
                        .await;
                    drop(permit);
                });
            }
        });
    }
    std::future::pending::<()>().await;
}

/// The sink's own ceiling: a plain load client posting `total` one-event requests (a
/// representative signed body) on 64 connections, one request each at a time, starting when
/// `go` is notified (the parent writes "go" on stdin). It is hyper's connection API, the HTTP
/// stack shardhook delivers on: on reqwest the client itself cost 22-26 CPU µs per request,
/// more than a shardhook event in all, and the "ceiling" was below what shardhook reached
/// (`runs/2026-11-23T0830-load-client-reqwest-hyper-raw.txt`).
pub async fn load_client(sink_url: &str, secret: &str, total: u64, go: Arc<tokio::sync::Notify>) {
    use http_body_util::{BodyExt, Full};
    go.notified().await;
    let signer = Arc::new(shardhook::Signer::new(
        SigningKey::parse(secret).expect("a valid secret"),
        vec![],
    ));
    let d = format!(r#"{{"content":"{}"}}"#, "x".repeat(1200));
    let body = bytes::Bytes::from(format!(
        r#"{{"v":1,"shard_id":0,"shard_count":1,"session_id":"bench-0","events":[{{"t":"MESSAGE_CREATE","s":2,"d":{d}}}]}}"#
    ));
    let authority = sink_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (signer, next, body, authority) = (
            signer.clone(),
            next.clone(),
            body.clone(),
            authority.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .expect("the sink accepts");
            tcp.set_nodelay(true).expect("nodelay");
            let (mut send, connection) = hyper::client::conn::http1::handshake::<
                _,
                Full<bytes::Bytes>,
            >(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("an HTTP/1.1 connection");
            tokio::spawn(connection);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let seq = FIRST_SEQ + i;
                let id = format!("msg_0_0_{seq}_{seq}");
                let ts = shardhook::unix_now();
                let signature = signer.sign(&id, ts, &body);
                let request = hyper::Request::post("/")
                    .header("host", &authority)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts)
                    .header("webhook-signature", signature)
                    .body(Full::new(body.clone()))
                    .expect("a valid request");
                if send.ready().await.is_err() {
                    return;
                }
                match send.send_request(request).await {
                    Ok(response) => {
                        let _ = response.into_body().collect().await;
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    std::future::pending::<()>().await;
}
