//! The REST proxy's cost (issue 21): the latency the router adds to a handler's call of
//! Discord's REST API at 40 requests/s with no waiting, and the router's CPU per request.
//!
//! The parent runs Discord's REST double (`shardhook_simulator`, its limits set out of reach so
//! nothing waits at the double or in the router) and the load: every 1/rate s one create-message
//! request straight to the double, with the bot token, as a handler without the proxy sends it,
//! and one through the router, signed as the README says; the two interleaved (which goes first
//! alternates), each path on a keep-alive connection pool of its own, 20 channels in turn. The
//! router runs alone in a child process: the control API with the REST proxy on, built through
//! the library as `shardhook run` builds it (spent ids kept in its state directory, each
//! written and synced before the answer), with no shards, so its CPU is the proxy's.
//!
//! A request's latency is from just before it is sent to its answer's body read; the router's
//! added latency is each quantile through it minus the same quantile direct.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardhook_simulator::{SimConfig, Simulator};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use crate::{cpu_of, quantile, status_kib, stop};

/// The token the double accepts.
const TOKEN: &str = "bench-token";
/// Channels the requests go to in turn.
const CHANNELS: u64 = 20;

/// The shape of a run.
#[derive(Clone)]
pub struct Options {
    /// Requests per second on each path.
    pub rate: f64,
    /// Load before the measured window (connections opened, caches warm).
    pub warmup: Duration,
    /// The measured window.
    pub window: Duration,
}

/// Which way a request went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Proxied,
}

/// One request of the measured window.
struct Sample {
    path: Path,
    status: u16,
    ms: f64,
}

/// Runs the load on both paths and prints the table.
pub async fn run(o: Options, secret: &str) {
    println!(
        "rest: {} requests/s on each path (straight to the double, and through the router), interleaved, over {CHANNELS} channels; \
         the double's rate limits out of reach; {} s warm-up, {} s window; load average before: {}",
        o.rate,
        o.warmup.as_secs(),
        o.window.as_secs(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let sim = Simulator::bind(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            token: TOKEN.to_owned(),
            shards: 1,
            rate: 0.0,
            events_per_shard: Some(0),
            rest_route_limit: u32::MAX,
            rest_route_window: Duration::from_secs(1),
            rest_global_limit: u32::MAX,
            ..SimConfig::default()
        },
    )
    .await
    .expect("the double starts");
    let exe = std::env::current_exe().expect("own path");
    let mut child = Command::new(exe)
        .args(["contestant", "rest-router", &sim.api_url(), secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the router");
    let pid = child.id().expect("a running child");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let router = loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if let Some(addr) = line.strip_prefix("listening ") {
                    break format!("http://{addr}");
                }
            }
            _ => panic!("the router exited before it listened"),
        }
    };
    // Idle, before any load: what the router costs doing nothing.
    let idle = Duration::from_secs(3);
    let cpu_idle0 = cpu_of(pid);
    tokio::time::sleep(idle).await;
    let idle_percent = (cpu_of(pid) - cpu_idle0) / idle.as_secs_f64() * 100.0;

    let signer = shardhook::Signer::new(
        shardhook::SigningKey::parse(secret).expect("a valid secret"),
        vec![],
    );
    let load = Load {
        direct: reqwest::Client::new(),
        proxied: reqwest::Client::new(),
        api_url: sim.api_url(),
        router,
        signer,
        samples: Mutex::new(Vec::new()),
    };
    let load = Arc::new(load);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = tokio::task::JoinSet::new();
    let start = Instant::now();
    let window_start = start + o.warmup;
    let end = window_start + o.window;
    let (mut cpu_start, mut window_requests) = (None, 0u64);
    let mut n = 0u64;
    loop {
        let at = tick.tick().await;
        if at >= end {
            break;
        }
        let measured = at >= window_start;
        if measured && cpu_start.is_none() {
            cpu_start = Some(cpu_of(pid));
        }
        window_requests += u64::from(measured);
        let order = if n.is_multiple_of(2) {
            [Path::Direct, Path::Proxied]
        } else {
            [Path::Proxied, Path::Direct]
        };
        for path in order {
            let load = load.clone();
            sent.spawn(async move { load.send(path, n, measured).await });
        }
        n += 1;
    }
    let cpu = cpu_of(pid) - cpu_start.unwrap_or(0.0);
    let window_secs = (Instant::now() - window_start).as_secs_f64();
    while sent.join_next().await.is_some() {}
    let rss_peak_mib = status_kib(pid, "VmHWM") as f64 / 1024.0;
    stop(&mut child).await;

    let samples = std::mem::take(&mut *load.samples.lock().unwrap());
    let of = |path| {
        let mut ms: Vec<f64> = samples
            .iter()
            .filter(|s| s.path == path)
            .map(|s| s.ms)
            .collect();
        ms.sort_by(f64::total_cmp);
        let bad = samples
            .iter()
            .filter(|s| s.path == path && s.status != 200)
            .count();
        (ms, bad)
    };
    let (direct, direct_bad) = of(Path::Direct);
    let (proxied, proxied_bad) = of(Path::Proxied);
    println!();
    println!("| path | requests (not 200) | latency p50 / p90 / p99 / max |");
    println!("|---|---:|---:|");
    for (name, ms, bad) in [
        ("straight to the double", &direct, direct_bad),
        ("through the router", &proxied, proxied_bad),
    ] {
        println!(
            "| {name} | {} ({bad}) | {:.2} / {:.2} / {:.2} / {:.2} ms |",
            ms.len(),
            quantile(ms, 0.5),
            quantile(ms, 0.9),
            quantile(ms, 0.99),
            quantile(ms, 1.0),
        );
    }
    let added = |q| quantile(&proxied, q) - quantile(&direct, q);
    println!(
        "| added by the router | | {:.2} / {:.2} / {:.2} / {:.2} ms |",
        added(0.5),
        added(0.9),
        added(0.99),
        added(1.0)
    );
    println!();
    println!(
        "router CPU over the window: {:.3} s for {window_requests} proxied requests in {window_secs:.1} s = {:.0} µs per request ({:.1}% of one core); idle before the load: {idle_percent:.2}% of one core; peak RSS {rss_peak_mib:.0} MiB",
        cpu,
        cpu / window_requests.max(1) as f64 * 1e6,
        cpu / window_secs * 100.0,
    );
}

