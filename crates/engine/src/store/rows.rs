//! The store's own record types: what its JSON columns hold. They are versioned with the
//! schema (`MIGRATIONS`), not with the API: an API type may gain, rename or drop a field
//! without changing what is on disk, and a row written by an older Warren still reads
//! (unknown fields are ignored, missing ones take their defaults). Converted to and from the
//! engine's and the API's types only at the store's edge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use warren_api::{IdleAction, PoolSpec, Resources, TimeoutAction};

use super::Lifecycle;

/// `sandboxes.resources`, and a pool spec's resources.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct ResourcesRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pids: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk_mib: Option<u64>,
}

impl From<&Resources> for ResourcesRow {
    fn from(r: &Resources) -> ResourcesRow {
        ResourcesRow {
            cpus: r.cpus,
            memory_mib: r.memory_mib,
            pids: r.pids,
            disk_mib: r.disk_mib,
        }
    }
}

impl From<ResourcesRow> for Resources {
    fn from(r: ResourcesRow) -> Resources {
        Resources {
            cpus: r.cpus,
            memory_mib: r.memory_mib,
            pids: r.pids,
            disk_mib: r.disk_mib,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnTimeoutRow {
    #[default]
    Delete,
    Pause,
    Stop,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnIdleRow {
    #[default]
    Pause,
    Stop,
    Delete,
}

/// `sandboxes.lifecycle`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct LifecycleRow {
    snapshot: Option<String>,
    on_timeout: OnTimeoutRow,
    idle_timeout_secs: Option<u64>,
    on_idle: OnIdleRow,
    auto_resume: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pool_member: bool,
    /// Absent in rows written before gVisor: native.
    #[serde(default, skip_serializing_if = "RuntimeRow::is_native")]
    runtime: RuntimeRow,
}

/// `sandboxes.lifecycle.runtime`, `pools.spec.runtime`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RuntimeRow {
    #[default]
    Native,
    Gvisor,
}

impl RuntimeRow {
    fn is_native(&self) -> bool {
        *self == RuntimeRow::Native
    }
}

impl From<warren_runtime::RuntimeKind> for RuntimeRow {
    fn from(k: warren_runtime::RuntimeKind) -> RuntimeRow {
        match k {
            warren_runtime::RuntimeKind::Native => RuntimeRow::Native,
            warren_runtime::RuntimeKind::Gvisor => RuntimeRow::Gvisor,
        }
    }
}

impl From<RuntimeRow> for warren_runtime::RuntimeKind {
    fn from(r: RuntimeRow) -> warren_runtime::RuntimeKind {
        match r {
            RuntimeRow::Native => warren_runtime::RuntimeKind::Native,
            RuntimeRow::Gvisor => warren_runtime::RuntimeKind::Gvisor,
        }
    }
}

impl From<&Lifecycle> for LifecycleRow {
    fn from(l: &Lifecycle) -> LifecycleRow {
        LifecycleRow {
            snapshot: l.snapshot.clone(),
            on_timeout: match l.on_timeout {
                TimeoutAction::Delete => OnTimeoutRow::Delete,
                TimeoutAction::Pause => OnTimeoutRow::Pause,
                TimeoutAction::Stop => OnTimeoutRow::Stop,
            },
            idle_timeout_secs: l.idle_timeout_secs,
            on_idle: match l.on_idle {
                IdleAction::Pause => OnIdleRow::Pause,
                IdleAction::Stop => OnIdleRow::Stop,
                IdleAction::Delete => OnIdleRow::Delete,
            },
            auto_resume: l.auto_resume,
            pool: l.pool.clone(),
            pool_member: l.pool_member,
            runtime: l.runtime.into(),
        }
    }
}

impl From<LifecycleRow> for Lifecycle {
    fn from(l: LifecycleRow) -> Lifecycle {
        Lifecycle {
            snapshot: l.snapshot,
            on_timeout: match l.on_timeout {
                OnTimeoutRow::Delete => TimeoutAction::Delete,
                OnTimeoutRow::Pause => TimeoutAction::Pause,
                OnTimeoutRow::Stop => TimeoutAction::Stop,
            },
            idle_timeout_secs: l.idle_timeout_secs,
            on_idle: match l.on_idle {
                OnIdleRow::Pause => IdleAction::Pause,
                OnIdleRow::Stop => IdleAction::Stop,
                OnIdleRow::Delete => IdleAction::Delete,
            },
            auto_resume: l.auto_resume,
            pool: l.pool,
            pool_member: l.pool_member,
            runtime: l.runtime.into(),
        }
    }
}

/// `pools.spec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct PoolSpecRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    resources: Option<ResourcesRow>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    network: Option<NetworkRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<RuntimeRow>,
}

/// A pool's `network` (strings, as the API gave them; checked again when the pool loads).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct NetworkRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    /// `(default, rules)`; absent: allow everything.
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<(String, Vec<(String, String)>)>,
}

