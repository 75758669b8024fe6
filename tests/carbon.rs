//! Endpoints with `format = "carbon"`, end to end: Discord's webhook events, one per request,
//! signed with Ed25519, received by a real Carbon app from npm (`@buape/carbon`, as
//! package-lock.json pins it, served by Node 20: tests/carbon/app.mjs), whose own verification
//! must accept them and whose listeners must see every MESSAGE_CREATE with its data. The
//! signatures are also checked with libsodium (PyNaCl, tests/ed25519_verify.py), a verifier that
//! shares no code with either side; and a Carbon endpoint and a shardhook endpoint in one config
//! each get their own format.
//!
//! Needs Node 20 with the repository's npm packages (`npm ci`) and the Python peers in `.venv`:
//! `scripts/test` sets up both.

#[path = "carbon/app.rs"]
mod app;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use app::{post_event, AppLog, AppRequest, CarbonApp};
use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::Signer as _;
use shardhook::config::{EndpointConfig, EndpointFormat, SigningConfig};
use shardhook::{Ed25519Key, SigningKey};
use shardhook_simulator::events::{shard_of, snowflake, APPLICATION_ID};
use shardhook_simulator::receiver::Receiver;
use shardhook_simulator::{SimConfig, Simulator, DEFAULT_TOKEN};
use support::pipe::TempDir;
use support::process::terminate;
use support::{config_for, python, within};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The author of every message the double makes.
const AUTHOR: &str = "1100000000000000003";

