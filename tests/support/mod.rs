//! Shared end-to-end harness: the Discord double, the router's public API, and a receiver that
//! records every dispatch, with accounting against the double's ledger.

#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardhook::config::{Config, DiscordConfig, ShardsConfig};
use shardhook::{AllShardsStopped, Dispatch, Router, ShardHandle, ShardState, ShardStatus, Token};
use shardhook_simulator::{Observed, SimConfig, Simulator, DEFAULT_TOKEN};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Every end-to-end wait is bounded so a broken router fails the test instead of hanging it.
pub const LIMIT: Duration = Duration::from_secs(40);

/// Awaits `future`, failing the test with `what` if it takes longer than `LIMIT`.
/// One HTTP client for a test binary's calls: building one per call (its TLS roots) costs
/// milliseconds, and in a burst of calls polled together those add up to seconds between a
/// connection and its request, past the router's `first_byte_timeout` on a loaded machine.
pub fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(reqwest::Client::new)
}

pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(LIMIT, future).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {LIMIT:?} waiting for {what}"),
    }
}

/// Runs a Python script from `tests/` with `stdin` under `$PYTHON` (the project's venv, which
/// `scripts/test` sets up) or `python3`, returning its stdout; fails the test with its stderr
/// (and a hint to run `scripts/test`) if it fails.
pub fn python(script: &str, stdin: &[u8]) -> String {
    use std::io::Write;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests")
        .join(script);
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = std::process::Command::new(&python)
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run {python} ({e}); run scripts/test, which sets up .venv")
        });
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed under {python} (scripts/test installs tests/requirements.txt into .venv):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A dispatch as the receiver recorded it.
#[derive(Debug, Clone)]
pub struct Got {
    pub shard: u32,
    pub session: String,
    pub seq: u64,
    pub name: String,
}

pub struct Harness {
    pub sim: Simulator,
    /// Traffic events each shard gets in all (`SimConfig::events_per_shard`).
    traffic_per_shard: u64,
    pub shards: Vec<ShardHandle>,
    pub received: Arc<Mutex<Vec<Got>>>,
    progress: watch::Receiver<u64>,
    stop: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<Result<(), AllShardsStopped>>>,
    /// The router's state directory, removed when the harness goes.
    _state_dir: pipe::TempDir,
}

/// A router config pointed at `sim`, with its own state directory (checkpoints and identify
/// records of one test must not reach another).
pub fn config_for(sim: &Simulator) -> Config {
    Config {
        state: shardhook::config::StateConfig {
            dir: pipe::temp_dir("state"),
            ..Default::default()
        },
        discord: DiscordConfig {
            token: Token::new(DEFAULT_TOKEN),
            api_url: sim.api_url(),
            shards: ShardsConfig::Auto,
            connect_timeout: Duration::from_secs(5),
            ..DiscordConfig::default()
        },
        ..Config::default()
    }
}

pub async fn simulator(config: SimConfig) -> Simulator {
    Simulator::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), config)
        .await
        .expect("bind the simulator")
}

impl Harness {
    /// Starts the double and a router against it; `tweak` adjusts the router's config.
    pub async fn start(sim_config: SimConfig, tweak: impl FnOnce(&mut Config)) -> Harness {
        let traffic_per_shard = sim_config.events_per_shard.unwrap_or(0);
        let sim = simulator(sim_config).await;
        let mut config = config_for(&sim);
        tweak(&mut config);
        let (sink, mut events) = mpsc::channel::<Dispatch>(256);
        let received = Arc::new(Mutex::new(Vec::new()));
        let (progress_tx, progress) = watch::channel(0u64);
        {
            let received = received.clone();
            tokio::spawn(async move {
                while let Some(d) = events.recv().await {
                    // `d` must be valid JSON spliced from the message, byte for byte.
                    serde_json::from_slice::<serde::de::IgnoredAny>(d.data())
                        .expect("a dispatch's d is valid JSON");
                    received.lock().unwrap().push(Got {
                        shard: d.shard_id,
                        session: d.session_id.to_string(),
                        seq: d.seq,
                        name: d.name().to_owned(),
                    });
                    progress_tx.send_modify(|n| *n += 1);
                }
            });
        }
        let router = within("the router to start", Router::start(&config, sink))
            .await
            .expect("the router starts");
        let shards = router.shards().to_vec();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(router.run_until(async {
            let _ = stopped.await;
        }));
        Harness {
            _state_dir: pipe::TempDir::adopt(config.state.dir.clone()),
            sim,
            traffic_per_shard,
            shards,
            received,
            progress,
            stop: Some(stop),
            running: Some(running),
        }
    }

    pub fn status(&self, shard: u32) -> ShardStatus {
        self.shards[shard as usize].status().borrow().clone()
    }

    /// Waits until `shard`'s status satisfies `f`.
    pub async fn wait_status(
        &self,
        shard: u32,
        what: &str,
        f: impl FnMut(&ShardStatus) -> bool,
    ) -> ShardStatus {
        let mut status = self.shards[shard as usize].status();
        let got = within(what, status.wait_for(f))
            .await
            .expect("the shard's status is published");
        got.clone()
    }

    pub async fn all_active(&self) {
        for shard in 0..self.shards.len() as u32 {
            self.wait_status(shard, "every shard to be active", |s| {
                s.state == ShardState::Active
            })
            .await;
        }
    }

