//! Disk limits and disk-pressure admission on the real kernel (as root): `resources.disk_mib`
//! on the btrfs backend (simple quotas on the loop image the daemon makes), the `dir`
//! backend's honest "no quota", and the free-space floor.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use warren_api::{CreateSandboxRequest, CreateSnapshotRequest, Resources, Sandbox};
use warren_client::{Client, Error};

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

async fn create_disk(c: &Client, mib: u64, snapshot: Option<&str>) -> Sandbox {
    c.create_sandbox(&CreateSandboxRequest {
        resources: Some(Resources {
            disk_mib: Some(mib),
            ..Default::default()
        }),
        snapshot: snapshot.map(str::to_string),
        ..Default::default()
    })
    .await
    .expect("create sandbox with disk_mib")
}

/// Write `mib` MiB to `path` in the sandbox; returns the bytes that made it and dd's stderr.
async fn fill(c: &Client, id: &str, path: &str, mib: u64) -> (u64, String) {
    let r = run_sh(
        c,
        id,
        &format!(
            "dd if=/dev/urandom of={path} bs=1M count={mib} conv=fsync 2>&1 >/dev/null | \
             grep -v -e records -e copied; stat -c %s {path} 2>/dev/null || echo 0"
        ),
    )
    .await;
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    let size = lines.pop().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    (size, lines.join("\n"))
}

fn quota_error(msg: &str) -> bool {
    msg.contains("Disk quota exceeded") || msg.contains("No space left")
}

async fn snapshot(c: &Client, id: &str) -> String {
    c.create_snapshot(id, &CreateSnapshotRequest::default())
        .await
        .expect("snapshot")
        .id
}