/// The load's two paths and what the measured window recorded.
struct Load {
    /// Keep-alive connections straight to the double.
    direct: reqwest::Client,
    /// Keep-alive connections to the router.
    proxied: reqwest::Client,
    /// The double's `/api/v10`.
    api_url: String,
    /// The router's control API.
    router: String,
    signer: shardhook::Signer,
    samples: Mutex<Vec<Sample>>,
}

impl Load {
    /// Sends request `n` on `path`; records it if it is in the window.
    async fn send(&self, path: Path, n: u64, measured: bool) {
        let target = format!("/api/v10/channels/{}/messages", 1000 + n % CHANNELS);
        let body = format!(r#"{{"content":"bench {n}"}}"#);
        let request = match path {
            Path::Direct => {
                let url = format!("{}{}", self.api_url, &target["/api/v10".len()..]);
                self.direct
                    .post(url)
                    .header("authorization", format!("Bot {TOKEN}"))
            }
            Path::Proxied => {
                let id = format!("bench_{n}_{}", fastrand::u64(..));
                let timestamp = shardhook::unix_now();
                let signed = format!("POST {target}\n{body}");
                let signature = self.signer.sign(&id, timestamp, signed.as_bytes());
                self.proxied
                    .post(format!("{}{target}", self.router))
                    .header("webhook-id", id)
                    .header("webhook-timestamp", timestamp.to_string())
                    .header("webhook-signature", signature)
            }
        }
        .header("content-type", "application/json")
        .body(body);
        let started = Instant::now();
        let status = match request.send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                match answer.bytes().await {
                    Ok(_) => status,
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        };
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if measured {
            let sample = Sample { path, status, ms };
            self.samples.lock().unwrap().push(sample);
        }
    }
}

/// The router for `run`, started through `App::start`: the control API with the REST proxy on, to the double at `api_url`,
/// callers verified with `secret`. Prints `listening ADDR`, then serves until killed.
pub async fn router_child(api_url: &str, secret: &str) {
    use shardhook::config::{Config, EndpointConfig, SigningConfig, StateConfig};
    // Removed by `contestants::remove_state` when the parent says stop.
    let state_dir = crate::contestants::state_dir();
    let mut config = Config::default();
    config.discord.token = shardhook::Token::new(TOKEN);
    config.discord.api_url = api_url.to_owned();
    config.signing = SigningConfig {
        secret: Some(shardhook::SigningKey::parse(secret).expect("a valid secret")),
        previous_secrets: vec![],
        control_secret: None,
        ed25519_private_key: None,
    };
    // Never called: there are no shards, so no events.
    config.endpoints = vec![EndpointConfig::new("unused", "http://127.0.0.1:9/")];
    config.state = StateConfig {
        dir: state_dir.clone(),
        ..StateConfig::default()
    };
    config.rest.enabled = true;
    // Started as `shardhook run` starts it: its one shard connects to the double, which sends
    // no events.
    config.control.listen = "127.0.0.1:0".parse().expect("an address");
    let shutdown = shardhook::app::CancellationToken::new();
    let app = shardhook::app::App::start(config, shutdown, Default::default())
        .await
        .expect("the router starts");
    println!("listening {}", app.control_addr());
    let _ = app.run().await;
}
