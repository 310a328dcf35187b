//! An egress policy compiled into the address sets the firewall checks.
//!
//! [`EgressPolicy`] (in `warren-runtime`) defines what a policy means for a name and for an
//! address; [`EgressPolicy::decide_resolved`] is the reference. The firewall cannot run that
//! function per packet, so [`compile`] turns a policy, plus what the sandbox's DNS lookups
//! taught ([`Learned`]), into plain sets that the kernel checks in a fixed order:
//!
//! 1. `exact_deny` → reject, `exact_allow` → accept (the `/32` rules);
//! 2. `names_deny` → reject, `names_allow` → accept (addresses learned from DNS answers;
//!    allowed if at least one of their names is allowed now, denied if all are denied; the
//!    elements carry the time left before the knowledge expires);
//! 3. `cidr_deny` → reject, `cidr_allow` → accept (the shorter rules, flattened into disjoint
//!    ranges by longest-prefix match, deny winning a tie);
//! 4. the policy's default.
//!
//! For every address that order gives exactly
//! `policy.decide_resolved(ip, learned.names(ip))` ([`Compiled::decide`] evaluates it the
//! firewall's way; the tests check the two against each other on random policies).
//!
//! Only allowed names are ever learned (the DNS proxy answers a denied name with NXDOMAIN
//! without asking anyone), so `names_deny` holds addresses whose names a later policy
//! update denied.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use warren_runtime::{EgressAction, EgressPolicy, Target};

/// The shortest time a learned address is kept, whatever the answer's TTL (answers with a
/// TTL of 0 still have to be usable for the connection that asked for them).
pub const MIN_TTL: Duration = Duration::from_secs(30);

/// The longest time a learned address is kept; the DNS proxy caps the TTLs it hands out to
/// this, so no client caches an answer longer than the firewall admits it.
pub const MAX_TTL: Duration = Duration::from_secs(3600);

/// What one sandbox's DNS lookups taught: for each IPv4 address, the names it was an answer
/// for, each with the moment that stops counting.
///
/// Names are kept normalized (lower case, no trailing dot). An address may also hold an
/// *unnamed* entry, rebuilt after a daemon restart from what the kernel still had (see
/// [`Learned::restore`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    by_addr: BTreeMap<Ipv4Addr, Entry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Entry {
    /// Name → when it stops counting for this address.
    names: BTreeMap<String, Instant>,
    /// Restored without a name: counts as "resolved from a name allowed before the
    /// restart" until then.
    unnamed: Option<Instant>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.names.is_empty() && self.unnamed.is_none()
    }
}

/// `name` the way a policy's rules spell names: lower case, no trailing dot.
fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Keep the later of an existing expiry and `until`.
fn extend(slot: &mut Option<Instant>, until: Instant) {
    if slot.is_none_or(|t| t < until) {
        *slot = Some(until);
    }
}

impl Learned {
    pub fn new() -> Learned {
        Learned::default()
    }

    /// Record that `name` resolved to `ips`, each with its TTL (clamped to
    /// [`MIN_TTL`]..=[`MAX_TTL`]). A later answer extends an entry's expiry, never shortens
    /// it.
    pub fn learn(&mut self, name: &str, ips: &[(Ipv4Addr, Duration)], now: Instant) {
        let name = normalize(name);
        for &(ip, ttl) in ips {
            let until = now + ttl.clamp(MIN_TTL, MAX_TTL);
            self.add(ip, Some(&name), until);
        }
    }

    fn add(&mut self, ip: Ipv4Addr, name: Option<&str>, until: Instant) {
        let entry = self.by_addr.entry(ip).or_default();
        match name {
            Some(name) => match entry.names.get_mut(name) {
                Some(t) => *t = (*t).max(until),
                None => {
                    entry.names.insert(name.to_owned(), until);
                }
            },
            None => extend(&mut entry.unnamed, until),
        }
    }

