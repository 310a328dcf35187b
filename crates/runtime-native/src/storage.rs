//! Where sandboxes keep their writable state, and snapshots of it.
//!
//! Each sandbox's writable state is one directory, `<sandbox_dir>/fs/`, holding both
//! overlay upper layers and their work dirs (see [`SandboxPaths`]). A snapshot is a copy
//! of that directory at `<root>/snapshots/<snapshot_id>/`; a restore (a new sandbox made
//! from a snapshot, or a rollback) copies a snapshot back into a sandbox's `fs/`. `root` is
//! the data dir, or the mounted loop image of the btrfs backend (`sandboxes/` lives there
//! too, so sandboxes and snapshots share one file system).
//!
//! Two backends ([`StorageConfig`]):
//!
//! - `dir` works on any file system. A snapshot is `cp -a` of `fs/` into
//!   `snapshots/.tmp-<id>`, renamed to `snapshots/<id>` once complete (a crash leaves only
//!   `.tmp-*` partials, which [`Storage::reconcile_snapshots`] removes). `cp` shares blocks
//!   (reflinks) where the file system can (btrfs, XFS).
//! - `btrfs`: `fs/` is a subvolume. A snapshot is a read-only subvolume snapshot (O(1),
//!   atomic; read-only so nothing can change a snapshot by accident); a restore is a
//!   writable snapshot of it. Made with the btrfs ioctls, not by exec'ing `btrfs`.
//!
//! Consistency: the caller freezes a running sandbox's cgroup around
//! [`Storage::stage_snapshot`]. Writes through an overlay go straight to the upper layer's
//! files (the same page cache), so a copy or a btrfs snapshot of `fs/` taken while every
//! process is frozen is what the sandbox saw at that instant.
//!
//! Crash safety of a rollback: the new files are built at `fs.new` beside `fs`, then swapped
//! in. [`Storage::recover`] finishes or undoes an interrupted swap, so the sandbox has
//! either the old or the new files, never a mix.
//!
//! Everything on [`Storage`] is blocking: call it from `spawn_blocking`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::{renameat2, RenameFlags};
use nix::mount::{umount2, MntFlags};
use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC, TMPFS_MAGIC};

use crate::layers::{self, allocated_bytes};
use crate::spec::{self, SandboxPaths};
use crate::userns;
use crate::{blocking, cg_err, cgroup, quota, Inner, NativeRuntime};
use warren_runtime::{RuntimeError, SnapshotMeta};

/// Storage backend of [`crate::NativeConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StorageConfig {
    /// Plain directories on the data dir's file system; snapshots are copies.
    #[default]
    Dir,
    /// Btrfs subvolumes; snapshots are subvolume snapshots. Used directly if the data dir
    /// is on btrfs; otherwise, with `loop_size_bytes`, the runtime creates (once) a sparse
    /// image of that size at `<data_dir>/storage/btrfs.img`, formats it and mounts it at
    /// `<data_dir>/storage/btrfs` (the size only matters when the image is created).
    Btrfs { loop_size_bytes: Option<u64> },
    /// The daemon's default: a btrfs loop image where that works, else `Dir` (see
    /// [`auto_loop`]). The image's size is `loop_size_bytes`, or [`default_loop_size`] of
    /// the data dir's free space.
    Auto { loop_size_bytes: Option<u64> },
}

/// The backend in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Dir,
    Btrfs,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Dir => "dir",
            Backend::Btrfs => "btrfs",
        }
    }
}

/// Name of the snapshots directory in the storage root.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Prefix of a snapshot being copied (`dir` backend).
const TMP_PREFIX: &str = ".tmp-";
/// A rollback's new files, before the swap (after an exchange: the old files).
const FS_NEW: &str = "fs.new";
/// The old files during a two-rename swap.
const FS_OLD: &str = "fs.old";
/// Room above its usage a sandbox's disk limit leaves while the sandbox's overlay is
/// mounted and its agent comes up (overlayfs makes its work dir at mount, and mounts
/// read-only if it cannot).
pub const START_HEADROOM: u64 = 16 << 20;
/// Smallest loop image accepted (`mkfs.btrfs` refuses much less than ~110 MiB).
pub const MIN_LOOP_SIZE: u64 = 128 << 20;
/// Directory under the data dir holding the loop image and its mount point.
const LOOP_DIR: &str = "storage";
const LOOP_IMAGE: &str = "btrfs.img";
const LOOP_MOUNT: &str = "btrfs";

/// A sandbox's storage: where `sandboxes/` and `snapshots/` live and how copies are made.
pub struct Storage {
    backend: Backend,
    root: PathBuf,
    /// The loop-mounted btrfs image this runtime uses (unmounted by [`Storage::shutdown`]).
    loop_mount: Option<PathBuf>,
    /// Its image file (kept fully allocated, see [`keep_allocated`]).
    loop_image: Option<PathBuf>,
    /// Disk quotas (btrfs simple quotas), when the backend has them.
    quota: Option<quota::Quota>,
    /// Why there are no disk quotas (reported once at start).
    quota_error: Option<String>,
    reflink: bool,
    btrfs_available: bool,
    /// Per-sandbox locks serializing snapshots and rollbacks of one sandbox (a second
    /// snapshot must not take the first one's freeze for a pause, and thaw too early).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("backend", &self.backend)
            .field("root", &self.root)
            .field("loop_mount", &self.loop_mount)
            .field("quota", &self.quota.is_some())
            .field("reflink", &self.reflink)
            .finish()
    }
}

