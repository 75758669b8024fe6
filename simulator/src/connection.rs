//! One gateway connection of the double: HELLO, IDENTIFY/RESUME checks, heartbeats, traffic,
//! replay, the rules it enforces, and the faults it injects.
//!
//! Owns the per-connection state (its zlib or zstd context, send-rate window, heartbeat
//! deadline).
//! Sessions, the ledger and identify buckets are shared across connections in `Shared`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::compress::Compressor;
use crate::events;
use crate::fault::Fault;
use crate::observed::{IdentifyRecord, LedgerEntry, ResumeRecord};
use crate::protocol::{opcode as op, Compress};
use crate::rules::{
    IDENTIFY_INTERVAL, IDENTIFY_TOLERANCE, MAX_CLIENT_PAYLOAD, REPLAY_BUFFER, SEND_LIMIT,
    SEND_WINDOW,
};
use crate::shared::{Shared, SimSession};

/// The connection is over; the socket is dropped (after a close frame, if one was sent).
struct End;

/// Opcodes a client may send after identifying, besides heartbeats.
const COMMAND_OPS: [u8; 4] = [
    op::PRESENCE_UPDATE,
    op::VOICE_STATE_UPDATE,
    op::REQUEST_GUILD_MEMBERS,
    op::REQUEST_SOUNDBOARD_SOUNDS,
];

struct Conn {
    socket: WebSocket,
    shared: Arc<Shared>,
    compressor: Option<Compressor>,
    via_resume_url: bool,
    /// `(shard, total, session)` once identified or resumed.
    session: Option<(u32, u32, String)>,
    faults_tx: mpsc::UnboundedSender<Fault>,
    faults: mpsc::UnboundedReceiver<Fault>,
    acks: bool,
    split_next: Option<usize>,
    /// When each recent client payload arrived, for the 120 per 60 s rule.
    received: VecDeque<Instant>,
    heartbeat_deadline: Instant,
    next_traffic: Option<Instant>,
}

pub(crate) async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    compress: Option<Compress>,
    via_resume_url: bool,
) {
    let nth = shared.observe(|i| {
        i.observed.connections += 1;
        i.observed
            .compress
            .push(compress.map(|t| t.as_str().to_owned()));
        i.observed.connections
    });
    if nth <= shared.config.withhold_hello {
        // Stalled: read (and ignore) until the client gives up on this connection.
        let mut socket = socket;
        while let Some(Ok(_)) = socket.recv().await {}
        return;
    }
    let (faults_tx, faults) = mpsc::unbounded_channel();
    let mut conn = Conn {
        socket,
        compressor: compress.map(Compressor::new),
        via_resume_url,
        session: None,
        faults_tx,
        faults,
        acks: true,
        split_next: None,
        received: VecDeque::new(),
        heartbeat_deadline: Instant::now() + grace(shared.config.heartbeat_interval),
        next_traffic: None,
        shared,
    };
    let _ = conn.run().await;
    conn.finish();
}

