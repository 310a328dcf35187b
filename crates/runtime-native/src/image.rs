//! The built-in `host` image: a small generated skeleton (`/etc`, home directories, mount
//! points, the host's `/bin`-style symlinks) that becomes the lower layer of every sandbox's
//! root overlay; `/usr` comes from the host at mount time. Also the per-sandbox directories.
//!
//! Everything here is blocking file-system work: call it from `spawn_blocking`.

use std::fs;
use std::io;
use std::os::unix::fs::{chown, symlink, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::layers::{mkdir_mode, own_layers, remove_if_exists, set_identity};
use crate::spec::{hosts_file, SandboxPaths};
use crate::storage::Storage;
use warren_runtime::RuntimeError;

pub const HOST_IMAGE: &str = "host";

/// Bump when the skeleton's contents change, so old data dirs get a fresh one.
const FORMAT: &str = "warren-host-image 1\n";
/// Next to the image (`images/host.format`), not inside it: sandboxes should not see it.
fn stamp_path(images: &Path) -> PathBuf {
    images.join(format!("{HOST_IMAGE}.format"))
}

/// Top-level directories that are either symlinks into `/usr` (merged-usr hosts) or real
/// directories (then bind-mounted read-only from the host, see `rootfs`).
pub const HOST_TOP_DIRS: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Files copied from the host's `/etc` when present (symlinks stay symlinks).
const HOST_ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "os-release",
    "debian_version",
    "protocols",
    "services",
    "profile",
    "bash.bashrc",
    "inputrc",
    "localtime",
    "timezone",
];

/// Directories copied from the host's `/etc` when present.
const HOST_ETC_DIRS: &[&str] = &["ld.so.conf.d", "alternatives"];

const NSSWITCH: &str = "passwd:         files\ngroup:          files\nshadow:         files\n\
hosts:          files dns\nnetworks:       files\nprotocols:      files\nservices:       files\n\
ethers:         files\nrpc:            files\n";

const GROUP: &str = "root:x:0:\ntty:x:5:\nuser:x:1000:\nnogroup:x:65534:\n";

/// Where images live.
pub fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

/// `/etc/passwd` for a sandbox; `shell` is the login shell of root and user.
pub fn passwd(shell: &str) -> String {
    format!(
        "root:x:0:0:root:/root:{shell}\nuser:x:1000:1000:user:/home/user:{shell}\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
}

/// Make sure `<data_dir>/images/host` exists and is current; returns its path.
///
/// Built under a temporary name and renamed into place, so a crash never leaves a
/// half-built image under the final name.
pub fn ensure_host_image(data_dir: &Path, host_root: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(data_dir)?;
    let images = images_dir(data_dir);
    mkdir_mode(&images, 0o711)?;
    let dest = images.join(HOST_IMAGE);
    let stamp = stamp_path(&images);
    if dest.is_dir() && fs::read_to_string(&stamp).ok().as_deref() == Some(FORMAT) {
        return Ok(dest);
    }
    let tmp = images.join(format!(".{HOST_IMAGE}.tmp-{}", std::process::id()));
    remove_if_exists(&tmp)?;
    if let Err(e) = build_skeleton(&tmp, host_root) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dest.exists() {
        // An older format. Running sandboxes may still use it as a lower layer, so move it
        // aside instead of deleting it under their feet; it is removed on the next start.
        let old = images.join(format!(".{HOST_IMAGE}.old-{}", std::process::id()));
        remove_if_exists(&old)?;
        fs::rename(&dest, &old)?;
    }
    fs::rename(&tmp, &dest)?;
    // Written last: a crash before this only costs a rebuild on the next start.
    write_mode(&stamp, FORMAT.as_bytes(), 0o644)?;
    Ok(dest)
}

/// Remove leftovers of interrupted builds and replaced images (call when no sandbox runs).
pub fn remove_stale_images(data_dir: &Path) -> io::Result<()> {
    let images = images_dir(data_dir);
    let entries = match fs::read_dir(&images) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&format!(".{HOST_IMAGE}.")) {
            remove_if_exists(&entry.path())?;
        }
    }
    Ok(())
}

