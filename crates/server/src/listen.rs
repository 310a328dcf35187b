//! Serving [`crate::router`] on a TCP listener, with the limits that keep a daemon
//! responsive whatever its clients do:
//!
//! - a connection must send a request's headers within `header_read_timeout` (this also
//!   ends keep-alive connections idle for that long), so half-written requests cannot hold
//!   connections;
//! - at most `max_connections` connections are served at once (an upgraded connection
//!   counts until it closes). A new connection beyond it closes the oldest connection that
//!   has no request in progress (idle keep-alive, or still sending its headers); when all
//!   have one, it waits (and the listen backlog behind it) until one ends: nothing spins;
//! - long-lived responses have their own, lower cap (see `streams`), so short requests keep
//!   a reserve of connections.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use warren_engine::Engine;

use crate::output::Held;

/// Serve the API over `engine` on `listener` until `shutdown` completes; then stop
/// accepting, let the requests in progress finish (idle connections close at once) and
/// return when every connection has ended. Limits come from the engine's config
/// (`max_connections`, `max_streams`, `header_read_timeout`).
pub async fn serve<F>(listener: TcpListener, engine: Engine, shutdown: F) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    serve_with(listener, engine, None, shutdown).await
}

/// [`serve`], with API keys (and sandbox tokens for the proxy) required on every route but
/// `/healthz` when `auth` is given.
pub async fn serve_with<F>(
    listener: TcpListener,
    engine: Engine,
    auth: Option<crate::auth::Auth>,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let opts = crate::ServeOptions {
        auth,
        ..Default::default()
    };
    serve_opts(listener, engine, opts, shutdown).await
}

/// [`serve_with`] with every option of [`crate::ServeOptions`].
pub async fn serve_opts<F>(
    listener: TcpListener,
    engine: Engine,
    opts: crate::ServeOptions,
    shutdown: F,
) -> io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let max_connections = engine.config().max_connections.max(1);
    let header_timeout = engine.config().header_read_timeout;
    let app = crate::router_opts(engine, opts);
    let slots = Arc::new(Semaphore::new(max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a sender; `recv` returns `None` once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let idle = Arc::new(Mutex::new(IdleConnections::default()));
    // A connection is not closed for a newcomer before it has had this long to send a
    // request.
    let grace = (header_timeout / 4).min(Duration::from_secs(1));
    let mut shutdown = pin!(shutdown);
    'accept: loop {
        let (tcp, remote) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            // At the cap: the oldest connection that has had no request in progress for a
            // while (idle keep-alive, or still sending its headers) is closed to make room;
            // while there is none, this one (and the backlog behind it) waits.
            Err(_) => loop {
                lock(&idle).evict_oldest(grace);
                tokio::select! {
                    biased;
                    _ = &mut shutdown => break 'accept,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => break slot,
                        Err(_) => break 'accept, // never closed
                    },
                    _ = tokio::time::sleep(grace) => {}
                }
            },
        };
        // Streams write small frames one after another: without TCP_NODELAY, Nagle holds
        // each back until the client's delayed ACK (~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        let busy = Arc::new(Activity::new());
        let (evict_tx, mut evict_rx) = oneshot::channel::<()>();
        let id = lock(&idle).add(busy.clone(), evict_tx);
        let app = app.clone();
        let requests = busy.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // The proxy adds X-Forwarded-For from it.
            req.extensions_mut().insert(ConnectInfo(remote));
            let in_progress = InProgress::new(&requests);
            let response = app.clone().oneshot(req.map(Body::new));
            async move {
                let response = response.await?;
                let (parts, body) = response.into_parts();
                Ok::<_, Infallible>(hyper::Response::from_parts(
                    parts,
                    Held::body(body, in_progress),
                ))
            }
        });
        let io = TokioIo::new(Counted { tcp, _slot: slot });
        let mut stop = stop_rx.clone();
        let alive = alive_tx.clone();
        let registry = idle.clone();
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let mut conn = pin!(builder.serve_connection(io, service).with_upgrades());
            let result = tokio::select! {
                result = conn.as_mut() => result,
                // The only change ever sent is the stop.
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
                _ = &mut evict_rx => {
                    // The connection is not polled here, so no request can start now: one
                    // without a request is closed at once, one that just got one finishes it.
                    if busy.requests.load(Ordering::SeqCst) == 0 {
                        Ok(())
                    } else {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            };
            lock(&registry).remove(id);
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
            drop(alive);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let _ = alive_rx.recv().await;
    Ok(())
}

/// What a connection is doing: requests in progress, and since when it has had none.
struct Activity {
    requests: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            requests: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// No request in progress for at least `grace`.
    fn idle_for(&self, grace: Duration) -> bool {
        let since = *self
            .idle_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.requests.load(Ordering::SeqCst) == 0 && since.elapsed() >= grace
    }
}

/// Open connections that may be closed to make room at the cap, oldest first.
#[derive(Default)]
struct IdleConnections {
    next: u64,
    conns: BTreeMap<u64, (Arc<Activity>, oneshot::Sender<()>)>,
}

impl IdleConnections {
    fn add(&mut self, activity: Arc<Activity>, evict: oneshot::Sender<()>) -> u64 {
        self.next += 1;
        self.conns.insert(self.next, (activity, evict));
        self.next
    }

    fn remove(&mut self, id: u64) {
        self.conns.remove(&id);
    }

    /// Tell the oldest connection idle for `grace` to close.
    fn evict_oldest(&mut self, grace: Duration) {
        let oldest = self
            .conns
            .iter()
            .find(|(_, (activity, _))| activity.idle_for(grace))
            .map(|(id, _)| *id);
        if let Some((_, evict)) = oldest.and_then(|id| self.conns.remove(&id)) {
            let _ = evict.send(());
        }
    }
}

fn lock(idle: &Mutex<IdleConnections>) -> std::sync::MutexGuard<'_, IdleConnections> {
    // The registry stays consistent whatever a panicking holder did.
    idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A request in progress on a connection, from its headers until its response body has
/// been sent (or dropped).
struct InProgress(Arc<Activity>);

impl InProgress {
    fn new(activity: &Arc<Activity>) -> InProgress {
        activity.requests.fetch_add(1, Ordering::SeqCst);
        InProgress(activity.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Instant::now();
        self.0.requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An accept that failed: a connection that died before it was accepted is simply skipped;
/// anything else (out of descriptors, ...) is logged and retried after a pause rather than
/// in a busy loop.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection that holds its place under `max_connections` for as long as it is open,
/// also after an upgrade hands it to a WebSocket or proxy task.
struct Counted {
    tcp: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
