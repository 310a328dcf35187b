//! A local OCI registry with small real images, for tests of the image puller.
//!
//! - [`Registry::start`] runs Debian's `docker-registry` (CNCF distribution 2.8) on a free
//!   port of 127.0.0.1: plain HTTP, anonymous push and pull, filesystem storage in a temp dir
//!   of its own, deletes enabled. Dropping the [`Registry`] kills the process and removes the
//!   directory, also when a test panics (not when the test process itself is killed).
//! - [`push_test_images`] builds the test images offline and pushes them: `warren/bb`
//!   (busybox, 3 gzip layers with every kind of whiteout), `warren/bb-zstd` (the same with
//!   zstd layers) and `warren/big` (2 layers, the second a 48 MiB incompressible file). The
//!   facts a test can rely on are the `BB_*` and `BIG_*` consts of this module.
//!
//! Needs root (the images hold files owned by uid 1000) and the Debian packages
//! `docker-registry`, `umoci`, `skopeo` and `busybox-static`, plus GNU tar. No daemon, no
//! network beyond loopback.
//!
//! The images are reproducible: file times, history and config dates are fixed, so the
//! same tools and the same `/bin/busybox` give the same digests on every run.

use std::io::{self, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;

/// The registry server binary (Debian package `docker-registry`).
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The statically linked busybox the images are made of (Debian package `busybox-static`).
pub const BUSYBOX_BIN: &str = "/bin/busybox";

/// How long [`Registry::start`] waits for `GET /v2/` to answer 200.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How many ports [`Registry::start`] tries when the one it picked was taken meanwhile.
const START_ATTEMPTS: usize = 5;

/// Timeout of one connect and of one read of the readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The tag every test image is pushed as.
pub const TAG: &str = "latest";

/// Repository of the busybox image with gzip layers.
pub const BB_REPO: &str = "warren/bb";
/// Repository of the busybox image with zstd layers (otherwise the same as [`BB_REPO`]).
pub const BB_ZSTD_REPO: &str = "warren/bb-zstd";
/// Repository of the image with a big incompressible layer.
pub const BIG_REPO: &str = "warren/big";

/// Media type of the manifests the registry serves for the test images.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the layers of `warren/bb` and `warren/big`.
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of the layers of `warren/bb-zstd`.
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Number of layers of `warren/bb` (and `warren/bb-zstd`):
/// 1. the busybox base: `/bin/busybox` and the [`BB_APPLETS`] symlinks to it, `/etc/passwd`
///    ([`BB_PASSWD`]), `/tmp` (mode 1777), `/home/app` owned by 1000:1000, `/opt/a.txt`,
///    `/opt/b.txt` and `/opt/dir/x`;
/// 2. per-file whiteouts (written by umoci): `/opt/b.txt` removed, `/opt/dir` replaced by a
///    new dir holding only `y` (whiteout `opt/dir/.wh.x`), `/opt/c.txt` added;
/// 3. a hand-made tar with an opaque dir: `opt/dir/.wh..wh..opq` and `opt/dir/z`.
pub const BB_LAYERS: usize = 3;

/// The merged `/opt` of `warren/bb`, paths relative to `/opt`, sorted, dirs included.
pub const BB_OPT: &[&str] = &["a.txt", "c.txt", "dir", "dir/z"];

/// Paths of the merged rootfs of `warren/bb` that the upper layers hide (relative to `/`).
pub const BB_HIDDEN: &[&str] = &["opt/b.txt", "opt/dir/x", "opt/dir/y"];

/// Contents of the regular files of the merged `/opt` of `warren/bb` (paths relative to `/opt`).
pub const BB_OPT_FILES: &[(&str, &str)] =
    &[("a.txt", "hello\n"), ("c.txt", "l2\n"), ("dir/z", "z\n")];

/// Busybox applets of `warren/bb` and `warren/big`: symlinks `/bin/<applet>` → `busybox`.
pub const BB_APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "env", "id", "rm", "mkdir", "chmod", "chown", "touch", "sleep",
    "test", "stat", "ln", "cp", "wc", "true", "false", "pwd",
];

/// `/etc/passwd` of `warren/bb` and `warren/big`.
pub const BB_PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";

/// Uid and gid of user `app` in [`BB_PASSWD`], also the owner of `/home/app`.
pub const BB_APP_UID: u32 = 1000;

