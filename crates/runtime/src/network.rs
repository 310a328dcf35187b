//! A sandbox's network: its mode, its address and the egress policy in force.
//!
//! These are the parsed, validated forms the engine hands a backend (the HTTP API carries
//! targets as strings; [`Target::parse`] is where they are checked). The matching rules
//! live here too, so the engine, the backends and the DNS proxy agree on what a policy
//! means:
//!
//! - a **name** is decided by the most specific domain rule that covers it: an exact
//!   `example.org` before any wildcard, a longer `*.a.example.org` before a shorter
//!   `*.example.org` (a wildcard covers names strictly below it, not the apex); with no
//!   domain rule, by the policy's default;
//! - an **address** is decided, most specific first, by a rule for exactly that address
//!   (`/32`), then by the names it was resolved from through Warren's DNS (allowed if any of
//!   them is allowed, denied if all of them are denied), then by the longest CIDR rule that
//!   contains it, then by the default.
//!
//! At equal specificity `deny` wins over `allow`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a sandbox is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own address; outbound traffic masqueraded through the host, under the egress
    /// policy.
    #[default]
    Nat,
    /// Loopback only.
    Isolated,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Nat => "nat",
            NetworkMode::Isolated => "isolated",
        }
    }

    pub fn parse(s: &str) -> Option<NetworkMode> {
        match s {
            "nat" => Some(NetworkMode::Nat),
            "isolated" => Some(NetworkMode::Isolated),
            _ => None,
        }
    }
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule (or the default) does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EgressAction {
    #[default]
    Allow,
    Deny,
}

/// An IPv4 network: `addr/len` with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Cidr {
    /// `10.88.0.0/16`: the default range of `nat` sandbox addresses (65,533 sandboxes).
    pub const DEFAULT_NAT_RANGE: Ipv4Cidr = Ipv4Cidr {
        addr: Ipv4Addr::new(10, 88, 0, 0),
        len: 16,
    };

    /// `addr/len`; `None` if `len > 32` or `addr` has bits set past `len`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Ipv4Cidr> {
        (len <= 32 && u32::from(addr) & !Self::mask_of(len) == 0).then_some(Ipv4Cidr { addr, len })
    }

    fn mask_of(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        }
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Prefix length (0..=32).
    pub fn prefix(&self) -> u8 {
        self.len
    }

    /// First and last address, as integers.
    pub fn range(&self) -> (u32, u32) {
        let first = u32::from(self.addr);
        (first, first | !Self::mask_of(self.len))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.len) == u32::from(self.addr)
    }

    /// Number of addresses (2^(32-len)).
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Ipv4Cidr, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 address or CIDR"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length must be 0..=32"))?;
        Ipv4Cidr::new(addr, len).ok_or_else(|| {
            let net = Ipv4Addr::from(u32::from(addr) & Ipv4Cidr::mask_of(len));
            format!("{s:?} has host bits set (did you mean {net}/{len}?)")
        })
    }
}

/// Longest domain name (RFC 1035), without the trailing dot.
pub const MAX_DOMAIN_LEN: usize = 253;

/// Most rules one policy may hold.
pub const MAX_RULES: usize = 1000;

/// What a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// An IPv4 network (a bare address is a `/32`).
    Cidr(Ipv4Cidr),
    /// Exactly this name (lower case, no trailing dot).
    Domain(String),
    /// Every name strictly below this one (`*.example.org` holds `example.org`).
    Wildcard(String),
}

