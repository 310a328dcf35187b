//! Warren's engine: the sandbox state machine, the store, the TTL reaper.
//!
//! The engine owns no kernel details: it drives a [`warren_runtime::Runtime`] and keeps the
//! records. It is what the HTTP server calls.
//!
//! Work that changes the host (creating, deleting) runs in tasks of its own, never in the
//! caller's future: a client that hangs up mid-request cannot leave a half-made sandbox.

mod error;
pub mod fake;
pub mod files;
mod ports;
pub mod processes;
mod store;
mod validate;

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

pub use error::EngineError;
pub use ports::{address_to_url, PortForward};
pub use store::Record;
pub use warren_runtime::{ByteStream, ExecOutput, ExecStream, ExitInfo};

use warren_api::{
    Capabilities, CreateSandboxRequest, ExecRequest, ExecUser, Features, Isolation, Limits,
    Resources, Sandbox, SandboxState, DEFAULT_IMAGE,
};
use warren_runtime::{ExecSpec, Runtime, RuntimeError, SandboxSpec};

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
    /// Deadline for the runtime to bring a sandbox up; past it the create fails and is
    /// cleaned up.
    pub create_deadline: Duration,
    /// How often the reaper looks for expired sandboxes.
    pub reap_interval: Duration,
    /// Output log capacity of a durable process that asks for none (bytes).
    pub default_process_log_bytes: u64,
}

impl EngineConfig {
    /// Defaults sized from this host (cpus, memory).
    pub fn with_defaults(data_dir: PathBuf) -> EngineConfig {
        let host_cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let host_mem_mib = host_memory_mib().unwrap_or(4096);
        EngineConfig {
            data_dir,
            default_timeout_secs: 300,
            max_timeout_secs: 24 * 3600,
            max_sandboxes: 0,
            default_resources: Resources {
                cpus: Some(1.0_f64.min(host_cpus)),
                memory_mib: Some(1024.min(host_mem_mib)),
                pids: Some(1024),
            },
            max_cpus: host_cpus,
            max_memory_mib: host_mem_mib,
            max_pids: 65536,
            max_request_bytes: 16 * 1024 * 1024,
            max_exec_capture_bytes: 16 * 1024 * 1024,
            create_deadline: Duration::from_secs(30),
            reap_interval: Duration::from_millis(500),
            default_process_log_bytes: 4 * 1024 * 1024,
        }
    }
}

fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
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
}

struct Entry {
    record: Record,
    /// Becomes true once the sandbox is gone; concurrent deletes wait on it.
    gone: watch::Sender<bool>,
}

impl Entry {
    fn new(record: Record) -> Entry {
        Entry {
            record,
            gone: watch::channel(false).0,
        }
    }
}

fn to_api(r: &Record) -> Sandbox {
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
    }
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

fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let suffix: String = (0..12)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("sb-{suffix}")
}

