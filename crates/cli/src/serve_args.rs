//! Arguments of `warren serve` (kept apart from `serve.rs`, which wires the daemon).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Where the store and the sandboxes' files live.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/warren")]
    pub data_dir: PathBuf,
    /// Maximum number of sandboxes at once (0 = unlimited).
    #[arg(long, value_name = "N")]
    pub max_sandboxes: Option<u64>,
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
    /// Log filter: a level (`info`, `debug`, ...) or a `tracing` env-filter directive.
    #[arg(long, value_name = "LEVEL", default_value = "info", env = "WARREN_LOG")]
    pub log_level: String,
}
