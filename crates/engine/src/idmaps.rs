//! User-namespace id ranges: each sandbox's uid/gid `0..65536` are host ids
//! `base + k·65536 ..`, a range (slot `k`) no other live sandbox and no host account uses.
//!
//! The range is part of the sandbox's record (`host_id`), so it survives a restart: the
//! slots in use are exactly the ones the records in memory hold (a sandbox keeps its range
//! from create to the removal of its record, through stop/start, rollback and adoption).
//! Slots that overlap an id of the host's accounts (`/etc/passwd`, `/etc/group`) or a
//! subordinate range (`/etc/subuid`, `/etc/subgid`) are never handed out. Allocation is
//! next-fit from the last slot given, so a freed range is not reused at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;

use warren_runtime::IdMap;

use crate::{Engine, EngineError, Entry};

/// Where user-namespace ranges come from (`warren serve --userns-base`, `--userns-ranges`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRangeConfig {
    /// First host id of slot 0; a non-zero multiple of 65536.
    pub base: u32,
    /// Number of slots (sandboxes with a user namespace at once).
    pub count: u32,
    /// Host id ranges `(first, count)` no slot may overlap (host accounts); see
    /// [`host_accounts`].
    pub exclude: Vec<(u32, u32)>,
}

impl Default for IdRangeConfig {
    /// 16,384 ranges from 2^30 (ids below 2^31, which some tools read as signed).
    fn default() -> IdRangeConfig {
        IdRangeConfig {
            base: 1 << 30,
            count: 16_384,
            exclude: Vec::new(),
        }
    }
}

impl IdRangeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.base == 0 || self.base % IdMap::SIZE != 0 {
            return Err(format!(
                "userns base must be a non-zero multiple of {}, got {}",
                IdMap::SIZE,
                self.base
            ));
        }
        let end = u64::from(self.base) + u64::from(self.count) * u64::from(IdMap::SIZE);
        if self.count == 0 || end > u64::from(u32::MAX) {
            return Err(format!(
                "{} ranges of {} ids from {} do not fit below 2^32 - 1",
                self.count,
                IdMap::SIZE,
                self.base
            ));
        }
        Ok(())
    }

    fn host_id(&self, slot: u32) -> u32 {
        self.base + slot * IdMap::SIZE
    }
}

/// The allocator's state: the configuration, slots that are never used, and where the next
/// search starts.
pub(crate) struct IdRanges {
    config: IdRangeConfig,
    excluded: BTreeSet<u32>,
    cursor: Mutex<u32>,
}

impl IdRanges {
    pub(crate) fn new(config: IdRangeConfig) -> Result<IdRanges, String> {
        config.validate()?;
        let mut excluded = BTreeSet::new();
        let size = u64::from(IdMap::SIZE);
        let (lo, hi) = (
            u64::from(config.base),
            u64::from(config.base) + u64::from(config.count) * size,
        );
        for &(first, count) in &config.exclude {
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
        if excluded.len() as u64 >= u64::from(config.count) {
            return Err("every user-namespace range overlaps a host account".into());
        }
        Ok(IdRanges {
            config,
            excluded,
            cursor: Mutex::new(0),
        })
    }

    /// A free range's first host id, given the ranges in use.
    fn allocate(&self, used: &HashSet<u32>) -> Option<u32> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let count = self.config.count;
        for i in 0..count {
            let slot = (*cursor + i) % count;
            let id = self.config.host_id(slot);
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
                ranges.config.count
            ))
        })
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

    fn ranges(base: u32, count: u32, exclude: Vec<(u32, u32)>) -> IdRanges {
        IdRanges::new(IdRangeConfig {
            base,
            count,
            exclude,
        })
        .unwrap()
    }

    #[test]
    fn config_is_checked() {
        let ok = IdRangeConfig::default();
        ok.validate().unwrap();
        for (base, count) in [(0, 1), (1000, 1), (1 << 30, 0), (u32::MAX - 65535, 2)] {
            let c = IdRangeConfig {
                base,
                count,
                exclude: vec![],
            };
            assert!(c.validate().is_err(), "{base} {count}");
        }
    }

    #[test]
    fn next_fit_skips_used_and_excluded_and_wraps() {
        let size = IdMap::SIZE;
        let base = 1 << 20;
        // Slot 1 overlaps a host account (one id in its middle).
        let r = ranges(base, 4, vec![(base + size + 7, 1)]);
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
        let r = ranges(base, 8, vec![(base + size - 1, size + 2), (5, 100)]);
        // Slots 0, 1 and 2 are touched.
        assert_eq!(r.excluded.iter().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(IdRanges::new(IdRangeConfig {
            base,
            count: 2,
            exclude: vec![(base, 2 * size)]
        })
        .is_err());
    }

    #[test]
    fn host_accounts_are_read() {
        let dir = std::env::temp_dir().join(format!("warren-idmaps-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(
            dir.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbig:x:1073807360:1073807361::/:/bin/sh\nbad line\n",
        )
        .unwrap();
        std::fs::write(dir.join("etc/group"), "g:x:42:\n").unwrap();
        std::fs::write(dir.join("etc/subuid"), "u:100000:65536\n").unwrap();
        let ids = host_accounts(&dir);
        assert!(ids.contains(&(1_073_807_360, 1)) && ids.contains(&(1_073_807_361, 1)));
        assert!(ids.contains(&(42, 1)) && ids.contains(&(100_000, 65_536)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
