//! End-to-end tests of the gateway engine against the Discord double, through the library's
//! public API: one test per path a long-lived connection goes through.

mod support;

use std::time::Duration;

use shardhook::config::Compression;
use shardhook::{Router, ShardState, StartError};
use shardhook_simulator::{Fault, SimConfig, IDENTIFY_INTERVAL, IDENTIFY_TOLERANCE};
use support::{config_for, simulator, within, Harness};
use tokio::time::Instant;

/// A small steady double: one shard, quick heartbeats, a bounded amount of traffic.
fn sim(events: u64) -> SimConfig {
    SimConfig {
        shards: 1,
        rate: 200.0,
        events_per_shard: Some(events),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    }
}

/// Waits for a resume after `fault` and checks it continued from the last seq received.
async fn resumes_after(h: &Harness, fault: Fault) {
    h.all_active().await;
    h.wait_all_delivered(&[]).await;
    let last = h.shards[0].last_seq();
    assert!(h.sim.inject(0, fault.clone()), "the shard has a connection");
    h.wait_status(0, "a resume", |s| s.resumes == 1).await;
    let resume = h
        .sim
        .observed(|o| o.resumes.last().cloned())
        .expect("a RESUME was sent");
    assert!(resume.accepted, "{resume:?}");
    assert_eq!(
        resume.seq, last,
        "RESUME carries the last seq received ({fault:?})"
    );
    assert!(
        resume.via_resume_url,
        "RESUME goes to resume_gateway_url ({fault:?})"
    );
    assert_eq!(h.status(0).sessions, 1, "no new session for {fault:?}");
}

