//! Named volumes: directories under `<storage root>/volumes/<name>` that outlive sandboxes
//! and are bind-mounted into them (see `rootfs::mount_volumes`). On btrfs each is a
//! subvolume, with a quota group when it has a size limit; elsewhere a plain directory.
//!
//! Files are stored with the owners they have inside (root is 0 on disk): every sandbox
//! mounts a volume idmapped through its own user namespace, so two sandboxes with different
//! id ranges see the same owners.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use warren_runtime::{MountSource, MountSpec, RuntimeError};

use crate::layers::allocated_bytes;
use crate::spec::PlannedMount;
use crate::storage::{self, Backend, Storage};

const VOLUMES_DIR: &str = "volumes";

/// Whether `name` may name a volume: 1–63 of `[A-Za-z0-9_.-]`, starting with a letter or
/// digit (so never `.`, `..` or a path).
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> RuntimeError {
    RuntimeError::Io(io::Error::new(e.kind(), format!("{what}: {e}")))
}

impl Storage {
    pub fn volumes_dir(&self) -> PathBuf {
        self.root().join(VOLUMES_DIR)
    }

    /// The directory of volume `name` (which need not exist).
    fn volume_path(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        if !valid_name(name) {
            return Err(RuntimeError::Setup(format!("invalid volume name {name:?}")));
        }
        Ok(self.volumes_dir().join(name))
    }

    /// Make volume `name`: empty, mode 0755, owned by 0 (root inside every sandbox).
    pub fn create_volume(&self, name: &str, size_bytes: Option<u64>) -> Result<(), RuntimeError> {
        let path = self.volume_path(name)?;
        storage::mkdir_mode(&self.volumes_dir(), 0o700)
            .map_err(|e| io_err(self.volumes_dir().display(), e))?;
        if fs::symlink_metadata(&path).is_ok() {
            return Err(RuntimeError::Setup(format!("volume {name} exists")));
        }
        let group = match (size_bytes, self.quota()) {
            (None, _) => None,
            (Some(b), Some(q)) => Some(
                q.new_group(Some(b))
                    .map_err(|e| io_err("volume quota", e))?,
            ),
            (Some(_), None) => {
                return Err(RuntimeError::Setup(format!(
                    "volume size limits are not available: {}",
                    self.quota_error().unwrap_or("no quotas")
                )))
            }
        };
        let made = match self.backend() {
            Backend::Btrfs => storage::create_subvolume(&path, group),
            Backend::Dir => fs::create_dir(&path),
        }
        .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)))
        .and_then(|()| std::os::unix::fs::lchown(&path, Some(0), Some(0)));
        if let Err(e) = made {
            if let (Some(g), Some(q)) = (group, self.quota()) {
                let _ = q.remove_group(g);
            }
            let _ = storage::remove_tree(&path);
            return Err(io_err(format!("creating volume {name}"), e));
        }
        Ok(())
    }

    /// Remove volume `name` with its files and quota group; gone already is fine.
    pub fn delete_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let path = self.volume_path(name)?;
        let subvolume = storage::is_subvolume(&path)?;
        if subvolume {
            if let Some(q) = self.quota() {
                if let Ok(Some(g)) = q.group_of(&path) {
                    q.remove_group(g)
                        .map_err(|e| io_err(format!("removing the quota group of {name}"), e))?;
                }
            }
        }
        storage::remove_tree(&path)?;
        if subvolume {
            self.after_deletion();
        }
        Ok(())
    }

    /// Bytes volume `name` takes: its quota group's count where it has one, else the
    /// blocks of its files.
    pub fn volume_usage(&self, name: &str) -> Result<u64, RuntimeError> {
        let path = self.volume_path(name)?;
        if fs::symlink_metadata(&path).is_err() {
            return Err(RuntimeError::NotFound(format!("volume {name}")));
        }
        if let Some(q) = self.quota() {
            if let Ok(Some(g)) = q.group_of(&path) {
                if let Ok(Some(bytes)) = q.usage(g) {
                    return Ok(bytes);
                }
            }
        }
        Ok(allocated_bytes(&path))
    }

    /// Remove every volume not in `keep`; the names removed.
    pub fn reconcile_volumes(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let dir = self.volumes_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(dir.display(), e)),
        };
        let mut removed = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || !valid_name(&name) {
                continue;
            }
            tracing::warn!(volume = %name, "removing a volume the engine has no record of");
            self.delete_volume(&name)?;
            removed.push(name);
        }
        Ok(removed)
    }

    /// What the helper mounts for `m`.
    pub fn plan_mount(&self, m: &MountSpec) -> Result<PlannedMount, RuntimeError> {
        let (root, rel, in_root, make, idmap) = match &m.source {
            MountSource::Volume { name, sub_path } => {
                let root = self.volume_path(name)?;
                if !root.is_dir() {
                    return Err(RuntimeError::Setup(format!("volume {name} does not exist")));
                }
                let rel = PathBuf::from(sub_path.as_deref().unwrap_or(""));
                (root, rel, true, sub_path.is_some(), true)
            }
            MountSource::Host { root, rel } => (root.clone(), rel.clone(), false, false, false),
        };
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(RuntimeError::Setup(format!(
                "mount source {} must be a plain relative path",
                rel.display()
            )));
        }
        Ok(PlannedMount {
            root,
            rel,
            in_root,
            make,
            dest: m.dest.clone(),
            read_only: m.read_only,
            idmap,
        })
    }
}

/// Whether `dest` is a path a mount may take inside a sandbox: absolute, normal, not `/`,
/// not under `/proc`, `/sys` or `/dev`.
pub fn valid_dest(dest: &str) -> bool {
    let p = Path::new(dest);
    p.is_absolute()
        && p.components().count() > 1
        && p.components().all(|c| {
            matches!(
                c,
                std::path::Component::RootDir | std::path::Component::Normal(_)
            )
        })
        && !["/proc", "/sys", "/dev"]
            .iter()
            .any(|top| p.starts_with(top))
}
