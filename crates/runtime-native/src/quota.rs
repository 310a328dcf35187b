//! Disk quotas of the btrfs backend: btrfs *simple quotas* (squota, Linux ≥ 6.7), through
//! the btrfs ioctls (never by exec'ing `btrfs`).
//!
//! Why simple quotas and not full qgroups: full qgroups count what each subvolume
//! *references*, which is what one would want to limit, but a snapshot whose source belongs
//! to a higher-level qgroup other than the new one's (a restore, a fork, a rollback to
//! another sandbox's snapshot) makes the kernel mark every qgroup *inconsistent*, and while
//! they are inconsistent it enforces no limit at all (measured on 6.18: a sandbox limited to
//! 100 MiB wrote 181 MiB) until a rescan of the whole file system. Simple quotas never
//! become inconsistent and cost no backref walks: each extent is charged to the subvolume
//! that wrote it, for as long as the extent exists anywhere.
//!
//! The model:
//!
//! - Each sandbox with a disk limit has a level-1 qgroup `1/<n>` whose limit is the
//!   sandbox's `disk_mib`. Its members are the sandbox's `fs` subvolume and every earlier
//!   `fs` a rollback replaced that still owns data. Everything the sandbox wrote that still
//!   exists counts: its files, and what its snapshots keep of files it has since changed or
//!   deleted (a snapshot cannot escape the limit: its data stays charged to the writer). A
//!   rollback's new `fs` joins the same group, so a rollback does not reset the budget.
//! - Snapshots are in no group: read-only, they write nothing and own (almost) nothing.
//! - A restored or forked sandbox gets a group of its own; the data it shares with the
//!   snapshot stays charged to the sandbox that wrote it, only what it writes itself counts.
//! - Deleting a sandbox removes its group. A deleted subvolume's level-0 qgroup is removed
//!   by the kernel once the subvolume is dropped, unless it still owns data (kept alive by a
//!   snapshot or a restored sandbox); the [`Janitor`] removes those once their data is gone.
//!
//! Everything here is blocking.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;

/// Level of a qgroup id (`<level>/<id>`).
pub fn level(qgroupid: u64) -> u64 {
    qgroupid >> 48
}

/// The qgroup id `<level>/<id>`.
pub fn qgroupid(level: u64, id: u64) -> u64 {
    (level << 48) | (id & ((1 << 48) - 1))
}

/// `<level>/<id>` as text.
pub fn show(qgroupid: u64) -> String {
    format!("{}/{}", level(qgroupid), qgroupid & ((1 << 48) - 1))
}

/// The top-level subvolume (`BTRFS_FS_TREE_OBJECTID`).
const FS_TREE: u64 = 5;

/// Inode number of every btrfs subvolume's root directory.
pub(super) const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

pub(super) mod sys {
    //! uapi `linux/btrfs.h` and `linux/btrfs_tree.h`.

    const BTRFS: u8 = 0x94;

    /// `BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA`.
    pub const QUOTA_CTL_ENABLE_SIMPLE: u64 = 4;
    /// `BTRFS_QGROUP_LIMIT_MAX_RFER`.
    pub const LIMIT_MAX_RFER: u64 = 1 << 0;
    /// `BTRFS_QGROUP_LIMIT_MAX_EXCL`.
    pub const LIMIT_MAX_EXCL: u64 = 1 << 1;
    /// `BTRFS_QGROUP_STATUS_FLAG_ON`.
    pub const STATUS_ON: u64 = 1 << 0;
    /// `BTRFS_QGROUP_STATUS_FLAG_INCONSISTENT`.
    pub const STATUS_INCONSISTENT: u64 = 1 << 2;
    /// `BTRFS_QGROUP_STATUS_FLAG_SIMPLE_MODE`.
    pub const STATUS_SIMPLE: u64 = 1 << 3;

