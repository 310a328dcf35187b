//! What the daemon hands the `__sandbox-init` helper, what the helper answers, and where a
//! sandbox's files live. Pure data: no syscalls here.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use warren_runtime::IdMap;

/// Argument that makes the `warren` binary run [`crate::init::run_helper`].
pub const HELPER_ARG: &str = "__sandbox-init";

/// Longest sandbox id (it is also the hostname).
pub use warren_runtime::id::MAX_ID_LEN;

/// The helper's input, one JSON document on its stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    /// Sandbox id; becomes the hostname.
    pub id: String,
    /// `<data_dir>/sandboxes/<id>` (host path).
    pub sandbox_dir: PathBuf,
    /// The image's root directory: the lower layer of the sandbox's root overlay.
    pub image_dir: PathBuf,
    /// Cgroup path relative to every hierarchy's root (`/<parent>/<id>`), created and
    /// limited by the daemon, which also moves the helper into it before sending this spec.
    pub cgroup_path: PathBuf,
    /// The seccomp program PID 1 loads last, compiled once by the daemon
    /// ([`crate::seccomp::export_default_bpf`]).
    pub seccomp_bpf: Vec<u8>,
    /// The sandbox's user namespace mapping; `None` runs it without one.
    #[serde(default)]
    pub idmap: Option<IdMap>,
    /// An OCI image's layer directories, top-most first: the root overlay's lower layers
    /// instead of `image_dir` and the host's `/usr` (empty: the `host` image).
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    /// Directories bind-mounted into the root last, in order (volumes, host directories).
    #[serde(default)]
    pub mounts: Vec<PlannedMount>,
    /// Options of the [`crate::Launcher`] that starts this sandbox instead of the native
    /// PID 1 (opaque here; `None`: the native helper).
    #[serde(default)]
    pub launcher: Option<serde_json::Value>,
}

/// A directory the helper binds into the sandbox's root (planned by the daemon from a
/// [`warren_runtime::MountSpec`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedMount {
    /// A host directory, opened without following a symlink: a volume's root, or an allowed
    /// host prefix.
    pub root: PathBuf,
    /// Relative path under `root` (empty: `root` itself).
    pub rel: PathBuf,
    /// Resolve `rel` as if `root` were `/` (a volume: as its sandboxes see it), rather than
    /// refusing any path that leaves `root` (a host directory).
    pub in_root: bool,
    /// Make `rel`'s missing directories (a volume's `sub_path`).
    pub make: bool,
    /// Absolute path inside the sandbox.
    pub dest: String,
    pub read_only: bool,
    /// Mount it idmapped through the sandbox's user namespace (a volume: owners on disk are
    /// owners inside). A host directory is not: what a sandbox writes there belongs to its
    /// own unprivileged host ids, never to host root.
    pub idmap: bool,
}

/// Most lower layers overlayfs takes (`OVL_MAX_STACK`), less the one a snapshot might add.
pub const MAX_LAYERS: usize = 499;

impl InitSpec {
    /// Check what the helper relies on before it touches anything.
    pub fn validate(&self) -> Result<(), String> {
        validate_id(&self.id)?;
        for (what, p) in [
            ("sandbox_dir", &self.sandbox_dir),
            ("image_dir", &self.image_dir),
            ("cgroup_path", &self.cgroup_path),
        ] {
            if !p.is_absolute() {
                return Err(format!("{what} must be absolute: {}", p.display()));
            }
        }
        for (what, p) in [
            ("sandbox_dir", &self.sandbox_dir),
            ("image_dir", &self.image_dir),
        ] {
            check_overlay_path(p).map_err(|e| format!("{what}: {e}"))?;
        }
        if self.layers.len() > MAX_LAYERS {
            return Err(format!(
                "{} layers; overlayfs stacks at most {MAX_LAYERS}",
                self.layers.len()
            ));
        }
        for p in &self.layers {
            if !p.is_absolute() {
                return Err(format!("layer must be absolute: {}", p.display()));
            }
            check_overlay_path(p).map_err(|e| format!("layer: {e}"))?;
        }
        for m in &self.mounts {
            if !m.root.is_absolute() || m.rel.is_absolute() {
                return Err(format!(
                    "mount root must be absolute and rel relative: {m:?}"
                ));
            }
            let dest = Path::new(&m.dest);
            if !dest.is_absolute()
                || dest.components().any(|c| {
                    matches!(
                        c,
                        std::path::Component::ParentDir | std::path::Component::CurDir
                    )
                })
            {
                return Err(format!(
                    "mount dest must be absolute and normal: {:?}",
                    m.dest
                ));
            }
        }
        if let Some(m) = self.idmap {
            if m.host_id == 0 || !m.host_id.is_multiple_of(IdMap::SIZE) || m.size != IdMap::SIZE {
                return Err(format!(
                    "idmap must start at a non-zero multiple of {} and span {0} ids, got {m:?}",
                    IdMap::SIZE
                ));
            }
            m.host_id
                .checked_add(m.size)
                .ok_or_else(|| format!("idmap {m:?} runs past the last uid"))?;
        }
        Ok(())
    }

