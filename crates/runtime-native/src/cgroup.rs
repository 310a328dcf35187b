//! Sandbox cgroups on cgroup v1 (legacy and hybrid) and v2, through youki's `libcgroups`
//! where it fits and plain directory operations where it does not (creating a cgroup
//! without moving a process into it, removing every hierarchy's directory).
//!
//! All functions block: call them from `spawn_blocking` (or in the single-threaded helper).

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libcgroups::common::{
    create_cgroup_manager, get_cgroup_setup, AnyCgroupManager, CgroupConfig, CgroupManager,
    CgroupSetup, ControllerOpt, DEFAULT_CGROUP_ROOT,
};
use libcgroups::v1::{util as v1util, ControllerType};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use warren_runtime::Limits;

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
    #[error("freezer {path}: {message}")]
    Freezer { path: PathBuf, message: String },
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
            let set: BTreeSet<PathBuf> = v1_mounts()?.values().cloned().collect();
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
        Layout::V1 | Layout::Hybrid => {
            let mounts = v1_mounts()?;
            mounts
                .get(&ControllerType::Pids)
                .or_else(|| mounts.get(&ControllerType::Memory))
                .cloned()
                .ok_or_else(|| CgroupError::Setup("no v1 pids or memory hierarchy".into()))
        }
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
        Layout::V1 | Layout::Hybrid => v1_mounts()
            .ok()
            .and_then(|m| m.get(&ControllerType::Memory))
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

/// Freeze the cgroup, SIGKILL everything in it, thaw it (so the kills are delivered: on
/// v1 a frozen task does not act on SIGKILL until thawed). Returns how many processes
/// were signalled. Never kills by a remembered pid: only what the cgroup lists while frozen
/// (a frozen cgroup cannot fork). Works on a paused (frozen) cgroup too: it ends thawed.
pub fn kill_all(layout: Layout, id: &str, cgroup_path: &Path) -> Result<usize, CgroupError> {
    if pids(layout, cgroup_path)?.is_empty() {
        return Ok(0);
    }
    let frozen = match set_frozen_within(layout, cgroup_path, true, KILL_FREEZE_TIMEOUT) {
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
        if let Err(e) = set_frozen(layout, cgroup_path, false) {
            tracing::warn!(sandbox = id, error = %e, "cannot thaw cgroup");
        }
    }
    Ok(victims.len())
}

/// How long [`set_frozen`] waits for the kernel to reach the requested state.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long [`kill_all`] tries to freeze before it kills unfrozen (its caller retries).
const KILL_FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// The directory holding the freezer files of the sandbox cgroup: v1's `freezer`
/// hierarchy, or the v2 cgroup itself.
fn freezer_dir(layout: Layout, cgroup_path: &Path) -> Result<PathBuf, CgroupError> {
    controller_dir(layout, ControllerType::Freezer, cgroup_path)
}

/// Freeze (`frozen`) or thaw every process of the cgroup and return only once the kernel
/// reports that state (v1 `freezer.state` `FROZEN`/`THAWED`; v2 `cgroup.events`
/// `frozen 1`/`frozen 0`). Idempotent. Gives up after 5 s; a freeze that
/// did not complete is undone (thawed) before the error is returned, so a failure never
/// leaves the cgroup half frozen. A missing cgroup is an [`CgroupError::Io`] with
/// `NotFound`.
pub fn set_frozen(layout: Layout, cgroup_path: &Path, frozen: bool) -> Result<(), CgroupError> {
    set_frozen_within(layout, cgroup_path, frozen, FREEZE_TIMEOUT)
}

