//! E2B's control-plane wire types (camelCase, with E2B's own `ID` spellings) and the
//! mapping of Warren's sandboxes onto them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use warren_api::{EgressAction, EgressPolicy, EgressRule, SandboxState};

use crate::error::{E2bError, E2bResult};
use crate::{CLIENT_ID, ENVD_VERSION};

/// Metadata key where Warren keeps the `templateID` a sandbox was created with; hidden
/// from E2B clients, who cannot set keys under [`META_PREFIX`].
pub const META_TEMPLATE: &str = "e2b.templateID";
pub const META_PREFIX: &str = "e2b.";

#[derive(Debug, Clone, Deserialize)]
pub struct AutoResume {
    pub enabled: bool,
}

/// `network` of a create and the body of `PUT /sandboxes/{id}/network`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    #[serde(default)]
    pub allow_out: Option<Vec<String>>,
    #[serde(default)]
    pub deny_out: Option<Vec<String>>,
    #[serde(default)]
    pub dns_servers: Option<Vec<String>>,
    #[serde(default)]
    pub egress_proxy: Option<serde_json::Value>,
    #[serde(default)]
    pub rules: Option<serde_json::Value>,
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub path: String,
}

/// `POST /v2/sandboxes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub auto_pause: Option<bool>,
    #[serde(default)]
    pub auto_pause_memory: Option<bool>,
    #[serde(default)]
    pub auto_resume: Option<AutoResume>,
    #[serde(default, rename = "allow_internet_access")]
    pub allow_internet_access: Option<bool>,
    #[serde(default)]
    pub network: Option<Network>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mcp: Option<serde_json::Value>,
    #[serde(default)]
    pub iam: Option<serde_json::Value>,
    #[serde(default)]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// The egress policy E2B's network options ask for: `allow_internet_access: false` or a
/// `denyOut` of `0.0.0.0/0` deny by default; other `denyOut` targets are denied and every
/// `allowOut` target allowed (more specific than the default, so allowOut wins over it).
pub fn egress(
    allow_internet: Option<bool>,
    net: Option<&Network>,
) -> E2bResult<Option<EgressPolicy>> {
    let net = net.cloned().unwrap_or_default();
    if net.dns_servers.as_ref().is_some_and(|d| !d.is_empty())
        || net.egress_proxy.as_ref().is_some_and(|p| !p.is_null())
        || net
            .rules
            .as_ref()
            .is_some_and(|r| !r.is_null() && r != &serde_json::json!({}))
    {
        return Err(E2bError::bad_request(
            "network.dnsServers, egressProxy and rules are not supported by Warren (allowOut and denyOut are)",
        ));
    }
    let deny = net.deny_out.unwrap_or_default();
    let allow = net.allow_out.unwrap_or_default();
    let everything = |t: &String| t == "0.0.0.0/0";
    let closed = allow_internet == Some(false)
        || net.allow_internet_access == Some(false)
        || deny.iter().any(everything);
    if !closed
        && deny.is_empty()
        && allow.is_empty()
        && allow_internet.is_none()
        && net.allow_internet_access.is_none()
    {
        return Ok(None);
    }
    let mut rules: Vec<EgressRule> = deny
        .iter()
        .filter(|t| !everything(t))
        .map(|t| EgressRule {
            action: EgressAction::Deny,
            target: t.clone(),
        })
        .collect();
    rules.extend(allow.iter().map(|t| EgressRule {
        action: EgressAction::Allow,
        target: t.clone(),
    }));
    Ok(Some(EgressPolicy {
        default: if closed {
            EgressAction::Deny
        } else {
            EgressAction::Allow
        },
        rules,
    }))
}

/// The create answer (`Sandbox`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    pub envd_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    pub traffic_access_token: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub auto_resume: bool,
    pub on_timeout: &'static str,
}

