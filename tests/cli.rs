//! End-to-end tests of the `shardhook` binary: the demo, `check`, `run` against `simulate`,
//! and the token kept out of every line of output.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

mod support;

use support::pipe::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_shardhook");
const SECRET: &str = "tok.SECRET-never-print-me.0123";
const SIGNING: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// An endpoint section for configs; nothing listens there, and these tests never deliver.
const ENDPOINT: &str = "[[endpoints]]\nname = \"nowhere\"\nurl = \"http://127.0.0.1:9/\"\n[control]\nlisten = \"127.0.0.1:0\"\n";

fn shardhook(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("DISCORD_TOKEN")
        .env_remove("RUST_LOG")
        .env_remove("SHARDHOOK_SIGNING_SECRET")
        .env_remove("SHARDHOOK_ED25519_PRIVATE_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `shardhook simulate` on a free port; returns the child and its api_url.
fn simulate(extra: &[&str]) -> (Child, String) {
    let mut args = vec![
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--token",
        SECRET,
        "--rate",
        "50",
    ];
    args.extend_from_slice(extra);
    let mut child = shardhook(&args).spawn().expect("start simulate");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let api_url = line
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("simulate printed its api_url, got {line:?}"))
        .to_owned();
    (child, api_url)
}

#[test]
fn the_demo_accounts_for_every_event() {
    let out = shardhook(&["demo"]).output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("shards ready:        4/4"), "{text}");
    let verified = text
        .lines()
        .find_map(|l| l.strip_prefix("signatures verified: "))
        .expect("a signatures line");
    let (ok, all) = verified
        .trim_end_matches(" requests")
        .split_once('/')
        .unwrap();
    assert_eq!(ok, all, "{text}");
    assert!(
        text.contains("edge-a=") && text.contains("edge-b="),
        "{text}"
    );
    assert!(
        text.contains("every event arrived exactly once per (shard, seq): yes"),
        "{text}"
    );
    let resumes: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("resumes survived:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a resumes line");
    assert!(resumes >= 1, "{text}");
}

#[test]
fn keygen_prints_a_usable_secret() {
    let out = shardhook(&["keygen"]).output().unwrap();
    assert!(out.status.success());
    let secret = String::from_utf8(out.stdout).unwrap();
    assert!(
        shardhook::SigningKey::parse(secret.trim()).is_ok(),
        "{secret}"
    );
}

#[test]
fn check_names_a_bad_key_and_what_is_allowed() {
    let dir = TempDir::new("cli");
    let path = dir.join("bad.toml");
    // `shardhook check` on `path` with the token and these extra variables.
    let check = |env: &[(&str, &str)]| {
        let mut cmd = shardhook(&["check", "--config", path.to_str().unwrap()]);
        cmd.env("DISCORD_TOKEN", SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), output_text(&out))
    };

    std::fs::write(&path, "[discord]\nshards = { total = 2, ids = \"0..5\" }\n").unwrap();
    let (ok, text) = check(&[]);
    assert!(!ok);
    assert!(
        text.contains("discord.shards") && text.contains("0..2"),
        "{text}"
    );

    std::fs::write(
        &path,
        format!("[discord]\nintents = [\"GUILDS\"]\n{ENDPOINT}"),
    )
    .unwrap();
    let (ok, text) = check(&[("SHARDHOOK_SIGNING_SECRET", SIGNING)]);
    assert!(ok, "{text}");
    assert!(
        text.contains("<redacted>") && text.contains("intents = 1"),
        "{text}"
    );
    assert!(
        !text.contains(SECRET) && !text.contains(&SIGNING[6..]),
        "{text}"
    );

    // Without a signing secret, check says how to make one.
    let (ok, text) = check(&[]);
    assert!(!ok);
    assert!(
        text.contains("SHARDHOOK_SIGNING_SECRET") && text.contains("keygen"),
        "{text}"
    );
}

