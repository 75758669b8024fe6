//! The bot users run (issue 18): many shards of Discord-like traffic, one HTTPS endpoint tens of
//! milliseconds away, minutes of steady state. Where `run` measures the loopback peak, this
//! measures whether a router keeps up with what users have, and what it costs.
//!
//! The parent runs the Discord double (`shardhook_simulator`: hot shards, Poisson traffic, a
//! ledger with each event's time) and an HTTPS sink (a private CA from `router/testdata`,
//! HTTP/1.1 and HTTP/2 offered in ALPN as Cloudflare does) that answers each request after a
//! delay, since this machine's kernel has no netem for a real one. The contestant runs alone in
//! a child process: shardhook as users start it (the release `shardhook run` binary, named by
//! `SHARDHOOK_BIN`, with a config file, the token and signing secret in its environment, its
//! control API, spent ids, checkpoints and logging all on; the endpoint's `ca_file` the test
//! CA), or the twilight peer in its natural form (a task per event posting on reqwest). The
//! largest queue is read each second: shardhook's from its `/metrics`, the peer's from its
//! `stats` lines.
//!
//! Added latency is an event's arrival at the sink (before the sink's delay) minus its creation
//! at the double: what the router added on top of the endpoint's own time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use shardhook_simulator::{SimConfig, Simulator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::time::Instant;

use crate::{cpu_of, quantile, status_kib, stop};

/// The test CA and the `localhost` certificate it signed (valid until 2126).
const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../router/testdata");
/// The token the double accepts from both contestants.
const TOKEN: &str = "bench-token";

/// The shape of a run.
#[derive(Clone)]
pub struct Options {
    pub shards: u32,
    /// Events per second over all shards.
    pub rate: f64,
    /// Share of the shards that carry `hot_share` of the traffic (none when `hot_share` is 0:
    /// every shard at the same rate).
    pub hot_fraction: f64,
    pub hot_share: f64,
    /// The endpoint's own time per request.
    pub delay: Duration,
    /// Between every shard being ready and the measured window.
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
    pub contestants: Vec<Contestant>,
}

/// Who is measured.
#[derive(Clone, Debug)]
pub enum Contestant {
    /// shardhook, at its defaults but for these settings (`max_events`, `max_in_flight`,
    /// `checkpoint_interval_ms`, `compression` = zlib-stream|zstd-stream|none, `http2` =
    /// auto|never|always), written `key=value+key=value`; empty for the defaults.
    Shardhook { settings: String },
    /// twilight-gateway, a task per event posting on reqwest.
    Twilight,
}

impl Contestant {
    fn name(&self) -> String {
        match self {
            Contestant::Shardhook { settings } if settings.is_empty() => {
                "shardhook (defaults)".to_owned()
            }
            Contestant::Shardhook { settings } => {
                format!("shardhook, {}", settings.replace('+', ", "))
            }
            Contestant::Twilight => "twilight (task per event, reqwest)".to_owned(),
        }
    }
}

/// What the sink saw.
#[derive(Default)]
struct Seen {
    /// First arrival of each (shard, seq).
    arrivals: HashMap<(u32, u64), Instant>,
    /// When each request arrived, and how many events it carried.
    requests: Vec<(Instant, usize)>,
}

#[derive(Default)]
struct SinkState {
    seen: Mutex<Seen>,
    handshakes: AtomicU64,
    delay: Duration,
}

