//! Integration tests of the file requests: each test runs its own agent process (the
//! test-only `warren-agent-test` binary, outside any sandbox) and works in its own temp dir.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Agent;
use futures::{SinkExt, StreamExt};
use tokio_util::codec::Framed;
use warren_proto::host;
use warren_proto::{
    FileKind, FileOp, FileOpResult, FileStat, Frame, FrameCodec, ProtoError, Request,
};

impl Agent {
    fn start() -> Agent {
        Agent::start_in(common::unique_dir("warren-agent-files"), &["work"])
    }

    /// An absolute path (string) inside the scratch dir.
    fn p(&self, rel: &str) -> String {
        self.work().join(rel).to_string_lossy().into_owned()
    }

    fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    async fn read(&self, path: &str) -> Result<(FileStat, Vec<u8>), ProtoError> {
        let (stat, mut data) = host::read_file(self.connect().await, path).await?;
        let mut out = Vec::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            assert!(!chunk.is_empty() && chunk.len() <= 256 * 1024);
            out.extend_from_slice(&chunk);
        }
        Ok((stat, out))
    }

    async fn write_with(
        &self,
        path: &str,
        mode: Option<u32>,
        parents: bool,
        content: &[u8],
    ) -> Result<FileStat, ProtoError> {
        let req = Request::WriteFile {
            path: path.into(),
            mode,
            parents,
            uid: uid(),
            gid: gid(),
        };
        let data = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::copy_from_slice(
            content,
        ))]);
        host::write_file(self.connect().await, req, data).await
    }

    async fn write(&self, path: &str, content: &[u8]) -> Result<FileStat, ProtoError> {
        self.write_with(path, None, false, content).await
    }

    async fn op(&self, op: FileOp) -> Result<FileOpResult, ProtoError> {
        host::file_op(self.connect().await, op).await
    }

    async fn stat(&self, path: &str) -> Result<FileStat, ProtoError> {
        match self.op(FileOp::Stat { path: path.into() }).await? {
            FileOpResult::Stat(s) => Ok(s),
            other => panic!("{other:?}"),
        }
    }

    async fn list(&self, path: &str, depth: u32, limit: u32) -> (Vec<FileStat>, bool) {
        match self
            .op(FileOp::List {
                path: path.into(),
                depth,
                limit,
            })
            .await
            .unwrap()
        {
            FileOpResult::List { entries, truncated } => (entries, truncated),
            other => panic!("{other:?}"),
        }
    }

    async fn mkdir(&self, path: &str, parents: bool, mode: Option<u32>) -> Result<(), ProtoError> {
        self.op(FileOp::Mkdir {
            path: path.into(),
            parents,
            mode,
            uid: uid(),
            gid: gid(),
        })
        .await
        .map(done)
    }

    async fn remove(&self, path: &str, recursive: bool) -> Result<(), ProtoError> {
        self.op(FileOp::Remove {
            path: path.into(),
            recursive,
        })
        .await
        .map(done)
    }

    async fn rename(&self, from: &str, to: &str, overwrite: bool) -> Result<(), ProtoError> {
        self.op(FileOp::Rename {
            from: from.into(),
            to: to.into(),
            overwrite,
        })
        .await
        .map(done)
    }
}

fn done(r: FileOpResult) {
    assert_eq!(r, FileOpResult::Done);
}

fn uid() -> u32 {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() }
}

fn gid() -> u32 {
    // SAFETY: getgid has no preconditions.
    unsafe { libc::getgid() }
}

