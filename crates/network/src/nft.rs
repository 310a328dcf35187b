//! Warren's own nftables table: what it holds, and the scripts that change it.
//!
//! One table per daemon (`inet warren_<range>`), never anything outside it. Base chains:
//!
//! - `prerouting` (filter, -150): strict reverse-path check for packets from our sandboxes
//!   (`fib saddr . iif oif missing drop`): a sandbox cannot send with another's address,
//!   which is what lets the DNS proxy tell sandboxes apart by source address.
//! - `input` (filter): from a sandbox to the host only the DNS proxy (udp/tcp 53 on the
//!   gateway) is open; everything else addressed to the host (any of its addresses, any
//!   service, the Warren API included) is rejected.
//! - `forward` (filter): from a sandbox, the always-denied destinations first (other
//!   sandboxes, loopback, link-local and metadata, multicast, reserved), IPv6 dropped, then
//!   the sandbox's own chain if its policy has one (`iifname vmap @policies`), else accept.
//!   Towards any Warren sandbox (`wrn*`) only replies pass. With `guard`, forwarding between
//!   interfaces that are not Warren's is dropped (set when Warren turned on `ip_forward`).
//! - `postrouting` (nat): sandbox traffic leaving through any other interface is
//!   masqueraded.
//!
//! A sandbox whose policy allows everything has no chain of its own (so a default sandbox
//! costs no nft transaction). Any other gets chain `s_<hex address>` and six sets, checked
//! in [`crate::egress::Compiled`]'s order; every accepted connection is marked with the
//! policy's generation (`ct mark`), so after an update an established connection is checked
//! once more and cut (TCP reset) if the new policy denies it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use warren_runtime::{EgressAction, Ipv4Cidr};

use crate::egress::Compiled;
use crate::NetError;

/// Prefix of every host-side interface of every Warren daemon (`wrn` + 8 hex digits of the
/// sandbox's address).
pub const IFNAME_PREFIX: &str = "wrn";

/// The host-side interface of the sandbox with address `addr`.
pub fn ifname(addr: Ipv4Addr) -> String {
    format!("{IFNAME_PREFIX}{:08x}", u32::from(addr))
}

/// The interface glob covering every sandbox of `range` (whose prefix length is a multiple
/// of 4, see [`check_range`]).
pub fn ifname_glob(range: Ipv4Cidr) -> String {
    let hex = format!("{:08x}", u32::from(range.addr()));
    format!(
        "{IFNAME_PREFIX}{}*",
        &hex[..usize::from(range.prefix() / 4)]
    )
}

/// The table of the daemon whose sandboxes use `range`.
pub fn table_name(range: Ipv4Cidr) -> String {
    format!("warren_{:08x}_{}", u32::from(range.addr()), range.prefix())
}

/// Ranges must name whole hex digits (so one interface glob covers exactly them) and leave
/// room for a gateway and sandboxes.
pub fn check_range(range: Ipv4Cidr) -> Result<(), String> {
    if !(8..=28).contains(&range.prefix()) || !range.prefix().is_multiple_of(4) {
        return Err(format!(
            "network range {range}: the prefix length must be one of /8, /12, /16, /20, /24, /28"
        ));
    }
    Ok(())
}

/// Per-sandbox chain name.
fn chain(addr: Ipv4Addr) -> String {
    format!("s_{:08x}", u32::from(addr))
}

/// Everything the base chains need.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub table: String,
    pub range: Ipv4Cidr,
    pub gateway: Ipv4Addr,
    /// Drop forwarding that involves no Warren interface (Warren turned forwarding on).
    pub guard: bool,
}

/// Destinations no sandbox may reach, whatever its policy (besides the host itself, which
/// the input chain guards, and other sandboxes, which `range` and the `wrn*` rule cover).
const ALWAYS_DENIED: &str = "0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3";

