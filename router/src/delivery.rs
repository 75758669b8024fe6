//! Delivery: every dispatch leaves as a signed POST to the endpoint its shard hashes to, paced,
//! retried, and delivered or dead-lettered.
//!
//! Owns the pipeline from the per-shard queues (bounded: a full one stops that shard's reading)
//! through filtering, batching, ordering, signing, sending, retrying, failover and dead letters,
//! and the delivery counters. It leaves the body format to `batch`, the retry rules to `retry`,
//! endpoint choice to `ring`, and endpoint health to `circuit`.

use std::collections::HashSet;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant, Sleep};
use tokio_util::sync::ReusableBoxFuture;
use tracing::{error, info_span, warn, Instrument};

use crate::batch::{Batch, DeferredInteraction, Request};
use crate::config::{Config, ConfigError, Ordering};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::dispatch::Dispatch;
use crate::endpoint::Endpoint;
use crate::retry::{self, Attempt, RetryAction};
use crate::ring::Ring;
use crate::signer::{unix_now, Signer};
use crate::spool::{Head, ShardSpool, SpoolUsage, SpooledBatch};
use crate::transport::Failure;

/// The event Discord gives 3 s to acknowledge: it never waits for a batch to fill.
const INTERACTION_CREATE: &str = "INTERACTION_CREATE";
/// How often a full or failing spool is tried again, and a spool waiting on circuits looked at.
const SPOOL_RETRY: Duration = Duration::from_millis(250);

/// A shard's spool, shared by its batches in flight.
type SharedSpool = Arc<tokio::sync::Mutex<ShardSpool>>;

/// Batches of one shard in flight at once with `ordering = "none"`.
const UNORDERED_IN_FLIGHT: usize = 16;
/// Batches of one shard built and waiting for a sender with `ordering = "none"`, besides
/// those in flight: a sender that finishes takes the next at once instead of a task being
/// spawned for it.
const UNORDERED_QUEUED: usize = UNORDERED_IN_FLIGHT;

/// The batches of one shard waiting to be sent with `ordering = "none"`, and how many sender
/// tasks are running. A sender takes batches until none wait, then ends.
#[derive(Default)]
struct Unsent {
    queue: std::collections::VecDeque<(Request, tokio::sync::OwnedSemaphorePermit)>,
    senders: usize,
}

/// One shard's senders with `ordering = "none"`: up to `UNORDERED_IN_FLIGHT` tasks, each
/// delivering waiting batches one at a time, so a busy shard spawns no task per batch.
struct Senders {
    /// Room for batches in flight or waiting; `send` waits for it.
    room: Arc<tokio::sync::Semaphore>,
    unsent: Arc<Mutex<Unsent>>,
    tasks: JoinSet<()>,
}

impl Senders {
    fn new() -> Senders {
        Senders {
            room: Arc::new(tokio::sync::Semaphore::new(
                UNORDERED_IN_FLIGHT + UNORDERED_QUEUED,
            )),
            unsent: Arc::default(),
            tasks: JoinSet::new(),
        }
    }

    /// Queues `request` for a sender, starting one if fewer than `UNORDERED_IN_FLIGHT` run;
    /// waits while `UNORDERED_IN_FLIGHT + UNORDERED_QUEUED` batches are in flight or waiting.
    async fn send(&mut self, shared: &Arc<Shared>, spool: &SharedSpool, request: Request) {
        let permit = self
            .room
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let mut unsent = self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        // Senders that ended are reaped, so the set holds only running ones. One that
        // panicked did not count itself out.
        while let Some(ended) = self.tasks.try_join_next() {
            if ended.is_err() {
                unsent.senders -= 1;
            }
        }
        unsent.queue.push_back((request, permit));
        let spawn = unsent.senders < UNORDERED_IN_FLIGHT;
        if spawn {
            unsent.senders += 1;
        }
        drop(unsent);
        if spawn {
            self.tasks.spawn(
                send_unsent(shared.clone(), spool.clone(), self.unsent.clone()).in_current_span(),
            );
        }
    }

