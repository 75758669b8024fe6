//! One WebSocket connection of a shard: its halves, inflater, heartbeat bookkeeping and the
//! identify permit it waits for, and the words for how a connection ends (`Cause`, `Ended`).
//!
//! Owns sending on the connection and closing it resumably; what to send and when is
//! `shard`'s.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::gateway::close_code;
use crate::gateway::identify::IdentifyPermit;
use crate::gateway::inflater::Inflater;

/// The close code we send when the session should stay resumable: Discord invalidates the
/// session when a client closes with 1000 or 1001.
const RESUMABLE_CLOSE: u16 = 4000;

/// Resolves a future that may not exist; a missing one never resolves.
pub(super) async fn maybe<F: Future>(future: Option<F>) -> F::Output {
    match future {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

pub(super) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a connection ended, for logs and status.
#[derive(Debug)]
pub(super) enum Cause {
    ConnectFailed(String),
    ConnectTimeout,
    HelloTimeout,
    Dropped,
    WebSocket(String),
    Zombie,
    Reconnect,
    InvalidSession { resumable: bool },
    Closed(u16),
    Inflate(String),
    InvalidJson(String),
    Protocol(String),
}

impl Cause {
    /// A short label for metrics.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Cause::ConnectFailed(_) => "connect_failed",
            Cause::ConnectTimeout | Cause::HelloTimeout => "timeout",
            Cause::Dropped | Cause::WebSocket(_) => "dropped",
            Cause::Zombie => "zombie",
            Cause::Reconnect => "op7",
            Cause::InvalidSession { .. } => "invalid_session",
            Cause::Closed(_) => "close_code",
            Cause::Inflate(_) => "inflate",
            Cause::InvalidJson(_) => "invalid_json",
            Cause::Protocol(_) => "protocol",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::ConnectFailed(e) => write!(f, "failed to connect: {e}"),
            Cause::ConnectTimeout => f.write_str("connecting timed out"),
            Cause::HelloTimeout => f.write_str("no HELLO in time"),
            Cause::Dropped => f.write_str("the connection dropped"),
            Cause::WebSocket(e) => write!(f, "websocket error: {e}"),
            Cause::Zombie => f.write_str("no heartbeat ACK before the next beat (zombie)"),
            Cause::Reconnect => f.write_str("Discord asked to reconnect (op 7)"),
            Cause::InvalidSession { resumable } => {
                write!(f, "invalid session (op 9, resumable: {resumable})")
            }
            Cause::Closed(code) => {
                write!(f, "closed with {code} ({})", close_code::meaning(*code))
            }
            Cause::Inflate(e) => e.fmt(f),
            Cause::InvalidJson(e) => write!(f, "a gateway message is not valid JSON: {e}"),
            Cause::Protocol(e) => write!(f, "protocol error: {e}"),
        }
    }
}

/// How a connection ended.
pub(super) enum Ended {
    Shutdown,
    Fatal {
        code: u16,
    },
    Reconnect {
        cause: Cause,
        resume: bool,
        /// Overrides the backoff (op 9 asks for 1-5 s).
        delay: Option<Duration>,
    },
}

pub(super) fn reconnect(cause: Cause, resume: bool) -> Ended {
    Ended::Reconnect {
        cause,
        resume,
        delay: None,
    }
}

/// What the connection's event loop woke up for, when handling it needs the whole shard.
pub(super) enum Step {
    Continue,
    Beat,
    Message(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
}

/// A dispatch to forward: its seq and where its `t` and `d` lie in the message.
pub(super) struct Accepted {
    pub(super) seq: u64,
    pub(super) name: std::ops::Range<usize>,
    pub(super) data: std::ops::Range<usize>,
}

/// Heartbeat bookkeeping for one connection.
pub(super) struct Heartbeat {
    pub(super) interval: Duration,
    pub(super) next: Instant,
    pub(super) acked: bool,
    pub(super) sent_at: Option<Instant>,
}

/// One WebSocket connection's state.
pub(super) struct Conn {
    pub(super) tx: SplitSink<Ws, Message>,
    pub(super) rx: SplitStream<Ws>,
    /// Transport decompression; none with `discord.compression = "none"`.
    pub(super) inflater: Option<Inflater>,
    pub(super) heartbeat: Option<Heartbeat>,
    pub(super) identify_wait: Option<Pin<Box<dyn Future<Output = IdentifyPermit> + Send>>>,
    pub(super) hello_deadline: Instant,
    pub(super) active: bool,
}

impl Conn {
    pub(super) async fn send(&mut self, text: String) -> Result<(), Ended> {
        self.tx
            .send(Message::text(text))
            .await
            .map_err(|e| reconnect(Cause::WebSocket(e.to_string()), true))
    }

    /// Closes with a code that keeps the session resumable. Errors are moot: we are leaving.
    pub(super) async fn close(&mut self) {
        let frame = CloseFrame {
            code: CloseCode::from(RESUMABLE_CLOSE),
            reason: "".into(),
        };
        let _ = self.tx.send(Message::Close(Some(frame))).await;
    }
}