/// `GET /sandboxes/{id}` (`SandboxDetail`) and, without the last fields, a list item.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: &'static str,
    pub started_at: DateTime<Utc>,
    pub end_at: DateTime<Utc>,
    pub envd_version: &'static str,
    pub cpu_count: u64,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    pub state: &'static str,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
}

/// E2B knows two states: a sandbox that can run commands, and one that cannot until a
/// connect resumes it (paused in memory, or stopped: `pauseMode` says which).
pub fn state_name(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Creating
        | SandboxState::Running
        | SandboxState::Resuming
        | SandboxState::Starting
        | SandboxState::RollingBack => "running",
        SandboxState::Pausing
        | SandboxState::Paused
        | SandboxState::Stopping
        | SandboxState::Stopped
        | SandboxState::Deleting
        | SandboxState::Failed => "paused",
    }
}

pub fn visible_metadata(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| !k.starts_with(META_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The `templateID` a sandbox was created with (its image for one made elsewhere).
pub fn template_of(s: &warren_api::Sandbox) -> String {
    s.metadata
        .get(META_TEMPLATE)
        .cloned()
        .unwrap_or_else(|| s.image.clone())
}

pub fn detail(s: &warren_api::Sandbox, token: Option<String>) -> Detail {
    let r = &s.resources;
    Detail {
        template_id: template_of(s),
        sandbox_id: s.id.clone(),
        client_id: CLIENT_ID,
        started_at: s.created_at,
        end_at: s.expires_at,
        envd_version: ENVD_VERSION,
        cpu_count: r.cpus.map_or(1, |c| c.ceil().max(1.0) as u64),
        memory_mb: r.memory_mib.unwrap_or(0),
        disk_size_mb: r.disk_mib.unwrap_or(0),
        state: state_name(s.state),
        metadata: visible_metadata(&s.metadata),
        pause_mode: match s.state {
            SandboxState::Paused | SandboxState::Pausing => Some("full"),
            SandboxState::Stopped | SandboxState::Stopping => Some("filesystem"),
            _ => None,
        },
        envd_access_token: token,
        lifecycle: Some(Lifecycle {
            auto_resume: s.auto_resume,
            on_timeout: match s.on_timeout {
                warren_api::TimeoutAction::Delete => "kill",
                _ => "pause",
            },
        }),
        allow_internet_access: Some(
            s.network.mode == warren_api::NetworkMode::Nat
                && s.network.egress.default == EgressAction::Allow,
        ),
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Timeout {
    pub timeout: u64,
}

/// `memory` is not read: a sandbox paused in memory resumes from it, one paused
/// filesystem-only starts fresh.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Connect {
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Pause {
    #[serde(default)]
    pub memory: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SnapshotRequest {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Fork {
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ForkResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Created>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<E2bError>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    pub timestamp: DateTime<Utc>,
    pub timestamp_unix: i64,
    pub cpu_count: u64,
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_options_become_a_policy() {
        assert_eq!(egress(None, None).unwrap(), None);
        let closed = egress(Some(false), None).unwrap().unwrap();
        assert_eq!(closed.default, EgressAction::Deny);
        assert!(closed.rules.is_empty());
        let net = Network {
            deny_out: Some(vec!["0.0.0.0/0".into()]),
            allow_out: Some(vec!["1.1.1.1".into()]),
            ..Default::default()
        };
        let p = egress(None, Some(&net)).unwrap().unwrap();
        assert_eq!(p.default, EgressAction::Deny);
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.rules[0].action, EgressAction::Allow);
        let net = Network {
            deny_out: Some(vec!["8.8.8.8".into()]),
            ..Default::default()
        };
        let p = egress(None, Some(&net)).unwrap().unwrap();
        assert_eq!(p.default, EgressAction::Allow);
        assert_eq!(p.rules[0].action, EgressAction::Deny);
        let bad = Network {
            dns_servers: Some(vec!["1.1.1.1".into()]),
            ..Default::default()
        };
        assert!(egress(None, Some(&bad)).is_err());
    }
}