    /// Tree ids and item types used with `TREE_SEARCH`.
    pub const ROOT_TREE: u64 = 1;
    pub const QUOTA_TREE: u64 = 8;
    pub const ORPHAN_OBJECTID: u64 = -5i64 as u64;
    pub const ORPHAN_ITEM_KEY: u32 = 48;
    pub const ROOT_ITEM_KEY: u32 = 132;
    pub const QGROUP_STATUS_KEY: u32 = 240;
    pub const QGROUP_INFO_KEY: u32 = 242;
    pub const QGROUP_LIMIT_KEY: u32 = 244;
    pub const QGROUP_RELATION_KEY: u32 = 246;

    #[repr(C)]
    pub struct QuotaCtlArgs {
        pub cmd: u64,
        pub status: u64,
    }

    #[repr(C)]
    pub struct QgroupAssignArgs {
        pub assign: u64,
        pub src: u64,
        pub dst: u64,
    }

    #[repr(C)]
    pub struct QgroupCreateArgs {
        pub create: u64,
        pub qgroupid: u64,
    }

    /// `struct btrfs_qgroup_limit`.
    #[repr(C)]
    #[derive(Default)]
    pub struct QgroupLimit {
        pub flags: u64,
        pub max_rfer: u64,
        pub max_excl: u64,
        pub rsv_rfer: u64,
        pub rsv_excl: u64,
    }

    #[repr(C)]
    pub struct QgroupLimitArgs {
        pub qgroupid: u64,
        pub lim: QgroupLimit,
    }

    /// `struct btrfs_qgroup_inherit` with room for exactly one qgroup.
    #[repr(C)]
    #[derive(Default)]
    pub struct QgroupInherit1 {
        pub flags: u64,
        pub num_qgroups: u64,
        pub num_ref_copies: u64,
        pub num_excl_copies: u64,
        pub lim: QgroupLimit,
        pub qgroups: [u64; 1],
    }
    const _: () = assert!(std::mem::size_of::<QgroupInherit1>() == 80);

    /// `struct btrfs_ioctl_search_key`.
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    pub struct SearchKey {
        pub tree_id: u64,
        pub min_objectid: u64,
        pub max_objectid: u64,
        pub min_offset: u64,
        pub max_offset: u64,
        pub min_transid: u64,
        pub max_transid: u64,
        pub min_type: u32,
        pub max_type: u32,
        pub nr_items: u32,
        pub unused: u32,
        pub unused1: u64,
        pub unused2: u64,
        pub unused3: u64,
        pub unused4: u64,
    }
    const _: () = assert!(std::mem::size_of::<SearchKey>() == 104);

    pub const SEARCH_BUF: usize = 4096 - 104;

    /// `struct btrfs_ioctl_search_args`.
    #[repr(C)]
    pub struct SearchArgs {
        pub key: SearchKey,
        pub buf: [u8; SEARCH_BUF],
    }
    const _: () = assert!(std::mem::size_of::<SearchArgs>() == 4096);

    /// `struct btrfs_ioctl_search_header` (read from the buffer field by field).
    pub const SEARCH_HEADER_LEN: usize = 32;

    /// `struct btrfs_ioctl_ino_lookup_args`.
    #[repr(C)]
    pub struct InoLookupArgs {
        pub treeid: u64,
        pub objectid: u64,
        pub name: [u8; 4080],
    }
    const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);

    nix::ioctl_none!(sync, BTRFS, 8);
    nix::ioctl_readwrite!(tree_search, BTRFS, 17, SearchArgs);
    nix::ioctl_readwrite!(ino_lookup, BTRFS, 18, InoLookupArgs);
    nix::ioctl_readwrite!(quota_ctl, BTRFS, 40, QuotaCtlArgs);
    nix::ioctl_write_ptr!(qgroup_assign, BTRFS, 41, QgroupAssignArgs);
    nix::ioctl_write_ptr!(qgroup_create, BTRFS, 42, QgroupCreateArgs);
    // `BTRFS_IOC_QGROUP_LIMIT` is declared `_IOR` although the kernel only reads it.
    nix::ioctl_read!(qgroup_limit, BTRFS, 43, QgroupLimitArgs);
}