/// An `io::Error` with context, keeping its kind.
fn ctx(what: impl std::fmt::Display, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn setup(what: impl std::fmt::Display, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Setup(format!("{what}: {e}"))
}

impl Storage {
    /// Set up the configured backend under `data_dir` (mounting the btrfs loop image if
    /// needed, or reusing it when a previous daemon left it mounted) and probe reflinks.
    pub fn open(data_dir: &Path, cfg: &StorageConfig) -> Result<Storage, RuntimeError> {
        let data_on_btrfs = is_btrfs(data_dir).map_err(|e| setup("storage", e))?;
        let btrfs_available = data_on_btrfs || find_tool("mkfs.btrfs").is_some();
        let (backend, root, loop_mount, mounted_now) = match cfg {
            StorageConfig::Dir => (Backend::Dir, data_dir.to_path_buf(), None, false),
            StorageConfig::Btrfs { .. } if data_on_btrfs => {
                (Backend::Btrfs, data_dir.to_path_buf(), None, false)
            }
            StorageConfig::Btrfs {
                loop_size_bytes: Some(size),
            } => {
                let (mnt, mounted_now) = setup_loop(data_dir, *size)?;
                (Backend::Btrfs, mnt.clone(), Some(mnt), mounted_now)
            }
            StorageConfig::Auto { loop_size_bytes } => match auto_loop(data_dir, *loop_size_bytes)?
            {
                Some((mnt, mounted_now)) => (Backend::Btrfs, mnt.clone(), Some(mnt), mounted_now),
                None => (Backend::Dir, data_dir.to_path_buf(), None, false),
            },
            StorageConfig::Btrfs {
                loop_size_bytes: None,
            } => {
                return Err(RuntimeError::Setup(format!(
                    "storage btrfs: the data dir {} is not on a btrfs file system; put it on \
                     btrfs, or give a loop image size (--btrfs-loop-size) so that the runtime \
                     creates and mounts one",
                    data_dir.display()
                )))
            }
        };
        let made = (|| {
            layers::mkdir_sandboxes(&root).map_err(|e| ctx("creating sandboxes dir", e))?;
            mkdir_mode(&root.join(SNAPSHOTS_DIR), 0o700)
                .map_err(|e| ctx("creating snapshots dir", e))
        })();
        if let Err(e) = made {
            if mounted_now {
                if let Some(m) = &loop_mount {
                    let _ = umount2(m.as_path(), MntFlags::empty());
                }
            }
            return Err(setup("storage", e));
        }
        let reflink = probe_reflink(&root.join(SNAPSHOTS_DIR));
        let loop_image = loop_mount
            .as_ref()
            .map(|_| data_dir.join(LOOP_DIR).join(LOOP_IMAGE));
        if let Some(img) = &loop_image {
            // An image made sparse (by an older version, or punched by a trim) is filled in.
            if let Err(e) = keep_allocated(img) {
                tracing::warn!(image = %img.display(), error = %e,
                    "the btrfs image cannot be fully allocated: if the host file system fills \
                     up, writes to the image fail");
            }
        }
        let (quota, quota_error) = match backend {
            Backend::Dir => (
                None,
                Some(
                    "the dir backend has no disk quotas (this kernel has no ext4/XFS quota \
                      support); use --storage btrfs"
                        .to_string(),
                ),
            ),
            Backend::Btrfs => match quota::Quota::open(&root) {
                Ok(q) => (Some(q), None),
                Err(e) => {
                    tracing::warn!(error = %e, "no disk quotas: resources.disk_mib is refused");
                    (None, Some(e))
                }
            },
        };
        tracing::info!(
            backend = backend.as_str(),
            root = %root.display(),
            reflink,
            disk_quota = quota.is_some(),
            "storage ready"
        );
        Ok(Storage {
            backend,
            root,
            loop_mount,
            loop_image,
            quota,
            quota_error,
            reflink,
            btrfs_available,
            locks: Mutex::new(HashMap::new()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether copies share blocks on the storage's file system.
    pub fn reflink(&self) -> bool {
        self.reflink
    }

    /// Whether sandboxes can get a disk limit ([`Storage::create_fs`]'s `disk_bytes`).
    pub fn disk_quota(&self) -> bool {
        self.quota.is_some()
    }

    /// Why [`Storage::disk_quota`] is false.
    pub fn quota_error(&self) -> Option<&str> {
        self.quota_error.as_deref()
    }

    /// Where `sandboxes/` and `snapshots/` live (the data dir or the mounted image).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The disk quotas, if any.
    pub fn quota(&self) -> Option<&quota::Quota> {
        self.quota.as_ref()
    }

    /// Backends this host could use (`btrfs`: the data dir is on btrfs or `mkfs.btrfs` is
    /// installed for a loop image).
    pub fn available(&self) -> Vec<String> {
        let mut v = vec![Backend::Dir.as_str().to_string()];
        if self.btrfs_available || self.backend == Backend::Btrfs {
            v.push(Backend::Btrfs.as_str().to_string());
        }
        v
    }

    pub fn sandboxes_dir(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join(SNAPSHOTS_DIR)
    }

    /// `snapshots/<id>` if that snapshot is complete; `SnapshotNotFound` otherwise
    /// (including for ids that are not valid).
    fn complete_snapshot(&self, snapshot_id: &str) -> Result<PathBuf, RuntimeError> {
        let not_found = || RuntimeError::SnapshotNotFound(snapshot_id.to_string());
        spec::validate_id(snapshot_id).map_err(|_| not_found())?;
        let p = self.snapshots_dir().join(snapshot_id);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Ok(p),
            Ok(_) => Err(not_found()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found()),
            Err(e) => Err(RuntimeError::Io(ctx(p.display(), e))),
        }
    }

    /// Make a new sandbox's `fs/`: empty layers and work dirs, or a (writable) copy of
    /// `snapshot` with emptied work dirs. With `disk_bytes`, the sandbox gets a quota group
    /// (see [`quota`]), without a limit until the caller sets it
    /// ([`Storage::tighten_disk_limit`]) once the sandbox is up: preparing the files (moving
    /// a restored layer into the sandbox's id range rewrites every inode) and mounting its
    /// overlay (which makes its work dir, and mounts read-only if it cannot) must not fail
    /// for want of space. A backend without quotas refuses `disk_bytes`. On error a partial
    /// `fs/` may remain: the caller removes the whole sandbox dir
    /// ([`Storage::remove_sandbox_dir`]).
    pub fn create_fs(
        &self,
        paths: &SandboxPaths,
        snapshot: Option<&str>,
        disk_bytes: Option<u64>,
    ) -> Result<(), RuntimeError> {
        self.keep_image_allocated();
        let group = match (disk_bytes, &self.quota) {
            (None, _) => None,
            (Some(_), Some(q)) => Some(q.new_group(None).map_err(|e| ctx("disk quota", e))?),
            (Some(_), None) => {
                return Err(RuntimeError::Setup(format!(
                    "disk limits are not available: {}",
                    self.quota_error.as_deref().unwrap_or("no quotas")
                )))
            }
        };
        let made = self.make_fs(paths, snapshot, group).and_then(|()| {
            // The kernel drops a group that vanished meanwhile (another daemon on this file
            // system collecting empty groups) from the inherit list without an error.
            match (group, &self.quota) {
                (Some(g), Some(q)) if q.group_of(&paths.fs).ok().flatten() != Some(g) => {
                    Err(RuntimeError::Setup(format!(
                        "{} is not in its quota group",
                        paths.fs.display()
                    )))
                }
                _ => Ok(()),
            }
        });
        if made.is_err() {
            if let (Some(g), Some(q)) = (group, &self.quota) {
                if let Err(e) = q.remove_group(g) {
                    tracing::warn!(group = %quota::show(g), error = %e,
                        "removing the quota group of a failed create");
                }
            }
        }
        made
    }

    fn make_fs(
        &self,
        paths: &SandboxPaths,
        snapshot: Option<&str>,
        group: Option<u64>,
    ) -> Result<(), RuntimeError> {
        match snapshot {
            None => {
                match self.backend {
                    Backend::Btrfs => create_subvolume(&paths.fs, group),
                    Backend::Dir => mkdir_mode(&paths.fs, 0o755),
                }
                .map_err(|e| {
                    RuntimeError::Io(ctx(format!("creating {}", paths.fs.display()), e))
                })?;
                fs::set_permissions(&paths.fs, fs::Permissions::from_mode(0o755))?;
                for d in [&paths.upper, &paths.usr_upper, &paths.work, &paths.usr_work] {
                    mkdir_mode(d, 0o755).map_err(|e| {
                        RuntimeError::Io(ctx(format!("creating {}", d.display()), e))
                    })?;
                }
                Ok(())
            }
            Some(snap) => {
                let src = self.complete_snapshot(snap)?;
                self.clone_tree(&src, &paths.fs, group)?;
                prepare_restored(&paths.fs)?;
                Ok(())
            }
        }
    }

    /// Fill in the loop image if something made it sparse (cheap: one `fstat` when it is
    /// complete).
    fn keep_image_allocated(&self) {
        if let Some(img) = &self.loop_image {
            if let Err(e) = keep_allocated(img) {
                tracing::warn!(image = %img.display(), error = %e,
                    "the btrfs image cannot be fully allocated");
            }
        }
    }

    /// Copy `fs` to a new snapshot, the part that needs the sandbox frozen: a btrfs
    /// snapshot (complete at once), or a copy into `snapshots/.tmp-<id>` that
    /// [`Storage::commit_snapshot`] syncs and renames into place.
    pub fn stage_snapshot(&self, fs_dir: &Path, snapshot_id: &str) -> Result<Staged, RuntimeError> {
        let dest = self.snapshots_dir().join(snapshot_id);
        if exists_nofollow(&dest)? {
            return Err(RuntimeError::Io(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("snapshot {snapshot_id} already exists"),
            )));
        }
        if self.backend == Backend::Btrfs && is_subvolume(fs_dir)? {
            snapshot_subvolume(fs_dir, &dest, true, None).map_err(|e| {
                RuntimeError::Io(ctx(format!("btrfs snapshot of {}", fs_dir.display()), e))
            })?;
            return Ok(Staged { tmp: None, dest });
        }
        let tmp = self
            .snapshots_dir()
            .join(format!("{TMP_PREFIX}{snapshot_id}"));
        remove_tree(&tmp)?;
        if let Err(e) = copy_tree(fs_dir, &tmp) {
            if let Err(ce) = remove_tree(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %ce, "removing a failed copy");
            }
            return Err(RuntimeError::Io(e));
        }
        Ok(Staged {
            tmp: Some(tmp),
            dest,
        })
    }

    /// Finish a staged snapshot (no freeze needed): flush a copy to disk and rename it into
    /// place, then size it. On error nothing of the snapshot is left.
    pub fn commit_snapshot(&self, staged: Staged) -> Result<SnapshotMeta, RuntimeError> {
        if let Some(tmp) = &staged.tmp {
            let done = (|| {
                // A snapshot reported complete survives a power loss too.
                syncfs(tmp)?;
                if exists_nofollow(&staged.dest)? {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} appeared meanwhile", staged.dest.display()),
                    ));
                }
                fs::rename(tmp, &staged.dest)
            })();
            if let Err(e) = done {
                self.discard(staged);
                return Err(RuntimeError::Io(ctx("finishing the snapshot", e)));
            }
        }
        Ok(SnapshotMeta {
            size_bytes: allocated_bytes(&staged.dest),
            backend: self.backend.as_str().to_string(),
        })
    }

    /// Remove a staged snapshot (the snapshot failed after all).
    pub fn discard(&self, staged: Staged) {
        let p = staged.tmp.as_ref().unwrap_or(&staged.dest);
        if let Err(e) = remove_tree(p) {
            tracing::warn!(path = %p.display(), error = %e, "removing a failed snapshot");
        }
    }

    /// Remove a snapshot; fine if it does not exist.
    pub fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        if spec::validate_id(snapshot_id).is_err() {
            return Ok(());
        }
        let p = self.snapshots_dir().join(snapshot_id);
        let subvolume = is_subvolume(&p)?;
        remove_tree(&p)?;
        if subvolume {
            self.after_deletion();
        }
        Ok(())
    }

    /// After subvolumes were deleted: what they held is freed (and uncharged) soon, stale
    /// qgroups are collected.
    pub(crate) fn after_deletion(&self) {
        if let Some(q) = &self.quota {
            q.deleted();
        }
    }

    /// Remove every partial snapshot and every complete one not in `keep`; returns the
    /// ids removed (a partial `.tmp-<id>` counts as `<id>` unless `<id>` is kept).
    pub fn reconcile_snapshots(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let dir = self.snapshots_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RuntimeError::Io(ctx(dir.display(), e))),
        };
        let mut removed = Vec::new();
        let mut first_err = None;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!(name = ?name, "ignoring a snapshot entry that is not a valid id");
                continue;
            };
            let id = match name.strip_prefix(TMP_PREFIX) {
                Some(id) => {
                    // A copy a crashed daemon never finished.
                    if let Err(e) = remove_tree(&entry.path()) {
                        first_err.get_or_insert(e);
                        continue;
                    }
                    if keep.iter().any(|k| k == id) || spec::validate_id(id).is_err() {
                        continue;
                    }
                    id
                }
                None if spec::validate_id(name).is_err() => {
                    tracing::warn!(name, "ignoring a snapshot entry that is not a valid id");
                    continue;
                }
                None if keep.iter().any(|k| k == name) => continue,
                None => {
                    if let Err(e) = remove_tree(&entry.path()) {
                        first_err.get_or_insert(e);
                        continue;
                    }
                    name
                }
            };
            removed.push(id.to_string());
        }
        removed.sort();
        removed.dedup();
        if !removed.is_empty() {
            self.after_deletion();
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(removed),
        }
    }

    /// Replace a stopped sandbox's `fs/` with a copy of the snapshot: built at `fs.new`,
    /// swapped in atomically (`RENAME_EXCHANGE`, or two renames that [`Storage::recover`]
    /// completes after a crash), the old files removed last. On error `fs/` is unchanged.
    pub fn rollback(
        &self,
        paths: &SandboxPaths,
        snapshot_id: &str,
        id: &str,
    ) -> Result<(), RuntimeError> {
        self.recover(&paths.dir)?;
        let src = self.complete_snapshot(snapshot_id)?;
        if !exists_nofollow(&paths.fs)? {
            return Err(RuntimeError::Setup(format!(
                "sandbox {id}: its files are missing; only destroy helps"
            )));
        }
        // The sandbox keeps its id range: the snapshot's files move into it if they belong
        // to another (a snapshot of another sandbox).
        let owner = userns::range_of(&paths.upper).map_err(|e| ctx(paths.upper.display(), e))?;
        // The new files join the sandbox's quota group: a rollback does not reset its budget.
        let group = match &self.quota {
            Some(q) if is_subvolume(&paths.fs)? => q
                .group_of(&paths.fs)
                .map_err(|e| ctx(format!("quota group of {}", paths.fs.display()), e))?,
            _ => None,
        };
        // While the new files are built the group still holds the old ones: its limit is
        // lifted (nothing else writes, the sandbox is stopped) and put back after the swap,
        // when the old files are gone. A crash in between: `start` puts it back.
        let loosened = match (group, &self.quota) {
            (Some(g), Some(q)) => {
                let limit = q.limit(g).map_err(|e| ctx("reading the disk limit", e))?;
                let l = Loosened { group: g, limit };
                self.loosen_to(&l, None)?;
                Some(l)
            }
            _ => None,
        };
        let r = self.rollback_files(paths, &src, owner, group, id);
        if let Some(l) = &loosened {
            self.tighten_or_log(l, None);
        }
        r
    }

    /// The part of [`Storage::rollback`] that builds and swaps in the new files.
    fn rollback_files(
        &self,
        paths: &SandboxPaths,
        src: &Path,
        owner: u32,
        group: Option<u64>,
        id: &str,
    ) -> Result<(), RuntimeError> {
        let new = paths.dir.join(FS_NEW);
        let built = (|| {
            self.clone_tree(src, &new, group)?;
            prepare_restored(&new)?;
            layers::own_layers(&new, owner)?;
            if let Err(e) = layers::set_identity(&new.join("upper"), id, owner) {
                tracing::warn!(sandbox = id, error = %e, "rollback: /etc/hostname not updated");
            }
            if self.tmp_copies() {
                syncfs(&new).map_err(|e| ctx("syncfs", e))?;
            }
            Ok::<(), RuntimeError>(())
        })();
        if let Err(e) = built {
            if let Err(ce) = remove_tree(&new) {
                tracing::warn!(path = %new.display(), error = %ce, "removing a failed rollback");
            }
            return Err(e);
        }
        match renameat2(None, &new, None, &paths.fs, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => {
                // `fs.new` now holds the old files.
                if let Err(e) = remove_tree(&new) {
                    tracing::warn!(path = %new.display(), error = %e,
                        "rollback done; old files are removed on the next start");
                }
                self.after_deletion();
                return Ok(());
            }
            Err(Errno::EINVAL | Errno::ENOSYS | Errno::EOPNOTSUPP | Errno::EXDEV) => {}
            Err(e) => {
                let _ = remove_tree(&new);
                return Err(RuntimeError::Io(ctx("swapping in the rollback", e.into())));
            }
        }
        // No RENAME_EXCHANGE here: fs -> fs.old, fs.new -> fs.
        let old = paths.dir.join(FS_OLD);
        remove_tree(&old)?;
        if let Err(e) = fs::rename(&paths.fs, &old) {
            let _ = remove_tree(&new);
            return Err(RuntimeError::Io(ctx("moving the old files aside", e)));
        }
        if let Err(e) = fs::rename(&new, &paths.fs) {
            // Put the old files back; what cannot be undone here recover() finishes.
            let _ = fs::rename(&old, &paths.fs);
            let _ = remove_tree(&new);
            return Err(RuntimeError::Io(ctx("swapping in the rollback", e)));
        }
        if let Err(e) = remove_tree(&old) {
            tracing::warn!(path = %old.display(), error = %e,
                "rollback done; old files are removed on the next start");
        }
        self.after_deletion();
        Ok(())
    }

    /// Lift the disk limit of the sandbox whose files are `fs_dir` (see `restart`): `None`
    /// when it has no quota group. Give the result to [`Storage::tighten_disk_limit`].
    pub fn loosen_disk_limit(
        &self,
        fs_dir: &Path,
        headroom: Option<u64>,
    ) -> Result<Option<Loosened>, RuntimeError> {
        let Some(q) = &self.quota else {
            return Ok(None);
        };
        if !is_subvolume(fs_dir)? {
            return Ok(None);
        }
        let Some(group) = q
            .group_of(fs_dir)
            .map_err(|e| ctx(format!("quota group of {}", fs_dir.display()), e))?
        else {
            return Ok(None);
        };
        let limit = q
            .limit(group)
            .map_err(|e| ctx("reading the disk limit", e))?;
        let l = Loosened { group, limit };
        self.loosen_to(&l, headroom)?;
        Ok(Some(l))
    }

    /// Set a loosened limit to the group's usage plus `headroom` (`None`: no limit).
    pub fn loosen_to(&self, l: &Loosened, headroom: Option<u64>) -> Result<(), RuntimeError> {
        let Some(q) = &self.quota else {
            return Ok(());
        };
        let to = match headroom {
            None => None,
            Some(h) => {
                let used = q
                    .usage(l.group)
                    .map_err(|e| ctx("reading the disk usage", e))?
                    .unwrap_or(0);
                Some(used.saturating_add(h).max(l.limit.unwrap_or(0)))
            }
        };
        q.set_limit(l.group, to)
            .map_err(|e| RuntimeError::Io(ctx("loosening the disk limit", e)))
    }

    /// Put a loosened limit back: `limit` (the sandbox's `disk_bytes`), or the one it had.
    pub fn tighten_disk_limit(&self, l: &Loosened, limit: Option<u64>) -> Result<(), RuntimeError> {
        let Some(q) = &self.quota else {
            return Ok(());
        };
        q.set_limit(l.group, limit.or(l.limit))
            .map_err(|e| RuntimeError::Io(ctx("setting the disk limit", e)))
    }

    /// [`Storage::tighten_disk_limit`], a failure logged (the next start tries again).
    pub fn tighten_or_log(&self, l: &Loosened, limit: Option<u64>) {
        if let Err(e) = self.tighten_disk_limit(l, limit) {
            tracing::error!(group = %quota::show(l.group), error = %e,
                "setting a disk limit back (set again at the next start)");
        }
    }

    /// Finish what an interrupted rollback left in the sandbox dir `dir`: with `fs`
    /// present, `fs.new`/`fs.old` are leftovers; without it, the crash hit between the two
    /// renames and `fs.new` (complete by then) becomes `fs`.
    pub fn recover(&self, dir: &Path) -> Result<(), RuntimeError> {
        let (fs_dir, new, old) = (dir.join("fs"), dir.join(FS_NEW), dir.join(FS_OLD));
        if !exists_nofollow(&fs_dir)? {
            if exists_nofollow(&new)? {
                tracing::warn!(dir = %dir.display(), "finishing an interrupted rollback");
                fs::rename(&new, &fs_dir).map_err(|e| ctx("recovering fs.new", e))?;
            } else if exists_nofollow(&old)? {
                tracing::warn!(dir = %dir.display(), "undoing an interrupted rollback");
                fs::rename(&old, &fs_dir).map_err(|e| ctx("recovering fs.old", e))?;
            }
        }
        remove_tree(&new)?;
        remove_tree(&old)
    }

    /// Remove a sandbox dir, deleting btrfs subvolumes in it properly.
    /// Its quota group goes first: a crash halfway leaves no group without its sandbox.
    pub fn remove_sandbox_dir(&self, dir: &Path) -> Result<(), RuntimeError> {
        let mut deleted = false;
        for name in ["fs", FS_NEW, FS_OLD] {
            let p = dir.join(name);
            if !is_subvolume(&p)? {
                remove_tree(&p)?;
                continue;
            }
            if let Some(q) = &self.quota {
                match q.group_of(&p) {
                    Ok(Some(g)) => q.remove_group(g).map_err(|e| {
                        RuntimeError::Io(ctx(format!("removing quota group {}", quota::show(g)), e))
                    })?,
                    Ok(None) => {}
                    Err(e) => tracing::warn!(path = %p.display(), error = %e,
                        "looking up a quota group"),
                }
            }
            remove_tree(&p)?;
            deleted = true;
        }
        if deleted {
            self.after_deletion();
        }
        layers::remove_if_exists(dir)
            .map_err(|e| RuntimeError::Setup(format!("removing {}: {e}", dir.display())))
    }

    /// Unmount the loop image this runtime uses (the loop device detaches itself:
    /// util-linux's `mount -o loop` sets autoclear). Call when no sandbox is left.
    pub fn shutdown(&self) -> Result<(), RuntimeError> {
        if let Some(q) = &self.quota {
            q.shutdown();
        }
        let Some(mnt) = &self.loop_mount else {
            return Ok(());
        };
        if !is_mount_point(mnt).map_err(|e| setup("reading mountinfo", e))? {
            return Ok(());
        }
        umount2(mnt.as_path(), MntFlags::empty())
            .map_err(|e| RuntimeError::Setup(format!("unmounting {}: {e}", mnt.display())))?;
        tracing::info!(mount = %mnt.display(), "btrfs loop image unmounted");
        Ok(())
    }

    /// Whether snapshots of this storage are copies (that need a sync) rather than btrfs
    /// snapshots.
    fn tmp_copies(&self) -> bool {
        self.backend == Backend::Dir
    }

    /// `dst` (which must not exist) becomes a writable copy of `src`, in quota group
    /// `group`: a btrfs snapshot when `src` is a subvolume; on btrfs otherwise a new
    /// subvolume that `src` is copied into; elsewhere `cp -a`.
    fn clone_tree(&self, src: &Path, dst: &Path, group: Option<u64>) -> Result<(), RuntimeError> {
        let r = match self.backend {
            Backend::Btrfs if is_subvolume(src)? => snapshot_subvolume(src, dst, false, group)
                .map_err(|e| ctx(format!("btrfs snapshot of {}", src.display()), e)),
            Backend::Btrfs => create_subvolume(dst, group)
                .map_err(|e| ctx(format!("creating {}", dst.display()), e))
                .and_then(|()| copy_tree(src, dst)),
            Backend::Dir => copy_tree(src, dst),
        };
        r.map_err(RuntimeError::Io)
    }

    /// Take the per-sandbox lock of snapshots and rollbacks.
    pub(super) async fn lock(&self, id: &str) -> SandboxLock<'_> {
        let m = {
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(id.to_string()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        SandboxLock {
            storage: self,
            id: id.to_string(),
            _guard: guard,
        }
    }
}

