//! The native backend: Linux namespaces, cgroups (v1, hybrid, v2), overlayfs, seccomp.
//!
//! A sandbox is a process tree in fresh mount, UTS, IPC, network, PID and cgroup namespaces,
//! in its own cgroup, on an overlay root whose lower layers are the `host` image skeleton and
//! the host's `/usr`. Its PID 1 is the agent (this same binary), reached over a Unix socket
//! at `<data_dir>/sandboxes/<id>/agent.sock`. See [`init`] for how a sandbox starts without
//! the daemon ever forking.
//!
//! On disk (`data_dir`): `images/host/` (the skeleton), and in the storage root (the data
//! dir, or the btrfs loop image mounted at `storage/btrfs`, see [`storage`]):
//! `sandboxes/<id>/` (`fs/` with `upper/`, `work/`, `usr-upper/`, `usr-work/`; `rootfs/`,
//! `agent.sock`, `agent.pid`, `agent.log`) and `snapshots/<snapshot_id>/` (copies of
//! `fs/`). Pause, stop, start, stats and probe: see `lifecycle.rs`.

pub mod caps;
pub mod cgroup;
pub mod image;
pub mod init;
mod init_error;
mod layers;
mod lifecycle;
pub mod net;
pub mod quota;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod storage;
pub mod userns;
pub mod volumes;

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use warren_proto::host as agent;
use warren_proto::{ProtoError, PROTOCOL_VERSION};

use cgroup::Layout;
use spec::{HelperReport, InitSpec, SandboxPaths, HELPER_ARG, SOCKET_NAME};
use warren_network::{NetConfig, NetworkManager};
use warren_runtime::{
    EgressPolicy, KindInfo, NetworkMode, Runtime, RuntimeError, RuntimeInfo, RuntimeKind,
    SandboxId, SandboxSpec,
};

pub use init::run_helper;
pub use init_error::InitError;
pub use layers::fresh_dir;
pub use spec::HELPER_ARG as SANDBOX_INIT_ARG;
pub use storage::StorageConfig;

/// How long the helper may take to report.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to answer its first ping.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long destroy waits for a cgroup to empty after SIGKILL. Killed processes usually
/// go within milliseconds, but the kernel can take many seconds to tear down what a process
/// holds (5 million epoll watches took over 5 s on a loaded 2-core machine).
const KILL_TIMEOUT: Duration = Duration::from_secs(30);
/// `sun_path` holds 108 bytes including the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// The helper's only environment besides `RUST_LOG`/`RUST_BACKTRACE` (nothing of the
/// daemon's environment, which may hold secrets, reaches a sandbox).
const HELPER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Configuration of [`NativeRuntime`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeConfig {
    /// Root of the runtime's files (absolute): `images/` and `sandboxes/` live here.
    pub data_dir: PathBuf,
    /// The `warren` binary to exec as `<helper_exe> __sandbox-init` (usually the daemon's
    /// own executable, `std::env::current_exe()`).
    pub helper_exe: PathBuf,
    /// Cgroup (relative to each hierarchy root) under which sandbox cgroups are made, e.g.
    /// `warren`.
    pub cgroup_parent: String,
    /// Where sandboxes' files and snapshots live (`dir` by default).
    pub storage: StorageConfig,
    /// Whether sandboxes get user namespaces (see [`userns`]).
    pub user_namespaces: UsernsSetting,
}

/// `--user-namespaces`: whether each sandbox gets its own user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsernsSetting {
    /// Yes if this host can (checked at start); otherwise no, with a warning.
    #[default]
    Auto,
    /// Yes; refuse to start where the host cannot.
    On,
    /// No: sandbox root is host root, guarded by capabilities and seccomp only.
    Off,
}

/// Another way to start a sandbox (another [`RuntimeKind`]) on what this runtime prepares:
/// its files (storage, layers, snapshots, quotas), its cgroup and limits, its volumes and
/// its network. The launcher only decides how PID 1 comes up and where its agent listens;
/// the agent and its protocol are the same. The gVisor backend (`warren-runtime-gvisor`)
/// is one.
///
/// The daemon execs `<helper_exe> <helper_arg>` (a fresh single-threaded process) in the
/// sandbox's cgroup and hands it an [`InitSpec`] on stdin whose `launcher` holds
/// [`Launcher::options`]; the helper answers one [`spec::HelperReport`] line, as the native
/// helper does, with the host pid to watch.
pub trait Launcher: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;
    /// The helper role to exec.
    fn helper_arg(&self) -> &'static str;
    /// What the helper needs besides the [`InitSpec`] (limits it applies itself, paths).
    fn options(&self, spec: &SandboxSpec) -> serde_json::Value;
    /// Where the agent's socket appears, relative to the sandbox directory
    /// (`agent.sock` is made a symlink to it).
    fn socket(&self) -> &'static str;
    /// What sandboxes of this kind support here, given the native kind's entry.
    fn info(&self, native: &KindInfo) -> KindInfo;
    /// Host cgroup limits for a sandbox of this kind whose own limits are `limits` (a
    /// user-space kernel needs room for its own threads and memory).
    /// Whether a `nat` sandbox's network must be wired before its PID 1 starts (its
    /// helper then asks with [`HelperReport::Netns`]); else it is wired while the agent
    /// comes up.
    fn network_before_start(&self) -> bool {
        false
    }

    fn host_limits(&self, limits: &warren_runtime::Limits) -> warren_runtime::Limits {
        limits.clone()
    }
}

/// The host id range the start-up probe borrows for a moment (a uid no account uses).
const PROBE_HOST_ID: u32 = 0xFFFE_0000;

/// Largest agent log kept per sandbox (`agent.log`, then `agent.log.1`).
const AGENT_LOG_MAX: u64 = 1 << 20;