    /// Waits until every queued batch is delivered.
    async fn finish(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Counters of what delivery did. Cheap to update from every task.
#[derive(Debug)]
pub struct DeliveryStats {
    pub events_delivered: AtomicU64,
    pub requests_delivered: AtomicU64,
    /// Attempts after the first, over all batches.
    pub retries: AtomicU64,
    pub events_dead_lettered: AtomicU64,
    pub requests_dead_lettered: AtomicU64,
    /// Events dropped by `events.include`/`events.exclude`.
    pub events_filtered: AtomicU64,
    /// Events written to the spool because no endpoint could take them.
    pub events_spooled: AtomicU64,
    /// Events delivered per endpoint, in config order.
    pub per_endpoint: Vec<AtomicU64>,
    /// Retried attempts, dead-lettered requests and rate-limit waits per endpoint.
    pub retries_by_endpoint: Vec<AtomicU64>,
    pub dead_letters_by_endpoint: Vec<AtomicU64>,
    pub rate_limit_waits: Vec<AtomicU64>,
    /// Events delivered per (shard, endpoint index).
    pub(crate) delivered_by: Mutex<std::collections::HashMap<(u32, usize), u64>>,
    /// Delivery latency: from the gateway read of a batch's first event to its 2xx.
    pub(crate) latency: prometheus_client::metrics::histogram::Histogram,
    /// The first latencies, kept exactly for quantiles (bounded).
    latencies: Mutex<Vec<Duration>>,
    /// Interactions deferred by the router, and how long after the gateway read each was.
    pub interactions_deferred: AtomicU64,
    pub(crate) defer_latencies: Mutex<Vec<Duration>>,
}

/// Latencies kept exactly for quantiles; the histogram keeps counting past this.
const LATENCY_SAMPLES: usize = 100_000;

impl Default for DeliveryStats {
    fn default() -> Self {
        DeliveryStats::new(0)
    }
}

fn quantile(samples: &Mutex<Vec<Duration>>, q: f64) -> Option<Duration> {
    let mut all = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if all.is_empty() {
        return None;
    }
    all.sort();
    let index = ((all.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
    Some(all[index])
}

fn counters(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl DeliveryStats {
    fn new(endpoints: usize) -> DeliveryStats {
        DeliveryStats {
            events_delivered: AtomicU64::new(0),
            requests_delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            events_dead_lettered: AtomicU64::new(0),
            requests_dead_lettered: AtomicU64::new(0),
            events_filtered: AtomicU64::new(0),
            events_spooled: AtomicU64::new(0),
            per_endpoint: counters(endpoints),
            retries_by_endpoint: counters(endpoints),
            dead_letters_by_endpoint: counters(endpoints),
            rate_limit_waits: counters(endpoints),
            delivered_by: Mutex::default(),
            latency: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 16),
            ),
            latencies: Mutex::default(),
            interactions_deferred: AtomicU64::new(0),
            defer_latencies: Mutex::default(),
        }
    }

    fn record_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
        let mut samples = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < LATENCY_SAMPLES {
            samples.push(latency);
        }
    }

    /// The `q`-quantile (0..=1) of delivery latency so far.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }

    /// The `q`-quantile of the time from the gateway read of an interaction to its deferral.
    pub fn defer_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.defer_latencies, q)
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(AtomicOrdering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            events_delivered: Self::get(&self.events_delivered),
            requests_delivered: Self::get(&self.requests_delivered),
            retries: Self::get(&self.retries),
            events_dead_lettered: Self::get(&self.events_dead_lettered),
            requests_dead_lettered: Self::get(&self.requests_dead_lettered),
            events_filtered: Self::get(&self.events_filtered),
            events_spooled: Self::get(&self.events_spooled),
            per_endpoint: self.per_endpoint.iter().map(Self::get).collect(),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub events_delivered: u64,
    pub requests_delivered: u64,
    pub retries: u64,
    pub events_dead_lettered: u64,
    pub requests_dead_lettered: u64,
    pub events_filtered: u64,
    pub events_spooled: u64,
    pub per_endpoint: Vec<u64>,
}

/// Why the pipeline could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("failed to build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("failed to set up TLS (the platform's certificate roots): {0}")]
    Tls(rustls::Error),
    #[error("endpoint `{endpoint}`: {source}")]
    Endpoint {
        endpoint: String,
        source: crate::transport::BadUrl,
    },
    #[error("endpoint `{endpoint}` has auth = \"aws-iam\": {source}")]
    AwsCredentials {
        endpoint: String,
        source: crate::sigv4::MissingCredential,
    },
}

/// What the delivery tasks share.
struct Shared {
    client: reqwest::Client,
    signer: Signer,
    endpoints: Vec<Endpoint>,
    ring: Ring,
    config: Config,
    include: HashSet<String>,
    exclude: HashSet<String>,
    dead: DeadLetters,
    stats: Arc<DeliveryStats>,
    /// Deferrals under way, by (shard, seq), started as interactions arrive and awaited when
    /// their batch is built.
    deferrals: Mutex<Deferrals>,
    /// What is safe per shard, for resume checkpoints.
    progress: crate::progress::Progress,
    /// Bytes spooled across shards, against `state.spool_max_bytes`.
    spool_usage: Arc<SpoolUsage>,
}

/// Deferrals under way, by (shard, seq).
type Deferrals =
    std::collections::HashMap<(u32, u64), tokio::task::JoinHandle<Option<DeferredInteraction>>>;

/// The delivery pipeline: one worker per shard.
pub struct Pipeline {
    shared: Arc<Shared>,
    workers: JoinSet<()>,
    queues: Arc<Mutex<std::collections::BTreeMap<u32, mpsc::WeakSender<Dispatch>>>>,
}

/// A view of the pipeline for status pages and metrics.
#[derive(Clone)]
pub struct DeliveryHandle {
    shared: Arc<Shared>,
    queues: Arc<Mutex<std::collections::BTreeMap<u32, mpsc::WeakSender<Dispatch>>>>,
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

