//! Sandbox cgroups on cgroup v1 (legacy and hybrid) and v2, through youki's `libcgroups`
//! where it fits and plain directory operations where it does not (creating a cgroup
//! without moving a process into it, removing every hierarchy's directory).
//!
//! All functions block: call them from `spawn_blocking` (or in the single-threaded helper).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt, FreezerState, DEFAULT_CGROUP_ROOT,
};
use libcgroups::v1::{util as v1util, ControllerType};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use crate::Limits;

pub const CPU_PERIOD_US: u64 = 100_000;
/// The kernel refuses quotas below 1ms.
const MIN_CPU_QUOTA_US: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot detect the cgroup layout: {0}")]
    Setup(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cgroup manager: {0}")]
    Manager(String),
    #[error("invalid limits: {0}")]
    Limits(String),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// The host's cgroup layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only v1 hierarchies.
    V1,
    /// v1 hierarchies plus an (empty) v2 hierarchy at `/sys/fs/cgroup/unified`.
    Hybrid,
    /// Only the v2 unified hierarchy.
    V2,
}

impl Layout {
    pub fn detect() -> Result<Self, CgroupError> {
        match get_cgroup_setup().map_err(|e| CgroupError::Setup(e.to_string()))? {
            CgroupSetup::Legacy => Ok(Self::V1),
            CgroupSetup::Hybrid => Ok(Self::Hybrid),
            CgroupSetup::Unified => Ok(Self::V2),
        }
    }

    /// As reported in `RuntimeInfo::cgroup`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::Hybrid => "hybrid",
            Self::V2 => "v2",
        }
    }
}

/// The sandbox's cgroup path relative to each hierarchy root: `/<parent>/<id>`.
pub fn sandbox_cgroup_path(parent: &str, id: &str) -> PathBuf {
    Path::new("/").join(parent.trim_matches('/')).join(id)
}

/// The roots of the hierarchies our cgroups live in. On v1: every mounted controller
/// libcgroups manages (deduplicated: co-mounted controllers share a root).
fn managed_roots(layout: Layout) -> Result<Vec<PathBuf>, CgroupError> {
    match layout {
        Layout::V2 => Ok(vec![PathBuf::from(DEFAULT_CGROUP_ROOT)]),
        Layout::V1 | Layout::Hybrid => {
            let mounts = v1util::list_supported_mount_points()
                .map_err(|e| CgroupError::Setup(e.to_string()))?;
            let set: BTreeSet<PathBuf> = mounts.into_values().collect();
            Ok(set.into_iter().collect())
        }
    }
}

/// Every root where a `<parent>` directory might exist, for final cleanup (includes the
/// hybrid unified hierarchy and named v1 hierarchies, in case anything put one there).
fn all_roots(layout: Layout) -> Result<Vec<PathBuf>, CgroupError> {
    let mut set: BTreeSet<PathBuf> = managed_roots(layout)?.into_iter().collect();
    if layout != Layout::V2 {
        if let Ok(mounts) = v1util::list_subsystem_mount_points() {
            set.extend(mounts);
        }
        if layout == Layout::Hybrid {
            set.insert(Path::new(DEFAULT_CGROUP_ROOT).join("unified"));
        }
    }
    Ok(set.into_iter().collect())
}

/// The hierarchy we list sandboxes in.
fn listing_root(layout: Layout) -> Result<PathBuf, CgroupError> {
    match layout {
        Layout::V2 => Ok(PathBuf::from(DEFAULT_CGROUP_ROOT)),
        Layout::V1 | Layout::Hybrid => v1util::get_subsystem_mount_point(&ControllerType::Pids)
            .or_else(|_| v1util::get_subsystem_mount_point(&ControllerType::Memory))
            .map_err(|e| CgroupError::Setup(e.to_string())),
    }
}

fn manager(id: &str, cgroup_path: &Path) -> Result<AnyCgroupManager, CgroupError> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: cgroup_path.to_path_buf(),
        systemd_cgroup: false,
        container_name: id.to_string(),
    })
    .map_err(|e| CgroupError::Manager(e.to_string()))
}

