//! What a test left on the host: mounts, cgroups and processes by name, so tests on the
//! real kernel can check they cleaned up after themselves.

use std::path::{Path, PathBuf};

/// Mounts in the host's mount table whose source or target mentions `needle`.
pub fn host_mounts_mentioning(needle: &Path) -> Vec<String> {
    let needle = needle.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&needle))
        .map(|l| l.to_string())
        .collect()
}

/// Cgroup directories anywhere under /sys/fs/cgroup (depth ≤ 3) whose name contains `needle`.
pub fn cgroups_named(needle: &str) -> Vec<PathBuf> {
    let mut out = vec![];
    fn walk(dir: &Path, depth: usize, needle: &str, out: &mut Vec<PathBuf>) {
        if depth > 3 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy().contains(needle) {
                    out.push(p.clone());
                }
                walk(&p, depth + 1, needle, out);
            }
        }
    }
    walk(Path::new("/sys/fs/cgroup"), 0, needle, &mut out);
    out
}

/// Host processes that live in a cgroup under `parent` (in any hierarchy).
pub fn processes_in_cgroup(parent: &str) -> Vec<String> {
    let needle = format!("/{parent}/");
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| {
                    std::fs::read_to_string(e.path().join("cgroup"))
                        .map(|c| c.contains(&needle))
                        .unwrap_or(false)
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The user-namespace id range of sandbox `id` in tests that drive the runtime directly
/// (the daemon allocates its own): the same for every call with the same id, spread by a
/// hash of the id (and so of the test's unique prefix) over 16,384 ranges from 2^30.
pub fn test_idmap(id: &str) -> warren_runtime::IdMap {
    let mut h: u32 = 2_166_136_261;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16_777_619);
    }
    warren_runtime::IdMap::new((1 << 30) + (h % 16_384) * warren_runtime::IdMap::SIZE)
}