    /// Events waiting in a shard's queue.
    pub fn queue_depth(&self, shard_id: u32) -> usize {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .get(&shard_id)
            .and_then(|weak| weak.upgrade())
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// Endpoint names, in config order.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.shared.endpoints.iter().map(|e| e.name.as_str())
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.shared.stats
    }

    /// `(session, seq)`: every event of the shard's session up to `seq` is delivered,
    /// dead-lettered or spooled.
    pub fn durable(&self, shard_id: u32) -> Option<(Arc<str>, u64)> {
        self.shared.progress.durable(shard_id)
    }
}

impl Pipeline {
    /// Builds the pipeline from config: endpoints, keys, limits. AWS credentials for
    /// `auth = "aws-iam"` endpoints come from the process environment.
    pub fn new(config: &Config) -> Result<Pipeline, DeliveryError> {
        Pipeline::with_env(config, std::env::vars())
    }

    /// Like `new`, with the environment given.
    pub fn with_env(
        config: &Config,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Pipeline, DeliveryError> {
        let env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .collect();
        let signer = config.signer()?;
        if config.endpoints.is_empty() {
            return Err(ConfigError::NoEndpoints.into());
        }
        // For Discord's REST API (deferring interactions, apologising for them); endpoints have
        // connections of their own (`transport`).
        let tls = crate::transport::platform_tls().map_err(DeliveryError::Tls)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(crate::transport::with_http2(&tls))
            .user_agent(crate::transport::USER_AGENT)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(4)
            // Discord's API does not redirect these; followed, a redirect would turn a POST
            // into a GET.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(DeliveryError::Client)?;
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for e in &config.endpoints {
            let aws = match e.auth {
                crate::config::EndpointAuth::None => None,
                crate::config::EndpointAuth::AwsIam => {
                    let creds =
                        crate::sigv4::Credentials::from_env(env.clone()).map_err(|source| {
                            DeliveryError::AwsCredentials {
                                endpoint: e.name.clone(),
                                source,
                            }
                        })?;
                    Some((e.aws_region().expect("validated by config"), creds))
                }
            };
            let endpoint = Endpoint::new(e, &config.delivery, aws, &tls).map_err(|source| {
                DeliveryError::Endpoint {
                    endpoint: e.name.clone(),
                    source,
                }
            })?;
            endpoints.push(endpoint);
        }
        let ring = Ring::new(config.endpoints.iter().map(|e| (e.name.as_str(), e.weight)));
        let stats = Arc::new(DeliveryStats::new(endpoints.len()));
        Ok(Pipeline {
            shared: Arc::new(Shared {
                client,
                signer,
                endpoints,
                ring,
                include: config.events.include.iter().cloned().collect(),
                exclude: config.events.exclude.iter().cloned().collect(),
                dead: DeadLetters::new(&config.state.dir),
                config: config.clone(),
                stats,
                deferrals: Mutex::default(),
                progress: Default::default(),
                spool_usage: Arc::new(SpoolUsage {
                    used: AtomicU64::new(0),
                    limit: config.state.spool_max_bytes,
                }),
            }),
            workers: JoinSet::new(),
            queues: Arc::default(),
        })
    }

    /// A view for status pages and metrics.
    pub fn handle(&self) -> DeliveryHandle {
        DeliveryHandle {
            shared: self.shared.clone(),
            queues: self.queues.clone(),
        }
    }

    /// The queue for `shard_id`'s events, with its worker started.
    pub fn sink(&mut self, shard_id: u32) -> mpsc::Sender<Dispatch> {
        let (tx, rx) = mpsc::channel(self.shared.config.delivery.queue);
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(shard_id, tx.downgrade());
        let shared = self.shared.clone();
        let rx = if shared.config.interactions.auto_defer {
            // Interactions are deferred as they arrive, not when their turn in the queue comes.
            let (intake, worker_rx) = mpsc::channel(1);
            self.workers.spawn(
                defer_on_arrival(shared.clone(), rx, intake)
                    .instrument(info_span!("intake", shard_id)),
            );
            worker_rx
        } else {
            rx
        };
        let spool = ShardSpool::open(
            &shared.config.state.dir,
            shard_id,
            shared.spool_usage.clone(),
        );
        let spool = Arc::new(tokio::sync::Mutex::new(spool));
        self.workers
            .spawn(worker(shared, rx, spool).instrument(info_span!("delivery", shard_id)));
        tx
    }

    pub fn stats(&self) -> Arc<DeliveryStats> {
        self.shared.stats.clone()
    }

    /// Where dead letters go.
    pub fn dead_letter_path(&self) -> &std::path::Path {
        self.shared.dead.path()
    }

    /// Waits until every queue is closed (the shards have stopped) and drained.
    pub async fn finish(mut self) {
        while self.workers.join_next().await.is_some() {}
    }

    /// Sends dead letters again, each to its shard's endpoint now, with a fresh signature and
    /// its original `webhook-id`. Those that fail again are dead-lettered anew. Returns how
    /// many were delivered.
    pub async fn replay(&self, letters: Vec<DeadLetter>) -> usize {
        let mut delivered = 0;
        for letter in letters {
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
            };
            match attempt_until_done(&self.shared, request).await {
                Outcome::Delivered => delivered += 1,
                Outcome::DeadLettered => {}
                Outcome::Unavailable(request) => dead_letter(&self.shared, request, 0, None).await,
            }
        }
        delivered
    }
}

/// The fields of an interaction that deferring and editing need.
#[derive(serde::Deserialize)]
struct InteractionRef<'a> {
    id: &'a str,
    token: &'a str,
    #[serde(rename = "type")]
    kind: u8,
    application_id: &'a str,
}