fn open_dir(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", p.display())))
}

fn os(what: impl std::fmt::Display, e: Errno) -> io::Error {
    let io = io::Error::from(e);
    io::Error::new(io.kind(), format!("{what}: {io}"))
}

/// The id of the subvolume `p` is the root of (or is in).
pub fn subvol_id(p: &Path) -> io::Result<u64> {
    let f = open_dir(p)?;
    let mut args = Box::new(sys::InoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; 4080],
    });
    // SAFETY: `f` is an open directory; `args` is a live, initialized
    // `btrfs_ioctl_ino_lookup_args` the kernel reads and writes within its size.
    unsafe { sys::ino_lookup(f.as_raw_fd(), &mut *args) }
        .map_err(|e| os(format!("subvolume id of {}", p.display()), e))?;
    Ok(args.treeid)
}

/// One item found by [`search`].
struct Item {
    offset: u64,
    data: Vec<u8>,
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
        .unwrap_or(0)
}

/// Every item of `tree` with key `(objectid, kind, min_off..=max_off)`
/// (`BTRFS_IOC_TREE_SEARCH`, batch after batch). `Ok(None)` when the tree does not exist
/// (the quota tree, with quotas off).
fn search(
    fd: &File,
    tree: u64,
    objectid: u64,
    kind: u32,
    (min_off, max_off): (u64, u64),
) -> io::Result<Option<Vec<Item>>> {
    let mut out = Vec::new();
    let mut args = Box::new(sys::SearchArgs {
        key: sys::SearchKey::default(),
        buf: [0; sys::SEARCH_BUF],
    });
    let mut off = min_off;
    loop {
        args.key = sys::SearchKey {
            tree_id: tree,
            min_objectid: objectid,
            max_objectid: objectid,
            min_offset: off,
            max_offset: max_off,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: kind,
            max_type: kind,
            nr_items: 4096,
            ..Default::default()
        };
        // SAFETY: `fd` is an open file of the file system; `args` is a live, initialized
        // `btrfs_ioctl_search_args`; the kernel writes at most `SEARCH_BUF` bytes of
        // results into `buf` and their count into `key.nr_items`.
        match unsafe { sys::tree_search(fd.as_raw_fd(), &mut *args) } {
            Ok(_) => {}
            Err(Errno::ENOENT) if out.is_empty() => return Ok(None),
            Err(e) => return Err(os("btrfs tree search", e)),
        }
        let b = &args.buf[..];
        let mut at = 0;
        let mut last = None;
        for _ in 0..args.key.nr_items {
            if at + sys::SEARCH_HEADER_LEN > b.len() {
                break;
            }
            let (obj, offset) = (le_u64(b, at + 8), le_u64(b, at + 16));
            let (kind_found, len) = (le_u32(b, at + 24), le_u32(b, at + 28) as usize);
            let start = at + sys::SEARCH_HEADER_LEN;
            let data = b.get(start..start + len).unwrap_or(&[]).to_vec();
            at = start + len;
            last = Some(offset);
            if obj == objectid && kind_found == kind {
                out.push(Item { offset, data });
            }
        }
        // Continue after the last key returned.
        match last {
            Some(o) if o < max_off => off = o + 1,
            _ => return Ok(Some(out)),
        }
    }
}

/// Quota status of a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Off,
    Simple,
    /// Full qgroups (not usable, see the module doc).
    Full {
        inconsistent: bool,
    },
}

pub fn status(root: &Path) -> io::Result<Status> {
    let fd = open_dir(root)?;
    let items = search(&fd, sys::QUOTA_TREE, 0, sys::QGROUP_STATUS_KEY, (0, 0))?;
    let Some(item) = items.and_then(|v| v.into_iter().next()) else {
        return Ok(Status::Off);
    };
    let flags = le_u64(&item.data, 16);
    Ok(if flags & sys::STATUS_ON == 0 {
        Status::Off
    } else if flags & sys::STATUS_SIMPLE != 0 {
        Status::Simple
    } else {
        Status::Full {
            inconsistent: flags & sys::STATUS_INCONSISTENT != 0,
        }
    })
}

