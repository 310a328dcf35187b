//! File-system helpers shared by [`crate::commit`] and [`crate::copy`]: metadata through
//! `statx` (one layout on every architecture), directory listings in byte order, extended
//! attributes of an open file, and lookups in a stack of layer directories as overlayfs
//! would see them (never following a symlink out of a layer).
//!
//! Everything below a directory is reached relative to an open descriptor of it with
//! `O_NOFOLLOW`, so a tree that changes while it is read (a sandbox still running, an
//! untrusted build context) cannot lead a walk outside of it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, StatxFlags};

use crate::ImageError;

/// The type of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

/// What `statx` says about a file, in fixed-width fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub kind: Kind,
    /// Permission bits with set-id and sticky bits (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    pub nlink: u32,
    /// Device and inode: the identity of the file (for hard links).
    pub id: (u32, u32, u64),
    /// Major and minor of a device node.
    pub rdev: (u32, u32),
}

impl Meta {
    fn of(s: &rustix::fs::Statx) -> Meta {
        let mode = u32::from(s.stx_mode);
        let kind = match mode & 0o170000 {
            0o040000 => Kind::Dir,
            0o120000 => Kind::Symlink,
            0o010000 => Kind::Fifo,
            0o020000 => Kind::Char,
            0o060000 => Kind::Block,
            0o140000 => Kind::Socket,
            _ => Kind::File,
        };
        Meta {
            kind,
            perm: mode & 0o7777,
            uid: s.stx_uid,
            gid: s.stx_gid,
            size: s.stx_size,
            mtime: s.stx_mtime.tv_sec,
            nlink: s.stx_nlink,
            id: (s.stx_dev_major, s.stx_dev_minor, s.stx_ino),
            rdev: (s.stx_rdev_major, s.stx_rdev_minor),
        }
    }

    /// An overlayfs whiteout: a character device 0/0.
    pub fn is_whiteout(&self) -> bool {
        self.kind == Kind::Char && self.rdev == (0, 0)
    }
}

/// `name` in `dir`, not followed if it is a symlink.
pub(crate) fn stat_at(dir: impl AsFd, name: &OsStr) -> io::Result<Meta> {
    let s = rustix::fs::statx(
        dir,
        name,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )?;
    Ok(Meta::of(&s))
}

/// The file open as `fd`.
pub(crate) fn stat_fd(fd: impl AsFd) -> io::Result<Meta> {
    let s = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
    Ok(Meta::of(&s))
}

/// The names in directory `dir` (without `.` and `..`), in byte order.
pub(crate) fn list_sorted(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name));
        }
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Directory `name` in `dir`, refused if it is a symlink.
pub(crate) fn open_dir_at(dir: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Regular file `name` in `dir` for reading, and its metadata; anything else (a symlink,
/// a device node) is refused without being opened.
pub(crate) fn open_file_at(dir: impl AsFd, name: &OsStr) -> io::Result<(File, Meta)> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let meta = stat_fd(&fd)?;
    if meta.kind != Kind::File {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((reopen(&fd, OFlags::RDONLY)?, meta))
}

/// The file `fd` (an `O_PATH` descriptor) refers to, opened anew with `flags`: the same
/// file whatever happened to its name since.
pub(crate) fn reopen(fd: &OwnedFd, flags: OFlags) -> io::Result<File> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let fd = rustix::fs::openat(
        rustix::fs::CWD,
        path.as_str(),
        flags | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Extended attributes: (name, value), by name.
pub(crate) type Xattrs = Vec<(OsString, Vec<u8>)>;

/// The extended attributes of the file open as `fd`, by name. None where the file system
/// has none.
pub(crate) fn xattrs(fd: impl AsFd) -> io::Result<Xattrs> {
    let fd = fd.as_fd();
    let mut list = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::flistxattr(fd, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let len = rustix::fs::flistxattr_query(fd)?;
                list.resize(len.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let mut value = vec![0u8; 256];
        let len = loop {
            match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) => {
                    let len = rustix::fs::fgetxattr_query(fd, name)?;
                    value.resize(len.max(value.len() * 2), 0);
                }
                // Removed since it was listed.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            value.truncate(len);
            out.push((name.to_os_string(), value));
        }
    }
    out.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(out)
}

/// Whether the directory open as `fd` is opaque (`trusted.overlay.opaque=y`).
pub(crate) fn is_opaque(fd: impl AsFd) -> bool {
    let mut v = [0u8; 2];
    matches!(
        rustix::fs::fgetxattr(fd, "trusted.overlay.opaque", &mut v[..]),
        Ok(1) if v[0] == b'y'
    )
}

pub(crate) fn io_err(path: &Path, e: impl Into<io::Error>) -> ImageError {
    ImageError::Io(format!("{}: {}", path.display(), e.into()))
}

/// An entry found in a stack of layers.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub meta: Meta,
    /// Its target, if it is a symlink.
    pub link: Option<PathBuf>,
}

/// The entry at `rel` (normal components only; empty is the root, which is not looked up)
/// in the union of `lowers` (top-most first), as overlayfs shows it: the top-most layer
/// that has it wins, a whiteout or a non-directory on the way hides everything below it,
/// and an opaque directory hides what the layers below have under it. Symlinks are not
/// followed (a symlink on the way means the path does not exist as such).
pub(crate) fn lookup(lowers: &[PathBuf], rel: &Path) -> Result<Option<Found>, ImageError> {
    let names: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = names.split_last() else {
        return Ok(None);
    };
    'lowers: for lower in lowers {
        let mut dir: OwnedFd = File::open(lower).map_err(|e| io_err(lower, e))?.into();
        let mut opaque = false;
        for name in parents {
            match stat_at(&dir, name) {
                Ok(m) if m.kind == Kind::Dir => {}
                // A whiteout, a file or a symlink: nothing below it in any layer.
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if opaque {
                        return Ok(None);
                    }
                    continue 'lowers;
                }
                Err(e) => return Err(io_err(&lower.join(rel), e)),
            }
            dir = match open_dir_at(&dir, name) {
                Ok(d) => d,
                Err(e) => return Err(io_err(&lower.join(rel), e)),
            };
            opaque |= is_opaque(&dir);
        }
        match stat_at(&dir, last) {
            Ok(m) if m.is_whiteout() => return Ok(None),
            Ok(meta) => {
                let link = if meta.kind == Kind::Symlink {
                    let t = rustix::fs::readlinkat(&dir, *last, Vec::new())
                        .map_err(|e| io_err(&lower.join(rel), e))?;
                    Some(PathBuf::from(OsString::from_vec(t.into_bytes())))
                } else {
                    None
                };
                return Ok(Some(Found { meta, link }));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if opaque {
                    return Ok(None);
                }
            }
            Err(e) => return Err(io_err(&lower.join(rel), e)),
        }
    }
    Ok(None)
}

