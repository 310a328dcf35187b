//! The runtime trait: what every Warren sandbox backend implements.
//!
//! The engine owns states and bookkeeping; a [`Runtime`] owns the kernel details. Backends
//! are sibling crates (`warren-runtime-native` today); this crate links no kernel crate. Every
//! backend speaks the same agent protocol ([`warren_proto`]) to the agent that runs as PID 1
//! inside the sandbox, so exec, processes and files work the same on all of them.

use std::pin::Pin;

pub mod agent;
pub mod id;
pub mod network;

pub use agent::{AgentClient, PendingAccept};
pub use id::{InvalidId, SandboxId};
pub use network::{
    EgressAction, EgressPolicy, EgressRule, Ipv4Cidr, NetworkCaps, NetworkMode, NetworkSpec, Target,
};

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use warren_proto::host::FileChange;

/// Size and free space of a file system ([`fs_space`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub total_bytes: u64,
    /// Free for unprivileged users (`f_bavail`).
    pub avail_bytes: u64,
    /// 0 when the file system has no fixed inode count (btrfs).
    pub total_inodes: u64,
    pub avail_inodes: u64,
    /// Tells file systems apart (`f_fsid`).
    pub fsid: u64,
}

/// `statvfs(2)` of the file system holding `path`.
pub fn fs_space(path: &std::path::Path) -> std::io::Result<FsSpace> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    let frag = st.fragment_size().max(1) as u64;
    Ok(FsSpace {
        total_bytes: (st.blocks() as u64).saturating_mul(frag),
        avail_bytes: (st.blocks_available() as u64).saturating_mul(frag),
        total_inodes: st.files() as u64,
        avail_inodes: st.files_available() as u64,
        fsid: st.filesystem_id() as u64,
    })
}
pub use warren_proto::{
    is_write_temp, normalize_metadata, AgentCode, ExecSpec, FileEventKind, FileKind, FileOp,
    FileOpResult, FileStat, ProcessInfo, ProcessOp, ProcessSpec, ProcessState, ProtoError, PtySize,
    ReplaceSpec, ReplacedFile, SearchMatch, SearchSpec, MAX_FRAME_LEN, MAX_METADATA_KEYS,
    MAX_METADATA_KEY_LEN, MAX_METADATA_VALUE_LEN, METADATA_XATTR_PREFIX,
};

/// Resource limits applied to a sandbox's own cgroup.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// CPU quota in cores (fractional).
    pub cpus: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Bytes the sandbox's writable layer may hold (with what its snapshots keep of it);
    /// only on backends with `disk_quota`. Applied when the files are made (create), kept
    /// by stop/start and rollback.
    pub disk_bytes: Option<u64>,
}

/// The host ids a sandbox's user namespace maps its ids `0..size` onto: uid and gid
/// `host_id + n` on the host are uid and gid `n` inside. Allocated by the engine, one range
/// per sandbox, so no two live sandboxes (and no host account) share a host id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct IdMap {
    /// First host uid (and gid) of the range; a multiple of [`IdMap::SIZE`].
    pub host_id: u32,
    /// Ids in the range (always [`IdMap::SIZE`] today).
    pub size: u32,
}

impl IdMap {
    /// Ids per sandbox: 0..65535 inside, like a full Linux system (`nobody` is 65534).
    pub const SIZE: u32 = 65536;

    /// The range starting at `host_id` (which must be a multiple of [`IdMap::SIZE`]).
    pub fn new(host_id: u32) -> IdMap {
        IdMap {
            host_id,
            size: IdMap::SIZE,
        }
    }

    /// The host id of id `inside`, if it is in the range.
    pub fn to_host(&self, inside: u32) -> Option<u32> {
        (inside < self.size).then(|| self.host_id + inside)
    }
}

