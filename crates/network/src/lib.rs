//! The host network manager (see `docs/ARCHITECTURE.md`, "Network").
//!
//! - [`link`]: a sandbox's network namespace (made by the daemon, so the sandbox holds no
//!   capability over it) and its routed veth pair, over netlink.
//! - [`nft`]: Warren's own nftables table (anti-spoofing, host protection, always-denied
//!   destinations, masquerading, one chain per sandbox whose policy has rules).
//! - [`egress`]: an [`EgressPolicy`] compiled into the sets that chain checks, and what a
//!   sandbox's DNS lookups taught it ([`egress::Learned`]).
//! - [`dns`]: the DNS proxy every `nat` sandbox uses: it answers only names the sandbox's
//!   policy allows and adds the answers to its allowed set before replying.
//!
//! [`NetworkManager`] ties them together for a backend: `attach` before a sandbox's PID 1
//! starts (the helper joins the namespace it returns), `set_policy` at any time, `detach`
//! when the sandbox is gone, `adopt` after a daemon restart.

pub mod dns;
pub mod egress;
pub mod link;
pub mod nft;

use std::collections::HashMap;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use warren_runtime::{EgressPolicy, Ipv4Cidr, NetworkCaps};

use egress::Learned;
use nft::{Nft, TableSpec};

/// Errors of the network manager.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network setup: {0}")]
    Config(String),
    #[error("nftables: {0}")]
    Nft(String),
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("network namespace: {0}")]
    Netns(String),
    #[error("DNS proxy: {0}")]
    Dns(String),
}

/// Host-wide registry of the ranges daemons use (one lock file each, held while a daemon
/// runs), so two daemons never share addresses or a table.
pub const REGISTRY: &str = "/run/warren/net";

/// Configuration of the network manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Where sandbox addresses come from; the first usable address is the gateway and the
    /// DNS proxy. Prefix length /8 to /28 in steps of 4.
    pub range: Ipv4Cidr,
    /// Resolvers the DNS proxy forwards to; empty: the host's (`/etc/resolv.conf`).
    pub dns_upstreams: Vec<SocketAddr>,
    /// The `nft` binary.
    pub nft: String,
    /// Where the daemon keeps the manager's own state (whether it turned forwarding on).
    pub state_dir: PathBuf,
    /// The range registry ([`REGISTRY`]).
    pub registry: PathBuf,
}

impl NetConfig {
    pub fn new(state_dir: PathBuf) -> NetConfig {
        NetConfig {
            range: Ipv4Cidr::DEFAULT_NAT_RANGE,
            dns_upstreams: Vec::new(),
            nft: "nft".into(),
            state_dir,
            registry: PathBuf::from(REGISTRY),
        }
    }
}

/// One `nat` sandbox the manager knows.
struct Sandbox {
    policy: Arc<EgressPolicy>,
    learned: Learned,
    /// Whether its chain exists (policies that allow everything have none).
    chained: bool,
}

struct State {
    sandboxes: HashMap<Ipv4Addr, Sandbox>,
    /// Whether Warren turned `ip_forward` on (and so guards forwarding it did not ask for).
    guard: bool,
    /// Whether forwarding is known to be on.
    forwarding: bool,
}

struct Inner {
    cfg: NetConfig,
    table: String,
    gateway: Ipv4Addr,
    nft: Nft,
    host: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
    state: Mutex<State>,
    /// Source of policy generations (the `ct mark` of connections a policy admitted).
    generation: AtomicU32,
    dns: Mutex<Option<dns::DnsProxy>>,
    _claim: File,
}

/// The host network manager. Cheap to clone.
#[derive(Clone)]
pub struct NetworkManager {
    inner: Arc<Inner>,
}

const FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// In the range registry (host-wide, so whichever Warren daemon drains last turns
/// forwarding off again, not only the one that turned it on).
const FORWARD_FLAG: &str = "ip_forward-enabled-by-warren";

