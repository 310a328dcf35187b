//! Where the paths a host names resolve: the sandbox's root.
//!
//! As PID 1 the agent's `/` already is the sandbox's root (pivot_root), and a hosted agent
//! (see [`crate::hosted`]) serves a plain directory of the host. Either way every path of a
//! request is resolved by `openat2(2)` with `RESOLVE_IN_ROOT` below an `O_PATH` descriptor of
//! that root: `..`, absolute symlinks and symlinks pointing up all stay inside it, as if it were
//! `/`, and magic links (`/proc/self/root`, `/proc/<pid>/cwd`) are refused. Inside a sandbox
//! this is a second line behind pivot_root; in a hosted agent it is the only one.
//!
//! The file-system work itself then names what was resolved through the descriptor
//! (`/proc/self/fd/N`, or `/proc/self/fd/N/NAME` for an entry that must not be followed), so
//! `std::fs` keeps doing it. Walks (listings, search, archives, watches) resolve their start
//! once and descend by the names they read, never following a symlink.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags, ResolveFlags};

/// `openat2` answers `EAGAIN` when a rename raced with a `..` walk; it is retried this often.
const EAGAIN_RETRIES: usize = 8;

/// The sandbox's root, held open; for a hosted agent also where its commands and ports are.
#[derive(Debug)]
pub(crate) struct Root {
    fd: OwnedFd,
    /// Hosted: a host directory searched first for commands named without a slash.
    programs: Option<PathBuf>,
    /// Hosted: the host addresses of the sandbox's ports (none other is reachable). `None`
    /// (PID 1): ports are on the sandbox's own loopback.
    ports: Option<HashMap<u16, SocketAddr>>,
}

/// A path resolved inside the root: a name of the same object in the agent's file system,
/// valid while this value lives.
#[derive(Debug)]
pub(crate) struct At {
    _fd: OwnedFd,
    path: PathBuf,
}

impl std::ops::Deref for At {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for At {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl Root {
    /// Opens `dir` as the root every request path resolves in.
    pub(crate) fn open(dir: &Path) -> io::Result<Root> {
        let fd = rustix::fs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Root {
            fd,
            programs: None,
            ports: None,
        })
    }

    /// A hosted agent's root: commands are looked up in `programs` first, and only the
    /// ports in `ports` can be reached (at the host addresses given).
    pub(crate) fn hosted(
        dir: &Path,
        programs: Option<PathBuf>,
        ports: HashMap<u16, SocketAddr>,
    ) -> io::Result<Root> {
        Ok(Root {
            programs,
            ports: Some(ports),
            ..Root::open(dir)?
        })
    }

    pub(crate) fn programs(&self) -> Option<&Path> {
        self.programs.as_deref()
    }

    /// Where port `port` of the sandbox is: `Ok(None)` on its own loopback, `Ok(Some(addr))`
    /// at a host address (hosted), `Err` if it cannot be reached at all.
    pub(crate) fn port(&self, port: u16) -> io::Result<Option<SocketAddr>> {
        match &self.ports {
            None => Ok(None),
            Some(map) => map.get(&port).copied().map(Some).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "no such port in this sandbox",
                )
            }),
        }
    }

    /// Opens `path` (absolute, as the sandbox sees it) with `flags`, following symlinks,
    /// inside the root.
    pub(crate) fn open_in(&self, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        if NO_OPENAT2.load(Ordering::Relaxed) {
            return walk_in_root(self.fd.as_fd(), path, flags);
        }
        let rel = relative(path);
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(
                self.fd.as_fd(),
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
                // A kernel without openat2 (gVisor's, before 2023): resolve in user space,
                // from now on.
                Err(rustix::io::Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    return walk_in_root(self.fd.as_fd(), path, flags);
                }
                r => return r.map_err(io::Error::from),
            }
        }
    }

    /// `path` with every symlink followed (what `open` or `stat` would reach).
    pub(crate) fn follow(&self, path: &Path) -> io::Result<At> {
        let fd = self.open_in(path, OFlags::PATH)?;
        let path = fd_path(&fd);
        Ok(At { _fd: fd, path })
    }

    /// The entry `path` names, itself (what `lstat`, `unlink`, `rename` or `mkdir` act on):
    /// its parent is resolved, its last component is not followed. A path without a last
    /// name (`/`, ending in `..`) is followed.
    pub(crate) fn entry(&self, path: &Path) -> io::Result<At> {
        match split(path) {
            Some((parent, name)) => {
                let fd = self.open_in(parent, OFlags::PATH | OFlags::DIRECTORY)?;
                let path = fd_path(&fd).join(name);
                Ok(At { _fd: fd, path })
            }
            None => {
                // `/proc/self/fd/N` is a magic link: `lstat` would report a symlink (and
                // `readlink` the agent's own view of the directory). `N/.` is the directory.
                let at = self.follow(path)?;
                Ok(At {
                    path: at.path.join("."),
                    _fd: at._fd,
                })
            }
        }
    }
}

