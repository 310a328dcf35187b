//! Layers made by a build: a sandbox's upper directory committed (`commit_layer`), and COPY
//! and ADD written into a fresh layer (`copy_into_layer`). Run as root (owners, devices,
//! `trusted.*` attributes).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use warren_image::{
    copy_into_layer, extract, write_layer_tar, CommitOptions, Compression, CopySpec, Image,
    ImageConfig, ImageError, ImageStore, RegistryConfig,
};

/// What a test compares of one entry of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Not for whiteouts (made at extraction).
    mtime: Option<i64>,
    data: Vec<u8>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// For a file with several names: the first of them.
    linked_to: Option<PathBuf>,
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut list = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(p, &mut list[..]) else {
        return out;
    };
    for name in list[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        let mut v = vec![0u8; 4096];
        let len = rustix::fs::lgetxattr(p, name, &mut v[..]).unwrap();
        v.truncate(len);
        out.insert(name.to_string_lossy().into_owned(), v);
    }
    out
}

/// Every entry below `root` (not `root` itself), by relative path.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    for p in all {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let whiteout = ft.is_char_device() && m.rdev() == 0;
        let (kind, data) = if ft.is_dir() {
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            (
                "symlink",
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if ft.is_file() {
            ("file", std::fs::read(&p).unwrap())
        } else if ft.is_fifo() {
            ("fifo", Vec::new())
        } else if ft.is_char_device() {
            ("char", Vec::new())
        } else {
            ("other", Vec::new())
        };
        let linked_to = if ft.is_file() && m.nlink() > 1 {
            Some(inodes.entry(m.ino()).or_insert(rel.clone()).clone())
        } else {
            None
        };
        out.insert(
            rel,
            Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (!whiteout).then_some(m.mtime()),
                data,
                rdev: m.rdev(),
                xattrs: if ft.is_symlink() {
                    BTreeMap::new()
                } else {
                    xattrs(&p)
                },
                linked_to,
            },
        );
    }
    out
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

fn mkdir(p: &Path, mode: u32, uid: u32, gid: u32) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn file(p: &Path, data: &[u8], mode: u32, uid: u32, gid: u32) {
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, rustix::fs::XattrFlags::empty()).unwrap();
}

fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .unwrap();
}

