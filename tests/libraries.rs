//! Bot libraries' own REST clients through the proxy, configured only as their documentation
//! says: `rest.auth = "shared-secret"` takes `Authorization: <secret>` (discordeno's
//! `proxy.authorization`) and `Authorization: Bot <secret>` (discord.js's `setToken`), with no
//! signature of ours. The libraries run in Node (`tests/libraries/send.mjs`, packages from the
//! project's `package.json`); the router is `shardhook run`, Discord the simulator.

mod support;

use std::time::Duration;

use shardhook_simulator::{SimConfig, DEFAULT_TOKEN};
use support::process::RestProcess;

/// 48 random-looking bytes: the secret handlers and the router share.
const SECRET: &str = "7kq2x9VbN4mZr8TpW1cY6hJd3sLf0gAeQu5oXiBnCvRt8yKwPz";

fn sim() -> SimConfig {
    SimConfig {
        shards: 1,
        rate: 0.0,
        events_per_shard: Some(0),
        // Discord's create-message bucket: 5 a channel per 5 s; the burst below is 10 a
        // channel, so the router's buckets must hold half of it back.
        rest_route_limit: 5,
        rest_route_window: Duration::from_secs(5),
        ..SimConfig::default()
    }
}

async fn start() -> RestProcess {
    RestProcess::start_with(
        sim(),
        "auth = \"shared-secret\"\nmax_wait = \"60s\"",
        &[("SHARDHOOK_REST_SECRET", SECRET)],
    )
    .await
}

async fn post(r: &RestProcess, authorization: Option<&str>) -> u16 {
    let mut request = support::http()
        .post(format!("{}/api/v10/channels/77/messages", r.rest_url))
        .header("content-type", "application/json")
        .body(r#"{"content":"hi"}"#);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_shared_secret_is_taken_bare_or_as_a_bot_token_and_nothing_else_is() {
    let r = start().await;
    assert_eq!(post(&r, Some(SECRET)).await, 200);
    assert_eq!(post(&r, Some(&format!("Bot {SECRET}"))).await, 200);
    let before = r.sim.observed(|o| o.rest_calls.len());
    assert_eq!(post(&r, Some(&format!("{SECRET}x"))).await, 401);
    assert_eq!(post(&r, Some(&format!("Bot {DEFAULT_TOKEN}"))).await, 401);
    assert_eq!(post(&r, None).await, 401);
    assert_eq!(
        r.sim.observed(|o| o.rest_calls.len()),
        before,
        "a refused request never reaches Discord"
    );
    // Discord saw the router's token, never the secret.
    assert!(r
        .sim
        .observed(|o| o.rest_calls.iter().all(|c| c.authorized)));
    r.stop().await;
}

#[tokio::test]
async fn discord_js_and_discordeno_send_through_the_proxy_as_their_docs_configure_them() {
    let r = start().await;
    let channels = ["301", "302", "303", "304"];
    let per_library = 20;
    let output = tokio::process::Command::new("node")
        .arg("tests/libraries/send.mjs")
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .env("PROXY_API", format!("{}/api", r.rest_url))
        .env("REST_SECRET", SECRET)
        .env("CHANNELS", channels.join(","))
        .env("PER_LIBRARY", per_library.to_string())
        .output();
    let output = support::within("the libraries' burst", output)
        .await
        .expect("node runs (npm ci installs the libraries)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("not the script's summary ({e}): {stdout}\n{stderr}");
    });
    assert_eq!(summary["failed"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["sent"], 2 * per_library);
    let calls = r.sim.observed(|o| o.rest_calls.clone());
    let messages: Vec<_> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path.ends_with("/messages"))
        .collect();
    assert_eq!(
        messages.len(),
        2 * per_library as usize,
        "all delivered, once"
    );
    assert!(
        messages.iter().all(|c| c.status == 200),
        "no 429 from Discord"
    );
    assert!(messages.iter().all(|c| c.authorized), "the router's token");
    for library in ["discord.js", "discordeno"] {
        let sent = messages
            .iter()
            .filter(|c| {
                c.body["content"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(library)
            })
            .count();
        assert_eq!(sent, per_library as usize, "{library}");
    }
    r.stop().await;
}