/// The script that creates the table if missing and (re)writes its base chains, keeping
/// per-sandbox chains, sets and the `policies` map (so a restarted daemon adopts them).
pub fn base_script(t: &TableSpec) -> String {
    let (name, glob, range, gw) = (&t.table, ifname_glob(t.range), t.range, t.gateway);
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {name}");
    for (chain, hook) in [
        (
            "prerouting",
            "type filter hook prerouting priority -150; policy accept;",
        ),
        (
            "input",
            "type filter hook input priority filter; policy accept;",
        ),
        (
            "forward",
            "type filter hook forward priority filter; policy accept;",
        ),
        (
            "postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
        ),
    ] {
        let _ = writeln!(s, "add chain inet {name} {chain} {{ {hook} }}");
        let _ = writeln!(s, "flush chain inet {name} {chain}");
    }
    for chain in ["from_sandbox", "to_host", "deny"] {
        let _ = writeln!(s, "add chain inet {name} {chain}");
        let _ = writeln!(s, "flush chain inet {name} {chain}");
    }
    let _ = writeln!(
        s,
        "add map inet {name} policies {{ type ifname : verdict; }}"
    );
    // Anti-spoofing.
    let _ = writeln!(
        s,
        "add rule inet {name} prerouting iifname \"{glob}\" fib saddr . iif oif missing counter drop"
    );
    // To the host.
    let _ = writeln!(
        s,
        "add rule inet {name} input iifname \"{glob}\" jump to_host"
    );
    let _ = writeln!(s, "add rule inet {name} to_host meta nfproto ipv6 drop");
    let _ = writeln!(
        s,
        "add rule inet {name} to_host ip daddr {gw} meta l4proto {{ tcp, udp }} th dport 53 accept"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} to_host ct state established,related accept"
    );
    let _ = writeln!(s, "add rule inet {name} to_host goto deny");
    // Through the host.
    let _ = writeln!(
        s,
        "add rule inet {name} forward iifname \"{glob}\" jump from_sandbox"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} forward oifname \"{IFNAME_PREFIX}*\" ct state established,related accept"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} forward oifname \"{IFNAME_PREFIX}*\" drop"
    );
    if t.guard {
        let _ = writeln!(
            s,
            "add rule inet {name} forward iifname != \"{IFNAME_PREFIX}*\" oifname != \"{IFNAME_PREFIX}*\" drop"
        );
    }
    let _ = writeln!(
        s,
        "add rule inet {name} from_sandbox meta nfproto ipv6 drop"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} from_sandbox ip daddr {{ {range}, {ALWAYS_DENIED} }} goto deny"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} from_sandbox oifname \"{IFNAME_PREFIX}*\" goto deny"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} from_sandbox iifname vmap @policies"
    );
    let _ = writeln!(s, "add rule inet {name} from_sandbox accept");
    let _ = writeln!(
        s,
        "add rule inet {name} deny meta l4proto tcp reject with tcp reset"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} deny reject with icmpx type admin-prohibited"
    );
    let _ = writeln!(
        s,
        "add rule inet {name} postrouting ip saddr {range} oifname != \"{IFNAME_PREFIX}*\" masquerade"
    );
    s
}

/// Element list of an address set (`{ a, b }`), or `None` when empty.
fn addrs(list: &[Ipv4Addr]) -> Option<String> {
    (!list.is_empty()).then(|| {
        let v: Vec<String> = list.iter().map(|a| a.to_string()).collect();
        format!("{{ {} }}", v.join(", "))
    })
}

fn timed(list: &[(Ipv4Addr, Duration)]) -> Option<String> {
    (!list.is_empty()).then(|| {
        let v: Vec<String> = list
            .iter()
            .map(|(a, d)| format!("{a} timeout {}s", d.as_secs().max(1)))
            .collect();
        format!("{{ {} }}", v.join(", "))
    })
}

fn intervals(list: &[(Ipv4Addr, Ipv4Addr)]) -> Option<String> {
    (!list.is_empty()).then(|| {
        let v: Vec<String> = list
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        format!("{{ {} }}", v.join(", "))
    })
}

/// The six sets of a sandbox: (suffix, flags, elements).
fn sets(c: &Compiled) -> [(&'static str, &'static str, Option<String>); 6] {
    [
        ("xd", "", addrs(&c.exact_deny)),
        ("xa", "", addrs(&c.exact_allow)),
        ("nd", "flags timeout;", timed(&c.names_deny)),
        ("na", "flags timeout;", timed(&c.names_allow)),
        ("cd", "flags interval;", intervals(&c.cidr_deny)),
        ("ca", "flags interval;", intervals(&c.cidr_allow)),
    ]
}