    pub fn paths(&self) -> SandboxPaths {
        SandboxPaths::new(&self.sandbox_dir)
    }
}

/// The helper's answer: exactly one JSON line on its stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum HelperReport {
    /// The sandbox is up; `pid` is its PID 1 as seen from the host.
    Ready {
        pid: i32,
    },
    Failed {
        error: String,
    },
    /// Not yet up: the helper made the network namespace its sandbox will use (that of
    /// host pid `netns_pid`) and waits for the daemon to wire it and write [`GO`] on its
    /// stdin (EOF instead: give up). Then the final report follows.
    Netns {
        netns_pid: i32,
    },
}

/// The daemon's answer to [`HelperReport::Netns`] once the namespace is wired.
pub const GO: &str = "go\n";

impl HelperReport {
    pub fn to_line(&self) -> String {
        // Serializing these two plain shapes cannot fail; fall back to a fixed text anyway.
        let mut s = serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"error":"unserializable report"}"#.to_string());
        s.push('\n');
        s
    }

    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line.trim())
    }
}

/// The rule of a sandbox id ([`warren_runtime::SandboxId`]) for names that arrive untyped:
/// snapshot ids and directory names found on disk.
pub fn validate_id(id: &str) -> Result<(), String> {
    warren_runtime::id::check(id).map_err(|why| format!("id {id:?} {why}"))
}

/// Overlayfs mount options are a comma-separated list with `:` between lower dirs; refuse
/// paths that would need escaping rather than escape them.
pub fn check_overlay_path(p: &Path) -> Result<(), String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))?;
    if s.contains([',', ':', '\\', '\n']) {
        return Err(format!("{s:?} contains ',', ':', '\\' or a newline"));
    }
    Ok(())
}

/// Where one sandbox's files live on the host.
///
/// Everything the sandbox writes is under one directory, `fs/` (a btrfs subvolume with the
/// btrfs storage backend), which snapshots copy as a whole (see `storage`). The overlay
/// work dirs are in it too: overlayfs moves files from its work dir into its upper dir by
/// rename, and a rename cannot cross a btrfs subvolume boundary (`EXDEV`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPaths {
    pub dir: PathBuf,
    /// The sandbox's writable state: `upper/`, `work/`, `usr-upper/`, `usr-work/`.
    pub fs: PathBuf,
    /// Upper layer of the root overlay (`fs/upper`).
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Upper layer of the `/usr` overlay (lower: the host's `/usr`; `fs/usr-upper`).
    pub usr_upper: PathBuf,
    pub usr_work: PathBuf,
    /// Mount point of the merged root (only mounted inside the sandbox's mount namespace).
    pub rootfs: PathBuf,
    /// Where the helper attaches the idmapped lower layers (`lower/image`, `lower/usr`)
    /// for a moment while it mounts the overlays (in its own mount namespace).
    pub lower: PathBuf,
    /// The agent's listening socket.
    pub socket: PathBuf,
    /// The agent's stdout and stderr, as the daemon drains them from a pipe.
    pub log: PathBuf,
}

