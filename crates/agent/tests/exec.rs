//! Integration tests: each test runs its own agent process (the test-only
//! `warren-agent-test` binary) on a unique socket and talks to it with `warren_proto::host`.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Agent;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_proto::host::{self, ExecEvent};
use warren_proto::{ExecSpec, ProtoError, PROTOCOL_VERSION};

impl Agent {
    fn start() -> Agent {
        Agent::start_in(common::unique_dir("warren-agent-test"), &[])
    }

    async fn exec(
        &self,
        spec: ExecSpec,
        stdin: Option<Bytes>,
    ) -> Result<host::ExecEvents, ProtoError> {
        host::exec(self.connect().await, spec, stdin).await
    }

    /// Runs to completion and collects everything.
    async fn run(&self, spec: ExecSpec, stdin: Option<Bytes>) -> Output {
        let mut events = self.exec(spec, stdin).await.unwrap();
        let pid = events.pid();
        let mut out = Output {
            pid,
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit: None,
        };
        while let Some(ev) = events.next().await {
            match ev.unwrap() {
                ExecEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
                ExecEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
                ExecEvent::Exit {
                    exit_code,
                    signal,
                    timed_out,
                    duration_us,
                } => {
                    assert!(out.exit.is_none());
                    out.exit = Some((exit_code, signal, timed_out, duration_us));
                }
                ExecEvent::Started { .. } => panic!("unexpected Started"),
            }
        }
        assert!(out.exit.is_some(), "no exit event");
        out
    }
}

#[derive(Debug)]
struct Output {
    pid: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// (exit_code, signal, timed_out, duration_us)
    exit: Option<(i32, Option<i32>, bool, u64)>,
}

impl Output {
    fn code(&self) -> i32 {
        self.exit.map_or(-1, |e| e.0)
    }
}

fn spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        timeout_ms: None,
        stdin: false,
    }
}

fn sh(script: &str) -> ExecSpec {
    spec(&["sh", "-c", script])
}

/// Whether any process is still in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

async fn wait_group_gone(pgid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_alive(pgid) {
        assert!(
            Instant::now() < deadline,
            "process group {pgid} survived: {:?}",
            procs()
                .into_iter()
                .filter(|p| p.pgrp == pgid)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug)]
#[allow(dead_code)]
struct Proc {
    pid: i32,
    state: char,
    ppid: i32,
    pgrp: i32,
    session: i32,
}

fn parse_stat(pid: i32, stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split(' ');
    Some(Proc {
        pid,
        state: f.next()?.chars().next()?,
        ppid: f.next()?.parse().ok()?,
        pgrp: f.next()?.parse().ok()?,
        session: f.next()?.parse().ok()?,
    })
}

fn procs() -> Vec<Proc> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            if let Some(p) = parse_stat(pid, &stat) {
                v.push(p);
            }
        }
    }
    v
}

fn remote_code(err: ProtoError) -> String {
    match err {
        ProtoError::Remote { code, .. } => code,
        other => panic!("expected a remote error, got {other}"),
    }
}