fn open_store(root: &Path) -> ImageStore {
    ImageStore::open(root, RegistryConfig::default()).unwrap()
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

const SHIFT: u32 = 100_000;

/// A lower layer and a hand-made upper directory over it, written by a sandbox whose root
/// is host id 100000.
fn upper_fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let (lower, up) = (dir.join("lower"), dir.join("upper"));
    mkdir(&lower, 0o755, 0, 0);
    mkdir(&lower.join("etc"), 0o755, 0, 0);
    file(
        &lower.join("etc/passwd"),
        b"root:x:0:0::/root:/bin/sh\n",
        0o644,
        0,
        0,
    );
    mkdir(&lower.join("usr"), 0o755, 0, 0);
    file(&lower.join("usr/gone"), b"old", 0o644, 0, 0);
    mkdir(&lower.join("opt/old"), 0o755, 0, 0);
    mkdir(&lower.join("var"), 0o755, 0, 0);

    let s = SHIFT;
    mkdir(&up, 0o755, s, s);
    // Written by Warren into every sandbox: skipped, and then etc/ is redundant.
    mkdir(&up.join("etc"), 0o755, s, s);
    file(&up.join("etc/hostname"), b"sandbox\n", 0o644, s, s);
    file(&up.join("etc/hosts"), b"127.0.0.1 localhost\n", 0o644, s, s);
    mkdir(&up.join("proc/1"), 0o555, s, s);
    // Empty, but its mode changed: kept.
    mkdir(&up.join("var"), 0o700, s, s);
    // A whiteout, in a directory overlayfs marked.
    mkdir(&up.join("usr"), 0o755, s, s);
    setxattr(&up.join("usr"), "trusted.overlay.impure", b"y");
    whiteout(&up.join("usr/gone"));
    // An opaque directory.
    mkdir(&up.join("opt"), 0o755, s, s);
    setxattr(&up.join("opt"), "trusted.overlay.opaque", b"y");
    setxattr(&up.join("opt"), "trusted.overlay.origin", b"\x00\xfb");
    file(&up.join("opt/new.txt"), b"new\n", 0o644, s, s);
    // A user's home with shifted owners, a hard link pair, a symlink.
    mkdir(&up.join("home"), 0o755, s, s);
    mkdir(&up.join("home/app"), 0o750, s + 1000, s + 1000);
    file(&up.join("home/app/a"), b"linked", 0o600, s + 1000, s + 1000);
    std::fs::hard_link(up.join("home/app/a"), up.join("home/app/b")).unwrap();
    set_mtime(&up.join("home/app/a"), 1_600_000_000);
    mkdir(&up.join("bin"), 0o755, s, s);
    std::os::unix::fs::symlink("/bin/busybox", up.join("bin/sh")).unwrap();
    std::os::unix::fs::lchown(up.join("bin/sh"), Some(s), Some(s)).unwrap();
    set_mtime(&up.join("bin/sh"), 1_500_000_000);
    // Extended attributes: a capability and a user attribute are kept.
    file(&up.join("bin/ping"), b"\x7fELF", 0o755, s, s);
    let mut cap = 0x0200_0001u32.to_le_bytes().to_vec();
    cap.extend_from_slice(&[0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    setxattr(&up.join("bin/ping"), "security.capability", &cap);
    setxattr(&up.join("bin/ping"), "user.comment", b"pings");
    setxattr(&up.join("home/app"), "user.dir", b"1");
    // A fifo is kept, a socket is not; odd names are kept.
    mkdir(&up.join("run"), 0o755, s, s);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        up.join("run/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o620),
        0,
    )
    .unwrap();
    std::os::unix::fs::lchown(up.join("run/fifo"), Some(s), Some(s + 5)).unwrap();
    std::fs::set_permissions(up.join("run/fifo"), std::fs::Permissions::from_mode(0o620)).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(up.join("run/sock")).unwrap();
    file(
        &up.join(OsStr::from_bytes(b"caf\xe9")),
        b"latin-1",
        0o644,
        s,
        s,
    );
    let long = "l".repeat(150);
    mkdir(&up.join(&long), 0o755, s, s);
    file(&up.join(&long).join(&long), b"long", 0o644, s, s);
    std::os::unix::fs::symlink("t".repeat(200), up.join("longlink")).unwrap();
    std::os::unix::fs::lchown(up.join("longlink"), Some(s), Some(s)).unwrap();
    (lower, up)
}

#[test]
fn an_upper_directory_becomes_a_layer_equal_to_its_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"));
    let (lower, up) = upper_fixture(tmp.path());
    let opts = CommitOptions {
        id_shift: SHIFT,
        skip: vec!["etc/hostname".into(), "/etc/hosts".into(), "proc".into()],
        lowers: vec![lower.clone()],
    };
    let c = store.commit_layer_blocking(&up, &opts).unwrap();
    assert_eq!(c.layer.digest, c.layer.diff_id);
    assert_eq!(c.layer.media_type, "application/vnd.oci.image.layer.v1.tar");

    // The diff_id is the digest of the tar, which is made the same way every time.
    let mut tar = Vec::new();
    let entries = write_layer_tar(&up, &opts, &mut tar).unwrap();
    assert_eq!(sha(&tar), c.layer.diff_id);
    assert_eq!(tar.len() as u64, c.layer.size);
    assert_eq!(entries, c.entries);
    let names = tar_names(&tar);
    for want in [
        "usr/.wh.gone",
        "opt/.wh..wh..opq",
        "var",
        "run/fifo",
        "home/app/b",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    for gone in ["etc", "etc/hostname", "etc/hosts", "proc", "run/sock"] {
        assert!(!names.iter().any(|n| n == gone), "{gone} in {names:?}");
    }
    assert_eq!(names.len(), entries);

    // The stored layer is what extracting the tar gives.
    let stored = store.layer_path(&c.layer.diff_id).unwrap();
    let again = tmp.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let x = extract(&tar[..], Compression::None, &again, &[]).unwrap();
    assert_eq!(x.diff_id, c.layer.diff_id);
    let layer = snapshot(&stored);
    assert_eq!(layer, snapshot(&again));

    // And it is the upper directory in overlay form, owners out of the namespace.
    let e = |p: &str| layer.get(Path::new(p)).unwrap_or_else(|| panic!("{p}"));
    assert!(!stored.join("etc").exists() && !stored.join("proc").exists());
    assert_eq!((e("var").mode, e("var").uid), (0o700, 0));
    assert_eq!((e("usr/gone").kind, e("usr/gone").rdev), ("char", 0));
    assert!(e("usr").xattrs.is_empty(), "{:?}", e("usr").xattrs);
    let opt = &e("opt").xattrs;
    assert_eq!(opt.keys().collect::<Vec<_>>(), ["trusted.overlay.opaque"]);
    assert_eq!(opt["trusted.overlay.opaque"], b"y");
    assert_eq!(
        (e("home/app").uid, e("home/app").gid, e("home/app").mode),
        (1000, 1000, 0o750)
    );
    assert_eq!(e("home/app").xattrs["user.dir"], b"1");
    assert_eq!(
        e("home/app/b").linked_to.as_deref(),
        Some(Path::new("home/app/a"))
    );
    assert_eq!(e("home/app/a").mtime, Some(1_600_000_000));
    assert_eq!(
        (e("bin/sh").kind, &e("bin/sh").data[..]),
        ("symlink", &b"/bin/busybox"[..])
    );
    assert_eq!(
        (e("bin/sh").uid, e("bin/sh").mtime),
        (0, Some(1_500_000_000))
    );
    assert_eq!(e("bin/ping").xattrs["user.comment"], b"pings");
    assert_eq!(e("bin/ping").xattrs["security.capability"].len(), 20);
    assert_eq!((e("run/fifo").kind, e("run/fifo").mode), ("fifo", 0o620));
    assert_eq!((e("run/fifo").uid, e("run/fifo").gid), (0, 5));
    assert!(!stored.join("run/sock").exists());
    let latin1 = Path::new(OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(layer[latin1].data, b"latin-1");
    let long = "l".repeat(150);
    assert_eq!(e(&format!("{long}/{long}")).data, b"long");
    assert_eq!(e("longlink").data, "t".repeat(200).as_bytes());
    // Directory mtimes are the source's.
    let src_mtime = std::fs::metadata(up.join("home/app")).unwrap().mtime();
    assert_eq!(e("home/app").mtime, Some(src_mtime));

    // The same content again: the same layer, stored once.
    let c2 = store.commit_layer_blocking(&up, &opts).unwrap();
    assert_eq!(c2, c);
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/layers"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/tmp"))
            .unwrap()
            .count(),
        0
    );

    // The stored layer written back is the same tar.
    let mut back = Vec::new();
    write_layer_tar(&stored, &CommitOptions::default(), &mut back).unwrap();
    assert_eq!(sha(&back), c.layer.diff_id);
}