/// OCI resources for `limits` (`swap_equals_limit`: also cap memory+swap at the limit).
pub fn resources(limits: &Limits, swap_equals_limit: bool) -> Result<LinuxResources, CgroupError> {
    let bad = |e: oci_spec::OciSpecError| CgroupError::Limits(e.to_string());
    let mut b = LinuxResourcesBuilder::default();
    if let Some(cpus) = limits.cpus {
        if !(cpus.is_finite() && cpus > 0.0) {
            return Err(CgroupError::Limits(format!("cpus must be > 0, got {cpus}")));
        }
        let quota = ((cpus * CPU_PERIOD_US as f64).round() as i64).max(MIN_CPU_QUOTA_US);
        b = b.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(bad)?,
        );
    }
    if let Some(mem) = limits.memory_bytes {
        let mem = i64::try_from(mem)
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| CgroupError::Limits(format!("memory_bytes out of range: {mem}")))?;
        let mut m = LinuxMemoryBuilder::default().limit(mem);
        if swap_equals_limit {
            m = m.swap(mem);
        }
        b = b.memory(m.build().map_err(bad)?);
    }
    if let Some(pids) = limits.pids {
        let pids = i64::try_from(pids)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| CgroupError::Limits(format!("pids out of range: {pids}")))?;
        b = b.pids(
            LinuxPidsBuilder::default()
                .limit(pids)
                .build()
                .map_err(bad)?,
        );
    }
    b.build().map_err(bad)
}

/// Create `/<parent>/<id>` in every hierarchy and apply `limits`. No process is moved:
/// the helper joins it later. On error, whatever was created is removed again.
pub fn create(layout: Layout, parent: &str, id: &str, limits: &Limits) -> Result<(), CgroupError> {
    let path = sandbox_cgroup_path(parent, id);
    let r = create_inner(layout, id, &path, limits);
    if r.is_err() {
        let _ = remove_dirs(layout, &path);
    }
    r
}

fn create_inner(layout: Layout, id: &str, path: &Path, limits: &Limits) -> Result<(), CgroupError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let roots = managed_roots(layout)?;
    for root in &roots {
        let mut cur = root.clone();
        let n = rel.components().count();
        for (i, comp) in rel.components().enumerate() {
            if layout == Layout::V2 {
                enable_v2_controllers(&cur);
            }
            let parent = cur.clone();
            cur.push(comp);
            let last = i + 1 == n;
            match fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !last => {}
                Err(e) => return Err(io_err("create", &cur)(e)),
            }
            if layout != Layout::V2 {
                // A new v1 cpuset cgroup starts with no CPUs and no memory nodes.
                copy_if_empty(&parent, &cur, "cpuset.cpus");
                copy_if_empty(&parent, &cur, "cpuset.mems");
            }
        }
    }

    let swap_files_exist = match layout {
        Layout::V2 => false, // handled below: libcgroups skips a zero swap.max
        Layout::V1 | Layout::Hybrid => v1util::get_subsystem_mount_point(&ControllerType::Memory)
            .map(|m| m.join("memory.memsw.limit_in_bytes").exists())
            .unwrap_or(false),
    };
    let res = resources(limits, swap_files_exist)?;
    let opt = ControllerOpt {
        resources: &res,
        disable_oom_killer: false,
        oom_score_adj: None,
        freezer_state: None,
    };
    manager(id, path)?
        .apply(&opt)
        .map_err(|e| CgroupError::Manager(e.to_string()))?;
    if layout == Layout::V2 && limits.memory_bytes.is_some() {
        let swap = Path::new(DEFAULT_CGROUP_ROOT)
            .join(rel)
            .join("memory.swap.max");
        if swap.exists() {
            fs::write(&swap, "0").map_err(io_err("write", &swap))?;
        }
    }
    Ok(())
}

fn copy_if_empty(parent: &Path, child: &Path, file: &str) {
    let Ok(cur) = fs::read_to_string(child.join(file)) else {
        return; // not a cpuset hierarchy
    };
    if cur.trim().is_empty() {
        if let Ok(v) = fs::read_to_string(parent.join(file)) {
            let _ = fs::write(child.join(file), v.trim());
        }
    }
}

fn enable_v2_controllers(dir: &Path) {
    let Ok(avail) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let Ok(enabled) = fs::read_to_string(dir.join("cgroup.subtree_control")) else {
        return;
    };
    for c in ["cpu", "memory", "pids"] {
        if avail.split_whitespace().any(|a| a == c) && !enabled.split_whitespace().any(|a| a == c) {
            if let Err(e) = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}")) {
                tracing::warn!(dir = %dir.display(), controller = c, error = %e,
                    "cannot enable cgroup controller");
            }
        }
    }
}

/// Move process `pid` into the sandbox cgroup in every hierarchy we manage. The daemon
/// does this for the helper before handing it its spec, so the helper (and the sandbox it
/// forks) is limited from its first instruction on, and the helper itself needs no cgroup
/// code (libcgroups' manager setup costs several milliseconds per process).
pub fn add_process(layout: Layout, cgroup_path: &Path, pid: Pid) -> Result<(), CgroupError> {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    for root in managed_roots(layout)? {
        let procs = root.join(rel).join("cgroup.procs");
        fs::write(&procs, pid.as_raw().to_string()).map_err(io_err("write", &procs))?;
    }
    Ok(())
}