/// Held while one sandbox is snapshotted or rolled back.
pub(super) struct SandboxLock<'a> {
    storage: &'a Storage,
    id: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for SandboxLock<'_> {
    fn drop(&mut self) {
        let mut map = self.storage.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Only the map and our guard hold it: nobody waits, forget the entry.
        if map.get(&self.id).is_some_and(|m| Arc::strong_count(m) <= 2) {
            map.remove(&self.id);
        }
    }
}

/// A disk limit lifted for a while ([`Storage::loosen_disk_limit`]).
#[derive(Debug)]
pub struct Loosened {
    group: u64,
    /// The limit it had.
    limit: Option<u64>,
}

/// A snapshot taken but not yet committed ([`Storage::stage_snapshot`]).
#[derive(Debug)]
pub struct Staged {
    /// The copy to rename (`dir`), or `None` when `dest` is complete already (btrfs).
    tmp: Option<PathBuf>,
    dest: PathBuf,
}

/// Empty the overlay work dirs of a restored `fs` (overlayfs wants clean ones) and make
/// sure both upper layers exist.
fn prepare_restored(fs_dir: &Path) -> Result<(), RuntimeError> {
    for name in ["work", "usr-work"] {
        let d = fs_dir.join(name);
        layers::remove_if_exists(&d).map_err(|e| ctx(format!("emptying {}", d.display()), e))?;
        mkdir_mode(&d, 0o755).map_err(|e| ctx(format!("creating {}", d.display()), e))?;
    }
    for name in ["upper", "usr-upper"] {
        let d = fs_dir.join(name);
        match fs::symlink_metadata(&d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(RuntimeError::Setup(format!(
                    "{} is not a directory",
                    d.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                mkdir_mode(&d, 0o755).map_err(|e| ctx(format!("creating {}", d.display()), e))?
            }
            Err(e) => return Err(RuntimeError::Io(ctx(d.display(), e))),
        }
    }
    Ok(())
}

impl Inner {
    pub(super) async fn snapshot_impl(
        self: Arc<Self>,
        id: String,
        snapshot_id: String,
    ) -> Result<SnapshotMeta, RuntimeError> {
        spec::validate_id(&snapshot_id)
            .map_err(|e| RuntimeError::Setup(format!("invalid snapshot id: {e}")))?;
        let _lock = self.storage.lock(&id).await;
        let t0 = Instant::now();
        let (layout, cg, paths) = (self.layout, self.cgroup_path(&id), self.paths(&id));
        // Running (processes in the cgroup) and not paused: freeze around the copy.
        let freeze = {
            let (this, cg, dir, id) = (self.clone(), cg.clone(), paths.dir.clone(), id.clone());
            blocking(move || {
                if !exists_nofollow(&dir)? {
                    return Err(RuntimeError::NotFound(id));
                }
                if cgroup::pids(layout, &cg).map_err(cg_err)?.is_empty() {
                    // Stopped: nothing runs, so a rollback interrupted by a crash can be
                    // finished now.
                    this.storage.recover(&dir)?;
                    return Ok(false);
                }
                Ok(!cgroup::is_frozen(layout, &cg).map_err(cg_err)?)
            })
            .await?
        };
        if freeze {
            let cg = cg.clone();
            blocking(move || cgroup::set_frozen(layout, &cg, true).map_err(cg_err)).await?;
        }
        let t_frozen = Instant::now();
        let staged = {
            let (this, fs_dir, snap) = (self.clone(), paths.fs.clone(), snapshot_id.clone());
            blocking(move || this.storage.stage_snapshot(&fs_dir, &snap)).await
        };
        let frozen_for = t_frozen.elapsed();
        if freeze {
            // Always thaw, also when the snapshot failed.
            let mut thawed = Ok(());
            for _ in 0..3 {
                let cg = cg.clone();
                thawed =
                    blocking(move || cgroup::set_frozen(layout, &cg, false).map_err(cg_err)).await;
                if thawed.is_ok() {
                    break;
                }
            }
            if let Err(e) = thawed {
                tracing::error!(sandbox = %id, error = %e, "cannot thaw after a snapshot");
                if let Ok(staged) = staged {
                    let this = self.clone();
                    let _ = blocking(move || {
                        this.storage.discard(staged);
                        Ok(())
                    })
                    .await;
                }
                return Err(e);
            }
        }
        let staged = staged?;
        let this = self.clone();
        let meta = blocking(move || this.storage.commit_snapshot(staged)).await?;
        tracing::info!(
            sandbox = %id,
            snapshot = %snapshot_id,
            backend = %meta.backend,
            size_bytes = meta.size_bytes,
            frozen = freeze,
            copy_ms = frozen_for.as_millis() as u64,
            total_ms = t0.elapsed().as_millis() as u64,
            "snapshot taken"
        );
        Ok(meta)
    }

    pub(super) async fn rollback_impl(
        self: Arc<Self>,
        id: String,
        snapshot_id: String,
    ) -> Result<(), RuntimeError> {
        if spec::validate_id(&snapshot_id).is_err() {
            return Err(RuntimeError::SnapshotNotFound(snapshot_id));
        }
        let _lock = self.storage.lock(&id).await;
        let (layout, cg, paths) = (self.layout, self.cgroup_path(&id), self.paths(&id));
        let this = self.clone();
        blocking(move || {
            if !exists_nofollow(&paths.dir)? {
                return Err(RuntimeError::NotFound(id));
            }
            let running = cgroup::pids(layout, &cg).map_err(cg_err)?.len();
            if running > 0 {
                return Err(RuntimeError::Setup(format!(
                    "sandbox {id} is not stopped ({running} processes run); stop it before a \
                     rollback"
                )));
            }
            let t0 = Instant::now();
            this.storage.rollback(&paths, &snapshot_id, &id)?;
            tracing::info!(
                sandbox = %id,
                snapshot = %snapshot_id,
                ms = t0.elapsed().as_millis() as u64,
                "rolled back"
            );
            Ok(())
        })
        .await
    }
}

impl NativeRuntime {
    /// Where snapshots live (`<storage root>/snapshots`).
    pub fn snapshots_dir(&self) -> PathBuf {
        self.inner.storage.snapshots_dir()
    }

    /// Where sandbox directories live (`<storage root>/sandboxes`).
    pub fn sandboxes_dir(&self) -> PathBuf {
        self.inner.storage.sandboxes_dir()
    }

    pub(super) async fn delete_snapshot_impl(&self, snapshot_id: &str) -> Result<(), RuntimeError> {
        let (inner, snap) = (self.inner.clone(), snapshot_id.to_string());
        blocking(move || inner.storage.delete_snapshot(&snap)).await
    }

    pub(super) async fn reconcile_snapshots_impl(
        &self,
        keep: &[String],
    ) -> Result<Vec<String>, RuntimeError> {
        let (inner, keep) = (self.inner.clone(), keep.to_vec());
        blocking(move || inner.storage.reconcile_snapshots(&keep)).await
    }
}

// ---------------------------------------------------------------------------------------
// File-system helpers.

pub(crate) fn mkdir_mode(p: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
        Err(e) => return Err(e),
    }
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn exists_nofollow(p: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(ctx(p.display(), e)),
    }
}

/// Remove a tree: a btrfs subvolume with one ioctl, anything else like `rm -rf`. Fine if it
/// does not exist.
pub fn remove_tree(p: &Path) -> Result<(), RuntimeError> {
    if is_subvolume(p)? {
        return delete_subvolume(p)
            .map_err(|e| RuntimeError::Io(ctx(format!("deleting subvolume {}", p.display()), e)));
    }
    layers::remove_if_exists(p)
        .map_err(|e| RuntimeError::Io(ctx(format!("removing {}", p.display()), e)))
}

fn is_btrfs(p: &Path) -> io::Result<bool> {
    let st = statfs(p).map_err(|e| ctx(format!("statfs {}", p.display()), e.into()))?;
    Ok(st.filesystem_type() == BTRFS_SUPER_MAGIC)
}

/// Whether `p` is the root of a btrfs subvolume (false if it does not exist).
pub fn is_subvolume(p: &Path) -> io::Result<bool> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ctx(p.display(), e)),
    };
    Ok(m.is_dir() && m.ino() == quota::BTRFS_FIRST_FREE_OBJECTID && is_btrfs(p)?)
}

