//! Exec through the HTTP API on the real kernel.

mod common;

use common::*;
use futures::StreamExt;
use warren_api::{ExecUser, OutputEncoding};
use warren_client::ExecStreamEvent;

#[test]
fn exit_codes_signals_stdin_env_cwd_user() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = c
            .create_sandbox(&warren_api::CreateSandboxRequest {
                env: [("SANDBOX_VAR".to_string(), "sv".to_string())].into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(run(c, &sb.id, req(&["true"])).await.exit_code, 0);
        assert_eq!(run_sh(c, &sb.id, "exit 42").await.exit_code, 42);
        let r = run_sh(c, &sb.id, "echo out; echo err >&2; kill -TERM $$").await;
        assert_eq!((r.exit_code, r.signal.as_deref()), (143, Some("SIGTERM")), "{r:?}");
        assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));

        let mut r = req(&["cat"]);
        r.stdin = Some("hello\nstdin".into());
        assert_eq!(run(c, &sb.id, r).await.stdout, "hello\nstdin");

        let mut r = sh("echo $SANDBOX_VAR $EXEC_VAR $HOME; pwd; id -u");
        r.env.insert("EXEC_VAR".into(), "ev".into());
        r.cwd = Some("/tmp".into());
        assert_eq!(run(c, &sb.id, r).await.stdout, "sv ev /root\n/tmp\n0\n");

        let mut r = sh("id -u; id -g; echo $HOME; touch /workspace/mine && stat -c %u /workspace/mine; touch /root/x 2>/dev/null || echo denied");
        r.user = Some(ExecUser::User);
        assert_eq!(run(c, &sb.id, r).await.stdout, "1000\n1000\n/home/user\n1000\ndenied\n");

        // Default cwd is /workspace.
        assert_eq!(run(c, &sb.id, req(&["pwd"])).await.stdout, "/workspace\n");

        // Errors that are the caller's: typed 4xx.
        let err = c.exec(&sb.id, &req(&["no-such-command"])).await.unwrap_err();
        assert_eq!(api_code(&err), Some("command_not_found"), "{err:?}");
        let mut r = req(&["true"]);
        r.cwd = Some("/does/not/exist".into());
        let err = c.exec(&sb.id, &r).await.unwrap_err();
        assert_eq!(api_code(&err), Some("invalid_cwd"), "{err:?}");
        // A command too large for the agent: 413 at once, not a 500 from the agent.
        let err = c
            .exec(&sb.id, &req(&["echo", &"x".repeat(3_000_000)]))
            .await
            .unwrap_err();
        assert_eq!(api_code(&err), Some("payload_too_large"), "{err:?}");
        // The sandbox is fine afterwards.
        assert_eq!(run(c, &sb.id, req(&["echo", "ok"])).await.stdout, "ok\n");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

