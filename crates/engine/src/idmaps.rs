//! User-namespace id ranges: each sandbox's uid/gid `0..65536` are host ids
//! `base + k·65536 ..`, a range (slot `k`) no other live sandbox and no host account uses.
//!
//! - A daemon uses a window of `count` ranges from `base`, claimed host-wide in a registry
//!   (`/run/warren/userns/<base>-<count>`, held with `flock` for the daemon's lifetime), so
//!   two daemons on one host never hand out the same ids: without `--userns-base` a daemon
//!   takes the first free window (preferring the one it used before, kept in its store); a
//!   window whose daemon is gone counts as free only when no process runs in it any more
//!   (a crashed daemon's sandboxes keep theirs).
//! - The range is part of the sandbox's record (`host_id`), so it survives a restart: the
//!   slots in use are exactly the ones the records in memory hold (a sandbox keeps its range
//!   from create to the removal of its record, through stop/start, rollback and adoption).
//! - Slots that overlap an id of the host's accounts (`/etc/passwd`, `/etc/group`) or a
//!   subordinate range (`/etc/subuid`, `/etc/subgid`) are never handed out. Allocation is
//!   next-fit from the last slot given, so a freed range is not reused at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use warren_runtime::IdMap;

use crate::store::Record;
use crate::{Engine, EngineError, Entry};

/// Where windows are searched from when no base is given: 2^30 (ids below 2^31 first, which
/// some tools read as signed; then above).
pub const AUTO_BASE: u32 = 1 << 30;

/// The host-wide registry of claimed windows.
pub const REGISTRY: &str = "/run/warren/userns";

/// Where user-namespace ranges come from (`warren serve --userns-base`, `--userns-ranges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRangeConfig {
    /// First host id of slot 0 (a non-zero multiple of 65536); `None`: the first free
    /// window from [`AUTO_BASE`] (see the module docs).
    pub base: Option<u32>,
    /// Number of slots (sandboxes with a user namespace at once).
    pub count: u32,
    /// Host id ranges `(first, count)` no slot may overlap (host accounts); see
    /// [`host_accounts`].
    pub exclude: Vec<(u32, u32)>,
    /// The host-wide registry of windows ([`REGISTRY`]).
    pub registry: PathBuf,
}

impl Default for IdRangeConfig {
    /// 4,096 ranges (sandboxes at once) in the first free window from 2^30.
    fn default() -> IdRangeConfig {
        IdRangeConfig {
            base: None,
            count: 4096,
            exclude: Vec::new(),
            registry: PathBuf::from(REGISTRY),
        }
    }
}

/// Whether `count` ranges from `base` are a usable window: a non-zero multiple of 65536
/// that ends below 2^32 - 1 (the invalid uid).
pub fn check_window(base: u32, count: u32) -> Result<(), String> {
    if base == 0 || !base.is_multiple_of(IdMap::SIZE) {
        return Err(format!(
            "userns base must be a non-zero multiple of {}, got {base}",
            IdMap::SIZE
        ));
    }
    if count == 0 || window_end(base, count) > u64::from(u32::MAX) {
        return Err(format!(
            "{count} ranges of {} ids from {base} do not fit below 2^32 - 1",
            IdMap::SIZE
        ));
    }
    Ok(())
}

fn window_end(base: u32, count: u32) -> u64 {
    u64::from(base) + u64::from(count) * u64::from(IdMap::SIZE)
}

impl IdRangeConfig {
    pub fn validate(&self) -> Result<(), String> {
        check_window(self.base.unwrap_or(AUTO_BASE), self.count)
    }
}

/// A window of the registry this daemon holds (its lock ends with the process).
#[derive(Debug)]
pub struct Claim {
    pub base: u32,
    pub count: u32,
    path: PathBuf,
    _lock: File,
}

impl Claim {
    /// At a clean exit: remove the claim file unless a process still runs in the window (the
    /// sandboxes a daemon leaves running keep it taken; the next claimer checks that too),
    /// and any other claim that nothing holds or runs in any more (e.g. the window of an
    /// earlier run that crashed, whose sandboxes are gone now).
    pub fn release(&self) {
        let Some(dir) = self.path.parent() else {
            return;
        };
        let Ok(_registry) = lock_registry(dir) else {
            return;
        };
        let uids = running_uids();
        if !runs_in(&uids, self.base, self.count) {
            let _ = fs::remove_file(&self.path);
        }
        let _ = scan(dir, &uids);
    }
}