#[test]
fn commits_refuse_what_a_layer_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"));
    let opts = CommitOptions {
        id_shift: SHIFT,
        ..Default::default()
    };

    // Nothing changed: an empty layer.
    let empty = tmp.path().join("empty");
    mkdir(&empty, 0o755, SHIFT, SHIFT);
    let c = store.commit_layer_blocking(&empty, &opts).unwrap();
    assert_eq!(c.entries, 0);
    assert_eq!(c.layer.diff_id, sha(&[0u8; 1024]));

    // An owner outside the sandbox's ids.
    let foreign = tmp.path().join("foreign");
    mkdir(&foreign, 0o755, SHIFT, SHIFT);
    file(&foreign.join("f"), b"x", 0o644, 5, 5);
    match store.commit_layer_blocking(&foreign, &opts) {
        Err(ImageError::Corrupt(m)) => assert!(m.contains("foreign/f"), "{m}"),
        other => panic!("{other:?}"),
    }

    // A name OCI reserves, and a renamed directory whose content stayed below.
    let reserved = tmp.path().join("reserved");
    mkdir(&reserved, 0o755, SHIFT, SHIFT);
    file(&reserved.join(".wh.x"), b"", 0o644, SHIFT, SHIFT);
    assert!(matches!(
        store.commit_layer_blocking(&reserved, &opts),
        Err(ImageError::Unsupported(_))
    ));
    let redirect = tmp.path().join("redirect");
    mkdir(&redirect.join("moved"), 0o755, SHIFT, SHIFT);
    setxattr(
        &redirect.join("moved"),
        "trusted.overlay.redirect",
        b"/orig",
    );
    assert!(matches!(
        store.commit_layer_blocking(&redirect, &opts),
        Err(ImageError::Unsupported(_))
    ));
    // Failed commits leave nothing behind.
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(tmp.path().join("store/layers"))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn built_images_are_recorded_over_stored_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_store(&tmp.path().join("store"));
    let src = tmp.path().join("src");
    mkdir(&src, 0o755, 0, 0);
    file(&src.join("hello"), b"hi\n", 0o644, 0, 0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = store
            .commit_layer(src.clone(), CommitOptions::default())
            .await
            .unwrap();
        let mut image = Image {
            name: "built:1".into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            config: ImageConfig::default(),
            layers: vec![c.layer.clone()],
            size: c.layer.size,
            pulled_at: chrono::Utc::now(),
            template: None,
        };
        // While a build holds a lease, its layer (no image's yet) is not collected.
        let lease = store.lease().await;
        assert_eq!(store.collect_garbage().await.unwrap().layers, 0);
        assert!(store.collection_owed());
        store.cache_put("ab12", &c.layer).unwrap();
        assert_eq!(store.cache_get("ab12"), Some(c.layer.clone()));
        assert_eq!(store.cache_get("../x"), None);
        store.put_image(image.clone()).await.unwrap();
        drop(lease);
        let got = store.get("built:1").unwrap().unwrap();
        assert_eq!(got.name, "built:1", "recorded under its own name");
        assert_eq!(got.layers, image.layers);
        // It survives a reopen, and its layer a collection.
        assert_eq!(store.collect_garbage().await.unwrap().layers, 0);
        let reopened = open_store(&tmp.path().join("store"));
        assert!(reopened.get("built:1").unwrap().is_some());

        image.name = "broken:1".into();
        image.layers[0].diff_id = format!("sha256:{}", "1".repeat(64));
        assert!(matches!(
            store.put_image(image).await,
            Err(ImageError::NotFound(_))
        ));
        assert!(store.get("broken:1").unwrap().is_none());
    });
}

