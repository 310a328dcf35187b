//! OpenSandbox's wire types (camelCase lifecycle, snake_case execd) and the conversions of
//! their units: states, `"500m"`/`"256Mi"` quantities, octal-looking modes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use warren_api::{SandboxState, VolumeMount};

use crate::error::{OsError, OsResult};

/// Metadata keys Warren keeps for this surface; hidden from OpenSandbox clients.
pub const META_ENTRYPOINT: &str = "opensandbox.entrypoint";
pub const META_IMAGE: &str = "opensandbox.image";
pub const META_PREFIX: &str = "opensandbox.";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    pub uri: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_action: Option<Action>,
    #[serde(default)]
    pub egress: Vec<NetworkRule>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRule {
    pub action: Action,
    pub target: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPath {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pvc {
    pub claim_name: String,
    #[serde(default)]
    pub create_if_not_exists: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub host: Option<HostPath>,
    #[serde(default)]
    pub pvc: Option<Pvc>,
    #[serde(default)]
    pub ossfs: Option<serde_json::Value>,
    #[serde(default)]
    pub read_only: Option<bool>,
    #[serde(default)]
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSpec {
    pub os: String,
    pub arch: String,
}

/// `POST /v1/sandboxes`. `timeout` distinguishes absent from `null` (no deadline). Fields
/// Warren has no use for are ignored: `image.auth` (images are pulled ahead, not at create),
/// `resourceRequests` (no reservations), `secureAccess` (with API keys every endpoint needs
/// its token), `extensions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateSandbox {
    #[serde(default)]
    pub image: Option<ImageSpec>,
    #[serde(default)]
    pub snapshot_id: Option<String>,
    #[serde(default)]
    pub template_id: Option<String>,
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    #[serde(default, deserialize_with = "some_or_null")]
    pub timeout: Option<Option<i64>>,
    #[serde(default)]
    pub resource_limits: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub lifecycle: Option<serde_json::Value>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub network_policy: Option<NetworkPolicy>,
    #[serde(default)]
    pub credential_proxy: Option<serde_json::Value>,
    #[serde(default)]
    pub volumes: Vec<VolumeSpec>,
}

fn some_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub last_transition_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageRef {
    pub uri: String,
}

/// A sandbox as OpenSandbox shows it (also the create answer, which is a subset).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    pub id: String,
    pub image: ImageRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    pub status: Status,
    pub metadata: BTreeMap<String, String>,
    pub entrypoint: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pagination {
    pub page: u64,
    pub page_size: u64,
    pub total_items: u64,
    pub total_pages: u64,
    pub has_next_page: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub pagination: Pagination,
}

/// One page of `items` (pages count from 1).
pub fn paginate<T>(items: Vec<T>, page: u64, page_size: u64) -> Page<T> {
    let total = items.len() as u64;
    let total_pages = total.div_ceil(page_size);
    let skip = usize::try_from((page - 1).saturating_mul(page_size)).unwrap_or(usize::MAX);
    let take = usize::try_from(page_size).unwrap_or(usize::MAX);
    Page {
        items: items.into_iter().skip(skip).take(take).collect(),
        pagination: Pagination {
            page,
            page_size,
            total_items: total,
            total_pages,
            has_next_page: page < total_pages,
        },
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub endpoint: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Renew {
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Renewed {
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateSnapshot {
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    pub id: String,
    pub sandbox_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub status: Status,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub status: &'static str,
    pub mode: &'static str,
    pub enforcement_mode: &'static str,
    pub policy: NetworkPolicy,
}

/// OpenSandbox's name of a Warren state. A stopped sandbox is `Paused` (resume starts it).
pub fn state_name(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Creating => "Pending",
        SandboxState::Running | SandboxState::RollingBack => "Running",
        SandboxState::Pausing => "Pausing",
        SandboxState::Paused | SandboxState::Stopped => "Paused",
        SandboxState::Resuming | SandboxState::Starting => "Resuming",
        SandboxState::Stopping | SandboxState::Deleting => "Stopping",
        SandboxState::Failed => "Failed",
    }
}

/// Hide Warren's own keys.
pub fn visible_metadata(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.iter()
        .filter(|(k, _)| !k.starts_with(META_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

pub fn to_sandbox(s: &warren_api::Sandbox) -> Sandbox {
    let entrypoint = s
        .metadata
        .get(META_ENTRYPOINT)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default();
    let uri = s
        .metadata
        .get(META_IMAGE)
        .cloned()
        .unwrap_or_else(|| s.image.clone());
    Sandbox {
        id: s.id.clone(),
        image: ImageRef { uri },
        snapshot_id: s.snapshot.clone(),
        status: Status {
            state: state_name(s.state),
            reason: s.failure_reason.as_ref().map(|_| "Failed".to_string()),
            message: s.failure_reason.clone(),
            last_transition_at: s.state_changed_at,
        },
        metadata: visible_metadata(&s.metadata),
        entrypoint,
        created_at: s.created_at,
        expires_at: s.expires_at,
    }
}

/// CPUs of a Kubernetes-style quantity: `"500m"` is 0.5, `"2"` two.
pub fn parse_cpu(q: &str) -> OsResult<f64> {
    let bad = || {
        OsError::invalid(format!(
            "resourceLimits.cpu {q:?} is not a CPU quantity (\"500m\", \"2\")"
        ))
    };
    let q = q.trim();
    let v = match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map_err(|_| bad())? / 1000.0,
        None => q.parse::<f64>().map_err(|_| bad())?,
    };
    if !v.is_finite() || v <= 0.0 {
        return Err(bad());
    }
    Ok(v)
}

/// MiB of a Kubernetes-style byte quantity (`"256Mi"`, `"1Gi"`, `"512M"`, `"1073741824"`),
/// rounded up.
pub fn parse_mib(field: &str, q: &str) -> OsResult<u64> {
    let bad = || {
        OsError::invalid(format!(
            "{field} {q:?} is not a byte quantity (\"256Mi\", \"1Gi\")"
        ))
    };
    let q = q.trim();
    let units: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("K", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("B", 1.0),
        ("b", 1.0),
        ("", 1.0),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).filter(|n| !n.is_empty()).map(|n| (n, *m)))
        .ok_or_else(bad)?;
    let bytes = num.trim().parse::<f64>().map_err(|_| bad())? * mult;
    if !bytes.is_finite() || bytes <= 0.0 {
        return Err(bad());
    }
    Ok((bytes / (1024.0 * 1024.0)).ceil() as u64)
}

/// Permission bits from OpenSandbox's octal-looking decimal (`755` is `0o755`).
pub fn mode_from_os(field: &str, m: i64) -> OsResult<u32> {
    let digits = m.to_string();
    if m < 0 || digits.len() > 4 || digits.bytes().any(|b| b > b'7') {
        return Err(OsError::invalid(format!(
            "{field} {m} is not a mode (octal digits, like 755 or 644)"
        )));
    }
    u32::from_str_radix(&digits, 8)
        .map_err(|_| OsError::invalid(format!("{field} {m} is not a mode")))
}

/// OpenSandbox's octal-looking decimal of permission bits (`0o644` is `644`).
pub fn mode_to_os(mode: u32) -> u32 {
    format!("{:o}", mode & 0o7777).parse().unwrap_or(0)
}

/// A Warren volume mount for an OpenSandbox volume (host paths and PVCs, which are Warren's
/// named volumes).
pub fn volume_mount(v: &VolumeSpec) -> OsResult<VolumeMount> {
    let read_only = v.read_only.unwrap_or(false);
    let sub_path = v.sub_path.clone().filter(|s| !s.is_empty());
    match (&v.host, &v.pvc, &v.ossfs) {
        (Some(h), None, None) => Ok(VolumeMount {
            name: None,
            host_path: Some(match &sub_path {
                Some(sub) => format!("{}/{}", h.path.trim_end_matches('/'), sub.trim_start_matches('/')),
                None => h.path.clone(),
            }),
            path: v.mount_path.clone(),
            read_only,
            sub_path: None,
        }),
        (None, Some(p), None) => Ok(VolumeMount {
            name: Some(p.claim_name.clone()),
            host_path: None,
            path: v.mount_path.clone(),
            read_only,
            sub_path,
        }),
        (None, None, Some(_)) => Err(OsError::unsupported(format!(
            "volume {:?}: ossfs volumes are not supported by Warren (use a host path or a pvc, which is a Warren volume)",
            v.name
        ))),
        _ => Err(OsError::invalid(format!(
            "volume {:?} needs exactly one of host, pvc",
            v.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_modes() {
        assert_eq!(parse_cpu("500m").unwrap(), 0.5);
        assert_eq!(parse_cpu("2").unwrap(), 2.0);
        assert!(parse_cpu("-1").is_err() && parse_cpu("x").is_err() && parse_cpu("0").is_err());
        assert_eq!(parse_mib("m", "256Mi").unwrap(), 256);
        assert_eq!(parse_mib("m", "1Gi").unwrap(), 1024);
        assert_eq!(parse_mib("m", "1000M").unwrap(), 954);
        assert_eq!(parse_mib("m", "1048576").unwrap(), 1);
        assert!(parse_mib("m", "Mi").is_err() && parse_mib("m", "12Qi").is_err());
        assert_eq!(mode_from_os("mode", 755).unwrap(), 0o755);
        assert_eq!(mode_from_os("mode", 600).unwrap(), 0o600);
        assert!(mode_from_os("mode", 789).is_err() && mode_from_os("mode", -1).is_err());
        assert_eq!(mode_to_os(0o100644), 644);
        assert_eq!(mode_to_os(0o4755), 4755);
    }

    #[test]
    fn pages() {
        let p = paginate((0..5).collect::<Vec<_>>(), 2, 2);
        assert_eq!(p.items, vec![2, 3]);
        assert!(p.pagination.has_next_page);
        assert_eq!(p.pagination.total_pages, 3);
        let last = paginate((0..5).collect::<Vec<_>>(), 3, 2);
        assert_eq!(last.items, vec![4]);
        assert!(!last.pagination.has_next_page);
        assert!(paginate(Vec::<u8>::new(), 1, 20).items.is_empty());
    }
}
