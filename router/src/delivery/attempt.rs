//! One request's attempts: pick its endpoint (failing over while circuits are open), sign with
//! a fresh timestamp (and SigV4 for Lambda), POST, classify the answer, wait out the backoff,
//! and dead-letter it when the attempts or the time run out. A batch is retried on
//! `[delivery]`'s schedule; an interaction, in a lane of its own, until Discord would no longer
//! take its response, moving to the shard's next endpoint after each failure.
//!
//! Owns the retry loops and the dead letter's contents; the retry decision is `retry`'s, the
//! connection `http`'s, endpoint choice `ring`'s.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep, Instant};
use tracing::{error, warn};

use super::batch::Request;
use super::carbon;
use super::http::Failure;
use super::retry::{self, Attempt, RetryAction};
use super::shared::Shared;
use super::signer::unix_now;
use crate::config::EndpointFormat;
use crate::state::dead_letter::DeadLetter;

/// How an attempt to deliver a batch ended.
pub(super) enum Outcome {
    Delivered,
    DeadLettered,
    /// Every candidate endpoint's circuit is open: the batch should wait in the spool.
    Unavailable(Request),
}

/// Where a request's attempts go.
#[derive(Clone, Copy)]
pub(super) enum Target {
    /// Its shard's first endpoint (by the ring) whose circuit lets it through, picked anew for
    /// each attempt: a request of one shard (Carbon's, the spool's, a replayed dead letter).
    Ring,
    /// This endpoint only, while its circuit lets it through: an outbox's request, whose
    /// batches may belong to shards with other next choices.
    Endpoint(usize),
}

