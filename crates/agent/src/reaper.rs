//! The one place that waits for children: PID 1 reaps everything, including orphans. A
//! hosted agent (inside another program) waits only for the commands it started.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::signal::unix::Signal;
use tokio::sync::oneshot;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitInfo {
    /// The exit code, or 128+signal for a signal death.
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// When the reaper collected it.
    pub at: Instant,
}

/// Statuses of pids nobody waits for are kept this long, in case their exec registers late.
const EARLY_TTL: Duration = Duration::from_secs(1);
/// ... and at most this many (orphans' statuses end up here too).
const EARLY_CAP: usize = 64;

/// Dispatches exit statuses to the execs waiting for them.
///
/// The agent registers a child right after spawning it, before it yields to the runtime
/// (current_thread), so the reaper cannot see the child first. Statuses of unknown pids are
/// orphans'; they are still kept briefly (bounded in count and age, so a recycled pid never gets
/// a stale status) so that a registration after a yield would not lose a fast exit.
#[derive(Debug, Default)]
pub(crate) struct Reaper {
    waiting: HashMap<i32, oneshot::Sender<ExitInfo>>,
    early: Vec<(i32, ExitInfo)>,
    /// Wait only for registered pids (`waitpid(pid)`), never `waitpid(-1)`: the agent
    /// shares its process with others' children.
    own_only: bool,
}

pub(crate) type SharedReaper = Rc<RefCell<Reaper>>;

impl Reaper {
    /// A reaper that waits only for the pids registered with it.
    pub fn own_children() -> Reaper {
        Reaper {
            own_only: true,
            ..Reaper::default()
        }
    }

    /// Returns a receiver for the exit of `pid`.
    pub fn register(&mut self, pid: i32) -> oneshot::Receiver<ExitInfo> {
        let (tx, rx) = oneshot::channel();
        let now = Instant::now();
        self.early
            .retain(|(_, info)| now.saturating_duration_since(info.at) < EARLY_TTL);
        if let Some(i) = self.early.iter().position(|(p, _)| *p == pid) {
            let (_, info) = self.early.swap_remove(i);
            let _ = tx.send(info);
        } else {
            self.waiting.insert(pid, tx);
        }
        rx
    }

    /// Pids (= process groups) of the commands still running.
    pub fn running(&self) -> impl Iterator<Item = i32> + '_ {
        self.waiting.keys().copied()
    }

    /// Collects every exited child (or, [`Reaper::own_children`], every exited registered
    /// one) without blocking.
    pub fn reap(&mut self) {
        if self.own_only {
            let pids: Vec<i32> = self.waiting.keys().copied().collect();
            for pid in pids {
                if let Ok(Some((pid, Some(info)))) = wait(pid) {
                    self.dispatch(pid, info);
                }
            }
            return;
        }
        loop {
            match wait(-1) {
                // Stopped/continued (`None`): not asked for (no WUNTRACED), ignore.
                Ok(Some((pid, info))) => {
                    if let Some(info) = info {
                        self.dispatch(pid, info);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // None exited, or ECHILD: no children at all.
                Ok(None) | Err(_) => return,
            }
        }
    }

    /// Waits (blocking) for every registered pid; for a hosted agent that just killed them
    /// all, so none is left a zombie in the program that hosts it.
    pub fn reap_all_blocking(&mut self) {
        let pids: Vec<i32> = self.waiting.keys().copied().collect();
        for pid in pids {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid only writes the status through the valid pointer to a local.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            self.waiting.remove(&pid);
        }
    }

    /// Whether this reaper waits only for its own pids.
    pub fn own_only(&self) -> bool {
        self.own_only
    }

    fn dispatch(&mut self, pid: i32, info: ExitInfo) {
        match self.waiting.remove(&pid) {
            // The exec may have gone away meanwhile; then nobody needs the status.
            Some(tx) => {
                let _ = tx.send(info);
            }
            None => {
                if self.early.len() >= EARLY_CAP {
                    self.early.remove(0);
                }
                self.early.push((pid, info));
            }
        }
    }
}

/// `waitpid(pid, WNOHANG)`: the pid that changed and how it ended (`None` if it only
/// stopped or continued); `Ok(None)` when none changed.
fn wait(pid: i32) -> std::io::Result<Option<(i32, Option<ExitInfo>)>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid only writes the status through the valid pointer to a local.
    let got = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if got == 0 {
        return Ok(None);
    }
    let info = if libc::WIFEXITED(status) {
        Some(ExitInfo {
            exit_code: libc::WEXITSTATUS(status),
            signal: None,
            at: Instant::now(),
        })
    } else if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        Some(ExitInfo {
            exit_code: 128 + sig,
            signal: Some(sig),
            at: Instant::now(),
        })
    } else {
        None
    };
    Ok(Some((got, info)))
}

/// Reaps on every SIGCHLD (signals coalesce, so each round collects all exited children).
pub(crate) async fn run(reaper: SharedReaper, mut sigchld: Signal) {
    loop {
        reaper.borrow_mut().reap();
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}