/// Interaction type 3 is a message component: its deferral is type 6 (update), not 5.
const MESSAGE_COMPONENT: u8 = 3;
/// How long deferring may hold up forwarding the interaction.
const DEFER_TIMEOUT: Duration = Duration::from_secs(2);

impl Shared {
    /// The deferral started for `event` when it arrived, once it is done.
    async fn deferred(&self, event: &Dispatch) -> Option<DeferredInteraction> {
        if !event.is_named(INTERACTION_CREATE) {
            return None;
        }
        let started = self
            .deferrals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(event.shard_id, event.seq))?;
        started.await.ok().flatten()
    }

    /// Acknowledges an INTERACTION_CREATE with a deferred response and says so; `None` if
    /// Discord refused.
    async fn defer(&self, event: &Dispatch) -> Option<DeferredInteraction> {
        let interaction: InteractionRef = match serde_json::from_slice(event.data()) {
            Ok(i) => i,
            Err(e) => {
                warn!(
                    seq = event.seq,
                    "cannot defer an interaction without id, token, type and application_id: {e}"
                );
                return None;
            }
        };
        let kind = if interaction.kind == MESSAGE_COMPONENT {
            6
        } else {
            5
        };
        let path = format!(
            "/interactions/{}/{}/callback",
            interaction.id, interaction.token
        );
        let sent = self
            .discord(
                reqwest::Method::POST,
                &path,
                format!(r#"{{"type":{kind}}}"#),
            )
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                self.stats
                    .interactions_deferred
                    .fetch_add(1, AtomicOrdering::Relaxed);
                self.stats
                    .defer_latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(event.received_at.elapsed());
                Some(DeferredInteraction {
                    application_id: interaction.application_id.to_owned(),
                    token: interaction.token.to_owned(),
                })
            }
            Ok(response) => {
                warn!(status = %response.status(), "Discord refused to defer an interaction; forwarding it as is");
                None
            }
            Err(e) => {
                warn!(
                    "failed to defer an interaction; forwarding it as is: {}",
                    e.without_url()
                );
                None
            }
        }
    }

    /// A JSON request to Discord's REST API at `path` (below `discord.api_url`). Interaction
    /// callbacks and webhook edits carry their own token, so no bot token is sent.
    fn discord(
        &self,
        method: reqwest::Method,
        path: &str,
        body: String,
    ) -> reqwest::RequestBuilder {
        let base = self.config.discord.api_url.trim_end_matches('/');
        self.client
            .request(method, format!("{base}{path}"))
            .timeout(DEFER_TIMEOUT)
            .header("content-type", "application/json")
            .body(body)
    }

    /// Edits each deferred interaction's response with the configured error message.
    async fn apologise(&self, interactions: &[DeferredInteraction]) {
        let body =
            serde_json::json!({ "content": self.config.interactions.error_message }).to_string();
        for interaction in interactions {
            let path = format!(
                "/webhooks/{}/{}/messages/@original",
                interaction.application_id, interaction.token
            );
            let sent = self
                .discord(reqwest::Method::PATCH, &path, body.clone())
                .send()
                .await;
            if let Err(e) = sent.and_then(|r| r.error_for_status()) {
                warn!(
                    "failed to tell the user an interaction failed: {}",
                    e.without_url()
                );
            }
        }
    }

    /// When the first open circuit will allow a probe (soon, if none is open).
    fn next_reopen(&self) -> Instant {
        self.endpoints
            .iter()
            .filter_map(|e| e.circuit.reopens_at())
            .min()
            .unwrap_or_else(|| Instant::now() + SPOOL_RETRY)
            .max(Instant::now() + Duration::from_millis(10))
    }

    /// Whether `event` passes `events.include` and `exclude`. Without filters (the common
    /// case) its name is not read at all: this runs for every event.
    fn wanted(&self, event: &Dispatch) -> bool {
        if self.include.is_empty() && self.exclude.is_empty() {
            return true;
        }
        let name = event.name();
        (self.include.is_empty() || self.include.contains(name)) && !self.exclude.contains(name)
    }

    /// Whether `event` is forwarded; one that is filtered out counts as done for checkpoints.
    fn keep(&self, event: &Dispatch) -> bool {
        if self.wanted(event) {
            return true;
        }
        self.progress
            .skipped(event.shard_id, &event.session_id, event.seq);
        self.stats
            .events_filtered
            .fetch_add(1, AtomicOrdering::Relaxed);
        false
    }

    /// The next event for this shard already queued that passes the filters, without waiting.
    fn queued(&self, rx: &mut mpsc::Receiver<Dispatch>) -> Option<Dispatch> {
        while let Ok(event) = rx.try_recv() {
            if self.keep(&event) {
                return Some(event);
            }
        }
        None
    }

    /// The next event for this shard that passes the filters.
    async fn next(&self, rx: &mut mpsc::Receiver<Dispatch>) -> Option<Dispatch> {
        loop {
            let event = rx.recv().await?;
            if self.keep(&event) {
                return Some(event);
            }
        }
    }

    /// An event already queued (or, with linger, arriving before `linger` ends), if any. The
    /// batch's one timer is passed in: a timer per wait would be registered and removed for
    /// nearly every event of a busy shard.
    async fn more(
        &self,
        rx: &mut mpsc::Receiver<Dispatch>,
        mut linger: Pin<&mut Sleep>,
    ) -> Option<Dispatch> {
        loop {
            if let Some(event) = self.queued(rx) {
                return Some(event);
            }
            if Instant::now() >= linger.deadline() {
                return None;
            }
            let event = tokio::select! {
                event = rx.recv() => event?,
                _ = &mut linger => return None,
            };
            if self.keep(&event) {
                return Some(event);
            }
        }
    }
}

