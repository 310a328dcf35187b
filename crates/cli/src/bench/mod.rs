//! `warren bench`: measures a running daemon through its HTTP API, with peers doing the
//! same work (bubblewrap, gVisor `runsc` when installed) measured in the same run.
//! Numbers, never assertions: see docs/PERFORMANCE.md.
//!
//! One file per scenario; each adds rows to the result table (and notes) and deletes what
//! it created. A scenario that fails is reported and the others still run.

mod baseline;
mod build;
mod cold;
mod concurrent;
mod density;
mod e2b;
mod files;
mod idle;
mod memory;
mod opensandbox;
mod snapshot;
mod stats;
mod warm;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use futures::StreamExt;
use serde::Serialize;
use warren_api::{Capabilities, CreateSandboxRequest, ExecRequest, Runtime};
use warren_client::{Client, ExecStreamEvent};

use crate::serve_args::{parse_size, RuntimeArg};
use stats::Stat;

/// A scenario of `--scenarios`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Create → first exec output → delete, one after another; bubblewrap and runsc
    /// baselines of the same work.
    Cold,
    /// Claim from a warm pool → first exec output.
    Warm,
    /// Exec round trip of `true` on a running sandbox.
    Exec,
    /// Many clients running execs at once.
    Concurrent,
    /// File write (PUT) and read (GET).
    Files,
    /// Snapshot and rollback of a large workspace (default 1 GiB, 10,000 files) and a tiny one.
    Snapshot,
    /// Idle sandboxes until --density-target or the first failure; host memory per sandbox.
    Density,
    /// A template build from --image, then unchanged rebuilds (the build cache); buildah's
    /// baseline when it is installed.
    Build,
    /// An OpenSandbox SDK's create → ready → first output → delete on `/opensandbox`,
    /// interleaved with Warren's own cold lifecycle.
    Opensandbox,
    /// An E2B SDK's create → first command output → delete (`/v2/sandboxes` and envd),
    /// interleaved with Warren's own cold lifecycle; and envd's command round trip.
    E2b,
    /// Idle sandboxes' host memory (their cgroups' charge and their processes' PSS);
    /// a bare `runsc run` container's as the gVisor baseline.
    Idle,
}

impl Scenario {
    /// Whether the scenario runs once per `--runtime` (the others use the server's
    /// default runtime once: their clients cannot name one).
    fn per_runtime(self) -> bool {
        !matches!(
            self,
            Scenario::Build | Scenario::Opensandbox | Scenario::E2b
        )
    }
}

const DEFAULT_SCENARIOS: [Scenario; 6] = [
    Scenario::Cold,
    Scenario::Warm,
    Scenario::Exec,
    Scenario::Concurrent,
    Scenario::Files,
    Scenario::Idle,
];

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated: cold, warm, exec, concurrent, files, snapshot,
    /// density, build, opensandbox, e2b, idle [default: cold,warm,exec,concurrent,files,idle].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub scenarios: Vec<Scenario>,
    /// Runtimes to measure, comma-separated (native, gvisor): every scenario but build,
    /// opensandbox and e2b runs once per runtime, its rows labelled with it [default: the
    /// server's default runtime, unlabelled].
    #[arg(long, value_enum, value_delimiter = ',', value_name = "LIST")]
    pub runtime: Vec<RuntimeArg>,
    /// Run every scenario, snapshot and density included.
    #[arg(long, conflicts_with = "scenarios")]
    pub all: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// cold: also run the lifecycle from this image (pulled first if the server pulls),
    /// interleaved with the default image's, and report what it costs over it.
    #[arg(long, value_name = "NAME")]
    pub image: Option<String>,
    /// Also write the JSON report to this file (the table still goes to stdout).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<std::path::PathBuf>,
    /// build: unchanged rebuilds after the first build.
    #[arg(long, default_value_t = 20)]
    pub build_runs: usize,
    /// cold: lifecycle iterations (create → first exec output → delete).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Iterations of each baseline (cold: bwrap and `runsc run`; exec: `runsc exec`);
    /// 0 skips them (and idle's bare runsc container).
    #[arg(long, default_value_t = 200)]
    pub baseline_runs: usize,
    /// warm: claims from the pool (each waits until the pool is full again).
    #[arg(long, default_value_t = 50)]
    pub warm_runs: usize,
    /// warm: size of the `bench` pool.
    #[arg(long, default_value_t = 2)]
    pub warm_pool_size: u32,
    /// exec: round trips of `true` on one running sandbox.
    #[arg(long, default_value_t = 1000)]
    pub exec_runs: usize,
    /// concurrent: clients (tokio tasks, each with its own connection pool).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// concurrent: sandboxes the clients share.
    #[arg(long, default_value_t = 4)]
    pub concurrent_sandboxes: usize,
    /// concurrent: how long the clients run execs, in seconds.
    #[arg(long, default_value_t = 10)]
    pub concurrent_secs: u64,
    /// files: writes and reads of one file.
    #[arg(long, default_value_t = 50)]
    pub file_runs: usize,
    /// files: size of the file (K, M, G suffixes are powers of 1024).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub file_size: u64,
    /// snapshot: snapshots and rollbacks of each workspace.
    #[arg(long, default_value_t = 5)]
    pub snapshot_runs: usize,
    /// snapshot: total size of the large workspace.
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub snapshot_size: u64,
    /// snapshot: number of files of the large workspace (in directories of 100).
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_files: u64,
    /// idle: sandboxes kept idle at once (their memory is reported per sandbox).
    #[arg(long, default_value_t = 5)]
    pub idle_sandboxes: usize,
    /// density: stop after this many idle sandboxes (or at the first failure).
    #[arg(long, default_value_t = 1000)]
    pub density_target: usize,
    /// density: report latencies every this many sandboxes.
    #[arg(long, default_value_t = 100)]
    pub density_step: usize,
    /// density: memory limit of each sandbox in MiB; small, so that the daemon's committed
    /// memory admission (`limits.max_committed_memory_mib`) lets the target fit.
    #[arg(long, default_value_t = 16)]
    pub density_memory_mib: u64,
    /// density: deletes in flight at once when removing the sandboxes.
    #[arg(long, default_value_t = 8)]
    pub delete_concurrency: usize,
    /// density: the daemon's cgroup parent (`warren serve --cgroup-parent`); found from
    /// the first sandbox's cgroup when not given.
    #[arg(long, value_name = "NAME")]
    pub cgroup_parent: Option<String>,
}

