//! `shardhook demo`: the embedded default. The Discord double, the router with its delivery
//! pipeline, and two local receiving endpoints that verify every signature, in one process,
//! with faults that force resumes and a retry, and a summary that accounts for every event.
//!
//! Owns the demo's script and its report. The router is started as `shardhook run` starts it
//! (`shardhook::app`, control API and checkpoints included, on a free control port), so the
//! demo shows what a user's setup does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use shardhook::app::{App, StartOptions};
use shardhook::config::{
    Config, ControlConfig, DiscordConfig, EndpointConfig, InteractionsConfig, ShardsConfig,
    SigningConfig, StateConfig,
};
use shardhook::{ShardState, SigningKey, Token};
use shardhook_simulator::receiver::{Receiver, Reply};
use shardhook_simulator::{Fault, LedgerEntry, SimConfig, Simulator, DEFAULT_TOKEN};

/// How long the whole demo may take before it reports failure.
const DEADLINE: Duration = Duration::from_secs(60);

/// The demo's shape.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub shards: u32,
    /// Traffic events per second per shard.
    pub rate: f64,
    pub events_per_shard: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            shards: 4,
            rate: 100.0,
            events_per_shard: 300,
        }
    }
}

/// What the demo saw.
#[derive(Debug)]
pub struct DemoReport {
    pub shards: u32,
    pub shards_ready: u32,
    /// Faults injected, as `(shard, what)`.
    pub faults: Vec<(u32, &'static str)>,
    pub resumes: u32,
    /// Events received per shard.
    pub per_shard: BTreeMap<u32, u64>,
    /// Events received per endpoint.
    pub per_endpoint: BTreeMap<String, u64>,
    /// Requests whose signature verified, of all requests the endpoints got.
    pub verified: usize,
    pub requests: usize,
    pub retries: u64,
    pub latency_p50: Option<Duration>,
    pub latency_p99: Option<Duration>,
    /// Interactions the router deferred, and the slowest time from its gateway read to the
    /// deferral's answer.
    pub interactions_deferred: u64,
    pub defer_latency_max: Option<Duration>,
    /// Events the double created.
    pub sent: usize,
    /// Distinct events received.
    pub received: usize,
    /// Events received more than once.
    pub duplicates: usize,
    /// Events the double created that never arrived.
    pub missing: usize,
}

impl DemoReport {
    /// Every event the double sent arrived exactly once per (shard, seq), every request
    /// verified.
    pub fn exactly_once(&self) -> bool {
        self.duplicates == 0 && self.missing == 0 && self.received == self.sent
    }