#[track_caller]
fn code<T: std::fmt::Debug>(r: Result<T, ProtoError>) -> String {
    match r {
        Err(ProtoError::Remote { code, message }) => {
            assert!(!message.is_empty());
            code
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
}

/// Names in `dir` that look like temporary files of a write.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".warren-"))
        .collect()
}

#[tokio::test]
async fn binary_round_trip_with_mode_and_parents() {
    let agent = Agent::start();
    let content: Vec<u8> = (0..=255u8).collect();
    let path = agent.p("a/b/c.bin");
    // Without parents: the directory is missing.
    assert_eq!(code(agent.write(&path, &content).await), "not_found");
    let st = agent
        .write_with(&path, Some(0o600), true, &content)
        .await
        .unwrap();
    assert_eq!(st.path, path);
    assert_eq!(st.kind, FileKind::File);
    assert_eq!(st.size, 256);
    assert_eq!(st.mode, 0o600);
    assert_eq!((st.uid, st.gid), (uid(), gid()));
    let (rst, got) = agent.read(&path).await.unwrap();
    assert_eq!(got, content);
    assert_eq!(rst, st);
    let on_disk = std::fs::metadata(&path).unwrap();
    assert_eq!(on_disk.permissions().mode() & 0o7777, 0o600);
    for d in ["a", "a/b"] {
        let md = std::fs::metadata(agent.work().join(d)).unwrap();
        assert_eq!(md.permissions().mode() & 0o7777, 0o755, "{d}");
    }
    // Overwrite: default mode 0o644, new content, no temp files left.
    let st = agent.write(&path, b"").await.unwrap();
    assert_eq!((st.size, st.mode), (0, 0o644));
    assert_eq!(agent.read(&path).await.unwrap().1, b"");
    assert!(temp_files(&agent.work().join("a/b")).is_empty());
}

#[tokio::test]
async fn big_file_is_streamed() {
    let agent = Agent::start();
    let path = agent.p("big");
    let size = 20 << 20;
    let content: Bytes = (0..size)
        .map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect::<Vec<u8>>()
        .into();
    // Uneven chunks, one bigger than a frame.
    let mut chunks = Vec::new();
    let mut off = 0;
    for len in [1usize, 3 << 20, 1000, 7].into_iter().cycle() {
        if off == size {
            break;
        }
        let end = (off + len).min(size);
        chunks.push(Ok::<_, std::io::Error>(content.slice(off..end)));
        off = end;
    }
    let req = Request::WriteFile {
        path: path.clone(),
        mode: None,
        parents: false,
        uid: uid(),
        gid: gid(),
    };
    let st = host::write_file(agent.connect().await, req, futures::stream::iter(chunks))
        .await
        .unwrap();
    assert_eq!(st.size, size as u64);
    let (stat, mut data) = host::read_file(agent.connect().await, &path).await.unwrap();
    assert_eq!(stat.size, size as u64);
    let mut got = Vec::with_capacity(size);
    let mut frames = 0;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.unwrap();
        assert!(chunk.len() <= 256 * 1024);
        got.extend_from_slice(&chunk);
        frames += 1;
    }
    assert!(frames >= 80, "{frames} frames");
    assert!(got == content[..]);
}

#[tokio::test]
async fn interrupted_write_leaves_the_old_file() {
    let agent = Agent::start();
    let path = agent.p("f");
    agent.write(&path, b"old").await.unwrap();

    // A connection that ends before DataEnd.
    let mut framed = Framed::new(agent.connect().await, FrameCodec);
    framed
        .send(Frame::Request(Request::WriteFile {
            path: path.clone(),
            mode: None,
            parents: false,
            uid: uid(),
            gid: gid(),
        }))
        .await
        .unwrap();
    framed
        .send(Frame::Data(Bytes::from(vec![b'n'; 100_000])))
        .await
        .unwrap();
    // The temp file exists while the write is in progress...
    let deadline = Instant::now() + Duration::from_secs(5);
    while temp_files(&agent.work()).is_empty() {
        assert!(Instant::now() < deadline, "no temp file");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(framed);
    // ...and is gone once the agent saw the connection end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !temp_files(&agent.work()).is_empty() {
        assert!(Instant::now() < deadline, "temp file left behind");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old");

    // A data stream that fails: the client drops the connection without DataEnd.
    let req = Request::WriteFile {
        path: path.clone(),
        mode: None,
        parents: false,
        uid: uid(),
        gid: gid(),
    };
    let data = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"new")),
        Err(std::io::Error::other("body failed")),
    ]);
    let err = host::write_file(agent.connect().await, req, data)
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::Io(_)), "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !temp_files(&agent.work()).is_empty() {
        assert!(Instant::now() < deadline, "temp file left behind");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
}