#[test]
fn check_takes_previous_secrets_as_a_string_and_never_prints_a_secret_in_an_error() {
    let dir = TempDir::new("cli");
    let path = dir.join("shardhook.toml");
    let check = |env: &[(&str, &str)]| {
        let mut cmd = shardhook(&["check", "--config", path.to_str().unwrap()]);
        cmd.env("SHARDHOOK_SIGNING_SECRET", SIGNING);
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        (out.status.success(), output_text(&out))
    };
    std::fs::write(
        &path,
        format!("[discord]\ntoken = \"{SECRET}\"\n{ENDPOINT}"),
    )
    .unwrap();
    // The environment can only give a string; it is read as the list of one key.
    let previous = "whsec_cHJldmlvdXMta2V5LW9mLTMyLWJ5dGVzLi4uLi4=";
    let (ok, text) = check(&[("SHARDHOOK__SIGNING__PREVIOUS_SECRETS", previous)]);
    assert!(ok, "{text}");
    assert!(
        text.contains("previous_secrets = [\"<redacted>\"]"),
        "{text}"
    );
    assert!(!text.contains(&previous[6..]), "{text}");
    // A key that is not one is refused by name, without its value.
    let bad = format!("{previous}!");
    let (ok, text) = check(&[("SHARDHOOK__SIGNING__PREVIOUS_SECRETS", &bad)]);
    assert!(!ok);
    assert!(text.contains("signing.previous_secrets"), "{text}");
    assert!(!text.contains(&previous[6..]), "{text}");
    // A syntax error on the token's line names the line, and does not quote it.
    std::fs::write(
        &path,
        format!("[discord]\ntoken = \"{SECRET}\" oops\n{ENDPOINT}"),
    )
    .unwrap();
    let (ok, text) = check(&[]);
    assert!(!ok);
    assert!(text.contains("line 2"), "{text}");
    assert!(!text.contains(SECRET), "the token leaked:\n{text}");
}

#[test]
fn check_shows_endpoint_urls_without_userinfo_or_query() {
    let dir = TempDir::new("cli");
    let path = dir.join("shardhook.toml");
    std::fs::write(
        &path,
        "[[endpoints]]\nname = \"fn\"\nurl = \"https://bot:pa55word@example.com/hook?code=s3cret\"\n",
    )
    .unwrap();
    let out = shardhook(&["check", "--config", path.to_str().unwrap()])
        .env("DISCORD_TOKEN", SECRET)
        .env("SHARDHOOK_SIGNING_SECRET", SIGNING)
        .output()
        .unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("url = \"https://<redacted>@example.com/hook?<redacted>\""),
        "{text}"
    );
    assert!(
        !text.contains("pa55word") && !text.contains("s3cret"),
        "{text}"
    );
}

#[test]
fn check_shows_each_endpoints_format_and_only_the_public_half_of_the_ed25519_key() {
    // Made by `openssl genpkey -algorithm ed25519`; `openssl pkey -pubout` gave its public half.
    const SEED: &str = "MC4CAQAwBQYDK2VwBCIEIBW2PvcDvCu3bQo61bQHOrdcaF2PwlePKlom7icMFqwH";
    const PUBLIC: &str = "b4064319d931457f907e9a42d93bea262e6499070d5214089755c9268e6366de";
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{SEED}\n-----END PRIVATE KEY-----\n");
    let dir = TempDir::new("cli");
    let path = dir.join("shardhook.toml");
    std::fs::write(
        &path,
        "[[endpoints]]\nname = \"app\"\nurl = \"https://bot.example.com/events\"\nformat = \"carbon\"\n\
         [[endpoints]]\nname = \"fn\"\nurl = \"https://fn.example.com/\"\n",
    )
    .unwrap();
    let check = |env: &[(&str, &str)]| {
        let out = shardhook(&["check", "--config", path.to_str().unwrap()])
            .env("DISCORD_TOKEN", SECRET)
            .env("SHARDHOOK_SIGNING_SECRET", SIGNING)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };

    // A Carbon endpoint without the key: check says how to make one.
    let (ok, text) = check(&[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("endpoints[0].format") && text.contains("shardhook keygen --ed25519"),
        "{text}"
    );

    let (ok, text) = check(&[("SHARDHOOK_ED25519_PRIVATE_KEY", &pem)]);
    assert!(ok, "{text}");
    let formats: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("format = "))
        .collect();
    assert_eq!(
        formats,
        ["format = \"carbon\"", "format = \"shardhook\""],
        "{text}"
    );
    assert!(
        text.contains("ed25519_private_key = \"<redacted>\""),
        "{text}"
    );
    assert!(text.contains(&format!("publicKey): {PUBLIC}")), "{text}");
    assert!(
        !text.contains(&SEED[20..]),
        "the private key is never shown: {text}"
    );
}