/// `Env` of the config of `warren/bb`.
pub const BB_ENV: &[&str] = &["PATH=/bin", "FOO=bar"];
/// `WorkingDir` of the config of `warren/bb`.
pub const BB_WORKDIR: &str = "/opt";
/// `User` of the config of `warren/bb`.
pub const BB_USER: &str = "app";
/// `Entrypoint` of the config of `warren/bb`.
pub const BB_ENTRYPOINT: &[&str] = &["/bin/sh"];
/// `Cmd` of the config of `warren/bb`.
pub const BB_CMD: &[&str] = &["-c", "echo hi"];
/// What `BB_ENTRYPOINT ++ BB_CMD` prints.
pub const BB_OUTPUT: &str = "hi\n";

/// Number of layers of `warren/big`: the busybox base (as layer 1 of `warren/bb`) and one
/// holding [`BIG_BLOB_PATH`].
pub const BIG_LAYERS: usize = 2;
/// Where the big file is in `warren/big`.
pub const BIG_BLOB_PATH: &str = "/data/blob";
/// Size of the big file in bytes (48 MiB). Its contents are [`big_blob`].
pub const BIG_BLOB_LEN: usize = 48 << 20;
/// `Env` of the config of `warren/big` (no entrypoint, no cmd, user root).
pub const BIG_ENV: &[&str] = &["PATH=/bin"];

/// Modification time of every file of the images (2000-01-01T00:00:00Z) plus the layer
/// index (0, 1, 2): fixed so the images are reproducible.
const MTIME: i64 = 946_684_800;
/// The `created` date of the configs and history entries.
const CREATED: &str = "2000-01-01T00:00:00Z";

/// A running registry. See the [module docs](self).
///
/// Dropping it kills the server (SIGKILL, then waits for it) and removes its storage.
pub struct Registry {
    addr: SocketAddr,
    child: Option<Child>,
    /// Config, storage (`data/`) and the server's log (`registry.log`).
    dir: tempfile::TempDir,
}