fn set_frozen_within(
    layout: Layout,
    cgroup_path: &Path,
    frozen: bool,
    timeout: Duration,
) -> Result<(), CgroupError> {
    let dir = freezer_dir(layout, cgroup_path)?;
    let r = match layout {
        Layout::V2 => set_frozen_v2(&dir, frozen, timeout),
        Layout::V1 | Layout::Hybrid => set_frozen_v1(&dir, frozen, timeout),
    };
    if r.is_err() && frozen {
        // Never leave a half-frozen cgroup behind.
        let _ = match layout {
            Layout::V2 => write_file(&dir.join("cgroup.freeze"), "0"),
            Layout::V1 | Layout::Hybrid => write_file(&dir.join("freezer.state"), "THAWED"),
        };
    }
    r
}

/// Whether freezing the cgroup was requested (v1 `freezer.state` `FROZEN`, or `FREEZING`
/// on its way there; v2 `cgroup.freeze` `1`). A missing cgroup is `Ok(false)`.
pub fn is_frozen(layout: Layout, cgroup_path: &Path) -> Result<bool, CgroupError> {
    let dir = freezer_dir(layout, cgroup_path)?;
    let file = match layout {
        Layout::V2 => dir.join("cgroup.freeze"),
        Layout::V1 | Layout::Hybrid => dir.join("freezer.state"),
    };
    match fs::read_to_string(&file) {
        Ok(s) => Ok(match layout {
            Layout::V2 => s.trim() == "1",
            Layout::V1 | Layout::Hybrid => s.trim() != "THAWED",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("read", &file)(e)),
    }
}

fn write_file(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err("write", path))
}

fn read_trimmed(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io_err("read", path))
}

/// v1: write the state, then poll `freezer.state` while it says `FREEZING`. As runc does,
/// the request is repeated while waiting (the kernel retries tasks it could not freeze
/// yet) and, now and then, the cgroup is thawed and frozen again (which unsticks tasks
/// caught in the middle of a fork or vfork).
fn set_frozen_v1(dir: &Path, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
    let file = dir.join("freezer.state");
    let want = if frozen { "FROZEN" } else { "THAWED" };
    let start = Instant::now();
    let mut sleep = Duration::from_micros(100);
    let mut last_refreeze = Instant::now();
    write_file(&file, want)?;
    loop {
        let state = read_trimmed(&file)?;
        if state == want {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(CgroupError::Freezer {
                path: dir.to_path_buf(),
                message: format!("still {state} {timeout:?} after requesting {want}"),
            });
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(10));
        if frozen && last_refreeze.elapsed() >= Duration::from_millis(500) {
            let _ = write_file(&file, "THAWED");
            std::thread::sleep(Duration::from_millis(1));
            last_refreeze = Instant::now();
        }
        write_file(&file, want)?;
    }
}

/// v2: write `cgroup.freeze`, then poll `cgroup.events` until `frozen` matches.
fn set_frozen_v2(dir: &Path, frozen: bool, timeout: Duration) -> Result<(), CgroupError> {
    let want = if frozen { "1" } else { "0" };
    write_file(&dir.join("cgroup.freeze"), want)?;
    let events = dir.join("cgroup.events");
    let start = Instant::now();
    let mut sleep = Duration::from_micros(100);
    loop {
        let s = fs::read_to_string(&events).map_err(io_err("read", &events))?;
        let state = s
            .lines()
            .find_map(|l| l.strip_prefix("frozen "))
            .map(str::trim)
            .ok_or_else(|| CgroupError::Freezer {
                path: dir.to_path_buf(),
                message: "cgroup.events has no frozen line (kernel too old?)".into(),
            })?;
        if state == want {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(CgroupError::Freezer {
                path: dir.to_path_buf(),
                message: format!("not frozen={want} {timeout:?} after requesting it"),
            });
        }
        std::thread::sleep(sleep);
        sleep = (sleep * 2).min(Duration::from_millis(10));
    }
}

