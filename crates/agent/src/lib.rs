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

mod archive;
mod conn;
mod error;
mod exec;
mod files;
mod ports;
mod procs;
mod pty;
mod reaper;
mod search;
mod spawn;
mod watch;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::LocalSet;

use crate::reaper::SharedReaper;

/// Errors that stop the agent (errors of one connection only close that connection).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot start the agent's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("bad listening socket: {0}")]
    Listener(std::io::Error),
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    LocalSet::new().block_on(&rt, serve_async(listener))
}

async fn serve_async(listener: OwnedFd) -> Result<(), AgentError> {
    // The SIGCHLD handler goes in before any child exists.
    let sigchld = signal(SignalKind::child()).map_err(AgentError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let reaper = SharedReaper::default();
    // Durable processes belong to the agent, not to a connection. Their leaders are
    // registered with the reaper like every command's, so the SIGTERM kill below covers them.
    let procs = procs::SharedProcs::default();
    tokio::task::spawn_local(reaper::run(reaper.clone(), sigchld));

    let listener = std::os::unix::net::UnixListener::from(listener);
    listener
        .set_nonblocking(true)
        .map_err(AgentError::Listener)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(AgentError::Listener)?;

    loop {
        tokio::select! {
            biased;
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            res = listener.accept() => match res {
                Ok((stream, _)) => {
                    let reaper = reaper.clone();
                    let procs = procs.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(e) = conn::handle(stream, reaper, procs).await {
                            tracing::debug!("agent connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning.
                    tracing::warn!("agent accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }

    tracing::info!("agent: terminating, killing all commands");
    let groups: Vec<i32> = reaper.borrow().running().collect();
    for pgid in groups {
        // SAFETY: kill has no memory-safety preconditions; these leaders are not reaped yet.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    Ok(())
}