#[tokio::test]
async fn ping() {
    let agent = Agent::start();
    let (protocol, version) = host::ping(agent.connect().await).await.unwrap();
    assert_eq!(protocol, PROTOCOL_VERSION);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn exit_codes_and_output() {
    let agent = Agent::start();
    let out = agent.run(spec(&["true"]), None).await;
    assert_eq!(out.exit.map(|e| (e.0, e.1, e.2)), Some((0, None, false)));
    let out = agent.run(sh("echo out; echo err >&2; exit 3"), None).await;
    assert_eq!(out.code(), 3);
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    let out = agent.run(spec(&["false"]), None).await;
    assert_eq!(out.code(), 1);
}

#[tokio::test]
async fn signal_death() {
    let agent = Agent::start();
    let out = agent.run(sh("kill -9 $$"), None).await;
    assert_eq!(
        out.exit.unwrap(),
        (137, Some(9), false, out.exit.unwrap().3)
    );
    let out = agent.run(sh("kill -TERM $$"), None).await;
    assert_eq!((out.code(), out.exit.unwrap().1), (143, Some(15)));
}

fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[tokio::test]
async fn stdin_round_trip() {
    let agent = Agent::start();
    let input = pseudo_random(3 << 20);
    let out = agent
        .run(spec(&["cat"]), Some(Bytes::from(input.clone())))
        .await;
    assert_eq!(out.code(), 0);
    assert!(out.stdout == input, "cat output differs");

    // Lots of output before the command reads its stdin must not deadlock.
    let input = pseudo_random(2 << 20);
    let out = agent
        .run(
            sh("head -c 4000000 /dev/zero; cat"),
            Some(Bytes::from(input.clone())),
        )
        .await;
    assert_eq!(out.code(), 0);
    assert_eq!(out.stdout.len(), 4_000_000 + input.len());
    assert!(out.stdout[4_000_000..] == input[..]);
    assert!(out.stdout[..4_000_000].iter().all(|&b| b == 0));

    // Stdin reaches a command while it (well, its background job) floods stderr.
    let out = agent
        .run(
            sh("yes >&2 & read line; kill $!; echo got $line"),
            Some(Bytes::from_static(b"hello\n")),
        )
        .await;
    assert_eq!((out.code(), &out.stdout[..]), (0, &b"got hello\n"[..]));

    // Empty stdin.
    let out = agent.run(spec(&["cat"]), Some(Bytes::new())).await;
    assert_eq!((out.code(), out.stdout.len()), (0, 0));
}

#[tokio::test]
async fn stdin_ignored_or_absent() {
    let agent = Agent::start();
    // No stdin: /dev/null, cat ends at once.
    let out = agent.run(spec(&["cat"]), None).await;
    assert_eq!((out.code(), out.stdout.len()), (0, 0));
    // A command that never reads its stdin and exits: the rest of stdin is discarded.
    let out = agent
        .run(spec(&["true"]), Some(Bytes::from(vec![7u8; 5 << 20])))
        .await;
    assert_eq!(out.code(), 0);
    // One that closes it early.
    let out = agent
        .run(
            sh("exec 0<&-; echo done"),
            Some(Bytes::from(vec![7u8; 5 << 20])),
        )
        .await;
    assert_eq!((out.code(), &out.stdout[..]), (0, &b"done\n"[..]));
}

#[tokio::test]
async fn env_and_cwd_exactly() {
    let agent = Agent::start();
    let mut s = spec(&["env"]);
    s.env.push(("A".into(), "b c".into()));
    s.env.push(("EMPTY".into(), String::new()));
    let out = agent.run(s.clone(), None).await;
    assert_eq!(out.code(), 0);
    let got: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let want: BTreeSet<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(got, want);

    let dir = agent.dir.join("work dir");
    std::fs::create_dir(&dir).unwrap();
    let mut s = spec(&["pwd"]);
    s.cwd = dir.to_string_lossy().into_owned();
    let out = agent.run(s, None).await;
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}\n", dir.display())
    );

    // PATH comes from spec.env: a script in a private dir is found, one outside is not.
    let bin = agent.dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let script = bin.join("hello-warren");
    std::fs::write(&script, "#!/bin/sh\necho hi from $0\n").unwrap();
    let mode: std::fs::Permissions = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&script, mode.clone()).unwrap();
    let mut s = spec(&["hello-warren"]);
    s.env = vec![("PATH".into(), format!("/nonexistent:{}", bin.display()))];
    let out = agent.run(s, None).await;
    assert_eq!(out.code(), 0);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("hi from {}\n", script.display())
    );
    // Like execvp: an executable without a `#!` line runs as a /bin/sh script.
    let plain = bin.join("no-shebang");
    std::fs::write(&plain, "echo plain $# \"$1\"\n").unwrap();
    std::fs::set_permissions(&plain, mode).unwrap();
    let out = agent
        .run(spec(&[plain.to_str().unwrap(), "x y", "z"]), None)
        .await;
    assert_eq!(out.code(), 0);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "plain 2 x y\n");
    let mut s = spec(&["sh"]);
    s.env = vec![("PATH".into(), bin.display().to_string())];
    assert_eq!(
        remote_code(agent.exec(s, None).await.unwrap_err()),
        "not_found"
    );
}

