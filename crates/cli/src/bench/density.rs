//! density: idle sandboxes, created one after another until `--density-target` or the
//! first failure; API latency every `--density-step`; host memory per sandbox at the end
//! (PSS of the sandboxes' processes, their memory cgroups, the drop of `MemAvailable`);
//! then every sandbox deleted, a few at a time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Serialize;
use warren_api::{CreateSandboxRequest, Resources};
use warren_client::Client;

use super::memory::{self, CgroupRoot};
use super::stats::{ms, percentile, stat, Stat};
use super::{exec_req, Ctx, Out};

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DensityReport {
    pub target: usize,
    /// Sandboxes running at once at the end.
    pub reached: usize,
    /// `resources.memory_mib` of each sandbox.
    pub memory_limit_mib: u64,
    /// The create that failed, with the server's answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// The kernel log's last lines after a failure.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dmesg_tail: Vec<String>,
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryAtN>,
    /// Wall time to delete them all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_all_secs: Option<f64>,
    /// `MemAvailable` once they are all deleted, against before the first create.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_available_after_delete_mib: Option<f64>,
}

/// Latencies with `count` idle sandboxes running.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Step {
    pub count: usize,
    /// Creates since the previous step.
    pub create_p50_ms: f64,
    pub create_p99_ms: f64,
    /// `GET /v1/sandboxes` (median of 3).
    pub list_ms: f64,
    /// Exec round trip of `true` (median of 5).
    pub exec_ms: f64,
    pub mem_available_mib: Option<f64>,
}

/// Host memory with `sandboxes` idle sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MemoryAtN {
    pub sandboxes: usize,
    /// Where their cgroups are (`<root>/<parent>/<id>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_dir: Option<String>,
    pub processes: usize,
    /// Sum of `Pss:` of `/proc/<pid>/smaps_rollup` of every process in their cgroups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pss_per_sandbox_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pss_error: Option<String>,
    /// Their memory cgroups' usage (page cache and charged kernel memory included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_usage_per_sandbox_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_available_before_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_available_at_n_mib: Option<f64>,
    /// (before − at N) / N: everything the host spent, kernel memory (page tables,
    /// namespaces, cgroups, mounts) and the daemon's own growth included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_available_drop_per_sandbox_mib: Option<f64>,
    /// Growth per sandbox of a few /proc/meminfo fields (KiB): where kernel memory goes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meminfo_growth_per_sandbox_kib: BTreeMap<String, f64>,
}

/// The /proc/meminfo fields whose growth is reported.
const MEMINFO_FIELDS: [&str; 7] = [
    "MemFree",
    "Cached",
    "Shmem",
    "Slab",
    "SUnreclaim",
    "KernelStack",
    "PageTables",
];

/// `(at - before) / n` for each of [`MEMINFO_FIELDS`] present in both.
fn meminfo_growth(
    before: &BTreeMap<String, u64>,
    at: &BTreeMap<String, u64>,
    n: usize,
) -> BTreeMap<String, f64> {
    MEMINFO_FIELDS
        .iter()
        .filter_map(|k| {
            let (b, a) = (before.get(*k)?, at.get(*k)?);
            Some((k.to_string(), (*a as f64 - *b as f64) / n.max(1) as f64))
        })
        .collect()
}

