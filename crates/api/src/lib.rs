//! Wire types of Warren's HTTP API.
//!
//! Everything a client sends or receives over `/v1` is defined here, once, so the server,
//! the Rust SDK and the CLI cannot drift apart. The OpenAPI document is generated from these
//! types (`utoipa::ToSchema`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod error;
mod gate;
pub use error::ErrorCode;
mod processes;
pub use processes::*;
mod search;
pub use search::*;
mod lifecycle;
pub use lifecycle::*;
mod pools;
pub use pools::*;
mod images;
mod network;
mod templates;
mod volumes;
pub use gate::Gate;
pub use images::*;
pub use network::*;
pub use templates::*;
pub use volumes::*;

/// Name of the image that needs no download: the host's `/usr` plus a generated skeleton.
pub const DEFAULT_IMAGE: &str = "host";

/// Resource limits of a sandbox. Absent fields mean "server default".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU quota in cores; fractional values are allowed (0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Memory limit in MiB. The OOM killer acts inside the sandbox only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// Maximum number of processes and threads in the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Disk space in MiB for everything the sandbox writes: its files, and what its
    /// snapshots keep of files it has since changed or deleted. Writes past it fail inside
    /// with `EDQUOT` ("Disk quota exceeded"). Only where `storage.disk_quota` is true
    /// (elsewhere 400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u64>,
}

/// Body of `POST /v1/sandboxes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    /// Image to boot; only `host` exists for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Environment given to every command run in the sandbox.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Caller-defined labels; `GET /v1/sandboxes?metadata.KEY=VALUE` filters on them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Seconds until the sandbox expires and is deleted (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Start from this snapshot's files instead of the image's (`GET /v1/snapshots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// What happens when `timeout_secs` runs out: `delete` (default), `pause` or `stop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<TimeoutAction>,
    /// Seconds of idleness (no process using CPU, no attached stream or terminal, no API
    /// call) after which `on_idle` applies. Absent: never idle out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    /// What idleness does: `pause` (default), `stop` or `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_idle: Option<IdleAction>,
    /// Exec, process and file calls on a paused or stopped sandbox resume (or start) it
    /// first instead of failing with `sandbox_paused` / `sandbox_stopped`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_resume: bool,
    /// Take a ready sandbox of this pool (`GET /v1/pools`): no cold start; `env`,
    /// `metadata`, `timeout_secs` and the lifecycle options apply as usual. `image` and
    /// `resources`, if given, must be the pool's; `snapshot` cannot be combined. An empty
    /// pool falls back to a cold create of the pool's spec. Without `pool`, a create whose
    /// image and resources (after defaults) are those of a pool without `env` takes one of
    /// its sandboxes too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Network mode and egress policy (`GET/PUT /v1/sandboxes/{id}/network` later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRequest>,
    /// Upstream API keys kept by the credential broker: the sandbox gets a base URL and a
    /// token per credential in its commands' environment, never the key (see
    /// `GET /v1/capabilities` `network.broker`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialRequest>,
    /// Volumes and host directories to mount. They are not part of the sandbox's snapshots
    /// (a restore or fork mounts the same volumes, as they are then).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// What runs the sandbox: `native` (Linux namespaces on the host kernel) or `gvisor`
    /// (gVisor's user-space kernel between the sandbox and the host). Default: the
    /// server's (`warren serve --runtime`). One the server cannot run is 400
    /// `runtime_unavailable`; `GET /v1/capabilities` lists what each supports. A restore or
    /// fork keeps the snapshot's sandbox's runtime unless this names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
}

/// What runs a sandbox's processes.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Linux namespaces, cgroups and seccomp on the host's kernel: starts in milliseconds.
    #[default]
    Native,
    /// gVisor (`runsc`): the sandbox's system calls go to a user-space kernel, not the
    /// host's. Slower to start, more memory, a much smaller host attack surface.
    Gvisor,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Native => "native",
            Runtime::Gvisor => "gvisor",
        }
    }
}

/// Lifecycle state of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Creating,
    Running,
    Pausing,
    Paused,
    Resuming,
    Stopping,
    Stopped,
    Starting,
    /// Its files are being replaced by a snapshot's (`POST .../rollback`).
    RollingBack,
    Deleting,
    /// Terminal: something went wrong (see `failure_reason`); can always be deleted.
    Failed,
}

