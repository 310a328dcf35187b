//! Warren's engine: the sandbox state machine, the store, the TTL reaper.
//!
//! The engine owns no kernel details: it drives a [`warren_runtime::Runtime`] and keeps the
//! records. It is what the HTTP server calls.
//!
//! Work that changes the host (creating, deleting) runs in tasks of its own, never in the
//! caller's future: a client that hangs up mid-request cannot leave a half-made sandbox.

mod admission;
mod broker;
mod error;
pub mod events;
pub mod files;
pub mod idmaps;
pub mod images;
mod lifecycle;
mod network;
mod pools;
mod ports;
pub mod processes;
mod reaper;
mod recover;
mod runtimes;
mod snapshots;
mod store;
pub mod templates;
mod validate;
mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rand::Rng;
use tokio::sync::watch;
use tracing::{info, warn};

pub use admission::{disk_floor_mib, DiskProbe, DiskSpace, MemoryProbe, PidsProbe};
pub use error::EngineError;
pub use events::{EventItem, EventStream};
pub use lifecycle::{Deadlines, Usage};
pub use ports::address_to_url;
pub use store::{Lifecycle, Record};
pub use warren_runtime::{
    AttachEvent, AttachStream, ByteStream, ExecOutput, ExecStream, ExitInfo, RuntimeError,
};

use warren_api::{
    Capabilities, CreateSandboxRequest, EventKind, ExecRequest, ExecUser, Features, Isolation,
    Limits, PoolSpec, Resources, Sandbox, SandboxState, Snapshot, StorageInfo, DEFAULT_IMAGE,
};
use warren_runtime::{AgentClient, ExecSpec, Runtime, SandboxId, SandboxSpec};

use store::Store;

/// Server-side limits and defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    /// 0 = unlimited.
    pub max_sandboxes: u64,
    pub default_resources: Resources,
    pub max_cpus: f64,
    pub max_memory_mib: u64,
    pub max_pids: u64,
    /// Largest request body the server accepts (reported in capabilities).
    pub max_request_bytes: u64,
    /// Per-stream cap on output kept for a non-streaming exec response.
    pub max_exec_capture_bytes: usize,
    /// Output kept for all non-streaming exec responses in flight together (bytes); an exec
    /// that finds it used up keeps less (its result says how much was dropped).
    pub max_exec_output_bytes: u64,
    /// HTTP connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Long-lived responses (SSE streams, WebSockets, upgraded proxy connections) at once;
    /// beyond it they get 429 `too_many_streams`. Kept below `max_connections` so that
    /// short requests always have room.
    pub max_streams: usize,
    /// A client must send a request's headers within this long (also ends idle keep-alive
    /// connections).
    pub header_read_timeout: Duration,
    /// Deadline for the runtime to bring a sandbox up; past it the create fails and is
    /// cleaned up.
    pub create_deadline: Duration,
    /// How often the reaper looks for expired sandboxes.
    pub reap_interval: Duration,
    /// Output log capacity of a durable process that asks for none (bytes).
    pub default_process_log_bytes: u64,
    /// How long each transitional state may last before the sandbox is marked failed.
    pub deadlines: Deadlines,
    /// A sandbox whose processes use less CPU than this (fraction of one core, averaged over
    /// the idle detector's sampling interval) counts as idle.
    pub idle_cpu_threshold: f64,
    /// Largest sum of the memory limits of all sandboxes, pool sandboxes included (MiB);
    /// 0 = unlimited. See `admission`. Defaults to `memory_overcommit` ×
    /// `memory_budget_mib`.
    pub max_committed_memory_mib: u64,
    /// How many times the memory the sandboxes may really use together their limits may add
    /// up to (reported; the default of `max_committed_memory_mib` derives from it).
    pub memory_overcommit: f64,
    /// Memory all sandboxes together may really use (MiB): the daemon sets it as the limit
    /// of the parent cgroup (host RAM less a tenth by default; 0 = none).
    pub memory_budget_mib: u64,
    /// Tasks (processes and threads) all sandboxes together may have: the daemon sets it as
    /// the parent cgroup's `pids.max` (0 = none). `max_pids` is never above it.
    pub pids_budget: u64,
    /// Creates are refused (503) while the host has less memory available (MiB); 0 = never.
    pub min_available_memory_mib: u64,
    /// Largest `resources.disk_mib`. The engine sets it (and the default `disk_mib`) to 0 /
    /// none when the runtime has no disk quotas.
    pub max_disk_mib: u64,
    /// Creates are refused (503) while a file system of [`EngineConfig::disk_probe`] has
    /// less free space (MiB), or less than 5 % of its inodes free; 0 = never.
    pub min_free_disk_mib: u64,
    /// Where the free space of the store's and the sandboxes' file systems is read.
    pub disk_probe: DiskProbe,
    /// Where the host's available memory is read.
    pub memory_probe: MemoryProbe,
    /// Where the tasks of all sandboxes together are read (checked against `pids_budget`).
    pub pids_probe: PidsProbe,
    /// Largest `size` of a pool.
    pub max_pool_size: u32,
    /// Pool sandboxes being created at once, all pools together.
    pub pool_fill_concurrency: usize,
    /// Pools of the daemon's config file, (re)applied at every start (see `pools`).
    pub config_pools: Vec<(String, PoolSpec)>,
    /// User-namespace id ranges, used when the runtime gives sandboxes user namespaces.
    pub id_ranges: idmaps::IdRangeConfig,
    /// The network mode of a sandbox that names none (`warren serve --default-network`);
    /// `isolated` where the runtime offers no other.
    pub default_network: warren_runtime::NetworkMode,
    /// The runtime of a sandbox (or pool) that names none (`warren serve --runtime`).
    pub default_runtime: warren_runtime::RuntimeKind,
    /// The OCI image store (`None`: only the runtime's built-in images).
    pub images: Option<warren_image::ImageStore>,
    /// Whether a create pulls an image the store lacks (`warren serve --pull`).
    pub pull_policy: images::PullPolicy,
    /// Host directories sandboxes may mount from (`warren serve --allow-host-path`):
    /// absolute, canonical paths. Empty: none.
    pub allowed_host_paths: Vec<PathBuf>,
}

