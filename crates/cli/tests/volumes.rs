//! Volumes end to end: named volumes outlive their sandboxes, are shared (read-write and
//! read-only) with consistent owners across sandboxes of different user-namespace ranges,
//! mount sub-directories without letting a symlink lead out, are not part of snapshots,
//! and cannot be deleted while mounted; host directories mount only under an allowed
//! prefix; a volume's size is enforced on btrfs.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{rt, run_sh, Daemon};
use warren_api::{CreateSandboxRequest, CreateSnapshotRequest, Sandbox, VolumeMount};
use warren_client::{Client, Error};

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: Some(name.into()),
        host_path: None,
        path: path.into(),
        read_only: false,
        sub_path: None,
    }
}

fn host_mount(host: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: None,
        host_path: Some(host.into()),
        path: path.into(),
        read_only,
        sub_path: None,
    }
}

async fn create_with(c: &Client, volumes: Vec<VolumeMount>) -> Result<Sandbox, Error> {
    c.create_sandbox(&CreateSandboxRequest {
        volumes,
        ..Default::default()
    })
    .await
}

/// The API error's (status, code) or a panic.
fn api_err<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, String) {
    match r {
        Err(Error::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn out(c: &Client, id: &str, script: &str) -> String {
    let r = run_sh(c, id, script).await;
    assert_eq!(r.exit_code, 0, "{script}: {r:?}");
    r.stdout
}

#[test]
fn volumes_outlive_sandboxes_and_are_shared_with_consistent_owners() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let caps = c.capabilities().await.unwrap();
        assert!(caps.features.volumes);
        // Quotas where the storage has them (btrfs), and a size refused where not.
        assert_eq!(caps.storage.volume_quota, caps.storage.backend == "btrfs");

        // Bad input changes nothing.
        assert_eq!(api_err(c.create_volume("../x", None).await).0, 400);
        if !caps.storage.volume_quota {
            assert_eq!(
                api_err(c.create_volume("big", Some(10)).await),
                (400, "invalid_request".into())
            );
        }
        let vol = c.create_volume("data", None).await.unwrap();
        assert_eq!((vol.used_bytes, vol.sandboxes.len()), (0, 0));
        assert_eq!(
            api_err(c.create_volume("data", None).await),
            (409, "volume_exists".into())
        );
        assert_eq!(
            api_err(create_with(c, vec![mount("nope", "/data")]).await),
            (404, "volume_not_found".into())
        );
        for bad in ["/", "/proc/x", "/dev", "data", "/a/../b"] {
            assert_eq!(
                api_err(create_with(c, vec![mount("data", bad)]).await).0,
                400,
                "{bad}"
            );
        }
        assert_eq!(
            api_err(create_with(c, vec![mount("data", "/d"), mount("data", "/d/")]).await).0,
            400
        );
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 0);

        // A writes as root and as the unprivileged user.
        let a = create_with(c, vec![mount("data", "/data")]).await.unwrap();
        assert_eq!(a.volumes, vec![mount("data", "/data")]);
        out(
            c,
            &a.id,
            "echo hello > /data/root.txt && mkdir /data/u && chown 1000:1000 /data/u && \
             su -s /bin/sh user -c 'echo mine > /data/u/user.txt' 2>/dev/null || \
             (echo mine > /data/u/user.txt && chown 1000:1000 /data/u/user.txt)",
        )
        .await;
        // B (another user-namespace range) sees the same owners, read-only.
        let mut ro = mount("data", "/shared");
        ro.read_only = true;
        let b = create_with(c, vec![ro]).await.unwrap();
        let owners = out(
            c,
            &b.id,
            "stat -c '%u %n' /shared/root.txt /shared/u /shared/u/user.txt; cat /shared/root.txt",
        )
        .await;
        assert_eq!(
            owners,
            "0 /shared/root.txt\n1000 /shared/u\n1000 /shared/u/user.txt\nhello\n"
        );
        let w = run_sh(c, &b.id, "echo x > /shared/new").await;
        assert_ne!(w.exit_code, 0);
        assert!(w.stderr.contains("Read-only"), "{w:?}");
        // On disk, owners are the ids inside (not a sandbox's host range).
        // Under the storage root: the data dir, or the btrfs image's mount.
        let on_disk = [
            d.data_dir.join("storage/btrfs/volumes/data"),
            d.data_dir.join("volumes/data"),
        ]
        .into_iter()
        .find(|p| p.exists())
        .expect("the volume's directory");
        assert_eq!(std::fs::metadata(on_disk.join("u")).unwrap().uid(), 1000);

        // A directory of the volume, made if missing; a symlink a sandbox left in the
        // volume resolves inside it, never on the host.
        out(
            c,
            &a.id,
            "ln -s / /data/up && mkdir /data/etc && touch /data/etc/marker && \
             ln -s /etc /data/etc-link",
        )
        .await;
        let mut sub = mount("data", "/w");
        sub.sub_path = Some("up/sub/dir".into());
        let mut esc = mount("data", "/e");
        esc.sub_path = Some("etc-link".into());
        let s = create_with(c, vec![sub, esc]).await.unwrap();
        assert_eq!(
            out(c, &s.id, "echo deep > /w/f && ls -A /e").await,
            "marker\n",
            "etc-link resolves in the volume, not on the host"
        );
        assert_eq!(out(c, &a.id, "cat /data/sub/dir/f").await, "deep\n");
        assert!(!std::path::Path::new("/sub/dir/f").exists());

        // In use: not deletable; the volume names its sandboxes.
        let v = c.get_volume("data").await.unwrap();
        assert_eq!(v.sandboxes.len(), 3, "{v:?}");
        assert!(v.used_bytes > 0);
        assert_eq!(
            api_err(c.delete_volume("data").await),
            (409, "volume_in_use".into())
        );

        // A stopped and started sandbox mounts it again.
        c.stop(&a.id).await.unwrap();
        c.start(&a.id).await.unwrap();
        assert_eq!(out(c, &a.id, "cat /data/root.txt").await, "hello\n");

        // Not part of snapshots: a restore mounts the volume as it is now.
        let snap = c
            .create_snapshot(&a.id, &CreateSnapshotRequest::default())
            .await
            .unwrap();
        out(
            c,
            &a.id,
            "echo later > /data/later.txt && echo local > /tmp/local",
        )
        .await;
        let restored = c
            .create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.id.clone()),
                volumes: vec![mount("data", "/data")],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            out(
                c,
                &restored.id,
                "cat /data/later.txt; ls /tmp/local 2>&1 | wc -l"
            )
            .await,
            "later\n1\n"
        );
        let forked = c.fork(&a.id, &Default::default()).await.unwrap();
        assert_eq!(forked.volumes, a.volumes);
        assert_eq!(out(c, &forked.id, "cat /data/later.txt").await, "later\n");

        // Outlives every sandbox.
        for sb in c.list_sandboxes::<&str, &str>(&[]).await.unwrap() {
            c.delete_sandbox(&sb.id).await.unwrap();
        }
        c.delete_snapshot(&snap.id).await.unwrap();
        let again = create_with(c, vec![mount("data", "/data")]).await.unwrap();
        assert_eq!(out(c, &again.id, "cat /data/root.txt").await, "hello\n");
        c.delete_sandbox(&again.id).await.unwrap();
        assert_eq!(c.get_volume("data").await.unwrap().sandboxes.len(), 0);

        // Through the CLI.
        let cli = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(args)
                .env("WARREN_URL", &d.url)
                .output()
                .unwrap()
        };
        let ls = cli(&["volume", "ls"]);
        assert!(ls.status.success(), "{ls:?}");
        assert!(String::from_utf8_lossy(&ls.stdout).contains("data"));
        let made = cli(&["create", "-v", "data/sub:/s:ro"]);
        assert!(made.status.success(), "{made:?}");
        let id = String::from_utf8_lossy(&made.stdout).trim().to_string();
        assert_eq!(out(c, &id, "cat /s/dir/f").await, "deep\n");
        c.delete_sandbox(&id).await.unwrap();

        c.delete_volume("data").await.unwrap();
        assert_eq!(
            api_err(c.get_volume("data").await),
            (404, "volume_not_found".into())
        );
        assert!(!on_disk.exists(), "the volume's files are gone");
    });
}