fn syncfs(p: &Path) -> io::Result<()> {
    let f = File::open(p)?;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(|e| ctx(format!("syncfs {}", p.display()), e.into()))
}

/// `cp -a` of a whole tree into `dst` (which must not exist).
///
/// Exec'd (from a blocking thread) rather than rewritten: GNU cp already copies exactly
/// what overlayfs relies on — modes, owners, timestamps, symlinks as symlinks, hard links
/// within the tree, whiteouts (0:0 character devices) and every xattr including
/// `trusted.overlay.*` (opaque dirs, redirects, origins; `--preserve=xattr` makes a failure
/// to copy one an error instead of a silent loss) — and `--reflink=auto` shares blocks on
/// file systems that can (btrfs, XFS) while falling back to a real copy elsewhere. A
/// process spawn costs about a millisecond, nothing next to the copy.
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let cp = find_tool("cp").unwrap_or_else(|| PathBuf::from("cp"));
    let out = Command::new(&cp)
        .args([
            "-a",
            "--preserve=xattr",
            "--reflink=auto",
            "--no-target-directory",
            "--",
        ])
        .arg(src)
        .arg(dst)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ctx(format!("running {}", cp.display()), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "cp -a {} {} failed ({}): {}",
        src.display(),
        dst.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// A tool in `PATH` or the usual system directories (a daemon's `PATH` may lack `sbin`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn run_tool(name: &str, args: &[&OsStr]) -> io::Result<()> {
    let tool = find_tool(name).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} not found (install it)"),
        )
    })?;
    let out = Command::new(&tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ctx(format!("running {}", tool.display()), e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Whether a mount point is exactly `p` in this mount namespace.
fn is_mount_point(p: &Path) -> io::Result<bool> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let want = p.as_os_str().as_bytes();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want))
}

