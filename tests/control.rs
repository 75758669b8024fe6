//! End-to-end tests of the control API over real HTTP: signed gateway commands reaching the
//! right shard's socket, refusals, the send budget, readiness, status, metrics, and
//! interaction auto-defer.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use shardhook::{ShardState, Signer, SigningKey};
use shardhook_simulator::receiver::Reply;
use shardhook_simulator::{events, Fault, SimConfig};
use support::pipe::{Pipe, Target};

fn sim(shards: u32, events: u64) -> SimConfig {
    SimConfig {
        shards,
        max_concurrency: shards,
        guilds: shards * 2,
        rate: 100.0,
        events_per_shard: Some(events),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    }
}

async fn start(sim: SimConfig) -> Pipe {
    let p = Pipe::start(sim, vec![("a", 1.0, Target::Live(vec![]))], |_| {}).await;
    for shard in &p.shards {
        let _ = support::within(
            "active",
            shard.status().wait_for(|s| s.state == ShardState::Active),
        )
        .await;
    }
    p
}

/// Posts a command signed as a handler would, with a fresh id.
async fn post(p: &Pipe, body: &str) -> reqwest::Response {
    post_signed(p, body, &next_id(), shardhook::unix_now()).await
}

fn next_id() -> String {
    format!("cmd_{}", fastrand::u64(..))
}

async fn post_signed(p: &Pipe, body: &str, id: &str, timestamp: u64) -> reqwest::Response {
    post_signed_with(p, &p.secret, body, id, timestamp).await
}

