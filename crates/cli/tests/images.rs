//! OCI images end to end: a daemon pulls from a local registry (Debian's `docker-registry`,
//! images built offline by `warren_testkit::registry`), makes sandboxes from them with the
//! image's layers (whiteouts honoured) and config (env, working dir, user), and refuses to
//! delete an image in use.

mod common;

use common::{rt, sh, Daemon};
use warren_api::{CreateSandboxRequest, ExecRequest, ExecUser};
use warren_client::Error;
use warren_testkit::registry::{copy_image, push_test_images, Registry, BB_OUTPUT};

fn create_req(image: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        image: Some(image.to_string()),
        ..Default::default()
    }
}

#[test]
fn sandboxes_run_pulled_images_with_their_config() {
    let reg = Registry::start().expect("registry");
    let images = push_test_images(&reg).expect("test images");
    let d = Daemon::start_with(&["--insecure-registry", &reg.host(), "--pull", "missing"]);
    rt().block_on(async {
        let c = &d.client;
        let img = c.pull_image(&images.bb).await.expect("pull");
        assert_eq!(img.layers, 3);
        assert_eq!(img.config.working_dir.as_deref(), Some("/opt"));
        let listed = c.list_images().await.unwrap();
        assert!(listed.iter().any(|i| i.name == "host" && i.builtin));
        assert!(listed.iter().any(|i| i.name == img.name));
        assert_eq!(c.get_image(&img.name).await.unwrap().digest, img.digest);
        assert!(c.capabilities().await.unwrap().images.contains(&img.name));

        let sb = c
            .create_sandbox(&create_req(&img.name))
            .await
            .expect("create");
        assert_eq!(sb.image, img.name);
        let run = |script: &str| {
            let c = c.clone();
            let id = sb.id.clone();
            let script = script.to_string();
            async move { c.exec(&id, &sh(&script)).await.expect("exec") }
        };
        // The layers merged: b.txt deleted by layer 2, /opt/dir made opaque by layer 3.
        let ls = run("ls /opt; echo --; ls /opt/dir; cat /opt/a.txt").await;
        assert_eq!(ls.stdout, "a.txt\nc.txt\ndir\n--\nz\nhello\n", "{ls:?}");
        // The config: the image's env, working dir and user.
        let who = run("id -u; pwd; echo $FOO; echo $PATH; echo $HOME").await;
        assert_eq!(who.stdout, "1000\n/opt\nbar\n/bin\n/home/app\n", "{who:?}");
        // A request's user and env win.
        let root = c
            .exec(
                &sb.id,
                &ExecRequest {
                    user: Some(ExecUser::Root),
                    env: [("FOO".to_string(), "mine".to_string())].into(),
                    ..sh("id -u; echo $FOO")
                },
            )
            .await
            .unwrap();
        assert_eq!(root.stdout, "0\nmine\n");
        // The image's user cannot write root's files; root can, into the sandbox's own
        // layer, and the image stays as it was.
        assert_ne!(run("echo new > /opt/a.txt").await.exit_code, 0);
        let wrote = c
            .exec(
                &sb.id,
                &ExecRequest {
                    user: Some(ExecUser::Root),
                    ..sh("echo new > /opt/a.txt && cat /opt/a.txt")
                },
            )
            .await
            .unwrap();
        assert_eq!(wrote.stdout, "new\n");
        // A snapshot records its image; a restore sits on it without being told.
        let snap = c.sandbox(&sb.id).snapshot(Some("edited")).await.unwrap();
        assert_eq!(snap.image.as_deref(), Some(img.name.as_str()));
        let restored = c
            .create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(restored.image, img.name);
        let back = c
            .exec(&restored.id, &sh("cat /opt/a.txt; ls /opt/dir"))
            .await
            .unwrap();
        assert_eq!(back.stdout, "new\nz\n");
        // Restoring it onto another image is refused.
        let wrong = c
            .create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.id.clone()),
                image: Some("host".into()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(wrong.to_string().contains("invalid_request"), "{wrong}");
        let other = c.create_sandbox(&create_req(&img.name)).await.unwrap();
        let fresh = c.exec(&other.id, &sh("cat /opt/a.txt")).await.unwrap();
        assert_eq!(fresh.stdout, "hello\n");

        // Many sandboxes of one image store its layers once.
        let layers = || {
            std::fs::read_dir(d.data_dir.join("oci/layers"))
                .unwrap()
                .count()
        };
        assert_eq!(layers(), 3);
        let mut many = Vec::new();
        for _ in 0..100 {
            let small = CreateSandboxRequest {
                resources: Some(warren_api::Resources {
                    memory_mib: Some(64),
                    ..Default::default()
                }),
                ..create_req(&img.name)
            };
            many.push(c.create_sandbox(&small).await.unwrap().id);
        }
        assert_eq!(layers(), 3);
        // No sandbox holds a copy: each takes a small fraction of the image (its own
        // /etc/hostname, hosts, resolv.conf and directories).
        let du = |p: &std::path::Path| -> u64 {
            let o = std::process::Command::new("du")
                .args(["-s", "--block-size=1"])
                .arg(p)
                .output()
                .unwrap();
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        // Under the storage root: the data dir, or the btrfs image's mount.
        let sandboxes = [
            d.data_dir.join("storage/btrfs/sandboxes"),
            d.data_dir.join("sandboxes"),
        ]
        .into_iter()
        .find(|p| p.exists())
        .expect("the sandboxes directory");
        let (image_bytes, sandboxes_bytes) = (du(&d.data_dir.join("oci/layers")), du(&sandboxes));
        assert!(
            sandboxes_bytes / 100 < image_bytes / 10,
            "100 sandboxes take {sandboxes_bytes} bytes, the image {image_bytes}"
        );
        for (i, id) in many.iter().enumerate() {
            if i % 33 == 0 {
                assert_eq!(
                    c.exec(id, &sh("cat /opt/dir/z")).await.unwrap().stdout,
                    "z\n"
                );
            }
            c.delete_sandbox(id).await.unwrap();
        }

        // An image not stored yet is pulled by the create (the zstd copy shares its layers).
        let z = c
            .create_sandbox(&create_req(&images.bb_zstd))
            .await
            .unwrap();
        let out = c.exec(&z.id, &sh("ls /opt")).await.unwrap();
        assert_eq!(out.stdout, "a.txt\nc.txt\ndir\n");

        // In use: not deleted. Then deleted.
        match c.delete_image(&img.name).await {
            Err(Error::Api { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (409, "image_in_use"))
            }
            other => panic!("delete in use: {other:?}"),
        }
        c.delete_sandbox(&sb.id).await.unwrap();
        c.delete_sandbox(&other.id).await.unwrap();
        c.delete_sandbox(&restored.id).await.unwrap();
        // Still needed by the snapshot (a restore sits on it).
        match c.delete_image(&img.name).await {
            Err(Error::Api { code, message, .. }) => {
                assert_eq!(code, "image_in_use");
                assert!(message.contains(&snap.id), "{message}");
            }
            other => panic!("delete with a snapshot: {other:?}"),
        }
        c.delete_snapshot(&snap.id).await.unwrap();
        c.delete_image(&img.name).await.expect("delete");
        assert!(c.get_image(&img.name).await.is_err());
        // bb-zstd's layers (the same tars) were kept for it.
        let again = c.exec(&z.id, &sh("cat /opt/dir/z")).await.unwrap();
        assert_eq!(again.stdout, "z\n");

        // `warren run --image NAME` without a command runs its Entrypoint and Cmd.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["run", "--rm", "--image", &images.bb_zstd])
            .env("WARREN_URL", &d.url)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), BB_OUTPUT);
        // The host image has neither: a command is needed, and nothing is created.
        let before = c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["run", "--rm", "--image", "host"])
            .env("WARREN_URL", &d.url)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Entrypoint"),
            "{out:?}"
        );
        assert_eq!(
            c.list_sandboxes::<&str, &str>(&[]).await.unwrap().len(),
            before
        );

        // An OCI archive (as skopeo writes it) imported under a name of its own, then used.
        let archive = d.data_dir.with_extension("bb-oci.tar");
        copy_image(&images.bb, &format!("oci-archive:{}", archive.display())).expect("skopeo copy");
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["image", "import", "local/bb:1"])
            .arg(&archive)
            .env("WARREN_URL", &d.url)
            .output()
            .await
            .unwrap();
        let _ = std::fs::remove_file(&archive);
        assert!(out.status.success(), "{out:?}");
        let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(name, "docker.io/local/bb:1");
        let imported = c.create_sandbox(&create_req("local/bb:1")).await.unwrap();
        let ls = c.exec(&imported.id, &sh("ls /opt")).await.unwrap();
        assert_eq!(ls.stdout, "a.txt\nc.txt\ndir\n");
        // Not an archive: 400, nothing stored.
        match c.import_image("local/junk:1", b"junk".to_vec()).await {
            Err(Error::Api { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (400, "invalid_request"))
            }
            other => panic!("junk import: {other:?}"),
        }

        // Unknown images are typed errors that say what exists.
        let missing = images.bb.replace(":latest", ":nope");
        match c.create_sandbox(&create_req(&missing)).await {
            Err(Error::Api { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (404, "image_not_found"))
            }
            other => panic!("missing image: {other:?}"),
        }
        match c.create_sandbox(&create_req("not a reference!")).await {
            Err(Error::Api { status, code, .. }) => {
                assert_eq!((status, code.as_str()), (400, "invalid_request"))
            }
            other => panic!("bad reference: {other:?}"),
        }
    });
}