/// The native runtime backend. Cheap to clone.
#[derive(Clone)]
pub struct NativeRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NativeConfig,
    layout: Layout,
    image_dir: PathBuf,
    /// The seccomp program, compiled once (building it costs ~1.5 ms per sandbox otherwise).
    seccomp_bpf: Vec<u8>,
    /// Sandbox files and snapshots.
    storage: Arc<storage::Storage>,
    /// Whether sandboxes get user namespaces (the setting, checked against the host).
    userns: bool,
    /// The host network manager, once [`NativeRuntime::start_network`] ran (`nat` mode).
    network: std::sync::OnceLock<NetworkManager>,
    /// What Warren's table held at start-up (for adopting sandboxes' policies), until
    /// [`NativeRuntime::start_network`]'s caller has adopted them.
    net_listing: std::sync::Mutex<warren_network::nft::Listing>,
    /// The other kinds of sandbox it can start ([`Launcher`]).
    launchers: Vec<Arc<dyn Launcher>>,
}

impl NativeRuntime {
    /// Check the configuration, detect the cgroup layout and build the `host` image if it is
    /// missing. Blocking (file-system work): call it at startup or from `spawn_blocking`.
    pub fn new(cfg: NativeConfig) -> Result<Self, RuntimeError> {
        Self::with_launchers(cfg, Vec::new())
    }

    /// [`NativeRuntime::new`], also starting the kinds of sandbox `launchers` start.
    pub fn with_launchers(
        cfg: NativeConfig,
        launchers: Vec<Arc<dyn Launcher>>,
    ) -> Result<Self, RuntimeError> {
        if !cfg.data_dir.is_absolute() {
            return Err(RuntimeError::Setup(format!(
                "data_dir must be absolute: {}",
                cfg.data_dir.display()
            )));
        }
        spec::check_overlay_path(&cfg.data_dir)
            .map_err(|e| RuntimeError::Setup(format!("data_dir: {e}")))?;
        check_cgroup_parent(&cfg.cgroup_parent)?;
        if !cfg.helper_exe.is_file() {
            return Err(RuntimeError::Setup(format!(
                "helper executable {} not found",
                cfg.helper_exe.display()
            )));
        }
        let layout = Layout::detect().map_err(|e| RuntimeError::Cgroup(e.to_string()))?;
        let image_dir = image::ensure_host_image(&cfg.data_dir, Path::new("/"))
            .map_err(|e| RuntimeError::Setup(format!("building the host image: {e}")))?;
        let seccomp_bpf =
            seccomp::export_default_bpf().map_err(|e| RuntimeError::Setup(e.to_string()))?;
        let userns = match cfg.user_namespaces {
            UsernsSetting::Off => false,
            setting => match probe_userns(&cfg, &image_dir) {
                Ok(()) => true,
                Err(e) if setting == UsernsSetting::On => {
                    return Err(RuntimeError::Setup(format!(
                        "user namespaces do not work on this host: {e}"
                    )))
                }
                Err(e) => {
                    tracing::warn!(error = %e,
                        "user namespaces do not work on this host; sandbox root is host root \
                         (guarded by capabilities and seccomp only)");
                    false
                }
            },
        };
        // Last: it may mount the btrfs loop image.
        let storage = Arc::new(storage::Storage::open(&cfg.data_dir, &cfg.storage)?);
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                layout,
                image_dir,
                seccomp_bpf,
                storage,
                userns,
                network: std::sync::OnceLock::new(),
                net_listing: std::sync::Mutex::new(Default::default()),
                launchers,
            }),
        })
    }

    /// Offer `nat` networking: claim the address range, install (or adopt) Warren's nftables
    /// table and start the DNS proxy. Call once, at start-up, before the engine adopts
    /// sandboxes (their policies are put back in force by [`Runtime::set_egress`]).
    pub async fn start_network(&self, cfg: NetConfig) -> Result<(), RuntimeError> {
        let manager = NetworkManager::start(cfg).await.map_err(net_err)?;
        let listing = manager.listing().await.map_err(net_err)?;
        *lock_listing(&self.inner.net_listing) = listing;
        self.inner
            .network
            .set(manager)
            .map_err(|_| RuntimeError::Setup("the network is started already".into()))
    }

    /// The network manager, if `nat` networking is on.
    pub fn network(&self) -> Option<&NetworkManager> {
        self.inner.network.get()
    }

    pub fn config(&self) -> &NativeConfig {
        &self.inner.cfg
    }

    /// Where sandbox files and snapshots live: the data dir, or the mounted btrfs image
    /// (another file system, whose free space admission watches too).
    pub fn storage_root(&self) -> PathBuf {
        self.inner.storage.root().to_path_buf()
    }
}

