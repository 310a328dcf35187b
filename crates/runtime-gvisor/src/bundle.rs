//! The OCI bundle runsc runs: `config.json` for a sandbox whose root the helper mounted.
//!
//! - root: the merged overlay the helper built (`<sandbox>/rootfs`), writable: gVisor's file
//!   proxy (the gofer) serves it, so what the sandbox writes lands in the same writable
//!   layer a native sandbox's does (snapshots, quotas, the files API see no difference);
//! - `/tmp` is bound to the root's own `/tmp` (runsc would otherwise mount a tmpfs there,
//!   whose files a stop, a snapshot or a fork would lose);
//! - the agent: the host's dynamic loader, the libraries the agent binary links and the
//!   binary itself, bound read-only under `/dev/.warren/` (under `/dev`, gVisor's own
//!   tmpfs, so nothing is written into the sandbox's files for their mount points; the
//!   helper makes them in a scratch tmpfs it mounts over the root's `/dev`). PID 1 is
//!   `ld.so --library-path /dev/.warren/lib /dev/.warren/warren __gvisor-agent`, which runs
//!   on any image, whatever libc it has or lacks;
//! - `/dev/.warren/run` is the host directory `<sandbox>/run`, where the agent binds its
//!   socket (runsc's `--host-uds=create` makes it a host socket the daemon connects to).
//!   The agent unmounts all of `/dev/.warren` once it listens.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde_json::json;

use crate::{Options, AGENT_ARG};

/// Where the agent's files are inside the sandbox (gVisor's `/dev`).
pub const AGENT_DIR: &str = "/dev/.warren";
/// The socket directory inside ([`AGENT_DIR`]`/run`).
pub const RUN_DIR: &str = "/dev/.warren/run";
/// The agent's socket inside.
pub const SOCKET: &str = "/dev/.warren/run/agent.sock";
/// The seccomp program the agent loads (compiled by the daemon: libseccomp cannot build it
/// on gVisor's kernel, which reports an older seccomp API).
pub const SECCOMP: &str = "/dev/.warren/seccomp.bpf";
/// Its name in the bundle directory (host side).
pub const SECCOMP_FILE: &str = "seccomp.bpf";
/// The sandbox's `PATH` for the agent (its commands get their own environment).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Open files the agent may hold (a native agent's limit is the host's default; gVisor
/// applies this one inside).
const NOFILE: u64 = 1 << 20;

/// Everything the sandbox's PID 1 starts with: all capabilities (it drops to the native
/// default set itself, after hiding its files, which needs `CAP_SYS_ADMIN`).
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// A bind of the host path `source` at `dest` inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    pub dest: String,
    pub read_only: bool,
}