#[tokio::test]
async fn identity_and_process_state() {
    let agent = Agent::start();
    // The agent runs protected from the OOM killer; its commands must not be. (Lowering the
    // agent's score needs CAP_SYS_RESOURCE, which a container may lack: then the check below
    // is weaker but still holds.)
    let protected = std::fs::write(format!("/proc/{}/oom_score_adj", agent.pid()), "-500").is_ok();
    eprintln!("agent oom_score_adj lowered: {protected}");
    // Raising needs no capability: then the agent's score still tells whether a command's reset
    // leaked into the agent (commands start from a child that shares the agent's memory).
    let agent_score = if protected { "-500\n" } else { "500\n" };
    std::fs::write(
        format!("/proc/{}/oom_score_adj", agent.pid()),
        agent_score.trim(),
    )
    .unwrap();

    let mut s = sh("id -u; id -g; id -G");
    s.uid = 65534;
    s.gid = 65534;
    let out = agent.run(s, None).await;
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "65534\n65534\n65534\n"
    );

    let out = agent
        .run(spec(&["cat", "/proc/self/oom_score_adj"]), None)
        .await;
    assert_eq!(out.stdout, b"0\n");
    // ... and only theirs: the agent keeps its score.
    let now = std::fs::read_to_string(format!("/proc/{}/oom_score_adj", agent.pid())).unwrap();
    assert_eq!(now, agent_score);

    // Own session and process group; no ignored or blocked signals.
    let out = agent.run(spec(&["cat", "/proc/self/stat"]), None).await;
    let p = parse_stat(out.pid, std::str::from_utf8(&out.stdout).unwrap()).unwrap();
    assert_eq!((p.pgrp, p.session), (out.pid, out.pid));
    assert_eq!(p.ppid, agent.pid());
    let out = agent.run(spec(&["cat", "/proc/self/status"]), None).await;
    let status = String::from_utf8(out.stdout).unwrap();
    for field in ["SigIgn", "SigBlk"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap()
            .to_owned();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    // The agent's listener is not inherited: only 0, 1, 2 (and ls's own dir fd).
    let out = agent.run(spec(&["ls", "/proc/self/fd"]), None).await;
    let fds: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "leaked fds");
}

#[tokio::test]
async fn spawn_errors() {
    let agent = Agent::start();
    let err = agent
        .exec(spec(&["definitely-not-a-command-xyz"]), None)
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), "not_found");
    let err = agent
        .exec(spec(&["/nonexistent/cmd"]), None)
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), "not_found");
    let mut s = spec(&["true"]);
    s.cwd = "/nonexistent-dir-xyz".into();
    assert_eq!(
        remote_code(agent.exec(s, None).await.unwrap_err()),
        "bad_cwd"
    );
    let mut s = spec(&["true"]);
    s.cwd = "/etc/passwd".into();
    assert_eq!(
        remote_code(agent.exec(s, None).await.unwrap_err()),
        "bad_cwd"
    );
    let err = agent.exec(spec(&[]), None).await.unwrap_err();
    assert_eq!(remote_code(err), "spawn_failed");
    // Not executable.
    let err = agent.exec(spec(&["/etc/passwd"]), None).await.unwrap_err();
    assert_eq!(remote_code(err), "spawn_failed");
    // The agent is still fine.
    assert_eq!(agent.run(spec(&["true"]), None).await.code(), 0);
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let agent = Agent::start();
    let mut s = sh("sleep 100 & sleep 100");
    s.timeout_ms = Some(300);
    let started = Instant::now();
    let out = agent.run(s, None).await;
    let (code, signal, timed_out, duration_us) = out.exit.unwrap();
    assert_eq!((code, signal, timed_out), (137, Some(9), true));
    assert!(duration_us >= 300_000, "{duration_us}");
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_group_gone(out.pid).await;
}

#[tokio::test]
async fn large_output_streams_intact() {
    let agent = Agent::start();
    const LEN: usize = 50_000_000;
    let mut events = agent
        .exec(sh(&format!("yes abcdefghij | head -c {LEN}")), None)
        .await
        .unwrap();
    let pattern = b"abcdefghij\n";
    let mut n = 0usize;
    let mut ok = true;
    let mut exit = None;
    while let Some(ev) = events.next().await {
        match ev.unwrap() {
            ExecEvent::Stdout(b) => {
                for &byte in b.iter() {
                    ok &= byte == pattern[n % pattern.len()];
                    n += 1;
                }
            }
            ExecEvent::Stderr(b) => panic!("stderr: {}", String::from_utf8_lossy(&b)),
            ExecEvent::Exit { exit_code, .. } => exit = Some(exit_code),
            ExecEvent::Started { .. } => panic!("unexpected Started"),
        }
    }
    assert_eq!(n, LEN);
    assert!(ok, "output corrupted");
    assert_eq!(exit, Some(0));
}