impl BenchArgs {
    fn selected(&self) -> BTreeSet<Scenario> {
        if self.all {
            Scenario::value_variants().iter().copied().collect()
        } else if self.scenarios.is_empty() {
            DEFAULT_SCENARIOS.into_iter().collect()
        } else {
            self.scenarios.iter().copied().collect()
        }
    }
}

/// How baseline rows' names begin (they are never labelled with a runtime).
pub(crate) const BASELINE: &str = "baseline: ";

/// What every scenario gets.
pub(crate) struct Ctx<'a> {
    pub client: &'a Client,
    pub args: &'a BenchArgs,
    pub caps: Option<Capabilities>,
    pub tracker: Tracker,
    /// The runtime this pass measures (`None`: the server's default, unnamed).
    pub runtime: Option<Runtime>,
    /// Whether rows carry the runtime's name (`--runtime` was given).
    pub labelled: bool,
    /// Whether this is the last pass over the runtimes (the baselines run then, once).
    pub last_pass: bool,
}

impl Ctx<'_> {
    /// The runtime this pass measures, by name: the named one, else the server's default.
    pub fn runtime_name(&self) -> String {
        match (self.runtime, &self.caps) {
            (Some(r), _) => r.as_str().to_string(),
            (None, Some(c)) => c.runtime.clone(),
            (None, None) => "default".to_string(),
        }
    }

    /// A row's name, with the runtime when rows are labelled.
    pub fn label(&self, name: &str) -> String {
        if self.labelled {
            format!("{name} [{}]", self.runtime_name())
        } else {
            name.to_string()
        }
    }

    /// A create request for this pass's runtime.
    pub fn create_req(&self) -> CreateSandboxRequest {
        CreateSandboxRequest {
            runtime: self.runtime,
            ..Default::default()
        }
    }

    /// Whether this pass's runtime offers `nat` (so `isolated` is a different case).
    pub fn has_nat(&self) -> bool {
        let Some(caps) = &self.caps else {
            return true;
        };
        let name = self.runtime_name();
        caps.runtimes
            .iter()
            .find(|r| r.name.as_str() == name)
            .is_none_or(|r| r.network_modes.iter().any(|m| m == "nat"))
    }
}