/// Every state, in lifecycle order.
pub const ALL_STATES: [SandboxState; 11] = [
    SandboxState::Creating,
    SandboxState::Running,
    SandboxState::Pausing,
    SandboxState::Paused,
    SandboxState::Resuming,
    SandboxState::Stopping,
    SandboxState::Stopped,
    SandboxState::Starting,
    SandboxState::RollingBack,
    SandboxState::Deleting,
    SandboxState::Failed,
];

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Pausing => "pausing",
            SandboxState::Paused => "paused",
            SandboxState::Resuming => "resuming",
            SandboxState::Stopping => "stopping",
            SandboxState::Stopped => "stopped",
            SandboxState::Starting => "starting",
            SandboxState::RollingBack => "rolling_back",
            SandboxState::Deleting => "deleting",
            SandboxState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_STATES.into_iter().find(|st| st.as_str() == s)
    }

    /// A state the sandbox passes through on its way to another (each has a deadline).
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            SandboxState::Creating
                | SandboxState::Pausing
                | SandboxState::Resuming
                | SandboxState::Stopping
                | SandboxState::Starting
                | SandboxState::RollingBack
                | SandboxState::Deleting
        )
    }
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sandbox {
    pub id: String,
    pub state: SandboxState,
    pub image: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub timeout_secs: u64,
    pub metadata: BTreeMap<String, String>,
    /// The limits in force (server defaults filled in).
    pub resources: Resources,
    /// Names of the sandbox-wide environment variables (values are never echoed back).
    pub env_keys: Vec<String>,
    /// Why the sandbox failed, when `state` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// When `state` last changed.
    pub state_changed_at: DateTime<Utc>,
    /// The snapshot the sandbox's files came from (restore, fork), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub on_timeout: TimeoutAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_secs: Option<u64>,
    pub on_idle: IdleAction,
    pub auto_resume: bool,
    /// The pool whose ready sandbox this is (absent for a cold create, including one that
    /// asked for a pool that was empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Its network: mode, address and the egress policy in force.
    pub network: SandboxNetwork,
    /// Its broker credentials, values masked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<SandboxCredential>,
    /// Its volume and host directory mounts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// What runs it.
    #[serde(default)]
    pub runtime: Runtime,
}

/// Where a sandbox's port is reachable from the server's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PortAddress {
    /// The port inside the sandbox.
    pub port: u16,
    /// A TCP address on the server's loopback, e.g. `127.0.0.1:40123`; every connection to it
    /// is a connection to the port inside the sandbox.
    #[schema(value_type = String)]
    pub address: std::net::SocketAddr,
    /// `http://` + `address`.
    pub url: String,
    /// On a server that requires API keys: a token for this sandbox's reverse proxy
    /// (`/v1/sandboxes/{id}/proxy/{port}/…`), sent as `X-Warren-Token` or as the query
    /// parameter `warren_token`. It opens that sandbox's proxy and nothing else, so it can be
    /// handed to a browser or a tool that should not hold an API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
}

/// Body of `POST /v1/sandboxes/{id}/timeout`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTimeoutRequest {
    /// New lifetime in seconds, counted from now.
    pub timeout_secs: u64,
}

/// Which skeleton user runs a command.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExecUser {
    /// uid 0 (with the container-default capability set only).
    #[default]
    Root,
    /// The unprivileged `user`, uid/gid 1000, home `/home/user`.
    User,
}

/// How command output is carried in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    /// UTF-8 text; invalid bytes become U+FFFD, multi-byte characters are never split.
    #[default]
    Utf8,
    /// Exact bytes, base64 (standard alphabet, padded).
    Base64,
}

