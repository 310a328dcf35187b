//! Snapshots as records, restore (create from a snapshot), rollback in place and fork.
//!
//! The runtime holds a snapshot's files; the engine holds its record. Order makes a crash
//! harmless: files first, then the record (a crash in between leaves files without a
//! record, which the next start removes), and on delete the record first, then the files.
//! Snapshots do not depend on their sandbox or on each other.

use tracing::{info, warn};
use warren_api::{
    CreateSandboxRequest, CreateSnapshotRequest, EventKind, ForkRequest, RollbackRequest, Sandbox,
    SandboxState, Snapshot,
};
use warren_runtime::RuntimeError;

use crate::lifecycle::{settled, within, Op, OpFailure};
use crate::{events, new_id, validate, Engine, EngineError};

/// Marks a snapshot as being read (a restore or rollback copies it) while alive; such a
/// snapshot cannot be deleted.
pub(crate) struct SnapshotReader {
    engine: Engine,
    id: String,
}

impl Drop for SnapshotReader {
    fn drop(&mut self) {
        let mut readers = self
            .engine
            .inner
            .snapshot_readers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = readers.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.id);
            }
        }
    }
}

fn snapshot_error(e: RuntimeError) -> EngineError {
    match e {
        RuntimeError::SnapshotNotFound(s) => EngineError::SnapshotNotFound(s),
        RuntimeError::Unsupported(w) => EngineError::NotSupported(w),
        e => EngineError::Runtime(e),
    }
}

impl Engine {
    pub(crate) fn snapshots_map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, Snapshot>> {
        self.inner
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn check_snapshots_supported(&self) -> Result<(), EngineError> {
        if self.inner.runtime.info().snapshots {
            Ok(())
        } else {
            Err(EngineError::NotSupported("snapshots"))
        }
    }

    /// Mark snapshot `id` as read until the returned guard drops.
    pub(crate) fn read_snapshot(&self, id: &str) -> Result<SnapshotReader, EngineError> {
        // Both locks in the same order as `delete_snapshot`.
        let snaps = self.snapshots_map();
        if !snaps.contains_key(id) {
            return Err(EngineError::SnapshotNotFound(id.to_string()));
        }
        *self
            .inner
            .snapshot_readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_string())
            .or_default() += 1;
        Ok(SnapshotReader {
            engine: self.clone(),
            id: id.to_string(),
        })
    }

    /// Take a snapshot of a running, paused or stopped sandbox's files. A running sandbox's
    /// processes are frozen while the files are copied and go on afterwards.
    pub async fn create_snapshot(
        &self,
        id: &str,
        req: CreateSnapshotRequest,
    ) -> Result<Snapshot, EngineError> {
        self.check_open()?;
        self.visible(id)?;
        self.check_snapshots_supported()?;
        if let Some(name) = &req.name {
            validate::snapshot_name(name)?;
        }
        self.touch(id);
        let lock = self.op_lock(id)?;
        let _guard = lock.lock_owned().await;
        let snap_id = self.snapshot_files(id).await?;
        let (size_bytes, backend) = snap_id.1;
        let image = self.map().get(id).map(|e| e.record.image.clone());
        let snap = Snapshot {
            id: snap_id.0,
            sandbox_id: id.to_string(),
            name: req.name,
            size_bytes,
            created_at: crate::now_ms(),
            backend,
            image,
        };
        if let Err(e) = self.inner.store.insert_snapshot(&snap).await {
            let _ = self.inner.runtime.delete_snapshot(&snap.id).await;
            return Err(e);
        }
        self.snapshots_map().insert(snap.id.clone(), snap.clone());
        self.emit(
            id,
            EventKind::SnapshotCreated,
            events::Detail {
                snapshot: Some(snap.id.clone()),
                ..Default::default()
            },
        );
        info!(sandbox = %id, snapshot = %snap.id, size = snap.size_bytes, "snapshot taken");
        Ok(snap)
    }