/// The agent's read-only binds: the binary at `/dev/.warren/warren`, its loader and
/// libraries in `/dev/.warren/lib/` under their file names.
pub fn agent_binds(opts: &Options, bundle_dir: &Path) -> Vec<Bind> {
    let lib = |p: &Path| Bind {
        source: p.to_path_buf(),
        dest: format!(
            "{AGENT_DIR}/lib/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        ),
        read_only: true,
    };
    let mut binds = vec![Bind {
        source: opts.agent.exe.clone(),
        dest: format!("{AGENT_DIR}/warren"),
        read_only: true,
    }];
    binds.push(Bind {
        source: bundle_dir.join(SECCOMP_FILE),
        dest: SECCOMP.into(),
        read_only: true,
    });
    binds.push(lib(&opts.agent.loader));
    binds.extend(opts.agent.libs.iter().map(|l| lib(l)));
    binds
}

/// PID 1's argv: the agent through the loader.
pub fn agent_argv(opts: &Options) -> Vec<String> {
    let loader = opts
        .agent
        .loader
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    vec![
        format!("{AGENT_DIR}/lib/{loader}"),
        "--library-path".into(),
        format!("{AGENT_DIR}/lib"),
        format!("{AGENT_DIR}/warren"),
        AGENT_ARG.into(),
    ]
}

/// `config.json` for sandbox `id` on the root at `rootfs`, its socket directory `run_dir`
/// (host paths) and `binds` (the agent's, then volumes are already in the root).
pub fn config(
    id: &str,
    rootfs: &Path,
    run_dir: &Path,
    bundle_dir: &Path,
    tmp: bool,
    netns: Option<&Path>,
    opts: &Options,
) -> Result<Spec, serde_json::Error> {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    if tmp {
        mounts.push(json!({"destination": "/tmp", "type": "bind",
            "source": rootfs.join("tmp"), "options": ["rbind", "rw"]}));
    }
    for b in agent_binds(opts, bundle_dir) {
        mounts.push(
            json!({"destination": b.dest, "type": "bind", "source": b.source,
            "options": ["bind", if b.read_only { "ro" } else { "rw" }]}),
        );
    }
    mounts.push(
        json!({"destination": RUN_DIR, "type": "bind", "source": run_dir,
        "options": ["bind", "rw"]}),
    );
    let mut resources = json!({});
    if let Some(m) = opts.memory_bytes {
        resources["memory"] = json!({ "limit": m });
    }
    if let Some(c) = opts.cpus {
        let period: u64 = 100_000;
        resources["cpu"] = json!({ "quota": (c * period as f64).ceil() as i64, "period": period });
    }
    let caps = json!(CAPS);
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = netns {
        // The wired namespace (with `--network=sandbox` runsc's sandbox joins it and copies
        // its interfaces, addresses and routes into its netstack).
        namespaces.push(json!({"type": "network", "path": ns}));
    }
    let doc = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": agent_argv(opts),
            "env": [format!("PATH={PATH}")],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE, "soft": NOFILE}],
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": id,
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": resources,
        },
    });
    serde_json::from_value(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgentFiles;

    fn opts() -> Options {
        Options {
            runsc: "/usr/bin/runsc".into(),
            platform: "ptrace".into(),
            agent: AgentFiles {
                exe: "/opt/warren/bin/warren".into(),
                loader: "/lib64/ld-linux-x86-64.so.2".into(),
                libs: vec!["/lib/x86_64-linux-gnu/libc.so.6".into()],
            },
            network: false,
            memory_bytes: Some(256 << 20),
            cpus: Some(1.5),
        }
    }

    #[test]
    fn the_agent_runs_through_the_loader_from_dev() {
        assert_eq!(
            agent_argv(&opts()),
            [
                "/dev/.warren/lib/ld-linux-x86-64.so.2",
                "--library-path",
                "/dev/.warren/lib",
                "/dev/.warren/warren",
                "__gvisor-agent"
            ]
        );
        let dests: Vec<String> = agent_binds(&opts(), Path::new("/b"))
            .into_iter()
            .map(|b| b.dest)
            .collect();
        assert_eq!(
            dests,
            [
                "/dev/.warren/warren",
                "/dev/.warren/seccomp.bpf",
                "/dev/.warren/lib/ld-linux-x86-64.so.2",
                "/dev/.warren/lib/libc.so.6"
            ]
        );
    }

    #[test]
    fn config_is_a_valid_oci_spec_with_the_sandboxs_root_and_limits() {
        let spec = config(
            "sb-1",
            Path::new("/data/sandboxes/sb-1/rootfs"),
            Path::new("/data/sandboxes/sb-1/run"),
            Path::new("/data/sandboxes/sb-1/bundle"),
            true,
            None,
            &opts(),
        )
        .unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("sb-1"));
        let root = spec.root().as_ref().unwrap();
        assert_eq!(root.path(), Path::new("/data/sandboxes/sb-1/rootfs"));
        assert_eq!(root.readonly(), Some(false));
        let mounts = spec.mounts().as_ref().unwrap();
        let tmp = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/tmp"))
            .unwrap();
        assert_eq!(
            tmp.source().as_deref(),
            Some(Path::new("/data/sandboxes/sb-1/rootfs/tmp"))
        );
        assert!(mounts.iter().any(|m| m.destination() == Path::new(RUN_DIR)
            && m.source().as_deref() == Some(Path::new("/data/sandboxes/sb-1/run"))));
        let res = spec.linux().as_ref().unwrap().resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(256 << 20));
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(150_000));
        // No network namespace: runsc stays in the helper's.
        let ns = spec
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap();
        assert!(ns
            .iter()
            .all(|n| n.typ() != oci_spec::runtime::LinuxNamespaceType::Network));

        // A nat sandbox's: the helper's wired namespace, by path.
        let spec = config(
            "sb-1",
            Path::new("/r"),
            Path::new("/run"),
            Path::new("/b"),
            true,
            Some(Path::new("/proc/42/ns/net")),
            &opts(),
        )
        .unwrap();
        let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
        let net = ns
            .iter()
            .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(net.path().as_deref(), Some(Path::new("/proc/42/ns/net")));
    }
}