/// Run `warren __sandbox-init --probe-userns` on a scratch dir: can this host make a
/// sandbox's user namespace and its idmapped overlay ([`init::run_helper`])? Blocking.
fn probe_userns(cfg: &NativeConfig, image_dir: &Path) -> Result<(), String> {
    let scratch = cfg
        .data_dir
        .join(format!(".probe-userns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)
        .map_err(|e| format!("creating {}: {e}", scratch.display()))?;
    let spec = InitSpec {
        id: "probe".into(),
        sandbox_dir: scratch.clone(),
        image_dir: image_dir.to_path_buf(),
        cgroup_path: "/".into(),
        seccomp_bpf: Vec::new(),
        idmap: Some(warren_runtime::IdMap::new(PROBE_HOST_ID)),
        layers: Vec::new(),
        mounts: Vec::new(),
        launcher: None,
    };
    let outcome = (|| {
        let json = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new(&cfg.helper_exe)
            .arg(HELPER_ARG)
            .arg(init::PROBE_USERNS_ARG)
            .env_clear()
            .env("PATH", HELPER_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", cfg.helper_exe.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(&json).map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let line = String::from_utf8_lossy(&out.stdout);
        match HelperReport::parse(&line) {
            Ok(HelperReport::Ready { .. }) if out.status.success() => Ok(()),
            Ok(HelperReport::Failed { error }) => Err(error),
            _ => Err(format!("probe failed ({}): {line:?}", out.status)),
        }
    })();
    // The probe's mounts died with its namespace; only files are left.
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

fn net_err(e: warren_network::NetError) -> RuntimeError {
    RuntimeError::Setup(e.to_string())
}

fn lock_listing(
    m: &std::sync::Mutex<warren_network::nft::Listing>,
) -> std::sync::MutexGuard<'_, warren_network::nft::Listing> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a `nat` sandbox's address is kept (so teardown, stats and adoption find it).
fn net_addr_file(paths: &SandboxPaths) -> PathBuf {
    paths.dir.join("network.addr")
}

async fn read_net_addr(paths: &SandboxPaths) -> Option<std::net::Ipv4Addr> {
    tokio::fs::read_to_string(net_addr_file(paths))
        .await
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The last lines (at most 1 KiB) of a sandbox's agent log, to say why its agent never
/// answered. The pipe is drained by a task: give it a moment to catch up.
async fn log_tail(log: &Path) -> Option<String> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let text = tokio::fs::read(log).await.ok()?;
    let tail = &text[text.len().saturating_sub(1024)..];
    let tail = String::from_utf8_lossy(tail).trim().replace('\n', " | ");
    (!tail.is_empty()).then_some(tail)
}

/// A set-up error with the end of the sandbox's log (what its helper, runsc or agent said).
async fn with_log_tail(e: String, log: &Path) -> RuntimeError {
    RuntimeError::Setup(match log_tail(log).await {
        Some(tail) => format!("{e}; its log ends: {tail}"),
        None => e,
    })
}

fn check_cgroup_parent(parent: &str) -> Result<(), RuntimeError> {
    let trimmed = parent.trim_matches('/');
    let ok = !trimmed.is_empty()
        && trimmed.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        });
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::Setup(format!(
            "cgroup_parent {parent:?} must be a relative path of [A-Za-z0-9._-] components"
        )))
    }
}

/// Run blocking work off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, RuntimeError>
where
    F: FnOnce() -> Result<T, RuntimeError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RuntimeError::Setup(format!("blocking task failed: {e}")))?
}

fn cg_err(e: cgroup::CgroupError) -> RuntimeError {
    RuntimeError::Cgroup(e.to_string())
}

impl Inner {
    fn sandboxes_dir(&self) -> PathBuf {
        self.storage.sandboxes_dir()
    }

    /// Only for validated ids.
    fn paths(&self, id: &str) -> SandboxPaths {
        SandboxPaths::new(&self.sandboxes_dir().join(id))
    }

    /// The host id of root in `spec`'s sandbox: its range's first id, or 0 without a user
    /// namespace (as on a host where they do not work).
    fn owner(&self, spec: &SandboxSpec) -> u32 {
        match spec.idmap {
            Some(m) if self.userns && spec.runtime == RuntimeKind::Native => m.host_id,
            _ => 0,
        }
    }

    /// The launcher of `kind`: `Ok(None)` for native sandboxes.
    fn launcher(&self, kind: RuntimeKind) -> Result<Option<&Arc<dyn Launcher>>, RuntimeError> {
        if kind == RuntimeKind::Native {
            return Ok(None);
        }
        self.launchers
            .iter()
            .find(|l| l.kind() == kind)
            .map(Some)
            .ok_or(RuntimeError::Unsupported("this kind of sandbox"))
    }

    fn cgroup_path(&self, id: &str) -> PathBuf {
        cgroup::sandbox_cgroup_path(&self.cfg.cgroup_parent, id)
    }

