//! The delivery pipeline as a whole: built from config (endpoints, keys, limits, the ring),
//! one worker per shard queue, a handle for status pages and metrics, and replay of dead
//! letters.
//!
//! Owns construction; what the tasks share is `shared`'s, the per-shard loop `worker`'s,
//! each batch's fate `spooling`'s and `attempt`'s, interactions `interactions`'.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info_span, Instrument};

use super::attempt::{attempt_until_done, dead_letter, Outcome, Target};
use super::aws_chain::Chain;
use super::aws_credentials::AwsCredentials;
use super::batch::Request;
use super::endpoint::Endpoint;
use super::ring::Ring;
use super::shared::Shared;
use super::signer::Signer;
use super::spool_store::{RemoteShardSpool, SharedSpool};
use super::stats::DeliveryStats;
use super::worker::{worker, Intake};
use crate::config::{Config, ConfigError, EndpointFormat};
use crate::gateway::dispatch::Dispatch;
use crate::state::dead_letter::{DeadLetter, DeadLetters};
use crate::state::spool::{RemoteSpool, ShardSpool, SpoolUsage};

/// Why the pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The config is incomplete (no signing secret, no endpoint).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The HTTP client for Discord's REST API could not be built.
    #[error("failed to build the HTTP client: {0}")]
    Client(reqwest::Error),
    /// The platform's certificate roots could not be loaded.
    #[error("failed to set up TLS (the platform's certificate roots): {0}")]
    Tls(rustls::Error),
    /// An endpoint's URL cannot be connected to.
    #[error("endpoint `{endpoint}`: {source}")]
    Endpoint {
        /// The endpoint's name.
        endpoint: String,
        /// What is wrong with its URL.
        source: crate::delivery::http::BadUrl,
    },
    /// The state directory could not be made, or made private.
    #[error("state directory {}: {source}", path.display())]
    State {
        /// The directory, or the file in it, that could not be made or changed.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// An `aws-iam` endpoint's credentials are half set in the environment.
    #[error("endpoint `{endpoint}` has auth = \"aws-iam\": {source}")]
    AwsCredentials {
        /// The endpoint's name.
        endpoint: String,
        /// The variable that is set without its partner.
        source: crate::delivery::aws_chain::PartialCredentials,
    },
}

/// The delivery pipeline: one worker per shard.
pub struct Pipeline {
    pub(super) shared: Arc<Shared>,
    workers: JoinSet<()>,
    queues: Arc<Mutex<Queues>>,
    /// Where shards' spools are kept: this machine's disk, or beyond it (a cluster's Redis).
    spools: Option<Arc<dyn RemoteSpool>>,
    /// Each shard's spool in Redis, to be counted again when the shard is taken over.
    remote_spools: Arc<Mutex<RemoteSpools>>,
    /// Connections opened ahead of the first request, per endpoint.
    warmed: Vec<usize>,
    /// Each shardhook-format endpoint's outbox loop, started with the first shard's queue.
    outboxes: Option<JoinSet<()>>,
}

/// Where delivery keeps what must outlive a failed request: given once, when the pipeline is
/// built, by the router's store (`store::Store::keeping`).
pub(crate) enum Keeping {
    /// Spools and dead letters in files under `state.dir` (a router alone).
    Local,
    /// Spools beyond this machine, and each dead letter there as well as in the file (a
    /// cluster's Redis, up to `dead_letters_max` of them).
    Shared {
        /// Each shard's spool.
        spools: Arc<dyn RemoteSpool>,
        /// Where each dead letter is kept too.
        dead_letters: Arc<dyn crate::state::dead_letter::Mirror>,
        /// How many the store holds now, as it last counted them, for metrics.
        dead_letters_held: Arc<std::sync::atomic::AtomicU64>,
        /// The bound on those, for metrics.
        dead_letters_max: u64,
    },
}

/// Connections each endpoint opens ahead of its first request: enough for its shards' first
/// batches (READY, the GUILD_CREATEs) not to wait for handshakes; more are opened as needed.
const WARM_CONNECTIONS: usize = 8;

/// Each shard's queue and the events its worker read ahead of it, for queue depths.
type Queues = std::collections::BTreeMap<u32, (mpsc::WeakSender<Dispatch>, Arc<AtomicUsize>)>;

/// Each shard's spool in a cluster's Redis.
type RemoteSpools = std::collections::BTreeMap<u32, Arc<RemoteShardSpool>>;