/// Write the skeleton into `root` (which must not exist). `host_root` is normally `/`.
pub fn build_skeleton(root: &Path, host_root: &Path) -> io::Result<()> {
    mkdir_mode(root, 0o755)?;
    let etc = root.join("etc");
    mkdir_mode(&etc, 0o755)?;

    let shell = if host_root.join("usr/bin/bash").exists() || host_root.join("bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    write_mode(&etc.join("passwd"), passwd(shell).as_bytes(), 0o644)?;
    write_mode(&etc.join("group"), GROUP.as_bytes(), 0o644)?;
    write_mode(&etc.join("nsswitch.conf"), NSSWITCH.as_bytes(), 0o644)?;
    // Per-sandbox copies in the upper layer shadow these two.
    write_mode(&etc.join("hostname"), b"sandbox\n", 0o644)?;
    write_mode(&etc.join("hosts"), hosts_file("sandbox").as_bytes(), 0o644)?;

    let host_etc = host_root.join("etc");
    // resolv.conf is often a symlink into /run: copy the content, not the link.
    match fs::read(host_etc.join("resolv.conf")) {
        Ok(content) => write_mode(&etc.join("resolv.conf"), &content, 0o644)?,
        Err(_) => write_mode(&etc.join("resolv.conf"), b"", 0o644)?,
    }
    for name in HOST_ETC_FILES {
        copy_entry_if_exists(&host_etc.join(name), &etc.join(name))?;
    }
    for name in HOST_ETC_DIRS {
        copy_entry_if_exists(&host_etc.join(name), &etc.join(name))?;
    }
    let ca = host_etc.join("ssl/certs/ca-certificates.crt");
    if ca.is_file() {
        mkdir_mode(&etc.join("ssl"), 0o755)?;
        mkdir_mode(&etc.join("ssl/certs"), 0o755)?;
        // Follows a symlink on purpose: the bundle itself must be in the image.
        let content = fs::read(&ca)?;
        write_mode(&etc.join("ssl/certs/ca-certificates.crt"), &content, 0o644)?;
    }

    for (dir, mode, owner) in [
        ("root", 0o700, None),
        ("home", 0o755, None),
        ("home/user", 0o755, Some(1000)),
        ("workspace", 0o755, Some(1000)),
        ("tmp", 0o1777, None),
        ("var", 0o755, None),
        ("var/tmp", 0o1777, None),
        ("var/lib", 0o755, None),
        ("var/log", 0o755, None),
        ("var/cache", 0o755, None),
        ("run", 0o755, None),
        ("opt", 0o755, None),
        ("mnt", 0o755, None),
        ("usr", 0o755, None),
        ("proc", 0o555, None),
        ("sys", 0o555, None),
        ("dev", 0o755, None),
    ] {
        let p = root.join(dir);
        mkdir_mode(&p, mode)?;
        if let Some(id) = owner {
            chown(&p, Some(id), Some(id))?;
        }
    }

    for name in HOST_TOP_DIRS {
        let host = host_root.join(name);
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        let dest = root.join(name);
        if meta.file_type().is_symlink() {
            symlink(fs::read_link(&host)?, &dest)?;
        } else if meta.is_dir() {
            // A mount point for a read-only bind of the host's directory.
            mkdir_mode(&dest, 0o755)?;
        }
    }

    Ok(())
}

/// Create `<sandboxes>/<id>`: its writable state `fs/` through `storage` (empty layers, or
/// a copy of `snapshot`), the rootfs mount point, and the per-sandbox `/etc/hostname` and
/// `/etc/hosts` in the upper layer. `owner` is the host id of root inside (the first id of
/// the sandbox's user namespace range, 0 without one): the layers' top directories belong
/// to it, and a restored copy's owners are moved into its range ([`own_layers`]). Fails if
/// the directory already exists (it belongs to another sandbox); on any other error
/// nothing is left behind.
pub fn prepare_sandbox_dir(
    paths: &SandboxPaths,
    id: &str,
    storage: &Storage,
    snapshot: Option<&str>,
    owner: u32,
    disk_bytes: Option<u64>,
    oci: bool,
) -> Result<(), RuntimeError> {
    let setup =
        |e: io::Error| RuntimeError::Setup(format!("preparing {}: {e}", paths.dir.display()));
    if let Some(parent) = paths.dir.parent() {
        mkdir_mode(parent, 0o700).map_err(setup)?;
    }
    // `create` (not `create_all`): an existing directory belongs to another sandbox.
    match fs::DirBuilder::new().mode(0o700).create(&paths.dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(RuntimeError::Setup(format!("sandbox {id} already exists")))
        }
        Err(e) => return Err(setup(e)),
    }
    let made = (|| {
        fs::set_permissions(&paths.dir, fs::Permissions::from_mode(0o700)).map_err(setup)?;
        mkdir_mode(&paths.rootfs, 0o755).map_err(setup)?;
        storage.create_fs(paths, snapshot, disk_bytes)?;
        own_layers(&paths.fs, owner)?;
        if oci && snapshot.is_none() {
            // Mount points an image may lack (the `host` skeleton has them).
            for d in ["proc", "sys", "dev"] {
                let p = paths.upper.join(d);
                mkdir_mode(&p, 0o755).map_err(setup)?;
                std::os::unix::fs::chown(&p, Some(owner), Some(owner)).map_err(setup)?;
            }
        }
        match (set_identity(&paths.upper, id, owner), snapshot) {
            (Ok(()), _) => Ok(()),
            (Err(e), None) => Err(setup(e)),
            // A restored layer is the user's: a strange /etc there is theirs to keep.
            (Err(e), Some(snap)) => {
                tracing::warn!(sandbox = id, snapshot = snap, error = %e,
                    "restored sandbox keeps the snapshot's /etc/hostname");
                Ok(())
            }
        }
    })();
    if made.is_err() {
        if let Err(e) = storage.remove_sandbox_dir(&paths.dir) {
            tracing::error!(sandbox = id, error = %e, "cleanup after a failed prepare");
        }
    }
    made
}

