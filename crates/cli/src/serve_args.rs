//! Arguments of `warren serve` (kept apart from `serve.rs`, which wires the daemon), and
//! its config file (`--config FILE`, TOML): the same settings as keys, plus `[[pools]]`.
//! A flag given on the command line wins over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use warren_api::{PoolSpec, Resources};
use warren_runtime_native::{StorageConfig, UsernsSetting};

/// `--listen` when neither the flag nor the file sets it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";

/// Data directory of a daemon started with no flags.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/warren";

/// The daemon's settings as given: the flags of `warren serve`, and the same settings as the
/// keys of its config file (one declaration for both). [`ServeArgs::settings`] puts the
/// flags over the file over the defaults.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// Config file (TOML): any of these settings as keys (`listen`, `data_dir`,
    /// `max_sandboxes`, `max_committed_memory_mib`, ...), and warm pools as `[[pools]]`
    /// tables. Flags win over the file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7400].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where the store and the sandboxes' files live [default: /var/lib/warren].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Maximum number of sandboxes at once (0 = unlimited; unclaimed pool sandboxes do not
    /// count).
    #[arg(long, value_name = "N")]
    pub max_sandboxes: Option<u64>,
    /// Largest sum of the memory limits of all sandboxes, pool sandboxes included, in MiB;
    /// beyond it creates get 429 `capacity_exhausted` (0 = unlimited) [default:
    /// --memory-overcommit × --memory-budget-mib].
    #[arg(long, value_name = "MIB")]
    pub max_committed_memory_mib: Option<u64>,
    /// How many times the memory budget the sandboxes' memory limits may add up to (a limit
    /// is a ceiling, not a reservation); sets the default of --max-committed-memory-mib
    /// [default: 4].
    #[arg(long, value_name = "RATIO")]
    pub memory_overcommit: Option<f64>,
    /// Memory all sandboxes together may really use, in MiB: the memory limit of their
    /// parent cgroup, so the OOM killer acts there, not on the host (0 = none) [default:
    /// 90 % of the host's memory].
    #[arg(long, value_name = "MIB")]
    pub memory_budget_mib: Option<u64>,
    /// Tasks (processes and threads) all sandboxes together may have: `pids.max` of their
    /// parent cgroup; also the largest `resources.pids` (0 = none) [default: the host's
    /// pid_max (or threads-max) less a tenth, at least 1024 kept for the host].
    #[arg(long, value_name = "N")]
    pub pids_budget: Option<u64>,
    /// Creates get 503 `host_under_pressure` while the host has less memory available, in
    /// MiB (0 = never) [default: 5 % of the host's memory, at least 256].
    #[arg(long, value_name = "MIB")]
    pub min_available_memory_mib: Option<u64>,
    /// Creates get 503 `host_under_pressure` while the file system of the data dir (where
    /// the store lives) or of the sandboxes' files (the btrfs image) has less free space, in
    /// MiB, or less than 5 % of its inodes free (0 = never) [default: 5 % of the smaller
    /// file system, at least 1 GiB but at most a tenth of it].
    #[arg(long, value_name = "MIB")]
    pub min_free_disk_mib: Option<u64>,
    /// `resources.disk_mib` of a sandbox created without one, where the storage has disk
    /// quotas (btrfs); 0 = no limit unless asked [default: 10240, or a quarter of the
    /// storage file system if that is less].
    #[arg(long, value_name = "MIB")]
    pub default_disk_mib: Option<u64>,
    /// Lifetime of a sandbox created without `timeout_secs`.
    #[arg(long, value_name = "SECS")]
    pub default_timeout: Option<u64>,
    /// Longest lifetime a sandbox may ask for.
    #[arg(long, value_name = "SECS")]
    pub max_timeout: Option<u64>,
    /// Cgroup directory under which each sandbox gets its own cgroup (default: `warren` for
    /// the default data dir, `warren-<hash of the data dir>` otherwise).
    #[arg(long, value_name = "NAME")]
    pub cgroup_parent: Option<String>,
    /// Log filter: a level (`info`, `debug`, ...) or a `tracing` env-filter directive
    /// [default: info].
    #[arg(long, value_name = "LEVEL", env = "WARREN_LOG")]
    pub log_level: Option<String>,
    /// Storage of sandbox files and snapshots: `dir` (any file system; a snapshot is a
    /// copy, sharing blocks where the file system can; no disk quotas), `btrfs`
    /// (subvolumes: a snapshot takes constant time; disk quotas; uses the data dir if it is
    /// on btrfs, else needs --btrfs-loop-size) or `auto`: a btrfs image (as `btrfs` with
    /// --btrfs-loop-size) where mkfs.btrfs exists and the data dir holds no `dir`
    /// sandboxes, else `dir` [default: auto].
    #[arg(long, value_enum, value_name = "BACKEND")]
    pub storage: Option<StorageKind>,
    /// Size of the btrfs image the daemon creates once at `<data-dir>/storage/btrfs.img`
    /// and mounts as a loop device, e.g. `10G` (suffixes K, M, G, T are powers of 1024).
    /// Allocated in full when created, so that sandboxes can never fill the file system
    /// the store lives on [default with auto: a quarter of the free space, at most 64G].
    #[arg(long, value_name = "SIZE")]
    pub btrfs_loop_size: Option<Size>,
    /// Give each sandbox its own user namespace, so its root is an unprivileged host uid of
    /// its own: `auto` (yes where the host can, checked at start), `on` (refuse to start
    /// where it cannot) or `off` [default: auto].
    #[arg(long, value_enum, value_name = "MODE")]
    pub user_namespaces: Option<UsernsKind>,
    /// First host uid/gid of the sandboxes' id ranges (65,536 ids each; a multiple of
    /// 65536). Ranges that overlap an account of /etc/passwd, /etc/group, /etc/subuid or
    /// /etc/subgid are skipped. Daemons on one host claim their windows in
    /// /run/warren/userns, so they never share ids [default: the first free window from
    /// 1073741824 (2^30)].
    #[arg(long, value_name = "UID")]
    pub userns_base: Option<u32>,
    /// How many id ranges there are: at most this many sandboxes at once [default: 4096].
    #[arg(long, value_name = "N")]
    pub userns_ranges: Option<u32>,
    /// Network mode of a sandbox that names none: `nat` (its own address, outbound
    /// traffic masqueraded through the host under its egress policy) or `isolated`
    /// (loopback only) [default: nat].
    #[arg(long, value_enum, value_name = "MODE")]
    pub default_network: Option<NetModeKind>,
    /// Runtime of a sandbox (or pool) that names none: `native` (Linux namespaces on the
    /// host kernel, milliseconds to start) or `gvisor` (gVisor's user-space kernel between
    /// the sandbox and the host; needs runsc). Both are offered whenever available; a
    /// create picks one with `"runtime"` [default: native].
    #[arg(long, value_enum, value_name = "RUNTIME")]
    pub runtime: Option<RuntimeArg>,
    /// The runsc binary gVisor sandboxes use [default: `runsc` in PATH].
    #[arg(long, value_name = "PATH")]
    pub runsc: Option<PathBuf>,
    /// Addresses of `nat` sandboxes (its first address is their gateway and DNS proxy),
    /// e.g. `10.88.0.0/16`; prefix /8 to /28 in steps of 4. Daemons on one host claim
    /// their ranges in /run/warren/net and refuse overlapping ones [default: 10.88.0.0/16].
    #[arg(long, value_name = "CIDR")]
    pub network_range: Option<String>,
    /// Where the sandboxes' DNS proxy forwards the names their policies allow,
    /// `ADDR[:PORT]` (repeatable) [default: the host's resolvers, from /etc/resolv.conf].
    #[arg(long, value_name = "ADDR[:PORT]")]
    pub dns_upstream: Option<Vec<String>>,
    /// On SIGTERM/SIGINT delete every sandbox (and remove the parent cgroups and the loop
    /// mount) before exiting. Without it sandboxes keep running and the next start adopts
    /// them.
    #[arg(long)]
    #[serde(default)]
    pub cleanup_on_exit: bool,
    /// HTTP connections served at once; more wait in the listen backlog until one closes
    /// [default: a quarter of the open-files limit, between 64 and 4096].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Long-lived responses (SSE streams, WebSockets) at once; beyond it they get 429
    /// `too_many_streams`. Must be below --max-connections, which keeps the rest for short
    /// requests [default: half of --max-connections].
    #[arg(long, value_name = "N")]
    pub max_streams: Option<usize>,
    /// Seconds a client has to send a request's headers (also closes keep-alive
    /// connections idle that long) [default: 10].
    #[arg(long, value_name = "SECS")]
    pub header_read_timeout: Option<u64>,
    /// Output kept by all non-streaming execs in flight together, e.g. `256M`; an exec that
    /// finds it used up returns its output truncated [default: 256M].
    #[arg(long, value_name = "SIZE")]
    pub max_exec_output: Option<Size>,
    /// A registry spoken to over plain HTTP, `HOST:PORT` (repeatable); every other one over
    /// HTTPS.
    #[arg(long, value_name = "HOST:PORT")]
    pub insecure_registry: Option<Vec<String>>,
    /// Whether a create pulls an image that is not stored yet: `missing` or `never` (then
    /// 404 `image_not_found`) [default: missing].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub pull: Option<PullKind>,
    /// A host directory sandboxes may mount from, with what lies under it (repeatable;
    /// `volumes[].host_path`, `warren create -v /DIR:/PATH`) [default: none].
    #[arg(long, value_name = "DIR")]
    pub allow_host_path: Option<Vec<PathBuf>>,
    /// The API key file (`warren key create --file FILE`): every request but `/healthz` then
    /// needs `Authorization: Bearer <key>`. Without it the daemon listens on loopback only.
    #[arg(long, value_name = "FILE")]
    pub api_keys: Option<PathBuf>,
    /// An image name other APIs' clients may use for a Warren image, `NAME=IMAGE`
    /// (repeatable; e.g. `opensandbox/code-interpreter:latest=python`). In the config file:
    /// `image_alias = ["NAME=IMAGE", ...]`.
    #[arg(long, value_name = "NAME=IMAGE")]
    pub image_alias: Option<Vec<String>>,
    /// Warm pools (config file only: `[[pools]]` tables).
    #[arg(skip)]
    #[serde(default)]
    pub pools: Vec<PoolEntry>,
    /// Registry credentials (config file only, so they never show in the process list:
    /// `[registries."HOST:PORT"]` tables with `username` and `password`).
    #[arg(skip)]
    #[serde(default)]
    pub registries: BTreeMap<String, warren_image::RegistryCredentials>,
}

