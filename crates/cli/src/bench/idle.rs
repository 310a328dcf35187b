//! idle: host memory of sandboxes that exist and do nothing: `--idle-sandboxes` of them,
//! each after one exec, measured from their cgroups (the charge, and the PSS of their
//! processes); on the last pass, a detached bare `runsc run` container's as gVisor's
//! baseline.

use std::time::Duration;

use anyhow::{Context, Result};

use super::baseline;
use super::density::{measure_memory, mib};
use super::memory::CgroupRoot;
use super::stats::Stat;
use super::{exec_req, Ctx, Out};

/// How long the sandboxes idle before they are measured (their agent's and, on gVisor,
/// the sentry's start-up garbage settles).
const SETTLE: Duration = Duration::from_secs(2);

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let n = ctx.args.idle_sandboxes.max(1);
    eprintln!("bench: idle memory of {n} sandboxes{}", ctx.label(""));
    let mut ids = Vec::with_capacity(n);
    let made = async {
        for _ in 0..n {
            let sb = ctx
                .client
                .create_sandbox(&ctx.create_req())
                .await
                .context("create")?;
            ctx.tracker.sandbox(&sb.id);
            ids.push(sb.id.clone());
            ctx.client
                .exec(&sb.id, &exec_req(&["true"]))
                .await
                .context("exec")?;
        }
        anyhow::Ok(())
    }
    .await;
    let measured = match made {
        Ok(()) => {
            tokio::time::sleep(SETTLE).await;
            Ok(measure_memory(ctx, &ids, None))
        }
        Err(e) => Err(e),
    };
    for id in &ids {
        ctx.client.delete_sandbox(id).await.context("delete")?;
        ctx.tracker.sandbox_gone(id);
    }
    let mem = measured?;
    if let Some(e) = &mem.pss_error {
        out.note(format!("idle{}: {e}", ctx.label("")));
    }
    if let Some(v) = mem.cgroup_usage_per_sandbox_mib {
        out.results
            .push(Stat::value("idle: cgroup memory per sandbox", n, v, "MiB"));
    }
    if let Some(v) = mem.pss_per_sandbox_mib {
        out.results
            .push(Stat::value("idle: PSS per sandbox", n, v, "MiB"));
    }
    out.results.push(Stat::value(
        "idle: host processes per sandbox",
        n,
        mem.processes as f64 / n as f64,
        "processes",
    ));
    out.figures(ctx.runtime_name()).idle_pss_mib = mem.pss_per_sandbox_mib;

    if ctx.args.baseline_runs == 0 || !ctx.last_pass {
        return Ok(());
    }
    let runsc = match baseline::Runsc::find() {
        Ok(r) => r,
        Err(why) => {
            out.note(format!("idle: runsc baseline skipped: {why}"));
            return Ok(());
        }
    };
    let root = CgroupRoot::for_layout(ctx.caps.as_ref().map(|c| c.cgroup.as_str()));
    match runsc.idle(&root, SETTLE).await {
        Ok((pss, usage)) => {
            if let Some(b) = usage {
                out.results.push(Stat::value(
                    "baseline: bare runsc container, cgroup memory",
                    1,
                    b as f64 / (1 << 20) as f64,
                    "MiB",
                ));
            }
            let pss_mib = (pss.unreadable == 0).then(|| mib(pss.pss_kib));
            if let Some(v) = pss_mib {
                out.results.push(Stat::value(
                    "baseline: bare runsc container, PSS",
                    1,
                    v,
                    "MiB",
                ));
            }
            out.results.push(Stat::value(
                "baseline: bare runsc container, host processes",
                1,
                (pss.processes + pss.unreadable) as f64,
                "processes",
            ));
            out.gvisor_vs_runsc.idle_pss = out.vs_runsc(|f| f.idle_pss_mib, pss_mib);
        }
        Err(e) => out.note(format!("idle: runsc baseline skipped: {e:#}")),
    }
    Ok(())
}