/// v1 controller mount points, looked up once: libcgroups opens procfs and reads
/// `mountinfo` once per controller per lookup, which cost ~3 ms of CPU per sandbox
/// lifecycle when every create and teardown looked them up again (perf: `show_mountinfo`).
fn v1_mounts() -> Result<&'static HashMap<ControllerType, PathBuf>, CgroupError> {
    static MOUNTS: OnceLock<HashMap<ControllerType, PathBuf>> = OnceLock::new();
    if let Some(m) = MOUNTS.get() {
        return Ok(m);
    }
    let found =
        v1util::list_supported_mount_points().map_err(|e| CgroupError::Setup(e.to_string()))?;
    if found.is_empty() {
        // Not cached: nothing mounted yet is not worth remembering.
        return Err(CgroupError::Setup(
            "no v1 cgroup controller is mounted".into(),
        ));
    }
    Ok(MOUNTS.get_or_init(|| found))
}

/// The sandbox cgroup's directory in the hierarchy of `controller` (v1), or its one
/// directory (v2).
fn controller_dir(
    layout: Layout,
    controller: ControllerType,
    cgroup_path: &Path,
) -> Result<PathBuf, CgroupError> {
    let rel = cgroup_path.strip_prefix("/").unwrap_or(cgroup_path);
    match layout {
        Layout::V2 => Ok(Path::new(DEFAULT_CGROUP_ROOT).join(rel)),
        Layout::V1 | Layout::Hybrid => v1_mounts()?
            .get(&controller)
            .map(|root| root.join(rel))
            .ok_or_else(|| CgroupError::Setup(format!("no v1 {controller} hierarchy"))),
    }
}

/// Whether the sandbox cgroup exists (in the hierarchy we list sandboxes in).
pub fn exists(layout: Layout, cgroup_path: &Path) -> Result<bool, CgroupError> {
    let dir = listing_root(layout)?.join(cgroup_path.strip_prefix("/").unwrap_or(cgroup_path));
    Ok(dir.is_dir())
}

/// A cgroup file's content; `None` if it (or its cgroup) does not exist.
fn read_opt(path: &Path) -> Result<Option<String>, CgroupError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

fn parse_u64(path: &Path, s: &str) -> Result<u64, CgroupError> {
    s.trim().parse().map_err(|_| CgroupError::Io {
        what: "parse",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("not a number: {s:?}")),
    })
}

/// A numeric cgroup file; `None` if it does not exist.
fn read_u64(path: &Path) -> Result<Option<u64>, CgroupError> {
    read_opt(path)?.map(|s| parse_u64(path, &s)).transpose()
}

/// v1 reports "no memory limit" as the largest page-aligned `i64`; anything this large is
/// no limit.
const V1_UNLIMITED: u64 = 1 << 62;

/// Counters of one sandbox cgroup ([`usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usage_us: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
}

/// CPU time used by the cgroup's processes, in µs (v1 `cpuacct.usage`, v2 `cpu.stat`
/// `usage_usec`): one small read. `None` if the cgroup does not exist.
pub fn cpu_usage_us(layout: Layout, cgroup_path: &Path) -> Result<Option<u64>, CgroupError> {
    match layout {
        Layout::V2 => {
            let file = controller_dir(layout, ControllerType::Cpu, cgroup_path)?.join("cpu.stat");
            let Some(s) = read_opt(&file)? else {
                return Ok(None);
            };
            let v = s
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .ok_or_else(|| CgroupError::Io {
                    what: "parse",
                    path: file.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "no usage_usec"),
                })?;
            parse_u64(&file, v).map(Some)
        }
        Layout::V1 | Layout::Hybrid => {
            let file =
                controller_dir(layout, ControllerType::CpuAcct, cgroup_path)?.join("cpuacct.usage");
            Ok(read_u64(&file)?.map(|ns| ns / 1_000))
        }
    }
}

/// Processes the kernel's OOM killer killed in the cgroup at its memory limit (v1
/// `memory.oom_control`'s `oom_kill`, v2 `memory.events`'); `None` if the cgroup or the
/// counter does not exist.
pub fn oom_kills(layout: Layout, cgroup_path: &Path) -> Result<Option<u64>, CgroupError> {
    let mem = controller_dir(layout, ControllerType::Memory, cgroup_path)?;
    let file = match layout {
        Layout::V2 => mem.join("memory.events"),
        Layout::V1 | Layout::Hybrid => mem.join("memory.oom_control"),
    };
    let Some(text) = read_opt(&file)? else {
        return Ok(None);
    };
    Ok(parse_oom_kills(&text))
}