/// What the scenarios produce.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Out {
    pub results: Vec<Stat>,
    pub notes: Vec<String>,
    /// Warren's cold lifecycle p50 (native, or the default runtime) divided by
    /// bubblewrap's (goal ≤ 2).
    pub lifecycle_vs_bwrap: Option<f64>,
    /// Warren's gVisor figures divided by bare runsc's doing the same work (budget ≤ 1.3).
    #[serde(skip_serializing_if = "VsRunsc::is_empty")]
    pub gvisor_vs_runsc: VsRunsc,
    pub density: Option<density::DensityReport>,
    /// Per runtime: cold lifecycle p50, exec round trip p50 (ms) and idle PSS per sandbox
    /// (MiB), for the ratios to the baselines.
    #[serde(skip)]
    pub by_runtime: std::collections::BTreeMap<String, RuntimeFigures>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RuntimeFigures {
    pub lifecycle_p50_ms: Option<f64>,
    pub create_p50_ms: Option<f64>,
    pub exec_p50_ms: Option<f64>,
    pub idle_pss_mib: Option<f64>,
}

/// Warren's gVisor path over bare runsc (each `None` when either side is missing).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub(crate) struct VsRunsc {
    /// Cold lifecycle (create → first output → delete) over `runsc run` of `echo` (one
    /// command in a fresh container: the floor).
    pub lifecycle: Option<f64>,
    /// The same over bare runsc's sandbox lifecycle (`run --detach`, `exec echo`,
    /// `delete --force`): the same work.
    pub sandbox_lifecycle: Option<f64>,
    /// Create (201, the agent answering) over `runsc run --detach`.
    pub create: Option<f64>,
    /// Exec round trip over `runsc exec … true`.
    pub exec: Option<f64>,
    /// Idle PSS per sandbox over a detached `runsc run` container's.
    pub idle_pss: Option<f64>,
}

impl VsRunsc {
    fn is_empty(&self) -> bool {
        self.lifecycle.is_none()
            && self.sandbox_lifecycle.is_none()
            && self.create.is_none()
            && self.exec.is_none()
            && self.idle_pss.is_none()
    }
}

impl Out {
    fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("bench: {note}");
        self.notes.push(note);
    }

    fn stat(&self, name: &str) -> Option<&Stat> {
        self.results.iter().find(|s| s.name == name)
    }

    /// The figures of runtime `name` (made on first use).
    fn figures(&mut self, name: String) -> &mut RuntimeFigures {
        self.by_runtime.entry(name).or_default()
    }

    /// gVisor's figure `f` over the bare runsc baseline's `base`.
    fn vs_runsc(
        &self,
        f: impl Fn(&RuntimeFigures) -> Option<f64>,
        base: Option<f64>,
    ) -> Option<f64> {
        let ours = self.by_runtime.get("gvisor").and_then(f)?;
        base.filter(|b| *b > 0.0).map(|b| ours / b)
    }
}

/// What the bench created and has not deleted yet, for cleanup after Ctrl-C.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    inner: Arc<Mutex<Tracked>>,
}

#[derive(Debug, Default)]
struct Tracked {
    sandboxes: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    pools: BTreeSet<String>,
}

