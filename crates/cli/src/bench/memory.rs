//! Host memory of sandboxes, read from /proc and the cgroup file system of the host the
//! bench runs on (the daemon's host: the bench must run there, as root, to see it).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The `Pss:` figure of a `/proc/<pid>/smaps_rollup` (or of one `smaps` entry), in KiB.
pub fn parse_pss_kib(smaps_rollup: &str) -> Option<u64> {
    kib_field(smaps_rollup, "Pss:")
}

/// A `Key:   123 kB` line of /proc/meminfo or smaps, in KiB.
pub fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        let mut parts = rest.split_whitespace();
        let n: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => Some(n),
            _ => None,
        }
    })
}

/// The host's `MemAvailable`, in KiB.
pub fn mem_available_kib() -> Option<u64> {
    kib_field(&fs::read_to_string("/proc/meminfo").ok()?, "MemAvailable:")
}

/// Every `Key: n kB` line of /proc/meminfo text, by key (without the colon).
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (key, rest) = l.split_once(':')?;
            let mut parts = rest.split_whitespace();
            let n = parts.next()?.parse().ok()?;
            (parts.next() == Some("kB")).then(|| (key.trim().to_string(), n))
        })
        .collect()
}

/// The host's /proc/meminfo (empty if unreadable).
pub fn meminfo() -> BTreeMap<String, u64> {
    fs::read_to_string("/proc/meminfo")
        .map(|t| parse_meminfo(&t))
        .unwrap_or_default()
}

/// The pids listed in a `cgroup.procs` file.
pub fn parse_procs(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Where the sandboxes' cgroups are: the hierarchy that has processes and memory figures
/// (v1 and hybrid: the `memory` controller's; v2: the unified one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    pub dir: PathBuf,
    pub v2: bool,
}

impl CgroupRoot {
    /// From the layout in `GET /v1/capabilities` (`v1`, `hybrid`, `v2`), or detected
    /// from /sys/fs/cgroup when unknown.
    pub fn for_layout(layout: Option<&str>) -> CgroupRoot {
        let v2 = match layout {
            Some("v2") => true,
            Some(_) => false,
            None => Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
        };
        let dir = if v2 {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            PathBuf::from("/sys/fs/cgroup/memory")
        };
        CgroupRoot { dir, v2 }
    }

    /// The cgroup parent (relative to the root) holding the sandbox `id`: `hint` if given,
    /// else the first directory `<root>/<name>/<id>` found.
    pub fn find_parent(&self, id: &str, hint: Option<&str>) -> Option<String> {
        if let Some(p) = hint {
            let p = p.trim_matches('/');
            return self.dir.join(p).join(id).is_dir().then(|| p.to_string());
        }
        let entries = fs::read_dir(&self.dir).ok()?;
        for e in entries.flatten() {
            if e.path().join(id).is_dir() {
                return Some(e.file_name().to_string_lossy().into_owned());
            }
        }
        None
    }

    /// Bytes charged to a cgroup (its descendants included): `memory.usage_in_bytes` on
    /// v1 (page cache and, where kmem accounting is on, kernel memory included),
    /// `memory.current` on v2.
    pub fn usage_bytes(&self, cgroup: &Path) -> io::Result<u64> {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        let text = fs::read_to_string(cgroup.join(file))?;
        text.trim()
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{file}: {e}")))
    }
}

/// Every pid in `cgroup` and its descendant cgroups.
pub fn procs_recursive(cgroup: &Path) -> io::Result<Vec<u32>> {
    let mut out = parse_procs(&fs::read_to_string(cgroup.join("cgroup.procs"))?);
    for e in fs::read_dir(cgroup)?.flatten() {
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            // A child that vanished meanwhile is simply skipped.
            if let Ok(more) = procs_recursive(&e.path()) {
                out.extend(more);
            }
        }
    }
    Ok(out)
}

