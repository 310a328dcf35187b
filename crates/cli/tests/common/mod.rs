//! Test harness: starts a real `warren serve` (as root, on the real kernel) with its own
//! data directory and port, and guarantees teardown even when a test fails.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warren_api::{CreateSandboxRequest, ExecRequest, ExecResult, Resources, Sandbox};
use warren_client::Client;

pub struct Daemon {
    child: Option<Child>,
    pub url: String,
    pub data_dir: PathBuf,
    /// Cgroup parent of this daemon's sandboxes (unique per test daemon).
    pub cgroup_parent: String,
    pub client: Client,
    /// Launched without `--cleanup-on-exit` (with these arguments): dropped while it runs
    /// (a test that failed midway), it is stopped and a cleaning daemon started on its data
    /// dir, so its sandboxes, network table and links do not outlive the test.
    plain: Option<Vec<String>>,
}

/// The runtime this test crate's sandboxes use: gVisor for the `gvisor_*` crates (each
/// compiles a behaviour suite once more, see tests/gvisor_exec.rs), else native.
pub fn runtime() -> warren_api::Runtime {
    if env!("CARGO_CRATE_NAME").starts_with("gvisor_") {
        warren_api::Runtime::Gvisor
    } else {
        warren_api::Runtime::Native
    }
}

/// Whether this crate's sandboxes run on gVisor (see [`runtime`]).
pub fn on_gvisor() -> bool {
    runtime() == warren_api::Runtime::Gvisor
}