pub(crate) fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let (client, args) = (ctx.client, ctx.args);
    let (target, step) = (args.density_target, args.density_step.max(1));
    let mut report = DensityReport {
        target,
        memory_limit_mib: args.density_memory_mib,
        ..Default::default()
    };
    let req = CreateSandboxRequest {
        timeout_secs: Some(4 * 3600),
        resources: Some(Resources {
            memory_mib: Some(args.density_memory_mib),
            ..Default::default()
        }),
        metadata: [("bench".to_string(), "density".to_string())].into(),
        ..ctx.create_req()
    };
    eprintln!(
        "bench: density: idle sandboxes of {} MiB until {target} or the first failure",
        args.density_memory_mib
    );
    let before = memory::mem_available_kib();
    let meminfo_before = memory::meminfo();
    let mut ids: Vec<String> = Vec::with_capacity(target);
    let (mut creates, mut since_step) = (Vec::with_capacity(target), Vec::new());
    let (mut last_list, mut last_exec) = (Vec::new(), Vec::new());
    while ids.len() < target {
        let t0 = Instant::now();
        match client.create_sandbox(&req).await {
            Ok(sb) => {
                let d = t0.elapsed();
                ctx.tracker.sandbox(&sb.id);
                ids.push(sb.id);
                creates.push(d);
                since_step.push(d);
            }
            Err(e) => {
                report.failure = Some(format!(
                    "create #{} failed after {:.0} ms: {e}",
                    ids.len() + 1,
                    ms(t0.elapsed())
                ));
                break;
            }
        }
        if ids.len().is_multiple_of(step) || ids.len() == target {
            let (s, list, exec) = measure_step(client, &ids, &mut since_step).await?;
            eprintln!(
                "bench: density {:>5}: create p50 {:.1} ms, list {:.1} ms, exec {:.2} ms",
                s.count, s.create_p50_ms, s.list_ms, s.exec_ms
            );
            report.steps.push(s);
            (last_list, last_exec) = (list, exec);
        }
    }
    if report.failure.is_some() {
        report.dmesg_tail = dmesg_tail(20).await;
        if !ids.is_empty() && report.steps.last().map(|s| s.count) != Some(ids.len()) {
            let (s, list, exec) = measure_step(client, &ids, &mut since_step).await?;
            report.steps.push(s);
            (last_list, last_exec) = (list, exec);
        }
    }
    let n = ids.len();
    report.reached = n;
    if n > 0 {
        let mut mem = measure_memory(ctx, &ids, before);
        mem.meminfo_growth_per_sandbox_kib = meminfo_growth(&meminfo_before, &memory::meminfo(), n);
        if let Some(e) = &mem.pss_error {
            out.note(format!("density: PSS: {e}"));
        }
        push_rows(out, n, &creates, last_list, last_exec, &mem);
        report.memory = Some(mem);
    }

    eprintln!("bench: density: deleting {n} sandboxes");
    let t0 = Instant::now();
    let deleted: Vec<(String, Duration, Result<(), warren_client::Error>)> =
        futures::stream::iter(ids)
            .map(|id| async move {
                let t = Instant::now();
                let r = client.delete_sandbox(&id).await;
                (id, t.elapsed(), r)
            })
            .buffer_unordered(args.delete_concurrency.max(1))
            .collect()
            .await;
    let total = t0.elapsed();
    let mut lat = Vec::with_capacity(deleted.len());
    let mut failed = Vec::new();
    for (id, d, r) in deleted {
        match r {
            Ok(()) => {
                ctx.tracker.sandbox_gone(&id);
                lat.push(d);
            }
            Err(e) => failed.push(format!("{id}: {e}")),
        }
    }
    if n > 0 {
        report.delete_all_secs = Some(total.as_secs_f64());
        out.results.push(
            stat(
                &format!(
                    "density: delete all ({} in flight)",
                    args.delete_concurrency.max(1)
                ),
                lat,
            )
            .with_extra(total.as_secs_f64(), "s total"),
        );
    }
    if let (Some(b), Some(a)) = (before, memory::mem_available_kib()) {
        report.mem_available_after_delete_mib = Some(mib(a) - mib(b));
    }
    if !failed.is_empty() {
        out.note(format!(
            "density: {} deletes failed (first: {})",
            failed.len(),
            failed[0]
        ));
    }
    if let Some(f) = &report.failure {
        out.note(format!("density: stopped at {n} sandboxes: {f}"));
    }
    out.density = Some(report);
    Ok(())
}

/// Latencies at `ids.len()` sandboxes: the creates since the last step, a few lists and
/// exec round trips (on the sandbox in the middle).
async fn measure_step(
    client: &Client,
    ids: &[String],
    since_step: &mut Vec<Duration>,
) -> Result<(Step, Vec<Duration>, Vec<Duration>)> {
    let mut creates = std::mem::take(since_step);
    creates.sort();
    let none: &[(&str, &str)] = &[];
    let mut list = Vec::new();
    for _ in 0..3 {
        let t0 = Instant::now();
        let all = client.list_sandboxes(none).await.context("list")?;
        list.push(t0.elapsed());
        if all.len() < ids.len() {
            anyhow::bail!(
                "the server lists {} sandboxes, {} created",
                all.len(),
                ids.len()
            );
        }
    }
    let id = &ids[ids.len() / 2];
    let req = exec_req(&["true"]);
    client.exec(id, &req).await.context("exec")?;
    let mut exec = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        client.exec(id, &req).await.context("exec")?;
        exec.push(t0.elapsed());
    }
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        percentile(&v, 0.5).map(ms).unwrap_or(0.0)
    };
    let step = Step {
        count: ids.len(),
        create_p50_ms: percentile(&creates, 0.5).map(ms).unwrap_or(0.0),
        create_p99_ms: percentile(&creates, 0.99).map(ms).unwrap_or(0.0),
        list_ms: median(&list),
        exec_ms: median(&exec),
        mem_available_mib: memory::mem_available_kib().map(mib),
    };
    Ok((step, list, exec))
}

