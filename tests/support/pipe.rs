//! The delivery harness: the Discord double, a router started as `shardhook run` starts one
//! (`shardhook::app`), and local receiving endpoints (or ports that refuse connections), with
//! accounting against the ledger.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::select_all;
use shardhook::app::{App, AppError, StartOptions};
use shardhook::config::{Config, EndpointConfig, SigningConfig};
use shardhook::{DeliveryStats, ShardHandle, SigningKey};
use shardhook_simulator::receiver::{Arrival, Receiver, Reply, RequestRecord};
use shardhook_simulator::{SimConfig, Simulator};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{config_for, simulator, within};

/// What stands behind an endpoint.
pub enum Target {
    /// A receiver answering these replies first, then 204.
    Live(Vec<Reply>),
    /// Nothing: connections are refused.
    Refused,
}

pub struct Pipe {
    pub sim: Simulator,
    pub shards: Vec<ShardHandle>,
    /// One per endpoint, `None` while it refuses connections.
    pub receivers: Vec<Option<Receiver>>,
    pub names: Vec<String>,
    pub urls: Vec<String>,
    pub stats: Arc<DeliveryStats>,
    pub state_dir: TempDir,
    /// The current signing secret (`whsec_...`).
    pub secret: String,
    pub config: Config,
    /// Base URL of the control API, e.g. `http://127.0.0.1:PORT`.
    pub control_url: String,
    traffic_per_shard: u64,
    stop: CancellationToken,
    running: Option<JoinHandle<Result<(), AppError>>>,
}

async fn loopback() -> TcpListener {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!("shardhook-{tag}-{}-{nanos}", std::process::id()))
}