    async fn create(self: Arc<Self>, spec: SandboxSpec) -> Result<(), RuntimeError> {
        self.launcher(spec.runtime)?;
        if spec.image != image::HOST_IMAGE && spec.layers.is_empty() {
            return Err(RuntimeError::ImageNotFound(spec.image.clone()));
        }
        let id = spec.id.to_string();
        let paths = self.paths(&id);
        {
            let (this, paths, id, snapshot) = (
                self.clone(),
                paths.clone(),
                id.clone(),
                spec.snapshot.clone(),
            );
            let owner = self.owner(&spec);
            let disk = spec.limits.disk_bytes;
            let oci = !spec.layers.is_empty();
            blocking(move || {
                image::prepare_sandbox_dir(
                    &paths,
                    &id,
                    &this.storage,
                    snapshot.as_deref(),
                    owner,
                    disk,
                    oci,
                )
            })
            .await?;
        }
        // From here on, a failure removes everything this call made.
        let disk = spec.limits.disk_bytes;
        let launched = async {
            {
                let resolv = match (spec.network.mode, self.network.get()) {
                    (NetworkMode::Nat, Some(net)) => format!(
                        "{} the sandbox's DNS proxy (its egress policy decides which names resolve)\nnameserver {}\n",
                        layers::RESOLV_MARK,
                        net.gateway()
                    ),
                    _ => format!(
                        "{} isolated network (loopback only): no DNS\nnameserver 127.0.0.1\n",
                        layers::RESOLV_MARK
                    ),
                };
                let (upper, owner) = (paths.upper.clone(), self.owner(&spec));
                blocking(move || {
                    layers::set_resolv_conf(&upper, &resolv, owner)
                        .map_err(|e| RuntimeError::Setup(format!("writing /etc/resolv.conf: {e}")))
                })
                .await?;
            }
            // The new sandbox's quota group has no limit yet (see `Storage::create_fs`):
            // a little headroom while its overlay is mounted and its agent comes up, then
            // its limit, before anything else runs in it.
            let loosened = {
                let (this, fs) = (self.clone(), paths.fs.clone());
                blocking(move || {
                    this.storage
                        .loosen_disk_limit(&fs, Some(storage::START_HEADROOM))
                })
                .await?
            };
            self.clone().launch(&spec, &paths).await?;
            match loosened {
                Some(l) => {
                    let this = self.clone();
                    blocking(move || this.storage.tighten_disk_limit(&l, disk)).await
                }
                None => Ok(()),
            }
        };
        match launched.await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(ce) = self.teardown(&id).await {
                    tracing::error!(sandbox = %id, error = %ce, "cleanup after failed create");
                }
                Err(e)
            }
        }
    }

    /// Create the sandbox's cgroup with `spec.limits`, spawn the helper on the files at
    /// `paths` (which must be ready: fresh from `prepare_sandbox_dir`, or a stopped
    /// sandbox's with clean overlay work dirs) and wait for the agent. Shared by create and
    /// start; on error the caller cleans up.
    async fn launch(
        self: Arc<Self>,
        spec: &SandboxSpec,
        paths: &SandboxPaths,
    ) -> Result<(), RuntimeError> {
        let id = spec.id.to_string();
        let cgroup_path = self.cgroup_path(&id);
        let launcher = self.launcher(spec.runtime)?.cloned();
        let t0 = Instant::now();
        {
            let limits = match &launcher {
                Some(l) => l.host_limits(&spec.limits),
                None => spec.limits.clone(),
            };
            let (layout, parent, id) = (self.layout, self.cfg.cgroup_parent.clone(), id.clone());
            blocking(move || cgroup::create(layout, &parent, &id, &limits).map_err(cg_err)).await?;
        }
        let mounts = if spec.mounts.is_empty() {
            Vec::new()
        } else {
            let (storage, mounts) = (self.storage.clone(), spec.mounts.clone());
            blocking(move || mounts.iter().map(|m| storage.plan_mount(m)).collect()).await?
        };
        let init = InitSpec {
            id: id.clone(),
            sandbox_dir: paths.dir.clone(),
            image_dir: self.image_dir.clone(),
            cgroup_path,
            seccomp_bpf: self.seccomp_bpf.clone(),
            idmap: spec.idmap.filter(|_| self.userns && launcher.is_none()),
            layers: spec.layers.clone(),
            mounts,
            launcher: launcher.as_ref().map(|l| l.options(spec)),
        };
        if let Some(l) = &launcher {
            // The daemon (and probe, stop, ...) reach every agent at `agent.sock`.
            let (link, target) = (paths.socket.clone(), l.socket());
            blocking(move || {
                // A socket or a link left by an earlier start.
                lifecycle::remove_file_if_exists(&link)?;
                std::os::unix::fs::symlink(target, &link)
                    .map_err(|e| RuntimeError::Setup(format!("linking {}: {e}", link.display())))
            })
            .await?;
        }
        let helper_arg = launcher.as_ref().map_or(HELPER_ARG, |l| l.helper_arg());
        // A launcher whose sandbox takes its network over at start (gVisor's netstack)
        // needs it wired before: its helper asks (`HelperReport::Netns`).
        let wire_first = spec.network.mode == NetworkMode::Nat
            && launcher.as_ref().is_some_and(|l| l.network_before_start());
        let t_cgroup = t0.elapsed();
        let pid = match self
            .start_helper(spec, paths, &init, helper_arg, wire_first)
            .await
        {
            Err(RuntimeError::Setup(e)) => return Err(with_log_tail(e, &paths.log).await),
            r => r?,
        };
        let t_helper = t0.elapsed();
        {
            // So stats and probe find PID 1 without scanning the cgroup.
            let file = lifecycle::agent_pid_file(paths);
            blocking(move || {
                std::fs::write(&file, format!("{pid}\n"))
                    .map_err(|e| RuntimeError::Setup(format!("writing {}: {e}", file.display())))
            })
            .await?;
        }
        // The agent comes up while the network is wired (nothing runs in the sandbox before
        // create returns).
        let network = async {
            match spec.network.mode {
                NetworkMode::Nat if !wire_first => self.attach_network(spec, paths, pid).await,
                _ => Ok(()),
            }
        };
        let agent = async {
            match self.wait_agent(&paths.socket).await {
                Err(RuntimeError::Setup(e)) => Err(with_log_tail(e, &paths.log).await),
                r => r,
            }
        };
        tokio::try_join!(agent, network)?;
        tracing::debug!(
            sandbox = %id,
            pid,
            cgroup_us = t_cgroup.as_micros() as u64,
            helper_us = (t_helper - t_cgroup).as_micros() as u64,
            agent_us = (t0.elapsed() - t_helper).as_micros() as u64,
            "sandbox started"
        );
        Ok(())
    }

    /// Wire the network namespace of a `nat` sandbox whose PID 1 is `pid` (see
    /// `warren_network::link`), put its policy in force, and note its address in its
    /// directory.
    async fn attach_network(
        &self,
        spec: &SandboxSpec,
        paths: &SandboxPaths,
        pid: i32,
    ) -> Result<(), RuntimeError> {
        let net = self
            .network
            .get()
            .ok_or(RuntimeError::Unsupported("network mode nat"))?;
        let addr = spec.network.address.ok_or_else(|| {
            RuntimeError::Setup("a nat sandbox needs an address from the engine".into())
        })?;
        tokio::fs::write(net_addr_file(paths), format!("{addr}\n"))
            .await
            .map_err(|e| RuntimeError::Setup(format!("writing the sandbox's address: {e}")))?;
        net.attach(addr, pid, &spec.network.egress)
            .await
            .map_err(net_err)
    }

    /// Forget a sandbox's network (its chain; the pair dies with its namespace).
    async fn detach_network(&self, id: &str) {
        let Some(net) = self.network.get() else {
            return;
        };
        if let Some(addr) = read_net_addr(&self.paths(id)).await {
            if let Err(e) = net.detach(addr).await {
                tracing::warn!(sandbox = %id, error = %e, "removing its network policy");
            }
        }
    }

    /// Put `policy` in force for a running sandbox (adopting it after a restart).
    async fn set_egress(&self, id: &str, policy: &EgressPolicy) -> Result<(), RuntimeError> {
        let net = self
            .network
            .get()
            .ok_or(RuntimeError::Unsupported("egress policies"))?;
        let addr = read_net_addr(&self.paths(id))
            .await
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if net.policy(addr).is_some() {
            net.set_policy(addr, policy).await.map_err(net_err)
        } else {
            let listing = lock_listing(&self.net_listing).clone();
            net.adopt(addr, policy, &listing).await.map_err(net_err)
        }
    }

    /// Spawn the helper and see it through to its final report, wiring the network first
    /// when it asks (see [`Launcher::network_before_start`]); PID 1's host pid.
    async fn start_helper(
        &self,
        spec: &SandboxSpec,
        paths: &SandboxPaths,
        init: &InitSpec,
        helper_arg: &str,
        wire_first: bool,
    ) -> Result<i32, RuntimeError> {
        let mut helper = self.spawn_helper(init, helper_arg, wire_first).await?;
        let mut report = helper.report().await?;
        if let HelperReport::Netns { netns_pid } = report {
            if !wire_first {
                return Err(RuntimeError::Setup(
                    "sandbox init asked for a network nobody asked for".into(),
                ));
            }
            self.attach_network(spec, paths, netns_pid).await?;
            helper.write(spec::GO.as_bytes()).await?;
            helper.close_stdin().await;
            report = helper.report().await?;
        } else if wire_first {
            return Err(RuntimeError::Setup(
                "sandbox init did not ask for its network".into(),
            ));
        }
        helper.ready(report).await
    }

    /// Exec the helper and hand it the spec; its reports are read from the returned
    /// handle. `keep_stdin`: the helper will ask for its network first
    /// ([`HelperReport::Netns`]), so its stdin stays open for the answer.
    async fn spawn_helper(
        &self,
        init: &InitSpec,
        helper_arg: &str,
        keep_stdin: bool,
    ) -> Result<Helper, RuntimeError> {
        let json = serde_json::to_vec(init)
            .map_err(|e| RuntimeError::Setup(format!("encoding init spec: {e}")))?;
        // The helper's stderr, which the sandbox's PID 1 keeps as its stdout and stderr: a
        // pipe drained into `agent.log`, so no host file is ever open in a sandbox.
        let (log_rd, log_wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| RuntimeError::Setup(format!("agent log pipe: {e}")))?;
        let mut cmd = tokio::process::Command::new(&self.cfg.helper_exe);
        cmd.arg(helper_arg)
            .env_clear()
            .env("PATH", HELPER_PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_wr))
            .kill_on_drop(true);
        for var in ["RUST_LOG", "RUST_BACKTRACE"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            RuntimeError::Setup(format!(
                "spawning {} {helper_arg}: {e}",
                self.cfg.helper_exe.display()
            ))
        })?;
        // Only the helper (and what it forks) may hold the write end.
        drop(cmd);
        drain_agent_log(log_rd, init.paths().log, init.id.clone());
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| RuntimeError::Setup("helper stdin missing".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| RuntimeError::Setup("helper stdout missing".into()))?;

        // Into the sandbox cgroup before it gets its spec (it waits for it on stdin).
        let pid = child
            .id()
            .ok_or_else(|| RuntimeError::Setup("helper exited at once".into()))?;
        {
            let (layout, path) = (self.layout, init.cgroup_path.clone());
            blocking(move || {
                cgroup::add_process(layout, &path, nix::unistd::Pid::from_raw(pid as i32))
                    .map_err(cg_err)
            })
            .await?;
        }
        let mut helper = Helper {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        };
        helper.write(&json).await?;
        if !keep_stdin {
            helper.close_stdin().await;
        }
        Ok(helper)
    }

    /// Ping the agent until it answers (the socket is listening before the helper reports,
    /// so this mostly waits for the agent to start serving).
    async fn wait_agent(&self, socket: &Path) -> Result<(), RuntimeError> {
        let start = Instant::now();
        let mut last_err;
        // A native agent answers the first ping; gVisor's comes up some 20 to 40 ms after
        // its helper reports: poll often at first, then every 20 ms.
        let mut pause = Duration::from_millis(1);
        loop {
            let attempt = async {
                let stream = connect(socket).await.map_err(ProtoError::Io)?;
                agent::ping(stream).await
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok((protocol, version))) if protocol == PROTOCOL_VERSION => {
                    tracing::debug!(agent_version = %version, "agent answered");
                    return Ok(());
                }
                Ok(Ok((protocol, version))) => {
                    return Err(RuntimeError::Setup(format!(
                        "agent {version} speaks protocol {protocol}, expected {PROTOCOL_VERSION}"
                    )))
                }
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "ping timed out".into(),
            }
            if start.elapsed() >= PING_TIMEOUT {
                return Err(RuntimeError::Setup(format!(
                    "agent did not answer within {PING_TIMEOUT:?}: {last_err}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Kill everything in the sandbox's cgroup, remove the cgroup and the sandbox's files.
    /// Unknown ids are fine.
    async fn teardown(&self, id: &str) -> Result<(), RuntimeError> {
        if spec::validate_id(id).is_err() {
            // Nothing with this name can exist (and it must never reach a path).
            return Ok(());
        }
        let start = Instant::now();
        self.end_processes(id).await?;
        let t_cgroup = start.elapsed();
        let (dir, storage) = (self.paths(id).dir, self.storage.clone());
        // Through the storage: btrfs subvolumes are deleted as such.
        blocking(move || storage.remove_sandbox_dir(&dir)).await?;
        tracing::debug!(
            sandbox = %id,
            kill_and_cgroup_us = t_cgroup.as_micros() as u64,
            files_us = (start.elapsed() - t_cgroup).as_micros() as u64,
            "sandbox torn down"
        );
        Ok(())
    }

    /// Kill everything in the sandbox's cgroup (frozen or not) and remove the cgroup from
    /// every hierarchy; the files stay. Shared by teardown and stop. `id` must be valid.
    async fn end_processes(&self, id: &str) -> Result<(), RuntimeError> {
        let layout = self.layout;
        let cg = self.cgroup_path(id);
        let start = Instant::now();
        let mut last_kill: Option<Instant> = None;
        let mut backoff = Backoff::new();
        loop {
            // (Re)kill at most every 500ms; in between just watch the cgroup drain.
            let kill_now = last_kill.is_none_or(|t| t.elapsed() >= Duration::from_millis(500));
            let (idc, cgc) = (id.to_string(), cg.clone());
            let left = blocking(move || {
                if kill_now {
                    cgroup::kill_all(layout, &idc, &cgc).map_err(cg_err)?;
                }
                cgroup::pids(layout, &cgc).map_err(cg_err)
            })
            .await?;
            if kill_now {
                last_kill = Some(Instant::now());
            }
            if left.is_empty() {
                break;
            }
            if start.elapsed() >= KILL_TIMEOUT {
                return Err(RuntimeError::Cgroup(format!(
                    "sandbox {id}: {} processes still alive {KILL_TIMEOUT:?} after SIGKILL",
                    left.len()
                )));
            }
            // Killed processes usually leave within a millisecond or two: poll fast first.
            tokio::time::sleep(backoff.next()).await;
        }
        self.detach_network(id).await;
        // A just-emptied cgroup can briefly refuse rmdir (EBUSY).
        let mut backoff = Backoff::new();
        loop {
            let cgc = cg.clone();
            match blocking(move || cgroup::remove_dirs(layout, &cgc).map_err(cg_err)).await {
                Ok(()) => break,
                Err(e) if start.elapsed() < KILL_TIMEOUT => {
                    tracing::debug!(sandbox = %id, error = %e, "retrying cgroup removal");
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn reconcile(self: Arc<Self>, keep: Vec<String>) -> Result<Vec<String>, RuntimeError> {
        let (layout, parent, sandboxes, data_dir) = (
            self.layout,
            self.cfg.cgroup_parent.clone(),
            self.sandboxes_dir(),
            self.cfg.data_dir.clone(),
        );
        let keep_none = keep.is_empty();
        {
            // Kept sandboxes stay, but what a crash left of a rollback of theirs goes.
            let (storage, sandboxes, keep) =
                (self.storage.clone(), sandboxes.clone(), keep.clone());
            blocking(move || {
                for id in keep.iter().filter(|id| spec::validate_id(id).is_ok()) {
                    let dir = sandboxes.join(id);
                    if dir.is_dir() {
                        if let Err(e) = storage.recover(&dir) {
                            tracing::warn!(sandbox = %id, error = %e, "recovering its files");
                        }
                    }
                }
                Ok(())
            })
            .await?;
        }
        let ids = blocking(move || {
            let mut ids = cgroup::list_children(layout, &parent).map_err(cg_err)?;
            match std::fs::read_dir(&sandboxes) {
                Ok(entries) => {
                    for e in entries.flatten() {
                        if let Some(name) = e.file_name().to_str() {
                            ids.push(name.to_string());
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(RuntimeError::Io(e)),
            }
            ids.sort();
            ids.dedup();
            ids.retain(|id| !keep.contains(id));
            ids.retain(|id| {
                let ok = spec::validate_id(id).is_ok();
                if !ok {
                    tracing::warn!(name = %id, "ignoring a sandbox entry that is not a valid id");
                }
                ok
            });
            Ok(ids)
        })
        .await?;
        let mut first_err = None;
        let mut cleaned = Vec::new();
        for id in ids {
            match self.teardown(&id).await {
                Ok(()) => cleaned.push(id),
                Err(e) => {
                    tracing::error!(sandbox = %id, error = %e, "cleanup failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        if first_err.is_none() && keep_none {
            // No sandbox runs now, so replaced images are unused.
            if let Err(e) =
                blocking(move || image::remove_stale_images(&data_dir).map_err(RuntimeError::Io))
                    .await
            {
                tracing::warn!(error = %e, "removing stale images");
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(cleaned),
        }
    }
}

/// Copy what a sandbox's helper and agent write on the log pipe into `log` (created 0600),
/// keeping at most [`AGENT_LOG_MAX`] bytes in it and as much in `log.1`. Ends at EOF: when
/// the sandbox is gone (or, after a daemon restart, never: an adopted sandbox's agent writes
/// into a pipe nobody reads, and its log lines are lost).
fn drain_agent_log(rd: std::os::fd::OwnedFd, log: PathBuf, id: String) {
    use tokio::io::AsyncReadExt;
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(rd) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(sandbox = %id, error = %e, "cannot read the agent's log pipe");
            return;
        }
    };
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut file: Option<(tokio::fs::File, u64)> = None;
        loop {
            let n = match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if file.as_ref().is_none_or(|(_, len)| *len >= AGENT_LOG_MAX) {
                if file.take().is_some() {
                    let _ = tokio::fs::rename(&log, log.with_extension("log.1")).await;
                }
                let opened = tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&log)
                    .await;
                match opened {
                    Ok(f) => {
                        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
                        file = Some((f, len));
                    }
                    // The sandbox's dir is gone: it was deleted.
                    Err(_) => continue,
                }
            }
            if let Some((f, len)) = file.as_mut() {
                if f.write_all(&buf[..n]).await.is_ok() {
                    *len += n as u64;
                }
            }
        }
    });
}

/// Connect to an agent socket; paths longer than `sun_path` go through `/proc/self/fd`.
/// A running helper: its stdin (the daemon's messages) and its report lines.
struct Helper {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl Helper {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), RuntimeError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| RuntimeError::Setup("helper stdin closed".into()))?;
        // A helper that never reads (stuck before it takes its spec) must not hold the
        // create: the same deadline as for its reports.
        match tokio::time::timeout(HELPER_TIMEOUT, stdin.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(RuntimeError::Setup(format!("talking to the helper: {e}"))),
            Err(_) => Err(RuntimeError::Setup(format!(
                "sandbox init did not read its input within {HELPER_TIMEOUT:?}"
            ))),
        }
    }

    /// EOF on the helper's stdin: all it gets (or, before [`spec::GO`], "give up").
    async fn close_stdin(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.shutdown().await;
        }
    }

    /// The helper's next report line.
    async fn report(&mut self) -> Result<HelperReport, RuntimeError> {
        let mut line = String::new();
        let read = tokio::time::timeout(HELPER_TIMEOUT, self.stdout.read_line(&mut line)).await;
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RuntimeError::Setup(format!("talking to the helper: {e}"))),
            Err(_) => {
                return Err(RuntimeError::Setup(format!(
                    "sandbox init did not report within {HELPER_TIMEOUT:?}"
                )))
            }
        }
        match HelperReport::parse(&line) {
            Ok(HelperReport::Failed { error }) => Err(RuntimeError::Setup(error)),
            Ok(r) => Ok(r),
            Err(_) => Err(RuntimeError::Setup(format!(
                "sandbox init failed (report {:?}, helper {})",
                line.trim(),
                self.exit_status().await
            ))),
        }
    }

    /// How the helper ended (it exits right after its final report).
    async fn exit_status(&mut self) -> String {
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(st)) => st.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "did not exit".into(),
        }
    }

    /// The sandbox's PID 1 from the final report, once the helper has exited cleanly.
    async fn ready(mut self, report: HelperReport) -> Result<i32, RuntimeError> {
        self.close_stdin().await;
        let HelperReport::Ready { pid } = report else {
            return Err(RuntimeError::Setup(format!(
                "sandbox init reported {report:?} where it should be ready"
            )));
        };
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(st)) if st.success() => Ok(pid),
            _ => Err(RuntimeError::Setup(format!(
                "sandbox init reported pid {pid} but then {}",
                self.exit_status().await
            ))),
        }
    }
}

async fn connect(socket: &Path) -> io::Result<UnixStream> {
    if socket.as_os_str().len() <= SUN_PATH_MAX {
        return UnixStream::connect(socket).await;
    }
    let dir = socket
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "socket path has no parent"))?
        .to_path_buf();
    let dir = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
    })
    .await
    .map_err(io::Error::other)??;
    let via = format!("/proc/self/fd/{}/{SOCKET_NAME}", dir.as_raw_fd());
    let r = UnixStream::connect(&via).await;
    drop(dir);
    r
}