/// With `interactions.auto_defer`: starts deferring each interaction as it arrives, then
/// passes every event on to the delivery loop.
async fn defer_on_arrival(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Dispatch>,
    tx: mpsc::Sender<Dispatch>,
) {
    while let Some(event) = rx.recv().await {
        if event.is_named(INTERACTION_CREATE) && shared.wanted(&event) {
            let (deferring, key) = (shared.clone(), (event.shard_id, event.seq));
            let interaction = event.clone();
            let started = tokio::spawn(async move { deferring.defer(&interaction).await });
            shared
                .deferrals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, started);
        }
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

/// One shard's delivery loop: batch, then send in order (or several at once).
async fn worker(shared: Arc<Shared>, mut rx: mpsc::Receiver<Dispatch>, spool: SharedSpool) {
    let batching = &shared.config.batch;
    let mut senders = match shared.config.delivery.ordering {
        Ordering::Shard => None,
        Ordering::None => Some(Senders::new()),
    };
    let mut carry: Option<Dispatch> = None;
    // Sending a batch in order (signing, the HTTP exchange, retries, dead letters) is most of
    // this loop's state. Inline, it would sit in every shard's task all its life, idle or not.
    // Boxed instead: the box is reused while events wait, so a busy shard allocates it once,
    // and dropped before the loop waits for one, so an idle shard holds none.
    let mut sending: Option<ReusableBoxFuture<'_, ()>> = None;
    loop {
        // Boxed, as the send below is, and only when something waits: most shards never
        // spool anything.
        if !spool.lock().await.is_empty() {
            Box::pin(drain(&shared, &spool)).await;
        }
        let first = match carry.take().or_else(|| shared.queued(&mut rx)) {
            Some(event) => event,
            None => {
                // Nothing to send: this shard waits, and holds no send while it does.
                sending = None;
                let spooled = !spool.lock().await.is_empty();
                tokio::select! {
                    event = shared.next(&mut rx) => match event {
                        Some(event) => event,
                        None => break,
                    },
                    // Batches wait in the spool: look again when a circuit may allow a probe.
                    _ = sleep_until(shared.next_reopen()), if spooled => continue,
                }
            }
        };
        let urgent = first.is_named(INTERACTION_CREATE);
        let deferred = shared.deferred(&first).await;
        let mut batch = Batch::new(first);
        if let Some(interaction) = deferred {
            batch.mark_deferred(interaction);
        }
        if !urgent && batching.max_events > 1 {
            let mut linger = pin!(sleep_until(Instant::now() + batching.linger));
            while batch.len() < batching.max_events {
                let Some(event) = shared.more(&mut rx, linger.as_mut()).await else {
                    break;
                };
                if !batch.accepts(&event, batching.max_bytes) {
                    carry = Some(event);
                    break;
                }
                let urgent = event.is_named(INTERACTION_CREATE);
                let deferred = shared.deferred(&event).await;
                batch.push(event);
                if let Some(interaction) = deferred {
                    batch.mark_deferred(interaction);
                }
                if urgent {
                    break;
                }
            }
        }
        let request = batch.finish();
        shared.progress.started(
            request.shard_id,
            &request.session_id,
            request.first_seq,
            request.last_seq,
        );
        match senders.as_mut() {
            None => {
                let send = deliver(&shared, &spool, request);
                let boxed = match sending.as_mut() {
                    Some(boxed) => {
                        boxed.set(send);
                        boxed
                    }
                    None => sending.insert(ReusableBoxFuture::new(send)),
                };
                boxed.await;
            }
            Some(senders) => senders.send(&shared, &spool, request).await,
        }
    }
    if let Some(senders) = senders {
        senders.finish().await;
    }
}

/// A sender of `ordering = "none"`: delivers waiting batches of its shard, one at a time,
/// until none wait.
async fn send_unsent(shared: Arc<Shared>, spool: SharedSpool, unsent: Arc<Mutex<Unsent>>) {
    loop {
        let next = {
            let mut unsent = unsent.lock().unwrap_or_else(|p| p.into_inner());
            let next = unsent.queue.pop_front();
            if next.is_none() {
                unsent.senders -= 1;
            }
            next
        };
        let Some((request, _room)) = next else {
            return;
        };
        deliver(&shared, &spool, request).await;
    }
}

/// How an attempt to deliver a batch ended.
enum Outcome {
    Delivered,
    DeadLettered,
    /// Every candidate endpoint's circuit is open: the batch should wait in the spool.
    Unavailable(Request),
}

/// Sends one batch until it is delivered or dead-lettered, or spools it when no endpoint can
/// take it (and while older batches of the shard wait in the spool). Any of the three makes
/// its events safe for resume checkpoints.
async fn deliver(shared: &Shared, spool: &SharedSpool, request: Request) {
    let (shard, session, first) = (
        request.shard_id,
        request.session_id.clone(),
        request.first_seq,
    );
    let waiting = !spool.lock().await.is_empty();
    if waiting {
        spool_request(shared, spool, request).await;
    } else if let Outcome::Unavailable(request) = attempt_until_done(shared, request).await {
        spool_request(shared, spool, request).await;
    }
    shared.progress.finished(shard, &session, first);
}

/// Appends to the spool, waiting (backpressure) while it is full or cannot be written.
async fn spool_request(shared: &Shared, spool: &SharedSpool, request: Request) {
    let batch = SpooledBatch {
        id: request.id,
        shard_id: request.shard_id,
        session_id: request.session_id.to_string(),
        first_seq: request.first_seq,
        last_seq: request.last_seq,
        events: request.events,
        body: RawValue::from_string(String::from_utf8_lossy(&request.body).into_owned())
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON")),
    };
    loop {
        match spool.lock().await.append(&batch) {
            Ok(()) => {
                shared
                    .stats
                    .events_spooled
                    .fetch_add(batch.events as u64, AtomicOrdering::Relaxed);
                return;
            }
            Err(e) => error!(webhook_id = %batch.id, "{e}"),
        }
        sleep(SPOOL_RETRY).await;
    }
}

/// Sends spooled batches, oldest first, while an endpoint can take them.
async fn drain(shared: &Shared, spool: &SharedSpool) {
    loop {
        let Some((head, size)) = spool.lock().await.peek() else {
            return;
        };
        match head {
            Head::Corrupt(raw) => {
                error!(
                    bytes = raw.len(),
                    "a spool record failed its checksum; its raw bytes go to the dead-letter file"
                );
                let text = serde_json::to_string(&String::from_utf8_lossy(&raw))
                    .expect("a string serialises");
                let letter = DeadLetter {
                    at: unix_now(),
                    webhook_id: String::new(),
                    shard_id: u32::MAX,
                    endpoint: String::new(),
                    url: String::new(),
                    status: None,
                    error: "corrupted spool record (checksum mismatch); body holds its raw bytes"
                        .to_owned(),
                    attempts: 0,
                    body: RawValue::from_string(text).expect("a JSON string"),
                };
                if let Err(e) = shared.dead.append(&letter).await {
                    error!("{e}");
                }
            }
            Head::Batch(batch) => {
                let available = shared.ring.pick(batch.shard_id as u64, |i| {
                    shared.endpoints[i].circuit.would_allow()
                });
                if available.is_none() {
                    return;
                }
                let body: Box<str> = batch.body.into();
                let request = Request {
                    id: batch.id,
                    body: bytes::Bytes::from(body.into_boxed_bytes()),
                    shard_id: batch.shard_id,
                    session_id: Arc::from(batch.session_id.as_str()),
                    first_seq: batch.first_seq,
                    last_seq: batch.last_seq,
                    events: batch.events,
                    first_received: Instant::now(),
                    deferred: Vec::new(),
                };
                if let Outcome::Unavailable(_) = attempt_until_done(shared, request).await {
                    return;
                }
            }
        }
        spool.lock().await.pop(size);
    }
}

async fn attempt_until_done(shared: &Shared, request: Request) -> Outcome {
    let delivery = &shared.config.delivery;
    let started = Instant::now();
    let mut attempts = 0u32;
    let last = loop {
        let Some(index) = shared.ring.pick(request.shard_id as u64, |i| {
            shared.endpoints[i].circuit.allows()
        }) else {
            return Outcome::Unavailable(request);
        };
        let endpoint = &shared.endpoints[index];
        attempts += 1;
        if attempts > 1 {
            shared.stats.retries.fetch_add(1, AtomicOrdering::Relaxed);
            shared.stats.retries_by_endpoint[index].fetch_add(1, AtomicOrdering::Relaxed);
        }
        let attempt = send(shared, index, &request).await;
        let opened = endpoint.circuit.record(attempt.is_endpoint_failure());
        if opened {
            warn!(endpoint = %endpoint.name, "endpoint keeps failing; its shards fail over until it recovers");
        }
        match retry::decide(&attempt) {
            RetryAction::Successful => {
                let stats = &shared.stats;
                stats
                    .requests_delivered
                    .fetch_add(1, AtomicOrdering::Relaxed);
                stats
                    .events_delivered
                    .fetch_add(request.events as u64, AtomicOrdering::Relaxed);
                stats.per_endpoint[index].fetch_add(request.events as u64, AtomicOrdering::Relaxed);
                *stats
                    .delivered_by
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry((request.shard_id, index))
                    .or_default() += request.events as u64;
                stats.record_latency(request.first_received.elapsed());
                return Outcome::Delivered;
            }
            RetryAction::DontRetry => break (index, attempt),
            RetryAction::Retry { after } => {
                warn!(endpoint = %endpoint.name, webhook_id = %request.id, attempts, ?attempt, "delivery attempt failed; will retry");
                let spent = started.elapsed();
                if attempts >= delivery.max_attempts || spent >= delivery.max_elapsed {
                    break (index, attempt);
                }
                let wait = after
                    .unwrap_or_else(|| {
                        retry::backoff(attempts, delivery.initial_backoff, delivery.max_backoff)
                    })
                    .min(delivery.max_elapsed - spent);
                sleep(wait).await;
            }
        }
    };
    dead_letter(shared, request, attempts, Some(last)).await;
    Outcome::DeadLettered
}

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// A header value from text the router made itself (ids, timestamps, AWS signatures).
fn ascii(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("the router's own header values are visible ASCII")
}

/// One attempt: sign with a fresh timestamp, POST, and classify what came back.
async fn send(shared: &Shared, index: usize, request: &Request) -> Attempt {
    let endpoint = &shared.endpoints[index];
    let (_permit, waited) = endpoint.ready().await;
    if waited {
        shared.stats.rate_limit_waits[index].fetch_add(1, AtomicOrdering::Relaxed);
    }
    let mut timestamp = itoa::Buffer::new();
    let timestamp = timestamp.format(unix_now());
    let signature = shared
        .signer
        .sign_text(&request.id, timestamp, &request.body);
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(WEBHOOK_TIMESTAMP, ascii(timestamp));
    headers.insert(WEBHOOK_ID, ascii(&request.id));
    if let Some((region, creds)) = &endpoint.aws {
        // SigV4 per attempt: AWS refuses a signature more than 5 minutes old.
        let signed = [
            ("content-type", "application/json"),
            ("webhook-id", request.id.as_str()),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature.as_str()),
        ];
        let aws_request = crate::sigv4::Request {
            method: "POST",
            url: &endpoint.url,
            headers: &signed,
            body: &request.body,
        };
        for (name, value) in
            crate::sigv4::sign(&aws_request, region, "lambda", creds, SystemTime::now())
        {
            headers.insert(HeaderName::from_static(name), ascii(&value));
        }
    }
    let signature = HeaderValue::try_from(signature).expect("a signature header is ASCII");
    headers.insert(WEBHOOK_SIGNATURE, signature);
    // The timeout covers the whole exchange: connecting, sending, and reading the answer.
    let sent = endpoint
        .pool
        .post(headers, request.body.clone(), endpoint.timeout)
        .await;
    match sent {
        Ok(answer) => Attempt::Status {
            status: answer.status,
            retry_after: answer
                .retry_after
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now())),
        },
        Err(Failure::Timeout { .. }) => Attempt::Timeout,
        Err(Failure::Connect { .. }) => Attempt::Connect,
        Err(Failure::Transport { .. }) => Attempt::Transport,
    }
}

