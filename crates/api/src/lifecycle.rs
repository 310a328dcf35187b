//! Wire types of the lifecycle beyond create/delete: pause, stop, snapshots, rollback, fork,
//! stats and lifecycle events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Resources, SandboxState};

/// What happens to a sandbox whose `timeout_secs` runs out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutAction {
    /// Delete it with its files (the default).
    #[default]
    Delete,
    /// Freeze it; it is deleted when a further `timeout_secs` passes paused.
    Pause,
    /// End its processes and keep its files; deleted when a further `timeout_secs` passes.
    Stop,
}

/// What happens to a sandbox that stays idle for `idle_timeout_secs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum IdleAction {
    #[default]
    Pause,
    Stop,
    Delete,
}

/// Body of `POST /v1/sandboxes/{id}/snapshots`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// A label for people; not unique, at most 128 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A snapshot of a sandbox's files. It does not depend on its sandbox: deleting the
/// sandbox keeps the snapshot, and a snapshot can always be deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Snapshot {
    pub id: String,
    /// The sandbox it was taken from (which may since have been deleted).
    pub sandbox_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bytes of file data the snapshot holds (its writable layer, not the image).
    pub size_bytes: u64,
    pub created_at: DateTime<Utc>,
    /// Storage backend that holds it (`dir` or `btrfs`).
    pub backend: String,
    /// The image its files sit on: a restore uses it (absent for snapshots taken before
    /// images were recorded, which are `host`'s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// Body of `POST /v1/sandboxes/{id}/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The snapshot whose files replace the sandbox's.
    pub snapshot: String,
}

/// Body of `POST /v1/sandboxes/{id}/fork` (optional; absent fields are copied from the
/// sandbox being forked).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// Answer of `GET /v1/sandboxes/{id}/stats`. Counters are cumulative since the sandbox (or
/// its last start) began.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxStats {
    pub state: Option<SandboxState>,
    /// CPU time used by every process of the sandbox, in microseconds.
    pub cpu_usage_us: u64,
    pub memory_bytes: u64,
    /// Highest `memory_bytes` seen (since the sandbox or its last start).
    pub memory_peak_bytes: u64,
    /// The memory limit in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Processes and threads alive.
    pub pids: u64,
    /// Bytes used by the sandbox's writable layer (what it wrote over the image).
    pub disk_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// What a lifecycle event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A sandbox record exists (state `creating`).
    Created,
    /// The state changed (`state`, `previous`, `reason`).
    State,
    /// The sandbox's timeout ran out; its `on_timeout` action follows.
    Expired,
    /// The sandbox was idle for `idle_timeout_secs`; its `on_idle` action follows.
    Idle,
    /// The daemon restarted and took the (still running) sandbox over.
    Adopted,
    /// A ready sandbox of a pool was handed to a create (`reason`: `pool:NAME`); from now
    /// on it is an ordinary sandbox.
    Claimed,
    SnapshotCreated,
    SnapshotDeleted,
    RolledBack,
    /// The sandbox and its files are gone (last event of a sandbox).
    Deleted,
}

/// One lifecycle event. `seq` grows by one per event across the whole server (and restarts
/// from the store's high-water mark after a restart), so `Last-Event-ID: seq` resumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SandboxEvent {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub sandbox_id: String,
    pub kind: EventKind,
    /// The state after the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SandboxState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<SandboxState>,
    /// Why: `api`, `timeout`, `idle`, `auto_resume`, `restart`, `shutdown`, `pool:NAME` (a
    /// pool's sandbox being made or claimed), `evicted` or `pool deleted` / `pool changed` /
    /// `pool resized` / `pool sandbox unusable` (an unclaimed pool sandbox removed), or an
    /// error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The snapshot concerned (snapshot events, rollback, restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// Data of a `lost` event on the event streams: this many events were dropped before they
/// could be sent (the client was too slow, or resumed from before the oldest event the
/// server keeps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventsLost {
    pub missed: u64,
}

/// Where sandbox files and snapshots are kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StorageInfo {
    /// `dir` (any file system; reflink copies where it has them) or `btrfs` (subvolume
    /// snapshots: O(1)).
    pub backend: String,
    /// Whether `dir` copies share blocks (reflinks) on this file system.
    pub reflink: bool,
    /// Backends this server could be configured with.
    pub available: Vec<String>,
    /// Whether `resources.disk_mib` is enforced (btrfs simple quotas). False on `dir`,
    /// where the kernel offers no quota: a sandbox can fill the file system then.
    #[serde(default)]
    pub disk_quota: bool,
    /// Whether a volume's `size_mib` is enforced (the same quotas as `disk_quota`).
    #[serde(default)]
    pub volume_quota: bool,
    /// Host directory prefixes a sandbox may mount from (`volumes[].host_path`); empty:
    /// none (`warren serve --allow-host-path`).
    #[serde(default)]
    pub allowed_host_paths: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_kinds_are_snake_case() {
        assert_eq!(
            serde_json::to_string(&TimeoutAction::Pause).unwrap(),
            "\"pause\""
        );
        assert_eq!(
            serde_json::to_string(&EventKind::SnapshotCreated).unwrap(),
            "\"snapshot_created\""
        );
        let r: RollbackRequest = serde_json::from_str(r#"{"snapshot":"snap-1"}"#).unwrap();
        assert_eq!(r.snapshot, "snap-1");
        assert!(serde_json::from_str::<RollbackRequest>(r#"{"snap":"x"}"#).is_err());
        assert!(serde_json::from_str::<ForkRequest>(r#"{"image":"x"}"#).is_err());
        let f: ForkRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(f, ForkRequest::default());
    }
}