fn write_mode(p: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    fs::write(p, content)?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

/// Copy a file, symlink or directory tree (symlinks are recreated, not followed).
fn copy_entry_if_exists(src: &Path, dest: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(src) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if ft.is_symlink() {
        symlink(fs::read_link(src)?, dest)
    } else if ft.is_dir() {
        mkdir_mode(dest, meta.permissions().mode() & 0o7777)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_entry_if_exists(&entry.path(), &dest.join(entry.file_name()))?;
        }
        Ok(())
    } else if ft.is_file() {
        fs::copy(src, dest)?;
        fs::set_permissions(
            dest,
            fs::Permissions::from_mode(meta.permissions().mode() & 0o777),
        )
    } else {
        // Sockets, fifos, devices: never part of an image.
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A scratch directory removed on drop (no extra dev-dependency).
    pub(crate) struct Scratch(pub PathBuf);
    impl Scratch {
        pub(crate) fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "wrn-test-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake_host(root: &Path) {
        fs::create_dir_all(root.join("etc/alternatives")).unwrap();
        fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/bash"), b"").unwrap();
        fs::write(root.join("etc/resolv.conf"), b"nameserver 10.0.0.1\n").unwrap();
        fs::write(root.join("etc/ld.so.cache"), b"cache").unwrap();
        fs::write(root.join("etc/ssl/certs/ca-certificates.crt"), b"PEM").unwrap();
        symlink("/usr/bin/mawk", root.join("etc/alternatives/awk")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        fs::create_dir_all(root.join("lib64")).unwrap();
    }

    #[test]
    fn skeleton_contents() {
        crate::require_root("chown to 1000");
        let s = Scratch::new("skel");
        let host = s.0.join("host");
        fake_host(&host);
        let data = s.0.join("data");
        let img = ensure_host_image(&data, &host).unwrap();
        assert_eq!(img, data.join("images/host"));

        let passwd = fs::read_to_string(img.join("etc/passwd")).unwrap();
        assert!(passwd.contains("root:x:0:0:root:/root:/bin/bash\n"));
        assert!(passwd.contains("user:x:1000:1000:user:/home/user:/bin/bash\n"));
        assert!(passwd.contains("nobody:x:65534:65534:"));
        let group = fs::read_to_string(img.join("etc/group")).unwrap();
        for g in ["root:x:0:", "tty:x:5:", "user:x:1000:", "nogroup:x:65534:"] {
            assert!(group.contains(g), "{g}");
        }
        assert_eq!(
            fs::read_to_string(img.join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.0.1\n"
        );
        assert_eq!(fs::read(img.join("etc/ld.so.cache")).unwrap(), b"cache");
        assert_eq!(
            fs::read_link(img.join("etc/alternatives/awk")).unwrap(),
            Path::new("/usr/bin/mawk")
        );
        assert!(img.join("etc/ssl/certs/ca-certificates.crt").is_file());
        assert!(img.join("etc/nsswitch.conf").is_file());
        assert_eq!(
            fs::read_link(img.join("bin")).unwrap(),
            Path::new("usr/bin")
        );
        assert!(img.join("lib64").is_dir());
        assert!(!img.join("lib32").exists());

        let mode = |p: &str| fs::metadata(img.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("tmp"), 0o1777);
        assert_eq!(mode("var/tmp"), 0o1777);
        assert_eq!(mode("root"), 0o700);
        assert_eq!(mode("home/user"), 0o755);
        for p in ["usr", "proc", "sys", "dev", "run", "opt", "mnt", "var/lib"] {
            assert!(img.join(p).is_dir(), "{p}");
        }
        let m = fs::metadata(img.join("workspace")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1000));

        // Idempotent: a second call reuses it.
        fs::write(img.join("marker"), b"").unwrap();
        assert_eq!(ensure_host_image(&data, &host).unwrap(), img);
        assert!(img.join("marker").exists());
        // A stale format is replaced, the old one moved aside and cleaned later.
        fs::write(stamp_path(&data.join("images")), b"old").unwrap();
        ensure_host_image(&data, &host).unwrap();
        assert!(!img.join("marker").exists());
        remove_stale_images(&data).unwrap();
        let mut left: Vec<_> = fs::read_dir(data.join("images"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["host", "host.format"]);
        assert!(!img.join(".warren-image").exists());
    }

    #[test]
    fn sh_when_no_bash() {
        crate::require_root("chown to 1000");
        let s = Scratch::new("nobash");
        fs::create_dir_all(s.0.join("host/etc")).unwrap();
        build_skeleton(&s.0.join("img"), &s.0.join("host")).unwrap();
        let passwd = fs::read_to_string(s.0.join("img/etc/passwd")).unwrap();
        assert!(passwd.contains("root:x:0:0:root:/root:/bin/sh\n"));
        assert_eq!(
            fs::read_to_string(s.0.join("img/etc/resolv.conf")).unwrap(),
            ""
        );
    }

    #[test]
    fn sandbox_dir_layout() {
        let s = Scratch::new("sbdir");
        let storage = Storage::open(&s.0, &crate::storage::StorageConfig::Dir).unwrap();
        let paths = SandboxPaths::new(&s.0.join("sandboxes/abc"));
        prepare_sandbox_dir(&paths, "abc", &storage, None, 0, None, false).unwrap();
        for p in [
            &paths.fs,
            &paths.upper,
            &paths.work,
            &paths.usr_upper,
            &paths.usr_work,
            &paths.rootfs,
        ] {
            assert!(p.is_dir());
        }
        assert_eq!(
            fs::read_to_string(paths.upper.join("etc/hostname")).unwrap(),
            "abc\n"
        );
        assert!(fs::read_to_string(paths.upper.join("etc/hosts"))
            .unwrap()
            .contains("127.0.0.1\tlocalhost abc"));
        // A second sandbox with the same id is refused, and the first one's files stay.
        assert!(prepare_sandbox_dir(&paths, "abc", &storage, None, 0, None, false).is_err());
        assert!(paths.upper.join("etc/hostname").is_file());
        // A missing snapshot: typed error, nothing left behind.
        let other = SandboxPaths::new(&s.0.join("sandboxes/def"));
        assert!(matches!(
            prepare_sandbox_dir(&other, "def", &storage, Some("nope"), 0, None, false),
            Err(RuntimeError::SnapshotNotFound(_))
        ));
        assert!(!other.dir.exists());
        remove_if_exists(&paths.dir).unwrap();
        remove_if_exists(&paths.dir).unwrap();
    }

    #[test]
    fn identity_of_a_restored_layer() {
        let s = Scratch::new("ident");
        let upper = s.0.join("upper");
        fs::create_dir(&upper).unwrap();
        set_identity(&upper, "old", 0).unwrap();
        set_identity(&upper, "new", 0).unwrap();
        let etc = upper.join("etc");
        assert_eq!(fs::read_to_string(etc.join("hostname")).unwrap(), "new\n");
        assert_eq!(
            fs::read_to_string(etc.join("hosts")).unwrap(),
            hosts_file("new")
        );
        // A user's own /etc/hosts stays; a symlinked hostname is replaced, not followed.
        fs::write(etc.join("hosts"), "mine\n").unwrap();
        let target = s.0.join("outside");
        fs::write(&target, "untouched").unwrap();
        fs::remove_file(etc.join("hostname")).unwrap();
        symlink(&target, etc.join("hostname")).unwrap();
        set_identity(&upper, "third", 0).unwrap();
        assert_eq!(fs::read_to_string(etc.join("hosts")).unwrap(), "mine\n");
        assert_eq!(fs::read_to_string(etc.join("hostname")).unwrap(), "third\n");
        assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
        // An /etc that is a symlink is refused.
        let upper2 = s.0.join("upper2");
        fs::create_dir(&upper2).unwrap();
        symlink(&s.0, upper2.join("etc")).unwrap();
        assert!(set_identity(&upper2, "x", 0).is_err());
    }
}
