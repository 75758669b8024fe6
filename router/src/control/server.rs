//! Serving the control API: accepting connections and speaking HTTP/1.1 on them, within bounds
//! a stalling client cannot stretch.
//!
//! Owns the accept loop and each connection's life. Every connection is accepted at once (a
//! backlog full of silent connections would leave a health probe waiting behind them), up to
//! four times `control.max_connections` held at once, and four times
//! `max_connections_per_peer` from one address; past that it is closed at once. It has
//! `first_byte_timeout` to send its first bytes, and holds no slot until it has. Then it is
//! served in one of `max_connections` slots, at most `max_connections_per_peer` of them for
//! its peer address; a probe (`GET /healthz`, `/readyz` or `/metrics`) that finds none is
//! served at once in one of `reserved_connections`, anything else waits, up to
//! `idle_timeout`. Then a `header_read_timeout` for each request's headers (hyper's), an
//! `idle_timeout` after which a connection that completed no request is dropped, and graceful
//! shutdown. The routes are
//! `api`'s (the control API's, or the REST proxy's alone on `rest.listen`); a command's body
//! limit is set on its route, before any handler runs, a REST body's kept by the proxy as it
//! reads it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tower_service::Service;

use super::api::{app, probe_app, ControlState};
use crate::config::ControlConfig;

/// How long to wait after `accept` fails (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the control API on `listener`, within `limits`, until `shutdown` resolves; then lets
/// the connections finish their requests and returns. Connections past `max_connections` are
/// served `api::probe_app` in the reserved slots.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ControlState>,
    limits: &ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let probes = probe_app(state.clone());
    serve_apps(listener, app(state), Some(probes), limits, shutdown).await
}

/// Like `serve`, with other routes: the REST proxy's alone on `rest.listen` (`api::rest_app`),
/// within the same bounds, and no reserved slots.
pub async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    limits: &ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_apps(listener, app, None, limits, shutdown).await
}

/// Each peer address's share of the slots (`max_connections_per_peer`), and how many
/// connections it holds, served or waiting; made when the address first connects and dropped
/// when no connection of it is left.
#[derive(Clone)]
struct Peers {
    shares: Arc<std::sync::Mutex<HashMap<IpAddr, Share>>>,
    per_peer: usize,
}

/// A peer's share of the slots, and its connections held.
type Share = (Arc<Semaphore>, usize);

/// A connection's claim on its peer's share: a permit once served; while it lives it counts
/// among its peer's connections.
struct PeerShare {
    peers: Peers,
    ip: IpAddr,
    share: Arc<Semaphore>,
}

/// Connections held at once, served or waiting, per slot: past `HELD_PER_SLOT` times
/// `max_connections_per_peer` of one address, or times `max_connections` in all, a new one is
/// closed at once (a flood costs file descriptors, not slots, but not without bound).
const HELD_PER_SLOT: usize = 4;

impl Peers {
    /// A claim for a new connection of `ip`, unless it holds as many as it may already.
    fn share(&self, ip: IpAddr) -> Option<PeerShare> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        let (share, held) = shares
            .entry(ip)
            .or_insert_with(|| (Arc::new(Semaphore::new(self.per_peer)), 0));
        if *held >= self.per_peer.saturating_mul(HELD_PER_SLOT) {
            return None;
        }
        *held += 1;
        Some(PeerShare {
            peers: self.clone(),
            ip,
            share: share.clone(),
        })
    }
}

impl Drop for PeerShare {
    fn drop(&mut self) {
        let mut shares = self.peers.shares.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, held)) = shares.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                shares.remove(&self.ip);
            }
        }
    }
}

