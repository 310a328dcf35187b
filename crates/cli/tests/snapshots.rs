//! Pause, snapshots, restore, rollback, fork and the idle policy through the HTTP API, on the
//! real kernel, with both storage backends (`dir`, and `btrfs` on a loop image the daemon
//! makes itself).

mod common;

use std::time::Duration;

use common::*;
use warren_api::{
    CreateSandboxRequest, CreateSnapshotRequest, ForkRequest, IdleAction, SandboxState,
};
use warren_client::Client;

/// A workspace with the shapes overlayfs keeps specially: a deleted image file (whiteout),
/// a replaced directory (opaque), a symlink, a hard link, an owned private file.
const SHAPES: &str = "set -e
mkdir -p /workspace/d/sub && echo one > /workspace/d/sub/a
echo hello > /workspace/f && ln /workspace/f /workspace/hard && ln -s f /workspace/link
echo secret > /workspace/private && chmod 600 /workspace/private && chown 1000:1000 /workspace/private
rm /etc/nsswitch.conf
rm -rf /usr/share/common-licenses && mkdir /usr/share/common-licenses && echo new > /usr/share/common-licenses/only
head -c 300000 /dev/urandom > /workspace/blob";

/// What a listing should show of the shapes (content hashes, modes, owners, link targets).
const LIST: &str = "cd / && for p in workspace/f workspace/hard workspace/private workspace/blob \
    workspace/d/sub/a usr/share/common-licenses/only; do echo \"$p $(stat -c '%a %u:%g %h' $p) $(sha256sum < $p)\"; done; \
    readlink workspace/link; ls usr/share/common-licenses; \
    test -e etc/nsswitch.conf && echo nsswitch-present || echo nsswitch-gone";

async fn listing(c: &Client, id: &str) -> String {
    let r = run_sh(c, id, LIST).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    r.stdout
}

async fn state(c: &Client, id: &str) -> SandboxState {
    c.get_sandbox(id).await.unwrap().state
}

fn snapshot_round_trip(d: &Daemon) {
    let c = &d.client;
    rt().block_on(async {
        let sb = create(c).await;
        let id = sb.id.as_str();
        let r = run_sh(c, id, SHAPES).await;
        assert_eq!(r.exit_code, 0, "{r:?}");
        let before = listing(c, id).await;
        assert!(before.contains("nsswitch-gone"), "{before}");
        let snap = c
            .create_snapshot(
                id,
                &CreateSnapshotRequest {
                    name: Some("shapes".into()),
                },
            )
            .await
            .unwrap();
        assert_eq!(snap.sandbox_id, id);
        assert!(snap.size_bytes >= 300_000, "{snap:?}");
        assert_eq!(state(c, id).await, SandboxState::Running);

        // Change everything, then check restore, fork and rollback.
        let r = run_sh(
            c,
            id,
            "echo changed > /workspace/f && rm -rf /workspace/d && echo x > /etc/nsswitch.conf \
             && touch /workspace/new /usr/share/common-licenses/more",
        )
        .await;
        assert_eq!(r.exit_code, 0, "{r:?}");
        let changed = listing(c, id).await;
        assert_ne!(changed, before);

        let restored = c
            .create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listing(c, &restored.id).await, before);
        assert_eq!(
            run_sh(
                c,
                &restored.id,
                "test -e /workspace/new && echo yes || echo no"
            )
            .await
            .stdout,
            "no\n"
        );

        let fork = c.fork(id, &ForkRequest::default()).await.unwrap();
        assert_eq!(listing(c, &fork.id).await, changed);
        run_sh(c, &fork.id, "echo forked > /workspace/f").await;
        assert_eq!(
            run_sh(c, id, "cat /workspace/f").await.stdout,
            "changed\n",
            "a fork's writes must not reach its source"
        );
        assert_eq!(
            run_sh(c, &fork.id, "cat /workspace/f").await.stdout,
            "forked\n"
        );

        let back = c.rollback(id, &snap.id).await.unwrap();
        assert_eq!(back.state, SandboxState::Running);
        assert_eq!(listing(c, id).await, before);

        // Snapshots outlive their sandbox; deleting one does not touch the others.
        c.delete_sandbox(id).await.unwrap();
        assert_eq!(c.get_snapshot(&snap.id).await.unwrap().id, snap.id);
        let again = c
            .create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listing(c, &again.id).await, before);
        c.delete_snapshot(&snap.id).await.unwrap();
        assert!(c.get_snapshot(&snap.id).await.is_err());
        assert_eq!(listing(c, &again.id).await, before);
        for s in [&restored.id, &fork.id, &again.id] {
            c.delete_sandbox(s).await.unwrap();
        }
    });
}