/// Run a task to completion even if the caller stops waiting (so a cancelled create still
/// cleans up after itself, and a cancelled destroy still finishes).
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, RuntimeError>> + Send + 'static,
) -> Result<T, RuntimeError> {
    tokio::spawn(fut)
        .await
        .map_err(|e| RuntimeError::Setup(format!("runtime task failed: {e}")))?
}

#[async_trait]
impl Runtime for NativeRuntime {
    fn info(&self) -> RuntimeInfo {
        let info = RuntimeInfo {
            name: "native".into(),
            cgroup: self.inner.layout.as_str().into(),
            namespaces: ["mount", "pid", "uts", "ipc", "network", "cgroup"]
                .into_iter()
                .chain(self.inner.userns.then_some("user"))
                .map(String::from)
                .collect(),
            user_namespace: self.inner.userns,
            seccomp: true,
            capabilities: caps::default_names(),
            images: vec![image::HOST_IMAGE.into()],
            pause: true,
            stop: true,
            snapshots: true,
            stats: true,
            storage: self.inner.storage.backend().as_str().into(),
            reflink: self.inner.storage.reflink(),
            storage_available: self.inner.storage.available(),
            disk_quota: self.inner.storage.disk_quota(),
            network: warren_runtime::NetworkCaps {
                // The agent carries broker connections out of every sandbox, whatever its
                // network (`Request::Accept`).
                broker: true,
                ..self
                    .inner
                    .network
                    .get()
                    .map(|n| n.caps())
                    .unwrap_or_else(warren_runtime::NetworkCaps::isolated_only)
            },
            volumes: true,
            volume_quota: self.inner.storage.disk_quota(),
            kinds: Vec::new(),
        };
        let network = &info.network;
        let native = KindInfo {
            kind: RuntimeKind::Native,
            unavailable: None,
            kernel: "host".into(),
            version: None,
            platform: None,
            pause: info.pause,
            stop: info.stop,
            snapshots: info.snapshots,
            memory_snapshots: false,
            network_modes: network.modes.clone(),
            egress: network.egress,
            user_namespace: info.user_namespace,
            seccomp: info.seccomp,
            disk_quota: info.disk_quota,
            volumes: info.volumes,
            file_metadata: true,
        };
        let mut kinds: Vec<KindInfo> = self
            .inner
            .launchers
            .iter()
            .map(|l| l.info(&native))
            .collect();
        kinds.insert(0, native);
        RuntimeInfo { kinds, ..info }
    }