async fn dead_letter(
    shared: &Shared,
    request: Request,
    attempts: u32,
    last: Option<(usize, Attempt)>,
) {
    let (endpoint, url, status, reason) = match &last {
        Some((i, attempt)) => {
            let e = &shared.endpoints[*i];
            let status = match attempt {
                Attempt::Status { status, .. } => Some(*status),
                _ => None,
            };
            (e.name.clone(), e.url.to_string(), status, describe(attempt))
        }
        None => (
            String::new(),
            String::new(),
            None,
            "no endpoint was available".to_owned(),
        ),
    };
    let error = match &last {
        Some((_, attempt)) if retry::decide(attempt) == RetryAction::DontRetry => reason,
        _ => format!("gave up after {attempts} attempt(s): {reason}"),
    };
    let body: &str = std::str::from_utf8(&request.body).unwrap_or("null");
    let letter = DeadLetter {
        at: unix_now(),
        webhook_id: request.id.clone(),
        shard_id: request.shard_id,
        endpoint,
        url,
        status,
        error,
        attempts,
        body: RawValue::from_string(body.to_owned())
            .unwrap_or_else(|_| RawValue::from_string("null".to_owned()).expect("null is JSON")),
    };
    error!(
        webhook_id = %letter.webhook_id,
        endpoint = %letter.endpoint,
        error = %letter.error,
        path = %shared.dead.path().display(),
        "batch dead-lettered"
    );
    shared
        .stats
        .requests_dead_lettered
        .fetch_add(1, AtomicOrdering::Relaxed);
    shared
        .stats
        .events_dead_lettered
        .fetch_add(request.events as u64, AtomicOrdering::Relaxed);
    shared.apologise(&request.deferred).await;
    if let Err(e) = shared.dead.append(&letter).await {
        // Nowhere left to put it: say so as loudly as we can, with the body.
        error!(body = %letter.body.get(), "{e}");
    }
}

