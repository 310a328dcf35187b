//! Reconcile the store with the host after a (re)start.
//!
//! Sandboxes outlive the daemon: their agent is PID 1 of their own PID namespace, not the
//! daemon's child. On start every record is compared with what the runtime finds:
//!
//! | record                      | runtime finds         | outcome                              |
//! |-----------------------------|-----------------------|--------------------------------------|
//! | creating                    | anything              | half-made: destroyed, record removed |
//! | deleting                    | anything              | deletion finished                    |
//! | failed                      | anything              | kept (delete removes what is left)   |
//! | running/paused/stopped/...  | running/paused/stopped| adopted in the state it is really in,|
//! |                             |                       | then an interrupted transition is    |
//! |                             |                       | completed (pausing → paused, ...)    |
//! | any other                   | broken / gone         | failed, with the reason              |
//!
//! Then the runtime removes whatever has no record (sandboxes, partial snapshots).

use tracing::{info, warn};
use warren_api::{EventKind, SandboxState};
use warren_runtime::Probe;

use crate::{events, Engine, EngineError, Entry};

impl Engine {
    pub(crate) async fn recover(&self) -> Result<(), EngineError> {
        let store = &self.inner.store;
        let runtime = &self.inner.runtime;
        let mut keep = Vec::new();
        let mut adopted = 0usize;
        for mut r in store.load_all().await? {
            let id = r.id.clone();
            let Ok(sid) = warren_runtime::SandboxId::parse(&id) else {
                warn!(%id, "not a sandbox id; left alone");
                continue;
            };
            match r.state {
                SandboxState::Creating | SandboxState::Deleting => {
                    // Never acknowledged (creating) or already acknowledged as going away.
                    if let Err(e) = runtime.destroy(&sid).await {
                        warn!(%id, error = %e, "removing a half-made sandbox; it stays failed");
                        r.state = SandboxState::Failed;
                        r.failure_reason = Some(format!("cleanup after a restart failed: {e}"));
                        store
                            .set_state(&id, r.state, r.failure_reason.clone())
                            .await?;
                        keep.push(id.clone());
                        self.map().insert(id, Entry::new(r));
                    } else {
                        store.remove(&id).await?;
                        info!(%id, state = %r.state, "removed a sandbox left half-made");
                    }
                    continue;
                }
                SandboxState::Failed => {
                    keep.push(id.clone());
                    self.map().insert(id, Entry::new(r));
                    continue;
                }
                _ => {}
            }
            let recorded = r.state;
            let mut probe = match runtime.probe(&sid).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(%id, error = %e, "probing");
                    Probe::Broken
                }
            };
            let mut note = None;
            if probe == Probe::Broken {
                // Processes without an answering agent: an interrupted stop whose processes
                // are still exiting, or an agent that died. Ending them keeps the files.
                match runtime.stop(&sid).await {
                    Ok(()) => {
                        probe = runtime.probe(&sid).await.unwrap_or(Probe::Broken);
                        note =
                            Some("its agent did not answer after the restart: stopped, files kept");
                    }
                    Err(e) => warn!(%id, error = %e, "stopping a broken sandbox"),
                }
            }
            // The state it is really in, and what completes an interrupted transition.
            let (now, finish): (SandboxState, Option<FinishOp>) = match (probe, recorded) {
                (Probe::Running, SandboxState::Pausing | SandboxState::Paused) => {
                    (SandboxState::Running, Some(FinishOp::Pause))
                }
                (Probe::Running, SandboxState::Stopping | SandboxState::Stopped) => {
                    (SandboxState::Running, Some(FinishOp::Stop))
                }
                (Probe::Running, _) => (SandboxState::Running, None),
                // Frozen while running: a snapshot or resume was interrupted.
                (
                    Probe::Paused,
                    SandboxState::Running | SandboxState::Resuming | SandboxState::Starting,
                ) => (SandboxState::Paused, Some(FinishOp::Resume)),
                (Probe::Paused, SandboxState::Stopping | SandboxState::Stopped) => {
                    (SandboxState::Paused, Some(FinishOp::Stop))
                }
                (Probe::Paused, _) => (SandboxState::Paused, None),
                // An interrupted start or rollback is not acknowledged: the sandbox is
                // stopped, with its files, and can be started.
                (Probe::Stopped, _) => (SandboxState::Stopped, None),
                (Probe::Broken | Probe::Gone, _) => {
                    let reason = format!(
                        "after a daemon restart its runtime state is {}",
                        if probe == Probe::Gone {
                            "gone"
                        } else {
                            "broken (the agent does not answer)"
                        }
                    );
                    warn!(%id, %reason, "sandbox failed");
                    r.state = SandboxState::Failed;
                    r.failure_reason = Some(reason.clone());
                    store.set_state(&id, r.state, Some(reason.clone())).await?;
                    keep.push(id.clone());
                    self.map().insert(id.clone(), Entry::new(r));
                    self.emit(
                        &id,
                        EventKind::State,
                        events::Detail {
                            state: Some(SandboxState::Failed),
                            previous: Some(recorded),
                            reason: Some(reason),
                            snapshot: None,
                        },
                    );
                    continue;
                }
            };
            r.state = now;
            r.failure_reason = None;
            if now != recorded {
                store.set_state(&id, now, None).await?;
            }
            keep.push(id.clone());
            self.map().insert(id.clone(), Entry::new(r));
            adopted += 1;
            self.emit(
                &id,
                EventKind::Adopted,
                events::Detail {
                    state: Some(now),
                    previous: Some(recorded),
                    reason: Some(note.unwrap_or("restart").into()),
                    snapshot: None,
                },
            );
            if let Some(op) = finish {
                let op = match op {
                    FinishOp::Pause => crate::lifecycle::Op::Pause,
                    FinishOp::Resume => crate::lifecycle::Op::Resume,
                    FinishOp::Stop => crate::lifecycle::Op::Stop,
                };
                if let Err(e) = self.transition(&id, op, "restart").await {
                    warn!(%id, error = %e, "completing an interrupted transition");
                }
            }
        }
        let cleaned = runtime.reconcile(&keep).await?;
        if !cleaned.is_empty() {
            info!(
                count = cleaned.len(),
                "removed sandboxes that had no record"
            );
        }
        if adopted > 0 {
            info!(
                count = adopted,
                "adopted sandboxes that outlived the previous daemon"
            );
        }

        let snapshots = store.load_snapshots().await?;
        let ids: Vec<String> = snapshots.iter().map(|s| s.id.clone()).collect();
        match runtime.reconcile_snapshots(&ids).await {
            Ok(removed) if !removed.is_empty() => {
                info!(
                    count = removed.len(),
                    "removed partial or unrecorded snapshots"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "reconciling snapshots"),
        }
        let mut map = self
            .inner
            .snapshots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for s in snapshots {
            map.insert(s.id.clone(), s);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum FinishOp {
    Pause,
    Resume,
    Stop,
}