    async fn writable_layer(
        &self,
        id: &SandboxId,
    ) -> Result<warren_runtime::WritableLayer, RuntimeError> {
        let (layout, cg, paths, id) = (
            self.inner.layout,
            self.inner.cgroup_path(id.as_str()),
            self.inner.paths(id.as_str()),
            id.to_string(),
        );
        blocking(move || {
            if std::fs::symlink_metadata(&paths.upper).is_err() {
                return Err(RuntimeError::NotFound(id));
            }
            if !cgroup::pids(layout, &cg).map_err(cg_err)?.is_empty() {
                return Err(RuntimeError::Setup(format!(
                    "sandbox {id} is not stopped: its writable layer is still changing"
                )));
            }
            let id_shift = userns::range_of(&paths.upper).map_err(|e| {
                RuntimeError::Setup(format!("reading {}: {e}", paths.upper.display()))
            })?;
            Ok(warren_runtime::WritableLayer {
                path: paths.upper.clone(),
                id_shift,
            })
        })
        .await
    }

    async fn create_volume(&self, name: &str, size_bytes: Option<u64>) -> Result<(), RuntimeError> {
        let (storage, name) = (self.inner.storage.clone(), name.to_string());
        blocking(move || storage.create_volume(&name, size_bytes)).await
    }