impl Target {
    /// Parse `10.0.0.0/8`, `192.0.2.1`, `example.org` or `*.example.org` (names are
    /// case-insensitive; a trailing dot is dropped).
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty target".into());
        }
        if s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
        {
            return s.parse().map(Target::Cidr);
        }
        if s.contains(':') {
            return Err(format!(
                "{s:?}: IPv6 targets are not supported (IPv6 is off inside sandboxes)"
            ));
        }
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        check_domain(&name).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(if wild {
            Target::Wildcard(name)
        } else {
            Target::Domain(name)
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Cidr(c) if c.len == 32 => write!(f, "{}", c.addr),
            Target::Cidr(c) => write!(f, "{c}"),
            Target::Domain(d) => f.write_str(d),
            Target::Wildcard(d) => write!(f, "*.{d}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let s = String::deserialize(d)?;
        Target::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A host name: dot-separated labels of letters, digits and `-` (and `_`, which real zones
/// use), each 1..=63 bytes, not starting or ending with `-`; at most 253 bytes.
fn check_domain(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_DOMAIN_LEN {
        return Err(format!("a domain name is 1..={MAX_DOMAIN_LEN} bytes"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label of a domain name is 1..=63 bytes".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("a domain name holds only letters, digits, '-', '_' and '.'".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of a domain name cannot start or end with '-'".into());
        }
    }
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("not a valid IPv4 address".into());
    }
    Ok(())
}

/// One rule of an egress policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EgressRule {
    pub action: EgressAction,
    pub target: Target,
}

/// Where a sandbox's outbound connections may go.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EgressPolicy {
    /// What happens to what no rule covers (`allow` unless said otherwise).
    #[serde(default)]
    pub default: EgressAction,
    #[serde(default)]
    pub rules: Vec<EgressRule>,
}

impl EgressPolicy {
    /// Allow everything (the default policy).
    pub fn allow_all() -> EgressPolicy {
        EgressPolicy::default()
    }

    /// Whether this policy allows everything: default allow and no rule at all.
    pub fn is_open(&self) -> bool {
        self.default == EgressAction::Allow && self.rules.is_empty()
    }

    /// The decision for a DNS name (`name` in any case, with or without a trailing dot).
    pub fn decide_name(&self, name: &str) -> EgressAction {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        // (specificity, is_deny): exact names rank above every wildcard; longer wildcards
        // above shorter ones; deny above allow.
        let mut best: Option<(usize, bool)> = None;
        for r in &self.rules {
            let rank = match &r.target {
                Target::Domain(d) if *d == name => usize::MAX,
                Target::Wildcard(w)
                    if name.len() > w.len()
                        && name.ends_with(w.as_str())
                        && name.as_bytes()[name.len() - w.len() - 1] == b'.' =>
                {
                    w.len()
                }
                _ => continue,
            };
            let cand = (rank, r.action == EgressAction::Deny);
            if best.is_none_or(|b| cand > b) {
                best = Some(cand);
            }
        }
        match best {
            Some((_, true)) => EgressAction::Deny,
            Some((_, false)) => EgressAction::Allow,
            None => self.default,
        }
    }

    /// The decision for an address no DNS name was resolved to (see the module docs for
    /// [`EgressPolicy::decide_resolved`]).
    pub fn decide_addr(&self, ip: Ipv4Addr) -> EgressAction {
        self.decide_resolved(ip, std::iter::empty::<&str>())
    }

    /// The decision for `ip`, which Warren's DNS gave the sandbox as an answer for `names`.
    pub fn decide_resolved<'a>(
        &self,
        ip: Ipv4Addr,
        names: impl IntoIterator<Item = &'a str>,
    ) -> EgressAction {
        // 1. a rule for exactly this address
        if let Some(a) = self.cidr_decision(ip, |len| len == 32) {
            return a;
        }
        // 2. the names it was resolved from
        let mut any = false;
        let mut allowed = false;
        for n in names {
            any = true;
            if self.decide_name(n) == EgressAction::Allow {
                allowed = true;
                break;
            }
        }
        if any {
            return if allowed {
                EgressAction::Allow
            } else {
                EgressAction::Deny
            };
        }
        // 3. the longest CIDR that holds it, 4. the default
        self.cidr_decision(ip, |len| len < 32)
            .unwrap_or(self.default)
    }

    fn cidr_decision(&self, ip: Ipv4Addr, keep: impl Fn(u8) -> bool) -> Option<EgressAction> {
        let mut best: Option<(u8, bool)> = None;
        for r in &self.rules {
            if let Target::Cidr(c) = &r.target {
                if keep(c.len) && c.contains(ip) {
                    let cand = (c.len, r.action == EgressAction::Deny);
                    if best.is_none_or(|b| cand > b) {
                        best = Some(cand);
                    }
                }
            }
        }
        best.map(|(_, deny)| {
            if deny {
                EgressAction::Deny
            } else {
                EgressAction::Allow
            }
        })
    }

    /// Check the policy's size.
    pub fn validate(&self) -> Result<(), String> {
        if self.rules.len() > MAX_RULES {
            return Err(format!(
                "an egress policy holds at most {MAX_RULES} rules, got {}",
                self.rules.len()
            ));
        }
        Ok(())
    }
}

/// A sandbox's network as the engine hands it to a backend.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub mode: NetworkMode,
    /// The sandbox's address (in `nat` mode), allocated by the engine from the range the
    /// backend reports ([`NetworkCaps::range`]); kept for the sandbox's whole life.
    pub address: Option<Ipv4Addr>,
    pub egress: EgressPolicy,
}

impl NetworkSpec {
    pub fn isolated() -> NetworkSpec {
        NetworkSpec {
            mode: NetworkMode::Isolated,
            address: None,
            egress: EgressPolicy::allow_all(),
        }
    }
}

/// What networking a backend offers ([`crate::RuntimeInfo::network`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkCaps {
    /// Modes it can give a sandbox (`isolated` always).
    pub modes: Vec<NetworkMode>,
    /// Whether egress policies (CIDR and domain rules, live updates) are enforced.
    pub egress: bool,
    /// Whether the credential broker is offered.
    pub broker: bool,
    /// The range `nat` sandboxes' addresses come from; its first usable address is the
    /// gateway (and the DNS proxy), the others go to sandboxes.
    pub range: Option<Ipv4Cidr>,
}