/// Sum of the PSS of a set of processes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PssSum {
    pub processes: usize,
    pub pss_kib: u64,
    /// Processes whose smaps_rollup could not be read (gone, or no permission).
    pub unreadable: usize,
    /// The first reason a read failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn sum_pss(pids: &[u32]) -> PssSum {
    let mut sum = PssSum::default();
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        match fs::read_to_string(&path).map(|t| parse_pss_kib(&t)) {
            Ok(Some(kib)) => {
                sum.processes += 1;
                sum.pss_kib += kib;
            }
            Ok(None) => {
                // Kernel threads and zombies have an empty smaps_rollup: no memory.
                sum.processes += 1;
            }
            Err(e) => {
                sum.unreadable += 1;
                sum.error.get_or_insert_with(|| format!("{path}: {e}"));
            }
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLLUP: &str = "\
55a4c1e2d000-7ffd2b3f5000 ---p 00000000 00:00 0                          [rollup]
Rss:                3212 kB
Pss:                 917 kB
Pss_Anon:            412 kB
Pss_File:            505 kB
Pss_Shmem:             0 kB
Shared_Clean:       2796 kB
";

    #[test]
    fn pss_from_smaps_rollup() {
        assert_eq!(parse_pss_kib(ROLLUP), Some(917));
        // `Pss_Anon:` and friends are not `Pss:`.
        assert_eq!(parse_pss_kib("Pss_Anon: 3 kB\nPss_File: 4 kB\n"), None);
        assert_eq!(parse_pss_kib(""), None);
        assert_eq!(parse_pss_kib("Pss: lots kB\n"), None);
        assert_eq!(parse_pss_kib("Pss: 5 MB\n"), None);
    }

    #[test]
    fn meminfo_fields() {
        let meminfo = "MemTotal:       24588944 kB\nMemFree:        19112356 kB\n\
                       MemAvailable:   23016912 kB\nHugePages_Total:       0\n";
        assert_eq!(kib_field(meminfo, "MemAvailable:"), Some(23_016_912));
        assert_eq!(kib_field(meminfo, "MemTotal:"), Some(24_588_944));
        assert_eq!(kib_field(meminfo, "HugePages_Total:"), Some(0));
        assert_eq!(kib_field(meminfo, "Cached:"), None);
        let all = parse_meminfo(meminfo);
        assert_eq!(all.len(), 3);
        assert_eq!(all["MemAvailable"], 23_016_912);
        assert!(!all.contains_key("HugePages_Total"));
    }

    #[test]
    fn procs_lists() {
        assert_eq!(parse_procs("12\n345\n\n"), vec![12, 345]);
        assert_eq!(parse_procs(""), Vec::<u32>::new());
    }

    #[test]
    fn sums_own_pss() {
        // This process can always read its own smaps_rollup (Linux >= 4.14).
        let me = std::process::id();
        let sum = sum_pss(&[me, u32::MAX]);
        assert_eq!(sum.processes, 1);
        assert!(sum.pss_kib > 0);
        assert_eq!(sum.unreadable, 1);
        assert!(sum.error.unwrap().contains(&u32::MAX.to_string()));
    }

    #[test]
    fn cgroup_root_by_layout() {
        assert!(CgroupRoot::for_layout(Some("v2")).v2);
        let v1 = CgroupRoot::for_layout(Some("hybrid"));
        assert_eq!(
            (v1.v2, v1.dir.as_path()),
            (false, Path::new("/sys/fs/cgroup/memory"))
        );
    }

    #[test]
    fn finds_parent_of_a_sandbox_cgroup() {
        let tmp = std::env::temp_dir().join(format!("warren-bench-cg-{}", std::process::id()));
        fs::create_dir_all(tmp.join("warren-1234abcd/sb-x")).unwrap();
        fs::create_dir_all(tmp.join("other")).unwrap();
        fs::write(tmp.join("warren-1234abcd/sb-x/cgroup.procs"), "7\n").unwrap();
        fs::create_dir_all(tmp.join("warren-1234abcd/sb-x/child")).unwrap();
        fs::write(
            tmp.join("warren-1234abcd/sb-x/child/cgroup.procs"),
            "8\n9\n",
        )
        .unwrap();
        let root = CgroupRoot {
            dir: tmp.clone(),
            v2: true,
        };
        assert_eq!(
            root.find_parent("sb-x", None).as_deref(),
            Some("warren-1234abcd")
        );
        assert_eq!(
            root.find_parent("sb-x", Some("/warren-1234abcd/"))
                .as_deref(),
            Some("warren-1234abcd")
        );
        assert_eq!(root.find_parent("sb-x", Some("other")), None);
        assert_eq!(root.find_parent("sb-y", None), None);
        let mut procs = procs_recursive(&tmp.join("warren-1234abcd/sb-x")).unwrap();
        procs.sort();
        assert_eq!(procs, vec![7, 8, 9]);
        fs::write(tmp.join("warren-1234abcd/memory.current"), "4096\n").unwrap();
        assert_eq!(
            root.usage_bytes(&tmp.join("warren-1234abcd")).unwrap(),
            4096
        );
        fs::remove_dir_all(&tmp).unwrap();
    }
}
