//! `shardhook demo`: the embedded default. The Discord double, the router and a local receiver
//! in one process, with faults that force resumes, and a summary that accounts for every event.
//!
//! Owns the demo's script and its report. It uses only public pieces (`Simulator`, `Router`)
//! so it shows what a user's setup does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, DiscordConfig, ShardsConfig};
use crate::simulate::{Fault, SimConfig, Simulator, DEFAULT_TOKEN};
use crate::{Dispatch, Router, ShardState, Token};

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
    /// Every event the double sent arrived exactly once per (shard, seq).
    pub fn exactly_once(&self) -> bool {
        self.duplicates == 0 && self.missing == 0 && self.received == self.sent
    }
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
            "shards ready:      {}/{}",
            self.shards_ready, self.shards
        )?;
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(s, w)| format!("shard {s}: {w}"))
            .collect();
        writeln!(f, "faults injected:   {}", faults.join(", "))?;
        writeln!(f, "resumes survived:  {}", self.resumes)?;
        let per: Vec<String> = self
            .per_shard
            .iter()
            .map(|(s, n)| format!("{s}={n}"))
            .collect();
        writeln!(f, "events per shard:  {}", per.join(" "))?;
        writeln!(f, "events sent:       {}", self.sent)?;
        writeln!(
            f,
            "events received:   {} (duplicates {}, missing {})",
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
    #[error("failed to start the simulator: {0}")]
    Simulator(std::io::Error),
    #[error(transparent)]
    Start(#[from] crate::StartError),
    #[error("the demo did not finish within {0:?}: {1}")]
    Timeout(Duration, &'static str),
}

#[derive(Default)]
struct Received {
    /// Times each `(shard, session, seq)` arrived.
    seen: HashMap<(u32, Arc<str>, u64), u32>,
    per_shard: BTreeMap<u32, u64>,
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
    let sim = Simulator::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), sim_config)
        .await
        .map_err(DemoError::Simulator)?;
    let config = Config {
        discord: DiscordConfig {
            token: Token::new(DEFAULT_TOKEN),
            api_url: sim.api_url(),
            shards: ShardsConfig::Auto,
            ..DiscordConfig::default()
        },
    };

    // The local receiver: counts every event by (shard, session, seq).
    let (sink, mut events) = mpsc::channel::<Dispatch>(1024);
    let received = Arc::new(Mutex::new(Received::default()));
    let (progress, mut progress_rx) = watch::channel(0u64);
    let receiver = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
                *r.seen
                    .entry((event.shard_id, event.session_id.clone(), event.seq))
                    .or_default() += 1;
                *r.per_shard.entry(event.shard_id).or_default() += 1;
                drop(r);
                progress.send_modify(|n| *n += 1);
            }
        })
    };

    let router = Router::start(&config, sink).await?;
    let shards = router.shards().to_vec();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(router.run_until(async {
        let _ = stopped.await;
    }));

    let script = async {
        for shard in &shards {
            let mut status = shard.status();
            let _ = status.wait_for(|s| s.state == ShardState::Active).await;
        }
        let shards_ready = shards.len() as u32;
        // Let traffic flow on shard 0, then break its connection and send op 7 to another.
        let faulted: Vec<(u32, Fault, &'static str)> = vec![
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
            let handle = &shards[shard as usize];
            let _ = handle.status().wait_for(|s| s.resumes >= 1).await;
        }
        // Wait until every shard's traffic is done and every created event has arrived.
        let total_traffic = options.events_per_shard * shards.len() as u64;
        let mut sim_changes = sim.changes();
        loop {
            let done = sim.observed(|o| {
                let traffic = o
                    .ledger
                    .iter()
                    .filter(|e| e.event == "MESSAGE_CREATE")
                    .count() as u64;
                let r = received.lock().unwrap_or_else(|p| p.into_inner());
                traffic == total_traffic
                    && o.ledger.iter().all(|e| {
                        r.seen
                            .contains_key(&(e.shard, Arc::from(e.session.as_str()), e.seq))
                    })
            });
            if done {
                break;
            }
            tokio::select! {
                _ = progress_rx.changed() => {}
                _ = sim_changes.changed() => {}
            }
        }
        (shards_ready, faults)
    };
    let (shards_ready, faults) = tokio::time::timeout(DEADLINE, script)
        .await
        .map_err(|_| DemoError::Timeout(DEADLINE, "not every event arrived"))?;

    let _ = stop.send(());
    let _ = running.await;
    let _ = receiver.await;
    let resumes = shards.iter().map(|s| s.status().borrow().resumes).sum();
    let r = received.lock().unwrap_or_else(|p| p.into_inner());
    let (sent, missing) = sim.observed(|o| {
        let missing = o
            .ledger
            .iter()
            .filter(|e| {
                !r.seen
                    .contains_key(&(e.shard, Arc::from(e.session.as_str()), e.seq))
            })
            .count();
        (o.ledger.len(), missing)
    });
    Ok(DemoReport {
        shards: options.shards,
        shards_ready,
        faults,
        resumes,
        per_shard: r.per_shard.clone(),
        sent,
        received: r.seen.len(),
        duplicates: r.seen.values().filter(|n| **n > 1).count(),
        missing,
    })
}
