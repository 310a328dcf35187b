//! The sandbox's root file system, built by its PID 1 inside its own mount namespace, so
//! every mount here disappears with the sandbox and none reaches the host's mount table.
//!
//! Order: [`mount_all`] (host paths, before `pivot_root`), [`pivot`], then [`harden`].

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root};

use super::image::HOST_TOP_DIRS;
use super::init::InitError;
use super::spec::{overlay_options, InitSpec};
use super::userns;
use rustix::mount::{MoveMountFlags, OpenTreeFlags};

const NONE: Option<&str> = None;

/// Character devices in `/dev`: (name, major, minor).
pub const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Symlinks in `/dev`: (name, target).
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Hidden like Docker does: files get `/dev/null` bound over them, directories an empty
/// read-only tmpfs.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Made read-only like Docker does.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> InitError {
    let what = what.into();
    move |source| InitError::Sys { what, source }
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Io { what, source }
}

/// What the helper builds at `<sandbox_dir>/rootfs`, as host root in its private mount
/// namespace (before the sandbox's own namespaces copy it): the root overlay over the image,
/// the `/usr` overlay over the host's `/usr`, read-only binds of the host's top-level
/// directories where they are not symlinks into `/usr`, and `/dev` (read-only, with
/// `/dev/shm`). With `userns` (the sandbox's user namespace) every lower layer is an
/// idmapped mount, so host root's files show as root's inside, and `/dev` belongs to the
/// range's root.
///
/// nodev and nosuid on every writable layer: a device node or a setuid file made inside
/// must never work (no_new_privs already makes setuid inert in the sandbox; nosuid also
/// covers a layer that is ever mounted elsewhere).
pub fn prepare(spec: &InitSpec, userns: Option<BorrowedFd<'_>>) -> Result<(), InitError> {
    let p = spec.paths();
    let root = &p.rootfs;
    let owner = spec.idmap.map(|m| m.host_id);
    let layer = MsFlags::MS_NODEV | MsFlags::MS_NOSUID;

    let (image_lower, usr_lower) = match userns {
        None => (spec.image_dir.clone(), PathBuf::from("/usr")),
        Some(ns) => (
            stage_idmapped(&spec.image_dir, &p.lower.join("image"), ns)?,
            stage_idmapped(Path::new("/usr"), &p.lower.join("usr"), ns)?,
        ),
    };
    let opts = overlay_options(&image_lower, &p.upper, &p.work);
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        layer,
        Some(opts.as_str()),
    )
    .map_err(sys(format!("mount root overlay ({opts})")))?;
    let opts = overlay_options(&usr_lower, &p.usr_upper, &p.usr_work);
    mount(
        Some("overlay"),
        &root.join("usr"),
        Some("overlay"),
        layer,
        Some(opts.as_str()),
    )
    .map_err(sys(format!("mount /usr overlay ({opts})")))?;
    if userns.is_some() {
        // The overlays hold private clones of their layers; the staging mounts can go.
        for lower in [&image_lower, &usr_lower] {
            umount2(lower.as_path(), MntFlags::MNT_DETACH)
                .map_err(sys(format!("detach {}", lower.display())))?;
        }
    }

    // Hosts without merged /usr: their /bin, /lib, ... are real directories.
    for name in HOST_TOP_DIRS {
        let host = Path::new("/").join(name);
        let is_dir = fs::symlink_metadata(&host)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        let dest = root.join(name);
        if is_dir
            && fs::symlink_metadata(&dest)
                .map(|m| m.is_dir())
                .unwrap_or(false)
        {
            match userns {
                None => bind_readonly(&host, &dest)?,
                Some(ns) => {
                    let tree = userns::idmapped_clone(&host, ns, userns::LOWER_ATTRS)
                        .map_err(io_ctx(format!("idmap {}", host.display())))?;
                    userns::attach(&tree, &dest)
                        .map_err(io_ctx(format!("attach {}", dest.display())))?;
                }
            }
        }
    }

    mount_dev(&root.join("dev"), owner)?;
    Ok(())
}

/// Attach an idmapped, read-only copy of `src` at `dest` (made if missing, root-only).
fn stage_idmapped(src: &Path, dest: &Path, ns: BorrowedFd<'_>) -> Result<PathBuf, InitError> {
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o700);
    if let Some(parent) = dest.parent() {
        dirs.create(parent)
            .map_err(io_ctx(format!("mkdir {}", parent.display())))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_ctx(format!("mkdir {}", dest.display()))(e)),
    }
    let tree = userns::idmapped_clone(src, ns, userns::LOWER_ATTRS)
        .map_err(io_ctx(format!("idmap {}", src.display())))?;
    userns::attach(&tree, dest).map_err(io_ctx(format!("attach {}", dest.display())))?;
    Ok(dest.to_path_buf())
}

