//! The in-sandbox agent: PID 1 of every Warren sandbox.
//!
//! [`serve`] runs in a fresh single-threaded process that the runtime has already confined
//! (namespaces, pivot_root, capabilities, seccomp). It answers the agent protocol
//! ([`warren_proto`]) on a listening Unix socket, one request per connection, many connections
//! at once, on a current_thread tokio runtime. File requests do their file-system work on
//! tokio's blocking pool (so a big file never stalls the agent's thread); commands start from a
//! `CLONE_VM | CLONE_VFORK` child that makes only raw system calls on memory prepared for it
//! before exec (see `spawn`), so those threads are harmless.
//!
//! PID 1 duties:
//! - **Reaping.** One SIGCHLD-driven reaper collects every child with `waitpid(-1)`, including
//!   orphans re-parented to the agent, and hands each exit status to the exec waiting for it.
//!   The agent also makes itself a child subreaper, so orphans come to it even when it is not
//!   PID 1 (e.g. in tests). Nothing else waits for children (no `tokio::process`).
//! - **Signals.** SIGTERM and SIGINT make the agent SIGKILL the process groups of all running
//!   commands and return from [`serve`] (the caller then exits; as PID 1 that tears down the
//!   whole PID namespace, including stray processes in other groups). SIGPIPE and SIGHUP are
//!   ignored; every other signal keeps the kernel's PID 1 treatment (ignored without a handler).
//!   Commands start with all signal dispositions at their defaults and an empty signal mask.
//!
//! Each command leads its own session and process group (pgid = pid). It is killed (the whole
//! group, SIGKILL) on timeout and when the host closes the connection before the exit.
//!
//! Durable processes (`procs`) belong to the agent instead of a connection: they keep running
//! when their starter disconnects, their output goes to a bounded log that attachments replay
//! by offset, and they may run in a pseudo-terminal (`pty`). They die on timeout, on a signal
//! the host sends, and with the agent.
//!
//! Every path a request names resolves inside the agent's root (`root.rs`: `openat2` with
//! `RESOLVE_IN_ROOT`): as PID 1 that is `/`, a second line behind pivot_root. [`Hosted`] runs
//! the same agent inside another program over a directory of the host, for tests of the
//! layers above (engine, server, SDKs) that need a real agent but no kernel sandbox: the same
//! file, process, search and watch code answers them.

mod archive;
mod conn;
mod error;
mod exec;
mod files;
mod ports;
mod procs;
mod pty;
mod reaper;
mod root;
mod search;
mod spawn;
mod watch;

use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;

use crate::reaper::{Reaper, SharedReaper};
use crate::root::Root;

/// Errors that stop the agent (errors of one connection only close that connection).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start the agent's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("bad listening socket: {0}")]
    Listener(std::io::Error),
    #[error("cannot open the root {0}")]
    Root(std::io::Error),
}

/// Serves the agent protocol on `listener` (a bound, listening `AF_UNIX` stream socket) until
/// SIGTERM or SIGINT. Call it in a fresh single-threaded process: it builds its own
/// current_thread runtime.
pub fn serve(listener: OwnedFd) -> Result<(), AgentError> {
    // SAFETY: setting dispositions to SIG_IGN and the PR_SET_CHILD_SUBREAPER flag has no
    // memory-safety preconditions; this process is single-threaded here.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
        // Best effort: pointless (but harmless) when already PID 1.
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    }
    // Commands must not inherit the listener.
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(AgentError::Listener(std::io::Error::last_os_error()));
    }
    let root = Arc::new(Root::open(Path::new("/")).map_err(AgentError::Root)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    LocalSet::new().block_on(&rt, async move {
        let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
        let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
        let listener = std::os::unix::net::UnixListener::from(listener);
        listener
            .set_nonblocking(true)
            .map_err(AgentError::Listener)?;
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(AgentError::Listener)?;
        let stop = async move {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = sigint.recv() => {}
            }
        };
        serve_conns(root, SharedReaper::default(), listener, stop).await
    })
}

/// Where connections come from.
trait Incoming {
    /// The next connection; `None`: none this time, ask again.
    async fn next(&mut self) -> Option<UnixStream>;
}

