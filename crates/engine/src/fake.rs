//! An in-memory [`Runtime`] for testing the engine, the HTTP layer, the client and the CLI
//! without a kernel (the server's `testing` feature builds its test engine and server on it).
//!
//! It keeps a set of "live" sandboxes ([`FakeRuntime::sandboxes`]), accepts only the image
//! [`warren_api::DEFAULT_IMAGE`], and "runs" a few built-in commands (`argv[0]`):
//! - `echo ARGS...`: prints its arguments joined by spaces and a newline.
//! - `cat`: prints its stdin.
//! - `env`: prints the command's environment, `K=V` per line.
//! - `split-utf8`: stdout `café\n` with `é` split across two chunks, stderr `warn\n`.
//! - `binary`: stdout every byte value 0..=255, in two chunks.
//! - `fail CODE`: stderr `failing\n`, exits with CODE (default 1).
//! - `yes N`: N bytes of `y` in chunks of at most 4096.
//! - `killed`: dies by SIGKILL (exit 137).
//! - `sleep`: prints `started\n` and never exits (drops are counted in [`FakeRuntime::drops`]).
//! - `broken`: prints `partial\n`, then the runtime fails.
//! - anything else: the spawn fails with `not_found`.
//!
//! Files: every sandbox has an in-memory file tree (see the `fs` submodule: `/workspace`,
//! `/tmp`, `/home/user`, a `/readonly` directory that refuses changes with
//! `permission_denied`, and `/io-error` whose read fails with `io`). Writes are atomic: an
//! upload stream that fails changes nothing and is counted in
//! [`FakeRuntime::aborted_writes`]. [`FakeRuntime::disable_files`] makes every file call
//! `Unsupported`.
//!
//! Ports: see the `ports` submodule (an echo server on port 7, an HTTP server on 8080;
//! every other port refuses).
//!
//! Durable processes: see the `procs` submodule for the fake commands and their model (a
//! bounded output log per process, attachments honouring offsets, `Lost` and `Ended`).
//! [`FakeRuntime::disable_processes`] makes every process call `Unsupported`.
//!
//! Disk quotas: a sandbox created with `limits.disk_bytes` refuses an upload larger than
//! that with `quota_exceeded` (as the agent reports `EDQUOT`);
//! [`FakeRuntime::disable_disk_quota`] makes the runtime report none.
//!
//! Failures and slowness can be injected with [`FakeRuntime::fail_next_create`] and
//! [`FakeRuntime::set_create_delay`]; [`FakeRuntime::shut_down`] records a runtime shutdown.
//!
//! Clones share their state, so a test can keep one clone and hand another to the engine.

mod fs;
mod lifecycle;
pub use lifecycle::FakeState;
pub mod ports;
mod procs;

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{stream, Stream, StreamExt};
use warren_runtime::{
    AttachStream, ByteStream, ExecOutput, ExecSpec, ExecStream, ExitInfo, FileOp, FileOpResult,
    FileStat, ProcessInfo, ProcessOp, ProcessSpec, Runtime, RuntimeError, RuntimeInfo, SandboxSpec,
    WriteOptions,
};

/// A runtime that creates nothing and "runs" the fake commands listed in the module docs.
#[derive(Debug, Default, Clone)]
pub struct FakeRuntime {
    /// The ids of the live sandboxes.
    pub sandboxes: Arc<Mutex<BTreeSet<String>>>,
    /// How many exec streams were dropped before their end (i.e. "killed").
    pub drops: Arc<AtomicUsize>,
    /// Set once [`Runtime::shutdown`] has been called.
    pub shut_down: Arc<AtomicBool>,
    /// How many uploads failed mid-stream (and so changed nothing).
    pub aborted_writes: Arc<AtomicUsize>,
    /// How many times [`Runtime::create`] was called.
    pub creates: Arc<AtomicUsize>,
    fail_next_create: Arc<AtomicBool>,
    create_delay: Arc<Mutex<Duration>>,
    files: Arc<Mutex<HashMap<String, fs::Tree>>>,
    no_files: Arc<AtomicBool>,
    procs: procs::Procs,
    no_processes: Arc<AtomicBool>,
    life: lifecycle::Life,
    no_disk_quota: Arc<AtomicBool>,
    /// Disk limits of the sandboxes that have one.
    disk_limits: Arc<Mutex<HashMap<String, u64>>>,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    /// Make the next [`Runtime::create`] fail with a setup error.
    pub fn fail_next_create(&self) {
        self.fail_next_create.store(true, Ordering::SeqCst);
    }

