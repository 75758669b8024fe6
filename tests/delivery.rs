//! End-to-end tests of signed delivery: the double's events, through the router and its
//! pipeline, to local HTTP endpoints on 127.0.0.1 that misbehave on purpose.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use shardhook_simulator::receiver::Reply;
use shardhook_simulator::{Fault, SimConfig};
use support::pipe::{Pipe, Target};
use support::within;

fn sim(shards: u32, events: u64) -> SimConfig {
    SimConfig {
        shards,
        max_concurrency: shards,
        guilds: shards * 2,
        rate: 200.0,
        events_per_shard: Some(events),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    }
}

fn live(replies: Vec<Reply>) -> Target {
    Target::Live(replies)
}

#[tokio::test]
async fn every_event_is_delivered_signed_to_the_endpoint_its_shard_hashes_to() {
    let endpoints = vec![
        ("a", 1.0, live(vec![])),
        ("b", 1.0, live(vec![])),
        ("c", 1.0, live(vec![])),
    ];
    let p = Pipe::start(sim(6, 40), endpoints, |_| {}).await;
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    // Each shard's events all went to one endpoint (its home), and more than one endpoint is used.
    let mut homes: HashMap<u32, std::collections::HashSet<usize>> = HashMap::new();
    for (i, a) in p.arrivals() {
        homes.entry(a.shard).or_default().insert(i);
    }
    assert!(homes.values().all(|h| h.len() == 1), "{homes:?}");
    let used: std::collections::HashSet<usize> = homes.values().flatten().copied().collect();
    assert!(
        used.len() > 1,
        "6 shards over 3 endpoints use more than one: {homes:?}"
    );
    // Every request: verified, JSON, our user agent, and the body's d byte for byte as sent.
    for (_, q) in p.requests() {
        assert!(q.verified);
        assert_eq!(q.content_type, "application/json");
        assert!(q.user_agent.starts_with("shardhook/"), "{}", q.user_agent);
        let body: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
        assert_eq!(body["v"], 2);
        assert_eq!(body["shard_count"], 6);
    }
    let p = p.stop().await;
    let stats = p.stats.snapshot();
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.events_delivered as usize, p.arrivals().len());
    assert_eq!(
        stats.per_endpoint.iter().sum::<u64>(),
        stats.events_delivered
    );
}

#[tokio::test]
async fn signatures_verify_with_the_standardwebhooks_crate_under_key_rotation() {
    let old = shardhook::SigningKey::generate();
    let old_key = shardhook::SigningKey::parse(&old).unwrap();
    let p = Pipe::start(sim(1, 10), vec![("a", 1.0, live(vec![]))], |c| {
        c.signing.previous_secrets = vec![old_key];
        // A request per event, so there are many signatures to check.
        c.batch.max_events = 1;
    })
    .await;
    p.wait_delivered(&[]).await;
    let current = standardwebhooks::Webhook::new(&p.secret).unwrap();
    let previous = standardwebhooks::Webhook::new(&old).unwrap();
    let stranger = standardwebhooks::Webhook::new(&shardhook::SigningKey::generate()).unwrap();
    let requests = p.requests();
    assert!(requests.len() >= 10);
    for (_, q) in requests {
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", q.webhook_id.parse().unwrap());
        headers.insert("webhook-timestamp", q.timestamp.parse().unwrap());
        headers.insert("webhook-signature", q.signature.parse().unwrap());
        assert_eq!(q.signature.split(' ').count(), 2, "one signature per key");
        current
            .verify(&q.body, &headers)
            .expect("verifies with the current key");
        previous
            .verify(&q.body, &headers)
            .expect("verifies with the previous key");
        assert!(stranger.verify(&q.body, &headers).is_err());
        let mut tampered = q.body.to_vec();
        tampered[10] ^= 1;
        assert!(current.verify(&tampered, &headers).is_err());
    }
    p.stop().await;
}

#[tokio::test]
async fn server_errors_and_429_are_retried_with_the_same_webhook_id_honouring_retry_after() {
    let replies = vec![
        Reply::Status(500),
        Reply::Status(503),
        Reply::RetryAfter(429, "1".into()),
    ];
    let p = Pipe::start(sim(1, 10), vec![("a", 1.0, live(replies))], |_| {}).await;
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    let requests = p.requests();
    let first_four: Vec<_> = requests.iter().take(4).map(|(_, q)| q.clone()).collect();
    assert_eq!(
        first_four.iter().map(|q| q.status).collect::<Vec<_>>(),
        [500, 503, 429, 204]
    );
    assert!(
        first_four
            .iter()
            .all(|q| q.webhook_id == first_four[0].webhook_id),
        "same id on every retry"
    );
    let waited = first_four[3].at - first_four[2].at;
    assert!(
        waited >= Duration::from_millis(990),
        "Retry-After: 1 was honoured: {waited:?}"
    );
    assert_eq!(p.stats.snapshot().retries, 3);
    p.stop().await;
}

#[tokio::test]
async fn a_timeout_is_retried_and_the_duplicate_carries_the_same_webhook_id() {
    let p = Pipe::start(
        sim(1, 10),
        vec![(
            "a",
            1.0,
            live(vec![Reply::Delay(Duration::from_millis(1500))]),
        )],
        |c| {
            c.endpoints[0].timeout = Some(Duration::from_millis(300));
        },
    )
    .await;
    p.wait_delivered(&[]).await;
    // The slow answer may still have been handled: delivery is at least once, and handlers
    // de-duplicate by webhook-id (or by shard, session and seq).
    let requests = p.requests();
    let id = &requests[0].1.webhook_id;
    assert!(
        requests.iter().filter(|(_, q)| &q.webhook_id == id).count() >= 2,
        "the timed-out batch was sent again"
    );
    assert!(p.stats.snapshot().retries >= 1);
    let mut by_id: HashMap<String, std::collections::HashSet<(u32, u64)>> = HashMap::new();
    for (_, a) in p.arrivals() {
        by_id
            .entry(a.webhook_id.clone())
            .or_default()
            .insert((a.shard, a.seq));
    }
    let distinct: usize = by_id.values().map(|s| s.len()).sum();
    let expected = p.sim.observed(|o| o.ledger.len());
    assert_eq!(
        distinct, expected,
        "after de-duplication by webhook-id, every event exactly once"
    );
    p.stop().await;
}

