//! End-to-end through the real Worker template: the Discord double, the router with its
//! delivery pipeline, and `wrangler dev` serving `worker-template/` in workerd on 127.0.0.1.
//! The Worker must verify every signed batch (a refusal is a 4xx, which the router
//! dead-letters) and answer every `!ping` through the double's REST API.
//!
//! Needs the repository's npm packages: run `npm ci` at the repository root first.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use shardhook::app::{App, StartOptions};
use shardhook::config::{EndpointConfig, SigningConfig};
use shardhook::{ShardState, SigningKey};
use shardhook_simulator::{Fault, Observed, SimConfig, Simulator, DEFAULT_TOKEN};
use support::pipe::{temp_dir, TempDir};
use support::{config_for, within};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `wrangler dev` bundles the Worker and starts workerd; a cold start on a small machine with
/// no internet (it first fails to fetch `Request.cf`) can take tens of seconds.
const WRANGLER_READY_LIMIT: Duration = Duration::from_secs(120);

const SHARDS: u32 = 2;
const EVENTS_PER_SHARD: u64 = 25;
const PING_EVERY: u64 = 5;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("router/ sits in the repository")
        .to_path_buf()
}

/// `wrangler dev` in its own process group, so workerd goes down with it.
struct Wrangler {
    child: Child,
    pgid: i32,
    url: String,
    dir: PathBuf,
}