/// Mountinfo (and `/proc/mounts`) escapes space, tab, newline and backslash as `\ooo`.
pub fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Smallest image `auto` makes: below it, it keeps to `dir`.
const MIN_AUTO_LOOP_SIZE: u64 = 2 << 30;
/// Largest image `auto` makes unless told otherwise.
const MAX_AUTO_LOOP_SIZE: u64 = 64 << 30;

/// The image size `auto` picks on a file system with `free_bytes` free: a quarter of it, at
/// most 64 GiB, in whole GiB; `None` below 2 GiB (too little room: `dir` then).
pub fn default_loop_size(free_bytes: u64) -> Option<u64> {
    let size = (free_bytes / 4).min(MAX_AUTO_LOOP_SIZE) & !((1 << 30) - 1);
    (size >= MIN_AUTO_LOOP_SIZE).then_some(size)
}

/// Whether the data dir holds sandboxes or snapshots of the `dir` backend (which a switch
/// to a loop image would hide).
fn has_dir_state(data_dir: &Path) -> bool {
    ["sandboxes", SNAPSHOTS_DIR]
        .iter()
        .any(|d| fs::read_dir(data_dir.join(d)).is_ok_and(|mut rd| rd.next().is_some()))
}

/// `auto`: the btrfs loop image if there is one already (an error if it cannot be mounted:
/// the sandboxes live in it); otherwise `dir` when the data dir holds `dir` sandboxes or
/// snapshots, when the data dir is on tmpfs, when `mkfs.btrfs` is missing or the file
/// system has too little free space;
/// otherwise a new image, and `dir` (with a warning, the partial image removed) if making
/// or mounting it fails. `None` means `dir`.
fn auto_loop(
    data_dir: &Path,
    loop_size: Option<u64>,
) -> Result<Option<(PathBuf, bool)>, RuntimeError> {
    let dir = data_dir.join(LOOP_DIR);
    let img = dir.join(LOOP_IMAGE);
    if exists_nofollow(&img).map_err(|e| setup("storage", e))? {
        let size = fs::metadata(&img).map(|m| m.len()).unwrap_or(MIN_LOOP_SIZE);
        return setup_loop(data_dir, size.max(MIN_LOOP_SIZE)).map(Some);
    }
    if is_mount_point(&dir.join(LOOP_MOUNT)).unwrap_or(false) {
        return setup_loop(data_dir, MIN_LOOP_SIZE).map(Some);
    }
    if has_dir_state(data_dir) {
        tracing::info!(
            "storage auto: the data dir holds sandboxes or snapshots of the dir backend; \
             keeping it (delete them, or use another data dir, for a btrfs image with disk \
             quotas)"
        );
        return Ok(None);
    }
    if statfs(data_dir).is_ok_and(|st| st.filesystem_type() == TMPFS_MAGIC) {
        tracing::info!("storage auto: the data dir is on tmpfs (memory), using dir");
        return Ok(None);
    }
    if let Some(s) = loop_size {
        if s < MIN_LOOP_SIZE {
            return Err(RuntimeError::Setup(format!(
                "btrfs loop image size {s} is below the minimum of {} MiB",
                MIN_LOOP_SIZE >> 20
            )));
        }
    }
    if find_tool("mkfs.btrfs").is_none() {
        tracing::info!(
            "storage auto: mkfs.btrfs not found, using dir (no disk quotas; install \
             btrfs-progs for a btrfs image with disk quotas)"
        );
        return Ok(None);
    }
    let size = match loop_size {
        Some(s) => s,
        None => {
            let free = warren_runtime::fs_space(data_dir)
                .map(|s| s.avail_bytes)
                .unwrap_or(0);
            match default_loop_size(free) {
                Some(s) => s,
                None => {
                    tracing::warn!(
                        free_mib = free >> 20,
                        "storage auto: too little free space for a btrfs image, using dir \
                         (no disk quotas)"
                    );
                    return Ok(None);
                }
            }
        }
    };
    match setup_loop(data_dir, size) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            tracing::warn!(error = %e,
                "storage auto: the btrfs image cannot be used, using dir (no disk quotas)");
            let _ = fs::remove_file(&img);
            let _ = fs::remove_dir(dir.join(LOOP_MOUNT));
            let _ = fs::remove_dir(&dir);
            Ok(None)
        }
    }
}

