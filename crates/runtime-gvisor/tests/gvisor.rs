//! gVisor sandboxes on this host, driven through the native runtime with the gVisor
//! launcher (no daemon): the kernel seen inside is gVisor's, the agent is the same, files
//! land in the same writable layer, pause/stop/start/snapshot work on the same cgroup and
//! storage, and nothing is left on the host after (as root, with runsc installed: CI
//! installs it).

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use warren_runtime::{
    AgentClient, ExecOutput, ExecSpec, Limits, Probe, Runtime, RuntimeKind, SandboxId, SandboxSpec,
};
use warren_runtime_gvisor::{GvisorConfig, GvisorLauncher};
use warren_runtime_native::{NativeConfig, NativeRuntime, StorageConfig, UsernsSetting};
use warren_testkit::host::{cgroups_named, host_mounts_mentioning, processes_in_cgroup};

static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Harness {
    rt: tokio::runtime::Runtime,
    native: NativeRuntime,
    data_dir: PathBuf,
    tag: String,
    cleaned: bool,
}

impl Harness {
    fn new() -> Harness {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("wrg-{}-{n}", std::process::id());
        let data_dir = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&data_dir);
        let helper: PathBuf = env!("CARGO_BIN_EXE_warren-gvisor-init").into();
        let launcher = GvisorLauncher::new(&GvisorConfig {
            runsc: "runsc".into(),
            platform: "ptrace".into(),
            agent_exe: helper.clone(),
        });
        launcher
            .check()
            .expect("gVisor is available (apt-get install runsc, as CI does)");
        let native = NativeRuntime::with_launchers(
            NativeConfig {
                data_dir: data_dir.clone(),
                helper_exe: helper,
                cgroup_parent: tag.clone(),
                storage: StorageConfig::Dir,
                user_namespaces: UsernsSetting::Auto,
            },
            vec![Arc::new(launcher)],
        )
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

    fn spec(&self, id: &SandboxId) -> SandboxSpec {
        SandboxSpec {
            id: id.clone(),
            image: "host".into(),
            layers: Vec::new(),
            limits: Limits::default(),
            snapshot: None,
            idmap: None,
            network: warren_runtime::NetworkSpec::isolated(),
            mounts: Vec::new(),
            runtime: RuntimeKind::Gvisor,
        }
    }

    fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn cleanup(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        let native = self.native.clone();
        self.rt.block_on(async move {
            if let Err(e) = native.reconcile(&[]).await {
                eprintln!("cleanup: reconcile: {e}");
            }
            if let Err(e) = native.shutdown().await {
                eprintln!("cleanup: shutdown: {e}");
            }
        });
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }

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

fn sh(script: &str) -> ExecSpec {
    ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        )],
        cwd: "/".into(),
        ..Default::default()
    }
}

/// (exit code, stdout, stderr) of a shell script.
async fn run(rt: &NativeRuntime, id: &SandboxId, script: &str) -> (i32, String, String) {
    let mut stream = AgentClient::new(rt, id)
        .exec(sh(script), None)
        .await
        .expect("exec");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(item) = stream.next().await {
        match item.expect("exec stream") {
            ExecOutput::Stdout(b) => out.extend_from_slice(&b),
            ExecOutput::Stderr(b) => err.extend_from_slice(&b),
            ExecOutput::Exit(e) => {
                return (
                    e.exit_code,
                    String::from_utf8_lossy(&out).into(),
                    String::from_utf8_lossy(&err).into(),
                )
            }
        }
    }
    panic!("exec stream ended without an exit");
}

#[test]
fn a_gvisor_sandbox_runs_the_agent_on_gvisors_kernel_and_writes_the_same_layer() {
    let h = Harness::new();
    let id = h.id("basic");
    let rt = h.native.clone();
    let dir = h.data_dir.join("sandboxes").join(id.as_str());
    h.block_on(async {
        rt.create(&h.spec(&id)).await.expect("create");
        // gVisor's kernel answers: its dmesg and its own version string.
        let (code, out, err) = run(&rt, &id, "uname -r; cat /proc/version; id -u; hostname").await;
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "4.4.0", "{out}");
        let host = std::fs::read_to_string("/proc/version").unwrap();
        assert_ne!(lines[1], host.trim(), "{out}");
        assert_eq!(lines[2], "0");
        assert_eq!(lines[3], id.as_str());
        // Files written inside land in the writable layer on the host, at once; /tmp too.
        let (code, _, err) = run(&rt, &id, "echo hi > /root/f && echo t > /tmp/t").await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.join("fs/upper/root/f")).unwrap(),
            "hi\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("fs/upper/tmp/t")).unwrap(),
            "t\n"
        );
        // The agent's files are hidden; its socket's directory is read-only, and nothing of
        // them reached the layer.
        let (code, out, _) =
            run(&rt, &id, "ls /dev/.warren/lib; grep -c warren /proc/mounts").await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(
            out.trim(),
            "2",
            "only the socket's directory, covered, is mounted: {out}"
        );
        let (code, _, err) = run(&rt, &id, "rm /dev/.warren/run/agent.sock").await;
        assert_ne!(code, 0, "{err}");
        let (code, _, err) = run(&rt, &id, "ln -s /etc /dev/.warren/run/x").await;
        assert_ne!(code, 0, "{err}");
        assert!(!dir.join("fs/upper/dev").exists());
        // The same seccomp filter as a native sandbox: no new namespaces.
        let (code, _, err) = run(&rt, &id, "unshare -U true").await;
        assert_ne!(code, 0, "{err}");
        assert_eq!(rt.probe(&id).await.unwrap(), Probe::Running);
        rt.destroy(&id).await.expect("destroy");
        assert_eq!(rt.probe(&id).await.unwrap(), Probe::Gone);
    });
    h.finish();
}
