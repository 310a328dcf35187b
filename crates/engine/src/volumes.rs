//! Named volumes and host directory mounts.
//!
//! A volume is a directory the runtime keeps apart from every sandbox (`Runtime::create_volume`)
//! with a row in the store; sandboxes name volumes (and allowed host directories) in
//! `POST /v1/sandboxes` `volumes` and the runtime binds them in at every start. A volume
//! outlives its sandboxes, can be mounted by several at once, and is not part of snapshots
//! (a restore or fork mounts the same volume as it is then).
//!
//! Races: a delete checks the sandboxes that mount the volume and marks it deleting under
//! the sandbox map's lock, and a create checks its volumes under the same lock when it
//! inserts its record ([`Engine::check_volumes_exist`]), so no sandbox is ever made on a
//! volume being deleted.

use std::path::{Component, Path, PathBuf};

use tracing::{info, warn};
use warren_api::{CreateVolumeRequest, Volume, VolumeMount};
use warren_runtime::{MountSource, MountSpec};

use crate::store::VolumeRow;
use crate::{Engine, EngineError};

/// Most mounts one sandbox may have.
pub const MAX_MOUNTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VolumeState {
    Creating,
    Ready,
    Deleting,
}

#[derive(Debug, Clone)]
pub(crate) struct VolumeEntry {
    row: VolumeRow,
    state: VolumeState,
}

/// The ids of the sandboxes of `map` (any state) whose mounts name volume `name`, sorted.
fn users_of(map: &std::collections::HashMap<String, crate::Entry>, name: &str) -> Vec<String> {
    let mut users: Vec<String> = map
        .values()
        .filter(|e| {
            e.record
                .volumes
                .iter()
                .any(|m| m.name.as_deref() == Some(name))
        })
        .map(|e| e.record.id.clone())
        .collect();
    users.sort_unstable();
    users
}

/// Whether `name` may name a volume: 1–63 of `[A-Za-z0-9_.-]`, starting with a letter or
/// digit.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest(msg.into())
}

/// `p` rebuilt from its components if it is absolute and has no `.` or `..`.
fn normal_absolute(p: &str) -> Option<PathBuf> {
    let path = Path::new(p);
    if !path.is_absolute() || p.contains('\0') {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            _ => return None,
        }
    }
    Some(out)
}

/// A sandbox path a mount may take: absolute and normal, not `/`, not under `/proc`,
/// `/sys` or `/dev` (the runtime's own mounts).
fn mount_dest(p: &str) -> Result<String, EngineError> {
    let dest = normal_absolute(p).ok_or_else(|| {
        invalid(format!(
            "volume path {p:?} must be absolute, without . or .."
        ))
    })?;
    if dest == Path::new("/")
        || ["/proc", "/sys", "/dev"]
            .iter()
            .any(|t| dest.starts_with(t))
    {
        return Err(invalid(format!(
            "volume path {p:?} cannot be /, nor under /proc, /sys or /dev"
        )));
    }
    dest.to_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("volume path {p:?} is not UTF-8")))
}

fn sub_path(p: &str) -> Result<String, EngineError> {
    let path = Path::new(p);
    let ok = !p.is_empty()
        && !p.contains('\0')
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(invalid(format!(
            "sub_path {p:?} must be a relative path without . or .."
        )));
    }
    let mut out = PathBuf::new();
    out.extend(path.components());
    Ok(out.to_string_lossy().into_owned())
}