impl EngineConfig {
    /// Defaults sized from this host (cpus, memory).
    pub fn with_defaults(data_dir: PathBuf) -> EngineConfig {
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let host_mem_mib = host_memory_mib().unwrap_or(4096);
        // Host RAM less a tenth for the host itself and the daemon.
        let memory_budget_mib = host_mem_mib / 10 * 9;
        let pids_budget = host_pids_budget().unwrap_or(MAX_PIDS);
        let max_connections = default_max_connections(open_files_limit());
        EngineConfig {
            data_dir: data_dir.clone(),
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            max_sandboxes: 0,
            default_resources: Resources {
                cpus: Some(1.0_f64.min(host_cpus)),
                memory_mib: Some(1024.min(host_mem_mib)),
                pids: Some(1024.min(pids_budget)),
                disk_mib: Some(DEFAULT_DISK_MIB),
            },
            max_cpus: host_cpus,
            max_memory_mib: host_mem_mib,
            max_pids: MAX_PIDS.min(pids_budget),
            max_request_bytes: 16 * 1024 * 1024,
            max_exec_capture_bytes: 16 * 1024 * 1024,
            max_exec_output_bytes: 256 * 1024 * 1024,
            max_connections,
            max_streams: max_connections / 2,
            header_read_timeout: Duration::from_secs(10),
            create_deadline: Duration::from_secs(30),
            reap_interval: Duration::from_millis(500),
            default_process_log_bytes: 4 * 1024 * 1024,
            deadlines: Deadlines::default(),
            idle_cpu_threshold: 0.01,
            max_committed_memory_mib: committed_memory_mib(memory_budget_mib, MEMORY_OVERCOMMIT),
            memory_overcommit: MEMORY_OVERCOMMIT,
            memory_budget_mib,
            pids_budget,
            min_available_memory_mib: (host_mem_mib / 20).max(256),
            max_disk_mib: MAX_DISK_MIB,
            min_free_disk_mib: crate::fs_floor_of(&data_dir),
            disk_probe: DiskProbe::statvfs(vec![data_dir.clone()]),
            memory_probe: MemoryProbe::host(),
            pids_probe: PidsProbe::none(),
            max_pool_size: 256,
            pool_fill_concurrency: 2,
            config_pools: Vec::new(),
            id_ranges: idmaps::IdRangeConfig::default(),
            default_network: warren_runtime::NetworkMode::Nat,
            default_runtime: warren_runtime::RuntimeKind::Native,
            images: None,
            pull_policy: images::PullPolicy::Missing,
            allowed_host_paths: Vec::new(),
        }
    }
}

fn host_memory_mib() -> Option<u64> {
    admission::meminfo_mib("MemTotal:")
}

/// Largest `resources.pids` whatever the host.
pub const MAX_PIDS: u64 = 65536;
/// Default `resources.disk_mib` (where the runtime has disk quotas; the daemon lowers it to
/// a quarter of the storage file system's size when that is less).
pub const DEFAULT_DISK_MIB: u64 = 10 * 1024;
/// Default largest `resources.disk_mib` (the daemon sets the storage file system's size).
pub const MAX_DISK_MIB: u64 = 1 << 20;

/// The default `min_free_disk_mib` for the file system of `path` ([`disk_floor_mib`]; 0 if
/// it cannot be read).
fn fs_floor_of(path: &std::path::Path) -> u64 {
    // The data dir may not exist yet: its nearest existing ancestor tells the file system.
    let mut p = path;
    loop {
        if let Ok(s) = warren_runtime::fs_space(p) {
            return disk_floor_mib(s.total_bytes);
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return 0,
        }
    }
}
/// Default of `memory_overcommit`.
pub const MEMORY_OVERCOMMIT: f64 = 4.0;

/// `max_committed_memory_mib` for a memory budget and an overcommit ratio.
pub fn committed_memory_mib(memory_budget_mib: u64, overcommit: f64) -> u64 {
    (memory_budget_mib as f64 * overcommit).round() as u64
}

/// The tasks the host can give sandboxes: the smaller of `kernel.pid_max` and
/// `kernel.threads-max`, less a reserve for the host and the daemon (a tenth, at least
/// 1024). `None` when procfs cannot tell.
pub fn host_pids_budget() -> Option<u64> {
    let read = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    let pid_max = read("/proc/sys/kernel/pid_max")?;
    let tasks = read("/proc/sys/kernel/threads-max").map_or(pid_max, |t| t.min(pid_max));
    Some(pids_budget_of(tasks))
}

/// [`host_pids_budget`] for a host that can have `tasks` tasks.
pub fn pids_budget_of(tasks: u64) -> u64 {
    let reserve = (tasks / 10).max(1024);
    tasks.saturating_sub(reserve).max(validate::MIN_PIDS)
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A quarter of the descriptors the daemon may open (each stream also holds a connection to
/// the sandbox's agent, and sandboxes, the store and forwarded ports need theirs), between
/// 64 and 4096.
pub fn default_max_connections(open_files: Option<u64>) -> usize {
    let quarter = open_files.unwrap_or(1024) / 4;
    quarter.clamp(64, 4096) as usize
}

/// The engine handle; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    runtime: Arc<dyn Runtime>,
    store: Store,
    sandboxes: Mutex<HashMap<String, Entry>>,
    shutting_down: std::sync::atomic::AtomicBool,
    /// Forwarded ports, by sandbox (see `ports`).
    ports: ports::Forwards,
    events: events::Events,
    /// Snapshot records (the runtime holds their files).
    snapshots: Mutex<BTreeMap<String, Snapshot>>,
    /// Restores and rollbacks reading a snapshot right now, by snapshot id.
    snapshot_readers: Mutex<HashMap<String, usize>>,
    /// Warm pools (see `pools`).
    pools: pools::Pools,
    /// User-namespace id ranges, when the runtime gives sandboxes user namespaces.
    id_ranges: Option<idmaps::IdRanges>,
    /// What networking the runtime offers (fixed once the daemon runs; read per create and
    /// per sandbox view, so kept rather than asked of the runtime each time).
    net: warren_runtime::NetworkCaps,
    /// Where the next address search starts (next-fit, see `network`).
    net_cursor: Mutex<u32>,
    /// The credential broker, when the runtime can carry connections to it (see `broker`).
    broker: Option<broker::Brokerage>,
    /// What each OCI image's config gives commands, read once (see `images`).
    image_defaults: Mutex<HashMap<String, Arc<images::ImageDefaults>>>,
    /// Records deleted from memory whose removal from the store failed (retried, see
    /// [`Engine::resync_store`]).
    unsynced_removals: Mutex<std::collections::BTreeSet<String>>,
    /// Named volumes, by name (see `volumes`).
    volumes: Mutex<BTreeMap<String, volumes::VolumeEntry>>,
}

struct Entry {
    record: Record,
    /// Becomes true once the sandbox is gone; concurrent deletes wait on it.
    gone: watch::Sender<bool>,
    /// Held by whatever changes the sandbox in the runtime (create, pause, stop, snapshot,
    /// delete, ...), so those never overlap. Each holder is bounded by a deadline.
    op: Arc<tokio::sync::Mutex<()>>,
    activity: lifecycle::Activity,
    /// Order of insertion (ties of `created_at`, which has millisecond precision).
    seq: u64,
    /// A store write of this record failed: the stored state or expiry may be older than
    /// the record's (written again by [`Engine::resync_store`]).
    unsynced: bool,
    /// Its template's `start_cmd`/`ready_cmd` have not finished yet (a pool counts it as
    /// filling, not ready).
    warming: bool,
}

static ENTRY_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Entry {
    fn new(record: Record) -> Entry {
        Entry {
            seq: ENTRY_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            record,
            gone: watch::channel(false).0,
            op: Arc::new(tokio::sync::Mutex::new(())),
            activity: lifecycle::Activity::new(),
            unsynced: false,
            warming: false,
        }
    }
}

fn to_api(r: &Record, gateway: Option<std::net::Ipv4Addr>) -> Sandbox {
    Sandbox {
        id: r.id.clone(),
        state: r.state,
        image: r.image.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        timeout_secs: r.timeout_secs,
        metadata: r.metadata.clone(),
        resources: r.resources.clone(),
        env_keys: r.env.keys().cloned().collect(),
        failure_reason: r.failure_reason.clone(),
        state_changed_at: r.state_changed_at,
        snapshot: r.lifecycle.snapshot.clone(),
        on_timeout: r.lifecycle.on_timeout,
        idle_timeout_secs: r.lifecycle.idle_timeout_secs,
        on_idle: r.lifecycle.on_idle,
        auto_resume: r.lifecycle.auto_resume,
        pool: r.lifecycle.pool.clone(),
        network: network::view(&r.network, gateway),
        credentials: r
            .credentials
            .as_ref()
            .map(|c| c.shown.clone())
            .unwrap_or_default(),
        volumes: r.volumes.clone(),
        runtime: runtimes::api_of(r.lifecycle.runtime),
    }
}

/// Mark a sandbox deleting (under the map lock); returns its previous state. The caller
/// then calls [`Engine::after_begin_delete`].
pub(crate) fn begin_delete(e: &mut Entry) -> SandboxState {
    let prev = e.record.state;
    if prev != SandboxState::Deleting {
        e.record.state = SandboxState::Deleting;
        e.record.state_changed_at = Utc::now();
    }
    prev
}

/// Whether `e` says the agent's socket refuses or lacks a listener (the agent is dead), as
/// opposed to one request's connection failing midway.
fn agent_unreachable(e: &RuntimeError) -> bool {
    let io = match e {
        RuntimeError::Io(io) => io,
        RuntimeError::Agent(warren_runtime::ProtoError::Io(io)) => io,
        _ => return false,
    };
    matches!(
        io.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
    )
}

/// A sandbox id as the runtime takes it. Every id the engine holds was made by [`new_id`]
/// (or read back from its store), so a string that does not parse names no sandbox.
pub(crate) fn sandbox_id(id: &str) -> Result<SandboxId, EngineError> {
    SandboxId::parse(id).map_err(|_| EngineError::SandboxNotFound(id.to_string()))
}

fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}-{suffix}")
}

