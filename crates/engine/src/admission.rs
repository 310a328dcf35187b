//! Admission control: every create is checked, at once and under the lock that inserts it,
//! against
//!
//! - `max_sandboxes`: sandboxes of users (unclaimed pool sandboxes do not count) →
//!   429 `limit_reached`;
//! - `max_committed_memory_mib`: the sum of the memory limits of every sandbox that is not
//!   failed or being deleted (pool sandboxes included) plus the new one → 429
//!   `capacity_exhausted`. A user's create that does not fit evicts unclaimed pool
//!   sandboxes (the newest first) when that makes it fit: a warm pool never makes a user's
//!   create fail;
//! - `min_available_memory_mib`: the host's `MemAvailable` (read at most once a second)
//!   must be at least this → 503 `host_under_pressure`, so the daemon never pushes the host
//!   into swap or the OOM killer;
//! - `pids_budget`: when the sandboxes' tasks together (their parent cgroup's
//!   `pids.current`, through a [`PidsProbe`]) leave less than a new sandbox needs to start
//!   → 503 `host_under_pressure`, instead of a create failing halfway;
//! - `min_free_disk_mib`: every file system of the [`DiskProbe`] (the data dir's, where the
//!   store lives, and the sandboxes' files', e.g. the btrfs image) must have at least this
//!   much free space and 5 % of its inodes free (read at most once a second) → 503
//!   `host_under_pressure`: a full disk would fail the create halfway, or the store's
//!   writes.
//!
//! The model: a memory limit is a ceiling, not a reservation (most sandboxes use a small
//! part of theirs), so limits are overcommitted — by default they may add up to
//! `memory_overcommit` (4) × `memory_budget_mib` (host RAM less a tenth). What the
//! sandboxes really use together is bounded by the kernel: the daemon sets
//! `memory_budget_mib` as the memory limit of their parent cgroup, so when they all fill
//! their limits at once the OOM killer acts inside that cgroup (on a sandbox's process),
//! never on the daemon or the host. The floor refuses new sandboxes before that happens.
//!
//! Pool fillers go through the same checks (without evicting anything) and stop filling
//! when refused.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warren_api::SandboxState;

use crate::{Engine, EngineError, Entry, Record};

/// Where the engine reads the host's available memory (MiB). Injectable for tests.
#[derive(Clone)]
pub struct MemoryProbe(Arc<dyn Fn() -> Option<u64> + Send + Sync>);

impl MemoryProbe {
    /// `MemAvailable` from `/proc/meminfo`, read at most once a second (a procfs read: no
    /// disk, a few microseconds).
    pub fn host() -> MemoryProbe {
        let cache: Mutex<Option<(Instant, Option<u64>)>> = Mutex::new(None);
        MemoryProbe(Arc::new(move || {
            let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, v)) = *c {
                if at.elapsed() < Duration::from_secs(1) {
                    return v;
                }
            }
            let v = meminfo_mib("MemAvailable:");
            *c = Some((Instant::now(), v));
            v
        }))
    }

    /// A probe answering whatever `f` says (tests).
    pub fn from_fn(f: impl Fn() -> Option<u64> + Send + Sync + 'static) -> MemoryProbe {
        MemoryProbe(Arc::new(f))
    }

    /// Available memory in MiB; `None` when unknown (then nothing is refused).
    pub fn available_mib(&self) -> Option<u64> {
        (self.0)()
    }
}

/// Where the engine reads how many tasks all sandboxes have together (the parent cgroup's
/// `pids.current`). Injectable; [`PidsProbe::none`] knows nothing (then nothing is refused).
#[derive(Clone)]
pub struct PidsProbe(Arc<dyn Fn() -> Option<u64> + Send + Sync>);

impl PidsProbe {
    pub fn none() -> PidsProbe {
        PidsProbe(Arc::new(|| None))
    }

    pub fn from_fn(f: impl Fn() -> Option<u64> + Send + Sync + 'static) -> PidsProbe {
        PidsProbe(Arc::new(f))
    }

    /// Tasks in use; `None` when unknown.
    pub fn current(&self) -> Option<u64> {
        (self.0)()
    }
}

impl std::fmt::Debug for PidsProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PidsProbe")
    }
}