/// Body of `POST /v1/sandboxes/{id}/exec`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// argv; the first element is looked up in `PATH` when it has no slash.
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (default `/workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Text written to the command's standard input, which is then closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Kill the command's whole process group after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ExecUser>,
    /// Encoding of `stdout`/`stderr` in the response and in stream events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<OutputEncoding>,
}

/// Result of a finished command (`POST .../exec` without streaming).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExecResult {
    /// Exit status; a death by signal N reports 128+N.
    pub exit_code: i32,
    /// Name of the signal that killed the command (`SIGKILL`, ...), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// True when the command was killed because `timeout_secs` ran out.
    #[serde(default)]
    pub timed_out: bool,
    /// Standard output in `stdout_encoding`.
    pub stdout: String,
    /// Standard error in `stderr_encoding`.
    pub stderr: String,
    /// Encoding of `stdout`: the one requested, except that `utf8` output whose JSON text
    /// would be over 1 MiB and larger than its base64 form (mostly control or invalid bytes)
    /// is sent as `base64`.
    #[serde(default)]
    pub stdout_encoding: OutputEncoding,
    /// Encoding of `stderr` (as `stdout_encoding`).
    #[serde(default)]
    pub stderr_encoding: OutputEncoding,
    /// Bytes the command wrote to stdout: those kept in `stdout` plus
    /// `stdout_truncated_bytes`.
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    /// Bytes dropped from the end of stdout: beyond the server's per-stream cap
    /// (`limits.max_exec_capture_bytes`), or beyond what was left of the server-wide budget
    /// of non-streamed output (`limits.max_exec_output_bytes`). Stream to get everything.
    #[serde(default)]
    pub stdout_truncated_bytes: u64,
    #[serde(default)]
    pub stderr_truncated_bytes: u64,
    /// True when any output was dropped (`stdout_truncated_bytes` or
    /// `stderr_truncated_bytes` is not 0).
    #[serde(default)]
    pub truncated: bool,
    pub duration_ms: u64,
}

impl ExecResult {
    /// The kept stdout bytes: `stdout` decoded from `stdout_encoding` (UTF-8 text as its
    /// bytes). `None` if the server sent malformed base64.
    pub fn stdout_raw(&self) -> Option<Vec<u8>> {
        decode_output(&self.stdout, self.stdout_encoding)
    }

    /// The kept stderr bytes (see [`ExecResult::stdout_raw`]).
    pub fn stderr_raw(&self) -> Option<Vec<u8>> {
        decode_output(&self.stderr, self.stderr_encoding)
    }

    /// `stdout` as text: decoded from base64 if need be, invalid UTF-8 as U+FFFD.
    pub fn stdout_text(&self) -> String {
        output_text(&self.stdout, self.stdout_encoding)
    }

    /// `stderr` as text (see [`ExecResult::stdout_text`]).
    pub fn stderr_text(&self) -> String {
        output_text(&self.stderr, self.stderr_encoding)
    }
}

fn decode_output(data: &str, encoding: OutputEncoding) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match encoding {
        OutputEncoding::Utf8 => Some(data.as_bytes().to_vec()),
        OutputEncoding::Base64 => base64::engine::general_purpose::STANDARD.decode(data).ok(),
    }
}

fn output_text(data: &str, encoding: OutputEncoding) -> String {
    match encoding {
        OutputEncoding::Utf8 => data.to_string(),
        OutputEncoding::Base64 => decode_output(data, encoding)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default(),
    }
}

/// Data of the `stdout` and `stderr` SSE events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputChunk {
    /// The chunk, in the requested encoding.
    pub data: String,
    /// Offset of the chunk's first raw byte in the output (stdout and stderr share one
    /// offset space).
    #[serde(default)]
    pub offset: u64,
}

/// Data of the final `exit` SSE event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExitEvent {
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
    pub duration_ms: u64,
}

/// Kind of a file inside a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Device, FIFO, socket.
    Other,
}

/// Metadata of one file inside a sandbox (a symlink is reported as itself, not followed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits as a number (`st_mode & 0o7777`, e.g. 420 = 0o644).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Last modification time.
    pub modified_at: DateTime<Utc>,
    /// Target of a symlink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// File metadata: small key/value pairs attached to a regular file or directory (keys
    /// lowercase `[a-z0-9_.-]`, 1 to 128 bytes; values up to 4096 bytes). Kept in the file's
    /// user extended attributes (`user.warren.<key>`), so they follow it through renames
    /// and vanish with it; a file replaced by an upload starts without any. Absent when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Answer of `GET /v1/sandboxes/{id}/files/list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    pub entries: Vec<FileInfo>,
    /// True when the listing stopped at the server's entry limit.
    pub truncated: bool,
}

/// Answer of `POST /v1/sandboxes/{id}/files/upload`: the written files, in upload order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UploadedFiles {
    pub files: Vec<FileInfo>,
}

/// Body of `POST /v1/sandboxes/{id}/files/mkdir`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MkdirRequest {
    /// Absolute path of the directory to create.
    pub path: String,
    /// Create missing parents too, and succeed if the directory exists (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parents: Option<bool>,
    /// Permission bits as a number (default 0o755 = 493).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Owner of the new directories: `root` (default) or `user` (1000:1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ExecUser>,
}