/// Parent and last name of `path`, if its last component is a name.
fn split(path: &Path) -> Option<(&Path, &OsStr)> {
    match path.components().next_back() {
        Some(Component::Normal(name)) => Some((path.parent().unwrap_or(Path::new("/")), name)),
        _ => None,
    }
}

/// `path` relative to the root (`openat2` takes an absolute one relative to the root too
/// under `RESOLVE_IN_ROOT`; a relative one reads better in errors). `/` is `.`.
fn relative(path: &Path) -> &Path {
    match path.strip_prefix("/") {
        Ok(p) if p.as_os_str().is_empty() => Path::new("."),
        Ok(p) => p,
        Err(_) => path,
    }
}

/// Set once `openat2` answered `ENOSYS`: every later resolution walks in user space.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Symlinks one resolution may follow (the kernel's `MAXSYMLINKS`).
const MAX_SYMLINKS: usize = 40;

/// What `openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` does, in user
/// space, for kernels without `openat2`: one component at a time, each opened `O_PATH |
/// O_NOFOLLOW` below the directory held open before it, so the kernel never follows a link
/// or a `..` for us. A symlink's text is read and walked the same way (an absolute one from
/// the root); `..` goes back to the directory we came through and never above the root.
/// A concurrent rename cannot lead out: every step starts at a descriptor that was inside.
/// Magic links are never followed (their text is walked as a path inside the root). Only the
/// last component is opened with `flags`, again without following it.
fn walk_in_root(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> io::Result<OwnedFd> {
    let nofollow = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // The directories walked through, root first: `..` pops one.
    let mut dirs: Vec<OwnedFd> = vec![rustix::fs::openat(root, ".", nofollow, Mode::empty())?];
    let mut todo: VecDeque<std::ffi::OsString> = components(path).collect();
    let mut links = 0;
    while let Some(name) = todo.pop_front() {
        let last = todo.is_empty();
        if name == ".." {
            if dirs.len() > 1 {
                dirs.pop();
            }
            if last {
                break;
            }
            continue;
        }
        let Some(dir) = dirs.last() else {
            return Err(io::Error::other("resolution lost its root"));
        };
        let fd = rustix::fs::openat(dir, name.as_os_str(), nofollow, Mode::empty())?;
        let stat = rustix::fs::fstat(&fd)?;
        let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
        if kind == rustix::fs::FileType::Symlink {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let target = rustix::fs::readlinkat(&fd, "", Vec::new())?;
            let target = PathBuf::from(std::ffi::OsString::from_vec(target.into_bytes()));
            if target.is_absolute() {
                dirs.truncate(1);
            }
            for c in components(&target).collect::<Vec<_>>().into_iter().rev() {
                todo.push_front(c);
            }
            continue;
        }
        if !last {
            if kind != rustix::fs::FileType::Directory {
                return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
            }
            dirs.push(fd);
            continue;
        }
        return finish_open(dir, &name, fd, kind, flags);
    }
    // The path ended at a directory we hold (`/`, `..`, a link to a directory).
    let Some(fd) = dirs.pop() else {
        return Err(io::Error::other("resolution lost its root"));
    };
    if flags.contains(OFlags::PATH) {
        return Ok(fd);
    }
    let proc = fd_path(&fd);
    Ok(rustix::fs::open(
        &proc,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The last step of [`walk_in_root`]: `fd` (an `O_PATH` handle on `name` in `dir`, not a
/// symlink) as `flags` asks.
fn finish_open(
    dir: &OwnedFd,
    name: &OsStr,
    fd: OwnedFd,
    kind: rustix::fs::FileType,
    flags: OFlags,
) -> io::Result<OwnedFd> {
    if flags.contains(OFlags::DIRECTORY) && kind != rustix::fs::FileType::Directory {
        return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
    }
    if flags.contains(OFlags::PATH) {
        return Ok(fd);
    }
    // Opened again by name, not following: a symlink swapped in meanwhile is `ELOOP`.
    Ok(rustix::fs::openat(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names of `path`, `.` dropped (`..` kept: the walk handles it).
fn components(path: &Path) -> impl Iterator<Item = std::ffi::OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// A walk's start: the path the host named and where it resolved. Paths below it map to
/// the agent's file system by [`Tree::host`] (descending by names read from the directories,
/// so no symlink is followed on the way down).
#[derive(Debug)]
pub(crate) struct Tree {
    shown: PathBuf,
    at: At,
}

impl Tree {
    /// Resolves `path` (following symlinks: a walk may start at a link to a directory).
    pub(crate) fn open(root: &Root, path: &Path) -> io::Result<Tree> {
        Ok(Tree {
            shown: path.to_path_buf(),
            at: root.follow(path)?,
        })
    }

    /// The start as the host named it.
    pub(crate) fn shown(&self) -> &Path {
        &self.shown
    }

    /// Where a path at or below the start (as the host sees it) is for the agent.
    pub(crate) fn host(&self, shown: &Path) -> PathBuf {
        match shown.strip_prefix(&self.shown) {
            Ok(rel) if rel.as_os_str().is_empty() => self.at.to_path_buf(),
            Ok(rel) => self.at.join(rel),
            // Not below the start: nothing the walks produce; resolve nothing.
            Err(_) => PathBuf::from("/nonexistent-outside-of-the-walk"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("warren-root-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("root/a")).unwrap();
        fs::write(d.join("outside"), b"secret").unwrap();
        fs::write(d.join("root/a/f"), b"inside").unwrap();
        d
    }

    #[test]
    fn everything_resolves_inside() {
        let d = scratch("inside");
        let root = Root::open(&d.join("root")).unwrap();
        // Escapes by `..`, an absolute symlink and a relative one pointing up all land inside.
        symlink("/a/f", d.join("root/abs")).unwrap();
        symlink("../../../../outside", d.join("root/up")).unwrap();
        symlink("/proc/self/root/etc/passwd", d.join("root/magic")).unwrap();
        let read = |p: &str| fs::read(&*root.follow(Path::new(p)).unwrap()).unwrap();
        assert_eq!(read("/../../a/f"), b"inside");
        assert_eq!(read("/abs"), b"inside");
        assert!(
            root.follow(Path::new("/up")).is_err(),
            "resolves to /outside"
        );
        assert!(root.follow(Path::new("/magic")).is_err());
        // `entry` does not follow the last component: the link itself.
        let link = root.entry(Path::new("/abs")).unwrap();
        assert!(fs::symlink_metadata(&*link).unwrap().is_symlink());
        assert_eq!(fs::read_link(&*link).unwrap(), Path::new("/a/f"));
        // A parent that is a symlink is followed, inside.
        symlink("/a", d.join("root/dir")).unwrap();
        assert_eq!(
            fs::read(&*root.entry(Path::new("/dir/f")).unwrap()).unwrap(),
            b"inside"
        );
        // `/` is the root itself, a directory even to `lstat` (not the fd's magic link).
        assert!(fs::metadata(&*root.entry(Path::new("/")).unwrap())
            .unwrap()
            .is_dir());
        assert!(fs::symlink_metadata(&*root.entry(Path::new("/")).unwrap())
            .unwrap()
            .is_dir());
        assert!(
            fs::symlink_metadata(&*root.entry(Path::new("/a/..")).unwrap())
                .unwrap()
                .is_dir()
        );
        fs::remove_dir_all(&d).unwrap();
    }

    /// The user-space walk (for kernels without `openat2`, like gVisor's) reaches what
    /// `openat2` reaches, and fails where it fails.
    #[test]
    fn the_user_space_walk_agrees_with_openat2() {
        let d = scratch("walk");
        let r = d.join("root");
        symlink("/a/f", r.join("abs")).unwrap();
        symlink("../../../../outside", r.join("up")).unwrap();
        symlink("/proc/self/root/etc/passwd", r.join("magic")).unwrap();
        symlink("a", r.join("rel")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        symlink("../..", r.join("a/upup")).unwrap();
        fs::create_dir_all(r.join("a/b")).unwrap();
        let root = Root::open(&r).unwrap();
        let id = |fd: &OwnedFd| {
            let st = rustix::fs::fstat(fd).unwrap();
            (st.st_dev, st.st_ino)
        };
        let paths = [
            "/",
            "/a",
            "/a/f",
            "/../../a/f",
            "/abs",
            "/up",
            "/magic",
            "/rel/f",
            "/rel/../a/f",
            "/loop1",
            "/a/f/x",
            "/a/upup",
            "/a/upup/a/f",
            "/a/b/../../abs",
            "/a/..",
            "/nope",
            "/a/b/",
            "/abs/",
        ];
        for p in paths {
            for flags in [
                OFlags::PATH,
                OFlags::PATH | OFlags::DIRECTORY,
                OFlags::RDONLY | OFlags::NONBLOCK,
            ] {
                let kernel = rustix::fs::openat2(
                    root.fd.as_fd(),
                    relative(Path::new(p)),
                    flags | OFlags::CLOEXEC,
                    Mode::empty(),
                    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
                );
                let walked = walk_in_root(root.fd.as_fd(), Path::new(p), flags);
                match (&kernel, &walked) {
                    (Ok(k), Ok(w)) => assert_eq!(id(k), id(w), "{p} {flags:?}"),
                    (Err(k), Err(w)) => assert_eq!(
                        k.raw_os_error(),
                        w.raw_os_error().unwrap_or(0),
                        "{p} {flags:?}: {w}"
                    ),
                    _ => panic!("{p} {flags:?}: openat2 {kernel:?}, walk {walked:?}"),
                }
            }
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn trees_map_below_their_start() {
        let d = scratch("tree");
        let root = Root::open(&d.join("root")).unwrap();
        let t = Tree::open(&root, Path::new("/a")).unwrap();
        assert_eq!(fs::read(t.host(Path::new("/a/f"))).unwrap(), b"inside");
        assert!(fs::metadata(t.host(Path::new("/a"))).unwrap().is_dir());
        assert!(fs::metadata(t.host(Path::new("/b"))).is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
