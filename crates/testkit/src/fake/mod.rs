//! A [`Runtime`] without a kernel sandbox, for testing the engine, the HTTP layer, the SDK
//! and the CLI: every sandbox is a directory of the host served by the *real* agent, in this
//! process ([`warren_agent::Hosted`]). Files, processes, terminals, search and watch are the
//! agent's own code; only the lifecycle is simulated (a state per sandbox, snapshots as
//! copies of the directory).
//!
//! Each new sandbox's directory holds `/workspace`, `/tmp`, `/home/user` (1000:1000 when the
//! tests run as root), `/readonly` (which refuses changes with `permission_denied`) and
//! `/io-error` (which cannot be read: `io`).
//!
//! Commands run on the host, as the test's user (or the uid asked for, as root), starting in
//! their cwd inside the directory. Besides the host's commands (`echo`, `cat`, `env`, …) the
//! fake's own come first (see `programs.rs`): `split-utf8`, `binary`, `fail CODE`, `yes N`,
//! `split-utf8-then-warn`, `ticks N`, `sleep` (prints `started`, never exits) and `broken` (prints `partial`, then
//! the agent connection fails). Ports 7 (echo) and 8080 (HTTP) are served (see
//! [`ports`]); every other port refuses.
//!
//! Disk limits: an upload that would pass what is left of `limits.disk_bytes` is refused
//! with `quota_exceeded`, as the agent reports `EDQUOT`;
//! [`FakeRuntime::disable_disk_quota`] makes the runtime report no quotas.
//!
//! Failures and slowness can be injected ([`FakeRuntime::fail_next_create`],
//! [`FakeRuntime::set_create_delay`], [`FakeRuntime::set_op_delay`],
//! [`FakeRuntime::break_sandbox`]). Clones share their state, so a test can keep one clone
//! and hand another to the engine.

mod conn;
pub mod ports;
mod programs;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use warren_agent::{Hosted, HostedOptions};
use warren_runtime::{
    PortStream, Probe, Runtime, RuntimeError, RuntimeInfo, SandboxId, SandboxSpec, SnapshotMeta,
    Stats,
};

/// The one image the fake has.
pub const IMAGE: &str = "host";

/// A fake runtime's directory: `<tmp>/warren-fake-<pid>-<random>`.
const DIR_PREFIX: &str = "warren-fake-";

/// Removes the directories of fake runtimes whose test process is gone (killed before it
/// could clean up: their `readonly` directories are immutable, which plain `rm -rf` cannot
/// remove).
fn sweep_dead() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for sub in ["sandboxes", "snapshots"] {
            if let Ok(dirs) = std::fs::read_dir(e.path().join(sub)) {
                for d in dirs.flatten() {
                    set_immutable(&d.path().join("readonly"), false);
                }
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    Running,
    Paused,
    Stopped,
    Broken,
}

struct Sandbox {
    state: FakeState,
    /// Serving while running or paused (stopping ends it, and with it every process).
    agent: Option<Hosted>,
    disk_limit: Option<u64>,
    cpu_us: u64,
    /// Its network as created, with the egress policy last put in force.
    network: warren_runtime::NetworkSpec,
}

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, Sandbox>,
    snapshots: BTreeSet<String>,
    op_delay: Duration,
    create_delay: Duration,
}

struct Shared {
    /// `sandboxes/<id>/` (a sandbox's `/`) and `snapshots/<id>/`.
    dir: tempfile::TempDir,
    state: Mutex<State>,
    counters: Arc<conn::Counters>,
    fail_next_create: AtomicBool,
    no_disk_quota: AtomicBool,
}

/// A runtime whose sandboxes are host directories served by the real agent (see the module
/// docs).
#[derive(Clone)]
pub struct FakeRuntime {
    shared: Arc<Shared>,
    /// How many exec streams were dropped before their exit (the agent killed the command).
    pub drops: Arc<AtomicUsize>,
    /// How many uploads ended before their last byte (and so changed nothing).
    pub aborted_writes: Arc<AtomicUsize>,
    /// Set once [`Runtime::shutdown`] has been called.
    pub shut_down: Arc<AtomicBool>,
    /// How many times [`Runtime::create`] was called.
    pub creates: Arc<AtomicUsize>,
}

impl Default for FakeRuntime {
    fn default() -> FakeRuntime {
        FakeRuntime::new()
    }
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime")
            .field("dir", &self.shared.dir.path())
            .finish_non_exhaustive()
    }
}