/// A directory of its own under the system temp dir (named by [`temp_dir`]), removed when
/// dropped. Not `AsRef<Path>`: passed by value to a command it would be dropped, and removed,
/// before the command runs; pass `&*dir`.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Made now.
    pub fn new(tag: &str) -> TempDir {
        let dir = temp_dir(tag);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// `dir`, which something else (such as the router, for its state) may make.
    pub fn adopt(dir: PathBuf) -> TempDir {
        TempDir(dir)
    }
}

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Pipe {
    pub async fn start(
        sim_config: SimConfig,
        endpoints: Vec<(&str, f64, Target)>,
        tweak: impl FnOnce(&mut Config),
    ) -> Pipe {
        Pipe::start_with_env(sim_config, endpoints, Vec::new(), tweak).await
    }

    /// Like `start`, with the environment the pipeline reads (AWS credentials).
    pub async fn start_with_env(
        sim_config: SimConfig,
        endpoints: Vec<(&str, f64, Target)>,
        env: Vec<(String, String)>,
        tweak: impl FnOnce(&mut Config),
    ) -> Pipe {
        let traffic_per_shard = sim_config.events_per_shard.unwrap_or(0);
        let sim = simulator(sim_config).await;
        let secret = SigningKey::generate();
        let key = SigningKey::parse(&secret).unwrap();
        let mut receivers = Vec::new();
        let mut urls = Vec::new();
        for (name, _, target) in &endpoints {
            let listener = loopback().await;
            let addr = listener.local_addr().unwrap();
            urls.push(format!("http://{addr}/"));
            match target {
                Target::Live(replies) => {
                    let receiver = Receiver::start(listener, name, &secret).unwrap();
                    receiver.script(replies.clone());
                    receivers.push(Some(receiver));
                }
                Target::Refused => {
                    drop(listener);
                    receivers.push(None);
                }
            }
        }
        let mut config = config_for(&sim);
        config.signing = SigningConfig {
            secret: Some(key),
            previous_secrets: vec![],
            control_secret: None,
            ed25519_private_key: None,
        };
        config.endpoints = endpoints
            .iter()
            .zip(&urls)
            .map(|((name, weight, _), url)| EndpointConfig {
                weight: *weight,
                ..EndpointConfig::new(*name, url.clone())
            })
            .collect();
        config.delivery.initial_backoff = Duration::from_millis(20);
        config.delivery.max_backoff = Duration::from_millis(200);
        tweak(&mut config);
        let state_dir = TempDir::adopt(config.state.dir.clone());
        // Started as `shardhook run` starts a router, on a free control port.
        config.control.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let stop = CancellationToken::new();
        let options = StartOptions {
            latency_samples: true,
            env: Some(env),
        };
        let app = within(
            "the router to start",
            App::start(config.clone(), stop.clone(), options),
        )
        .await
        .expect("the router starts");
        let shards = app.shards().to_vec();
        let stats = app.stats();
        let control_url = format!("http://{}", app.control_addr());
        let running = tokio::spawn(app.run());
        Pipe {
            control_url,
            sim,
            shards,
            receivers,
            names: endpoints.iter().map(|(n, _, _)| n.to_string()).collect(),
            urls,
            stats,
            state_dir,
            secret,
            config,
            traffic_per_shard,
            stop,
            running: Some(running),
        }
    }

    /// Starts a receiver on a refused endpoint's port: the endpoint comes back.
    pub async fn revive(&mut self, index: usize) {
        let addr: SocketAddr = self.urls[index]
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap();
        let listener = TcpListener::bind(addr)
            .await
            .expect("rebind the endpoint's port");
        self.receivers[index] =
            Some(Receiver::start(listener, &self.names[index], &self.secret).unwrap());
    }

    pub fn receiver(&self, index: usize) -> &Receiver {
        self.receivers[index].as_ref().expect("a live receiver")
    }

    /// Every event that arrived with a 2xx, at any endpoint, with the endpoint's index.
    pub fn arrivals(&self) -> Vec<(usize, Arrival)> {
        let mut all = Vec::new();
        for (i, r) in self.receivers.iter().enumerate() {
            if let Some(r) = r {
                r.seen(|s| all.extend(s.events.iter().map(|a| (i, a.clone()))));
            }
        }
        all
    }

    /// Every request any endpoint got.
    pub fn requests(&self) -> Vec<(usize, RequestRecord)> {
        let mut all = Vec::new();
        for (i, r) in self.receivers.iter().enumerate() {
            if let Some(r) = r {
                r.seen(|s| all.extend(s.requests.iter().map(|q| (i, q.clone()))));
            }
        }
        all
    }

    /// Ledger events that should arrive: not in invalidated sessions, not named in `skip`.
    fn expected(&self, skip: &[&str]) -> Vec<(u32, String, u64)> {
        self.sim.observed(|o| {
            o.ledger
                .iter()
                .filter(|e| {
                    !skip.contains(&e.event.as_str()) && !o.invalidated.contains(&e.session)
                })
                .map(|e| (e.shard, e.session.clone(), e.seq))
                .collect()
        })
    }

    fn outstanding(&self, skip: &[&str]) -> usize {
        let made: u64 = self
            .shards
            .iter()
            .map(|s| {
                self.sim.observed(|o| {
                    o.ledger
                        .iter()
                        .filter(|e| e.shard == s.id() && e.event == "MESSAGE_CREATE")
                        .count() as u64
                })
            })
            .sum();
        let traffic_left = (self.traffic_per_shard * self.shards.len() as u64).saturating_sub(made);
        if traffic_left > 0 {
            return traffic_left as usize;
        }
        let arrived: HashSet<(u32, String, u64)> = self
            .arrivals()
            .into_iter()
            .map(|(_, a)| (a.shard, a.session, a.seq))
            .collect();
        self.expected(skip)
            .iter()
            .filter(|k| !arrived.contains(*k))
            .count()
    }

    /// Expected events not yet delivered (or traffic not yet made).
    pub fn outstanding_count(&self) -> usize {
        self.outstanding(&[])
    }

    /// Waits until the double's traffic is done and every expected event arrived somewhere.
    pub async fn wait_delivered(&self, skip: &[&str]) {
        self.wait_until("every event to be delivered", |p| p.outstanding(skip) == 0)
            .await
    }

    /// Waits until `f` holds, waking on any change at the double or an endpoint.
    pub async fn wait_until(&self, what: &str, mut f: impl FnMut(&Pipe) -> bool) {
        within(what, async {
            let mut sim = self.sim.changes();
            let mut changes: Vec<_> = self
                .receivers
                .iter()
                .flatten()
                .map(|r| r.changes())
                .collect();
            loop {
                if f(self) {
                    return;
                }
                let endpoint_changed = async {
                    if changes.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    let _ = select_all(changes.iter_mut().map(|c| Box::pin(c.changed()))).await;
                };
                tokio::select! {
                    _ = sim.changed() => {}
                    _ = endpoint_changed => {}
                }
            }
        })
        .await
    }

    /// Every expected event arrived exactly once, in seq order per shard session, and nothing
    /// arrived that the double did not send. Returns arrivals per endpoint.
    pub fn assert_exactly_once_in_order(&self, skip: &[&str]) -> Vec<usize> {
        self.assert_exactly_once_ordered(skip, true)
    }

    /// Like `assert_exactly_once_in_order`, for `ordering = "none"`: in any order.
    pub fn assert_exactly_once(&self, skip: &[&str]) -> Vec<usize> {
        self.assert_exactly_once_ordered(skip, false)
    }

    fn assert_exactly_once_ordered(&self, skip: &[&str], in_order: bool) -> Vec<usize> {
        let arrivals = self.arrivals();
        let mut per_endpoint = vec![0; self.receivers.len()];
        let mut times: HashMap<(u32, String, u64), u32> = HashMap::new();
        let mut by_time = arrivals.clone();
        by_time.sort_by_key(|(_, a)| a.at);
        let mut last: HashMap<(u32, String), u64> = HashMap::new();
        for (i, a) in &by_time {
            per_endpoint[*i] += 1;
            *times
                .entry((a.shard, a.session.clone(), a.seq))
                .or_default() += 1;
            // Interactions go in a lane of their own, out of their shard's order.
            if a.name == "INTERACTION_CREATE" {
                continue;
            }
            let prev = last
                .insert((a.shard, a.session.clone()), a.seq)
                .unwrap_or(0);
            assert!(
                !in_order || a.seq > prev,
                "shard {} session {}: seq {} arrived after {}",
                a.shard,
                a.session,
                a.seq,
                prev
            );
        }
        let dupes: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dupes.is_empty(), "delivered more than once: {dupes:?}");
        let expected: HashSet<_> = self.expected(skip).into_iter().collect();
        for key in times.keys() {
            assert!(
                expected.contains(key),
                "delivered {key:?}, which was not expected"
            );
        }
        for key in &expected {
            assert!(times.contains_key(key), "never delivered: {key:?}");
        }
        let violations = self.sim.observed(|o| o.violations.clone());
        assert!(
            violations.is_empty(),
            "the router broke Discord's rules: {violations:?}"
        );
        per_endpoint
    }

    /// Like `assert_exactly_once_in_order`, where a replayed batch arrives after its successors.
    pub fn assert_exactly_once_in_order_after_replay(&self) {
        let arrivals = self.arrivals();
        let mut seen: HashMap<(u32, String, u64), u32> = HashMap::new();
        for (_, a) in &arrivals {
            *seen.entry((a.shard, a.session.clone(), a.seq)).or_default() += 1;
        }
        assert!(seen.values().all(|n| *n == 1), "no duplicates");
        let expected: HashSet<_> = self.expected(&[]).into_iter().collect();
        assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), expected);
    }

    /// Waits until the double has recorded at least `n` gateway commands; returns them all.
    pub async fn wait_sim_commands(&self, n: usize) -> Vec<(u32, serde_json::Value)> {
        within(
            "gateway commands at the double",
            self.sim
                .wait_for(|o| (o.commands.len() >= n).then(|| o.commands.clone())),
        )
        .await
    }

    /// Waits until the double's REST calls satisfy `f`; returns them all.
    pub async fn wait_sim_rest(
        &self,
        mut f: impl FnMut(&[shardhook_simulator::RestCall]) -> bool,
    ) -> Vec<shardhook_simulator::RestCall> {
        within(
            "REST calls at the double",
            self.sim
                .wait_for(|o| f(&o.rest_calls).then(|| o.rest_calls.clone())),
        )
        .await
    }

    /// Stops the router as SIGTERM stops `shardhook run`: the shards close, delivery drains
    /// (up to `delivery.shutdown_timeout`), the checkpoints are written.
    pub async fn stop(mut self) -> Pipe {
        self.stop.cancel();
        let running = self.running.take().unwrap();
        within("the router to stop", running)
            .await
            .unwrap()
            .unwrap();
        self
    }
}
