//! Wire types of warm pools: sets of ready sandboxes of one spec that
//! `POST /v1/sandboxes` hands out without a cold start.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Resources;

/// Body of `PUT /v1/pools/{name}` (and one `[[pools]]` entry of the daemon's config file,
/// plus its `name`). Absent fields take the server defaults, as in a create.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Image of the pool's sandboxes (default `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// How many ready sandboxes to keep (0 keeps the pool defined but empty; at most the
    /// server's `limits.max_pool_size`).
    pub size: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Environment every sandbox of the pool starts with; a claim's `env` is added over
    /// it. A pool with `env` is only used when a create names it (`"pool": NAME`), never
    /// for a create that merely matches its image and resources.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Network mode and egress policy of the pool's sandboxes (the server's default mode,
    /// allowing everything, when absent). A create that names another network does not take
    /// from the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::NetworkRequest>,
    /// Runtime of the pool's sandboxes (the server's default when absent). A create that
    /// names another runtime does not take from the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<crate::Runtime>,
}

/// Where a pool is defined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolSource {
    /// `PUT /v1/pools/{name}`; kept in the store across restarts.
    #[default]
    Api,
    /// The daemon's config file (`warren serve --config`); applied at every start, and
    /// changed only there (the API answers 409 `pool_from_config`).
    Config,
}

/// A pool and what it holds right now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pool {
    pub name: String,
    /// Image of its sandboxes.
    pub image: String,
    /// The ready sandboxes it keeps.
    pub size: u32,
    /// Limits of its sandboxes (server defaults filled in).
    pub resources: Resources,
    /// Names of the pool-wide environment variables (values are never echoed back).
    pub env_keys: Vec<String>,
    /// Network of its sandboxes.
    pub network: crate::NetworkRequest,
    /// Runtime of its sandboxes.
    #[serde(default)]
    pub runtime: crate::Runtime,
    pub source: PoolSource,
    /// Sandboxes running and waiting to be claimed.
    pub ready: u32,
    /// Sandboxes being created for the pool.
    pub filling: u32,
    /// Sandboxes claimed from this pool that still exist (they belong to their users).
    pub claimed: u32,
    /// Creates served by a ready sandbox since the daemon started.
    pub claims: u64,
    /// Creates for this pool that found it empty and were created cold, since the daemon
    /// started.
    pub misses: u64,
    /// Why the pool is not full, when filling it failed or was refused (e.g.
    /// `capacity_exhausted: ...`); cleared once a sandbox is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_spec_is_strict() {
        let s: PoolSpec =
            serde_json::from_str(r#"{"size":2,"resources":{"memory_mib":256}}"#).unwrap();
        assert_eq!(s.size, 2);
        assert_eq!(s.resources.unwrap().memory_mib, Some(256));
        assert!(serde_json::from_str::<PoolSpec>(r#"{"size":1,"sise":2}"#).is_err());
        assert!(serde_json::from_str::<PoolSpec>(r#"{"image":"host"}"#).is_err());
        assert_eq!(
            serde_json::to_string(&PoolSource::Config).unwrap(),
            "\"config\""
        );
    }
}