impl FakeRuntime {
    /// Panics if it cannot make its temporary directory (test code only).
    pub fn new() -> FakeRuntime {
        sweep_dead();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("fake runtime dir");
        // Commands may run as another user (1000): they must reach the programs and roots.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("fake runtime dir mode");
        }
        programs::install(&dir.path().join("bin")).expect("fake programs");
        let counters = Arc::new(conn::Counters::default());
        FakeRuntime {
            drops: counters.drops.clone(),
            aborted_writes: counters.aborted_writes.clone(),
            shared: Arc::new(Shared {
                dir,
                state: Mutex::new(State::default()),
                counters,
                fail_next_create: AtomicBool::new(false),
                no_disk_quota: AtomicBool::new(false),
            }),
            shut_down: Arc::default(),
            creates: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host directory that is sandbox `id`'s `/`.
    pub fn root(&self, id: &str) -> PathBuf {
        self.shared.dir.path().join("sandboxes").join(id)
    }

    fn snapshot_dir(&self, snap: &str) -> PathBuf {
        self.shared.dir.path().join("snapshots").join(snap)
    }

    /// Make the next [`Runtime::create`] fail with a setup error.
    pub fn fail_next_create(&self) {
        self.shared.fail_next_create.store(true, Ordering::SeqCst);
    }

    /// Make every [`Runtime::create`] wait this long first.
    pub fn set_create_delay(&self, d: Duration) {
        self.lock().create_delay = d;
    }

    /// Make every pause, resume, stop, start and snapshot take this long first.
    pub fn set_op_delay(&self, d: Duration) {
        self.lock().op_delay = d;
    }

    /// Report no disk quotas (as the `dir` storage backend); call before the engine opens.
    pub fn disable_disk_quota(&self) {
        self.shared.no_disk_quota.store(true, Ordering::SeqCst);
    }

    /// The disk limit a sandbox was created with.
    pub fn disk_limit(&self, id: &str) -> Option<u64> {
        self.lock().sandboxes.get(id).and_then(|s| s.disk_limit)
    }

    /// The ids of the live sandboxes, sorted.
    pub fn live(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.lock().sandboxes.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// The fake state of sandbox `id`, if it exists.
    pub fn state(&self, id: &str) -> Option<FakeState> {
        self.lock().sandboxes.get(id).map(|s| s.state)
    }

    /// The network `id` was created with, with the egress policy last put in force.
    pub fn network(&self, id: &str) -> Option<warren_runtime::NetworkSpec> {
        self.lock().sandboxes.get(id).map(|s| s.network.clone())
    }

    /// Set the cumulative CPU time `cpu_usage_us` reports for `id`.
    pub fn set_cpu_usage(&self, id: &str, us: u64) {
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.cpu_us = us;
        }
    }

    /// From now on `id` probes as broken (its agent "does not answer").
    pub fn break_sandbox(&self, id: &str) {
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.state = FakeState::Broken;
        }
    }

    /// Snapshot ids the fake holds files for.
    pub fn snapshot_ids(&self) -> Vec<String> {
        self.lock().snapshots.iter().cloned().collect()
    }

    /// The runtime loses sandbox `id` behind the engine's back (its agent and files go).
    pub fn lose(&self, id: &str) {
        let sandbox = self.lock().sandboxes.remove(id);
        drop(sandbox);
        let _ = remove_tree(&self.root(id));
    }

    /// Make a symlink at `path` in sandbox `id` (the API cannot make one).
    pub fn symlink(&self, id: &str, path: &str, target: &str) -> io::Result<()> {
        std::os::unix::fs::symlink(target, self.root(id).join(path.trim_start_matches('/')))
    }

