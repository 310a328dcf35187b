//! User namespaces: a sandbox's uid/gid `0..65536` are host ids `host_id..host_id+65536`
//! (an [`IdMap`] the engine allocates), so sandbox root is an unprivileged, unique host
//! identity with its own per-user kernel budgets (epoll watches, inotify instances, ...).
//!
//! The pieces, all used by the `__sandbox-init` helper (see `init.rs` for the order):
//!
//! - [`write_maps`]: the privileged parent writes `uid_map`/`gid_map` of the child that
//!   created the namespace (owned by `host_id`, not by root: per-user counters are charged to
//!   the namespace's owner at every level up the chain, so a root-owned namespace would
//!   still share root's inotify budget);
//! - [`idmapped_clone`]: a detached copy of a host mount whose owners appear shifted into the
//!   range (`mount_setattr(MOUNT_ATTR_IDMAP)`), so the image and the host's `/usr` show as
//!   owned by root inside without a copy;
//! - [`shift_tree`]: moves the owners of a writable layer from one range to another (a
//!   snapshot restored into a sandbox with a different range, or a layer made without a user
//!   namespace), keeping setuid bits, POSIX ACLs and file capabilities right.
//!
//! On the host, the files a sandbox writes are owned by its range; ids outside every range
//! (host root, host accounts) never appear inside as anything but `nobody`.

use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::mount::{MoveMountFlags, OpenTreeFlags};

use warren_runtime::IdMap;

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;
const MOUNT_ATTR_NOSUID: u64 = 0x0000_0002;
const MOUNT_ATTR_NODEV: u64 = 0x0000_0004;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Attributes of the read-only lower layers: the image and the host's `/usr`.
pub const LOWER_ATTRS: u64 = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

/// Attributes of a volume or host directory mount (plus [`READ_ONLY`] when asked).
pub const VOLUME_ATTRS: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

/// `MOUNT_ATTR_RDONLY`.
pub const READ_ONLY: u64 = MOUNT_ATTR_RDONLY;

/// `struct mount_attr` of `mount_setattr(2)` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Write `/proc/<pid>/uid_map` and `gid_map` of a process that just made its user namespace:
/// `0 host_id size`. The caller needs CAP_SETUID and CAP_SETGID in the parent namespace.
/// With those, `setgroups` stays allowed inside (so `su`, `login` and friends work there).
pub fn write_maps(pid: i32, map: &IdMap) -> io::Result<()> {
    let line = format!("0 {} {}\n", map.host_id, map.size);
    for file in ["uid_map", "gid_map"] {
        let path = format!("/proc/{pid}/{file}");
        // One write(2): the kernel takes a map only whole and only once.
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("writing {path}: {e}")))?;
    }
    Ok(())
}

/// A detached copy of the mount at `src` (not its submounts) whose files appear owned
/// through `userns`'s mapping (host id `n` shows as `host_id + n`), with `attrs` (e.g.
/// [`LOWER_ATTRS`]) set. Attach it with [`attach`], or drop it. Needs CAP_SYS_ADMIN in the
/// initial user namespace and a file system that supports idmapped mounts (ext4, xfs,
/// btrfs, tmpfs, ...; not overlayfs itself).
pub fn idmapped_clone(src: &Path, userns: BorrowedFd<'_>, attrs: u64) -> io::Result<OwnedFd> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("open_tree {}: {e}", src.display()),
        )
    })?;
    set_attrs(&tree, Some(userns), attrs).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("idmapped mount of {}: {e}", src.display()),
        )
    })?;
    Ok(tree)
}

/// A detached copy of the directory `dir` (an `O_PATH` handle: the copy is a bind mount of
/// exactly that directory, however it was reached) with `attrs` set, idmapped through
/// `userns` when given (see [`idmapped_clone`]).
pub fn clone_dir(
    dir: BorrowedFd<'_>,
    userns: Option<BorrowedFd<'_>>,
    attrs: u64,
) -> io::Result<OwnedFd> {
    let tree = rustix::mount::open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    set_attrs(&tree, userns, attrs)?;
    Ok(tree)
}

/// `mount_setattr(2)` on the detached mount `tree`: set `attrs`, and the idmapping of
/// `userns` when given.
fn set_attrs(tree: &OwnedFd, userns: Option<BorrowedFd<'_>>, attrs: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: attrs
            | if userns.is_some() {
                MOUNT_ATTR_IDMAP
            } else {
                0
            },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |ns| ns.as_raw_fd() as u64),
    };
    // SAFETY: `tree` is an open mount fd; the path is an empty NUL-terminated string (with
    // AT_EMPTY_PATH the fd itself is meant); `attr` is a live `struct mount_attr` of the
    // size passed. The kernel only reads these during the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attach a detached mount (from [`idmapped_clone`]) at `dest`.
pub fn attach(tree: &OwnedFd, dest: &Path) -> io::Result<()> {
    rustix::mount::move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        dest,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("attaching at {}: {e}", dest.display()),
        )
    })
}

