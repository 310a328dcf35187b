//! The gVisor backend: sandboxes whose processes talk to gVisor's user-space kernel
//! (`runsc`), not to the host's.
//!
//! It is a sibling of the native backend's way of starting PID 1, not a second copy of the
//! host machinery: the native runtime ([`warren_runtime_native`]) still prepares a gVisor
//! sandbox's files (the same overlay of image layers over a writable layer, the same
//! storage, quotas, snapshots and volumes), its cgroup and limits, and its network; this
//! crate only decides how PID 1 comes up on them ([`GvisorLauncher`], a
//! [`warren_runtime_native::Launcher`]):
//!
//! 1. the daemon execs `warren __gvisor-init` in the sandbox's cgroup with the usual
//!    [`warren_runtime_native::spec::InitSpec`] (see [`init`]); that helper mounts the root
//!    file system in a private mount namespace exactly as the native helper does, writes an
//!    OCI bundle whose root is that tree ([`bundle`]) and runs `runsc run --detach` on it.
//!    runsc's processes (its kernel, the sentry, and its file proxy, the gofer) inherit the
//!    helper's cgroup and mount namespace, so the cgroup's limits bound them and the mounts
//!    vanish with them;
//! 2. the sandbox's PID 1 is the same agent binary, started as `__gvisor-agent` through the
//!    host's dynamic loader bound into the sandbox (so it runs on any image, see
//!    [`bundle`]); it listens on a Unix socket runsc exposes on the host (`--host-uds`),
//!    which the daemon reaches at `<sandbox>/agent.sock` like a native agent's (see
//!    [`agent`]). Then it hides its binary and socket directory, drops the same
//!    capabilities and loads the same seccomp filter as a native PID 1.
//!
//! Pause and resume freeze the cgroup (sentry and gofer with it), stop and destroy kill
//! it, exactly as for native sandboxes: runsc's own state (`<sandbox>/runsc/`) is only read
//! by runsc itself and is rebuilt at every start.

pub mod agent;
pub mod bundle;
pub mod init;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use warren_runtime::{KindInfo, Limits, NetworkMode, RuntimeKind, SandboxSpec};
use warren_runtime_native::Launcher;

/// Argument that makes the binary run [`init::init_main`] (the helper that starts runsc).
pub const INIT_ARG: &str = "__gvisor-init";
/// Argument that makes the binary run [`agent::agent_main`] (PID 1 inside gVisor).
pub const AGENT_ARG: &str = "__gvisor-agent";

/// Where the agent's socket appears, relative to the sandbox directory.
pub const SOCKET_REL: &str = "run/agent.sock";

/// Host threads and processes a sandbox's sentry and gofer need besides one per process
/// inside (the ptrace platform runs a stub process per address space): added to the
/// sandbox's `pids` limit for its host cgroup.
pub const HOST_PIDS_OVERHEAD: u64 = 256;
/// Memory the sentry and gofer need besides the sandbox's own: added to its memory limit
/// for its host cgroup (idle, a sandbox's runsc processes take about 40 MB).
pub const HOST_MEMORY_OVERHEAD: u64 = 96 << 20;

/// `warren serve --runtime gvisor --runsc PATH`: how to run runsc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GvisorConfig {
    /// The `runsc` binary (a bare name is looked up in `PATH`, then the system directories).
    pub runsc: PathBuf,
    /// gVisor's platform: `ptrace` (works everywhere; `kvm` hangs in nested VMs without
    /// KVM, and this runsc has no `systrap`).
    pub platform: String,
    /// The binary to run as the sandbox's PID 1 (`<exe> __gvisor-agent`; the daemon's own).
    pub agent_exe: PathBuf,
}

/// What the helper needs besides the [`warren_runtime_native::spec::InitSpec`] (carried in
/// its `launcher` field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Options {
    pub runsc: PathBuf,
    pub platform: String,
    /// The agent binary and what it needs to run on any image: the host's dynamic loader
    /// and the libraries it links, each bound read-only into the sandbox.
    pub agent: AgentFiles,
    /// `runsc --network=sandbox` (runsc's network stack on the sandbox's namespace) rather
    /// than `none` (loopback only).
    pub network: bool,
    /// The sandbox's own memory limit (what gVisor reports as its total memory).
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
}

/// The agent binary with its dynamic loader and libraries (host paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentFiles {
    pub exe: PathBuf,
    pub loader: PathBuf,
    pub libs: Vec<PathBuf>,
}