    /// Make every [`Runtime::create`] wait this long first.
    pub fn set_create_delay(&self, d: Duration) {
        *self.create_delay.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    /// From now on every file call fails with [`RuntimeError::Unsupported`].
    pub fn disable_files(&self) {
        self.no_files.store(true, Ordering::SeqCst);
    }

    /// From now on every process call fails with [`RuntimeError::Unsupported`].
    pub fn disable_processes(&self) {
        self.no_processes.store(true, Ordering::SeqCst);
    }

    /// Report no disk quotas (as the `dir` storage backend); call before the engine opens.
    pub fn disable_disk_quota(&self) {
        self.no_disk_quota.store(true, Ordering::SeqCst);
    }

    /// The disk limit a sandbox was created with.
    pub fn disk_limit(&self, id: &str) -> Option<u64> {
        self.disk_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .copied()
    }

    fn check_processes(&self, id: &str) -> Result<(), RuntimeError> {
        if self.no_processes.load(Ordering::SeqCst) {
            return Err(RuntimeError::Unsupported("processes"));
        }
        if !self.lock().contains(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        Ok(())
    }

    /// Make a symlink at `path` in sandbox `id` (the API cannot make one).
    pub fn symlink(&self, id: &str, path: &str, target: &str) -> Result<(), RuntimeError> {
        self.with_tree(id, |t| t.symlink(path, target))
    }

    fn with_tree<T>(
        &self,
        id: &str,
        f: impl FnOnce(&mut fs::Tree) -> Result<T, RuntimeError>,
    ) -> Result<T, RuntimeError> {
        if self.no_files.load(Ordering::SeqCst) {
            return Err(RuntimeError::Unsupported("files"));
        }
        let mut trees = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let tree = trees
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        f(tree)
    }

    /// The ids of the live sandboxes, sorted.
    pub fn live(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.sandboxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn track(&self, inner: ExecStream) -> ExecStream {
        Box::pin(Tracked {
            inner,
            finished: false,
            drops: self.drops.clone(),
        })
    }
}

fn exit(code: i32) -> ExecOutput {
    ExecOutput::Exit(ExitInfo {
        exit_code: code,
        signal: None,
        timed_out: false,
        duration_us: 1500,
    })
}

fn out(s: impl Into<Bytes>) -> ExecOutput {
    ExecOutput::Stdout(s.into())
}

fn err(s: impl Into<Bytes>) -> ExecOutput {
    ExecOutput::Stderr(s.into())
}

/// Counts a drop of a stream that had not finished.
struct Tracked {
    inner: ExecStream,
    finished: bool,
    drops: Arc<AtomicUsize>,
}

impl Stream for Tracked {
    type Item = Result<ExecOutput, RuntimeError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Ok(ExecOutput::Exit(_)))) = &item {
            self.finished = true;
        }
        item
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.finished {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "fake".into(),
            cgroup: "v2".into(),
            namespaces: vec!["pid".into(), "mnt".into()],
            user_namespace: false,
            seccomp: false,
            capabilities: vec![],
            images: vec![warren_api::DEFAULT_IMAGE.into()],
            files: !self.no_files.load(Ordering::SeqCst),
            processes: !self.no_processes.load(Ordering::SeqCst),
            ports: true,
            pause: true,
            stop: true,
            snapshots: true,
            stats: true,
            storage: "memory".into(),
            reflink: false,
            storage_available: vec!["memory".into()],
            disk_quota: !self.no_disk_quota.load(Ordering::SeqCst),
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let delay = *self.create_delay.lock().unwrap_or_else(|p| p.into_inner());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.fail_next_create.swap(false, Ordering::SeqCst) {
            return Err(RuntimeError::Setup("injected failure".into()));
        }
        if spec.image != warren_api::DEFAULT_IMAGE {
            return Err(RuntimeError::ImageNotFound(spec.image.clone()));
        }
        if let Some(bytes) = spec.limits.disk_bytes {
            if self.no_disk_quota.load(Ordering::SeqCst) {
                return Err(RuntimeError::Setup("disk limits are not available".into()));
            }
            self.disk_limits
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(spec.id.clone(), bytes);
        }
        let tree = match &spec.snapshot {
            Some(snap) => self.life.snapshot_tree(snap)?,
            None => fs::Tree::new(),
        };
        self.lock().insert(spec.id.clone());
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.id.clone(), tree);
        self.procs.add_sandbox(&spec.id);
        self.life.set(&spec.id, lifecycle::FakeState::Running);
        Ok(())
    }

