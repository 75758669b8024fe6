//! The `format = "carbon"` request: Discord's application webhook event, one dispatch per
//! request, signed with Ed25519, as `@buape/carbon`'s gateway forwarder sends it and a Carbon
//! app's `/events` route verifies it.
//!
//! Owns the body (`{"version":1,"application_id":..,"type":1,"event":{"type":..,"timestamp":..,
//! "data":..}}`, `data` spliced byte for byte from the gateway message, built once per dispatch
//! and sent unchanged on every attempt), the signature headers' values (hex Ed25519 over the
//! timestamp followed by the body; the timestamp in Unix milliseconds, as Carbon's forwarder
//! sends it) and reading the application id from READY. Which endpoint, when, and how often are
//! `attempt`'s; the key's parsing is `secret`'s.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use super::batch::{webhook_id, DeferredInteraction, Request};
use super::shared::Shared;
use crate::config::EndpointFormat;
use crate::gateway::dispatch::Dispatch;
use crate::secret::Ed25519Key;

/// The hex Ed25519 signature over `X-Signature-Timestamp` followed by the raw body.
pub(super) const SIGNATURE: HeaderName = HeaderName::from_static("x-signature-ed25519");
/// The signature's timestamp: Unix milliseconds, as Carbon's forwarder sends it.
pub(super) const TIMESTAMP: HeaderName = HeaderName::from_static("x-signature-timestamp");
/// The event's id: the same on every attempt, so a handler can deduplicate.
pub(super) const EVENT_ID: HeaderName = HeaderName::from_static("x-carbon-forwarder-event-id");
/// The attempt's number, from 1.
pub(super) const ATTEMPT: HeaderName = HeaderName::from_static("x-carbon-forwarder-attempt");

/// What the body says when the application id is not known yet (neither `/users/@me` nor a
/// READY gave it): what Carbon's own forwarder says then. Carbon apps take the id from their
/// own options, not from the body.
pub(super) const UNKNOWN_APPLICATION: &str = "unknown";

/// Bytes the envelope adds around the event's name, `d` and the application id.
const ENVELOPE: usize = 112;

/// The request for one dispatch, made at `now`: its body, and the batch id of a batch of one as
/// the event id. `deferred` is an interaction the router already acknowledged (the body does
/// not say so; the router apologises if the request is dead-lettered).
pub(super) fn request(
    event: &Dispatch,
    application_id: &str,
    now: SystemTime,
    deferred: Option<DeferredInteraction>,
) -> Request {
    Request {
        id: webhook_id(event.shard_id, &event.session_id, event.seq, event.seq),
        body: Bytes::from(body(event, application_id, now)),
        shard_id: event.shard_id,
        session_id: event.session_id.clone(),
        first_seq: event.seq,
        last_seq: event.seq,
        events: 1,
        first_received: event.received_at,
        deferred: deferred.into_iter().collect(),
        format: EndpointFormat::Carbon,
        attempts: 0,
    }
}

/// The Carbon request for `event`, made now. The application id is `shared`'s, learnt from
/// `event` first when it is a READY and the id is not known yet.
pub(super) fn request_for(
    shared: &Shared,
    event: &Dispatch,
    deferred: Option<DeferredInteraction>,
) -> Request {
    if shared.application_id.get().is_none() && event.is_named("READY") {
        if let Some(id) = application_id_of_ready(event.data()) {
            tracing::info!(application_id = %id, "Carbon endpoints' bodies carry the application id READY gave");
            let _ = shared.application_id.set(id);
        }
    }
    let application_id = shared
        .application_id
        .get()
        .map_or(UNKNOWN_APPLICATION, |id| &**id);
    request(event, application_id, SystemTime::now(), deferred)
}

/// `{"version":1,"application_id":"..","type":1,"event":{"type":"<t>","timestamp":"<ISO 8601>","data":<d>}}`
/// with `d` exactly the bytes Discord sent.
fn body(event: &Dispatch, application_id: &str, now: SystemTime) -> Vec<u8> {
    let name = event.name_bytes();
    let data = event.data();
    let mut body = Vec::with_capacity(ENVELOPE + application_id.len() + name.len() + data.len());
    body.extend_from_slice(b"{\"version\":1,\"application_id\":");
    write_json_string(&mut body, application_id.as_bytes());
    body.extend_from_slice(b",\"type\":1,\"event\":{\"type\":");
    write_json_string(&mut body, name);
    body.extend_from_slice(b",\"timestamp\":\"");
    write_iso8601(&mut body, now);
    body.extend_from_slice(b"\",\"data\":");
    body.extend_from_slice(data);
    body.extend_from_slice(b"}}");
    body
}