    /// Copy the sandbox's files into a new runtime snapshot (no record). The caller holds
    /// the operation lock. Returns (id, (size, backend)).
    async fn snapshot_files(&self, id: &str) -> Result<(String, (u64, String)), EngineError> {
        let state = self.state_of(id)?;
        if !settled(state) {
            return Err(EngineError::InvalidState {
                id: id.to_string(),
                state,
                message: "snapshots are taken of running, paused or stopped sandboxes".into(),
            });
        }
        let snap_id = new_id("snap");
        let deadline = self.inner.config.deadlines.snapshot;
        match tokio::time::timeout(
            deadline,
            self.inner
                .runtime
                .snapshot(&crate::sandbox_id(id)?, &snap_id),
        )
        .await
        {
            Ok(Ok(meta)) => Ok((snap_id, (meta.size_bytes, meta.backend))),
            Ok(Err(e)) => Err(snapshot_error(e)),
            Err(_) => {
                // The runtime removes partial snapshots; make sure this one is gone too.
                let _ = self.inner.runtime.delete_snapshot(&snap_id).await;
                Err(EngineError::DeadlineExceeded(format!(
                    "snapshot did not finish within {deadline:?}"
                )))
            }
        }
    }

    /// Snapshots, oldest first; only those of `sandbox_id` when given.
    pub async fn list_snapshots(
        &self,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<Snapshot>, EngineError> {
        let mut out: Vec<Snapshot> = self
            .snapshots_map()
            .values()
            .filter(|s| sandbox_id.is_none_or(|id| s.sandbox_id == id))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    pub async fn get_snapshot(&self, snapshot_id: &str) -> Result<Snapshot, EngineError> {
        self.snapshots_map()
            .get(snapshot_id)
            .cloned()
            .ok_or_else(|| EngineError::SnapshotNotFound(snapshot_id.to_string()))
    }

    /// Delete a snapshot (its record, then its files). Refused with `snapshot_in_use` while a
    /// restore or rollback copies it.
    pub async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), EngineError> {
        let snap = {
            let mut snaps = self.snapshots_map();
            if !snaps.contains_key(snapshot_id) {
                return Err(EngineError::SnapshotNotFound(snapshot_id.to_string()));
            }
            let in_use = self
                .inner
                .snapshot_readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(snapshot_id)
                .is_some_and(|n| *n > 0);
            if in_use {
                return Err(EngineError::SnapshotInUse(snapshot_id.to_string()));
            }
            snaps.remove(snapshot_id)
        };
        if let Err(e) = self.inner.store.remove_snapshot(snapshot_id).await {
            if let Some(s) = snap {
                self.snapshots_map().insert(s.id.clone(), s);
            }
            return Err(e);
        }
        if let Err(e) = self.inner.runtime.delete_snapshot(snapshot_id).await {
            // The record is gone: the files are removed at the next start at the latest.
            warn!(snapshot = %snapshot_id, error = %e, "removing snapshot files");
        }
        if let Some(s) = snap {
            self.emit(
                &s.sandbox_id,
                EventKind::SnapshotDeleted,
                events::Detail {
                    snapshot: Some(s.id),
                    ..Default::default()
                },
            );
        }
        Ok(())
    }

    /// Replace the sandbox's files with the snapshot's. A running or paused sandbox is
    /// stopped, rolled back and started again (it comes back running, with fresh processes);
    /// a stopped one stays stopped.
    pub async fn rollback(&self, id: &str, req: RollbackRequest) -> Result<Sandbox, EngineError> {
        self.check_open()?;
        self.visible(id)?;
        self.check_snapshots_supported()?;
        if !self.inner.runtime.info().stop {
            return Err(EngineError::NotSupported("rollback"));
        }
        self.touch(id);
        let _reader = self.read_snapshot(&req.snapshot)?;
        let lock = self.op_lock(id)?;
        let _guard = lock.lock_owned().await;
        let state = self.state_of(id)?;
        if !settled(state) {
            return Err(EngineError::InvalidTransition {
                id: id.to_string(),
                state,
                op: "roll back",
            });
        }
        if state != SandboxState::Stopped {
            self.transition_locked(id, Op::Stop, "rollback").await?;
        }
        let moved = match self
            .set_state(
                id,
                SandboxState::RollingBack,
                &[SandboxState::Stopped],
                Some("api".into()),
            )
            .await
        {
            Ok(moved) => moved,
            Err(e) => {
                // Nothing changed yet: it stays stopped, with its files.
                self.revert_state(
                    id,
                    SandboxState::RollingBack,
                    SandboxState::Stopped,
                    "the change could not be recorded",
                );
                return Err(e);
            }
        };
        if !moved {
            let state = self.state_of(id)?;
            return Err(EngineError::InvalidTransition {
                id: id.to_string(),
                state,
                op: "roll back",
            });
        }
        let d = self.inner.config.deadlines.rollback;
        let result = within(
            d,
            "rollback",
            self.inner
                .runtime
                .rollback(&crate::sandbox_id(id)?, &req.snapshot),
        )
        .await;
        match result {
            Ok(()) => {
                let record = {
                    let mut map = self.map();
                    map.get_mut(id).map(|e| {
                        e.record.lifecycle.snapshot = Some(req.snapshot.clone());
                        e.record.clone()
                    })
                };
                // The files are the snapshot's now: a failed write does not change that.
                let recorded = match record {
                    Some(r) => self.inner.store.insert(&r).await,
                    None => Ok(()),
                };
                self.emit(
                    id,
                    EventKind::RolledBack,
                    events::Detail {
                        state: Some(SandboxState::Stopped),
                        snapshot: Some(req.snapshot.clone()),
                        ..Default::default()
                    },
                );
                let stopped = self
                    .set_state(
                        id,
                        SandboxState::Stopped,
                        &[SandboxState::RollingBack],
                        Some("rollback".into()),
                    )
                    .await;
                if let Err(e) = recorded.and(stopped.map(drop)) {
                    self.mark_unsynced(id);
                    return Err(EngineError::Store(format!(
                        "the sandbox was rolled back and is stopped, but the change could not \
                         be recorded: {e}"
                    )));
                }
            }
            Err(failure) => {
                // Files unchanged (the runtime swaps atomically) unless the deadline passed.
                let next = match failure {
                    OpFailure::Deadline(_) => SandboxState::Failed,
                    OpFailure::Failed(_) => SandboxState::Stopped,
                };
                let reason = failure.reason().to_string();
                if let Err(e) = self
                    .set_state(id, next, &[SandboxState::RollingBack], Some(reason))
                    .await
                {
                    warn!(%id, error = %e, "recording a failed rollback");
                }
                return Err(failure.into_error());
            }
        }
        if state != SandboxState::Stopped {
            self.transition_locked(id, Op::Start, "rollback").await?;
        }
        self.view(id)
    }

    /// A new sandbox with the same files as `id` has now (its processes are not copied).
    /// Unset fields of `req` are copied from the source.
    pub async fn fork(&self, id: &str, req: ForkRequest) -> Result<Sandbox, EngineError> {
        self.check_open()?;
        self.visible(id)?;
        self.check_snapshots_supported()?;
        self.touch(id);
        let source = self
            .map()
            .get(id)
            .map(|e| e.record.clone())
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
        let snap_id = {
            let lock = self.op_lock(id)?;
            let _guard = lock.lock_owned().await;
            self.snapshot_files(id).await?.0
        };
        let create = CreateSandboxRequest {
            image: Some(source.image.clone()),
            env: req.env.unwrap_or(source.env),
            metadata: req.metadata.unwrap_or(source.metadata),
            timeout_secs: Some(req.timeout_secs.unwrap_or(source.timeout_secs)),
            resources: Some(req.resources.unwrap_or(source.resources)),
            snapshot: None,
            on_timeout: Some(source.lifecycle.on_timeout),
            idle_timeout_secs: source.lifecycle.idle_timeout_secs,
            on_idle: Some(source.lifecycle.on_idle),
            auto_resume: source.lifecycle.auto_resume,
            pool: None,
            // Same mode and policy; an address of its own.
            network: Some(crate::network::request_of(&source.network)),
            // The same keys; its own tokens.
            credentials: self.credential_requests(source.credentials.as_ref())?,
            // The same volumes (not copied: they are not part of snapshots).
            volumes: source.volumes.clone(),
            // The same runtime.
            runtime: Some(crate::runtimes::api_of(source.lifecycle.runtime)),
        };
        let result = self.create_inner(create, Some(snap_id.clone())).await;
        // The new sandbox has its own copy; the fork's snapshot is not kept.
        if let Err(e) = self.inner.runtime.delete_snapshot(&snap_id).await {
            warn!(snapshot = %snap_id, error = %e, "removing a fork's snapshot");
        }
        let sandbox = result?;
        info!(source = %id, fork = %sandbox.id, "sandbox forked");
        Ok(sandbox)
    }
}