/// Size and free space of one file system the engine depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpace {
    /// A path on it (for messages).
    pub path: PathBuf,
    pub total_bytes: u64,
    pub avail_bytes: u64,
    /// 0 when the file system has no fixed inode count (btrfs): not checked.
    pub total_inodes: u64,
    pub avail_inodes: u64,
}

/// Where the engine reads the free space of the file systems it depends on. Injectable.
#[derive(Clone)]
pub struct DiskProbe(Arc<dyn Fn() -> Vec<DiskSpace> + Send + Sync>);

impl DiskProbe {
    /// `statvfs` of each path's file system (each file system once), read at most once a
    /// second (a `statvfs` is a few microseconds, but creates can come in bursts). A path
    /// that cannot be read is left out.
    pub fn statvfs(paths: Vec<PathBuf>) -> DiskProbe {
        let cache: Mutex<Option<(Instant, Vec<DiskSpace>)>> = Mutex::new(None);
        DiskProbe(Arc::new(move || {
            let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, v)) = &*c {
                if at.elapsed() < Duration::from_secs(1) {
                    return v.clone();
                }
            }
            let mut seen = Vec::new();
            let mut v = Vec::new();
            for p in &paths {
                let Ok(s) = warren_runtime::fs_space(p) else {
                    continue;
                };
                if seen.contains(&s.fsid) {
                    continue;
                }
                seen.push(s.fsid);
                v.push(DiskSpace {
                    path: p.clone(),
                    total_bytes: s.total_bytes,
                    avail_bytes: s.avail_bytes,
                    total_inodes: s.total_inodes,
                    avail_inodes: s.avail_inodes,
                });
            }
            *c = Some((Instant::now(), v.clone()));
            v
        }))
    }

    /// A probe answering whatever `f` says (tests).
    pub fn from_fn(f: impl Fn() -> Vec<DiskSpace> + Send + Sync + 'static) -> DiskProbe {
        DiskProbe(Arc::new(f))
    }

    pub fn spaces(&self) -> Vec<DiskSpace> {
        (self.0)()
    }
}

impl std::fmt::Debug for DiskProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskProbe")
    }
}

/// The default free-space floor of a file system of `total_bytes`, in MiB: 5 % of it, at
/// least 1 GiB — but never above a tenth of it, so that a small file system (a test's
/// image) stays usable.
pub fn disk_floor_mib(total_bytes: u64) -> u64 {
    let total_mib = total_bytes >> 20;
    (total_mib / 20).max(1024.min(total_mib / 10))
}

/// Tasks a new sandbox needs to come up (its helper, init and agent threads).
pub const PIDS_TO_START: u64 = 16;

impl std::fmt::Debug for MemoryProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryProbe")
    }
}

/// A `/proc/meminfo` figure (`key` with its colon, e.g. `MemTotal:`) in MiB.
pub(crate) fn meminfo_mib(key: &str) -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Who asks for a new sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A user's create: counts against `max_sandboxes`, may evict pool sandboxes.
    User,
    /// A pool filler.
    Member,
}

/// Whether a record's memory counts as committed.
fn commits(r: &Record) -> bool {
    !matches!(r.state, SandboxState::Failed | SandboxState::Deleting)
}

impl Engine {
    /// The memory limit a record commits (MiB); no limit commits the largest allowed.
    fn memory_of(&self, r: &Record) -> u64 {
        r.resources
            .memory_mib
            .unwrap_or(self.inner.config.max_memory_mib)
    }

    /// The sum of the memory limits committed right now (MiB).
    pub fn committed_memory_mib(&self) -> u64 {
        self.map()
            .values()
            .filter(|e| commits(&e.record))
            .map(|e| self.memory_of(&e.record))
            .sum()
    }