/// Everything a runtime needs to create a sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    /// Unique id; also the hostname inside the sandbox.
    pub id: SandboxId,
    /// Image name (`host` is built in).
    pub image: String,
    /// The layers of an OCI image (extracted, overlay-ready directories), top-most first;
    /// empty for the built-in `host` image.
    pub layers: Vec<std::path::PathBuf>,
    pub limits: Limits,
    /// Restore the sandbox's files from this snapshot (an id [`Runtime::snapshot`] made)
    /// instead of starting from the image. Ignored by [`Runtime::start`].
    pub snapshot: Option<String>,
    /// The sandbox's user namespace mapping, or `None` for none (its root is host root).
    /// Backends that report `user_namespace: false` get `None`.
    pub idmap: Option<IdMap>,
    /// Its network: mode, address and egress policy.
    pub network: NetworkSpec,
    /// Directories bind-mounted into it (volumes, allowed host directories), in order:
    /// a mount inside another's path comes after it.
    pub mounts: Vec<MountSpec>,
    /// Which kind of sandbox: the host kernel's namespaces, or gVisor's kernel. A backend
    /// serves the kinds its [`RuntimeInfo::kinds`] lists as available.
    pub runtime: RuntimeKind,
}

/// What runs a sandbox's processes (`"runtime"` in the API).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// Linux namespaces, cgroups and seccomp on the host kernel.
    #[default]
    Native,
    /// gVisor (`runsc`): a user-space kernel between the sandbox and the host.
    Gvisor,
}

impl RuntimeKind {
    pub const ALL: [RuntimeKind; 2] = [RuntimeKind::Native, RuntimeKind::Gvisor];

    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Native => "native",
            RuntimeKind::Gvisor => "gvisor",
        }
    }

    pub fn parse(s: &str) -> Option<RuntimeKind> {
        RuntimeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one kind of sandbox ([`RuntimeKind`]) supports on this host
/// ([`RuntimeInfo::kinds`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: RuntimeKind,
    /// `None` when sandboxes of this kind can be made; otherwise what is missing.
    pub unavailable: Option<String>,
    /// The kernel a sandbox's processes talk to (`host`, `gvisor`).
    pub kernel: String,
    /// The runtime's version (`runsc`'s), when it has one of its own.
    pub version: Option<String>,
    /// How the runtime intercepts system calls (gVisor's `ptrace`, `systrap`, `kvm`).
    pub platform: Option<String>,
    pub pause: bool,
    pub stop: bool,
    /// Snapshots, rollback, restore and fork of the files.
    pub snapshots: bool,
    /// Checkpoint and restore of the processes' memory.
    pub memory_snapshots: bool,
    pub network_modes: Vec<NetworkMode>,
    pub egress: bool,
    /// Sandbox root is an unprivileged host uid (the native runtime's user namespaces; a
    /// gVisor sandbox's kernel runs as an unprivileged host user whatever this says).
    pub user_namespace: bool,
    /// A seccomp filter stands between the sandbox's processes and the kernel they see.
    pub seccomp: bool,
    pub disk_quota: bool,
    pub volumes: bool,
    /// Extended attributes (file metadata) on the sandbox's files.
    pub file_metadata: bool,
}

impl KindInfo {
    pub fn available(&self) -> bool {
        self.unavailable.is_none()
    }
}

/// What [`Runtime::writable_layer`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritableLayer {
    pub path: std::path::PathBuf,
    /// Host id of root inside (0 without a user namespace).
    pub id_shift: u32,
}

/// A directory bind-mounted into a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountSpec {
    pub source: MountSource,
    /// Absolute, normalised path inside the sandbox (not `/`, not under `/proc`, `/sys`,
    /// `/dev`); made (as root inside) where missing, never through a symlink.
    pub dest: String,
    pub read_only: bool,
}

/// What a [`MountSpec`] mounts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MountSource {
    /// A volume made by [`Runtime::create_volume`]; `sub_path` is a relative directory in
    /// it, made if missing, resolved inside the volume (a symlink a sandbox left there
    /// cannot lead out).
    Volume {
        name: String,
        sub_path: Option<String>,
    },
    /// The host directory `root/rel`, resolved beneath `root` (no `..` or symlink leads
    /// out of it). It must exist.
    Host {
        root: std::path::PathBuf,
        rel: std::path::PathBuf,
    },
}