/// Now, to the millisecond (what the store keeps, so a record reads back equal).
pub(crate) fn now_ms() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

fn expiry(secs: u64) -> DateTime<Utc> {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    Utc::now() + chrono::Duration::try_seconds(secs).unwrap_or(chrono::Duration::MAX)
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_CWD: &str = "/workspace";

impl Engine {
    /// Open the store under `config.data_dir` and reconcile it with what runs on this host
    /// (see `recover`): sandboxes that still run are adopted, half-made ones removed.
    pub async fn open(
        mut config: EngineConfig,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Engine, EngineError> {
        if !runtime.info().disk_quota {
            // Nothing would enforce it: `disk_mib` is refused rather than ignored.
            config.default_resources.disk_mib = None;
            config.max_disk_mib = 0;
        }
        let net = runtime.info().network;
        if !net.modes.contains(&config.default_network) {
            warn!(
                mode = %config.default_network,
                "the runtime does not offer this default network mode; sandboxes that name \
                 none get `isolated`"
            );
            config.default_network = warren_runtime::NetworkMode::Isolated;
        }
        let store = Store::open(&config.data_dir)?;
        let id_ranges = if runtime.info().user_namespace {
            let c = &config.id_ranges;
            let preferred = u32::try_from(store.get_meta("userns_base").await?)
                .ok()
                .filter(|b| *b != 0);
            let claim =
                idmaps::claim_window(&c.registry, c.base, preferred, c.count, &config.data_dir)
                    .map_err(EngineError::Config)?;
            let ranges = idmaps::IdRanges::new(claim, &c.exclude).map_err(EngineError::Config)?;
            store
                .set_meta("userns_base", u64::from(ranges.base()))
                .await?;
            info!(
                base = ranges.base(),
                ranges = c.count,
                "user-namespace id window"
            );
            Some(ranges)
        } else {
            None
        };
        let first_seq = store.get_meta("event_seq").await? + events::RESTART_GAP;
        let broker = if net.broker {
            Some(broker::Brokerage::open(&config.data_dir)?)
        } else {
            None
        };
        let engine = Engine {
            inner: Arc::new(Inner {
                config,
                runtime,
                store,
                sandboxes: Mutex::new(HashMap::new()),
                shutting_down: false.into(),
                ports: ports::Forwards::default(),
                events: events::Events::new(first_seq),
                snapshots: Mutex::new(BTreeMap::new()),
                snapshot_readers: Mutex::new(HashMap::new()),
                pools: pools::Pools::default(),
                id_ranges,
                net,
                net_cursor: Mutex::new(0),
                broker,
                image_defaults: Mutex::new(HashMap::new()),
                unsynced_removals: Default::default(),
                volumes: Mutex::new(BTreeMap::new()),
            }),
        };
        engine.load_volumes().await?;
        engine.recover().await?;
        engine.clean_interrupted_builds().await;
        engine.reapply_policies().await;
        engine.restore_credentials().await;
        engine.give_ranges_to_old_records().await?;
        engine.load_pools().await?;
        engine.spawn_pool_manager();
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Sandboxes recorded before user namespaces were on get a range now: they keep running
    /// as they are, and their next start moves their files into it.
    async fn give_ranges_to_old_records(&self) -> Result<(), EngineError> {
        let updated: Vec<Record> = {
            let mut map = self.map();
            let missing: Vec<String> = map
                .iter()
                .filter(|(_, e)| {
                    e.record.host_id.is_none()
                        && e.record.lifecycle.runtime == warren_runtime::RuntimeKind::Native
                })
                .map(|(id, _)| id.clone())
                .collect();
            let mut out = Vec::new();
            for id in missing {
                let Some(host_id) = self.allocate_host_id(&map)? else {
                    break;
                };
                if let Some(e) = map.get_mut(&id) {
                    e.record.host_id = Some(host_id);
                    out.push(e.record.clone());
                }
            }
            out
        };
        for r in &updated {
            info!(sandbox = %r.id, host_id = r.host_id, "user namespace range assigned");
            self.inner.store.insert(r).await?;
        }
        Ok(())
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock would be a bug; recover the data rather than
        // wedge every later request.
        self.inner
            .sandboxes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The agent of sandbox `id` (any backend: the runtime only says how to reach it).
    fn agent<'a>(&'a self, id: &'a SandboxId) -> AgentClient<'a> {
        AgentClient::new(&*self.inner.runtime, id)
    }

    pub fn capabilities(&self) -> Capabilities {
        let info = self.inner.runtime.info();
        let c = &self.inner.config;
        Capabilities {
            version: env!("CARGO_PKG_VERSION").to_string(),
            runtime: c.default_runtime.to_string(),
            runtimes: self.runtime_capabilities(info.kinds),
            images: self
                .list_images()
                .map(|l| l.into_iter().map(|i| i.name).collect())
                .unwrap_or(info.images),
            cgroup: info.cgroup,
            isolation: Isolation {
                namespaces: info.namespaces,
                user_namespace: info.user_namespace,
                seccomp: info.seccomp,
                capabilities: info.capabilities,
                network: c.default_network.to_string(),
            },
            features: Features {
                exec: true,
                exec_stream: true,
                pause: info.pause,
                snapshots: info.snapshots,
                rollback: info.snapshots && info.stop,
                fork: info.snapshots,
                // Every backend reaches its agent, which does these.
                processes: true,
                files: true,
                ports: true,
                stop: info.stop,
                stats: info.stats,
                events: true,
                pools: true,
                volumes: info.volumes,
                templates: c.images.is_some(),
            },
            limits: Limits {
                max_sandboxes: c.max_sandboxes,
                default_timeout_secs: c.default_timeout_secs,
                max_timeout_secs: c.max_timeout_secs,
                max_cpus: c.max_cpus,
                max_memory_mib: c.max_memory_mib,
                max_pids: c.max_pids,
                default_resources: c.default_resources.clone(),
                max_request_bytes: c.max_request_bytes,
                max_exec_capture_bytes: c.max_exec_capture_bytes as u64,
                max_exec_output_bytes: c.max_exec_output_bytes,
                max_connections: c.max_connections as u64,
                max_streams: c.max_streams as u64,
                max_committed_memory_mib: c.max_committed_memory_mib,
                memory_overcommit: c.memory_overcommit,
                memory_budget_mib: c.memory_budget_mib,
                pids_budget: c.pids_budget,
                min_available_memory_mib: c.min_available_memory_mib,
                max_disk_mib: c.max_disk_mib,
                min_free_disk_mib: c.min_free_disk_mib,
                max_pool_size: c.max_pool_size,
            },
            storage: StorageInfo {
                backend: info.storage,
                reflink: info.reflink,
                available: info.storage_available,
                disk_quota: info.disk_quota,
                volume_quota: info.volume_quota,
                allowed_host_paths: c
                    .allowed_host_paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            },
            network: self.network_capabilities(),
        }
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self.is_shutting_down() {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    fn is_shutting_down(&self) -> bool {
        self.inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `sandbox_not_found` for ids that are not the API's: unclaimed pool sandboxes.
    pub(crate) fn visible(&self, id: &str) -> Result<(), EngineError> {
        match self.map().get(id) {
            Some(e) if !e.record.lifecycle.pool_member => Ok(()),
            _ => Err(EngineError::SandboxNotFound(id.to_string())),
        }
    }

    /// Validate, record, create in the runtime. Returns the sandbox in state `running`.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<Sandbox, EngineError> {
        self.create_inner(req, None).await
    }

    /// Create; `hidden_snapshot` is a runtime snapshot without a record (a fork's), used
    /// instead of `req.snapshot`. A create for a pool (by name or by matching spec) takes a
    /// ready sandbox of it when there is one (see `pools`).
    pub(crate) async fn create_inner(
        &self,
        mut req: CreateSandboxRequest,
        hidden_snapshot: Option<String>,
    ) -> Result<Sandbox, EngineError> {
        self.check_open()?;
        let c = &self.inner.config;
        let timeout_secs =
            validate::timeout(req.timeout_secs.unwrap_or(c.default_timeout_secs), c)?;
        validate::metadata(&req.metadata)?;
        if let Some(idle) = req.idle_timeout_secs {
            validate::idle_timeout(idle, c)?;
        }
        if hidden_snapshot.is_none() {
            let targets = self.pool_targets(&req)?;
            if let Some((first, def)) = targets.first() {
                let env = pools::claim_env(def, &req.env);
                validate::env("env", &env)?;
                for (name, def) in &targets {
                    if let Some(sandbox) = self.claim(name, def, &req, &env, timeout_secs).await? {
                        return Ok(sandbox);
                    }
                }
                // Empty: a cold create of the pool's spec.
                self.inner.pools.missed(first);
                req.image = Some(def.image.clone());
                req.resources = Some(def.resources.clone());
                req.env = env;
            }
        }
        // A restore sits on the snapshot's image (its files are a layer over it).
        let snapshot_image = req
            .snapshot
            .as_ref()
            .and_then(|s| self.snapshots_map().get(s).and_then(|s| s.image.clone()));
        let image = req
            .image
            .clone()
            .or_else(|| snapshot_image.clone())
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        let image = self.resolve_image(&image).await?;
        if let Some(snap_image) = snapshot_image.filter(|s| *s != image) {
            return Err(EngineError::InvalidRequest(format!(
                "the snapshot's files sit on image {snap_image}, not {image}: leave `image` out"
            )));
        }
        let resources = validate::resources(req.resources.as_ref(), c)?;
        validate::env("env", &req.env)?;
        let mut network = self.resolve_network(req.network.as_ref())?;
        let runtime = self.resolve_runtime(req.runtime, &mut network, req.network.is_some())?;
        if !runtimes::host_path_mounts(runtime) && req.volumes.iter().any(|v| v.host_path.is_some())
        {
            return Err(EngineError::InvalidRequest(
                "host_path mounts are not available on gvisor sandboxes (their files would \
                 belong to the host's root); use a named volume, or the native runtime"
                    .into(),
            ));
        }
        let volumes = self.resolve_mounts(&req.volumes).await?;
        // Reading a snapshot: it cannot be deleted until the files are copied.
        let reader = match (&hidden_snapshot, &req.snapshot) {
            (Some(_), _) | (None, None) => None,
            (None, Some(snap)) => {
                if !self.inner.runtime.info().snapshots {
                    return Err(EngineError::NotSupported("snapshots"));
                }
                Some(self.read_snapshot(snap)?)
            }
        };

        let now = now_ms();
        let mut record = Record {
            id: new_id("sb"),
            state: SandboxState::Creating,
            image,
            created_at: now,
            expires_at: expiry(timeout_secs),
            timeout_secs,
            metadata: req.metadata,
            env: req.env,
            resources,
            failure_reason: None,
            state_changed_at: now,
            lifecycle: Lifecycle {
                snapshot: req.snapshot.clone(),
                on_timeout: req.on_timeout.unwrap_or_default(),
                idle_timeout_secs: req.idle_timeout_secs,
                on_idle: req.on_idle.unwrap_or_default(),
                auto_resume: req.auto_resume,
                pool: None,
                pool_member: false,
                runtime,
            },
            host_id: None,
            network,
            credentials: None,
            volumes,
        };
        // Checked (and registered under the new id) before anything is made.
        record.credentials = self.register_credentials(&record.id, &req.credentials)?;
        let guard = match self.admit_insert(&mut record, admission::Admit::User) {
            Ok(g) => g,
            Err(e) => {
                self.drop_credentials(&record.id);
                return Err(e);
            }
        };
        self.emit(
            &record.id,
            EventKind::Created,
            events::Detail {
                state: Some(SandboxState::Creating),
                snapshot: record.lifecycle.snapshot.clone(),
                ..Default::default()
            },
        );
        // The rest runs detached: if the client goes away, the sandbox still either comes
        // up completely or is removed completely.
        let engine = self.clone();
        let source = hidden_snapshot.or(req.snapshot);
        tokio::spawn(async move {
            let r = engine.finish_create(record, source).await;
            drop(guard);
            drop(reader);
            engine.when_ready(r?).await
        })
        .await
        .map_err(|e| EngineError::Store(format!("create task failed: {e}")))?
    }

    /// Admission and insertion under one lock, so concurrent creates cannot overshoot.
    /// Returns the new sandbox's operation lock, taken before anyone else can see the
    /// entry (so a delete waits for the create).
    /// It also gives the record its user-namespace id range (see `idmaps`).
    pub(crate) fn admit_insert(
        &self,
        record: &mut Record,
        who: admission::Admit,
    ) -> Result<tokio::sync::OwnedMutexGuard<()>, EngineError> {
        self.check_pressure()?;
        let (guard, evicted) = {
            let mut map = self.map();
            // Checked under the lock: `shutdown` sets the flag before it collects the ids.
            self.check_open()?;
            // Under the map lock: a volume delete checks its users under it too.
            self.check_volumes_exist(&record.volumes)?;
            // Only native sandboxes get a user namespace range (gVisor's kernel has its own).
            record.host_id = match record.lifecycle.runtime {
                warren_runtime::RuntimeKind::Native => self.allocate_host_id(&map)?,
                _ => None,
            };
            self.allocate_address(&map, &mut record.network)?;
            let evicted = self.admit_locked(&mut map, record, who)?;
            let mut entry = Entry::new(record.clone());
            entry.warming = self.has_template_hooks(&record.image);
            let guard = entry
                .op
                .clone()
                .try_lock_owned()
                .map_err(|_| EngineError::Store("fresh sandbox lock busy".into()))?;
            map.insert(record.id.clone(), entry);
            (guard, evicted)
        };
        for (id, prev) in evicted {
            info!(%id, "pool sandbox evicted to make room for a new sandbox");
            self.after_begin_delete(&id, prev, "evicted");
        }
        Ok(guard)
    }

    fn runtime_spec(
        &self,
        record: &Record,
        snapshot: Option<String>,
    ) -> Result<SandboxSpec, EngineError> {
        Ok(SandboxSpec {
            id: sandbox_id(&record.id)?,
            image: record.image.clone(),
            layers: self.image_layers(&record.image)?,
            limits: warren_runtime::Limits {
                cpus: record.resources.cpus,
                memory_bytes: record.resources.memory_mib.map(|m| m * 1024 * 1024),
                pids: record.resources.pids,
                disk_bytes: record.resources.disk_mib.map(|m| m << 20),
            },
            snapshot,
            idmap: record.host_id.map(warren_runtime::IdMap::new),
            network: record.network.clone(),
            mounts: self.runtime_mounts(&record.volumes),
            runtime: record.lifecycle.runtime,
        })
    }

    async fn finish_create(
        &self,
        record: Record,
        snapshot: Option<String>,
    ) -> Result<Sandbox, EngineError> {
        let id = record.id.clone();
        if let Err(e) = self.inner.store.insert(&record).await {
            self.undo_create(&id, &e.to_string()).await;
            return Err(e);
        }
        let spec = self.runtime_spec(&record, snapshot)?;
        let deadline = self.inner.config.create_deadline;
        let result = match tokio::time::timeout(deadline, self.inner.runtime.create(&spec)).await {
            Ok(r) => r.map_err(|e| match e {
                RuntimeError::SnapshotNotFound(s) => EngineError::SnapshotNotFound(s),
                e => EngineError::from(e),
            }),
            Err(_) => Err(EngineError::Runtime(RuntimeError::Setup(format!(
                "sandbox did not come up within {deadline:?}"
            )))),
        };
        if let Err(e) = result {
            warn!(%id, error = %e, "create failed");
            self.undo_create(&id, &e.to_string()).await;
            return Err(e);
        }
        self.make_workdir(&id, &record.image).await;
        match self
            .set_state(&id, SandboxState::Running, &[SandboxState::Creating], None)
            .await
        {
            Ok(true) => {
                self.serve_credentials(&id).await;
                info!(%id, "sandbox running");
                self.view(&id)
            }
            Ok(false) => {
                // Deleted while it was being made: the deletion runs once we let go.
                Err(EngineError::InvalidState {
                    id,
                    state: SandboxState::Deleting,
                    message: "the sandbox was deleted while it was being created".into(),
                })
            }
            Err(e) => {
                self.undo_create(&id, &e.to_string()).await;
                Err(e)
            }
        }
    }

    /// A new sandbox (its create's lock released) once its template's `start_cmd` runs and
    /// `ready_cmd` succeeds; one that never gets ready is deleted.
    pub(crate) async fn when_ready(&self, sandbox: Sandbox) -> Result<Sandbox, EngineError> {
        match self.template_hooks(&sandbox.id, &sandbox.image).await {
            Ok(()) => {
                if let Some(e) = self.map().get_mut(&sandbox.id) {
                    e.warming = false;
                }
                Ok(sandbox)
            }
            Err(e) => {
                warn!(id = %sandbox.id, error = %e, "the template's start or ready command failed");
                if let Err(de) = self.delete_because(&sandbox.id, "template not ready").await {
                    warn!(id = %sandbox.id, error = %de, "deleting a sandbox that never got ready");
                }
                Err(e)
            }
        }
    }

    /// Remove every trace of a sandbox whose creation failed.
    async fn undo_create(&self, id: &str, why: &str) {
        self.inner.ports.close_sandbox(id);
        self.drop_credentials(id);
        if let Ok(sid) = SandboxId::parse(id) {
            if let Err(e) = self.inner.runtime.destroy(&sid).await {
                warn!(%id, error = %e, "cleanup after a failed create");
            }
        }
        self.remove_record(id).await;
        if let Some(e) = self.map().remove(id) {
            e.gone.send_replace(true);
        }
        self.emit(
            id,
            EventKind::Deleted,
            events::Detail {
                previous: Some(SandboxState::Creating),
                reason: Some(format!("create failed: {why}")),
                ..Default::default()
            },
        );
    }

    /// Record an event.
    pub(crate) fn emit(&self, id: &str, kind: EventKind, detail: events::Detail) {
        self.inner.events.emit(id, kind, detail);
    }

    /// Lifecycle events of one sandbox (`Some`) or of all (see [`events::Events::subscribe`]).
    pub fn events(
        &self,
        sandbox: Option<&str>,
        after: Option<u64>,
    ) -> Result<EventStream, EngineError> {
        // Sequence numbers only grow (across restarts too): one that was never issued is a
        // client's mistake, not a place to wait at.
        if let Some(after) = after {
            let last = self.inner.events.next_seq().saturating_sub(1);
            if after > last {
                return Err(EngineError::InvalidRequest(format!(
                    "after={after} is beyond the last event issued (seq {last})"
                )));
            }
        }
        // A sandbox that is gone gets its kept events, then the stream ends.
        let mut follow = true;
        if let Some(id) = sandbox {
            let member = self
                .map()
                .get(id)
                .is_some_and(|e| e.record.lifecycle.pool_member);
            if member {
                return Err(EngineError::SandboxNotFound(id.to_string()));
            }
            if !self.map().contains_key(id) {
                // Never seen in the kept events either: a typo, not a deleted sandbox.
                if !self.inner.events.has_sandbox(id) {
                    return Err(EngineError::SandboxNotFound(id.to_string()));
                }
                follow = false;
            }
        }
        Ok(self
            .inner
            .events
            .subscribe_with(sandbox.map(str::to_string), after, follow))
    }

    /// Move `id` to `to` (in memory, the store and the event stream) if its state is one of
    /// `from` (any state when empty). Returns whether it moved.
    ///
    /// The state changes in memory first: when the store write fails, the sandbox is in
    /// `to` all the same (marked unsynced, so the record is written again later) and the
    /// error is returned; the caller decides whether to go back (see
    /// [`Engine::revert_state`]).
    pub(crate) async fn set_state(
        &self,
        id: &str,
        to: SandboxState,
        from: &[SandboxState],
        reason: Option<String>,
    ) -> Result<bool, EngineError> {
        self.set_state_until(id, to, from, reason, None).await
    }

    /// [`Engine::set_state`] whose store write must be done by `until` (a store that does
    /// not answer in time counts as failed).
    pub(crate) async fn set_state_until(
        &self,
        id: &str,
        to: SandboxState,
        from: &[SandboxState],
        reason: Option<String>,
        until: Option<tokio::time::Instant>,
    ) -> Result<bool, EngineError> {
        let failure = (to == SandboxState::Failed)
            .then(|| reason.clone())
            .flatten();
        let previous = {
            let mut map = self.map();
            let Some(e) = map.get_mut(id) else {
                return Ok(false);
            };
            let prev = e.record.state;
            if !from.is_empty() && !from.contains(&prev) {
                return Ok(false);
            }
            e.record.state = to;
            e.record.failure_reason = failure.clone();
            e.record.state_changed_at = Utc::now();
            prev
        };
        self.emit(
            id,
            EventKind::State,
            events::Detail {
                state: Some(to),
                previous: Some(previous),
                reason,
                snapshot: None,
            },
        );
        let write = self.inner.store.set_state(id, to, failure);
        let written = match until {
            None => write.await,
            Some(at) => tokio::time::timeout_at(at, write)
                .await
                .unwrap_or_else(|_| {
                    Err(EngineError::Store(format!(
                        "recording the sandbox as {to} did not finish within its deadline"
                    )))
                }),
        };
        if let Err(e) = written {
            warn!(%id, state = %to, error = %e, "recording a state change failed");
            self.mark_unsynced(id);
            return Err(e);
        }
        Ok(true)
    }

    /// Put a sandbox that is in `from` back into `to` in memory (after a store write failed
    /// before the runtime was asked anything) and report it; the store catches up later.
    pub(crate) fn revert_state(&self, id: &str, from: SandboxState, to: SandboxState, why: &str) {
        {
            let mut map = self.map();
            let Some(e) = map.get_mut(id) else {
                return;
            };
            if e.record.state != from {
                return;
            }
            e.record.state = to;
            e.record.failure_reason = None;
            e.record.state_changed_at = Utc::now();
            e.unsynced = true;
        }
        self.emit(
            id,
            EventKind::State,
            events::Detail {
                state: Some(to),
                previous: Some(from),
                reason: Some(why.to_string()),
                snapshot: None,
            },
        );
    }

    /// The stored record of `id` may be behind the one in memory.
    pub(crate) fn mark_unsynced(&self, id: &str) {
        if let Some(e) = self.map().get_mut(id) {
            e.unsynced = true;
        }
    }

    /// Remove `id` from the store; when that fails, remember to try again.
    async fn remove_record(&self, id: &str) {
        if let Err(e) = self.inner.store.remove(id).await {
            warn!(%id, error = %e, "removing the record; will try again");
            self.unsynced_removals().insert(id.to_string());
        }
    }

    fn unsynced_removals(&self) -> MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.inner
            .unsynced_removals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Write again what a failed store write left behind (the reaper calls this every
    /// tick): the state and expiry of every unsynced record whose sandbox no operation holds
    /// right now, and the removal of deleted ones. Returns how many are still behind.
    pub async fn resync_store(&self) -> usize {
        let removals: Vec<String> = self.unsynced_removals().iter().cloned().collect();
        for id in removals {
            if self.map().contains_key(&id) {
                continue;
            }
            if self.inner.store.remove(&id).await.is_ok() {
                self.unsynced_removals().remove(&id);
            }
        }
        let ids: Vec<(String, Arc<tokio::sync::Mutex<()>>)> = self
            .map()
            .iter()
            .filter(|(_, e)| e.unsynced)
            .map(|(id, e)| (id.clone(), e.op.clone()))
            .collect();
        for (id, op) in ids {
            // An operation in flight writes the record itself.
            let Ok(_guard) = op.try_lock_owned() else {
                continue;
            };
            let engine = self.clone();
            let key = id.clone();
            // Read inside the store's lock, so this never overwrites a newer write.
            let current = move || {
                let mut map = engine.map();
                let e = map.get_mut(&key)?;
                e.unsynced = false;
                Some(e.record.clone())
            };
            if let Err(e) = self.inner.store.sync(current).await {
                tracing::debug!(%id, error = %e, "store still behind");
                self.mark_unsynced(&id);
            }
        }
        self.map().values().filter(|e| e.unsynced).count() + self.unsynced_removals().len()
    }

    pub async fn get(&self, id: &str) -> Result<Sandbox, EngineError> {
        self.map()
            .get(id)
            .filter(|e| !e.record.lifecycle.pool_member)
            .map(|e| to_api(&e.record, self.net_gateway()))
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))
    }

    /// Merge `patch` into a sandbox's metadata: a value sets its key, `None` removes it.
    /// The result is validated as a create's metadata; nothing changes on an error.
    pub async fn update_metadata(
        &self,
        id: &str,
        patch: &BTreeMap<String, Option<String>>,
    ) -> Result<Sandbox, EngineError> {
        self.visible(id)?;
        let op = self.op_lock(id)?;
        let _op = op.lock().await;
        let mut metadata = self
            .map()
            .get(id)
            .map(|e| e.record.metadata.clone())
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
        for (k, v) in patch {
            match v {
                Some(v) => metadata.insert(k.clone(), v.clone()),
                None => metadata.remove(k),
            };
        }
        validate::metadata(&metadata)?;
        self.inner.store.set_metadata(id, &metadata).await?;
        if let Some(e) = self.map().get_mut(id) {
            e.record.metadata = metadata;
        }
        self.get(id).await
    }

    /// The sandbox as the API shows it, pool sandboxes included (internal callers).
    pub(crate) fn view(&self, id: &str) -> Result<Sandbox, EngineError> {
        self.map()
            .get(id)
            .map(|e| to_api(&e.record, self.net_gateway()))
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))
    }

    /// Sandboxes whose metadata contains every `filter` pair, oldest first.
    pub async fn list(
        &self,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<Sandbox>, EngineError> {
        let mut out: Vec<(u64, Sandbox)> = self
            .map()
            .values()
            .filter(|e| {
                !e.record.lifecycle.pool_member
                    && filter
                        .iter()
                        .all(|(k, v)| e.record.metadata.get(k) == Some(v))
            })
            .map(|e| (e.seq, to_api(&e.record, self.net_gateway())))
            .collect();
        out.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at).then(a.0.cmp(&b.0)));
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    /// Delete and wait until the sandbox is gone. Deleting a sandbox that is already being
    /// deleted waits for that deletion; an unknown id is `sandbox_not_found`. Works in every
    /// state: an operation in flight (bounded by its deadline) finishes first.
    pub async fn delete(&self, id: &str) -> Result<(), EngineError> {
        self.visible(id)?;
        self.delete_because(id, "api").await
    }

    pub(crate) async fn delete_because(&self, id: &str, reason: &str) -> Result<(), EngineError> {
        let (mut gone, prev) = {
            let mut map = self.map();
            let entry = map
                .get_mut(id)
                .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
            (entry.gone.subscribe(), begin_delete(entry))
        };
        self.after_begin_delete(id, prev, reason);
        let _ = gone.wait_for(|g| *g).await;
        Ok(())
    }

    /// After [`begin_delete`] (with the map lock let go): report the change and run the
    /// deletion in a task of its own, unless one already runs.
    pub(crate) fn after_begin_delete(&self, id: &str, prev: SandboxState, reason: &str) {
        if prev == SandboxState::Deleting {
            return;
        }
        self.emit(
            id,
            EventKind::State,
            events::Detail {
                state: Some(SandboxState::Deleting),
                previous: Some(prev),
                reason: Some(reason.to_string()),
                snapshot: None,
            },
        );
        let engine = self.clone();
        let id = id.to_string();
        // Detached, so a client hanging up cannot stop a deletion halfway.
        tokio::spawn(async move { engine.finish_delete(&id).await });
    }

    async fn finish_delete(&self, id: &str) {
        // Wait for an operation in flight (create, pause, snapshot, ...) to let go.
        let Some(lock) = self.map().get(id).map(|e| e.op.clone()) else {
            return;
        };
        let _guard = lock.lock_owned().await;
        if !self.map().contains_key(id) {
            // A failed create already removed everything.
            return;
        }
        self.inner.ports.close_sandbox(id);
        if let Err(e) = self
            .inner
            .store
            .set_state(id, SandboxState::Deleting, None)
            .await
        {
            warn!(%id, error = %e, "recording deletion");
        }
        let deadline = self.inner.config.deadlines.delete;
        let Ok(sid) = SandboxId::parse(id) else {
            return;
        };
        let result = match tokio::time::timeout(deadline, self.inner.runtime.destroy(&sid)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("not done within {deadline:?}")),
        };
        match result {
            Ok(()) => {
                self.drop_credentials(id);
                self.remove_record(id).await;
                if let Some(e) = self.map().remove(id) {
                    e.gone.send_replace(true);
                }
                self.emit(
                    id,
                    EventKind::Deleted,
                    events::Detail {
                        previous: Some(SandboxState::Deleting),
                        ..Default::default()
                    },
                );
                info!(%id, "sandbox deleted");
                // Room for a pool to fill.
                self.inner.pools.wake();
            }
            Err(err) => {
                // Keep the record as failed so it stays visible and deletable again.
                let reason = format!("delete failed: {err}");
                warn!(%id, %reason);
                let _ = self
                    .set_state(id, SandboxState::Failed, &[], Some(reason))
                    .await;
                if let Some(e) = self.map().get_mut(id) {
                    e.gone.send_replace(true);
                    e.gone = watch::channel(false).0;
                }
            }
        }
    }

    pub async fn set_timeout(&self, id: &str, timeout_secs: u64) -> Result<Sandbox, EngineError> {
        self.visible(id)?;
        let timeout_secs = validate::timeout(timeout_secs, &self.inner.config)?;
        let expires_at = expiry(timeout_secs);
        {
            let map = self.map();
            let e = map
                .get(id)
                .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
            if e.record.state == SandboxState::Deleting {
                return Err(EngineError::InvalidState {
                    id: id.to_string(),
                    state: e.record.state,
                    message: "cannot change the timeout of a sandbox being deleted".into(),
                });
            }
        }
        self.inner
            .store
            .set_expiry(id, expires_at, timeout_secs)
            .await?;
        let mut map = self.map();
        let e = map
            .get_mut(id)
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
        e.record.expires_at = expires_at;
        e.record.timeout_secs = timeout_secs;
        Ok(to_api(&e.record, self.net_gateway()))
    }

    /// Validate and start a command; the stream yields output and ends with `Exit`.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError> {
        self.ready(id).await?;
        let stdin = req.stdin.map(Bytes::from);
        let spec = self.command_spec(
            id,
            CommandParts {
                cmd: req.cmd,
                env: req.env,
                cwd: req.cwd,
                user: req.user,
                timeout_secs: req.timeout_secs,
                stdin: stdin.is_some(),
            },
        )?;
        match self.agent(&crate::sandbox_id(id)?).exec(spec, stdin).await {
            Ok(stream) => Ok(self.attached(id, stream)),
            Err(e) => Err(self.spawn_error(id, e).await),
        }
    }

    /// Validate a command (of an exec or a durable process) and resolve its user,
    /// environment (defaults, then the sandbox's, then the request's) and working directory.
    /// The sandbox must be running.
    pub(crate) fn command_spec(
        &self,
        id: &str,
        parts: CommandParts,
    ) -> Result<ExecSpec, EngineError> {
        validate::cmd(&parts.cmd)?;
        validate::env("env", &parts.env)?;
        let timeout_ms = parts
            .timeout_secs
            .map(validate::exec_timeout)
            .transpose()?
            .map(|s| s * 1000);
        let (sandbox_env, image) = {
            let map = self.map();
            let e = map
                .get(id)
                .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
            lifecycle::require_running(id, &e.record, "commands run")?;
            (e.record.env.clone(), e.record.image.clone())
        };
        // An OCI image's config: its env, working directory and user are the defaults.
        let defaults = self.image_defaults(&image);
        let image_user = defaults.as_ref().and_then(|d| d.user.clone());
        let (uid, gid, home, name) = match (parts.user, image_user) {
            (Some(ExecUser::User), _) => (1000, 1000, "/home/user".into(), "user".into()),
            (None, Some(u)) => (u.uid, u.gid, u.home, u.name),
            (Some(ExecUser::Root), _) | (None, None) => (0, 0, "/root".into(), "root".into()),
        };
        let cwd = match (parts.cwd, &defaults) {
            (Some(c), _) => c,
            (None, Some(d)) => d.cwd.clone().unwrap_or_else(|| "/".to_string()),
            (None, None) => DEFAULT_CWD.to_string(),
        };
        validate::cwd(&cwd)?;
        let mut env: BTreeMap<String, String> = [
            ("PATH", DEFAULT_PATH),
            ("HOME", home.as_str()),
            ("USER", name.as_str()),
            ("LOGNAME", name.as_str()),
            ("HOSTNAME", id),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(d) = &defaults {
            env.extend(d.env.iter().cloned());
        }
        env.extend(sandbox_env);
        // The broker's base URLs and tokens: over the sandbox's env, under the request's.
        env.extend(self.broker_env(id));
        env.extend(parts.env);
        let spec = ExecSpec {
            argv: parts.cmd,
            env: env.into_iter().collect(),
            cwd,
            uid,
            gid,
            timeout_ms,
            stdin: parts.stdin,
        };
        validate::command_size(&spec)?;
        Ok(spec)
    }

    /// Map a runtime failure to start a command; a sandbox whose agent is gone is marked
    /// failed.
    pub(crate) async fn spawn_error(&self, id: &str, err: RuntimeError) -> EngineError {
        match err {
            RuntimeError::Spawn { code, message } => EngineError::Spawn {
                code: match code {
                    warren_runtime::AgentCode::NotFound => warren_api::ErrorCode::CommandNotFound,
                    warren_runtime::AgentCode::BadCwd => warren_api::ErrorCode::InvalidCwd,
                    _ => warren_api::ErrorCode::SpawnFailed,
                },
                message,
            },
            RuntimeError::NotFound(_) => {
                self.mark_failed(id, "the sandbox's runtime state is gone")
                    .await
            }
            // Only an agent that cannot be reached at all means the sandbox broke; a request
            // whose connection ended early is that request's failure (500), not the sandbox's.
            e @ (RuntimeError::Io(_) | RuntimeError::Agent(_)) if agent_unreachable(&e) => {
                self.mark_failed(id, &format!("agent unreachable: {e}"))
                    .await
            }
            RuntimeError::Unsupported(what) => EngineError::NotSupported(what),
            e => e.into(),
        }
    }

    /// Record that a running sandbox broke (its agent is gone). Returns the error to report.
    /// (See [`agent_unreachable`] for what counts.)
    async fn mark_failed(&self, id: &str, reason: &str) -> EngineError {
        match self
            .set_state(
                id,
                SandboxState::Failed,
                &[SandboxState::Running],
                Some(reason.to_string()),
            )
            .await
        {
            Ok(true) => warn!(%id, %reason, "sandbox failed"),
            Ok(false) => {}
            Err(e) => warn!(%id, error = %e, "recording a failure"),
        }
        EngineError::InvalidState {
            id: id.to_string(),
            state: SandboxState::Failed,
            message: reason.to_string(),
        }
    }

    /// Stop without touching the sandboxes: refuse new work (503 `shutting_down`), let
    /// the lifecycle operations in flight finish (each is bounded by its deadline; one
    /// still running after `grace` is left to the next start's recovery, like after a
    /// crash), write what the store still lacks and close it. Sandboxes keep running with
    /// their cgroups and files; the next start adopts them. Only when no sandbox is left
    /// does the runtime remove what it made (its parent cgroups, a mounted loop image).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let locks: Vec<(String, Arc<tokio::sync::Mutex<()>>)> = self
            .map()
            .iter()
            .map(|(id, e)| (id.clone(), e.op.clone()))
            .collect();
        let settle = async {
            for (_, lock) in &locks {
                drop(lock.lock().await);
            }
        };
        if tokio::time::timeout(grace, settle).await.is_err() {
            let busy: Vec<&str> = locks
                .iter()
                .filter(|(_, l)| l.try_lock().is_err())
                .map(|(id, _)| id.as_str())
                .collect();
            warn!(
                ?busy,
                "operations still in flight at shutdown; the next start completes them"
            );
        }
        self.inner.ports.close_all();
        self.stop_brokers();
        let behind = self.resync_store().await;
        if behind > 0 {
            warn!(
                count = behind,
                "records the store could not take; the next start \
                 derives their state from the runtime"
            );
        }
        if let Err(e) = self.inner.store.close().await {
            warn!(error = %e, "closing the store");
        }
        let left = self.map().len();
        if left == 0 {
            if let Err(e) = self.inner.runtime.shutdown().await {
                warn!(error = %e, "runtime shutdown");
            }
            if let Some(r) = &self.inner.id_ranges {
                r.release();
            }
        } else {
            info!(
                count = left,
                "sandboxes left running for the next start to adopt"
            );
        }
    }

    /// Refuse new sandboxes, delete every sandbox, and let the runtime remove what it made
    /// (`warren serve --cleanup-on-exit`): nothing is left on the host.
    pub async fn shutdown_deleting_all(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<String> = self.map().keys().cloned().collect();
        let deletions = ids.iter().map(|id| {
            let engine = self.clone();
            async move {
                if let Err(e) = engine.delete_because(id, "shutdown").await {
                    warn!(%id, error = %e, "delete at shutdown");
                }
            }
        });
        futures::future::join_all(deletions).await;
        self.inner.ports.close_all();
        self.stop_brokers();
        self.resync_store().await;
        if let Err(e) = self.inner.store.close().await {
            warn!(error = %e, "closing the store");
        }
        if let Err(e) = self.inner.runtime.shutdown().await {
            warn!(error = %e, "runtime shutdown");
        }
        if let Some(r) = &self.inner.id_ranges {
            r.release();
        }
    }

    /// Collect a command's whole output (for the non-streaming exec response), keeping at
    /// most `max_exec_capture_bytes` per stream.
    pub async fn collect(&self, mut stream: ExecStream) -> Result<Collected, EngineError> {
        let cap = self.inner.config.max_exec_capture_bytes;
        let mut out = Collected::default();
        while let Some(item) = stream.next().await {
            match item? {
                ExecOutput::Stdout(b) => out.truncated |= push_capped(&mut out.stdout, &b, cap),
                ExecOutput::Stderr(b) => out.truncated |= push_capped(&mut out.stderr, &b, cap),
                ExecOutput::Exit(x) => {
                    out.exit = Some(x);
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The parts of a command request shared by exec and durable processes.
pub(crate) struct CommandParts {
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
    pub user: Option<ExecUser>,
    pub timeout_secs: Option<u64>,
    pub stdin: bool,
}

/// Output of a finished command.
#[derive(Debug, Default)]
pub struct Collected {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub exit: Option<ExitInfo>,
}

fn push_capped(buf: &mut Vec<u8>, data: &[u8], cap: usize) -> bool {
    let room = cap.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
    data.len() > room
}

#[cfg(test)]
mod tests;