    /// Rebuild an entry from what the kernel still holds after a daemon restart: the
    /// address, the time its set element has left and, if the firewall kept it, the name.
    ///
    /// `remaining` is capped to [`MAX_TTL`] but not raised to [`MIN_TTL`] (the entry was
    /// already admitted for its full time once); a zero `remaining` restores nothing.
    ///
    /// **Without a name** the address is kept as an *unnamed* entry meaning "resolved from a
    /// name that the policy in force at the restart allowed": it counts as allowed by name
    /// (it lands in `names_allow`; an exact `/32` rule still overrides it) until it expires.
    /// That is only sound while that policy stays in force: since the name is unknown, a
    /// changed policy cannot tell whether it still allows it, so whoever applies a
    /// different policy must call [`Learned::policy_changed`], which drops every unnamed
    /// entry (the sandbox then has to resolve the name again, at worst after its cached
    /// answer expires, at most [`MAX_TTL`] later). Erring that way can only deny a
    /// connection the new policy would allow, never allow one it denies.
    pub fn restore(&mut self, ip: Ipv4Addr, name: Option<&str>, remaining: Duration, now: Instant) {
        if remaining.is_zero() {
            return;
        }
        let until = now + remaining.min(MAX_TTL);
        match name {
            Some(name) => self.add(ip, Some(&normalize(name)), until),
            None => self.add(ip, None, until),
        }
    }

    /// Forget what the policy being replaced vouched for without saying why: every unnamed
    /// entry [`Learned::restore`] made. Call it whenever a different policy takes effect.
    /// Returns how many addresses lost such an entry.
    pub fn policy_changed(&mut self) -> usize {
        let mut dropped = 0;
        for entry in self.by_addr.values_mut() {
            if entry.unnamed.take().is_some() {
                dropped += 1;
            }
        }
        self.by_addr.retain(|_, e| !e.is_empty());
        dropped
    }

    /// Drop every name (and unnamed entry) whose time is up at `now`, and addresses left
    /// with none.
    pub fn expire(&mut self, now: Instant) {
        self.by_addr.retain(|_, e| {
            e.names.retain(|_, until| *until > now);
            if e.unnamed.is_some_and(|until| until <= now) {
                e.unnamed = None;
            }
            !e.is_empty()
        });
    }

    /// The names `ip` was an answer for (sorted; including any past their time until
    /// [`Learned::expire`] drops them). An unnamed entry yields no name: see
    /// [`Learned::is_unnamed`].
    pub fn names(&self, ip: Ipv4Addr) -> impl Iterator<Item = &str> + '_ {
        self.by_addr
            .get(&ip)
            .into_iter()
            .flat_map(|e| e.names.keys().map(String::as_str))
    }

    /// Whether `ip` holds an unnamed entry (see [`Learned::restore`]).
    pub fn is_unnamed(&self, ip: Ipv4Addr) -> bool {
        self.by_addr.get(&ip).is_some_and(|e| e.unnamed.is_some())
    }

    /// Every address with an entry, in ascending order.
    pub fn addrs(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.by_addr.keys().copied()
    }

    /// How many addresses have an entry.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    pub fn clear(&mut self) {
        self.by_addr.clear();
    }
}

/// A policy and what DNS taught, as the sets the firewall checks (see the module docs for
/// the order). Every list is sorted by address; the ranges are inclusive, disjoint and
/// merged (no two ranges of the same list touch or overlap), and no allow range overlaps a
/// deny range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compiled {
    pub default: EgressAction,
    /// Addresses with an allowing `/32` rule and no denying one.
    pub exact_allow: Vec<Ipv4Addr>,
    /// Addresses with a denying `/32` rule.
    pub exact_deny: Vec<Ipv4Addr>,
    /// Learned addresses with at least one name the policy allows, with the time the
    /// longest-lived such name has left.
    ///
    /// The timeouts make the kernel forget an address when [`Learned::expire`] would, with
    /// one approximation: an address that also has denied names, outliving its allowed
    /// ones, falls through to the CIDR sets (not to `names_deny`) from the moment its
    /// allowed names expire until the next compilation.
    pub names_allow: Vec<(Ipv4Addr, Duration)>,
    /// Learned addresses whose names the policy all denies, with the time the longest-lived
    /// of them has left.
    pub names_deny: Vec<(Ipv4Addr, Duration)>,
    /// Ranges (first, last) whose longest matching CIDR rule (prefix < 32) allows.
    pub cidr_allow: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Ranges (first, last) whose longest matching CIDR rule (prefix < 32) denies.
    pub cidr_deny: Vec<(Ipv4Addr, Ipv4Addr)>,
}