/// What a runtime finds of a sandbox on this host ([`Runtime::probe`], used to reconcile
/// after a daemon restart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Its agent answers and its processes are not frozen.
    Running,
    /// Its processes are frozen (cgroup freezer).
    Paused,
    /// No process runs but its files are there ([`Runtime::start`] brings it back).
    Stopped,
    /// Processes run but the agent does not answer, or the files are half there: only
    /// [`Runtime::destroy`] helps.
    Broken,
    /// Nothing of it exists.
    Gone,
}

/// Usage figures of one sandbox ([`Runtime::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu_usage_us: u64,
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub pids: u64,
    /// Bytes used by the writable layer.
    pub disk_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// What [`Runtime::snapshot`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// Bytes of file data in the snapshot.
    pub size_bytes: u64,
    /// Storage backend that holds it (`dir`, `btrfs`).
    pub backend: String,
}

/// One item of a running command's output.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecOutput {
    Stdout(Bytes),
    Stderr(Bytes),
    /// Always the last item.
    Exit(ExitInfo),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// 128+signal for a signal death.
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub duration_us: u64,
}

/// A running command's output. Dropping it before the exit kills the command's process group.
pub type ExecStream = Pin<Box<dyn Stream<Item = Result<ExecOutput, RuntimeError>> + Send>>;

/// File content, streamed in chunks (never held whole in memory).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, RuntimeError>> + Send>>;

/// Changes reported by [`AgentClient::watch_files`]; dropping it ends the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<FileChange, RuntimeError>> + Send>>;

/// Answer of [`AgentClient::search_files`].
#[derive(Debug, Clone, PartialEq)]
pub struct SearchOutcome {
    pub matches: Vec<SearchMatch>,
    pub files_scanned: u64,
    pub truncated: bool,
}

/// Answer of [`AgentClient::replace_files`].
#[derive(Debug, Clone, PartialEq)]
pub struct ReplaceOutcome {
    pub files: Vec<ReplacedFile>,
    pub total_replacements: u64,
    pub truncated: bool,
}

/// One item of an attachment to a durable process's output (see
/// `warren_proto::Request::Attach`): the protocol's own item, as the agent sends it.
pub use warren_proto::host::AttachItem as AttachEvent;

/// A process's output, replayed and followed. Dropping it detaches (the process goes on).
pub type AttachStream = Pin<Box<dyn Stream<Item = Result<AttachEvent, RuntimeError>> + Send>>;

/// A byte stream to a sandbox: a connection to its agent, or to a port inside it.
pub trait PortStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PortStream for T {}

/// Owner and mode of files the agent creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    pub mode: Option<u32>,
    pub parents: bool,
    pub uid: u32,
    pub gid: u32,
}

/// What a backend is and supports; the engine folds this into `GET /v1/capabilities`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeInfo {
    pub name: String,
    /// `v1`, `hybrid` or `v2`.
    pub cgroup: String,
    pub namespaces: Vec<String>,
    pub user_namespace: bool,
    pub seccomp: bool,
    /// Capabilities a sandbox's root keeps (e.g. `CAP_CHOWN`).
    pub capabilities: Vec<String>,
    pub images: Vec<String>,
    /// Implements [`Runtime::pause`] and [`Runtime::resume`].
    pub pause: bool,
    /// Implements [`Runtime::stop`] and [`Runtime::start`].
    pub stop: bool,
    /// Implements [`Runtime::snapshot`], [`Runtime::rollback`] and restores
    /// ([`SandboxSpec::snapshot`]).
    pub snapshots: bool,
    /// Implements [`Runtime::stats`] and [`Runtime::cpu_usage_us`].
    pub stats: bool,
    /// Storage backend in use (`dir`, `btrfs`, or e.g. `memory` for a fake).
    pub storage: String,
    /// Whether copies share blocks (reflinks) on the storage's file system.
    pub reflink: bool,
    /// Storage backends this runtime can be configured with.
    pub storage_available: Vec<String>,
    /// Whether [`Limits::disk_bytes`] is enforced (writes past it fail with `EDQUOT`).
    pub disk_quota: bool,
    /// Network modes, egress policy and broker support, and the address range.
    pub network: NetworkCaps,
    /// Implements the volume calls ([`Runtime::create_volume`], ...) and
    /// [`SandboxSpec::mounts`].
    pub volumes: bool,
    /// Whether a volume's size limit is enforced.
    pub volume_quota: bool,
    /// Every kind of sandbox this backend knows, available or not (the fields above
    /// describe the native kind; a kind's own entry says what differs for it).
    pub kinds: Vec<KindInfo>,
}