impl NetworkManager {
    /// Check `nft` works, claim the range, install (or adopt) the table and start the DNS
    /// proxy.
    pub async fn start(cfg: NetConfig) -> Result<NetworkManager, NetError> {
        nft::check_range(cfg.range).map_err(NetError::Config)?;
        let claim = claim_range(&cfg.registry, cfg.range)?;
        let nft = Nft {
            binary: cfg.nft.clone(),
        };
        let table = nft::table_name(cfg.range);
        let gateway = NetworkCaps::gateway(cfg.range);
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| NetError::Config(format!("{}: {e}", cfg.state_dir.display())))?;
        let guard = cfg.registry.join(FORWARD_FLAG).exists();
        let forwarding = read_forwarding()?;
        nft.apply(&nft::base_script(&TableSpec {
            table: table.clone(),
            range: cfg.range,
            gateway,
            guard,
        }))
        .await?;
        let (conn, host, _) = rtnetlink::new_connection()
            .map_err(|e| NetError::Netlink(format!("netlink socket: {e}")))?;
        let conn = tokio::spawn(conn);
        let upstreams = if cfg.dns_upstreams.is_empty() {
            let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            dns::upstreams_from_resolv_conf(&text)
        } else {
            cfg.dns_upstreams.clone()
        };
        if upstreams.is_empty() {
            tracing::warn!("no DNS upstream (none given, none in /etc/resolv.conf): sandboxes' lookups will fail");
        }
        let inner = Arc::new(Inner {
            table,
            gateway,
            nft,
            host,
            conn,
            state: Mutex::new(State {
                sandboxes: HashMap::new(),
                guard,
                forwarding,
            }),
            generation: AtomicU32::new(seed_generation()),
            dns: Mutex::new(None),
            _claim: claim,
            cfg,
        });
        let policies: Arc<dyn dns::Policies> = Arc::new(Weak(Arc::downgrade(&inner)));
        let proxy = dns::DnsProxy::start(
            dns::DnsConfig {
                bind: SocketAddr::from((gateway, 53)),
                upstreams,
                timeout: Duration::from_secs(2),
            },
            policies,
        )
        .await
        .map_err(|e| NetError::Dns(format!("binding {gateway}:53: {e}")))?;
        *lock(&inner.dns) = Some(proxy);
        tracing::info!(range = %inner.cfg.range, table = %inner.table, %gateway, "network ready");
        Ok(NetworkManager { inner })
    }

    /// What the backend reports.
    pub fn caps(&self) -> NetworkCaps {
        NetworkCaps {
            modes: vec![
                warren_runtime::NetworkMode::Nat,
                warren_runtime::NetworkMode::Isolated,
            ],
            egress: true,
            // The runtime says (the broker is reached through the agent, not this network).
            broker: false,
            range: Some(self.inner.cfg.range),
        }
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.inner.gateway
    }

    pub fn table(&self) -> &str {
        &self.inner.table
    }

    /// Wire the network namespace of the sandbox whose PID 1 is `pid` at `addr` and put
    /// `policy` in force. On error the caller destroys the sandbox (its pair dies with its
    /// namespace) and calls [`NetworkManager::detach`].
    pub async fn attach(
        &self,
        addr: Ipv4Addr,
        pid: i32,
        policy: &EgressPolicy,
    ) -> Result<(), NetError> {
        self.check_addr(addr)?;
        self.ensure_forwarding().await?;
        let t0 = Instant::now();
        let ns = link::Netns::of_pid(pid).await?;
        let t_ns = t0.elapsed();
        let host_if = nft::ifname(addr);
        link::wire(&self.inner.host, &ns, &host_if, addr, self.inner.gateway).await?;
        drop(ns);
        let t_wire = t0.elapsed();
        self.set_policy(addr, policy).await?;
        tracing::debug!(
            %addr,
            netns_us = t_ns.as_micros() as u64,
            wire_us = (t_wire - t_ns).as_micros() as u64,
            policy_us = (t0.elapsed() - t_wire).as_micros() as u64,
            "sandbox network attached"
        );
        Ok(())
    }

    /// Put `policy` in force for the sandbox at `addr`: new connections follow it at once,
    /// established ones it denies are cut at their next packet.
    pub async fn set_policy(&self, addr: Ipv4Addr, policy: &EgressPolicy) -> Result<(), NetError> {
        self.check_addr(addr)?;
        let now = Instant::now();
        let (script, chained) = {
            let mut st = self.state();
            let sb = st.sandboxes.entry(addr).or_insert_with(|| Sandbox {
                policy: Arc::new(EgressPolicy::allow_all()),
                learned: Learned::default(),
                chained: false,
            });
            sb.learned.expire(now);
            if *sb.policy != *policy {
                // Addresses re-read after a restart carry no name: a new policy cannot
                // vouch for them.
                sb.learned.policy_changed();
            }
            if policy.is_open() && sb.learned.is_empty() {
                let script = sb
                    .chained
                    .then(|| nft::remove_script(&self.inner.table, addr));
                (script, false)
            } else {
                let compiled = egress::compile(policy, &sb.learned, now);
                let gen = self.inner.next_generation();
                (
                    Some(nft::sandbox_script(&self.inner.table, addr, &compiled, gen)),
                    true,
                )
            }
        };
        if let Some(script) = script {
            self.inner.nft.apply(&script).await?;
        }
        let mut st = self.state();
        if let Some(sb) = st.sandboxes.get_mut(&addr) {
            sb.policy = Arc::new(policy.clone());
            sb.chained = chained;
        }
        Ok(())
    }

    /// Take over a sandbox an earlier daemon attached (its namespace and pair live on with
    /// its processes): re-read what its DNS lookups had admitted and put `policy` in force.
    pub async fn adopt(
        &self,
        addr: Ipv4Addr,
        policy: &EgressPolicy,
        listing: &nft::Listing,
    ) -> Result<(), NetError> {
        self.check_addr(addr)?;
        let now = Instant::now();
        {
            let mut st = self.state();
            let mut learned = Learned::default();
            if let Some(l) = listing.sandboxes.iter().find(|s| s.addr == Some(addr)) {
                for (ip, left) in &l.learned {
                    learned.restore(*ip, None, *left, now);
                }
            }
            let chained = listing.sandboxes.iter().any(|s| s.addr == Some(addr));
            st.sandboxes.insert(
                addr,
                Sandbox {
                    policy: Arc::new(policy.clone()),
                    learned,
                    chained,
                },
            );
        }
        if !link::exists(&nft::ifname(addr)) {
            tracing::warn!(%addr, "adopted sandbox has no network link any more");
        }
        self.set_policy(addr, policy).await
    }

    /// What the table holds now (read once at start-up to adopt sandboxes).
    pub async fn listing(&self) -> Result<nft::Listing, NetError> {
        Ok(self
            .inner
            .nft
            .list_table(&self.inner.table)
            .await?
            .map(|v| nft::parse_listing(&v))
            .unwrap_or_default())
    }

    /// Forget the sandbox at `addr` and remove its chain (its pair dies with its namespace).
    /// Idempotent.
    pub async fn detach(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        let chained = self
            .state()
            .sandboxes
            .remove(&addr)
            .map(|s| s.chained)
            .unwrap_or(false);
        if chained {
            self.inner
                .nft
                .remove_sandbox(&self.inner.table, addr)
                .await?;
        }
        Ok(())
    }

    /// Remove the chains of sandboxes in the table that are not in `keep` (after a
    /// restart). Returns how many it removed.
    pub async fn reconcile(&self, keep: &[Ipv4Addr], listing: &nft::Listing) -> usize {
        let mut removed = 0;
        for s in &listing.sandboxes {
            let Some(addr) = s.addr else { continue };
            if keep.contains(&addr) {
                continue;
            }
            match self.inner.nft.remove_sandbox(&self.inner.table, addr).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(%addr, error = %e, "removing a stale sandbox chain"),
            }
        }
        removed
    }

    /// `(rx, tx)` bytes of the sandbox at `addr` (zero if it has no link).
    pub fn counters(&self, addr: Ipv4Addr) -> (u64, u64) {
        link::counters(&nft::ifname(addr)).unwrap_or((0, 0))
    }

    /// The policy in force for `addr`, if the manager knows the sandbox.
    pub fn policy(&self, addr: Ipv4Addr) -> Option<Arc<EgressPolicy>> {
        self.state().sandboxes.get(&addr).map(|s| s.policy.clone())
    }

    /// Stop the DNS proxy. With `remove`, also delete the table and, if Warren turned
    /// forwarding on and no other Warren table is left, turn it off again (call it only once
    /// every sandbox is gone).
    pub async fn shutdown(&self, remove: bool) -> Result<(), NetError> {
        let proxy = lock(&self.inner.dns).take();
        if let Some(p) = proxy {
            p.shutdown().await;
        }
        if !remove {
            return Ok(());
        }
        self.inner.nft.delete_table(&self.inner.table).await?;
        // Our claim goes with our table (its lock ends with the process anyway).
        let _ = std::fs::remove_file(
            self.inner
                .cfg
                .registry
                .join(claim_name(self.inner.cfg.range)),
        );
        let flag = self.inner.cfg.registry.join(FORWARD_FLAG);
        if flag.exists() {
            let others = self
                .inner
                .nft
                .other_warren_tables(&self.inner.table)
                .await?;
            if others == 0 {
                std::fs::write(FORWARD, "0")
                    .map_err(|e| NetError::Config(format!("turning forwarding off: {e}")))?;
                tracing::info!("IPv4 forwarding turned off again (Warren had turned it on)");
                let _ = std::fs::remove_file(&flag);
            }
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    fn check_addr(&self, addr: Ipv4Addr) -> Result<(), NetError> {
        let r = self.inner.cfg.range;
        if !r.contains(addr) || addr == self.inner.gateway || addr == r.addr() {
            return Err(NetError::Config(format!(
                "{addr} is not a sandbox address of {r}"
            )));
        }
        Ok(())
    }

    /// Turn IPv4 forwarding on if it is off, once, and say so; then guard forwarding that
    /// involves no Warren interface (so the host does not become a router for anything else).
    async fn ensure_forwarding(&self) -> Result<(), NetError> {
        if self.state().forwarding {
            return Ok(());
        }
        if read_forwarding()? {
            self.state().forwarding = true;
            return Ok(());
        }
        std::fs::write(self.inner.cfg.registry.join(FORWARD_FLAG), b"1\n")
            .map_err(|e| NetError::Config(format!("recording the forwarding change: {e}")))?;
        self.inner
            .nft
            .apply(&nft::base_script(&TableSpec {
                table: self.inner.table.clone(),
                range: self.inner.cfg.range,
                gateway: self.inner.gateway,
                guard: true,
            }))
            .await?;
        std::fs::write(FORWARD, "1")
            .map_err(|e| NetError::Config(format!("turning IPv4 forwarding on: {e}")))?;
        tracing::warn!(
            "turned IPv4 forwarding on (net.ipv4.ip_forward = 1) for nat sandboxes; Warren's \
             table drops forwarding between other interfaces, and it is turned off again at \
             a draining shutdown"
        );
        let mut st = self.state();
        st.forwarding = true;
        st.guard = true;
        Ok(())
    }
}

impl Inner {
    /// A fresh policy generation (never 0, the mark of connections no policy admitted).
    fn next_generation(&self) -> u32 {
        loop {
            let g = self.generation.fetch_add(1, Ordering::Relaxed);
            if g != 0 {
                return g;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_forwarding() -> Result<bool, NetError> {
    let v = std::fs::read_to_string(FORWARD)
        .map_err(|e| NetError::Config(format!("reading {FORWARD}: {e}")))?;
    Ok(v.trim() == "1")
}

fn seed_generation() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1);
    (t as u32) << 8 | 1
}

/// The DNS proxy's view of the manager (weak: the proxy must not keep it alive).
struct Weak(std::sync::Weak<Inner>);

#[async_trait]
impl dns::Policies for Weak {
    fn policy(&self, source: Ipv4Addr) -> Option<Arc<EgressPolicy>> {
        let inner = self.0.upgrade()?;
        let st = lock(&inner.state);
        st.sandboxes.get(&source).map(|s| s.policy.clone())
    }

    async fn learned(
        &self,
        source: Ipv4Addr,
        name: &str,
        ips: &[(Ipv4Addr, Duration)],
    ) -> Result<(), String> {
        let inner = self.0.upgrade().ok_or("shutting down")?;
        let script = {
            let mut st = lock(&inner.state);
            let sb = st
                .sandboxes
                .get_mut(&source)
                .ok_or_else(|| format!("{source} is not a sandbox"))?;
            let now = Instant::now();
            // An address some now-denied name taught is in the sandbox's deny set: then
            // the whole chain is written again rather than one element added.
            let was_denied = ips.iter().any(|(ip, _)| {
                sb.learned
                    .names(*ip)
                    .any(|n| sb.policy.decide_name(n) == warren_runtime::EgressAction::Deny)
            });
            sb.learned.learn(name, ips, now);
            // Clamped like the learned entries themselves.
            let clamped: Vec<(Ipv4Addr, Duration)> = ips
                .iter()
                .map(|(ip, ttl)| (*ip, (*ttl).clamp(egress::MIN_TTL, egress::MAX_TTL)))
                .collect();
            if !sb.chained {
                None
            } else if was_denied {
                let compiled = egress::compile(&sb.policy, &sb.learned, now);
                let gen = inner.next_generation();
                Some(nft::sandbox_script(&inner.table, source, &compiled, gen))
            } else {
                nft::learn_script(&inner.table, source, &clamped)
            }
        };
        match script {
            Some(s) => inner.nft.apply(&s).await.map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Claim `range` in the host-wide registry: refuse if a live daemon holds an overlapping one.
fn claim_range(registry: &Path, range: Ipv4Cidr) -> Result<File, NetError> {
    let err = |e: std::io::Error| NetError::Config(format!("{}: {e}", registry.display()));
    std::fs::create_dir_all(registry).map_err(err)?;
    let dir_lock = File::create(registry.join(".lock")).map_err(err)?;
    dir_lock.lock().map_err(err)?;
    for entry in std::fs::read_dir(registry).map_err(err)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(other) = parse_claim(&name) else {
            continue;
        };
        let (a, b) = (range.range(), other.range());
        if a.0 > b.1 || b.0 > a.1 {
            continue;
        }
        let f = File::open(entry.path()).map_err(err)?;
        match f.try_lock() {
            Ok(()) => {
                // Nobody holds it: a daemon that is gone.
                let _ = std::fs::remove_file(entry.path());
            }
            Err(_) => {
                return Err(NetError::Config(format!(
                    "network range {range} overlaps {other}, which another running Warren \
                     daemon uses; give this one another range (--network-range)"
                )))
            }
        }
    }
    let path = registry.join(claim_name(range));
    let f = File::create(&path).map_err(err)?;
    f.try_lock()
        .map_err(|e| NetError::Config(format!("locking {}: {e}", path.display())))?;
    Ok(f)
}

fn claim_name(range: Ipv4Cidr) -> String {
    format!("{}_{}", range.addr(), range.prefix())
}

fn parse_claim(name: &str) -> Option<Ipv4Cidr> {
    let (a, l) = name.split_once('_')?;
    Ipv4Cidr::new(a.parse().ok()?, l.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_refuse_overlap_and_free_stale() {
        let dir = tempfile::tempdir().unwrap();
        let a: Ipv4Cidr = "10.201.0.0/16".parse().unwrap();
        let held = claim_range(dir.path(), a).unwrap();
        let inner: Ipv4Cidr = "10.201.3.0/24".parse().unwrap();
        let e = claim_range(dir.path(), inner).unwrap_err().to_string();
        assert!(e.contains("overlaps 10.201.0.0/16"), "{e}");
        let other: Ipv4Cidr = "10.202.0.0/16".parse().unwrap();
        let _b = claim_range(dir.path(), other).unwrap();
        drop(held);
        let _c = claim_range(dir.path(), inner).unwrap();
    }
}