#[test]
fn snapshots_restore_fork_rollback_on_dir_storage() {
    let d = Daemon::start();
    let caps = rt().block_on(d.client.capabilities()).unwrap();
    assert_eq!(caps.storage.backend, "dir");
    assert!(caps.features.snapshots && caps.features.pause && caps.features.fork);
    snapshot_round_trip(&d);
}

#[test]
fn snapshots_restore_fork_rollback_on_loop_btrfs() {
    let mut d = Daemon::start_with(&["--storage", "btrfs", "--btrfs-loop-size", "1G"]);
    let caps = rt().block_on(d.client.capabilities()).unwrap();
    assert_eq!(caps.storage.backend, "btrfs");
    snapshot_round_trip(&d);
    let data_dir = d.data_dir.clone();
    let status = d.stop();
    assert!(status.success(), "{status:?}");
    // The daemon unmounted its btrfs and the loop device went with it.
    assert_eq!(host_mounts_mentioning(&data_dir), Vec::<String>::new());
    let img = data_dir.join("storage").join("btrfs.img");
    let loops = std::process::Command::new("losetup")
        .arg("-j")
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&loops.stdout),
        "",
        "loop device left"
    );
}

#[test]
fn paused_sandbox_burns_no_cpu_and_its_output_survives() {
    let d = Daemon::start();
    let c = &d.client;
    rt().block_on(async {
        let sb = create(c).await;
        let id = sb.id.as_str();
        // A busy loop that also prints a counter every 50 ms.
        let p = c
            .start_process(
                id,
                &warren_api::CreateProcessRequest {
                    cmd: vec![
                        "sh".into(),
                        "-c".into(),
                        "(while :; do :; done) & i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done"
                            .into(),
                    ],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let pid = p.pid.to_string();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.pause(id).await.unwrap().state, SandboxState::Paused);
        let a = c.stats(id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let b = c.stats(id).await.unwrap();
        // Frozen: not a single millisecond of CPU (allow the freezer's own bookkeeping).
        assert!(
            b.cpu_usage_us - a.cpu_usage_us < 5_000,
            "paused sandbox used {} µs",
            b.cpu_usage_us - a.cpu_usage_us
        );
        // Exec is refused while paused, with a typed error.
        let err = c.exec(id, &req(&["true"])).await.unwrap_err();
        assert_eq!(err.code(), Some("sandbox_paused"), "{err:?}");
        c.resume(id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = c.stats(id).await.unwrap();
        assert!(after.cpu_usage_us > b.cpu_usage_us + 50_000, "{after:?}");
        assert!(after.memory_bytes > 0 && after.pids >= 3, "{after:?}");
        // The counter's output is whole across the pause: 1, 2, 3, ... without a gap.
        c.signal_process(id, &pid, "SIGKILL").await.unwrap();
        let out = c.process(id, &pid).read_to_end().await.unwrap();
        let text = String::from_utf8(out).unwrap();
        let nums: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
        assert!(nums.len() > 10, "{text}");
        for (i, n) in nums.iter().enumerate() {
            assert_eq!(*n, i as u64 + 1, "gap in {text}");
        }
        c.delete_sandbox(id).await.unwrap();
    });
}

#[test]
fn idle_policy_spares_busy_sandboxes() {
    let d = Daemon::start();
    let c = &d.client;
    rt().block_on(async {
        let mk = || CreateSandboxRequest {
            idle_timeout_secs: Some(2),
            on_idle: Some(IdleAction::Pause),
            ..Default::default()
        };
        let quiet = c.create_sandbox(&mk()).await.unwrap();
        let busy = c.create_sandbox(&mk()).await.unwrap();
        // Long work without output and without API calls: not idle.
        run_sh(
            c,
            &busy.id,
            "nohup sh -c 'while :; do :; done' >/dev/null 2>&1 & echo ok",
        )
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while state(c, &quiet.id).await != SandboxState::Paused {
            assert!(
                std::time::Instant::now() < deadline,
                "quiet sandbox never idled out"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(state(c, &busy.id).await, SandboxState::Running);
        for id in [&quiet.id, &busy.id] {
            c.delete_sandbox(id).await.unwrap();
        }
    });
}