/// Peak resident memory of a process (kB), from /proc/<pid>/status.
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Red-team #11: concurrent non-streamed execs printing a lot (NUL bytes, the worst case for
/// JSON) must not grow the daemon beyond its output budget; what is dropped is reported
/// exactly.
#[test]
fn non_streamed_output_is_bounded_and_truncation_is_exact() {
    const BUDGET_MIB: u64 = 64;
    let d = Daemon::start_with(&["--max-exec-output", "64M"]);
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        // Warm up: the daemon's baseline includes one exec.
        assert_eq!(run_sh(c, &sb.id, "echo warm").await.exit_code, 0);
        let before = vm_hwm_kb(d.pid());
        const OUT: u64 = 32 << 20;
        const ERR: u64 = 8 << 20;
        let script = format!("head -c {OUT} /dev/zero; head -c {ERR} /dev/zero >&2");
        let request = sh(&script);
        let runs = (0..8).map(|_| c.exec(&sb.id, &request));
        let results = futures::future::join_all(runs).await;
        let after = vm_hwm_kb(d.pid());
        let mut kept_total = 0;
        for r in results {
            let r = r.unwrap();
            assert_eq!(r.exit_code, 0);
            assert_eq!((r.stdout_bytes, r.stderr_bytes), (OUT, ERR));
            let out = r.stdout_raw().expect("stdout decodes");
            let err = r.stderr_raw().expect("stderr decodes");
            assert!(out.iter().chain(&err).all(|b| *b == 0));
            // Exact accounting: kept + dropped = written.
            assert_eq!(out.len() as u64 + r.stdout_truncated_bytes, OUT);
            assert_eq!(err.len() as u64 + r.stderr_truncated_bytes, ERR);
            // The per-stream cap (16 MiB by default) holds.
            assert!(out.len() as u64 <= 16 << 20 && err.len() as u64 <= 16 << 20);
            assert!(r.truncated);
            // 32 MiB of NULs would be 192 MiB as JSON text: base64 instead.
            if out.len() > 1 << 20 {
                assert_eq!(r.stdout_encoding, OutputEncoding::Base64);
            }
            kept_total += out.len() + err.len();
        }
        assert!(kept_total > 0);
        let grown_mib = after.saturating_sub(before) / 1024;
        eprintln!(
            "daemon VmHWM {} -> {} MiB (+{grown_mib} MiB) for 8 x {} MiB of output, {} MiB kept",
            before / 1024,
            after / 1024,
            (OUT + ERR) >> 20,
            kept_total >> 20
        );
        // The kept output (encoded as it is sent) and the buffers on the way: about the
        // budget (without it, 8 such execs took the daemon from 180 MB to 1.5 GB).
        assert!(
            grown_mib < 2 * BUDGET_MIB + 64,
            "daemon grew by {grown_mib} MiB with a {BUDGET_MIB} MiB output budget"
        );
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

fn api_code(e: &warren_client::Error) -> Option<&str> {
    match e {
        warren_client::Error::Api { code, .. } => Some(code.as_str()),
        _ => None,
    }
}

#[test]
fn timeout_kills_the_process_group() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let mut r = sh("sleep 100 & sleep 100 & echo started; wait");
        r.timeout_secs = Some(1);
        let out = run(c, &sb.id, r).await;
        assert!(out.timed_out, "{out:?}");
        assert_eq!(
            (out.exit_code, out.signal.as_deref()),
            (137, Some("SIGKILL"))
        );
        assert_eq!(out.stdout, "started\n");
        // No sleep survived: the whole group was killed.
        let r = run_sh(
            c,
            &sb.id,
            "for p in /proc/[0-9]*; do cat $p/comm; done | grep -c sleep || true",
        )
        .await;
        assert_eq!(r.stdout.trim(), "0", "{r:?}");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn fifty_megabytes_stream_intact() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        // 50 MiB of a deterministic, non-repeating-per-line pattern, plus interleaved stderr.
        let mut r = req(&["python3", "-c", "import sys\nw=sys.stdout.buffer\nfor i in range(50*1024*1024//64):\n    w.write(b'%063d\\n' % i)\n    if i % 100000 == 0: print('tick', i, file=sys.stderr, flush=True)\nw.flush()"]);
        r.encoding = Some(OutputEncoding::Base64);
        let mut stream = c.exec_stream(&sb.id, &r).await.unwrap();
        let mut stdout = Vec::with_capacity(50 << 20);
        let mut stderr = Vec::new();
        let mut exit = None;
        let mut chunks = 0;
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                ExecStreamEvent::Stdout(b) => {
                    chunks += 1;
                    stdout.extend_from_slice(&b)
                }
                ExecStreamEvent::Stderr(b) => stderr.extend_from_slice(&b),
                ExecStreamEvent::Exit(x) => {
                    exit = Some(x);
                    break;
                }
            }
        }
        assert_eq!(exit.map(|x| x.exit_code), Some(0));
        assert_eq!(stdout.len(), 50 * 1024 * 1024);
        assert!(chunks > 10, "output was not streamed in chunks ({chunks})");
        for (i, line) in stdout.chunks(64).enumerate() {
            assert_eq!(line, format!("{i:063}\n").as_bytes(), "line {i} corrupted");
        }
        assert!(String::from_utf8_lossy(&stderr).contains("tick 800000"));
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn binary_output_is_exact() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let mut r = req(&[
            "python3",
            "-c",
            "import sys; sys.stdout.buffer.write(bytes(range(256))*4)",
        ]);
        r.encoding = Some(OutputEncoding::Base64);
        let mut stream = c.exec_stream(&sb.id, &r).await.unwrap();
        let mut out = Vec::new();
        while let Some(ev) = stream.next().await {
            match ev.unwrap() {
                ExecStreamEvent::Stdout(b) => out.extend_from_slice(&b),
                ExecStreamEvent::Exit(x) => {
                    assert_eq!(x.exit_code, 0);
                    break;
                }
                ExecStreamEvent::Stderr(_) => {}
            }
        }
        let want: Vec<u8> = (0..4).flat_map(|_| 0..=255u8).collect();
        assert_eq!(out, want);
        // Non-streaming base64 result too.
        let res = run(c, &sb.id, r).await;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&res.stdout)
            .unwrap();
        assert_eq!(bytes, want);
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn output_streams_as_it_is_produced() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        // The command prints, then waits for a file that we create only after its first
        // line reached us: if output were held back until exit, it would time out instead.
        let mut r = sh("echo first; while [ ! -e /tmp/go ]; do sleep 0.02; done; echo second");
        r.timeout_secs = Some(30);
        let mut stream = c.exec_stream(&sb.id, &r).await.unwrap();
        let first = stream.next().await.unwrap().unwrap();
        assert!(matches!(first, ExecStreamEvent::Stdout(ref b) if b == b"first\n"), "{first:?}");
        run(c, &sb.id, req(&["touch", "/tmp/go"])).await;
        let mut rest = Vec::new();
        while let Some(ev) = stream.next().await {
            rest.push(ev.unwrap());
        }
        assert!(matches!(rest.first(), Some(ExecStreamEvent::Stdout(b)) if b == b"second\n"), "{rest:?}");
        assert!(
            matches!(rest.last(), Some(ExecStreamEvent::Exit(x)) if x.exit_code == 0 && !x.timed_out),
            "{rest:?}"
        );
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}