/// The `oom_kill N` line of `memory.oom_control` or `memory.events`.
fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// The cgroup's CPU, memory and pids counters. `None` if the cgroup does not exist. A
/// frozen cgroup's counters are readable too.
pub fn usage(layout: Layout, cgroup_path: &Path) -> Result<Option<Usage>, CgroupError> {
    let Some(cpu_usage_us) = cpu_usage_us(layout, cgroup_path)? else {
        return Ok(None);
    };
    let mem = controller_dir(layout, ControllerType::Memory, cgroup_path)?;
    let pids = controller_dir(layout, ControllerType::Pids, cgroup_path)?;
    let (memory_bytes, memory_peak_bytes, memory_limit_bytes) = match layout {
        Layout::V2 => {
            let current = read_u64(&mem.join("memory.current"))?.unwrap_or(0);
            // memory.peak exists since Linux 5.19.
            let peak = read_u64(&mem.join("memory.peak"))?.unwrap_or(current);
            let max_file = mem.join("memory.max");
            let limit = match read_opt(&max_file)? {
                Some(s) if s.trim() == "max" => None,
                Some(s) => Some(parse_u64(&max_file, &s)?),
                None => None,
            };
            (current, peak, limit)
        }
        Layout::V1 | Layout::Hybrid => {
            let current = read_u64(&mem.join("memory.usage_in_bytes"))?.unwrap_or(0);
            let peak = read_u64(&mem.join("memory.max_usage_in_bytes"))?.unwrap_or(current);
            let limit = read_u64(&mem.join("memory.limit_in_bytes"))?.filter(|l| *l < V1_UNLIMITED);
            (current, peak, limit)
        }
    };
    Ok(Some(Usage {
        cpu_usage_us,
        memory_bytes,
        memory_peak_bytes: memory_peak_bytes.max(memory_bytes),
        memory_limit_bytes,
        pids: read_u64(&pids.join("pids.current"))?.unwrap_or(0),
    }))
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

/// What all sandboxes together may use: the limits of their parent cgroup (`None`: no
/// limit). The kernel counts every descendant against them, so they hold whatever each
/// sandbox's own limits add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParentLimits {
    /// `pids.max`: tasks (processes and threads).
    pub pids: Option<u64>,
    /// The memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub memory_bytes: Option<u64>,
}

/// Create `<parent>` where missing and set its [`ParentLimits`] (v1: in the pids and memory
/// hierarchies; v2: the one directory, with the controllers enabled down to it).
pub fn set_parent_limits(
    layout: Layout,
    parent: &str,
    limits: &ParentLimits,
) -> Result<(), CgroupError> {
    let pids = parent_dir(layout, ControllerType::Pids, parent)?;
    let value = limits.pids.map_or("max".to_string(), |p| p.to_string());
    write_file(&pids.join("pids.max"), &value)?;
    let mem = parent_dir(layout, ControllerType::Memory, parent)?;
    let (file, value) = match (layout, limits.memory_bytes) {
        (Layout::V2, Some(b)) => ("memory.max", b.to_string()),
        (Layout::V2, None) => ("memory.max", "max".to_string()),
        (_, Some(b)) => ("memory.limit_in_bytes", b.to_string()),
        (_, None) => ("memory.limit_in_bytes", "-1".to_string()),
    };
    write_file(&mem.join(file), &value)
}