#[tokio::test]
async fn identify_pacing_keeps_one_identify_per_bucket_per_five_seconds() {
    let config = SimConfig {
        shards: 4,
        max_concurrency: 2,
        rate: 0.0,
        ..sim(0)
    };
    let h = Harness::start(config, |_| {}).await;
    h.all_active().await;
    let identifies = h.sim.observed(|o| o.identifies.clone());
    assert_eq!(identifies.len(), 4);
    assert!(identifies.iter().all(|i| i.accepted), "{identifies:?}");
    for bucket in 0..2 {
        let times: Vec<Instant> = identifies
            .iter()
            .filter(|i| i.shard % 2 == bucket)
            .map(|i| i.at)
            .collect();
        assert_eq!(times.len(), 2);
        let gap = times[1] - times[0];
        assert!(
            gap + IDENTIFY_TOLERANCE >= IDENTIFY_INTERVAL,
            "bucket {bucket}: {gap:?}"
        );
    }
    // The two buckets do not wait for each other: each bucket's first IDENTIFY came at once.
    let first = identifies.iter().map(|i| i.at).min().unwrap();
    let firsts: Vec<_> = (0..2)
        .map(|b| identifies.iter().find(|i| i.shard % 2 == b).unwrap().at - first)
        .collect();
    assert!(
        firsts.iter().all(|d| *d < IDENTIFY_INTERVAL / 2),
        "{firsts:?}"
    );
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_zombie_connection_is_closed_and_resumed_with_the_last_seq() {
    let h = Harness::start(sim(30), |_| {}).await;
    resumes_after(&h, Fault::StopHeartbeatAcks).await;
    assert!(h.status(0).last_disconnect.unwrap().contains("zombie"));
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn op_7_resumes_on_the_resume_gateway_url() {
    let h = Harness::start(sim(30), |_| {}).await;
    resumes_after(&h, Fault::Reconnect).await;
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_gateway_that_never_sends_hello_is_left_and_connected_again() {
    let stalls_once = SimConfig {
        withhold_hello: 1,
        ..sim(30)
    };
    let h = Harness::start(stalls_once, |c| {
        c.discord.connect_timeout = Duration::from_millis(300);
    })
    .await;
    h.all_active().await;
    let disconnect = h
        .status(0)
        .last_disconnect
        .expect("the stalled connection ended");
    assert!(disconnect.contains("no HELLO in time"), "{disconnect}");
    assert_eq!(h.sim.observed(|o| o.connections), 2);
    h.wait_all_delivered(&[]).await;
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

/// Starts 400 events of traffic, drops shard 0's connection mid-stream, and checks that the
/// shard resumed and every event arrived exactly once. Returns the harness for more checks.
async fn drop_mid_traffic_and_resume(
    tweak: impl FnOnce(&mut shardhook::config::Config),
) -> Harness {
    let h = Harness::start(sim(400), tweak).await;
    h.all_active().await;
    h.wait_received("some traffic", |got| got.len() > 50).await;
    assert!(h.sim.inject(0, Fault::Drop));
    h.wait_status(0, "a resume", |s| s.resumes == 1).await;
    h.wait_all_delivered(&[]).await;
    assert_eq!(h.assert_exactly_once(&[]), 0, "nothing lost");
    h
}

#[tokio::test]
async fn a_dropped_connection_resumes_and_missed_events_are_replayed() {
    let h = drop_mid_traffic_and_resume(|_| {}).await;
    h.stop().await.unwrap();
}

#[tokio::test]
async fn op_9_resumable_resumes() {
    let h = Harness::start(sim(30), |_| {}).await;
    resumes_after(&h, Fault::InvalidateSession { resumable: true }).await;
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn op_9_not_resumable_identifies_a_new_session_after_a_delay() {
    let h = Harness::start(sim(60), |_| {}).await;
    h.all_active().await;
    h.wait_received("some traffic", |got| got.len() > 10).await;
    let injected = Instant::now();
    assert!(h
        .sim
        .inject(0, Fault::InvalidateSession { resumable: false }));
    h.wait_status(0, "a second session", |s| {
        s.sessions == 2 && s.state == ShardState::Active
    })
    .await;
    let identifies = h.sim.observed(|o| o.identifies.clone());
    assert_eq!(identifies.len(), 2, "{identifies:?}");
    assert!(
        identifies[1].at - injected >= Duration::from_secs(1),
        "waited 1-5 s after op 9"
    );
    assert!(
        identifies.iter().all(|i| i.accepted),
        "the 5 s bucket rule held: {identifies:?}"
    );
    assert_eq!(h.status(0).resumes, 0);
    h.wait_all_delivered(&[]).await;
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn fatal_close_codes_stop_the_shard_and_the_router() {
    for code in [4004, 4010, 4011, 4012, 4013, 4014] {
        let h = Harness::start(sim(5), |_| {}).await;
        h.all_active().await;
        assert!(h.sim.inject(0, Fault::Close(code)));
        let status = h
            .wait_status(0, "a fatal close", |s| {
                matches!(s.state, ShardState::FatallyClosed { .. })
            })
            .await;
        assert_eq!(status.state, ShardState::FatallyClosed { code });
        let err = h.ended().await.expect_err("no shard is left");
        let text = err.to_string();
        assert!(
            text.contains(&code.to_string()) && text.contains("shard 0"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn non_fatal_close_codes_reconnect() {
    // 4000 keeps the session: resume.
    let h = Harness::start(sim(20), |_| {}).await;
    resumes_after(&h, Fault::Close(4000)).await;
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();

    // 4009 ends the session: identify anew (after the bucket's 5 s).
    let h = Harness::start(sim(20), |_| {}).await;
    h.all_active().await;
    assert!(h.sim.inject(0, Fault::Close(4009)));
    h.wait_status(0, "a new session", |s| {
        s.sessions == 2 && s.state == ShardState::Active
    })
    .await;
    assert_eq!(h.status(0).resumes, 0);
    h.wait_all_delivered(&[]).await;
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_split_across_frames_is_reassembled() {
    let h = Harness::start(sim(40), asking(Compression::ZlibStream)).await;
    h.all_active().await;
    h.wait_received("some traffic", |got| got.len() > 5).await;
    assert!(h.sim.inject(0, Fault::SplitNext(7)));
    assert!(
        h.sim.inject(0, Fault::Oversize(20_000)),
        "a big message to split"
    );
    h.wait_all_delivered(&[]).await;
    let got = h.received.lock().unwrap().clone();
    assert!(
        got.iter().any(|g| g.name == "OVERSIZE_TEST"),
        "the split message arrived"
    );
    assert_eq!(h.status(0).reconnects, 0, "no reconnect needed");
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_frame_that_does_not_inflate_reconnects_and_resumes() {
    let h = Harness::start(sim(30), asking(Compression::ZlibStream)).await;
    resumes_after(&h, Fault::CorruptFrame).await;
    assert!(h
        .status(0)
        .last_disconnect
        .unwrap()
        .contains("does not inflate"));
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_json_reconnects_and_resumes() {
    let h = Harness::start(sim(30), |_| {}).await;
    resumes_after(&h, Fault::InvalidJson).await;
    assert!(h
        .status(0)
        .last_disconnect
        .unwrap()
        .contains("not valid JSON"));
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

/// A 200 KB message against a 64 KiB limit: skipped, counted, the connection kept, and every
/// other event delivered once. `compression` picks the transport.
async fn an_oversize_message_is_skipped(compression: Compression) -> Harness {
    let h = Harness::start(sim(60), |c| {
        c.discord.compression = compression;
        c.discord.max_message_size = 64 << 10;
    })
    .await;
    h.all_active().await;
    h.wait_received("some traffic", |got| got.len() > 5).await;
    assert!(h.sim.inject(0, Fault::Oversize(200_000)));
    h.wait_status(0, "the oversize skip", |s| s.oversize_skipped == 1)
        .await;
    h.wait_all_delivered(&["OVERSIZE_TEST"]).await;
    let status = h.status(0);
    assert_eq!((status.reconnects, status.state), (0, ShardState::Active));
    let got = h.received.lock().unwrap().clone();
    assert!(got.iter().all(|g| g.name != "OVERSIZE_TEST"));
    h.assert_exactly_once(&["OVERSIZE_TEST"]);
    h
}

#[tokio::test]
async fn an_oversize_message_is_skipped_loudly_and_the_shard_stays_connected() {
    let h = an_oversize_message_is_skipped(Compression::ZlibStream).await;
    h.stop().await.unwrap();
}

#[tokio::test]
async fn commands_reach_the_shards_socket_under_the_send_limit() {
    let h = Harness::start(sim(0), |_| {}).await;
    h.all_active().await;
    for n in 0..30 {
        let command = format!(
            r#"{{"op":3,"d":{{"since":null,"activities":[],"status":"online","afk":false,"n":{n}}}}}"#
        );
        h.shards[0].send(command).await.unwrap();
    }
    let commands = h
        .wait_sim("30 commands", |o| {
            (o.commands.len() == 30).then(|| o.commands.clone())
        })
        .await;
    assert!(commands
        .iter()
        .all(|(shard, c)| *shard == 0 && c["op"] == 3));
    let order: Vec<u64> = commands
        .iter()
        .map(|(_, c)| c["d"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        order,
        (0..30).collect::<Vec<_>>(),
        "commands keep their order"
    );
    h.assert_exactly_once(&[]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_slice_of_shards_runs_with_the_given_total() {
    let config = SimConfig {
        shards: 4,
        max_concurrency: 4,
        guilds: 8,
        ..sim(10)
    };
    let h = Harness::start(config, |c| {
        c.discord.shards = shardhook::config::ShardsConfig::Explicit {
            total: 4,
            ids: 2..4,
        };
    })
    .await;
    assert_eq!(h.shards.iter().map(|s| s.id()).collect::<Vec<_>>(), [2, 3]);
    within("both shards active", async {
        for shard in &h.shards {
            let _ = shard
                .status()
                .wait_for(|s| s.state == ShardState::Active)
                .await;
        }
    })
    .await;
    let mut shards: Vec<u32> = h
        .sim
        .observed(|o| o.identifies.iter().map(|i| i.shard).collect());
    shards.sort();
    assert_eq!(shards, [2, 3]);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn too_few_identifies_left_is_refused_before_connecting() {
    let sim = simulator(SimConfig {
        shards: 4,
        session_start_limit: 3,
        ..sim(0)
    })
    .await;
    let (sink, _events) = tokio::sync::mpsc::channel(8);
    let err = within("start", Router::start(&config_for(&sim), sink))
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            StartError::IdentifyBudget {
                need: 4,
                remaining: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("not enough identifies"), "{err}");
    assert_eq!(sim.observed(|o| o.connections), 0);
}

#[tokio::test]
async fn a_refused_token_is_a_clear_error_without_the_token() {
    let sim = simulator(sim(0)).await;
    let mut config = config_for(&sim);
    config.discord.token = shardhook::Token::new("wrong-but-secret-token");
    let (sink, _events) = tokio::sync::mpsc::channel(8);
    let err = within("start", Router::start(&config, sink))
        .await
        .err()
        .expect("refused");
    let text = format!("{err} {err:?}");
    assert!(text.contains("401"), "{text}");
    assert!(!text.contains("wrong-but-secret-token"), "{text}");
}

/// A router asking Discord for `compression`.
fn asking(compression: Compression) -> impl FnOnce(&mut shardhook::config::Config) {
    move |config| config.discord.compression = compression
}

/// Every connection the double accepted asked for `compression` (`none` leaves `compress=`
/// out), and there were `n`.
fn assert_all_asked(h: &Harness, n: usize, compression: Compression) {
    let want = (compression != Compression::None).then(|| compression.as_str().to_owned());
    let compress = h.sim.observed(|o| o.compress.clone());
    assert_eq!(compress.len(), n, "{compress:?}");
    assert!(compress.iter().all(|c| *c == want), "{compress:?}");
}

/// A connection dropped mid-traffic with `compression`: resumed, every event once.
async fn every_event_once_across_a_resume(compression: Compression) {
    let h = drop_mid_traffic_and_resume(asking(compression)).await;
    assert_eq!(h.status(0).sessions, 1, "resumed, not identified anew");
    assert_all_asked(&h, 2, compression);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn zlib_stream_delivers_every_event_once_across_a_resume() {
    every_event_once_across_a_resume(Compression::ZlibStream).await;
}

#[tokio::test]
async fn uncompressed_delivers_every_event_once_across_a_resume() {
    every_event_once_across_a_resume(Compression::None).await;
}

#[tokio::test]
async fn zstd_stream_delivers_every_event_once_across_a_resume() {
    every_event_once_across_a_resume(Compression::ZstdStream).await;
}

/// Uncompressed, an oversize message is read whole and then skipped: were it refused by the
/// WebSocket's own bound the connection would end, and every resume would replay it.
#[tokio::test]
async fn an_uncompressed_oversize_message_is_skipped_and_the_connection_kept() {
    let h = an_oversize_message_is_skipped(Compression::None).await;
    assert_all_asked(&h, 1, Compression::None);
    h.stop().await.unwrap();
}

/// Discord sends text unless asked to compress: a binary frame is not a message the router can
/// read, so it reconnects, resumes, and says why.
#[tokio::test]
async fn a_binary_frame_on_an_uncompressed_connection_reconnects_and_resumes() {
    let h = Harness::start(sim(30), asking(Compression::None)).await;
    resumes_after(&h, Fault::CorruptFrame).await;
    let reason = h.status(0).last_disconnect.unwrap();
    assert!(
        reason.contains("binary frame") && reason.contains("\"none\""),
        "{reason}"
    );
    h.assert_exactly_once(&[]);
    assert_all_asked(&h, 2, Compression::None);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_zstd_frame_that_does_not_decompress_reconnects_and_resumes() {
    let h = Harness::start(sim(30), asking(Compression::ZstdStream)).await;
    resumes_after(&h, Fault::CorruptFrame).await;
    let reason = h.status(0).last_disconnect.unwrap();
    assert!(
        reason.contains("does not inflate") && reason.contains("zstd-stream"),
        "{reason}"
    );
    h.assert_exactly_once(&[]);
    assert_all_asked(&h, 2, Compression::ZstdStream);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_zstd_oversize_message_is_skipped_and_the_stream_goes_on() {
    let h = an_oversize_message_is_skipped(Compression::ZstdStream).await;
    assert_all_asked(&h, 1, Compression::ZstdStream);
    h.stop().await.unwrap();
}

#[tokio::test]
async fn a_checkpoints_unreachable_resume_url_gives_way_to_the_gateway_url() {
    let sim = simulator(sim(5)).await;
    let config = config_for(&sim);
    let _state = support::pipe::TempDir::adopt(config.state.dir.clone());
    let run = |config: shardhook::Config| async move {
        let (sink, mut events) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let router = Router::start(&config, sink)
            .await
            .expect("the router starts");
        let shard = router.shards()[0].clone();
        within(
            "the shard to be active",
            shard.status().wait_for(|s| s.state == ShardState::Active),
        )
        .await
        .unwrap();
        (router, shard)
    };
    // A first run makes a session, then stops resumably.
    let (router, shard) = run(config.clone()).await;
    let session = shard.status().borrow().session_id.clone().unwrap();
    let seq = shard.last_seq();
    router.run_until(async {}).await.unwrap();
    // The checkpoint it would have left, naming a resume URL that refuses connections (a host
    // gone away, a state directory copied from elsewhere).
    let checkpoints = config.state.dir.join("checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    let record = serde_json::json!({"checkpoints": [{
        "shard_id": 0, "shard_count": 1, "session_id": &*session,
        "resume_url": "ws://127.0.0.1:1", "seq": seq,
        "bot": shardhook::Token::new(shardhook_simulator::DEFAULT_TOKEN).unwrap().bot(),
        "written_at": shardhook::unix_now(),
    }]});
    std::fs::write(checkpoints.join("ids-0-1.json"), record.to_string()).unwrap();
    // The second run tries the resume URL, gives up on it, and resumes through the gateway URL.
    let (_router, shard) = run(config).await;
    let status = shard.status().borrow().clone();
    assert_eq!(
        (status.sessions, status.resumes),
        (0, 1),
        "resumed, not identified"
    );
    assert_eq!(
        status.reconnect_causes.get("connect_failed"),
        Some(&3),
        "three tries at the resume URL"
    );
    let resume = sim.observed(|o| o.resumes.last().cloned()).unwrap();
    assert!(resume.accepted && !resume.via_resume_url, "{resume:?}");
    assert_eq!(resume.seq, seq);
    assert_eq!(
        sim.observed(|o| o.identifies.len()),
        1,
        "only the first run identified"
    );
}