/// `--pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullKind {
    Missing,
    Never,
}

/// A byte size: `512M`, `10G` (see [`parse_size`]); in the config file a string like these
/// or a number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        parse_size(s).map(Size)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(0) => Err(serde::de::Error::custom("size must be more than 0")),
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `--runtime` values (of `serve`, `create` and `pool put`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeArg {
    Native,
    Gvisor,
}

impl From<RuntimeArg> for warren_api::Runtime {
    fn from(k: RuntimeArg) -> warren_api::Runtime {
        match k {
            RuntimeArg::Native => warren_api::Runtime::Native,
            RuntimeArg::Gvisor => warren_api::Runtime::Gvisor,
        }
    }
}

impl From<RuntimeArg> for warren_runtime::RuntimeKind {
    fn from(k: RuntimeArg) -> warren_runtime::RuntimeKind {
        match k {
            RuntimeArg::Native => warren_runtime::RuntimeKind::Native,
            RuntimeArg::Gvisor => warren_runtime::RuntimeKind::Gvisor,
        }
    }
}

/// `--default-network` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetModeKind {
    Nat,
    Isolated,
}

impl From<NetModeKind> for warren_runtime::NetworkMode {
    fn from(k: NetModeKind) -> warren_runtime::NetworkMode {
        match k {
            NetModeKind::Nat => warren_runtime::NetworkMode::Nat,
            NetModeKind::Isolated => warren_runtime::NetworkMode::Isolated,
        }
    }
}