fn action_str(a: warren_api::EgressAction) -> String {
    match a {
        warren_api::EgressAction::Allow => "allow".into(),
        warren_api::EgressAction::Deny => "deny".into(),
    }
}

fn action_of(s: &str) -> warren_api::EgressAction {
    if s == "deny" {
        warren_api::EgressAction::Deny
    } else {
        warren_api::EgressAction::Allow
    }
}

impl From<&warren_api::NetworkRequest> for NetworkRow {
    fn from(n: &warren_api::NetworkRequest) -> NetworkRow {
        NetworkRow {
            mode: n.mode.map(|m| m.as_str().to_string()),
            egress: n.egress.as_ref().map(|p| {
                (
                    action_str(p.default),
                    p.rules
                        .iter()
                        .map(|r| (action_str(r.action), r.target.clone()))
                        .collect(),
                )
            }),
        }
    }
}

impl From<NetworkRow> for warren_api::NetworkRequest {
    fn from(n: NetworkRow) -> warren_api::NetworkRequest {
        warren_api::NetworkRequest {
            mode: n.mode.as_deref().map(|m| {
                if m == "isolated" {
                    warren_api::NetworkMode::Isolated
                } else {
                    warren_api::NetworkMode::Nat
                }
            }),
            egress: n.egress.map(|(default, rules)| warren_api::EgressPolicy {
                default: action_of(&default),
                rules: rules
                    .into_iter()
                    .map(|(action, target)| warren_api::EgressRule {
                        action: action_of(&action),
                        target,
                    })
                    .collect(),
            }),
        }
    }
}

impl From<&PoolSpec> for PoolSpecRow {
    fn from(p: &PoolSpec) -> PoolSpecRow {
        PoolSpecRow {
            image: p.image.clone(),
            size: p.size,
            resources: p.resources.as_ref().map(ResourcesRow::from),
            env: p.env.clone(),
            network: p.network.as_ref().map(NetworkRow::from),
            runtime: p.runtime.map(|r| crate::runtimes::kind_of(r).into()),
        }
    }
}

impl From<PoolSpecRow> for PoolSpec {
    fn from(p: PoolSpecRow) -> PoolSpec {
        PoolSpec {
            image: p.image,
            size: p.size,
            resources: p.resources.map(Resources::from),
            env: p.env,
            network: p.network.map(warren_api::NetworkRequest::from),
            runtime: p.runtime.map(|r| crate::runtimes::api_of(r.into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows written before these types existed (the API's JSON then) read the same, and
    /// fields this Warren does not know are ignored.
    #[test]
    fn rows_read_what_earlier_versions_wrote() {
        let r: ResourcesRow =
            serde_json::from_str(r#"{"cpus":1.5,"memory_mib":512,"future":true}"#).unwrap();
        let r = Resources::from(r);
        assert_eq!((r.cpus, r.memory_mib, r.pids), (Some(1.5), Some(512), None));
        let l: LifecycleRow = serde_json::from_str(
            r#"{"snapshot":null,"on_timeout":"pause","idle_timeout_secs":60,"on_idle":"stop","auto_resume":true,"pool":"py","pool_member":true}"#,
        )
        .unwrap();
        let l = Lifecycle::from(l);
        assert_eq!(l.on_timeout, TimeoutAction::Pause);
        assert_eq!((l.on_idle, l.pool_member), (IdleAction::Stop, true));
        let back = serde_json::to_string(&LifecycleRow::from(&l)).unwrap();
        assert_eq!(
            back,
            r#"{"snapshot":null,"on_timeout":"pause","idle_timeout_secs":60,"on_idle":"stop","auto_resume":true,"pool":"py","pool_member":true}"#
        );
        let p: PoolSpecRow = serde_json::from_str(r#"{"size":2,"env":{"A":"b"}}"#).unwrap();
        let p = PoolSpec::from(p);
        assert_eq!((p.size, p.env["A"].as_str(), p.image), (2, "b", None));
    }
}
