//! cold: create → first exec output → delete, one after another, with the bubblewrap and
//! bare `runsc run` baselines of the same work; exec: round trip of `true` on a running
//! sandbox, with `runsc exec` as gVisor's baseline.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use warren_api::CreateSandboxRequest;

use super::stats::stat;
use super::{baseline, exec_req, first_output, Ctx, Out};

/// Iterations of bare runsc's sandbox lifecycle at most (each `delete --force` takes about
/// 2 s here).
const SANDBOX_BASELINE_RUNS: usize = 20;

pub const LIFECYCLE: &str = "cold: create → first output → delete";
/// The same with `network.mode = isolated` (interleaved with the default's runs, so both
/// see the same machine); the default mode is `nat` unless the daemon says otherwise.
pub const LIFECYCLE_ISOLATED: &str = "cold, isolated network: create → first output → delete";
/// The same from the image of `--image` (interleaved too).
pub const LIFECYCLE_IMAGE: &str = "cold, --image: create → first output → delete";

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let runs = ctx.args.runs;
    eprintln!("bench: cold lifecycle x{runs}{}", ctx.label(""));
    let mut total = Vec::with_capacity(runs);
    let mut create = Vec::with_capacity(runs);
    let mut first = Vec::with_capacity(runs);
    let mut delete = Vec::with_capacity(runs);
    let mut from_pool = 0;
    let mut isolated = Vec::with_capacity(runs);
    let iso_req = CreateSandboxRequest {
        network: Some(warren_api::NetworkRequest {
            mode: Some(warren_api::NetworkMode::Isolated),
            egress: None,
        }),
        ..ctx.create_req()
    };
    let default_req = ctx.create_req();
    let image_req = ctx.args.image.as_ref().map(|image| CreateSandboxRequest {
        image: Some(image.clone()),
        ..ctx.create_req()
    });
    let mut from_image = Vec::new();
    // A runtime without `nat` creates isolated sandboxes by default: nothing to compare.
    let mut reqs = if ctx.has_nat() {
        vec![&default_req, &iso_req]
    } else {
        vec![&default_req]
    };
    if let Some(r) = &image_req {
        reqs.push(r);
    }
    for i in 0..runs {
        // Which goes first rotates: a delete leaves kernel work behind (a network
        // namespace is torn down asynchronously) that the next create pays for.
        let mut order = reqs.clone();
        order.rotate_left(i % reqs.len());
        for req in order {
            let (t, sb_pool) = lifecycle(ctx, req).await?;
            if std::ptr::eq(req, &iso_req) {
                isolated.push(t[3] - t[0]);
                continue;
            }
            if image_req.as_ref().is_some_and(|r| std::ptr::eq(req, r)) {
                from_image.push(t[3] - t[0]);
                continue;
            }
            if sb_pool {
                from_pool += 1;
            }
            total.push(t[3] - t[0]);
            create.push(t[1] - t[0]);
            first.push(t[2] - t[1]);
            delete.push(t[3] - t[2]);
        }
    }
    if from_pool > 0 {
        out.note(format!(
            "cold: {from_pool} of {runs} creates were served by a warm pool of the daemon \
             (a pool with the default spec exists): these are not cold starts"
        ));
    }
    out.results.extend([
        stat(LIFECYCLE, total),
        stat("  create (201)", create),
        stat("  exec → first output", first),
        stat("  delete (204)", delete),
    ]);
    if !isolated.is_empty() {
        out.results.push(stat(LIFECYCLE_ISOLATED, isolated));
    }
    // Rows are labelled with the runtime after the scenario (see `run_scenario`).
    let ours = out.stat(LIFECYCLE).and_then(|s| s.p50_ms);
    let create_p50 = out.stat("  create (201)").and_then(|s| s.p50_ms);
    let figures = out.figures(ctx.runtime_name());
    figures.lifecycle_p50_ms = ours;
    figures.create_p50_ms = create_p50;
    if let Some(image) = &ctx.args.image {
        out.results.push(stat(LIFECYCLE_IMAGE, from_image));
        if let (Some(a), Some(b)) = (out.stat(LIFECYCLE_IMAGE).and_then(|s| s.p50_ms), ours) {
            out.note(format!(
                "cold: image {image} costs {:+.2} ms p50 over the default image{}",
                a - b,
                ctx.label("")
            ));
        }
    }
    if let (Some(a), Some(b)) = (ours, out.stat(LIFECYCLE_ISOLATED).and_then(|s| s.p50_ms)) {
        out.note(format!(
            "cold: the default network mode costs {:+.2} ms p50 over isolated{}",
            a - b,
            ctx.label("")
        ));
    }

    if ctx.args.baseline_runs == 0 || !ctx.last_pass {
        return Ok(());
    }
    // bubblewrap against the native runtime (the default's figures when unlabelled).
    let native = out
        .by_runtime
        .get("native")
        .and_then(|f| f.lifecycle_p50_ms)
        .or(if ctx.labelled { None } else { ours });
    match baseline::bwrap(ctx.args.baseline_runs).await {
        Ok(b) => {
            out.lifecycle_vs_bwrap = native.zip(b.p50_ms).map(|(a, b)| a / b);
            out.results.push(b);
        }
        Err(e) => out.note(format!("bwrap baseline skipped: {e:#}")),
    }
    let runsc = match baseline::Runsc::find() {
        Ok(r) => r,
        Err(why) => {
            out.note(format!("runsc baseline skipped: {why}"));
            return Ok(());
        }
    };
    match runsc.lifecycle(ctx.args.baseline_runs).await {
        Ok(b) => {
            out.gvisor_vs_runsc.lifecycle = out.vs_runsc(|f| f.lifecycle_p50_ms, b.p50_ms);
            out.results.push(b);
        }
        Err(e) => out.note(format!("runsc run baseline skipped: {e:#}")),
    }
    // `delete --force` takes seconds: fewer runs.
    match runsc
        .sandbox_lifecycle(ctx.args.baseline_runs.min(SANDBOX_BASELINE_RUNS))
        .await
    {
        Ok(rows) => {
            let (total, create) = (rows[0].p50_ms, rows[1].p50_ms);
            out.gvisor_vs_runsc.sandbox_lifecycle = out.vs_runsc(|f| f.lifecycle_p50_ms, total);
            out.gvisor_vs_runsc.create = out.vs_runsc(|f| f.create_p50_ms, create);
            out.results.extend(rows);
        }
        Err(e) => out.note(format!("runsc sandbox baseline skipped: {e:#}")),
    }
    Ok(())
}

