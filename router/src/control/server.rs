//! Serving the control API: accepting connections and speaking HTTP/1.1 on them, within bounds
//! a stalling client cannot stretch.
//!
//! Owns the accept loop and each connection's life: at most `control.max_connections` served at
//! once (more wait in the listen backlog, holding no file descriptor of the process), a
//! `header_read_timeout` for each request's headers (hyper's), an `idle_timeout` after which a
//! connection that completed no request is dropped, and graceful shutdown. The routes are
//! `api`'s (the control API's, or the REST proxy's alone on `rest.listen`); a command's body
//! limit is set on its route, before any handler runs, a REST body's kept by the proxy as it
//! reads it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tower_service::Service;

use super::api::{app, ControlState};
use crate::config::ControlConfig;

/// How long to wait after `accept` fails (out of file descriptors, say) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the control API on `listener`, within `limits`, until `shutdown` resolves; then lets
/// the connections finish their requests and returns.
pub async fn serve(
    listener: TcpListener,
    state: Arc<ControlState>,
    limits: &ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_app(listener, app(state), limits, shutdown).await
}

/// Like `serve`, with other routes: the REST proxy's alone on `rest.listen` (`api::rest_app`),
/// within the same bounds.
pub async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    limits: &ControlConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first: past the cap, connections wait in the kernel's backlog, not here.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("the control API could not accept a connection: {e}");
                    sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let connection = Connection {
            http: http.clone(),
            app: app.clone(),
            idle_timeout: limits.idle_timeout,
            stopped: stopped.clone(),
            _slot: slot,
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
    idle_timeout: Duration,
    stopped: watch::Receiver<bool>,
    /// Held while the connection lives: its place under `max_connections`.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(mut self, stream: TcpStream) {
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