// ---- COPY and ADD ----

struct Ctx {
    _tmp: tempfile::TempDir,
    context: PathBuf,
    lowers: Vec<PathBuf>,
    outside: PathBuf,
    root: PathBuf,
}

fn copy_fixture() -> Ctx {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let context = root.join("context");
    mkdir(&context, 0o755, 1000, 1000);
    file(&context.join("a.txt"), b"A", 0o644, 1000, 1000);
    file(&context.join("b.txt"), b"B", 0o600, 1000, 1000);
    set_mtime(&context.join("a.txt"), 1_400_000_000);
    mkdir(&context.join("src"), 0o750, 1000, 1000);
    mkdir(&context.join("src/sub"), 0o750, 1000, 1000);
    file(&context.join("src/x.conf"), b"x=1\n", 0o640, 1000, 1000);
    file(&context.join("src/sub/y"), b"y", 0o755, 1000, 1000);
    std::os::unix::fs::symlink("x.conf", context.join("src/link")).unwrap();
    std::os::unix::fs::symlink("a.txt", context.join("alias")).unwrap();
    set_mtime(&context.join("src"), 1_300_000_000);

    // Archives of pkg/f (owned 1234, mode 0640): plain, gzip, zstd.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o711);
    h.set_uid(1234);
    h.set_gid(1234);
    h.set_mtime(1_200_000_000);
    h.set_size(0);
    b.append_data(&mut h, "pkg/", &[][..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o640);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mtime(1_200_000_000);
    h.set_size(3);
    b.append_data(&mut h, "pkg/f", &b"pkg"[..]).unwrap();
    let plain = b.into_inner().unwrap();
    std::fs::write(context.join("pkg.tar"), &plain).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    std::fs::write(context.join("pkg.tar.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(
        context.join("pkg.tar.zst"),
        zstd::encode_all(&plain[..], 3).unwrap(),
    )
    .unwrap();
    // Gzip, but not a tar: copied as it is.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Default::default());
    std::io::Write::write_all(&mut gz, b"just text").unwrap();
    std::fs::write(context.join("notes.gz"), gz.finish().unwrap()).unwrap();

    // A secret outside the context, and symlinks that try to reach it.
    let outside = root.join("outside");
    mkdir(&outside, 0o700, 0, 0);
    file(&outside.join("secret"), b"SECRET", 0o600, 0, 0);
    std::os::unix::fs::symlink(outside.join("secret"), context.join("abs-escape")).unwrap();
    let up = "../".repeat(20) + &outside.join("secret").display().to_string()[1..];
    std::os::unix::fs::symlink(&up, context.join("rel-escape")).unwrap();
    std::os::unix::fs::symlink(&outside, context.join("dir-escape")).unwrap();

    // The image so far: /app (0711, 5:5), /srv/data, /data -> /srv/data, /etc/motd a file.
    let lower = root.join("lower");
    mkdir(&lower, 0o755, 0, 0);
    mkdir(&lower.join("app"), 0o711, 5, 5);
    set_mtime(&lower.join("app"), 1000);
    mkdir(&lower.join("srv/data"), 0o755, 0, 0);
    std::os::unix::fs::symlink("/srv/data", lower.join("data")).unwrap();
    mkdir(&lower.join("etc"), 0o755, 0, 0);
    file(&lower.join("etc/motd"), b"hi", 0o644, 0, 0);
    Ctx {
        _tmp: tmp,
        context,
        lowers: vec![lower],
        outside,
        root,
    }
}

impl Ctx {
    fn spec<'a>(&'a self, sources: &'a [String], dest: &'a str) -> CopySpec<'a> {
        CopySpec {
            context: &self.context,
            sources,
            dest,
            workdir: "/work",
            owner: (0, 0),
            mode: None,
            add: false,
            lowers: &self.lowers,
        }
    }

    /// Run `spec` into a fresh layer directory: the layer, and the result.
    fn copy(&self, spec: &CopySpec<'_>) -> (PathBuf, Result<warren_image::CopyResult, ImageError>) {
        let n = std::fs::read_dir(&self.root).unwrap().count();
        let layer = self.root.join(format!("layer-{n}"));
        std::fs::create_dir(&layer).unwrap();
        let r = copy_into_layer(spec, &layer);
        (layer, r)
    }
}

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn meta(p: &Path) -> (u32, u32, u32, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime())
}