/// Serves HTTPS on `listener` until the task is aborted, answering 204 after `state.delay`.
async fn sink(listener: TcpListener, state: Arc<SinkState>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = CertificateDer::from_pem_file(format!("{TESTDATA}/tls-localhost.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{TESTDATA}/tls-localhost.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            state.handshakes.fetch_add(1, Ordering::Relaxed);
            let service = hyper::service::service_fn(move |request| answer(state.clone(), request));
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// Records a request's events, then answers after the endpoint's delay.
async fn answer(
    state: Arc<SinkState>,
    request: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    let at = Instant::now();
    let webhook_id = request
        .headers()
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let events = events_of(&webhook_id, &body);
    {
        let mut seen = state.seen.lock().unwrap();
        seen.requests.push((at, events.len()));
        for key in events {
            seen.arrivals.entry(key).or_insert(at);
        }
    }
    tokio::time::sleep(state.delay).await;
    Ok(Response::builder()
        .status(204)
        .body(Empty::new())
        .expect("a valid response"))
}

/// The (shard, seq) of each event in a request: a shardhook request lists batches, each
/// naming its shard and listing its events; the peer posts one gateway message, its shard in
/// the `webhook-id` (`msg_{shard}_...`).
fn events_of(webhook_id: &str, body: &[u8]) -> Vec<(u32, u64)> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    if let Some(batches) = value["batches"].as_array() {
        return batches
            .iter()
            .flat_map(|batch| {
                let shard = batch["shard_id"].as_u64().unwrap_or(u64::MAX) as u32;
                let events = batch["events"].as_array().map_or(&[][..], Vec::as_slice);
                events.iter().filter_map(move |e| Some((shard, e["s"].as_u64()?)))
            })
            .collect();
    }
    let shard = webhook_id
        .strip_prefix("msg_")
        .and_then(|rest| rest.split('_').next())
        .and_then(|s| s.parse().ok());
    match (shard, value["s"].as_u64()) {
        (Some(shard), Some(seq)) => vec![(shard, seq)],
        _ => Vec::new(),
    }
}

/// One contestant's figures over the window.
struct Figures {
    received: usize,
    delivered: usize,
    max_depth: u64,
    latency_ms: Vec<f64>,
    cpu_percent: f64,
    rss_mib: f64,
    requests_per_event: f64,
    handshakes_per_minute: f64,
    handshakes_warmup: u64,
    reconnects: u64,
    /// fsync and fdatasync calls per second, and renames per second, over `SYSCALL_WINDOW`
    /// after the window (strace attached; `None` without strace).
    syncs: Option<(f64, f64)>,
}

/// How long strace counts the contestant's fsyncs, after the measured window (ptrace slows the
/// process, so not during it).
const SYSCALL_WINDOW: Duration = Duration::from_secs(10);

/// Counts `fsync`, `fdatasync` and `rename` calls of `pid`'s threads for `SYSCALL_WINDOW` with
/// strace, per second: (syncs, renames).
async fn count_syncs(pid: u32) -> Option<(f64, f64)> {
    let out = std::env::temp_dir().join(format!("shardhook-distant-strace-{pid}"));
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-c",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
            "-o",
        ])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    tokio::time::sleep(SYSCALL_WINDOW).await;
    let strace_pid = strace.id()?;
    // SIGINT: strace detaches and writes its summary.
    unsafe { libc::kill(strace_pid as i32, libc::SIGINT) };
    let _ = strace.wait().await;
    let summary = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    let calls = |names: &[&str]| -> f64 {
        summary
            .lines()
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let name = *cols.last()?;
                // % time, seconds, usecs/call, calls, [errors,] syscall
                names
                    .contains(&name)
                    .then(|| cols.get(3)?.parse::<f64>().ok())?
            })
            .sum()
    };
    let secs = SYSCALL_WINDOW.as_secs_f64();
    Some((
        calls(&["fsync", "fdatasync"]) / secs,
        calls(&["rename", "renameat", "renameat2"]) / secs,
    ))
}