/// Take the registry's lock: one daemon at a time looks and claims.
fn lock_registry(dir: &Path) -> std::io::Result<File> {
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(".lock"))?;
    lock.lock()?;
    Ok(lock)
}

/// Whether any of `uids` lies in the window of `count` ranges from `base`.
fn runs_in(uids: &[u32], base: u32, count: u32) -> bool {
    uids.iter()
        .any(|u| u64::from(*u) >= u64::from(base) && u64::from(*u) < window_end(base, count))
}

/// A claim in the registry that is still live.
struct Live {
    base: u32,
    count: u32,
    /// What the file says: `<data dir> (pid <pid>)`.
    who: String,
    /// Its daemon still runs (holds the file's lock).
    held: bool,
}

/// The registry's live claims (held by a running daemon, or with a process running in the
/// window: a crashed daemon's sandboxes outlive it); the others' files are removed. Call
/// with the registry locked.
fn scan(dir: &Path, uids: &[u32]) -> std::io::Result<Vec<Live>> {
    let mut live = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some((base, count)) = name
            .split_once('-')
            .and_then(|(b, c)| Some((b.parse::<u32>().ok()?, c.parse::<u32>().ok()?)))
        else {
            continue;
        };
        let Ok(f) = fs::OpenOptions::new().read(true).write(true).open(e.path()) else {
            continue;
        };
        let held = f.try_lock().is_err();
        if held || runs_in(uids, base, count) {
            let who = fs::read_to_string(e.path())
                .unwrap_or_default()
                .trim()
                .to_string();
            live.push(Live {
                base,
                count,
                who,
                held,
            });
        } else {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(live)
}

/// Host uids of every live (not zombie) process on the host (real, effective, saved, fs).
fn running_uids() -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(status) = fs::read_to_string(e.path().join("status")) {
            // A zombie runs nothing and holds nothing but its pid: a sandbox's PID 1 waits as
            // one until the host's init reaps it, which need not be at once.
            if status
                .lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
            {
                continue;
            }
            if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
                out.extend(
                    line.split_whitespace()
                        .skip(1)
                        .filter_map(|u| u.parse::<u32>().ok()),
                );
            }
        }
    }
    out
}