impl RuntimeInfo {
    /// The entry of `kind`, if this backend knows it.
    pub fn kind(&self, kind: RuntimeKind) -> Option<&KindInfo> {
        self.kinds.iter().find(|k| k.kind == kind)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("sandbox {0} not found in the runtime")]
    NotFound(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// The command could not be started (`NotFound`, `BadCwd`, `SpawnFailed`).
    #[error("{message}")]
    Spawn { code: AgentCode, message: String },
    /// A file operation failed inside the sandbox (`NotFound`, `NotADirectory`,
    /// `IsADirectory`, `NotEmpty`, `Exists`, `PermissionDenied`, `InvalidPath`,
    /// `QuotaExceeded`, `NoSpace`, `Io`, `InvalidRequest`).
    #[error("{message}")]
    File { code: AgentCode, message: String },
    /// A port inside the sandbox could not be reached (`ConnectionRefused`).
    #[error("{message}")]
    Port { code: AgentCode, message: String },
    /// A durable-process request was refused (`ProcessNotFound`, `NotAPty`,
    /// `StdinClosed`, `TagInUse`, `InvalidSignal`).
    #[error("{message}")]
    Process { code: AgentCode, message: String },
    /// The backend does not support this feature (reported in its capabilities).
    #[error("this runtime does not support {0}")]
    Unsupported(&'static str),
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    #[error("cgroup: {0}")]
    Cgroup(String),
    #[error("agent: {0}")]
    Agent(#[from] warren_proto::ProtoError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// A sandbox backend.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn info(&self) -> RuntimeInfo;

    /// Make the sandbox and return once its agent answers. On error nothing is left behind.
    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError>;

    /// A new connection to the sandbox's agent (one request each; [`AgentClient`] speaks
    /// the protocol over it). An unknown sandbox, or one whose agent is not running, is
    /// [`RuntimeError::NotFound`].
    async fn agent(&self, id: &SandboxId) -> Result<Box<dyn PortStream>, RuntimeError>;

    /// Freeze every process of the sandbox (agent included) and return once all are
    /// frozen. Pausing a paused sandbox is `Ok`.
    async fn pause(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported("pause"))
    }

    /// Thaw a paused sandbox. Resuming a running one is `Ok`.
    async fn resume(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported("pause"))
    }

    /// End every process (the agent too) and keep the files. Works on a paused sandbox;
    /// stopping a stopped one is `Ok`.
    async fn stop(&self, id: &SandboxId) -> Result<(), RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported("stop"))
    }

    /// Bring a stopped sandbox's agent back on the same files, with `spec.limits`, and
    /// return once it answers. On error the sandbox is stopped again (files kept).
    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let _ = spec;
        Err(RuntimeError::Unsupported("stop"))
    }

    /// Replace a running (or paused, or stopped) sandbox's egress policy: new connections
    /// follow `policy` at once, established ones it denies are cut. The sandbox's processes
    /// keep running.
    async fn set_egress(&self, id: &SandboxId, policy: &EgressPolicy) -> Result<(), RuntimeError> {
        let _ = (id, policy);
        Err(RuntimeError::Unsupported("egress policies"))
    }

    /// Usage figures (cgroup counters, the writable layer's size, network bytes).
    async fn stats(&self, id: &SandboxId) -> Result<Stats, RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported("stats"))
    }

    /// CPU time used so far, cheaply (the idle detector calls it every few seconds).
    async fn cpu_usage_us(&self, id: &SandboxId) -> Result<u64, RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported("stats"))
    }

    /// Whether a running sandbox still has processes, cheaply (no agent call; `true` when
    /// unknown). The engine asks about every running sandbox every few seconds and probes
    /// those that have none: a sandbox whose processes all ended on their own (its kernel
    /// OOM-killed its PID 1 or, on gVisor, the sentry) is marked failed, not left "running".
    async fn has_processes(&self, id: &SandboxId) -> bool {
        let _ = id;
        true
    }

    /// Why a sandbox's processes ended without a stop or delete, when the runtime can tell
    /// (e.g. the kernel's OOM killer at its memory limit).
    async fn ended_why(&self, id: &SandboxId) -> Option<String> {
        let _ = id;
        None
    }

    /// What is left of a sandbox on this host (after a daemon restart).
    async fn probe(&self, id: &SandboxId) -> Result<Probe, RuntimeError> {
        let _ = id;
        Ok(Probe::Gone)
    }

    /// Copy the sandbox's files to a new snapshot `snapshot_id` (`[a-z0-9-]`, ≤ 63 bytes),
    /// consistently: a running sandbox's processes are frozen while it is taken and thawed
    /// after; a paused one stays paused; a stopped one has nothing running. The snapshot is
    /// complete when this returns `Ok` and absent when it returns `Err` (or the daemon
    /// dies midway: [`Runtime::reconcile_snapshots`] removes partial ones).
    async fn snapshot(
        &self,
        id: &SandboxId,
        snapshot_id: &str,
    ) -> Result<SnapshotMeta, RuntimeError> {
        let _ = (id, snapshot_id);
        Err(RuntimeError::Unsupported("snapshots"))
    }

    /// Remove a snapshot. Idempotent.
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        let _ = snapshot_id;
        Err(RuntimeError::Unsupported("snapshots"))
    }

    /// Replace a *stopped* sandbox's files with the snapshot's. Either the files are the
    /// snapshot's afterwards or, on error, unchanged.
    async fn rollback(&self, id: &SandboxId, snapshot_id: &str) -> Result<(), RuntimeError> {
        let _ = (id, snapshot_id);
        Err(RuntimeError::Unsupported("rollback"))
    }

    /// Remove every complete snapshot not in `keep` and every partial one. Returns the ids
    /// it removed.
    async fn reconcile_snapshots(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let _ = keep;
        Ok(Vec::new())
    }

    /// Kill every process, remove cgroups, mounts and files. Idempotent: an unknown or
    /// already-destroyed sandbox is `Ok`.
    async fn destroy(&self, id: &SandboxId) -> Result<(), RuntimeError>;

    /// The writable layer of a stopped sandbox: an overlay upper directory (deleted files
    /// as 0/0 character devices, opaque directories marked `trusted.overlay.opaque`) whose
    /// owners are the ids inside plus `id_shift`. A template build turns it into an image
    /// layer; it must not change while the caller reads it (the sandbox stays stopped).
    async fn writable_layer(&self, id: &SandboxId) -> Result<WritableLayer, RuntimeError> {
        let _ = id;
        Err(RuntimeError::Unsupported("reading a writable layer"))
    }

    /// Make volume `name` (empty, owned by root inside every sandbox), limited to
    /// `size_bytes` where [`RuntimeInfo::volume_quota`]. Fails if it exists.
    async fn create_volume(&self, name: &str, size_bytes: Option<u64>) -> Result<(), RuntimeError> {
        let _ = (name, size_bytes);
        Err(RuntimeError::Unsupported("volumes"))
    }

    /// Remove volume `name` and its files (gone already is fine).
    async fn delete_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let _ = name;
        Err(RuntimeError::Unsupported("volumes"))
    }

    /// Bytes volume `name`'s files take.
    async fn volume_usage(&self, name: &str) -> Result<u64, RuntimeError> {
        let _ = name;
        Err(RuntimeError::Unsupported("volumes"))
    }

    /// Remove every volume not in `keep` (left by a crash between making one and
    /// recording it); returns the names removed.
    async fn reconcile_volumes(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let _ = keep;
        Ok(Vec::new())
    }

    /// Remove whatever an earlier (crashed) daemon left behind for every sandbox *not* in
    /// `keep`: processes, cgroups, sandbox directories. Returns the ids it cleaned.
    async fn reconcile(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError>;

    /// Called once when the daemon stops after every sandbox was destroyed: remove what the
    /// runtime itself made on the host (e.g. its parent cgroups), so nothing is left behind.
    async fn shutdown(&self) -> Result<(), RuntimeError>;
}