/// One create → first output → delete: the four instants, and whether a pool served it.
pub(crate) async fn lifecycle(
    ctx: &Ctx<'_>,
    req: &CreateSandboxRequest,
) -> Result<([Instant; 4], bool)> {
    let client = ctx.client;
    let t0 = Instant::now();
    let sb = client.create_sandbox(req).await.context("create")?;
    let t1 = Instant::now();
    ctx.tracker.sandbox(&sb.id);
    let t2 = first_output(client, &sb.id).await?;
    client.delete_sandbox(&sb.id).await.context("delete")?;
    let t3 = Instant::now();
    ctx.tracker.sandbox_gone(&sb.id);
    Ok(([t0, t1, t2, t3], sb.pool.is_some()))
}

/// Non-streaming exec of `true` on one running sandbox, after 20 warm-up calls; on the
/// last pass, `runsc exec` of the same on a bare runsc container.
pub async fn exec_round_trip(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let (client, runs) = (ctx.client, ctx.args.exec_runs);
    eprintln!("bench: exec round trip x{runs}{}", ctx.label(""));
    let sb = client
        .create_sandbox(&ctx.create_req())
        .await
        .context("create")?;
    ctx.tracker.sandbox(&sb.id);
    let req = exec_req(&["true"]);
    let mut execs = Vec::with_capacity(runs);
    for i in 0..runs + 20 {
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
    ctx.tracker.sandbox_gone(&sb.id);
    let row = stat("exec round trip (`true`)", execs);
    out.figures(ctx.runtime_name()).exec_p50_ms = row.p50_ms;
    out.results.push(row);
    if ctx.args.baseline_runs == 0 || !ctx.last_pass {
        return Ok(());
    }
    match baseline::Runsc::find() {
        Ok(runsc) => match runsc.exec_round_trip(ctx.args.baseline_runs).await {
            Ok(b) => {
                out.gvisor_vs_runsc.exec = out.vs_runsc(|f| f.exec_p50_ms, b.p50_ms);
                out.results.push(b);
            }
            Err(e) => out.note(format!("runsc exec baseline skipped: {e:#}")),
        },
        Err(why) => out.note(format!("runsc exec baseline skipped: {why}")),
    }
    Ok(())
}