    async fn delay(&self) {
        let d = self.lock().op_delay;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn require(&self, id: &str) -> Result<FakeState, RuntimeError> {
        self.state(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    fn set_state(&self, id: &str, state: FakeState, agent: Option<Hosted>) {
        if let Some(s) = self.lock().sandboxes.get_mut(id) {
            s.state = state;
            s.agent = agent;
        }
    }

    fn start_agent(&self, id: &str) -> Result<Hosted, RuntimeError> {
        Hosted::start(
            &self.root(id),
            HostedOptions {
                programs: Some(self.shared.dir.path().join("bin")),
                ports: ports::ports().clone(),
            },
        )
        .map_err(|e| RuntimeError::Setup(format!("hosted agent: {e}")))
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "fake".into(),
            cgroup: "v2".into(),
            namespaces: vec![],
            user_namespace: false,
            seccomp: false,
            capabilities: vec![],
            images: vec![IMAGE.into()],
            pause: true,
            stop: true,
            snapshots: true,
            stats: true,
            storage: "dir".into(),
            reflink: false,
            storage_available: vec!["dir".into()],
            disk_quota: !self.shared.no_disk_quota.load(Ordering::SeqCst),
            // Simulated: the mode and policy are recorded (see `network`), no traffic flows.
            network: warren_runtime::NetworkCaps {
                modes: vec![
                    warren_runtime::NetworkMode::Nat,
                    warren_runtime::NetworkMode::Isolated,
                ],
                egress: true,
                broker: false,
                range: Some(warren_runtime::Ipv4Cidr::DEFAULT_NAT_RANGE),
            },
            // Volumes are tested on the native runtime (they are bind mounts).
            volumes: false,
            volume_quota: false,
            kinds: vec![
                warren_runtime::KindInfo {
                    kind: warren_runtime::RuntimeKind::Native,
                    unavailable: None,
                    kernel: "host".into(),
                    version: None,
                    platform: None,
                    pause: true,
                    stop: true,
                    snapshots: true,
                    memory_snapshots: false,
                    network_modes: vec![
                        warren_runtime::NetworkMode::Nat,
                        warren_runtime::NetworkMode::Isolated,
                    ],
                    egress: true,
                    user_namespace: false,
                    seccomp: false,
                    disk_quota: !self.shared.no_disk_quota.load(Ordering::SeqCst),
                    volumes: false,
                    file_metadata: true,
                },
                warren_runtime::KindInfo {
                    kind: warren_runtime::RuntimeKind::Gvisor,
                    unavailable: Some("the fake runtime simulates native sandboxes only".into()),
                    kernel: "gvisor".into(),
                    version: None,
                    platform: None,
                    pause: false,
                    stop: false,
                    snapshots: false,
                    memory_snapshots: false,
                    network_modes: vec![],
                    egress: false,
                    user_namespace: false,
                    seccomp: false,
                    disk_quota: false,
                    volumes: false,
                    file_metadata: false,
                },
            ],
        }
    }

    async fn set_egress(
        &self,
        id: &warren_runtime::SandboxId,
        policy: &warren_runtime::EgressPolicy,
    ) -> Result<(), RuntimeError> {
        let mut st = self.lock();
        let s = st
            .sandboxes
            .get_mut(id.as_str())
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        s.network.egress = policy.clone();
        Ok(())
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let delay = self.lock().create_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.shared.fail_next_create.swap(false, Ordering::SeqCst) {
            return Err(RuntimeError::Setup("injected failure".into()));
        }
        if spec.image != IMAGE {
            return Err(RuntimeError::ImageNotFound(spec.image.clone()));
        }
        if spec.limits.disk_bytes.is_some() && self.shared.no_disk_quota.load(Ordering::SeqCst) {
            return Err(RuntimeError::Setup("disk limits are not available".into()));
        }
        let root = self.root(&spec.id);
        let made = match &spec.snapshot {
            Some(snap) => {
                let from = self.snapshot_dir(snap);
                if !from.is_dir() {
                    return Err(RuntimeError::SnapshotNotFound(snap.clone()));
                }
                copy_tree(&from, &root)
            }
            None => skeleton(&root),
        };
        if let Err(e) = made {
            let _ = remove_tree(&root);
            return Err(RuntimeError::Setup(format!("sandbox files: {e}")));
        }
        let agent = match self.start_agent(&spec.id) {
            Ok(a) => a,
            Err(e) => {
                let _ = remove_tree(&root);
                return Err(e);
            }
        };
        self.lock().sandboxes.insert(
            spec.id.to_string(),
            Sandbox {
                state: FakeState::Running,
                agent: Some(agent),
                disk_limit: spec.limits.disk_bytes,
                cpu_us: 0,
                network: spec.network.clone(),
            },
        );
        Ok(())
    }

    async fn agent(&self, id: &SandboxId) -> Result<Box<dyn PortStream>, RuntimeError> {
        let (stream, limit) = {
            let state = self.lock();
            let sb = state
                .sandboxes
                .get(id.as_str())
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            let agent = sb
                .agent
                .as_ref()
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            (agent.connect()?, sb.disk_limit)
        };
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let room = match limit {
            Some(limit) => {
                let root = self.root(id);
                let used = tokio::task::spawn_blocking(move || tree_bytes(&root))
                    .await
                    .unwrap_or(0);
                Some(limit.saturating_sub(used))
            }
            None => None,
        };
        Ok(Box::new(conn::Watched::new(
            stream,
            room,
            self.shared.counters.clone(),
        )))
    }

    async fn pause(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.pause_or_resume(id, true).await
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.pause_or_resume(id, false).await
    }

    async fn stop(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.delay().await;
        self.require(id)?;
        // Dropping the agent kills every process, as a stopped sandbox's agent ends.
        let agent = self
            .lock()
            .sandboxes
            .get_mut(id.as_str())
            .and_then(|s| s.agent.take());
        drop_agent(agent).await;
        self.set_state(id, FakeState::Stopped, None);
        Ok(())
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.delay().await;
        match self.require(&spec.id)? {
            FakeState::Stopped => {
                let agent = self.start_agent(&spec.id)?;
                self.set_state(&spec.id, FakeState::Running, Some(agent));
                Ok(())
            }
            FakeState::Running => Ok(()),
            s => Err(RuntimeError::Setup(format!("cannot start a {s:?} sandbox"))),
        }
    }

    async fn stats(&self, id: &SandboxId) -> Result<Stats, RuntimeError> {
        let state = self.require(id)?;
        let cpu = self
            .lock()
            .sandboxes
            .get(id.as_str())
            .map_or(0, |s| s.cpu_us);
        let running = matches!(state, FakeState::Running | FakeState::Paused);
        let root = self.root(id);
        let disk = tokio::task::spawn_blocking(move || tree_bytes(&root))
            .await
            .unwrap_or(0);
        Ok(Stats {
            cpu_usage_us: if running { cpu } else { 0 },
            memory_bytes: if running { 1 << 20 } else { 0 },
            memory_peak_bytes: if running { 2 << 20 } else { 0 },
            memory_limit_bytes: None,
            pids: u64::from(running),
            disk_bytes: disk,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
        })
    }

    async fn cpu_usage_us(&self, id: &SandboxId) -> Result<u64, RuntimeError> {
        self.stats(id).await.map(|s| s.cpu_usage_us)
    }

    async fn probe(&self, id: &SandboxId) -> Result<Probe, RuntimeError> {
        Ok(match self.state(id) {
            None => Probe::Gone,
            Some(FakeState::Running) => Probe::Running,
            Some(FakeState::Paused) => Probe::Paused,
            Some(FakeState::Stopped) => Probe::Stopped,
            Some(FakeState::Broken) => Probe::Broken,
        })
    }

    async fn snapshot(
        &self,
        id: &SandboxId,
        snapshot_id: &str,
    ) -> Result<SnapshotMeta, RuntimeError> {
        self.delay().await;
        self.require(id)?;
        let (from, to) = (self.root(id), self.snapshot_dir(snapshot_id));
        let size = tokio::task::spawn_blocking(move || -> io::Result<u64> {
            copy_tree(&from, &to).inspect_err(|_| {
                let _ = remove_tree(&to);
            })?;
            Ok(tree_bytes(&to))
        })
        .await
        .map_err(|e| RuntimeError::Setup(format!("snapshot task: {e}")))??;
        self.lock().snapshots.insert(snapshot_id.to_string());
        Ok(SnapshotMeta {
            size_bytes: size,
            backend: "dir".into(),
        })
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        self.lock().snapshots.remove(snapshot_id);
        remove_tree(&self.snapshot_dir(snapshot_id))?;
        Ok(())
    }

    async fn rollback(&self, id: &SandboxId, snapshot_id: &str) -> Result<(), RuntimeError> {
        if self.require(id)? != FakeState::Stopped {
            return Err(RuntimeError::Setup(
                "rollback needs a stopped sandbox".into(),
            ));
        }
        let from = self.snapshot_dir(snapshot_id);
        if !from.is_dir() {
            return Err(RuntimeError::SnapshotNotFound(snapshot_id.to_string()));
        }
        let root = self.root(id);
        let staged = root.with_extension("rollback");
        copy_tree(&from, &staged).inspect_err(|_| {
            let _ = remove_tree(&staged);
        })?;
        remove_tree(&root)?;
        std::fs::rename(&staged, &root)?;
        Ok(())
    }

    async fn reconcile_snapshots(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let gone: Vec<String> = self
            .snapshot_ids()
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        for snap in &gone {
            self.delete_snapshot(snap).await?;
        }
        Ok(gone)
    }

    async fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let sandbox = self.lock().sandboxes.remove(id.as_str());
        if let Some(sb) = sandbox {
            drop_agent(sb.agent).await;
        }
        remove_tree(&self.root(id))?;
        Ok(())
    }

    async fn reconcile(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let gone: Vec<String> = self
            .live()
            .into_iter()
            .filter(|id| !keep.contains(id))
            .collect();
        for id in &gone {
            if let Ok(id) = SandboxId::parse(id) {
                self.destroy(&id).await?;
            }
        }
        Ok(gone)
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        self.shut_down.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl FakeRuntime {
    async fn pause_or_resume(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        self.delay().await;
        let mut state = self.lock();
        let sb = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        match sb.state {
            FakeState::Running | FakeState::Paused => {
                sb.state = if frozen {
                    FakeState::Paused
                } else {
                    FakeState::Running
                };
                Ok(())
            }
            s => Err(RuntimeError::Setup(format!(
                "cannot freeze or thaw a {s:?} sandbox"
            ))),
        }
    }
}

/// Stops an agent off the async threads (it joins its thread after killing its commands).
async fn drop_agent(agent: Option<Hosted>) {
    if let Some(agent) = agent {
        let _ = tokio::task::spawn_blocking(move || drop(agent)).await;
    }
}

/// A new sandbox's `/`.
fn skeleton(root: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for d in ["workspace", "tmp", "home/user", "readonly"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(root.join("home/user"), Some(1000), Some(1000))?;
    }
    // Refuses changes: not writable, and immutable where this user may say so (root).
    std::fs::set_permissions(
        root.join("readonly"),
        std::fs::Permissions::from_mode(0o555),
    )?;
    set_immutable(&root.join("readonly"), true);
    // A socket cannot be opened as a file: reading it fails with ENXIO, which is `io`.
    drop(std::os::unix::net::UnixListener::bind(
        root.join("io-error"),
    )?);
    Ok(())
}

/// Sets or clears the immutable attribute (best effort: needs CAP_LINUX_IMMUTABLE and a file
/// system that has it).
fn set_immutable(path: &Path, on: bool) {
    let Ok(f) = std::fs::File::open(path) else {
        return;
    };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the valid pointer.
    if unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            FS_IOC_GETFLAGS,
            &mut flags,
        )
    } < 0
    {
        return;
    }
    if on {
        flags |= FS_IMMUTABLE_FL;
    } else {
        flags &= !FS_IMMUTABLE_FL;
    }
    // SAFETY: FS_IOC_SETFLAGS reads one long through the valid pointer.
    unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), FS_IOC_SETFLAGS, &flags) };
}

