//! One batch's attempts: pick its endpoint (failing over while circuits are open), sign with a
//! fresh timestamp (and SigV4 for Lambda), POST, classify the answer, wait out the backoff, and
//! dead-letter it when the attempts or the time run out.
//!
//! Owns the retry loop and the dead letter's contents; the retry decision is `retry`'s, the
//! connection `http`'s, endpoint choice `ring`'s.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::SystemTime;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::value::RawValue;
use tokio::time::{sleep, Instant};
use tracing::{error, warn};

use super::batch::Request;
use super::http::Failure;
use super::retry::{self, Attempt, RetryAction};
use super::shared::Shared;
use super::signer::unix_now;
use crate::state::dead_letter::DeadLetter;

/// How an attempt to deliver a batch ended.
pub(super) enum Outcome {
    Delivered,
    DeadLettered,
    /// Every candidate endpoint's circuit is open: the batch should wait in the spool.
    Unavailable(Request),
}

pub(super) async fn attempt_until_done(shared: &Shared, request: Request) -> Outcome {
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

pub(super) const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
pub(super) const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
pub(super) const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// A header value from text the router made itself (ids, timestamps, AWS signatures).
pub(super) fn ascii(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).expect("the router's own header values are visible ASCII")
}

/// One attempt: sign with a fresh timestamp, POST, and classify what came back.
pub(super) async fn send(shared: &Shared, index: usize, request: &Request) -> Attempt {
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
        let aws_request = crate::delivery::sigv4::Request {
            method: "POST",
            url: &endpoint.url,
            headers: &signed,
            body: &request.body,
        };
        for (name, value) in
            crate::delivery::sigv4::sign(&aws_request, region, "lambda", creds, SystemTime::now())
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

pub(super) fn describe(attempt: &Attempt) -> String {
    match attempt {
        Attempt::Status { status, .. } => format!("the endpoint answered {status}"),
        Attempt::Connect => "the endpoint refused or could not be reached".to_owned(),
        Attempt::Timeout => "the attempt timed out".to_owned(),
        Attempt::Exchange => "the connection failed mid-request".to_owned(),
    }
}