/// Turn simple quotas on (`BTRFS_IOC_QUOTA_CTL`); fine if they are on already. Full qgroups
/// are left alone: an error says why they cannot be used.
pub fn enable(root: &Path) -> Result<(), String> {
    match status(root).map_err(|e| e.to_string())? {
        Status::Simple => return Ok(()),
        Status::Full { .. } => {
            return Err(format!(
                "{} has full btrfs qgroups enabled; warren needs simple quotas (full qgroups \
                 stop enforcing limits whenever a restore makes them inconsistent). Turn them \
                 off (`btrfs quota disable`) and warren enables simple quotas at its next \
                 start",
                root.display()
            ))
        }
        Status::Off => {}
    }
    let fd = open_dir(root).map_err(|e| e.to_string())?;
    let mut args = sys::QuotaCtlArgs {
        cmd: sys::QUOTA_CTL_ENABLE_SIMPLE,
        status: 0,
    };
    // SAFETY: `fd` is an open directory of the file system; `args` is a live, initialized
    // `btrfs_ioctl_quota_ctl_args` the kernel reads and writes within its size.
    unsafe { sys::quota_ctl(fd.as_raw_fd(), &mut args) }.map_err(|e| match e {
        Errno::EINVAL | Errno::EOPNOTSUPP => format!(
            "this kernel has no btrfs simple quotas (Linux 6.7 or later needed): {}",
            io::Error::from(e)
        ),
        e => format!("enabling btrfs simple quotas: {}", io::Error::from(e)),
    })?;
    match status(root).map_err(|e| e.to_string())? {
        Status::Simple => Ok(()),
        other => Err(format!(
            "btrfs quotas are {other:?} after enabling simple quotas"
        )),
    }
}

fn create_qgroup(fd: &File, id: u64, create: bool) -> Result<(), Errno> {
    let args = sys::QgroupCreateArgs {
        create: u64::from(create),
        qgroupid: id,
    };
    // SAFETY: `fd` is an open directory; `args` is a live, initialized
    // `btrfs_ioctl_qgroup_create_args` the kernel only reads.
    unsafe { sys::qgroup_create(fd.as_raw_fd(), &args) }.map(drop)
}

fn assign(fd: &File, child: u64, parent: u64, on: bool) -> Result<(), Errno> {
    let args = sys::QgroupAssignArgs {
        assign: u64::from(on),
        src: child,
        dst: parent,
    };
    // SAFETY: `fd` is an open directory; `args` is a live, initialized
    // `btrfs_ioctl_qgroup_assign_args` the kernel only reads.
    unsafe { sys::qgroup_assign(fd.as_raw_fd(), &args) }.map(drop)
}

fn set_limit(fd: &File, id: u64, bytes: Option<u64>) -> Result<(), Errno> {
    let mut args = sys::QgroupLimitArgs {
        qgroupid: id,
        lim: sys::QgroupLimit {
            // Under simple quotas referenced and exclusive are the same figure.
            flags: sys::LIMIT_MAX_RFER | sys::LIMIT_MAX_EXCL,
            max_rfer: bytes.unwrap_or(u64::MAX),
            max_excl: bytes.unwrap_or(u64::MAX),
            ..Default::default()
        },
    };
    // SAFETY: `fd` is an open directory; `args` is a live, initialized
    // `btrfs_ioctl_qgroup_limit_args` (the kernel only reads it despite `_IOR`).
    unsafe { sys::qgroup_limit(fd.as_raw_fd(), &mut args) }.map(drop)
}

/// Usage figures of one qgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub qgroupid: u64,
    /// Bytes charged to it (referenced = exclusive under simple quotas).
    pub bytes: u64,
}

