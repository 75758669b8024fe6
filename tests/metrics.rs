//! Every metric the README lists, scraped from `/metrics` over HTTP and parsed by the
//! Prometheus project's own parser, moves when the event it counts happens.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use shardhook::config::RateLimitConfig;
use shardhook::ShardState;
use shardhook_simulator::receiver::Reply;
use shardhook_simulator::{Fault, SimConfig};
use support::pipe::{Pipe, Target};
use support::within;

fn sim(events: u64) -> SimConfig {
    SimConfig {
        shards: 1,
        max_concurrency: 1,
        guilds: 2,
        rate: 100.0,
        events_per_shard: Some(events),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    }
}

/// One scrape: `name{labels}` to value, as the Prometheus parser reads it.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    async fn of(p: &Pipe) -> Scrape {
        let text = reqwest::get(format!("{}/metrics", p.control_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let parsed = support::python("prometheus_parse.py", text.as_bytes());
        Scrape(
            parsed
                .lines()
                .filter_map(|l| l.rsplit_once(' '))
                .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
                .collect(),
        )
    }

    /// The sum of `name`'s samples whose labels contain `labels`.
    fn sum(&self, name: &str, labels: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.split('{').next() == Some(name) && k.contains(labels))
            .map(|(_, v)| v)
            .sum()
    }
}

/// The metric names the README's control API section lists.
fn readme_metrics() -> BTreeSet<String> {
    let readme = include_str!("../README.md");
    let section = readme
        .split("`GET /metrics`")
        .nth(1)
        .expect("the README lists the metrics under `GET /metrics`");
    let list = &section[..section.find("\n\n").unwrap_or(section.len())];
    list.split('`')
        .filter(|s| s.starts_with("shardhook_"))
        .map(|s| s.split('{').next().unwrap().to_owned())
        .collect()
}