/// The qgroups of the btrfs file system mounted at `mnt` (`btrfs qgroup show`, test only).
fn qgroups(mnt: &Path) -> Vec<String> {
    let out = Command::new("btrfs")
        .args(["qgroup", "show", "--raw"])
        .arg(mnt)
        .output()
        .expect("btrfs qgroup show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(str::to_string)
        .collect()
}

fn loop_devices_of(img: &Path) -> String {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(img)
        .output()
        .expect("losetup");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn btrfs_disk_limits_hold_and_leave_nothing_behind() {
    if which("mkfs.btrfs").is_none() || which("btrfs").is_none() {
        eprintln!("skipped: no mkfs.btrfs / btrfs");
        return;
    }
    let mut d = Daemon::start_with(&["--storage", "btrfs", "--btrfs-loop-size", "1G"]);
    let mnt = d.data_dir.join("storage/btrfs");
    let img = d.data_dir.join("storage/btrfs.img");
    let c = d.client.clone();
    rt().block_on(async {
        let caps = c.capabilities().await.unwrap();
        assert!(caps.storage.disk_quota, "{:?}", caps.storage);
        assert_eq!(caps.limits.max_disk_mib, 1024);
        assert_eq!(caps.limits.default_resources.disk_mib, Some(256));
        // The image is allocated up front: it cannot grow into the store's file system.
        let m = std::fs::metadata(&img).unwrap();
        assert!(
            std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= m.len(),
            "sparse image"
        );

        // A sandbox writing far past its limit is stopped at it, inside, with EDQUOT.
        let a = create_disk(&c, 64, None).await;
        let (size, err) = fill(&c, &a.id, "/workspace/big", 200).await;
        assert!(quota_error(&err), "{err}");
        assert!(
            (48 << 20..=64 << 20).contains(&size),
            "wrote {} MiB",
            size >> 20
        );
        // Another sandbox still writes, and so does the daemon (a snapshot of the full one).
        let b = create_disk(&c, 64, None).await;
        let (size, err) = fill(&c, &b.id, "/workspace/f", 32).await;
        assert_eq!((size, err.as_str()), (32 << 20, ""));
        let snap_a = snapshot(&c, &a.id).await;
        // The files API reports the full sandbox's write as a typed error.
        match c
            .write_file(&a.id, "/workspace/more", vec![7u8; 4 << 20], None)
            .await
        {
            Err(Error::Api { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (507, "disk_quota_exceeded"))
            }
            other => panic!("write past the limit: {other:?}"),
        }

        // Snapshot and rewrite, again and again: the snapshots' data counts, the loop stops
        // at the budget instead of filling the disk.
        let s = create_disk(&c, 64, None).await;
        let mut snaps = Vec::new();
        let mut stopped = None;
        for round in 0..12 {
            let (size, err) = fill(&c, &s.id, "/workspace/f", 16).await;
            snaps.push(snapshot(&c, &s.id).await);
            if size < 16 << 20 {
                assert!(quota_error(&err), "{err}");
                stopped = Some(round);
                break;
            }
            run_sh(&c, &s.id, "rm /workspace/f").await;
        }
        let stopped = stopped.expect("snapshot-and-rewrite never hit the budget");
        assert!((3..=4).contains(&stopped), "stopped in round {stopped}");
        // Rolling back to a snapshot does not reset the budget, and works at the limit.
        c.stop(&s.id).await.unwrap();
        c.rollback(&s.id, &snaps[0]).await.unwrap();
        c.start(&s.id).await.unwrap();
        let (size, err) = fill(&c, &s.id, "/workspace/g", 32).await;
        assert!(quota_error(&err) && size < 16 << 20, "{size} {err}");
        // Deleting the snapshots gives the space back (as soon as btrfs has dropped them).
        for id in &snaps {
            c.delete_snapshot(id).await.unwrap();
        }
        let mut size = 0;
        for _ in 0..100 {
            run_sh(&c, &s.id, "rm -f /workspace/g").await;
            size = fill(&c, &s.id, "/workspace/g", 32).await.0;
            if size == 32 << 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(size, 32 << 20, "space not given back");

        // A sandbox restored from a snapshot gets its own limit: what it shares with the
        // snapshot is charged to its writer, only what it writes counts.
        let r = create_disk(&c, 32, Some(&snap_a)).await;
        let r2 = run_sh(&c, &r.id, "stat -c %s /workspace/big").await;
        assert!(
            r2.stdout.trim().parse::<u64>().unwrap() >= 48 << 20,
            "{r2:?}"
        );
        let (size, err) = fill(&c, &r.id, "/workspace/new", 100).await;
        assert!(quota_error(&err), "{err}");
        assert!((16 << 20..=32 << 20).contains(&size), "{size}");

        // Moving a restored tree into the new sandbox's id range rewrites every inode,
        // charged to it: with 60,000 files that is more than 16 MiB. The sandbox still comes
        // up, its root writable (an overlay mounted without room for its work dir would be
        // read-only), and is at its limit.
        let made = run_sh(
            &c,
            &b.id,
            "mkdir /workspace/many && cd /workspace/many && seq -f f%g 1 60000 | xargs touch",
        )
        .await;
        assert_eq!(made.exit_code, 0, "{made:?}");
        let snap_b = snapshot(&c, &b.id).await;
        let m = create_disk(&c, 16, Some(&snap_b)).await;
        let w = run_sh(
            &c,
            &m.id,
            "ls /workspace/many | wc -l; echo x > /workspace/new",
        )
        .await;
        assert!(w.stdout.starts_with("60000"), "{w:?}");
        assert!(!w.stderr.contains("Read-only"), "{w:?}");
        assert!(w.exit_code == 0 || quota_error(&w.stderr), "{w:?}");

        // Everything deleted: no qgroup is left but the top level's.
        for sb in [&a, &b, &s, &r, &m] {
            c.delete_sandbox(&sb.id).await.unwrap();
        }
        for snap in [&snap_a, &snap_b] {
            c.delete_snapshot(snap).await.unwrap();
        }
        let mut left = qgroups(&mnt);
        for _ in 0..300 {
            if left == ["0/5"] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = qgroups(&mnt);
        }
        assert_eq!(left, ["0/5"], "qgroups left");
    });
    assert!(d.stop().success());
    assert_eq!(
        host_mounts_mentioning(&d.data_dir),
        Vec::<String>::new(),
        "mounts left"
    );
    let mut left = loop_devices_of(&img);
    for _ in 0..100 {
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        left = loop_devices_of(&img);
    }
    assert_eq!(left, "", "loop device left");
}

#[test]
fn dir_backend_says_it_has_no_disk_quota() {
    let d = Daemon::start_with(&["--storage", "dir"]);
    let c = &d.client;
    rt().block_on(async {
        let caps = c.capabilities().await.unwrap();
        assert!(!caps.storage.disk_quota);
        assert_eq!(caps.limits.max_disk_mib, 0);
        assert_eq!(caps.limits.default_resources.disk_mib, None);
        let err = c
            .create_sandbox(&CreateSandboxRequest {
                resources: Some(Resources {
                    disk_mib: Some(64),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        match err {
            Error::Api {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code.as_str()), (400, "invalid_request"));
                assert!(message.contains("disk_mib"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(c
            .list_sandboxes::<&str, &str>(&[])
            .await
            .unwrap()
            .is_empty());
        let sb = create(c).await;
        assert_eq!(sb.resources.disk_mib, None);
    });
}

#[test]
fn creates_are_refused_when_the_data_file_system_is_short_of_space() {
    // A floor above what the file system holds: the real probe (statvfs) refuses at once.
    let d = Daemon::start_with(&["--min-free-disk-mib", "1099511627776"]);
    let c = &d.client;
    rt().block_on(async {
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.limits.min_free_disk_mib, 1 << 40);
        match c.create_sandbox(&CreateSandboxRequest::default()).await {
            Err(Error::Api {
                status,
                code,
                message,
            }) => {
                assert_eq!((status, code.as_str()), (503, "host_under_pressure"));
                assert!(message.contains("MiB free"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(c
            .list_sandboxes::<&str, &str>(&[])
            .await
            .unwrap()
            .is_empty());
    });
    assert!(d.sandbox_dirs().is_empty());
}

#[test]
fn auto_storage_makes_a_btrfs_image_where_it_can() {
    if which("mkfs.btrfs").is_none() {
        eprintln!("skipped: no mkfs.btrfs");
        return;
    }
    let d = Daemon::start_with(&["--storage", "auto", "--btrfs-loop-size", "1G"]);
    let c = &d.client;
    rt().block_on(async {
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.storage.backend, "btrfs");
        assert!(caps.storage.disk_quota);
        let sb = create(c).await;
        assert_eq!(sb.resources.disk_mib, Some(256));
        let r = run_sh(c, &sb.id, "echo hi > /workspace/f && cat /workspace/f").await;
        assert_eq!(r.stdout, "hi\n");
    });
    let img = d.data_dir.join("storage/btrfs.img");
    let m = std::fs::metadata(&img).unwrap();
    assert_eq!(m.len(), 1 << 30);
    assert!(std::os::unix::fs::MetadataExt::blocks(&m) * 512 >= m.len());
}

#[test]
fn auto_storage_keeps_a_data_dir_that_holds_dir_snapshots() {
    let mut d1 = Daemon::start_with(&["--storage", "dir"]);
    let snap = rt().block_on(async {
        let c = &d1.client;
        let sb = create(c).await;
        run_sh(c, &sb.id, "echo kept > /workspace/f").await;
        snapshot(c, &sb.id).await
    });
    assert!(d1.stop().success());
    // The snapshot's files are in the data dir: `auto` must not hide them behind an image.
    let d2 = Daemon::launch(
        d1.data_dir.clone(),
        d1.cgroup_parent.clone(),
        &["--storage", "auto", "--btrfs-loop-size", "1G"],
    );
    let c = &d2.client;
    rt().block_on(async {
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.storage.backend, "dir");
        assert!(!caps.storage.disk_quota);
        let sb = c
            .create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        let r = run_sh(c, &sb.id, "cat /workspace/f").await;
        assert_eq!(r.stdout, "kept\n");
    });
    assert!(!d2.data_dir.join("storage/btrfs.img").exists());
}
