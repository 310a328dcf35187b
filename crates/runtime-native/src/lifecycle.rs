//! Pause, resume, stop, start, stats and probe for [`NativeRuntime`].
//!
//! - pause/resume freeze and thaw the sandbox's cgroup ([`cgroup::set_frozen`]); the agent
//!   is PID 1 in it, so it freezes too.
//! - stop kills every process (frozen or not), removes the cgroup and the stale socket,
//!   and keeps `<data_dir>/sandboxes/<id>/` with its files; start brings a new agent up on
//!   those files exactly as create does, minus preparing the directory.
//! - stats reads the cgroup's counters, sizes the writable layers and reads the network
//!   counters of the sandbox's own network namespace through its PID 1.
//! - probe tells what is left of a sandbox (after a daemon restart).
//!
//! `<sandbox_dir>/agent.pid` holds PID 1's host pid (written when the helper reports
//! ready); a pid read from it is only trusted while the sandbox's cgroup lists it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::unistd::Pid;
use warren_proto::host as agent;
use warren_proto::{ProtoError, PROTOCOL_VERSION};

use crate::cgroup::{self, Layout};
use crate::layers::{self, allocated_bytes};
use crate::spec::SandboxPaths;
use crate::storage;
use crate::{blocking, cg_err, connect, detached, image, Inner, NativeRuntime};
use warren_runtime::{Probe, RuntimeError, SandboxSpec, Stats};

/// PID 1's host pid, in the sandbox directory.
const AGENT_PID_FILE: &str = "agent.pid";
/// How long probe waits for the agent to answer one ping.
const PROBE_PING_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) fn agent_pid_file(paths: &SandboxPaths) -> PathBuf {
    paths.dir.join(AGENT_PID_FILE)
}

/// What exists of one sandbox on the host, seen in one (blocking) look.
#[derive(Debug)]
struct Presence {
    /// The sandbox directory exists.
    dir: bool,
    /// ... and holds both writable layers.
    files: bool,
    cgroup: bool,
    frozen: bool,
    pids: Vec<Pid>,
}

fn presence(layout: Layout, cg: &Path, paths: &SandboxPaths) -> Result<Presence, RuntimeError> {
    let dir = paths.dir.is_dir();
    let files = dir && paths.upper.is_dir() && paths.usr_upper.is_dir();
    let cgroup = cgroup::exists(layout, cg).map_err(cg_err)?;
    let (frozen, pids) = if cgroup {
        (
            cgroup::is_frozen(layout, cg).map_err(cg_err)?,
            cgroup::pids(layout, cg).map_err(cg_err)?,
        )
    } else {
        (false, Vec::new())
    };
    Ok(Presence {
        dir,
        files,
        cgroup,
        frozen,
        pids,
    })
}

/// `rm` that is fine with a missing file.
pub(super) fn remove_file_if_exists(p: &Path) -> Result<(), RuntimeError> {
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RuntimeError::Setup(format!(
            "removing {}: {e}",
            p.display()
        ))),
    }
}

/// What a stopped sandbox must not keep: the dead agent's socket and pid.
fn remove_runtime_files(paths: &SandboxPaths) -> Result<(), RuntimeError> {
    remove_file_if_exists(&paths.socket)?;
    remove_file_if_exists(&agent_pid_file(paths))
}

/// Replace an overlay work dir by an empty one (overlayfs needs a clean work dir; a used
/// one holds a root-only `work/` subdirectory).
fn reset_work_dir(dir: &Path) -> Result<(), RuntimeError> {
    layers::fresh_dir(dir, 0o755)
        .map_err(|e| RuntimeError::Setup(format!("resetting {}: {e}", dir.display())))
}

/// `(rx_bytes, tx_bytes)` summed over every interface of a `/proc/<pid>/net/dev`.
pub(super) fn parse_net_dev(s: &str) -> (u64, u64) {
    let (mut rx, mut tx) = (0u64, 0u64);
    for line in s.lines().skip(2) {
        let Some((_, counters)) = line.split_once(':') else {
            continue;
        };
        let fields: Vec<&str> = counters.split_whitespace().collect();
        if fields.len() < 9 {
            continue;
        }
        rx = rx.saturating_add(fields[0].parse().unwrap_or(0));
        tx = tx.saturating_add(fields[8].parse().unwrap_or(0));
    }
    (rx, tx)
}

/// Whether a `/proc/<pid>/status` belongs to the PID 1 of a nested PID namespace: its
/// `NSpid:` line lists more than one pid and ends in `1`.
pub(super) fn is_namespace_init(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|rest| {
            let ids: Vec<&str> = rest.split_whitespace().collect();
            ids.len() >= 2 && ids.last() == Some(&"1")
        })
        .unwrap_or(false)
}