/// A signed request through the REST proxy with an empty JSON body; its status.
async fn rest(p: &Pipe, method: &str, target: &str) -> u16 {
    let signer = shardhook::Signer::new(shardhook::SigningKey::parse(&p.secret).unwrap(), vec![]);
    let (id, now) = (format!("m_{}", fastrand::u64(..)), shardhook::unix_now());
    let body = if method == "GET" { "" } else { "{}" };
    let signed = format!("{method} {target}\n{body}");
    reqwest::Client::new()
        .request(
            method.parse().unwrap(),
            format!("{}{target}", p.control_url),
        )
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            signer.sign(&id, now, signed.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn dispatch(name: &str, d: &str) -> Fault {
    Fault::Dispatch {
        name: name.into(),
        d: d.into(),
    }
}

#[tokio::test]
async fn every_metric_the_readme_lists_moves_when_its_event_happens() {
    let mut moved = BTreeSet::new();
    let mut saw = |name: &str, ok: bool, what: &str| {
        assert!(ok, "{name} did not move when {what}");
        moved.insert(name.to_owned());
    };

    // One shard to one endpoint, paced to 2 requests a second so its events queue.
    let p = Pipe::start(sim(0), vec![("a", 1.0, Target::Live(vec![]))], |c| {
        // A request per event, so the paced requests leave events queued.
        c.batch.max_events = 1;
        c.endpoints[0].rate_limit = Some(RateLimitConfig {
            per_second: 2,
            burst: Some(1),
        });
        c.events.exclude = vec!["TYPING_START".into()];
        c.interactions.auto_defer = true;
        c.state.spool_max_bytes = 12_345_678;
    })
    .await;
    let status = || p.shards[0].status().borrow().clone();
    within(
        "active",
        p.shards[0]
            .status()
            .wait_for(|s| s.state == ShardState::Active),
    )
    .await
    .unwrap();
    p.wait_until("READY and the guilds delivered", |p| {
        p.arrivals().len() >= 3
    })
    .await;
    let before = Scrape::of(&p).await;
    saw(
        "shardhook_spool_limit_bytes",
        before.sum("shardhook_spool_limit_bytes", "") == 12_345_678.0,
        "state.spool_max_bytes was set",
    );
    saw(
        "shardhook_shard_connected",
        before.sum("shardhook_shard_connected", "shard=\"0\"") == 1.0,
        "the shard connected",
    );

    // A 503, then a 400: one retry, one dead letter. The shard's next event leaves only once
    // that batch is finished, so its arrival says the dead letter is counted.
    p.receiver(0)
        .script([Reply::Status(503), Reply::Status(400)]);
    let arrived = p.arrivals().len();
    assert!(p
        .sim
        .inject(0, dispatch("MESSAGE_CREATE", r#"{"content":"a"}"#)));
    assert!(p
        .sim
        .inject(0, dispatch("MESSAGE_CREATE", r#"{"content":"b"}"#)));
    p.wait_until("the event after the dead letter", |p| {
        p.arrivals().len() > arrived
    })
    .await;
    assert_eq!(p.stats.snapshot().requests_dead_lettered, 1);
    // A filtered event and a deferred interaction.
    assert!(p.sim.inject(0, dispatch("TYPING_START", "{}")));
    let interaction = r#"{"id":"9","application_id":"1","type":2,"token":"t","data":{"name":"x"}}"#;
    assert!(p.sim.inject(0, dispatch("INTERACTION_CREATE", interaction)));
    p.wait_sim_rest(|calls| calls.iter().any(|c| c.path.ends_with("/callback")))
        .await;
    // Four events at once to an endpoint taking two a second: they wait in the queue.
    let received = p.shards[0].received();
    for n in 0..4 {
        let d = format!(r#"{{"content":"{n}"}}"#);
        assert!(p.sim.inject(0, dispatch("MESSAGE_CREATE", &d)));
    }
    p.wait_until("the four received", |p| {
        p.shards[0].received() >= received + 4
    })
    .await;
    let queued = Scrape::of(&p).await;
    saw(
        "shardhook_queue_depth",
        queued.sum("shardhook_queue_depth", "shard=\"0\"") > 0.0,
        "events waited for the endpoint",
    );
    // Everything but the filtered event and the dead letter arrives.
    p.wait_until("the rest delivered", |p| {
        p.arrivals().len() + 2 == p.sim.observed(|o| o.ledger.len())
    })
    .await;

    // Op 7: the shard reconnects and resumes.
    assert!(p.sim.inject(0, Fault::Reconnect));
    within(
        "a resume",
        p.shards[0].status().wait_for(|s| s.resumes >= 1),
    )
    .await
    .unwrap();
    // Op 9 that cannot resume: the shard waits 1-5 s before identifying again.
    assert!(p
        .sim
        .inject(0, Fault::InvalidateSession { resumable: false }));
    within(
        "the shard down",
        p.shards[0]
            .status()
            .wait_for(|s| s.state != ShardState::Active),
    )
    .await
    .unwrap();
    let down = Scrape::of(&p).await;
    saw(
        "shardhook_shard_connected",
        down.sum("shardhook_shard_connected", "shard=\"0\"") == 0.0,
        "the shard lost its session",
    );
    within(
        "the shard back",
        p.shards[0]
            .status()
            .wait_for(|s| s.state == ShardState::Active),
    )
    .await
    .unwrap();
    assert!(status().resumes >= 1);

    let after = Scrape::of(&p).await;
    let grew = |name: &str, labels: &str| after.sum(name, labels) > before.sum(name, labels);
    let by_a = "endpoint=\"a\"";
    for (name, labels, what) in [
        (
            "shardhook_events_received_total",
            "shard=\"0\"",
            "events arrived",
        ),
        (
            "shardhook_events_delivered_total",
            by_a,
            "events were delivered",
        ),
        (
            "shardhook_delivery_latency_seconds_count",
            "",
            "events were delivered",
        ),
        ("shardhook_retries_total", by_a, "a 503 was retried"),
        (
            "shardhook_dead_letters_total",
            by_a,
            "a 400 was dead-lettered",
        ),
        (
            "shardhook_rate_limit_waits_total",
            by_a,
            "requests waited for the rate limit",
        ),
        (
            "shardhook_reconnects_total",
            "shard=\"0\"",
            "op 7 and op 9 ended connections",
        ),
        ("shardhook_resumes_total", "shard=\"0\"", "op 7 was resumed"),
        (
            "shardhook_events_filtered_total",
            "",
            "TYPING_START was excluded",
        ),
        (
            "shardhook_interactions_deferred_total",
            "",
            "an interaction was deferred",
        ),
        (
            "shardhook_interaction_defer_latency_seconds_count",
            "",
            "an interaction was deferred",
        ),
    ] {
        saw(name.trim_end_matches("_count"), grew(name, labels), what);
    }
    saw(
        "shardhook_endpoint_connections",
        after.sum("shardhook_endpoint_connections_total", by_a) > 0.0,
        "connections to the endpoint were opened",
    );
    // These endpoints are plain http: no TLS session to resume. The counter behind
    // `shardhook_endpoint_tls_resumed_total` (the pool's) moves in the unit test
    // `delivery::http::tests::a_new_connection_resumes_the_tls_session_of_an_earlier_one`;
    // here it must at least be exported for each endpoint.
    saw(
        "shardhook_endpoint_tls_resumed",
        after
            .0
            .keys()
            .any(|k| k.starts_with("shardhook_endpoint_tls_resumed_total{") && k.contains(by_a)),
        "exported per endpoint",
    );
    assert_eq!(
        after.sum("shardhook_dead_letters_total", "")
            - before.sum("shardhook_dead_letters_total", ""),
        1.0,
        "exactly the one dead letter"
    );
    assert_eq!(
        after.sum("shardhook_events_filtered_total", "")
            - before.sum("shardhook_events_filtered_total", ""),
        1.0
    );
    p.stop().await;

    // The only endpoint down: batches spool; back up: the spool drains.
    let mut p = Pipe::start(sim(20), vec![("down", 1.0, Target::Refused)], |c| {
        c.delivery.circuit_failures = 1;
        c.delivery.circuit_cooldown = Duration::from_millis(100);
    })
    .await;
    p.wait_until("batches to spool", |p| {
        p.stats.snapshot().events_spooled > 0
    })
    .await;
    let spooled = Scrape::of(&p).await;
    saw(
        "shardhook_events_spooled_total",
        spooled.sum("shardhook_events_spooled_total", "") > 0.0,
        "batches were spooled",
    );
    saw(
        "shardhook_spool_bytes",
        spooled.sum("shardhook_spool_bytes", "") > 0.0,
        "batches were spooled",
    );
    p.revive(0).await;
    p.wait_delivered(&[]).await;
    // Scraped while it runs (a stopped router's control API answers no more, as a stopped
    // `shardhook run`'s does not): the spool drains to nothing.
    within("the spool to drain", async {
        while Scrape::of(&p).await.sum("shardhook_spool_bytes", "") != 0.0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    p.stop().await;

    // The REST proxy: a message sent, a 403, a global 429 and a request that waits it out.
    let p = Pipe::start(sim(0), vec![("a", 1.0, Target::Live(vec![]))], |c| {
        c.rest.enabled = true;
        c.rest.invalid_request_limit = 100;
    })
    .await;
    assert_eq!(rest(&p, "POST", "/api/v10/channels/1/messages").await, 200);
    assert_eq!(rest(&p, "GET", "/api/v10/guilds/5/members/6").await, 403);
    // A pause long beside the time between the 429 and the next request, so the wait the
    // histogram records is most of it on any machine.
    p.sim.rest_global_429(Duration::from_millis(1500));
    assert_eq!(rest(&p, "POST", "/api/v10/channels/2/messages").await, 429);
    let answered = std::time::Instant::now();
    assert_eq!(rest(&p, "POST", "/api/v10/channels/3/messages").await, 200);
    let since_429 = answered.elapsed().as_secs_f64();
    let proxied = Scrape::of(&p).await;
    saw(
        "shardhook_rest_requests_total",
        proxied.sum("shardhook_rest_requests_total", "status=\"200\"") == 2.0
            && proxied.sum("shardhook_rest_requests_total", "members/{id}") == 1.0,
        "requests went through the proxy",
    );
    saw(
        "shardhook_rest_wait_seconds",
        // Four sent, and the last held back by the rest of the 1.5 s pause: what it waited is
        // the pause less the time from the 429 to its sending, and no more than the time it
        // took to be answered.
        proxied.sum("shardhook_rest_wait_seconds_count", "") == 4.0
            && proxied.sum("shardhook_rest_wait_seconds_sum", "") >= 1.5 - 0.5
            && proxied.sum("shardhook_rest_wait_seconds_sum", "") <= since_429 + 0.05,
        "a request waited out the rest of a global 429's Retry-After",
    );
    saw(
        "shardhook_rest_rate_limited_total",
        proxied.sum("shardhook_rest_rate_limited_total", "scope=\"global\"") == 1.0,
        "Discord answered a global 429",
    );
    saw(
        "shardhook_rest_invalid_requests",
        proxied.sum("shardhook_rest_invalid_requests", "") == 2.0,
        "Discord answered 403 and 429",
    );
    saw(
        "shardhook_rest_invalid_request_limit",
        proxied.sum("shardhook_rest_invalid_request_limit", "") == 100.0,
        "rest.invalid_request_limit was set",
    );
    p.stop().await;

    // "_total" and "_count" are what a sample of a counter or histogram is called.
    let listed: BTreeSet<String> = readme_metrics();
    let tested: BTreeSet<String> = moved
        .iter()
        .map(|m| m.trim_end_matches("_total").to_owned())
        .collect();
    let listed_bare: BTreeSet<String> = listed
        .iter()
        .map(|m| m.trim_end_matches("_total").to_owned())
        .collect();
    assert_eq!(tested, listed_bare, "every listed metric, and only those");
}