/// Claim a window of `count` ranges in the registry at `dir`: `base` if given (an error if
/// a live claim overlaps it), else `preferred` (the window of the last run) if free, else
/// the first free window from [`AUTO_BASE`]. `owner` (the data dir) is written into the
/// claim for operators.
pub fn claim_window(
    dir: &Path,
    base: Option<u32>,
    preferred: Option<u32>,
    count: u32,
    owner: &Path,
) -> Result<Claim, String> {
    let io = |what: String| move |e: std::io::Error| format!("{what}: {e}");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))?;
    let _registry = lock_registry(dir).map_err(io("locking the registry".into()))?;
    let live = scan(dir, &running_uids()).map_err(io(format!("reading {}", dir.display())))?;
    // This data dir's own claim from a run that did not exit cleanly (a crash, or sandboxes
    // left running): its sandboxes are ours to adopt, so is the window.
    let mine = live
        .iter()
        .find(|l| {
            !l.held
                && l.count == count
                && base.is_none_or(|want| want == l.base)
                && claim_owner(&l.who) == owner.as_os_str()
        })
        .map(|l| (l.base, l.count));
    let overlaps = |b: u32| {
        live.iter().find(|l| {
            mine != Some((l.base, l.count))
                && u64::from(b) < window_end(l.base, l.count)
                && u64::from(l.base) < window_end(b, count)
        })
    };
    // Our own earlier window comes first.
    let preferred = mine.map(|(b, _)| b).or(preferred);
    let chosen = match base {
        Some(b) => {
            check_window(b, count)?;
            if let Some(l) = overlaps(b) {
                return Err(format!(
                    "host ids {b}..{} overlap the window {}..{} of another warren daemon ({}); \
                     choose another --userns-base or leave it out",
                    window_end(b, count),
                    l.base,
                    window_end(l.base, l.count),
                    l.who
                ));
            }
            b
        }
        None => {
            let step = u64::from(count) * u64::from(IdMap::SIZE);
            let auto = (0u64..)
                .map(|k| u64::from(AUTO_BASE) + k * step)
                .take_while(|b| *b + step <= u64::from(u32::MAX))
                .map(|b| b as u32);
            preferred
                .into_iter()
                .filter(|b| check_window(*b, count).is_ok())
                .chain(auto)
                .find(|b| overlaps(*b).is_none())
                .ok_or_else(|| {
                    format!(
                        "no free window of {count} user-namespace id ranges is left on this host \
                         (other warren daemons hold {}); lower --userns-ranges",
                        live.iter()
                            .map(|l| format!("{}-{}", l.base, l.count))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?
        }
    };
    let path = dir.join(format!("{chosen}-{count}"));
    let mut f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.try_lock()
        .map_err(|e| format!("locking {}: {e}", path.display()))?;
    let _ = f.set_len(0);
    let _ = writeln!(f, "{} (pid {})", owner.display(), std::process::id());
    Ok(Claim {
        base: chosen,
        count,
        path,
        _lock: f,
    })
}

/// The data dir a claim file names (its content is `<data dir> (pid <pid>)`).
fn claim_owner(content: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(
        content
            .rsplit_once(" (pid ")
            .map_or(content, |(dir, _)| dir),
    )
}

/// The allocator's state: the window, slots that are never used, and where the next search
/// starts.
pub(crate) struct IdRanges {
    claim: Claim,
    excluded: BTreeSet<u32>,
    cursor: Mutex<u32>,
}

impl IdRanges {
    /// The allocator over `claim`'s window, less the slots that overlap `exclude`.
    pub(crate) fn new(claim: Claim, exclude: &[(u32, u32)]) -> Result<IdRanges, String> {
        check_window(claim.base, claim.count)?;
        let mut excluded = BTreeSet::new();
        let size = u64::from(IdMap::SIZE);
        let (lo, hi) = (u64::from(claim.base), window_end(claim.base, claim.count));
        for &(first, count) in exclude {
            let (first, last) = (
                u64::from(first),
                u64::from(first) + u64::from(count.max(1)) - 1,
            );
            if last < lo || first >= hi {
                continue;
            }
            let from = (first.max(lo) - lo) / size;
            let to = (last.min(hi - 1) - lo) / size;
            excluded.extend((from..=to).map(|s| s as u32));
        }
        if excluded.len() as u64 >= u64::from(claim.count) {
            return Err("every user-namespace range overlaps a host account".into());
        }
        Ok(IdRanges {
            claim,
            excluded,
            cursor: Mutex::new(0),
        })
    }

    /// The first host id of the window.
    pub(crate) fn base(&self) -> u32 {
        self.claim.base
    }

    pub(crate) fn release(&self) {
        self.claim.release();
    }

    /// Whether `id` is the first host id of a slot of this window that may be handed out
    /// (a sandbox recorded under an earlier window may hold one outside it).
    pub(crate) fn holds(&self, id: u32) -> bool {
        let Some(off) = id.checked_sub(self.claim.base) else {
            return false;
        };
        let slot = off / IdMap::SIZE;
        off % IdMap::SIZE == 0 && slot < self.claim.count && !self.excluded.contains(&slot)
    }

    fn host_id(&self, slot: u32) -> u32 {
        self.claim.base + slot * IdMap::SIZE
    }

    /// A free range's first host id, given the ranges in use.
    fn allocate(&self, used: &HashSet<u32>) -> Option<u32> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let count = self.claim.count;
        for i in 0..count {
            let slot = (*cursor + i) % count;
            let id = self.host_id(slot);
            if !self.excluded.contains(&slot) && !used.contains(&id) {
                *cursor = (slot + 1) % count;
                return Some(id);
            }
        }
        None
    }
}

impl Engine {
    /// Under the map lock: a range for a new sandbox, or `None` when the runtime gives
    /// sandboxes no user namespace. 429 `limit_reached` when every range is taken.
    pub(crate) fn allocate_host_id(
        &self,
        map: &HashMap<String, Entry>,
    ) -> Result<Option<u32>, EngineError> {
        let Some(ranges) = &self.inner.id_ranges else {
            return Ok(None);
        };
        let used: HashSet<u32> = map.values().filter_map(|e| e.record.host_id).collect();
        ranges.allocate(&used).map(Some).ok_or_else(|| {
            EngineError::LimitReached(format!(
                "every one of the {} user-namespace id ranges is in use \
                 (raise --userns-ranges)",
                ranges.claim.count
            ))
        })
    }

    /// The record a stopped sandbox starts with: one whose range lies outside this run's
    /// window (recorded under a window this daemon no longer holds, which another daemon
    /// may now hand out) first gets a range in it; the start then moves its files over.
    pub(crate) async fn range_for_start(&self, id: &str) -> Result<Record, EngineError> {
        let moved = {
            let mut map = self.map();
            let record = map
                .get(id)
                .map(|e| e.record.clone())
                .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
            match (&self.inner.id_ranges, record.host_id) {
                (Some(ranges), Some(old)) if !ranges.holds(old) => {
                    let new = self.allocate_host_id(&map)?;
                    let Some(e) = map.get_mut(id) else {
                        return Err(EngineError::SandboxNotFound(id.to_string()));
                    };
                    e.record.host_id = new;
                    tracing::info!(sandbox = %id, from = old, to = new,
                        "user namespace range moved into this run's window");
                    e.record.clone()
                }
                _ => return Ok(record),
            }
        };
        self.inner.store.insert(&moved).await?;
        Ok(moved)
    }
}

/// Ids of the host's accounts and subordinate ranges as `(first, count)`: every uid and gid
/// in `/etc/passwd` and `/etc/group`, every range in `/etc/subuid` and `/etc/subgid` (files
/// under `root`, normally `/`). Missing files count as empty.
pub fn host_accounts(root: &Path) -> Vec<(u32, u32)> {
    let read = |name: &str| std::fs::read_to_string(root.join(name)).unwrap_or_default();
    let mut out = Vec::new();
    for line in read("etc/passwd").lines() {
        let f: Vec<&str> = line.split(':').collect();
        for i in [2, 3] {
            if let Some(id) = f.get(i).and_then(|s| s.parse::<u32>().ok()) {
                out.push((id, 1));
            }
        }
    }
    for line in read("etc/group").lines() {
        if let Some(id) = line.split(':').nth(2).and_then(|s| s.parse::<u32>().ok()) {
            out.push((id, 1));
        }
    }
    for file in ["etc/subuid", "etc/subgid"] {
        for line in read(file).lines() {
            let f: Vec<&str> = line.split(':').collect();
            if let (Some(first), Some(count)) = (
                f.get(1).and_then(|s| s.parse::<u32>().ok()),
                f.get(2).and_then(|s| s.parse::<u32>().ok()),
            ) {
                out.push((first, count));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch dir, removed when the guard drops (a failing test too).
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("warren-idmaps-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Scratch(dir)
    }

    fn claim(base: u32, count: u32) -> Claim {
        Claim {
            base,
            count,
            path: PathBuf::from("/nonexistent"),
            _lock: File::open("/dev/null").unwrap(),
        }
    }

    #[test]
    fn windows_are_checked() {
        IdRangeConfig::default().validate().unwrap();
        for (base, count) in [(0, 1), (1000, 1), (1 << 30, 0), (u32::MAX - 65535, 2)] {
            assert!(check_window(base, count).is_err(), "{base} {count}");
        }
    }

    #[test]
    fn next_fit_skips_used_and_excluded_and_wraps() {
        let size = IdMap::SIZE;
        let base = 1 << 20;
        // Slot 1 overlaps a host account (one id in its middle).
        let r = IdRanges::new(claim(base, 4), &[(base + size + 7, 1)]).unwrap();
        let mut used = HashSet::new();
        let a = r.allocate(&used).unwrap();
        assert_eq!(a, base);
        used.insert(a);
        let b = r.allocate(&used).unwrap();
        assert_eq!(b, base + 2 * size);
        used.insert(b);
        let c = r.allocate(&used).unwrap();
        assert_eq!(c, base + 3 * size);
        used.insert(c);
        assert_eq!(r.allocate(&used), None);
        // A freed range is found again after a wrap.
        used.remove(&a);
        assert_eq!(r.allocate(&used), Some(a));
    }

    #[test]
    fn subordinate_ranges_exclude_every_slot_they_touch() {
        let size = IdMap::SIZE;
        let base = 1 << 20;
        let r = IdRanges::new(claim(base, 8), &[(base + size - 1, size + 2), (5, 100)]).unwrap();
        // Slots 0, 1 and 2 are touched.
        assert_eq!(r.excluded.iter().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(IdRanges::new(claim(base, 2), &[(base, 2 * size)]).is_err());
    }

    #[test]
    fn daemons_claim_disjoint_windows_and_stale_claims_are_taken_back() {
        let dir = scratch("registry");
        let me = Path::new("/var/lib/warren-test");
        let step = 16 * IdMap::SIZE;
        let a = claim_window(&dir, None, None, 16, me).unwrap();
        assert_eq!(a.base, AUTO_BASE);
        // A second daemon gets the next window; its preferred one is taken.
        let b = claim_window(&dir, None, Some(AUTO_BASE), 16, me).unwrap();
        assert_eq!(b.base, AUTO_BASE + step);
        // An explicit base that overlaps a live window is refused, and says whose it is.
        let e = claim_window(&dir, Some(AUTO_BASE + IdMap::SIZE), None, 4, me).unwrap_err();
        assert!(e.contains("warren-test"), "{e}");
        // A window whose daemon is gone (lock released, no process in it) is free again.
        drop(a);
        let c = claim_window(&dir, None, None, 16, me).unwrap();
        assert_eq!(c.base, AUTO_BASE);
        // A claim left by a daemon that is gone, with nothing running in it, is taken.
        drop((b, c));
        fs::write(dir.join("65536-1"), "gone\n").unwrap();
        let d = claim_window(&dir, Some(65536), None, 1, me).unwrap();
        assert_eq!(d.base, 65536);
        // Released at a clean exit: nothing runs in it, so its file goes.
        d.release();
        assert!(!dir.join("65536-1").exists());
        // A crashed daemon's window, with its sandboxes still running, stays taken for
        // others but is taken back by the daemon of the same data dir.
        let other = Path::new("/var/lib/other");
        struct Reap(std::process::Child);
        impl Drop for Reap {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        // Something of that daemon's runs as host uid 65536.
        let _sandbox = Reap({
            use std::os::unix::process::CommandExt;
            std::process::Command::new("sleep")
                .arg("60")
                .uid(65536)
                .gid(65536)
                .spawn()
                .unwrap()
        });
        fs::write(dir.join("65536-1"), format!("{} (pid 1)\n", me.display())).unwrap();
        let e = claim_window(&dir, Some(65536), None, 1, other).unwrap_err();
        assert!(e.contains("warren-test"), "{e}");
        let f = claim_window(&dir, None, None, 1, other).unwrap();
        assert_ne!(f.base, 65536);
        let g = claim_window(&dir, None, Some(f.base), 1, me).unwrap();
        assert_eq!(g.base, 65536, "the window of the last run is taken back");
        drop((f, g, _sandbox));
        // A clean exit also sweeps claims nothing holds or runs in any more.
        fs::write(dir.join("131072-1"), "crashed earlier\n").unwrap();
        let k = claim_window(&dir, Some(196608), None, 1, me).unwrap();
        fs::write(dir.join("131072-1"), "crashed earlier\n").unwrap();
        k.release();
        let left: Vec<_> = fs::read_dir(&*dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, [".lock"], "{left:?}");
    }

    #[test]
    fn host_accounts_are_read() {
        let dir = scratch("accounts");
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbig:x:1073807360:1073807361::/:/bin/sh\nbad line\n",
        )
        .unwrap();
        fs::write(dir.join("etc/group"), "g:x:42:\n").unwrap();
        fs::write(dir.join("etc/subuid"), "u:100000:65536\n").unwrap();
        let ids = host_accounts(&dir);
        assert!(ids.contains(&(1_073_807_360, 1)) && ids.contains(&(1_073_807_361, 1)));
        assert!(ids.contains(&(42, 1)) && ids.contains(&(100_000, 65_536)));
    }
}