/// Attempts `request` until it is delivered or dead-lettered, or no endpoint of `target` can
/// take it; `slot` is an in-flight slot already held for the first attempt. Also says how
/// many attempts were made. A request to the `Ring` is counted delivered here; an outbox
/// counts its own, per batch.
pub(super) async fn attempt_until_done(
    shared: &Shared,
    request: Request,
    target: Target,
    mut slot: Option<OwnedSemaphorePermit>,
) -> (Outcome, u32) {
    let delivery = &shared.config.delivery;
    let started = Instant::now();
    // Counting on from the attempts made before its circuits gave it back.
    let mut attempts = request.attempts;
    let last = loop {
        // Only endpoints that take the request's format; of those, the first whose circuit
        // lets a request through.
        let index = match target {
            Target::Ring => shared.ring.pick(request.shard_id as u64, |i| {
                let endpoint = &shared.endpoints[i];
                endpoint.format == request.format && endpoint.circuit.allows()
            }),
            Target::Endpoint(i) => shared.endpoints[i].circuit.allows().then_some(i),
        };
        let Some(index) = index else {
            let mut request = request;
            request.attempts = attempts;
            return (Outcome::Unavailable(request), attempts);
        };
        let endpoint = &shared.endpoints[index];
        attempts += 1;
        if attempts > 1 {
            shared.stats.retries.fetch_add(1, AtomicOrdering::Relaxed);
            shared.stats.retries_by_endpoint[index].fetch_add(1, AtomicOrdering::Relaxed);
        }
        let attempt = send(shared, index, &request, attempts, None, slot.take()).await;
        record_health(shared, index, &attempt);
        match retry::decide(&attempt) {
            RetryAction::Successful => {
                if let Target::Ring = target {
                    record_delivered(shared, index, &request);
                }
                return (Outcome::Delivered, attempts);
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
    (Outcome::DeadLettered, attempts)
}

/// Attempts an interaction until `deadline`. Each failure of an endpoint moves it to the
/// shard's next endpoint by rank (skipping open circuits) at once, so a failing endpoint costs
/// one attempt, not the deadline; after a round of every endpoint it backs off, up to
/// `max_backoff`. Past the deadline it is dead-lettered.
pub(super) async fn attempt_interaction(
    shared: &Shared,
    request: Request,
    deadline: Instant,
    max_backoff: Duration,
) {
    let mut ranked = shared.ring.rank(request.shard_id as u64);
    ranked.retain(|i| shared.endpoints[*i].format == request.format);
    if ranked.is_empty() {
        // Built for a format no endpoint takes any more (the config changed).
        dead_letter(shared, request, 0, None).await;
        return;
    }
    let mut turn = 0;
    let mut attempts = 0u32;
    let last = loop {
        // The first endpoint from `turn` on whose circuit lets a request through; when none
        // does, `turn`'s own: an interaction is worth an attempt against an open circuit.
        let position = (0..ranked.len())
            .map(|k| (turn + k) % ranked.len())
            .find(|p| shared.endpoints[ranked[*p]].circuit.allows())
            .unwrap_or(turn % ranked.len());
        let index = ranked[position];
        attempts += 1;
        if attempts > 1 {
            shared.stats.retries.fetch_add(1, AtomicOrdering::Relaxed);
            shared.stats.retries_by_endpoint[index].fetch_add(1, AtomicOrdering::Relaxed);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = send(shared, index, &request, attempts, Some(remaining), None).await;
        record_health(shared, index, &attempt);
        match retry::decide(&attempt) {
            RetryAction::Successful => {
                record_delivered(shared, index, &request);
                return;
            }
            RetryAction::DontRetry => break (index, attempt),
            RetryAction::Retry { after } => {
                let endpoint = &shared.endpoints[index].name;
                warn!(%endpoint, webhook_id = %request.id, attempts, ?attempt, "an interaction's delivery attempt failed; will retry");
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break (index, attempt);
                }
                turn = if attempt.is_endpoint_failure() {
                    position + 1
                } else {
                    position
                };
                let round_done = (attempts as usize).is_multiple_of(ranked.len());
                let wait = match after {
                    Some(after) => after,
                    None if turn != position && !round_done => Duration::ZERO,
                    None => retry::backoff(attempts, INTERACTION_BACKOFF, max_backoff),
                };
                sleep(wait.min(remaining)).await;
            }
        }
    };
    dead_letter(shared, request, attempts, Some(last)).await;
}

/// An interaction's first wait after a round of failed attempts.
const INTERACTION_BACKOFF: Duration = Duration::from_millis(100);

/// Counts an attempt for or against its endpoint's circuit.
fn record_health(shared: &Shared, index: usize, attempt: &Attempt) {
    let endpoint = &shared.endpoints[index];
    if endpoint.circuit.record(attempt.is_endpoint_failure()) {
        warn!(endpoint = %endpoint.name, "endpoint keeps failing; its shards fail over until it recovers");
    }
}

/// Counts a request the endpoint at `index` took.
fn record_delivered(shared: &Shared, index: usize, request: &Request) {
    shared
        .stats
        .requests_delivered
        .fetch_add(1, AtomicOrdering::Relaxed);
    shared.stats.delivered(
        request.shard_id,
        index,
        request.events as u64,
        request.first_received.elapsed(),
    );
}

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// A header value from text the router made itself (ids, timestamps, AWS signatures).
fn ascii(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("the router's own header values are visible ASCII")
}

/// One attempt, number `attempt` from 1: sign with a fresh timestamp in the endpoint's format,
/// POST, and classify what came back. An interaction (`within` its time left) takes no
/// in-flight slot, so a full endpoint does not hold it up, and its attempt ends with its time.
/// Any other request takes one, unless it comes `held` (an outbox took it, paced).
async fn send(
    shared: &Shared,
    index: usize,
    request: &Request,
    attempt: u32,
    within: Option<Duration>,
    held: Option<OwnedSemaphorePermit>,
) -> Attempt {
    let endpoint = &shared.endpoints[index];
    // The timeout covers the whole exchange: connecting, sending, and reading the answer.
    let timeout = within.map_or(endpoint.timeout, |left| left.min(endpoint.timeout));
    let aws = match (&endpoint.aws_region, &shared.aws_credentials) {
        // Fetched already but for the process's first moments; then it waits a while at most.
        (Some(region), Some(credentials)) => match credentials.get(timeout).await {
            Ok(fetched) => Some((region, fetched)),
            // The cache logs why; the retry loop logs the attempt.
            Err(_) => return Attempt::NoCredentials,
        },
        _ => None,
    };
    let (_permit, waited) = match (within, held) {
        (None, Some(held)) => (Some(held), false),
        (None, None) => {
            let (permit, waited) = endpoint.ready().await;
            (Some(permit), waited)
        }
        (Some(_), _) => (None, endpoint.paced().await),
    };
    if waited {
        shared.stats.rate_limit_waits[index].fetch_add(1, AtomicOrdering::Relaxed);
    }
    let mut headers = HeaderMap::with_capacity(8);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    match endpoint.format {
        EndpointFormat::Shardhook => {
            let mut timestamp = itoa::Buffer::new();
            let timestamp = timestamp.format(unix_now());
            let signature = shared
                .signer
                .sign_text(&request.id, timestamp, &request.body);
            headers.insert(WEBHOOK_TIMESTAMP, ascii(timestamp));
            headers.insert(WEBHOOK_ID, ascii(&request.id));
            let signature = HeaderValue::try_from(signature).expect("a signature header is ASCII");
            headers.insert(WEBHOOK_SIGNATURE, signature);
        }
        EndpointFormat::Carbon => {
            let key = shared
                .ed25519
                .as_ref()
                .expect("config validation requires the key for a carbon endpoint");
            let (timestamp, signature) = carbon::sign(key, &request.body, SystemTime::now());
            headers.insert(carbon::TIMESTAMP, timestamp);
            headers.insert(carbon::SIGNATURE, signature);
            headers.insert(carbon::EVENT_ID, ascii(&request.id));
            let mut number = itoa::Buffer::new();
            headers.insert(carbon::ATTEMPT, ascii(number.format(attempt)));
        }
    }
    if let Some((region, fetched)) = &aws {
        // SigV4 per attempt: AWS refuses a signature more than 5 minutes old. It covers the
        // headers above (the webhook signature's among them).
        let signed: Vec<(&str, &str)> = headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)))
            .collect();
        let aws_request = crate::delivery::sigv4::Request {
            method: "POST",
            url: &endpoint.url,
            headers: &signed,
            body: &request.body,
        };
        let creds = &fetched.credentials;
        let now = SystemTime::now();
        let aws_headers = crate::delivery::sigv4::sign(&aws_request, region, "lambda", creds, now);
        for (name, value) in aws_headers {
            headers.insert(HeaderName::from_static(name), ascii(&value));
        }
    }
    let sent = endpoint
        .pool
        .post(headers, request.body.clone(), timeout)
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
        Err(Failure::Exchange { .. }) => Attempt::Exchange,
    }
}

pub(super) async fn dead_letter(
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
            (
                e.name.clone(),
                crate::secret::redact_url(e.url.as_str()),
                status,
                describe(attempt),
            )
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
        format: request.format,
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
    let by = match &last {
        Some((i, _)) => &shared.stats.dead_letters_by_endpoint[*i],
        None => &shared.stats.dead_letters_unattributed,
    };
    by.fetch_add(1, AtomicOrdering::Relaxed);
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
        Attempt::Exchange => "the connection failed mid-request".to_owned(),
        Attempt::NoCredentials => "no AWS credentials to sign it with".to_owned(),
    }
}