    /// Waits until `f` holds over what the receiver got.
    pub async fn wait_received(&self, what: &str, mut f: impl FnMut(&[Got]) -> bool) {
        let mut progress = self.progress.clone();
        within(what, async {
            loop {
                if f(&self.received.lock().unwrap()) {
                    return;
                }
                progress.changed().await.expect("the receiver runs");
            }
        })
        .await
    }

    /// Waits until `f` holds over the double's observations.
    pub async fn wait_sim<T>(&self, what: &str, f: impl FnMut(&Observed) -> Option<T>) -> T {
        within(what, self.sim.wait_for(f)).await
    }

    /// Waits until the double's traffic is done (`events_per_shard` on every shard) and every
    /// event it created has arrived, except those Discord itself would lose (in sessions it
    /// invalidated) and those `skip` names.
    pub async fn wait_all_delivered(&self, skip: &[&str]) {
        let mut progress = self.progress.clone();
        let mut changes = self.sim.changes();
        within("every event to arrive", async {
            loop {
                if self.outstanding(skip) == 0 {
                    return;
                }
                tokio::select! {
                    _ = progress.changed() => {}
                    _ = changes.changed() => {}
                }
            }
        })
        .await
    }

    fn outstanding(&self, skip: &[&str]) -> usize {
        let traffic_left: u64 = self
            .shards
            .iter()
            .map(|shard| {
                let made = self.sim.observed(|o| {
                    o.ledger
                        .iter()
                        .filter(|e| e.shard == shard.id() && e.event == "MESSAGE_CREATE")
                        .count()
                });
                self.traffic_per_shard.saturating_sub(made as u64)
            })
            .sum();
        if traffic_left > 0 {
            return traffic_left as usize;
        }
        let got = self.received.lock().unwrap();
        let seen: std::collections::HashSet<(u32, &str, u64)> = got
            .iter()
            .map(|g| (g.shard, g.session.as_str(), g.seq))
            .collect();
        self.sim.observed(|o| {
            o.ledger
                .iter()
                .filter(|e| {
                    !skip.contains(&e.event.as_str()) && !o.invalidated.contains(&e.session)
                })
                .filter(|e| !seen.contains(&(e.shard, e.session.as_str(), e.seq)))
                .count()
        })
    }

    /// Checks the receiver against the ledger: nothing received twice, nothing received that
    /// was not sent, per-session order kept, and nothing missing except in invalidated
    /// sessions and `skip`ped event names. Returns how many were lost to invalidation.
    pub fn assert_exactly_once(&self, skip: &[&str]) -> usize {
        let got = self.received.lock().unwrap().clone();
        let mut times: HashMap<(u32, String, u64), u32> = HashMap::new();
        let mut last: HashMap<(u32, String), u64> = HashMap::new();
        for g in &got {
            *times
                .entry((g.shard, g.session.clone(), g.seq))
                .or_default() += 1;
            let prev = last
                .insert((g.shard, g.session.clone()), g.seq)
                .unwrap_or(0);
            assert!(
                g.seq > prev,
                "shard {} session {}: seq {} after {}",
                g.shard,
                g.session,
                g.seq,
                prev
            );
        }
        let dupes: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dupes.is_empty(), "received more than once: {dupes:?}");
        self.sim.observed(|o| {
            let ledger: std::collections::HashSet<_> = o
                .ledger
                .iter()
                .map(|e| (e.shard, e.session.clone(), e.seq))
                .collect();
            for key in times.keys() {
                assert!(
                    ledger.contains(key),
                    "received {key:?}, which the double never sent"
                );
            }
            let mut lost = 0;
            for e in &o.ledger {
                if times.contains_key(&(e.shard, e.session.clone(), e.seq))
                    || skip.contains(&e.event.as_str())
                {
                    continue;
                }
                assert!(
                    o.invalidated.contains(&e.session),
                    "lost {e:?} in a session that was never invalidated"
                );
                lost += 1;
            }
            assert!(
                o.violations.is_empty(),
                "the router broke Discord's rules: {:?}",
                o.violations
            );
            lost
        })
    }

    /// Stops the router and returns how it ended.
    pub async fn stop(mut self) -> Result<(), AllShardsStopped> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let running = self.running.take().expect("stopped once");
        within("the router to stop", running)
            .await
            .expect("the router task does not panic")
    }

    /// Waits for the router to end on its own (every shard fatally closed).
    pub async fn ended(mut self) -> Result<(), AllShardsStopped> {
        let running = self.running.take().expect("ended once");
        within("the router to end", running)
            .await
            .expect("the router task does not panic")
    }
}

pub mod pipe;
pub mod process;
pub mod redis;

/// A listener on `ip` that accepts every connection and never says a word (a foreign host, a
/// proxy nobody should use): its address, and how many connections it was offered.
#[allow(dead_code)]
pub async fn silent_listener(ip: &str) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let offered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = offered.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Held open, silent: whatever is sent here waits as on a slow peer.
            held.push(socket);
        }
    });
    (addr, offered)
}

/// The most of `times` (sorted) that fall in any window of `span`, wherever it starts.
#[allow(dead_code)]
pub fn most_within<T>(times: &[T], span: Duration) -> usize
where
    T: Copy + PartialOrd + std::ops::Add<Duration, Output = T>,
{
    (0..times.len())
        .map(|i| times[i..].iter().filter(|t| **t < times[i] + span).count())
        .max()
        .unwrap_or(0)
}