/// Runs every contestant in turn and prints the table.
pub async fn run(o: Options, secret: &str) {
    let hot_shards = match o.hot_share > 0.0 {
        true => ((o.shards as f64 * o.hot_fraction).round() as u32).max(1),
        false => 0,
    };
    let hot_rate = o.rate * o.hot_share / hot_shards.max(1) as f64;
    let cold_rate = o.rate * (1.0 - o.hot_share) / (o.shards - hot_shards).max(1) as f64;
    println!(
        "distant: {} shards, {} events/s ({hot_shards} hot shards at {hot_rate:.1}/s, the rest at {cold_rate:.2}/s, Poisson), \
         endpoint HTTPS answering {} ms late (HTTP/1.1 and h2 in ALPN), {} s warm-up, {} s window",
        o.shards,
        o.rate,
        o.delay.as_millis(),
        o.warmup.as_secs(),
        o.window.as_secs()
    );
    let mut rows = Vec::new();
    for contestant in &o.contestants {
        let sim = SimConfig {
            token: TOKEN.to_owned(),
            shards: o.shards,
            guilds: o.shards * 2,
            rate: cold_rate,
            hot_shards,
            hot_rate,
            poisson: true,
            max_concurrency: o.shards,
            session_start_limit: o.shards * 4 + 100,
            ping_every: 0,
            ..SimConfig::default()
        };
        let figures = round(&o, sim, contestant, secret).await;
        rows.push((contestant.name(), figures));
    }
    println!();
    println!(
        "| contestant | delivered ÷ received | largest queue | added latency p50 / p99 / max | CPU, % of one core | RSS | requests per event | requests per month | Workers / Lambda request fees per month | TLS handshakes per minute after warm-up (during warm-up) | fsyncs / renames per second |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, f) in &rows {
        let q = |p| quantile(&f.latency_ms, p);
        // At the load's event rate, for 30 days: Workers' paid plan charges $0.30 per million
        // past the 10 million included, Lambda $0.20 per million (its duration is billed
        // apart and not counted here).
        let per_month = f.requests_per_event * o.rate * 86_400.0 * 30.0;
        let workers = (per_month - 10e6).max(0.0) / 1e6 * 0.30;
        let lambda = per_month / 1e6 * 0.20;
        println!(
            "| {name} | {}/{} ({:.4}) | {} | {:.1} / {:.1} / {:.1} ms | {:.1} | {:.0} MiB | {:.3} | {:.0} M | ${:.0} / ${:.0} | {:.1} ({}) | {} |",
            f.delivered,
            f.received,
            f.delivered as f64 / f.received.max(1) as f64,
            f.max_depth,
            q(0.5),
            q(0.99),
            q(1.0),
            f.cpu_percent,
            f.rss_mib,
            f.requests_per_event,
            per_month / 1e6,
            workers,
            lambda,
            f.handshakes_per_minute,
            f.handshakes_warmup,
            match f.syncs {
                Some((syncs, renames)) => format!("{syncs:.1} / {renames:.1}"),
                None => "n/a (no strace)".to_owned(),
            },
        );
        if f.reconnects > 0 {
            println!(
                "|   ({name}: {} gateway reconnects during the run) |",
                f.reconnects
            );
        }
    }
}