#[tokio::test]
async fn read_and_write_errors() {
    let agent = Agent::start();
    std::fs::create_dir(agent.work().join("dir")).unwrap();
    std::fs::write(agent.work().join("file"), b"x").unwrap();
    let fifo = std::ffi::CString::new(agent.p("fifo")).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    assert_eq!(code(agent.read(&agent.p("missing")).await), "not_found");
    assert_eq!(code(agent.read(&agent.p("dir")).await), "is_a_directory");
    // A FIFO is refused (and opening it does not hang waiting for a writer).
    assert_eq!(code(agent.read(&agent.p("fifo")).await), "invalid_path");
    assert_eq!(code(agent.read("relative/path").await), "invalid_path");
    assert_eq!(
        code(agent.read(&agent.p("file/x")).await),
        "not_a_directory"
    );

    assert_eq!(
        code(agent.write(&agent.p("dir"), b"x").await),
        "is_a_directory"
    );
    assert_eq!(code(agent.write("rel", b"x").await), "invalid_path");
    assert_eq!(
        code(agent.write(&agent.p("a\0b"), b"x").await),
        "invalid_path"
    );
    assert_eq!(
        code(agent.write(&agent.p("dir/"), b"x").await),
        "invalid_path"
    );
    assert_eq!(
        code(agent.write_with(&agent.p("file/x"), None, true, b"x").await),
        "not_a_directory"
    );
    // A big write refused up front still reports the agent's error, not a broken pipe.
    let req = Request::WriteFile {
        path: agent.p("dir"),
        mode: None,
        parents: false,
        uid: uid(),
        gid: gid(),
    };
    let data = futures::stream::iter(
        (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 1 << 20]))),
    );
    assert_eq!(
        code(host::write_file(agent.connect().await, req, data).await),
        "is_a_directory"
    );
    assert!(agent.work().join("dir").is_dir());
    assert!(temp_files(&agent.work()).is_empty());
}

#[tokio::test]
async fn stat_and_list() {
    let agent = Agent::start();
    let w = agent.work();
    std::fs::create_dir_all(w.join("d/e/f")).unwrap();
    std::fs::write(w.join("d/x.txt"), b"hello").unwrap();
    std::fs::write(w.join("d/e/y"), b"").unwrap();
    std::fs::write(w.join("d/e/f/z"), b"").unwrap();
    std::fs::write(w.join("a"), b"12").unwrap();
    std::os::unix::fs::symlink("d/e", w.join("link")).unwrap();

    let st = agent.stat(&agent.p("d/x.txt")).await.unwrap();
    assert_eq!((st.kind, st.size), (FileKind::File, 5));
    assert_eq!(
        st.mtime,
        std::fs::metadata(w.join("d/x.txt")).unwrap().mtime()
    );
    let st = agent.stat(&agent.p("d")).await.unwrap();
    assert_eq!(st.kind, FileKind::Dir);
    let st = agent.stat(&agent.p("link")).await.unwrap();
    assert_eq!(st.kind, FileKind::Symlink);
    assert_eq!(st.link_target.as_deref(), Some("d/e"));
    assert_eq!(code(agent.stat(&agent.p("nope")).await), "not_found");
    assert_eq!(code(agent.stat("nope").await), "invalid_path");

    let names = |entries: &[FileStat]| -> Vec<String> {
        entries
            .iter()
            .map(|e| e.path.strip_prefix(&agent.p("")).unwrap().to_owned())
            .collect()
    };
    let root = agent.p("");
    let (entries, truncated) = agent.list(&root, 1, 100).await;
    assert!(!truncated);
    assert_eq!(names(&entries), ["a", "d", "link"]);
    assert_eq!(entries[2].kind, FileKind::Symlink);
    assert_eq!(entries[2].link_target.as_deref(), Some("d/e"));

    // Depth 2 does not descend into the symlinked directory.
    let (entries, truncated) = agent.list(&root, 2, 100).await;
    assert!(!truncated);
    assert_eq!(names(&entries), ["a", "d", "d/e", "d/x.txt", "link"]);

    let (entries, truncated) = agent.list(&root, 10, 100).await;
    assert!(!truncated);
    assert_eq!(
        names(&entries),
        ["a", "d", "d/e", "d/e/f", "d/e/f/z", "d/e/y", "d/x.txt", "link"]
    );
    let (entries, truncated) = agent.list(&root, 10, 3).await;
    assert!(truncated);
    assert_eq!(names(&entries), ["a", "d", "d/e"]);
    // Exactly the limit: not truncated.
    let (entries, truncated) = agent.list(&root, 1, 3).await;
    assert!(!truncated);
    assert_eq!(entries.len(), 3);

    assert_eq!(
        code(
            agent
                .op(FileOp::List {
                    path: agent.p("a"),
                    depth: 1,
                    limit: 10
                })
                .await
        ),
        "not_a_directory"
    );
    assert_eq!(
        code(
            agent
                .op(FileOp::List {
                    path: agent.p("missing"),
                    depth: 1,
                    limit: 10
                })
                .await
        ),
        "not_found"
    );
}

