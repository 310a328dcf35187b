//! Pause, resume, stop and start; the gate every data-plane call goes through
//! ([`Engine::ready`], which resumes `auto_resume` sandboxes); activity tracking for the
//! idle policy; stats.
//!
//! Every transition holds the sandbox's operation lock, moves it to a transitional state,
//! asks the runtime within a deadline, and moves it to the target state — or to `failed`
//! with the reason when the deadline passes or the runtime leaves it in an unknown state.
//! Repeating a completed transition is a no-op success; a transition the state does not
//! allow is `invalid_transition` (409).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tracing::{info, warn};
use warren_api::{Sandbox, SandboxState, SandboxStats};
use warren_runtime::RuntimeError;

use crate::{expiry, Engine, EngineError, Record};

/// How long each transitional state may last.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadlines {
    pub pause: Duration,
    pub resume: Duration,
    pub stop: Duration,
    pub start: Duration,
    pub snapshot: Duration,
    pub rollback: Duration,
    pub delete: Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            pause: Duration::from_secs(10),
            resume: Duration::from_secs(10),
            stop: Duration::from_secs(30),
            start: Duration::from_secs(30),
            snapshot: Duration::from_secs(600),
            rollback: Duration::from_secs(600),
            delete: Duration::from_secs(60),
        }
    }
}

/// How long past a transition's deadline the record of its failure may take to write.
const STORE_GRACE: Duration = Duration::from_secs(1);

/// What the idle policy looks at, besides CPU.
pub(crate) struct Activity {
    /// Last API call that concerned the sandbox.
    pub last_call: tokio::time::Instant,
    /// Last time the sandbox was seen busy (CPU above the threshold, or something attached).
    pub busy_at: tokio::time::Instant,
    /// Streams and terminals attached right now.
    pub attached: Arc<AtomicUsize>,
    /// Last CPU sample: (when, cumulative µs).
    pub cpu_sample: Option<(tokio::time::Instant, u64)>,
}

impl Activity {
    pub fn new() -> Activity {
        let now = tokio::time::Instant::now();
        Activity {
            last_call: now,
            busy_at: now,
            attached: Arc::new(AtomicUsize::new(0)),
            cpu_sample: None,
        }
    }
}

/// Counts an attached stream while alive.
pub(crate) struct Attached(Arc<AtomicUsize>);

impl Attached {
    pub fn new(counter: Arc<AtomicUsize>) -> Attached {
        counter.fetch_add(1, Ordering::SeqCst);
        Attached(counter)
    }
}

/// A connection to a port inside a sandbox that counts as attached while open (a dev
/// server in use through the proxy or a forward keeps the sandbox from idling out).
pub(crate) struct AttachedPort {
    inner: Box<dyn warren_runtime::PortStream>,
    _attached: Option<Attached>,
}

impl tokio::io::AsyncRead for AttachedPort {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for AttachedPort {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AttachedPort {
    pub fn new(
        inner: Box<dyn warren_runtime::PortStream>,
        counter: Option<Arc<AtomicUsize>>,
    ) -> AttachedPort {
        AttachedPort {
            inner,
            _attached: counter.map(Attached::new),
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `Ok` when the record's state lets `what` happen (the sandbox is running); otherwise
/// the error a client should see.
pub(crate) fn require_running(id: &str, r: &Record, what: &str) -> Result<(), EngineError> {
    match r.state {
        SandboxState::Running => Ok(()),
        SandboxState::Paused | SandboxState::Pausing => Err(EngineError::Paused(id.to_string())),
        SandboxState::Stopped | SandboxState::Stopping => Err(EngineError::Stopped(id.to_string())),
        state => Err(EngineError::InvalidState {
            id: id.to_string(),
            state,
            message: format!("{what} only in a running sandbox"),
        }),
    }
}

/// Running, paused or stopped: the runtime holds the sandbox's files and no operation is
/// in flight (what stats, snapshots and rollback need).
pub(crate) fn settled(state: SandboxState) -> bool {
    matches!(
        state,
        SandboxState::Running | SandboxState::Paused | SandboxState::Stopped
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Pause,
    Resume,
    Stop,
    Start,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Stop => "stop",
            Op::Start => "start",
        }
    }

    /// (state while it runs, state when done)
    fn states(self) -> (SandboxState, SandboxState) {
        match self {
            Op::Pause => (SandboxState::Pausing, SandboxState::Paused),
            Op::Resume => (SandboxState::Resuming, SandboxState::Running),
            Op::Stop => (SandboxState::Stopping, SandboxState::Stopped),
            Op::Start => (SandboxState::Starting, SandboxState::Running),
        }
    }

    /// States this operation may start from.
    fn allowed_from(self) -> &'static [SandboxState] {
        match self {
            Op::Pause => &[SandboxState::Running],
            Op::Resume => &[SandboxState::Paused],
            Op::Stop => &[SandboxState::Running, SandboxState::Paused],
            Op::Start => &[SandboxState::Stopped],
        }
    }
}

/// Why a runtime operation did not complete.
#[derive(Debug, Clone)]
pub(crate) enum OpFailure {
    /// The runtime reported an error (its state is as its contract says on error).
    Failed(String),
    /// The deadline passed (the runtime's state is unknown).
    Deadline(String),
}

impl OpFailure {
    pub fn reason(&self) -> &str {
        match self {
            OpFailure::Failed(r) | OpFailure::Deadline(r) => r,
        }
    }