/// Create (once) and mount the btrfs loop image under `<data_dir>/storage`; reuse a mount
/// that is already there. Returns the mount point and whether this call mounted it.
fn setup_loop(data_dir: &Path, size: u64) -> Result<(PathBuf, bool), RuntimeError> {
    if size < MIN_LOOP_SIZE {
        return Err(RuntimeError::Setup(format!(
            "btrfs loop image size {size} is below the minimum of {} MiB",
            MIN_LOOP_SIZE >> 20
        )));
    }
    let dir = data_dir.join(LOOP_DIR);
    mkdir_mode(&dir, 0o700).map_err(|e| setup(format!("creating {}", dir.display()), e))?;
    let (img, mnt) = (dir.join(LOOP_IMAGE), dir.join(LOOP_MOUNT));
    mkdir_mode(&mnt, 0o700).map_err(|e| setup(format!("creating {}", mnt.display()), e))?;
    let mnt =
        fs::canonicalize(&mnt).map_err(|e| setup(format!("resolving {}", mnt.display()), e))?;
    if is_mount_point(&mnt).map_err(|e| setup("reading mountinfo", e))? {
        // A previous daemon's mount (sandboxes may still use it): reuse it.
        if !is_btrfs(&mnt).map_err(|e| setup("storage", e))? {
            return Err(RuntimeError::Setup(format!(
                "{} is mounted but not btrfs",
                mnt.display()
            )));
        }
        tracing::info!(mount = %mnt.display(), "reusing the mounted btrfs loop image");
        return Ok((mnt, false));
    }
    if !exists_nofollow(&img).map_err(|e| setup("storage", e))? {
        // Made under a temporary name: a crash never leaves an unformatted image behind.
        let tmp = dir.join(format!("{LOOP_IMAGE}.tmp"));
        let made = (|| {
            layers::remove_if_exists(&tmp)?;
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            if is_btrfs(&dir).unwrap_or(false) {
                // An image on btrfs: no copy-on-write under a file system of its own.
                set_nocow(&f);
            }
            f.set_len(size)?;
            // Allocated now (instant on ext4 and XFS), not as the sandboxes fill it: a
            // sparse image could fill the host file system, where the store lives, and a
            // write the host cannot back makes the image's btrfs fail.
            allocate(&f, size).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "allocating {} MiB for the image (is there that much free space? \
                         choose a smaller --btrfs-loop-size): {e}",
                        size >> 20
                    ),
                )
            })?;
            drop(f);
            run_tool("mkfs.btrfs", &[OsStr::new("-q"), tmp.as_os_str()])?;
            fs::rename(&tmp, &img)
        })();
        if let Err(e) = made {
            let _ = fs::remove_file(&tmp);
            return Err(setup(
                format!("creating the btrfs image {}", img.display()),
                e,
            ));
        }
        tracing::info!(image = %img.display(), size, "btrfs loop image created");
    } else if let Ok(m) = fs::metadata(&img) {
        if m.len() != size {
            tracing::info!(
                image = %img.display(),
                size = m.len(),
                "using the existing btrfs loop image (its size is kept)"
            );
        }
    }
    run_tool(
        "mount",
        &[
            OsStr::new("-t"),
            OsStr::new("btrfs"),
            OsStr::new("-o"),
            // No discards: they would punch holes in the image, which then takes host space
            // again as it refills (see `allocate`).
            OsStr::new("loop,nodiscard"),
            img.as_os_str(),
            mnt.as_os_str(),
        ],
    )
    .map_err(|e| setup(format!("mounting {}", img.display()), e))?;
    match is_btrfs(&mnt) {
        Ok(true) => Ok((mnt, true)),
        other => {
            let _ = umount2(mnt.as_path(), MntFlags::empty());
            Err(RuntimeError::Setup(format!(
                "{} is not btrfs after mounting it ({other:?})",
                mnt.display()
            )))
        }
    }
}

