//! Templates end to end: `warren build` turns a Dockerfile and a context into an image
//! (RUN in sandboxes, COPY/ADD from the context, the config instructions), sandboxes run
//! it with its config, an unchanged rebuild comes from the cache, a failing step records
//! nothing and leaves nothing, a template's start and ready commands run at create; and
//! the same Dockerfile built by buildah (an independent builder) gives the same file tree.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{rt, run_sh, Daemon};
use warren_api::{CreateSandboxRequest, Sandbox};
use warren_client::{Client, Error, TemplateBuild};
use warren_testkit::registry::{push_test_images, Registry};

const DOCKERFILE: &str = r#"# A template an agent would use.
ARG BASE
FROM ${BASE}
USER root
ARG GREETING=hello
ENV APP_HOME=/app \
    PATH=/app/bin:$PATH
WORKDIR /app
COPY app/ bin/
COPY --chown=1000:1000 data.txt ./
ADD archive.tar.gz /opt/unpacked/
RUN echo "$GREETING from $(id -u)" > /app/greeting && rm /opt/a.txt && \
    mkdir -p /var/cache/x && echo y > /var/cache/x/f && rm -r /opt/dir
RUN ["/bin/sh", "-c", "chmod 0640 /app/data.txt && ln -s /app/greeting /app/link"]
USER 1000
RUN echo user > /tmp/by-user
LABEL team=agents
EXPOSE 8080
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /app/greeting"]
"#;

/// Layer steps of [`DOCKERFILE`]: two COPY, one ADD, three RUN.
const LAYER_STEPS: usize = 6;