#[test]
fn host_directories_mount_only_under_allowed_prefixes() {
    // Removed when dropped, also when the test fails.
    let scratch = tempfile::Builder::new()
        .prefix("warren-hostpath-")
        .tempdir()
        .unwrap();
    // Canonical: what the daemon compares resolved host paths with.
    let root = scratch.path().canonicalize().unwrap();
    let allowed = root.join("allowed");
    std::fs::create_dir_all(allowed.join("ok")).unwrap();
    std::fs::create_dir_all(root.join("secret")).unwrap();
    std::fs::write(allowed.join("ok/in.txt"), "from the host\n").unwrap();
    // Writable by anyone: a sandbox's root is not host root there.
    std::fs::set_permissions(
        allowed.join("ok"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(root.join("secret/key"), "secret\n").unwrap();
    std::os::unix::fs::symlink("../secret", allowed.join("link")).unwrap();
    std::os::unix::fs::symlink("ok", allowed.join("alias")).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();

    // Off by default.
    {
        let d = Daemon::start();
        rt().block_on(async {
            let r = create_with(&d.client, vec![host_mount(&path(&allowed), "/x", true)]).await;
            assert_eq!(api_err(r).0, 400);
        });
    }
    let d = Daemon::start_with(&["--allow-host-path", &path(&allowed)]);
    rt().block_on(async {
        let c = &d.client;
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.storage.allowed_host_paths, vec![path(&allowed)]);
        if common::on_gvisor() {
            // gVisor's file server writes as the host's root: refused, typed, nothing made.
            let r = create_with(c, vec![host_mount(&path(&allowed.join("ok")), "/x", false)]).await;
            let Err(Error::Api {
                status, message, ..
            }) = r
            else {
                panic!("expected an API error, got {r:?}");
            };
            assert_eq!(status, 400, "{message}");
            assert!(message.contains("gvisor"), "{message}");
            assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 0);
            return;
        }
        for (bad, status) in [
            (path(&root.join("secret")), 403),
            (path(&allowed.join("link")), 403),
            (format!("{}/../secret", path(&allowed)), 400),
            (path(&allowed.join("missing")), 400),
            (path(&allowed.join("ok/in.txt")), 400),
            ("relative".to_string(), 400),
        ] {
            let r = create_with(c, vec![host_mount(&bad, "/x", true)]).await;
            assert_eq!(api_err(r).0, status, "{bad}");
        }
        assert_eq!(c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(), 0);

        // Read-only: readable, not writable.
        let sb = create_with(
            c,
            vec![host_mount(&path(&allowed.join("alias")), "/x", true)],
        )
        .await
        .unwrap();
        assert_eq!(
            sb.volumes[0].host_path.as_deref(),
            Some(path(&allowed.join("ok")).as_str()),
            "recorded resolved"
        );
        assert_eq!(out(c, &sb.id, "cat /x/in.txt").await, "from the host\n");
        assert_ne!(run_sh(c, &sb.id, "touch /x/new").await.exit_code, 0);
        // Read-write: what root inside writes belongs to the sandbox's own host ids.
        let rw = create_with(c, vec![host_mount(&path(&allowed.join("ok")), "/x", false)])
            .await
            .unwrap();
        out(c, &rw.id, "echo hi > /x/written").await;
        let uid = std::fs::metadata(allowed.join("ok/written")).unwrap().uid();
        let caps_userns = caps.isolation.user_namespace;
        if caps_userns {
            assert_ne!(uid, 0, "host root must not own what a sandbox wrote");
        }
    });
    drop(d);
}