/// `ADDR[:PORT]` (port 53 when absent).
pub fn parse_dns_upstream(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| std::net::SocketAddr::new(ip, 53))
        .map_err(|_| format!("--dns-upstream {s:?}: expected ADDR or ADDR:PORT"))
}

/// `--user-namespaces` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UsernsKind {
    Auto,
    On,
    Off,
}

impl From<UsernsKind> for UsernsSetting {
    fn from(k: UsernsKind) -> UsernsSetting {
        match k {
            UsernsKind::Auto => UsernsSetting::Auto,
            UsernsKind::On => UsernsSetting::On,
            UsernsKind::Off => UsernsSetting::Off,
        }
    }
}

/// `--storage` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Dir,
    Btrfs,
    Auto,
}

/// One `[[pools]]` table: a name and a [`PoolSpec`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolEntry {
    pub name: String,
    pub size: u32,
    pub image: Option<String>,
    pub resources: Option<Resources>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `native` or `gvisor` (the server's default when absent).
    pub runtime: Option<warren_api::Runtime>,
}

/// The daemon's settings: flags over the config file over the defaults. `None` leaves the
/// engine's default (sized from the host).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_sandboxes: Option<u64>,
    pub max_committed_memory_mib: Option<u64>,
    pub memory_overcommit: Option<f64>,
    pub memory_budget_mib: Option<u64>,
    pub pids_budget: Option<u64>,
    pub min_available_memory_mib: Option<u64>,
    pub min_free_disk_mib: Option<u64>,
    pub default_disk_mib: Option<u64>,
    pub default_timeout: Option<u64>,
    pub max_timeout: Option<u64>,
    pub cgroup_parent: Option<String>,
    pub log_level: String,
    pub cleanup_on_exit: bool,
    pub storage: StorageConfig,
    pub user_namespaces: UsernsSetting,
    pub userns_base: Option<u32>,
    pub userns_ranges: Option<u32>,
    pub default_network: warren_runtime::NetworkMode,
    pub runtime: warren_runtime::RuntimeKind,
    pub runsc: PathBuf,
    pub network_range: warren_runtime::Ipv4Cidr,
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    pub max_connections: Option<usize>,
    pub max_streams: Option<usize>,
    pub header_read_timeout: Option<u64>,
    pub max_exec_output: Option<u64>,
    pub pools: Vec<(String, PoolSpec)>,
    pub insecure_registries: Vec<String>,
    pub pull: warren_engine::images::PullPolicy,
    pub registries: BTreeMap<String, warren_image::RegistryCredentials>,
    pub allow_host_paths: Vec<PathBuf>,
    pub api_keys: Option<PathBuf>,
    pub image_aliases: BTreeMap<String, String>,
}