/// Body of `POST /v1/sandboxes/{id}/files/move`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Absolute source path.
    pub from: String,
    /// Absolute destination path.
    pub to: String,
    /// Replace an existing destination (default false: `file_exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overwrite: Option<bool>,
}

/// Body of `POST /v1/sandboxes/{id}/files/metadata`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileMetadataRequest {
    /// Absolute path of a regular file or directory.
    pub path: String,
    /// Keys to set (1-128 bytes of `[A-Za-z0-9_.-]`, stored lowercased) with their values
    /// (at most 4096 bytes); an empty value removes the key; keys not named are kept. At
    /// most 32 keys per request.
    pub metadata: BTreeMap<String, String>,
}

/// What this server and its runtime support.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    pub version: String,
    /// The runtime a create that names none gets (`native` or `gvisor`).
    pub runtime: String,
    /// Every runtime this server knows, with what its sandboxes support here (the
    /// top-level `isolation`, `features` and `network` describe the native runtime).
    #[serde(default)]
    pub runtimes: Vec<RuntimeCapabilities>,
    pub images: Vec<String>,
    /// Cgroup layout of the host: `v1`, `hybrid` or `v2`.
    pub cgroup: String,
    pub isolation: Isolation,
    pub features: Features,
    pub limits: Limits,
    pub storage: StorageInfo,
    pub network: NetworkCapabilities,
}