/// A view of the pipeline for status pages and metrics.
#[derive(Clone)]
pub struct DeliveryHandle {
    shared: Arc<Shared>,
    queues: Arc<Mutex<Queues>>,
    remote_spools: Arc<Mutex<RemoteSpools>>,
}

impl DeliveryHandle {
    /// The endpoint a shard's next batch would go to now (its home unless failed over).
    pub fn route(&self, shard_id: u32) -> Option<&str> {
        let endpoints = &self.shared.endpoints;
        let index = self
            .shared
            .ring
            .pick(shard_id as u64, |i| endpoints[i].circuit.would_allow())?;
        Some(&endpoints[index].name)
    }

    /// Bytes in the disk spool across shards, and its bound.
    pub fn spool_bytes(&self) -> (u64, u64) {
        let usage = &self.shared.spool_usage;
        (usage.used.load(AtomicOrdering::Relaxed), usage.limit)
    }

    /// Events of a shard waiting for a batch: in its queue, or read ahead by its worker.
    pub fn queue_depth(&self, shard_id: u32) -> usize {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some((queue, held)) = queues.get(&shard_id) else {
            return 0;
        };
        let queued = queue
            .upgrade()
            .map_or(0, |tx| tx.max_capacity() - tx.capacity());
        queued + held.load(AtomicOrdering::Relaxed)
    }

    /// Connections each endpoint has opened, and how many of them resumed a TLS session, in
    /// config order.
    pub fn connections(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.shared.endpoints.iter().map(|e| e.pool.connections())
    }

    /// Endpoint names, in config order.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.shared.endpoints.iter().map(|e| e.name.as_str())
    }

    /// What delivery has done so far.
    pub fn stats(&self) -> &DeliveryStats {
        &self.shared.stats
    }

    /// The shard was just taken over from another router of the cluster: its spool in Redis
    /// may hold batches that router added, which go before any new one.
    pub fn spool_taken_over(&self, shard_id: u32) {
        let spools = self.remote_spools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(spool) = spools.get(&shard_id) {
            spool.count_again();
        }
    }

    /// `(session, seq)`: every event of the shard's session up to `seq` is delivered,
    /// dead-lettered or spooled.
    pub fn durable(&self, shard_id: u32) -> Option<(Arc<str>, u64)> {
        self.shared.progress.durable(shard_id)
    }

    /// Where `shard` would resume now, the one place checkpoints are computed (a router alone
    /// writes them to files, a cluster to Redis): its session, its resume URL, and how far
    /// that session is safe here, or `floor` (what a previous holder made safe) if further. A
    /// session with nothing safe yet resumes from 0: Discord replays all of it. `None` before
    /// the shard's first READY. Nothing is copied but two `Arc`s: it is asked of every shard
    /// at every checkpoint tick, and most have not moved.
    pub(crate) fn resume_point(
        &self,
        shard: &crate::gateway::handle::ShardHandle,
        floor: Option<&(Arc<str>, u64)>,
    ) -> Option<ResumePoint> {
        let status = shard.status();
        let status = status.borrow();
        let (Some(session), Some(resume_url)) = (&status.session_id, &status.resume_url) else {
            return None;
        };
        let durable = match self.durable(shard.id()) {
            Some((s, seq)) if s == *session => seq,
            _ => 0,
        };
        let floor = match floor {
            Some((s, seq)) if s == session => *seq,
            _ => 0,
        };
        Some(ResumePoint {
            shard_id: shard.id(),
            session: session.clone(),
            resume_url: resume_url.clone(),
            seq: durable.max(floor),
        })
    }

    /// `resume_point` as the checkpoint record that keeps it.
    pub fn checkpoint(
        &self,
        shard: &crate::gateway::handle::ShardHandle,
        floor: Option<&(Arc<str>, u64)>,
        shard_count: u32,
        bot: &str,
    ) -> Option<crate::state::checkpoint::Checkpoint> {
        Some(
            self.resume_point(shard, floor)?
                .checkpoint(shard_count, bot),
        )
    }
}

/// Where a shard would resume now (`DeliveryHandle::resume_point`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumePoint {
    shard_id: u32,
    session: Arc<str>,
    resume_url: Arc<str>,
    seq: u64,
}

impl ResumePoint {
    /// Whether `written` already records this point.
    pub(crate) fn is_recorded_in(&self, written: &crate::state::checkpoint::Checkpoint) -> bool {
        written.seq == self.seq
            && *written.session_id == *self.session
            && *written.resume_url == *self.resume_url
    }