/// `NAME=IMAGE` pairs; a name given twice is an error.
fn image_aliases(pairs: Vec<String>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pairs {
        let Some((name, image)) = p.split_once('=') else {
            anyhow::bail!("--image-alias {p:?}: expected NAME=IMAGE");
        };
        let (name, image) = (name.trim(), image.trim());
        if name.is_empty() || image.is_empty() {
            anyhow::bail!("--image-alias {p:?}: expected NAME=IMAGE");
        }
        if out.insert(name.to_string(), image.to_string()).is_some() {
            anyhow::bail!("--image-alias: {name:?} is given twice");
        }
    }
    Ok(out)
}

impl ServeArgs {
    /// A config file's settings.
    pub fn parse_file(text: &str) -> anyhow::Result<ServeArgs> {
        Ok(toml::from_str(text)?)
    }

    /// [`ServeArgs::parse_file`] of the file at `path`.
    pub fn load_file(path: &Path) -> anyhow::Result<ServeArgs> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        ServeArgs::parse_file(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Read `--config` (if any) and merge it under the flags.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => ServeArgs::load_file(path)?,
            None => ServeArgs::default(),
        };
        self.clone().over(file).resolve()
    }

    /// `self` (the flags) over `file`: a setting the flags leave out comes from the file;
    /// pools come from the file only.
    fn over(self, file: ServeArgs) -> ServeArgs {
        macro_rules! flag_or_file {
            ($($field:ident),* $(,)?) => {
                ServeArgs {
                    $($field: self.$field.or(file.$field),)*
                    config: self.config,
                    cleanup_on_exit: self.cleanup_on_exit || file.cleanup_on_exit,
                    pools: file.pools,
                    registries: file.registries,
                }
            };
        }
        flag_or_file!(
            listen,
            data_dir,
            max_sandboxes,
            max_committed_memory_mib,
            memory_overcommit,
            memory_budget_mib,
            pids_budget,
            min_available_memory_mib,
            min_free_disk_mib,
            default_disk_mib,
            default_timeout,
            max_timeout,
            cgroup_parent,
            log_level,
            storage,
            btrfs_loop_size,
            user_namespaces,
            userns_base,
            userns_ranges,
            default_network,
            runtime,
            runsc,
            network_range,
            dns_upstream,
            max_connections,
            max_streams,
            header_read_timeout,
            max_exec_output,
            insecure_registry,
            pull,
            allow_host_path,
            api_keys,
            image_alias,
        )
    }

    /// The settings, with the defaults where nothing was given.
    fn resolve(self) -> anyhow::Result<Settings> {
        let storage = storage_config(
            self.storage.unwrap_or(StorageKind::Auto),
            self.btrfs_loop_size.map(|s| s.0),
        )
        .map_err(anyhow::Error::msg)?;
        let default_listen: SocketAddr = DEFAULT_LISTEN.parse()?;
        Ok(Settings {
            listen: self.listen.unwrap_or(default_listen),
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            max_sandboxes: self.max_sandboxes,
            max_committed_memory_mib: self.max_committed_memory_mib,
            memory_overcommit: self.memory_overcommit,
            memory_budget_mib: self.memory_budget_mib,
            pids_budget: self.pids_budget,
            min_available_memory_mib: self.min_available_memory_mib,
            min_free_disk_mib: self.min_free_disk_mib,
            default_disk_mib: self.default_disk_mib,
            default_timeout: self.default_timeout,
            max_timeout: self.max_timeout,
            cgroup_parent: self.cgroup_parent,
            log_level: self.log_level.unwrap_or_else(|| "info".to_string()),
            cleanup_on_exit: self.cleanup_on_exit,
            storage,
            user_namespaces: self
                .user_namespaces
                .map(UsernsSetting::from)
                .unwrap_or_default(),
            userns_base: self.userns_base,
            userns_ranges: self.userns_ranges,
            default_network: self
                .default_network
                .map(Into::into)
                .unwrap_or(warren_runtime::NetworkMode::Nat),
            runtime: self.runtime.map(Into::into).unwrap_or_default(),
            runsc: self.runsc.unwrap_or_else(|| PathBuf::from("runsc")),
            network_range: match &self.network_range {
                Some(r) => r
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--network-range: {e}"))?,
                None => warren_runtime::Ipv4Cidr::DEFAULT_NAT_RANGE,
            },
            dns_upstreams: self
                .dns_upstream
                .iter()
                .flatten()
                .map(|s| parse_dns_upstream(s))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?,
            max_connections: self.max_connections,
            max_streams: self.max_streams,
            header_read_timeout: self.header_read_timeout,
            max_exec_output: self.max_exec_output.map(|s| s.0),
            insecure_registries: self.insecure_registry.unwrap_or_default(),
            pull: match self.pull {
                Some(PullKind::Never) => warren_engine::images::PullPolicy::Never,
                _ => warren_engine::images::PullPolicy::Missing,
            },
            registries: self.registries,
            api_keys: self.api_keys,
            image_aliases: image_aliases(self.image_alias.unwrap_or_default())?,
            allow_host_paths: self
                .allow_host_path
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    if !p.is_absolute() {
                        anyhow::bail!("--allow-host-path {}: must be absolute", p.display());
                    }
                    // Canonical, so a mount's resolved path is compared with what it is.
                    std::fs::canonicalize(&p)
                        .map_err(|e| anyhow::anyhow!("--allow-host-path {}: {e}", p.display()))
                })
                .collect::<anyhow::Result<_>>()?,
            pools: self
                .pools
                .into_iter()
                .map(|p| {
                    let spec = PoolSpec {
                        image: p.image,
                        size: p.size,
                        resources: p.resources,
                        env: p.env,
                        network: None,
                        runtime: p.runtime,
                    };
                    (p.name, spec)
                })
                .collect(),
        })
    }
}