    async fn delete_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let (storage, name) = (self.inner.storage.clone(), name.to_string());
        blocking(move || storage.delete_volume(&name)).await
    }

    async fn volume_usage(&self, name: &str) -> Result<u64, RuntimeError> {
        let (storage, name) = (self.inner.storage.clone(), name.to_string());
        blocking(move || storage.volume_usage(&name)).await
    }

    async fn reconcile_volumes(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let (storage, keep) = (self.inner.storage.clone(), keep.to_vec());
        blocking(move || storage.reconcile_volumes(&keep)).await
    }

    async fn set_egress(&self, id: &SandboxId, policy: &EgressPolicy) -> Result<(), RuntimeError> {
        let (inner, id, policy) = (self.inner.clone(), id.to_string(), policy.clone());
        detached(async move { inner.set_egress(&id, &policy).await }).await
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        detached(self.inner.clone().create(spec.clone())).await
    }

    async fn agent(
        &self,
        id: &SandboxId,
    ) -> Result<Box<dyn warren_runtime::PortStream>, RuntimeError> {
        let paths = self.inner.paths(id);
        if !tokio::fs::try_exists(&paths.dir).await.unwrap_or(false) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        match connect(&paths.socket).await {
            Ok(s) => Ok(Box::new(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(RuntimeError::NotFound(id.to_string()))
            }
            Err(e) => Err(RuntimeError::Agent(ProtoError::Io(e))),
        }
    }

    // Pause, stop, start, stats, probe: see `lifecycle.rs`.
    async fn pause(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.pause_impl(id).await
    }

    async fn resume(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.resume_impl(id).await
    }

    async fn stop(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        self.stop_impl(id).await
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.start_impl(spec).await
    }

    async fn stats(&self, id: &SandboxId) -> Result<warren_runtime::Stats, RuntimeError> {
        self.stats_impl(id).await
    }

    async fn cpu_usage_us(&self, id: &SandboxId) -> Result<u64, RuntimeError> {
        self.cpu_usage_us_impl(id).await
    }

    async fn probe(&self, id: &SandboxId) -> Result<warren_runtime::Probe, RuntimeError> {
        self.probe_impl(id).await
    }

    async fn has_processes(&self, id: &SandboxId) -> bool {
        let (layout, cg) = (self.inner.layout, self.inner.cgroup_path(id));
        // Unknown (an error) counts as yes: only a sure "none" leads to a probe.
        blocking(move || Ok(cgroup::pids(layout, &cg).map_or(true, |p| !p.is_empty())))
            .await
            .unwrap_or(true)
    }

    async fn ended_why(&self, id: &SandboxId) -> Option<String> {
        let (layout, cg) = (self.inner.layout, self.inner.cgroup_path(id));
        let kills = blocking(move || Ok(cgroup::oom_kills(layout, &cg).ok().flatten()))
            .await
            .ok()
            .flatten()?;
        (kills > 0).then(|| {
            format!("the kernel's OOM killer killed {kills} of its processes at its memory limit")
        })
    }

    async fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let inner = self.inner.clone();
        let id = id.to_string();
        detached(async move { inner.teardown(&id).await }).await
    }

    async fn reconcile(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        detached(self.inner.clone().reconcile(keep.to_vec())).await
    }

    // Snapshots: see `storage.rs`.
    async fn snapshot(
        &self,
        id: &SandboxId,
        snapshot_id: &str,
    ) -> Result<warren_runtime::SnapshotMeta, RuntimeError> {
        // Detached: a caller that stops waiting must not leave the sandbox frozen.
        detached(
            self.inner
                .clone()
                .snapshot_impl(id.to_string(), snapshot_id.to_string()),
        )
        .await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        self.delete_snapshot_impl(snapshot_id).await
    }

    async fn rollback(&self, id: &SandboxId, snapshot_id: &str) -> Result<(), RuntimeError> {
        detached(
            self.inner
                .clone()
                .rollback_impl(id.to_string(), snapshot_id.to_string()),
        )
        .await
    }

    async fn reconcile_snapshots(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        self.reconcile_snapshots_impl(keep).await
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        let network = match self.inner.network.get() {
            Some(net) => net.shutdown(true).await.map_err(net_err),
            None => Ok(()),
        };
        let (layout, parent) = (self.inner.layout, self.inner.cfg.cgroup_parent.clone());
        let cgroups =
            blocking(move || cgroup::remove_parent(layout, &parent).map_err(cg_err)).await;
        // Then the btrfs loop image, if this runtime mounted one.
        let storage = self.inner.storage.clone();
        let unmounted = blocking(move || storage.shutdown()).await;
        network.and(cgroups).and(unmounted)
    }
}

