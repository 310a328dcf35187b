//! gVisor sandboxes through the daemon (as root, with runsc installed: CI installs it): the
//! API behaves as on the native runtime — exec and streams, durable processes, files,
//! pause/resume, stop/start, snapshots, rollback, fork, stats, adoption after `kill -9` of
//! the daemon — while the kernel inside is gVisor's. Runtime-independent behaviour is
//! checked by the same assertions the native tests make; what only gVisor does (its
//! kernel, a host-kernel-only syscall refused) by its own.

mod common;

use std::time::Duration;

use common::*;
use warren_api::{CreateSandboxRequest, CreateSnapshotRequest, ForkRequest, Runtime};

fn gvisor() -> CreateSandboxRequest {
    CreateSandboxRequest {
        runtime: Some(Runtime::Gvisor),
        ..Default::default()
    }
}

#[test]
fn capabilities_list_both_runtimes_and_a_sandbox_says_which_it_uses() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.runtime, "native");
        let g = caps
            .runtimes
            .iter()
            .find(|r| r.name == Runtime::Gvisor)
            .expect("gvisor listed");
        assert!(g.available, "{:?}", g.unavailable_reason);
        assert_eq!(g.kernel, "gvisor");
        assert!(g.pause && g.stop && g.snapshots && g.fork && g.rollback);
        assert!(
            !g.memory_snapshots,
            "this runsc's restore does not resume processes"
        );
        let n = caps
            .runtimes
            .iter()
            .find(|r| r.name == Runtime::Native)
            .unwrap();
        assert_eq!(n.kernel, "host");
        // gVisor's netstack on the native runtime's veth, policy and DNS proxy.
        assert_eq!(g.network_modes, n.network_modes);
        assert!(g.network_modes.iter().any(|m| m == "nat") && g.egress_policy);
        // What differs is said: host directories refused, the memory limit ends it all.
        assert!(!g.host_path_mounts && g.memory_limit_ends_sandbox);
        assert!(n.host_path_mounts && !n.memory_limit_ends_sandbox);

        let native = create(c).await;
        assert_eq!(native.runtime, Runtime::Native);
        // The server's default network, nat, on gVisor too.
        let sb = c.create_sandbox(&gvisor()).await.unwrap();
        assert_eq!(sb.runtime, Runtime::Gvisor);
        assert_eq!(sb.network.mode, warren_api::NetworkMode::Nat);
        assert_eq!(
            c.get_sandbox(&sb.id).await.unwrap().runtime,
            Runtime::Gvisor
        );
        // Same command, two kernels.
        let inside = run_sh(c, &sb.id, "uname -r").await;
        assert_eq!(inside.stdout.trim(), "4.4.0", "{inside:?}");
        let host = run_sh(c, &native.id, "uname -r").await;
        assert_ne!(host.stdout.trim(), "4.4.0");
    });
}

