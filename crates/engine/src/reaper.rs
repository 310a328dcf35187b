//! The reaper: timeouts (`on_timeout`), idleness (`on_idle`), sandboxes whose processes
//! all ended on their own (marked failed with the reason) and the persisted event
//! sequence, checked every `reap_interval`.
//!
//! A timeout whose action is `pause` or `stop` pauses or stops the sandbox and gives it
//! another `timeout_secs`; a sandbox that expires while paused or stopped (or failed) is
//! deleted, so nothing lives forever. Resuming or starting restarts the clock.
//!
//! Idle means all of: no API call about the sandbox, no attached stream or terminal, and
//! its processes below `idle_cpu_threshold` of a core — for `idle_timeout_secs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};
use warren_api::{EventKind, IdleAction, SandboxState, TimeoutAction};
use warren_runtime::{Probe, RuntimeKind};

use crate::lifecycle::Op;
use crate::{events, expiry, Engine};

/// How often running sandboxes are checked for processes that all ended on their own.
const ENDED_SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Fewest seconds between two CPU samples of one sandbox.
const CPU_SAMPLE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Delete,
    Pause,
    Stop,
}

impl Engine {
    /// Apply `on_timeout` to every sandbox whose deadline has passed. Returns the ids.
    pub async fn reap_expired(&self) -> Vec<String> {
        let now = Utc::now();
        let mut due = Vec::new();
        {
            let mut map = self.map();
            for e in map.values_mut() {
                let r = &mut e.record;
                // Unclaimed pool sandboxes never expire (their pool drains them).
                if r.expires_at > now || r.lifecycle.pool_member {
                    continue;
                }
                let action = match (r.state, r.lifecycle.on_timeout) {
                    (SandboxState::Running, TimeoutAction::Pause) => Action::Pause,
                    (SandboxState::Running | SandboxState::Paused, TimeoutAction::Stop) => {
                        Action::Stop
                    }
                    (
                        SandboxState::Running
                        | SandboxState::Paused
                        | SandboxState::Stopped
                        | SandboxState::Failed,
                        _,
                    ) => Action::Delete,
                    // Transitional: looked at again once it settles.
                    _ => continue,
                };
                if action != Action::Delete {
                    // Deleted if it stays paused/stopped for another timeout.
                    r.expires_at = expiry(r.timeout_secs);
                }
                due.push((r.id.clone(), action, r.expires_at, r.timeout_secs));
            }
        }
        for (id, action, expires_at, secs) in &due {
            info!(%id, ?action, "sandbox expired");
            self.emit(
                id,
                EventKind::Expired,
                events::Detail {
                    reason: Some(format!("{action:?}").to_lowercase()),
                    ..Default::default()
                },
            );
            let engine = self.clone();
            let (id, action, expires_at, secs) = (id.clone(), *action, *expires_at, *secs);
            tokio::spawn(async move {
                engine.apply(&id, action, "timeout").await;
                if action != Action::Delete {
                    if let Err(e) = engine.inner.store.set_expiry(&id, expires_at, secs).await {
                        warn!(%id, error = %e, "recording the new expiry");
                        engine.mark_unsynced(&id);
                    }
                }
            });
        }
        due.into_iter().map(|(id, ..)| id).collect()
    }

    async fn apply(&self, id: &str, action: Action, why: &str) {
        let r = match action {
            Action::Delete => self.delete_because(id, why).await.map(|_| ()),
            Action::Pause => self.transition(id, Op::Pause, why).await.map(|_| ()),
            Action::Stop => self.transition(id, Op::Stop, why).await.map(|_| ()),
        };
        if let Err(e) = r {
            warn!(%id, ?action, reason = why, error = %e, "lifecycle policy");
        }
    }

