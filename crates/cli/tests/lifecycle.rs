//! Lifecycle on the real kernel: TTL, concurrency, and a clean host afterwards.

mod common;

use std::time::Duration;

use common::*;
use warren_api::CreateSandboxRequest;

#[test]
fn ttl_expiry_deletes_and_timeout_can_be_extended() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let short = c
            .create_sandbox(&CreateSandboxRequest {
                timeout_secs: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        let kept = c
            .create_sandbox(&CreateSandboxRequest {
                timeout_secs: Some(1),
                ..Default::default()
            })
            .await
            .unwrap();
        let updated = c.set_timeout(&kept.id, 120).await.unwrap();
        assert!(updated.expires_at > kept.expires_at);
        let mut gone = false;
        for _ in 0..100 {
            if c.get_sandbox(&short.id).await.is_err() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(gone, "expired sandbox was not deleted");
        assert!(!d.data_dir.join("sandboxes").join(&short.id).exists());
        assert_eq!(run(c, &kept.id, req(&["true"])).await.exit_code, 0);
    });
}

#[test]
fn fifty_concurrent_creates_then_nothing_left() {
    // 50 sandboxes with the default 1 GiB limit commit more memory than most hosts have:
    // the committed-memory admission is off here (the available-memory floor still holds).
    let mut d = Daemon::start_with(&["--max-committed-memory-mib", "0"]);
    let data_dir = d.data_dir.clone();
    let parent = d.cgroup_parent.clone();
    rt().block_on(async {
        let c = &d.client;
        let creates = (0..50).map(|i| {
            let c = c.clone();
            async move {
                c.create_sandbox(&CreateSandboxRequest {
                    metadata: [("i".to_string(), i.to_string())].into(),
                    ..Default::default()
                })
                .await
            }
        });
        let results = futures::future::join_all(creates).await;
        let ids: Vec<String> = results
            .into_iter()
            .map(|r| r.expect("concurrent create failed").id)
            .collect();
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 50);
        // Every one of them works.
        let execs = ids.iter().map(|id| {
            let c = c.clone();
            async move { c.exec(id, &req(&["hostname"])).await }
        });
        for (id, r) in ids.iter().zip(futures::future::join_all(execs).await) {
            assert_eq!(r.unwrap().stdout.trim(), id);
        }
        // Delete half explicitly, concurrently; the daemon's shutdown removes the rest.
        let deletes = ids[..25].iter().map(|id| {
            let c = c.clone();
            async move { c.delete_sandbox(id).await }
        });
        for r in futures::future::join_all(deletes).await {
            r.unwrap();
        }
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 25);
    });
    let status = d.stop();
    assert!(status.success(), "daemon exit: {status:?}");
    // Nothing left on the host: no cgroups, no mounts, no sandbox dirs, no processes.
    assert_eq!(cgroups_named(&parent), Vec::<std::path::PathBuf>::new());
    assert_eq!(host_mounts_mentioning(&data_dir), Vec::<String>::new());
    assert!(d.sandbox_dirs().is_empty(), "{:?}", d.sandbox_dirs());
    assert_eq!(processes_in_cgroup(&parent), Vec::<String>::new());
}

#[test]
fn sandboxes_outlive_a_crashed_daemon_and_a_restart_adopts_them() {
    let mut d = Daemon::start();
    let (data_dir, parent) = (d.data_dir.clone(), d.cgroup_parent.clone());
    let (id, orphan) = rt().block_on(async {
        let sb = create(&d.client).await;
        // A long-running command, so the sandbox has more than its agent.
        let r = run_sh(
            &d.client,
            &sb.id,
            "sleep 300 >/dev/null 2>&1 & echo $! > /tmp/sleeper; echo started",
        )
        .await;
        assert_eq!(r.stdout, "started\n");
        let orphan = create(&d.client).await;
        let w = run_sh(&d.client, &orphan.id, "echo kept > /workspace/f").await;
        assert_eq!(w.exit_code, 0);
        (sb.id, orphan.id)
    });
    let status = d.stop_with(libc::SIGKILL);
    assert!(!status.success());
    // The sandbox is not the daemon's child: it is still there after the crash.
    let alive = processes_in_cgroup(&parent);
    assert!(alive.len() >= 3, "sandbox died with the daemon: {alive:?}");
    assert!(data_dir.join("sandboxes").join(&id).exists());
    // Break the second sandbox while no daemon runs: kill its agent (PID 1).
    let agent_pid =
        std::fs::read_to_string(data_dir.join("sandboxes").join(&orphan).join("agent.pid"))
            .expect("agent.pid");
    let agent_pid: i32 = agent_pid.trim().parse().unwrap();
    // SAFETY: plain kill(2) of a pid this test's sandbox owns.
    assert_eq!(unsafe { libc::kill(agent_pid, libc::SIGKILL) }, 0);

    // A new daemon on the same data dir adopts what still runs.
    let mut d2 = Daemon::launch(data_dir.clone(), parent.clone(), &[]);
    rt().block_on(async {
        let c = &d2.client;
        let sb = c.get_sandbox(&id).await.unwrap();
        assert_eq!(sb.state, warren_api::SandboxState::Running, "{sb:?}");
        // Its processes survived: the sleeper started before the crash is still there.
        let r = run_sh(c, &id, "kill -0 $(cat /tmp/sleeper) && echo alive").await;
        assert_eq!(r.stdout, "alive\n", "{r:?}");
        // The one whose agent died has no process left but its files: it is stopped,
        // refuses exec with a typed 409, and starts again with its files.
        let stopped = c.get_sandbox(&orphan).await.unwrap();
        assert_eq!(
            stopped.state,
            warren_api::SandboxState::Stopped,
            "{stopped:?}"
        );
        let err = c.exec(&orphan, &req(&["true"])).await.unwrap_err();
        assert_eq!(err.code(), Some("sandbox_stopped"), "{err:?}");
        c.start(&orphan).await.unwrap();
        assert_eq!(
            run_sh(c, &orphan, "cat /workspace/f").await.stdout,
            "kept\n"
        );
        c.delete_sandbox(&orphan).await.unwrap();
        assert!(c.get_sandbox(&orphan).await.unwrap_err().is_not_found());
        // And the new daemon works.
        let sb = create(c).await;
        assert_eq!(run(c, &sb.id, req(&["true"])).await.exit_code, 0);
    });
    // SIGINT shuts down as cleanly as SIGTERM (and deletes the adopted sandbox too).
    let status = d2.stop_with(libc::SIGINT);
    assert!(status.success(), "{status:?}");
    assert_eq!(cgroups_named(&parent), Vec::<std::path::PathBuf>::new());
    assert_eq!(processes_in_cgroup(&parent), Vec::<String>::new());
    assert!(d2.sandbox_dirs().is_empty());
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let d = Daemon::start();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&d.data_dir)
        .args(["--cgroup-parent", &d.cgroup_parent])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another warren daemon"), "{err}");
    // The first daemon's sandboxes were not touched.
    rt().block_on(async {
        let sb = create(&d.client).await;
        assert_eq!(run(&d.client, &sb.id, req(&["true"])).await.exit_code, 0);
    });
}
