//! The native runtime's lifecycle on the real kernel (as root): pause/resume, stop/start,
//! stats, probe and reconcile, driven through `NativeRuntime` directly (no daemon).
//!
//! Every test owns a `Harness` (its own data dir and cgroup parent) whose `Drop` destroys
//! whatever the test made, even when the test fails; `finish` also checks the host is
//! clean (no cgroup, mount or process left).

mod common;

use common::{run, start_process};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use warren_runtime::{
    AgentClient, AttachEvent, Limits, Probe, Runtime, RuntimeError, SandboxId, SandboxSpec,
};
use warren_runtime_native::spec::SandboxPaths;
use warren_runtime_native::{NativeConfig, NativeRuntime, StorageConfig, UsernsSetting};
use warren_testkit::host::{
    cgroups_named, host_mounts_mentioning, processes_in_cgroup, test_idmap,
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Harness {
    rt: tokio::runtime::Runtime,
    native: NativeRuntime,
    data_dir: PathBuf,
    /// Cgroup parent; also the prefix of every sandbox id, so leak checks by name are
    /// specific to this test.
    tag: String,
    cleaned: bool,
}

impl Harness {
    fn new() -> Harness {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("wrl-{}-{n}", std::process::id());
        let data_dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&data_dir);
        let native = NativeRuntime::new(NativeConfig {
            data_dir: data_dir.clone(),
            helper_exe: env!("CARGO_BIN_EXE_warren-sandbox-init").into(),
            cgroup_parent: tag.clone(),
            storage: StorageConfig::Dir,
            user_namespaces: UsernsSetting::On,
        })
        .expect("native runtime");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        Harness {
            rt,
            native,
            data_dir,
            tag,
            cleaned: false,
        }
    }

    fn id(&self, name: &str) -> SandboxId {
        SandboxId::parse(&format!("{}-{name}", self.tag)).expect("sandbox id")
    }

    fn spec(&self, id: &str) -> SandboxSpec {
        SandboxSpec {
            id: SandboxId::parse(id).expect("sandbox id"),
            image: "host".into(),
            layers: Vec::new(),
            limits: Limits::default(),
            snapshot: None,
            idmap: Some(test_idmap(id)),
            network: warren_runtime::NetworkSpec::isolated(),
            mounts: Vec::new(),
            runtime: Default::default(),
        }
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("sandboxes").join(id)
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Remove everything this test made (idempotent; never panics).
    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        let native = self.native.clone();
        self.rt.block_on(async move {
            // reconcile(&[]) destroys every sandbox of this runtime, running, paused or
            // stopped.
            if let Err(e) = native.reconcile(&[]).await {
                eprintln!("cleanup: reconcile: {e}");
            }
            if let Err(e) = native.shutdown().await {
                eprintln!("cleanup: shutdown: {e}");
            }
        });
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

    /// Clean up and check that nothing is left on the host.
    fn finish(mut self) {
        self.cleanup();
        assert_eq!(
            cgroups_named(&self.tag),
            Vec::<PathBuf>::new(),
            "cgroups left"
        );
        assert_eq!(
            host_mounts_mentioning(&self.data_dir),
            Vec::<String>::new(),
            "mounts left"
        );
        assert_eq!(
            processes_in_cgroup(&self.tag),
            Vec::<String>::new(),
            "processes left"
        );
        assert!(!self.data_dir.exists());
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A process's whole output, following it until it exits.
async fn output_until_exit(rt: &NativeRuntime, id: &SandboxId, tag: &str) -> Vec<u8> {
    let mut stream = AgentClient::new(rt, id)
        .attach(tag, 0, true)
        .await
        .expect("attach");
    let mut out = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev.expect("attach stream") {
            AttachEvent::Stdout(b) | AttachEvent::Stderr(b) => out.extend_from_slice(&b),
            AttachEvent::Lost { from, to } => panic!("lost output {from}..{to}"),
            AttachEvent::Attached { .. } => {}
            AttachEvent::Ended(_) => return out,
        }
    }
    panic!("attach ended without the process's end");
}

/// The output a process produced so far (no follow).
async fn output_so_far(rt: &NativeRuntime, id: &SandboxId, tag: &str) -> Vec<u8> {
    let mut stream = AgentClient::new(rt, id)
        .attach(tag, 0, false)
        .await
        .expect("attach");
    let mut out = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev.expect("attach stream") {
            AttachEvent::Stdout(b) | AttachEvent::Stderr(b) => out.extend_from_slice(&b),
            _ => {}
        }
    }
    out
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn probe(rt: &NativeRuntime, id: &SandboxId) -> Probe {
    rt.probe(id).await.expect("probe")
}

fn agent_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("agent.pid"))
        .expect("agent.pid")
        .trim()
        .parse()
        .expect("agent.pid holds a pid")
}

