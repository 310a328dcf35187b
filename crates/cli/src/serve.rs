//! `warren serve`: the daemon. Wires the native runtime, the engine and the HTTP server,
//! prints the bound address. On SIGTERM/SIGINT it stops and leaves the sandboxes running
//! for the next start to adopt; with `--cleanup-on-exit` it deletes them first.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;
use warren_engine::{Engine, EngineConfig};
use warren_runtime_native::cgroup::{self, Layout, ParentLimits};
use warren_runtime_native::{NativeConfig, NativeRuntime};

use crate::serve_args::{ServeArgs, DEFAULT_DATA_DIR};

/// The cgroup parent for a data dir: `warren` for the default one, otherwise `warren-` plus
/// a short hash of the path, so two daemons with different data dirs never touch each
/// other's cgroups.
fn cgroup_parent_for(data_dir: &Path) -> String {
    if data_dir == Path::new(DEFAULT_DATA_DIR) {
        return "warren".to_string();
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("warren-{:08x}", h as u32)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{level},libcgroups=error"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Whatever started the daemon may have left fds open without close-on-exec: none of
    // them may reach a tool the daemon runs (sandbox helpers close everything anyway).
    // SAFETY: only sets the close-on-exec flag on descriptors; none is closed.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let settings = args.settings()?;
    init_logging(&settings.log_level);
    if !nix_is_root() {
        bail!("warren serve must run as root (it creates namespaces, mounts and cgroups)");
    }
    // Checked before anything is touched: a daemon that will not serve changes nothing.
    let keys = match &settings.api_keys {
        Some(path) => Some(
            warren_server::auth::ApiKeys::watch(warren_server::auth::KeyFile::new(path))
                .with_context(|| format!("--api-keys {}", path.display()))?,
        ),
        None if !settings.listen.ip().is_loopback() => bail!(
            "refusing to listen on {} without API keys: anyone who can reach it would run \
             code on this host. Make a key file (warren key create --file FILE) and pass \
             --api-keys FILE, or listen on loopback",
            settings.listen
        ),
        None => None,
    };
    if let Some(r) = settings.memory_overcommit {
        if !(r.is_finite() && r > 0.0) {
            bail!("--memory-overcommit must be a number above 0, got {r}");
        }
    }
    private_dir(&settings.data_dir)
        .with_context(|| format!("creating data dir {}", settings.data_dir.display()))?;
    // With API keys: the key of the per-sandbox proxy tokens, kept in the data dir.
    let auth = match keys {
        Some(keys) => {
            let path = settings.data_dir.join("access.key");
            let tokens = warren_server::auth::SandboxTokens::open(&path)
                .with_context(|| format!("the sandbox token key {}", path.display()))?;
            Some(warren_server::auth::Auth { keys, tokens })
        }
        None => None,
    };
    let data_dir = settings
        .data_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", settings.data_dir.display()))?;
    let _lock = lock_data_dir(&data_dir)?;

    let cgroup_parent = settings
        .cgroup_parent
        .clone()
        .unwrap_or_else(|| cgroup_parent_for(&data_dir));
    let parent_for_limits = cgroup_parent.clone();
    let helper_exe = std::env::current_exe().context("locating the warren binary")?;
    let storage = settings.storage.clone();
    let native_config = NativeConfig {
        data_dir: data_dir.clone(),
        helper_exe,
        cgroup_parent,
        storage,
        user_namespaces: settings.user_namespaces,
    };
    let gvisor = warren_runtime_gvisor::GvisorConfig {
        runsc: settings.runsc.clone(),
        platform: "ptrace".into(),
        agent_exe: native_config.helper_exe.clone(),
    };
    let default_runtime = settings.runtime;
    let runtime = tokio::task::spawn_blocking(move || {
        let launcher = warren_runtime_gvisor::GvisorLauncher::new(&gvisor);
        if default_runtime == warren_runtime::RuntimeKind::Gvisor {
            if let Err(why) = launcher.check() {
                return Err(anyhow::anyhow!("--runtime gvisor: {why}"));
            }
        }
        NativeRuntime::with_launchers(native_config, vec![std::sync::Arc::new(launcher)])
            .context("setting up the native runtime")
    })
    .await
    .context("runtime setup task")??;
    let mut net = warren_network::NetConfig::new(data_dir.join("network"));
    net.range = settings.network_range;
    net.dns_upstreams = settings.dns_upstreams.clone();
    match runtime.start_network(net).await {
        Ok(()) => {}
        Err(e) if settings.default_network == warren_runtime::NetworkMode::Nat => {
            return Err(e).context(
                "setting up nat networking (install nftables, or serve with \
                 --default-network isolated to run without it)",
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "nat networking is unavailable; sandboxes are isolated")
        }
    }

    let mut config = EngineConfig::with_defaults(data_dir.clone());
    if let Some(n) = settings.max_sandboxes {
        config.max_sandboxes = n;
    }
    if let Some(b) = settings.pids_budget {
        config.pids_budget = b;
        if b > 0 {
            config.max_pids = config.max_pids.min(b);
            config.default_resources.pids = config.default_resources.pids.map(|p| p.min(b));
        }
    }
    let host_budget_mib = config.memory_budget_mib;
    if let Some(m) = settings.memory_budget_mib {
        config.memory_budget_mib = m;
    }
    if let Some(r) = settings.memory_overcommit {
        config.memory_overcommit = r;
    }
    config.max_committed_memory_mib = match settings.max_committed_memory_mib {
        Some(m) => m,
        // Without a budget the host's memory less a tenth stands in for it.
        None => warren_engine::committed_memory_mib(
            match config.memory_budget_mib {
                0 => host_budget_mib,
                b => b,
            },
            config.memory_overcommit,
        ),
    };
    if let Some(m) = settings.min_available_memory_mib {
        config.min_available_memory_mib = m;
    }
    disk_settings(&mut config, &settings, &runtime)?;
    if let Some(s) = settings.max_timeout {
        config.max_timeout_secs = s;
    }
    if let Some(s) = settings.default_timeout {
        config.default_timeout_secs = s;
    }
    config.config_pools = settings.pools.clone();
    if let Some(b) = settings.userns_base {
        config.id_ranges.base = Some(b);
    }
    if let Some(n) = settings.userns_ranges {
        config.id_ranges.count = n;
    }
    config.id_ranges.exclude = warren_engine::idmaps::host_accounts(Path::new("/"));
    config.default_network = settings.default_network;
    config.default_runtime = settings.runtime;
    config.pull_policy = settings.pull;
    config.allowed_host_paths = settings.allow_host_paths.clone();
    config.images = Some(
        warren_image::ImageStore::open(
            &settings.data_dir.join("oci"),
            warren_image::RegistryConfig {
                insecure: settings.insecure_registries.clone(),
                auth: settings.registries.clone().into_iter().collect(),
                connect_timeout: None,
            },
        )
        .context("opening the image store")?,
    );
    config
        .id_ranges
        .validate()
        .map_err(anyhow::Error::msg)
        .context("--userns-base / --userns-ranges")?;
    if let Some(n) = settings.max_connections {
        config.max_connections = n;
        config.max_streams = n / 2;
    }
    if let Some(n) = settings.max_streams {
        config.max_streams = n;
    }
    if config.max_streams == 0 || config.max_streams >= config.max_connections {
        bail!(
            "--max-streams ({}) must be at least 1 and below --max-connections ({}): the \
             connections above it are kept for short requests",
            config.max_streams,
            config.max_connections
        );
    }
    if let Some(s) = settings.header_read_timeout {
        if s == 0 {
            bail!("--header-read-timeout must be at least 1 second");
        }
        config.header_read_timeout = Duration::from_secs(s);
    }
    if let Some(b) = settings.max_exec_output {
        config.max_exec_output_bytes = b;
    }
    if config.default_timeout_secs == 0 || config.default_timeout_secs > config.max_timeout_secs {
        bail!(
            "--default-timeout ({}) must be between 1 and --max-timeout ({})",
            config.default_timeout_secs,
            config.max_timeout_secs
        );
    }
    // What all sandboxes together may use, enforced by the kernel on their parent cgroup.
    let limits = ParentLimits {
        pids: Some(config.pids_budget).filter(|p| *p > 0),
        memory_bytes: Some(config.memory_budget_mib)
            .filter(|m| *m > 0)
            .map(|m| m << 20),
    };
    let parent = parent_for_limits.clone();
    let set = tokio::task::spawn_blocking(move || {
        cgroup::set_parent_limits(Layout::detect()?, &parent, &limits)
    })
    .await
    .context("cgroup setup task")?;
    if let Err(e) = set {
        // E.g. a memory budget below what adopted sandboxes use right now (v1 refuses it).
        tracing::warn!(error = %e, "setting the limits of the parent cgroup");
    }
    if let Ok(layout) = Layout::detect() {
        let parent = parent_for_limits.clone();
        config.pids_probe = warren_engine::PidsProbe::from_fn(move || {
            cgroup::parent_pids_current(layout, &parent).ok().flatten()
        });
    }
    let cleanup_on_exit = settings.cleanup_on_exit;
    let engine = Engine::open(config, Arc::new(runtime))
        .await
        .context("opening the engine")?;
    let reaper = engine.spawn_reaper();

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find the port when listening on :0.
    println!("warren listening on http://{addr}");
    info!(
        %addr,
        data_dir = %data_dir.display(),
        max_committed_memory_mib = engine.config().max_committed_memory_mib,
        memory_budget_mib = engine.config().memory_budget_mib,
        pids_budget = engine.config().pids_budget,
        min_available_memory_mib = engine.config().min_available_memory_mib,
        min_free_disk_mib = engine.config().min_free_disk_mib,
        default_disk_mib = engine.config().default_resources.disk_mib,
        max_connections = engine.config().max_connections,
        max_streams = engine.config().max_streams,
        "warren serving"
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The connection limits (header timeout, connection and stream caps) are the engine
    // config's.
    let opts = warren_server::ServeOptions {
        auth,
        image_aliases: settings.image_aliases.clone(),
    };
    let server = tokio::spawn(warren_server::serve_opts(
        listener,
        engine.clone(),
        opts,
        async {
            let _ = stop_rx.await;
        },
    ));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let _ = stop_tx.send(());
    reaper.abort();
    if cleanup_on_exit {
        info!(signal = which, "shutting down: deleting every sandbox");
        // Deleting the sandboxes also ends the streams still attached to them, which lets
        // the graceful shutdown finish.
        engine.shutdown_deleting_all().await;
    } else {
        info!(
            signal = which,
            "shutting down; sandboxes keep running and the next start adopts them"
        );
        engine.shutdown(SHUTDOWN_GRACE).await;
    }
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e).context("http server"),
        Ok(Err(e)) => return Err(e).context("http server task"),
        Err(_) => info!("connections still open after 10 s; closing them"),
    }
    info!("stopped");
    Ok(())
}