impl Tracker {
    fn with<T>(&self, f: impl FnOnce(&mut Tracked) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
    pub fn sandbox(&self, id: &str) {
        self.with(|t| t.sandboxes.insert(id.to_string()));
    }
    pub fn sandbox_gone(&self, id: &str) {
        self.with(|t| t.sandboxes.remove(id));
    }
    pub fn snapshot(&self, id: &str) {
        self.with(|t| t.snapshots.insert(id.to_string()));
    }
    pub fn snapshot_gone(&self, id: &str) {
        self.with(|t| t.snapshots.remove(id));
    }
    pub fn pool(&self, name: &str) {
        self.with(|t| t.pools.insert(name.to_string()));
    }
    pub fn pool_gone(&self, name: &str) {
        self.with(|t| t.pools.remove(name));
    }

    /// Delete everything still tracked (pools first, so they stop refilling).
    async fn cleanup(&self, client: &Client) {
        let (sandboxes, snapshots, pools) =
            self.with(|t| (t.sandboxes.clone(), t.snapshots.clone(), t.pools.clone()));
        if sandboxes.is_empty() && snapshots.is_empty() && pools.is_empty() {
            return;
        }
        eprintln!(
            "bench: cleaning up {} sandboxes, {} snapshots, {} pools",
            sandboxes.len(),
            snapshots.len(),
            pools.len()
        );
        for p in &pools {
            let _ = client.delete_pool(p).await;
        }
        futures::stream::iter(sandboxes)
            .map(|id| async move { client.delete_sandbox(&id).await })
            .buffer_unordered(8)
            .for_each(|_| async {})
            .await;
        for s in &snapshots {
            let _ = client.delete_snapshot(s).await;
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    host: HostInfo,
    scenarios: Vec<Scenario>,
    /// `storage.backend` of the daemon's capabilities (where snapshots live).
    storage_backend: Option<String>,
    /// The daemon's cgroup layout.
    cgroup: Option<String>,
    #[serde(flatten)]
    out: Out,
}

#[derive(Debug, Serialize)]
struct HostInfo {
    cpus: usize,
    cpu_model: String,
    memory_mib: u64,
    kernel: String,
}

fn host_info() -> HostInfo {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let memory_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| memory::kib_field(&m, "MemTotal:"))
        .unwrap_or(0)
        / 1024;
    HostInfo {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        cpu_model,
        memory_mib,
        kernel,
    }
}

pub(crate) fn exec_req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Start a streaming exec of `echo ready` and return when its first stdout arrives (the
/// stream is then drained to the exit).
pub(crate) async fn first_output(client: &Client, id: &str) -> Result<Instant> {
    let mut stream = client
        .exec_stream(id, &exec_req(&["echo", "ready"]))
        .await
        .context("exec")?;
    let mut got_output = None;
    while let Some(ev) = stream.next().await {
        match ev.context("exec stream")? {
            ExecStreamEvent::Stdout(_) if got_output.is_none() => got_output = Some(Instant::now()),
            ExecStreamEvent::Exit(_) => break,
            _ => {}
        }
    }
    got_output.context("exec produced no output")
}

pub async fn run(client: &Client, args: BenchArgs) -> Result<()> {
    client
        .health()
        .await
        .context("the daemon is not reachable (start it with `warren serve`)")?;
    let caps = match client.capabilities().await {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("bench: capabilities: {e}");
            None
        }
    };
    let selected = args.selected();
    let ctx = Ctx {
        client,
        args: &args,
        caps,
        tracker: Tracker::default(),
        runtime: None,
        labelled: !args.runtime.is_empty(),
        last_pass: true,
    };
    let mut out = Out::default();
    let mut failed = Vec::new();
    let interrupted = tokio::select! {
        _ = run_scenarios(&ctx, &selected, &mut out, &mut failed) => false,
        _ = tokio::signal::ctrl_c() => true,
    };
    ctx.tracker.cleanup(client).await;
    if interrupted {
        // A create in flight when Ctrl-C came is not tracked; density's are labelled.
        if let Ok(left) = client.list_sandboxes(&[("bench", "density")]).await {
            for sb in left {
                let _ = client.delete_sandbox(&sb.id).await;
            }
        }
        bail!("interrupted");
    }

    let report = Report {
        server: client.base_url().to_string(),
        host: host_info(),
        scenarios: selected.into_iter().collect(),
        storage_backend: ctx.caps.as_ref().map(|c| c.storage.backend.clone()),
        cgroup: ctx.caps.as_ref().map(|c| c.cgroup.clone()),
        out,
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print_report(&report);
    }
    if !failed.is_empty() {
        bail!("scenarios failed: {}", failed.join(", "));
    }
    Ok(())
}

async fn run_scenarios(
    ctx: &Ctx<'_>,
    selected: &BTreeSet<Scenario>,
    out: &mut Out,
    failed: &mut Vec<String>,
) {
    let runtimes: Vec<Option<Runtime>> = if ctx.args.runtime.is_empty() {
        vec![None]
    } else {
        let mut seen = Vec::new();
        for r in &ctx.args.runtime {
            let r = Some(Runtime::from(*r));
            if !seen.contains(&r) {
                seen.push(r);
            }
        }
        seen
    };
    for &s in selected {
        let passes: &[Option<Runtime>] = if s.per_runtime() { &runtimes } else { &[None] };
        for (i, &runtime) in passes.iter().enumerate() {
            let pass = Ctx {
                client: ctx.client,
                args: ctx.args,
                caps: ctx.caps.clone(),
                tracker: ctx.tracker.clone(),
                runtime,
                labelled: ctx.labelled && s.per_runtime(),
                last_pass: i + 1 == passes.len(),
            };
            run_scenario(&pass, s, out, failed).await;
        }
    }
}

async fn run_scenario(ctx: &Ctx<'_>, s: Scenario, out: &mut Out, failed: &mut Vec<String>) {
    let first_row = out.results.len();
    {
        let t0 = Instant::now();
        let r = match s {
            Scenario::Cold => cold::run(ctx, out).await,
            Scenario::Warm => warm::run(ctx, out).await,
            Scenario::Exec => cold::exec_round_trip(ctx, out).await,
            Scenario::Concurrent => concurrent::run(ctx, out).await,
            Scenario::Files => files::run(ctx, out).await,
            Scenario::Snapshot => snapshot::run(ctx, out).await,
            Scenario::Density => density::run(ctx, out).await,
            Scenario::Build => build::run(ctx, out).await,
            Scenario::Opensandbox => opensandbox::run(ctx, out).await,
            Scenario::E2b => e2b::run(ctx, out).await,
            Scenario::Idle => idle::run(ctx, out).await,
        };
        let mut name = format!("{s:?}").to_lowercase();
        if ctx.labelled {
            name = format!("{name} [{}]", ctx.runtime_name());
        }
        if let Err(e) = r {
            out.note(format!("{name}: failed: {e:#}"));
            failed.push(name);
        } else {
            eprintln!("bench: {name} done in {:.1} s", t0.elapsed().as_secs_f64());
        }
        if ctx.labelled {
            // The scenario's own rows say which runtime they measured; baselines none.
            for row in &mut out.results[first_row..] {
                if !row.name.starts_with(BASELINE) {
                    row.name = ctx.label(&row.name);
                }
            }
        }
        // What a failed scenario left behind is removed before the next one starts.
        ctx.tracker.cleanup(ctx.client).await;
    }
}

fn print_report(r: &Report) {
    println!(
        "host: {} cpus, {}, {} MiB, kernel {}",
        r.host.cpus, r.host.cpu_model, r.host.memory_mib, r.host.kernel
    );
    println!(
        "server: {} (storage {}, cgroup {})",
        r.server,
        r.storage_backend.as_deref().unwrap_or("?"),
        r.cgroup.as_deref().unwrap_or("?")
    );
    print!("{}", stats::format_table(&r.out.results));
    if let Some(x) = r.out.lifecycle_vs_bwrap {
        println!("lifecycle p50 / bubblewrap p50 = {x:.2} (goal ≤ 2)");
    }
    let v = &r.out.gvisor_vs_runsc;
    if !v.is_empty() {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
        println!(
            "gVisor / bare runsc (p50; budget ≤ 1.3): lifecycle {} over `runsc run`, {} over \
             run --detach + exec + delete; create {} over run --detach; exec {}; idle PSS {}",
            f(v.lifecycle),
            f(v.sandbox_lifecycle),
            f(v.create),
            f(v.exec),
            f(v.idle_pss)
        );
    }
    if let Some(d) = &r.out.density {
        print!("{}", density::format_steps(d));
    }
    for n in &r.out.notes {
        println!("note: {n}");
    }
}

/// Poll `f` every `every` until it returns `Some`, or fail after `limit`.
pub(crate) async fn poll_until<T, F, Fut>(limit: Duration, every: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("gave up after {} s", limit.as_secs());
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn scenario_selection() {
        let default = parse(&[]).unwrap().selected();
        assert_eq!(default, DEFAULT_SCENARIOS.into_iter().collect());
        assert!(!default.contains(&Scenario::Density));
        assert!(!default.contains(&Scenario::Snapshot));
        let all = parse(&["--all"]).unwrap().selected();
        assert_eq!(all.len(), 11);
        let rt = parse(&["--runtime", "native,gvisor"]).unwrap();
        assert_eq!(rt.runtime, vec![RuntimeArg::Native, RuntimeArg::Gvisor]);
        assert!(parse(&["--runtime", "firecracker"]).is_err());
        assert!(Scenario::Cold.per_runtime() && !Scenario::E2b.per_runtime());
        let some = parse(&["--scenarios", "density,cold", "--json"]).unwrap();
        assert!(some.json);
        assert_eq!(
            some.selected().into_iter().collect::<Vec<_>>(),
            vec![Scenario::Cold, Scenario::Density]
        );
        assert!(parse(&["--scenarios", "bogus"]).is_err());
        assert!(parse(&["--all", "--scenarios", "cold"]).is_err());
        let sizes = parse(&["--file-size", "4M", "--snapshot-size", "64M"]).unwrap();
        assert_eq!((sizes.file_size, sizes.snapshot_size), (4 << 20, 64 << 20));
    }

    #[test]
    fn tracker_forgets_what_is_gone() {
        let t = Tracker::default();
        t.sandbox("a");
        t.sandbox("b");
        t.sandbox_gone("a");
        t.snapshot("s");
        t.snapshot_gone("s");
        t.pool("bench");
        t.with(|x| {
            assert_eq!(x.sandboxes.iter().collect::<Vec<_>>(), vec!["b"]);
            assert!(x.snapshots.is_empty());
            assert_eq!(x.pools.len(), 1);
        });
    }
}