async fn serve_apps(
    listener: TcpListener,
    app: axum::Router,
    probes: Option<axum::Router>,
    limits: &ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let reserved = Arc::new(Semaphore::new(match probes {
        Some(_) => limits.reserved_connections,
        None => 0,
    }));
    let peers = Peers {
        shares: Arc::default(),
        per_peer: limits.max_connections_per_peer,
    };
    let most = limits.max_connections.saturating_mul(HELD_PER_SLOT) + limits.reserved_connections;
    // Said once a second at most: a flood would otherwise flood the log too.
    let mut last_said: Option<Instant> = None;
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!("the control API could not accept a connection: {e}");
                    sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let share = match connections.len() < most {
            true => peers.share(peer.ip()),
            false => None,
        };
        let Some(share) = share else {
            if last_said.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                last_said = Some(Instant::now());
                tracing::warn!(
                    peer = %peer.ip(),
                    held = connections.len(),
                    "the control API closed a connection at once: its address holds {HELD_PER_SLOT} times control.max_connections_per_peer, or all hold {HELD_PER_SLOT} times control.max_connections, served or waiting"
                );
            }
            drop(stream);
            continue;
        };
        let connection = Connection {
            http: http.clone(),
            app: app.clone(),
            probes: probes.clone(),
            slots: slots.clone(),
            reserved: reserved.clone(),
            peer: share,
            first_byte_timeout: limits.first_byte_timeout,
            idle_timeout: limits.idle_timeout,
            stopped: stopped.clone(),
        };
        connections.spawn(connection.run(stream));
    }
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One accepted connection and what bounds it.
struct Connection {
    http: hyper::server::conn::http1::Builder,
    app: axum::Router,
    /// What a probe is served in a reserved slot (the control API's listener only).
    probes: Option<axum::Router>,
    /// The `max_connections` slots, and the reserved ones.
    slots: Arc<Semaphore>,
    reserved: Arc<Semaphore>,
    /// Its peer's share of the slots.
    peer: PeerShare,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    stopped: watch::Receiver<bool>,
}

/// Whether a connection's first bytes are a probe's request: health, readiness or metrics.
fn is_probe(first: &[u8]) -> bool {
    [
        &b"GET /healthz "[..],
        &b"GET /readyz "[..],
        &b"GET /metrics "[..],
    ]
    .iter()
    .any(|p| first.starts_with(p))
}

impl Connection {
    /// A reserved slot and the probes' routes, for a connection whose first bytes are a
    /// probe's, while one is free.
    fn reserved_for(&self, first: &[u8]) -> Option<(OwnedSemaphorePermit, axum::Router)> {
        let probes = self.probes.as_ref().filter(|_| is_probe(first))?;
        let slot = self.reserved.clone().try_acquire_owned().ok()?;
        Some((slot, probes.clone()))
    }

    /// The permits the connection holds while it lives, and what it is served. A probe is
    /// served at once: in a free slot its peer's share allows, else in a reserved one.
    /// Anything else waits for its peer's share, then a slot.
    async fn take_slot(&self, first: &[u8]) -> Option<(Vec<OwnedSemaphorePermit>, axum::Router)> {
        if let Ok(mine) = self.peer.share.clone().try_acquire_owned() {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                return Some((vec![mine, slot], self.app.clone()));
            }
        }
        if let Some((slot, probes)) = self.reserved_for(first) {
            return Some((vec![slot], probes));
        }
        let mine = self.peer.share.clone().acquire_owned().await.ok()?;
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        Some((vec![mine, slot], self.app.clone()))
    }

    async fn run(mut self, stream: TcpStream) {
        // A connection that sends nothing gives its place back soon. Its first bytes are only
        // looked at: hyper reads them. (A probe whose request line arrives in pieces is served
        // as any other request is.)
        let mut first = [0u8; 16];
        let peeked = tokio::time::timeout(self.first_byte_timeout, stream.peek(&mut first));
        let seen = tokio::select! {
            peeked = peeked => match peeked {
                Ok(Ok(n)) if n > 0 => n,
                _ => return,
            },
            _ = self.stopped.wait_for(|s| *s) => return,
        };
        let taken = tokio::time::timeout(self.idle_timeout, self.take_slot(&first[..seen]));
        let mut stopped = self.stopped.clone();
        // Held while the connection lives.
        let (_permits, app) = tokio::select! {
            taken = taken => match taken {
                Ok(Some(taken)) => taken,
                _ => return,
            },
            _ = stopped.wait_for(|s| *s) => return,
        };
        self.app = app;
        let answered = Arc::new(Notify::new());
        let service = {
            let (app, answered) = (self.app.clone(), answered.clone());
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let (mut app, answered) = (app.clone(), answered.clone());
                async move {
                    // A `Router` is always ready: no `poll_ready` first.
                    let response = app.call(request).await;
                    answered.notify_one();
                    Ok::<_, Infallible>(match response {
                        Ok(response) => response,
                        Err(never) => match never {},
                    })
                }
            })
        };
        let connection = self.http.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut deadline = Instant::now() + self.idle_timeout;
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = connection.as_mut() => return,
                () = answered.notified() => deadline = Instant::now() + self.idle_timeout,
                // Dropping the connection closes it, mid-request or not.
                () = sleep_until(deadline) => return,
                _ = self.stopped.wait_for(|s| *s), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
