//! Durable processes: each test runs its own agent process (the test-only `warren-agent-test`
//! binary) on a unique socket and talks to it with `warren_proto::host`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Agent;
use futures::StreamExt;
use warren_proto::host::{self, AttachItem};
use warren_proto::{
    ExecSpec, ProcessInfo, ProcessOp, ProcessSpec, ProcessState, ProtoError, PtySize,
};

impl Agent {
    fn start() -> Agent {
        Agent::start_in(common::unique_dir("warren-procs-test"), &[])
    }

    async fn start_proc(&self, spec: ProcessSpec) -> Result<ProcessInfo, ProtoError> {
        host::start_process(self.connect().await, spec).await
    }

    async fn op(&self, selector: &str, op: ProcessOp) -> Result<ProcessInfo, ProtoError> {
        host::process_op(self.connect().await, selector, op).await
    }

    async fn get(&self, selector: &str) -> ProcessInfo {
        self.op(selector, ProcessOp::Get).await.unwrap()
    }

    async fn list(&self) -> Vec<ProcessInfo> {
        host::list_processes(self.connect().await).await.unwrap()
    }

    async fn write(&self, selector: &str, data: &[u8]) -> Result<ProcessInfo, ProtoError> {
        let data =
            futures::stream::iter(vec![Ok::<_, std::io::Error>(Bytes::copy_from_slice(data))]);
        host::write_stdin(self.connect().await, selector, data).await
    }

    async fn attach(&self, selector: &str, offset: u64, follow: bool) -> host::AttachEvents {
        host::attach(self.connect().await, selector, offset, follow)
            .await
            .unwrap()
    }