/// Poll intervals that start at 1 ms and double up to 32 ms: cheap for the common case
/// (done almost at once), gentle for the slow one.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(1))
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (d * 2).min(Duration::from_millis(32));
        d
    }
}

/// Tests that need root fail without it, saying so: the suite runs as root (as CI does),
/// and a skipped test would pass silently.
#[cfg(test)]
pub(crate) fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({what}): run the tests as root, as CI does"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new();
        let seen: Vec<u64> = (0..8).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn cgroup_parent_validation() {
        for ok in ["warren", "/warren/", "a/b.c_d-e"] {
            check_cgroup_parent(ok).unwrap();
        }
        for bad in ["", "/", "a/../b", "a//b", "a b", "..", "x,y"] {
            assert!(check_cgroup_parent(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn new_rejects_bad_config() {
        let cfg = |data: &str, parent: &str| NativeConfig {
            data_dir: data.into(),
            helper_exe: "/bin/sh".into(),
            cgroup_parent: parent.into(),
            storage: StorageConfig::Dir,
            user_namespaces: UsernsSetting::Off,
        };
        assert!(NativeRuntime::new(cfg("relative", "warren")).is_err());
        assert!(NativeRuntime::new(cfg("/a,b", "warren")).is_err());
        assert!(NativeRuntime::new(cfg("/tmp/x", "../up")).is_err());
    }
}