    /// Apply `on_idle` to every running sandbox idle for its `idle_timeout_secs`.
    pub async fn reap_idle(&self) -> Vec<String> {
        let now = tokio::time::Instant::now();
        // (id, previous sample) of sandboxes due for a CPU sample.
        let mut sample = Vec::new();
        {
            let mut map = self.map();
            for e in map.values_mut() {
                let Some(idle) = e.record.lifecycle.idle_timeout_secs else {
                    continue;
                };
                if e.record.lifecycle.pool_member {
                    continue;
                }
                if e.record.state != SandboxState::Running {
                    continue;
                }
                if e.activity.attached.load(Ordering::SeqCst) > 0 {
                    e.activity.busy_at = now;
                    continue;
                }
                let quiet_since = e.activity.busy_at.max(e.activity.last_call);
                if now.duration_since(quiet_since) < Duration::from_secs(idle) {
                    // Still sample CPU so a burst before the deadline counts.
                    if e.activity
                        .cpu_sample
                        .is_none_or(|(t, _)| now.duration_since(t) >= CPU_SAMPLE_EVERY)
                    {
                        sample.push((e.record.id.clone(), e.activity.cpu_sample, false));
                    }
                    continue;
                }
                sample.push((e.record.id.clone(), e.activity.cpu_sample, true));
            }
        }
        let threshold = self.inner.config.idle_cpu_threshold;
        let mut idle_ids = Vec::new();
        for (id, prev, deadline_passed) in sample {
            let Ok(sid) = warren_runtime::SandboxId::parse(&id) else {
                continue;
            };
            let Ok(cpu) = self.inner.runtime.cpu_usage_us(&sid).await else {
                continue;
            };
            let at = tokio::time::Instant::now();
            let busy = prev.is_some_and(|(t, used)| {
                let wall = at.duration_since(t).as_micros().max(1) as f64;
                cpu.saturating_sub(used) as f64 / wall > threshold
            });
            let idle_now = {
                let mut map = self.map();
                let Some(e) = map.get_mut(&id) else { continue };
                e.activity.cpu_sample = Some((at, cpu));
                if busy {
                    e.activity.busy_at = at;
                }
                // Needs a previous sample to judge the CPU at all.
                deadline_passed
                    && !busy
                    && prev.is_some()
                    && e.record.state == SandboxState::Running
            };
            if idle_now {
                idle_ids.push(id);
            }
        }
        for id in &idle_ids {
            let action = self
                .map()
                .get(id)
                .map(|e| e.record.lifecycle.on_idle)
                .unwrap_or_default();
            info!(%id, ?action, "sandbox idle");
            self.emit(
                id,
                EventKind::Idle,
                events::Detail {
                    reason: Some(format!("{action:?}").to_lowercase()),
                    ..Default::default()
                },
            );
            let action = match action {
                IdleAction::Pause => Action::Pause,
                IdleAction::Stop => Action::Stop,
                IdleAction::Delete => Action::Delete,
            };
            let engine = self.clone();
            let id = id.clone();
            tokio::spawn(async move { engine.apply(&id, action, "idle").await });
        }
        idle_ids
    }

    /// Mark failed every running sandbox whose processes all ended on their own (its
    /// PID 1 was OOM-killed or, on gVisor, the sentry that holds all of its memory), so it
    /// does not stay "running" with every call failing. Returns the ids.
    pub async fn reap_ended(&self) -> Vec<String> {
        let running: Vec<(String, RuntimeKind, Option<u64>)> = self
            .map()
            .values()
            .filter(|e| e.record.state == SandboxState::Running)
            .map(|e| {
                let r = &e.record;
                (r.id.clone(), r.lifecycle.runtime, r.resources.memory_mib)
            })
            .collect();
        let rt = &self.inner.runtime;
        let mut ended = Vec::new();
        for (id, kind, memory_mib) in running {
            let Ok(sid) = warren_runtime::SandboxId::parse(&id) else {
                continue;
            };
            if rt.has_processes(&sid).await {
                continue;
            }
            // Sure: no process and no agent (a stop or delete that started meanwhile has
            // moved the state on, and `set_state` below then changes nothing).
            if matches!(rt.probe(&sid).await, Ok(Probe::Running | Probe::Paused)) {
                continue;
            }
            let reason = match rt.ended_why(&sid).await {
                Some(why) => {
                    let limit = memory_mib.map_or(String::new(), |m| format!(" of {m} MiB"));
                    let whole = if kind == RuntimeKind::Gvisor {
                        " (on gVisor that ends the whole sandbox: its kernel holds all of \
                         its memory)"
                    } else {
                        ""
                    };
                    format!("out of memory: {why}{limit}{whole}")
                }
                None => "its processes ended on their own (its PID 1 exited)".to_string(),
            };
            if let Ok(true) = self
                .set_state(
                    &id,
                    SandboxState::Failed,
                    &[SandboxState::Running],
                    Some(reason.clone()),
                )
                .await
            {
                warn!(%id, %reason, "sandbox ended by itself");
                ended.push(id);
            }
        }
        ended
    }

    /// Start the reaper (runs until the process ends).
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(engine.inner.config.reap_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut persisted_seq = 0;
            let mut swept = tokio::time::Instant::now();
            loop {
                tick.tick().await;
                if engine.inner.shutting_down.load(Ordering::SeqCst) {
                    return;
                }
                engine.reap_expired().await;
                engine.reap_idle().await;
                if swept.elapsed() >= ENDED_SWEEP_EVERY {
                    engine.reap_ended().await;
                    swept = tokio::time::Instant::now();
                }
                engine.resync_store().await;
                let seq = engine.inner.events.next_seq();
                if seq != persisted_seq {
                    match engine.inner.store.set_meta("event_seq", seq).await {
                        Ok(()) => persisted_seq = seq,
                        Err(e) => warn!(error = %e, "persisting the event sequence"),
                    }
                }
            }
        })
    }
}