/// A payload of the gateway's own (not a dispatch): `op` and `d`, no sequence or name.
fn control(op: u8, d: &str) -> String {
    format!(r#"{{"op":{op},"d":{d},"s":null,"t":null}}"#)
}

/// How late a heartbeat may be before the double gives up on the client.
fn grace(interval: Duration) -> Duration {
    interval + interval / 2
}

impl Conn {
    async fn run(&mut self) -> Result<(), End> {
        let hello = format!(
            r#"{{"op":{},"d":{{"heartbeat_interval":{}}},"s":null,"t":null}}"#,
            op::HELLO,
            self.shared.config.heartbeat_interval.as_millis()
        );
        self.send(&hello).await?;
        loop {
            let traffic_at = self.next_traffic;
            tokio::select! {
                // What the client sent first: a heartbeat that waited while this connection
                // was busy sending must count before the deadline is looked at.
                biased;
                message = self.socket.recv() => match message {
                    Some(Ok(message)) => self.on_client(message).await?,
                    _ => return Err(End),
                },
                Some(fault) = self.faults.recv() => self.inject(fault).await?,
                _ = sleep_until(self.heartbeat_deadline) => {
                    let shard = self.shard_label();
                    self.violation(format!("{shard}: no heartbeat within 1.5 heartbeat intervals"));
                    self.invalidate();
                    return self.close(4009).await;
                }
                _ = sleep_until(traffic_at.unwrap_or_else(Instant::now)), if traffic_at.is_some() => {
                    self.traffic().await?;
                }
            }
        }
    }

    fn shard_label(&self) -> String {
        match &self.session {
            Some((shard, ..)) => format!("shard {shard}"),
            None => "an unidentified connection".to_owned(),
        }
    }

    fn violation(&self, what: String) {
        tracing::warn!("simulator: rule broken: {what}");
        self.shared.observe(|i| i.observed.violations.push(what));
    }

    /// Unregisters this connection and starts the session's resume window.
    fn finish(&mut self) {
        let Some((shard, total, session)) = &self.session else {
            return;
        };
        let key = (*shard, *total);
        self.shared.observe(|i| {
            // A connection whose session moved to a newer one (a RESUME elsewhere) leaves the
            // session alone.
            if i.live
                .get(&key)
                .is_some_and(|tx| tx.same_channel(&self.faults_tx))
            {
                i.live.remove(&key);
                if let Some(s) = i.sessions.get_mut(session) {
                    s.disconnected_at = Some(Instant::now());
                }
            }
        });
    }

    fn invalidate(&self) {
        if let Some((_, _, session)) = &self.session {
            self.shared.observe(|i| {
                if let Some(s) = i.sessions.get_mut(session) {
                    s.invalidated = true;
                }
                i.observed.invalidated.insert(session.clone());
            });
        }
    }

    async fn close(&mut self, code: u16) -> Result<(), End> {
        let frame = CloseFrame {
            code,
            reason: "".into(),
        };
        let _ = self.socket.send(Message::Close(Some(frame))).await;
        Err(End)
    }

    async fn send(&mut self, text: &str) -> Result<(), End> {
        let Some(z) = self.compressor.as_mut() else {
            return self.send_frame(Message::Text(text.into())).await;
        };
        let bytes = z.compress(text.as_bytes());
        let parts = self.split_next.take().unwrap_or(1);
        let parts = if z.splits() { parts } else { 1 }.clamp(1, bytes.len());
        let size = bytes.len().div_ceil(parts);
        for chunk in bytes.chunks(size) {
            self.send_frame(Message::Binary(bytes::Bytes::copy_from_slice(chunk)))
                .await?;
        }
        Ok(())
    }

    /// Sends one frame. While a send waits (the client is not reading: its TCP window is
    /// full), this connection reads nothing either, so the heartbeat deadline moves on by as
    /// long: a heartbeat the client sent on time may be waiting unread, and Discord, which
    /// reads and writes apart, would have seen it.
    async fn send_frame(&mut self, frame: Message) -> Result<(), End> {
        let started = Instant::now();
        let sent = self.socket.send(frame).await.map_err(|_| End);
        self.heartbeat_deadline += started.elapsed();
        sent
    }

    async fn on_client(&mut self, message: Message) -> Result<(), End> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => return self.close(4002).await,
            Message::Close(_) => return Err(End),
            _ => return Ok(()),
        };
        let shard = self.shard_label();
        if text.len() > MAX_CLIENT_PAYLOAD {
            self.violation(format!(
                "{shard}: sent a {} byte payload (limit 4096)",
                text.len()
            ));
            return self.close(4002).await;
        }
        let now = Instant::now();
        self.received.push_back(now);
        while self
            .received
            .front()
            .is_some_and(|t| now - *t >= SEND_WINDOW)
        {
            self.received.pop_front();
        }
        if self.received.len() > SEND_LIMIT {
            self.violation(format!("{shard}: sent more than 120 payloads in 60 s"));
            return self.close(4008).await;
        }
        let Ok(payload) = serde_json::from_str::<Value>(&text) else {
            return self.close(4002).await;
        };
        let opcode = payload["op"].as_u64().unwrap_or(u64::MAX);
        match u8::try_from(opcode).unwrap_or(u8::MAX) {
            op::HEARTBEAT => {
                self.heartbeat_deadline = now + grace(self.shared.config.heartbeat_interval);
                if self.acks {
                    self.send(&control(op::HEARTBEAT_ACK, "null")).await?;
                }
                Ok(())
            }
            op::IDENTIFY => self.identify(&payload["d"]).await,
            op::RESUME => self.resume(&payload["d"]).await,
            o if COMMAND_OPS.contains(&o) => {
                let Some((shard, ..)) = self.session else {
                    return self.close(4003).await;
                };
                self.shared
                    .observe(|i| i.observed.commands.push((shard, payload)));
                Ok(())
            }
            _ => self.close(4001).await,
        }
    }

    /// Whether IDENTIFY's or RESUME's `token` is the bot's, bare or with the `Bot ` prefix
    /// (Discord takes both; twilight-gateway sends the prefix).
    fn token_accepted(&self, d: &Value) -> bool {
        let given = d["token"].as_str().unwrap_or_default();
        given.strip_prefix("Bot ").unwrap_or(given) == self.shared.config.token
    }

    async fn identify(&mut self, d: &Value) -> Result<(), End> {
        let config = self.shared.config.clone();
        if self.session.is_some() {
            return self.close(4005).await;
        }
        if !self.token_accepted(d) {
            return self.close(4004).await;
        }
        let (shard, total) = match (d["shard"][0].as_u64(), d["shard"][1].as_u64()) {
            (Some(id), Some(total)) => (id as u32, total as u32),
            _ if d.get("shard").is_none() => (0, 1),
            _ => return self.close(4010).await,
        };
        if shard >= total {
            return self.close(4010).await;
        }
        if total < config.shards {
            return self.close(4011).await;
        }
        let Some(intents) = d["intents"].as_u64() else {
            return self.close(4013).await;
        };
        if intents & config.disallowed_intents != 0 {
            return self.close(4014).await;
        }
        // A shard over Discord's guild cap must be split: "sharding required".
        let guilds = self.shared.lock().guilds_of(shard, total);
        if guilds.len() > config.guild_cap as usize {
            return self.close(4011).await;
        }
        let now = Instant::now();
        let bucket = shard % config.max_concurrency.max(1);
        let verdict = self.shared.observe(|i| {
            let early = i
                .buckets
                .get(&bucket)
                .map(|last| now - *last)
                .filter(|since| *since + IDENTIFY_TOLERANCE < IDENTIFY_INTERVAL);
            let accepted = early.is_none() && i.identifies_remaining > 0;
            i.observed.identifies.push(IdentifyRecord {
                shard,
                at: now,
                accepted,
            });
            if !accepted {
                return Err(match early {
                    Some(since) => format!(
                        "shard {shard}: IDENTIFY {} ms after the last one in bucket {bucket} (limit 5000 ms)",
                        since.as_millis()
                    ),
                    None => format!("shard {shard}: IDENTIFY with no session starts left today"),
                });
            }
            i.buckets.insert(bucket, now);
            i.identifies_remaining -= 1;
            let id = format!("sim-{:04x}-{shard}", i.next_session);
            i.next_session += 1;
            i.sessions.insert(
                id.clone(),
                SimSession {
                    shard,
                    total,
                    events: VecDeque::new(),
                    first_seq: 1,
                    seq: 0,
                    invalidated: false,
                    disconnected_at: None,
                },
            );
            i.live.insert((shard, total), self.faults_tx.clone());
            Ok(id)
        });
        let session = match verdict {
            Ok(session) => session,
            Err(what) => {
                self.violation(what);
                return self.send(&control(op::INVALID_SESSION, "false")).await;
            }
        };
        self.session = Some((shard, total, session.clone()));
        let ready = events::ready(&session, &self.shared.resume_url(), [shard, total], &guilds);
        self.emit("READY", ready).await?;
        for guild in guilds {
            self.emit("GUILD_CREATE", events::guild_create(guild))
                .await?;
        }
        self.schedule_traffic();
        Ok(())
    }

    async fn resume(&mut self, d: &Value) -> Result<(), End> {
        /// How long the session had been without a connection (`None`: it still had one).
        fn found_offline(s: Option<&SimSession>) -> Option<Duration> {
            s.and_then(|s| s.disconnected_at).map(|at| at.elapsed())
        }
        if !self.token_accepted(d) {
            return self.close(4004).await;
        }
        let session = d["session_id"].as_str().unwrap_or_default().to_owned();
        let seq = d["seq"].as_u64().unwrap_or(0);
        let window = self.shared.config.resume_window;
        let replay = self.shared.observe(|i| {
            let offline = found_offline(i.sessions.get(&session));
            let found = i.sessions.get_mut(&session).filter(|s| {
                !s.invalidated
                    && s.disconnected_at.is_none_or(|at| at.elapsed() < window)
                    && seq + 1 >= s.first_seq
                    && seq <= s.seq
            });
            let record = |accepted, shard| ResumeRecord {
                shard,
                session: session.clone(),
                seq,
                via_resume_url: self.via_resume_url,
                accepted,
                at: Instant::now(),
                offline,
            };
            let Some(s) = found else {
                let shard = i.sessions.get(&session).map_or(u32::MAX, |s| s.shard);
                i.observed.resumes.push(record(false, shard));
                return None;
            };
            s.disconnected_at = None;
            let skip = (seq + 1 - s.first_seq) as usize;
            let replay: Vec<Arc<str>> = s.events.iter().skip(skip).cloned().collect();
            let (shard, total) = (s.shard, s.total);
            i.observed.resumes.push(record(true, shard));
            i.observed.replayed += replay.len() as u64;
            // One connection per session, as on Discord: the one it was on (a client that
            // stalled while another took over) is dropped.
            if let Some(old) = i.live.insert((shard, total), self.faults_tx.clone()) {
                if !old.same_channel(&self.faults_tx) {
                    let _ = old.send(Fault::Drop);
                }
            }
            Some((shard, total, replay))
        });
        let Some((shard, total, replay)) = replay else {
            return self.send(&control(op::INVALID_SESSION, "false")).await;
        };
        self.session = Some((shard, total, session));
        for payload in replay {
            self.send(&payload).await?;
        }
        self.emit(
            "RESUMED",
            r#"{"_trace":["shardhook-simulator"]}"#.to_owned(),
        )
        .await?;
        self.schedule_traffic();
        Ok(())
    }

    /// Creates a new event on this connection's session, ledgers it, and sends it.
    async fn emit(&mut self, name: &str, d: String) -> Result<(), End> {
        self.emit_about(name, d, None).await
    }

    /// Like `emit`, for a traffic event of a guild, with its message id (`(guild, message)`).
    async fn emit_about(
        &mut self,
        name: &str,
        d: String,
        message: Option<(u64, u64)>,
    ) -> Result<(), End> {
        let Some((shard, total, session)) = self.session.clone() else {
            return Ok(());
        };
        let me = self.faults_tx.clone();
        let payload = self.shared.observe(|i| {
            // A connection whose session moved to another (a RESUME elsewhere) gets no new
            // event: on Discord a session has one connection.
            if !i
                .live
                .get(&(shard, total))
                .is_some_and(|tx| tx.same_channel(&me))
            {
                return Err(End);
            }
            let Some(s) = i.sessions.get_mut(&session) else {
                return Ok(None);
            };
            s.seq += 1;
            let payload: Arc<str> = events::dispatch(name, s.seq, &d).into();
            s.events.push_back(payload.clone());
            if s.events.len() > REPLAY_BUFFER {
                s.events.pop_front();
                s.first_seq += 1;
            }
            i.observed.ledger.push(LedgerEntry {
                shard,
                session: session.clone(),
                seq: s.seq,
                event: name.to_owned(),
                at: Instant::now(),
                message,
            });
            Ok(Some(payload))
        });
        match payload? {
            Some(payload) => self.send(&payload).await,
            None => Ok(()),
        }
    }

    /// This connection's traffic rate: its shard's share of `SimConfig`'s.
    fn rate(&self) -> f64 {
        let config = &self.shared.config;
        match &self.session {
            Some((shard, ..)) if *shard < config.hot_shards => config.hot_rate,
            _ => config.rate,
        }
    }

    /// The wait before the next traffic event: the rate's period, or with `poisson` an
    /// exponential wait of that mean (events of real guilds come at random, not on a beat).
    fn gap(&self) -> Duration {
        let mean = 1.0 / self.rate();
        if !self.shared.config.poisson {
            return Duration::from_secs_f64(mean);
        }
        // 1 - u is in (0, 1], so its logarithm is finite.
        Duration::from_secs_f64(-mean * (1.0 - fastrand::f64()).ln())
    }

    fn schedule_traffic(&mut self) {
        self.next_traffic = (self.rate() > 0.0).then(|| Instant::now() + self.gap());
    }

    async fn traffic(&mut self) -> Result<(), End> {
        let Some((shard, total, _)) = self.session.clone() else {
            return Ok(());
        };
        let config = &self.shared.config;
        let (limit, ping_every) = (config.events_per_shard, config.ping_every);
        let me = self.faults_tx.clone();
        let counter = self.shared.observe(|i| {
            // Superseded: the traffic is the session's new connection's to send.
            if !i
                .live
                .get(&(shard, total))
                .is_some_and(|tx| tx.same_channel(&me))
            {
                return None;
            }
            let sent = i.traffic.entry((shard, total)).or_insert(0);
            if limit.is_some_and(|limit| *sent >= limit) {
                return None;
            }
            *sent += 1;
            let nth = *sent;
            i.next_message += 1;
            // The shard's guilds in turn.
            let owned = events::guilds_of(shard, total, u64::from(i.guilds)).count();
            let guild = match owned {
                0 => events::guild_id(shard as u64),
                n => events::guilds_of(shard, total, u64::from(i.guilds))
                    .nth((nth as usize - 1) % n)
                    .expect("within the count"),
            };
            Some((i.next_message, nth, guild))
        });
        let Some((counter, nth, guild)) = counter else {
            self.next_traffic = None;
            return Ok(());
        };
        let content = if ping_every > 0 && nth % ping_every == 0 {
            "!ping".to_owned()
        } else {
            format!("hello from the simulator, message {nth}")
        };
        // Late events are made up for, but never more than eight periods' worth at once.
        let (gap, period) = (self.gap(), Duration::from_secs_f64(1.0 / self.rate()));
        let floor = Instant::now().checked_sub(period * 8);
        self.next_traffic = self
            .next_traffic
            .map(|at| floor.map_or(at + gap, |floor| (at + gap).max(floor)));
        let d = events::message_create(counter, guild, &content);
        // The other set's shard that covers this guild gets it too (a reshard's overlap).
        let also = self.shared.lock().also_covering(guild, shard, total);
        for other in also {
            let _ = other.send(Fault::Relay {
                name: "MESSAGE_CREATE".to_owned(),
                d: d.clone(),
                guild,
                message: counter,
            });
        }
        self.emit_about("MESSAGE_CREATE", d, Some((guild, counter)))
            .await
    }

    async fn inject(&mut self, fault: Fault) -> Result<(), End> {
        tracing::info!(?fault, "simulator: injecting a fault");
        match fault {
            Fault::Drop => Err(End),
            Fault::StopHeartbeatAcks => {
                self.acks = false;
                Ok(())
            }
            Fault::Reconnect => self.send(&control(op::RECONNECT, "null")).await,
            Fault::InvalidateSession { resumable } => {
                if !resumable {
                    self.invalidate();
                }
                self.send(&control(op::INVALID_SESSION, &resumable.to_string()))
                    .await
            }
            Fault::Close(code) => {
                if matches!(code, 4007 | 4009) {
                    self.invalidate();
                }
                self.close(code).await
            }
            Fault::SplitNext(parts) => {
                self.split_next = Some(parts);
                Ok(())
            }
            Fault::CorruptFrame => {
                // A block header of type 3, which neither deflate nor zstd defines (then the
                // zlib suffix, so a zlib client tries it at once).
                let frame =
                    bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0xff, 0xff]);
                self.socket
                    .send(Message::Binary(frame))
                    .await
                    .map_err(|_| End)
            }
            Fault::InvalidJson => {
                let cut = format!(r#"{{"op":{},"t":"MESSAGE_CREATE","s":"#, op::DISPATCH);
                self.send(&cut).await
            }
            Fault::Oversize(size) => self.emit("OVERSIZE_TEST", events::padded(size)).await,
            Fault::Dispatch { name, d } => self.emit(&name, d).await,
            Fault::Relay {
                name,
                d,
                guild,
                message,
            } => self.emit_about(&name, d, Some((guild, message))).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Fault, SimConfig, Simulator, DEFAULT_TOKEN};
    use futures_util::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::time::{sleep_until, Instant};
    use tokio_tungstenite::tungstenite::Message as Ws;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_stops_reading_but_heartbeats_on_time_breaks_no_rule() {
        let interval = Duration::from_millis(200);
        let sim = on_loopback(SimConfig {
            rate: 20_000.0,
            heartbeat_interval: interval,
            ..SimConfig::default()
        })
        .await;
        // A small receive buffer: the double's sends block soon after the client stops reading.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(sim.addr()).await.unwrap();
        let url = format!("ws://{}/gateway/?v=10&encoding=json", sim.addr());
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        let hello = ws.next().await.unwrap().unwrap();
        assert!(hello.to_text().unwrap().contains(r#""op":10"#), "{hello:?}");
        let identify = serde_json::json!({"op": 2, "d": {
            "token": DEFAULT_TOKEN, "intents": 513, "shard": [0, 1],
            "properties": {"os": "linux", "browser": "test", "device": "test"}}});
        ws.send(Ws::Text(identify.to_string().into()))
            .await
            .unwrap();
        while let Some(message) = ws.next().await {
            if message
                .unwrap()
                .to_text()
                .unwrap()
                .contains(r#""t":"READY""#)
            {
                break;
            }
        }
        let heartbeat = || Ws::Text(r#"{"op":1,"d":null}"#.into());
        let sent = || sim.observed(|o| o.ledger.len());
        let mut beat = tokio::time::interval(interval);
        'cycles: for cycle in 0..4 {
            // Heartbeats on time and nothing read, for four intervals, while the double has
            // more to send than the socket buffers hold.
            for _ in 0..8 {
                assert!(sim.inject(0, Fault::Oversize(1 << 20)));
            }
            for _ in 0..4 {
                beat.tick().await;
                ws.send(heartbeat()).await.unwrap();
            }
            let before = sent();
            beat.tick().await;
            ws.send(heartbeat()).await.unwrap();
            assert!(
                sent() == before,
                "cycle {cycle}: the double's sends were not held up ({before} then {})",
                sent()
            );
            // Then read everything, heartbeating on, for two intervals.
            let until = Instant::now() + interval * 2;
            loop {
                tokio::select! {
                    _ = beat.tick() => ws.send(heartbeat()).await.unwrap(),
                    message = ws.next() => match message {
                        Some(Ok(Ws::Close(_))) | Some(Err(_)) | None => break 'cycles,
                        Some(Ok(_)) => {}
                    },
                    _ = sleep_until(until) => break,
                }
            }
        }
        let violations = sim.observed(|o| o.violations.clone());
        assert!(violations.is_empty(), "{violations:?}");
    }

    type Client = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// A client connected to `sim` and identified as `shard` of `total`.
    async fn identified(sim: &Simulator, shard: u32, total: u32) -> Client {
        identified_with(sim, shard, total, DEFAULT_TOKEN).await
    }

    /// Like `identified`, with `token` in IDENTIFY.
    async fn identified_with(sim: &Simulator, shard: u32, total: u32, token: &str) -> Client {
        let url = format!("ws://{}/gateway/?v=10&encoding=json", sim.addr());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let identify = serde_json::json!({"op": 2, "d": {
            "token": token, "intents": 513, "shard": [shard, total],
            "properties": {"os": "linux", "browser": "test", "device": "test"}}});
        ws.send(Ws::Text(identify.to_string().into()))
            .await
            .unwrap();
        ws
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hot_shards_carry_their_own_rate_and_poisson_traffic_is_not_on_a_beat() {
        let sim = on_loopback(SimConfig {
            shards: 2,
            guilds: 2,
            rate: 2.0,
            hot_shards: 1,
            hot_rate: 200.0,
            poisson: true,
            max_concurrency: 2,
            ..SimConfig::default()
        })
        .await;
        let (mut hot, mut cold) = (identified(&sim, 0, 2).await, identified(&sim, 1, 2).await);
        // Keep both connections read, so the double's sends never wait.
        let reading = tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(Ok(_)) = hot.next() => {}
                    Some(Ok(_)) = cold.next() => {}
                    else => return,
                }
            }
        });
        let traffic = |o: &crate::Observed, shard: u32| {
            o.ledger
                .iter()
                .filter(|e| e.shard == shard && e.event == "MESSAGE_CREATE")
                .map(|e| e.at)
                .collect::<Vec<_>>()
        };
        let hot_times = sim
            .wait_for(|o| {
                let times = traffic(o, 0);
                (times.len() >= 100).then_some(times)
            })
            .await;
        let cold_count = sim.observed(|o| traffic(o, 1).len());
        assert!(
            cold_count < 20,
            "the cold shard sent {cold_count} while the hot one sent 100"
        );
        let gaps: Vec<Duration> = hot_times.windows(2).map(|w| w[1] - w[0]).collect();
        let (least, most) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
        assert!(
            *most > *least * 4,
            "gaps from {least:?} to {most:?}: on a beat, not at random"
        );
        reading.abort();
    }

    #[tokio::test]
    async fn identify_takes_the_token_bare_or_with_the_bot_prefix_and_refuses_another() {
        let sim = on_loopback(SimConfig::default()).await;
        let prefixed = format!("Bot {DEFAULT_TOKEN}");
        assert_eq!(
            started(&mut identified_with(&sim, 0, 1, &prefixed).await).await,
            "READY"
        );
        assert_eq!(
            started(&mut identified_with(&sim, 0, 1, "Bot wrong").await).await,
            "close 4004"
        );
    }

    /// The double on a free loopback port.
    async fn on_loopback(config: SimConfig) -> Simulator {
        Simulator::bind("127.0.0.1:0".parse().unwrap(), config)
            .await
            .unwrap()
    }

    /// What ends a connection's start: READY, or a close frame's code.
    async fn started(ws: &mut Client) -> String {
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Ws::Close(frame) => {
                    return format!("close {}", frame.map_or(0, |f| u16::from(f.code)))
                }
                Ws::Text(text) if text.contains(r#""t":"READY""#) => return "READY".to_owned(),
                _ => {}
            }
        }
        "ended".to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shard_over_the_guild_cap_is_closed_with_4011_and_more_shards_are_recommended() {
        let sim = on_loopback(SimConfig {
            guilds: 5,
            guild_cap: 2,
            guilds_per_shard: 2,
            max_concurrency: 16,
            rate: 0.0,
            ..SimConfig::default()
        })
        .await;
        assert_eq!(sim.recommended_shards(), 3, "5 guilds at 2 a shard");
        assert_eq!(
            started(&mut identified(&sim, 0, 1).await).await,
            "close 4011"
        );
        assert_eq!(started(&mut identified(&sim, 1, 4).await).await, "READY");
        sim.add_guilds(5);
        assert_eq!(sim.recommended_shards(), 5);
        // Ten guilds over four shards: two of them hold three, sharding required.
        let over = (0..4)
            .find(|s| crate::events::guilds_of(*s, 4, 10).count() > 2)
            .unwrap();
        assert_eq!(
            started(&mut identified(&sim, over, 4).await).await,
            "close 4011"
        );
        let body: serde_json::Value = reqwest_free_gateway_bot(&sim).await;
        assert_eq!(body["shards"], 5);
    }

    /// `GET /gateway/bot` through a bare HTTP/1.1 exchange (the crate has no HTTP client).
    async fn reqwest_free_gateway_bot(sim: &Simulator) -> serde_json::Value {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
        let request = format!(
            "GET /api/v10/gateway/bot HTTP/1.1\r\nhost: sim\r\nauthorization: Bot {DEFAULT_TOKEN}\r\nconnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        serde_json::from_str(body).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_sets_of_shards_connected_at_once_both_get_each_guilds_events() {
        let sim = on_loopback(SimConfig {
            guilds: 4,
            max_concurrency: 16,
            rate: 40.0,
            ping_every: 0,
            ..SimConfig::default()
        })
        .await;
        let mut first = identified(&sim, 0, 1).await;
        assert_eq!(started(&mut first).await, "READY");
        // Shard 0 of either set is in identify bucket 0: the second waits out Discord's 5 s.
        tokio::time::sleep(crate::rules::IDENTIFY_INTERVAL).await;
        let mut clients = vec![first];
        for shard in 0..2 {
            clients.push(identified(&sim, shard, 2).await);
        }
        for mut client in clients {
            tokio::spawn(async move { while let Some(Ok(_)) = client.next().await {} });
        }
        let both = sim
            .wait_for(|o| {
                // Once the second set's two shards are READY.
                let live = o
                    .ledger
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.event == "READY")
                    .nth(2)?
                    .0;
                let after: Vec<_> = o.ledger[live..]
                    .iter()
                    .filter_map(|e| e.message.map(|m| (m, e.session.clone())))
                    .collect();
                (after.len() >= 60).then_some(after)
            })
            .await;
        let sessions_of = |message: (u64, u64)| -> Vec<String> {
            both.iter()
                .filter(|(m, _)| *m == message)
                .map(|(_, s)| s.clone())
                .collect()
        };
        // Every message made after both sets were up (allowing for the last few, whose copy
        // may still be on its way) was sent on two sessions: the one-shard set's and the
        // two-shard set's shard that owns its guild.
        let made: Vec<(u64, u64)> = {
            let mut m: Vec<_> = both.iter().map(|(m, _)| *m).collect();
            m.sort_unstable();
            m.dedup();
            m
        };
        for message in &made[..made.len() - 10] {
            let sessions = sessions_of(*message);
            assert_eq!(sessions.len(), 2, "{message:?} on {sessions:?}");
            assert_ne!(sessions[0], sessions[1]);
        }
    }
}
