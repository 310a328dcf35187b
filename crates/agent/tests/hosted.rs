//! The hosted agent: the real agent inside this test process, serving a temporary directory
//! as its root. Paths stay inside that directory; commands start in it and die with it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::net::UnixStream;
use warren_agent::{Hosted, HostedOptions};
use warren_proto::host::{self as agent, ExecEvent};
use warren_proto::{ExecSpec, FileOp, FileOpResult, ProtoError, Request, SearchSpec};

fn conn(h: &Hosted) -> UnixStream {
    let s = h.connect().unwrap();
    s.set_nonblocking(true).unwrap();
    UnixStream::from_std(s).unwrap()
}

fn spec(argv: &[&str], cwd: &str) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        cwd: cwd.into(),
        uid: euid(),
        gid: egid(),
        timeout_ms: None,
        stdin: false,
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn egid() -> u32 {
    nix::unistd::getegid().as_raw()
}

/// The error of a request that must fail.
fn refused<T>(r: Result<T, ProtoError>, why: &str) -> ProtoError {
    match r {
        Ok(_) => panic!("not refused: {why}"),
        Err(e) => e,
    }
}

async fn run(h: &Hosted, s: ExecSpec) -> (String, i32) {
    let mut events = agent::exec(conn(h), s, None).await.unwrap();
    let mut out = Vec::new();
    let mut code = None;
    while let Some(ev) = events.next().await {
        match ev.unwrap() {
            ExecEvent::Stdout(b) => out.extend_from_slice(&b),
            ExecEvent::Stderr(_) | ExecEvent::Started { .. } => {}
            ExecEvent::Exit { exit_code, .. } => code = Some(exit_code),
        }
    }
    (String::from_utf8(out).unwrap(), code.unwrap())
}

async fn write(h: &Hosted, path: &str, data: &'static [u8]) -> Result<(), ProtoError> {
    let req = Request::WriteFile {
        path: path.into(),
        mode: None,
        parents: true,
        uid: euid(),
        gid: egid(),
    };
    let body = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(data))]);
    agent::write_file(conn(h), req, body).await.map(|_| ())
}

#[tokio::test]
async fn files_and_commands_live_in_the_directory() {
    let tmp = common::TempDir::new("hosted");
    let dir = tmp.0.clone();
    std::fs::create_dir_all(dir.join("outside-sibling")).unwrap();
    let root = dir.join("root");
    // Same name inside: where a link pointing up out of the root lands.
    std::fs::create_dir_all(root.join("outside-sibling")).unwrap();
    let h = Hosted::start(&root, HostedOptions::default()).unwrap();

    write(&h, "/workspace/a.txt", b"hello\n").await.unwrap();
    assert_eq!(
        std::fs::read(root.join("workspace/a.txt")).unwrap(),
        b"hello\n"
    );
    // A command starts in its cwd inside the directory.
    let (out, code) = run(&h, spec(&["cat", "a.txt"], "/workspace")).await;
    assert_eq!((out.as_str(), code), ("hello\n", 0));
    let (out, _) = run(&h, spec(&["pwd"], "/workspace")).await;
    assert_eq!(Path::new(out.trim()), root.join("workspace"));

    // Escapes resolve inside: `..`, and symlinks (absolute or pointing up).
    std::os::unix::fs::symlink("/etc", root.join("workspace/etc")).unwrap();
    std::os::unix::fs::symlink("../../outside-sibling", root.join("up")).unwrap();
    let err = refused(
        agent::read_file(conn(&h), "/workspace/etc/hostname").await,
        "the host's /etc is out of reach",
    );
    assert!(
        matches!(&err, ProtoError::Remote { code, .. } if code == "not_found"),
        "{err:?}"
    );
    write(&h, "/../../escaped", b"x").await.unwrap();
    assert!(root.join("escaped").exists() && !dir.join("escaped").exists());
    write(&h, "/up/through-link", b"x").await.unwrap();
    assert!(!dir.join("outside-sibling/through-link").exists());
    assert!(root.join("outside-sibling/through-link").exists());
    let err = refused(
        agent::file_op(
            conn(&h),
            FileOp::Stat {
                path: "/proc/self/root/etc".into(),
            },
        )
        .await,
        "no /proc inside the directory",
    );
    assert!(matches!(err, ProtoError::Remote { .. }), "{err:?}");
    // A cwd outside is refused the same way.
    let err = refused(
        agent::exec(conn(&h), spec(&["true"], "/workspace/etc"), None).await,
        "bad cwd",
    );
    assert!(
        matches!(&err, ProtoError::Remote { code, .. } if code == "bad_cwd"),
        "{err:?}"
    );

    // Listings and search name paths as the sandbox sees them.
    match agent::file_op(
        conn(&h),
        FileOp::List {
            path: "/workspace".into(),
            depth: 1,
            limit: 100,
        },
    )
    .await
    .unwrap()
    {
        FileOpResult::List { entries, .. } => {
            let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
            assert_eq!(names, ["/workspace/a.txt", "/workspace/etc"]);
        }
        other => panic!("{other:?}"),
    }
    let (matches, _, _) = agent::search_files(
        conn(&h),
        SearchSpec {
            path: "/".into(),
            pattern: Some("hel+o".into()),
            glob: None,
            hidden: false,
            max_results: 10,
            max_file_bytes: 1 << 20,
            timeout_ms: 5000,
        },
    )
    .await
    .unwrap();
    assert_eq!(matches.len(), 1);
    assert_eq!(matches[0].path, "/workspace/a.txt");

    drop(h);
}