#[test]
fn gvisor_sandboxes_exec_files_processes_pause_stop_snapshot_fork_and_stats() {
    let d = Daemon::start_with(&["--runtime", "gvisor", "--default-network", "isolated"]);
    rt().block_on(async {
        let c = &d.client;
        assert_eq!(c.capabilities().await.unwrap().runtime, "gvisor");
        // The server's default runtime: no `runtime` in the request.
        let sb = create(c).await;
        assert_eq!(sb.runtime, Runtime::Gvisor);
        let id = sb.id.as_str();

        // Exec: exit codes, stdout and stderr apart.
        let r = run_sh(c, id, "echo out; echo err >&2; exit 3").await;
        assert_eq!(
            (r.exit_code, r.stdout.as_str(), r.stderr.as_str()),
            (3, "out\n", "err\n")
        );

        // Files: written through the API, read inside, and back.
        c.write_file(id, "/root/hello.txt", "from the host", None)
            .await
            .unwrap();
        let r = run_sh(c, id, "cat /root/hello.txt; echo -n inside > /tmp/made").await;
        assert_eq!(r.stdout, "from the host");
        assert_eq!(c.read_file_bytes(id, "/tmp/made").await.unwrap(), b"inside");
        // Confined: `..` and absolute links stay inside (this gVisor has no openat2; the
        // agent resolves paths itself).
        run_sh(
            c,
            id,
            "ln -s / /root/up && ln -s ../../../../etc/hostname /root/rel",
        )
        .await;
        let hostname = c.read_file_bytes(id, "/root/rel").await.unwrap();
        assert_eq!(String::from_utf8_lossy(&hostname).trim(), id);
        let listed = c.list_files(id, "/root/up", 1).await.unwrap();
        assert!(
            listed.entries.iter().any(|e| e.path == "/root/up/root"),
            "{listed:?}"
        );
        // File metadata needs extended attributes, which this gVisor refuses: typed.
        let err = c
            .set_file_metadata(
                id,
                "/root/hello.txt",
                [("k".to_string(), "v".to_string())].into_iter().collect(),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, warren_client::Error::Api { status: 501, .. }),
            "{err}"
        );

        // A durable process keeps running and its output is kept.
        let p = c
            .start_process(
                id,
                &process_req(&["sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"]),
            )
            .await
            .unwrap();
        let mut done = None;
        for _ in 0..100 {
            let now = c.get_process(id, &p.pid.to_string()).await.unwrap();
            if now.exit_code.is_some() {
                done = Some(now);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(done.expect("process ended").exit_code, Some(0));

        // Pause freezes it (sentry and gofer in the cgroup), resume thaws it.
        assert_eq!(
            c.pause(id).await.unwrap().state,
            warren_api::SandboxState::Paused
        );
        let err = c.exec(id, &req(&["true"])).await.unwrap_err();
        assert_eq!(err.code(), Some("sandbox_paused"), "{err}");
        c.resume(id).await.unwrap();
        assert_eq!(run(c, id, req(&["true"])).await.exit_code, 0);

        // Stats come from the same cgroup.
        let stats = c.stats(id).await.unwrap();
        assert!(stats.memory_bytes > 0 && stats.pids > 0, "{stats:?}");

        // Snapshot, change, roll back: the files come back, on gVisor again.
        let snap = c
            .create_snapshot(id, &CreateSnapshotRequest { name: None })
            .await
            .unwrap();
        run_sh(c, id, "echo changed > /root/hello.txt; rm /tmp/made").await;
        let back = c.rollback(id, &snap.id).await.unwrap();
        assert_eq!(back.runtime, Runtime::Gvisor);
        let r = run_sh(c, id, "cat /root/hello.txt /tmp/made; uname -r").await;
        assert_eq!(r.stdout, "from the hostinside4.4.0\n", "{r:?}");

        // Stop keeps the files; start brings gVisor back on them.
        c.stop(id).await.unwrap();
        c.start(id).await.unwrap();
        assert_eq!(run_sh(c, id, "cat /tmp/made").await.stdout, "inside");

        // A fork is a gVisor sandbox with the same files.
        let fork = c.fork(id, &ForkRequest::default()).await.unwrap();
        assert_eq!(fork.runtime, Runtime::Gvisor);
        assert_eq!(
            run_sh(c, &fork.id, "cat /root/hello.txt").await.stdout,
            "from the host"
        );

        // A restore takes the runtime it is asked for (here the native one).
        let native = c
            .create_sandbox(&CreateSandboxRequest {
                snapshot: Some(snap.id.clone()),
                runtime: Some(Runtime::Native),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(native.runtime, Runtime::Native);
        let r = run_sh(c, &native.id, "cat /root/hello.txt; uname -r").await;
        assert!(r.stdout.starts_with("from the host"), "{r:?}");
        assert!(!r.stdout.contains("4.4.0"), "{r:?}");
    });
}

#[test]
fn a_host_kernel_only_syscall_is_refused_and_the_kernel_is_gvisors() {
    let d = Daemon::start();
    rt().block_on(async {
        let c = &d.client;
        let sb = c.create_sandbox(&gvisor()).await.unwrap();
        // gVisor implements neither io_uring nor the kernel keyring, nor kernel modules:
        // the host kernel's code for them is out of reach.
        let py = "import ctypes,os\n\
            libc=ctypes.CDLL(None,use_errno=True)\n\
            for name,nr in (('io_uring_setup',425),('keyctl',250),('init_module',175),('bpf',321)):\n\
            \x20   r=libc.syscall(nr,0,0,0,0,0)\n\
            \x20   print(name,r,os.strerror(ctypes.get_errno()))\n";
        c.write_file(&sb.id, "/root/sys.py", py.to_string(), None)
            .await
            .unwrap();
        let r = run_sh(c, &sb.id, "python3 /root/sys.py").await;
        assert_eq!(r.exit_code, 0, "{r:?}");
        for line in r.stdout.lines() {
            let mut f = line.split_whitespace();
            let (name, rc) = (f.next().unwrap(), f.next().unwrap());
            assert_eq!(rc, "-1", "{name} succeeded inside gVisor: {line}");
        }
        // dmesg is gVisor's own boot log.
        let r = run_sh(c, &sb.id, "cat /proc/version").await;
        assert!(!r.stdout.contains(&std::fs::read_to_string("/proc/version").unwrap()[..20]));
    });
}

#[test]
fn gvisor_sandboxes_are_adopted_after_the_daemon_is_killed() {
    let (data_dir, parent) = Daemon::fresh_names();
    let mut d = Daemon::launch_plain(data_dir.clone(), parent.clone(), &["--runtime", "gvisor"]);
    let rt = rt();
    let (id, pid) = rt.block_on(async {
        let c = &d.client;
        let sb = create(c).await;
        let p = c
            .start_process(
                &sb.id,
                &process_req(&[
                    "sh",
                    "-c",
                    "i=0; while true; do i=$((i+1)); echo $i > /root/count; sleep 0.05; done",
                ]),
            )
            .await
            .unwrap();
        (sb.id, p.pid)
    });
    let status = d.stop_with(libc::SIGKILL);
    assert!(!status.success());
    // Its Drop would remove the data dir, which the next daemon needs.
    std::mem::forget(d);
    let d = Daemon::launch(data_dir, parent, &["--runtime", "gvisor"]);
    rt.block_on(async {
        let c = &d.client;
        let sb = c.get_sandbox(&id).await.unwrap();
        assert_eq!(sb.state, warren_api::SandboxState::Running);
        assert_eq!(sb.runtime, Runtime::Gvisor);
        // Its process kept counting through the crash.
        let p = c.get_process(&id, &pid.to_string()).await.unwrap();
        assert!(p.exit_code.is_none(), "{p:?}");
        let a: u64 = run_sh(c, &id, "cat /root/count")
            .await
            .stdout
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b: u64 = run_sh(c, &id, "cat /root/count")
            .await
            .stdout
            .trim()
            .parse()
            .unwrap();
        assert!(b > a, "{a} then {b}");
        c.delete_sandbox(&id).await.unwrap();
    });
}