impl Compiled {
    /// The decision for `ip`, taken the way the firewall takes it.
    pub fn decide(&self, ip: Ipv4Addr) -> EgressAction {
        use EgressAction::{Allow, Deny};
        let in_addrs = |list: &[Ipv4Addr]| list.binary_search(&ip).is_ok();
        let in_names =
            |list: &[(Ipv4Addr, Duration)]| list.binary_search_by_key(&ip, |e| e.0).is_ok();
        let in_ranges = |list: &[(Ipv4Addr, Ipv4Addr)]| {
            let i = list.partition_point(|r| r.0 <= ip);
            i > 0 && list[i - 1].1 >= ip
        };
        if in_addrs(&self.exact_deny) {
            Deny
        } else if in_addrs(&self.exact_allow) {
            Allow
        } else if in_names(&self.names_deny) {
            Deny
        } else if in_names(&self.names_allow) {
            Allow
        } else if in_ranges(&self.cidr_deny) {
            Deny
        } else if in_ranges(&self.cidr_allow) {
            Allow
        } else {
            self.default
        }
    }
}

/// Compile `policy` and what `learned` holds at `now` (names past their time are left out,
/// whether or not [`Learned::expire`] ran) into the firewall's sets.
///
/// `O(r log r + d·r + n)` for `r` rules, `n` learned names and `d` distinct ones (each is
/// matched against the rules once); no work depends on the size of an address range.
pub fn compile(policy: &EgressPolicy, learned: &Learned, now: Instant) -> Compiled {
    // The CIDR rules; a target given twice with both actions denies.
    let mut exact: BTreeMap<Ipv4Addr, bool> = BTreeMap::new();
    let mut cidrs: BTreeMap<(u32, u8), (u32, bool)> = BTreeMap::new();
    for rule in &policy.rules {
        if let Target::Cidr(c) = &rule.target {
            let deny = rule.action == EgressAction::Deny;
            if c.prefix() == 32 {
                *exact.entry(c.addr()).or_default() |= deny;
            } else {
                let (first, last) = c.range();
                // Keyed by (first, prefix): a network sorts before the ones inside it.
                cidrs.entry((first, c.prefix())).or_insert((last, false)).1 |= deny;
            }
        }
    }
    let (exact_deny, exact_allow): (Vec<_>, Vec<_>) = exact.into_iter().partition(|e| e.1);

    let mut decided: HashMap<&str, EgressAction> = HashMap::new();
    let mut names_allow = Vec::new();
    let mut names_deny = Vec::new();
    let left = |until: Instant| Some(until.saturating_duration_since(now)).filter(|d| !d.is_zero());
    for (&ip, entry) in &learned.by_addr {
        let mut allow = entry.unnamed.and_then(left);
        let mut deny = None;
        for (name, &until) in &entry.names {
            let Some(l) = left(until) else { continue };
            let action = *decided
                .entry(name.as_str())
                .or_insert_with(|| policy.decide_name(name));
            let slot = match action {
                EgressAction::Allow => &mut allow,
                EgressAction::Deny => &mut deny,
            };
            *slot = (*slot).max(Some(l));
        }
        if let Some(l) = allow {
            names_allow.push((ip, l));
        } else if let Some(l) = deny {
            names_deny.push((ip, l));
        }
    }

    let mut cidr_allow = Vec::new();
    let mut cidr_deny = Vec::new();
    let ranges = flatten(cidrs.into_iter().map(|((first, _), (last, deny))| {
        let action = if deny {
            EgressAction::Deny
        } else {
            EgressAction::Allow
        };
        (first, last, action)
    }));
    for (first, last, action) in ranges {
        let range = (Ipv4Addr::from(first), Ipv4Addr::from(last));
        match action {
            EgressAction::Allow => cidr_allow.push(range),
            EgressAction::Deny => cidr_deny.push(range),
        }
    }

    Compiled {
        default: policy.default,
        exact_allow: exact_allow.into_iter().map(|e| e.0).collect(),
        exact_deny: exact_deny.into_iter().map(|e| e.0).collect(),
        names_allow,
        names_deny,
        cidr_allow,
        cidr_deny,
    }
}

