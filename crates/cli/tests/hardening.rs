//! Issue #9 on the real kernel (as root): sandbox root is an unprivileged host uid of its
//! own, PID 1 is out of reach, and one sandbox exhausting per-user kernel budgets (epoll
//! watches, inotify instances) harms neither the daemon, nor host root, nor other sandboxes.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use warren_api::{
    CreateProcessRequest, CreateSandboxRequest, ExecRequest, ExecUser, ForkRequest, PoolSpec,
    Resources,
};
use warren_client::Client;

const RANGE: u32 = 65536;

/// Host uids (real, effective, saved, fs) of every process in sandbox `id`'s cgroup.
fn host_uids(parent: &str, id: &str) -> BTreeSet<u32> {
    let needle = format!("/{parent}/{id}\n");
    let mut uids = BTreeSet::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        let in_it = std::fs::read_to_string(e.path().join("cgroup"))
            .map(|c| c.contains(&needle))
            .unwrap_or(false);
        if !in_it {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|u| u.parse::<u32>().ok()),
            );
        }
    }
    uids
}

/// The host uid of root in `id`'s sandbox, checked to be one range's start, not 0.
fn range_of(d: &Daemon, id: &str) -> u32 {
    let uids = host_uids(&d.cgroup_parent, id);
    assert!(!uids.is_empty(), "no process of {id} found");
    let base = *uids.iter().next().unwrap();
    assert_ne!(base, 0, "sandbox {id} runs as host root: {uids:?}");
    assert_eq!(base % RANGE, 0, "{uids:?}");
    assert!(
        uids.iter().all(|u| *u >= base && *u < base + RANGE),
        "sandbox {id}'s processes are outside its range: {uids:?}"
    );
    base
}

fn upper(d: &Daemon, id: &str) -> PathBuf {
    d.data_dir.join("sandboxes").join(id).join("fs/upper")
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid())
}

async fn out(c: &Client, id: &str, script: &str) -> String {
    let r = run_sh(c, id, script).await;
    assert_eq!(r.exit_code, 0, "{script}: {} {}", r.stdout, r.stderr);
    r.stdout.trim().to_string()
}