#[test]
fn run_exits_nonzero_when_every_shard_is_fatally_closed_and_never_prints_the_token() {
    // The double wants 2 shards; running 1 of 1 gets close 4011 (sharding required).
    let (mut sim, api_url) = simulate(&["--shards", "2", "--heartbeat-interval-ms", "1000"]);
    let dir = TempDir::new("cli");
    let path = dir.join("shardhook.toml");
    std::fs::write(
        &path,
        format!("[discord]\napi_url = \"{api_url}\"\nshards = {{ total = 1 }}\n{ENDPOINT}"),
    )
    .unwrap();
    let out = shardhook(&["run", "--config", path.to_str().unwrap()])
        .current_dir(&*dir)
        .env("DISCORD_TOKEN", SECRET)
        .env("SHARDHOOK_SIGNING_SECRET", SIGNING)
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    sim.kill().unwrap();
    let text = output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("4011") && text.contains("sharding required"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "the token leaked:\n{text}");
    assert!(
        !text.contains(&SIGNING[6..]),
        "the signing secret leaked:\n{text}"
    );
}

/// The token as text and as the hex of its bytes (how tungstenite prints a frame's payload).
fn token_forms(token: &str) -> [String; 2] {
    let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    [token.to_owned(), hex]
}

#[test]
fn a_more_specific_rust_log_for_a_frame_printing_library_cannot_show_the_token() {
    // `tungstenite::protocol=trace` is more specific than any cap on `tungstenite`: before the
    // cap was a filter of its own, it won, and IDENTIFY was logged as text and as hex.
    let (mut sim, api_url) = simulate(&["--shards", "2", "--heartbeat-interval-ms", "1000"]);
    let dir = TempDir::new("cli");
    let path = dir.join("shardhook.toml");
    std::fs::write(
        &path,
        format!("[discord]\napi_url = \"{api_url}\"\nshards = {{ total = 1 }}\n{ENDPOINT}"),
    )
    .unwrap();
    let out = shardhook(&["run", "--config", path.to_str().unwrap()])
        .current_dir(&*dir)
        .env("DISCORD_TOKEN", SECRET)
        .env("SHARDHOOK_SIGNING_SECRET", SIGNING)
        .env("RUST_LOG", "info,tungstenite::protocol=trace")
        .output()
        .unwrap();
    sim.kill().unwrap();
    let text = output_text(&out);
    // IDENTIFY went out: the double closed with 4011 in answer to it.
    assert!(text.contains("4011"), "{text}");
    for form in token_forms(SECRET) {
        assert!(!text.contains(&form), "the token leaked as {form}:\n{text}");
    }
}

/// `Max open files` of a running process: (soft, hard), as /proc reports them.
#[cfg(target_os = "linux")]
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_owned();
    let mut numbers = line["Max open files".len()..].split_whitespace();
    let soft = numbers.next().unwrap().to_owned();
    (soft, numbers.next().unwrap().to_owned())
}

#[cfg(target_os = "linux")]
#[test]
fn run_raises_the_open_file_soft_limit_to_the_hard_one() {
    let (mut sim, api_url) = simulate(&["--heartbeat-interval-ms", "1000"]);
    let dir = TempDir::new("cli");
    let path = dir.join("shardhook.toml");
    std::fs::write(
        &path,
        format!("[discord]\napi_url = \"{api_url}\"\n{ENDPOINT}"),
    )
    .unwrap();
    // A soft limit far under the hard one, as many systems set it (1024).
    let mut run = Command::new("sh")
        .args([
            "-c",
            "ulimit -Sn 128 && exec \"$0\" \"$@\"",
            BIN,
            "run",
            "--config",
        ])
        .arg(&path)
        .current_dir(&*dir)
        .env_remove("RUST_LOG")
        .env("DISCORD_TOKEN", SECRET)
        .env("SHARDHOOK_SIGNING_SECRET", SIGNING)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(run.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("control API listening") {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "exited early:\n{seen}"
        );
        seen.push_str(&line);
    }
    let (soft, hard) = open_file_limits(run.id());
    run.kill().unwrap();
    run.wait().unwrap();
    sim.kill().unwrap();
    assert_ne!(
        hard, "128",
        "the hard limit is too low for this test to say anything"
    );
    assert_eq!(soft, hard, "the soft limit was raised to the hard one");
}