    /// 503 `host_under_pressure` when the host's available memory is below the floor, or
    /// the sandboxes' pids budget has no room for another one.
    pub(crate) fn check_pressure(&self) -> Result<(), EngineError> {
        let c = &self.inner.config;
        if c.pids_budget > 0 {
            if let Some(used) = c.pids_probe.current() {
                if used + PIDS_TO_START > c.pids_budget {
                    return Err(EngineError::HostUnderPressure(format!(
                        "the sandboxes have {used} of their {} tasks (--pids-budget); try \
                         again when processes end",
                        c.pids_budget
                    )));
                }
            }
        }
        if c.min_free_disk_mib > 0 {
            for d in c.disk_probe.spaces() {
                let avail_mib = d.avail_bytes >> 20;
                if avail_mib < c.min_free_disk_mib {
                    return Err(EngineError::HostUnderPressure(format!(
                        "the file system of {} has {avail_mib} MiB free, below the floor of {} \
                         MiB (--min-free-disk-mib); try again when space is freed",
                        d.path.display(),
                        c.min_free_disk_mib
                    )));
                }
                if d.total_inodes > 0 && d.avail_inodes < d.total_inodes / 20 {
                    return Err(EngineError::HostUnderPressure(format!(
                        "the file system of {} has {} of its {} inodes free, below 5 %; try \
                         again when files are removed",
                        d.path.display(),
                        d.avail_inodes,
                        d.total_inodes
                    )));
                }
            }
        }
        if c.min_available_memory_mib == 0 {
            return Ok(());
        }
        match c.memory_probe.available_mib() {
            Some(avail) if avail < c.min_available_memory_mib => {
                Err(EngineError::HostUnderPressure(format!(
                    "the host has {avail} MiB of memory available, below the floor of {} MiB; \
                     try again later",
                    c.min_available_memory_mib
                )))
            }
            _ => Ok(()),
        }
    }

    /// 429 `limit_reached` when users already have `max_sandboxes` sandboxes.
    pub(crate) fn check_count(&self, map: &HashMap<String, Entry>) -> Result<(), EngineError> {
        let max = self.inner.config.max_sandboxes;
        if max == 0 {
            return Ok(());
        }
        let live = map
            .values()
            .filter(|e| e.record.state != SandboxState::Failed && !e.record.lifecycle.pool_member)
            .count() as u64;
        if live >= max {
            return Err(EngineError::LimitReached(format!(
                "the server runs at most {max} sandboxes"
            )));
        }
        Ok(())
    }

    /// Under the map lock: may `record` be added? For a user's create, unclaimed pool
    /// sandboxes may be evicted to make room; they are marked deleting here and returned
    /// with their previous state (the caller starts their deletion once the lock is let
    /// go).
    pub(crate) fn admit_locked(
        &self,
        map: &mut HashMap<String, Entry>,
        record: &Record,
        who: Admit,
    ) -> Result<Vec<(String, SandboxState)>, EngineError> {
        if who == Admit::User {
            self.check_count(map)?;
        }
        let max = self.inner.config.max_committed_memory_mib;
        if max == 0 {
            return Ok(Vec::new());
        }
        let need = self.memory_of(record);
        let committed: u64 = map
            .values()
            .filter(|e| commits(&e.record))
            .map(|e| self.memory_of(&e.record))
            .sum();
        if committed + need <= max {
            return Ok(Vec::new());
        }
        let refuse = || {
            EngineError::CapacityExhausted(format!(
                "{committed} MiB of memory limits are committed; {need} MiB more would \
                 exceed the server's maximum of {max} MiB: create smaller sandboxes \
                 (resources.memory_mib) or raise --max-committed-memory-mib"
            ))
        };
        if who == Admit::Member {
            return Err(refuse());
        }
        // Ready pool sandboxes, newest first: the oldest stay ready.
        let mut spare: Vec<(&String, &Record)> = map
            .iter()
            .filter(|(_, e)| {
                e.record.lifecycle.pool_member && e.record.state == SandboxState::Running
            })
            .map(|(id, e)| (id, &e.record))
            .collect();
        spare.sort_by(|a, b| b.1.created_at.cmp(&a.1.created_at).then(b.0.cmp(a.0)));
        let mut freed = 0;
        let mut evict = Vec::new();
        for (id, r) in spare {
            if committed - freed + need <= max {
                break;
            }
            freed += self.memory_of(r);
            evict.push(id.clone());
        }
        if committed - freed + need > max {
            return Err(refuse());
        }
        Ok(evict
            .into_iter()
            .filter_map(|id| {
                let e = map.get_mut(&id)?;
                let prev = crate::begin_delete(e);
                Some((id, prev))
            })
            .collect())
    }
}
