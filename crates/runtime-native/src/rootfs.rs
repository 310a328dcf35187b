//! The sandbox's root file system, built by its PID 1 inside its own mount namespace, so
//! every mount here disappears with the sandbox and none reaches the host's mount table.
//!
//! Order: [`mount_all`] (host paths, before `pivot_root`), [`pivot`], then [`harden`].

use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, pivot_root};

use crate::image::HOST_TOP_DIRS;
use crate::init_error::{io_ctx, sys, InitError};
use crate::spec::{overlay_options, InitSpec, PlannedMount};
use crate::userns;
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

    if !spec.layers.is_empty() {
        // An OCI image: its layers are the whole root (no host /usr, no host binds).
        let lowers = match userns {
            None => spec
                .layers
                .iter()
                .map(|l| {
                    let fd = rustix::fs::open(
                        l,
                        rustix::fs::OFlags::PATH
                            | rustix::fs::OFlags::DIRECTORY
                            | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )
                    .map_err(|e| io_ctx(format!("open layer {}", l.display()))(e.into()))?;
                    Ok(fd)
                })
                .collect::<Result<Vec<OwnedFd>, InitError>>()?,
            Some(ns) => spec
                .layers
                .iter()
                .map(|l| idmapped_layer(l, ns))
                .collect::<Result<Vec<OwnedFd>, InitError>>()?,
        };
        let detached = userns.is_some();
        mount_overlay_layers(&lowers, detached, &p.lower, &p.upper, &p.work, root)?;
        mount_dev(&root.join("dev"), owner)?;
        return mount_volumes(root, &spec.mounts, userns, owner);
    }

    match userns {
        None => {
            mount_overlay_at(&spec.image_dir, &p.upper, &p.work, root)?;
            mount_overlay_at(
                Path::new("/usr"),
                &p.usr_upper,
                &p.usr_work,
                &root.join("usr"),
            )?;
        }
        Some(ns) => {
            let image = idmapped_layer(&spec.image_dir, ns)?;
            mount_overlay_on(&image, &p.lower.join("image"), &p.upper, &p.work, root)?;
            let usr = idmapped_layer(Path::new("/usr"), ns)?;
            mount_overlay_on(
                &usr,
                &p.lower.join("usr"),
                &p.usr_upper,
                &p.usr_work,
                &root.join("usr"),
            )?;
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
    mount_volumes(root, &spec.mounts, userns, owner)
}

/// Bind `mounts` (volumes, host directories) into the root at `root`, in order. Each source
/// is resolved by [`open_source`]; each destination is made as root inside (`owner`) where
/// missing, resolved inside the root (a symlink in the image cannot lead out), and the
/// mount is attached to that very directory. nosuid and nodev; read-only where asked; with
/// `userns`, idmapped so a file's owner on disk is its owner inside, whatever the sandbox's
/// id range.
fn mount_volumes(
    root: &Path,
    mounts: &[PlannedMount],
    userns: Option<BorrowedFd<'_>>,
    owner: Option<u32>,
) -> Result<(), InitError> {
    if mounts.is_empty() {
        return Ok(());
    }
    let root_dir = open_path_dir(root)?;
    for m in mounts {
        let what = || format!("volume at {}", m.dest);
        let src = open_source(m)?;
        let attrs = userns::VOLUME_ATTRS | if m.read_only { userns::READ_ONLY } else { 0 };
        let ns = userns.filter(|_| m.idmap);
        let tree = userns::clone_dir(src.as_fd(), ns, attrs).map_err(io_ctx(what()))?;
        let dest = Path::new(m.dest.trim_start_matches('/'));
        let target = make_dirs(
            root_dir.as_fd(),
            dest,
            rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS,
            owner,
        )
        .map_err(io_ctx(format!("making {}", m.dest)))?;
        rustix::mount::move_mount(
            tree.as_fd(),
            "",
            target.as_fd(),
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|e| io_ctx(what())(e.into()))?;
    }
    Ok(())
}

/// The directory a planned mount binds: `rel` under `root`, resolved as if `root` were `/`
/// (a volume; missing directories made when `make`) or refused if it leaves `root` (a host
/// directory: `..` or a symlink out of the allowed prefix).
fn open_source(m: &PlannedMount) -> Result<OwnedFd, InitError> {
    let root = open_path_dir(&m.root)?;
    let resolve = if m.in_root {
        rustix::fs::ResolveFlags::IN_ROOT
    } else {
        rustix::fs::ResolveFlags::BENEATH
    } | rustix::fs::ResolveFlags::NO_MAGICLINKS;
    let what = || format!("{} in {}", m.rel.display(), m.root.display());
    if m.make {
        return make_dirs(root.as_fd(), &m.rel, resolve, None).map_err(io_ctx(what()));
    }
    let rel = if m.rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &m.rel
    };
    rustix::fs::openat2(
        root.as_fd(),
        rel,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        resolve,
    )
    .map_err(|e| io_ctx(what())(e.into()))
}

