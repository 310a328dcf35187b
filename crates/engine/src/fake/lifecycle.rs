//! The fake's lifecycle: a state per sandbox (running, paused, stopped, broken), snapshots
//! as copies of the in-memory file tree, stats from the tree and a CPU counter tests set.
//!
//! Stopping drops every durable process (like the real runtime: the agent ends) and keeps
//! the files. [`FakeRuntime::set_op_delay`] makes pause/resume/stop/start/snapshot slow, to
//! test deadlines; [`FakeRuntime::break_sandbox`] makes a sandbox probe as broken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use warren_runtime::{Probe, RuntimeError, SandboxSpec, SnapshotMeta, Stats};

use super::{fs, FakeRuntime};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeState {
    Running,
    Paused,
    Stopped,
    Broken,
}

#[derive(Debug, Default, Clone)]
pub(crate) struct Life {
    inner: Arc<Mutex<LifeInner>>,
}

#[derive(Debug, Default)]
struct LifeInner {
    states: HashMap<String, FakeState>,
    snapshots: HashMap<String, fs::Tree>,
    cpu_us: HashMap<String, u64>,
    op_delay: Duration,
}

impl Life {
    fn lock(&self) -> MutexGuard<'_, LifeInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set(&self, id: &str, s: FakeState) {
        self.lock().states.insert(id.to_string(), s);
    }

    pub(crate) fn forget(&self, id: &str) {
        let mut l = self.lock();
        l.states.remove(id);
        l.cpu_us.remove(id);
    }

    pub(crate) fn snapshot_tree(&self, snap: &str) -> Result<fs::Tree, RuntimeError> {
        self.lock()
            .snapshots
            .get(snap)
            .cloned()
            .ok_or_else(|| RuntimeError::SnapshotNotFound(snap.to_string()))
    }

    pub(crate) fn delete_snapshot(&self, snap: &str) {
        self.lock().snapshots.remove(snap);
    }

    pub(crate) fn retain_snapshots(&self, keep: &[String]) -> Vec<String> {
        let mut l = self.lock();
        let gone: Vec<String> = l
            .snapshots
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for k in &gone {
            l.snapshots.remove(k);
        }
        gone
    }
}

impl FakeRuntime {
    /// The fake state of sandbox `id`, if it exists.
    pub fn state(&self, id: &str) -> Option<FakeState> {
        self.life.lock().states.get(id).copied()
    }

    /// Set the cumulative CPU time `cpu_usage_us` reports for `id`.
    pub fn set_cpu_usage(&self, id: &str, us: u64) {
        self.life.lock().cpu_us.insert(id.to_string(), us);
    }

    /// Make every pause, resume, stop, start and snapshot take this long first.
    pub fn set_op_delay(&self, d: Duration) {
        self.life.lock().op_delay = d;
    }

    /// From now on `id` probes as broken (its agent "does not answer").
    pub fn break_sandbox(&self, id: &str) {
        self.life.set(id, FakeState::Broken);
    }

    /// Snapshot ids the fake holds files for.
    pub fn snapshot_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.life.lock().snapshots.keys().cloned().collect();
        v.sort();
        v
    }

    async fn delay(&self) {
        let d = self.life.lock().op_delay;
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }

    fn require(&self, id: &str) -> Result<FakeState, RuntimeError> {
        self.state(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    pub(crate) async fn pause_impl(&self, id: &str, frozen: bool) -> Result<(), RuntimeError> {
        self.delay().await;
        match (self.require(id)?, frozen) {
            (FakeState::Running | FakeState::Paused, true) => self.life.set(id, FakeState::Paused),
            (FakeState::Running | FakeState::Paused, false) => {
                self.life.set(id, FakeState::Running)
            }
            (s, _) => {
                return Err(RuntimeError::Setup(format!(
                    "cannot freeze or thaw a {s:?} sandbox"
                )))
            }
        }
        Ok(())
    }

    pub(crate) async fn stop_impl(&self, id: &str) -> Result<(), RuntimeError> {
        self.delay().await;
        self.require(id)?;
        self.procs.remove_sandbox(id);
        self.procs.add_sandbox(id);
        self.life.set(id, FakeState::Stopped);
        Ok(())
    }

    pub(crate) async fn start_impl(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        self.delay().await;
        match self.require(&spec.id)? {
            FakeState::Stopped | FakeState::Running => {
                self.life.set(&spec.id, FakeState::Running);
                Ok(())
            }
            s => Err(RuntimeError::Setup(format!("cannot start a {s:?} sandbox"))),
        }
    }

    pub(crate) fn stats_impl(&self, id: &str) -> Result<Stats, RuntimeError> {
        let state = self.require(id)?;
        let disk = self.with_tree(id, |t| Ok(t.bytes())).unwrap_or(0);
        let cpu = self.life.lock().cpu_us.get(id).copied().unwrap_or(0);
        let running = matches!(state, FakeState::Running | FakeState::Paused);
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

    pub(crate) fn probe_impl(&self, id: &str) -> Probe {
        match self.state(id) {
            None => Probe::Gone,
            Some(FakeState::Running) => Probe::Running,
            Some(FakeState::Paused) => Probe::Paused,
            Some(FakeState::Stopped) => Probe::Stopped,
            Some(FakeState::Broken) => Probe::Broken,
        }
    }

    pub(crate) async fn snapshot_impl(
        &self,
        id: &str,
        snapshot_id: &str,
    ) -> Result<SnapshotMeta, RuntimeError> {
        self.delay().await;
        self.require(id)?;
        let tree = self.with_tree(id, |t| Ok(t.clone()))?;
        let size_bytes = tree.bytes();
        self.life
            .lock()
            .snapshots
            .insert(snapshot_id.to_string(), tree);
        Ok(SnapshotMeta {
            size_bytes,
            backend: "memory".into(),
        })
    }

    pub(crate) fn rollback_impl(&self, id: &str, snapshot_id: &str) -> Result<(), RuntimeError> {
        if self.require(id)? != FakeState::Stopped {
            return Err(RuntimeError::Setup(
                "rollback needs a stopped sandbox".into(),
            ));
        }
        let tree = self.life.snapshot_tree(snapshot_id)?;
        self.with_tree(id, |t| {
            *t = tree;
            Ok(())
        })
    }
}