impl Engine {
    fn volumes(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, VolumeEntry>> {
        self.inner.volumes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_volumes_supported(&self) -> Result<(), EngineError> {
        if self.inner.runtime.info().volumes {
            Ok(())
        } else {
            Err(EngineError::NotSupported("volumes"))
        }
    }

    /// At open: the stored volumes; the runtime's volumes without a row (a crash between
    /// making one and recording it) are removed.
    pub(crate) async fn load_volumes(&self) -> Result<(), EngineError> {
        let rows = self.inner.store.load_volumes().await?;
        if self.inner.runtime.info().volumes {
            let keep: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
            match self.inner.runtime.reconcile_volumes(&keep).await {
                Ok(removed) if !removed.is_empty() => {
                    warn!(?removed, "volumes without a record removed")
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "reconciling volumes"),
            }
        }
        let mut map = self.volumes();
        for row in rows {
            map.insert(
                row.name.clone(),
                VolumeEntry {
                    row,
                    state: VolumeState::Ready,
                },
            );
        }
        Ok(())
    }

    pub async fn create_volume(&self, req: CreateVolumeRequest) -> Result<Volume, EngineError> {
        self.check_open()?;
        self.check_volumes_supported()?;
        if !valid_name(&req.name) {
            return Err(invalid(format!(
                "volume name {:?}: 1-63 of A-Z a-z 0-9 _ . -, starting with a letter or digit",
                req.name
            )));
        }
        let size_bytes = match req.size_mib {
            None => None,
            Some(0) => return Err(invalid("size_mib must be at least 1")),
            Some(_) if !self.inner.runtime.info().volume_quota => {
                return Err(invalid(
                    "size_mib is not enforced on this server's storage (capabilities: \
                     storage.volume_quota is false); leave it out",
                ))
            }
            Some(m) => Some(
                m.checked_mul(1 << 20)
                    .ok_or_else(|| invalid("size_mib too large"))?,
            ),
        };
        let row = VolumeRow {
            name: req.name.clone(),
            size_mib: req.size_mib,
            created_at: crate::now_ms(),
        };
        {
            let mut map = self.volumes();
            if map.contains_key(&req.name) {
                return Err(EngineError::VolumeExists(req.name));
            }
            map.insert(
                req.name.clone(),
                VolumeEntry {
                    row: row.clone(),
                    state: VolumeState::Creating,
                },
            );
        }
        let made = async {
            self.inner
                .runtime
                .create_volume(&row.name, size_bytes)
                .await?;
            if let Err(e) = self.inner.store.put_volume(&row).await {
                if let Err(ce) = self.inner.runtime.delete_volume(&row.name).await {
                    warn!(volume = %row.name, error = %ce, "cleanup after a failed volume create");
                }
                return Err(e);
            }
            Ok(())
        }
        .await;
        let mut map = self.volumes();
        match made {
            Ok(()) => {
                if let Some(e) = map.get_mut(&row.name) {
                    e.state = VolumeState::Ready;
                }
                info!(volume = %row.name, size_mib = ?row.size_mib, "volume created");
                Ok(Volume {
                    name: row.name,
                    size_mib: row.size_mib,
                    created_at: row.created_at,
                    used_bytes: 0,
                    sandboxes: Vec::new(),
                })
            }
            Err(e) => {
                map.remove(&row.name);
                Err(e)
            }
        }
    }

    /// The sandboxes (any state) whose mounts name volume `name`, sorted.
    fn volume_users(&self, name: &str) -> Vec<String> {
        users_of(&self.map(), name)
    }

    async fn view_volume(&self, row: VolumeRow) -> Volume {
        let used_bytes = match self.inner.runtime.volume_usage(&row.name).await {
            Ok(b) => b,
            Err(e) => {
                warn!(volume = %row.name, error = %e, "reading a volume's usage");
                0
            }
        };
        Volume {
            sandboxes: self.volume_users(&row.name),
            name: row.name,
            size_mib: row.size_mib,
            created_at: row.created_at,
            used_bytes,
        }
    }

    pub async fn list_volumes(&self) -> Result<Vec<Volume>, EngineError> {
        let rows: Vec<VolumeRow> = self
            .volumes()
            .values()
            .filter(|e| e.state == VolumeState::Ready)
            .map(|e| e.row.clone())
            .collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.view_volume(row).await);
        }
        Ok(out)
    }