fn infos(fd: &File, min: u64, max: u64) -> io::Result<Vec<Usage>> {
    Ok(
        search(fd, sys::QUOTA_TREE, 0, sys::QGROUP_INFO_KEY, (min, max))?
            .unwrap_or_default()
            .into_iter()
            .map(|i| Usage {
                qgroupid: i.offset,
                bytes: le_u64(&i.data, 8),
            })
            .collect(),
    )
}

/// The qgroups `id` is related to (`BTRFS_QGROUP_RELATION_KEY` items are stored both ways:
/// `(child, parent)` and `(parent, child)`).
fn relations(fd: &File, id: u64) -> io::Result<Vec<u64>> {
    Ok(search(
        fd,
        sys::QUOTA_TREE,
        id,
        sys::QGROUP_RELATION_KEY,
        (0, u64::MAX),
    )?
    .unwrap_or_default()
    .into_iter()
    .map(|i| i.offset)
    .collect())
}

fn subvol_exists(fd: &File, id: u64) -> io::Result<bool> {
    Ok(
        search(fd, sys::ROOT_TREE, id, sys::ROOT_ITEM_KEY, (0, u64::MAX))?
            .is_some_and(|v| !v.is_empty()),
    )
}

/// Whether deleted subvolumes wait to be dropped by the cleaner.
fn drops_pending(fd: &File) -> io::Result<bool> {
    Ok(search(
        fd,
        sys::ROOT_TREE,
        sys::ORPHAN_OBJECTID,
        sys::ORPHAN_ITEM_KEY,
        (0, u64::MAX),
    )?
    .is_some_and(|v| !v.is_empty()))
}

/// `BTRFS_IOC_SYNC`: commit and wake the cleaner, which drops deleted subvolumes (else it
/// waits for the next periodic commit, up to 30 s).
pub fn sync(root: &Path) -> io::Result<()> {
    let fd = open_dir(root)?;
    // SAFETY: `fd` is an open directory of the file system; the ioctl takes no argument.
    unsafe { sys::sync(fd.as_raw_fd()) }.map_err(|e| os("btrfs sync", e))?;
    Ok(())
}

/// What [`collect`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub removed: usize,
    /// Deleted subvolumes are still being dropped: more may become removable.
    pub pending: bool,
}

/// Remove the level-0 qgroups of subvolumes that no longer exist and own nothing more (the
/// kernel removes a dropped subvolume's qgroup itself only if it owned nothing at that
/// moment), and with `empty_groups` also level-1 groups without members (left by a crash
/// between making a group and its subvolume; only safe when no create runs).
pub fn collect(root: &Path, empty_groups: bool) -> io::Result<Collected> {
    let fd = open_dir(root)?;
    let pending = drops_pending(&fd)?;
    let mut removed = 0;
    for u in infos(&fd, qgroupid(0, 0), qgroupid(1, 0) - 1)? {
        if u.bytes != 0 || u.qgroupid == FS_TREE || subvol_exists(&fd, u.qgroupid)? {
            continue;
        }
        match create_qgroup(&fd, u.qgroupid, false) {
            Ok(()) => removed += 1,
            Err(Errno::ENOENT | Errno::EBUSY) => {}
            Err(e) => return Err(os(format!("removing qgroup {}", show(u.qgroupid)), e)),
        }
    }
    if empty_groups {
        for u in infos(&fd, qgroupid(1, 0), qgroupid(2, 0) - 1)? {
            let members = relations(&fd, u.qgroupid)?;
            if members.iter().any(|m| level(*m) < 1) {
                continue;
            }
            match create_qgroup(&fd, u.qgroupid, false) {
                Ok(()) => removed += 1,
                Err(Errno::ENOENT | Errno::EBUSY) => {}
                Err(e) => return Err(os(format!("removing qgroup {}", show(u.qgroupid)), e)),
            }
        }
    }
    Ok(Collected { removed, pending })
}