/// The agent's host pid: `agent.pid` if the cgroup lists that pid, else the process in
/// the cgroup that is PID 1 of its namespace.
fn agent_pid(paths: &SandboxPaths, in_cgroup: &[Pid]) -> Option<Pid> {
    let recorded = fs::read_to_string(agent_pid_file(paths))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .map(Pid::from_raw);
    if let Some(pid) = recorded.filter(|p| in_cgroup.contains(p)) {
        return Some(pid);
    }
    in_cgroup.iter().copied().find(|pid| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .map(|s| is_namespace_init(&s))
            .unwrap_or(false)
    })
}

impl Inner {
    /// Bring a stopped sandbox back on its files. On error whatever this started is
    /// stopped again; the files stay.
    async fn restart(self: Arc<Self>, spec: SandboxSpec) -> Result<(), RuntimeError> {
        let id = spec.id.to_string();
        let paths = self.paths(&id);
        let owner = self.owner(&spec);
        let disk = spec.limits.disk_bytes;
        // Preparing the files and mounting the overlay write a little (work dirs): a sandbox
        // at its disk limit could not start. The limit is lifted while nothing of the
        // sandbox runs, then only a little headroom is left while its agent comes up, and
        // the limit is set again before anything else runs in it.
        let loosened = {
            let (this, layout, cg, paths, id) = (
                self.clone(),
                self.layout,
                self.cgroup_path(&id),
                paths.clone(),
                id.clone(),
            );
            blocking(move || {
                let p = presence(layout, &cg, &paths)?;
                if !p.dir && !p.cgroup {
                    return Err(RuntimeError::NotFound(id));
                }
                if !p.pids.is_empty() {
                    return Err(RuntimeError::Setup(format!(
                        "sandbox {id} is not stopped ({} processes run)",
                        p.pids.len()
                    )));
                }
                if !p.files {
                    return Err(RuntimeError::Setup(format!(
                        "sandbox {id}: its files are incomplete; only destroy helps"
                    )));
                }
                let loosened = this.storage.loosen_disk_limit(&paths.fs, None)?;
                let prepared = (|| {
                    // A cgroup left empty (e.g. by a stop that could not remove it) would
                    // make creating it fail.
                    cgroup::remove_dirs(layout, &cg).map_err(cg_err)?;
                    remove_runtime_files(&paths)?;
                    reset_work_dir(&paths.work)?;
                    reset_work_dir(&paths.usr_work)?;
                    // Files made before its range was known (no user namespace then) move
                    // into it.
                    layers::own_layers(&paths.fs, owner)?;
                    if let Some(l) = &loosened {
                        this.storage.loosen_to(l, Some(storage::START_HEADROOM))?;
                    }
                    Ok(())
                })();
                if let Err(e) = prepared {
                    if let Some(l) = &loosened {
                        this.storage.tighten_or_log(l, disk);
                    }
                    return Err(e);
                }
                Ok(loosened)
            })
            .await?
        };
        let launched = self.clone().launch(&spec, &paths).await;
        if let Some(l) = loosened {
            let this = self.clone();
            let _ = blocking(move || {
                this.storage.tighten_or_log(&l, disk);
                Ok(())
            })
            .await;
        }
        match launched {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(ce) = self.stop_sandbox(&id).await {
                    tracing::error!(sandbox = %id, error = %ce, "cleanup after failed start");
                }
                Err(e)
            }
        }
    }

    /// Kill everything, remove the cgroup and the runtime files; keep the sandbox's files.
    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        self.end_processes(id).await?;
        let paths = self.paths(id);
        blocking(move || remove_runtime_files(&paths)).await
    }
}

impl NativeRuntime {
    pub(super) async fn pause_impl(&self, id: &str) -> Result<(), RuntimeError> {
        self.set_paused(id, true).await
    }

    pub(super) async fn resume_impl(&self, id: &str) -> Result<(), RuntimeError> {
        self.set_paused(id, false).await
    }

    async fn set_paused(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        let (layout, cg, dir, id) = (
            self.inner.layout,
            self.inner.cgroup_path(id),
            self.inner.paths(id).dir,
            id.to_string(),
        );
        blocking(move || {
            if !cgroup::exists(layout, &cg).map_err(cg_err)? {
                return Err(if dir.is_dir() {
                    RuntimeError::Setup(format!("sandbox {id} is stopped"))
                } else {
                    RuntimeError::NotFound(id)
                });
            }
            cgroup::set_frozen(layout, &cg, frozen).map_err(cg_err)
        })
        .await
    }

