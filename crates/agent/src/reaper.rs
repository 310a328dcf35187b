//! The one place that waits for children: PID 1 reaps everything, including orphans.

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
}

pub(crate) type SharedReaper = Rc<RefCell<Reaper>>;

impl Reaper {
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

    /// Collects every exited child without blocking.
    pub fn reap(&mut self) {
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid only writes the status through the valid pointer to a local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid > 0 {
                let info = if libc::WIFEXITED(status) {
                    ExitInfo {
                        exit_code: libc::WEXITSTATUS(status),
                        signal: None,
                        at: Instant::now(),
                    }
                } else if libc::WIFSIGNALED(status) {
                    let sig = libc::WTERMSIG(status);
                    ExitInfo {
                        exit_code: 128 + sig,
                        signal: Some(sig),
                        at: Instant::now(),
                    }
                } else {
                    // Stopped/continued: not asked for (no WUNTRACED), ignore.
                    continue;
                };
                self.dispatch(pid, info);
            } else if pid == 0 {
                return; // children left, none exited
            } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            } else {
                return; // ECHILD: no children at all
            }
        }
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

/// Reaps on every SIGCHLD (signals coalesce, so each round collects all exited children).
pub(crate) async fn run(reaper: SharedReaper, mut sigchld: Signal) {
    loop {
        reaper.borrow_mut().reap();
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}