impl Registry {
    /// Where the registry keeps blob `digest` (`sha256:<hex>`): tests corrupt it there.
    pub fn blob_path(&self, digest: &str) -> std::path::PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    /// Starts a registry on a free port of 127.0.0.1 and waits (up to 10 s) until
    /// `GET /v2/` answers 200. Retries on another port if the one picked was taken.
    pub fn start() -> io::Result<Registry> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Registry::start_once()? {
                Ok(reg) => return Ok(reg),
                Err(port_taken) => last = Some(port_taken),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("registry: no attempt made")))
    }

    /// One attempt. `Ok(Err(_))`: the port was taken, worth another try.
    fn start_once() -> io::Result<io::Result<Registry>> {
        let port = free_port()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let dir = tempfile::Builder::new()
            .prefix("warren-registry-")
            .tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log: {{ level: warn }}\n\
                 storage:\n  \
                   filesystem: {{ rootdirectory: \"{}\" }}\n  \
                   delete: {{ enabled: true }}\n\
                 http: {{ addr: \"{addr}\", secret: warren-testkit }}\n",
                data.display()
            ),
        )?;
        let log_path = dir.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("{REGISTRY_BIN} serve: {e} (Debian package docker-registry)"),
                )
            })?;
        // From here on, dropping `me` kills the server.
        let mut me = Registry {
            addr,
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = me.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                let status = status?;
                me.child = None;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let err = io::Error::new(
                    if log.contains("address already in use") {
                        io::ErrorKind::AddrInUse
                    } else {
                        io::ErrorKind::Other
                    },
                    format!(
                        "{REGISTRY_BIN} serve on {addr}: exited ({status}): {}",
                        log.trim()
                    ),
                );
                return if err.kind() == io::ErrorKind::AddrInUse {
                    Ok(Err(err))
                } else {
                    Err(err)
                };
            }
            if let Ok((200, head, _)) = http_get(addr, "/v2/", &[]) {
                // Another server that grabbed the port would not say this.
                if head
                    .to_ascii_lowercase()
                    .contains("docker-distribution-api-version: registry/2.0")
                {
                    return Ok(Ok(me));
                }
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{REGISTRY_BIN} serve on {addr}: GET /v2/ not 200 within {READY_TIMEOUT:?}: {}",
                        log.trim()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the registry listens on (127.0.0.1, plain HTTP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the server now (SIGKILL, then waits for it), e.g. to test "registry down".
    /// The port then refuses connections. Storage stays until drop. Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the server logged so far (warnings and errors), for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        // `dir` is removed when the field drops, after the server is gone.
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// Full references of the images [`push_test_images`] pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestImages {
    /// `127.0.0.1:PORT/warren/bb:latest`: busybox, [`BB_LAYERS`] gzip layers.
    pub bb: String,
    /// `127.0.0.1:PORT/warren/bb-zstd:latest`: the same image with zstd layers (the same
    /// config blob, hence the same diff_ids; other layer digests).
    pub bb_zstd: String,
    /// `127.0.0.1:PORT/warren/big:latest`: [`BIG_LAYERS`] gzip layers, the second holding
    /// [`BIG_BLOB_PATH`].
    pub big: String,
}

/// Builds the test images offline (busybox, umoci, skopeo, GNU tar) in a temp dir that is
/// removed afterwards, and pushes them to `reg` (2-3 s in a debug build). See the [module
/// docs](self) and the `BB_*` / `BIG_*` consts for what they hold.
pub fn push_test_images(reg: &Registry) -> io::Result<TestImages> {
    let work = tempfile::Builder::new()
        .prefix("warren-images-")
        .tempdir()?;
    let w = work.path();
    build_images(w)?;

    let host = reg.host();
    let images = TestImages {
        bb: format!("{host}/{BB_REPO}:{TAG}"),
        bb_zstd: format!("{host}/{BB_ZSTD_REPO}:{TAG}"),
        big: format!("{host}/{BIG_REPO}:{TAG}"),
    };
    let pushes = [
        ("oci:oci:bb", &images.bb),
        ("oci:oci-z:bb", &images.bb_zstd),
        ("oci:oci:big", &images.big),
    ];
    let mut children = vec![];
    for (src, dest) in pushes {
        let mut cmd = skopeo(w);
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(src)
            .arg(format!("docker://{dest}"));
        let child = cmd.spawn().map_err(|e| cmd_error(&cmd, &e.to_string()))?;
        children.push((cmd, child));
    }
    // Wait for all before reporting the first failure: no skopeo outlives the work dir.
    let mut first_err = None;
    for (cmd, child) in children {
        let res = child
            .wait_with_output()
            .map_err(|e| cmd_error(&cmd, &e.to_string()))
            .and_then(|out| check(&cmd, &out));
        if let Err(e) = res {
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(images),
    }
}

/// The contents of `/data/blob` of `warren/big`: [`BIG_BLOB_LEN`] pseudo-random
/// (incompressible) bytes, the same on every call.
pub fn big_blob() -> Vec<u8> {
    let mut out = Vec::with_capacity(BIG_BLOB_LEN);
    let mut state: u64 = 0x5741_5252_454e_0001; // "WARREN", 1
    while out.len() < BIG_BLOB_LEN {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(BIG_BLOB_LEN);
    out
}

/// Builds, in work dir `w`, OCI layout `oci` with tags `bb` and `big` and OCI layout
/// `oci-z` with tag `bb` (zstd layers).
fn build_images(w: &Path) -> io::Result<()> {
    // The big file takes longest to make (debug builds): on a thread of its own meanwhile.
    std::thread::scope(|s| {
        let blob = s.spawn(|| write_big_tree(&w.join("big")));
        let bb = build_bb(w);
        let blob = blob
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the thread writing the big file panicked")));
        bb?;
        blob
    })?;

    // `big`: layer 1 of `bb` plus a hand-made layer with the big file.
    tar(w, "big", "data", "big.tar")?;
    umoci(
        w,
        &[
            "raw",
            "add-layer",
            "--image",
            "oci:base",
            "--tag",
            "big",
            "--history.created",
            CREATED,
            "--history.created_by",
            "big blob",
            "big.tar",
        ],
    )?;
    let mut args = vec!["config", "--image", "oci:big", "--created", CREATED];
    args.extend(["--history.created", CREATED]);
    for e in BIG_ENV {
        args.extend(["--config.env", e]);
    }
    umoci(w, &args)
}

/// Writes `dir/data/blob` ([`big_blob`]) with fixed modes and times.
fn write_big_tree(dir: &Path) -> io::Result<()> {
    mkdir(dir, 0o755)?;
    mkdir(&dir.join("data"), 0o755)?;
    let blob = dir.join("data/blob");
    std::fs::write(&blob, big_blob())
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", blob.display())))?;
    set_mode(&blob, 0o644)?;
    touch_tree(dir, MTIME + 1)
}

/// Builds `oci:bb`, `oci:base` (its first layer only) and `oci-z:bb`.
fn build_bb(w: &Path) -> io::Result<()> {
    umoci(w, &["init", "--layout", "oci"])?;
    umoci(w, &["new", "--image", "oci:bb"])?;
    umoci(w, &["unpack", "--image", "oci:bb", "bundle"])?;
    let root = w.join("bundle/rootfs");

    // Layer 1: the busybox base.
    for d in ["bin", "etc", "opt", "opt/dir", "home", "home/app"] {
        mkdir(&root.join(d), 0o755)?;
    }
    mkdir(&root.join("tmp"), 0o1777)?;
    std::fs::copy(BUSYBOX_BIN, root.join("bin/busybox"))
        .map_err(|e| io::Error::new(e.kind(), format!("copy {BUSYBOX_BIN}: {e}")))?;
    set_mode(&root.join("bin/busybox"), 0o755)?;
    for a in BB_APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    write(&root.join("etc/passwd"), BB_PASSWD)?;
    write(&root.join("opt/a.txt"), "hello\n")?;
    write(&root.join("opt/b.txt"), "gone\n")?;
    write(&root.join("opt/dir/x"), "x\n")?;
    std::os::unix::fs::chown(root.join("home/app"), Some(BB_APP_UID), Some(BB_APP_UID))?;
    touch_tree(&root, MTIME)?;
    repack(w, "busybox base")?;
    umoci(w, &["tag", "--image", "oci:bb", "base"])?;

    // Layer 2: per-file whiteouts, a replaced dir, a new file.
    std::fs::remove_file(root.join("opt/b.txt"))?;
    std::fs::remove_dir_all(root.join("opt/dir"))?;
    mkdir(&root.join("opt/dir"), 0o755)?;
    write(&root.join("opt/dir/y"), "y\n")?;
    write(&root.join("opt/c.txt"), "l2\n")?;
    for p in ["opt", "opt/dir", "opt/dir/y", "opt/c.txt"] {
        touch(&root.join(p), MTIME + 1)?;
    }
    repack(w, "whiteouts")?;

    // Layer 3: an opaque dir (umoci never writes those).
    let l3 = w.join("l3");
    for d in ["", "opt", "opt/dir"] {
        mkdir(&l3.join(d), 0o755)?;
    }
    write(&l3.join("opt/dir/.wh..wh..opq"), "")?;
    write(&l3.join("opt/dir/z"), "z\n")?;
    touch_tree(&l3, MTIME + 2)?;
    tar(w, "l3", "opt", "l3.tar")?;
    umoci(
        w,
        &[
            "raw",
            "add-layer",
            "--image",
            "oci:bb",
            "--history.created",
            CREATED,
            "--history.created_by",
            "opaque dir",
            "l3.tar",
        ],
    )?;

    // The config last: a repack builds on the manifest recorded at unpack time.
    let mut args = vec!["config", "--image", "oci:bb", "--created", CREATED];
    args.extend(["--history.created", CREATED]);
    for e in BB_ENV {
        args.extend(["--config.env", e]);
    }
    args.extend(["--config.workingdir", BB_WORKDIR, "--config.user", BB_USER]);
    for e in BB_ENTRYPOINT {
        args.extend(["--config.entrypoint", e]);
    }
    for c in BB_CMD {
        args.extend(["--config.cmd", c]);
    }
    umoci(w, &args)?;

    // zstd: skopeo 1.9 pushes gzip when asked for zstd straight to a registry; through a
    // second OCI layout it works.
    let mut cmd = skopeo(w);
    cmd.args([
        "copy",
        "--quiet",
        "--dest-compress-format",
        "zstd",
        "--dest-compress",
        "oci:oci:bb",
        "oci:oci-z:bb",
    ]);
    run(&mut cmd)
}

/// `umoci repack` of `bundle` into `oci:bb` as a new layer.
fn repack(w: &Path, created_by: &str) -> io::Result<()> {
    umoci(
        w,
        &[
            "repack",
            "--refresh-bundle",
            "--history.created",
            CREATED,
            "--history.created_by",
            created_by,
            "--image",
            "oci:bb",
            "bundle",
        ],
    )
}

fn umoci(w: &Path, args: &[&str]) -> io::Result<()> {
    run(Command::new("umoci").current_dir(w).args(args))
}

/// Copy the pushed image `reference` (`host:port/name:tag` of a [`Registry`]) to `dest`, a
/// skopeo destination such as `oci-archive:/path/img.tar` or
/// `docker-archive:/path/img.tar:name:tag` (tests of importing archives).
pub fn copy_image(reference: &str, dest: &str) -> io::Result<()> {
    let work = std::env::temp_dir();
    run(skopeo(&work)
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(dest))
}

/// `skopeo --insecure-policy` (no /etc/containers/policy.json needed) in `w`, with its big
/// temp files in `w` too.
fn skopeo(w: &Path) -> Command {
    let mut cmd = Command::new("skopeo");
    cmd.current_dir(w)
        .env("TMPDIR", w)
        .arg("--insecure-policy")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// A reproducible tar `out` of `member` of dir `from` (both relative to `w`): numeric owner
/// root, sorted names.
fn tar(w: &Path, from: &str, member: &str, out: &str) -> io::Result<()> {
    run(Command::new("tar").current_dir(w).args([
        "--numeric-owner",
        "--owner=0",
        "--group=0",
        "--sort=name",
        "--format=ustar",
        "-C",
        from,
        "-cf",
        out,
        member,
    ]))
}

/// Runs `cmd` to completion; an error names the command line and carries its stderr.
fn run(cmd: &mut Command) -> io::Result<()> {
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| cmd_error(cmd, &e.to_string()))?;
    check(cmd, &out)
}

fn check(cmd: &Command, out: &std::process::Output) -> io::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        Err(cmd_error(
            cmd,
            &format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

fn cmd_error(cmd: &Command, what: &str) -> io::Error {
    io::Error::other(format!("{cmd:?}: {what}"))
}

fn mkdir(p: &Path, mode: u32) -> io::Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("mkdir {}: {e}", p.display()),
            ))
        }
    }
    set_mode(p, mode)
}