/// The limits `set_parent_limits` set, as the kernel reports them (`None`: no limit).
pub fn parent_limits(layout: Layout, parent: &str) -> Result<ParentLimits, CgroupError> {
    let rel = Path::new(parent.trim_matches('/'));
    let pids = controller_dir(layout, ControllerType::Pids, rel)?.join("pids.max");
    let pids = match read_trimmed(&pids)?.as_str() {
        "max" => None,
        v => Some(parse_u64(&pids, v)?),
    };
    let mem = controller_dir(layout, ControllerType::Memory, rel)?;
    let memory_bytes = match layout {
        Layout::V2 => {
            let f = mem.join("memory.max");
            match read_trimmed(&f)?.as_str() {
                "max" => None,
                v => Some(parse_u64(&f, v)?),
            }
        }
        Layout::V1 | Layout::Hybrid => {
            let f = mem.join("memory.limit_in_bytes");
            Some(parse_u64(&f, &read_trimmed(&f)?)?).filter(|b| *b < V1_UNLIMITED)
        }
    };
    Ok(ParentLimits { pids, memory_bytes })
}

/// Tasks of every sandbox together: `pids.current` of `<parent>` (`None`: no such cgroup).
pub fn parent_pids_current(layout: Layout, parent: &str) -> Result<Option<u64>, CgroupError> {
    let rel = Path::new(parent.trim_matches('/'));
    read_u64(&controller_dir(layout, ControllerType::Pids, rel)?.join("pids.current"))
}

/// `<parent>`'s directory in the hierarchy of `controller`, created where missing (v2: with
/// the cpu, memory and pids controllers enabled on the way down).
fn parent_dir(
    layout: Layout,
    controller: ControllerType,
    parent: &str,
) -> Result<PathBuf, CgroupError> {
    let rel = Path::new(parent.trim_matches('/'));
    let dir = controller_dir(layout, controller, rel)?;
    if layout == Layout::V2 {
        let mut cur = PathBuf::from(DEFAULT_CGROUP_ROOT);
        for comp in rel.components() {
            enable_v2_controllers(&cur);
            cur.push(comp);
            match fs::create_dir(&cur) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &cur)(e)),
            }
        }
    } else {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
    }
    Ok(dir)
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
    fn oom_kill_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kills(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(1));
        assert_eq!(parse_oom_kills("oom_kill_disable 0\n"), None);
    }

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
                disk_bytes: None,
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
                disk_bytes: None,
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

    /// The v2 freezer on the real kernel, wherever a cgroup2 hierarchy is mounted (the
    /// unified root, or the empty one of a hybrid host). Skipped when not root.
    #[test]
    fn v2_freezer_waits_for_frozen_and_thaws() {
        let root = ["/sys/fs/cgroup/unified", DEFAULT_CGROUP_ROOT]
            .iter()
            .map(Path::new)
            .find(|r| r.join("cgroup.procs").exists() && r.join("cgroup.subtree_control").exists());
        let Some(root) = root else {
            eprintln!("skipped: no cgroup2 hierarchy");
            return;
        };
        crate::require_root("freezing a cgroup2 cgroup");
        let dir = root.join(format!("warren-freeze-test-{}", std::process::id()));
        fs::create_dir(&dir).unwrap();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        let r = std::panic::catch_unwind(|| {
            fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
            set_frozen_v2(&dir, true, FREEZE_TIMEOUT).unwrap();
            let events = fs::read_to_string(dir.join("cgroup.events")).unwrap();
            assert!(events.contains("frozen 1"), "{events}");
            set_frozen_v2(&dir, true, FREEZE_TIMEOUT).unwrap();
            set_frozen_v2(&dir, false, FREEZE_TIMEOUT).unwrap();
            let events = fs::read_to_string(dir.join("cgroup.events")).unwrap();
            assert!(events.contains("frozen 0"), "{events}");
        });
        let _ = fs::write(dir.join("cgroup.freeze"), "0");
        let _ = child.kill();
        let _ = child.wait();
        for _ in 0..100 {
            if fs::remove_dir(&dir).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!dir.exists(), "test cgroup left behind");
        if let Err(e) = r {
            std::panic::resume_unwind(e);
        }
    }
}