/// `text` as a JSON string. Event names and ids need no escapes, so the common case is a copy;
/// anything else is escaped, so no name could break the envelope.
fn write_json_string(out: &mut Vec<u8>, text: &[u8]) {
    let plain = text
        .iter()
        .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if plain {
        out.push(b'"');
        out.extend_from_slice(text);
        out.push(b'"');
    } else {
        let text = String::from_utf8_lossy(text);
        serde_json::to_writer(&mut *out, &*text).expect("writing to a Vec cannot fail");
    }
}

/// `now` as JavaScript's `toISOString` writes it: `2026-12-05T21:34:32.123Z` (UTC, milliseconds).
fn write_iso8601(out: &mut Vec<u8>, now: SystemTime) {
    let millis = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as u64;
    let (secs, ms) = (millis / 1000, millis % 1000);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    fn two(out: &mut Vec<u8>, n: u64) {
        out.push(b'0' + (n / 10) as u8);
        out.push(b'0' + (n % 10) as u8);
    }
    let year = year as u64;
    two(out, year / 100);
    two(out, year % 100);
    out.push(b'-');
    two(out, month as u64);
    out.push(b'-');
    two(out, day as u64);
    out.push(b'T');
    two(out, rest / 3600);
    out.push(b':');
    two(out, rest / 60 % 60);
    out.push(b':');
    two(out, rest % 60);
    out.push(b'.');
    out.push(b'0' + (ms / 100) as u8);
    two(out, ms % 100);
    out.push(b'Z');
}

/// The Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The signature headers of one attempt at `now`: `X-Signature-Timestamp` (Unix milliseconds)
/// and `X-Signature-Ed25519` (hex of the signature over that timestamp followed by `body`).
pub(super) fn sign(key: &Ed25519Key, body: &[u8], now: SystemTime) -> (HeaderValue, HeaderValue) {
    let millis = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as u64;
    let mut timestamp = itoa::Buffer::new();
    let timestamp = timestamp.format(millis);
    let signature = key.sign_hex(&[timestamp.as_bytes(), body]);
    (
        HeaderValue::from_str(timestamp).expect("digits"),
        HeaderValue::try_from(signature).expect("hex digits"),
    )
}