/// An `O_PATH` handle on the directory `p` itself (not through a symlink).
fn open_path_dir(p: &Path) -> Result<OwnedFd, InitError> {
    rustix::fs::open(
        p,
        rustix::fs::OFlags::PATH
            | rustix::fs::OFlags::DIRECTORY
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| io_ctx(format!("open {}", p.display()))(e.into()))
}

/// The directory `rel` under `base` (resolved with `resolve` from `base` at every step),
/// its missing directories made (0755, owned by `owner` when given). An `O_PATH` handle.
fn make_dirs(
    base: BorrowedFd<'_>,
    rel: &Path,
    resolve: rustix::fs::ResolveFlags,
    owner: Option<u32>,
) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode as FsMode, OFlags};
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let open = |p: &Path| {
        let p = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        rustix::fs::openat2(base, p, flags, FsMode::empty(), resolve)
    };
    let mut at = std::path::PathBuf::new();
    let mut dir = open(&at)?;
    for c in rel.components() {
        let std::path::Component::Normal(name) = c else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a plain relative path", rel.display()),
            ));
        };
        at.push(name);
        dir = match open(&at) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                // `dir` is the parent, resolved the same way: make the child in it.
                let parent = &dir;
                match rustix::fs::mkdirat(parent, name, FsMode::from_raw_mode(0o755)) {
                    // EEXIST: made meanwhile, or a name that does not resolve (a dangling
                    // symlink; the open below says so).
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                if let Some(o) = owner {
                    rustix::fs::chownat(
                        parent,
                        name,
                        Some(rustix::fs::Uid::from_raw(o)),
                        Some(rustix::fs::Gid::from_raw(o)),
                        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                    )?;
                }
                open(&at).map_err(|e| {
                    io::Error::new(
                        io::Error::from(e).kind(),
                        format!("{} leads nowhere (a dangling symlink?)", at.display()),
                    )
                })?
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(dir)
}

/// The flags of both overlays (the root and `/usr`).
const OVERLAY_FLAGS: MsFlags = MsFlags::MS_NODEV.union(MsFlags::MS_NOSUID);

/// Mount an overlay of `lower` (a host path) under `upper` at `dest`.
fn mount_overlay_at(lower: &Path, upper: &Path, work: &Path, dest: &Path) -> Result<(), InitError> {
    let opts = overlay_options(lower, upper, work);
    mount(
        Some("overlay"),
        dest,
        Some("overlay"),
        OVERLAY_FLAGS,
        Some(opts.as_str()),
    )
    .map_err(sys(format!("mount overlay at {} ({opts})", dest.display())))
}

/// A detached, idmapped, read-only copy of the mount at `src`, as an overlay's lower layer.
fn idmapped_layer(src: &Path, ns: BorrowedFd<'_>) -> Result<OwnedFd, InitError> {
    userns::idmapped_clone(src, ns, userns::LOWER_ATTRS)
        .map_err(io_ctx(format!("idmap {}", src.display())))
}