/// The first host id of the range a writable layer's files belong to, read from the owner
/// of its top directory (root inside, unless the sandbox chowned `/`: any id inside the
/// range rounds down to its start). 0 for a layer made without a user namespace.
pub fn range_of(layer: &Path) -> io::Result<u32> {
    let uid = fs::symlink_metadata(layer)?.uid();
    Ok(uid - uid % IdMap::SIZE)
}

/// Owners in `from..from+size` become the same offset in `to..to+size`; other owners stay.
fn shift_id(id: u32, from: u32, to: u32, size: u32) -> u32 {
    if id >= from && id - from < size {
        to + (id - from)
    } else {
        id
    }
}

/// What [`shift_tree`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shifted {
    /// Entries whose owner or group changed.
    pub entries: u64,
    /// Entries visited.
    pub visited: u64,
}

/// Move every owner and group under `root` (which is included) from the range starting at
/// `from` to the range starting at `to` (both `IdMap::SIZE` wide). Never follows a
/// symlink. Setuid/setgid bits (which `chown` clears), POSIX ACL entries and the root id of
/// namespaced file capabilities are carried over. Only for trees nobody uses meanwhile (a
/// stopped or not yet started sandbox's layers): the tree's contents come from a sandbox.
pub fn shift_tree(root: &Path, from: u32, to: u32) -> io::Result<Shifted> {
    let mut done = Shifted::default();
    if from == to {
        return Ok(done);
    }
    let size = IdMap::SIZE;
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ctx(&path, "stat", e)),
        };
        done.visited += 1;
        if meta.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| ctx(&path, "read", e))? {
                let entry = entry.map_err(|e| ctx(&path, "read", e))?;
                stack.push(entry.path());
            }
        }
        let (uid, gid) = (meta.uid(), meta.gid());
        let (nuid, ngid) = (shift_id(uid, from, to, size), shift_id(gid, from, to, size));
        let xattrs = list_xattrs(&path)?;
        let fcaps = if meta.is_file() && xattrs.iter().any(|n| n == XATTR_CAPS) {
            get_xattr(&path, XATTR_CAPS)?
        } else {
            None
        };
        if (nuid, ngid) != (uid, gid) {
            lchown(&path, Some(nuid), Some(ngid)).map_err(|e| ctx(&path, "chown", e))?;
            done.entries += 1;
            // chown(2) clears setuid/setgid on files (and drops file capabilities).
            let mode = meta.mode() & 0o7777;
            if meta.is_file() && mode & 0o6000 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(|e| ctx(&path, "chmod", e))?;
            }
        }
        for name in [XATTR_ACL_ACCESS, XATTR_ACL_DEFAULT] {
            if xattrs.iter().any(|n| n == name) && !meta.file_type().is_symlink() {
                if let Some(mut acl) = get_xattr(&path, name)? {
                    if shift_acl(&mut acl, from, to, size) {
                        set_xattr(&path, name, &acl)?;
                    }
                }
            }
        }
        if let Some(mut caps) = fcaps {
            shift_fcaps(&mut caps, from, to, size);
            set_xattr(&path, XATTR_CAPS, &caps)?;
        }
    }
    Ok(done)
}

fn ctx(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

const XATTR_CAPS: &str = "security.capability";
const XATTR_ACL_ACCESS: &str = "system.posix_acl_access";
const XATTR_ACL_DEFAULT: &str = "system.posix_acl_default";

/// POSIX ACL xattr: a u32 version (2), then entries of (u16 tag, u16 perm, u32 id), little
/// endian. ACL_USER (2) and ACL_GROUP (8) entries carry an id. Returns whether any changed.
fn shift_acl(acl: &mut [u8], from: u32, to: u32, size: u32) -> bool {
    const ACL_USER: u16 = 0x02;
    const ACL_GROUP: u16 = 0x08;
    let mut changed = false;
    if acl.len() < 4 {
        return false;
    }
    for entry in acl[4..].chunks_exact_mut(8) {
        let tag = u16::from_le_bytes([entry[0], entry[1]]);
        if tag == ACL_USER || tag == ACL_GROUP {
            let id = u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]);
            let new = shift_id(id, from, to, size);
            if new != id {
                entry[4..8].copy_from_slice(&new.to_le_bytes());
                changed = true;
            }
        }
    }
    changed
}

/// `security.capability` revision 3 (written from inside a user namespace) ends with the
/// host uid of the namespace's root, which must follow the move; revision 2 has none.
fn shift_fcaps(caps: &mut [u8], from: u32, to: u32, size: u32) {
    const VFS_CAP_REVISION_MASK: u32 = 0xFF00_0000;
    const VFS_CAP_REVISION_3: u32 = 0x0300_0000;
    if caps.len() < 24 {
        return;
    }
    let magic = u32::from_le_bytes([caps[0], caps[1], caps[2], caps[3]]);
    if magic & VFS_CAP_REVISION_MASK != VFS_CAP_REVISION_3 {
        return;
    }
    let root = u32::from_le_bytes([caps[20], caps[21], caps[22], caps[23]]);
    caps[20..24].copy_from_slice(&shift_id(root, from, to, size).to_le_bytes());
}