#[test]
fn pause_freezes_cpu_and_keeps_process_output_and_resume_thaws() {
    let h = Harness::new();
    let id = h.id("pause");
    let rt = h.native.clone();
    assert!(rt.info().pause && rt.info().stop && rt.info().stats);
    h.block_on(async {
        rt.create(&h.spec(&id)).await.expect("create");
        start_process(&rt, &id, "spin", "while :; do :; done", 1 << 20).await;
        // Forks all the time: freezing must still complete.
        start_process(&rt, &id, "forker", "while :; do /bin/true; done", 1 << 20).await;
        start_process(
            &rt,
            &id,
            "talker",
            "echo before; while [ ! -e /tmp/go ]; do sleep 0.02; done; echo after",
            1 << 20,
        )
        .await;
        wait_for("the talker's first line", async || {
            output_so_far(&rt, &id, "talker").await == b"before\n"
        })
        .await;
        let c0 = rt.cpu_usage_us(&id).await.unwrap();
        wait_for("the busy loop to use cpu", async || {
            rt.cpu_usage_us(&id).await.unwrap() > c0 + 10_000
        })
        .await;

        rt.pause(&id).await.expect("pause");
        rt.pause(&id).await.expect("pause is idempotent");
        assert_eq!(probe(&rt, &id).await, Probe::Paused);
        let a = rt.cpu_usage_us(&id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = rt.cpu_usage_us(&id).await.unwrap();
        assert!(b <= a + 2_000, "cpu grew while paused: {a} -> {b} µs");
        let pids_paused = rt.stats(&id).await.unwrap().pids;
        // Counters of a frozen cgroup stay readable.
        let st = rt.stats(&id).await.expect("stats while paused");
        assert!(st.memory_bytes > 0 && st.pids >= 4, "{st:?}");
        assert_eq!(st.pids, pids_paused, "processes forked while paused");

        rt.resume(&id).await.expect("resume");
        rt.resume(&id).await.expect("resume is idempotent");
        assert_eq!(probe(&rt, &id).await, Probe::Running);
        let c = rt.cpu_usage_us(&id).await.unwrap();
        wait_for("cpu to grow after resume", async || {
            rt.cpu_usage_us(&id).await.unwrap() > c + 10_000
        })
        .await;

        // The talker goes on where it was: its output before and after is intact.
        assert_eq!(run(&rt, &id, "touch /tmp/go").await.0, 0);
        assert_eq!(
            output_until_exit(&rt, &id, "talker").await,
            b"before\nafter\n"
        );

        let missing = h.id("nope");
        assert!(matches!(
            rt.pause(&missing).await,
            Err(RuntimeError::NotFound(_))
        ));
        assert!(matches!(
            rt.resume(&missing).await,
            Err(RuntimeError::NotFound(_))
        ));
        // Destroy works on a paused sandbox too.
        rt.pause(&id).await.expect("pause");
        rt.destroy(&id).await.expect("destroy a paused sandbox");
        assert_eq!(probe(&rt, &id).await, Probe::Gone);
    });
    h.finish();
}

#[test]
fn stop_keeps_files_and_start_brings_a_fresh_agent() {
    let h = Harness::new();
    let id = h.id("stop");
    let dir = h.sandbox_dir(&id);
    let rt = h.native.clone();
    h.block_on(async {
        rt.create(&h.spec(&id)).await.expect("create");
        assert_eq!(
            run(&rt, &id, "echo x > /workspace/f && echo y > /usr/local/g")
                .await
                .0,
            0
        );
        start_process(&rt, &id, "old", "sleep 1000", 1 << 20).await;
        let old_agent = agent_pid(&dir);

        // Stop works on a paused sandbox.
        rt.pause(&id).await.expect("pause");
        rt.stop(&id).await.expect("stop a paused sandbox");
        rt.stop(&id).await.expect("stop is idempotent");
        assert_eq!(probe(&rt, &id).await, Probe::Stopped);
        assert!(dir.is_dir(), "stop removed the files");
        assert!(!dir.join("agent.sock").exists(), "stale agent.sock kept");
        assert_eq!(processes_in_cgroup(&h.tag), Vec::<String>::new());
        assert_eq!(cgroups_named(&id), Vec::<PathBuf>::new());
        let st = rt.stats(&id).await.expect("stats of a stopped sandbox");
        assert_eq!(
            (st.cpu_usage_us, st.memory_bytes, st.pids, st.net_rx_bytes),
            (0, 0, 0, 0)
        );
        assert!(st.disk_bytes > 0, "{st:?}");
        assert_eq!(rt.cpu_usage_us(&id).await.unwrap(), 0);
        assert!(rt.pause(&id).await.is_err(), "paused a stopped sandbox");

        for round in 0..2 {
            rt.start(&h.spec(&id)).await.expect("start");
            assert_eq!(probe(&rt, &id).await, Probe::Running, "round {round}");
            assert_eq!(
                run(&rt, &id, "cat /workspace/f /usr/local/g").await,
                (0, "x\ny\n".to_string())
            );
            let procs = AgentClient::new(&rt, &id)
                .list_processes()
                .await
                .expect("list processes");
            assert!(procs.is_empty(), "processes survived the stop: {procs:?}");
            let new_agent = agent_pid(&dir);
            let old_alive_here = std::fs::read_to_string(format!("/proc/{old_agent}/cgroup"))
                .map(|c| c.contains(&format!("/{}/", h.tag)))
                .unwrap_or(false);
            assert!(
                new_agent != old_agent && !old_alive_here,
                "old agent {old_agent} still there"
            );
            // Starting a running sandbox is refused and leaves it running.
            assert!(rt.start(&h.spec(&id)).await.is_err());
            assert_eq!(probe(&rt, &id).await, Probe::Running);
            assert_eq!(run(&rt, &id, "echo $((1+1))").await, (0, "2\n".into()));
            rt.stop(&id).await.expect("stop");
            assert_eq!(probe(&rt, &id).await, Probe::Stopped);
        }
        rt.start(&h.spec(&id)).await.expect("start again");
        rt.destroy(&id).await.expect("destroy");
        assert_eq!(probe(&rt, &id).await, Probe::Gone);
        assert!(!dir.exists());
        assert!(matches!(rt.stop(&id).await, Err(RuntimeError::NotFound(_))));
        assert!(matches!(
            rt.start(&h.spec(&id)).await,
            Err(RuntimeError::NotFound(_))
        ));
    });
    h.finish();
}

#[test]
fn probe_tells_states_and_reconcile_keeps_only_the_kept() {
    let h = Harness::new();
    let (a, b) = (h.id("a"), h.id("b"));
    let rt = h.native.clone();
    h.block_on(async {
        assert_eq!(probe(&rt, &a).await, Probe::Gone);
        // (An id that is not a valid name cannot reach the runtime: `SandboxId::parse`.)
        rt.create(&h.spec(&a)).await.expect("create a");
        rt.create(&h.spec(&b)).await.expect("create b");
        assert_eq!(probe(&rt, &a).await, Probe::Running);

        // Processes but no agent answering: broken.
        let sock = h.sandbox_dir(&a).join("agent.sock");
        let moved = h.sandbox_dir(&a).join("agent.sock.away");
        std::fs::rename(&sock, &moved).unwrap();
        assert_eq!(probe(&rt, &a).await, Probe::Broken);
        std::fs::rename(&moved, &sock).unwrap();
        assert_eq!(probe(&rt, &a).await, Probe::Running);

        rt.pause(&a).await.unwrap();
        assert_eq!(probe(&rt, &a).await, Probe::Paused);
        rt.resume(&a).await.unwrap();

        rt.stop(&b).await.unwrap();
        assert_eq!(probe(&rt, &b).await, Probe::Stopped);

        let cleaned = rt.reconcile(&[a.to_string()]).await.unwrap();
        assert_eq!(cleaned, vec![b.to_string()]);
        assert_eq!(probe(&rt, &b).await, Probe::Gone);
        assert!(!h.sandbox_dir(&b).exists());
        assert_eq!(probe(&rt, &a).await, Probe::Running);
        assert_eq!(run(&rt, &a, "echo alive").await, (0, "alive\n".into()));

        // Files half there (a create that died midway): broken.
        rt.stop(&a).await.unwrap();
        std::fs::remove_dir_all(SandboxPaths::new(&h.sandbox_dir(&a)).usr_upper).unwrap();
        assert_eq!(probe(&rt, &a).await, Probe::Broken);
        assert!(rt.start(&h.spec(&a)).await.is_err());
        rt.destroy(&a).await.unwrap();
        assert_eq!(probe(&rt, &a).await, Probe::Gone);
    });
    h.finish();
}

#[test]
fn stats_are_plausible() {
    let h = Harness::new();
    let (id, free) = (h.id("stats"), h.id("free"));
    let rt = h.native.clone();
    h.block_on(async {
        let mut spec = h.spec(&id);
        spec.limits = Limits {
            cpus: None,
            memory_bytes: Some(256 << 20),
            pids: Some(128),
            disk_bytes: None,
        };
        rt.create(&spec).await.expect("create");
        rt.create(&h.spec(&free)).await.expect("create unlimited");

        let s0 = rt.stats(&id).await.expect("stats");
        assert!(s0.memory_bytes > 0, "{s0:?}");
        assert!(s0.memory_peak_bytes >= s0.memory_bytes, "{s0:?}");
        assert_eq!(s0.memory_limit_bytes, Some(256 << 20));
        assert!(s0.pids >= 1, "{s0:?}");
        assert!(s0.cpu_usage_us > 0, "{s0:?}");
        assert_eq!(rt.stats(&free).await.unwrap().memory_limit_bytes, None);

        let (code, _) = run(
            &rt,
            &id,
            "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; \
             head -c 1048576 /dev/urandom > /workspace/big",
        )
        .await;
        assert_eq!(code, 0);
        // A refused connection on the sandbox's own loopback: a SYN and a RST on `lo`.
        let _ = AgentClient::new(&rt, &id).connect_port(1).await;
        let s1 = rt.stats(&id).await.expect("stats");
        assert!(s1.cpu_usage_us > s0.cpu_usage_us, "{s0:?} -> {s1:?}");
        assert!(
            s1.disk_bytes >= s0.disk_bytes + (1 << 20),
            "1 MiB file: {s0:?} -> {s1:?}"
        );
        assert!(s1.net_rx_bytes > 0, "{s1:?}");
        // Loopback: every byte sent is received.
        assert_eq!(s1.net_rx_bytes, s1.net_tx_bytes);
        // Without agent.pid, PID 1 is found by its NSpid in the cgroup.
        std::fs::remove_file(h.sandbox_dir(&id).join("agent.pid")).unwrap();
        let s2 = rt.stats(&id).await.expect("stats without agent.pid");
        assert!(s2.net_rx_bytes >= s1.net_rx_bytes, "{s1:?} -> {s2:?}");
        let cheap = rt.cpu_usage_us(&id).await.unwrap();
        assert!(cheap >= s1.cpu_usage_us);

        let missing = h.id("nope");
        assert!(matches!(
            rt.stats(&missing).await,
            Err(RuntimeError::NotFound(_))
        ));
        assert!(matches!(
            rt.cpu_usage_us(&missing).await,
            Err(RuntimeError::NotFound(_))
        ));
        rt.destroy(&id).await.unwrap();
        rt.destroy(&free).await.unwrap();
    });
    h.finish();
}