    // Lifecycle: see the `lifecycle` submodule.
    async fn pause(&self, id: &str) -> Result<(), RuntimeError> {
        self.pause_impl(id, true).await
    }

    async fn resume(&self, id: &str) -> Result<(), RuntimeError> {
        self.pause_impl(id, false).await
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        self.stop_impl(id).await
    }

    async fn start(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.start_impl(spec).await
    }

    async fn stats(&self, id: &str) -> Result<warren_runtime::Stats, RuntimeError> {
        self.stats_impl(id)
    }

    async fn cpu_usage_us(&self, id: &str) -> Result<u64, RuntimeError> {
        self.stats_impl(id).map(|s| s.cpu_usage_us)
    }

    async fn probe(&self, id: &str) -> Result<warren_runtime::Probe, RuntimeError> {
        Ok(self.probe_impl(id))
    }

    async fn snapshot(
        &self,
        id: &str,
        snapshot_id: &str,
    ) -> Result<warren_runtime::SnapshotMeta, RuntimeError> {
        self.snapshot_impl(id, snapshot_id).await
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        self.life.delete_snapshot(snapshot_id);
        Ok(())
    }

    async fn rollback(&self, id: &str, snapshot_id: &str) -> Result<(), RuntimeError> {
        self.rollback_impl(id, snapshot_id)
    }

    async fn reconcile_snapshots(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        Ok(self.life.retain_snapshots(keep))
    }

    async fn start_process(
        &self,
        id: &str,
        spec: ProcessSpec,
    ) -> Result<ProcessInfo, RuntimeError> {
        self.check_processes(id)?;
        self.procs.start(id, spec)
    }

    async fn list_processes(&self, id: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        self.check_processes(id)?;
        self.procs.list(id)
    }

    async fn process_op(
        &self,
        id: &str,
        selector: &str,
        op: ProcessOp,
    ) -> Result<ProcessInfo, RuntimeError> {
        self.check_processes(id)?;
        self.procs.op(id, selector, op)
    }

    async fn write_stdin(
        &self,
        id: &str,
        selector: &str,
        data: ByteStream,
    ) -> Result<ProcessInfo, RuntimeError> {
        self.check_processes(id)?;
        self.procs.write_stdin(id, selector, data).await
    }

    async fn attach(
        &self,
        id: &str,
        selector: &str,
        offset: u64,
        follow: bool,
    ) -> Result<AttachStream, RuntimeError> {
        self.check_processes(id)?;
        self.procs.attach(id, selector, offset, follow)
    }

    async fn read_file(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileStat, ByteStream), RuntimeError> {
        self.with_tree(id, |t| t.read(path))
    }

    async fn read_archive(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileStat, ByteStream), RuntimeError> {
        self.with_tree(id, |t| t.archive(path))
    }

    async fn write_file(
        &self,
        id: &str,
        path: &str,
        opts: WriteOptions,
        data: ByteStream,
    ) -> Result<FileStat, RuntimeError> {
        self.with_tree(id, |t| t.check_write(path, opts.parents))?;
        let data = match fs::drain(data).await {
            Ok(d) => d,
            Err(e) => {
                self.aborted_writes.fetch_add(1, Ordering::SeqCst);
                return Err(e);
            }
        };
        if let Some(limit) = self.disk_limit(id) {
            if data.len() as u64 > limit {
                self.aborted_writes.fetch_add(1, Ordering::SeqCst);
                return Err(RuntimeError::File {
                    code: "quota_exceeded".into(),
                    message: format!("write {path}: Disk quota exceeded (os error 122)"),
                });
            }
        }
        self.with_tree(id, |t| t.commit_write(path, opts, data))
    }

