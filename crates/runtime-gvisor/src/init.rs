//! `warren __gvisor-init`: the helper that starts a gVisor sandbox.
//!
//! Exec'd by the daemon like the native helper (a fresh single-threaded process, already in
//! the sandbox's cgroup, the [`InitSpec`] on stdin, one report line on stdout):
//!
//! 1. closes inherited descriptors, reads the spec and its [`Options`];
//!    For a `nat` sandbox it first makes a network namespace and reports it
//!    ([`HelperReport::Netns`]); the daemon wires it while the next steps run, and says
//!    [`GO`] before runsc starts (runsc's netstack takes the interfaces over at boot);
//! 2. enters a private mount namespace and mounts the root file system there exactly as the
//!    native helper does (`rootfs::prepare`: the image's layers under the writable layer,
//!    the host's `/usr` for the `host` image, volumes), then a scratch tmpfs over its `/dev`
//!    holding the agent's mount points (gVisor mounts its own `/dev` over it inside);
//! 3. makes `<sandbox>/run/` (the socket directory, emptied) and `<sandbox>/runsc/`
//!    (runsc's state, rebuilt every start), writes `<sandbox>/bundle/config.json`;
//! 4. runs `runsc run --detach`, with stdin from `/dev/null` and stdout and stderr on the
//!    daemon's log pipe (they become PID 1's), and reports the sandbox process's host pid
//!    from runsc's pid file.
//!
//! runsc's processes inherit this process's cgroup and mount namespace: the cgroup's limits
//! bound them, and the root's mounts vanish with the last of them.

use std::fs;
use std::io::{self, BufRead, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use warren_runtime_native::init::{close_fds_from, private_mount_ns, read_spec, single_threaded};
use warren_runtime_native::spec::{HelperReport, InitSpec, GO};
use warren_runtime_native::{rootfs, InitError};

use crate::bundle::{self, AGENT_DIR};
use crate::Options;

/// How long `runsc run --detach` may take (about 0.2 s here; a stuck one must not hold the
/// daemon's create forever: the daemon's own deadline then kills the cgroup).
const RUNSC_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error(transparent)]
    Init(#[from] InitError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("bad gVisor options: {0}")]
    Options(String),
    #[error("runsc: {0}")]
    Runsc(String),
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> HelperError {
    let what = what.into();
    move |source| HelperError::Io { what, source }
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> HelperError {
    let what = what.into();
    move |source| HelperError::Sys { what, source }
}

/// The whole life of `<exe> __gvisor-init`. Call it from `main()` before any thread exists.
pub fn init_main() -> std::process::ExitCode {
    close_fds_from(3, &[]);
    let report = match read_spec()
        .map_err(HelperError::from)
        .and_then(|spec| start(&spec))
    {
        Ok(pid) => HelperReport::Ready { pid },
        Err(e) => HelperReport::Failed {
            error: e.to_string(),
        },
    };
    let failed = matches!(report, HelperReport::Failed { .. });
    if let Err(e) = send(&report) {
        eprintln!("warren {}: cannot report: {e}", crate::INIT_ARG);
        return std::process::ExitCode::FAILURE;
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

/// One report line to the daemon.
fn send(report: &HelperReport) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(report.to_line().as_bytes())?;
    out.flush()
}

/// Steps 2 to 4; the sandbox process's host pid.
fn start(spec: &InitSpec) -> Result<i32, HelperError> {
    let opts: Options = match &spec.launcher {
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| HelperError::Options(e.to_string()))?
        }
        None => return Err(HelperError::Options("none given".into())),
    };
    single_threaded()?;
    // runsc's netstack takes over the interfaces it finds in its namespace when it boots:
    // a namespace of our own, which the daemon wires while the root is prepared.
    let netns = if opts.network {
        unshare(CloneFlags::CLONE_NEWNET).map_err(sys("unshare a network namespace"))?;
        // runsc copies only interfaces that are up: `lo` too, or the sandbox has no
        // loopback (127.0.0.1 refuses binds).
        warren_runtime_native::net::loopback_up().map_err(sys("bring lo up"))?;
        let pid = nix::unistd::getpid().as_raw();
        send(&HelperReport::Netns { netns_pid: pid }).map_err(io_ctx("asking for a network"))?;
        Some(std::path::PathBuf::from(format!("/proc/{pid}/ns/net")))
    } else {
        None
    };
    private_mount_ns()?;
    if netns.is_some() {
        hide_root_netns_probe()?;
    }
    let paths = spec.paths();
    rootfs::prepare(spec, None)?;
    let run_dir = paths.dir.join("run");
    fresh_dir(&run_dir, 0o700)?;
    let state = paths.dir.join("runsc");
    fresh_dir(&state, 0o700)?;
    let bundle_dir = paths.dir.join("bundle");
    fresh_dir(&bundle_dir, 0o700)?;
    agent_mount_points(&paths.rootfs.join("dev"), &opts, &bundle_dir)?;
    let tmp = fs::symlink_metadata(paths.rootfs.join("tmp"))
        .map(|m| m.is_dir())
        .unwrap_or(false);
    let bpf = bundle_dir.join(bundle::SECCOMP_FILE);
    fs::write(&bpf, &spec.seccomp_bpf).map_err(io_ctx(format!("writing {}", bpf.display())))?;
    let config = bundle::config(
        &spec.id,
        &paths.rootfs,
        &run_dir,
        &bundle_dir,
        tmp,
        netns.as_deref(),
        &opts,
    )
    .map_err(|e| HelperError::Options(format!("writing config.json: {e}")))?;
    config
        .save(bundle_dir.join("config.json"))
        .map_err(|e| HelperError::Options(format!("writing config.json: {e}")))?;
    let pid_file = paths.dir.join("runsc.pid");
    let _ = fs::remove_file(&pid_file);
    if netns.is_some() {
        wait_for_go()?;
    }
    run_detached(spec, &opts, &state, &bundle_dir, &pid_file)?;
    let pid =
        fs::read_to_string(&pid_file).map_err(io_ctx(format!("reading {}", pid_file.display())))?;
    pid.trim()
        .parse()
        .map_err(|_| HelperError::Runsc(format!("its pid file holds {pid:?}")))
}

/// runsc (2022, and still 2024-07) decides whether it runs in the host's network
/// namespace by whether `/proc/sys/net/core/rmem_default` exists, which kernels since 2023
/// show in every namespace, so it refuses `--network=sandbox` everywhere ("cannot run with
/// network enabled in root network namespace"). The namespace is ours, fresh; hide that one
/// probe with an empty read-only tmpfs over `/proc/sys/net/core`, in this helper's own
/// mount namespace only (runsc's processes inherit it; the sandbox's kernel is gVisor's and
/// never reads the host's /proc).
fn hide_root_netns_probe() -> Result<(), HelperError> {
    let core = Path::new("/proc/sys/net/core");
    mount(
        Some("tmpfs"),
        core,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
        Some("size=4k,mode=555"),
    )
    .map_err(sys(format!("mount a tmpfs at {}", core.display())))
}

/// Wait until the daemon has wired the network namespace ([`GO`] on stdin; EOF: it could
/// not, and has already given up on this sandbox).
fn wait_for_go() -> Result<(), HelperError> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(io_ctx("waiting for the network"))?;
    if line == GO {
        Ok(())
    } else {
        Err(HelperError::Options(
            "the daemon did not wire the network".into(),
        ))
    }
}