/// Like `post_signed`, with the key `secret`.
async fn post_signed_with(
    p: &Pipe,
    secret: &str,
    body: &str,
    id: &str,
    timestamp: u64,
) -> reqwest::Response {
    let signer = Signer::new(SigningKey::parse(secret).unwrap(), vec![]);
    reqwest::Client::new()
        .post(format!("{}/v1/gateway/commands", p.control_url))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            signer.sign(id, timestamp, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signed_command_reaches_the_shard_that_owns_the_guild() {
    let p = start(sim(4, 0)).await;
    let guilds: Vec<u64> = (0..8).map(events::guild_id).collect();
    for guild in &guilds {
        let body = format!(
            r#"{{"guild_id":"{guild}","op":8,"d":{{"guild_id":"{guild}","query":"","limit":0}}}}"#
        );
        let response = post(&p, &body).await;
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }
    let commands = p.wait_sim_commands(guilds.len()).await;
    let mut shards_used = std::collections::HashSet::new();
    for (shard, command) in commands {
        let guild: u64 = command["d"]["guild_id"].as_str().unwrap().parse().unwrap();
        assert_eq!(shard, events::shard_of(guild, 4), "guild {guild}");
        assert_eq!(command["op"], 8);
        shards_used.insert(shard);
    }
    assert_eq!(shards_used.len(), 4, "the guilds cover every shard");
    // Presence for every shard at once.
    let body = r#"{"shard_id":"all","op":3,"d":{"since":null,"activities":[],"status":"idle","afk":false}}"#;
    assert_eq!(post(&p, body).await.status(), 202);
    let commands = p.wait_sim_commands(guilds.len() + 4).await;
    let presence: std::collections::HashSet<u32> = commands
        .iter()
        .filter(|(_, c)| c["op"] == 3)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(presence.len(), 4);
    p.stop().await;
}

#[tokio::test]
async fn unsigned_stale_replayed_oversized_and_forbidden_commands_are_refused() {
    let p = start(sim(2, 0)).await;
    let good =
        r#"{"shard_id":0,"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
    let client = reqwest::Client::new();
    let unsigned = client
        .post(format!("{}/v1/gateway/commands", p.control_url))
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert!(unsigned.text().await.unwrap().contains("webhook-id"));

    let now = shardhook::unix_now();
    let stale = post_signed(&p, good, &next_id(), now - 600).await;
    assert_eq!(stale.status(), 401);

    let id = next_id();
    assert_eq!(post_signed(&p, good, &id, now).await.status(), 202);
    let replayed = post_signed(&p, good, &id, now).await;
    assert_eq!(replayed.status(), 401);
    assert!(replayed.text().await.unwrap().contains("already used"));

    let wrong_key = Signer::new(SigningKey::parse(&SigningKey::generate()).unwrap(), vec![]);
    let forged = client
        .post(format!("{}/v1/gateway/commands", p.control_url))
        .header("webhook-id", "forged")
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            wrong_key.sign("forged", now, good.as_bytes()),
        )
        .body(good)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    let big = format!(
        r#"{{"shard_id":0,"op":3,"d":{{"status":"online","pad":"{}"}}}}"#,
        "x".repeat(5000)
    );
    let oversized = post(&p, &big).await;
    assert_eq!(oversized.status(), 400);
    assert!(oversized.text().await.unwrap().contains("4096"));

    for op in [1, 2, 6, 0] {
        let body = format!(r#"{{"shard_id":0,"op":{op},"d":{{}}}}"#);
        let refused = post(&p, &body).await;
        assert_eq!(refused.status(), 400, "op {op}");
        assert!(
            refused.text().await.unwrap().contains("allowed: 3"),
            "op {op}"
        );
    }
    assert_eq!(
        post(&p, r#"{"shard_id":9,"op":3,"d":{}}"#).await.status(),
        404
    );
    assert_eq!(
        post(&p, r#"{"op":3,"d":{}}"#).await.status(),
        400,
        "no target"
    );
    assert_eq!(post(&p, "not json").await.status(), 400);
    assert_eq!(
        post(&p, r#"{"shard_id":"all","op":8,"d":{}}"#)
            .await
            .status(),
        400
    );
    // Only the one good command reached the gateway.
    assert_eq!(p.wait_sim_commands(1).await.len(), 1);
    p.stop().await;
}

#[tokio::test]
async fn a_command_accepted_before_a_restart_is_refused_after_it() {
    let p = start(sim(1, 0)).await;
    let good =
        r#"{"shard_id":0,"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
    let (id, now) = (next_id(), shardhook::unix_now());
    assert_eq!(post_signed(&p, good, &id, now).await.status(), 202);
    let dir = p.state_dir.to_path_buf();
    let secret = p.secret.clone();
    // The first router stops; its state directory stays (the Pipe is kept until the end).
    let first = p.stop().await;
    let p = Pipe::start(sim(1, 0), vec![("a", 1.0, Target::Live(vec![]))], |c| {
        c.state.dir = dir.clone();
        c.signing.secret = Some(SigningKey::parse(&secret).unwrap());
    })
    .await;
    // The very request the first router accepted, byte for byte.
    let replayed = post_signed_with(&p, &secret, good, &id, now).await;
    assert_eq!(replayed.status(), 401);
    assert!(replayed.text().await.unwrap().contains("already used"));
    drop(first);
    p.stop().await;
}

#[tokio::test]
async fn with_a_control_secret_commands_need_it_and_the_event_key_no_longer_sends_them() {
    let control = SigningKey::generate();
    let p = Pipe::start(sim(1, 0), vec![("a", 1.0, Target::Live(vec![]))], |c| {
        c.signing.control_secret = Some(SigningKey::parse(&control).unwrap());
    })
    .await;
    let _ = support::within(
        "active",
        p.shards[0]
            .status()
            .wait_for(|s| s.state == ShardState::Active),
    )
    .await;
    let good =
        r#"{"shard_id":0,"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
    let now = shardhook::unix_now();
    let by_event_key = post_signed(&p, good, &next_id(), now).await;
    assert_eq!(by_event_key.status(), 401);
    assert!(by_event_key.text().await.unwrap().contains("no signature"));
    let by_control_key = post_signed_with(&p, &control, good, &next_id(), now).await;
    assert_eq!(by_control_key.status(), 202);
    assert_eq!(p.wait_sim_commands(1).await.len(), 1);
    // Events are still signed with the event key: the receiver verifies them with it.
    p.wait_until("READY and the guilds delivered", |p| {
        p.arrivals().len() >= 3
    })
    .await;
    assert!(p.requests().iter().all(|(_, q)| q.verified));
    p.stop().await;
}

#[tokio::test]
async fn a_refused_command_does_not_spend_its_id() {
    let p = start(sim(1, 0)).await;
    let (id, now) = (next_id(), shardhook::unix_now());
    // No shard 9 here: 404, and the id is still free.
    let elsewhere = r#"{"shard_id":9,"op":3,"d":{"status":"online"}}"#;
    assert_eq!(post_signed(&p, elsewhere, &id, now).await.status(), 404);
    let good =
        r#"{"shard_id":0,"op":3,"d":{"since":null,"activities":[],"status":"online","afk":false}}"#;
    assert_eq!(post_signed(&p, good, &id, now).await.status(), 202);
    assert_eq!(post_signed(&p, good, &id, now).await.status(), 401);
    p.stop().await;
}

#[tokio::test]
async fn the_command_past_the_budget_gets_429_and_the_shard_is_never_disconnected() {
    // Discord's usual heartbeat interval, so the budget is what a real bot gets.
    let config = SimConfig {
        heartbeat_interval: Duration::from_millis(41_250),
        ..sim(1, 0)
    };
    let p = start(config).await;
    let budget = p.shards[0].command_budget().unwrap() as usize;
    assert!(budget < 120);
    let mut statuses = Vec::new();
    for n in 0..121 {
        let body = format!(
            r#"{{"shard_id":0,"op":3,"d":{{"since":null,"activities":[],"status":"online","afk":false,"n":{n}}}}}"#
        );
        let response = post(&p, &body).await;
        if response.status() == 429 {
            let after: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&after), "{after}");
        }
        statuses.push(response.status().as_u16());
    }
    assert!(statuses[..budget].iter().all(|s| *s == 202), "{statuses:?}");
    assert!(statuses[budget..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(statuses[120], 429, "the 121st command in a minute");
    assert_eq!(p.wait_sim_commands(budget).await.len(), budget);
    let status = p.shards[0].status().borrow().clone();
    assert_eq!((status.reconnects, status.state), (0, ShardState::Active));
    assert!(p.sim.observed(|o| o.violations.is_empty()));
    p.stop().await;
}

#[tokio::test]
async fn readyz_flips_when_a_shard_drops_and_status_reports_each_shard() {
    let p = start(sim(2, 0)).await;
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{}{path}", p.control_url)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    // op 9 without resume: the shard waits 1-5 s before identifying again.
    assert!(p
        .sim
        .inject(1, Fault::InvalidateSession { resumable: false }));
    let _ = support::within(
        "shard 1 down",
        p.shards[1]
            .status()
            .wait_for(|s| s.state != ShardState::Active),
    )
    .await;
    let not_ready = get("/readyz").await.unwrap();
    assert_eq!(not_ready.status(), 503);
    let body: serde_json::Value = not_ready.json().await.unwrap();
    assert_eq!(body["not_ready"], serde_json::json!([1]));
    let _ = support::within(
        "shard 1 back",
        p.shards[1]
            .status()
            .wait_for(|s| s.state == ShardState::Active),
    )
    .await;
    assert_eq!(get("/readyz").await.unwrap().status(), 200);

    let shards: serde_json::Value = get("/v1/shards").await.unwrap().json().await.unwrap();
    let shards = shards.as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(shards[0]["state"], "active");
    assert_eq!(shards[0]["endpoint"], "a");
    assert!(shards[0]["last_seq"].as_u64().unwrap() >= 2);
    assert!(shards[1]["session_id"].is_string());
    assert_eq!(shards[1]["queue_depth"], 0);
    p.stop().await;
}

#[tokio::test]
async fn metrics_parse_with_the_prometheus_text_parser() {
    let p = start(sim(2, 30)).await;
    p.wait_delivered(&[]).await;
    let response = reqwest::get(format!("{}/metrics", p.control_url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    // Parsed by the Prometheus project's own Python client; it prints "name value" per sample.
    let parsed = support::python("prometheus_parse.py", text.as_bytes());
    let delivered: f64 = parsed
        .lines()
        .filter(|l| l.starts_with("shardhook_events_delivered_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let expected = p.sim.observed(|o| o.ledger.len()) as f64;
    assert_eq!(delivered, expected, "{parsed}");
    for name in [
        "shardhook_events_received_total",
        "shardhook_delivery_latency_seconds_count",
        "shardhook_queue_depth",
        "shardhook_retries_total",
        "shardhook_spool_bytes",
    ] {
        assert!(parsed.contains(name), "{name} missing:\n{parsed}");
    }
    p.stop().await;
}

#[tokio::test]
async fn an_interaction_is_deferred_at_once_and_a_failed_delivery_edits_the_response() {
    let p = Pipe::start(sim(1, 0), vec![("a", 1.0, Target::Live(vec![]))], |c| {
        c.interactions.auto_defer = true;
        c.interactions.error_message = "the bot is having a moment".into();
        c.batch.max_events = 1;
    })
    .await;
    let _ = support::within(
        "active",
        p.shards[0]
            .status()
            .wait_for(|s| s.state == ShardState::Active),
    )
    .await;
    p.wait_until("READY and guilds delivered", |p| p.arrivals().len() >= 3)
        .await;
    // The endpoint refuses the interaction's batch for good.
    p.receiver(0).script([Reply::Status(400)]);
    let d = r#"{"id":"777","application_id":"1100000000000000001","type":2,"token":"itoken","data":{"name":"ping"}}"#;
    assert!(p.sim.inject(
        0,
        Fault::Dispatch {
            name: "INTERACTION_CREATE".into(),
            d: d.into()
        }
    ));
    let calls = p
        .wait_sim_rest(|calls| calls.iter().any(|c| c.method == "PATCH"))
        .await;
    let defer = calls
        .iter()
        .find(|c| c.path == "/interactions/777/itoken/callback")
        .expect("deferred");
    assert_eq!(defer.body["type"], 5);
    let edit = calls.iter().find(|c| c.method == "PATCH").unwrap();
    assert_eq!(
        edit.path,
        "/webhooks/1100000000000000001/itoken/messages/@original"
    );
    assert_eq!(edit.body["content"], "the bot is having a moment");
    // The handler was told the interaction was deferred.
    let request = p
        .requests()
        .into_iter()
        .map(|(_, q)| q)
        .find(|q| {
            std::str::from_utf8(&q.body)
                .unwrap()
                .contains("INTERACTION_CREATE")
        })
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["batches"][0]["events"][0]["deferred"], true);
    assert_eq!(p.stats.snapshot().requests_dead_lettered, 1);
    assert!(p.stats.defer_quantile(1.0).is_some());
    p.stop().await;
}

/// A pipe whose control API has these limits.
async fn start_with_limits(tweak: impl FnOnce(&mut shardhook::config::ControlConfig)) -> Pipe {
    Pipe::start(sim(1, 0), vec![("a", 1.0, Target::Live(vec![]))], |c| {
        tweak(&mut c.control)
    })
    .await
}

async fn connect(p: &Pipe) -> TcpStream {
    TcpStream::connect(p.control_url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection.
async fn until_closed(what: &str, stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    // A reset is a close too.
    let _ = support::within(what, stream.read_to_end(&mut seen)).await;
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads one answer to `GET /healthz` (whose body is `ok\n`).
async fn healthz_answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    support::within("the /healthz answer", async {
        while !seen.ends_with(b"ok\n") {
            let mut chunk = [0u8; 1024];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&seen).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: router\r\n\r\n";

/// Nothing has come back on `stream` (its request waits for a slot).
fn assert_unanswered(stream: &TcpStream) {
    let mut nothing = [0u8; 64];
    let waiting = stream.try_read(&mut nothing);
    assert!(
        matches!(waiting, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{waiting:?}"
    );
}

/// The answer on `stream` starts `HTTP/1.1 200`.
async fn answered_ok(what: &str, stream: &mut TcpStream) {
    let mut answer = [0u8; 64];
    let n = support::within(what, stream.read(&mut answer))
        .await
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let p = start_with_limits(|c| c.header_read_timeout = Duration::from_millis(200)).await;
    let mut half = connect(&p).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost: rou")
        .await
        .unwrap();
    let answer = until_closed("the half-sent request's connection to close", &mut half).await;
    assert!(!answer.contains("200"), "{answer}");
    // One that sends nothing at all is closed the same way.
    let mut silent = connect(&p).await;
    until_closed("a silent connection to close", &mut silent).await;
    p.stop().await;
}

#[tokio::test]
async fn a_connection_that_stalls_in_its_body_is_closed_when_idle() {
    // The headers arrive in time; the body never does.
    let p = start_with_limits(|c| c.idle_timeout = Duration::from_millis(300)).await;
    let mut stalled = connect(&p).await;
    stalled
        .write_all(
            b"POST /v1/gateway/commands HTTP/1.1\r\nhost: router\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let answer = until_closed("the stalled connection to close", &mut stalled).await;
    assert!(!answer.contains("202"), "{answer}");
    p.stop().await;
}

/// Connects to the control API from `ip` (any address of 127.0.0.0/8 is this machine's).
async fn connect_from(p: &Pipe, ip: [u8; 4]) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(ip), 0).into())
        .unwrap();
    let addr = p.control_url.trim_start_matches("http://").parse().unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test]
async fn past_the_connection_cap_a_request_waits_and_a_probe_is_answered_in_a_reserved_slot() {
    let p = start_with_limits(|c| {
        c.max_connections = 1;
        c.reserved_connections = 1;
    })
    .await;
    let mut first = connect(&p).await;
    first.write_all(HEALTHZ).await.unwrap();
    assert!(healthz_answer(&mut first).await.starts_with("HTTP/1.1 200"));
    // A request that is not a probe, sent before the first's next one, waits for the one slot...
    let mut second = connect(&p).await;
    second
        .write_all(b"GET /v1/shards HTTP/1.1\r\nhost: router\r\n\r\n")
        .await
        .unwrap();
    // ...while a probe is answered at once, in the reserved slot.
    let mut probe = connect(&p).await;
    probe.write_all(HEALTHZ).await.unwrap();
    assert!(healthz_answer(&mut probe).await.starts_with("HTTP/1.1 200"));
    // On that connection, anything but a probe is told to come back.
    probe
        .write_all(b"POST /v1/gateway/commands HTTP/1.1\r\nhost: router\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        .await
        .unwrap();
    let answer = until_closed("the command's answer", &mut probe).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    assert!(answer.contains("control.max_connections"), "{answer}");
    first.write_all(HEALTHZ).await.unwrap();
    assert!(healthz_answer(&mut first).await.starts_with("HTTP/1.1 200"));
    assert_unanswered(&second);
    // The first gives its slot up: the second is served.
    drop(first);
    answered_ok("the waiting request's answer", &mut second).await;
    p.stop().await;
}

/// One peer takes at most `max_connections_per_peer` slots: its next request waits while
/// another peer's is served, and is served once one of its own closes.
#[tokio::test]
async fn one_peer_takes_no_more_than_its_share_of_the_slots() {
    let p = start_with_limits(|c| {
        c.max_connections = 8;
        c.max_connections_per_peer = 2;
    })
    .await;
    let shards = b"GET /v1/shards HTTP/1.1\r\nhost: router\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from(&p, [127, 0, 0, 2]).await;
        stream.write_all(HEALTHZ).await.unwrap();
        assert!(healthz_answer(&mut stream)
            .await
            .starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = connect_from(&p, [127, 0, 0, 2]).await;
    third.write_all(shards).await.unwrap();
    // Another peer is served meanwhile...
    let mut other = connect_from(&p, [127, 0, 0, 3]).await;
    other.write_all(HEALTHZ).await.unwrap();
    assert!(healthz_answer(&mut other).await.starts_with("HTTP/1.1 200"));
    // ...while the third of the first peer's waits for its share.
    assert_unanswered(&third);
    drop(held.pop());
    answered_ok("the third connection's answer", &mut third).await;
    p.stop().await;
}

/// One peer opening connections that send nothing (the flood of issue 33: 900 of them, each
/// reopened when dropped) holds no slot (none is taken before a first byte), each connection
/// for no longer than `first_byte_timeout`; health stays answered for everyone else, at once.
#[tokio::test]
async fn a_flood_of_silent_connections_from_one_peer_leaves_health_answered() {
    let p = start_with_limits(|c| {
        c.max_connections = 16;
        c.max_connections_per_peer = 4;
        c.first_byte_timeout = Duration::from_millis(500);
        c.header_read_timeout = Duration::from_secs(5);
    })
    .await;
    let flooding = tokio_util::sync::CancellationToken::new();
    let mut flood = tokio::task::JoinSet::new();
    let peer = [127, 0, 0, 2];
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..300 {
        let (stop, opened) = (flooding.clone(), opened.clone());
        let addr: std::net::SocketAddr =
            p.control_url.trim_start_matches("http://").parse().unwrap();
        flood.spawn(async move {
            while !stop.is_cancelled() {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket
                    .bind((std::net::Ipv4Addr::from(peer), 0).into())
                    .unwrap();
                let Ok(mut stream) = socket.connect(addr).await else {
                    continue;
                };
                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut sink = Vec::new();
                tokio::select! {
                    _ = stream.read_to_end(&mut sink) => {}
                    () = stop.cancelled() => {}
                }
            }
        });
    }
    // The flood is on: hundreds of connections opened and closed.
    support::within("the flood to start", async {
        while opened.load(std::sync::atomic::Ordering::Relaxed) < 600 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    for _ in 0..3 {
        let started = tokio::time::Instant::now();
        let mut probe = connect_from(&p, [127, 0, 0, 1]).await;
        probe.write_all(HEALTHZ).await.unwrap();
        assert!(healthz_answer(&mut probe).await.starts_with("HTTP/1.1 200"));
        // Not after the flood's connections time out (the backlog's wait, before: the
        // header_read_timeout of 5 s at least, once per 16 of them ahead): at once.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    flooding.cancel();
    flood.shutdown().await;
    p.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_before_its_signature_is_checked() {
    let p = start(sim(1, 0)).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/gateway/commands", p.control_url);
    // Unsigned: refused for its size, not its signature.
    let unsigned = client
        .post(&url)
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 413);
    // Signed, just over the limit.
    let big = format!(
        r#"{{"shard_id":0,"op":3,"d":{{"status":"online","pad":"{}"}}}}"#,
        "x".repeat(shardhook::MAX_BODY_BYTES)
    );
    assert_eq!(post(&p, &big).await.status(), 413);
    p.stop().await;
}