    async fn file_op(&self, id: &str, op: FileOp) -> Result<FileOpResult, RuntimeError> {
        self.with_tree(id, |t| t.op(op))
    }

    async fn search_files(
        &self,
        id: &str,
        spec: warren_runtime::SearchSpec,
    ) -> Result<warren_runtime::SearchOutcome, RuntimeError> {
        self.with_tree(id, |t| t.search(&spec))
    }

    async fn replace_files(
        &self,
        id: &str,
        spec: warren_runtime::ReplaceSpec,
    ) -> Result<warren_runtime::ReplaceOutcome, RuntimeError> {
        self.with_tree(id, |t| t.replace(&spec))
    }

    async fn exec(
        &self,
        id: &str,
        spec: ExecSpec,
        stdin: Option<Bytes>,
    ) -> Result<ExecStream, RuntimeError> {
        if !self.lock().contains(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let argv = spec.argv;
        let args = argv.get(1..).unwrap_or_default();
        let items: Vec<Result<ExecOutput, RuntimeError>> =
            match argv.first().map(String::as_str).unwrap_or_default() {
                "echo" => vec![Ok(out(format!("{}\n", args.join(" ")))), Ok(exit(0))],
                "cat" => vec![Ok(out(stdin.unwrap_or_default())), Ok(exit(0))],
                "env" => {
                    let text: String = spec.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                    vec![Ok(out(text)), Ok(exit(0))]
                }
                "split-utf8" => vec![
                    Ok(out(&b"caf\xc3"[..])),
                    Ok(err("warn\n")),
                    Ok(out(&b"\xa9\n"[..])),
                    Ok(exit(0)),
                ],
                "binary" => {
                    let all: Vec<u8> = (0..=255u8).collect();
                    vec![
                        Ok(out(all[..100].to_vec())),
                        Ok(out(all[100..].to_vec())),
                        Ok(exit(0)),
                    ]
                }
                "fail" => {
                    let code = args.first().and_then(|c| c.parse().ok()).unwrap_or(1);
                    vec![Ok(err("failing\n")), Ok(exit(code))]
                }
                "yes" => {
                    let mut n: usize = args.first().and_then(|c| c.parse().ok()).unwrap_or(10);
                    let mut items = Vec::new();
                    while n > 0 {
                        let k = n.min(4096);
                        items.push(Ok(out(vec![b'y'; k])));
                        n -= k;
                    }
                    items.push(Ok(exit(0)));
                    items
                }
                "killed" => vec![Ok(ExecOutput::Exit(ExitInfo {
                    exit_code: 137,
                    signal: Some(9),
                    timed_out: true,
                    duration_us: 2_000_000,
                }))],
                "sleep" => {
                    let s = stream::iter(vec![Ok(out("started\n"))]).chain(stream::pending());
                    return Ok(self.track(Box::pin(s)));
                }
                "broken" => vec![
                    Ok(out("partial\n")),
                    Err(RuntimeError::Setup("agent went away".into())),
                ],
                other => {
                    return Err(RuntimeError::Spawn {
                        code: "not_found".into(),
                        message: format!("{other}: command not found"),
                    })
                }
            };
        Ok(self.track(Box::pin(stream::iter(items))))
    }

    // Ports: see the `ports` submodule (echo on 7, HTTP on 8080).
    async fn connect_port(
        &self,
        id: &str,
        port: u16,
    ) -> Result<Box<dyn warren_runtime::PortStream>, RuntimeError> {
        if !self.lock().contains(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        ports::connect(port)
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        self.disk_limits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.life.forget(id);
        self.lock().remove(id);
        self.procs.remove_sandbox(id);
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(())
    }

    async fn reconcile(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let gone: Vec<String> = self
            .live()
            .into_iter()
            .filter(|id| !keep.contains(id))
            .collect();
        for id in &gone {
            self.destroy(id).await?;
        }
        Ok(gone)
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        self.shut_down.store(true, Ordering::SeqCst);
        Ok(())
    }
}