fn write(p: &Path, contents: &str) -> io::Result<()> {
    std::fs::write(p, contents)
        .map_err(|e| io::Error::new(e.kind(), format!("write {}: {e}", p.display())))?;
    set_mode(p, 0o644)
}

/// Sets the mode exactly, whatever the umask.
fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

/// Sets the access and modification times of `p` (not following a symlink) to `secs`.
fn touch(p: &Path, secs: i64) -> io::Result<()> {
    let t = TimeSpec::new(secs, 0);
    utimensat(None, p, &t, &t, UtimensatFlags::NoFollowSymlink).map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("utimensat {}: {e}", p.display()),
        )
    })
}

/// [`touch`] on `dir` and everything under it.
fn touch_tree(dir: &Path, secs: i64) -> io::Result<()> {
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if std::fs::symlink_metadata(&p)?.is_dir() {
            for e in std::fs::read_dir(&p)? {
                stack.push(e?.path());
            }
        }
        touch(&p, secs)?;
    }
    Ok(())
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `GET path` over HTTP/1.0 (so the body ends with the connection): the status code, the
/// response head and the body. `headers`: extra request headers.
fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (n, v) in headers {
        req += &format!("{n}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes())?;
    let mut raw = vec![];
    s.read_to_end(&mut raw)?;
    let i = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP response head"))?;
    let head = String::from_utf8_lossy(&raw[..i]).to_string();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line: {head}"),
            )
        })?;
    Ok((code, head, raw[i + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET` that must answer 200; the body as JSON.
    fn get_json(reg: &Registry, path: &str, accept: &str) -> serde_json::Value {
        let (code, head, body) = http_get(reg.addr(), path, &[("Accept", accept)]).unwrap();
        assert_eq!(code, 200, "GET {path}: {head}\n{}", reg.log());
        serde_json::from_slice(&body).unwrap()
    }

    fn manifest(reg: &Registry, repo: &str) -> serde_json::Value {
        get_json(
            reg,
            &format!("/v2/{repo}/manifests/{TAG}"),
            MANIFEST_MEDIA_TYPE,
        )
    }

    fn layer_types(m: &serde_json::Value) -> Vec<String> {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect()
    }

    fn strings(v: &serde_json::Value) -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn registry_serves_the_test_images_until_stopped() {
        let mut reg = Registry::start().unwrap();
        assert_eq!(reg.host(), format!("127.0.0.1:{}", reg.addr().port()));

        let t = Instant::now();
        let images = push_test_images(&reg).unwrap();
        eprintln!("push_test_images took {:?}", t.elapsed());
        let host = reg.host();
        assert_eq!(images.bb, format!("{host}/warren/bb:latest"));
        assert_eq!(images.bb_zstd, format!("{host}/warren/bb-zstd:latest"));
        assert_eq!(images.big, format!("{host}/warren/big:latest"));

        let bb = manifest(&reg, BB_REPO);
        assert_eq!(layer_types(&bb), vec![LAYER_GZIP; BB_LAYERS]);
        let config = get_json(
            &reg,
            &format!(
                "/v2/{BB_REPO}/blobs/{}",
                bb["config"]["digest"].as_str().unwrap()
            ),
            "*/*",
        );
        let c = &config["config"];
        assert_eq!(strings(&c["Env"]), BB_ENV);
        assert_eq!(c["WorkingDir"], BB_WORKDIR);
        assert_eq!(c["User"], BB_USER);
        assert_eq!(strings(&c["Entrypoint"]), BB_ENTRYPOINT);
        assert_eq!(strings(&c["Cmd"]), BB_CMD);
        assert_eq!(
            config["rootfs"]["diff_ids"].as_array().unwrap().len(),
            BB_LAYERS
        );

        let zstd = manifest(&reg, BB_ZSTD_REPO);
        assert_eq!(layer_types(&zstd), vec![LAYER_ZSTD; BB_LAYERS]);
        let zconfig = get_json(
            &reg,
            &format!(
                "/v2/{BB_ZSTD_REPO}/blobs/{}",
                zstd["config"]["digest"].as_str().unwrap()
            ),
            "*/*",
        );
        assert_eq!(
            zconfig["rootfs"], config["rootfs"],
            "same uncompressed layers"
        );

        let big = manifest(&reg, BIG_REPO);
        assert_eq!(layer_types(&big), vec![LAYER_GZIP; BIG_LAYERS]);
        assert_eq!(big["layers"][0]["digest"], bb["layers"][0]["digest"]);
        let blob_layer = big["layers"][1]["size"].as_u64().unwrap();
        assert!(
            blob_layer > BIG_BLOB_LEN as u64,
            "incompressible: {blob_layer}"
        );

        check_unpacked(&images);

        let addr = reg.addr();
        reg.stop();
        let err = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    /// Pulls `bb` and `big` back with skopeo, unpacks them with umoci (which applies the
    /// whiteouts) and compares with the consts.
    fn check_unpacked(images: &TestImages) {
        use std::os::unix::fs::MetadataExt as _;
        let w = tempfile::tempdir().unwrap();
        let w = w.path();
        for (name, reference) in [("bb", &images.bb), ("big", &images.big)] {
            let mut cmd = skopeo(w);
            cmd.args(["copy", "--quiet", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:pulled:{name}"));
            run(&mut cmd).unwrap();
            let image = format!("pulled:{name}");
            umoci(w, &["unpack", "--image", &image, name]).unwrap();
        }

        let root = w.join("bb/rootfs");
        let mut opt = vec![];
        let mut stack = vec![root.join("opt")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root.join("opt")).unwrap();
                opt.push(rel.to_string_lossy().to_string());
                if p.is_dir() {
                    stack.push(p);
                }
            }
        }
        opt.sort();
        assert_eq!(opt, BB_OPT);
        for (path, contents) in BB_OPT_FILES {
            assert_eq!(
                std::fs::read_to_string(root.join("opt").join(path)).unwrap(),
                *contents
            );
        }
        for path in BB_HIDDEN {
            assert!(!root.join(path).exists(), "{path} hidden");
        }
        for a in BB_APPLETS {
            let target = std::fs::read_link(root.join("bin").join(a)).unwrap();
            assert_eq!(target, Path::new("busybox"));
        }
        assert_eq!(
            std::fs::read_to_string(root.join("etc/passwd")).unwrap(),
            BB_PASSWD
        );
        let home = std::fs::metadata(root.join("home/app")).unwrap();
        assert_eq!((home.uid(), home.gid()), (BB_APP_UID, BB_APP_UID));
        let out = Command::new(root.join("bin/busybox"))
            .args(["sh", "-c", "echo hi"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), BB_OUTPUT);

        let big = w.join("big/rootfs");
        assert!(big.join("bin/busybox").is_file());
        let blob = std::fs::read(big.join(BIG_BLOB_PATH.trim_start_matches('/'))).unwrap();
        assert!(blob == big_blob(), "contents of {BIG_BLOB_PATH}");
    }

    #[test]
    fn drop_kills_the_server_and_removes_its_storage() {
        let reg = Registry::start().unwrap();
        let pid = reg.child.as_ref().unwrap().id();
        let dir = reg.dir.path().to_path_buf();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(reg);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} reaped"
        );
        assert!(!dir.exists());
    }

    #[test]
    fn big_blob_is_deterministic() {
        let a = big_blob();
        assert_eq!(a.len(), BIG_BLOB_LEN);
        assert_eq!(a, big_blob());
    }
}