impl SandboxPaths {
    pub fn new(dir: &Path) -> Self {
        let fs = dir.join("fs");
        Self {
            dir: dir.to_path_buf(),
            upper: fs.join("upper"),
            work: fs.join("work"),
            usr_upper: fs.join("usr-upper"),
            usr_work: fs.join("usr-work"),
            fs,
            rootfs: dir.join("rootfs"),
            lower: dir.join("lower"),
            socket: dir.join(SOCKET_NAME),
            log: dir.join("agent.log"),
        }
    }
}

pub const SOCKET_NAME: &str = "agent.sock";

/// `overlay` mount data for one lower dir.
pub fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// The sandbox's `/etc/hosts`.
pub fn hosts_file(id: &str) -> String {
    format!(
        "127.0.0.1\tlocalhost {id}\n::1\tlocalhost ip6-localhost ip6-loopback {id}\n\
         ff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InitSpec {
        InitSpec {
            id: "sb-1".into(),
            sandbox_dir: "/var/lib/warren/sandboxes/sb-1".into(),
            image_dir: "/var/lib/warren/images/host".into(),
            cgroup_path: "/warren/sb-1".into(),
            seccomp_bpf: vec![0; 16],
            idmap: Some(IdMap::new(1 << 30)),
            layers: Vec::new(),
            mounts: Vec::new(),
            launcher: None,
        }
    }

    #[test]
    fn spec_roundtrips_and_validates() {
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        let back: InitSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        back.validate().unwrap();
    }

    #[test]
    fn spec_rejects_bad_fields() {
        let mut s = spec();
        s.id = "Bad_Id".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.sandbox_dir = "relative/dir".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.image_dir = "/a,b".into();
        assert!(s.validate().is_err());
        for bad in [0, 1000, 65536 * 65535] {
            let mut s = spec();
            s.idmap = Some(IdMap::new(bad));
            assert!(s.validate().is_err(), "{bad}");
        }
        let mut s = spec();
        s.idmap = None;
        s.validate().unwrap();
        assert!(serde_json::from_str::<InitSpec>(r#"{"id":"x"}"#).is_err());
    }

    #[test]
    fn ids() {
        validate_id("abc-123").unwrap();
        validate_id(&"a".repeat(63)).unwrap();
        assert!(validate_id("").is_err());
        assert!(validate_id(&"a".repeat(64)).is_err());
        assert!(validate_id("-a").is_err());
        assert!(validate_id("a/b").is_err());
        assert!(validate_id("..").is_err());
        assert!(validate_id("A").is_err());
    }

    #[test]
    fn report_lines() {
        let ok = HelperReport::Ready { pid: 42 };
        assert_eq!(ok.to_line(), "{\"pid\":42}\n");
        assert_eq!(HelperReport::parse("{\"pid\":42}\n").unwrap(), ok);
        let err = HelperReport::Failed {
            error: "boom".into(),
        };
        assert_eq!(err.to_line(), "{\"error\":\"boom\"}\n");
        assert_eq!(HelperReport::parse(&err.to_line()).unwrap(), err);
        assert!(HelperReport::parse("garbage").is_err());
        let netns = HelperReport::Netns { netns_pid: 7 };
        assert_eq!(netns.to_line(), "{\"netns_pid\":7}\n");
        assert_eq!(HelperReport::parse(&netns.to_line()).unwrap(), netns);
    }

    #[test]
    fn paths_and_files() {
        let p = SandboxPaths::new(Path::new("/d/sandboxes/x"));
        assert_eq!(p.socket, Path::new("/d/sandboxes/x/agent.sock"));
        assert_eq!(p.usr_work, Path::new("/d/sandboxes/x/fs/usr-work"));
        assert_eq!(p.upper, Path::new("/d/sandboxes/x/fs/upper"));
        assert_eq!(p.fs, Path::new("/d/sandboxes/x/fs"));
        assert_eq!(
            overlay_options(Path::new("/l"), Path::new("/u"), Path::new("/w")),
            "lowerdir=/l,upperdir=/u,workdir=/w"
        );
        let hosts = hosts_file("x");
        assert!(hosts.starts_with("127.0.0.1\tlocalhost x\n::1\t"));
    }
}