#[tokio::test]
async fn binary_output() {
    let agent = Agent::start();
    let data: Vec<u8> = (0..100).flat_map(|_| 0..=255u8).collect();
    let file = agent.dir.join("bytes");
    std::fs::write(&file, &data).unwrap();
    let out = agent
        .run(spec(&["cat", &file.to_string_lossy()]), None)
        .await;
    assert_eq!(out.code(), 0);
    assert!(out.stdout == data);
    // And to stderr.
    let out = agent
        .run(sh(&format!("cat '{}' >&2", file.display())), None)
        .await;
    assert!(out.stderr == data);
}

#[tokio::test]
async fn background_grandchild_does_not_hang() {
    let agent = Agent::start();
    let started = Instant::now();
    let out = agent
        .run(sh("echo before; sleep 100 & echo after"), None)
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.code(), 0);
    assert_eq!(out.stdout, b"before\nafter\n");
    // The sleep still runs in the command's group: clean it up.
    assert!(group_alive(out.pid));
    // SAFETY: kill of the test's own command group.
    unsafe { libc::kill(-out.pid, libc::SIGKILL) };
    wait_group_gone(out.pid).await;
}

#[tokio::test]
async fn disconnect_kills_the_command() {
    let agent = Agent::start();
    let mut events = agent
        .exec(sh("sleep 100 & echo ready; sleep 100"), None)
        .await
        .unwrap();
    let pid = events.pid();
    match events.next().await {
        Some(Ok(ExecEvent::Stdout(b))) => assert_eq!(&b[..], b"ready\n"),
        other => panic!("{other:?}"),
    }
    assert!(group_alive(pid));
    drop(events);
    wait_group_gone(pid).await;
    // Also with stdin still being sent.
    let events = agent
        .exec(
            spec(&["sleep", "100"]),
            Some(Bytes::from(vec![0u8; 1 << 20])),
        )
        .await
        .unwrap();
    let pid = events.pid();
    drop(events);
    wait_group_gone(pid).await;
}