fn describe(attempt: &Attempt) -> String {
    match attempt {
        Attempt::Status { status, .. } => format!("the endpoint answered {status}"),
        Attempt::Connect => "the endpoint refused or could not be reached".to_owned(),
        Attempt::Timeout => "the attempt timed out".to_owned(),
        Attempt::Transport => "the connection failed mid-request".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EndpointConfig, SigningConfig, StateConfig};
    use crate::signer::SigningKey;

    /// Every shard's delivery loop is a task for the life of the shard, busy or idle, and the
    /// size of its future is what each one costs. Sending a batch (the HTTP exchange, retries,
    /// dead letters) is boxed out of it; inline, the task was 3.5 KiB in a release build.
    #[tokio::test]
    async fn a_shards_delivery_loop_does_not_hold_a_send_inline() {
        let state =
            std::env::temp_dir().join(format!("shardhook-loop-size-{}", std::process::id()));
        let config = Config {
            signing: SigningConfig {
                secret: Some(SigningKey::parse(&SigningKey::generate()).unwrap()),
                previous_secrets: vec![],
            },
            endpoints: vec![EndpointConfig::new("a", "http://127.0.0.1:9/")],
            state: StateConfig {
                dir: state.clone(),
                ..StateConfig::default()
            },
            ..Config::default()
        };
        let pipeline = Pipeline::new(&config).unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let spool = ShardSpool::open(&state, 0, pipeline.shared.spool_usage.clone());
        let looping = worker(
            pipeline.shared.clone(),
            rx,
            Arc::new(tokio::sync::Mutex::new(spool)),
        );
        let size = std::mem::size_of_val(&looping);
        let send = std::mem::size_of_val(&deliver(
            &pipeline.shared,
            &Arc::new(tokio::sync::Mutex::new(ShardSpool::open(
                &state,
                1,
                pipeline.shared.spool_usage.clone(),
            ))),
            Batch::new(Dispatch::new(
                [0, 1],
                Arc::from("s"),
                1,
                bytes::Bytes::from_static(b"{}"),
                0..0,
                0..2,
            ))
            .finish(),
        ));
        assert!(
            size < send,
            "the loop ({size} bytes) holds a send ({send} bytes)"
        );
        assert!(size <= 2048, "the loop is {size} bytes");
        let _ = std::fs::remove_dir_all(&state);
    }
}
