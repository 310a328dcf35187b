//! Ports of a running sandbox, reachable from the host.
//!
//! [`Engine::connect_port`] opens one TCP connection to a port inside the sandbox (the HTTP
//! proxy uses it). [`Engine::forward_port`] makes a port reachable at a plain TCP address on
//! the host's loopback: one listener on `127.0.0.1:0` per (sandbox, port), made on the first
//! request and reused after; every accepted connection is spliced onto a fresh
//! [`Runtime::connect_port`](warren_runtime::Runtime::connect_port) stream. Listeners and
//! their connections belong to the sandbox: deleting it (and shutting down) closes them all.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};
use warren_runtime::{AgentClient, PortStream, Runtime, RuntimeError};

use warren_api::PortAddress;

use crate::{Engine, EngineError};

/// The URL of a host address: `http://127.0.0.1:8080`, `http://[::1]:8080`.
pub fn address_to_url(address: SocketAddr) -> String {
    format!("http://{address}")
}

/// One listener and, inside its task, its connections.
struct Forwarder {
    address: SocketAddr,
    /// The accept loop; it owns a `JoinSet` of the connection tasks, so aborting it aborts
    /// them all.
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every forwarder, by sandbox and port.
#[derive(Default)]
pub(crate) struct Forwards {
    map: Mutex<HashMap<String, HashMap<u16, Forwarder>>>,
}

impl Forwards {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, HashMap<u16, Forwarder>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes every listener of sandbox `id` and every connection through them.
    pub(crate) fn close_sandbox(&self, id: &str) {
        let removed = self.lock().remove(id);
        if let Some(ports) = removed {
            if !ports.is_empty() {
                info!(%id, count = ports.len(), "closing forwarded ports");
            }
            drop(ports);
        }
    }

    /// Closes everything (at shutdown).
    pub(crate) fn close_all(&self) {
        let all = std::mem::take(&mut *self.lock());
        drop(all);
    }
}

fn validate_port(port: u16) -> Result<(), EngineError> {
    if port == 0 {
        return Err(EngineError::InvalidRequest(
            "port must be between 1 and 65535".into(),
        ));
    }
    Ok(())
}

impl Engine {
    /// One TCP connection to `127.0.0.1:port` inside the sandbox. Nothing listening there is
    /// `port_unreachable`.
    pub async fn connect_port(
        &self,
        id: &str,
        port: u16,
    ) -> Result<Box<dyn PortStream>, EngineError> {
        validate_port(port)?;
        self.ready(id).await?;
        match self.agent(&crate::sandbox_id(id)?).connect_port(port).await {
            Ok(s) => Ok(Box::new(crate::lifecycle::AttachedPort::new(
                s,
                self.attach_counter(id),
            ))),
            Err(RuntimeError::Port { message, .. }) => {
                Err(EngineError::PortUnreachable { port, message })
            }
            Err(RuntimeError::Unsupported(what)) => Err(EngineError::NotSupported(what)),
            Err(RuntimeError::NotFound(_)) => Err(self
                .mark_failed(id, "the sandbox's runtime state is gone")
                .await),
            Err(e) => Err(EngineError::Runtime(e)),
        }
    }

    /// The host address where `port` of sandbox `id` is reachable; made on the first call,
    /// the same on later ones, closed when the sandbox is deleted. Connecting to it opens a
    /// connection to the port inside (a refused one is closed at once).
    pub async fn forward_port(&self, id: &str, port: u16) -> Result<PortAddress, EngineError> {
        validate_port(port)?;
        self.ready(id).await?;
        let address = {
            let mut all = self.inner.ports.lock();
            let ports = all.entry(id.to_string()).or_default();
            match ports.get(&port) {
                Some(f) if !f.task.is_finished() => f.address,
                _ => {
                    let (listener, address) = bind_loopback().map_err(|e| {
                        EngineError::Runtime(RuntimeError::Setup(format!(
                            "cannot listen for port {port}: {e}"
                        )))
                    })?;
                    let task = tokio::spawn(accept_loop(
                        listener,
                        self.inner.runtime.clone(),
                        id.to_string(),
                        port,
                        self.attach_counter(id),
                    ));
                    info!(%id, port, %address, "forwarding port");
                    ports.insert(port, Forwarder { address, task });
                    address
                }
            }
        };
        // A deletion that began meanwhile may have closed the forwarders before ours was
        // added: check again, and close ours if so.
        let still_running = self
            .map()
            .get(id)
            .map(|e| crate::lifecycle::require_running(id, &e.record, "ports are reachable"));
        match still_running {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                self.inner.ports.close_sandbox(id);
                return Err(e);
            }
            None => {
                self.inner.ports.close_sandbox(id);
                return Err(EngineError::SandboxNotFound(id.to_string()));
            }
        }
        Ok(PortAddress {
            port,
            address,
            url: address_to_url(address),
            access_token: None,
        })
    }
}

