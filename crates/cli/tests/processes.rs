//! Durable processes and terminals on the real kernel, through the HTTP API.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use warren_api::{CreateProcessRequest, ProcessState, PtySize};
use warren_client::{OutputEvent, PtyEvent};

fn proc_req(cmd: &[&str]) -> CreateProcessRequest {
    CreateProcessRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Collect output events until `Exit`, starting at `offset`; returns (bytes, lost, exit).
async fn drain(
    c: &warren_client::Client,
    id: &str,
    pid: &str,
    offset: u64,
) -> (Vec<u8>, u64, warren_api::Process) {
    let mut out = Vec::new();
    let mut lost = 0;
    let mut stream = c.output(id, pid, offset);
    while let Some(ev) = stream.next().await {
        match ev.unwrap() {
            OutputEvent::Stdout { data, .. } | OutputEvent::Stderr { data, .. } => {
                out.extend_from_slice(&data)
            }
            OutputEvent::Lost { from, to } => lost += to - from,
            OutputEvent::Exit(p) => return (out, lost, p),
        }
    }
    panic!("output ended without an exit event");
}

#[test]
fn reattach_after_a_dropped_connection_loses_and_duplicates_nothing() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let mut r = proc_req(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 300 ]; do echo out $i; echo err $i >&2; i=$((i+1)); sleep 0.005; done",
        ]);
        r.tag = Some("counter".into());
        let p = c.start_process(&sb.id, &r).await.unwrap();
        assert_eq!(p.state, ProcessState::Running);
        // Read a little, then drop the connection mid-stream.
        let mut got = Vec::new();
        let mut offset = 0;
        {
            let mut stream = c.output(&sb.id, "counter", 0);
            while got.len() < 500 {
                match stream.next().await.unwrap().unwrap() {
                    OutputEvent::Stdout { offset: o, data } | OutputEvent::Stderr { offset: o, data } => {
                        assert_eq!(o, offset, "gap or overlap");
                        offset += data.len() as u64;
                        got.extend_from_slice(&data);
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        // Reattach from the counted offset: the rest, exactly once.
        let (rest, lost, exit) = drain(c, &sb.id, &p.pid.to_string(), offset).await;
        assert_eq!(lost, 0);
        assert_eq!(exit.exit_code, Some(0));
        got.extend_from_slice(&rest);
        // A full replay from 0 is byte-identical.
        let (all, lost, _) = drain(c, &sb.id, "counter", 0).await;
        assert_eq!(lost, 0);
        assert_eq!(got, all);
        let text = String::from_utf8(all).unwrap();
        for i in 0..300 {
            assert!(text.contains(&format!("out {i}\n")) && text.contains(&format!("err {i}\n")), "line {i} missing");
        }
        assert_eq!(text.lines().count(), 600);
        // It is listed, by pid and tag.
        let listed = c.list_processes(&sb.id).await.unwrap();
        assert!(listed.iter().any(|q| q.pid == p.pid && q.tag.as_deref() == Some("counter")));
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn output_is_kept_while_nobody_is_attached_and_the_log_is_bounded() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        // 200 MB of output into a 1 MiB log, with nobody attached.
        let mut r = proc_req(&["sh", "-c", "head -c 200000000 /dev/zero; echo done"]);
        r.log_bytes = Some(1 << 20);
        let p = c.start_process(&sb.id, &r).await.unwrap();
        let pid = p.pid.to_string();
        let done = c.process(&sb.id, &pid).wait().await.unwrap();
        assert_eq!(done.exit_code, Some(0));
        assert_eq!(done.output_end, 200_000_005);
        assert!(done.output_end - done.output_start <= 1 << 20);
        // Attaching from 0 says exactly how much was lost, then gives the retained tail.
        let (tail, lost, _) = drain(c, &sb.id, &pid, 0).await;
        assert_eq!(lost, done.output_start);
        assert_eq!(tail.len() as u64, done.output_end - done.output_start);
        assert!(tail.ends_with(b"done\n"));
        // The agent's memory stayed bounded (RSS of PID 1 inside the sandbox; gVisor's
        // /proc has no peak, only the current RSS).
        let r = run_sh(c, &sb.id, "grep -m1 -E 'VmHWM|VmRSS' /proc/1/status").await;
        let kib: u64 = r.stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
        // gVisor counts the pages of the agent's binary it has mapped (about 80 MiB of a
        // debug build): still far below the 200 MB that went through.
        let bound = if common::on_gvisor() { 160 } else { 64 };
        assert!(kib < bound * 1024, "agent peak RSS {kib} KiB");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn two_hundred_megabytes_stream_through_the_daemon_with_bounded_memory() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let mut r = proc_req(&["sh", "-c", "head -c 200000000 /dev/zero; echo done"]);
        r.log_bytes = Some(4 << 20);
        let p = c.start_process(&sb.id, &r).await.unwrap();
        // Follow the output over HTTP while it is produced: every byte is either received or
        // reported lost (if the client fell behind the bounded log), never silently skipped.
        let mut stream = c.output(&sb.id, &p.pid.to_string(), 0);
        let (mut received, mut lost, mut next) = (0u64, 0u64, 0u64);
        let mut exit = None;
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                OutputEvent::Stdout { offset, data } | OutputEvent::Stderr { offset, data } => {
                    assert_eq!(offset, next, "gap without a lost marker");
                    next += data.len() as u64;
                    received += data.len() as u64;
                }
                OutputEvent::Lost { from, to } => {
                    assert_eq!(from, next);
                    lost += to - from;
                    next = to;
                }
                OutputEvent::Exit(p) => {
                    exit = Some(p);
                    break;
                }
            }
        }
        let exit = exit.unwrap();
        assert_eq!(exit.output_end, 200_000_005);
        assert_eq!(received + lost, 200_000_005);
        assert!(received > 0);
        let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        let hwm_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(hwm_kib < 128 * 1024, "daemon peak RSS {hwm_kib} KiB");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn signals_kill_the_whole_group_and_stdin_works() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        // A non-interactive shell's background jobs ignore SIGINT (POSIX), so INT is tested
        // on a foreground job and TERM/KILL on a group with background members.
        for (sig, script) in [
            ("TERM", "sleep 100 & sleep 100 & wait"),
            ("INT", "sleep 100; echo never"),
            ("KILL", "sleep 100 & sleep 100 & wait"),
        ] {
            let p = c
                .start_process(&sb.id, &proc_req(&["sh", "-c", script]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.signal_process(&sb.id, &p.pid.to_string(), sig)
                .await
                .unwrap();
            let done = c.process(&sb.id, &p.pid.to_string()).wait().await.unwrap();
            assert_eq!(done.state, ProcessState::Exited, "{sig}");
            // Nothing of that group is left (members that died a moment ago may still wait
            // to be reaped by PID 1, so poll briefly).
            let mut state = String::new();
            for _ in 0..100 {
                let r = run_sh(
                    c,
                    &sb.id,
                    &format!("kill -0 -{} 2>/dev/null && echo alive || echo gone", p.pid),
                )
                .await;
                state = r.stdout;
                if state == "gone\n" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                state,
                "gone\n",
                "{sig}: {}",
                run_sh(c, &sb.id, "ps -eo pid,pgid,stat,comm").await.stdout
            );
        }
        // stdin: feed cat, close, read back.
        let mut r = proc_req(&["cat"]);
        r.stdin = Some(true);
        let p = c.start_process(&sb.id, &r).await.unwrap();
        let pid = p.pid.to_string();
        c.write_stdin(&sb.id, &pid, "hello ").await.unwrap();
        c.write_stdin(&sb.id, &pid, "world").await.unwrap();
        c.close_stdin(&sb.id, &pid).await.unwrap();
        let (out, _, exit) = drain(c, &sb.id, &pid, 0).await;
        assert_eq!(out, b"hello world");
        assert_eq!(exit.exit_code, Some(0));
        // Unknown process: typed 404.
        let err = c.get_process(&sb.id, "99999").await.unwrap_err();
        assert_eq!(err.code(), Some("process_not_found"));
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

/// Read terminal output until `needle` shows up (or panic after many events).
async fn expect_output(s: &mut warren_client::PtySession, needle: &str) -> String {
    let mut seen = String::new();
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_secs(20), s.next()).await {
            Ok(Some(Ok(PtyEvent::Output(b)))) => {
                seen.push_str(&String::from_utf8_lossy(&b));
                if seen.contains(needle) {
                    return seen;
                }
            }
            Ok(Some(Ok(PtyEvent::Exit(p)))) => panic!("exited {p:?} before {needle:?}: {seen}"),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("{e:?}"),
            Ok(None) => panic!("session ended before {needle:?}: {seen}"),
            Err(_) => panic!("timed out waiting for {needle:?}: {seen}"),
        }
    }
    panic!("{needle:?} never arrived: {seen}");
}

#[test]
fn terminal_size_resize_ctrl_c_and_exit_code() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let mut r = proc_req(&["sh", "-i"]);
        r.pty = Some(PtySize {
            rows: 30,
            cols: 100,
        });
        let p = c.start_process(&sb.id, &r).await.unwrap();
        let pid = p.pid.to_string();
        let mut s = c.pty(&sb.id, &pid).await.unwrap();
        s.send("stty size\n").await.unwrap();
        expect_output(&mut s, "30 100").await;
        s.resize(40, 120).await.unwrap();
        s.send("stty size\n").await.unwrap();
        expect_output(&mut s, "40 120").await;
        // Ctrl-C reaches the foreground job; the shell survives it.
        s.send("sleep 100\n").await.unwrap();
        // Once it runs (a fork and exec take a while under gVisor).
        for _ in 0..100 {
            if run_sh(c, &sb.id, "pgrep -x sleep").await.exit_code == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s.send(&b"\x03"[..]).await.unwrap();
        if common::on_gvisor() {
            // gVisor's line discipline signals Ctrl-C but also queues the character, so
            // the shell's next line starts with it (a command not found): what counts is
            // that the job was interrupted and the shell answers.
            s.send("\n").await.unwrap();
            s.send("echo alive-$((6*7))\n").await.unwrap();
            expect_output(&mut s, "alive-42").await;
        } else {
            s.send("echo after-$?\n").await.unwrap();
            expect_output(&mut s, "after-130").await;
        }
        s.send("exit 3\n").await.unwrap();
        let mut exit = None;
        while let Some(ev) = s.next().await {
            if let PtyEvent::Exit(p) = ev.unwrap() {
                exit = Some(p);
                break;
            }
        }
        assert_eq!(exit.and_then(|p| p.exit_code), Some(3));
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}