/// What sandboxes of one runtime support on this server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RuntimeCapabilities {
    pub name: Runtime,
    pub available: bool,
    /// Why it is not available (what is missing), when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable_reason: Option<String>,
    /// The kernel the sandbox's processes talk to: `host` or `gvisor`.
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// How gVisor intercepts system calls (`ptrace`, `kvm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub pause: bool,
    pub stop: bool,
    pub snapshots: bool,
    pub rollback: bool,
    pub fork: bool,
    /// Checkpoint and restore of the processes' memory (not only the files).
    pub memory_snapshots: bool,
    /// Network modes its sandboxes can have (`isolated`, `nat`).
    pub network_modes: Vec<String>,
    pub egress_policy: bool,
    /// Sandbox root is an unprivileged host uid (native user namespaces).
    pub user_namespace: bool,
    pub seccomp: bool,
    pub disk_quota: bool,
    pub volumes: bool,
    /// Extended-attribute file metadata (`POST .../files/metadata`, E2B's `X-Metadata-*`).
    pub file_metadata: bool,
    /// Host directories can be mounted (`volumes[].host_path`, under the server's allowed
    /// prefixes); without, such a create is 400.
    #[serde(default)]
    pub host_path_mounts: bool,
    /// Reaching the memory limit ends the whole sandbox (its kernel holds all of its
    /// memory; it is then `failed`, "out of memory …") rather than only the process the
    /// kernel's OOM killer picks.
    #[serde(default)]
    pub memory_limit_ends_sandbox: bool,
    /// The server's limits apply to every runtime alike.
    pub max_sandboxes: Option<u32>,
    pub max_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Isolation {
    pub namespaces: Vec<String>,
    pub user_namespace: bool,
    pub seccomp: bool,
    pub capabilities: Vec<String>,
    /// The default network mode (`nat` or `isolated`); see `network` for all of them.
    pub network: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Features {
    pub exec: bool,
    pub exec_stream: bool,
    pub pause: bool,
    pub snapshots: bool,
    pub rollback: bool,
    pub fork: bool,
    pub processes: bool,
    pub files: bool,
    pub ports: bool,
    /// `POST .../stop` and `.../start`.
    #[serde(default)]
    pub stop: bool,
    #[serde(default)]
    pub stats: bool,
    /// Lifecycle events (`GET /v1/events`).
    #[serde(default)]
    pub events: bool,
    /// Warm pools (`/v1/pools`).
    #[serde(default)]
    pub pools: bool,
    /// Named volumes (`/v1/volumes`) and host directory mounts.
    #[serde(default)]
    pub volumes: bool,
    /// Dockerfile builds (`/v1/templates`).
    #[serde(default)]
    pub templates: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Limits {
    /// Maximum number of sandboxes at once (0 = unlimited).
    pub max_sandboxes: u64,
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    pub max_cpus: f64,
    pub max_memory_mib: u64,
    pub max_pids: u64,
    pub default_resources: Resources,
    pub max_request_bytes: u64,
    /// Most output bytes a non-streaming exec result keeps per stream (stdout, stderr).
    #[serde(default)]
    pub max_exec_capture_bytes: u64,
    /// Output bytes kept by all non-streaming execs in flight together; an exec that finds
    /// this budget used up keeps less (see `ExecResult`).
    #[serde(default)]
    pub max_exec_output_bytes: u64,
    /// HTTP connections served at once (more wait to be accepted).
    #[serde(default)]
    pub max_connections: u64,
    /// Long-lived responses (SSE streams, WebSockets) at once; beyond it 429
    /// `too_many_streams`.
    #[serde(default)]
    pub max_streams: u64,
    /// Largest sum of the memory limits of all sandboxes (pool sandboxes included) in MiB;
    /// a create beyond it is 429 `capacity_exhausted` (0 = unlimited). By default
    /// `memory_overcommit` × `memory_budget_mib`.
    #[serde(default)]
    pub max_committed_memory_mib: u64,
    /// How many times `memory_budget_mib` the memory limits may add up to by default: a
    /// limit is a ceiling, not a reservation.
    #[serde(default)]
    pub memory_overcommit: f64,
    /// Memory all sandboxes together may really use (MiB), enforced by the kernel on their
    /// parent cgroup (0 = no such limit).
    #[serde(default)]
    pub memory_budget_mib: u64,
    /// Tasks (processes and threads) all sandboxes together may have, enforced by the
    /// kernel on their parent cgroup (`pids.max`); the rest of the host's pids are kept for
    /// the host and the daemon (0 = no such limit). `max_pids` is never above it.
    #[serde(default)]
    pub pids_budget: u64,
    /// Below this much available host memory (MiB) creates are 503 `host_under_pressure`
    /// (0 = never).
    #[serde(default)]
    pub min_available_memory_mib: u64,
    /// Largest `resources.disk_mib` (0: this server has no disk quotas).
    #[serde(default)]
    pub max_disk_mib: u64,
    /// Below this much free space (MiB) on the file system of the store or of the sandboxes'
    /// files, or below 5 % of its inodes free, creates are 503 `host_under_pressure`
    /// (0 = never).
    #[serde(default)]
    pub min_free_disk_mib: u64,
    /// Largest `size` of a pool.
    #[serde(default)]
    pub max_pool_size: u32,
}

/// Every error response: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code, e.g. `sandbox_not_found`, `invalid_request`.
    pub code: String,
    pub message: String,
}

/// Name of a signal number as the API reports it (`SIGKILL`), or `SIG<n>` when unknown.
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        16 => "SIGSTKFLT",
        17 => "SIGCHLD",
        18 => "SIGCONT",
        19 => "SIGSTOP",
        20 => "SIGTSTP",
        21 => "SIGTTIN",
        22 => "SIGTTOU",
        23 => "SIGURG",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        26 => "SIGVTALRM",
        27 => "SIGPROF",
        28 => "SIGWINCH",
        29 => "SIGIO",
        30 => "SIGPWR",
        31 => "SIGSYS",
        n => return format!("SIG{n}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_rejects_unknown_fields() {
        let err = serde_json::from_str::<CreateSandboxRequest>(r#"{"imag":"host"}"#);
        assert!(err.is_err());
        let ok: CreateSandboxRequest =
            serde_json::from_str(r#"{"resources":{"cpus":0.5}}"#).unwrap();
        assert_eq!(ok.resources.unwrap().cpus, Some(0.5));
    }

    #[test]
    fn states_round_trip() {
        for s in ALL_STATES {
            assert_eq!(SandboxState::parse(s.as_str()), Some(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
    }

    #[test]
    fn file_requests() {
        let m: MkdirRequest = serde_json::from_str(r#"{"path":"/a"}"#).unwrap();
        assert_eq!(m.parents, None);
        assert!(serde_json::from_str::<MkdirRequest>(r#"{"path":"/a","x":1}"#).is_err());
        assert!(serde_json::from_str::<MoveRequest>(r#"{"from":"/a"}"#).is_err());
        let kind = serde_json::to_string(&FileKind::Symlink).unwrap();
        assert_eq!(kind, "\"symlink\"");
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(64), "SIG64");
    }
}