#[test]
fn run_refuses_a_wrong_token_clearly_and_never_prints_it() {
    let (mut sim, api_url) = simulate(&[]);
    let dir = TempDir::new("cli");
    std::fs::write(dir.join("shardhook.toml"), ENDPOINT).unwrap();
    let out = shardhook(&["run"])
        .env("DISCORD_TOKEN", "Bot wrong.SECRET-token")
        .env("SHARDHOOK_SIGNING_SECRET", SIGNING)
        .env("SHARDHOOK__DISCORD__API_URL", &api_url)
        .env("RUST_LOG", "trace")
        .current_dir(&*dir)
        .output()
        .unwrap();
    sim.kill().unwrap();
    let text = output_text(&out);
    assert!(!out.status.success());
    assert!(text.contains("refused the bot token"), "{text}");
    assert!(!text.contains("wrong.SECRET-token"), "{text}");
}

/// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` set for something else never see a request
/// for Discord (each carries the bot token): without `discord.proxy`, the router talks to
/// Discord directly.
#[tokio::test]
async fn proxy_variables_never_get_a_request_for_discord() {
    // Silent: a request sent there never gets an answer.
    let (proxy, offered) = support::silent_listener("127.0.0.1").await;
    let proxy_url = format!("http://{proxy}");
    let (shards, events) = (2, 10);
    let setup =
        support::process::setup_with(shards, events, 50.0, &["a"], "[rest]\nenabled = true\n")
            .await;
    let env = [
        ("HTTP_PROXY", proxy_url.as_str()),
        ("http_proxy", proxy_url.as_str()),
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("ALL_PROXY", proxy_url.as_str()),
        ("NO_PROXY", ""),
    ];
    let mut router = setup.start_router_with(&env);
    setup.wait_all(shards, events).await;
    support::process::terminate(&mut router).await;
    assert_eq!(
        offered.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a request for Discord went to the proxy"
    );
}