/// A daemon killed in the middle of a pull: after a restart nothing of the half-pulled image
/// is listed or left in `oci/tmp`, and the pull works.
#[test]
fn a_pull_killed_midway_leaves_nothing_used() {
    use futures::StreamExt;
    let reg = Registry::start().expect("registry");
    let images = push_test_images(&reg).expect("test images");
    let (data_dir, parent) = Daemon::fresh_names();
    let host = reg.host();
    let args = ["--insecure-registry", host.as_str(), "--pull", "missing"];
    let mut first = Daemon::launch_plain(data_dir.clone(), parent.clone(), &args);
    let started = rt().block_on(async {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/images/pull", first.url))
            .header("accept", "text/event-stream")
            .json(&serde_json::json!({ "ref": images.big }))
            .send()
            .await
            .unwrap();
        let mut body = resp.bytes_stream();
        let mut seen = String::new();
        // The first bytes of the big layer have arrived: the pull is midway.
        while let Some(chunk) = body.next().await {
            seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            if seen.contains("\"done\":1") || seen.contains("event: image") {
                break;
            }
        }
        !seen.contains("event: image")
    });
    first.stop_with(libc::SIGKILL);
    std::mem::forget(first);
    let second = Daemon::launch(data_dir.clone(), parent, &args);
    let tmp = data_dir.join("oci/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "partial work left"
    );
    rt().block_on(async {
        let c = &second.client;
        let listed = c.list_images().await.unwrap();
        if started {
            assert!(
                !listed.iter().any(|i| i.name == images.big),
                "a half-pulled image is listed"
            );
        }
        // Through the CLI, which follows the pull's event stream.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["image", "pull", &images.big])
            .env("WARREN_URL", &second.url)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), images.big);
        let img = c
            .get_image(&images.big)
            .await
            .expect("pulled after the crash");
        // A tag the registry lacks: the stream's error event, typed.
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["image", "pull", &images.big.replace(":latest", ":nope")])
            .env("WARREN_URL", &second.url)
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("image_not_found"),
            "{out:?}"
        );
        let sb = c.create_sandbox(&create_req(&img.name)).await.unwrap();
        let size = c.exec(&sb.id, &sh("wc -c < /data/blob")).await.unwrap();
        assert_eq!(size.stdout.trim(), (48u64 << 20).to_string());
    });
}