fn expiry(secs: u64) -> DateTime<Utc> {
    let secs = i64::try_from(secs).unwrap_or(i64::MAX);
    Utc::now() + chrono::Duration::try_seconds(secs).unwrap_or(chrono::Duration::MAX)
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_CWD: &str = "/workspace";

impl Engine {
    /// Open the store under `config.data_dir` and clean what a crashed run left: every
    /// sandbox of an earlier run is torn down by the runtime and its record marked `failed`
    /// (the reaper removes such records when they expire).
    pub async fn open(
        config: EngineConfig,
        runtime: Arc<dyn Runtime>,
    ) -> Result<Engine, EngineError> {
        let store = Store::open(&config.data_dir)?;
        let cleaned = runtime.cleanup_all().await?;
        if !cleaned.is_empty() {
            info!(
                count = cleaned.len(),
                "cleaned sandboxes left by an earlier run"
            );
        }
        let mut map = HashMap::new();
        for mut r in store.load_all().await? {
            if r.state != SandboxState::Failed {
                r.state = SandboxState::Failed;
                r.failure_reason = Some(
                    "the daemon restarted; this sandbox's processes were stopped and its files removed"
                        .into(),
                );
                store
                    .set_state(&r.id, r.state, r.failure_reason.clone())
                    .await?;
            }
            map.insert(r.id.clone(), Entry::new(r));
        }
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                runtime,
                store,
                sandboxes: Mutex::new(map),
                shutting_down: false.into(),
                ports: ports::Forwards::default(),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock would be a bug; recover the data rather than
        // wedge every later request.
        self.inner
            .sandboxes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn capabilities(&self) -> Capabilities {
        let info = self.inner.runtime.info();
        let c = &self.inner.config;
        Capabilities {
            version: env!("CARGO_PKG_VERSION").to_string(),
            runtime: info.name,
            images: info.images,
            cgroup: info.cgroup,
            isolation: Isolation {
                namespaces: info.namespaces,
                user_namespace: info.user_namespace,
                seccomp: info.seccomp,
                capabilities: info.capabilities,
                network: "loopback".into(),
            },
            features: Features {
                exec: true,
                exec_stream: true,
                pause: false,
                snapshots: false,
                rollback: false,
                fork: false,
                processes: info.processes,
                files: info.files,
                ports: info.ports,
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
            },
        }
    }

    fn check_open(&self) -> Result<(), EngineError> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// Validate, record, create in the runtime. Returns the sandbox in state `running`.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<Sandbox, EngineError> {
        self.check_open()?;
        let c = &self.inner.config;
        let image = req
            .image
            .clone()
            .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        if !self.inner.runtime.info().images.contains(&image) {
            return Err(EngineError::ImageNotFound(image));
        }
        let timeout_secs =
            validate::timeout(req.timeout_secs.unwrap_or(c.default_timeout_secs), c)?;
        let resources = validate::resources(req.resources.as_ref(), c)?;
        validate::env("env", &req.env)?;
        validate::metadata(&req.metadata)?;

        let now = Utc::now();
        let record = Record {
            id: new_id(),
            state: SandboxState::Creating,
            image,
            created_at: now,
            expires_at: expiry(timeout_secs),
            timeout_secs,
            metadata: req.metadata,
            env: req.env,
            resources,
            failure_reason: None,
        };
        {
            // Admission and insertion under one lock, so concurrent creates cannot overshoot.
            let mut map = self.map();
            if c.max_sandboxes > 0 {
                let live = map
                    .values()
                    .filter(|e| e.record.state != SandboxState::Failed)
                    .count() as u64;
                if live >= c.max_sandboxes {
                    return Err(EngineError::LimitReached(format!(
                        "the server runs at most {} sandboxes",
                        c.max_sandboxes
                    )));
                }
            }
            map.insert(record.id.clone(), Entry::new(record.clone()));
        }
        // The rest runs detached: if the client goes away, the sandbox still either comes
        // up completely or is removed completely.
        let engine = self.clone();
        tokio::spawn(async move { engine.finish_create(record).await })
            .await
            .map_err(|e| EngineError::Store(format!("create task failed: {e}")))?
    }

    async fn finish_create(&self, record: Record) -> Result<Sandbox, EngineError> {
        let id = record.id.clone();
        if let Err(e) = self.inner.store.insert(&record).await {
            self.map().remove(&id);
            return Err(e);
        }
        let spec = SandboxSpec {
            id: id.clone(),
            image: record.image.clone(),
            limits: warren_runtime::Limits {
                cpus: record.resources.cpus,
                memory_bytes: record.resources.memory_mib.map(|m| m * 1024 * 1024),
                pids: record.resources.pids,
            },
        };
        let result = match tokio::time::timeout(
            self.inner.config.create_deadline,
            self.inner.runtime.create(&spec),
        )
        .await
        {
            Ok(r) => r.map_err(EngineError::from),
            Err(_) => Err(EngineError::Runtime(RuntimeError::Setup(format!(
                "sandbox did not come up within {:?}",
                self.inner.config.create_deadline
            )))),
        };
        if let Err(e) = result {
            warn!(%id, error = %e, "create failed");
            self.undo_create(&id).await;
            return Err(e);
        }
        if let Err(e) = self
            .inner
            .store
            .set_state(&id, SandboxState::Running, None)
            .await
        {
            self.undo_create(&id).await;
            return Err(e);
        }
        {
            let mut map = self.map();
            if let Some(e) = map.get_mut(&id) {
                if e.record.state == SandboxState::Creating {
                    e.record.state = SandboxState::Running;
                    info!(%id, "sandbox running");
                    return Ok(to_api(&e.record));
                }
            }
        }
        // Deleted while it was being made: the deletion was left to us.
        self.finish_delete(&id).await;
        Err(EngineError::InvalidState {
            id,
            state: SandboxState::Deleting,
            message: "the sandbox was deleted while it was being created".into(),
        })
    }

    /// Remove every trace of a sandbox whose creation failed.
    async fn undo_create(&self, id: &str) {
        self.inner.ports.close_sandbox(id);
        if let Err(e) = self.inner.runtime.destroy(id).await {
            warn!(%id, error = %e, "cleanup after a failed create");
        }
        let _ = self.inner.store.remove(id).await;
        if let Some(e) = self.map().remove(id) {
            e.gone.send_replace(true);
        }
    }

    pub async fn get(&self, id: &str) -> Result<Sandbox, EngineError> {
        self.map()
            .get(id)
            .map(|e| to_api(&e.record))
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))
    }

    /// Sandboxes whose metadata contains every `filter` pair, oldest first.
    pub async fn list(
        &self,
        filter: &BTreeMap<String, String>,
    ) -> Result<Vec<Sandbox>, EngineError> {
        let mut out: Vec<Sandbox> = self
            .map()
            .values()
            .filter(|e| {
                filter
                    .iter()
                    .all(|(k, v)| e.record.metadata.get(k) == Some(v))
            })
            .map(|e| to_api(&e.record))
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Delete and wait until the sandbox is gone. Deleting a sandbox that is already being
    /// deleted waits for that deletion; an unknown id is `sandbox_not_found`.
    pub async fn delete(&self, id: &str) -> Result<(), EngineError> {
        let (mut gone, start) = {
            let mut map = self.map();
            let entry = map
                .get_mut(id)
                .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
            let rx = entry.gone.subscribe();
            let prev = entry.record.state;
            entry.record.state = SandboxState::Deleting;
            // A sandbox still being created is torn down by its create task.
            (
                rx,
                !matches!(prev, SandboxState::Deleting | SandboxState::Creating),
            )
        };
        if start {
            let engine = self.clone();
            let id = id.to_string();
            // Detached, so a client hanging up cannot stop a deletion halfway.
            tokio::spawn(async move { engine.finish_delete(&id).await });
        }
        let _ = gone.wait_for(|g| *g).await;
        Ok(())
    }

    async fn finish_delete(&self, id: &str) {
        self.inner.ports.close_sandbox(id);
        if let Err(e) = self
            .inner
            .store
            .set_state(id, SandboxState::Deleting, None)
            .await
        {
            warn!(%id, error = %e, "recording deletion");
        }
        match self.inner.runtime.destroy(id).await {
            Ok(()) => {
                if let Err(e) = self.inner.store.remove(id).await {
                    warn!(%id, error = %e, "removing the record");
                }
                if let Some(e) = self.map().remove(id) {
                    e.gone.send_replace(true);
                }
                info!(%id, "sandbox deleted");
            }
            Err(err) => {
                // Keep the record as failed so it stays visible and deletable again.
                let reason = format!("delete failed: {err}");
                warn!(%id, %reason);
                let _ = self
                    .inner
                    .store
                    .set_state(id, SandboxState::Failed, Some(reason.clone()))
                    .await;
                if let Some(e) = self.map().get_mut(id) {
                    e.record.state = SandboxState::Failed;
                    e.record.failure_reason = Some(reason);
                    e.gone.send_replace(true);
                    e.gone = watch::channel(false).0;
                }
            }
        }
    }

    pub async fn set_timeout(&self, id: &str, timeout_secs: u64) -> Result<Sandbox, EngineError> {
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
        Ok(to_api(&e.record))
    }

    /// Validate and start a command; the stream yields output and ends with `Exit`.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError> {
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
        match self.inner.runtime.exec(id, spec, stdin).await {
            Ok(stream) => Ok(stream),
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
        let cwd = parts.cwd.unwrap_or_else(|| DEFAULT_CWD.to_string());
        validate::cwd(&cwd)?;
        let timeout_ms = parts
            .timeout_secs
            .map(validate::exec_timeout)
            .transpose()?
            .map(|s| s * 1000);
        let sandbox_env = {
            let map = self.map();
            let e = map
                .get(id)
                .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
            if e.record.state != SandboxState::Running {
                return Err(EngineError::InvalidState {
                    id: id.to_string(),
                    state: e.record.state,
                    message: "commands run only in a running sandbox".into(),
                });
            }
            e.record.env.clone()
        };
        let user = parts.user.unwrap_or_default();
        let (uid, home, name) = match user {
            ExecUser::Root => (0, "/root", "root"),
            ExecUser::User => (1000, "/home/user", "user"),
        };
        let mut env: BTreeMap<String, String> = [
            ("PATH", DEFAULT_PATH),
            ("HOME", home),
            ("USER", name),
            ("LOGNAME", name),
            ("HOSTNAME", id),
            ("LANG", "C.UTF-8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(sandbox_env);
        env.extend(parts.env);
        Ok(ExecSpec {
            argv: parts.cmd,
            env: env.into_iter().collect(),
            cwd,
            uid,
            gid: uid,
            timeout_ms,
            stdin: parts.stdin,
        })
    }

    /// Map a runtime failure to start a command; a sandbox whose agent is gone is marked
    /// failed.
    pub(crate) async fn spawn_error(&self, id: &str, err: RuntimeError) -> EngineError {
        match err {
            RuntimeError::Spawn { code, message } => EngineError::Spawn {
                code: match code.as_str() {
                    "not_found" => "command_not_found",
                    "bad_cwd" => "invalid_cwd",
                    _ => "spawn_failed",
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
        let changed = {
            let mut map = self.map();
            match map.get_mut(id) {
                Some(e) if e.record.state == SandboxState::Running => {
                    e.record.state = SandboxState::Failed;
                    e.record.failure_reason = Some(reason.to_string());
                    true
                }
                _ => false,
            }
        };
        if changed {
            warn!(%id, %reason, "sandbox failed");
            let _ = self
                .inner
                .store
                .set_state(id, SandboxState::Failed, Some(reason.to_string()))
                .await;
        }
        EngineError::InvalidState {
            id: id.to_string(),
            state: SandboxState::Failed,
            message: reason.to_string(),
        }
    }

    /// Delete every sandbox whose deadline has passed (running or failed). Returns the ids.
    pub async fn reap_expired(&self) -> Vec<String> {
        let now = Utc::now();
        let expired: Vec<String> = self
            .map()
            .values()
            .filter(|e| {
                e.record.expires_at <= now
                    && matches!(e.record.state, SandboxState::Running | SandboxState::Failed)
            })
            .map(|e| e.record.id.clone())
            .collect();
        for id in &expired {
            info!(%id, "sandbox expired");
            let engine = self.clone();
            let id = id.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.delete(&id).await {
                    warn!(%id, error = %e, "reaping");
                }
            });
        }
        expired
    }

    /// Start the TTL reaper (runs until the process ends).
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(engine.inner.config.reap_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if engine
                    .inner
                    .shutting_down
                    .load(std::sync::atomic::Ordering::SeqCst)
                {
                    return;
                }
                engine.reap_expired().await;
            }
        })
    }

    /// Refuse new sandboxes, delete every sandbox, and let the runtime remove what it made.
    pub async fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<String> = self.map().keys().cloned().collect();
        let deletions = ids.iter().map(|id| {
            let engine = self.clone();
            async move {
                if let Err(e) = engine.delete(id).await {
                    warn!(%id, error = %e, "delete at shutdown");
                }
            }
        });
        futures::future::join_all(deletions).await;
        self.inner.ports.close_all();
        if let Err(e) = self.inner.runtime.shutdown().await {
            warn!(error = %e, "runtime shutdown");
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