    /// Waits until the process exited.
    async fn wait_exit(&self, selector: &str) -> ProcessInfo {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = self.get(selector).await;
            if info.state == ProcessState::Exited {
                return info;
            }
            assert!(Instant::now() < deadline, "{selector} did not exit");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the output contains `needle` (a fresh non-following attach each time).
    async fn wait_output(&self, selector: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = collect(self.attach(selector, 0, false).await).await;
            let text = String::from_utf8_lossy(&all.bytes()).into_owned();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{selector}: no {needle:?} in {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory of the agent in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// Everything an attachment yielded.
#[derive(Debug, Default)]
struct Attached {
    items: Vec<AttachItem>,
    ended: Option<ProcessInfo>,
}

impl Attached {
    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        for item in &self.items {
            if let AttachItem::Stdout(b) | AttachItem::Stderr(b) = item {
                v.extend_from_slice(b);
            }
        }
        v
    }

    fn stream(&self, stderr: bool) -> Vec<u8> {
        let mut v = Vec::new();
        for item in &self.items {
            match item {
                AttachItem::Stdout(b) if !stderr => v.extend_from_slice(b),
                AttachItem::Stderr(b) if stderr => v.extend_from_slice(b),
                _ => {}
            }
        }
        v
    }
}

async fn collect(mut events: host::AttachEvents) -> Attached {
    let mut out = Attached::default();
    let fut = async {
        while let Some(item) = events.next().await {
            match item.unwrap() {
                AttachItem::Ended(info) => out.ended = Some(info),
                other => out.items.push(other),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("attachment did not end");
    assert!(out.ended.is_some());
    out
}

fn exec(argv: &[&str]) -> ExecSpec {
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

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        exec: exec(&["sh", "-c", script]),
        ..Default::default()
    }
}

fn tagged(tag: &str, mut spec: ProcessSpec) -> ProcessSpec {
    spec.tag = Some(tag.into());
    spec
}

fn remote_code(err: ProtoError) -> String {
    match err {
        ProtoError::Remote { code, .. } => code,
        other => panic!("expected a remote error, got {other}"),
    }
}

fn group_alive(pgid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let r = unsafe { libc::kill(-pgid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

async fn wait_group_gone(pgid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while group_alive(pgid) {
        assert!(Instant::now() < deadline, "process group {pgid} survived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn start_list_get_and_exit() {
    let agent = Agent::start();
    let a = agent
        .start_proc(tagged("a", sh("echo out; echo err >&2; exit 7")))
        .await
        .unwrap();
    assert_eq!(a.tag.as_deref(), Some("a"));
    assert_eq!(a.argv, ["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert!(a.started_at_ms > 0);
    assert!(!a.stdin_open);
    let b = agent
        .start_proc(tagged("b", sh("sleep 100")))
        .await
        .unwrap();
    assert_eq!(b.state, ProcessState::Running);

    // Tags are unique among running processes.
    let err = agent.start_proc(tagged("b", sh("true"))).await.unwrap_err();
    assert_eq!(remote_code(err), "tag_in_use");

    let a_done = agent.wait_exit("a").await;
    assert_eq!(a_done.pid, a.pid);
    assert_eq!(a_done.exit_code, Some(7));
    assert_eq!(a_done.signal, None);
    assert!(a_done.ended_at_ms.unwrap() >= a.started_at_ms);
    assert_eq!(agent.get(&a.pid.to_string()).await.pid, a.pid);
    assert_eq!(agent.get("b").await.pid, b.pid);

    // Output of the exited process, both streams.
    let out = collect(agent.attach("a", 0, true).await).await;
    assert_eq!(out.stream(false), b"out\n");
    assert_eq!(out.stream(true), b"err\n");
    assert_eq!(out.ended.unwrap().exit_code, Some(7));

    // A signal death.
    let info = agent
        .op("b", ProcessOp::Signal { signal: 15 })
        .await
        .unwrap();
    assert_eq!(info.pid, b.pid);
    let b_done = agent.wait_exit("b").await;
    assert_eq!(b_done.exit_code, Some(128 + 15));
    assert_eq!(b_done.signal, Some(15));
    // An exited holder gives its tag up.
    let b2 = agent.start_proc(tagged("b", sh("true"))).await.unwrap();
    assert_eq!(agent.get("b").await.pid, b2.pid);

    // Errors.
    for (sel, op, code) in [
        ("nope", ProcessOp::Get, "process_not_found"),
        ("999999", ProcessOp::Get, "process_not_found"),
        ("a", ProcessOp::Signal { signal: 0 }, "invalid_signal"),
        ("a", ProcessOp::Signal { signal: 65 }, "invalid_signal"),
        ("a", ProcessOp::Resize { rows: 1, cols: 1 }, "not_a_pty"),
    ] {
        assert_eq!(remote_code(agent.op(sel, op).await.unwrap_err()), code);
    }
    assert_eq!(
        remote_code(agent.write("a", b"x").await.unwrap_err()),
        "stdin_closed"
    );
    let err = host::attach(agent.connect().await, "nope", 0, true)
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), "process_not_found");
    let err = agent
        .start_proc(ProcessSpec {
            exec: exec(&["no-such-command-warren"]),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(remote_code(err), "not_found");
}

#[tokio::test]
async fn list_processes() {
    let agent = Agent::start();
    let a = agent.start_proc(sh("exit 1")).await.unwrap();
    let b = agent.start_proc(sh("sleep 100")).await.unwrap();
    agent.wait_exit(&a.pid.to_string()).await;
    let all = agent.list().await;
    let pids: Vec<i32> = all.iter().map(|p| p.pid).collect();
    assert!(pids.contains(&a.pid) && pids.contains(&b.pid), "{all:?}");
}

#[tokio::test]
async fn timeout_kills_and_is_recorded() {
    let agent = Agent::start();
    let mut spec = sh("sleep 100 & sleep 100");
    spec.exec.timeout_ms = Some(100);
    let p = agent.start_proc(spec).await.unwrap();
    let done = agent.wait_exit(&p.pid.to_string()).await;
    assert!(done.timed_out);
    assert_eq!(done.exit_code, Some(137));
    wait_group_gone(p.pid).await;
}

/// Numbered lines on stdout and stderr, with small sleeps between.
const LINES: &str = "i=0; while [ $i -lt 60 ]; do echo out $i; echo err $i >&2; \
                     i=$((i+1)); sleep 0.01; done";

#[tokio::test]
async fn reattach_is_exactly_once() {
    let agent = Agent::start();
    let p = agent.start_proc(tagged("lines", sh(LINES))).await.unwrap();
    let mut got: Vec<AttachItem> = Vec::new();
    let mut offset = 0u64;
    let mut attaches = 0;
    let ended = loop {
        attaches += 1;
        let mut events = agent.attach("lines", offset, true).await;
        match events.next().await.unwrap().unwrap() {
            AttachItem::Attached { offset: at, end } => {
                assert_eq!(at, offset);
                assert!(end >= offset);
            }
            other => panic!("{other:?}"),
        }
        // Read a few chunks, then drop the attachment.
        let mut taken = 0;
        let mut ended = None;
        while taken < 3 {
            match events.next().await.unwrap().unwrap() {
                AttachItem::Stdout(b) | AttachItem::Stderr(b) if b.is_empty() => {
                    panic!("empty chunk")
                }
                item @ (AttachItem::Stdout(_) | AttachItem::Stderr(_)) => {
                    let (AttachItem::Stdout(b) | AttachItem::Stderr(b)) = &item else {
                        unreachable!()
                    };
                    offset += b.len() as u64;
                    got.push(item);
                    taken += 1;
                }
                AttachItem::Ended(info) => {
                    ended = Some(info);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(events);
        if let Some(info) = ended {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    };
    assert!(attaches > 3, "only {attaches} attachments");
    assert_eq!(ended.exit_code, Some(0));
    assert_eq!(ended.output_end, offset);
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for item in &got {
        match item {
            AttachItem::Stdout(b) => stdout.extend_from_slice(b),
            AttachItem::Stderr(b) => stderr.extend_from_slice(b),
            _ => {}
        }
    }
    let expect = |s: &str| -> Vec<u8> {
        (0..60)
            .map(|i| format!("{s} {i}\n"))
            .collect::<String>()
            .into_bytes()
    };
    assert_eq!(
        String::from_utf8(stdout).unwrap().into_bytes(),
        expect("out")
    );
    assert_eq!(
        String::from_utf8(stderr).unwrap().into_bytes(),
        expect("err")
    );
    // A full replay yields the same interleaving.
    let all = collect(agent.attach(&p.pid.to_string(), 0, true).await).await;
    assert_eq!(
        all.items[0],
        AttachItem::Attached {
            offset: 0,
            end: offset
        }
    );
    assert_eq!(coalesce(&all.items[1..]), coalesce(&got));
}

/// Joins adjacent chunks of the same stream (chunk boundaries are not part of the contract).
fn coalesce(items: &[AttachItem]) -> Vec<AttachItem> {
    let mut out: Vec<AttachItem> = Vec::new();
    for item in items {
        match (out.last_mut(), item) {
            (Some(AttachItem::Stdout(a)), AttachItem::Stdout(b))
            | (Some(AttachItem::Stderr(a)), AttachItem::Stderr(b)) => {
                *a = Bytes::from([&a[..], &b[..]].concat());
            }
            _ => out.push(item.clone()),
        }
    }
    out
}

#[tokio::test]
async fn output_is_captured_while_nobody_is_attached() {
    let agent = Agent::start();
    let p = agent
        .start_proc(sh("echo first; sleep 0.3; echo second; sleep 100"))
        .await
        .unwrap();
    let sel = p.pid.to_string();
    agent.wait_output(&sel, "second").await;
    let info = agent.get(&sel).await;
    assert_eq!(info.state, ProcessState::Running);
    assert_eq!((info.output_start, info.output_end), (0, 13));
    // Not following: ends when the log is drained, the process goes on.
    let out = collect(agent.attach(&sel, 6, false).await).await;
    assert_eq!(out.items[0], AttachItem::Attached { offset: 6, end: 13 });
    assert_eq!(out.bytes(), b"second\n");
    assert_eq!(out.ended.unwrap().state, ProcessState::Running);
    // An offset past the end starts at the end.
    let out = collect(agent.attach(&sel, 1000, false).await).await;
    assert_eq!(
        out.items,
        [AttachItem::Attached {
            offset: 13,
            end: 13
        }]
    );
    agent
        .op(&sel, ProcessOp::Signal { signal: 9 })
        .await
        .unwrap();
    wait_group_gone(p.pid).await;
}

#[tokio::test]
async fn bounded_log_reports_lost_output() {
    let agent = Agent::start();
    let before = agent.rss_kib();
    let mut spec = sh("head -c 8388608 /dev/zero | tr '\\0' x");
    spec.log_bytes = 1 << 20;
    let p = agent.start_proc(spec).await.unwrap();
    let sel = p.pid.to_string();
    let info = agent.wait_exit(&sel).await;
    assert_eq!(info.exit_code, Some(0));
    let mut info = agent.get(&sel).await;
    for _ in 0..100 {
        if info.output_end == 8 << 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        info = agent.get(&sel).await;
    }
    assert_eq!(info.output_end, 8 << 20);
    assert!(info.output_start > 7 << 20, "{info:?}");
    let out = collect(agent.attach(&sel, 0, true).await).await;
    assert_eq!(
        out.items[0],
        AttachItem::Attached {
            offset: info.output_start,
            end: 8 << 20
        }
    );
    assert_eq!(
        out.items[1],
        AttachItem::Lost {
            from: 0,
            to: info.output_start
        }
    );
    let rest = out.bytes();
    assert_eq!(rest.len() as u64, (8 << 20) - info.output_start);
    assert!(rest.iter().all(|&b| b == b'x'));
    let after = agent.rss_kib();
    assert!(
        after < before + 16 * 1024,
        "agent RSS {before} -> {after} KiB"
    );
}

#[tokio::test]
async fn slow_attacher_is_told_what_it_lost() {
    let agent = Agent::start();
    // Numbered 8-byte records, far more than the log holds.
    let mut spec = sh("seq 10000000 19999999");
    spec.log_bytes = 64 << 10;
    let p = agent.start_proc(spec).await.unwrap();
    let sel = p.pid.to_string();
    let mut events = agent.attach(&sel, 0, true).await;
    let mut next = 0u64;
    let mut lost = 0;
    let mut data = Vec::new();
    loop {
        match events.next().await.unwrap().unwrap() {
            AttachItem::Attached { offset, .. } => next = offset,
            // Right after `Attached`, a `Lost` may cover what went before the attach offset
            // (from the offset asked for, 0, to where output starts): the log can have
            // dropped its start before the attach under load.
            AttachItem::Lost { from, to } if from < next => {
                assert_eq!((from, to), (0, next));
                lost += 1;
            }
            AttachItem::Lost { from, to } => {
                assert_eq!(from, next);
                assert!(to > from);
                next = to;
                lost += 1;
                // Resynchronise on a line boundary.
                data.clear();
            }
            AttachItem::Stdout(b) => {
                next += b.len() as u64;
                data.extend_from_slice(&b);
                if data.len() > 1 << 20 {
                    data.drain(..data.len() - 64);
                }
                // Slow consumer.
                if lost < 3 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            AttachItem::Stderr(_) => panic!("stderr"),
            AttachItem::Ended(info) => {
                assert_eq!(info.output_end, next);
                assert_eq!(info.output_end, 9 * 10_000_000);
                break;
            }
        }
    }
    assert!(lost > 0);
    assert!(data.ends_with(b"19999998\n19999999\n"));
}

#[tokio::test]
async fn signals_reach_the_whole_group() {
    let agent = Agent::start();
    // A non-interactive shell starts background jobs with SIGINT ignored (POSIX), so SIGINT
    // is tried on a foreground pipeline instead.
    for (sig, script) in [
        (libc::SIGTERM, "sleep 100 & sleep 100"),
        (libc::SIGINT, "sleep 100 | sleep 100; sleep 100"),
        (libc::SIGKILL, "sleep 100 & sleep 100"),
    ] {
        let p = agent.start_proc(sh(script)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(group_alive(p.pid));
        agent
            .op(&p.pid.to_string(), ProcessOp::Signal { signal: sig })
            .await
            .unwrap();
        wait_group_gone(p.pid).await;
        let done = agent.wait_exit(&p.pid.to_string()).await;
        assert_eq!(done.signal, Some(sig));
    }
}

#[tokio::test]
async fn stdin_round_trip_and_close() {
    let agent = Agent::start();
    let mut spec = ProcessSpec {
        exec: exec(&["cat"]),
        tag: Some("cat".into()),
        ..Default::default()
    };
    spec.exec.stdin = true;
    let p = agent.start_proc(spec).await.unwrap();
    assert!(p.stdin_open);
    let info = agent.write("cat", b"hello ").await.unwrap();
    assert!(info.stdin_open);
    // A stream of several chunks, sent as they come.
    let chunks = futures::stream::iter(
        (0..100).map(|i| Ok::<_, std::io::Error>(Bytes::from(format!("{i},")))),
    );
    host::write_stdin(agent.connect().await, "cat", chunks)
        .await
        .unwrap();
    // More than a pipe buffer: backpressure, no loss.
    let big = vec![b'z'; 1 << 20];
    agent.write("cat", &big).await.unwrap();
    let expected: Vec<u8> = [
        &b"hello "[..],
        (0..100)
            .map(|i| format!("{i},"))
            .collect::<String>()
            .as_bytes(),
        &big,
    ]
    .concat();
    let closed = agent.op("cat", ProcessOp::CloseStdin).await.unwrap();
    assert!(!closed.stdin_open);
    let done = agent.wait_exit("cat").await;
    assert_eq!(done.exit_code, Some(0));
    let out = collect(agent.attach("cat", 0, true).await).await;
    assert!(out.bytes() == expected);
    assert_eq!(
        remote_code(agent.write("cat", b"x").await.unwrap_err()),
        "stdin_closed"
    );
}

#[tokio::test]
async fn large_output_keeps_the_agent_small() {
    let agent = Agent::start();
    let before = agent.rss_kib();
    let p = agent
        .start_proc(sh("head -c 209715200 /dev/zero"))
        .await
        .unwrap();
    let sel = p.pid.to_string();
    // Follow it all, counting.
    let mut events = agent.attach(&sel, 0, true).await;
    let mut total = 0u64;
    let mut lost = 0u64;
    while let Some(item) = events.next().await {
        match item.unwrap() {
            AttachItem::Stdout(b) => total += b.len() as u64,
            AttachItem::Lost { from, to } => lost += to - from,
            AttachItem::Ended(info) => {
                assert_eq!(info.output_end, 200 << 20);
                assert_eq!(info.exit_code, Some(0));
            }
            _ => {}
        }
    }
    assert_eq!(total + lost, 200 << 20);
    let after = agent.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "agent RSS {before} -> {after} KiB"
    );
}

fn pty_spec(argv: &[&str], rows: u16, cols: u16) -> ProcessSpec {
    ProcessSpec {
        exec: exec(argv),
        pty: Some(PtySize { rows, cols }),
        ..Default::default()
    }
}

#[tokio::test]
async fn pty_size_and_resize() {
    let agent = Agent::start();
    let p = agent
        .start_proc(pty_spec(
            &["sh", "-c", "stty size; read x; stty size; echo TERM=$TERM"],
            33,
            101,
        ))
        .await
        .unwrap();
    assert_eq!(
        p.pty,
        Some(PtySize {
            rows: 33,
            cols: 101
        })
    );
    assert!(p.stdin_open);
    let sel = p.pid.to_string();
    agent.wait_output(&sel, "33 101").await;
    let info = agent
        .op(
            &sel,
            ProcessOp::Resize {
                rows: 40,
                cols: 120,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        info.pty,
        Some(PtySize {
            rows: 40,
            cols: 120
        })
    );
    agent.write(&sel, b"\n").await.unwrap();
    let done = agent.wait_exit(&sel).await;
    assert_eq!(done.exit_code, Some(0));
    let out = collect(agent.attach(&sel, 0, true).await).await;
    let text = String::from_utf8(out.bytes()).unwrap();
    assert!(text.contains("33 101\r\n"), "{text:?}");
    assert!(text.contains("40 120\r\n"), "{text:?}");
    assert!(text.contains("TERM=xterm-256color"), "{text:?}");
    assert!(out.stream(true).is_empty());
}

#[tokio::test]
async fn pty_shell_exit_code_and_ctrl_c() {
    let agent = Agent::start();
    // `exit 3` typed into a shell.
    let p = agent.start_proc(pty_spec(&["sh"], 24, 80)).await.unwrap();
    let sel = p.pid.to_string();
    agent.write(&sel, b"exit 3\n").await.unwrap();
    assert_eq!(agent.wait_exit(&sel).await.exit_code, Some(3));

    // Ctrl-C interrupts the foreground job of an interactive shell; the shell survives.
    let p = agent
        .start_proc(pty_spec(&["sh", "-i"], 24, 80))
        .await
        .unwrap();
    let sel = p.pid.to_string();
    agent.write(&sel, b"sleep 101\n").await.unwrap();
    // Wait until the sleep runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cmdlines: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok())
            .collect();
        if cmdlines.iter().any(|c| c == "sleep\x00101\x00") {
            break;
        }
        assert!(Instant::now() < deadline, "sleep did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    agent.write(&sel, b"\x03").await.unwrap();
    agent.write(&sel, b"echo after-$?\n").await.unwrap();
    agent.wait_output(&sel, "after-130").await;
    assert_eq!(agent.get(&sel).await.state, ProcessState::Running);
    agent.write(&sel, b"exit 5\n").await.unwrap();
    assert_eq!(agent.wait_exit(&sel).await.exit_code, Some(5));

    // CloseStdin on a pty is ^D: the shell exits.
    let p = agent.start_proc(pty_spec(&["sh"], 24, 80)).await.unwrap();
    let sel = p.pid.to_string();
    agent.op(&sel, ProcessOp::CloseStdin).await.unwrap();
    assert_eq!(agent.wait_exit(&sel).await.exit_code, Some(0));
}

#[tokio::test]
async fn sigterm_kills_durable_processes() {
    let mut agent = Agent::start();
    let p = agent.start_proc(sh("sleep 100 & sleep 100")).await.unwrap();
    // SAFETY: kill on our own child process.
    unsafe { libc::kill(agent.pid(), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "agent did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_group_gone(p.pid).await;
}

#[tokio::test]
async fn background_child_does_not_hold_the_attachment() {
    let agent = Agent::start();
    let p = agent
        .start_proc(sh("sleep 100 & echo hi; exit 4"))
        .await
        .unwrap();
    let sel = p.pid.to_string();
    // Two attachments at once get the same output and both end soon after the exit, although
    // the background sleep keeps the pipes open.
    let started = Instant::now();
    let (a, b) = tokio::join!(
        async { collect(agent.attach(&sel, 0, true).await).await },
        async { collect(agent.attach(&sel, 0, true).await).await },
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    for out in [a, b] {
        assert_eq!(out.bytes(), b"hi\n");
        assert_eq!(out.ended.unwrap().exit_code, Some(4));
    }
    agent.op(&sel, ProcessOp::Get).await.unwrap();
    // The leader is gone, so the group is no longer signalled through the agent; clean up.
    // SAFETY: kill with a negative pid signals the (test-owned) process group.
    unsafe { libc::kill(-p.pid, libc::SIGKILL) };
    wait_group_gone(p.pid).await;
}