/// `chattr +C` on an empty file (best effort: only btrfs has it).
fn set_nocow(f: &File) {
    /// `FS_NOCOW_FL`.
    const NOCOW: libc::c_long = 0x0080_0000;
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one `long` through a pointer to a
    // live local; `f` is an open file.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) == 0 {
            flags |= NOCOW;
            libc::ioctl(f.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}

/// `fallocate(2)` the first `len` bytes of `f` (mode 0: existing data is kept).
fn allocate(f: &File, len: u64) -> io::Result<()> {
    let len = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len)
        .map_err(io::Error::from)
}

/// Allocate whatever of the image at `img` is not (holes left by an older, sparse image, or
/// punched by a discard or a host `fstrim`). One `fstat` when nothing is missing.
fn keep_allocated(img: &Path) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(img)?;
    let m = f.metadata()?;
    if m.blocks() * 512 >= m.len() {
        return Ok(());
    }
    let t0 = Instant::now();
    allocate(&f, m.len())?;
    tracing::info!(image = %img.display(), missing = m.len() - m.blocks() * 512,
        ms = t0.elapsed().as_millis() as u64, "btrfs image allocated in full");
    Ok(())
}

/// Try a reflink (`FICLONE`) between two scratch files in `dir`.
fn probe_reflink(dir: &Path) -> bool {
    let base = dir.join(format!(".reflink-probe-{}", std::process::id()));
    let (a, b) = (base.with_extension("a"), base.with_extension("b"));
    let r = (|| {
        let mut src = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&a)?;
        src.write_all(&[0x5a; 4096])?;
        let dst = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&b)?;
        // SAFETY: FICLONE takes the source descriptor by value; both descriptors are open
        // files owned by this function for the duration of the call.
        unsafe { ioctls::ficlone(dst.as_raw_fd(), src.as_raw_fd() as _) }
            .map_err(io::Error::from)?;
        io::Result::Ok(())
    })();
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    if let Err(e) = &r {
        tracing::debug!(dir = %dir.display(), error = %e, "no reflinks");
    }
    r.is_ok()
}

// ---------------------------------------------------------------------------------------
// Btrfs ioctls (uapi `linux/btrfs.h`).

mod ioctls {
    /// `BTRFS_IOCTL_MAGIC`.
    const BTRFS: u8 = 0x94;
    /// `BTRFS_SUBVOL_NAME_MAX + 1`.
    pub const NAME_LEN: usize = 4040;
    /// `BTRFS_SUBVOL_RDONLY`.
    pub const SUBVOL_RDONLY: u64 = 1 << 1;
    /// `BTRFS_SUBVOL_QGROUP_INHERIT`.
    pub const SUBVOL_QGROUP_INHERIT: u64 = 1 << 2;

    /// `struct btrfs_ioctl_vol_args_v2` (the unions reduced to the members used here).
    #[repr(C)]
    pub struct VolArgsV2 {
        pub fd: i64,
        pub transid: u64,
        pub flags: u64,
        /// Size of the `btrfs_qgroup_inherit` at `qgroup_inherit`.
        pub size: u64,
        /// Address of a `btrfs_qgroup_inherit` (with `SUBVOL_QGROUP_INHERIT`).
        pub qgroup_inherit: u64,
        pub unused: [u64; 2],
        pub name: [u8; NAME_LEN],
    }
    const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);

    nix::ioctl_write_ptr!(snap_create_v2, BTRFS, 23, VolArgsV2);
    nix::ioctl_write_ptr!(subvol_create_v2, BTRFS, 24, VolArgsV2);
    nix::ioctl_write_ptr!(snap_destroy_v2, BTRFS, 63, VolArgsV2);
    // `FICLONE` = `_IOW(0x94, 9, int)`: the argument is the source descriptor itself.
    nix::ioctl_write_int!(ficlone, BTRFS, 9);
}

/// Open `p`'s parent directory and return it with `p`'s last component in vol args.
fn parent_and_args(p: &Path) -> io::Result<(File, Box<ioctls::VolArgsV2>)> {
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no parent", p.display()),
        ));
    };
    let name = name.as_bytes();
    if name.len() >= ioctls::NAME_LEN || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad subvolume name {}", p.display()),
        ));
    }
    let mut args = Box::new(ioctls::VolArgsV2 {
        fd: 0,
        transid: 0,
        flags: 0,
        size: 0,
        qgroup_inherit: 0,
        unused: [0; 2],
        name: [0; ioctls::NAME_LEN],
    });
    args.name[..name.len()].copy_from_slice(name);
    Ok((open_dir(parent)?, args))
}

fn open_dir(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| ctx(format!("opening {}", p.display()), e))
}

/// Point `args` at `inherit` for a new subvolume that joins qgroup `group`; `inherit` must
/// outlive the ioctl.
fn inherit_into(
    args: &mut ioctls::VolArgsV2,
    group: Option<u64>,
    inherit: &mut quota::sys::QgroupInherit1,
) {
    if let Some(g) = group {
        inherit.num_qgroups = 1;
        inherit.qgroups = [g];
        args.flags |= ioctls::SUBVOL_QGROUP_INHERIT;
        args.size = std::mem::size_of::<quota::sys::QgroupInherit1>() as u64;
        args.qgroup_inherit = inherit as *mut quota::sys::QgroupInherit1 as u64;
    }
}