/// What PID 1 mounts itself, in its own (user-namespaced) mount namespace, on the root the
/// helper built (its working directory, see `init`): first a copy of that tree mounted over
/// it (a mount made in a more privileged namespace is locked and cannot become the root),
/// then `/proc` (its PID namespace), `/sys` (its network namespace) and `/dev/pts` (ptys
/// owned by its ids). Before `pivot`, while the host's `/proc` and `/sys` are still
/// visible (the kernel wants that before it mounts new ones in a user namespace).
pub fn mount_inside() -> Result<(), InitError> {
    let tree = rustix::mount::open_tree(
        rustix::fs::CWD,
        ".",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| sys("copy the root")(Errno::from_raw(e.raw_os_error())))?;
    rustix::mount::move_mount(
        &tree,
        "",
        rustix::fs::CWD,
        ".",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| sys("mount the root's copy")(Errno::from_raw(e.raw_os_error())))?;
    nix::unistd::fchdir(tree.as_raw_fd()).map_err(sys("enter the root's copy"))?;
    drop(tree);
    mount(
        Some("proc"),
        "proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(sys("mount /proc"))?;
    mount(
        Some("sysfs"),
        "sys",
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(sys("mount /sys"))?;
    mount(
        Some("devpts"),
        "dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(sys("mount /dev/pts"))?;
    Ok(())
}

/// The startup check behind `--probe-userns`: in `<sandbox_dir>` (a scratch dir), mount an
/// overlay the way [`prepare`] does, with the image and `/usr` as idmapped lower layers
/// and an upper layer owned by the range, and check that the image's files show as owned
/// by the range's root through it.
pub fn probe_overlay(spec: &InitSpec, ns: BorrowedFd<'_>) -> Result<(), InitError> {
    let p = spec.paths();
    let owner = spec
        .idmap
        .map(|m| m.host_id)
        .ok_or_else(|| InitError::Spec("the probe needs an idmap".into()))?;
    for d in [&p.fs, &p.upper, &p.work, &p.rootfs] {
        fs::create_dir_all(d).map_err(io_ctx(format!("mkdir {}", d.display())))?;
    }
    std::os::unix::fs::chown(&p.upper, Some(owner), Some(owner))
        .map_err(io_ctx("chown the probe's upper layer"))?;
    let image = stage_idmapped(&spec.image_dir, &p.lower.join("image"), ns)?;
    stage_idmapped(Path::new("/usr"), &p.lower.join("usr"), ns)?;
    let opts = overlay_options(&image, &p.upper, &p.work);
    mount(
        Some("overlay"),
        &p.rootfs,
        Some("overlay"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(opts.as_str()),
    )
    .map_err(sys("mount an overlay over an idmapped layer"))?;
    let etc = fs::symlink_metadata(p.rootfs.join("etc")).map_err(io_ctx("stat /etc"))?;
    if std::os::unix::fs::MetadataExt::uid(&etc) != owner {
        return Err(InitError::Child(format!(
            "the image's /etc shows as owned by {} instead of {owner}",
            std::os::unix::fs::MetadataExt::uid(&etc)
        )));
    }
    Ok(())
}

fn bind_readonly(src: &Path, dest: &Path) -> Result<(), InitError> {
    let what = format!("bind {} read-only", dest.display());
    mount(
        Some(src),
        dest,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys(what.clone()))?;
    mount(
        NONE,
        dest,
        NONE,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOSUID,
        NONE,
    )
    .map_err(sys(what))
}

/// A minimal `/dev`: a few character devices, the mount points of a private devpts (PID 1
/// mounts it) and of `/dev/shm`, read-only once made. With a user namespace everything in
/// it belongs to the range's root (`owner`).
fn mount_dev(dev: &Path, owner: Option<u32>) -> Result<(), InitError> {
    let ids = owner
        .map(|o| format!(",uid={o},gid={o}"))
        .unwrap_or_default();
    let chown = |path: &Path| -> Result<(), InitError> {
        match owner {
            Some(o) => std::os::unix::fs::lchown(path, Some(o), Some(o))
                .map_err(io_ctx(format!("chown {}", path.display()))),
            None => Ok(()),
        }
    };
    let opts = format!("mode=755,size=65536k{ids}");
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some(opts.as_str()),
    )
    .map_err(sys("mount /dev"))?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(sys(format!("mknod /dev/{name}")))?;
        // mknod honours the umask; make the mode exact.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))
            .map_err(io_ctx(format!("chmod /dev/{name}")))?;
        chown(&path)?;
    }
    for dir in ["pts", "shm"] {
        let path = dev.join(dir);
        fs::create_dir(&path).map_err(io_ctx(format!("mkdir /dev/{dir}")))?;
        chown(&path)?;
    }
    let opts = format!("mode=1777{ids}");
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(opts.as_str()),
    )
    .map_err(sys("mount /dev/shm"))?;
    for (name, target) in DEV_LINKS {
        let path = dev.join(name);
        symlink(target, &path).map_err(io_ctx(format!("symlink /dev/{name}")))?;
        chown(&path)?;
    }
    // Read-only from now on: nobody can add device nodes to the one mount that allows them.
    // (Writing to the existing devices is unaffected.)
    mount(
        NONE,
        dev,
        NONE,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_STRICTATIME,
        NONE,
    )
    .map_err(sys("remount /dev read-only"))?;
    Ok(())
}

/// Make the working directory (the root [`mount_inside`] entered) the root and drop every
/// host mount (`pivot_root(".", ".")` then detach the old root, which is stacked on the same
/// mount point).
pub fn pivot() -> Result<(), InitError> {
    pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach old root"))?;
    chdir("/").map_err(sys("chdir /"))?;
    Ok(())
}

/// Mask and read-only paths in `/proc` and `/sys` (after `pivot`).
pub fn harden() -> Result<(), InitError> {
    for path in MASKED_PATHS {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_ctx(format!("stat {path}"))(e)),
        };
        if meta.is_dir() {
            mount(
                Some("tmpfs"),
                *path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("size=0,mode=555"),
            )
            .map_err(sys(format!("mask {path}")))?;
        } else {
            mount(Some("/dev/null"), *path, NONE, MsFlags::MS_BIND, NONE)
                .map_err(sys(format!("mask {path}")))?;
        }
    }
    for path in READONLY_PATHS {
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_ctx(format!("stat {path}"))(e)),
        }
        mount(
            Some(*path),
            *path,
            NONE,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            NONE,
        )
        .map_err(sys(format!("bind {path}")))?;
        mount(
            NONE,
            *path,
            NONE,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            NONE,
        )
        .map_err(sys(format!("remount {path} read-only")))?;
    }
    Ok(())
}