    pub(super) async fn stop_impl(&self, id: &str) -> Result<(), RuntimeError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        // Detached: a caller that stops waiting does not leave a half-stopped sandbox.
        detached(async move {
            let (layout, cg, paths) = (inner.layout, inner.cgroup_path(&id), inner.paths(&id));
            let p = blocking(move || presence(layout, &cg, &paths)).await?;
            if !p.dir && !p.cgroup {
                return Err(RuntimeError::NotFound(id));
            }
            inner.stop_sandbox(&id).await
        })
        .await
    }

    pub(super) async fn start_impl(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        if spec.image != image::HOST_IMAGE {
            return Err(RuntimeError::ImageNotFound(spec.image.clone()));
        }
        detached(self.inner.clone().restart(spec.clone())).await
    }

    pub(super) async fn cpu_usage_us_impl(&self, id: &str) -> Result<u64, RuntimeError> {
        let (layout, cg, dir, id) = (
            self.inner.layout,
            self.inner.cgroup_path(id),
            self.inner.paths(id).dir,
            id.to_string(),
        );
        blocking(
            move || match cgroup::cpu_usage_us(layout, &cg).map_err(cg_err)? {
                Some(us) => Ok(us),
                None if dir.is_dir() => Ok(0), // stopped
                None => Err(RuntimeError::NotFound(id)),
            },
        )
        .await
    }

    pub(super) async fn stats_impl(&self, id: &str) -> Result<Stats, RuntimeError> {
        let (layout, cg, paths, id) = (
            self.inner.layout,
            self.inner.cgroup_path(id),
            self.inner.paths(id),
            id.to_string(),
        );
        blocking(move || {
            let usage = cgroup::usage(layout, &cg).map_err(cg_err)?;
            if usage.is_none() && !paths.dir.is_dir() {
                return Err(RuntimeError::NotFound(id));
            }
            let disk_bytes = allocated_bytes(&paths.upper) + allocated_bytes(&paths.usr_upper);
            let Some(u) = usage else {
                // Stopped: nothing runs, only the files use anything.
                return Ok(Stats {
                    disk_bytes,
                    ..Stats::default()
                });
            };
            let in_cgroup = cgroup::pids(layout, &cg).map_err(cg_err)?;
            let (net_rx_bytes, net_tx_bytes) = agent_pid(&paths, &in_cgroup)
                .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/net/dev")).ok())
                .map(|s| parse_net_dev(&s))
                .unwrap_or((0, 0));
            Ok(Stats {
                cpu_usage_us: u.cpu_usage_us,
                memory_bytes: u.memory_bytes,
                memory_peak_bytes: u.memory_peak_bytes,
                memory_limit_bytes: u.memory_limit_bytes,
                pids: u.pids,
                disk_bytes,
                net_rx_bytes,
                net_tx_bytes,
            })
        })
        .await
    }

    pub(super) async fn probe_impl(&self, id: &str) -> Result<Probe, RuntimeError> {
        let (layout, cg, paths) = (
            self.inner.layout,
            self.inner.cgroup_path(id),
            self.inner.paths(id),
        );
        let socket = paths.socket.clone();
        let p = blocking(move || presence(layout, &cg, &paths)).await?;
        if !p.dir && !p.cgroup {
            return Ok(Probe::Gone);
        }
        if !p.pids.is_empty() {
            if p.frozen {
                return Ok(Probe::Paused);
            }
            return Ok(if ping_once(&socket).await {
                Probe::Running
            } else {
                Probe::Broken
            });
        }
        Ok(if p.files {
            Probe::Stopped
        } else {
            Probe::Broken
        })
    }
}

/// One ping, answered within [`PROBE_PING_TIMEOUT`] in our protocol version.
async fn ping_once(socket: &Path) -> bool {
    let attempt = async {
        let stream = connect(socket).await.map_err(ProtoError::Io)?;
        agent::ping(stream).await
    };
    matches!(
        tokio::time::timeout(PROBE_PING_TIMEOUT, attempt).await,
        Ok(Ok((protocol, _))) if protocol == PROTOCOL_VERSION
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_sums_every_interface() {
        let s = "Inter-|   Receive                                                |  Transmit\n \
                 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
                 lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n  \
                 eth0: 20 1 0 0 0 0 0 0 300 2 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(s), (1020, 1300));
        assert_eq!(parse_net_dev(""), (0, 0));
    }

    #[test]
    fn namespace_init_detection() {
        assert!(is_namespace_init("Name:\twarren\nNSpid:\t4242\t1\n"));
        assert!(!is_namespace_init("NSpid:\t4243\t7\n"));
        assert!(!is_namespace_init("NSpid:\t1\n"));
        assert!(!is_namespace_init("Name:\tx\n"));
    }

    #[test]
    fn allocated_bytes_counts_blocks_once_and_skips_symlinks() {
        let dir = std::env::temp_dir().join(format!("warren-alloc-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        let empty = allocated_bytes(&dir);
        fs::write(dir.join("sub/a"), vec![1u8; 1 << 20]).unwrap();
        fs::hard_link(dir.join("sub/a"), dir.join("b")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.join("usr")).unwrap();
        let full = allocated_bytes(&dir);
        fs::remove_dir_all(&dir).unwrap();
        let grown = full - empty;
        assert!(
            (1 << 20..(1 << 20) + 64 * 1024).contains(&grown),
            "1 MiB file counted as {grown} bytes"
        );
        assert_eq!(allocated_bytes(&dir), 0);
    }
}