/// The script that gives the sandbox at `addr` (host interface `ifname(addr)`) the compiled
/// policy `c` under generation `gen` (non-zero): made if missing, replaced if present, in
/// one transaction.
pub fn sandbox_script(table: &str, addr: Ipv4Addr, c: &Compiled, gen: u32) -> String {
    let ch = chain(addr);
    let mut s = String::new();
    let _ = writeln!(s, "add chain inet {table} {ch}");
    let _ = writeln!(s, "flush chain inet {table} {ch}");
    for (suffix, flags, elems) in sets(c) {
        let set = format!("{ch}_{suffix}");
        let _ = writeln!(
            s,
            "add set inet {table} {set} {{ type ipv4_addr; {flags} }}"
        );
        let _ = writeln!(s, "flush set inet {table} {set}");
        if let Some(e) = elems {
            let _ = writeln!(s, "add element inet {table} {set} {e}");
        }
    }
    let mark = format!("0x{gen:08x}");
    let _ = writeln!(s, "add rule inet {table} {ch} ct mark {mark} accept");
    for (suffix, verdict) in [
        ("xd", "goto deny"),
        ("xa", "accept"),
        ("nd", "goto deny"),
        ("na", "accept"),
        ("cd", "goto deny"),
        ("ca", "accept"),
    ] {
        let rule = if verdict == "accept" {
            format!("ct mark set {mark} accept")
        } else {
            verdict.to_string()
        };
        let _ = writeln!(
            s,
            "add rule inet {table} {ch} ip daddr @{ch}_{suffix} {rule}"
        );
    }
    let last = match c.default {
        EgressAction::Allow => format!("ct mark set {mark} accept"),
        EgressAction::Deny => "goto deny".to_string(),
    };
    let _ = writeln!(s, "add rule inet {table} {ch} {last}");
    let _ = writeln!(
        s,
        "add element inet {table} policies {{ \"{}\" : goto {ch} }}",
        ifname(addr)
    );
    s
}

/// The script that removes a sandbox's chain and sets (it must exist; see
/// [`Nft::remove_sandbox`]).
pub fn remove_script(table: &str, addr: Ipv4Addr) -> String {
    let ch = chain(addr);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "delete element inet {table} policies {{ \"{}\" }}",
        ifname(addr)
    );
    let _ = writeln!(s, "delete chain inet {table} {ch}");
    for suffix in ["xd", "xa", "nd", "na", "cd", "ca"] {
        let _ = writeln!(s, "delete set inet {table} {ch}_{suffix}");
    }
    s
}

/// Add addresses a sandbox's DNS lookup allowed to its `na` set.
pub fn learn_script(table: &str, addr: Ipv4Addr, ips: &[(Ipv4Addr, Duration)]) -> Option<String> {
    timed(ips).map(|e| format!("add element inet {table} {}_na {e}\n", chain(addr)))
}

/// Runs `nft` scripts.
#[derive(Debug, Clone)]
pub struct Nft {
    pub binary: String,
}

impl Default for Nft {
    fn default() -> Nft {
        Nft {
            binary: "nft".into(),
        }
    }
}

impl Nft {
    /// Apply `script` as one transaction (all of it or nothing).
    pub async fn apply(&self, script: &str) -> Result<(), NetError> {
        self.run(&["-f", "-"], Some(script)).await.map(|_| ())
    }