fn write(p: &Path, content: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// A build context: `app/run.sh`, `data.txt`, `archive.tar.gz` (holding `inner/file`).
fn context(dir: &Path) {
    write(&dir.join("app/run.sh"), "#!/bin/sh\necho running\n");
    std::fs::set_permissions(dir.join("app/run.sh"), PermissionsExt::from_mode(0o755)).unwrap();
    write(&dir.join("data.txt"), "data v1\n");
    let gz = std::fs::File::create(dir.join("archive.tar.gz")).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(gz, Default::default()));
    let mut h = tar::Header::new_gnu();
    let body = b"from the archive\n";
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_uid(42);
    h.set_gid(43);
    h.set_cksum();
    tar.append_data(&mut h, "inner/file", &body[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// A scratch directory removed when dropped (also when a test fails).
fn scratch(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("warren-tpl-{tag}-"))
        .tempdir()
        .unwrap()
}

/// An overlay mounted for the test, unmounted when dropped.
struct Mounted<'a>(&'a Path);

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

fn warren(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .env("WARREN_URL", url)
        .output()
        .unwrap()
}

fn api_err<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, String, String) {
    match r {
        Err(Error::Api {
            status,
            code,
            message,
        }) => (status, code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn out(c: &Client, id: &str, script: &str) -> String {
    let r = run_sh(c, id, script).await;
    assert_eq!(r.exit_code, 0, "{script}: {r:?}");
    r.stdout
}

async fn create(c: &Client, image: &str) -> Sandbox {
    c.create_sandbox(&CreateSandboxRequest {
        image: Some(image.into()),
        ..Default::default()
    })
    .await
    .expect("create from the template")
}

fn build_req(name: &str, dockerfile: &str, base: &str) -> TemplateBuild {
    TemplateBuild {
        name: name.into(),
        dockerfile: dockerfile.into(),
        build_args: [("BASE".to_string(), base.to_string())].into(),
        // Named, so the form field is exercised (the daemon's default is the same).
        runtime: Some(common::runtime()),
        ..Default::default()
    }
}

#[test]
fn templates_build_run_and_rebuild_from_the_cache() {
    let reg = Registry::start().expect("registry");
    let images = push_test_images(&reg).expect("test images");
    let d = Daemon::start_with(&["--insecure-registry", &reg.host(), "--pull", "missing"]);
    let ctx_dir = scratch("ctx");
    let ctx = ctx_dir.path().to_path_buf();
    context(&ctx);
    write(&ctx.join("Dockerfile"), DOCKERFILE);
    let base_arg = format!("BASE={}", images.bb);
    let ctx_s = ctx.to_str().unwrap().to_string();

    // Through the CLI, with the build log.
    let built = warren(
        &d.url,
        &["build", "-t", "agent", "--build-arg", &base_arg, &ctx_s],
    );
    assert!(built.status.success(), "{built:?}");
    assert_eq!(
        String::from_utf8_lossy(&built.stdout).lines().last(),
        Some("agent")
    );
    let log = String::from_utf8_lossy(&built.stderr);
    assert!(log.contains("Step 1/"), "{log}");
    assert!(log.contains("RUN echo user > /tmp/by-user"), "{log}");
    assert!(
        !log.contains("(cached)"),
        "a first build has no cache: {log}"
    );

    rt().block_on(async {
        let c = &d.client;
        let t = c.get_template("agent").await.unwrap();
        assert_eq!(t.base, images.bb);
        assert_eq!(t.cached_steps, 0);
        assert_eq!(t.image.config.user.as_deref(), Some("1000"));
        assert_eq!(t.image.config.working_dir.as_deref(), Some("/app"));
        assert_eq!(t.image.config.entrypoint, vec!["/bin/sh", "-c"]);
        assert_eq!(t.image.config.cmd, vec!["cat /app/greeting"]);
        assert!(c
            .list_templates()
            .await
            .unwrap()
            .iter()
            .any(|x| x.name == "agent"));
        // The build's own sandboxes and hidden images are gone.
        assert!(c
            .list_sandboxes::<&str, &str>(&[])
            .await
            .unwrap()
            .is_empty());
        let names: Vec<String> = c
            .list_images()
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert!(names.contains(&"agent".to_string()), "{names:?}");
        assert!(
            !names.iter().any(|n| n.starts_with("warren-build/")),
            "{names:?}"
        );

        // A sandbox of it: files, owners, modes, whiteouts, env, user, working dir.
        let sb = create(c, "agent").await;
        let r = out(
            c,
            &sb.id,
            "cat /app/greeting; stat -c '%u:%g %a' /app/data.txt; cat /app/data.txt; \
             cat /opt/unpacked/inner/file; stat -c '%u:%g %a' /opt/unpacked/inner/file; \
             ls /opt; test -e /opt/dir || echo dir-gone; cat /var/cache/x/f; \
             cat /tmp/by-user; stat -c %u /tmp/by-user; readlink /app/link; \
             id -u; pwd; echo $APP_HOME; echo $PATH; run.sh",
        )
        .await;
        assert_eq!(
            r,
            "hello from 0\n1000:1000 640\ndata v1\nfrom the archive\n42:43 644\n\
             c.txt\nunpacked\ndir-gone\ny\nuser\n1000\n/app/greeting\n\
             1000\n/app\n/app\n/app/bin:/bin\nrunning\n"
        );
        c.delete_sandbox(&sb.id).await.unwrap();

        // A sandbox of a built image mounts volumes as any other.
        c.create_volume("tpl-data", None).await.unwrap();
        let with_volume = c
            .create_sandbox(&CreateSandboxRequest {
                image: Some("agent".into()),
                volumes: vec![warren_api::VolumeMount {
                    name: Some("tpl-data".into()),
                    host_path: None,
                    path: "/data".into(),
                    read_only: false,
                    sub_path: None,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        let mut as_root = common::sh("stat -c %u /data; echo kept > /data/probe");
        as_root.user = Some(warren_api::ExecUser::Root);
        let r = c.exec(&with_volume.id, &as_root).await.unwrap();
        assert_eq!((r.exit_code, r.stdout.as_str()), (0, "0\n"), "{r:?}");
        c.delete_sandbox(&with_volume.id).await.unwrap();
        // What it wrote is in the volume (gVisor shows no separate mount inside: the check
        // is the file, read through another sandbox).
        let reader = c
            .create_sandbox(&CreateSandboxRequest {
                volumes: vec![warren_api::VolumeMount {
                    name: Some("tpl-data".into()),
                    host_path: None,
                    path: "/v".into(),
                    read_only: true,
                    sub_path: None,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(out(c, &reader.id, "cat /v/probe").await, "kept\n");
        c.delete_sandbox(&reader.id).await.unwrap();
        c.delete_volume("tpl-data").await.unwrap();
    });

    // `warren run --image` without a command runs ENTRYPOINT + CMD.
    let ran = warren(&d.url, &["run", "--rm", "--image", "agent"]);
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "hello from 0\n",
        "{ran:?}"
    );

    // An unchanged rebuild runs nothing: every layer step from the cache.
    let again = warren(
        &d.url,
        &["build", "-t", "agent", "--build-arg", &base_arg, &ctx_s],
    );
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        String::from_utf8_lossy(&again.stderr)
            .matches("(cached)")
            .count(),
        LAYER_STEPS,
        "{again:?}"
    );
    rt().block_on(async {
        let c = &d.client;
        let t = c.get_template("agent").await.unwrap();
        assert_eq!(t.cached_steps, LAYER_STEPS);
        // A changed file: its COPY and what follows run again, what comes before does not.
        write(&ctx.join("data.txt"), "data v2\n");
        let mut req = build_req("agent", DOCKERFILE, &images.bb);
        req.context = Some(tar_dir(&ctx));
        let t = c.build_template(req).await.unwrap();
        assert_eq!(t.cached_steps, 1, "only `COPY app/ bin/` is cached");
        let sb = create(c, "agent").await;
        assert_eq!(out(c, &sb.id, "cat /app/data.txt").await, "data v2\n");

        // In use: not deletable, and not rebuilt under the sandbox's feet.
        assert_eq!(api_err(c.delete_template("agent").await).0, 409);
        let mut req = build_req("agent", DOCKERFILE, &images.bb);
        req.context = Some(tar_dir(&ctx));
        assert_eq!(api_err(c.build_template(req).await).0, 409);
        c.delete_sandbox(&sb.id).await.unwrap();

        // Bad input changes nothing: unsupported instructions (with their line), a
        // failing RUN, a missing COPY source, a bad name.
        let (status, code, msg) = api_err(
            c.build_template(build_req("bad", "FROM scratch\nVOLUME /x\n", ""))
                .await,
        );
        assert_eq!((status, code.as_str()), (400, "invalid_request"));
        assert!(msg.contains("line 2"), "{msg}");
        let failing = format!(
            "FROM {}\nUSER root\nRUN echo partial > /x && exit 3\n",
            images.bb
        );
        let (status, code, msg) = api_err(c.build_template(build_req("bad", &failing, "")).await);
        assert_eq!((status, code.as_str()), (422, "build_failed"), "{msg}");
        assert!(msg.contains("line 3") && msg.contains('3'), "{msg}");
        let missing = format!("FROM {}\nCOPY nope.txt /\n", images.bb);
        let (status, _, msg) = api_err(c.build_template(build_req("bad", &missing, "")).await);
        assert_eq!(status, 422, "{msg}");
        assert_eq!(
            api_err(
                c.build_template(build_req("-bad", "FROM scratch\n", ""))
                    .await
            )
            .0,
            400
        );
        assert_eq!(api_err(c.get_template("bad").await).0, 404);
        assert!(c
            .list_sandboxes::<&str, &str>(&[])
            .await
            .unwrap()
            .is_empty());

        // start_cmd and ready_cmd: the create answers once ready_cmd succeeds.
        let svc = "FROM agent\nUSER root\nRUN echo svc > /svc\n";
        let mut req = build_req("svc", svc, "");
        req.start_cmd = Some("sleep 0.3; touch /tmp/ready; exec sleep 1000".into());
        req.ready_cmd = Some("test -f /tmp/ready".into());
        c.build_template(req).await.unwrap();
        let sb = create(c, "svc").await;
        assert_eq!(
            out(c, &sb.id, "cat /svc; test -f /tmp/ready && echo ready").await,
            "svc\nready\n"
        );
        let procs = c.list_processes(&sb.id).await.unwrap();
        assert!(
            procs.iter().any(|p| p.tag.as_deref() == Some("start")),
            "{procs:?}"
        );
        c.delete_sandbox(&sb.id).await.unwrap();
        // A pool of the template counts a member ready only once its ready_cmd succeeded.
        let spec = warren_api::PoolSpec {
            image: Some("svc".into()),
            size: 1,
            ..Default::default()
        };
        c.put_pool("svcpool", &spec).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while c.get_pool("svcpool").await.unwrap().ready < 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool never filled"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let claimed = c
            .create_sandbox(&CreateSandboxRequest {
                pool: Some("svcpool".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(claimed.pool.as_deref(), Some("svcpool"));
        assert_eq!(
            out(c, &claimed.id, "test -f /tmp/ready && echo ready").await,
            "ready\n"
        );
        c.delete_sandbox(&claimed.id).await.unwrap();
        c.delete_pool("svcpool").await.unwrap();
        // A ready_cmd that never succeeds fails the create, and leaves no sandbox.
        let mut req = build_req("never", "FROM svc\n", "");
        req.ready_cmd = Some("false".into());
        req.ready_timeout_secs = Some(1);
        c.build_template(req).await.unwrap();
        let (status, code, _) = api_err(
            c.create_sandbox(&CreateSandboxRequest {
                image: Some("never".into()),
                ..Default::default()
            })
            .await,
        );
        assert_eq!((status, code.as_str()), (504, "deadline_exceeded"));
        assert!(c
            .list_sandboxes::<&str, &str>(&[])
            .await
            .unwrap()
            .is_empty());

        for name in ["never", "svc", "agent"] {
            c.delete_template(name).await.unwrap();
        }
        assert!(c.list_templates().await.unwrap().is_empty());
    });
}

fn tar_dir(dir: &Path) -> reqwest::Body {
    let mut buf = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut buf);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", dir).unwrap();
        tar.finish().unwrap();
    }
    reqwest::Body::from(buf)
}

/// One entry of a file tree: (type, mode, uid, gid, content or link target).
type Entry = (char, u32, u32, u32, Vec<u8>);

/// Every entry under `root` by relative path, without Warren's and buildah's per-container
/// files and the kernel's mount points.
fn tree(root: &Path) -> BTreeMap<String, Entry> {
    const SKIP: &[&str] = &[
        "etc/hostname",
        "etc/hosts",
        "etc/resolv.conf",
        "proc",
        "sys",
        "dev",
        "run",
    ];
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let key = r.to_string_lossy().into_owned();
            if SKIP.contains(&key.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = m.file_type();
            let (kind, data) = if ft.is_dir() {
                stack.push(r.clone());
                ('d', Vec::new())
            } else if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(e.path())
                        .unwrap()
                        .into_os_string()
                        .into_encoded_bytes(),
                )
            } else if ft.is_file() {
                ('f', std::fs::read(e.path()).unwrap())
            } else if ft.is_fifo() {
                ('p', Vec::new())
            } else {
                ('?', Vec::new())
            };
            out.insert(key, (kind, m.mode() & 0o7777, m.uid(), m.gid(), data));
        }
    }
    out
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The same Dockerfile through buildah and through Warren: the same paths, types, modes,
/// owners and contents.
#[test]
fn a_template_matches_buildahs_build_of_the_same_dockerfile() {
    // `.ci/run` installs it, as it installs the registry the image tests need.
    assert!(
        which("buildah"),
        "this test needs buildah: apt-get install buildah"
    );
    let reg = Registry::start().expect("registry");
    let images = push_test_images(&reg).expect("test images");
    let d = Daemon::start_with(&["--insecure-registry", &reg.host(), "--pull", "missing"]);
    let ctx_dir = scratch("oracle-ctx");
    let ctx = ctx_dir.path().to_path_buf();
    context(&ctx);
    write(&ctx.join("Dockerfile"), DOCKERFILE);
    let store_dir = scratch("buildah");
    let store = store_dir.path().to_path_buf();
    let buildah = |args: &[&str]| {
        let o = Command::new("buildah")
            .args([
                "--root",
                store.join("root").to_str().unwrap(),
                "--runroot",
                store.join("runroot").to_str().unwrap(),
                "--storage-driver",
                "vfs",
            ])
            .args(args)
            .env("BUILDAH_ISOLATION", "chroot")
            .env("REGISTRIES_CONFIG_PATH", store.join("registries.conf"))
            .output()
            .unwrap();
        assert!(o.status.success(), "buildah {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    std::fs::write(store.join("registries.conf"), "").unwrap();
    let base_arg = format!("BASE={}", images.bb);
    buildah(&[
        "build",
        "--tls-verify=false",
        "--network",
        "host",
        "--layers=false",
        "--build-arg",
        &base_arg,
        "-t",
        "oracle",
        ctx.to_str().unwrap(),
    ]);
    let container = buildah(&["from", "--pull=never", "oracle"]);
    let theirs = PathBuf::from(buildah(&["mount", &container]));
    let theirs_tree = tree(&theirs);

    let built = warren(
        &d.url,
        &[
            "build",
            "-q",
            "-t",
            "agent",
            "--build-arg",
            &base_arg,
            ctx.to_str().unwrap(),
        ],
    );
    assert!(built.status.success(), "{built:?}");
    // Warren's tree: its layers stacked read-only with overlayfs, as a sandbox sees them.
    let record = std::fs::read_dir(d.data_dir.join("oci/images"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap())
        .find(|v| v["name"] == "agent")
        .expect("the template's record");
    let lowers: Vec<String> = record["layers"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|l| {
            let id = l["diff_id"].as_str().unwrap().replace("sha256:", "sha256-");
            d.data_dir
                .join("oci/layers")
                .join(id)
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mnt_dir = scratch("oracle-mnt");
    let mnt = mnt_dir.path().to_path_buf();
    let mounted = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lowers.join(":")))
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(mounted.success());
    let guard = Mounted(&mnt);
    let ours_tree = tree(&mnt);
    drop(guard);
    buildah(&["umount", &container]);
    buildah(&["rm", &container]);
    let _ = Command::new("buildah")
        .args(["--root", store.join("root").to_str().unwrap(), "--runroot"])
        .arg(store.join("runroot"))
        .args(["--storage-driver", "vfs", "rmi", "-a", "-f"])
        .output();

    let differences: Vec<String> = theirs_tree
        .keys()
        .chain(ours_tree.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| theirs_tree.get(*k) != ours_tree.get(*k))
        .map(|k| {
            let show = |e: Option<&Entry>| {
                e.map(|(t, m, u, g, data)| format!("{t} {m:o} {u}:{g} {} bytes", data.len()))
                    .unwrap_or_else(|| "absent".into())
            };
            format!(
                "{k}: buildah {} / warren {}",
                show(theirs_tree.get(k)),
                show(ours_tree.get(k))
            )
        })
        .collect();
    let _ = std::fs::remove_dir_all(&store);
    let _ = std::fs::remove_dir_all(&ctx);
    let _ = std::fs::remove_dir_all(&mnt);
    assert!(
        differences.is_empty(),
        "trees differ:\n{}",
        differences.join("\n")
    );
    for path in [
        "app/greeting",
        "app/bin/run.sh",
        "opt/unpacked/inner/file",
        "tmp/by-user",
    ] {
        assert!(theirs_tree.contains_key(path), "{path} in both trees");
    }
    assert!(
        !theirs_tree.contains_key("opt/a.txt"),
        "the whiteout in both trees"
    );
    eprintln!("{} entries compared", theirs_tree.len());
}

/// A daemon killed in the middle of a RUN: the successor removes the build's sandbox and
/// step image, records no template, and the same build then succeeds.
#[test]
fn a_build_cut_short_by_a_crash_leaves_nothing() {
    let reg = Registry::start().expect("registry");
    let images = push_test_images(&reg).expect("test images");
    let (data_dir, parent) = Daemon::fresh_names();
    let host = reg.host();
    let args = ["--insecure-registry", host.as_str(), "--pull", "missing"];
    let mut first = Daemon::launch_plain(data_dir.clone(), parent.clone(), &args);
    let slow = format!(
        "FROM {}\nUSER root\nRUN echo started && sleep 30\n",
        images.bb
    );
    rt().block_on(async {
        let mut events = first
            .client
            .build_template_events(build_req("slow", &slow, ""))
            .await
            .unwrap();
        use futures::StreamExt;
        // The RUN is under way once its output arrives.
        while let Some(ev) = events.next().await {
            if let warren_client::BuildEvent::Log(l) = ev.unwrap() {
                if l.data.contains("started") {
                    break;
                }
            }
        }
    });
    first.stop_with(libc::SIGKILL);
    std::mem::forget(first);
    let second = Daemon::launch(data_dir, parent, &args);
    rt().block_on(async {
        let c = &second.client;
        assert!(c
            .list_sandboxes::<&str, &str>(&[])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(api_err(c.get_template("slow").await).0, 404);
        let hidden = std::fs::read_dir(second.data_dir.join("oci/images"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .filter(|r| r.contains("warren-build/"))
            .count();
        assert_eq!(hidden, 0, "step images left");
        let quick = format!("FROM {}\nUSER root\nRUN echo done > /done\n", images.bb);
        let t = c
            .build_template(build_req("slow", &quick, ""))
            .await
            .unwrap();
        assert_eq!(t.steps, 2);
        c.delete_template("slow").await.unwrap();
    });
}