pub(crate) fn measure_memory(ctx: &Ctx<'_>, ids: &[String], before: Option<u64>) -> MemoryAtN {
    let n = ids.len();
    let at_n = memory::mem_available_kib();
    let mut mem = MemoryAtN {
        sandboxes: n,
        mem_available_before_mib: before.map(mib),
        mem_available_at_n_mib: at_n.map(mib),
        mem_available_drop_per_sandbox_mib: before
            .zip(at_n)
            .map(|(b, a)| (mib(b) - mib(a)) / n as f64),
        ..Default::default()
    };
    let root = CgroupRoot::for_layout(ctx.caps.as_ref().map(|c| c.cgroup.as_str()));
    let Some(parent) = root.find_parent(&ids[0], ctx.args.cgroup_parent.as_deref()) else {
        mem.pss_error = Some(format!(
            "no cgroup of sandbox {} under {} (is the daemon on another host, or does it \
             use another --cgroup-parent?)",
            ids[0],
            root.dir.display()
        ));
        return mem;
    };
    let parent_dir = root.dir.join(&parent);
    mem.cgroup_dir = Some(parent_dir.display().to_string());
    let (mut pids, mut usage, mut usage_ok) = (Vec::new(), 0u64, true);
    for id in ids {
        let dir = parent_dir.join(id);
        match memory::procs_recursive(&dir) {
            Ok(p) => pids.extend(p),
            Err(e) => {
                mem.pss_error
                    .get_or_insert_with(|| format!("{}: {e}", dir.display()));
            }
        }
        match root.usage_bytes(&dir) {
            Ok(b) => usage += b,
            Err(_) => usage_ok = false,
        }
    }
    if usage_ok {
        mem.cgroup_usage_per_sandbox_mib = Some(usage as f64 / (1 << 20) as f64 / n as f64);
    }
    let pss = memory::sum_pss(&pids);
    mem.processes = pss.processes + pss.unreadable;
    if pss.processes > 0 && pss.unreadable == 0 {
        mem.pss_per_sandbox_mib = Some(mib(pss.pss_kib) / n as f64);
    } else if let Some(e) = pss.error {
        mem.pss_error = Some(format!(
            "cannot read the PSS of {} of {} processes ({e}); see the memory cgroup's usage \
             instead",
            pss.unreadable,
            pids.len()
        ));
    }
    mem
}

fn push_rows(
    out: &mut Out,
    n: usize,
    creates: &[Duration],
    list: Vec<Duration>,
    exec: Vec<Duration>,
    mem: &MemoryAtN,
) {
    out.results.extend([
        stat(&format!("density: create, 1 → {n}"), creates.to_vec()),
        stat(&format!("density: GET /v1/sandboxes at {n}"), list),
        stat(&format!("density: exec `true` at {n}"), exec),
    ]);
    let per = |name: &str, v: Option<f64>| v.map(|v| Stat::value(name, n, v, "MiB/sandbox"));
    out.results.extend(
        [
            per("density: PSS of sandbox processes", mem.pss_per_sandbox_mib),
            per(
                "density: memory cgroup usage",
                mem.cgroup_usage_per_sandbox_mib,
            ),
            per(
                "density: host MemAvailable drop",
                mem.mem_available_drop_per_sandbox_mib,
            ),
        ]
        .into_iter()
        .flatten(),
    );
    if mem.processes > 0 {
        out.results.push(Stat::value(
            "density: processes",
            n,
            mem.processes as f64 / n as f64,
            "per sandbox",
        ));
    }
}