async fn loopback() -> TcpListener {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

fn unix_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// (shard, seq) of a Carbon request's event id (`msg_{shard}_{session}_{seq}_{seq}`).
fn shard_and_seq(event_id: &str) -> (u32, u64) {
    let parts: Vec<&str> = event_id.split('_').collect();
    assert_eq!(parts.len(), 5, "{event_id}");
    assert_eq!(
        (parts[0], parts[3]),
        ("msg", parts[4]),
        "one event: {event_id}"
    );
    (parts[1].parse().unwrap(), parts[3].parse().unwrap())
}

/// libsodium's verdict on each (timestamp, body, hex signature) under `public_key`.
fn libsodium_verdicts(public_key: &str, signed: &[(String, Vec<u8>, String)]) -> Vec<bool> {
    let mut input = String::new();
    for (timestamp, body, signature) in signed {
        let item = serde_json::json!({
            "public_key": public_key,
            "timestamp": timestamp,
            "body": base64::engine::general_purpose::STANDARD.encode(body),
            "signature": signature,
        });
        input.push_str(&format!("{item}\n"));
    }
    let out = python("ed25519_verify.py", input.as_bytes());
    let verdicts: Vec<bool> = out.lines().map(|l| l == "valid").collect();
    assert_eq!(verdicts.len(), signed.len(), "{out}");
    verdicts
}

/// Hex of bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Carbon envelope of `body`, checked: version 1, webhook type 1 (event), the simulated
/// bot's application id, an ISO 8601 timestamp in UTC. Returns (event type, data).
fn carbon_event(body: &[u8]) -> (String, serde_json::Value) {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
    assert_eq!(v["version"], 1, "{v}");
    assert_eq!(v["type"], 1, "{v}");
    assert_eq!(v["application_id"], APPLICATION_ID.to_string(), "{v}");
    let timestamp = v["event"]["timestamp"].as_str().unwrap();
    assert!(
        timestamp.len() == 24 && timestamp.ends_with('Z') && timestamp.as_bytes()[10] == b'T',
        "{timestamp}"
    );
    (
        v["event"]["type"].as_str().unwrap().to_owned(),
        v["event"]["data"].clone(),
    )
}

/// `shards` shards, all identified at once, each sending `events` events at 50 a second.
fn traffic(shards: u32, events: u64) -> SimConfig {
    SimConfig {
        shards,
        max_concurrency: shards,
        guilds: shards * 2,
        rate: 50.0,
        events_per_shard: Some(events),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carbon_app_from_npm_verifies_every_event_and_its_listener_sees_every_message() {
    const SHARDS: u32 = 2;
    const EVENTS: u64 = 12;
    let started_ms = unix_millis();
    let (pem, public_key) = Ed25519Key::generate();
    let app = CarbonApp::start(&public_key).await;
    let sim = Simulator::start(
        loopback().await,
        SimConfig {
            ping_every: 0,
            ..traffic(SHARDS, EVENTS)
        },
    )
    .unwrap();

    // `shardhook run` as a user runs it: the format in the config file, the key in the
    // environment with its line breaks written `\n`, as an environment variable often has it.
    let dir = TempDir::new("carbon");
    let config = dir.join("shardhook.toml");
    std::fs::write(
        &config,
        format!(
            "[discord]\napi_url = \"{}\"\n[control]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n\
             [delivery]\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\
             [[endpoints]]\nname = \"carbon-app\"\nurl = \"{}/events\"\nformat = \"carbon\"\n",
            sim.api_url(),
            dir.join("state").display(),
            app.url
        ),
    )
    .unwrap();
    let mut router = Command::new(env!("CARGO_BIN_EXE_shardhook"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("DISCORD_TOKEN", DEFAULT_TOKEN)
        .env("SHARDHOOK_SIGNING_SECRET", SigningKey::generate())
        .env(
            "SHARDHOOK_ED25519_PRIVATE_KEY",
            pem.trim_end().replace('\n', "\\n"),
        )
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start shardhook run");
    let router_log = Arc::new(Mutex::new(String::new()));
    {
        let (log, stderr) = (router_log.clone(), router.stderr.take().unwrap());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("shardhook: {line}");
                log.lock().unwrap().push_str(&line);
            }
        });
    }

    // Every event the double made answered 2xx by Carbon, every message heard by the listener.
    let accepted_ids = |log: &AppLog| -> HashSet<String> {
        log.requests
            .iter()
            .filter(|r| r.status == 204)
            .filter_map(|r| r.event_id.clone())
            .collect()
    };
    app.wait_with(
        &sim,
        "every event accepted and every message heard",
        |log, o| {
            // (Or until Carbon refuses one: the checks below then say which.)
            let refused = log
                .requests
                .iter()
                .any(|r| r.status != 204 && r.status != 429);
            let traffic = o.ledger.iter().filter(|e| e.event == "MESSAGE_CREATE");
            refused
                || traffic.count() as u64 == SHARDS as u64 * EVENTS
                    && accepted_ids(log).len() == o.ledger.len()
                    && log.messages.len() as u64 == SHARDS as u64 * EVENTS
        },
    )
    .await;
    terminate(&mut router).await;
    let ended_ms = unix_millis();

    let (requests, messages) = app.log(|l| (l.requests.clone(), l.messages.clone()));
    // Carbon's verification accepted them all: it answers 401 to a request it refuses.
    for r in &requests {
        assert!(
            r.status == 204 || r.status == 429,
            "Carbon answered {}: {r:?}",
            r.status
        );
    }
    // The app's queue filled once at least; each event Carbon refused with 429 came again,
    // the same body under the same event id, its attempt counted up, until it was taken.
    assert!(
        requests.iter().any(|r| r.status == 429),
        "the app's queue was full at least once"
    );
    let mut by_event: BTreeMap<String, Vec<&AppRequest>> = BTreeMap::new();
    for r in &requests {
        by_event
            .entry(r.event_id.clone().expect("an event id"))
            .or_default()
            .push(r);
    }
    for (id, attempts) in &by_event {
        for (n, r) in attempts.iter().enumerate() {
            assert_eq!(r.attempt, Some((n + 1).to_string()), "{id}: {attempts:?}");
            assert_eq!(
                r.body, attempts[0].body,
                "{id}: the same body on every attempt"
            );
            let last = n + 1 == attempts.len();
            assert_eq!(r.status, if last { 204 } else { 429 }, "{id}: {attempts:?}");
            // Unix milliseconds, as Carbon's forwarder sends.
            let ms: u128 = r.timestamp.as_deref().unwrap().parse().unwrap();
            assert!((started_ms..=ended_ms).contains(&ms), "{id}: {ms}");
        }
    }
    // One request per event, and every event of the double's ledger among them, by name.
    let ledger: HashMap<(u32, u64), String> = sim.observed(|o| {
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        o.ledger
            .iter()
            .map(|e| ((e.shard, e.seq), e.event.clone()))
            .collect()
    });
    assert_eq!(by_event.len(), ledger.len(), "one event id per event");
    for (id, attempts) in &by_event {
        let (name, _) = carbon_event(attempts[0].body.as_bytes());
        assert_eq!(ledger.get(&shard_and_seq(id)), Some(&name), "{id}");
    }

    // The listener saw each MESSAGE_CREATE once, with its data, in each shard's order.
    let mut contents: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for m in &messages {
        let guild: u64 = m.guild_id.parse().unwrap();
        let nonce: u64 = m.nonce.parse().unwrap();
        assert_eq!(m.id, snowflake(nonce).to_string(), "{m:?}");
        assert_eq!(m.channel_id, (guild + 1).to_string(), "{m:?}");
        assert_eq!(m.author_id, AUTHOR, "{m:?}");
        assert_eq!(m.client_id, APPLICATION_ID.to_string(), "{m:?}");
        contents
            .entry(shard_of(guild, SHARDS))
            .or_default()
            .push(m.content.clone());
    }
    let expected: Vec<String> = (1..=EVENTS)
        .map(|n| format!("hello from the simulator, message {n}"))
        .collect();
    for shard in 0..SHARDS {
        assert_eq!(contents.get(&shard), Some(&expected), "shard {shard}");
    }

    // libsodium agrees with Carbon on every request it took.
    let signed: Vec<(String, Vec<u8>, String)> = requests
        .iter()
        .map(|r| {
            (
                r.timestamp.clone().unwrap(),
                r.body.clone().into_bytes(),
                r.signature.clone().unwrap(),
            )
        })
        .collect();
    assert!(libsodium_verdicts(&public_key, &signed)
        .iter()
        .all(|valid| *valid));

    // Tampered requests are refused by Carbon (401), the intact one taken again.
    let original = requests
        .iter()
        .find(|r| r.status == 204 && r.body.contains("\"MESSAGE_CREATE\""))
        .unwrap()
        .clone();
    let (timestamp, signature) = (original.timestamp.unwrap(), original.signature.unwrap());
    let forged = original
        .body
        .replace("hello from the simulator", "hello from an impostor");
    assert_ne!(forged, original.body);
    let later = (timestamp.parse::<u64>().unwrap() + 1).to_string();
    let stranger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let strangers = hex(&stranger
        .sign(format!("{timestamp}{forged}").as_bytes())
        .to_bytes());
    assert_eq!(post_event(&app, &timestamp, &signature, &forged).await, 401);
    assert_eq!(
        post_event(&app, &later, &signature, &original.body).await,
        401
    );
    assert_eq!(post_event(&app, &timestamp, &strangers, &forged).await, 401);
    assert_eq!(
        libsodium_verdicts(
            &public_key,
            &[(timestamp.clone(), forged.into_bytes(), signature.clone())]
        ),
        [false]
    );
    assert_eq!(
        post_event(&app, &timestamp, &signature, &original.body).await,
        204
    );
    // Carbon's listeners run one MESSAGE_CREATE at a time, in order: once the intact one is
    // heard, nothing forged can still be on its way.
    app.wait_with(&sim, "the intact request's message", |log, _| {
        log.messages.len() == messages.len() + 1
    })
    .await;
    app.log(|l| {
        assert!(l.messages.iter().all(|m| !m.content.contains("impostor")));
        assert_eq!(l.requests.iter().filter(|r| r.status == 401).count(), 3);
    });

    let log = router_log.lock().unwrap().clone();
    let seed = pem.lines().nth(1).unwrap();
    assert!(!log.contains(seed), "the router never logs its private key");
    assert!(
        log.contains("1100000000000000001"),
        "the router logged the application id"
    );
    app.stop().await;
}

/// An endpoint that records every request's headers and body and answers 204.
#[derive(Default)]
struct Capture {
    seen: Mutex<Vec<(http::HeaderMap, Bytes)>>,
    changed: Option<watch::Sender<u64>>,
}

async fn capture() -> (String, Arc<Capture>, watch::Receiver<u64>) {
    async fn record(
        axum::extract::State(capture): axum::extract::State<Arc<Capture>>,
        headers: http::HeaderMap,
        body: Bytes,
    ) -> http::StatusCode {
        capture.seen.lock().unwrap().push((headers, body));
        if let Some(changed) = &capture.changed {
            changed.send_modify(|n| *n += 1);
        }
        http::StatusCode::NO_CONTENT
    }
    let (changed, changes) = watch::channel(0);
    let capture = Arc::new(Capture {
        seen: Mutex::default(),
        changed: Some(changed),
    });
    let listener = loopback().await;
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route("/", axum::routing::post(record))
        .with_state(capture.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, capture, changes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carbon_endpoint_and_a_shardhook_endpoint_in_one_config_each_get_their_own_format() {
    const SHARDS: u32 = 4;
    const EVENTS: u64 = 8;
    let sim = Simulator::start(loopback().await, traffic(SHARDS, EVENTS)).unwrap();
    let secret = SigningKey::generate();
    let hooks = Receiver::start(loopback().await, "hooks", &secret).unwrap();
    let (carbon_url, carbon, mut carbon_changes) = capture().await;
    let (pem, public_key) = Ed25519Key::generate();

    let mut config = config_for(&sim);
    config.signing = SigningConfig {
        secret: Some(SigningKey::parse(&secret).unwrap()),
        previous_secrets: vec![],
        control_secret: None,
        ed25519_private_key: Some(Ed25519Key::parse(&pem).unwrap()),
    };
    config.endpoints = vec![
        EndpointConfig::new("hooks", hooks.url()),
        EndpointConfig {
            format: EndpointFormat::Carbon,
            ..EndpointConfig::new("carbon", carbon_url)
        },
    ];
    // Batches of several events where the shardhook endpoint may make them.
    config.batch.linger = Duration::from_millis(20);
    let _state = TempDir::adopt(config.state.dir.clone());
    // Started as `shardhook run` starts a router, on a free control port.
    config.control.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let stop = CancellationToken::new();
    let app = within(
        "the router to start",
        shardhook::app::App::start(config.clone(), stop.clone(), Default::default()),
    )
    .await
    .expect("the router starts");
    let stats = app.stats();
    let running = tokio::spawn(app.run());

    // Who got what: (shard, seq) of every event at each endpoint.
    let at_hooks = || -> Vec<(u32, u64)> {
        hooks.seen(|s| s.events.iter().map(|a| (a.shard, a.seq)).collect())
    };
    let at_carbon = || -> Vec<(u32, u64)> {
        let seen = carbon.seen.lock().unwrap();
        seen.iter()
            .map(|(headers, _)| {
                shard_and_seq(headers["x-carbon-forwarder-event-id"].to_str().unwrap())
            })
            .collect()
    };
    let mut hooks_changes = hooks.changes();
    let mut sim_changes = sim.changes();
    within("every event at one endpoint or the other", async {
        loop {
            let delivered = at_hooks().len() + at_carbon().len();
            let done = sim.observed(|o| {
                o.ledger
                    .iter()
                    .filter(|e| e.event == "MESSAGE_CREATE")
                    .count() as u64
                    == SHARDS as u64 * EVENTS
                    && delivered >= o.ledger.len()
            });
            if done {
                return;
            }
            tokio::select! {
                _ = hooks_changes.changed() => {}
                _ = carbon_changes.changed() => {}
                _ = sim_changes.changed() => {}
            }
        }
    })
    .await;
    stop.cancel();
    within("the router to stop and delivery to drain", running)
        .await
        .unwrap()
        .expect("no shard stopped for good");

    // Each shard's events went to its home endpoint alone, each event once; both endpoints
    // are the home of some shard.
    let (hooks_events, carbon_events) = (at_hooks(), at_carbon());
    let ledger: HashSet<(u32, u64)> =
        sim.observed(|o| o.ledger.iter().map(|e| (e.shard, e.seq)).collect());
    let mut all: Vec<(u32, u64)> = hooks_events.iter().chain(&carbon_events).copied().collect();
    all.sort_unstable();
    let unique: HashSet<(u32, u64)> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "no event twice");
    assert_eq!(unique, ledger, "every event of the ledger, and no other");
    let hooks_shards: HashSet<u32> = hooks_events.iter().map(|(s, _)| *s).collect();
    let carbon_shards: HashSet<u32> = carbon_events.iter().map(|(s, _)| *s).collect();
    assert!(
        hooks_shards.is_disjoint(&carbon_shards),
        "{hooks_shards:?} {carbon_shards:?}"
    );
    assert!(
        !hooks_shards.is_empty() && !carbon_shards.is_empty(),
        "each endpoint is some shard's home: {hooks_shards:?} {carbon_shards:?}"
    );

    // The shardhook endpoint: batches under Standard Webhooks, which the receiver verified.
    hooks.seen(|s| {
        assert!(!s.requests.is_empty());
        for r in &s.requests {
            assert!(r.verified && r.status == 204, "{r:?}");
            let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
            assert!(names.contains(&"webhook-signature"), "{names:?}");
            assert!(!names.iter().any(|n| n.starts_with("x-")), "{names:?}");
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let events: usize = body["batches"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["events"].as_array().unwrap().len())
                .sum();
            assert_eq!(events, r.events);
        }
    });

    // The Carbon endpoint: one event per request, Discord's envelope, signed with Ed25519
    // over the timestamp and body, which libsodium verifies.
    let seen = carbon.seen.lock().unwrap().clone();
    let mut signed = Vec::new();
    for (headers, body) in &seen {
        let header = |name: &str| headers[name].to_str().unwrap().to_owned();
        assert_eq!(header("x-carbon-forwarder-attempt"), "1");
        assert_eq!(header("content-type"), "application/json");
        assert!(headers.get("webhook-id").is_none(), "{headers:?}");
        let (name, data) = carbon_event(body);
        let (shard, seq) = shard_and_seq(&header("x-carbon-forwarder-event-id"));
        let expected = sim.observed(|o| {
            o.ledger
                .iter()
                .find(|e| (e.shard, e.seq) == (shard, seq))
                .map(|e| e.event.clone())
        });
        assert_eq!(Some(name.clone()), expected);
        if name == "MESSAGE_CREATE" {
            assert_eq!(data["author"]["id"], AUTHOR);
        }
        signed.push((
            header("x-signature-timestamp"),
            body.to_vec(),
            header("x-signature-ed25519"),
        ));
    }
    assert!(libsodium_verdicts(&public_key, &signed)
        .iter()
        .all(|valid| *valid));
    // And libsodium is not agreeing with everything: a changed byte is refused.
    let (timestamp, mut body, signature) = signed[0].clone();
    *body.last_mut().unwrap() = b' ';
    assert_eq!(
        libsodium_verdicts(&public_key, &[(timestamp, body, signature)]),
        [false]
    );

    let stats = stats.snapshot();
    assert_eq!(stats.events_delivered, ledger.len() as u64, "{stats:?}");
    assert_eq!(stats.events_dead_lettered, 0, "{stats:?}");
}

#[test]
fn keygen_prints_an_ed25519_pair_that_node_reads_as_a_pair() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardhook"))
        .args(["keygen", "--ed25519"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let (pem, public) = text
        .split_once("-----END PRIVATE KEY-----\n")
        .expect("a PEM private key first");
    let pem = format!("{pem}-----END PRIVATE KEY-----\n");
    let public = public.trim().rsplit(' ').next().unwrap();
    assert_eq!(public.len(), 64, "{text}");
    // Node reads it as Carbon's own forwarder reads its key, and finds the same public half.
    let node = std::process::Command::new("node")
        .args([
            "-e",
            "const c = require('node:crypto'); const k = c.createPrivateKey(process.env.KEY); \
             process.stdout.write(c.createPublicKey(k).export({format: 'der', type: 'spki'}).subarray(-32).toString('hex'))",
        ])
        .env("KEY", &pem)
        .output()
        .expect("run node");
    assert!(
        node.status.success(),
        "{}",
        String::from_utf8_lossy(&node.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&node.stdout), public);
}
