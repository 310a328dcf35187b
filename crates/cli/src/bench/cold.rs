//! cold: create → first exec output → delete, one after another, with the bubblewrap and
//! runsc baselines of the same work; exec: round trip of `true` on a running sandbox.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use warren_api::CreateSandboxRequest;

use super::stats::stat;
use super::{baseline, exec_req, first_output, Ctx, Out};

pub const LIFECYCLE: &str = "cold: create → first output → delete";
/// The same with `network.mode = isolated` (interleaved with the default's runs, so both
/// see the same machine); the default mode is `nat` unless the daemon says otherwise.
pub const LIFECYCLE_ISOLATED: &str = "cold, isolated network: create → first output → delete";
/// The same from the image of `--image` (interleaved too).
pub const LIFECYCLE_IMAGE: &str = "cold, --image: create → first output → delete";

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let runs = ctx.args.runs;
    eprintln!("bench: cold lifecycle x{runs}");
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
        ..Default::default()
    };
    let default_req = CreateSandboxRequest::default();
    let image_req = ctx.args.image.as_ref().map(|image| CreateSandboxRequest {
        image: Some(image.clone()),
        ..Default::default()
    });
    let mut from_image = Vec::new();
    let mut reqs = vec![&default_req, &iso_req];
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
        stat(LIFECYCLE_ISOLATED, isolated),
    ]);
    if let Some(image) = &ctx.args.image {
        out.results.push(stat(LIFECYCLE_IMAGE, from_image));
        if let (Some(a), Some(b)) = (
            out.stat(LIFECYCLE_IMAGE).and_then(|s| s.p50_ms),
            out.stat(LIFECYCLE).and_then(|s| s.p50_ms),
        ) {
            out.note(format!(
                "cold: image {image} costs {:+.2} ms p50 over the default image",
                a - b
            ));
        }
    }
    if let (Some(a), Some(b)) = (
        out.stat(LIFECYCLE).and_then(|s| s.p50_ms),
        out.stat(LIFECYCLE_ISOLATED).and_then(|s| s.p50_ms),
    ) {
        out.note(format!(
            "cold: the default network mode costs {:+.2} ms p50 over isolated",
            a - b
        ));
    }

    if ctx.args.baseline_runs == 0 {
        return Ok(());
    }
    let ours = out.stat(LIFECYCLE).and_then(|s| s.p50_ms);
    match baseline::bwrap(ctx.args.baseline_runs).await {
        Ok(b) => {
            out.lifecycle_vs_bwrap = ours.zip(b.p50_ms).map(|(a, b)| a / b);
            out.results.push(b);
        }
        Err(e) => out.note(format!("bwrap baseline skipped: {e:#}")),
    }
    match baseline::runsc(ctx.args.baseline_runs).await {
        Ok(Some(b)) => {
            out.lifecycle_vs_runsc = ours.zip(b.p50_ms).map(|(a, b)| a / b);
            out.results.push(b);
        }
        Ok(None) => out.note("runsc: not installed"),
        Err(e) => out.note(format!("runsc baseline skipped: {e:#}")),
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

/// Non-streaming exec of `true` on one running sandbox, after 20 warm-up calls.
pub async fn exec_round_trip(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let (client, runs) = (ctx.client, ctx.args.exec_runs);
    eprintln!("bench: exec round trip x{runs}");
    let sb = client
        .create_sandbox(&CreateSandboxRequest::default())
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
    out.results.push(stat("exec round trip (`true`)", execs));
    Ok(())
}