/// The application id READY carries (`d.application.id`), if it does.
pub(super) fn application_id_of_ready(data: &[u8]) -> Option<Arc<str>> {
    #[derive(serde::Deserialize)]
    struct Ready<'a> {
        #[serde(borrow)]
        application: Option<Application<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Application<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let ready: Ready<'_> = serde_json::from_slice(data).ok()?;
    let id = ready.application?.id;
    (!id.is_empty() && id.bytes().all(|b| b.is_ascii_digit())).then(|| Arc::from(&*id))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn dispatch(name: &str, d: &str) -> Dispatch {
        let message = format!(r#"{{"t":"{name}","s":7,"op":0,"d":{d}}}"#);
        let t = message.find(name).unwrap();
        let d_at = message.find("\"d\":").unwrap() + 4;
        let len = message.len();
        Dispatch::new(
            [2, 4],
            Arc::from("session"),
            7,
            Bytes::from(message),
            t..t + name.len(),
            d_at..len - 1,
        )
    }

    /// 2026-12-05T21:34:32.045Z.
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_796_506_472_045)
    }

    #[test]
    fn the_body_splices_d_byte_for_byte_in_discords_event_envelope() {
        let d = r#"{"content":"h\u00e9llo \"x\"","n":1.50,"e":[ ],"id":"1"}"#;
        let request = request(&dispatch("MESSAGE_CREATE", d), "1100", at(), None);
        let body = std::str::from_utf8(&request.body).unwrap();
        assert_eq!(
            body,
            format!(
                r#"{{"version":1,"application_id":"1100","type":1,"event":{{"type":"MESSAGE_CREATE","timestamp":"2026-12-05T21:34:32.045Z","data":{d}}}}}"#
            )
        );
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed["event"]["data"]["content"], "héllo \"x\"");
        assert_eq!(request.format, EndpointFormat::Carbon);
        assert_eq!(
            (request.first_seq, request.last_seq, request.events),
            (7, 7, 1)
        );
        assert!(request.id.starts_with("msg_2_") && request.id.ends_with("_7_7"));
    }

    #[test]
    fn an_event_name_that_needs_escapes_is_escaped() {
        let mut out = Vec::new();
        write_json_string(&mut out, b"A\"B\\C D\n");
        assert_eq!(out, br#""A\"B\\C D\n""#);
        let mut out = Vec::new();
        write_json_string(&mut out, b"GUILD_CREATE");
        assert_eq!(out, br#""GUILD_CREATE""#);
    }

    #[test]
    fn timestamps_are_written_as_javascripts_to_iso_string() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_999, "2000-02-29T00:00:00.999Z"),
            (1_709_251_199_001, "2024-02-29T23:59:59.001Z"),
            (1_796_506_472_045, "2026-12-05T21:34:32.045Z"),
            (4_102_444_800_000, "2100-01-01T00:00:00.000Z"),
        ];
        for (millis, iso) in cases {
            let mut out = Vec::new();
            write_iso8601(&mut out, UNIX_EPOCH + Duration::from_millis(millis));
            assert_eq!(std::str::from_utf8(&out).unwrap(), iso, "{millis}");
        }
    }

    #[test]
    fn the_signature_covers_the_millisecond_timestamp_then_the_body() {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        use ed25519_dalek::{Signature, Verifier};
        let (pem, _) = Ed25519Key::generate();
        let key = Ed25519Key::parse(&pem).unwrap();
        let body = br#"{"version":1}"#;
        let (timestamp, signature) = sign(&key, body, at());
        assert_eq!(timestamp, "1796506472045");
        let signature = hex_bytes(signature.to_str().unwrap());
        let verifying = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem)
            .unwrap()
            .verifying_key();
        let mut message = b"1796506472045".to_vec();
        message.extend_from_slice(body);
        let signature = Signature::from_slice(&signature).unwrap();
        assert!(verifying.verify(&message, &signature).is_ok());
        message.push(b' ');
        assert!(verifying.verify(&message, &signature).is_err());
    }

    fn hex_bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A Carbon app's stand-in: the statuses it answers in turn (then 204), and every request's
    /// headers and body.
    #[derive(Default)]
    struct StandIn {
        statuses: std::sync::Mutex<Vec<u16>>,
        seen: std::sync::Mutex<Vec<(http::HeaderMap, Bytes)>>,
    }

    /// Serves a stand-in answering `statuses` on 127.0.0.1; its URL.
    async fn stand_in(statuses: Vec<u16>) -> (String, Arc<StandIn>) {
        async fn answer(
            axum::extract::State(app): axum::extract::State<Arc<StandIn>>,
            headers: http::HeaderMap,
            body: Bytes,
        ) -> http::StatusCode {
            app.seen.lock().unwrap().push((headers, body));
            let mut statuses = app.statuses.lock().unwrap();
            let status = if statuses.is_empty() {
                204
            } else {
                statuses.remove(0)
            };
            http::StatusCode::from_u16(status).unwrap()
        }
        let app = Arc::new(StandIn {
            statuses: std::sync::Mutex::new(statuses),
            ..StandIn::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let routes = axum::Router::new()
            .route("/", axum::routing::post(answer))
            .with_state(app.clone());
        tokio::spawn(async move { axum::serve(listener, routes).await });
        (url, app)
    }

    /// A router with one Carbon endpoint at `url`, signing with `pem`, its state in `state`,
    /// retrying within milliseconds (`delivery`'s other settings kept).
    fn carbon_config(
        url: String,
        pem: &str,
        state: &std::path::Path,
        delivery: crate::config::DeliveryConfig,
    ) -> crate::config::Config {
        use crate::config::{Config, DeliveryConfig, EndpointConfig, SigningConfig, StateConfig};
        use crate::secret::SigningKey;
        Config {
            signing: SigningConfig {
                secret: Some(SigningKey::parse(&SigningKey::generate()).unwrap()),
                previous_secrets: vec![],
                control_secret: None,
                ed25519_private_key: Some(Ed25519Key::parse(pem).unwrap()),
            },
            endpoints: vec![EndpointConfig {
                format: EndpointFormat::Carbon,
                ..EndpointConfig::new("app", url)
            }],
            delivery: DeliveryConfig {
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(5),
                ..delivery
            },
            state: StateConfig {
                dir: state.to_owned(),
                ..StateConfig::default()
            },
            ..Config::default()
        }
    }

    #[tokio::test]
    async fn every_attempt_carries_the_same_event_id_and_body_and_counts_up_from_one() {
        use crate::config::DeliveryConfig;
        use crate::delivery::attempt::{attempt_until_done, Outcome, Target};
        use crate::delivery::Pipeline;
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};

        // A 503, then Carbon's "Event queue full, retry later", then 204.
        let (url, app) = stand_in(vec![503, 429]).await;
        let (pem, public) = Ed25519Key::generate();
        let state = std::env::temp_dir().join(format!("shardhook-carbon-{}", std::process::id()));
        let config = carbon_config(url, &pem, &state, DeliveryConfig::default());
        let pipeline = Pipeline::new(&config).unwrap();
        let event = dispatch("MESSAGE_CREATE", r#"{"id":"1","content":"hi"}"#);
        let sent = request(&event, "1100", SystemTime::now(), None);
        let (outcome, _) =
            attempt_until_done(&pipeline.shared, sent.clone(), Target::Ring, None).await;
        let _ = std::fs::remove_dir_all(&state);
        assert!(matches!(outcome, Outcome::Delivered));

        let public: [u8; 32] = hex_bytes(&public).try_into().unwrap();
        let public = VerifyingKey::from_bytes(&public).unwrap();
        let seen = app.seen.lock().unwrap();
        assert_eq!(seen.len(), 3, "two refusals, then the delivery");
        for (n, (headers, body)) in seen.iter().enumerate() {
            let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(header("x-carbon-forwarder-event-id"), Some(sent.id.clone()));
            assert_eq!(
                header("x-carbon-forwarder-attempt"),
                Some((n + 1).to_string())
            );
            assert_eq!(header("content-type").as_deref(), Some("application/json"));
            assert_eq!(body, &sent.body, "the same body on every attempt");
            assert_eq!(header("webhook-id"), None, "no Standard Webhooks headers");
            // Signed afresh for each attempt, over its own timestamp.
            let timestamp = header("x-signature-timestamp").unwrap();
            let signature = hex_bytes(&header("x-signature-ed25519").unwrap());
            let mut message = timestamp.into_bytes();
            message.extend_from_slice(body);
            let signature = Signature::from_slice(&signature).unwrap();
            assert!(
                public.verify(&message, &signature).is_ok(),
                "attempt {}",
                n + 1
            );
        }
    }

    #[tokio::test]
    async fn attempts_count_on_across_a_circuit_pause() {
        use crate::config::DeliveryConfig;
        use crate::delivery::attempt::{attempt_until_done, Outcome, Target};
        use crate::delivery::Pipeline;

        // A 503 opens the only endpoint's circuit (one failure is enough here): the request
        // is given back, as to the spool, and tried again once the circuit lets it.
        let (url, app) = stand_in(vec![503]).await;
        let (pem, _) = Ed25519Key::generate();
        let state =
            std::env::temp_dir().join(format!("shardhook-carbon-pause-{}", std::process::id()));
        let delivery = DeliveryConfig {
            circuit_failures: 1,
            circuit_cooldown: Duration::from_millis(50),
            ..DeliveryConfig::default()
        };
        let config = carbon_config(url, &pem, &state, delivery);
        let pipeline = Pipeline::new(&config).unwrap();
        let event = dispatch("MESSAGE_CREATE", r#"{"id":"1","content":"hi"}"#);
        let sent = request(&event, "1100", SystemTime::now(), None);
        let shared = &pipeline.shared;
        let (outcome, made) = attempt_until_done(shared, sent, Target::Ring, None).await;
        let Outcome::Unavailable(back) = outcome else {
            panic!("the open circuit gives the request back");
        };
        assert_eq!((made, back.attempts), (1, 1));
        tokio::time::sleep_until(shared.next_reopen()).await;
        let (outcome, made) = attempt_until_done(shared, back, Target::Ring, None).await;
        let _ = std::fs::remove_dir_all(&state);
        assert!(matches!(outcome, Outcome::Delivered));
        assert_eq!(made, 2, "counted on, not from one again");
        let seen = app.seen.lock().unwrap();
        let counted: Vec<String> = seen
            .iter()
            .map(|(h, _)| h["x-carbon-forwarder-attempt"].to_str().unwrap().to_owned())
            .collect();
        assert_eq!(counted, ["1", "2"]);
    }

    #[test]
    fn the_application_id_comes_from_readys_application() {
        let ready = br#"{"v":10,"user":{"id":"5"},"guilds":[{"id":"1","unavailable":true}],"application":{"id":"1100000000000000001","flags":0}}"#;
        assert_eq!(
            application_id_of_ready(ready).as_deref(),
            Some("1100000000000000001")
        );
        assert_eq!(application_id_of_ready(br#"{"v":10}"#), None);
        assert_eq!(application_id_of_ready(b"not json"), None);
    }
}