    pub fn into_error(self) -> EngineError {
        match self {
            OpFailure::Failed(r) => EngineError::Runtime(RuntimeError::Setup(r)),
            OpFailure::Deadline(r) => EngineError::DeadlineExceeded(r),
        }
    }
}

/// Run `fut` within `deadline`; a miss is an error naming the operation.
pub(crate) async fn within<T>(
    deadline: Duration,
    what: &str,
    fut: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, OpFailure> {
    match tokio::time::timeout(deadline, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(OpFailure::Failed(format!("{what} failed: {e}"))),
        Err(_) => Err(OpFailure::Deadline(format!(
            "{what} did not finish within {deadline:?}"
        ))),
    }
}

impl Engine {
    pub async fn pause(&self, id: &str) -> Result<Sandbox, EngineError> {
        self.visible(id)?;
        self.transition(id, Op::Pause, "api").await
    }

    pub async fn resume(&self, id: &str) -> Result<Sandbox, EngineError> {
        self.visible(id)?;
        self.transition(id, Op::Resume, "api").await
    }

    pub async fn stop(&self, id: &str) -> Result<Sandbox, EngineError> {
        self.visible(id)?;
        self.transition(id, Op::Stop, "api").await
    }

    pub async fn start(&self, id: &str) -> Result<Sandbox, EngineError> {
        self.visible(id)?;
        self.transition(id, Op::Start, "api").await
    }

    fn check_supported(&self, op: Op) -> Result<(), EngineError> {
        let info = self.inner.runtime.info();
        match op {
            Op::Pause | Op::Resume if !info.pause => Err(EngineError::NotSupported("pause")),
            Op::Stop | Op::Start if !info.stop => Err(EngineError::NotSupported("stop")),
            _ => Ok(()),
        }
    }

    /// The operation lock of a sandbox.
    pub(crate) fn op_lock(&self, id: &str) -> Result<Arc<tokio::sync::Mutex<()>>, EngineError> {
        self.map()
            .get(id)
            .map(|e| e.op.clone())
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))
    }

    pub(crate) fn state_of(&self, id: &str) -> Result<SandboxState, EngineError> {
        self.map()
            .get(id)
            .map(|e| e.record.state)
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))
    }

    pub(crate) async fn transition(
        &self,
        id: &str,
        op: Op,
        why: &str,
    ) -> Result<Sandbox, EngineError> {
        self.check_open()?;
        self.check_supported(op)?;
        self.touch(id);
        let lock = self.op_lock(id)?;
        let _guard = lock.lock_owned().await;
        self.transition_locked(id, op, why).await
    }