/// The runtime's storage configuration from `storage` and `btrfs_loop_size`.
fn storage_config(kind: StorageKind, loop_size: Option<u64>) -> Result<StorageConfig, String> {
    match (kind, loop_size) {
        (StorageKind::Dir, None) => Ok(StorageConfig::Dir),
        (StorageKind::Dir, Some(_)) => Err("--btrfs-loop-size needs --storage btrfs".to_string()),
        (StorageKind::Btrfs, loop_size_bytes) => Ok(StorageConfig::Btrfs { loop_size_bytes }),
        (StorageKind::Auto, loop_size_bytes) => Ok(StorageConfig::Auto { loop_size_bytes }),
    }
}

/// A byte size: digits with an optional K, M, G or T suffix (powers of 1024; `KiB`, `MB`
/// and lower case are accepted alike), e.g. `512M`, `10G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size (e.g. 512M, 10G)"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: number too large"))?;
    let suffix = suffix.trim().to_ascii_uppercase();
    let unit = suffix
        .strip_suffix("IB")
        .or_else(|| suffix.strip_suffix('B'))
        .unwrap_or(&suffix);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unknown unit (use K, M, G or T)")),
    };
    if suffix == "IB" {
        return Err(format!("{s:?}: unknown unit (use K, M, G or T)"));
    }
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 {
        return Err("size must be more than 0".to_string());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10g"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("3GiB"), Ok(3 << 30));
        assert_eq!(parse_size("3GB"), Ok(3 << 30));
        assert_eq!(parse_size(" 7 M "), Ok(7 << 20));
        assert_eq!(parse_size("100B"), Ok(100));
        for bad in [
            "",
            "G",
            "0",
            "0G",
            "1.5G",
            "10X",
            "-1G",
            "1iB",
            "99999999999T",
            "1 G B",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn storage_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied())).map(|c| {
                c.serve
                    .over(ServeArgs::default())
                    .resolve()
                    .map(|s| s.storage)
                    .map_err(|e| e.to_string())
            })
        };
        assert_eq!(
            parse(&[]).unwrap(),
            Ok(StorageConfig::Auto {
                loop_size_bytes: None
            })
        );
        assert_eq!(
            parse(&["--btrfs-loop-size", "10G"]).unwrap(),
            Ok(StorageConfig::Auto {
                loop_size_bytes: Some(10 << 30)
            })
        );
        assert_eq!(
            parse(&["--storage", "dir"]).unwrap(),
            Ok(StorageConfig::Dir)
        );
        assert_eq!(
            parse(&["--storage", "btrfs"]).unwrap(),
            Ok(StorageConfig::Btrfs {
                loop_size_bytes: None
            })
        );
        assert_eq!(
            parse(&["--storage", "btrfs", "--btrfs-loop-size", "10G"]).unwrap(),
            Ok(StorageConfig::Btrfs {
                loop_size_bytes: Some(10 << 30)
            })
        );
        assert!(parse(&["--storage", "dir", "--btrfs-loop-size", "10G"])
            .unwrap()
            .is_err());
        assert!(parse(&["--storage", "zfs"]).is_err());
        assert!(parse(&["--storage", "btrfs", "--btrfs-loop-size", "lots"]).is_err());
    }

    #[test]
    fn config_file_under_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let file = ServeArgs::parse_file(
            r#"
            listen = "127.0.0.1:9000"
            data_dir = "/srv/warren"
            max_sandboxes = 10
            max_committed_memory_mib = 8192
            memory_overcommit = 2.5
            memory_budget_mib = 4096
            pids_budget = 5000
            cleanup_on_exit = true
            min_available_memory_mib = 512
            min_free_disk_mib = 2048
            default_disk_mib = 4096
            storage = "btrfs"
            btrfs_loop_size = "2G"
            max_connections = 300
            max_streams = 100
            header_read_timeout = 5
            max_exec_output = "64M"

            [[pools]]
            name = "py"
            size = 4
            [pools.resources]
            cpus = 1
            memory_mib = 512
            [pools.env]
            LANG = "C"

            [[pools]]
            name = "tiny"
            size = 1
            image = "host"
            "#,
        )
        .unwrap();
        let cli = Cli::parse_from([
            "serve",
            "--max-sandboxes",
            "3",
            "--log-level",
            "debug",
            "--max-streams",
            "50",
        ]);
        let s = cli.serve.over(file).resolve().unwrap();
        assert_eq!((s.max_connections, s.max_streams), (Some(300), Some(50)));
        assert_eq!(s.header_read_timeout, Some(5));
        assert_eq!(s.max_exec_output, Some(64 << 20));
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.data_dir, Path::new("/srv/warren"));
        assert_eq!(s.max_sandboxes, Some(3));
        assert_eq!(s.max_committed_memory_mib, Some(8192));
        assert_eq!(s.min_available_memory_mib, Some(512));
        assert_eq!(
            (s.min_free_disk_mib, s.default_disk_mib),
            (Some(2048), Some(4096))
        );
        assert_eq!(s.memory_overcommit, Some(2.5));
        assert_eq!(s.memory_budget_mib, Some(4096));
        assert_eq!(s.pids_budget, Some(5000));
        assert!(s.cleanup_on_exit);
        assert_eq!(s.log_level, "debug");
        assert_eq!(
            s.storage,
            StorageConfig::Btrfs {
                loop_size_bytes: Some(2 << 30)
            }
        );
        assert_eq!(s.pools.len(), 2);
        let (name, py) = &s.pools[0];
        assert_eq!((name.as_str(), py.size), ("py", 4));
        let r = py.resources.as_ref().unwrap();
        assert_eq!((r.cpus, r.memory_mib), (Some(1.0), Some(512)));
        assert_eq!(py.env["LANG"], "C");
        assert_eq!(s.pools[1].1.image.as_deref(), Some("host"));

        // Defaults without flags or file.
        let s = Cli::parse_from(["serve"])
            .serve
            .over(ServeArgs::default())
            .resolve()
            .unwrap();
        assert_eq!(s.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(s.data_dir, Path::new("/var/lib/warren"));
        assert_eq!((s.max_sandboxes, s.max_committed_memory_mib), (None, None));
        assert!(!s.cleanup_on_exit);
        let s = Cli::parse_from(["serve", "--cleanup-on-exit", "--pids-budget", "100"])
            .serve
            .over(ServeArgs::default())
            .resolve()
            .unwrap();
        assert!(s.cleanup_on_exit);
        assert_eq!(s.pids_budget, Some(100));

        for bad in [
            "lisen = \"x\"",
            "[[pools]]\nname = \"a\"",
            "[[pools]]\nname = \"a\"\nsize = 1\ncolor = 2",
            "[[pools]]\nname = \"a\"\nsize = 1\n[pools.resources]\nram = 1",
            "storage = \"zfs\"",
        ] {
            assert!(ServeArgs::parse_file(bad).is_err(), "{bad}");
        }
        // Sizes are checked as the file is read; a number is bytes.
        for bad in [
            "btrfs_loop_size = \"lots\"",
            "max_exec_output = 0",
            "config = \"x\"",
        ] {
            assert!(ServeArgs::parse_file(bad).is_err(), "{bad}");
        }
        let bytes = ServeArgs::parse_file("max_exec_output = 1048576").unwrap();
        assert_eq!(bytes.max_exec_output, Some(Size(1 << 20)));
    }
}