/// Mount an overlay whose lower layer is the detached mount `layer` under `upper` at
/// `dest` (see [`mount_overlay_layers`]; on kernels before 6.13 it is staged at
/// `staging/0`).
fn mount_overlay_on(
    layer: &OwnedFd,
    staging: &Path,
    upper: &Path,
    work: &Path,
    dest: &Path,
) -> Result<(), InitError> {
    mount_overlay_layers(
        std::slice::from_ref(layer),
        true,
        staging,
        upper,
        work,
        dest,
    )
}

/// Mount an overlay of `layers` (open directories or detached mounts, top-most first) under
/// `upper` at `dest`, each handed to overlayfs as a file descriptor (`lowerdir+`, Linux
/// 6.13). Older kernels refuse that; there each layer is attached at `staging/<i>` for the
/// mount and detached after it.
fn mount_overlay_layers(
    layers: &[OwnedFd],
    detached: bool,
    staging: &Path,
    upper: &Path,
    work: &Path,
    dest: &Path,
) -> Result<(), InitError> {
    use rustix::mount::{
        fsconfig_create, fsconfig_set_fd, fsconfig_set_string, fsmount, fsopen, FsMountFlags,
        FsOpenFlags, MountAttrFlags,
    };
    let what = || {
        format!(
            "mount overlay of {} layers at {}",
            layers.len(),
            dest.display()
        )
    };
    let ctx = fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| overlay_error(what(), None, e))?;
    for (i, layer) in layers.iter().enumerate() {
        if let Err(e) = fsconfig_set_fd(&ctx, "lowerdir+", layer) {
            if i == 0 && e == rustix::io::Errno::INVAL {
                drop(ctx);
                return mount_layers_staged(layers, detached, staging, upper, work, dest);
            }
            return Err(overlay_error(what(), Some(&ctx), e));
        }
    }
    let mounted = fsconfig_set_string(&ctx, "upperdir", upper)
        .and_then(|()| fsconfig_set_string(&ctx, "workdir", work))
        .and_then(|()| fsconfig_create(&ctx))
        .and_then(|()| {
            fsmount(
                &ctx,
                FsMountFlags::FSMOUNT_CLOEXEC,
                MountAttrFlags::MOUNT_ATTR_NODEV | MountAttrFlags::MOUNT_ATTR_NOSUID,
            )
        })
        .map_err(|e| overlay_error(what(), Some(&ctx), e))?;
    userns::attach(&mounted, dest).map_err(io_ctx(what()))
}

/// [`mount_overlay_layers`] for kernels before 6.13: `detached` layers (idmapped clones)
/// are attached, open directories bound.
fn mount_layers_staged(
    layers: &[OwnedFd],
    detached: bool,
    staging: &Path,
    upper: &Path,
    work: &Path,
    dest: &Path,
) -> Result<(), InitError> {
    let mut dirs = fs::DirBuilder::new();
    dirs.recursive(true).mode(0o700);
    let mut staged = Vec::new();
    let mut result = Ok(());
    for (i, layer) in layers.iter().enumerate() {
        let at = staging.join(i.to_string());
        result = dirs
            .create(&at)
            .map_err(io_ctx(format!("mkdir {}", at.display())))
            .and_then(|()| {
                if detached {
                    return userns::attach(layer, &at)
                        .map_err(io_ctx(format!("attach {}", at.display())));
                }
                // An `O_PATH` directory is bound through its /proc/self/fd link.
                let src = format!("/proc/self/fd/{}", layer.as_raw_fd());
                mount(Some(src.as_str()), &at, NONE, MsFlags::MS_BIND, NONE)
                    .map_err(sys(format!("bind layer at {}", at.display())))
            });
        if result.is_err() {
            break;
        }
        staged.push(at);
    }
    if result.is_ok() {
        let lower: Vec<String> = staged.iter().map(|p| p.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            upper.display(),
            work.display()
        );
        result = mount(
            Some("overlay"),
            dest,
            Some("overlay"),
            OVERLAY_FLAGS,
            Some(opts.as_str()),
        )
        .map_err(sys(format!("mount overlay at {}", dest.display())));
    }
    for at in staged {
        let _ = umount2(&at, MntFlags::MNT_DETACH);
    }
    result
}

