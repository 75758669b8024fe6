//! One gateway shard: its connection, its session, and the state machine that keeps it
//! connected.
//!
//! Owns connecting (with a timeout), HELLO, IDENTIFY through the identify queue or RESUME,
//! heartbeats and zombie detection, inflating and reading messages, op 1/7/9, close codes,
//! reconnect backoff, pacing outgoing commands, and handing dispatches to the bounded sink
//! (waiting there is the backpressure that slows reading). It does not decide where events go
//! (that is the consumer of the sink) nor which shards run (that is `router`).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, warn};

use crate::gateway::close_code::{self, CloseAction};
use crate::gateway::command_limiter::CommandLimiter;
use crate::gateway::connection::{maybe, reconnect, Accepted, Cause, Conn, Ended, Heartbeat, Step};
use crate::gateway::dispatch::{range_within, Dispatch};
use crate::gateway::handle::{
    CommandGate, FatalClose, ShardHandle, ShardState, ShardStatus, COMMAND_QUEUE,
};
use crate::gateway::identify::IdentifyQueue;
use crate::gateway::inflater::{Inflated, Inflater};
use crate::gateway::payload::{self, op, Hello, Incoming, Ready};
use crate::gateway::redial::{backoff, with_query};
use crate::gateway::session::Session;
use crate::gateway::tenure::Tenure;
use crate::secret::Token;

/// Discord asks clients to wait a random 1-5 s before identifying after op 9 `d: false`.
const REIDENTIFY_DELAY_MS: std::ops::RangeInclusive<u64> = 1000..=5000;
/// Bytes read from the socket at a time.
const READ_BUFFER: usize = 8 << 10;

/// Why a binary frame ends an uncompressed connection: Discord sends text unless asked to
/// compress, so the bytes are not a gateway message the router can read.
const UNCOMPRESSED_BINARY: &str =
    "a binary frame on a connection without compression (discord.compression = \"none\")";
/// Failed attempts to reach a session's `resume_gateway_url` (refused, an HTTP error, a
/// timeout) after which the shard RESUMEs through the general gateway URL instead: a host that
/// went away, or a checkpoint from long ago, must not keep a shard down.
const RESUME_URL_ATTEMPTS: u32 = 3;

/// What a shard needs to know to run.
pub(crate) struct ShardConfig {
    pub id: u32,
    pub total: u32,
    pub token: Token,
    pub intents: u64,
    pub gateway_url: String,
    pub connect_timeout: Duration,
    pub max_message_size: usize,
    pub compression: crate::config::Compression,
}

/// The shard's task state across connections.
pub(crate) struct Shard {
    config: ShardConfig,
    identify: Arc<IdentifyQueue>,
    sink: mpsc::Sender<Dispatch>,
    /// Whether this process may run the shard now.
    tenure: watch::Receiver<Tenure>,
    status: watch::Sender<ShardStatus>,
    last_seq: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    commands: mpsc::Receiver<String>,
    gate: CommandGate,
    session: Option<Session>,
    /// Consecutive attempts that could not reach the session's resume URL.
    resume_url_failures: u32,
    /// A dispatch read but not yet taken by the sink; it survives a reconnect.
    pending: Option<Dispatch>,
}

impl Shard {
    pub(crate) fn new(
        config: ShardConfig,
        identify: Arc<IdentifyQueue>,
        sink: mpsc::Sender<Dispatch>,
        tenure: watch::Receiver<Tenure>,
    ) -> (Shard, ShardHandle) {
        let (status, status_rx) = watch::channel(ShardStatus::new());
        let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
        let last_seq = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let gate = CommandGate::default();
        let handle = ShardHandle {
            id: config.id,
            status: status_rx,
            last_seq: last_seq.clone(),
            received: received.clone(),
            commands: commands_tx,
            gate: gate.clone(),
        };
        let shard = Shard {
            config,
            identify,
            sink,
            tenure,
            status,
            last_seq,
            received,
            commands,
            gate,
            session: None,
            resume_url_failures: 0,
            pending: None,
        };
        (shard, handle)
    }