/// One shard's events to endpoint "a", whose first request gets `reply`: waits for that batch
/// to be dead-lettered and the rest delivered, and returns the dead letters.
async fn first_request_answered(reply: Reply) -> (Pipe, Vec<shardhook::DeadLetter>) {
    let p = Pipe::start(sim(1, 10), vec![("a", 1.0, live(vec![reply]))], |_| {}).await;
    p.wait_until("a dead letter", |p| {
        p.stats.snapshot().requests_dead_lettered == 1
    })
    .await;
    p.wait_until("the rest delivered", |p| {
        let expected = p.sim.observed(|o| o.ledger.len());
        p.arrivals().len() + 1 == expected && expected >= 13
    })
    .await;
    let letters = shardhook::read_dead_letters(&p.state_dir.join("dead-letters.jsonl")).unwrap();
    (p, letters)
}

#[tokio::test]
async fn a_400_is_dead_lettered_and_shardhook_replay_delivers_it() {
    let (p, letters) = first_request_answered(Reply::Status(400)).await;
    let path = p.state_dir.join("dead-letters.jsonl");
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(
        (letter.status, letter.endpoint.as_str(), letter.attempts),
        (Some(400), "a", 1)
    );
    assert!(letter.error.contains("400"), "{}", letter.error);
    let body: serde_json::Value = serde_json::from_str(letter.body.get()).unwrap();
    assert_eq!(body["v"], 2);
    assert_eq!(body["batches"][0]["events"][0]["t"], "READY");
    assert_eq!(p.stats.snapshot().retries, 0, "a 400 is not retried");

    // Replay through the real CLI, with a config file pointing at the same endpoint.
    let config_path = p.state_dir.join("replay.toml");
    let toml = format!(
        "[signing]\nsecret = \"{}\"\n[[endpoints]]\nname = \"a\"\nurl = \"{}\"\n[state]\ndir = \"{}\"\n",
        p.secret,
        p.urls[0],
        p.state_dir.display()
    );
    std::fs::write(&config_path, toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardhook"))
        .args([
            "replay",
            path.to_str().unwrap(),
            "--config",
            config_path.to_str().unwrap(),
        ])
        .env_remove("SHARDHOOK_SIGNING_SECRET")
        .output();
    let out = within("replay", out).await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("replayed 1 of 1"), "{text}");
    assert!(!path.exists(), "the replayed file was moved aside");
    p.wait_delivered(&[]).await;
    let replayed = p.requests().last().unwrap().1.clone();
    assert_eq!(
        replayed.webhook_id, letter.webhook_id,
        "the same webhook-id"
    );
    assert!(replayed.verified);
    p.assert_exactly_once_in_order_after_replay();
    p.stop().await;
}

