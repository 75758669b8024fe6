//! Restarts through the real binary: the Discord double and the endpoints live in the test,
//! `shardhook run` is a child process stopped with SIGTERM or killed with SIGKILL, then
//! started again. The double's ledger and the endpoints' logs account for every event.

mod support;

use shardhook_simulator::receiver::Reply;
use support::process::{checkpoints, setup_with, terminate, Setup};

async fn setup(shards: u32, events: u64) -> Setup {
    setup_with(shards, events, 200.0, &["a", "b"], "").await
}

#[tokio::test]
async fn sigterm_then_start_loses_nothing_and_duplicates_nothing() {
    let (shards, events) = (2, 600);
    let s = setup(shards, events).await;
    let mut router = s.start_router();
    s.wait_arrivals("traffic before the restart", |seen| seen.len() > 150)
        .await;
    terminate(&mut router).await;
    assert_eq!(checkpoints(&s.state_dir), shards as usize);
    let files = std::fs::read_dir(s.state_dir.join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(
        files, 1,
        "every shard's checkpoint in one file, one write at a time"
    );
    let before = s.arrivals().len();

    let mut router = s.start_router();
    s.wait_all(shards, events).await;
    terminate(&mut router).await;
    let (lost, duplicated) = s.account();
    assert_eq!(
        (lost, duplicated),
        (0, 0),
        "{before} arrived before the restart"
    );
    s.sim.observed(|o| {
        assert_eq!(
            o.identifies.len(),
            shards as usize,
            "the restart resumed; it did not identify"
        );
        let resumed: Vec<_> = o.resumes.iter().filter(|r| r.accepted).collect();
        assert_eq!(resumed.len(), shards as usize, "{:?}", o.resumes);
        assert!(resumed.iter().all(|r| r.via_resume_url));
        assert!(o.violations.is_empty(), "{:?}", o.violations);
    });
}

#[tokio::test]
async fn kill_9_then_start_loses_nothing() {
    let (shards, events) = (2, 600);
    let s = setup(shards, events).await;
    let mut router = s.start_router();
    s.wait_arrivals("traffic before the crash", |seen| seen.len() > 150)
        .await;
    // Wait for a checkpoint that covers some delivered events, then crash.
    let dir = s.state_dir.to_path_buf();
    s.wait_arrivals("a checkpoint", |_| checkpoints(&dir) == shards as usize)
        .await;
    router.kill().await.unwrap();

    let mut router = s.start_router();
    s.wait_all(shards, events).await;
    terminate(&mut router).await;
    let (lost, duplicated) = s.account();
    assert_eq!(
        lost, 0,
        "nothing lost ({duplicated} delivered twice, which a crash allows)"
    );
    println!("kill -9 restart: 0 lost, {duplicated} duplicated");
    s.sim.observed(|o| {
        assert_eq!(
            o.identifies.len(),
            shards as usize,
            "the restart resumed from the checkpoints"
        );
        assert!(o.violations.is_empty(), "{:?}", o.violations);
    });
}

#[tokio::test]
async fn a_checkpoint_write_that_blocks_stops_no_delivery() {
    let (shards, events) = (1, 300);
    let s = setup(shards, events).await;
    // The checkpoint's temporary file is a FIFO: writing it blocks until something reads it,
    // as a write to a stalled disk would.
    let dir = s.state_dir.join("checkpoints");
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("ids-0-1.json.tmp");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // One runtime worker: were the write on it, nothing else would run until it ended.
    let mut router = s.start_router_with(&[("TOKIO_WORKER_THREADS", "1")]);
    s.wait_all(shards, events).await;
    // Every event arrived while the write was blocked. Now let it through: read the FIFO once
    // (the write then fails, as a FIFO cannot be synced) and remove it, so the next write is
    // a real file.
    let reader = std::thread::spawn(move || {
        let mut opened = std::fs::File::open(&fifo).unwrap();
        std::fs::remove_file(&fifo).unwrap();
        std::io::copy(&mut opened, &mut std::io::sink()).unwrap()
    });
    assert!(
        reader.join().unwrap() > 0,
        "the blocked write was a checkpoint"
    );
    terminate(&mut router).await;
    assert_eq!(checkpoints(&s.state_dir), shards as usize);
    let (lost, duplicated) = s.account();
    assert_eq!((lost, duplicated), (0, 0));
}

/// Every directory and file under `dir`, with its permission bits.
#[cfg(unix)]
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut all = vec![(
        dir.to_owned(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all.extend(modes(&path));
        } else {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            all.push((path, mode));
        }
    }
    all
}

#[cfg(unix)]
#[tokio::test]
async fn state_is_private_whatever_the_umask_and_an_open_state_dir_is_closed_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let (shards, events) = (1, 20);
    let s = setup_with(shards, events, 200.0, &["a"], "").await;
    // Left open by an earlier run: the directory and the config file in it.
    std::fs::set_permissions(&*s.state_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = s.state_dir.join("shardhook.toml");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // READY is refused for good: a dead letter.
    s.receivers[0].script([Reply::Status(400)]);
    let mut router = s.start_router_with_umask("022");
    s.wait_arrivals("all but the dead letter", |seen| {
        seen.len() + 1 == s.sim.observed(|o| o.ledger.len()) && seen.len() as u64 >= events
    })
    .await;
    terminate(&mut router).await;
    let modes = modes(&s.state_dir);
    let names: Vec<String> = modes
        .iter()
        .map(|(p, _)| p.strip_prefix(&*s.state_dir).unwrap().display().to_string())
        .collect();
    for wanted in [
        "dead-letters.jsonl",
        "checkpoints/ids-0-1.json",
        "identify/bucket-0",
    ] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    for (path, mode) in &modes {
        let wanted = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, wanted, "{} is {mode:o}", path.display());
    }
}