/// Errors of the gVisor backend's set-up (the daemon's side).
#[derive(Debug, thiserror::Error)]
pub enum GvisorError {
    #[error("runsc {path}: {reason}")]
    Runsc { path: String, reason: String },
    #[error("the agent binary {path}: {reason}")]
    Agent { path: String, reason: String },
}

/// Starts gVisor sandboxes for the native runtime. When runsc is missing or broken it
/// still answers [`Launcher::info`], saying what is missing (the API's
/// `runtime_unavailable`), and starts nothing.
#[derive(Debug, Clone)]
pub struct GvisorLauncher {
    state: Result<Ready, String>,
    platform: String,
}

#[derive(Debug, Clone)]
struct Ready {
    runsc: PathBuf,
    version: String,
    agent: AgentFiles,
}

impl GvisorLauncher {
    /// Find runsc and the agent's libraries. Blocking (runs `runsc --version` and the
    /// loader's listing of the agent's libraries): call it at start-up.
    pub fn new(cfg: &GvisorConfig) -> GvisorLauncher {
        let state = (|| {
            let runsc = find_runsc(&cfg.runsc)?;
            let version = runsc_version(&runsc)?;
            let agent = agent_files(&cfg.agent_exe).map_err(|e| e.to_string())?;
            Ok(Ready {
                runsc,
                version,
                agent,
            })
        })();
        if let Err(e) = &state {
            tracing::info!(reason = %e, "gVisor sandboxes are not available");
        }
        GvisorLauncher {
            state,
            platform: cfg.platform.clone(),
        }
    }

    /// A launcher that starts nothing and says why.
    pub fn unavailable(reason: impl Into<String>) -> GvisorLauncher {
        GvisorLauncher {
            state: Err(reason.into()),
            platform: "ptrace".into(),
        }
    }

    /// `Err(what is missing)` unless gVisor sandboxes can be made.
    pub fn check(&self) -> Result<(), String> {
        self.state.as_ref().map(|_| ()).map_err(Clone::clone)
    }
}

impl Launcher for GvisorLauncher {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Gvisor
    }

    fn helper_arg(&self) -> &'static str {
        INIT_ARG
    }

    fn options(&self, spec: &SandboxSpec) -> serde_json::Value {
        let Ok(ready) = &self.state else {
            // The engine refuses this kind (`runtime_unavailable`) before it gets here; a
            // helper without options fails with a clear message.
            return serde_json::Value::Null;
        };
        let opts = Options {
            runsc: ready.runsc.clone(),
            platform: self.platform.clone(),
            agent: ready.agent.clone(),
            network: spec.network.mode == NetworkMode::Nat,
            memory_bytes: spec.limits.memory_bytes,
            cpus: spec.limits.cpus,
        };
        serde_json::to_value(opts).unwrap_or(serde_json::Value::Null)
    }

    fn socket(&self) -> &'static str {
        SOCKET_REL
    }

    fn info(&self, native: &KindInfo) -> KindInfo {
        KindInfo {
            kind: RuntimeKind::Gvisor,
            unavailable: self.state.as_ref().err().cloned(),
            kernel: "gvisor".into(),
            version: self.state.as_ref().ok().map(|r| r.version.clone()),
            platform: Some(self.platform.clone()),
            // The cgroup freezer stops the sentry and the gofer like any process.
            pause: native.pause,
            stop: native.stop,
            // The files are the native runtime's; taken while the sentry is frozen.
            snapshots: native.snapshots,
            // `runsc checkpoint` refuses a sandbox holding a host socket (the agent's), and
            // this runsc's `restore` does not resume the processes: off.
            memory_snapshots: false,
            // runsc's netstack on the same routed veth (wired before it boots): the host
            // side, its nft policy and DNS proxy are the native runtime's.
            network_modes: native.network_modes.clone(),
            egress: native.egress,
            // Processes are root of gVisor's kernel; that kernel (the sentry) runs as the
            // host's `nobody` in its own user namespace, under runsc's seccomp filter.
            user_namespace: false,
            seccomp: true,
            disk_quota: native.disk_quota,
            volumes: native.volumes,
            // This gVisor refuses extended attributes on files its gofer serves.
            file_metadata: false,
        }
    }

    fn network_before_start(&self) -> bool {
        true
    }

    fn host_limits(&self, limits: &Limits) -> Limits {
        Limits {
            memory_bytes: limits
                .memory_bytes
                .map(|m| m.saturating_add(HOST_MEMORY_OVERHEAD)),
            pids: limits.pids.map(|p| p.saturating_add(HOST_PIDS_OVERHEAD)),
            ..limits.clone()
        }
    }
}

