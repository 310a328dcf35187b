//! Isolation on the real kernel: what a sandbox must not see or do.

mod common;

use common::*;
use warren_api::Resources;

#[test]
fn host_processes_and_files_are_invisible() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        // Only the sandbox's own processes: the agent is PID 1 and the daemon is not there.
        let r = run_sh(c, &sb.id, "ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '").await;
        let pids: Vec<u32> = r.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        assert_eq!(pids.first(), Some(&1), "{}", r.stdout);
        // The agent plus this pipeline (sh, ls, grep, sort, tr); the host has hundreds.
        assert!(pids.len() <= 8, "sandbox sees too many processes: {pids:?}");
        let r = run_sh(c, &sb.id, "cat /proc/1/cmdline | tr '\\0' ' '").await;
        assert!(r.stdout.contains("__sandbox-init") || r.stdout.contains("warren"), "{}", r.stdout);
        // Host files: the repository, the data dir, /root's content, host /etc.
        let repo = env!("CARGO_MANIFEST_DIR");
        let data = d.data_dir.to_string_lossy();
        let r = run_sh(
            c,
            &sb.id,
            &format!("test -e '{repo}' && echo repo; test -e '{data}' && echo data; ls -A /root; test -e /etc/shadow && echo shadow; echo done"),
        )
        .await;
        assert_eq!(r.stdout.trim(), "done", "host files visible: {}", r.stdout);
        // The hostname is the sandbox id.
        let r = run(c, &sb.id, req(&["hostname"])).await;
        assert_eq!(r.stdout.trim(), sb.id);
        // Loopback and, in the default `nat` mode, the daemon's veth (nothing of the host's).
        let r = run_sh(c, &sb.id, "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\n' ' '").await;
        assert_eq!(r.stdout.trim(), "eth0 lo", "{}", r.stdout);
        // Host tools work inside.
        let r = run(c, &sb.id, req(&["python3", "-c", "print(6*7)"])).await;
        assert_eq!(r.stdout, "42\n", "{r:?}");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn sandboxes_cannot_see_each_other() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let a = create(c).await;
        let b = create(c).await;
        let r = run_sh(c, &a.id, "echo secret > /tmp/marker && echo x > /workspace/a && touch /usr/local/a-was-here && echo ok").await;
        assert_eq!(r.stdout, "ok\n", "{r:?}");
        let r = run_sh(c, &b.id, "ls /tmp /workspace /usr/local; cat /tmp/marker 2>&1; echo end").await;
        assert!(!r.stdout.contains("secret") && !r.stdout.contains("a-was-here"), "{}", r.stdout);
        // A's writes to /usr stayed in A's own layer: not on the host either.
        assert!(!std::path::Path::new("/usr/local/a-was-here").exists());
        // B cannot find A's processes.
        let mut long = sh("sleep 30");
        long.timeout_secs = Some(60);
        let c2 = c.clone();
        let a_id = a.id.clone();
        let bg = tokio::spawn(async move { c2.exec(&a_id, &long).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let r = run_sh(c, &b.id, "ps -eo comm 2>/dev/null || ls /proc").await;
        assert!(!r.stdout.contains("sleep"), "{}", r.stdout);
        bg.abort();
        c.delete_sandbox(&a.id).await.unwrap();
        c.delete_sandbox(&b.id).await.unwrap();
    });
}