/// Every qgroup of the file system with its usage (tests, diagnostics).
pub fn list(root: &Path) -> io::Result<Vec<Usage>> {
    let fd = open_dir(root)?;
    infos(&fd, 0, u64::MAX)
}

/// The quotas of one btrfs file system (the storage root).
pub struct Quota {
    root: PathBuf,
    /// Serializes group allocation in this process (another daemon on the same file
    /// system is told apart by `EEXIST`).
    alloc: Mutex<()>,
    janitor: Janitor,
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota").field("root", &self.root).finish()
    }
}

impl Quota {
    /// Enable simple quotas on the file system of `root` (once) and remove what a previous
    /// daemon left (stale qgroups, empty groups).
    pub fn open(root: &Path) -> Result<Quota, String> {
        enable(root)?;
        match collect(root, true) {
            Ok(c) if c.removed > 0 => {
                tracing::info!(removed = c.removed, "removed stale btrfs qgroups")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "removing stale btrfs qgroups"),
        }
        Ok(Quota {
            root: root.to_path_buf(),
            alloc: Mutex::new(()),
            janitor: Janitor::start(root.to_path_buf()),
        })
    }

    /// Make a new level-1 group limited to `bytes` (`None`: no limit) and return its id.
    pub fn new_group(&self, bytes: Option<u64>) -> io::Result<u64> {
        let _alloc = self.alloc.lock().unwrap_or_else(|e| e.into_inner());
        let fd = open_dir(&self.root)?;
        let mut next = infos(&fd, qgroupid(1, 0), qgroupid(2, 0) - 1)?
            .iter()
            .map(|u| u.qgroupid & ((1 << 48) - 1))
            .max()
            .map_or(1, |m| m + 1);
        let mut tries = 0;
        let id = loop {
            let id = qgroupid(1, next);
            match create_qgroup(&fd, id, true) {
                Ok(()) => break id,
                // Another daemon on this file system took it.
                Err(Errno::EEXIST) if tries < 64 => {
                    tries += 1;
                    next += 1;
                }
                Err(e) => return Err(os(format!("creating qgroup {}", show(id)), e)),
            }
        };
        if let Err(e) = set_limit(&fd, id, bytes) {
            let _ = create_qgroup(&fd, id, false);
            return Err(os(format!("limiting qgroup {}", show(id)), e));
        }
        Ok(id)
    }

    /// Remove a group: take its members out, then remove it. Fine if it does not exist.
    pub fn remove_group(&self, group: u64) -> io::Result<()> {
        let fd = open_dir(&self.root)?;
        for member in relations(&fd, group)? {
            if level(member) >= level(group) {
                continue;
            }
            match assign(&fd, member, group, false) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(os(format!("removing {} from its group", show(member)), e)),
            }
        }
        match create_qgroup(&fd, group, false) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(os(format!("removing qgroup {}", show(group)), e)),
        }
    }

    /// The level-1 group of the subvolume at `p`, if it has one.
    pub fn group_of(&self, p: &Path) -> io::Result<Option<u64>> {
        let id = subvol_id(p)?;
        let fd = open_dir(&self.root)?;
        Ok(relations(&fd, qgroupid(0, id))?
            .into_iter()
            .find(|g| level(*g) == 1))
    }

    /// The limit of a qgroup (`None`: none, or no such qgroup).
    pub fn limit(&self, qgroupid: u64) -> io::Result<Option<u64>> {
        let fd = open_dir(&self.root)?;
        let item = search(
            &fd,
            sys::QUOTA_TREE,
            0,
            sys::QGROUP_LIMIT_KEY,
            (qgroupid, qgroupid),
        )?
        .and_then(|v| v.into_iter().next());
        Ok(item.and_then(|i| {
            let (flags, max_rfer) = (le_u64(&i.data, 0), le_u64(&i.data, 8));
            (flags & sys::LIMIT_MAX_RFER != 0 && max_rfer != u64::MAX).then_some(max_rfer)
        }))
    }

    /// Set (or, with `None`, lift) a qgroup's limit.
    pub fn set_limit(&self, qgroupid: u64, bytes: Option<u64>) -> io::Result<()> {
        let fd = open_dir(&self.root)?;
        set_limit(&fd, qgroupid, bytes).map_err(|e| os(format!("limiting {}", show(qgroupid)), e))
    }

    /// Bytes charged to a qgroup.
    pub fn usage(&self, qgroupid: u64) -> io::Result<Option<u64>> {
        let fd = open_dir(&self.root)?;
        Ok(infos(&fd, qgroupid, qgroupid)?.first().map(|u| u.bytes))
    }

    /// Commit and wake the cleaner now (space a deletion frees is charged off as soon as
    /// the subvolume is dropped), and have the janitor collect stale qgroups once it is.
    pub fn deleted(&self) {
        if let Err(e) = sync(&self.root) {
            tracing::warn!(error = %e, "btrfs sync after a deletion");
        }
        self.janitor.poke();
    }

    /// Stop the janitor, wait (a bounded time) for deleted subvolumes to be dropped and
    /// collect what they leave. Call before unmounting.
    pub fn shutdown(&self) {
        self.janitor.stop();
        let _ = sync(&self.root);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match collect(&self.root, false) {
                Ok(c) if !c.pending => break,
                Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Ok(_) => {
                    tracing::warn!("deleted subvolumes are still being dropped; their qgroups are removed at the next start");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "removing stale btrfs qgroups");
                    break;
                }
            }
        }
    }
}

