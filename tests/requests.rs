//! End-to-end tests of requests that carry many shards' batches (wire format v2): per-shard
//! order through retries and failures, interactions beside full slots, a quiet shard's lone
//! event, and the batches a request holds.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shardhook_simulator::receiver::{Reply, RequestRecord};
use shardhook_simulator::{Fault, SimConfig};
use support::pipe::{Pipe, Target};

fn sim(shards: u32, events: u64) -> SimConfig {
    SimConfig {
        shards,
        events_per_shard: Some(events),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    }
}

/// Waits until every shard is connected, so the double can inject events on it.
async fn all_active(p: &Pipe) {
    for shard in &p.shards {
        let _ = support::within(
            "the shard to be active",
            shard
                .status()
                .wait_for(|s| s.state == shardhook::ShardState::Active),
        )
        .await;
    }
}

/// The `(shard_id, first seq)` of each batch a request body holds, in order.
fn batches_of(request: &RequestRecord) -> Vec<(u32, u64)> {
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["v"], 2, "{body}");
    body["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["shard_id"].as_u64().unwrap() as u32,
                b["events"][0]["s"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn many_shards_share_requests_and_each_keeps_its_order_through_failures_and_retries() {
    // Two slots for 24 shards: batches wait for a slot and go several to a request. The
    // endpoint fails requests now and then (5xx, 429, a slow answer past the timeout), so
    // requests of many shards' batches are retried whole.
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.extend([
            Reply::Status(500),
            Reply::Status(204),
            Reply::RetryAfter(429, "0".into()),
            Reply::Status(204),
            Reply::Status(503),
            Reply::Delay(Duration::from_millis(1500)),
            Reply::Status(204),
        ]);
    }
    let config = SimConfig {
        max_concurrency: 24,
        ..sim(24, 60)
    };
    let p = Pipe::start(config, vec![("a", 1.0, Target::Live(replies))], |c| {
        c.endpoints[0].max_in_flight = 2;
        c.endpoints[0].timeout = Some(Duration::from_millis(700));
    })
    .await;
    p.wait_delivered(&[]).await;
    // Nothing lost or duplicated, and each shard's events arrived in seq order.
    p.assert_exactly_once_in_order(&[]);
    let requests = p.requests();
    let shared = requests
        .iter()
        .filter(|(_, q)| batches_of(q).len() > 1)
        .count();
    assert!(shared > 0, "no request carried more than one shard's batch");
    // A shard never has two batches in one request (one in flight at a time), and a request
    // sent again is the same request: the same id, body and batches.
    let mut bodies: HashMap<&str, &bytes::Bytes> = HashMap::new();
    let mut retried = 0;
    for (_, q) in &requests {
        let shards: Vec<u32> = batches_of(q).iter().map(|b| b.0).collect();
        let distinct: HashSet<u32> = shards.iter().copied().collect();
        assert_eq!(distinct.len(), shards.len(), "{shards:?}");
        if let Some(before) = bodies.insert(&q.webhook_id, &q.body) {
            assert_eq!(
                before, &q.body,
                "{} was sent with another body",
                q.webhook_id
            );
            retried += 1;
        }
    }
    assert!(retried >= 9, "only {retried} requests were sent again");
    let stats = p.stop().await.stats.snapshot();
    assert!(stats.retries >= 9, "{stats:?}");
    assert_eq!(stats.requests_dead_lettered, 0);
}

#[tokio::test]
async fn an_interaction_does_not_wait_for_the_endpoints_only_slot() {
    // One slot, taken by a request the endpoint holds 3 s; the interaction of another shard
    // goes beside it.
    let hold = Duration::from_secs(3);
    let p = Pipe::start(
        SimConfig {
            max_concurrency: 2,
            ..sim(2, 0)
        },
        vec![("a", 1.0, Target::Live(vec![Reply::Delay(hold)]))],
        |c| c.endpoints[0].max_in_flight = 1,
    )
    .await;
    all_active(&p).await;
    p.wait_until("the first request to be held", |p| !p.requests().is_empty())
        .await;
    assert!(p.sim.inject(
        0,
        Fault::Dispatch {
            name: "INTERACTION_CREATE".into(),
            d: r#"{"id":"1","type":2,"token":"t","application_id":"1"}"#.into(),
        }
    ));
    p.wait_until("the interaction", |p| {
        p.arrivals()
            .iter()
            .any(|(_, a)| a.name == "INTERACTION_CREATE")
    })
    .await;
    // The held request is still held: nothing else has been answered.
    let answered: Vec<String> = p.arrivals().into_iter().map(|(_, a)| a.name).collect();
    assert_eq!(answered, ["INTERACTION_CREATE"]);
    p.wait_delivered(&[]).await;
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}

#[tokio::test]
async fn a_quiet_shards_lone_event_goes_at_once_in_a_request_of_its_own() {
    // The endpoint takes 300 ms a request, so the router has a round trip to space requests
    // by; with nothing in flight a lone event does not wait for it.
    let slow = vec![Reply::Delay(Duration::from_millis(300)); 4];
    let p = Pipe::start(sim(1, 0), vec![("a", 1.0, Target::Live(slow))], |_| {}).await;
    all_active(&p).await;
    p.wait_delivered(&[]).await;
    for n in 0..3 {
        let before = p.requests().len();
        let injected = tokio::time::Instant::now();
        assert!(p.sim.inject(
            0,
            Fault::Dispatch {
                name: "MESSAGE_CREATE".into(),
                d: format!(r#"{{"id":"{n}","content":"hi"}}"#),
            }
        ));
        p.wait_until("the lone event's request", |p| p.requests().len() > before)
            .await;
        let request = &p.requests()[before].1;
        let took = request.at - injected;
        assert_eq!(request.events, 1);
        assert!(
            took < Duration::from_millis(250),
            "a lone event reached the endpoint {took:?} after Discord sent it"
        );
        p.wait_delivered(&[]).await;
    }
    p.assert_exactly_once_in_order(&[]);
    p.stop().await;
}