    /// The checkpoint record of this point, written now.
    pub(crate) fn checkpoint(
        &self,
        shard_count: u32,
        bot: &str,
    ) -> crate::state::checkpoint::Checkpoint {
        crate::state::checkpoint::Checkpoint {
            shard_id: self.shard_id,
            shard_count,
            session_id: self.session.to_string(),
            resume_url: self.resume_url.to_string(),
            seq: self.seq,
            bot: Some(bot.to_owned()),
            written_at: Some(super::signer::unix_now()),
        }
    }
}

/// Makes the state directory private (dead letters hold message content and interaction
/// tokens), saying which paths were readable by others before.
fn secure_state_dir(dir: &std::path::Path) -> Result<(), DeliveryError> {
    let tightened = crate::state::files::secure(dir).map_err(|source| DeliveryError::State {
        path: dir.to_owned(),
        source,
    })?;
    for t in tightened {
        tracing::warn!(
            path = %t.path.display(),
            was = format_args!("{:o}", t.was),
            "a state path was open to other users; only its owner may use it now"
        );
    }
    Ok(())
}

impl Pipeline {
    /// Builds the pipeline from config: endpoints, keys, limits. AWS credentials for
    /// `auth = "aws-iam"` endpoints come from the standard chain read from the process
    /// environment (`aws_chain`), fetched in the background and kept fresh; call it on a tokio
    /// runtime.
    pub fn new(config: &Config) -> Result<Pipeline, DeliveryError> {
        Pipeline::with_env(config, std::env::vars())
    }