/// At `RUST_LOG=trace`, with REST calls on webhook and interaction routes through the proxy
/// and a Lambda endpoint signing with AWS credentials from the environment's chain: no line
/// carries the bot token, a webhook or interaction token, the signing key, or the AWS key id
/// and secret (twilight's limiter logs paths at debug, the AWS SDK key ids at trace).
#[tokio::test]
async fn at_trace_no_token_key_or_key_id_reaches_the_log() {
    const WEBHOOK_TOKEN: &str = "wHtOkEn-SeCrEt-4f9a";
    const INTERACTION_TOKEN: &str = "iNtErAcTiOn-SeCrEt-77c1";
    const KEY_ID: &str = "AKIDSHARDHOOKLOGTEST1";
    const AWS_SECRET: &str = "sEcReTaCcEsSkEy/shardhook+logtest";
    let (shards, events) = (2, 10);
    let setup =
        support::process::setup_with(shards, events, 50.0, &["a"], "[rest]\nenabled = true\n")
            .await;
    // The last endpoint signs with SigV4 as a Lambda function URL's would.
    let mut toml = std::fs::read_to_string(setup.config_path()).unwrap();
    toml.push_str("auth = \"aws-iam\"\nregion = \"us-east-1\"\n");
    std::fs::write(setup.config_path(), toml).unwrap();
    let control = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let listen = format!("\"{control}\"");
    let log = setup.state_dir.join("trace.log");
    let env = [
        ("RUST_LOG", "trace"),
        ("SHARDHOOK__CONTROL__LISTEN", listen.as_str()),
        ("AWS_ACCESS_KEY_ID", KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
    ];
    let mut router = setup.start_router_logged(&env, &log);
    setup.wait_all(shards, events).await;
    let signer = shardhook::Signer::new(
        shardhook::SigningKey::parse(setup.secret()).unwrap(),
        vec![],
    );
    for (method, target) in [
        (
            "PATCH",
            format!("/api/v10/webhooks/42/{WEBHOOK_TOKEN}/messages/@original"),
        ),
        (
            "POST",
            format!("/api/v10/interactions/77/{INTERACTION_TOKEN}/callback"),
        ),
    ] {
        let body = r#"{"type":4,"data":{"content":"x"},"content":"x"}"#;
        let (id, at) = (format!("msg_{}", fastrand::u64(..)), shardhook::unix_now());
        let signature = signer.sign(&id, at, format!("{method} {target}\n{body}").as_bytes());
        let answer = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{control}{target}"),
            )
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", at.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            answer.status().is_success(),
            "{target}: {}",
            answer.status()
        );
    }
    support::process::terminate(&mut router).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("DEBUG") || l.contains("TRACE")),
        "RUST_LOG=trace took effect:\n{text}"
    );
    let secret_key = setup.secret().trim_start_matches("whsec_").to_owned();
    let mut forbidden: Vec<(&str, String)> = vec![
        ("webhook token", WEBHOOK_TOKEN.to_owned()),
        ("interaction token", INTERACTION_TOKEN.to_owned()),
        ("AWS key id", KEY_ID.to_owned()),
        ("AWS secret", AWS_SECRET.to_owned()),
        ("signing key", secret_key),
    ];
    for form in token_forms(shardhook_simulator::DEFAULT_TOKEN) {
        forbidden.push(("bot token", form));
    }
    for (what, value) in forbidden {
        if let Some(line) = text.lines().find(|l| l.contains(&value)) {
            panic!("the {what} reached the log: {line}");
        }
    }
}

/// `deploy/systemd/shardhook.service` passes `systemd-analyze verify` without a warning (its
/// `ExecStart` pointed at the binary under test), runs the router as `shardhook run`, and
/// waits longer on stop than `delivery.shutdown_timeout`, so SIGTERM's handover and delivery
/// finish before systemd kills it.
#[test]
fn the_systemd_unit_verifies_and_outwaits_the_shutdown() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/systemd/shardhook.service"
    ))
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/shardhook run --config "),
        "{exec}"
    );
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.strip_suffix('s'))
        .expect("a TimeoutStopSec in seconds")
        .parse()
        .unwrap();
    let shutdown = shardhook::Config::default().delivery.shutdown_timeout;
    assert!(
        stop > shutdown.as_secs() + 5,
        "{stop} s against {shutdown:?}"
    );
    for key in [
        "DynamicUser=yes",
        "StateDirectory=shardhook",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == key), "{key}");
    }
    let dir = std::env::temp_dir().join(format!("shardhook-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shardhook.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/shardhook", env!("CARGO_BIN_EXE_shardhook")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (Debian's systemd package)");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "systemd-analyze warned: {said}");
}

/// `shardhook health`: exit 0 when the control API answers `/healthz`, 1 with the reason when
/// nothing answers (a container's health check, which has no HTTP client of its own).
#[tokio::test]
async fn health_is_zero_for_a_running_router_and_says_why_not_otherwise() {
    let r = support::process::RestProcess::start(
        shardhook_simulator::SimConfig {
            rate: 0.0,
            ..shardhook_simulator::SimConfig::default()
        },
        "",
    )
    .await;
    let health = |url: String| async move {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shardhook"))
            .args(["health", "--url", &url])
            .output()
            .await
            .unwrap()
    };
    let up = health(format!("{}/healthz", r.control_url)).await;
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/healthz", free.local_addr().unwrap());
    drop(free);
    let down = health(closed.clone()).await;
    assert_eq!(down.status.code(), Some(1));
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(
        said.contains(&closed) && said.contains("did not answer"),
        "{said}"
    );
    r.stop().await;
}