    pub async fn get_volume(&self, name: &str) -> Result<Volume, EngineError> {
        let row = self
            .volumes()
            .get(name)
            .filter(|e| e.state == VolumeState::Ready)
            .map(|e| e.row.clone())
            .ok_or_else(|| EngineError::VolumeNotFound(name.to_string()))?;
        Ok(self.view_volume(row).await)
    }

    /// Delete volume `name` and its files: 409 `volume_in_use` while any sandbox (in any
    /// state, stopped ones included) mounts it.
    pub async fn delete_volume(&self, name: &str) -> Result<(), EngineError> {
        self.check_open()?;
        {
            // Sandbox map first, then volumes: the order a create takes them in.
            let sandboxes = self.map();
            let mut vols = self.volumes();
            let entry = vols
                .get_mut(name)
                .filter(|e| e.state == VolumeState::Ready)
                .ok_or_else(|| EngineError::VolumeNotFound(name.to_string()))?;
            let users = users_of(&sandboxes, name);
            if !users.is_empty() {
                return Err(EngineError::VolumeInUse(format!(
                    "volume {name} is mounted by {}",
                    users.join(", ")
                )));
            }
            entry.state = VolumeState::Deleting;
        }
        let done = async {
            self.inner.runtime.delete_volume(name).await?;
            self.inner.store.remove_volume(name).await
        }
        .await;
        let mut vols = self.volumes();
        match done {
            Ok(()) => {
                vols.remove(name);
                info!(volume = %name, "volume deleted");
                Ok(())
            }
            Err(e) => {
                // Its files may be partly gone; the row stays so it can be deleted again.
                if let Some(entry) = vols.get_mut(name) {
                    entry.state = VolumeState::Ready;
                }
                Err(e)
            }
        }
    }

    /// Check and normalise a create's `volumes`, sorted so a mount inside another's path
    /// comes after it. Host directories are resolved (symlinks included) and must lie under
    /// an allowed prefix.
    pub(crate) async fn resolve_mounts(
        &self,
        req: &[VolumeMount],
    ) -> Result<Vec<VolumeMount>, EngineError> {
        if req.is_empty() {
            return Ok(Vec::new());
        }
        self.check_volumes_supported()?;
        if req.len() > MAX_MOUNTS {
            return Err(invalid(format!("at most {MAX_MOUNTS} volumes per sandbox")));
        }
        let mut out = Vec::with_capacity(req.len());
        for m in req {
            let path = mount_dest(&m.path)?;
            let mount = match (&m.name, &m.host_path) {
                (Some(name), None) => {
                    if !self
                        .volumes()
                        .get(name)
                        .is_some_and(|e| e.state == VolumeState::Ready)
                    {
                        return Err(EngineError::VolumeNotFound(name.clone()));
                    }
                    VolumeMount {
                        name: Some(name.clone()),
                        host_path: None,
                        path,
                        read_only: m.read_only,
                        sub_path: m.sub_path.as_deref().map(sub_path).transpose()?,
                    }
                }
                (None, Some(host)) => {
                    if m.sub_path.is_some() {
                        return Err(invalid(
                            "sub_path goes with a named volume; put it in host_path",
                        ));
                    }
                    VolumeMount {
                        name: None,
                        host_path: Some(self.allowed_host_path(host).await?),
                        path,
                        read_only: m.read_only,
                        sub_path: None,
                    }
                }
                _ => {
                    return Err(invalid(
                        "each volume names exactly one of `name` and `host_path`",
                    ))
                }
            };
            out.push(mount);
        }
        out.sort_by_key(|m| Path::new(&m.path).components().count());
        for pair in out.windows(2) {
            if pair[0].path == pair[1].path {
                return Err(invalid(format!("two volumes at {}", pair[0].path)));
            }
        }
        Ok(out)
    }