#[test]
fn sandbox_root_is_an_unprivileged_host_uid_of_its_own_and_owners_survive() {
    let mut d = Daemon::start();
    let caps = rt().block_on(d.client.capabilities()).unwrap();
    assert!(caps.isolation.user_namespace, "{caps:?}");
    let (a, b, snap);
    {
        let c = &d.client;
        let r = rt();
        (a, b) = r.block_on(async { (create(c).await.id, create(c).await.id) });
        r.block_on(async {
            // Inside: root, and the image and host /usr are root's.
            assert_eq!(out(c, &a, "id -u; id -g").await, "0\n0");
            assert_eq!(
                out(
                    c,
                    &a,
                    "stat -c %u:%g / /usr /usr/bin/ls /etc/passwd /etc/hostname"
                )
                .await,
                "0:0\n0:0\n0:0\n0:0\n0:0"
            );
            assert_eq!(
                out(c, &a, "head -1 /proc/self/uid_map | awk '{print $1, $3}'").await,
                "0 65536"
            );
            // A file of `user` (1000) and one of root.
            let mut as_user =
                sh("echo u > /workspace/u && mkdir -p /workspace/d && echo v > /workspace/d/v");
            as_user.user = Some(ExecUser::User);
            let res = run(c, &a, as_user).await;
            assert_eq!(res.exit_code, 0, "{}", res.stderr);
            out(
                c,
                &a,
                "echo r > /workspace/r && chmod 4755 /workspace/r && ls -ln /workspace",
            )
            .await;
            let st = c.stat(&a, "/workspace/u").await.unwrap();
            assert_eq!((st.uid, st.gid), (1000, 1000));
        });
        let (ra, rb) = (range_of(&d, &a), range_of(&d, &b));
        assert_ne!(ra, rb, "two sandboxes share a host uid range");
        // On the host, what they wrote belongs to their range, never to root.
        assert_eq!(
            owner(&upper(&d, &a).join("workspace/u")),
            (ra + 1000, ra + 1000)
        );
        assert_eq!(owner(&upper(&d, &a).join("workspace/r")), (ra, ra));
        assert_eq!(owner(&upper(&d, &a)), (ra, ra));

        // Snapshot, restore, fork: owners read back the same inside, and move into the new
        // sandbox's own range on the host.
        snap = r.block_on(c.sandbox(a.clone()).snapshot(None)).unwrap().id;
        let restored = r
            .block_on(c.create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.clone()),
                ..Default::default()
            }))
            .unwrap()
            .id;
        let forked = r.block_on(c.fork(&a, &ForkRequest::default())).unwrap().id;
        for id in [&restored, &forked] {
            let rid = range_of(&d, id);
            assert!(rid != ra && rid != rb, "{id} reuses a live range");
            r.block_on(async {
                assert_eq!(
                    out(
                        c,
                        id,
                        "stat -c '%u:%g %a' /workspace/u /workspace/d/v /workspace/r"
                    )
                    .await,
                    "1000:1000 644\n1000:1000 644\n0:0 4755"
                );
                // Still writable by its owner inside.
                let mut w = sh("echo more >> /workspace/u");
                w.user = Some(ExecUser::User);
                assert_eq!(run(c, id, w).await.exit_code, 0);
            });
            assert_eq!(
                owner(&upper(&d, id).join("workspace/u")),
                (rid + 1000, rid + 1000)
            );
            assert_eq!(owner(&upper(&d, id).join("workspace/r")), (rid, rid));
        }

        // Rollback to the snapshot (stop first): owners kept, range kept.
        r.block_on(async {
            out(c, &a, "rm -rf /workspace/d; echo changed > /workspace/u").await;
            c.stop(&a).await.unwrap();
            c.rollback(&a, &snap).await.unwrap();
            c.start(&a).await.unwrap();
            assert_eq!(
                out(c, &a, "cat /workspace/u; stat -c %u /workspace/d/v").await,
                "u\n1000"
            );
        });
        assert_eq!(range_of(&d, &a), ra);

        // A pool member has a range of its own too.
        r.block_on(async {
            c.put_pool(
                "hard",
                &PoolSpec {
                    size: 1,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let p = c.get_pool("hard").await.unwrap();
                if p.ready >= 1 {
                    break;
                }
                assert!(Instant::now() < deadline, "pool never filled: {p:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let claimed = r
            .block_on(c.create_sandbox(&CreateSandboxRequest {
                pool: Some("hard".into()),
                ..Default::default()
            }))
            .unwrap()
            .id;
        let live: Vec<u32> = [&a, &b, &restored, &forked]
            .iter()
            .map(|id| range_of(&d, id))
            .collect();
        assert!(!live.contains(&range_of(&d, &claimed)));
        r.block_on(c.delete_pool("hard")).unwrap();
    }

    // A crash and a restart: every sandbox keeps its range, new ones get another.
    let before: Vec<(String, u32)> = [&a, &b]
        .iter()
        .map(|id| (id.to_string(), range_of(&d, id)))
        .collect();
    d.stop_with(libc::SIGKILL);
    let d = Daemon::launch(d.data_dir.clone(), d.cgroup_parent.clone(), &[]);
    for (id, range) in &before {
        assert_eq!(
            range_of(&d, id),
            *range,
            "{id} changed range across a restart"
        );
    }
    let fresh = rt().block_on(create(&d.client)).id;
    let rf = range_of(&d, &fresh);
    assert!(
        before.iter().all(|(_, r)| *r != rf),
        "a new sandbox took a live range"
    );
    // The restarted daemon took its own window back (not a new one beside it).
    let (base, count) = claimed_window(&d);
    let in_window = |r: u32| r >= base && u64::from(r) < u64::from(base) + u64::from(count) * 65536;
    assert!(
        before.iter().all(|(_, r)| in_window(*r)) && in_window(rf),
        "window {base}-{count} does not hold {before:?} and {rf}"
    );

    // Under another window (an operator's new --userns-base): a running sandbox keeps its
    // range (and its old window stays taken while it runs); a stopped one moves into the
    // new window when it starts, owners and all.
    let (a, b) = (&before[0].0, &before[1].0);
    rt().block_on(d.client.stop(a)).unwrap();
    let mut d = d;
    d.stop_with(libc::SIGKILL);
    let new_base: u32 = 3 << 30;
    let d = Daemon::launch(
        d.data_dir.clone(),
        d.cgroup_parent.clone(),
        &["--userns-base", &new_base.to_string()],
    );
    assert_eq!(claimed_window(&d).0, new_base);
    assert_eq!(
        range_of(&d, b),
        before[1].1,
        "the running sandbox changed range"
    );
    rt().block_on(async {
        d.client.start(a).await.unwrap();
        assert_eq!(
            out(&d.client, a, "stat -c %u:%g /workspace/u; id -u").await,
            "1000:1000\n0"
        );
    });
    let ra = range_of(&d, a);
    assert!(ra >= new_base, "{a} kept range {ra} outside the new window");
    assert_eq!(
        owner(&upper(&d, a).join("workspace/u")),
        (ra + 1000, ra + 1000)
    );
}

/// The window of user-namespace ranges the registry says `d`'s data dir holds.
fn claimed_window(d: &Daemon) -> (u32, u32) {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/run/warren/userns").unwrap().flatten() {
        let who = std::fs::read_to_string(e.path()).unwrap_or_default();
        if who.starts_with(&format!("{} (pid {})", d.data_dir.display(), d.pid())) {
            let name = e.file_name().to_string_lossy().to_string();
            let (b, c) = name.split_once('-').unwrap();
            found.push((b.parse().unwrap(), c.parse().unwrap()));
        }
    }
    assert_eq!(
        found.len(),
        1,
        "claims of {}: {found:?}",
        d.data_dir.display()
    );
    found[0]
}

#[test]
fn pid1_is_out_of_reach_and_holds_no_host_fd() {
    // The daemon inherits an fd without close-on-exec (as from a careless parent): it must
    // not reach a sandbox.
    let canary = std::env::temp_dir().join(format!("warren-canary-{}", std::process::id()));
    std::fs::write(&canary, "host secret\n").unwrap();
    let file = std::fs::File::open(&canary).unwrap();
    // The open fd is what matters; no name is left behind even if the test fails.
    std::fs::remove_file(&canary).unwrap();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&file);
    let d = daemon_with_pre_exec(move || {
        // SAFETY: dup2 into a fixed number in the forked child before exec; async-signal-safe.
        if unsafe { libc::dup2(raw, 77) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    });
    drop(file);
    let c = &d.client;
    let r = rt();
    let sb = r.block_on(create(c)).id;
    r.block_on(async {
        // /proc/1 is not readable or writable from inside, even by sandbox root.
        let res = run_sh(
            c,
            &sb,
            "cat /proc/1/environ >/dev/null 2>&1 && echo environ; \
             ls /proc/1/fd >/dev/null 2>&1 && echo fd; \
             ls -l /proc/1/fd/1 >/dev/null 2>&1 && echo fd1; \
             python3 -c 'open(\"/proc/1/mem\",\"r+b\",buffering=0)' 2>/dev/null && echo mem; \
             ls /proc/self/fd | sort -n | tr '\\n' ' '",
        )
        .await;
        assert_eq!(res.stdout.trim(), "0 1 2 3", "{}", res.stderr);
        // The agent refuses file requests through its own fds too.
        assert!(c.read_file_bytes(&sb, "/proc/self/fd/1").await.is_err());
        assert!(c.read_file_bytes(&sb, "/proc/1/environ").await.is_err());
    });
    // From the host: PID 1's fds are sockets, pipes, anon inodes, the sandbox's own
    // /dev/null and its own root; not the daemon's inherited fd 77, not a host file.
    let pid1: u32 =
        std::fs::read_to_string(d.data_dir.join("sandboxes").join(&sb).join("agent.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    let own_dev = std::fs::metadata(format!("/proc/{pid1}/root/dev/null"))
        .unwrap()
        .dev();
    let own_root = std::fs::metadata(format!("/proc/{pid1}/root")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid1}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && !l.contains("\t0\t")),
        "{status}"
    );
    let mut seen = vec![];
    for e in std::fs::read_dir(format!("/proc/{pid1}/fd"))
        .unwrap()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap();
        let t = target.to_string_lossy().to_string();
        seen.push(format!("{} -> {t}", e.file_name().to_string_lossy()));
        if t.starts_with("socket:") || t.starts_with("pipe:") || t.starts_with("anon_inode:") {
            continue;
        }
        let m = std::fs::metadata(e.path()).unwrap();
        // The agent holds its root open (every request path resolves below it).
        let is_own_root = t == "/" && (m.dev(), m.ino()) == (own_root.dev(), own_root.ino());
        assert!(
            (t == "/dev/null" && m.dev() == own_dev) || is_own_root,
            "PID 1 holds a host file: {t} (dev {} vs the sandbox's /dev {own_dev})",
            m.dev()
        );
    }
    assert!(!seen.iter().any(|s| s.starts_with("77 ")), "{seen:?}");
}

const EPOLL_HOG: &str = r#"
import select, os, sys, time
fds = [os.eventfd(0) for _ in range(15000)]
eps = []
total = 0
try:
    while True:
        ep = select.epoll()
        eps.append(ep)
        for fd in fds:
            ep.register(fd, select.EPOLLIN)
            total += 1
except OSError as e:
    open("/tmp/epoll.status", "w").write(f"{total} {e.errno}\n")
time.sleep(600)
"#;

const INOTIFY_HOG: &str = r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
n = 0
while libc.inotify_init1(0) >= 0:
    n += 1
open("/tmp/inotify.status", "w").write(f"{n} {ctypes.get_errno()}\n")
time.sleep(600)
"#;

/// Wait until the sandbox's `path` (an absolute path inside it) holds a status line;
/// return it. Read from the host side of its writable layer: while a sandbox holds all of
/// its uid's epoll watches its own agent cannot take new connections either (only the
/// attacker is hurt), so the files API cannot be used.
async fn wait_status(d: &Daemon, id: &str, path: &str, limit: Duration) -> String {
    let host = upper(d, id).join(path.trim_start_matches('/'));
    let deadline = Instant::now() + limit;
    loop {
        let s = std::fs::read_to_string(&host).unwrap_or_default();
        if s.ends_with('\n') {
            return s.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{path} never appeared in {id}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn host_python(code: &str) -> std::process::Output {
    std::process::Command::new("python3")
        .arg("-c")
        .arg(code)
        .output()
        .expect("python3 on the host")
}

/// The daemon still does everything for others while a sandbox holds all it may.
async fn daemon_and_others_work(d: &Daemon, other: &str) {
    let c = &d.client;
    c.health().await.expect("healthz");
    let fresh = create(c).await;
    assert_eq!(out(c, &fresh.id, "echo ok").await, "ok");
    c.delete_sandbox(&fresh.id).await.unwrap();
    assert_eq!(out(c, other, "echo ok").await, "ok");
    // files/watch (an inotify instance in the other sandbox) sees a change.
    let mut watch = c
        .watch_files(other, "/workspace", false)
        .await
        .expect("watch");
    out(c, other, "echo x > /workspace/watched").await;
    let ev = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a watch event within 10 s")
        .expect("watch stream open")
        .expect("watch event");
    assert!(ev.path.ends_with("/workspace/watched"), "{ev:?}");
}

#[test]
fn exhausting_per_user_kernel_budgets_stays_inside_the_sandbox() {
    let d = Daemon::start();
    let c = &d.client;
    let r = rt();
    let (hog, other) = r.block_on(async {
        let hog = create_with(
            c,
            Resources {
                memory_mib: Some(2048),
                ..Default::default()
            },
        )
        .await
        .id;
        (hog, create(c).await.id)
    });
    r.block_on(async {
        for (name, code) in [("epoll.py", EPOLL_HOG), ("inotify.py", INOTIFY_HOG)] {
            c.write_file(
                &hog,
                &format!("/workspace/{name}"),
                code.as_bytes().to_vec(),
                None,
            )
            .await
            .unwrap();
        }
        // 1. inotify instances: the sandbox takes every one its uid may have (128 by
        //    default); host root and the other sandbox keep theirs.
        c.start_process(
            &hog,
            &CreateProcessRequest {
                cmd: vec!["python3".into(), "/workspace/inotify.py".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let status = wait_status(&d, &hog, "/tmp/inotify.status", Duration::from_secs(60)).await;
        let (n, errno) = status.split_once(' ').unwrap();
        assert_eq!(errno, libc::EMFILE.to_string(), "{status}");
        assert!(n.parse::<u32>().unwrap() >= 100, "{status}");
        let host = host_python("import ctypes; assert ctypes.CDLL(None).inotify_init1(0) >= 0");
        assert!(host.status.success(), "host root lost inotify: {host:?}");
        daemon_and_others_work(&d, &other).await;

        // 2. epoll watches: it registers until its uid's limit (ENOSPC), about 5 M watches
        //    of kernel memory charged to its own 2 GiB cgroup; host root (the daemon's
        //    accept loop) is not affected.
        c.start_process(
            &hog,
            &CreateProcessRequest {
                cmd: vec!["python3".into(), "/workspace/epoll.py".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let status = wait_status(&d, &hog, "/tmp/epoll.status", Duration::from_secs(300)).await;
        let (n, errno) = status.split_once(' ').unwrap();
        let max: u64 = std::fs::read_to_string("/proc/sys/fs/epoll/max_user_watches")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(errno, libc::ENOSPC.to_string(), "{status}");
        assert!(
            n.parse::<u64>().unwrap() + 16 >= max,
            "stopped early: {status} of {max}"
        );
        let host = host_python(
            "import select, os; select.epoll().register(os.eventfd(0), select.EPOLLIN)",
        );
        assert!(host.status.success(), "host root lost epoll: {host:?}");
        daemon_and_others_work(&d, &other).await;
        c.delete_sandbox(&hog).await.unwrap();
    });
}

#[test]
fn nested_user_namespaces_stay_forbidden() {
    let d = Daemon::start();
    let c = &d.client;
    rt().block_on(async {
        let sb = create(c).await.id;
        let res = run_sh(
            c,
            &sb,
            "unshare -U true 2>/dev/null && echo unshare; \
             unshare -Ur true 2>/dev/null && echo unshare-r; \
             python3 -c 'import os; os.unshare(os.CLONE_NEWUSER)' 2>/dev/null && echo py; \
             python3 -c 'import os; os.unshare(os.CLONE_NEWNS)' 2>/dev/null && echo ns; \
             echo done",
        )
        .await;
        assert_eq!(res.stdout.trim(), "done", "{}", res.stderr);
    });
}

#[test]
fn user_namespaces_off_is_reported_and_runs_as_host_root() {
    let d = Daemon::start_with(&["--user-namespaces", "off"]);
    let c = &d.client;
    let r = rt();
    let caps = r.block_on(c.capabilities()).unwrap();
    assert!(!caps.isolation.user_namespace);
    let sb = r.block_on(create(c)).id;
    assert_eq!(host_uids(&d.cgroup_parent, &sb), BTreeSet::from([0]));
    let req = ExecRequest {
        cmd: vec!["id".into(), "-u".into()],
        ..Default::default()
    };
    assert_eq!(r.block_on(run(c, &sb, req)).stdout.trim(), "0");
}

/// A daemon whose process runs `f` between fork and exec.
fn daemon_with_pre_exec(f: impl FnMut() -> std::io::Result<()> + Send + Sync + 'static) -> Daemon {
    Daemon::start_customized(move |cmd: &mut std::process::Command| {
        // SAFETY: the closures given here only call dup2(2), which is async-signal-safe.
        unsafe { cmd.pre_exec(f) };
    })
}