#[tokio::test]
async fn replay_refuses_a_malformed_record_keeps_it_and_sends_the_rest() {
    let (p, letters) = first_request_answered(Reply::Status(400)).await;
    let kept_in = p.state_dir.join("dead-letters.jsonl");
    let original: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&kept_in).unwrap().trim()).unwrap();
    let with_id = |id: &str| {
        let mut record = original.clone();
        record["webhook_id"] = id.into();
        record.to_string()
    };
    // A newline in webhook_id is no header value: it used to panic after the rename.
    let file = p.state_dir.join("to-replay.jsonl");
    let records = [
        with_id(&letters[0].webhook_id),
        with_id("msg_bad\nid"),
        with_id("msg_second"),
    ];
    std::fs::write(&file, records.join("\n") + "\n").unwrap();
    let config_path = p.state_dir.join("replay.toml");
    let toml = format!(
        "[signing]\nsecret = \"{}\"\n[[endpoints]]\nname = \"a\"\nurl = \"{}\"\n[state]\ndir = \"{}\"\n",
        p.secret,
        p.urls[0],
        p.state_dir.display()
    );
    std::fs::write(&config_path, toml).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_shardhook"))
        .args(["replay", file.to_str().unwrap(), "--config"])
        .arg(&config_path)
        .env_remove("SHARDHOOK_SIGNING_SECRET")
        .output();
    let out = within("replay", out).await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(
        text.contains("record 2") && text.contains("webhook_id"),
        "{text}"
    );
    assert!(text.contains("replayed 2 of 3"), "{text}");
    // The refused record is back in the dead-letter file as it was; the others went out.
    let kept = shardhook::read_dead_letters(&kept_in).unwrap();
    assert_eq!(kept.last().unwrap().webhook_id, "msg_bad\nid");
    let ids: Vec<String> = p
        .requests()
        .into_iter()
        .map(|(_, q)| q.webhook_id)
        .collect();
    assert!(ids.contains(&"msg_second".to_owned()), "{ids:?}");
    assert_eq!(
        ids.iter()
            .filter(|id| **id == letters[0].webhook_id)
            .count(),
        2,
        "the first record was sent again"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_dead_letter_names_its_endpoint_and_shows_the_url_without_credentials() {
    let p = Pipe::start(
        sim(1, 3),
        vec![("a", 1.0, live(vec![Reply::Status(400)]))],
        |c| {
            let url = c.endpoints[0]
                .url
                .replace("http://", "http://user:pa55word@");
            c.endpoints[0].url = format!("{url}?key=s3cret-key");
        },
    )
    .await;
    p.wait_until("a dead letter", |p| {
        p.stats.snapshot().requests_dead_lettered == 1
    })
    .await;
    // Counted before it is written: once delivery has drained, it is on disk.
    let p = p.stop().await;
    let path = p.state_dir.join("dead-letters.jsonl");
    let letters = shardhook::read_dead_letters(&path).unwrap();
    assert_eq!(letters[0].endpoint, "a");
    let port = p.urls[0].trim_end_matches('/').rsplit(':').next().unwrap();
    assert_eq!(
        letters[0].url,
        format!("http://<redacted>@127.0.0.1:{port}/?<redacted>")
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("pa55word") && !text.contains("s3cret-key"),
        "{text}"
    );
}

#[tokio::test]
async fn a_redirect_is_dead_lettered_not_followed() {
    // Where the redirect points: answers anything 2xx, and counts what reached it. A client
    // that follows a 302 would GET it without the events and count them as delivered.
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = reached.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { axum::http::StatusCode::NO_CONTENT }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere = format!("http://{}/moved", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (p, letters) = first_request_answered(Reply::Redirect(elsewhere)).await;
    assert_eq!(letters.len(), 1);
    assert_eq!((letters[0].status, letters[0].attempts), (Some(302), 1));
    assert_eq!(
        reached.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_refused_endpoint_fails_over_and_its_shards_return_when_it_comes_back() {
    // "a" is heavy, so most shards call it home; it refuses connections at first.
    let endpoints = vec![("a", 50.0, Target::Refused), ("b", 1.0, live(vec![]))];
    let mut p = Pipe::start(sim(4, 600), endpoints, |c| {
        c.delivery.circuit_failures = 2;
        c.delivery.circuit_cooldown = Duration::from_millis(300);
    })
    .await;
    p.wait_until("failover to b", |p| {
        p.receiver(1).seen(|s| s.events.len() > 100)
    })
    .await;
    p.revive(0).await;
    p.wait_until("the shards to return to a", |p| {
        p.receiver(0).seen(|s| s.events.len() > 50)
    })
    .await;
    p.wait_delivered(&[]).await;
    let per_endpoint = p.assert_exactly_once_in_order(&[]);
    assert!(
        per_endpoint[0] > 0 && per_endpoint[1] > 0,
        "{per_endpoint:?}"
    );
    // Once back, a's shards stay with a: the last events of every shard arrived there.
    let arrivals = p.arrivals();
    let last_at_a = (0..4u32).filter(|s| {
        arrivals
            .iter()
            .filter(|(_, a)| a.shard == *s)
            .max_by_key(|(_, a)| a.seq)
            .map(|(i, _)| *i)
            == Some(0)
    });
    assert!(last_at_a.count() >= 3, "shards returned home");
    assert_eq!(p.stats.snapshot().requests_dead_lettered, 0);
    p.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_delays_delivery_but_loses_nothing_and_keeps_order() {
    let slow = (0..10)
        .map(|_| Reply::Delay(Duration::from_millis(100)))
        .collect();
    let p = Pipe::start(sim(2, 60), vec![("a", 1.0, live(slow))], |_| {}).await;
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    for shard in 0..2 {
        let status = p.shards[shard].status().borrow().clone();
        assert_eq!(status.reconnects, 0, "the gateway was not disturbed");
    }
    p.stop().await;
}

#[tokio::test]
async fn unordered_delivery_keeps_sixteen_requests_of_a_shard_in_flight_and_loses_nothing() {
    // The first sixteen requests are held for 3 s. In order (the default) a shard's second
    // request waits for the first answer; with `ordering = "none"` sixteen wait at once, and
    // the seventeenth waits for one of them.
    let held = (0..16)
        .map(|_| Reply::Delay(Duration::from_secs(3)))
        .collect();
    let p = Pipe::start(sim(1, 40), vec![("a", 1.0, live(held))], |c| {
        c.batch.max_events = 1;
        c.delivery.ordering = shardhook::config::Ordering::None;
        // The shard's sixteen are what is measured: the endpoint's own cap (12 by default)
        // stays out of the way.
        c.endpoints[0].max_in_flight = 32;
    })
    .await;
    // One snapshot of (requests received, events answered), taken when either is decided.
    let seen = std::cell::Cell::new((0, 0));
    p.wait_until("sixteen requests held, or a first answer", |p| {
        let (requests, answered) = (p.requests().len(), p.arrivals().len());
        seen.set((requests, answered));
        requests >= 16 || answered > 0
    })
    .await;
    assert_eq!(
        seen.get(),
        (16, 0),
        "(requests received, events answered): sixteen in flight before any answer, no more"
    );
    p.wait_delivered(&[]).await;
    p.assert_exactly_once(&[]);
    assert_eq!(p.stats.snapshot().requests_dead_lettered, 0);
    // Nor later: the seventeenth request leaves only after one of the first sixteen is
    // answered, and none is answered before it has been held 3 s.
    let mut times: Vec<_> = p.requests().iter().map(|(_, q)| q.at).collect();
    times.sort();
    assert!(
        times[16] >= times[0] + Duration::from_secs(3),
        "the seventeenth request came {:?} after the first",
        times[16] - times[0]
    );
    p.stop().await;
}

#[tokio::test]
async fn an_endpoint_rate_limit_spaces_requests() {
    let p = Pipe::start(sim(1, 30), vec![("a", 1.0, live(vec![]))], |c| {
        // A request per event: the limit spaces requests.
        c.batch.max_events = 1;
        c.endpoints[0].rate_limit = Some(shardhook::config::RateLimitConfig {
            per_second: 20,
            burst: Some(1),
        });
    })
    .await;
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    let times: Vec<_> = p.requests().iter().map(|(_, q)| q.at).collect();
    let n = times.len();
    assert!(n >= 30);
    let span = times[n - 1] - times[0];
    // 20 per second with no burst: n requests need at least (n - 1) * 50 ms.
    let floor = Duration::from_millis(50) * (n as u32 - 1);
    assert!(
        span >= floor.mul_f64(0.95),
        "{n} requests in {span:?}, floor {floor:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_partial_batch_waits_out_its_linger_then_goes() {
    // Long enough that a loaded machine still reads every event within it.
    let linger = Duration::from_secs(1);
    let p = Pipe::start(sim(1, 5), vec![("a", 1.0, live(vec![]))], |c| {
        c.batch.max_events = 50;
        c.batch.linger = linger;
    })
    .await;
    // Ends only if the linger's end sends the batch: it never fills.
    p.wait_delivered(&[]).await;
    let requests = p.requests();
    assert_eq!(
        requests.len(),
        1,
        "READY, the GUILD_CREATEs and 5 messages in one batch"
    );
    let identified = p
        .sim
        .observed(|o| o.identifies.first().map(|i| i.at))
        .expect("the shard identified");
    // Every event was read after IDENTIFY, so the batch waited its linger from then on.
    let waited = requests[0].1.at - identified;
    assert!(waited >= linger, "sent {waited:?} after IDENTIFY");
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}

const INTERACTION: &str = r#"{"id":"1","type":2,"token":"t","application_id":"1"}"#;

fn interaction() -> Fault {
    Fault::Dispatch {
        name: "INTERACTION_CREATE".into(),
        d: INTERACTION.into(),
    }
}

/// The requests that carried an INTERACTION_CREATE, with the endpoint each went to.
fn interaction_requests(p: &Pipe) -> Vec<(usize, shardhook_simulator::receiver::RequestRecord)> {
    p.requests()
        .into_iter()
        .filter(|(_, q)| String::from_utf8_lossy(&q.body).contains("INTERACTION_CREATE"))
        .collect()
}

#[tokio::test]
async fn batches_hold_one_session_in_order_and_an_interaction_goes_alone_at_once() {
    let linger = Duration::from_secs(3);
    let p = Pipe::start(sim(1, 0), vec![("a", 1.0, live(vec![]))], |c| {
        c.batch.max_events = 50;
        c.batch.linger = linger;
    })
    .await;
    p.wait_until("the guild creates", |p| {
        p.sim.observed(|o| o.ledger.len() >= 3)
    })
    .await;
    let _ = p.shards[0]
        .status()
        .wait_for(|s| s.state == shardhook::ShardState::Active)
        .await;
    assert!(p.sim.inject(0, interaction()));
    p.wait_delivered(&[]).await;
    let requests = p.requests();
    assert_eq!(
        requests.len(),
        2,
        "the interaction alone, then READY and the GUILD_CREATEs in one batch"
    );
    let bodies: Vec<serde_json::Value> = requests
        .iter()
        .map(|(_, q)| serde_json::from_slice(&q.body).unwrap())
        .collect();
    // The interaction did not wait for the batch's linger: it went first, alone.
    assert_eq!(
        bodies[0]["batches"][0]["events"].as_array().unwrap().len(),
        1
    );
    assert_eq!(
        bodies[0]["batches"][0]["events"][0]["t"],
        "INTERACTION_CREATE"
    );
    let identified = p.sim.observed(|o| o.identifies[0].at);
    assert!(
        requests[0].1.at < identified + linger,
        "the interaction waited for the batch's linger"
    );
    let seqs: Vec<u64> = bodies[1]["batches"][0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["s"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}

#[tokio::test]
async fn an_interaction_reaches_the_endpoint_while_its_shards_batch_is_held() {
    // The shard's first batch (READY, GUILD_CREATEs) is held 2 s; in order, the shard's next
    // batch waits for it. The interaction does not.
    let hold = Duration::from_secs(2);
    let p = Pipe::start(
        sim(1, 0),
        vec![("a", 1.0, live(vec![Reply::Delay(hold)]))],
        |c| c.batch.max_events = 100,
    )
    .await;
    p.wait_until("the first batch to be held", |p| !p.requests().is_empty())
        .await;
    let injected = tokio::time::Instant::now();
    assert!(p.sim.inject(0, interaction()));
    p.wait_until("the interaction", |p| !interaction_requests(p).is_empty())
        .await;
    let took = interaction_requests(&p)[0].1.at - injected;
    assert!(
        p.arrivals()
            .iter()
            .all(|(_, a)| a.name == "INTERACTION_CREATE"),
        "the held batch was answered before the interaction arrived"
    );
    assert!(
        took < Duration::from_millis(100),
        "the interaction reached the endpoint {took:?} after Discord sent it"
    );
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}

#[tokio::test]
async fn interactions_of_a_failing_endpoints_shards_reach_the_other_within_a_second() {
    // `a` answers 503 to everything; its circuit never opens, so the batches of its shards go
    // on retrying there. Their interactions move to `b` after one attempt.
    let shards = 4;
    let p = Pipe::start(
        sim(shards, 0),
        vec![("a", 1.0, live(vec![])), ("b", 1.0, live(vec![]))],
        |c| c.delivery.circuit_failures = 1_000_000,
    )
    .await;
    p.receivers[0].as_ref().unwrap().set_down(true);
    for shard in &p.shards {
        let _ = shard
            .status()
            .wait_for(|s| s.state == shardhook::ShardState::Active)
            .await;
    }
    for shard in 0..shards {
        let injected = tokio::time::Instant::now();
        assert!(p.sim.inject(shard, interaction()));
        let arrived = |p: &Pipe| {
            p.arrivals()
                .into_iter()
                .find(|(i, a)| *i == 1 && a.shard == shard && a.name == "INTERACTION_CREATE")
        };
        p.wait_until("the interaction at b", |p| arrived(p).is_some())
            .await;
        let took = arrived(&p).unwrap().1.at - injected;
        assert!(
            took < Duration::from_secs(1),
            "shard {shard}'s interaction reached b {took:?} after Discord sent it"
        );
    }
    let tried_at_a = interaction_requests(&p)
        .iter()
        .filter(|(i, _)| *i == 0)
        .count();
    assert!(
        tried_at_a >= 1,
        "no shard of the four is homed on a, so nothing failed over"
    );
    p.receivers[0].as_ref().unwrap().set_down(false);
    p.wait_delivered(&[]).await;
    p.assert_exactly_once(&[]);
    p.stop().await;
}

#[tokio::test]
async fn at_defaults_a_busy_shard_keeps_up_with_an_endpoint_a_round_trip_away() {
    // 200 events a second against an endpoint taking 50 ms per request: one event per request
    // would deliver 20 a second. The defaults batch what queued during each round trip.
    let slow = (0..400)
        .map(|_| Reply::Delay(Duration::from_millis(50)))
        .collect();
    let events = 200;
    let p = Pipe::start(sim(1, events), vec![("a", 1.0, live(slow))], |_| {}).await;
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    let requests = p.requests().len();
    assert!(
        requests <= events as usize / 4,
        "{requests} requests for {events} events: the defaults did not batch"
    );
    p.stop().await;
}

#[tokio::test]
async fn batches_respect_max_events() {
    let p = Pipe::start(
        sim(1, 100),
        vec![(
            "a",
            1.0,
            live(vec![Reply::Delay(Duration::from_millis(200))]),
        )],
        |c| {
            c.batch.max_events = 7;
        },
    )
    .await;
    p.wait_delivered(&[]).await;
    let requests = p.requests();
    assert!(requests.iter().all(|(_, q)| q.events <= 7));
    assert!(
        requests.iter().any(|(_, q)| q.events > 1),
        "events queued behind the slow request were batched"
    );
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}

#[tokio::test]
async fn include_and_exclude_filter_events_before_sending() {
    let p = Pipe::start(sim(1, 20), vec![("a", 1.0, live(vec![]))], |c| {
        c.events.exclude = vec!["GUILD_CREATE".into()];
    })
    .await;
    p.wait_delivered(&["GUILD_CREATE"]).await;
    assert!(p.arrivals().iter().all(|(_, a)| a.name != "GUILD_CREATE"));
    let guild_creates = p.sim.observed(|o| {
        o.ledger
            .iter()
            .filter(|e| e.event == "GUILD_CREATE")
            .count()
    });
    assert!(guild_creates > 0);
    p.assert_exactly_once_in_order(&["GUILD_CREATE"]);
    let p = p.stop().await;
    assert_eq!(p.stats.snapshot().events_filtered as usize, guild_creates);

    let p = Pipe::start(sim(1, 20), vec![("a", 1.0, live(vec![]))], |c| {
        c.events.include = vec!["MESSAGE_CREATE".into()];
    })
    .await;
    p.wait_delivered(&["READY", "GUILD_CREATE"]).await;
    assert!(p.arrivals().iter().all(|(_, a)| a.name == "MESSAGE_CREATE"));
    p.stop().await;
}

/// A real request made by shardhook, kept for the handler templates' tests
/// (`worker-template/test/fixtures/shardhook-request.json`). Regenerate with
/// `SHARDHOOK_WRITE_FIXTURES=1`; otherwise this checks the committed one still verifies.
#[tokio::test]
async fn the_handler_templates_fixture_is_a_real_shardhook_request() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../worker-template/test/fixtures/shardhook-request.json");
    if std::env::var_os("SHARDHOOK_WRITE_FIXTURES").is_some() || !path.exists() {
        let old = shardhook::SigningKey::generate();
        let old_key = shardhook::SigningKey::parse(&old).unwrap();
        let config = SimConfig {
            ping_every: 1,
            ..sim(1, 1)
        };
        let p = Pipe::start(config, vec![("a", 1.0, live(vec![]))], |c| {
            c.signing.previous_secrets = vec![old_key];
            c.batch.max_events = 10;
        })
        .await;
        p.wait_delivered(&[]).await;
        let request = p
            .requests()
            .into_iter()
            .map(|(_, q)| q)
            .find(|q| std::str::from_utf8(&q.body).unwrap().contains("!ping"))
            .expect("a request with the !ping message");
        let fixture = serde_json::json!({
            "secret": p.secret,
            "previous_secret": old,
            "headers": {
                "webhook-id": request.webhook_id,
                "webhook-timestamp": request.timestamp,
                "webhook-signature": request.signature,
                "content-type": request.content_type,
                "user-agent": request.user_agent,
            },
            "body": std::str::from_utf8(&request.body).unwrap(),
        });
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&fixture).unwrap() + "\n",
        )
        .unwrap();
        p.stop().await;
    }
    let fixture: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let body: serde_json::Value = serde_json::from_str(fixture["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        body["v"], 2,
        "the fixture is of the current wire format; regenerate it with SHARDHOOK_WRITE_FIXTURES=1"
    );
    let h = &fixture["headers"];
    let ts: u64 = h["webhook-timestamp"].as_str().unwrap().parse().unwrap();
    for secret in [&fixture["secret"], &fixture["previous_secret"]] {
        let signer = shardhook::Signer::new(
            shardhook::SigningKey::parse(secret.as_str().unwrap()).unwrap(),
            vec![],
        );
        signer
            .verify(
                h["webhook-id"].as_str(),
                h["webhook-timestamp"].as_str(),
                h["webhook-signature"].as_str(),
                fixture["body"].as_str().unwrap().as_bytes(),
                ts,
            )
            .expect("the fixture verifies with each key");
    }
}

/// `auth = "aws-iam"`: each request also carries a SigV4 signature for service `lambda`, which
/// botocore (an independent implementation) reproduces from the request as received.
#[tokio::test]
async fn aws_iam_endpoints_are_sigv4_signed_as_botocore_would() {
    let env = vec![
        (
            "AWS_ACCESS_KEY_ID".to_owned(),
            "AKIDSHARDHOOKTEST".to_owned(),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_owned(),
            "c2VjcmV0LW5ldmVyLXByaW50ZWQ".to_owned(),
        ),
        (
            "AWS_SESSION_TOKEN".to_owned(),
            "session-token-never-printed".to_owned(),
        ),
    ];
    let p = Pipe::start_with_env(
        sim(1, 3),
        vec![("lambda", 1.0, live(vec![]))],
        env.clone(),
        |c| {
            c.endpoints[0].auth = shardhook::config::EndpointAuth::AwsIam;
            c.endpoints[0].region = Some("eu-west-1".into());
        },
    )
    .await;
    p.wait_delivered(&[]).await;
    let (_, request) = p.requests().into_iter().next().unwrap();
    assert_sigv4_as_botocore(&p, &request, "eu-west-1", [&env[0].1, &env[1].1, &env[2].1]);
    p.stop().await;
}

/// A request's header, or a failed test.
fn header(request: &shardhook_simulator::receiver::RequestRecord, name: &str) -> String {
    request
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {name} header"))
}

/// Checks that `request` carries a SigV4 signature for service `lambda` in `region` with
/// `[key id, secret, session token]`, as botocore (an independent implementation) computes it
/// from the request as received.
fn assert_sigv4_as_botocore(
    p: &Pipe,
    request: &shardhook_simulator::receiver::RequestRecord,
    region: &str,
    [key_id, secret, token]: [&str; 3],
) {
    let authorization = header(request, "authorization");
    assert!(
        authorization.starts_with(&format!("AWS4-HMAC-SHA256 Credential={key_id}/")),
        "{authorization}"
    );
    assert!(
        authorization.contains(&format!("/{region}/lambda/aws4_request")),
        "{authorization}"
    );
    assert_eq!(header(request, "x-amz-security-token"), token);

    use base64::Engine;
    let signed: Vec<serde_json::Value> = [
        "content-type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    ]
    .iter()
    .map(|n| serde_json::json!([n, header(request, n)]))
    .collect();
    let spec = serde_json::json!({
        "method": "POST",
        "url": p.urls[0],
        "headers": signed,
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&request.body),
        "region": region,
        "service": "lambda",
        "access_key_id": key_id,
        "secret_access_key": secret,
        "session_token": token,
        "amz_date": header(request, "x-amz-date"),
    });
    let out = support::python("sigv4/botocore_sign.py", spec.to_string().as_bytes());
    let botocore: serde_json::Value = serde_json::from_str(&out).unwrap();
    let expected = botocore["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "authorization")
        .unwrap()[1]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(authorization, expected);
}

/// The access key id a request was SigV4-signed with.
fn signed_with(request: &shardhook_simulator::receiver::RequestRecord) -> String {
    let authorization = header(request, "authorization");
    let credential = authorization
        .split("Credential=")
        .nth(1)
        .expect("a Credential in the authorization header");
    credential.split('/').next().unwrap().to_owned()
}

/// The environment for a chain that must not reach past the loopback: no keys in it, profile
/// files in `dir` (absent unless the test writes them), and the instance metadata service at
/// `imds` or switched off.
fn aws_env(dir: &std::path::Path, imds: Option<&str>) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "AWS_SHARED_CREDENTIALS_FILE".to_owned(),
            dir.join("credentials").display().to_string(),
        ),
        (
            "AWS_CONFIG_FILE".to_owned(),
            dir.join("config").display().to_string(),
        ),
    ];
    env.push(match imds {
        Some(url) => (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT".to_owned(),
            url.to_owned(),
        ),
        None => ("AWS_EC2_METADATA_DISABLED".to_owned(), "true".to_owned()),
    });
    env
}

fn credentials_file(key_id: &str, secret: &str, token: &str) -> String {
    format!(
        "[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\naws_session_token = {token}\n"
    )
}

/// An `aws-iam` endpoint whose credentials come from the shared credentials file: the file is
/// rewritten (by a rename, as tools do) while events flow, and the next attempts are signed with
/// the new keys, which botocore confirms; no event is lost on the way.
#[tokio::test]
async fn a_credentials_file_rewritten_mid_run_signs_the_next_attempts_with_the_new_keys() {
    let dir = support::pipe::TempDir::new("aws-file");
    let first = ["AKIDFILEFIRST", "first-secret-never-printed", "first-token"];
    let second = [
        "AKIDFILESECOND",
        "second-secret-never-printed",
        "second-token",
    ];
    std::fs::write(
        dir.join("credentials"),
        credentials_file(first[0], first[1], first[2]),
    )
    .unwrap();
    let p = Pipe::start_with_env(
        sim(1, 1500),
        vec![("lambda", 1.0, live(vec![]))],
        aws_env(&dir, None),
        |c| {
            c.endpoints[0].auth = shardhook::config::EndpointAuth::AwsIam;
            c.endpoints[0].region = Some("eu-west-1".into());
        },
    )
    .await;
    p.wait_until("a request signed with the first keys", |p| {
        p.requests().iter().any(|(_, q)| signed_with(q) == first[0])
    })
    .await;
    let staged = dir.join("credentials.new");
    std::fs::write(&staged, credentials_file(second[0], second[1], second[2])).unwrap();
    std::fs::rename(&staged, dir.join("credentials")).unwrap();
    p.wait_until("a request signed with the rewritten keys", |p| {
        p.requests()
            .iter()
            .any(|(_, q)| signed_with(q) == second[0])
    })
    .await;
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    let requests = p.requests();
    let keys: Vec<String> = requests.iter().map(|(_, q)| signed_with(q)).collect();
    let switch = keys.iter().position(|k| k == second[0]).unwrap();
    assert!(
        keys[..switch].iter().all(|k| k == first[0])
            && keys[switch..].iter().all(|k| k == second[0]),
        "the first keys until the rewrite, the new ones after: {keys:?}"
    );
    assert_sigv4_as_botocore(&p, &requests[0].1, "eu-west-1", first);
    assert_sigv4_as_botocore(&p, &requests.last().unwrap().1, "eu-west-1", second);
    assert_eq!(p.stats.snapshot().requests_dead_lettered, 0);
    p.stop().await;
}

/// What the fake instance metadata service saw.
#[derive(Default)]
struct ImdsLog {
    tokens: usize,
    credentials: usize,
    /// Requests for metadata without a valid IMDSv2 token (refused with 401).
    untokened: usize,
}

const IMDS_TOKEN: &str = "imdsv2-token-for-the-test";
const IMDS_ROLE: &str = "shardhook-role";

/// A fake EC2 instance metadata service on loopback, IMDSv2 only: a token by `PUT
/// /latest/api/token`, then the role and its credentials by `GET` with the token. Its first
/// credentials expire a minute after they are handed out (inside the router's refresh-ahead
/// window, so the router fetches again at once); later ones in an hour.
async fn fake_imds(
    keys: [[&'static str; 3]; 2],
) -> (String, std::sync::Arc<std::sync::Mutex<ImdsLog>>) {
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, put};
    use std::sync::{Arc, Mutex};
    let log = Arc::new(Mutex::new(ImdsLog::default()));
    let tokened = {
        let log = log.clone();
        move |headers: &HeaderMap| {
            let ok = headers
                .get("x-aws-ec2-metadata-token")
                .is_some_and(|t| t == IMDS_TOKEN);
            if !ok {
                log.lock().unwrap().untokened += 1;
            }
            ok
        }
    };
    let token = {
        let log = log.clone();
        move |headers: HeaderMap| async move {
            const TTL: &str = "x-aws-ec2-metadata-token-ttl-seconds";
            let Some(ttl) = headers.get(TTL).cloned() else {
                return (StatusCode::BAD_REQUEST, HeaderMap::new(), String::new());
            };
            log.lock().unwrap().tokens += 1;
            let mut answer = HeaderMap::new();
            answer.insert(TTL, ttl);
            (StatusCode::OK, answer, IMDS_TOKEN.to_owned())
        }
    };
    let role = {
        let tokened = tokened.clone();
        move |headers: HeaderMap| async move {
            if !tokened(&headers) {
                return (StatusCode::UNAUTHORIZED, String::new());
            }
            (StatusCode::OK, IMDS_ROLE.to_owned())
        }
    };
    let credentials = {
        let log = log.clone();
        move |headers: HeaderMap| async move {
            if !tokened(&headers) {
                return (StatusCode::UNAUTHORIZED, String::new());
            }
            let served = {
                let mut log = log.lock().unwrap();
                log.credentials += 1;
                log.credentials
            };
            let (key, lifetime) = if served == 1 {
                (keys[0], Duration::from_secs(60))
            } else {
                (keys[1], Duration::from_secs(3600))
            };
            let now = std::time::SystemTime::now();
            let rfc3339 = |t| humantime_serde::re::humantime::format_rfc3339_seconds(t).to_string();
            let body = serde_json::json!({
                "Code": "Success",
                "LastUpdated": rfc3339(now),
                "Type": "AWS-HMAC",
                "AccessKeyId": key[0],
                "SecretAccessKey": key[1],
                "Token": key[2],
                "Expiration": rfc3339(now + lifetime),
            });
            (StatusCode::OK, body.to_string())
        }
    };
    let app = axum::Router::new()
        .route("/latest/api/token", put(token))
        .route("/latest/meta-data/iam/security-credentials/", get(role))
        .route(
            &format!("/latest/meta-data/iam/security-credentials/{IMDS_ROLE}"),
            get(credentials),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log)
}

/// Instance-profile credentials that expire in a minute are fetched again before they expire
/// (IMDSv2: a token, then the role's credentials), and the new keys sign the next attempts.
#[tokio::test]
async fn instance_metadata_credentials_that_expire_in_a_minute_are_refreshed() {
    let dir = support::pipe::TempDir::new("aws-imds");
    let first = ["AKIDIMDSFIRST", "imds-first-secret", "imds-first-token"];
    let second = ["AKIDIMDSSECOND", "imds-second-secret", "imds-second-token"];
    let (imds, log) = fake_imds([first, second]).await;
    let started = std::time::Instant::now();
    let p = Pipe::start_with_env(
        sim(1, 1500),
        vec![("lambda", 1.0, live(vec![]))],
        aws_env(&dir, Some(&imds)),
        |c| {
            c.endpoints[0].auth = shardhook::config::EndpointAuth::AwsIam;
            c.endpoints[0].region = Some("us-east-1".into());
        },
    )
    .await;
    p.wait_until("a request signed with the refreshed keys", |p| {
        p.requests()
            .iter()
            .any(|(_, q)| signed_with(q) == second[0])
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "refreshed well before the first keys expired: {:?}",
        started.elapsed()
    );
    {
        let log = log.lock().unwrap();
        assert!(log.credentials >= 2, "a second fetch: {}", log.credentials);
        assert!(log.tokens >= 1);
        assert_eq!(log.untokened, 0, "every metadata request carried the token");
    }
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    let requests = p.requests();
    let last = &requests.last().unwrap().1;
    assert_eq!(signed_with(last), second[0]);
    assert_sigv4_as_botocore(&p, last, "us-east-1", second);
    p.stop().await;
}

#[tokio::test]
async fn an_aws_iam_endpoint_without_credentials_is_a_clear_error() {
    let mut config = shardhook::Config::default();
    config.signing.secret =
        Some(shardhook::SigningKey::parse(&shardhook::SigningKey::generate()).unwrap());
    config.endpoints = vec![shardhook::config::EndpointConfig {
        auth: shardhook::config::EndpointAuth::AwsIam,
        ..shardhook::config::EndpointConfig::new(
            "fn",
            "https://abc123.lambda-url.us-east-2.on.aws/",
        )
    }];
    assert_eq!(
        config.endpoints[0].aws_region().as_deref(),
        Some("us-east-2")
    );
    let env = vec![("AWS_ACCESS_KEY_ID".to_owned(), "AKID".to_owned())];
    let err = shardhook::Pipeline::with_env(&config, env)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("`fn`") && err.contains("AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );
}

#[tokio::test]
async fn an_endpoint_down_for_a_stretch_spools_then_everything_arrives_in_order() {
    let mut p = Pipe::start(sim(2, 300), vec![("only", 1.0, Target::Refused)], |c| {
        c.delivery.circuit_failures = 2;
        c.delivery.circuit_cooldown = Duration::from_millis(200);
    })
    .await;
    p.wait_until("batches to spool", |p| {
        p.stats.snapshot().events_spooled > 100
    })
    .await;
    let spool_dir = p.state_dir.join("spool");
    assert!(
        spool_dir.read_dir().unwrap().count() > 0,
        "spool files on disk"
    );
    p.revive(0).await;
    p.wait_delivered(&[]).await;
    let per_endpoint = p.assert_exactly_once_in_order(&[]);
    assert_eq!(per_endpoint[0], p.sim.observed(|o| o.ledger.len()));
    // Spooled batches drain as requests of wire format v2, one batch each.
    for (_, q) in p.requests() {
        let body: serde_json::Value = serde_json::from_slice(&q.body).unwrap();
        assert_eq!(body["v"], 2, "{body}");
        assert!(body["batches"].as_array().is_some_and(|b| !b.is_empty()));
    }
    let p = p.stop().await;
    let stats = p.stats.snapshot();
    assert_eq!(stats.requests_dead_lettered, 0);
    assert!(stats.events_spooled > 100);
    assert_eq!(
        spool_dir.read_dir().unwrap().count(),
        0,
        "drained spool files are removed"
    );
}

#[tokio::test]
async fn a_spool_write_that_blocks_stops_no_other_shard() {
    // One runtime thread (this test's). Shard 0's spool file is a FIFO: writing it blocks until
    // something reads it, as a write to a stalled disk would. Were the append on the runtime's
    // thread, nothing else would run until it ended.
    let mut fifo = None;
    let mut p = Pipe::start(sim(2, 100), vec![("only", 1.0, Target::Refused)], |c| {
        c.delivery.circuit_failures = 1;
        c.delivery.circuit_cooldown = Duration::from_millis(100);
        let spool = c.state.dir.join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        let path = spool.join("shard-0.log");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        fifo = Some(path);
    })
    .await;
    let fifo = fifo.unwrap();
    p.wait_until("shard 1's batches to spool", |p| {
        p.stats.snapshot().events_spooled > 0
    })
    .await;
    p.revive(0).await;
    p.wait_until("every event of shard 1 delivered", |p| {
        let ledger = p
            .sim
            .observed(|o| o.ledger.iter().filter(|e| e.shard == 1).count());
        let arrived = p.arrivals().iter().filter(|(_, a)| a.shard == 1).count();
        ledger >= 100 && arrived >= ledger
    })
    .await;
    // Now let shard 0's write through: read the FIFO once (the append then fails, as a FIFO
    // cannot be synced) and remove it, so the next append is a real file.
    let reader = std::thread::spawn(move || {
        let mut opened = std::fs::File::open(&fifo).unwrap();
        std::fs::remove_file(&fifo).unwrap();
        std::io::copy(&mut opened, &mut std::io::sink()).unwrap()
    });
    assert!(
        reader.join().unwrap() > 0,
        "the blocked write was a spool append"
    );
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}

#[tokio::test]
async fn a_full_queue_holds_the_shard_back_without_losing_events_or_heartbeats() {
    // A queue of 4 and an endpoint taking 150 ms per request: the shard spends most of the run
    // waiting for room (not reading), across several heartbeat intervals.
    let slow = (0..40)
        .map(|_| Reply::Delay(Duration::from_millis(150)))
        .collect();
    let p = Pipe::start(sim(1, 40), vec![("a", 1.0, live(slow))], |c| {
        c.delivery.queue = 4;
        // A request per event, so what is held is the queue and the one or two events out.
        c.batch.max_events = 1;
    })
    .await;
    let mut max_depth = 0;
    p.wait_until("every event delivered", |p| {
        let held = p.shards[0]
            .received()
            .saturating_sub(p.stats.snapshot().events_delivered);
        max_depth = max_depth.max(held);
        p.outstanding_count() == 0
    })
    .await;
    p.assert_exactly_once_in_order(&[]);
    let status = p.shards[0].status().borrow().clone();
    assert_eq!(
        status.reconnects, 0,
        "heartbeats kept the connection alive while reading waited"
    );
    // Received but not yet delivered never exceeds the queue, the batch in flight and the one
    // waiting for room.
    assert!(max_depth <= 4 + 2, "{max_depth} events were held at once");
    p.stop().await;
}

#[tokio::test]
async fn past_max_lanes_an_interaction_goes_with_its_shards_events_and_is_not_lost() {
    let p = Pipe::start(sim(1, 0), vec![("a", 1.0, live(vec![]))], |c| {
        c.interactions.max_lanes = 1;
    })
    .await;
    let _ = p.shards[0]
        .status()
        .wait_for(|s| s.state == shardhook::ShardState::Active)
        .await;
    p.wait_until("the guild creates delivered", |p| {
        p.sim.observed(|o| o.ledger.len() >= 3) && p.outstanding_count() == 0
    })
    .await;
    // The first interaction's request is held 2 s: its lane stays taken meanwhile.
    p.receiver(0).script([Reply::Delay(Duration::from_secs(2))]);
    assert!(p.sim.inject(0, interaction()));
    p.wait_until("the first interaction at the endpoint", |p| {
        !interaction_requests(p).is_empty()
    })
    .await;
    assert!(p.sim.inject(0, interaction()));
    p.wait_delivered(&[]).await;
    assert_eq!(
        p.stats
            .interactions_unlaned
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the second found the only lane taken"
    );
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}