#[tokio::test]
async fn mkdir_remove_rename() {
    let agent = Agent::start();
    let w = agent.work();

    agent
        .mkdir(&agent.p("m"), false, Some(0o700))
        .await
        .unwrap();
    assert_eq!(
        std::fs::metadata(w.join("m")).unwrap().permissions().mode() & 0o7777,
        0o700
    );
    assert_eq!(
        code(agent.mkdir(&agent.p("m"), false, None).await),
        "exists"
    );
    agent.mkdir(&agent.p("m"), true, None).await.unwrap(); // mkdir -p: fine
    assert_eq!(
        code(agent.mkdir(&agent.p("x/y"), false, None).await),
        "not_found"
    );
    agent.mkdir(&agent.p("x/y/z"), true, None).await.unwrap();
    assert!(w.join("x/y/z").is_dir());
    std::fs::write(w.join("file"), b"").unwrap();
    assert_eq!(
        code(agent.mkdir(&agent.p("file"), true, None).await),
        "exists"
    );

    // Remove.
    assert_eq!(code(agent.remove(&agent.p("x"), false).await), "not_empty");
    agent.remove(&agent.p("x"), true).await.unwrap();
    assert!(!w.join("x").exists());
    agent.remove(&agent.p("m"), false).await.unwrap(); // empty dir
    agent.remove(&agent.p("file"), false).await.unwrap();
    assert_eq!(
        code(agent.remove(&agent.p("file"), false).await),
        "not_found"
    );
    assert_eq!(code(agent.remove("/", true).await), "invalid_path");

    // Rename.
    std::fs::write(w.join("r1"), b"one").unwrap();
    std::fs::write(w.join("r2"), b"two").unwrap();
    assert_eq!(
        code(agent.rename(&agent.p("r1"), &agent.p("r2"), false).await),
        "exists"
    );
    assert_eq!(std::fs::read(w.join("r2")).unwrap(), b"two");
    agent
        .rename(&agent.p("r1"), &agent.p("r2"), true)
        .await
        .unwrap();
    assert_eq!(std::fs::read(w.join("r2")).unwrap(), b"one");
    assert!(!w.join("r1").exists());
    agent
        .rename(&agent.p("r2"), &agent.p("r3"), false)
        .await
        .unwrap();
    assert_eq!(std::fs::read(w.join("r3")).unwrap(), b"one");
    assert_eq!(
        code(agent.rename(&agent.p("nope"), &agent.p("r4"), false).await),
        "not_found"
    );
    std::fs::create_dir_all(w.join("full/sub")).unwrap();
    std::fs::create_dir(w.join("empty")).unwrap();
    assert_eq!(
        code(
            agent
                .rename(&agent.p("empty"), &agent.p("full"), true)
                .await
        ),
        "not_empty"
    );
}