/// Flatten CIDR networks `(first, last, action)`, given sorted by `first` and, for equal
/// `first`, largest network first (at most one action per network), into disjoint ranges
/// each carrying the action of the smallest network holding it. Addresses no network holds
/// are left out; touching ranges of the same action are merged. The result is sorted.
///
/// Networks never partially overlap (two are either nested or disjoint), so a sweep with a
/// stack of the networks open at the cursor does it in one pass.
fn flatten(
    nets: impl IntoIterator<Item = (u32, u32, EgressAction)>,
) -> Vec<(u32, u32, EgressAction)> {
    fn emit(out: &mut Vec<(u32, u32, EgressAction)>, from: u64, to: u64, action: EgressAction) {
        // `from` can pass `to` by one when a network ends where an inner one did; both
        // fit in a u32 otherwise.
        let (Ok(from), Ok(to)) = (u32::try_from(from), u32::try_from(to)) else {
            return;
        };
        if from > to {
            return;
        }
        match out.last_mut() {
            Some(last) if last.2 == action && u64::from(last.1) + 1 == u64::from(from) => {
                last.1 = to;
            }
            _ => out.push((from, to, action)),
        }
    }

    let mut out = Vec::new();
    // The first address not emitted yet, and the networks holding it, innermost last.
    let mut cursor: u64 = 0;
    let mut open: Vec<(u64, EgressAction)> = Vec::new();
    for (first, last, action) in nets {
        let (first, last) = (u64::from(first), u64::from(last));
        // Close the networks that end before this one starts.
        while let Some(&(end, a)) = open.last() {
            if end >= first {
                break;
            }
            emit(&mut out, cursor, end, a);
            cursor = end + 1;
            open.pop();
        }
        // The part of the enclosing network before this one.
        if let Some(&(_, a)) = open.last() {
            if cursor < first {
                emit(&mut out, cursor, first - 1, a);
            }
        }
        cursor = first;
        open.push((last, action));
    }
    while let Some((end, a)) = open.pop() {
        emit(&mut out, cursor, end, a);
        cursor = end + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_runtime::{EgressRule, Ipv4Cidr};
    use EgressAction::{Allow, Deny};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn rule(action: EgressAction, t: &str) -> EgressRule {
        EgressRule {
            action,
            target: Target::parse(t).unwrap(),
        }
    }

    fn policy(default: EgressAction, rules: &[(EgressAction, &str)]) -> EgressPolicy {
        EgressPolicy {
            default,
            rules: rules.iter().map(|&(a, t)| rule(a, t)).collect(),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn learn_normalizes_clamps_and_extends() {
        let t0 = Instant::now();
        let mut l = Learned::new();
        assert!(l.is_empty());
        l.learn(
            "WWW.Example.ORG.",
            &[(ip("192.0.2.1"), secs(0)), (ip("192.0.2.2"), secs(86400))],
            t0,
        );
        assert_eq!(l.len(), 2);
        assert_eq!(
            l.names(ip("192.0.2.1")).collect::<Vec<_>>(),
            ["www.example.org"]
        );
        assert_eq!(l.names(ip("192.0.2.9")).count(), 0);
        let c = compile(&EgressPolicy::allow_all(), &l, t0);
        assert_eq!(
            c.names_allow,
            [(ip("192.0.2.1"), MIN_TTL), (ip("192.0.2.2"), MAX_TTL)]
        );

        // A shorter answer later does not shorten; a longer one extends.
        let t1 = t0 + secs(10);
        l.learn("www.example.org", &[(ip("192.0.2.2"), secs(60))], t1);
        l.learn("www.example.org", &[(ip("192.0.2.1"), secs(300))], t1);
        let c = compile(&EgressPolicy::allow_all(), &l, t1);
        assert_eq!(
            c.names_allow,
            [
                (ip("192.0.2.1"), secs(300)),
                (ip("192.0.2.2"), MAX_TTL - secs(10))
            ]
        );

        // A second name for the same address.
        l.learn("cdn.example.net", &[(ip("192.0.2.1"), secs(100))], t1);
        assert_eq!(
            l.names(ip("192.0.2.1")).collect::<Vec<_>>(),
            ["cdn.example.net", "www.example.org"]
        );

        // Expiry drops names one by one, then the address.
        l.expire(t1 + secs(200));
        assert_eq!(
            l.names(ip("192.0.2.1")).collect::<Vec<_>>(),
            ["www.example.org"]
        );
        l.expire(t1 + secs(300));
        assert_eq!(l.len(), 1);
        assert_eq!(l.addrs().collect::<Vec<_>>(), [ip("192.0.2.2")]);
        l.clear();
        assert!(l.is_empty());
    }

    #[test]
    fn compile_leaves_out_what_has_expired() {
        let t0 = Instant::now();
        let mut l = Learned::new();
        l.learn("a.test", &[(ip("192.0.2.1"), secs(30))], t0);
        l.learn("b.test", &[(ip("192.0.2.1"), secs(60))], t0);
        let p = policy(Allow, &[(Deny, "b.test")]);
        assert_eq!(
            compile(&p, &l, t0).names_allow,
            [(ip("192.0.2.1"), secs(30))]
        );
        // a.test's time is up: only the denied name is left.
        let c = compile(&p, &l, t0 + secs(30));
        assert!(c.names_allow.is_empty());
        assert_eq!(c.names_deny, [(ip("192.0.2.1"), secs(30))]);
        let c = compile(&p, &l, t0 + secs(60));
        assert!(c.names_allow.is_empty() && c.names_deny.is_empty());
        assert_eq!(c.decide(ip("192.0.2.1")), Allow);
    }

    #[test]
    fn restored_entries() {
        let t0 = Instant::now();
        let mut l = Learned::new();
        let p = policy(Deny, &[(Allow, "*.ok.test"), (Deny, "192.0.2.3")]);
        l.restore(ip("192.0.2.1"), None, secs(10), t0);
        l.restore(ip("192.0.2.2"), Some("A.ok.test."), secs(5), t0);
        l.restore(ip("192.0.2.3"), None, secs(100_000), t0);
        l.restore(ip("192.0.2.4"), None, Duration::ZERO, t0);
        assert_eq!(l.len(), 3);
        assert!(l.is_unnamed(ip("192.0.2.1")));
        assert_eq!(l.names(ip("192.0.2.1")).count(), 0);
        assert_eq!(l.names(ip("192.0.2.2")).collect::<Vec<_>>(), ["a.ok.test"]);
        let c = compile(&p, &l, t0);
        // Not raised to MIN_TTL, capped to MAX_TTL.
        assert_eq!(
            c.names_allow,
            [
                (ip("192.0.2.1"), secs(10)),
                (ip("192.0.2.2"), secs(5)),
                (ip("192.0.2.3"), MAX_TTL)
            ]
        );
        assert_eq!(c.decide(ip("192.0.2.1")), Allow);
        assert_eq!(c.decide(ip("192.0.2.3")), Deny, "a /32 rule overrides");
        assert_eq!(c.decide(ip("192.0.2.4")), Deny);

        // A name learned later joins the unnamed entry; a policy change drops the latter.
        l.learn("x.ok.test", &[(ip("192.0.2.3"), secs(60))], t0);
        assert_eq!(l.policy_changed(), 2);
        assert!(!l.is_unnamed(ip("192.0.2.3")));
        assert_eq!(
            l.addrs().collect::<Vec<_>>(),
            [ip("192.0.2.2"), ip("192.0.2.3")]
        );
        assert_eq!(l.policy_changed(), 0);

        l.restore(ip("192.0.2.1"), None, secs(10), t0);
        l.expire(t0 + secs(10));
        assert!(!l.is_unnamed(ip("192.0.2.1")));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn compile_by_hand() {
        let t0 = Instant::now();
        let p = policy(
            Allow,
            &[
                (Deny, "10.0.0.0/8"),
                (Allow, "10.1.0.0/16"),
                (Deny, "10.1.2.3"),
                (Allow, "10.1.2.3"),
                (Allow, "10.9.9.9"),
                (Allow, "git.corp.test"),
                (Deny, "*.evil.test"),
                // Adjacent allowed networks merge; a tie on one network denies.
                (Allow, "192.168.0.0/24"),
                (Allow, "192.168.1.0/24"),
                (Allow, "172.16.0.0/12"),
                (Deny, "172.16.0.0/12"),
            ],
        );
        let mut l = Learned::new();
        l.learn("git.corp.test", &[(ip("10.7.7.7"), secs(60))], t0);
        l.learn("x.evil.test", &[(ip("8.8.4.4"), secs(60))], t0);
        let c = compile(&p, &l, t0);
        assert_eq!(
            c,
            Compiled {
                default: Allow,
                exact_allow: vec![ip("10.9.9.9")],
                exact_deny: vec![ip("10.1.2.3")],
                names_allow: vec![(ip("10.7.7.7"), secs(60))],
                names_deny: vec![(ip("8.8.4.4"), secs(60))],
                cidr_allow: vec![
                    (ip("10.1.0.0"), ip("10.1.255.255")),
                    (ip("192.168.0.0"), ip("192.168.1.255")),
                ],
                cidr_deny: vec![
                    (ip("10.0.0.0"), ip("10.0.255.255")),
                    (ip("10.2.0.0"), ip("10.255.255.255")),
                    (ip("172.16.0.0"), ip("172.31.255.255")),
                ],
            }
        );
        for (a, want) in [
            ("10.9.9.9", Allow),
            ("10.9.9.8", Deny),
            ("10.1.2.3", Deny),
            ("10.1.2.4", Allow),
            ("10.7.7.7", Allow),
            ("8.8.4.4", Deny),
            ("8.8.8.8", Allow),
            ("172.20.0.1", Deny),
            ("192.168.1.7", Allow),
        ] {
            assert_eq!(c.decide(ip(a)), want, "{a}");
        }
    }

    #[test]
    fn flatten_edges_of_the_address_space() {
        let t0 = Instant::now();
        let l = Learned::new();
        let p = policy(
            Deny,
            &[
                (Allow, "0.0.0.0/0"),
                (Deny, "0.0.0.0/8"),
                (Deny, "255.255.255.0/24"),
                (Allow, "255.255.255.128/25"),
                (Allow, "255.255.255.255"),
            ],
        );
        let c = compile(&p, &l, t0);
        assert_eq!(
            c.cidr_allow,
            [
                (ip("1.0.0.0"), ip("255.255.254.255")),
                (ip("255.255.255.128"), ip("255.255.255.255")),
            ]
        );
        assert_eq!(
            c.cidr_deny,
            [
                (ip("0.0.0.0"), ip("0.255.255.255")),
                (ip("255.255.255.0"), ip("255.255.255.127")),
            ]
        );
        assert_eq!(c.exact_allow, [Ipv4Addr::BROADCAST]);
        assert_eq!(c.decide(Ipv4Addr::UNSPECIFIED), Deny);
        assert_eq!(c.decide(Ipv4Addr::BROADCAST), Allow);

        // No rule at all: empty sets, the default decides.
        let c = compile(&policy(Deny, &[]), &l, t0);
        assert_eq!(
            c,
            Compiled {
                default: Deny,
                ..Compiled::default()
            }
        );
        assert_eq!(c.decide(ip("1.2.3.4")), Deny);

        // A network with networks nested at its very start and end.
        let p = policy(
            Allow,
            &[
                (Deny, "10.0.0.0/8"),
                (Allow, "10.0.0.0/9"),
                (Deny, "10.0.0.0/10"),
                (Allow, "10.255.255.0/24"),
            ],
        );
        let c = compile(&p, &l, t0);
        assert_eq!(
            c.cidr_allow,
            [
                (ip("10.64.0.0"), ip("10.127.255.255")),
                (ip("10.255.255.0"), ip("10.255.255.255")),
            ]
        );
        assert_eq!(
            c.cidr_deny,
            [
                (ip("10.0.0.0"), ip("10.63.255.255")),
                (ip("10.128.0.0"), ip("10.255.254.255")),
            ]
        );
    }

    /// xorshift64*: enough randomness for a property test, reproducible from its seed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len() as u64) as usize]
        }
    }

    const NAMES: &[&str] = &[
        "a.test",
        "b.test",
        "x.a.test",
        "y.x.a.test",
        "test",
        "c.example",
        "d.c.example",
        "other.org",
    ];

    /// Addresses that random rules and lookups cluster around, so they overlap a lot.
    const ANCHORS: &[u32] = &[
        0x0000_0000,
        0x0a00_0000,
        0x0a01_0000,
        0x0a01_0203,
        0xc0a8_0100,
        0xc0a8_01ff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ff00,
        0xffff_ffff,
    ];

    fn random_addr(rng: &mut Rng) -> u32 {
        if rng.chance(20) {
            rng.next() as u32
        } else {
            // An anchor with some of its low bits changed.
            let bits = rng.below(33) as u32;
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX >> (32 - bits)
            };
            *rng.pick(ANCHORS) ^ (rng.next() as u32 & mask)
        }
    }

    fn random_policy(rng: &mut Rng, max_rules: u64) -> EgressPolicy {
        let mut rules = Vec::new();
        for _ in 0..rng.below(max_rules + 1) {
            let action = if rng.chance(50) { Allow } else { Deny };
            let target = if rng.chance(75) {
                let len = match rng.below(4) {
                    0 => *rng.pick(&[0u8, 1, 31, 32]),
                    1 => 32,
                    _ => rng.below(33) as u8,
                };
                let mask = if len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(len))
                };
                let addr = Ipv4Addr::from(random_addr(rng) & mask);
                Target::Cidr(Ipv4Cidr::new(addr, len).unwrap())
            } else if rng.chance(50) {
                Target::Domain(rng.pick(NAMES).to_string())
            } else {
                Target::Wildcard(rng.pick(NAMES).to_string())
            };
            rules.push(EgressRule { action, target });
        }
        EgressPolicy {
            default: if rng.chance(50) { Allow } else { Deny },
            rules,
        }
    }

    /// The reference decision: `decide_resolved`, with an unnamed entry counting as a name
    /// the policy allows (which only a `/32` rule outranks).
    fn reference(policy: &EgressPolicy, learned: &Learned, ip: Ipv4Addr) -> EgressAction {
        let exact: Vec<_> = policy
            .rules
            .iter()
            .filter(|r| matches!(&r.target, Target::Cidr(c) if c.prefix() == 32 && c.addr() == ip))
            .map(|r| r.action)
            .collect();
        if exact.contains(&Deny) {
            Deny
        } else if !exact.is_empty() || learned.is_unnamed(ip) {
            Allow
        } else {
            policy.decide_resolved(ip, learned.names(ip))
        }
    }

    fn check_ranges(list: &[(Ipv4Addr, Ipv4Addr)]) {
        for r in list {
            assert!(r.0 <= r.1, "{r:?}");
        }
        for w in list.windows(2) {
            assert!(
                u64::from(u32::from(w[0].1)) + 1 < u64::from(u32::from(w[1].0)),
                "ranges overlap, touch or are unsorted: {w:?}"
            );
        }
    }

    fn check_invariants(c: &Compiled) {
        check_ranges(&c.cidr_allow);
        check_ranges(&c.cidr_deny);
        // Allow and deny ranges together: sorted, disjoint.
        let mut all: Vec<_> = c.cidr_allow.iter().chain(&c.cidr_deny).collect();
        all.sort();
        for w in all.windows(2) {
            assert!(w[0].1 < w[1].0, "an allow and a deny range overlap: {w:?}");
        }
        for list in [&c.exact_allow, &c.exact_deny] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
        }
        assert!(c.exact_allow.iter().all(|a| !c.exact_deny.contains(a)));
        for list in [&c.names_allow, &c.names_deny] {
            assert!(list.windows(2).all(|w| w[0].0 < w[1].0), "{list:?}");
            assert!(list.iter().all(|e| !e.1.is_zero() && e.1 <= MAX_TTL));
        }
        assert!(c
            .names_allow
            .iter()
            .all(|a| c.names_deny.binary_search_by_key(&a.0, |d| d.0).is_err()));
    }

    #[test]
    fn compiled_agrees_with_the_policy_on_random_cases() {
        let t0 = Instant::now();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..400 {
            let max_rules = if round % 50 == 0 { 1000 } else { 40 };
            let policy = random_policy(&mut rng, max_rules);

            let mut learned = Learned::new();
            let rule_addrs: Vec<u32> = policy
                .rules
                .iter()
                .filter_map(|r| match &r.target {
                    Target::Cidr(c) => Some(u32::from(c.addr())),
                    _ => None,
                })
                .collect();
            for _ in 0..rng.below(30) {
                let n = 1 + rng.below(3);
                let ips: Vec<_> = (0..n)
                    .map(|_| {
                        let a = if !rule_addrs.is_empty() && rng.chance(30) {
                            *rng.pick(&rule_addrs)
                        } else {
                            random_addr(&mut rng)
                        };
                        (Ipv4Addr::from(a), secs(rng.below(5000)))
                    })
                    .collect();
                let at = t0 + secs(rng.below(100));
                let name = *rng.pick(NAMES);
                learned.learn(name, &ips, at);
            }
            let with_unnamed = round % 2 == 0;
            if with_unnamed {
                for _ in 0..rng.below(5) {
                    let a = Ipv4Addr::from(random_addr(&mut rng));
                    learned.restore(a, None, secs(1 + rng.below(200)), t0);
                }
            }
            // Some entries are past their time by now.
            let now = t0 + secs(100 + rng.below(100));
            learned.expire(now);
            let c = compile(&policy, &learned, now);
            check_invariants(&c);

            let mut probes: Vec<u32> = vec![0, u32::MAX];
            for r in c.cidr_allow.iter().chain(&c.cidr_deny) {
                probes.extend([u32::from(r.0), u32::from(r.1)]);
            }
            for r in &policy.rules {
                if let Target::Cidr(cidr) = &r.target {
                    let (first, last) = cidr.range();
                    probes.extend([first, last]);
                }
            }
            probes.extend(learned.addrs().map(u32::from));
            probes.extend((0..200).map(|_| random_addr(&mut rng)));
            for p in probes.clone() {
                probes.extend([p.wrapping_sub(1), p.wrapping_add(1)]);
            }
            for p in probes {
                let ip = Ipv4Addr::from(p);
                let got = c.decide(ip);
                assert_eq!(got, reference(&policy, &learned, ip), "round {round}: {ip}");
                if !learned.is_unnamed(ip) {
                    assert_eq!(
                        got,
                        policy.decide_resolved(ip, learned.names(ip)),
                        "round {round}: {ip}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_thousand_rules_compile_quickly() {
        let mut rng = Rng(7);
        let rules = (0..1000)
            .map(|i| {
                let len = 8 + rng.below(25) as u8;
                let mask = u32::MAX << (32 - u32::from(len));
                EgressRule {
                    action: if i % 3 == 0 { Deny } else { Allow },
                    target: Target::Cidr(
                        Ipv4Cidr::new(Ipv4Addr::from(rng.next() as u32 & mask), len).unwrap(),
                    ),
                }
            })
            .collect();
        let p = EgressPolicy {
            default: Deny,
            rules,
        };
        let start = Instant::now();
        let c = compile(&p, &Learned::new(), start);
        assert!(start.elapsed() < secs(1));
        check_invariants(&c);
    }
}