#[tokio::test]
async fn dropping_the_agent_kills_its_commands() {
    let tmp = common::TempDir::new("hosted-kill");
    let dir = tmp.0.clone();
    let h = Hosted::start(&dir, HostedOptions::default()).unwrap();
    let events = agent::exec(conn(&h), spec(&["sleep", "1000"], "/"), None)
        .await
        .unwrap();
    let pid = events.pid();
    // Only this agent's children are waited for: an unrelated child of this process keeps
    // its status for its own parent.
    let mut other = std::process::Command::new("true").spawn().unwrap();
    let started = Instant::now();
    drop(h);
    // Killed and reaped by the time the drop returns: no process, no zombie.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "command {pid} survived its agent"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
    // The connection ended without an exit.
    let rest: Vec<_> = events.collect().await;
    assert!(
        rest.iter()
            .all(|e| !matches!(e, Ok(ExecEvent::Exit { .. }))),
        "{rest:?}"
    );
    assert!(other.wait().unwrap().success());
}

#[tokio::test]
async fn commands_and_ports_are_those_given() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let tmp = common::TempDir::new("hosted-given");
    let dir = tmp.0.clone();
    let programs = dir.join("bin");
    std::fs::create_dir_all(&programs).unwrap();
    std::fs::create_dir_all(dir.join("root")).unwrap();
    // Shadows the host's `echo`.
    std::fs::write(
        programs.join("echo"),
        "#!/bin/sh\nprintf 'given %s\\n' \"$*\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        programs.join("echo"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        s.write_all(&buf).await.unwrap();
    });
    let h = Hosted::start(
        &dir.join("root"),
        HostedOptions {
            programs: Some(programs),
            ports: [(7, addr)].into(),
        },
    )
    .unwrap();
    let (out, code) = run(&h, spec(&["echo", "a", "b"], "/")).await;
    assert_eq!((out.as_str(), code), ("given a b\n", 0));
    // Not in the directory: the host's, through PATH.
    let (out, _) = run(&h, spec(&["printf", "x"], "/")).await;
    assert_eq!(out, "x");

    let mut tcp = agent::connect(conn(&h), 7).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"ping");
    // The host's own ports are not the sandbox's.
    let err = refused(agent::connect(conn(&h), addr.port()).await, "unmapped port");
    assert!(
        matches!(&err, ProtoError::Remote { code, .. } if code == "connection_refused"),
        "{err:?}"
    );
    drop(h);
}

#[tokio::test]
async fn metadata_stays_in_the_directory() {
    let tmp = common::TempDir::new("hosted-meta");
    let dir = tmp.0.clone();
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    // The same name outside and inside; a link to the outside one, and one whose parent
    // points up.
    std::fs::write(dir.join("f"), b"outside").unwrap();
    std::fs::write(root.join("f"), b"inside").unwrap();
    std::os::unix::fs::symlink(dir.join("f"), root.join("abs")).unwrap();
    std::os::unix::fs::symlink("../..", root.join("up")).unwrap();
    let h = Hosted::start(&root, HostedOptions::default()).unwrap();
    let set = |path: &str| FileOp::SetMetadata {
        path: path.into(),
        metadata: [("k".to_string(), path.to_string())].into(),
    };
    let xattr = |p: &Path| {
        let mut buf = [0u8; 256];
        rustix::fs::lgetxattr(p, "user.warren.k", &mut buf[..])
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    match agent::file_op(conn(&h), set("/f")).await {
        Err(ProtoError::Remote { code, message }) if code == "not_supported" => {
            eprintln!(
                "SKIPPED: no user extended attributes in {}: {message}",
                dir.display()
            );
            return;
        }
        r => assert!(r.is_ok(), "{r:?}"),
    }
    for path in ["/../../f", "/up/f", "/up/../up/f"] {
        match agent::file_op(conn(&h), set(path)).await.unwrap() {
            FileOpResult::Stat(st) => {
                assert_eq!(st.path, path);
                assert_eq!(st.metadata.get("k").map(String::as_str), Some(path));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(xattr(&root.join("f")).as_deref(), Some(path));
    }
    // A symlink is refused, not followed (not even inside).
    let err = refused(agent::file_op(conn(&h), set("/abs")).await, "a symlink");
    assert!(
        matches!(&err, ProtoError::Remote { code, .. } if code == "invalid_request"),
        "{err:?}"
    );
    assert_eq!(xattr(&dir.join("f")), None, "the outside file was touched");
    drop(h);
}