impl Drop for Quota {
    fn drop(&mut self) {
        self.janitor.signal_stop();
    }
}

/// Removes stale qgroups in the background: woken after deletions, it waits for the
/// cleaner to drop the deleted subvolumes, then [`collect`]s.
struct Janitor {
    shared: Arc<(Mutex<JanitorState>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Default)]
struct JanitorState {
    poked: bool,
    stop: bool,
}

/// How long the janitor waits for one round of drops.
const JANITOR_ROUND: Duration = Duration::from_secs(120);

impl Janitor {
    fn start(root: PathBuf) -> Janitor {
        let shared = Arc::new((Mutex::new(JanitorState::default()), Condvar::new()));
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("btrfs-qgroups".into())
            .spawn(move || janitor_loop(&root, &s))
            .map_err(|e| tracing::warn!(error = %e, "starting the qgroup janitor"))
            .ok();
        Janitor {
            shared,
            thread: Mutex::new(thread),
        }
    }

    fn poke(&self) {
        let (m, cv) = &*self.shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).poked = true;
        cv.notify_all();
    }

    fn signal_stop(&self) {
        let (m, cv) = &*self.shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
    }

    fn stop(&self) {
        self.signal_stop();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn janitor_loop(root: &Path, shared: &(Mutex<JanitorState>, Condvar)) {
    let (m, cv) = shared;
    loop {
        {
            let mut st = m.lock().unwrap_or_else(|e| e.into_inner());
            while !st.poked && !st.stop {
                st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.stop {
                return;
            }
            st.poked = false;
        }
        let t0 = Instant::now();
        loop {
            match collect(root, false) {
                Ok(c) if !c.pending => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "removing stale btrfs qgroups");
                    break;
                }
            }
            if t0.elapsed() > JANITOR_ROUND {
                break;
            }
            // Wait a little, or less if told to stop.
            let st = m.lock().unwrap_or_else(|e| e.into_inner());
            let (st, _) = cv
                .wait_timeout_while(st, Duration::from_millis(200), |s| !s.stop)
                .unwrap_or_else(|e| e.into_inner());
            if st.stop {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(qgroupid(1, 7), (1 << 48) | 7);
        assert_eq!(level(qgroupid(1, 7)), 1);
        assert_eq!(show(qgroupid(0, 256)), "0/256");
        assert_eq!(show(qgroupid(1, 3)), "1/3");
        assert_eq!(sys::ORPHAN_OBJECTID, 0xFFFF_FFFF_FFFF_FFFB);
    }
}