#[tokio::test]
async fn symlinks_are_never_followed_when_removing() {
    let agent = Agent::start();
    let w = agent.work();
    std::fs::create_dir_all(w.join("target/inner")).unwrap();
    std::fs::write(w.join("target/keep"), b"keep").unwrap();
    std::os::unix::fs::symlink(w.join("target"), w.join("link")).unwrap();
    std::fs::create_dir(w.join("tree")).unwrap();
    std::os::unix::fs::symlink(w.join("target"), w.join("tree/link")).unwrap();

    // A symlink to a directory is removed as a link, recursive or not.
    agent.remove(&agent.p("link"), false).await.unwrap();
    assert!(std::fs::symlink_metadata(w.join("link")).is_err());
    assert_eq!(std::fs::read(w.join("target/keep")).unwrap(), b"keep");

    // A recursive remove of a tree with a link inside does not descend into the link.
    agent.remove(&agent.p("tree"), true).await.unwrap();
    assert!(!w.join("tree").exists());
    assert_eq!(std::fs::read(w.join("target/keep")).unwrap(), b"keep");
    assert!(w.join("target/inner").is_dir());
}

#[tokio::test]
async fn ownership_follows_the_request() {
    assert_eq!(
        uid(),
        0,
        "this test needs root (chown to another user): run the tests as root, as CI does"
    );
    let agent = Agent::start();
    let req = Request::WriteFile {
        path: agent.p("p/q/owned"),
        mode: Some(0o640),
        parents: true,
        uid: 1234,
        gid: 5678,
    };
    let data = futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]);
    let st = host::write_file(agent.connect().await, req, data)
        .await
        .unwrap();
    assert_eq!((st.uid, st.gid, st.mode), (1234, 5678, 0o640));
    for d in ["p", "p/q"] {
        let md = std::fs::metadata(agent.work().join(d)).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678), "{d}");
    }
    agent
        .op(FileOp::Mkdir {
            path: agent.p("owned-dir"),
            parents: false,
            mode: None,
            uid: 42,
            gid: 43,
        })
        .await
        .unwrap();
    let md = std::fs::metadata(agent.work().join("owned-dir")).unwrap();
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (42, 43, 0o755));
}