fn cpath(path: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// Names of `path`'s extended attributes (not following a symlink).
fn list_xattrs(path: &Path) -> io::Result<Vec<String>> {
    let c = cpath(path)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `c` is NUL-terminated; `buf` is writable for `buf.len()` bytes.
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            // File systems without xattrs have none to carry over.
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(ctx(path, "listxattr", e)),
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

fn get_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let (c, n) = (
        cpath(path)?,
        std::ffi::CString::new(name).map_err(io::Error::other)?,
    );
    let mut buf = vec![0u8; 512];
    loop {
        // SAFETY: both strings are NUL-terminated; `buf` is writable for `buf.len()` bytes.
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < 1 << 16 => buf.resize(buf.len() * 4, 0),
            Some(libc::ENODATA) => return Ok(None),
            _ => return Err(ctx(path, "getxattr", e)),
        }
    }
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (c, n) = (
        cpath(path)?,
        std::ffi::CString::new(name).map_err(io::Error::other)?,
    );
    // SAFETY: both strings are NUL-terminated; `value` is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(ctx(path, "setxattr", io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_shift_only_inside_the_range() {
        let (from, to, size) = (65536 * 2, 65536 * 5, IdMap::SIZE);
        assert_eq!(shift_id(from, from, to, size), to);
        assert_eq!(shift_id(from + 1000, from, to, size), to + 1000);
        assert_eq!(shift_id(from + size - 1, from, to, size), to + size - 1);
        assert_eq!(shift_id(from + size, from, to, size), from + size);
        assert_eq!(shift_id(0, from, to, size), 0);
        assert_eq!(shift_id(5, 0, to, size), to + 5);
    }

    #[test]
    fn acl_entries_with_ids_move() {
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, id) in [
            (0x01u16, u32::MAX),
            (0x02, 70_000),
            (0x08, 65_536),
            (0x20, u32::MAX),
        ] {
            acl.extend(tag.to_le_bytes());
            acl.extend(7u16.to_le_bytes());
            acl.extend(id.to_le_bytes());
        }
        assert!(shift_acl(&mut acl, 65536, 131072, IdMap::SIZE));
        let ids: Vec<u32> = acl[4..]
            .chunks_exact(8)
            .map(|e| u32::from_le_bytes([e[4], e[5], e[6], e[7]]))
            .collect();
        assert_eq!(ids, [u32::MAX, 135_536, 131_072, u32::MAX]);
        assert!(!shift_acl(&mut acl, 65536, 131072, IdMap::SIZE));
    }

    #[test]
    fn v3_file_caps_carry_the_root_id() {
        let mut caps = vec![0u8; 24];
        caps[0..4].copy_from_slice(&0x0300_0000u32.to_le_bytes());
        caps[20..24].copy_from_slice(&65536u32.to_le_bytes());
        shift_fcaps(&mut caps, 65536, 196608, IdMap::SIZE);
        assert_eq!(
            u32::from_le_bytes([caps[20], caps[21], caps[22], caps[23]]),
            196608
        );
        let mut v2 = vec![0u8; 20];
        v2[0..4].copy_from_slice(&0x0200_0000u32.to_le_bytes());
        let before = v2.clone();
        shift_fcaps(&mut v2, 65536, 196608, IdMap::SIZE);
        assert_eq!(v2, before);
    }

    /// Needs root (chown to arbitrary ids).
    #[test]
    fn shift_tree_moves_owners_and_keeps_setuid() {
        crate::require_root("chown to other ranges");
        let dir = std::env::temp_dir().join(format!("warren-shift-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (from, to) = (65536 * 3, 65536 * 7);
        fs::create_dir_all(dir.join("a/b")).unwrap();
        fs::write(dir.join("a/b/f"), b"x").unwrap();
        fs::write(dir.join("suid"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("a/link")).unwrap();
        for p in ["", "a", "a/b", "a/b/f", "suid", "a/link"] {
            lchown(dir.join(p), Some(from + 1000), Some(from + 5)).unwrap();
        }
        lchown(dir.join("a/b/f"), Some(42), Some(from)).unwrap();
        fs::set_permissions(dir.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        let passwd_before = fs::symlink_metadata("/etc/passwd").unwrap();
        let done = shift_tree(&dir, from, to).unwrap();
        assert_eq!(done.entries, 6);
        let m = |p: &str| fs::symlink_metadata(dir.join(p)).unwrap();
        assert_eq!((m("").uid(), m("").gid()), (to + 1000, to + 5));
        assert_eq!((m("a/b/f").uid(), m("a/b/f").gid()), (42, to));
        assert_eq!(m("suid").mode() & 0o7777, 0o4755);
        assert_eq!(m("a/link").uid(), to + 1000);
        // The symlink's target is never touched.
        let passwd_after = fs::symlink_metadata("/etc/passwd").unwrap();
        assert_eq!(passwd_before.uid(), passwd_after.uid());
        assert_eq!(range_of(&dir).unwrap(), to);
        assert_eq!(shift_tree(&dir, to, to).unwrap(), Shifted::default());
        fs::remove_dir_all(&dir).unwrap();
    }
}
