//! The chaos test: many shards with steady traffic and random gateway faults, endpoints that
//! fail about 30% of requests (5xx, 429, too slow) and one that is down for a stretch, and the
//! router killed with SIGKILL twice and restarted. The double's ledger and the endpoints' logs
//! then account for every event. `SHARDHOOK_CHAOS_SECS` sets the traffic's length
//! (`scripts/soak MINUTES` runs it long).

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use shardhook_simulator::Fault;
use support::process::{setup_with, terminate};
use tokio::time::Instant;

const SHARDS: u32 = 8;
const RATE: f64 = 25.0;

fn random_fault() -> (Fault, &'static str) {
    match fastrand::u8(0..10) {
        0..=2 => (Fault::Drop, "dropped connection"),
        3..=4 => (Fault::Reconnect, "op 7"),
        5..=6 => (Fault::StopHeartbeatAcks, "zombie connection"),
        7..=8 => (
            Fault::InvalidateSession { resumable: true },
            "op 9, resumable",
        ),
        _ => (
            Fault::InvalidateSession { resumable: false },
            "op 9, not resumable",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_nothing_discord_would_not() {
    let secs: u64 = std::env::var("SHARDHOOK_CHAOS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let events = (RATE * secs as f64) as u64;
    let delivery = "max_attempts = 1000\nmax_elapsed = \"1h\"\ntimeout = \"500ms\"\ncircuit_failures = 3\ncircuit_cooldown = \"1s\"\n";
    let s = setup_with(SHARDS, events, RATE, &["a", "b", "c"], delivery).await;
    for r in &s.receivers {
        r.set_fault_rate(0.3);
    }
    let started = Instant::now();
    let mut router = s.start_router();
    let mut faults: HashMap<&str, u32> = HashMap::new();
    let mut kills = 0;
    let mut down = false;
    let traffic_done = |s: &support::process::Setup| {
        s.sim.observed(|o| {
            o.ledger
                .iter()
                .filter(|e| e.event == "MESSAGE_CREATE")
                .count() as u64
        }) >= SHARDS as u64 * events
    };
    // The script: a fault every 700 ms; endpoint c down from 30% to 55% of the run; SIGKILL
    // and restart at 35% and 70%.
    let mut tick = tokio::time::interval(Duration::from_millis(700));
    while !traffic_done(&s) {
        tick.tick().await;
        let at = started.elapsed().as_secs_f64() / secs as f64;
        let (fault, what) = random_fault();
        if s.sim.inject(fastrand::u32(0..SHARDS), fault) {
            *faults.entry(what).or_default() += 1;
        }
        if !down && (0.30..0.55).contains(&at) {
            s.receivers[2].set_down(true);
            down = true;
        } else if down && at >= 0.55 {
            s.receivers[2].set_down(false);
            down = false;
        }
        if (kills == 0 && at >= 0.35) || (kills == 1 && at >= 0.70) {
            router.kill().await.unwrap();
            kills += 1;
            router = s.start_router();
        }
        assert!(
            started.elapsed() < Duration::from_secs(secs * 3 + 60),
            "the traffic never finished"
        );
    }
    s.receivers[2].set_down(false);
    for r in &s.receivers {
        r.set_fault_rate(0.0);
    }
    // Everything Discord would not lose arrives; then a graceful stop.
    s.wait_arrivals("every event not lost to an invalidated session", |seen| {
        s.sim.observed(|o| {
            o.ledger.iter().all(|e| {
                o.invalidated.contains(&e.session)
                    || seen.contains_key(&(e.shard, e.session.clone(), e.seq))
            })
        })
    })
    .await;
    terminate(&mut router).await;

    // The accounting.
    let seen = s.arrivals();
    let (sent, lost_to_discord, lost, invalidated_sessions, resumes) = s.sim.observed(|o| {
        let mut lost_to_discord = 0;
        let mut lost = Vec::new();
        for e in &o.ledger {
            if seen.contains_key(&(e.shard, e.session.clone(), e.seq)) {
                continue;
            }
            if o.invalidated.contains(&e.session) {
                lost_to_discord += 1;
            } else {
                lost.push(e.clone());
            }
        }
        assert!(
            o.violations.is_empty(),
            "the router broke Discord's rules: {:?}",
            o.violations
        );
        let resumes = o.resumes.iter().filter(|r| r.accepted).count();
        (
            o.ledger.len(),
            lost_to_discord,
            lost,
            o.invalidated.len(),
            resumes,
        )
    });
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    // Per-shard order, apart from redelivered duplicates: first arrivals come in seq order.
    let mut arrivals = Vec::new();
    for r in &s.receivers {
        r.seen(|x| arrivals.extend(x.events.iter().cloned()));
    }
    arrivals.sort_by_key(|a| a.at);
    let mut first_seen: HashSet<(u32, String, u64)> = HashSet::new();
    let mut last: HashMap<(u32, String), u64> = HashMap::new();
    let mut out_of_order = 0;
    for a in &arrivals {
        if !first_seen.insert((a.shard, a.session.clone(), a.seq)) {
            continue;
        }
        let prev = last
            .insert((a.shard, a.session.clone()), a.seq)
            .unwrap_or(0);
        if a.seq < prev {
            out_of_order += 1;
        }
    }
    let dead_letters = std::fs::read_to_string(s.state_dir.join("dead-letters.jsonl"))
        .map_or(0, |t| t.lines().count());
    println!(
        "chaos over {secs} s: {sent} events sent on {SHARDS} shards; {} delivered at least once, {duplicates} duplicate deliveries, \
         {lost_to_discord} lost to {invalidated_sessions} invalidated session(s) as Discord would lose them, {} lost otherwise; \
         {resumes} resumes, {kills} SIGKILL restarts, faults {faults:?}, {dead_letters} dead letters, {out_of_order} out of order",
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost outside invalidated sessions: {:?}",
        &lost[..lost.len().min(10)]
    );
    assert_eq!(out_of_order, 0, "per-shard order");
    assert_eq!(dead_letters, 0, "nothing needed dead-lettering");
    assert_eq!(kills, 2);
    assert!(resumes > 0);
}
