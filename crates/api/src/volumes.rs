//! Volumes on the wire: named directories that outlive sandboxes, and host directories,
//! mounted into sandboxes at create.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVolumeRequest {
    /// 1–63 characters of `[A-Za-z0-9_.-]`, starting with a letter or digit.
    pub name: String,
    /// Most MiB its files may take; writes past it fail inside with `EDQUOT`. Enforced only
    /// where `GET /v1/capabilities` `storage.volume_quota` is true (elsewhere 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
}

/// A named volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
    pub created_at: DateTime<Utc>,
    /// Bytes its files take now.
    pub used_bytes: u64,
    /// The sandboxes that mount it.
    pub sandboxes: Vec<String>,
}

/// `GET /v1/volumes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VolumeList {
    pub volumes: Vec<Volume>,
}

/// One mount of `POST /v1/sandboxes` `volumes`: a named volume (`name`) or a host directory
/// (`host_path`, only under a prefix the server allows with `--allow-host-path`), exactly
/// one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeMount {
    /// A volume made with `POST /v1/volumes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An absolute host directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// Where it appears inside the sandbox (absolute; not `/`, nor under `/proc`, `/sys` or
    /// `/dev`).
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    /// Mount this directory of the volume (relative, made if missing) instead of its root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}
