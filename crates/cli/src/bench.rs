//! `warren bench`: measures a running daemon through its HTTP API, with a bubblewrap
//! baseline measured in the same run. Numbers, never assertions: see docs/PERFORMANCE.md.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures::StreamExt;
use serde::Serialize;
use warren_api::{CreateSandboxRequest, ExecRequest};
use warren_client::{Client, ExecStreamEvent};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Lifecycle iterations (create → first exec output → delete).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
    /// Exec round trips of `true` on one running sandbox.
    #[arg(long, default_value_t = 1000)]
    pub exec_runs: usize,
    /// Baseline iterations of `bwrap --unshare-all ... true` (0 to skip).
    #[arg(long, default_value_t = 200)]
    pub baseline_runs: usize,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Stat {
    name: String,
    runs: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

fn stat(name: &str, mut samples: Vec<Duration>) -> Stat {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        ms(samples[i.min(samples.len() - 1)])
    };
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64
    };
    Stat {
        name: name.to_string(),
        runs: samples.len(),
        p50_ms: pick(0.5),
        p90_ms: pick(0.9),
        p99_ms: pick(0.99),
        mean_ms: mean,
    }
}

#[derive(Debug, Serialize)]
struct Report {
    server: String,
    host: HostInfo,
    results: Vec<Stat>,
    /// Warren lifecycle p50 divided by bubblewrap's (goal ≤ 2).
    lifecycle_vs_bwrap: Option<f64>,
}

#[derive(Debug, Serialize)]
struct HostInfo {
    cpus: usize,
    kernel: String,
    cpu_model: String,
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
    HostInfo {
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        kernel,
        cpu_model,
    }
}

fn exec_req(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub async fn run(client: &Client, args: BenchArgs) -> Result<()> {
    client
        .health()
        .await
        .context("the daemon is not reachable (start it with `warren serve`)")?;
    let progress = |what: &str| eprintln!("bench: {what}");

    // 1. Cold lifecycle through the API.
    progress(&format!("lifecycle x{}", args.runs));
    let mut total = Vec::with_capacity(args.runs);
    let mut create = Vec::with_capacity(args.runs);
    let mut first_output = Vec::with_capacity(args.runs);
    let mut delete = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t0 = Instant::now();
        let sb = client
            .create_sandbox(&CreateSandboxRequest::default())
            .await
            .context("create")?;
        let t1 = Instant::now();
        let mut stream = client
            .exec_stream(&sb.id, &exec_req(&["echo", "ready"]))
            .await
            .context("exec")?;
        let mut got_output = None;
        while let Some(ev) = stream.next().await {
            match ev.context("exec stream")? {
                ExecStreamEvent::Stdout(_) if got_output.is_none() => {
                    got_output = Some(Instant::now())
                }
                ExecStreamEvent::Exit(_) => break,
                _ => {}
            }
        }
        let Some(t2) = got_output else {
            bail!("exec produced no output");
        };
        drop(stream);
        client.delete_sandbox(&sb.id).await.context("delete")?;
        let t3 = Instant::now();
        total.push(t3 - t0);
        create.push(t1 - t0);
        first_output.push(t2 - t1);
        delete.push(t3 - t2);
    }

    // 2. Exec round trip on a running sandbox.
    progress(&format!("exec round trip x{}", args.exec_runs));
    let sb = client
        .create_sandbox(&CreateSandboxRequest::default())
        .await
        .context("create")?;
    let req = exec_req(&["true"]);
    let mut execs = Vec::with_capacity(args.exec_runs);
    for i in 0..args.exec_runs + 20 {
        let t0 = Instant::now();
        let r = client.exec(&sb.id, &req).await.context("exec true")?;
        if r.exit_code != 0 {
            bail!("`true` exited {}", r.exit_code);
        }
        if i >= 20 {
            execs.push(t0.elapsed()); // the first 20 warm up connections and caches
        }
    }
    client.delete_sandbox(&sb.id).await.context("delete")?;

    let mut results = vec![
        stat("lifecycle: create → first output → delete", total),
        stat("  create (201)", create),
        stat("  exec → first output", first_output),
        stat("  delete (204)", delete),
        stat("exec round trip (`true`)", execs),
    ];

    // 3. Baseline: bubblewrap on the same host image, in the same run.
    let mut ratio = None;
    if args.baseline_runs > 0 {
        match bwrap_baseline(args.baseline_runs).await {
            Ok(b) => {
                ratio = Some(results[0].p50_ms / b.p50_ms);
                results.push(b);
            }
            Err(e) => eprintln!("bench: bubblewrap baseline skipped: {e:#}"),
        }
    }

    let report = Report {
        server: client.base_url().to_string(),
        host: host_info(),
        results,
        lifecycle_vs_bwrap: ratio,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "host: {} cpus, {}, kernel {}",
        r.host.cpus, r.host.cpu_model, r.host.kernel
    );
    println!(
        "{:<46} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms"
    );
    for s in &r.results {
        println!(
            "{:<46} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            s.name, s.runs, s.p50_ms, s.p90_ms, s.p99_ms, s.mean_ms
        );
    }
    if let Some(x) = r.lifecycle_vs_bwrap {
        println!("lifecycle p50 / bubblewrap p50 = {x:.2} (goal ≤ 2)");
    }
}

/// `bwrap --unshare-all` running `true` on the host's /usr, the same image Warren uses.
async fn bwrap_baseline(runs: usize) -> Result<Stat> {
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("bwrap not installed (apt-get install bubblewrap)")?;
    let mut argv: Vec<String> = vec![
        "--unshare-all".into(),
        "--die-with-parent".into(),
        "--ro-bind".into(),
        "/usr".into(),
        "/usr".into(),
        "--proc".into(),
        "/proc".into(),
        "--dev".into(),
        "/dev".into(),
        "--tmpfs".into(),
        "/tmp".into(),
    ];
    for link in ["bin", "sbin", "lib", "lib64"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(link)) {
            argv.push("--symlink".into());
            argv.push(target.to_string_lossy().into_owned());
            argv.push(format!("/{link}"));
        }
    }
    argv.push("true".into());
    progress_baseline(runs);
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let status = tokio::process::Command::new(bwrap)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .context("running bwrap")?;
        if !status.status.success() {
            bail!(
                "bwrap failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
        }
        samples.push(t0.elapsed());
    }
    Ok(stat("baseline: bwrap --unshare-all true", samples))
}

fn progress_baseline(runs: usize) {
    eprintln!("bench: bubblewrap baseline x{runs}");
}