    /// `host` resolved (symlinks followed) if it is an existing directory under a prefix of
    /// `--allow-host-path`.
    async fn allowed_host_path(&self, host: &str) -> Result<String, EngineError> {
        let allowed = self.inner.config.allowed_host_paths.clone();
        if allowed.is_empty() {
            return Err(invalid(
                "host_path mounts are off on this server (warren serve --allow-host-path)",
            ));
        }
        let asked = normal_absolute(host).ok_or_else(|| {
            invalid(format!(
                "host_path {host:?} must be absolute, without . or .."
            ))
        })?;
        let real = tokio::task::spawn_blocking(move || std::fs::canonicalize(&asked))
            .await
            .map_err(|e| EngineError::Store(format!("resolving a host path: {e}")))?
            .map_err(|e| invalid(format!("host_path {host:?}: {e}")))?;
        let meta = tokio::fs::metadata(&real)
            .await
            .map_err(|e| invalid(format!("host_path {host:?}: {e}")))?;
        if !meta.is_dir() {
            return Err(invalid(format!("host_path {host:?} is not a directory")));
        }
        if !allowed.iter().any(|prefix| real.starts_with(prefix)) {
            return Err(EngineError::PermissionDenied(format!(
                "host_path {host:?} (resolved: {}) is not under an allowed prefix",
                real.display()
            )));
        }
        real.to_str()
            .map(str::to_string)
            .ok_or_else(|| invalid(format!("host_path {host:?} is not UTF-8")))
    }

    /// Under the sandbox map's lock: every named volume of `mounts` exists and is not being
    /// deleted.
    pub(crate) fn check_volumes_exist(&self, mounts: &[VolumeMount]) -> Result<(), EngineError> {
        if mounts.is_empty() {
            return Ok(());
        }
        let vols = self.volumes();
        for name in mounts.iter().filter_map(|m| m.name.as_ref()) {
            if !vols
                .get(name)
                .is_some_and(|e| e.state == VolumeState::Ready)
            {
                return Err(EngineError::VolumeNotFound(name.clone()));
            }
        }
        Ok(())
    }

    /// The runtime's view of a record's mounts.
    pub(crate) fn runtime_mounts(&self, mounts: &[VolumeMount]) -> Vec<MountSpec> {
        let allowed = &self.inner.config.allowed_host_paths;
        mounts
            .iter()
            .filter_map(|m| {
                let source = match (&m.name, &m.host_path) {
                    (Some(name), _) => MountSource::Volume {
                        name: name.clone(),
                        sub_path: m.sub_path.clone(),
                    },
                    (None, Some(host)) => {
                        let host = Path::new(host);
                        // The longest allowed prefix it is under (a prefix the operator
                        // has since removed: the mount is refused, as any new one would be).
                        let root = allowed
                            .iter()
                            .filter(|p| host.starts_with(p))
                            .max_by_key(|p| p.components().count());
                        match root {
                            Some(root) => MountSource::Host {
                                root: root.clone(),
                                rel: host.strip_prefix(root).unwrap_or(host).to_path_buf(),
                            },
                            None => MountSource::Host {
                                root: PathBuf::from("/nonexistent-host-path-prefix"),
                                rel: PathBuf::new(),
                            },
                        }
                    }
                    (None, None) => return None,
                };
                Some(MountSpec {
                    source,
                    dest: m.path.clone(),
                    read_only: m.read_only,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_dests_and_sub_paths() {
        for ok in ["data", "a", "A-1_b.c", &"x".repeat(63)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "..", "a b", &"x".repeat(64)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert_eq!(mount_dest("/data//x/").unwrap(), "/data/x");
        for bad in [
            "/", "data", "/a/../b", "/proc", "/proc/x", "/sys/fs", "/dev/shm",
        ] {
            assert!(mount_dest(bad).is_err(), "{bad}");
        }
        assert_eq!(mount_dest("/devices").unwrap(), "/devices");
        assert_eq!(sub_path("a//b/").unwrap(), "a/b");
        for bad in ["", "/a", "../a", "a/../b", "./a"] {
            assert!(sub_path(bad).is_err(), "{bad}");
        }
    }
}