#[tokio::test]
async fn orphans_are_reaped() {
    let agent = Agent::start();
    for _ in 0..5 {
        let out = agent.run(sh("sleep 0.1 & sleep 0.05 &"), None).await;
        assert_eq!(out.code(), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let zombies: Vec<Proc> = procs()
            .into_iter()
            .filter(|p| p.ppid == agent.pid() && p.state == 'Z')
            .collect();
        let children = procs()
            .into_iter()
            .filter(|p| p.ppid == agent.pid())
            .count();
        if zombies.is_empty() && children == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "unreaped: {zombies:?}, {children} children"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn concurrent_execs() {
    let agent = Agent::start();
    let runs = (0..32).map(|i| {
        let agent = &agent;
        async move {
            let out = agent
                .run(sh(&format!("sleep 0.05; echo {i}; exit {}", i % 7)), None)
                .await;
            assert_eq!(out.code(), i % 7);
            assert_eq!(out.stdout, format!("{i}\n").into_bytes());
        }
    });
    futures::future::join_all(runs).await;
}

#[tokio::test]
async fn bad_frames_close_only_that_connection() {
    let agent = Agent::start();
    for garbage in [
        &[0u8, 0, 0, 1, 99][..],                // unknown tag
        &[0xff, 0xff, 0xff, 0xff][..],          // too large
        &[0, 0, 0, 0][..],                      // empty
        &[0, 0, 0, 4, 1, b'{', b'x', b'}'][..], // bad JSON
        &[0, 0, 0, 4, 3, b'a', b'b', b'c'][..], // stdout frame as request
    ] {
        let mut conn = agent.connect().await;
        conn.write_all(garbage).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
            .await
            .expect("agent kept a bad connection open");
        assert!(read.is_err() || buf.is_empty(), "{buf:?}");
    }
    // Closing before any request.
    drop(agent.connect().await);
    assert!(host::ping(agent.connect().await).await.is_ok());
    assert_eq!(agent.run(spec(&["true"]), None).await.code(), 0);
}

#[tokio::test]
async fn exec_latency() {
    let agent = Agent::start();
    const N: u32 = 200;
    let mut in_agent = Duration::ZERO;
    let started = Instant::now();
    for _ in 0..N {
        let out = agent.run(spec(&["/bin/true"]), None).await;
        assert_eq!(out.code(), 0);
        in_agent += Duration::from_micros(out.exit.unwrap().3);
    }
    let total = started.elapsed() / N;
    eprintln!(
        "exec of /bin/true: {total:?} round trip, {:?} spawn-to-exit (mean of {N})",
        in_agent / N
    );
    assert!(total < Duration::from_millis(50));
}

#[tokio::test]
async fn sigterm_kills_commands_and_stops_the_agent() {
    let mut agent = Agent::start();
    let mut events = agent
        .exec(sh("sleep 100 & echo ready; sleep 100"), None)
        .await
        .unwrap();
    let pid = events.pid();
    assert!(matches!(
        events.next().await,
        Some(Ok(ExecEvent::Stdout(_)))
    ));
    // SAFETY: kill of the agent process this test started.
    unsafe { libc::kill(agent.pid(), libc::SIGTERM) };
    assert!(matches!(events.next().await, Some(Err(ProtoError::Closed))));
    wait_group_gone(pid).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "agent did not stop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn hostile_specs_do_not_hurt_the_agent() {
    let agent = Agent::start();
    for argv in [vec!["tr\0ue"], vec!["sh", "-c", "x\0y"], vec![""]] {
        assert!(agent.exec(spec(&argv), None).await.is_err(), "{argv:?}");
    }
    let mut s = spec(&["true"]);
    s.env.push(("A\0B".into(), "c".into()));
    assert!(agent.exec(s, None).await.is_err());
    let mut s = spec(&["true"]);
    s.cwd = "/tm\0p".into();
    assert_eq!(
        remote_code(agent.exec(s, None).await.unwrap_err()),
        "bad_cwd"
    );
    let mut s = spec(&["true"]);
    s.cwd = "tmp".into();
    assert_eq!(
        remote_code(agent.exec(s, None).await.unwrap_err()),
        "bad_cwd"
    );
    for timeout in [u64::MAX, 1 << 50] {
        let mut s = spec(&["true"]);
        s.timeout_ms = Some(timeout);
        assert_eq!(agent.run(s, None).await.code(), 0);
    }
    let mut s = spec(&["sleep", "10"]);
    s.timeout_ms = Some(0);
    let out = agent.run(s, None).await;
    assert!(out.exit.unwrap().2, "not timed out");
    // An exec request followed by a second request: the command is killed.
    let mut conn = agent.connect().await;
    let mut frames = encode_frames(&[
        warren_proto::Frame::Request(warren_proto::Request::Exec(spec(&["sleep", "100"]))),
        warren_proto::Frame::Request(warren_proto::Request::Ping),
    ]);
    conn.write_all(&frames).await.unwrap();
    frames.clear();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // Started was sent; its pid's group must be gone.
    let pid = started_pid(&buf);
    wait_group_gone(pid).await;
    assert_eq!(agent.run(spec(&["true"]), None).await.code(), 0);
}

fn encode_frames(frames: &[warren_proto::Frame]) -> Vec<u8> {
    use tokio_util::codec::Encoder;
    let mut buf = bytes::BytesMut::new();
    for f in frames {
        warren_proto::FrameCodec
            .encode(f.clone(), &mut buf)
            .unwrap();
    }
    buf.to_vec()
}

fn started_pid(buf: &[u8]) -> i32 {
    use tokio_util::codec::Decoder;
    let mut b = bytes::BytesMut::from(buf);
    match warren_proto::FrameCodec.decode(&mut b).unwrap() {
        Some(warren_proto::Frame::Event(warren_proto::Event::Started { pid })) => pid,
        other => panic!("{other:?}"),
    }
}
