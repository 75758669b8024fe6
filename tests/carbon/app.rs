//! The Carbon app of tests/carbon.rs: tests/carbon/app.mjs under Node, started on a free
//! loopback port, its report (every request Carbon answered, every message its listener heard)
//! read into an `AppLog` the test can wait on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use shardhook_simulator::events::APPLICATION_ID;
use shardhook_simulator::{Observed, Simulator, DEFAULT_TOKEN};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

use crate::support::within;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("router/ sits in the repository")
        .to_path_buf()
}

/// A POST to the app's `/events`, as the app reported it.
#[derive(Debug, Clone, Deserialize)]
pub struct AppRequest {
    /// What Carbon answered.
    pub status: u16,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    pub event_id: Option<String>,
    pub attempt: Option<String>,
    pub body: String,
}

/// A MESSAGE_CREATE as the app's listener saw it, parsed by Carbon.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppMessage {
    pub id: String,
    pub channel_id: String,
    pub guild_id: String,
    pub content: String,
    pub nonce: String,
    pub author_id: String,
    pub client_id: String,
}

/// One line of the app's report.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Listening(String),
    Request(AppRequest),
    Message(AppMessage),
}

#[derive(Default)]
pub struct AppLog {
    pub requests: Vec<AppRequest>,
    pub messages: Vec<AppMessage>,
}

/// tests/carbon/app.mjs under Node: a Carbon app verifying with `public_key`.
pub struct CarbonApp {
    child: Child,
    /// Held open while the app should run (`Child::wait` would close it).
    stdin: Option<tokio::process::ChildStdin>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: Arc<Mutex<AppLog>>,
    changed: watch::Receiver<u64>,
}

impl CarbonApp {
    pub async fn start(public_key: &str) -> CarbonApp {
        let root = repo_root();
        let carbon = root.join("node_modules/@buape/carbon/package.json");
        assert!(
            carbon.exists(),
            "{} is missing: run `npm ci` at the repository root first",
            carbon.display()
        );
        let mut child = Command::new("node")
            .arg(root.join("tests/carbon/app.mjs"))
            .env("CARBON_PUBLIC_KEY", public_key)
            .env("CARBON_CLIENT_ID", APPLICATION_ID.to_string())
            .env("DISCORD_TOKEN", DEFAULT_TOKEN)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node (Node 20) with tests/carbon/app.mjs");
        let stdin = child.stdin.take();
        let log = Arc::new(Mutex::new(AppLog::default()));
        let (changes, changed) = watch::channel(0u64);
        let (ready, listening) = oneshot::channel();
        read_report(child.stdout.take().unwrap(), log.clone(), changes, ready);
        let url = tokio::select! {
            url = within("the Carbon app to listen", listening) => {
                url.expect("the Carbon app ended before it listened (see its stderr above)")
            }
            status = child.wait() => panic!("the Carbon app exited before it listened: {status:?}"),
        };
        CarbonApp {
            child,
            stdin,
            url,
            log,
            changed,
        }
    }

    pub fn log<T>(&self, f: impl FnOnce(&AppLog) -> T) -> T {
        f(&self.log.lock().unwrap())
    }

    /// Waits until `done` holds of the app's log and the double's record, woken by either.
    pub async fn wait_with(
        &self,
        sim: &Simulator,
        what: &str,
        mut done: impl FnMut(&AppLog, &Observed) -> bool,
    ) {
        let mut app_changes = self.changed.clone();
        let mut sim_changes = sim.changes();
        within(what, async {
            while !sim.observed(|o| done(&self.log.lock().unwrap(), o)) {
                tokio::select! {
                    _ = app_changes.changed() => {}
                    _ = sim_changes.changed() => {}
                }
            }
        })
        .await
    }

    /// Closing its stdin ends the app.
    pub async fn stop(mut self) {
        drop(self.stdin.take());
        let status = within("the Carbon app to exit", self.child.wait())
            .await
            .unwrap();
        assert!(status.success(), "the Carbon app exited cleanly: {status}");
    }
}

/// Reads the app's report into `log`, bumping `changes` after each line; the first
/// `listening` line's URL goes to `ready`.
fn read_report(
    stdout: impl AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<AppLog>>,
    changes: watch::Sender<u64>,
    ready: oneshot::Sender<String>,
) {
    tokio::spawn(async move {
        let mut ready = Some(ready);
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Line>(&line) {
                Ok(Line::Listening(url)) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(url);
                    }
                }
                Ok(Line::Request(request)) => log.lock().unwrap().requests.push(request),
                Ok(Line::Message(message)) => log.lock().unwrap().messages.push(message),
                Err(_) => eprintln!("carbon app: {line}"),
            }
            changes.send_modify(|n| *n += 1);
        }
    });
}

/// POSTs `body` to the app's `/events` with these signature headers; Carbon's status.
pub async fn post_event(app: &CarbonApp, timestamp: &str, signature: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/events", app.url))
        .header("content-type", "application/json")
        .header("x-signature-timestamp", timestamp)
        .header("x-signature-ed25519", signature)
        .body(body.to_owned())
        .send()
        .await
        .expect("the Carbon app answers")
        .status()
        .as_u16()
}