/// Pids (host view) in the sandbox cgroup; empty if it does not exist.
pub fn pids(layout: Layout, cgroup_path: &Path) -> Result<Vec<Pid>, CgroupError> {
    let procs = listing_root(layout)?
        .join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path))
        .join("cgroup.procs");
    match fs::read_to_string(&procs) {
        Ok(s) => Ok(parse_procs(&s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("read", &procs)(e)),
    }
}

pub fn parse_procs(s: &str) -> Vec<Pid> {
    s.lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
        .map(Pid::from_raw)
        .collect()
}

/// Freeze the cgroup, SIGKILL everything in it, thaw it (so the kills are delivered).
/// Returns how many processes were signalled. Never kills by a remembered pid: only what
/// the cgroup lists while frozen (a frozen cgroup cannot fork).
pub fn kill_all(layout: Layout, id: &str, cgroup_path: &Path) -> Result<usize, CgroupError> {
    if pids(layout, cgroup_path)?.is_empty() {
        return Ok(0);
    }
    let mgr = manager(id, cgroup_path)?;
    let frozen = match mgr.freeze(FreezerState::Frozen) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(sandbox = id, error = %e, "cannot freeze cgroup; killing unfrozen");
            false
        }
    };
    let victims = pids(layout, cgroup_path)?;
    for pid in &victims {
        // ESRCH: already gone.
        let _ = kill(*pid, Signal::SIGKILL);
    }
    if frozen {
        // If this fails the processes stay frozen with SIGKILL pending; the caller's next
        // round freezes, kills and thaws again.
        if let Err(e) = mgr.freeze(FreezerState::Thawed) {
            tracing::warn!(sandbox = id, error = %e, "cannot thaw cgroup");
        }
    }
    Ok(victims.len())
}

/// Remove the sandbox's cgroup directory from every hierarchy (it must be empty).
pub fn remove_dirs(layout: Layout, cgroup_path: &Path) -> Result<(), CgroupError> {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    let mut first_err = None;
    for root in all_roots(layout)? {
        let dir = root.join(rel);
        if let Err(e) = rmdir_if_exists(&dir) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

fn rmdir_if_exists(dir: &Path) -> Result<(), CgroupError> {
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", dir)(e)),
    }
}

/// Ids of the sandbox cgroups under `<parent>` (whatever an earlier daemon left).
pub fn list_children(layout: Layout, parent: &str) -> Result<Vec<String>, CgroupError> {
    let mut ids = BTreeSet::new();
    for root in managed_roots(layout)? {
        let dir = root.join(parent.trim_matches('/'));
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(name) = entry.file_name().to_str() {
                    ids.insert(name.to_string());
                }
            }
        }
    }
    Ok(ids.into_iter().collect())
}

/// Remove the (empty) `<parent>` directory from every hierarchy.
pub fn remove_parent(layout: Layout, parent: &str) -> Result<(), CgroupError> {
    let mut first_err = None;
    for root in all_roots(layout)? {
        if let Err(e) = rmdir_if_exists(&root.join(parent.trim_matches('/'))) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths() {
        assert_eq!(sandbox_cgroup_path("warren", "a"), Path::new("/warren/a"));
        assert_eq!(sandbox_cgroup_path("/x/y/", "a"), Path::new("/x/y/a"));
    }

    #[test]
    fn limits_to_resources() {
        let r = resources(
            &Limits {
                cpus: Some(1.5),
                memory_bytes: Some(512 << 20),
                pids: Some(256),
            },
            true,
        )
        .unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(cpu.quota(), Some(150_000));
        assert_eq!(cpu.period(), Some(100_000));
        let mem = r.memory().as_ref().unwrap();
        assert_eq!(mem.limit(), Some(512 << 20));
        assert_eq!(mem.swap(), Some(512 << 20));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 256);

        let r = resources(
            &Limits {
                cpus: Some(0.001),
                memory_bytes: Some(1 << 20),
                pids: None,
            },
            false,
        )
        .unwrap();
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(MIN_CPU_QUOTA_US));
        assert_eq!(r.memory().as_ref().unwrap().swap(), None);
        assert!(r.pids().is_none());

        let r = resources(&Limits::default(), true).unwrap();
        assert!(r.cpu().is_none() && r.memory().is_none() && r.pids().is_none());

        for bad in [
            Limits {
                cpus: Some(0.0),
                ..Default::default()
            },
            Limits {
                cpus: Some(f64::NAN),
                ..Default::default()
            },
            Limits {
                memory_bytes: Some(u64::MAX),
                ..Default::default()
            },
            Limits {
                pids: Some(0),
                ..Default::default()
            },
        ] {
            assert!(resources(&bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn procs_parsing() {
        assert_eq!(
            parse_procs("12\n 34\n\nx\n0\n"),
            vec![Pid::from_raw(12), Pid::from_raw(34)]
        );
    }
}