/// `path` (relative to the image root, lexically clean) with the symlinks of the union of
/// `lowers` followed inside the image root, as a container would see it: an absolute target
/// starts again at the root and `..` never climbs above it. Components that do not exist
/// are kept as they are.
pub(crate) fn resolve(lowers: &[PathBuf], path: &Path) -> Result<PathBuf, ImageError> {
    let mut todo: VecDeque<OsString> = components(path).into();
    let mut cur = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            cur.pop();
            continue;
        }
        let next = cur.join(&c);
        match lookup(lowers, &next)? {
            Some(Found {
                link: Some(target), ..
            }) => {
                links += 1;
                if links > 40 {
                    return Err(ImageError::BuildInput(format!(
                        "{}: too many levels of symbolic links in the image",
                        path.display()
                    )));
                }
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                for t in components(&target).into_iter().rev() {
                    todo.push_front(t);
                }
            }
            _ => cur = next,
        }
    }
    Ok(cur)
}

/// The normal and `..` components of `path`.
fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(p: &Path) {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p,
            rustix::fs::FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
    }

    #[test]
    fn lookups_see_the_union_of_the_layers() {
        let top = tempfile::tempdir().unwrap();
        let bottom = tempfile::tempdir().unwrap();
        let (t, b) = (top.path(), bottom.path());
        std::fs::create_dir_all(b.join("etc/ssl")).unwrap();
        std::fs::write(b.join("etc/passwd"), b"root").unwrap();
        std::fs::create_dir_all(b.join("opt/x")).unwrap();
        std::fs::create_dir_all(b.join("srv/app")).unwrap();
        std::os::unix::fs::symlink("/srv/app", b.join("app")).unwrap();
        std::os::unix::fs::symlink("../../../../srv", b.join("etc/up")).unwrap();
        std::fs::create_dir_all(t.join("etc")).unwrap();
        whiteout(&t.join("etc/passwd"));
        std::fs::create_dir(t.join("opt")).unwrap();
        rustix::fs::setxattr(
            t.join("opt"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let lowers = vec![t.to_path_buf(), b.to_path_buf()];

        let ssl = lookup(&lowers, Path::new("etc/ssl")).unwrap().unwrap();
        assert_eq!(ssl.meta.kind, Kind::Dir);
        assert!(lookup(&lowers, Path::new("etc/passwd")).unwrap().is_none());
        assert!(lookup(&lowers, Path::new("opt/x")).unwrap().is_none());
        assert!(lookup(&lowers, Path::new("opt")).unwrap().is_some());
        assert!(lookup(&lowers, Path::new("app/x")).unwrap().is_none());
        let app = lookup(&lowers, Path::new("app")).unwrap().unwrap();
        assert_eq!(app.link.as_deref(), Some(Path::new("/srv/app")));

        assert_eq!(
            resolve(&lowers, Path::new("app/f")).unwrap(),
            Path::new("srv/app/f")
        );
        assert_eq!(
            resolve(&lowers, Path::new("etc/up/app")).unwrap(),
            Path::new("srv/app")
        );
        assert_eq!(
            resolve(&lowers, Path::new("new/dir")).unwrap(),
            Path::new("new/dir")
        );
    }
}