/// Binds `127.0.0.1:0` (a non-blocking bind of a local socket: no waiting involved).
fn bind_loopback() -> std::io::Result<(TcpListener, SocketAddr)> {
    let std_listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let address = listener.local_addr()?;
    Ok((listener, address))
}

async fn accept_loop(
    listener: TcpListener,
    runtime: Arc<dyn Runtime>,
    id: String,
    port: u16,
    attached: Option<Arc<AtomicUsize>>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            res = listener.accept() => match res {
                Ok((stream, peer)) => {
                    conns.spawn(forward_one(
                        stream,
                        runtime.clone(),
                        id.clone(),
                        port,
                        peer,
                        attached.clone(),
                    ));
                }
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    warn!(%id, port, error = %e, "accepting a forwarded connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn forward_one(
    mut client: TcpStream,
    runtime: Arc<dyn Runtime>,
    id: String,
    port: u16,
    peer: SocketAddr,
    attached: Option<Arc<AtomicUsize>>,
) {
    let _ = client.set_nodelay(true);
    // An open forwarded connection keeps the sandbox from idling out.
    let _attached = attached.map(crate::lifecycle::Attached::new);
    let Ok(sid) = warren_runtime::SandboxId::parse(&id) else {
        return;
    };
    let mut inside = match AgentClient::new(&*runtime, &sid).connect_port(port).await {
        Ok(s) => s,
        Err(e) => {
            // Nothing listens there (or the sandbox is going away): close the connection.
            debug!(%id, port, %peer, error = %e, "forwarded connection refused");
            return;
        }
    };
    match tokio::io::copy_bidirectional(&mut client, &mut inside).await {
        Ok((up, down)) => debug!(%id, port, %peer, up, down, "forwarded connection closed"),
        Err(e) => debug!(%id, port, %peer, error = %e, "forwarded connection ended"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use warren_api::CreateSandboxRequest;

    use crate::{Engine, EngineError};
    use warren_testkit::fake::ports::{ECHO_PORT, HTTP_PORT};
    use warren_testkit::FakeRuntime;

    async fn engine() -> (Engine, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let mut c = crate::tests::config();
        c.data_dir = dir.0.clone();
        let e = Engine::open(c, Arc::new(FakeRuntime::new())).await.unwrap();
        (e, dir)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                Dir(std::env::temp_dir().join(format!(
                    "warren-engine-ports-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                )))
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[tokio::test]
    async fn forward_is_reused_and_closed_on_delete() {
        let (e, _dir) = engine().await;
        assert!(e.capabilities().features.ports);
        let sb = e.create(CreateSandboxRequest::default()).await.unwrap();
        let f = e.forward_port(&sb.id, ECHO_PORT).await.unwrap();
        assert!(f.address.ip().is_loopback());
        assert_eq!(f.url, format!("http://{}", f.address));
        assert_eq!(e.forward_port(&sb.id, ECHO_PORT).await.unwrap(), f);
        let other = e.forward_port(&sb.id, HTTP_PORT).await.unwrap();
        assert_ne!(other.address, f.address);

        let mut c = tokio::net::TcpStream::connect(f.address).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pingbye");

        // A connection open at deletion is closed too.
        let mut open = tokio::net::TcpStream::connect(f.address).await.unwrap();
        open.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).await.unwrap();

        e.delete(&sb.id).await.unwrap();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest))
            .await
            .expect("open connection not closed");
        assert!(n.is_err() || rest.is_empty());
        // The listener is gone (give the aborted task a moment to drop it).
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(f.address).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "listener still accepts after delete");
    }

    #[tokio::test]
    async fn refused_port_closes_the_connection() {
        let (e, _dir) = engine().await;
        let sb = e.create(CreateSandboxRequest::default()).await.unwrap();
        let f = e.forward_port(&sb.id, 9).await.unwrap();
        let mut c = tokio::net::TcpStream::connect(f.address).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut got))
            .await
            .expect("not closed");
        assert!(got.is_empty());
        assert!(matches!(
            e.connect_port(&sb.id, 9).await,
            Err(EngineError::PortUnreachable { port: 9, .. })
        ));
    }

    #[tokio::test]
    async fn errors() {
        let (e, _dir) = engine().await;
        assert!(matches!(
            e.forward_port("sb-nope", 80).await,
            Err(EngineError::SandboxNotFound(_))
        ));
        let sb = e.create(CreateSandboxRequest::default()).await.unwrap();
        let err = e.forward_port(&sb.id, 0).await.unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert_eq!(
            e.connect_port(&sb.id, 1)
                .await
                .err()
                .map(|e| e.code().as_str()),
            Some("port_unreachable")
        );
        // Shutdown closes every forwarded address.
        let f = e.forward_port(&sb.id, ECHO_PORT).await.unwrap();
        e.shutdown_deleting_all().await;
        let mut refused = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(f.address).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "listener still accepts after shutdown");
        assert!(matches!(
            e.forward_port(&sb.id, ECHO_PORT).await,
            Err(EngineError::SandboxNotFound(_))
        ));
    }
}