    /// Runs the shard through its tenures until the process stops or a fatal close: connected
    /// while held, disconnected in standby.
    pub(crate) async fn run(mut self) -> Result<(), FatalClose> {
        let mut grant = None;
        loop {
            if *self.tenure.borrow() == Tenure::Standby {
                self.set_state(ShardState::Standby);
            }
            let tenure = self
                .tenure
                .wait_for(|t| *t != Tenure::Standby)
                .await
                .map(|t| t.clone())
                .unwrap_or(Tenure::Stopped);
            let Tenure::Held { grant: new, resume } = tenure else {
                return Ok(());
            };
            if grant != Some(new) {
                grant = Some(new);
                self.begin_tenure(resume);
            }
            self.held().await?;
            if *self.tenure.borrow() == Tenure::Stopped {
                return Ok(());
            }
            // Released: what was read goes on to delivery before the shard says it is idle,
            // so the releasing router can wait for all of it to be safe.
            if let Some(dispatch) = self.pending.take() {
                let _ = self.sink.send(dispatch).await;
            }
            info!("released: standing by");
        }
    }

    /// A new tenure starts from the session it is given, whatever this task had.
    fn begin_tenure(&mut self, resume: Option<Session>) {
        let resume = resume.and_then(|s| s.checked(&self.config.gateway_url));
        if let Some(session) = &resume {
            info!(session_id = %session.id, seq = session.seq, "resuming from a checkpoint");
        }
        self.status.send_modify(|s| {
            s.session_id = resume.as_ref().map(|r| r.id.clone());
            s.resume_url = resume.as_ref().map(|r| Arc::from(r.resume_url.as_str()));
        });
        self.last_seq
            .store(resume.as_ref().map_or(0, |r| r.seq), Ordering::Relaxed);
        self.session = resume;
        self.resume_url_failures = 0;
    }