static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Daemon {
        let (data_dir, cgroup_parent) = Daemon::fresh_names();
        Daemon::launch(data_dir, cgroup_parent, extra)
    }

    /// A data dir (removed if it exists) and a cgroup parent no other test daemon uses.
    pub fn fresh_names() -> (PathBuf, String) {
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let data_dir = std::env::temp_dir().join(format!("warren-it-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        (data_dir, format!("warren-it-{}-{n}", std::process::id()))
    }

    /// Start a daemon on an existing data dir and cgroup parent (a restart). It runs with
    /// `--cleanup-on-exit`, so [`Daemon::stop`] (SIGTERM) leaves nothing on the host.
    pub fn launch(data_dir: PathBuf, cgroup_parent: String, extra: &[&str]) -> Daemon {
        let mut args = vec!["--cleanup-on-exit"];
        args.extend_from_slice(extra);
        Daemon::launch_plain(data_dir, cgroup_parent, &args)
    }

    /// [`Daemon::launch`] without `--cleanup-on-exit`: a SIGTERM leaves the sandboxes
    /// running (the test must clean up, e.g. by restarting with [`Daemon::launch`]).
    pub fn launch_plain(data_dir: PathBuf, cgroup_parent: String, extra: &[&str]) -> Daemon {
        let mut d = Daemon::launch_customized(data_dir, cgroup_parent, extra, |_| {});
        if !extra.contains(&"--cleanup-on-exit") {
            d.plain = Some(extra.iter().map(|s| s.to_string()).collect());
        }
        d
    }

    /// A fresh daemon (as [`Daemon::start`]) whose command `customize` may change before it
    /// is spawned (e.g. to hand it extra inherited fds).
    pub fn start_customized(customize: impl FnOnce(&mut Command)) -> Daemon {
        let (data_dir, cgroup_parent) = Daemon::fresh_names();
        Daemon::launch_customized(data_dir, cgroup_parent, &["--cleanup-on-exit"], customize)
    }

    fn launch_customized(
        data_dir: PathBuf,
        cgroup_parent: String,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Daemon {
        // Everything that can fail in this process comes before the spawn: a panic between
        // the spawn and the `Daemon` that owns the child would orphan the daemon.
        let placeholder = Client::new("http://127.0.0.1:1").expect("client");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        customize(&mut cmd);
        // A daemon that does not choose its storage gets `dir` (the default, `auto`, would
        // allocate an image of a quarter of the free space for each test daemon), or with
        // `WARREN_TEST_STORAGE=btrfs` a 4 GiB btrfs image of its own.
        let storage: &[&str] = if extra.contains(&"--storage") {
            &[]
        } else if std::env::var("WARREN_TEST_STORAGE").as_deref() == Ok("btrfs") {
            &["--storage", "btrfs", "--btrfs-loop-size", "4G"]
        } else {
            &["--storage", "dir"]
        };
        // Every test daemon gets a /24 of its own (unique in this process, and per process
        // by pid), and a DNS upstream nobody answers on unless the test names one: no test
        // ever asks the host's resolvers.
        let mut net: Vec<String> = Vec::new();
        if !extra.contains(&"--network-range") {
            net.extend(["--network-range".into(), network_range(&cgroup_parent)]);
        }
        if !extra.contains(&"--dns-upstream") {
            net.extend(["--dns-upstream".into(), "127.0.0.1:9".into()]);
        }
        // A create never pulls unless the test says so: an unknown name would otherwise
        // be looked up on Docker Hub, and tests talk only to loopback and their own
        // namespaces.
        if !extra.contains(&"--pull") {
            net.extend(["--pull".into(), "never".into()]);
        }
        // A suite compiled as `gvisor_*` runs every sandbox it does not place itself on
        // gVisor.
        if on_gvisor() && !extra.contains(&"--runtime") {
            net.extend(["--runtime".into(), "gvisor".into()]);
        }
        let mut child = cmd
            .arg("serve")
            .args(&net)
            // Many test daemons run at once; each claims a small window of user-namespace
            // ranges host-wide (see engine/idmaps.rs).
            .arg("--userns-ranges")
            .arg("256")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--cgroup-parent")
            .arg(&cgroup_parent)
            .args(extra)
            .args(storage)
            .arg("--log-level")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn warren serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut daemon = Daemon {
            child: Some(child),
            url: String::new(),
            data_dir,
            cgroup_parent,
            client: placeholder,
            plain: None,
        };
        let line = lines
            .next()
            .and_then(|l| l.ok())
            .unwrap_or_else(|| panic!("warren serve exited before listening"));
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        daemon.client = Client::new(&url).expect("client");
        daemon.url = url;
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn sandbox_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.data_dir.join("sandboxes"))
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// SIGTERM and wait; returns the exit status. Panics if it does not stop in time.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.stop_with(libc::SIGTERM)
    }

    /// Send `signal` and wait for the daemon to exit (SIGKILL: a crash).
    pub fn stop_with(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("warren serve did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
            if let Some(args) = self.plain.take() {
                // Its sandboxes still run: a cleaning daemon adopts and removes them (and
                // removes the data dir when it is dropped in turn).
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                drop(Daemon::launch(
                    self.data_dir.clone(),
                    self.cgroup_parent.clone(),
                    &args,
                ));
                return;
            }
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The network range of the test daemon with cgroup parent `parent`
/// (`warren-it-<pid>-<n>`): `10.<64 + pid % 128>.<n % 256>.0/24`.
pub fn network_range(parent: &str) -> String {
    let n: u32 = parent
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    format!("10.{}.{}.0/24", 64 + std::process::id() % 128, n % 256)
}

/// The nft table of the daemon whose range is `range` (`a.b.c.0/24`).
pub fn nft_table(range: &str) -> String {
    let (addr, len) = range.split_once('/').expect("cidr");
    let ip: std::net::Ipv4Addr = addr.parse().expect("address");
    format!("warren_{:08x}_{len}", u32::from(ip))
}

/// Tokio runtime for a test body.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> ExecRequest {
    req(&["sh", "-c", script])
}

pub async fn create(c: &Client) -> Sandbox {
    c.create_sandbox(&CreateSandboxRequest::default())
        .await
        .expect("create sandbox")
}

pub async fn create_with(c: &Client, r: Resources) -> Sandbox {
    c.create_sandbox(&CreateSandboxRequest {
        resources: Some(r),
        ..Default::default()
    })
    .await
    .expect("create sandbox")
}

pub async fn run(c: &Client, id: &str, r: ExecRequest) -> ExecResult {
    c.exec(id, &r).await.expect("exec")
}

pub async fn run_sh(c: &Client, id: &str, script: &str) -> ExecResult {
    run(c, id, sh(script)).await
}

// Each test file uses some of these.
#[allow(unused_imports)]
pub use warren_testkit::host::{
    cgroups_named, host_mounts_mentioning, processes_in_cgroup, test_idmap,
};

/// A durable process running `cmd`.
pub fn process_req(cmd: &[&str]) -> warren_api::CreateProcessRequest {
    warren_api::CreateProcessRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A new API key file under `dir` with one key, made by `warren key create`: its path
/// and the key.
#[allow(dead_code)]
pub fn api_key(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
    let file = dir.join("keys.json");
    let made = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["key", "create", "--name", name, "--file"])
        .arg(&file)
        .output()
        .expect("run warren key create");
    assert!(made.status.success(), "{made:?}");
    (
        file,
        String::from_utf8_lossy(&made.stdout).trim().to_string(),
    )
}

/// Run a client script (`program script args...` with `env`), print what it said, and
/// require it to succeed; its output.
#[allow(dead_code)]
pub fn run_script(
    program: &std::path::Path,
    script: &std::path::Path,
    args: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
) -> String {
    let mut cmd = Command::new(program);
    cmd.arg(script).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run the client script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        script.display()
    );
    text
}