/// Disk admission and quota sizes: the file systems of the data dir (the store) and of the
/// sandboxes' files (the btrfs image, if any) are watched; quota sizes follow the storage
/// file system's size.
fn disk_settings(
    config: &mut EngineConfig,
    settings: &crate::serve_args::Settings,
    runtime: &NativeRuntime,
) -> anyhow::Result<()> {
    use warren_engine::{disk_floor_mib, DiskProbe};
    let storage_root = runtime.storage_root();
    let paths = vec![config.data_dir.clone(), storage_root.clone()];
    let smallest = paths
        .iter()
        .filter_map(|p| warren_runtime::fs_space(p).ok())
        .map(|s| s.total_bytes)
        .min();
    config.disk_probe = DiskProbe::statvfs(paths);
    config.min_free_disk_mib = match settings.min_free_disk_mib {
        Some(m) => m,
        None => smallest.map_or(0, disk_floor_mib),
    };
    let quota = warren_runtime::Runtime::info(runtime).disk_quota;
    if quota {
        if let Ok(s) = warren_runtime::fs_space(&storage_root) {
            let total_mib = s.total_bytes >> 20;
            config.max_disk_mib = total_mib;
            config.default_resources.disk_mib =
                Some(warren_engine::DEFAULT_DISK_MIB.min(total_mib / 4));
        }
    }
    match settings.default_disk_mib {
        Some(0) => config.default_resources.disk_mib = None,
        Some(_) if !quota => tracing::warn!(
            "--default-disk-mib is ignored: this storage has no disk quotas (use --storage btrfs)"
        ),
        Some(m) if m > config.max_disk_mib => bail!(
            "--default-disk-mib {m} is more than the storage file system holds ({} MiB)",
            config.max_disk_mib
        ),
        Some(m) => config.default_resources.disk_mib = Some(m),
        None => {}
    }
    Ok(())
}

/// How long a stop waits for lifecycle operations in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Create the data dir (and missing parents) 0700, and tighten an existing one to 0700: it
/// holds the store, whose records include sandboxes' `env` values.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if std::fs::metadata(dir)?.permissions().mode() & 0o7777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Hold an exclusive lock on `<data>/warren.lock` for the daemon's lifetime: a second daemon
/// on the same data dir would otherwise "clean up" the first one's sandboxes.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join("warren.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // An older version made it 0644.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    // SAFETY: flock(2) on a descriptor we own; the lock lives as long as `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another warren daemon is using {} (lock {} is held)",
            data_dir.display(),
            path.display()
        );
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parent_names() {
        assert_eq!(cgroup_parent_for(Path::new("/var/lib/warren")), "warren");
        let a = cgroup_parent_for(Path::new("/tmp/a"));
        let b = cgroup_parent_for(Path::new("/tmp/b"));
        assert!(a.starts_with("warren-") && a.len() == 15, "{a}");
        assert_ne!(a, b);
        assert_eq!(a, cgroup_parent_for(Path::new("/tmp/a")));
    }
}