/// `path` if it names a file, else `path` looked up in `PATH` and the system directories.
fn find_runsc(path: &Path) -> Result<PathBuf, String> {
    if path.components().count() > 1 {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("runsc not found at {}", path.display()))
        };
    }
    warren_runtime_native::storage::find_tool(&path.to_string_lossy()).ok_or_else(|| {
        format!(
            "{} is not installed (apt-get install runsc, or warren serve --runsc PATH)",
            path.display()
        )
    })
}

/// `runsc --version`'s first line's version (`0.0~20221219.0`).
fn runsc_version(runsc: &Path) -> Result<String, String> {
    let out = Command::new(runsc)
        .arg("--version")
        .output()
        .map_err(|e| format!("running {} --version: {e}", runsc.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("runsc version "))
    {
        Some(v) if out.status.success() => Ok(v.trim().to_string()),
        _ => Err(format!(
            "{} --version answered {:?} ({})",
            runsc.display(),
            text.trim(),
            out.status
        )),
    }
}

/// The agent binary's dynamic loader and libraries, as the loader itself lists them
/// (`LD_TRACE_LOADED_OBJECTS`, what `ldd` does): the exact files it would load.
pub fn agent_files(exe: &Path) -> Result<AgentFiles, GvisorError> {
    let err = |reason: String| GvisorError::Agent {
        path: exe.display().to_string(),
        reason,
    };
    let out = Command::new(exe)
        .env_clear()
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .output()
        .map_err(|e| err(format!("listing its libraries: {e}")))?;
    if !out.status.success() {
        return Err(err(format!("listing its libraries: {}", out.status)));
    }
    let (loader, libs) = parse_loaded_objects(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| err("not a dynamically linked ELF binary".into()))?;
    Ok(AgentFiles {
        exe: exe.to_path_buf(),
        loader,
        libs,
    })
}

/// The loader and libraries in the loader's listing:
/// `\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `\t/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no file.
fn parse_loaded_objects(text: &str) -> Option<(PathBuf, Vec<PathBuf>)> {
    let mut loader = None;
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split(" (").next().unwrap_or("").trim(),
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if !path.starts_with('/') {
            continue;
        }
        if line.contains(" => ") {
            libs.push(PathBuf::from(path));
        } else {
            loader = Some(PathBuf::from(path));
        }
    }
    Some((loader?, libs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loaders_listing_gives_loader_and_libraries() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f6b)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f6a)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f6c)\n";
        let (loader, libs) = parse_loaded_objects(text).unwrap();
        assert_eq!(loader, Path::new("/lib64/ld-linux-x86-64.so.2"));
        assert_eq!(
            libs,
            [
                Path::new("/lib/x86_64-linux-gnu/libseccomp.so.2"),
                Path::new("/lib/x86_64-linux-gnu/libc.so.6")
            ]
        );
        assert!(parse_loaded_objects("\tstatically linked\n").is_none());
    }

    #[test]
    fn this_test_binarys_own_files_are_found() {
        let exe = std::env::current_exe().unwrap();
        let files = agent_files(&exe).unwrap();
        assert!(files.loader.is_file());
        assert!(files.libs.iter().any(|l| l.ends_with("libc.so.6")));
        assert!(files.libs.iter().all(|l| l.is_file()), "{files:?}");
    }

    #[test]
    fn a_missing_runsc_is_unavailable_with_a_reason() {
        let l = GvisorLauncher::new(&GvisorConfig {
            runsc: "/nonexistent/runsc".into(),
            platform: "ptrace".into(),
            agent_exe: std::env::current_exe().unwrap(),
        });
        let why = l.check().unwrap_err();
        assert!(why.contains("/nonexistent/runsc"), "{why}");
        let native = KindInfo {
            kind: RuntimeKind::Native,
            unavailable: None,
            kernel: "host".into(),
            version: None,
            platform: None,
            pause: true,
            stop: true,
            snapshots: true,
            memory_snapshots: false,
            network_modes: vec![NetworkMode::Isolated],
            egress: false,
            user_namespace: true,
            seccomp: true,
            disk_quota: false,
            volumes: true,
            file_metadata: true,
        };
        let info = l.info(&native);
        assert_eq!(info.unavailable.as_deref(), Some(why.as_str()));
        assert!(!info.memory_snapshots);
        // The network modes are the host's (the same veth, policy and DNS proxy).
        assert_eq!(info.network_modes, native.network_modes);
        assert!(l.network_before_start());
    }
}