    /// Keeps the shard connected while its tenure holds, or until a fatal close.
    async fn held(&mut self) -> Result<(), FatalClose> {
        let mut attempts = 0u32;
        let mut delay = Duration::ZERO;
        loop {
            if !self.wait(delay).await || !self.flush_pending().await {
                return Ok(());
            }
            let via_resume_url = self.via_resume_url();
            let (ended, was_active) = self.connection().await;
            attempts = if was_active { 0 } else { attempts + 1 };
            let unreachable = matches!(
                &ended,
                Ended::Reconnect {
                    cause: Cause::ConnectFailed(_) | Cause::ConnectTimeout | Cause::HelloTimeout,
                    ..
                }
            );
            if was_active {
                self.resume_url_failures = 0;
            } else if via_resume_url && unreachable {
                self.resume_url_failures += 1;
                if self.resume_url_failures == RESUME_URL_ATTEMPTS {
                    warn!(
                        attempts = RESUME_URL_ATTEMPTS,
                        "the session's resume URL cannot be reached; resuming through the gateway URL instead"
                    );
                }
            }
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::Fatal { code } => {
                    self.set_state(ShardState::FatallyClosed { code });
                    let err = FatalClose {
                        shard: self.config.id,
                        code,
                    };
                    error!(code, "{err}");
                    return Err(err);
                }
                Ended::Reconnect {
                    cause,
                    resume,
                    delay: asked,
                } => {
                    if !resume {
                        if let Some(lost) = self.session.take() {
                            error!(
                                session_id = %lost.id,
                                seq = lost.seq,
                                "Discord would not resume the session ({cause}): the events it sent after seq {} were lost; those received up to it are still delivered. Identifying anew",
                                lost.seq
                            );
                        }
                        self.resume_url_failures = 0;
                    }
                    delay = asked.unwrap_or_else(|| backoff(attempts));
                    warn!(
                        resume = self.session.is_some(),
                        ?delay,
                        "gateway connection ended: {cause}; reconnecting"
                    );
                    let text = cause.to_string();
                    let label = cause.label();
                    self.status.send_modify(|s| {
                        *s.reconnect_causes.entry(label).or_default() += 1;
                        s.state = ShardState::Disconnected {
                            reconnect_attempts: attempts,
                        };
                        s.reconnects += 1;
                        s.last_disconnect = Some(text);
                    });
                }
            }
        }
    }

    /// Whether the next connection goes to the session's resume URL (rather than the gateway
    /// URL: no session, or its resume URL failed `RESUME_URL_ATTEMPTS` times).
    fn via_resume_url(&self) -> bool {
        self.session.is_some() && self.resume_url_failures < RESUME_URL_ATTEMPTS
    }

    fn shutting_down(&self) -> bool {
        !self.tenure.borrow().runs()
    }

    /// Resolves once the shard may no longer run (released or stopping).
    fn ending(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut tenure = self.tenure.clone();
        async move {
            let _ = tenure.wait_for(|t| !t.runs()).await;
        }
    }

    /// Sleeps unless shutdown comes first; false means shut down.
    async fn wait(&mut self, delay: Duration) -> bool {
        if self.shutting_down() {
            return false;
        }
        if delay.is_zero() {
            return true;
        }
        tokio::select! {
            _ = self.ending() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }

    /// Hands a dispatch left over from the last connection to the sink; false means shut down.
    async fn flush_pending(&mut self) -> bool {
        if self.pending.is_none() {
            return true;
        }
        let ending = self.ending();
        // Kept while waiting: a released shard still hands it on before standing by.
        let permit = tokio::select! {
            _ = ending => return false,
            permit = self.sink.reserve() => permit,
        };
        match permit {
            Ok(permit) => {
                permit.send(self.pending.take().expect("checked above"));
                true
            }
            Err(_) => false,
        }
    }

    fn set_state(&self, state: ShardState) {
        self.status.send_modify(|s| s.state = state);
    }

    /// One connection, from connect to its end. Also says whether it reached Active.
    async fn connection(&mut self) -> (Ended, bool) {
        let resuming = self.session.is_some();
        self.set_state(if resuming {
            ShardState::Resuming
        } else {
            ShardState::Identifying
        });
        let base = match &self.session {
            Some(session) if self.via_resume_url() => session.resume_url.as_str(),
            _ => self.config.gateway_url.as_str(),
        };
        let url = match with_query(base, self.config.compression) {
            Ok(url) => url,
            Err(e) => return (reconnect(Cause::ConnectFailed(e), true), false),
        };
        // Small buffers: most shards are idle most of the time, and a compressed gateway
        // message is a few hundred bytes (tungstenite's defaults are 128 KiB each).
        // Uncompressed, a message is held whole before its size is judged: a bound here would
        // end the connection on an oversize message, and the resume would replay it forever.
        let ws_limit = match self.config.compression {
            crate::config::Compression::None => None,
            _ => Some(self.config.max_message_size),
        };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(ws_limit)
            .max_frame_size(ws_limit);
        // Boxed: the connect future (TCP, TLS and WebSocket handshakes) is about 10 KiB, and
        // inline it would size every shard's task for it even while the shard sits connected.
        let connecting = Box::pin(tokio_tungstenite::connect_async_with_config(
            url,
            Some(ws_config),
            true,
        ));
        let ws = tokio::select! {
            _ = self.ending() => return (Ended::Shutdown, false),
            connected = timeout(self.config.connect_timeout, connecting) => match connected {
                Ok(Ok((ws, _))) => ws,
                Ok(Err(e)) => return (reconnect(Cause::ConnectFailed(e.to_string()), true), false),
                Err(_) => return (reconnect(Cause::ConnectTimeout, true), false),
            },
        };
        debug!(resuming, "connected to the gateway");
        let (tx, rx) = ws.split();
        let mut conn = Conn {
            tx,
            rx,
            inflater: Inflater::new(self.config.compression, self.config.max_message_size),
            heartbeat: None,
            identify_wait: None,
            hello_deadline: Instant::now() + self.config.connect_timeout,
            active: false,
        };
        let ended = self.drive(&mut conn).await;
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if matches!(ended, Ended::Shutdown) {
            conn.close().await;
        }
        (ended, conn.active)
    }

    /// The event loop of one connection. Commands were admitted by the connection's limiter
    /// when queued (`ShardHandle`), so they go out as soon as the shard is active.
    ///
    /// The shutdown signal and the timer live across iterations: building them per message
    /// registered and removed a waiter and a timer entry for every event.
    async fn drive(&mut self, conn: &mut Conn) -> Ended {
        let mut shutdown = pin!(self.ending());
        // Until HELLO the timer is the HELLO deadline; after it, the next heartbeat.
        let mut timer = pin!(sleep_until(conn.hello_deadline));
        loop {
            let due = conn
                .heartbeat
                .as_ref()
                .map_or(conn.hello_deadline, |h| h.next);
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            let step = tokio::select! {
                biased;
                _ = &mut shutdown => return Ended::Shutdown,
                _ = &mut timer => match conn.heartbeat {
                    None => return reconnect(Cause::HelloTimeout, true),
                    Some(_) => Step::Beat,
                },
                permit = maybe(conn.identify_wait.as_mut()) => {
                    conn.identify_wait = None;
                    let identify = payload::identify(
                        &self.config.token,
                        self.config.intents,
                        [self.config.id, self.config.total],
                    );
                    if let Err(ended) = conn.send(identify).await {
                        return ended;
                    }
                    drop(permit);
                    debug!("sent IDENTIFY");
                    Step::Continue
                }
                permit = self.sink.reserve(), if self.pending.is_some() => match permit {
                    Ok(permit) => {
                        permit.send(self.pending.take().expect("guarded by is_some"));
                        Step::Continue
                    }
                    Err(_) => return Ended::Shutdown,
                },
                Some(command) = self.commands.recv(), if conn.active => {
                    if let Err(ended) = conn.send(command).await {
                        return ended;
                    }
                    Step::Continue
                }
                message = conn.rx.next(), if self.pending.is_none() => Step::Message(message),
            };
            let ended = match step {
                Step::Continue => None,
                Step::Beat => self.beat(conn).await.err(),
                Step::Message(message) => self.on_message(conn, message).await,
            };
            if let Some(ended) = ended {
                return ended;
            }
        }
    }

    async fn beat(&mut self, conn: &mut Conn) -> Result<(), Ended> {
        let hb = conn
            .heartbeat
            .as_mut()
            .expect("a beat is scheduled only after HELLO");
        // While the sink holds us up we are not reading, so an ACK may be waiting unread: that
        // is our slowness, not a zombie connection.
        if !hb.acked && self.pending.is_none() {
            conn.close().await;
            return Err(reconnect(Cause::Zombie, true));
        }
        hb.acked = false;
        hb.sent_at = Some(Instant::now());
        hb.next = (hb.next + hb.interval).max(Instant::now());
        let seq = self.session.as_ref().map(|s| s.seq);
        conn.send(payload::heartbeat(seq)).await
    }

    async fn on_message(
        &mut self,
        conn: &mut Conn,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Ended> {
        let message = match message {
            None => return Some(reconnect(Cause::Dropped, true)),
            Some(Err(e)) => return Some(reconnect(Cause::WebSocket(e.to_string()), true)),
            Some(Ok(message)) => message,
        };
        let buf = match message {
            Message::Binary(frame) => match conn.inflater.as_mut().map(|i| i.push(&frame)) {
                None => {
                    conn.close().await;
                    return Some(reconnect(
                        Cause::Inflate(UNCOMPRESSED_BINARY.to_owned()),
                        true,
                    ));
                }
                Some(Ok(Inflated::Incomplete)) => return None,
                Some(Ok(Inflated::Message(message))) => message,
                Some(Ok(Inflated::Oversize { size })) => {
                    self.oversize(size);
                    return None;
                }
                Some(Err(e)) => {
                    conn.close().await;
                    return Some(reconnect(Cause::Inflate(e.to_string()), true));
                }
            },
            Message::Text(text) if text.len() > self.config.max_message_size => {
                self.oversize(text.len());
                return None;
            }
            Message::Text(text) => Bytes::from(text),
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                return Some(match close_code::action(code) {
                    CloseAction::Fatal => Ended::Fatal { code },
                    CloseAction::Reidentify => reconnect(Cause::Closed(code), false),
                    CloseAction::Resume => reconnect(Cause::Closed(code), true),
                });
            }
            _ => return None,
        };
        self.on_payload(conn, buf).await
    }

    /// A gateway message over `discord.max_message_size`, skipped loudly.
    fn oversize(&self, size: usize) {
        error!(
            size,
            limit = self.config.max_message_size,
            "skipped a gateway message of {size} bytes, over discord.max_message_size"
        );
        self.status.send_modify(|s| s.oversize_skipped += 1);
    }

    async fn on_payload(&mut self, conn: &mut Conn, buf: Bytes) -> Option<Ended> {
        let incoming = match Incoming::parse(&buf) {
            Ok(incoming) => incoming,
            Err(e) => {
                conn.close().await;
                return Some(reconnect(Cause::InvalidJson(e.to_string()), true));
            }
        };
        match incoming.op {
            op::DISPATCH => {
                return match self.on_dispatch(conn, &incoming, &buf) {
                    Ok(Some(event)) => {
                        self.queue(event, buf);
                        None
                    }
                    Ok(None) => None,
                    Err(ended) => Some(ended),
                };
            }
            op::HEARTBEAT => {
                let seq = self.session.as_ref().map(|s| s.seq);
                return conn.send(payload::heartbeat(seq)).await.err();
            }
            op::RECONNECT => {
                conn.close().await;
                return Some(reconnect(Cause::Reconnect, true));
            }
            op::INVALID_SESSION => {
                let resumable = incoming.data::<bool>().unwrap_or(false);
                conn.close().await;
                let delay =
                    (!resumable).then(|| Duration::from_millis(fastrand::u64(REIDENTIFY_DELAY_MS)));
                return Some(Ended::Reconnect {
                    cause: Cause::InvalidSession { resumable },
                    resume: resumable,
                    delay,
                });
            }
            op::HELLO => return self.on_hello(conn, &incoming).await,
            op::HEARTBEAT_ACK => {
                if let Some(hb) = conn.heartbeat.as_mut() {
                    hb.acked = true;
                    let latency = hb.sent_at.map(|at| at.elapsed());
                    self.status.send_modify(|s| s.latency = latency);
                }
            }
            other => debug!(op = other, "ignored a gateway opcode"),
        }
        None
    }

    async fn on_hello(&mut self, conn: &mut Conn, incoming: &Incoming<'_>) -> Option<Ended> {
        let hello: Hello = match incoming.data() {
            Ok(hello) => hello,
            Err(e) => return Some(reconnect(Cause::Protocol(format!("bad HELLO: {e}")), true)),
        };
        let interval = Duration::from_millis(hello.heartbeat_interval.max(1));
        conn.heartbeat = Some(Heartbeat {
            interval,
            next: Instant::now() + interval.mul_f64(fastrand::f64()),
            acked: true,
            sent_at: None,
        });
        let limiter = Arc::new(CommandLimiter::new(interval));
        debug!(
            heartbeat_interval = ?interval,
            command_budget = limiter.budget(),
            "received HELLO"
        );
        // Commands admitted on an earlier connection but not sent count against this one.
        for _ in 0..self.commands.len() {
            let _ = limiter.try_acquire();
        }
        *self.gate.lock().unwrap_or_else(|p| p.into_inner()) = Some(limiter);
        match &self.session {
            Some(session) => {
                let resume = payload::resume(&self.config.token, &session.id, session.seq);
                debug!(seq = session.seq, "sending RESUME");
                conn.send(resume).await.err()
            }
            None => {
                let queue = self.identify.clone();
                let id = self.config.id;
                conn.identify_wait = Some(Box::pin(async move { queue.acquire(id).await }));
                None
            }
        }
    }

    /// Handles a dispatch's effect on the session. Returns the event to forward, if any, as
    /// its seq and the byte ranges of `t` and `d` within `buf`: the caller then moves `buf`
    /// into the queue. (A clone would turn the buffer into a shared one: an allocation more
    /// per event.)
    fn on_dispatch(
        &mut self,
        conn: &mut Conn,
        incoming: &Incoming<'_>,
        buf: &Bytes,
    ) -> Result<Option<Accepted>, Ended> {
        let (Some(name), Some(data)) = (incoming.t, incoming.d) else {
            error!("a dispatch without `t` or `d` was skipped");
            return Ok(None);
        };
        match name {
            "READY" => match incoming.data::<Ready>() {
                Ok(ready) => {
                    let session = Session::from_ready(ready, &self.config.gateway_url);
                    let id = session.id.clone();
                    let resume_url: Arc<str> = Arc::from(session.resume_url.as_str());
                    self.session = Some(session);
                    info!(session_id = %id, "session ready");
                    conn.active = true;
                    self.status.send_modify(|s| {
                        s.state = ShardState::Active;
                        s.session_id = Some(id);
                        s.sessions += 1;
                        s.session_started = Some(Instant::now());
                        s.resume_url = Some(resume_url);
                    });
                }
                Err(e) => {
                    return Err(reconnect(Cause::Protocol(format!("bad READY: {e}")), false));
                }
            },
            "RESUMED" => {
                info!("session resumed");
                conn.active = true;
                self.status.send_modify(|s| {
                    s.state = ShardState::Active;
                    s.resumes += 1;
                });
            }
            _ => {}
        }
        let Some(seq) = incoming.s else {
            debug!(
                event = name,
                "a dispatch without a sequence number is not forwarded"
            );
            return Ok(None);
        };
        let Some(session) = self.session.as_mut() else {
            warn!(event = name, seq, "a dispatch before READY was skipped");
            return Ok(None);
        };
        if seq <= session.seq {
            debug!(
                event = name,
                seq, "a replayed dispatch already received was skipped"
            );
            return Ok(None);
        }
        if session.seq != 0 && seq != session.seq + 1 {
            warn!(
                seq,
                previous = session.seq,
                "sequence gap: {} event(s) were skipped",
                seq - session.seq - 1
            );
        }
        session.seq = seq;
        self.last_seq.store(seq, Ordering::Relaxed);
        self.received.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Accepted {
            seq,
            name: range_within(buf, name.as_bytes()),
            data: range_within(buf, data.get().as_bytes()),
        }))
    }

    /// Hands an accepted event to the queue: straight in while it has room. When it is full
    /// (or closed), the event waits as `pending` and the loop reads nothing more until the
    /// queue takes it.
    fn queue(&mut self, event: Accepted, buf: Bytes) {
        let session = self
            .session
            .as_ref()
            .expect("an event is accepted only within a session");
        let dispatch = Dispatch::new(
            [self.config.id, self.config.total],
            session.id.clone(),
            event.seq,
            buf,
            event.name,
            event.data,
        );
        if let Err(refused) = self.sink.try_send(dispatch) {
            self.pending = Some(refused.into_inner());
        }
    }
}