#[test]
fn privileged_operations_fail() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let checks: &[(&str, &str)] = &[
            ("mount", "mount -t tmpfs none /mnt"),
            ("proc/sys write", "echo 1 > /proc/sys/kernel/domainname"),
            ("sysrq", "echo h > /proc/sysrq-trigger"),
            ("sys write", "echo 1 > /sys/kernel/profiling"),
            ("raw block device", "mknod /tmp/disk b 254 0 && head -c1 /tmp/disk"),
            ("kmem", "head -c1 /dev/kmem || head -c1 /dev/mem"),
            ("kcore", "head -c1 /proc/kcore | wc -c | grep -q 1"),
            ("unshare user", "unshare -U true"),
            ("unshare mount", "unshare -m true"),
            ("hostname", "hostname evil"),
        ];
        for (what, script) in checks {
            let r = run_sh(c, &sb.id, &format!("{script} 2>/dev/null")).await;
            assert_ne!(r.exit_code, 0, "{what} succeeded inside the sandbox: {r:?}");
        }
        // Module loading: init_module/finit_module are refused (seccomp + no CAP_SYS_MODULE).
        let r = run(
            c,
            &sb.id,
            req(&["python3", "-c", "import ctypes,os; l=ctypes.CDLL(None,use_errno=True); r=l.syscall(313,0,b'',0); print(r, ctypes.get_errno())"]),
        )
        .await;
        assert!(r.stdout.starts_with("-1 1"), "finit_module: {r:?}");
        // The capability set is the container default: no CAP_SYS_ADMIN (bit 21) etc.
        let r = run_sh(c, &sb.id, "grep CapBnd /proc/self/status").await;
        let hex = r.stdout.split_whitespace().nth(1).unwrap_or("ffffffffff");
        let bnd = u64::from_str_radix(hex, 16).unwrap();
        for (bit, name) in [(21, "SYS_ADMIN"), (16, "SYS_MODULE"), (19, "SYS_PTRACE"), (25, "SYS_TIME"), (12, "NET_ADMIN"), (17, "SYS_RAWIO")] {
            assert_eq!(bnd & (1 << bit), 0, "CAP_{name} is in the bounding set: {hex}");
        }
        let r = run_sh(c, &sb.id, "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\\t ' ' '").await;
        // (gVisor's /proc shows the filter but not the no_new_privs bit.)
        assert!(
            (r.stdout.contains("NoNewPrivs: 1") || common::on_gvisor())
                && r.stdout.contains("Seccomp: 2"),
            "{}",
            r.stdout
        );
        // Masked and read-only paths.
        let r = run_sh(c, &sb.id, "cat /proc/keys 2>/dev/null | wc -c; ls /sys/firmware | wc -l; touch /proc/sys/x 2>/dev/null || echo ro").await;
        assert_eq!(r.stdout.split_whitespace().collect::<Vec<_>>(), ["0", "0", "ro"], "{}", r.stdout);
        // A minimal /dev.
        let r = run_sh(c, &sb.id, "ls /dev | sort | tr '\\n' ' '").await;
        for dev in r.stdout.split_whitespace() {
            // gVisor's kernel adds its own (emulated, not the host's) fuse and net/tun.
            let gvisor_own = common::on_gvisor() && ["fuse", "net"].contains(&dev);
            assert!(
                gvisor_own || ["console", "core", "fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"].contains(&dev),
                "unexpected /dev entry {dev}: {}", r.stdout
            );
        }
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn memory_bomb_is_oom_killed_inside() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create_with(
            c,
            Resources {
                memory_mib: Some(64),
                ..Default::default()
            },
        )
        .await;
        let mut r = req(&[
            "python3",
            "-c",
            "x = []\nwhile True: x.append(bytearray(16 << 20))",
        ]);
        r.timeout_secs = Some(60);
        if common::on_gvisor() {
            // gVisor's kernel (the sentry) holds all of the sandbox's memory: at the limit
            // the host's OOM killer ends it and everything inside. The call fails at once,
            // the sandbox is marked failed with the reason, the daemon is fine.
            let out = c.exec(&sb.id, &r).await;
            assert!(out.as_ref().map_or(true, |o| o.exit_code != 0), "{out:?}");
            let reason = failed_within(c, &sb.id, 30).await;
            assert!(reason.contains("out of memory"), "{reason}");
            c.health().await.unwrap();
            c.delete_sandbox(&sb.id).await.unwrap();
            return;
        }
        let out = run(c, &sb.id, r).await;
        assert_eq!(
            out.exit_code, 137,
            "memory bomb was not OOM-killed: {out:?}"
        );
        assert_eq!(out.signal.as_deref(), Some("SIGKILL"));
        // The sandbox and the daemon are fine afterwards.
        c.health().await.unwrap();
        let r = run(c, &sb.id, req(&["echo", "alive"])).await;
        assert_eq!(r.stdout, "alive\n");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