/// A scratch tmpfs over the root's `/dev` with the agent's mount points, so runsc makes
/// none in the sandbox's files (gVisor's own `/dev` hides this one inside).
fn agent_mount_points(dev: &Path, opts: &Options, bundle_dir: &Path) -> Result<(), HelperError> {
    mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755,size=1m"),
    )
    .map_err(sys(format!("mount a tmpfs at {}", dev.display())))?;
    let inside = |p: &str| dev.join(p.trim_start_matches("/dev/"));
    for dir in [
        AGENT_DIR.to_string(),
        format!("{AGENT_DIR}/lib"),
        bundle::RUN_DIR.into(),
    ] {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(inside(&dir))
            .map_err(io_ctx(format!("making {dir}")))?;
    }
    for b in bundle::agent_binds(opts, bundle_dir) {
        fs::File::create(inside(&b.dest)).map_err(io_ctx(format!("making {}", b.dest)))?;
    }
    Ok(())
}

/// `dir`, empty, with `mode`.
fn fresh_dir(dir: &Path, mode: u32) -> Result<(), HelperError> {
    warren_runtime_native::fresh_dir(dir, mode).map_err(io_ctx(format!("making {}", dir.display())))
}

/// runsc's global flags for this sandbox (`state`: its `--root`).
pub fn global_args(opts: &Options, state: &Path) -> Vec<String> {
    vec![
        format!("--root={}", state.display()),
        format!("--platform={}", opts.platform),
        format!(
            "--network={}",
            if opts.network { "sandbox" } else { "none" }
        ),
        // The agent's socket: bound inside, made on the host. Not `open`: the sandbox
        // cannot connect to host sockets.
        "--host-uds=create".into(),
        // The daemon made the cgroup and put this helper (so runsc) in it.
        "--ignore-cgroups".into(),
        // Writes go to the sandbox's own writable layer on the host (snapshots, stop/start
        // and the native runtime read them there), not to an overlay inside gVisor (the
        // default since 2023: `root:self`).
        "--overlay2=none".into(),
        // Keep CAP_NET_RAW in the bundle's set (runsc strips it otherwise): a native
        // sandbox's root has it (ping), and raw sockets here are gVisor's own netstack's.
        "--net-raw".into(),
    ]
}

fn run_detached(
    spec: &InitSpec,
    opts: &Options,
    state: &Path,
    bundle_dir: &Path,
    pid_file: &Path,
) -> Result<(), HelperError> {
    let null = fs::File::open("/dev/null").map_err(io_ctx("open /dev/null"))?;
    // PID 1's stdout and stderr: the daemon's log pipe (our stderr).
    let stderr = {
        use std::os::fd::AsFd;
        io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_ctx("dup stderr"))?
    };
    let stdout = stderr.try_clone().map_err(io_ctx("dup stderr"))?;
    let mut child = Command::new(&opts.runsc)
        .args(global_args(opts, state))
        .arg("run")
        .arg("--detach")
        .arg(format!("--pid-file={}", pid_file.display()))
        .arg(format!("--bundle={}", bundle_dir.display()))
        .arg(&spec.id)
        .stdin(Stdio::from(null))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .spawn()
        .map_err(io_ctx(format!("spawning {}", opts.runsc.display())))?;
    let start = std::time::Instant::now();
    loop {
        match child.try_wait().map_err(io_ctx("waiting for runsc"))? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => {
                return Err(HelperError::Runsc(format!(
                    "run --detach {st} (its messages are in the sandbox's agent.log)"
                )))
            }
            None if start.elapsed() > RUNSC_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HelperError::Runsc(format!(
                    "run --detach did not finish within {RUNSC_TIMEOUT:?}"
                )));
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}