    /// `nft -j list table inet NAME` as JSON, or `None` if the table does not exist.
    pub async fn list_table(&self, table: &str) -> Result<Option<serde_json::Value>, NetError> {
        match self
            .run(&["-j", "list", "table", "inet", table], None)
            .await
        {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| NetError::Nft(format!("parsing nft's listing: {e}"))),
            Err(NetError::Nft(m)) if m.contains("No such file or directory") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Remove a sandbox's chain and sets (nothing if it has none).
    pub async fn remove_sandbox(&self, table: &str, addr: Ipv4Addr) -> Result<(), NetError> {
        self.apply(&remove_script(table, addr)).await
    }

    /// Delete the whole table (nothing if it does not exist).
    pub async fn delete_table(&self, table: &str) -> Result<(), NetError> {
        match self.run(&["delete", "table", "inet", table], None).await {
            Err(NetError::Nft(m)) if m.contains("No such file or directory") => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// How many `inet warren_*` tables other than `ours` exist (other daemons').
    pub async fn other_warren_tables(&self, ours: &str) -> Result<usize, NetError> {
        let out = self.run(&["-j", "list", "tables"], None).await?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| NetError::Nft(format!("parsing nft's listing: {e}")))?;
        Ok(v.get("nftables")
            .and_then(|n| n.as_array())
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("table"))
            .filter(|t| {
                let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("");
                t.get("family").and_then(|f| f.as_str()) == Some("inet")
                    && name.starts_with("warren_")
                    && name != ours
            })
            .count())
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<Vec<u8>, NetError> {
        let mut child = tokio::process::Command::new(&self.binary)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| NetError::Nft(format!("running {}: {e}", self.binary)))?;
        if let (Some(mut w), Some(text)) = (child.stdin.take(), stdin) {
            w.write_all(text.as_bytes())
                .await
                .map_err(|e| NetError::Nft(format!("writing to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(NetError::Nft(format!(
                "nft {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

/// What a listing of our table holds: per-sandbox chains (by address) with their
/// generation, and the timed elements of their `na` sets.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Listing {
    pub sandboxes: Vec<ListedSandbox>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct ListedSandbox {
    pub addr: Option<Ipv4Addr>,
    pub generation: u32,
    /// `(address, remaining)` of its learned set.
    pub learned: Vec<(Ipv4Addr, Duration)>,
}

/// Read per-sandbox state out of `nft -j list table` output.
pub fn parse_listing(v: &serde_json::Value) -> Listing {
    use std::collections::BTreeMap;
    let mut by_chain: BTreeMap<String, ListedSandbox> = BTreeMap::new();
    let items = v
        .get("nftables")
        .and_then(|n| n.as_array())
        .cloned()
        .unwrap_or_default();
    let addr_of = |name: &str| -> Option<Ipv4Addr> {
        let hex = name.strip_prefix("s_")?.get(..8)?;
        u32::from_str_radix(hex, 16).ok().map(Ipv4Addr::from)
    };
    for item in &items {
        if let Some(c) = item.get("chain") {
            let name = c.get("name").and_then(|n| n.as_str()).unwrap_or("");
            if name.starts_with("s_") && name.len() == 10 {
                by_chain.entry(name.to_string()).or_default().addr = addr_of(name);
            }
        }
        if let Some(r) = item.get("rule") {
            let name = r.get("chain").and_then(|n| n.as_str()).unwrap_or("");
            if !(name.starts_with("s_") && name.len() == 10) {
                continue;
            }
            // `ct mark <gen> accept`: the first rule's match on ct mark.
            if let Some(gen) = first_ct_mark(r) {
                let e = by_chain.entry(name.to_string()).or_default();
                e.addr = addr_of(name);
                e.generation = e.generation.max(gen);
            }
        }
        if let Some(set) = item.get("set") {
            let name = set.get("name").and_then(|n| n.as_str()).unwrap_or("");
            let Some(ch) = name.strip_suffix("_na") else {
                continue;
            };
            let e = by_chain.entry(ch.to_string()).or_default();
            e.addr = addr_of(ch);
            for elem in set
                .get("elem")
                .and_then(|e| e.as_array())
                .into_iter()
                .flatten()
            {
                let Some(el) = elem.get("elem") else { continue };
                let ip = el
                    .get("val")
                    .and_then(|v| v.as_str())
                    .and_then(|s| s.parse().ok());
                let expires = el.get("expires").and_then(|v| v.as_u64()).unwrap_or(0);
                if let Some(ip) = ip {
                    e.learned.push((ip, Duration::from_secs(expires)));
                }
            }
        }
    }
    Listing {
        sandboxes: by_chain
            .into_values()
            .filter(|s| s.addr.is_some())
            .collect(),
    }
}

fn first_ct_mark(rule: &serde_json::Value) -> Option<u32> {
    for e in rule.get("expr")?.as_array()? {
        let m = e.get("match")?;
        if m.get("left")?.get("ct")?.get("key")?.as_str()? == "mark" {
            return m.get("right")?.as_u64().and_then(|v| u32::try_from(v).ok());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_globs() {
        let r: Ipv4Cidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(ifname(Ipv4Addr::new(10, 88, 1, 2)), "wrn0a580102");
        assert_eq!(ifname_glob(r), "wrn0a58*");
        assert_eq!(table_name(r), "warren_0a580000_16");
        assert!(ifname(Ipv4Addr::new(10, 88, 1, 2)).len() <= 15);
        assert!(check_range(r).is_ok());
        assert!(check_range("10.88.0.0/17".parse().unwrap()).is_err());
        assert!(check_range("0.0.0.0/4".parse().unwrap()).is_err());
        let r24: Ipv4Cidr = "10.201.3.0/24".parse().unwrap();
        assert_eq!(ifname_glob(r24), "wrn0ac903*");
    }
}