#[test]
fn btrfs_volume_size_is_enforced() {
    if which("mkfs.btrfs").is_none() || which("btrfs").is_none() {
        eprintln!("skipped: no mkfs.btrfs / btrfs");
        return;
    }
    let d = Daemon::start_with(&["--storage", "btrfs", "--btrfs-loop-size", "1G"]);
    rt().block_on(async {
        let c = &d.client;
        assert!(c.capabilities().await.unwrap().storage.volume_quota);
        c.create_volume("small", Some(16)).await.unwrap();
        let sb = create_with(c, vec![mount("small", "/v")]).await.unwrap();
        let r = run_sh(
            c,
            &sb.id,
            "dd if=/dev/urandom of=/v/big bs=1M count=40 conv=fsync 2>&1; stat -c %s /v/big",
        )
        .await;
        assert!(
            r.stdout.contains("Disk quota exceeded") || r.stdout.contains("No space left"),
            "{r:?}"
        );
        let size: u64 = r.stdout.lines().last().unwrap().trim().parse().unwrap();
        assert!(size <= 16 << 20, "{size}");
        let v = c.get_volume("small").await.unwrap();
        assert!(v.used_bytes > 8 << 20 && v.used_bytes <= 17 << 20, "{v:?}");
        c.delete_sandbox(&sb.id).await.unwrap();
        c.delete_volume("small").await.unwrap();
    });
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(tool))
            .find(|p| p.is_file())
    })
}