impl Agent {
    async fn set_metadata(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> Result<FileStat, ProtoError> {
        let metadata = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match self
            .op(FileOp::SetMetadata {
                path: path.into(),
                metadata,
            })
            .await?
        {
            FileOpResult::Stat(s) => Ok(s),
            other => panic!("{other:?}"),
        }
    }
}

fn meta(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The raw extended attribute `name` of `path` (not followed), if set.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 8192];
    let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[tokio::test]
async fn metadata_is_kept_in_extended_attributes() {
    let agent = Agent::start();
    let w = agent.work();
    std::fs::create_dir_all(w.join("d")).unwrap();
    agent.write(&agent.p("d/a"), b"data").await.unwrap();

    let first = agent
        .set_metadata(&agent.p("d/a"), &[("Owner", "me"), ("x.y_z-1", "1")])
        .await;
    if let Err(ProtoError::Remote { code, message }) = &first {
        if code == "not_supported" {
            // Only when the file system refuses user extended attributes: nothing to test.
            eprintln!(
                "SKIPPED: the file system of {} has no user extended attributes: {message}",
                w.display()
            );
            return;
        }
    }
    let st = first.unwrap();
    assert_eq!(st.kind, FileKind::File);
    assert_eq!(st.size, 4);
    assert_eq!(st.metadata, meta(&[("owner", "me"), ("x.y_z-1", "1")]));
    // Stored as `user.warren.<lowercased key>`.
    assert_eq!(
        xattr(&w.join("d/a"), "user.warren.owner").as_deref(),
        Some(&b"me"[..])
    );
    assert_eq!(
        agent.stat(&agent.p("d/a")).await.unwrap().metadata,
        st.metadata
    );

    // Other attributes and names that are not keys are not metadata.
    rustix::fs::lsetxattr(
        w.join("d/a"),
        "user.other",
        b"o",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::lsetxattr(
        w.join("d/a"),
        "user.warren.Not A Key",
        b"o",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    assert_eq!(
        agent.stat(&agent.p("d/a")).await.unwrap().metadata,
        st.metadata
    );

    // Directories take metadata too; listings report it per entry.
    let d = agent
        .set_metadata(&agent.p("d"), &[("k", "dir")])
        .await
        .unwrap();
    assert_eq!((d.kind, d.metadata), (FileKind::Dir, meta(&[("k", "dir")])));
    std::fs::write(w.join("d/plain"), b"").unwrap();
    let (entries, _) = agent.list(&agent.p(""), 2, 100).await;
    let found: Vec<_> = entries
        .iter()
        .map(|e| {
            (
                e.path.strip_prefix(&agent.p("")).unwrap(),
                e.metadata.clone(),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("d", meta(&[("k", "dir")])),
            ("d/a", meta(&[("owner", "me"), ("x.y_z-1", "1")])),
            ("d/plain", meta(&[])),
        ]
    );

    // A rename keeps it; an empty value removes a key (absent keys too); others stay.
    agent
        .rename(&agent.p("d/a"), &agent.p("b"), false)
        .await
        .unwrap();
    assert_eq!(
        agent.stat(&agent.p("b")).await.unwrap().metadata,
        meta(&[("owner", "me"), ("x.y_z-1", "1")])
    );
    let st = agent
        .set_metadata(
            &agent.p("b"),
            &[("x.y_z-1", ""), ("never-set", ""), ("new", "v")],
        )
        .await
        .unwrap();
    assert_eq!(st.metadata, meta(&[("new", "v"), ("owner", "me")]));
    assert_eq!(xattr(&w.join("b"), "user.warren.x.y_z-1"), None);
    // Nothing at all changes nothing.
    assert_eq!(
        agent
            .set_metadata(&agent.p("b"), &[])
            .await
            .unwrap()
            .metadata,
        st.metadata
    );

    // Bad input is refused before anything changes.
    let long = "v".repeat(4097);
    let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for bad in [
        vec![("good", "1"), ("bad key", "2")],
        vec![("good", "1"), ("", "2")],
        vec![("good", "1"), ("k", long.as_str())],
        vec![("good", "1"), ("Dup", "1"), ("dup", "2")],
        many,
    ] {
        assert_eq!(
            code(agent.set_metadata(&agent.p("b"), &bad).await),
            "invalid_request",
            "{bad:?}"
        );
    }
    assert_eq!(
        agent.stat(&agent.p("b")).await.unwrap().metadata,
        st.metadata
    );

    // Not on symlinks (never followed), nor on special files.
    std::os::unix::fs::symlink("b", w.join("link")).unwrap();
    let err = agent.set_metadata(&agent.p("link"), &[("k", "v")]).await;
    assert_eq!(code(err), "invalid_request");
    assert_eq!(xattr(&w.join("b"), "user.warren.k"), None);
    nix::unistd::mkfifo(&w.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    assert_eq!(
        code(agent.set_metadata(&agent.p("fifo"), &[("k", "v")]).await),
        "invalid_request"
    );
    assert_eq!(
        code(agent.set_metadata(&agent.p("missing"), &[("k", "v")]).await),
        "not_found"
    );
    assert_eq!(
        code(agent.set_metadata("/", &[("k", "v")]).await),
        "invalid_path"
    );
    assert_eq!(
        code(agent.set_metadata("relative", &[("k", "v")]).await),
        "invalid_path"
    );

    // Metadata belongs to the file: an atomic overwrite (a new file) starts without any, and
    // removing the file removes it.
    agent.write(&agent.p("b"), b"new").await.unwrap();
    assert!(agent.stat(&agent.p("b")).await.unwrap().metadata.is_empty());
}