const FS_IOC_GETFLAGS: libc::Ioctl = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::Ioctl = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;

/// Removes a sandbox's (or snapshot's) directory, immutable parts included.
fn remove_tree(dir: &Path) -> io::Result<()> {
    set_immutable(&dir.join("readonly"), false);
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// `cp -a` of a directory tree (modes, owners, symlinks; sockets and FIFOs skipped), made
/// by the test's user.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let md = std::fs::symlink_metadata(from)?;
    let ft = md.file_type();
    if ft.is_dir() {
        std::fs::create_dir_all(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)?;
    } else if ft.is_file() {
        std::fs::copy(from, to)?;
    } else {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
    }
    if !ft.is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    if ft.is_dir() && from.file_name().is_some_and(|n| n == "readonly") {
        set_immutable(to, true);
    }
    Ok(())
}

/// Bytes of the regular files below `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

impl Drop for Shared {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        // Stop every agent (killing its commands) before the directory goes.
        state.sandboxes.clear();
        for sb in ["sandboxes", "snapshots"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.path().join(sb)) {
                for e in entries.flatten() {
                    set_immutable(&e.path().join("readonly"), false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed test process leaves its directory behind, immutable parts and all; the next
    /// fake runtime removes it (and leaves those of live processes alone).
    #[test]
    fn leftovers_of_dead_processes_are_swept() {
        let dead = std::env::temp_dir().join(format!("{DIR_PREFIX}999999999-x"));
        let _ = std::fs::remove_dir_all(&dead);
        skeleton(&dead.join("sandboxes/sb-1")).unwrap();
        let live = FakeRuntime::new();
        assert!(!dead.exists(), "{dead:?} left");
        let second = FakeRuntime::new();
        assert!(live.shared.dir.path().exists());
        drop((live, second));
    }
}