    /// Like `new`, with the environment given (the AWS credentials chain reads it, but for the
    /// container endpoint's variables, read from the process).
    pub fn with_env(
        config: &Config,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Pipeline, DeliveryError> {
        Pipeline::build(config, env, Keeping::Local)
    }

    /// The pipeline `config` describes, keeping spools and dead letters where `keeping` says.
    pub(crate) fn build(
        config: &Config,
        env: impl IntoIterator<Item = (String, String)>,
        keeping: Keeping,
    ) -> Result<Pipeline, DeliveryError> {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let signer = Signer::from_config(config)?;
        if config.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints.into());
        }
        secure_state_dir(&config.state.dir)?;
        // For Discord's REST API (deferring interactions, apologising for them); endpoints have
        // connections of their own (`http`).
        let tls = crate::tls::platform_tls().map_err(DeliveryError::Tls)?;
        let builder = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::tls::with_http2(&tls))
            .user_agent(crate::USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            // Discord's API does not redirect these; followed, a redirect would turn a POST
            // into a GET.
            .redirect(reqwest::redirect::Policy::none());
        let client = config
            .discord
            .client(builder)
            .map_err(DeliveryError::Config)?
            .build()
            .map_err(DeliveryError::Client)?;
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        let mut aws_chain = None;
        for e in &config.endpoints {
            let aws_region = match e.auth {
                crate::config::EndpointAuth::None => None,
                crate::config::EndpointAuth::AwsIam => {
                    let region = e.aws_region().expect("validated by config");
                    if aws_chain.is_none() {
                        let chain = Chain::from_env(env.clone(), &region).map_err(|source| {
                            DeliveryError::AwsCredentials {
                                endpoint: e.name.clone(),
                                source,
                            }
                        })?;
                        aws_chain = Some(chain);
                    }
                    Some(region)
                }
            };
            let endpoint =
                Endpoint::new(e, &config.delivery, aws_region, &tls).map_err(|source| {
                    DeliveryError::Endpoint {
                        endpoint: e.name.clone(),
                        source,
                    }
                })?;
            endpoints.push(endpoint);
        }
        let ring = Ring::new(config.endpoints.iter().map(|e| (e.name.as_str(), e.weight)));
        let mut stats = DeliveryStats::new(endpoints.len());
        let (spools, dead) = match keeping {
            Keeping::Local => (None, DeadLetters::new(&config.state.dir, None)),
            Keeping::Shared {
                spools,
                dead_letters,
                dead_letters_held,
                dead_letters_max,
            } => {
                stats.cluster_dead_letters = dead_letters_held;
                stats.cluster_dead_letters_max = AtomicU64::new(dead_letters_max);
                let dead = DeadLetters::new(&config.state.dir, Some(dead_letters));
                (Some(spools), dead)
            }
        };
        let stats = Arc::new(stats);
        Ok(Pipeline {
            shared: Arc::new(Shared {
                client,
                signer,
                ed25519: config.signing.ed25519_private_key.clone(),
                application_id: Default::default(),
                endpoints,
                // One cache for the process: every aws-iam endpoint signs with the same keys.
                aws_credentials: aws_chain.map(AwsCredentials::start),
                ring,
                include: config.events.include.iter().cloned().collect(),
                exclude: config.events.exclude.iter().cloned().collect(),
                dead,
                config: config.clone(),
                stats,
                progress: Default::default(),
                spool_usage: Arc::new(SpoolUsage {
                    used: AtomicU64::new(0),
                    limit: config.state.spool_max_bytes,
                }),
                lanes: Arc::new(tokio::sync::Semaphore::new(config.interactions.max_lanes)),
            }),
            workers: JoinSet::new(),
            queues: Arc::default(),
            spools,
            remote_spools: Arc::default(),
            warmed: vec![0; config.endpoints.len()],
            outboxes: None,
        })
    }

    /// Asks Discord for the bot's application id (`GET /users/@me`) when an endpoint has
    /// `format = "carbon"`, whose bodies carry it. If that fails it is read from the first
    /// READY instead (a resumed session has none, so call this before the shards start).
    pub async fn learn_application_id(&self) {
        let shared = &self.shared;
        let carbon = shared
            .endpoints
            .iter()
            .any(|e| e.format == EndpointFormat::Carbon);
        let Ok(token) = shared.config.token() else {
            return;
        };
        if !carbon || shared.application_id.get().is_some() {
            return;
        }
        let api = &shared.config.discord.api_url;
        let asked = tokio::time::timeout(
            shared.config.discord.connect_timeout,
            crate::gateway::bot_info::application_id(&shared.client, api, token),
        )
        .await;
        match asked {
            Ok(Ok(id)) => {
                tracing::info!(application_id = %id, "Carbon endpoints' bodies carry this application id");
                let _ = shared.application_id.set(Arc::from(id));
            }
            Ok(Err(e)) => tracing::warn!("{e}; Carbon bodies take the application id from READY"),
            Err(_) => tracing::warn!(
                "GET /users/@me timed out; Carbon bodies take the application id from READY"
            ),
        }
    }

    /// A view for status pages and metrics.
    pub fn handle(&self) -> DeliveryHandle {
        DeliveryHandle {
            shared: self.shared.clone(),
            queues: self.queues.clone(),
            remote_spools: self.remote_spools.clone(),
        }
    }

    /// The queue for `shard_id`'s events, with its worker started.
    pub fn sink(&mut self, shard_id: u32) -> mpsc::Sender<Dispatch> {
        // `delivery.queue` bounds the events of a shard waiting for a batch: half in the queue,
        // half read ahead by its worker.
        let queue = self.shared.config.delivery.queue;
        let queued = (queue / 2).max(1);
        let (tx, rx) = mpsc::channel(queued);
        let held = Arc::new(AtomicUsize::new(0));
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard_id, (tx.downgrade(), held.clone()));
        let shared = self.shared.clone();
        if self.outboxes.is_none() {
            let mut outboxes = JoinSet::new();
            for (index, endpoint) in shared.endpoints.iter().enumerate() {
                if endpoint.format == EndpointFormat::Shardhook {
                    let span = info_span!("outbox", endpoint = %endpoint.name);
                    outboxes.spawn(super::outbox::run(shared.clone(), index).instrument(span));
                }
            }
            self.outboxes = Some(outboxes);
        }
        // The shard's endpoint gets a connection ready (TCP, TLS) before the shard has an event:
        // one per shard routed to it, up to `WARM_CONNECTIONS` and its in-flight cap.
        if let Some(home) = shared.ring.pick(shard_id as u64, |_| true) {
            let cap = WARM_CONNECTIONS.min(shared.config.endpoints[home].max_in_flight);
            if self.warmed[home] < cap {
                self.warmed[home] += 1;
                let warming = shared.clone();
                tokio::spawn(async move { warming.endpoints[home].pool.warm().await });
            }
        }
        let format = shared.home_format(shard_id);
        let intake = Intake::new(rx, queue.saturating_sub(queued).max(1), held);
        let spool = match &self.spools {
            None => SharedSpool::Disk(Arc::new(tokio::sync::Mutex::new(ShardSpool::open(
                &shared.config.state.dir,
                shard_id,
                shared.spool_usage.clone(),
            )))),
            Some(backend) => {
                let stream = Arc::new(RemoteShardSpool::new(
                    shard_id,
                    backend.clone(),
                    shared.spool_usage.clone(),
                ));
                self.remote_spools
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(shard_id, stream.clone());
                SharedSpool::Remote(stream)
            }
        };
        self.workers.spawn(
            worker(shared, intake, spool, format).instrument(info_span!("delivery", shard_id)),
        );
        tx
    }

    /// What delivery has done so far, to keep after the pipeline is finished.
    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.shared.stats.clone()
    }

    /// Where dead letters go.
    pub fn dead_letter_path(&self) -> &std::path::Path {
        self.shared.dead.path()
    }

    /// Waits until every queue is closed (the shards have stopped) and drained. Every batch
    /// handed to an outbox has its fate by then, so the outboxes' loops end with it.
    pub async fn finish(mut self) {
        while self.workers.join_next().await.is_some() {}
        if let Some(mut outboxes) = self.outboxes.take() {
            outboxes.shutdown().await;
        }
    }

    /// Sends dead letters again, each to its shard's endpoint now, with a fresh signature and
    /// its original `webhook-id`. Those that fail again are dead-lettered anew. A record that
    /// cannot be sent as it is (its `webhook-id` is no header value) is refused, written back
    /// to the dead-letter file unchanged, and the rest go on.
    pub async fn replay(&self, letters: Vec<DeadLetter>) -> Replayed {
        let mut replayed = Replayed::default();
        for (index, letter) in letters.into_iter().enumerate() {
            if let Err(reason) = super::batch::check_id(&letter.webhook_id) {
                let kept = self.shared.dead.append(&letter).await.err();
                replayed.refused.push(RefusedLetter {
                    record: index + 1,
                    reason,
                    not_kept: kept.map(|e| e.to_string()),
                });
                continue;
            }
            let body: Box<str> = letter.body.into();
            let request = Request {
                id: letter.webhook_id,
                body: bytes::Bytes::from(body.into_boxed_bytes()),
                shard_id: letter.shard_id,
                session_id: Arc::from(""),
                first_seq: 0,
                last_seq: 0,
                events: 0,
                first_received: Instant::now(),
                deferred: Vec::new(),
                format: letter.format,
                attempts: 0,
            };
            match attempt_until_done(&self.shared, request, Target::Ring, None)
                .await
                .0
            {
                Outcome::Delivered => replayed.delivered += 1,
                Outcome::DeadLettered => replayed.failed += 1,
                Outcome::Unavailable(request) => {
                    dead_letter(&self.shared, request, 0, None).await;
                    replayed.failed += 1;
                }
            }
        }
        replayed
    }
}