    /// [`Engine::transition`] with the operation lock held by the caller.
    ///
    /// The deadline covers the whole transition, store writes included. A store write
    /// that fails (a full disk) or misses the deadline never leaves the sandbox in a
    /// transitional state: before the runtime was asked, the sandbox goes back to the
    /// state it was in; after, it is in the state the runtime is really in (the operation
    /// happened). Either way the call fails with `store_error` and the record is written
    /// again once the store takes writes (see [`Engine::resync_store`]).
    pub(crate) async fn transition_locked(
        &self,
        id: &str,
        op: Op,
        why: &str,
    ) -> Result<Sandbox, EngineError> {
        let (during, done) = op.states();
        let state = self.state_of(id)?;
        if state == done {
            return self.view(id);
        }
        if !op.allowed_from().contains(&state) {
            return Err(EngineError::InvalidTransition {
                id: id.to_string(),
                state,
                op: op.name(),
            });
        }
        let d = &self.inner.config.deadlines;
        let deadline = match op {
            Op::Pause => d.pause,
            Op::Resume => d.resume,
            Op::Stop => d.stop,
            Op::Start => d.start,
        };
        let until = tokio::time::Instant::now() + deadline;
        match self
            .set_state_until(id, during, &[state], Some(why.to_string()), Some(until))
            .await
        {
            Ok(true) => {}
            // Deleted in the meantime.
            Ok(false) => return Err(self.changed_meanwhile(id, op)),
            Err(e) => {
                // Nothing was asked of the runtime: back to where it was.
                self.revert_state(id, during, state, "the change could not be recorded");
                return Err(e);
            }
        }
        let rt = &self.inner.runtime;
        let sid = crate::sandbox_id(id)?;
        let id = &sid;
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let result = match op {
            Op::Pause => within(left, "pause", rt.pause(id)).await,
            Op::Resume => within(left, "resume", rt.resume(id)).await,
            Op::Stop => {
                self.inner.ports.close_sandbox(id);
                within(left, "stop", rt.stop(id)).await
            }
            Op::Start => match self.range_for_start(id).await {
                Ok(record) => {
                    let spec = self.runtime_spec(&record, None)?;
                    within(left, "start", rt.start(&spec)).await
                }
                Err(e) => Err(OpFailure::Failed(format!("start failed: {e}"))),
            },
        };
        match result {
            Ok(()) => {
                if matches!(op, Op::Resume | Op::Start) {
                    // The timeout counts again from now.
                    self.restart_clock_until(id, Some(until)).await;
                }
                if op == Op::Start {
                    // A new agent: the broker's listener is bound again before anything runs.
                    self.serve_credentials(id.as_str()).await;
                }
                match self
                    .set_state_until(id, done, &[during], Some(why.to_string()), Some(until))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => return Err(self.changed_meanwhile(id, op)),
                    // The sandbox is `done`, as the runtime is; only the record is behind.
                    Err(e) => {
                        return Err(EngineError::Store(format!(
                            "the sandbox is {done}, but the change could not be recorded \
                             (it is written again once the store takes writes): {e}"
                        )))
                    }
                }
                info!(%id, op = op.name(), reason = why, "sandbox {}", done);
                self.view(id)
            }
            Err(failure) => {
                let reason = failure.reason().to_string();
                warn!(%id, %reason, "transition failed");
                // A failed start leaves the files and nothing running: still stopped.
                let next = if op == Op::Start && matches!(failure, OpFailure::Failed(_)) {
                    SandboxState::Stopped
                } else {
                    SandboxState::Failed
                };
                // Give the failure's record a moment past the deadline: it is the more
                // useful error, and the sandbox is `next` in memory either way.
                let grace = until.max(tokio::time::Instant::now()) + STORE_GRACE;
                if let Err(e) = self
                    .set_state_until(id, next, &[during], Some(reason), Some(grace))
                    .await
                {
                    warn!(%id, error = %e, "recording a failed transition");
                }
                Err(failure.into_error())
            }
        }
    }

    /// Reset the sandbox's expiry to `timeout_secs` from now (recorded by `until`).
    async fn restart_clock_until(&self, id: &str, until: Option<tokio::time::Instant>) {
        let update = {
            let mut map = self.map();
            map.get_mut(id).map(|e| {
                e.record.expires_at = expiry(e.record.timeout_secs);
                (e.record.expires_at, e.record.timeout_secs)
            })
        };
        if let Some((at, secs)) = update {
            let write = self.inner.store.set_expiry(id, at, secs);
            let written = match until {
                None => write.await,
                Some(t) => tokio::time::timeout_at(t, write)
                    .await
                    .unwrap_or_else(|_| Err(EngineError::Store("deadline passed".into()))),
            };
            if let Err(e) = written {
                warn!(%id, error = %e, "recording the new expiry");
                self.mark_unsynced(id);
            }
        }
    }

    /// Note an API call about the sandbox (for the idle policy).
    pub(crate) fn touch(&self, id: &str) {
        if let Some(e) = self.map().get_mut(id) {
            e.activity.last_call = tokio::time::Instant::now();
        }
    }

    /// Gate of every exec, process, file and port call: `Ok` once the sandbox runs. A paused
    /// or stopped sandbox is resumed or started first when it was created with
    /// `auto_resume`; otherwise the call fails with `sandbox_paused` / `sandbox_stopped`.
    pub(crate) async fn ready(&self, id: &str) -> Result<(), EngineError> {
        for _ in 0..4 {
            let (state, auto) = {
                let mut map = self.map();
                let e = map
                    .get_mut(id)
                    .filter(|e| !e.record.lifecycle.pool_member)
                    .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
                e.activity.last_call = tokio::time::Instant::now();
                (e.record.state, e.record.lifecycle.auto_resume)
            };
            match state {
                SandboxState::Running => return Ok(()),
                SandboxState::Paused | SandboxState::Pausing | SandboxState::Resuming if auto => {
                    self.transition(id, Op::Resume, "auto_resume").await?;
                }
                SandboxState::Stopped | SandboxState::Stopping | SandboxState::Starting if auto => {
                    self.transition(id, Op::Start, "auto_resume").await?;
                }
                SandboxState::Resuming | SandboxState::Starting => {
                    // Wait for the transition in flight, then look again.
                    let lock = self.op_lock(id)?;
                    drop(lock.lock_owned().await);
                }
                _ => {
                    let map = self.map();
                    let e = map
                        .get(id)
                        .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
                    return require_running(id, &e.record, "this works");
                }
            }
        }
        let state = self.state_of(id)?;
        Err(EngineError::InvalidState {
            id: id.to_string(),
            state,
            message: "the sandbox keeps changing state; try again".into(),
        })
    }

    /// The counter of attached streams of `id` (see [`Activity::attached`]).
    pub(crate) fn attach_counter(&self, id: &str) -> Option<Arc<AtomicUsize>> {
        self.map().get(id).map(|e| e.activity.attached.clone())
    }

    /// Wrap a stream the client keeps open (exec output, attachments, watches): while it
    /// lives the sandbox is not idle.
    pub(crate) fn attached<S: Stream + Send + 'static>(
        &self,
        id: &str,
        stream: S,
    ) -> std::pin::Pin<Box<dyn Stream<Item = S::Item> + Send>> {
        match self.attach_counter(id) {
            Some(c) => {
                let guard = Attached::new(c);
                Box::pin(stream.map(move |item| {
                    let _ = &guard;
                    item
                }))
            }
            None => Box::pin(stream),
        }
    }

    /// Usage figures of a sandbox that exists in the runtime (running, paused or stopped).
    pub async fn stats(&self, id: &str) -> Result<SandboxStats, EngineError> {
        self.visible(id)?;
        let state = self.state_of(id)?;
        if !self.inner.runtime.info().stats {
            return Err(EngineError::NotSupported("stats"));
        }
        if !settled(state) {
            return Err(EngineError::InvalidState {
                id: id.to_string(),
                state,
                message: "stats exist for running, paused and stopped sandboxes".into(),
            });
        }
        let s = self
            .inner
            .runtime
            .stats(&crate::sandbox_id(id)?)
            .await
            .map_err(|e| match e {
                RuntimeError::Unsupported(w) => EngineError::NotSupported(w),
                e => EngineError::Runtime(e),
            })?;
        // The sandbox's own limit: a gVisor sandbox's cgroup also holds its kernel (the
        // sentry), with room for it on top (see `Launcher::host_limits`).
        let limit = self
            .map()
            .get(id)
            .and_then(|e| e.record.resources.memory_mib)
            .map(|m| m << 20);
        Ok(SandboxStats {
            state: Some(state),
            cpu_usage_us: s.cpu_usage_us,
            memory_bytes: s.memory_bytes,
            memory_peak_bytes: s.memory_peak_bytes,
            memory_limit_bytes: limit.or(s.memory_limit_bytes),
            pids: s.pids,
            disk_bytes: s.disk_bytes,
            net_rx_bytes: s.net_rx_bytes,
            net_tx_bytes: s.net_tx_bytes,
        })
    }

    /// A sandbox's usage now, with its CPU use measured over `window` (two samples that
    /// far apart) as a share of the CPUs it may use: its `cpus` limit, else the host's.
    pub async fn usage(&self, id: &str, window: Duration) -> Result<Usage, EngineError> {
        let sandbox = self.get(id).await?;
        let before = self.stats(id).await?;
        let t = std::time::Instant::now();
        tokio::time::sleep(window).await;
        let stats = self.stats(id).await?;
        let cpus = sandbox
            .resources
            .cpus
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64))
            .max(0.01);
        let used_us = stats.cpu_usage_us.saturating_sub(before.cpu_usage_us) as f64;
        let wall_us = t.elapsed().as_micros().max(1) as f64;
        Ok(Usage {
            sandbox,
            stats,
            cpus,
            cpu_used_pct: (used_us / wall_us / cpus * 100.0).clamp(0.0, 100.0),
        })
    }
}

/// What [`Engine::usage`] measured.
#[derive(Debug, Clone)]
pub struct Usage {
    pub sandbox: Sandbox,
    /// The second sample.
    pub stats: SandboxStats,
    /// The CPUs the sandbox may use.
    pub cpus: f64,
    /// Its CPU use over the window, in percent of `cpus`.
    pub cpu_used_pct: f64,
}

impl Engine {
    /// The error for a transition whose sandbox changed under it (deleted meanwhile): 409
    /// with the state it is in now (or 404 when it is gone).
    fn changed_meanwhile(&self, id: &str, op: Op) -> EngineError {
        match self.state_of(id) {
            Ok(state) => EngineError::InvalidTransition {
                id: id.to_string(),
                state,
                op: op.name(),
            },
            Err(e) => e,
        }
    }
}
