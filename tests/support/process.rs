//! The router as a child process (`shardhook run`) against the double and verifying endpoints
//! that live in the test, for restart and chaos tests, with accounting against the ledger; and
//! with the REST proxy on (`RestProcess`), for the REST tests only a process can make.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::select_all;
use shardhook::SigningKey;
use shardhook_simulator::receiver::Receiver;
use shardhook_simulator::{SimConfig, Simulator, DEFAULT_TOKEN};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use super::pipe::TempDir;
use super::within;
use tokio::io::{AsyncBufReadExt, BufReader};

pub struct Setup {
    pub sim: Simulator,
    pub receivers: Vec<Receiver>,
    secret: String,
    pub state_dir: TempDir,
    config_path: PathBuf,
}

async fn loopback() -> TcpListener {
    TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

/// The double (`shards` shards, `rate` events/s each, `events` per shard in all), `endpoints`
/// verifying receivers, and a config file for `shardhook run`; `extra` is appended to it
/// right after the `[delivery]` table (more delivery keys, then any further tables).
pub async fn setup_with(
    shards: u32,
    events: u64,
    rate: f64,
    endpoints: &[&str],
    extra: &str,
) -> Setup {
    setup_sim(traffic(shards, events, rate), endpoints, extra).await
}

/// The double's config `setup_with` uses: `shards` shards all in their own identify bucket,
/// `rate` events/s each, `events` per shard in all, heartbeats every second.
pub fn traffic(shards: u32, events: u64, rate: f64) -> SimConfig {
    SimConfig {
        shards,
        max_concurrency: shards,
        guilds: shards * 2,
        rate,
        events_per_shard: Some(events),
        heartbeat_interval: Duration::from_millis(1000),
        ..SimConfig::default()
    }
}

/// `setup_with` on a double configured as `sim` says.
pub async fn setup_sim(sim: SimConfig, endpoints: &[&str], extra: &str) -> Setup {
    let sim = Simulator::start(loopback().await, sim).unwrap();
    let secret = SigningKey::generate();
    let mut receivers = Vec::new();
    for name in endpoints {
        receivers.push(Receiver::start(loopback().await, name, &secret).unwrap());
    }
    let state_dir = TempDir::new("restart");
    let mut toml = format!(
        "[discord]\napi_url = \"{}\"\n[control]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\ncheckpoint_interval = \"100ms\"\n[delivery]\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n",
        sim.api_url(),
        state_dir.display()
    );
    toml.push_str(extra);
    for r in &receivers {
        toml.push_str(&format!(
            "[[endpoints]]\nname = \"{}\"\nurl = \"{}\"\n",
            r.name(),
            r.url()
        ));
    }
    let config_path = state_dir.join("shardhook.toml");
    std::fs::write(&config_path, toml).unwrap();
    Setup {
        sim,
        receivers,
        secret,
        state_dir,
        config_path,
    }
}

impl Setup {
    /// The signing secret the routers run with.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The config file the routers run with.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn start_router(&self) -> Child {
        self.start_router_with(&[])
    }

    /// `shardhook run` with `env` set as well.
    pub fn start_router_with(&self, env: &[(&str, &str)]) -> Child {
        self.spawn(Command::new(env!("CARGO_BIN_EXE_shardhook")), env)
    }

    /// `shardhook run` started by a shell that sets `umask` first.
    pub fn start_router_with_umask(&self, umask: &str) -> Child {
        let mut shell = Command::new("sh");
        shell.args([
            "-c",
            &format!("umask {umask} && exec \"$0\" \"$@\""),
            env!("CARGO_BIN_EXE_shardhook"),
        ]);
        self.spawn(shell, &[])
    }

    /// `shardhook run` with `env` set as well, its log (at info) written to `log`.
    pub fn start_router_logged(&self, env: &[(&str, &str)], log: &Path) -> Child {
        let file = std::fs::File::create(log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardhook"));
        child.stderr(file);
        self.spawn_with_stderr(child, env, false)
    }

    fn spawn(&self, command: Command, env: &[(&str, &str)]) -> Child {
        self.spawn_with_stderr(command, env, true)
    }

    fn spawn_with_stderr(
        &self,
        mut command: Command,
        env: &[(&str, &str)],
        inherit: bool,
    ) -> Child {
        if inherit {
            command.stderr(std::process::Stdio::inherit());
        }
        // Logging at info unless the caller asks for another level.
        command.env("RUST_LOG", "info");
        command
            .args(["run", "--config", self.config_path.to_str().unwrap()])
            .env("DISCORD_TOKEN", DEFAULT_TOKEN)
            .env("SHARDHOOK_SIGNING_SECRET", &self.secret)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start shardhook run")
    }

    /// Every event each endpoint answered 2xx, keyed by (shard, session, seq), with counts.
    pub fn arrivals(&self) -> HashMap<(u32, String, u64), u32> {
        let mut seen = HashMap::new();
        for r in &self.receivers {
            r.seen(|s| {
                for a in &s.events {
                    *seen.entry((a.shard, a.session.clone(), a.seq)).or_default() += 1;
                }
            });
        }
        seen
    }

    pub async fn wait_arrivals(
        &self,
        what: &str,
        mut f: impl FnMut(&HashMap<(u32, String, u64), u32>) -> bool,
    ) {
        let mut changes: Vec<_> = self.receivers.iter().map(|r| r.changes()).collect();
        let mut sim_changes = self.sim.changes();
        within(what, async {
            loop {
                if f(&self.arrivals()) {
                    return;
                }
                let endpoint_changed =
                    select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
                tokio::select! {
                    _ = endpoint_changed => {}
                    _ = sim_changes.changed() => {}
                }
            }
        })
        .await
    }

    /// Waits until the double's traffic is done and every ledger event arrived at least once.
    pub async fn wait_all(&self, shards: u32, events: u64) {
        self.wait_arrivals("every event", |seen| {
            self.sim.observed(|o| {
                let traffic = o
                    .ledger
                    .iter()
                    .filter(|e| e.event == "MESSAGE_CREATE")
                    .count() as u64;
                traffic == shards as u64 * events
                    && o.ledger
                        .iter()
                        .all(|e| seen.contains_key(&(e.shard, e.session.clone(), e.seq)))
            })
        })
        .await
    }

    /// (lost, duplicated) against the ledger; lost excludes nothing: no session is invalidated.
    pub fn account(&self) -> (usize, usize) {
        let seen = self.arrivals();
        let (lost, invalidated) = self.sim.observed(|o| {
            let lost = o
                .ledger
                .iter()
                .filter(|e| !seen.contains_key(&(e.shard, e.session.clone(), e.seq)))
                .count();
            (lost, o.invalidated.len())
        });
        assert_eq!(invalidated, 0, "no session was invalidated");
        let duplicated = seen.values().filter(|n| **n > 1).count();
        (lost, duplicated)
    }
}

/// How many shards have a checkpoint: the records in the checkpoint files (one file per
/// process, `{"checkpoints": [...]}`).
pub fn checkpoints(dir: &Path) -> usize {
    let Ok(files) = std::fs::read_dir(dir.join("checkpoints")) else {
        return 0;
    };
    files
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .filter_map(|f| std::fs::read(f.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .map(|file| file["checkpoints"].as_array().map_or(0, Vec::len))
        .sum()
}

/// Sends SIGTERM and waits for a clean exit.
pub async fn terminate(child: &mut Child) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = within("shardhook to exit on SIGTERM", child.wait())
        .await
        .unwrap();
    assert!(exit.success(), "a clean exit: {exit}");
}

/// The router as a child process (`shardhook run` with `[rest] enabled = true`), for what only
/// a process shows: its own memory, and the listeners its config file names.
pub struct RestProcess {
    pub sim: Simulator,
    pub child: Child,
    /// The control API, `http://127.0.0.1:PORT`.
    pub control_url: String,
    /// Where the REST proxy is served: `rest.listen` when set, else the control API.
    pub rest_url: String,
    pub secret: String,
    _receiver: Receiver,
    _dir: TempDir,
}

impl RestProcess {
    /// Starts the double and `shardhook run` against it; `rest` is appended to the `[rest]`
    /// table. Returns once the router has said where it listens.
    pub async fn start(sim: SimConfig, rest: &str) -> RestProcess {
        RestProcess::start_with(sim, rest, &[]).await
    }

    /// Like `start`, with more environment for the router (`SHARDHOOK_REST_SECRET`...).
    pub async fn start_with(sim: SimConfig, rest: &str, env: &[(&str, &str)]) -> RestProcess {
        let sim = super::simulator(sim).await;
        let secret = SigningKey::generate();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver::start(listener, "a", &secret).unwrap();
        let dir = TempDir::new("rest");
        let config = format!(
            "[discord]\napi_url = \"{}\"\n[control]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"{}\"\n[rest]\nenabled = true\n{rest}\n[[endpoints]]\nname = \"a\"\nurl = \"{}\"\n",
            sim.api_url(),
            dir.join("state").display(),
            receiver.url()
        );
        let path = dir.join("shardhook.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardhook"))
            .args(["run", "--config", path.to_str().unwrap()])
            .env("DISCORD_TOKEN", DEFAULT_TOKEN)
            .env("SHARDHOOK_SIGNING_SECRET", &secret)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start shardhook run");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let separate = !rest.is_empty() && rest.contains("listen");
        let (mut control, mut proxy) = (None, None);
        within("the router to say where it listens", async {
            while control.is_none() || (separate && proxy.is_none()) {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("shardhook run exited before it listened");
                eprintln!("{line}");
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .map(str::to_owned);
                if line.contains("control API listening") {
                    control = addr;
                } else if line.contains("REST proxy listening") {
                    proxy = addr;
                }
            }
        })
        .await;
        // The router keeps logging: its lines go on to the test's output, and never fill the
        // pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
            }
        });
        let control_url = format!("http://{}", control.unwrap());
        let rest_url = proxy.map_or(control_url.clone(), |a| format!("http://{a}"));
        RestProcess {
            sim,
            child,
            control_url,
            rest_url,
            secret,
            _receiver: receiver,
            _dir: dir,
        }
    }

    /// The router's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib * 1024
    }

    pub async fn stop(mut self) {
        self.child.start_kill().unwrap();
        within("shardhook run to exit", self.child.wait())
            .await
            .unwrap();
    }
}
