//! The sandbox's root file system, built by its PID 1 inside its own mount namespace, so
//! every mount here disappears with the sandbox and none reaches the host's mount table.
//!
//! Order: [`mount_all`] (host paths, before `pivot_root`), [`pivot`], then [`harden`].

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root};

use super::image::HOST_TOP_DIRS;
use super::init::InitError;
use super::spec::{overlay_options, InitSpec};

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

/// Build the whole tree at `<sandbox_dir>/rootfs` (host paths; call before `pivot`).
pub fn mount_all(spec: &InitSpec) -> Result<(), InitError> {
    let p = spec.paths();
    let root = &p.rootfs;

    // Nothing we mount may propagate back to the host's namespace.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(sys("make / rprivate"))?;

    // nodev on every writable layer: root in the sandbox keeps CAP_MKNOD (Docker's default
    // set) and there is no device cgroup on v2, so device nodes it makes must not open.
    let opts = overlay_options(&spec.image_dir, &p.upper, &p.work);
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(sys(format!("mount root overlay ({opts})")))?;

    let usr = root.join("usr");
    let opts = overlay_options(Path::new("/usr"), &p.usr_upper, &p.usr_work);
    mount(
        Some("overlay"),
        &usr,
        Some("overlay"),
        MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(sys(format!("mount /usr overlay ({opts})")))?;

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
            bind_readonly(&host, &dest)?;
        }
    }

    mount(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(sys("mount /proc"))?;

    mount_dev(&root.join("dev"))?;

    mount(
        Some("sysfs"),
        &root.join("sys"),
        Some("sysfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(sys("mount /sys"))?;
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

/// A minimal `/dev`: a few character devices, a private devpts, `/dev/shm`.
fn mount_dev(dev: &Path) -> Result<(), InitError> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
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
    }
    for dir in ["pts", "shm"] {
        fs::create_dir(dev.join(dir)).map_err(io_ctx(format!("mkdir /dev/{dir}")))?;
    }
    mount(
        Some("devpts"),
        &dev.join("pts"),
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )
    .map_err(sys("mount /dev/pts"))?;
    mount(
        Some("shm"),
        &dev.join("shm"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777"),
    )
    .map_err(sys("mount /dev/shm"))?;
    for (name, target) in DEV_LINKS {
        symlink(target, dev.join(name)).map_err(io_ctx(format!("symlink /dev/{name}")))?;
    }
    // Read-only from now on: nobody can add device nodes to the one mount that allows them.
    // (Writing to the existing devices is unaffected.)
    mount(
        NONE,
        dev,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        NONE,
    )
    .map_err(sys("remount /dev read-only"))?;
    Ok(())
}

/// Make `rootfs` the root and drop every host mount (`pivot_root(".", ".")` then detach
/// the old root, which is stacked on the same mount point).
pub fn pivot(rootfs: &Path) -> Result<(), InitError> {
    chdir(rootfs).map_err(sys("chdir to rootfs"))?;
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