/// What `Pipeline::replay` did with a file's records.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Records an endpoint took.
    pub delivered: usize,
    /// Records that failed again and were dead-lettered anew.
    pub failed: usize,
    /// Records that could not be sent as they are.
    pub refused: Vec<RefusedLetter>,
}

/// A dead letter `replay` would not send.
#[derive(Debug)]
pub struct RefusedLetter {
    /// Its place among the file's records, from 1.
    pub record: usize,
    /// What is wrong with it.
    pub reason: &'static str,
    /// Why it could not be written back to the dead-letter file, if it could not.
    pub not_kept: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointConfig, SigningConfig, StateConfig};
    use crate::secret::SigningKey;

    #[tokio::test]
    async fn routing_a_shard_opens_its_endpoints_connection_before_any_event() {
        let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", endpoint.local_addr().unwrap());
        let state = std::env::temp_dir().join(format!("shardhook-warm-{}", std::process::id()));
        let config = Config {
            signing: SigningConfig {
                secret: Some(SigningKey::parse(&SigningKey::generate()).unwrap()),
                previous_secrets: vec![],
                control_secret: None,
                ed25519_private_key: None,
            },
            endpoints: vec![EndpointConfig::new("a", url)],
            state: StateConfig {
                dir: state.clone(),
                ..StateConfig::default()
            },
            ..Config::default()
        };
        let mut pipeline = Pipeline::new(&config).unwrap();
        let _queue = pipeline.sink(0);
        let accepted = tokio::time::timeout(Duration::from_secs(30), endpoint.accept()).await;
        assert!(
            matches!(accepted, Ok(Ok(_))),
            "no connection was opened ahead of the shard's first event"
        );
        let _ = std::fs::remove_dir_all(&state);
    }
}