/// An overlay error, with what overlayfs said about it (its fs context's messages).
fn overlay_error(what: String, ctx: Option<&OwnedFd>, e: rustix::io::Errno) -> InitError {
    let mut said = Vec::new();
    if let Some(ctx) = ctx {
        let mut buf = [0u8; 512];
        while let Ok(n) = rustix::io::read(ctx, &mut buf) {
            if n == 0 {
                break;
            }
            said.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
    }
    let what = if said.is_empty() {
        what
    } else {
        format!("{what} ({})", said.join("; "))
    };
    sys(what)(Errno::from_raw(e.raw_os_error()))
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
    let image = idmapped_layer(&spec.image_dir, ns)?;
    idmapped_layer(Path::new("/usr"), ns)?;
    mount_overlay_on(&image, &p.lower.join("image"), &p.upper, &p.work, &p.rootfs)?;
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
    // mknod honours the umask: none while the nodes are made, so their mode is exact.
    let umask = nix::sys::stat::umask(Mode::empty());
    let made = DEVICES.iter().try_for_each(|(name, major, minor)| {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        )
        .map_err(sys(format!("mknod /dev/{name}")))?;
        chown(&path)
    });
    nix::sys::stat::umask(umask);
    made?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    const IN_NS: &str = "WARREN_TEST_ROOTFS_DIR";

    /// Both ways of giving overlayfs a detached layer (by fd; attached at a staging dir on
    /// older kernels) make a working overlay and leave no staging mount behind. Runs again
    /// in a mount namespace of its own, so nothing it mounts reaches the host.
    #[test]
    fn overlays_take_detached_layers() {
        crate::require_root("mounts");
        let Some(dir) = std::env::var_os(IN_NS).map(std::path::PathBuf::from) else {
            let dir = std::env::temp_dir().join(format!("warren-ovl-{}", std::process::id()));
            let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
            cmd.args([
                "--exact",
                "rootfs::tests::overlays_take_detached_layers",
                "--nocapture",
            ])
            .env(IN_NS, &dir);
            // SAFETY: between fork and exec only unshare(2) runs, which is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                        .map_err(io::Error::from)
                });
            }
            let out = cmd.output().unwrap();
            let _ = fs::remove_dir_all(&dir);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            return;
        };
        mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE).unwrap();
        for d in ["lower", "up1", "work1", "at1", "up2", "work2", "at2"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        fs::write(dir.join("lower/f"), "from below").unwrap();
        let layer = rustix::mount::open_tree(
            rustix::fs::CWD,
            dir.join("lower"),
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .unwrap();
        let staging = dir.join("staging");
        let check = |n: &str| {
            let at = dir.join(format!("at{n}"));
            assert_eq!(fs::read_to_string(at.join("f")).unwrap(), "from below");
            fs::write(at.join("g"), "new").unwrap();
            assert_eq!(
                fs::read_to_string(dir.join(format!("up{n}/g"))).unwrap(),
                "new"
            );
            // Nothing is mounted at the staging dir any more.
            if staging.exists() {
                let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&fs::metadata(p).unwrap());
                assert_eq!(dev(&staging), dev(&dir));
            }
        };
        type Mount = fn(&OwnedFd, &Path, &Path, &Path, &Path) -> Result<(), InitError>;
        let overlay = |how: Mount, up: &str, n: &str| {
            let at = dir.join(format!("at{n}"));
            how(
                &layer,
                &staging,
                &dir.join(up),
                &dir.join(format!("work{n}")),
                &at,
            )
        };
        overlay(mount_overlay_on, "up1", "1").unwrap();
        check("1");
        fn staged(
            layer: &OwnedFd,
            staging: &Path,
            upper: &Path,
            work: &Path,
            dest: &Path,
        ) -> Result<(), InitError> {
            mount_layers_staged(
                std::slice::from_ref(layer),
                true,
                staging,
                upper,
                work,
                dest,
            )
        }
        overlay(staged, "up2", "2").unwrap();
        assert!(staging.is_dir());
        check("2");
        // A bad upper layer is a clear error, with what overlayfs said.
        let e = overlay(mount_overlay_on, "nope", "1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("overlay"), "{e}");
    }
}