async fn round(
    o: &Options,
    sim_config: SimConfig,
    contestant: &Contestant,
    secret: &str,
) -> Figures {
    let sim = Simulator::bind("127.0.0.1:0".parse().unwrap(), sim_config)
        .await
        .expect("the double starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!(
        "https://localhost:{}/",
        listener.local_addr().unwrap().port()
    );
    let state = Arc::new(SinkState {
        delay: o.delay,
        ..SinkState::default()
    });
    let serving = tokio::spawn(sink(listener, state.clone()));
    let ca_file = format!("{TESTDATA}/tls-ca.pem");
    // BENCH_WRAP runs the contestant under a profiler (e.g. "heaptrack"); CPU and RSS are then
    // the wrapper's, not comparable.
    let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    let program = match contestant {
        Contestant::Shardhook { .. } => std::env::var("SHARDHOOK_BIN")
            .expect("SHARDHOOK_BIN names the release shardhook binary (bench/run sets it)")
            .into(),
        Contestant::Twilight => std::env::current_exe().expect("own path"),
    };
    let mut cmd = match wrap.next() {
        Some(tool) => {
            let mut cmd = Command::new(tool);
            cmd.args(wrap).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    // The router's control API, where its queue depths are read.
    let mut metrics_url = None;
    let state_dir = std::env::temp_dir().join(format!(
        "shardhook-distant-{}-{}",
        std::process::id(),
        sim.addr().port()
    ));
    match contestant {
        Contestant::Shardhook { settings } => {
            let control = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            metrics_url = Some(format!("http://{control}/metrics"));
            let config = shardhook_config(
                &sim.api_url(),
                &sink_url,
                &ca_file,
                &state_dir,
                control,
                settings,
            );
            let path = state_dir.with_extension("toml");
            std::fs::write(&path, config).expect("write the contestant's config");
            let log = std::fs::File::create(state_dir.with_extension("log")).expect("a log file");
            // `threads=N`: tokio's worker threads (TOKIO_WORKER_THREADS), the router's alone.
            if let Some(n) = settings.split('+').find_map(|s| s.strip_prefix("threads=")) {
                cmd.env("TOKIO_WORKER_THREADS", n);
            }
            cmd.arg("run")
                .arg("--config")
                .arg(&path)
                .env("DISCORD_TOKEN", TOKEN)
                .env("SHARDHOOK_SIGNING_SECRET", secret)
                .stderr(log);
        }
        Contestant::Twilight => {
            cmd.args([
                "contestant",
                "distant-twilight",
                &format!("ws://{}/gateway", sim.addr()),
                &sink_url,
                secret,
                &ca_file,
                &o.shards.to_string(),
            ])
            .stderr(std::process::Stdio::inherit());
        }
    };
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a contestant");
    let pid = child.id().expect("a running child");
    // The largest queue since the window opened: the peer prints `stats DEPTH` lines, the
    // router's `/metrics` has each shard's `shardhook_queue_depth`.
    let depth = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicUsize::new(0));
    let stdout = child.stdout.take().expect("piped");
    let (d, m) = (depth.clone(), measuring.clone());
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let Some(value) = line.strip_prefix("stats ") else {
                continue;
            };
            let value: u64 = value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if m.load(Ordering::Relaxed) == 1 {
                d.fetch_max(value, Ordering::Relaxed);
            }
        }
    });
    if let Some(url) = metrics_url {
        let (d, m) = (depth.clone(), measuring.clone());
        tokio::spawn(async move {
            // Every 5 s, a scrape a little more often than Prometheus' usual 15 s: rendering
            // 1,000 shards' series costs the router CPU, as any scrape does.
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                let Ok(answer) = client.get(&url).send().await else {
                    continue;
                };
                let text = answer.text().await.unwrap_or_default();
                let deepest = text
                    .lines()
                    .filter(|l| l.starts_with("shardhook_queue_depth{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .fold(0.0, f64::max);
                if m.load(Ordering::Relaxed) == 1 {
                    d.fetch_max(deepest as u64, Ordering::Relaxed);
                }
            }
        });
    }
    // Every shard ready: READY in the ledger for each.
    let shards = o.shards as usize;
    let ready = tokio::time::timeout(
        Duration::from_secs(300),
        sim.wait_for(|obs| {
            let n = obs.ledger.iter().filter(|e| e.event == "READY").count();
            (n >= shards).then_some(())
        }),
    )
    .await;
    if ready.is_err() {
        eprintln!("distant: not every shard was ready within 300 s");
    }
    let handshakes_ready = state.handshakes.load(Ordering::Relaxed);
    tokio::time::sleep(o.warmup).await;
    // The window.
    let (start, cpu_start) = (Instant::now(), cpu_of(pid));
    let handshakes_start = state.handshakes.load(Ordering::Relaxed);
    measuring.store(1, Ordering::Relaxed);
    let mut rss_kib = 0;
    let end = start + o.window;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_kib = rss_kib.max(status_kib(pid, "VmRSS"));
    }
    let cpu = cpu_of(pid) - cpu_start;
    let handshakes = state.handshakes.load(Ordering::Relaxed) - handshakes_start;
    measuring.store(2, Ordering::Relaxed);
    // Events created in the window get a grace period to arrive, meanwhile the fsyncs are
    // counted.
    let syncs = count_syncs(pid).await;
    let created: Vec<(u32, u64, Instant)> = sim.observed(|obs| {
        obs.ledger
            .iter()
            .filter(|e| e.at >= start && e.at < end)
            .map(|e| (e.shard, e.seq, e.at))
            .collect()
    });
    let reconnects = sim
        .observed(|obs| obs.connections)
        .saturating_sub(o.shards as u64);
    stop(&mut child).await;
    serving.abort();
    let _ = std::fs::remove_dir_all(&state_dir);
    let _ = std::fs::remove_file(state_dir.with_extension("toml"));
    let _ = std::fs::remove_file(state_dir.with_extension("log"));
    let seen = state.seen.lock().unwrap();
    let mut latency_ms: Vec<f64> = created
        .iter()
        .filter_map(|(shard, seq, at)| {
            let arrived = seen.arrivals.get(&(*shard, *seq))?;
            Some(arrived.duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    latency_ms.sort_by(|a, b| a.total_cmp(b));
    let (requests, events) = seen
        .requests
        .iter()
        .filter(|(at, _)| *at >= start && *at < end)
        .fold((0usize, 0usize), |(r, e), (_, n)| (r + 1, e + n));
    Figures {
        received: created.len(),
        delivered: latency_ms.len(),
        max_depth: depth.load(Ordering::Relaxed),
        latency_ms,
        cpu_percent: cpu / o.window.as_secs_f64() * 100.0,
        rss_mib: rss_kib as f64 / 1024.0,
        requests_per_event: requests as f64 / events.max(1) as f64,
        handshakes_per_minute: handshakes as f64 / o.window.as_secs_f64() * 60.0,
        handshakes_warmup: handshakes_start - handshakes_ready,
        reconnects,
        syncs,
    }
}

/// `shardhook run`'s config file for the contestant: its defaults, but for the double's API,
/// the sink (with the test CA as its `ca_file`), a state directory and control address of its
/// own, and `settings` (`key=value+key=value`: `max_events`, `max_in_flight`,
/// `checkpoint_interval_ms`, `compression` = zlib-stream|zstd-stream|none, `http2` =
/// auto|never|always, `threads` (tokio's worker threads, not a config key); empty or `default` for none).
fn shardhook_config(
    api_url: &str,
    sink_url: &str,
    ca_file: &str,
    state_dir: &std::path::Path,
    control: std::net::SocketAddr,
    settings: &str,
) -> String {
    let (mut discord, mut state, mut batch, mut endpoint) = (
        format!("api_url = {api_url:?}\nshards = \"auto\"\n"),
        format!("dir = {:?}\n", state_dir.display().to_string()),
        String::new(),
        format!("name = \"sink\"\nurl = {sink_url:?}\nca_file = {ca_file:?}\n"),
    );
    for setting in settings.split('+').filter(|s| !s.is_empty() && *s != "default") {
        let (key, value) = setting.split_once('=').expect("key=value");
        let number = || value.parse::<u64>().expect("a number");
        match key {
            "max_events" => batch += &format!("max_events = {}\n", number()),
            "max_in_flight" => endpoint += &format!("max_in_flight = {}\n", number()),
            "checkpoint_interval_ms" => {
                state += &format!("checkpoint_interval = \"{}ms\"\n", number())
            }
            "compression" => discord += &format!("compression = {value:?}\n"),
            "http2" => endpoint += &format!("http2 = {value:?}\n"),
            // Not a config key: the runtime's worker threads, set in `round`.
            "threads" => {}
            other => panic!("unknown setting {other}"),
        }
    }
    format!(
        "[discord]\n{discord}\n[control]\nlisten = \"{control}\"\n\n[state]\n{state}\n[batch]\n{batch}\n[[endpoints]]\n{endpoint}"
    )
}

/// The peer in its natural form: twilight-gateway shards, and a task per event posting its
/// message, signed, on reqwest (which trusts the test CA and takes h2 when offered). Prints
/// `stats IN_FLIGHT` each second: requests not yet answered.
pub async fn twilight_child(
    gateway_url: &str,
    sink_url: &str,
    secret: &str,
    ca_file: &str,
    shards: u32,
) {
    use futures_util::StreamExt;
    use twilight_gateway::queue::InMemoryQueue;
    use twilight_gateway::{ConfigBuilder, Intents, Message as TwMessage, Shard, ShardId};
    use twilight_model::gateway::event::GatewayEventDeserializer;

    let signer = Arc::new(shardhook::Signer::new(
        shardhook::SigningKey::parse(secret).expect("a valid secret"),
        vec![],
    ));
    let pem = std::fs::read(ca_file).expect("the CA file");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("a PEM CA")])
        .build()
        .expect("a client");
    let in_flight = Arc::new(AtomicU64::new(0));
    let queue = InMemoryQueue::new(
        shards as u16,
        1_000_000,
        Duration::from_secs(86_400),
        1_000_000,
    );
    let config = ConfigBuilder::new(TOKEN.into(), Intents::GUILD_MESSAGES)
        .proxy_url(gateway_url.to_owned())
        .queue(queue)
        .build();
    for id in 0..shards {
        let mut shard = Shard::with_config(ShardId::new(id, shards), config.clone());
        let (signer, client, in_flight) = (signer.clone(), client.clone(), in_flight.clone());
        let sink_url = sink_url.to_owned();
        tokio::spawn(async move {
            while let Some(item) = shard.next().await {
                let text = match item {
                    Ok(TwMessage::Text(text)) => text,
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("twilight shard {id}: {e}");
                        continue;
                    }
                };
                let Some(event) = GatewayEventDeserializer::from_json(&text) else {
                    continue;
                };
                let Some(seq) = event.sequence() else {
                    continue;
                };
                let webhook_id = format!("msg_{id}_0_{seq}_{seq}");
                let (signer, client, url, in_flight) = (
                    signer.clone(),
                    client.clone(),
                    sink_url.clone(),
                    in_flight.clone(),
                );
                in_flight.fetch_add(1, Ordering::Relaxed);
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
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        println!("stats {}", in_flight.load(Ordering::Relaxed));
    }
}