impl Wrangler {
    /// Serves the repository's wrangler.toml from a temporary copy (so `.wrangler/` state and
    /// any local `.dev.vars` stay out of it) with `vars` injected, and waits for `Ready on`.
    async fn start(vars: &[(&str, &str)]) -> Wrangler {
        let root = repo_root();
        let bin = root.join("node_modules/.bin/wrangler");
        assert!(
            bin.exists(),
            "{} is missing: run `npm ci` at the repository root first",
            bin.display()
        );
        let dir = temp_dir("wrangler");
        std::fs::create_dir_all(&dir).unwrap();
        let config = std::fs::read_to_string(root.join("wrangler.toml")).unwrap();
        let main = root.join("worker-template/src/index.ts");
        let config: String = config
            .lines()
            .map(|line| {
                if line.starts_with("main = ") {
                    format!("main = {:?}", main.display().to_string())
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(config.contains("worker-template/src/index.ts"), "{config}");
        std::fs::write(dir.join("wrangler.toml"), config).unwrap();

        // Miniflare keeps its scratch files under the system temp directory and leaves them
        // there; this keeps them in the test's own directory, removed with it.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let port = free_port();
        let mut command = Command::new(&bin);
        command
            .current_dir(&dir)
            .args(["dev", "--ip", "127.0.0.1", "--port", &port.to_string()])
            .env("TMPDIR", &tmp)
            .env("WRANGLER_SEND_METRICS", "false")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        for (name, value) in vars {
            command.arg("--var").arg(format!("{name}:{value}"));
        }
        let mut child = command.spawn().expect("start wrangler dev");
        let pgid = child.id().expect("wrangler is running") as i32;
        let (stdout, stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        // From here a failed wait drops `wrangler`, which ends the process group.
        let mut wrangler = Wrangler {
            child,
            pgid,
            url: String::new(),
            dir,
        };

        // Every line goes to the test's output (shown when it fails); the first `Ready on`
        // line is the signal. The pipes are drained for as long as wrangler runs.
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<String>();
        forward(stdout, "stdout", ready_tx.clone());
        forward(stderr, "stderr", ready_tx);
        let started = Instant::now();
        let url = tokio::select! {
            line = ready_rx.recv() => match line {
                Some(line) => line,
                None => panic!("wrangler dev closed its output before it was ready (see its log above)"),
            },
            status = wrangler.child.wait() => panic!("wrangler dev exited before it was ready: {status:?} (see its log above)"),
            _ = tokio::time::sleep(WRANGLER_READY_LIMIT) => {
                panic!("wrangler dev was not ready after {WRANGLER_READY_LIMIT:?} (see its log above)")
            }
        };
        eprintln!("wrangler dev ready at {url} after {:?}", started.elapsed());
        assert_eq!(url, format!("http://127.0.0.1:{port}"));
        wrangler.url = format!("{url}/");
        wrangler
    }

    /// Ends wrangler and workerd (the whole process group) and waits for wrangler to exit.
    async fn stop(mut self) {
        kill_group(self.pgid);
        let status = within("wrangler dev to exit", self.child.wait())
            .await
            .expect("wait for wrangler dev");
        eprintln!("wrangler dev ended: {status}");
        // The group is gone; its id may be reused, so Drop must not signal it again.
        self.pgid = 0;
    }
}

impl Drop for Wrangler {
    fn drop(&mut self) {
        // Also on a failed assertion: no workerd left behind.
        kill_group(self.pgid);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill_group(pgid: i32) {
    if pgid <= 0 {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Copies `pipe` to stderr line by line and sends the URL of the first `Ready on` line.
fn forward(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    ready: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("wrangler {name}: {line}");
            if let Some(at) = line.find("Ready on ") {
                let url = line[at + "Ready on ".len()..].trim().to_owned();
                let _ = ready.send(url);
            }
        }
    });
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// How many traffic MESSAGE_CREATEs the double made per shard, and how many of them were
/// `!ping`: the double makes every `ping_every`-th traffic message of a shard a `!ping`, and
/// its ledger lists a shard's traffic in the order it was made.
fn traffic_and_pings(o: &Observed) -> (Vec<u64>, u64) {
    let mut per_shard = vec![0u64; SHARDS as usize];
    let mut pings = 0;
    for e in o.ledger.iter().filter(|e| e.event == "MESSAGE_CREATE") {
        per_shard[e.shard as usize] += 1;
        if per_shard[e.shard as usize].is_multiple_of(PING_EVERY) {
            pings += 1;
        }
    }
    (per_shard, pings)
}

fn pongs(o: &Observed) -> Vec<&shardhook_simulator::RestCall> {
    o.rest_calls
        .iter()
        .filter(|c| {
            c.method == "POST" && c.path.starts_with("/channels/") && c.path.ends_with("/messages")
        })
        .collect()
}

const INTERACTION: &str = r#"{"id":"1300000000000000001","token":"e2e-interaction-token","application_id":"1100000000000000001","type":2,"version":1,"channel_id":"1551597200998400001","data":{"id":"1300000000000000002","name":"hello","type":1},"locale":"en-US","entitlements":[],"authorizing_integration_owners":{},"attachment_size_limit":8388608}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_template_under_wrangler_dev_verifies_and_handles_every_event() {
    let started = Instant::now();
    // Mid-rotation: the router signs with a new key and the old one; the Worker still knows
    // only the old one, so it verifies through the second `v1,` entry.
    let new_secret = SigningKey::generate();
    let old_secret = SigningKey::generate();

    // The double's address must be known before wrangler starts (the Worker's DISCORD_API_URL);
    // the double itself starts once the Worker is ready.
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap();
    let api_url = format!("http://{}/api/v10", listener.local_addr().unwrap());
    let wrangler = Wrangler::start(&[
        ("SHARDHOOK_SIGNING_SECRET", &old_secret),
        ("DISCORD_TOKEN", DEFAULT_TOKEN),
        ("DISCORD_API_URL", &api_url),
    ])
    .await;
    let ready_after = started.elapsed();

    let sim = Simulator::start(
        listener,
        SimConfig {
            shards: SHARDS,
            max_concurrency: SHARDS,
            guilds: SHARDS * 2,
            rate: 50.0,
            events_per_shard: Some(EVENTS_PER_SHARD),
            ping_every: PING_EVERY,
            heartbeat_interval: Duration::from_millis(1000),
            ..SimConfig::default()
        },
    )
    .unwrap();
    assert_eq!(sim.api_url(), api_url);

    let mut config = config_for(&sim);
    config.signing = SigningConfig {
        secret: Some(SigningKey::parse(&new_secret).unwrap()),
        previous_secrets: vec![SigningKey::parse(&old_secret).unwrap()],
        control_secret: None,
        ed25519_private_key: None,
    };
    config.endpoints = vec![EndpointConfig {
        max_in_flight: 16,
        ..EndpointConfig::new("worker", wrangler.url.clone())
    }];
    let state_dir = TempDir::adopt(config.state.dir.clone());
    // Started as `shardhook run` starts a router, on a free control port.
    config.control.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let stop = CancellationToken::new();
    let app = within(
        "the router to start",
        App::start(config.clone(), stop.clone(), StartOptions::default()),
    )
    .await
    .expect("the router starts");
    let stats = app.stats();
    let shards = app.shards().to_vec();
    let running = tokio::spawn(app.run());

    // A slash command on shard 1, answered through the interaction callback.
    let mut status = shards[1].status();
    within(
        "shard 1 to be active",
        status.wait_for(|s| s.state == ShardState::Active),
    )
    .await
    .unwrap();
    assert!(sim.inject(
        1,
        Fault::Dispatch {
            name: "INTERACTION_CREATE".to_owned(),
            d: INTERACTION.to_owned()
        }
    ));

    // Every traffic message made, a pong for every `!ping`, the slash command answered.
    let expected_pings = within(
        "the traffic to end and every !ping and the slash command to be answered",
        sim.wait_for(|o| {
            let (per_shard, pings) = traffic_and_pings(o);
            let callback = o.rest_calls.iter().any(|c| c.path.ends_with("/callback"));
            (per_shard.iter().all(|n| *n == EVENTS_PER_SHARD)
                && pongs(o).len() as u64 >= pings
                && callback)
                .then_some(pings)
        }),
    )
    .await;
    assert_eq!(
        expected_pings,
        SHARDS as u64 * EVENTS_PER_SHARD / PING_EVERY
    );

    // Stop the router and let delivery drain, then account for every event.
    stop.cancel();
    within("the router to stop and delivery to drain", running)
        .await
        .unwrap()
        .expect("no shard stopped for good");
    let stats = stats.snapshot();
    let ledger = sim.observed(|o| o.ledger.len() as u64);
    let e2e = started.elapsed();

    sim.observed(|o| {
        let pongs = pongs(o);
        assert_eq!(
            pongs.len() as u64,
            expected_pings,
            "one pong per !ping: {pongs:?}"
        );
        for call in &pongs {
            assert!(call.authorized, "the Worker sent Bot <token>: {call:?}");
            assert_eq!(call.body, serde_json::json!({"content": "pong"}));
        }
        let callbacks: Vec<_> = o
            .rest_calls
            .iter()
            .filter(|c| c.path.ends_with("/callback"))
            .collect();
        assert_eq!(callbacks.len(), 1, "{callbacks:?}");
        assert_eq!(
            callbacks[0].path,
            "/interactions/1300000000000000001/e2e-interaction-token/callback"
        );
        assert_eq!(
            callbacks[0].body,
            serde_json::json!({"type": 4, "data": {"content": "Hello from shard 1: you ran /hello."}})
        );
        assert_eq!(
            o.rest_calls.len(),
            pongs.len() + 1,
            "no other REST calls: {:?}",
            o.rest_calls
        );
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        assert!(o.invalidated.is_empty(), "no session was lost");
    });
    // READY, GUILD_CREATEs, traffic and the interaction: all answered 2xx by the Worker.
    assert_eq!(stats.events_delivered, ledger, "{stats:?}");
    assert_eq!(stats.events_dead_lettered, 0, "{stats:?}");
    assert_eq!(stats.requests_dead_lettered, 0, "{stats:?}");
    assert_eq!(
        stats.retries, 0,
        "the Worker never failed a batch: {stats:?}"
    );
    assert!(
        !state_dir.join("dead-letters.jsonl").exists(),
        "no dead letters written"
    );

    wrangler.stop().await;
    eprintln!(
        "wrangler ready after {ready_after:?}; {ledger} events delivered and {expected_pings} pongs after {e2e:?}"
    );
}