/// The kernel log's last `lines` lines (empty if it cannot be read).
async fn dmesg_tail(lines: usize) -> Vec<String> {
    let Ok(out) = tokio::process::Command::new("dmesg").output().await else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// The per-step table printed after the main one.
pub fn format_steps(r: &DensityReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "density ({} MiB sandboxes, target {}, reached {}):",
        r.memory_limit_mib, r.target, r.reached
    );
    let _ = writeln!(
        s,
        "{:>9} {:>14} {:>14} {:>10} {:>10} {:>18}",
        "sandboxes", "create p50 ms", "create p99 ms", "list ms", "exec ms", "MemAvailable MiB"
    );
    for st in &r.steps {
        let avail = st
            .mem_available_mib
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:>9} {:>14.3} {:>14.3} {:>10.3} {:>10.3} {:>18}",
            st.count, st.create_p50_ms, st.create_p99_ms, st.list_ms, st.exec_ms, avail
        );
    }
    if let Some(m) = &r.memory {
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2} MiB")).unwrap_or("-".into());
        let _ = writeln!(
            s,
            "memory per sandbox at {}: PSS {}, memory cgroup {}, MemAvailable drop {} \
             ({} processes)",
            m.sandboxes,
            f(m.pss_per_sandbox_mib),
            f(m.cgroup_usage_per_sandbox_mib),
            f(m.mem_available_drop_per_sandbox_mib),
            m.processes
        );
    }
    if let Some(m) = &r.memory {
        if !m.meminfo_growth_per_sandbox_kib.is_empty() {
            let parts: Vec<String> = m
                .meminfo_growth_per_sandbox_kib
                .iter()
                .map(|(k, v)| format!("{k} {v:+.0}"))
                .collect();
            let _ = writeln!(s, "/proc/meminfo per sandbox (KiB): {}", parts.join(", "));
        }
    }
    if let Some(secs) = r.delete_all_secs {
        let _ = writeln!(s, "deleting all {}: {secs:.1} s", r.reached);
    }
    if let Some(d) = r.mem_available_after_delete_mib {
        let _ = writeln!(
            s,
            "MemAvailable after deleting them, against before the first: {d:+.0} MiB"
        );
    }
    if let Some(f) = &r.failure {
        let _ = writeln!(s, "stopped: {f}");
        for l in &r.dmesg_tail {
            let _ = writeln!(s, "  dmesg: {l}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_growth_per_sandbox() {
        let before = memory::parse_meminfo("Slab: 1000 kB\nPageTables: 100 kB\nMemFree: 9000 kB\n");
        let at = memory::parse_meminfo(
            "Slab: 3000 kB\nPageTables: 300 kB\nMemFree: 5000 kB\nCached: 7 kB\n",
        );
        let g = meminfo_growth(&before, &at, 100);
        assert_eq!(g.len(), 3);
        assert_eq!(g["Slab"], 20.0);
        assert_eq!(g["PageTables"], 2.0);
        assert_eq!(g["MemFree"], -40.0);
    }

    #[test]
    fn steps_table() {
        let r = DensityReport {
            target: 1000,
            reached: 200,
            memory_limit_mib: 16,
            failure: Some("create #201 failed: limit_reached: no".into()),
            dmesg_tail: vec!["oom".into()],
            steps: vec![Step {
                count: 100,
                create_p50_ms: 6.5,
                create_p99_ms: 20.25,
                list_ms: 1.5,
                exec_ms: 1.25,
                mem_available_mib: Some(20000.4),
            }],
            memory: Some(MemoryAtN {
                sandboxes: 200,
                processes: 400,
                pss_per_sandbox_mib: Some(1.234),
                ..Default::default()
            }),
            delete_all_secs: Some(3.5),
            mem_available_after_delete_mib: Some(-12.4),
        };
        let t = format_steps(&r);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "density (16 MiB sandboxes, target 1000, reached 200):"
        );
        assert!(lines[1].trim_start().starts_with("sandboxes"));
        assert_eq!(
            lines[2],
            "      100          6.500         20.250      1.500      1.250              20000"
        );
        assert_eq!(
            lines[3],
            "memory per sandbox at 200: PSS 1.23 MiB, memory cgroup -, MemAvailable drop - \
             (400 processes)"
        );
        assert_eq!(lines[4], "deleting all 200: 3.5 s");
        assert_eq!(
            lines[5],
            "MemAvailable after deleting them, against before the first: -12 MiB"
        );
        assert_eq!(lines[6], "stopped: create #201 failed: limit_reached: no");
        assert_eq!(lines[7], "  dmesg: oom");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["steps"][0]["count"], 100);
        assert_eq!(json["mem_available_after_delete_mib"], -12.4);
        assert!(json["memory"]
            .get("meminfo_growth_per_sandbox_kib")
            .is_none());
    }
}