/// `btrfs subvolume create [-i group] p`.
pub(crate) fn create_subvolume(p: &Path, group: Option<u64>) -> io::Result<()> {
    let (parent, mut args) = parent_and_args(p)?;
    let mut inherit = quota::sys::QgroupInherit1::default();
    inherit_into(&mut args, group, &mut inherit);
    // SAFETY: `parent` is an open directory descriptor and `args` a live, fully initialized
    // `btrfs_ioctl_vol_args_v2` with a NUL-terminated name; with a group, `args` points at
    // `inherit`, a live `btrfs_qgroup_inherit` of the size given. The kernel only reads them.
    unsafe { ioctls::subvol_create_v2(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

/// `btrfs subvolume snapshot [-r] [-i group] src dst`.
fn snapshot_subvolume(
    src: &Path,
    dst: &Path,
    readonly: bool,
    group: Option<u64>,
) -> io::Result<()> {
    let source = open_dir(src)?;
    let (parent, mut args) = parent_and_args(dst)?;
    args.fd = i64::from(source.as_raw_fd());
    if readonly {
        args.flags = ioctls::SUBVOL_RDONLY;
    }
    let mut inherit = quota::sys::QgroupInherit1::default();
    inherit_into(&mut args, group, &mut inherit);
    // SAFETY: `parent` and `source` are open directory descriptors that outlive the call;
    // `args` is a live, fully initialized `btrfs_ioctl_vol_args_v2`; with a group it points
    // at `inherit`, a live `btrfs_qgroup_inherit` of the size given. The kernel only reads
    // them.
    unsafe { ioctls::snap_create_v2(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

/// `btrfs subvolume delete p` (also read-only snapshots; the space is freed in the
/// background).
fn delete_subvolume(p: &Path) -> io::Result<()> {
    let (parent, args) = parent_and_args(p)?;
    // SAFETY: `parent` is an open directory descriptor and `args` a live, fully initialized
    // `btrfs_ioctl_vol_args_v2` naming the subvolume by name (flags 0); the kernel only
    // reads it.
    unsafe { ioctls::snap_destroy_v2(parent.as_raw_fd(), &*args) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo("/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo("/a\\134b\\011"), b"/a\\b\t");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo("/x\\04"), b"/x\\04");
    }

    #[test]
    fn auto_image_size() {
        assert_eq!(default_loop_size(100 << 30), Some(25 << 30));
        assert_eq!(default_loop_size(1 << 40), Some(64 << 30));
        assert_eq!(default_loop_size((9 << 30) + 123), Some(2 << 30));
        assert_eq!(default_loop_size(7 << 30), None);
        assert_eq!(std::mem::size_of::<ioctls::VolArgsV2>(), 4096);
    }

    #[test]
    fn vol_args_carry_the_name() {
        let (_, args) = parent_and_args(Path::new("/tmp/some-name")).unwrap();
        assert_eq!(&args.name[..10], b"some-name\0");
        assert!(parent_and_args(Path::new("/")).is_err());
    }

    #[test]
    fn dir_storage_snapshot_roundtrip() {
        crate::require_root("cp -a of owners and xattrs");
        let s = crate::image::tests::Scratch::new("storage");
        let st = Storage::open(&s.0, &StorageConfig::Dir).unwrap();
        assert_eq!(st.backend(), Backend::Dir);
        assert!(st.sandboxes_dir().is_dir() && st.snapshots_dir().is_dir());
        let paths = SandboxPaths::new(&st.sandboxes_dir().join("sb"));
        fs::create_dir(&paths.dir).unwrap();
        st.create_fs(&paths, None, None).unwrap();
        fs::write(paths.upper.join("f"), b"hello").unwrap();
        std::os::unix::fs::symlink("f", paths.upper.join("l")).unwrap();
        fs::hard_link(paths.upper.join("f"), paths.upper.join("h")).unwrap();
        nix::sys::stat::mknod(
            &paths.upper.join("wh"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let opaque = paths.upper.join("opaque");
        fs::create_dir(&opaque).unwrap();
        xattr_set(&opaque, "trusted.overlay.opaque", b"y");
        std::os::unix::fs::chown(paths.upper.join("f"), Some(1000), Some(1000)).unwrap();

        let staged = st.stage_snapshot(&paths.fs, "s1").unwrap();
        assert!(st.snapshots_dir().join(".tmp-s1").is_dir());
        let meta = st.commit_snapshot(staged).unwrap();
        assert_eq!(meta.backend, "dir");
        assert!(meta.size_bytes > 0);
        assert!(st.stage_snapshot(&paths.fs, "s1").is_err(), "duplicate id");

        let copy = SandboxPaths::new(&st.sandboxes_dir().join("copy"));
        fs::create_dir(&copy.dir).unwrap();
        st.create_fs(&copy, Some("s1"), None).unwrap();
        let u = &copy.upper;
        assert_eq!(fs::read(u.join("f")).unwrap(), b"hello");
        assert_eq!(fs::read_link(u.join("l")).unwrap(), Path::new("f"));
        let (f, h) = (
            fs::metadata(u.join("f")).unwrap(),
            fs::metadata(u.join("h")).unwrap(),
        );
        assert_eq!((f.ino(), f.nlink(), f.uid()), (h.ino(), 2, 1000));
        let wh = fs::symlink_metadata(u.join("wh")).unwrap();
        assert_eq!(wh.rdev(), 0);
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &wh.file_type()
        ));
        assert_eq!(xattr_get(&u.join("opaque"), "trusted.overlay.opaque"), b"y");
        assert!(matches!(
            st.create_fs(
                &SandboxPaths::new(&st.sandboxes_dir().join("x")),
                Some("nope"),
                None
            ),
            Err(RuntimeError::SnapshotNotFound(_))
        ));

        // Rollback: either side of an interrupted swap is recovered.
        fs::write(paths.upper.join("f"), b"changed").unwrap();
        st.rollback(&paths, "s1", "sb").unwrap();
        assert_eq!(fs::read(paths.upper.join("f")).unwrap(), b"hello");
        assert!(!paths.dir.join(FS_NEW).exists() && !paths.dir.join(FS_OLD).exists());
        fs::rename(&paths.fs, paths.dir.join(FS_NEW)).unwrap();
        fs::create_dir(paths.dir.join(FS_OLD)).unwrap();
        st.recover(&paths.dir).unwrap();
        assert_eq!(fs::read(paths.upper.join("f")).unwrap(), b"hello");
        assert!(!paths.dir.join(FS_NEW).exists() && !paths.dir.join(FS_OLD).exists());

        fs::create_dir(st.snapshots_dir().join(".tmp-partial")).unwrap();
        st.stage_snapshot(&paths.fs, "s2")
            .and_then(|s| st.commit_snapshot(s))
            .unwrap();
        let removed = st.reconcile_snapshots(&["s1".to_string()]).unwrap();
        assert_eq!(removed, ["partial", "s2"]);
        st.delete_snapshot("s1").unwrap();
        st.delete_snapshot("s1").unwrap();
        assert_eq!(fs::read_dir(st.snapshots_dir()).unwrap().count(), 0);
        st.remove_sandbox_dir(&paths.dir).unwrap();
        st.remove_sandbox_dir(&copy.dir).unwrap();
        assert!(!paths.dir.exists());
    }

    fn xattr_set(p: &Path, name: &str, value: &[u8]) {
        let (p, n) = (
            std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap(),
            std::ffi::CString::new(name).unwrap(),
        );
        // SAFETY: NUL-terminated strings and a live buffer of the given length.
        let rc = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    fn xattr_get(p: &Path, name: &str) -> Vec<u8> {
        let (p, n) = (
            std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap(),
            std::ffi::CString::new(name).unwrap(),
        );
        let mut buf = [0u8; 64];
        // SAFETY: NUL-terminated strings and a live, writable buffer of the given length.
        let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), 64) };
        assert!(rc >= 0, "{}", io::Error::last_os_error());
        buf[..rc as usize].to_vec()
    }
}
