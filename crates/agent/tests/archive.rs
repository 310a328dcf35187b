//! Integration test of [`Request::ReadArchive`]: a tree with modes and a symlink is
//! streamed as tar by a real agent (the test-only `warren-agent-test` binary) and unpacked.
//!
//! [`Request::ReadArchive`]: warren_proto::Request::ReadArchive

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::Agent;
use futures::StreamExt;
use tokio::net::UnixStream;
use warren_proto::{host, FileKind, ProtoError};

impl Agent {
    fn start(name: &str) -> Agent {
        Agent::start_in(common::named_dir("warren-agent-archive", name), &[])
    }

    async fn archive(&self, path: &Path) -> Result<(warren_proto::FileStat, Vec<u8>), ProtoError> {
        let stream = UnixStream::connect(&self.sock).await.unwrap();
        let (stat, mut data) = host::read_archive(stream, path.to_string_lossy()).await?;
        let mut out = Vec::new();
        while let Some(chunk) = data.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok((stat, out))
    }
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn archive_round_trips_a_tree() {
    let agent = Agent::start("tree");
    let src = agent.dir.join("src");
    std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha").unwrap();
    set_mode(&src.join("a.txt"), 0o600);
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("sub/big.bin"), &big).unwrap();
    std::fs::write(src.join("sub/deeper/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    set_mode(&src.join("sub/deeper/run.sh"), 0o755);
    set_mode(&src.join("sub"), 0o750);
    // A symlink pointing outside the tree: stored as a link, never followed.
    std::os::unix::fs::symlink("/etc/passwd", src.join("sub/link")).unwrap();
    std::os::unix::fs::symlink("../a.txt", src.join("sub/rel")).unwrap();
    // A FIFO is skipped, not opened.
    let fifo = std::ffi::CString::new(src.join("fifo").to_string_lossy().as_bytes()).unwrap();
    // SAFETY: `fifo` is a valid NUL-terminated path for the duration of the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);

    let (stat, bytes) = agent.archive(&src).await.unwrap();
    assert_eq!(stat.kind, FileKind::Dir);

    let dest = agent.dir.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    let mut names = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
        assert!(e.unpack_in(&dest).unwrap());
    }
    // Each directory's entries in name order, then its subdirectories: parents first.
    assert_eq!(
        names,
        [
            "a.txt",
            "empty",
            "sub",
            "sub/big.bin",
            "sub/deeper",
            "sub/link",
            "sub/rel",
            "sub/deeper/run.sh",
        ]
    );
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"alpha");
    assert_eq!(std::fs::read(dest.join("sub/big.bin")).unwrap(), big);
    let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("a.txt"), 0o600);
    assert_eq!(mode("sub/deeper/run.sh"), 0o755);
    assert_eq!(mode("sub"), 0o750);
    assert_eq!(
        std::fs::read_link(dest.join("sub/link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(dest.join("sub/rel")).unwrap(),
        Path::new("../a.txt")
    );
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().mtime();
    assert_eq!(
        mtime(&dest.join("sub/big.bin")),
        mtime(&src.join("sub/big.bin"))
    );
}

#[tokio::test]
async fn archive_errors() {
    let agent = Agent::start("errors");
    let file = agent.dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let code = |e: ProtoError| match e {
        ProtoError::Remote { code, .. } => code,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        code(agent.archive(&file).await.unwrap_err()),
        "not_a_directory"
    );
    assert_eq!(
        code(agent.archive(&agent.dir.join("nope")).await.unwrap_err()),
        "not_found"
    );
    assert_eq!(
        code(agent.archive(Path::new("relative")).await.unwrap_err()),
        "invalid_path"
    );
    // An empty directory is a valid (empty) archive.
    let empty = agent.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (_, bytes) = agent.archive(&empty).await.unwrap();
    assert_eq!(tar::Archive::new(&bytes[..]).entries().unwrap().count(), 0);
}