impl NetworkCaps {
    /// Loopback only.
    pub fn isolated_only() -> NetworkCaps {
        NetworkCaps {
            modes: vec![NetworkMode::Isolated],
            ..NetworkCaps::default()
        }
    }

    /// The gateway of `range`: its first address after the network address.
    pub fn gateway(range: Ipv4Cidr) -> Ipv4Addr {
        Ipv4Addr::from(range.range().0 + 1)
    }

    /// Sandbox address number `slot` (0-based) of `range`: every address after the gateway
    /// except the last (the broadcast address of the range).
    pub fn slot_address(range: Ipv4Cidr, slot: u32) -> Option<Ipv4Addr> {
        (u64::from(slot) < Self::slots(range)).then(|| Ipv4Addr::from(range.range().0 + 2 + slot))
    }

    /// How many sandboxes `range` has addresses for.
    pub fn slots(range: Ipv4Cidr) -> u64 {
        range.size().saturating_sub(3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(action: EgressAction, t: &str) -> EgressRule {
        EgressRule {
            action,
            target: Target::parse(t).unwrap(),
        }
    }
    use EgressAction::{Allow, Deny};

    #[test]
    fn targets_parse_and_print() {
        for (s, out) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.0.2.7", "192.0.2.7"),
            ("192.0.2.7/32", "192.0.2.7"),
            ("Example.ORG.", "example.org"),
            ("*.pypi.org", "*.pypi.org"),
            ("0.0.0.0/0", "0.0.0.0/0"),
        ] {
            assert_eq!(Target::parse(s).unwrap().to_string(), out, "{s}");
        }
        for bad in [
            "",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "300.1.1.1",
            "::1",
            "a..b",
            "-a.org",
            "*.",
            "*",
            "exa mple.org",
            "1.2.3",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = Target::parse("10.1.2.3/8").unwrap_err();
        assert!(e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn names_most_specific_first() {
        let p = EgressPolicy {
            default: Deny,
            rules: vec![
                rule(Allow, "*.example.org"),
                rule(Deny, "*.bad.example.org"),
                rule(Allow, "ok.bad.example.org"),
                rule(Allow, "pypi.org"),
                rule(Deny, "pypi.org"),
            ],
        };
        assert_eq!(p.decide_name("a.example.org"), Allow);
        assert_eq!(p.decide_name("A.Example.Org."), Allow);
        assert_eq!(
            p.decide_name("example.org"),
            Deny,
            "wildcard covers no apex"
        );
        assert_eq!(p.decide_name("x.bad.example.org"), Deny);
        assert_eq!(p.decide_name("ok.bad.example.org"), Allow);
        assert_eq!(p.decide_name("pypi.org"), Deny, "deny wins a tie");
        assert_eq!(p.decide_name("notexample.org"), Deny);
        assert_eq!(p.decide_name("other.net"), Deny);
        let open = EgressPolicy::allow_all();
        assert_eq!(open.decide_name("anything.test"), Allow);
    }

    #[test]
    fn addresses_most_specific_first() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let p = EgressPolicy {
            default: Allow,
            rules: vec![
                rule(Deny, "10.0.0.0/8"),
                rule(Allow, "10.1.0.0/16"),
                rule(Deny, "10.1.2.3"),
                rule(Allow, "git.corp.test"),
                rule(Deny, "*.evil.test"),
            ],
        };
        assert_eq!(p.decide_addr(ip("10.9.9.9")), Deny);
        assert_eq!(p.decide_addr(ip("10.1.9.9")), Allow);
        assert_eq!(p.decide_addr(ip("10.1.2.3")), Deny);
        assert_eq!(p.decide_addr(ip("192.0.2.1")), Allow);
        // A name outranks a CIDR, an exact address outranks a name.
        assert_eq!(p.decide_resolved(ip("10.9.9.9"), ["git.corp.test"]), Allow);
        assert_eq!(p.decide_resolved(ip("10.1.2.3"), ["git.corp.test"]), Deny);
        assert_eq!(p.decide_resolved(ip("192.0.2.1"), ["a.evil.test"]), Deny);
        assert_eq!(
            p.decide_resolved(ip("192.0.2.1"), ["a.evil.test", "git.corp.test"]),
            Allow,
            "an address shared with an allowed name is allowed"
        );
    }

    #[test]
    fn slots_of_a_range() {
        let r: Ipv4Cidr = "10.88.0.0/16".parse().unwrap();
        assert_eq!(NetworkCaps::gateway(r), ip4("10.88.0.1"));
        assert_eq!(NetworkCaps::slot_address(r, 0), Some(ip4("10.88.0.2")));
        assert_eq!(NetworkCaps::slots(r), 65533);
        assert_eq!(
            NetworkCaps::slot_address(r, 65532),
            Some(ip4("10.88.255.254"))
        );
        assert_eq!(NetworkCaps::slot_address(r, 65533), None);
    }

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
}