/// Wait (at most `secs`) for the sandbox to be marked failed; its reason.
async fn failed_within(c: &warren_client::Client, id: &str, secs: u64) -> String {
    for _ in 0..secs * 10 {
        let sb = c.get_sandbox(id).await.unwrap();
        if sb.state == warren_api::SandboxState::Failed {
            return sb.failure_reason.unwrap_or_default();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{id} was not marked failed within {secs} s");
}

#[test]
fn fork_bomb_is_bounded_by_pids() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create_with(c, Resources { pids: Some(32), ..Default::default() }).await;
        // Fork until the kernel refuses. The children wait on a pipe whose write end only
        // the parent holds, so they all exit as soon as the parent does.
        let bomb = "import os\nr, w = os.pipe()\nn = 0\nfor i in range(500):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        os.close(w)\n        os.read(r, 1)\n        os._exit(0)\n    n += 1\nprint(n, len([p for p in os.listdir('/proc') if p.isdigit()]))";
        let mut r = req(&["python3", "-c", bomb]);
        r.timeout_secs = Some(60);
        if common::on_gvisor() {
            // gVisor's tasks are threads of its own host processes, which the pids limit
            // bounds on the host (the sandbox's and the sentry's room): the bomb may end the
            // whole sandbox. Either it survives and answers, or it is marked failed with a
            // reason; never stuck, and the daemon is fine.
            let _ = c.exec(&sb.id, &r).await;
            let mut outcome = None;
            for _ in 0..100 {
                let now = c.get_sandbox(&sb.id).await.unwrap();
                if now.state == warren_api::SandboxState::Failed {
                    outcome = Some(format!("failed: {:?}", now.failure_reason));
                    break;
                }
                if let Ok(r) = c.exec(&sb.id, &req(&["echo", "alive"])).await {
                    if r.exit_code == 0 {
                        outcome = Some("alive".into());
                        break;
                    }
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            let outcome = outcome.expect("neither alive nor failed");
            assert!(outcome == "alive" || outcome.starts_with("failed: Some("), "{outcome}");
            c.health().await.unwrap();
            c.delete_sandbox(&sb.id).await.unwrap();
            return;
        }
        let out = run(c, &sb.id, r).await;
        let nums: Vec<u32> = out.stdout.split_whitespace().filter_map(|n| n.parse().ok()).collect();
        assert_eq!(nums.len(), 2, "{out:?}");
        assert!(nums[0] >= 10 && nums[0] < 32, "forked {} children with pids=32: {out:?}", nums[0]);
        assert!(nums[1] <= 32, "{} processes with pids=32", nums[1]);
        // Usable again once the bomb is gone.
        let mut alive = None;
        for _ in 0..50 {
            // While the pids are still taken the agent cannot fork: a typed error, not a hang.
            match c.exec(&sb.id, &req(&["echo", "alive"])).await {
                Ok(r) if r.exit_code == 0 => {
                    alive = Some(r.stdout);
                    break;
                }
                _ => {}
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(alive.as_deref(), Some("alive\n"));
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}

#[test]
fn cpu_quota_throttles() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = create_with(c, Resources { cpus: Some(0.2), ..Default::default() }).await;
        // Burn CPU for 1.5 s of wall time and report CPU time / wall time.
        let script = "import time\nw=time.time(); p=time.process_time()\nwhile time.time()-w < 1.5: pass\nprint((time.process_time()-p)/(time.time()-w))";
        let before = c.stats(&sb.id).await.unwrap().cpu_usage_us;
        let t0 = std::time::Instant::now();
        let out = run(c, &sb.id, req(&["python3", "-c", script])).await;
        let mut ratio: f64 = out.stdout.trim().parse().unwrap_or(1.0);
        if common::on_gvisor() {
            // gVisor's clocks inside are its own: measure on the host, from the cgroup the
            // quota applies to (the sandbox's kernel included).
            let used = c.stats(&sb.id).await.unwrap().cpu_usage_us - before;
            ratio = used as f64 / t0.elapsed().as_micros() as f64;
        }
        // Unthrottled this is ~1.0; at 0.2 cpus it must stay far below (allowing for noise).
        assert!(ratio < 0.5, "cpu share {ratio} with cpus=0.2: {out:?}");
        c.delete_sandbox(&sb.id).await.unwrap();
    });
}