#[test]
fn copy_places_files_as_docker_does() {
    let c = copy_fixture();

    // A file to a new file path: parents made 0755, root, mtime 0; the file keeps its
    // mode and mtime and belongs to root.
    let src = strings(&["a.txt"]);
    let (l, r) = c.copy(&c.spec(&src, "/opt/conf/a.cfg"));
    r.unwrap();
    assert_eq!(std::fs::read(l.join("opt/conf/a.cfg")).unwrap(), b"A");
    assert_eq!(
        meta(&l.join("opt/conf/a.cfg")),
        (0o644, 0, 0, 1_400_000_000)
    );
    assert_eq!(meta(&l.join("opt")), (0o755, 0, 0, 0));

    // A file to a directory of the image (no trailing slash): into it, the directory's
    // metadata that of the image.
    let (l, r) = c.copy(&c.spec(&src, "/app"));
    assert_eq!(r.unwrap().entries, 2);
    assert_eq!(std::fs::read(l.join("app/a.txt")).unwrap(), b"A");
    assert_eq!(meta(&l.join("app")), (0o711, 5, 5, 1000));

    // Relative to the working directory; through a symlink of the image.
    let (l, r) = c.copy(&c.spec(&src, "."));
    r.unwrap();
    assert!(l.join("work/a.txt").is_file());
    let (l, r) = c.copy(&c.spec(&src, "/data/"));
    r.unwrap();
    assert!(l.join("srv/data/a.txt").is_file());
    assert!(!l.join("data").exists());

    // A symlink named as a source is followed.
    let (l, r) = c.copy(&c.spec(&strings(&["alias"]), "/x/"));
    r.unwrap();
    assert_eq!(std::fs::read(l.join("x/alias")).unwrap(), b"A");

    // A directory: its contents, symlinks as symlinks; a new destination takes its mode.
    let dir = strings(&["src"]);
    let (l, r) = c.copy(&c.spec(&dir, "/dst"));
    r.unwrap();
    assert!(!l.join("dst/src").exists());
    assert_eq!(std::fs::read(l.join("dst/x.conf")).unwrap(), b"x=1\n");
    assert_eq!(std::fs::read(l.join("dst/sub/y")).unwrap(), b"y");
    assert_eq!(
        std::fs::read_link(l.join("dst/link")).unwrap(),
        Path::new("x.conf")
    );
    assert_eq!(meta(&l.join("dst")), (0o750, 0, 0, 1_300_000_000));
    assert_eq!(meta(&l.join("dst/sub")).0, 0o750);

    // Patterns, and several sources: into a directory.
    let (l, r) = c.copy(&c.spec(&strings(&["*.txt"]), "/w"));
    r.unwrap();
    assert!(l.join("w/a.txt").is_file() && l.join("w/b.txt").is_file());
    assert_eq!(meta(&l.join("w")).0, 0o755);
    let (l, r) = c.copy(&c.spec(&strings(&["s?c/[xz].conf", "/b.txt"]), "/m/"));
    r.unwrap();
    assert!(l.join("m/x.conf").is_file() && l.join("m/b.txt").is_file());

    // --chown and --chmod: on everything copied; made parents get the owner, not the mode.
    let mut spec = c.spec(&dir, "/p/c/");
    spec.owner = (1000, 1001);
    spec.mode = Some(0o700);
    let (l, r) = c.copy(&spec);
    r.unwrap();
    assert_eq!(meta(&l.join("p")), (0o755, 1000, 1001, 0));
    let (mode, uid, gid, _) = meta(&l.join("p/c"));
    assert_eq!((mode, uid, gid), (0o700, 1000, 1001));
    for f in ["p/c/x.conf", "p/c/sub", "p/c/sub/y"] {
        let (mode, uid, gid, _) = meta(&l.join(f));
        assert_eq!((mode, uid, gid), (0o700, 1000, 1001), "{f}");
    }
    assert_eq!(meta(&l.join("p/c/link")).1, 1000);

    // A non-directory of the image where a directory is needed.
    let (_, r) = c.copy(&c.spec(&dir, "/etc/motd"));
    assert!(matches!(r, Err(ImageError::BuildInput(_))), "{r:?}");

    // The copied layer commits over the image: /app is kept with its files.
    let store = open_store(&c.root.join("store"));
    let (l, r) = c.copy(&c.spec(&src, "/app"));
    r.unwrap();
    let committed = store
        .commit_layer_blocking(
            &l,
            &CommitOptions {
                lowers: c.lowers.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(committed.entries, 2);
    // The same COPY again gives the same layer.
    let (l2, r) = c.copy(&c.spec(&src, "/app"));
    r.unwrap();
    let again = store
        .commit_layer_blocking(
            &l2,
            &CommitOptions {
                lowers: c.lowers.clone(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(again.layer.diff_id, committed.layer.diff_id);
}

#[test]
fn add_extracts_local_archives() {
    let c = copy_fixture();
    for name in ["pkg.tar", "pkg.tar.gz", "pkg.tar.zst"] {
        let src = strings(&[name]);
        let mut spec = c.spec(&src, "/x");
        spec.add = true;
        spec.owner = (7, 7);
        let (l, r) = c.copy(&spec);
        r.unwrap();
        assert_eq!(std::fs::read(l.join("x/pkg/f")).unwrap(), b"pkg", "{name}");
        assert_eq!(meta(&l.join("x/pkg/f")), (0o640, 1234, 4321, 1_200_000_000));
        assert_eq!(meta(&l.join("x/pkg")), (0o711, 1234, 1234, 1_200_000_000));
        // COPY does not extract.
        let (l, r) = c.copy(&c.spec(&src, "/x/"));
        r.unwrap();
        assert_eq!(
            std::fs::read(l.join("x").join(name)).unwrap(),
            std::fs::read(c.context.join(name)).unwrap()
        );
    }
    let src = strings(&["notes.gz"]);
    let mut spec = c.spec(&src, "/n/");
    spec.add = true;
    let (l, r) = c.copy(&spec);
    r.unwrap();
    assert_eq!(
        std::fs::read(l.join("n/notes.gz")).unwrap(),
        std::fs::read(c.context.join("notes.gz")).unwrap()
    );
    let src = strings(&["https://example.com/x.tar"]);
    let mut spec = c.spec(&src, "/n/");
    spec.add = true;
    assert!(matches!(c.copy(&spec).1, Err(ImageError::BuildInput(_))));
}

#[test]
fn sources_stay_inside_the_context() {
    let c = copy_fixture();
    for source in [
        "../outside/secret",
        "a/../../x",
        "nope",
        "*.nope",
        "[",
        "rel-escape",
        "abs-escape",
        "dir-escape/secret",
    ] {
        let src = strings(&[source]);
        let (l, r) = c.copy(&c.spec(&src, "/got/"));
        assert!(
            matches!(r, Err(ImageError::BuildInput(_))),
            "{source}: {r:?}"
        );
        assert!(!l.join("got/secret").exists(), "{source}");
    }
    // A link out, inside a copied directory, is copied as a link (never read).
    let src = strings(&["."]);
    let (l, r) = c.copy(&c.spec(&src, "/all/"));
    r.unwrap();
    assert!(std::fs::symlink_metadata(l.join("all/abs-escape"))
        .unwrap()
        .is_symlink());
    assert_eq!(std::fs::read(c.outside.join("secret")).unwrap(), b"SECRET");
}

#[test]
fn files_digest_follows_the_content() {
    let c = copy_fixture();
    let src = strings(&["src", "a.txt"]);
    let digest = || c.copy(&c.spec(&src, "/d/")).1.unwrap().files_digest;
    let first = digest();
    assert_eq!(digest(), first);
    // Another mtime or owner: the same digest.
    set_mtime(&c.context.join("src/x.conf"), 42);
    std::os::unix::fs::lchown(c.context.join("a.txt"), Some(0), Some(0)).unwrap();
    assert_eq!(digest(), first);
    // Another content, mode or link target: another.
    file(&c.context.join("src/x.conf"), b"x=2\n", 0o640, 1000, 1000);
    let second = digest();
    assert_ne!(second, first);
    std::fs::set_permissions(
        c.context.join("a.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let third = digest();
    assert_ne!(third, second);
    std::fs::remove_file(c.context.join("src/link")).unwrap();
    std::os::unix::fs::symlink("sub/y", c.context.join("src/link")).unwrap();
    assert_ne!(digest(), third);
}