impl Incoming for tokio::net::UnixListener {
    async fn next(&mut self) -> Option<UnixStream> {
        match self.accept().await {
            Ok((stream, _)) => Some(stream),
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                tracing::warn!("agent accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                None
            }
        }
    }
}

impl Incoming for mpsc::UnboundedReceiver<std::os::unix::net::UnixStream> {
    async fn next(&mut self) -> Option<UnixStream> {
        match self.recv().await {
            Some(s) => UnixStream::from_std(s).ok(),
            // Every handle is gone: nothing will come any more.
            None => std::future::pending().await,
        }
    }
}

/// Answers the connections `incoming` yields until `stop` resolves, then kills every command
/// still running.
async fn serve_conns(
    root: Arc<Root>,
    reaper: SharedReaper,
    mut incoming: impl Incoming,
    stop: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // The SIGCHLD handler goes in before any child exists.
    let sigchld = signal(SignalKind::child()).map_err(AgentError::Signals)?;
    // Durable processes belong to the agent, not to a connection. Their leaders are
    // registered with the reaper like every command's, so the kill below covers them.
    let procs = procs::SharedProcs::default();
    let listeners = ports::SharedListeners::default();
    tokio::task::spawn_local(reaper::run(reaper.clone(), sigchld));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            conn = incoming.next() => if let Some(stream) = conn {
                let reaper = reaper.clone();
                let procs = procs.clone();
                let root = root.clone();
                let listeners = listeners.clone();
                tokio::task::spawn_local(async move {
                    if let Err(e) = conn::handle(stream, reaper, procs, root, listeners).await {
                        tracing::debug!("agent connection: {e}");
                    }
                });
            },
        }
    }

    tracing::info!("agent: terminating, killing all commands");
    let groups: Vec<i32> = reaper.borrow().running().collect();
    for pgid in groups {
        // SAFETY: kill has no memory-safety preconditions; these leaders are not reaped yet.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    // A hosted agent reaps what it killed (PID 1's exit takes its namespace down instead).
    let mut reaper = reaper.borrow_mut();
    if reaper.own_only() {
        reaper.reap_all_blocking();
    }
    Ok(())
}

/// What a hosted agent's sandbox has besides its files.
#[derive(Debug, Clone, Default)]
pub struct HostedOptions {
    /// A host directory searched first for commands named without a slash (then the
    /// command's `PATH`, on the host).
    pub programs: Option<std::path::PathBuf>,
    /// The sandbox's ports and the host addresses they are at; a port not listed refuses
    /// connections (a hosted agent has no loopback of its own).
    pub ports: std::collections::HashMap<u16, std::net::SocketAddr>,
}

/// The agent inside another program, serving a directory of the host as the sandbox's root:
/// the same protocol, files, processes, search and watch as PID 1, on its own thread (with
/// its own current_thread runtime). Commands run as this program's user, on the host, in
/// their cwd inside the directory; they are killed when this value is dropped.
///
/// Only for tests: nothing but the path checks keeps commands inside the directory.
pub struct Hosted {
    conns: mpsc::UnboundedSender<std::os::unix::net::UnixStream>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hosted {
    /// Starts an agent whose `/` is `root` (an existing directory).
    pub fn start(root: &Path, opts: HostedOptions) -> Result<Hosted, AgentError> {
        let root = Root::hosted(root, opts.programs, opts.ports).map_err(AgentError::Root)?;
        let root = Arc::new(root);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AgentError::Runtime)?;
        let (conns, incoming) = mpsc::unbounded_channel::<std::os::unix::net::UnixStream>();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("warren-agent".into())
            .spawn(move || {
                let reaper = SharedReaper::new(std::cell::RefCell::new(Reaper::own_children()));
                let stop = async move {
                    let _ = stopped.await;
                };
                if let Err(e) =
                    LocalSet::new().block_on(&rt, serve_conns(root, reaper, incoming, stop))
                {
                    tracing::warn!("hosted agent: {e}");
                }
            })
            .map_err(AgentError::Runtime)?;
        Ok(Hosted {
            conns,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// A new connection to the agent (one request each, as over its socket).
    pub fn connect(&self) -> std::io::Result<std::os::unix::net::UnixStream> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        theirs.set_nonblocking(true)?;
        self.conns
            .send(theirs)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::NotConnected))?;
        Ok(ours)
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // The agent kills its commands and returns at once.
            let _ = t.join();
        }
    }
}