    pub fn all_verified(&self) -> bool {
        self.verified == self.requests
    }
}

fn millis(d: Option<Duration>) -> String {
    d.map_or("-".to_owned(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "shardhook demo: {} shards against the built-in Discord simulator",
            self.shards
        )?;
        writeln!(
            f,
            "shards ready:        {}/{}",
            self.shards_ready, self.shards
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(s, w)| format!("shard {s}: {w}"))
            .collect();
        writeln!(f, "faults injected:     {}", faults.join(", "))?;
        writeln!(f, "resumes survived:    {}", self.resumes)?;
        let per: Vec<String> = self
            .per_shard
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        writeln!(f, "events per shard:    {}", per.join(" "))?;
        let per: Vec<String> = self
            .per_endpoint
            .iter()
            .map(|(e, n)| format!("{e}={n}"))
            .collect();
        writeln!(f, "events per endpoint: {}", per.join(" "))?;
        writeln!(
            f,
            "signatures verified: {}/{} requests",
            self.verified, self.requests
        )?;
        writeln!(f, "retries:             {}", self.retries)?;
        writeln!(
            f,
            "delivery latency:    p50 {}, p99 {}",
            millis(self.latency_p50),
            millis(self.latency_p99)
        )?;
        writeln!(
            f,
            "interactions:        {} deferred, within {} of arrival at the router",
            self.interactions_deferred,
            millis(self.defer_latency_max)
        )?;
        writeln!(f, "events sent:         {}", self.sent)?;
        writeln!(
            f,
            "events received:     {} (duplicates {}, missing {})",
            self.received, self.duplicates, self.missing
        )?;
        let verdict = if self.exactly_once() { "yes" } else { "NO" };
        write!(
            f,
            "every event arrived exactly once per (shard, seq): {verdict}"
        )
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("failed to start a local server: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Start(#[from] shardhook::app::AppError),
    #[error("the demo did not finish within {0:?}: {1}")]
    Timeout(Duration, &'static str),
}

async fn loopback() -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
}

/// Runs the demo and returns its report.
pub async fn run(options: DemoOptions) -> Result<DemoReport, DemoError> {
    let sim_config = SimConfig {
        shards: options.shards,
        guilds: options.shards * 2,
        rate: options.rate,
        events_per_shard: Some(options.events_per_shard),
        max_concurrency: options.shards,
        heartbeat_interval: Duration::from_secs(5),
        ..SimConfig::default()
    };
    let sim = Simulator::start(loopback().await?, sim_config)?;
    let secret = SigningKey::generate();
    let key = SigningKey::parse(&secret).expect("a generated key parses");
    let receivers = [
        Receiver::start(loopback().await?, "edge-a", &secret)?,
        Receiver::start(loopback().await?, "edge-b", &secret)?,
    ];
    // One transient failure, so a retry shows.
    receivers[0].script([Reply::Status(503)]);
    let state_dir = std::env::temp_dir().join(format!("shardhook-demo-{}", std::process::id()));
    let config = Config {
        discord: DiscordConfig {
            token: Token::new(DEFAULT_TOKEN),
            api_url: sim.api_url(),
            shards: ShardsConfig::Auto,
            ..DiscordConfig::default()
        },
        signing: SigningConfig {
            secret: Some(key),
            previous_secrets: vec![],
            control_secret: None,
            ed25519_private_key: None,
        },
        endpoints: receivers
            .iter()
            .map(|r| EndpointConfig::new(r.name(), r.url()))
            .collect(),
        state: StateConfig {
            dir: state_dir.clone(),
            ..StateConfig::default()
        },
        interactions: InteractionsConfig {
            auto_defer: true,
            ..Default::default()
        },
        // A free port: the demo runs beside whatever listens on the default.
        control: ControlConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            ..ControlConfig::default()
        },
        ..Config::default()
    };

    let stop = CancellationToken::new();
    // The report gives exact latency quantiles.
    let options_with_samples = StartOptions {
        latency_samples: true,
        ..StartOptions::default()
    };
    let app = App::start(config, stop.clone(), options_with_samples).await?;
    let stats = app.stats();
    let shards = app.shards().to_vec();
    let running = tokio::spawn(app.run());

    let arrived = |e: &LedgerEntry, seen: &HashMap<(u32, String, u64), u32>| {
        seen.contains_key(&(e.shard, e.session.clone(), e.seq))
    };
    let tally = || {
        let mut seen: HashMap<(u32, String, u64), u32> = HashMap::new();
        for r in &receivers {
            r.seen(|s| {
                for a in &s.events {
                    *seen.entry((a.shard, a.session.clone(), a.seq)).or_default() += 1;
                }
            });
        }
        seen
    };

    let script = async {
        for shard in &shards {
            let _ = shard
                .status()
                .wait_for(|s| s.state == ShardState::Active)
                .await;
        }
        let shards_ready = shards.len() as u32;
        // Let traffic flow, then break one shard's connection and send op 7 to another.
        let faulted = [
            (0, Fault::Drop, "TCP connection dropped"),
            (shards.len() as u32 - 1, Fault::Reconnect, "op 7 reconnect"),
        ];
        let mut faults = Vec::new();
        for (shard, fault, what) in faulted {
            sim.wait_for(|o| {
                (o.ledger.iter().filter(|e| e.shard == shard).count() > 50).then_some(())
            })
            .await;
            if sim.inject(shard, fault) {
                faults.push((shard, what));
            }
            let _ = shards[shard as usize]
                .status()
                .wait_for(|s| s.resumes >= 1)
                .await;
        }
        // A slash command: the router defers it at once, before the handler sees it.
        let interaction = r#"{"id":"900","application_id":"1100000000000000001","type":2,"token":"demo-token","data":{"name":"ping"}}"#;
        sim.inject(
            0,
            Fault::Dispatch {
                name: "INTERACTION_CREATE".into(),
                d: interaction.into(),
            },
        );
        // Wait until every shard's traffic is done and every created event has arrived.
        let total_traffic = options.events_per_shard * shards.len() as u64;
        let mut sim_changes = sim.changes();
        let mut receiver_changes: Vec<_> = receivers.iter().map(|r| r.changes()).collect();
        loop {
            let seen = tally();
            let done = sim.observed(|o| {
                let traffic = o
                    .ledger
                    .iter()
                    .filter(|e| e.event == "MESSAGE_CREATE")
                    .count() as u64;
                traffic == total_traffic && o.ledger.iter().all(|e| arrived(e, &seen))
            });
            if done {
                break;
            }
            let [a, b] = &mut receiver_changes[..] else {
                unreachable!("two receivers")
            };
            tokio::select! {
                _ = sim_changes.changed() => {}
                _ = a.changed() => {}
                _ = b.changed() => {}
            }
        }
        (shards_ready, faults)
    };
    let (shards_ready, faults) = tokio::time::timeout(DEADLINE, script)
        .await
        .map_err(|_| DemoError::Timeout(DEADLINE, "not every event arrived"))?;

    stop.cancel();
    if let Ok(ran) = running.await {
        ran?;
    }
    let _ = std::fs::remove_dir_all(&state_dir);

    let resumes = shards.iter().map(|s| s.status().borrow().resumes).sum();
    let seen = tally();
    let mut per_shard = BTreeMap::new();
    for (shard, _, _) in seen.keys() {
        *per_shard.entry(*shard).or_default() += 1;
    }
    let per_endpoint = receivers
        .iter()
        .map(|r| (r.name().to_owned(), r.seen(|s| s.events.len() as u64)))
        .collect();
    let (verified, requests) = receivers.iter().fold((0, 0), |(v, n), r| {
        r.seen(|s| {
            (
                v + s.requests.iter().filter(|q| q.verified).count(),
                n + s.requests.len(),
            )
        })
    });
    let (sent, missing) = sim.observed(|o| {
        (
            o.ledger.len(),
            o.ledger.iter().filter(|e| !arrived(e, &seen)).count(),
        )
    });
    Ok(DemoReport {
        shards: options.shards,
        shards_ready,
        faults,
        resumes,
        per_shard,
        per_endpoint,
        verified,
        requests,
        retries: stats.snapshot().retries,
        latency_p50: stats.latency_quantile(0.5),
        latency_p99: stats.latency_quantile(0.99),
        interactions_deferred: stats
            .interactions_deferred
            .load(std::sync::atomic::Ordering::Relaxed),
        defer_latency_max: stats.defer_quantile(1.0),
        sent,
        received: seen.len(),
        duplicates: seen.values().filter(|n| **n > 1).count(),
        missing,
    })
}
