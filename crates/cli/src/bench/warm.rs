//! warm: `PUT /v1/pools/bench`, then claims (`POST /v1/sandboxes {"pool":"bench"}`) →
//! first exec output, each once the pool is full again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use warren_api::{CreateSandboxRequest, PoolSpec};
use warren_client::Error;

use super::stats::{ms, stat};
use super::{first_output, poll_until, Ctx, Out};

const POOL: &str = "bench";

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let client = ctx.client;
    if ctx.caps.as_ref().is_some_and(|c| !c.features.pools) {
        out.note("warm: skipped: no pools (features.pools is false)");
        return Ok(());
    }
    let size = ctx.args.warm_pool_size.max(1);
    let spec = PoolSpec {
        size,
        runtime: ctx.runtime,
        ..Default::default()
    };
    let t0 = Instant::now();
    match client.put_pool(POOL, &spec).await {
        Ok(_) => {}
        Err(Error::Api { status, .. }) if status == 404 || status == 405 => {
            out.note("warm: skipped: no pools");
            return Ok(());
        }
        Err(e) => return Err(e).context("PUT /v1/pools/bench"),
    }
    ctx.tracker.pool(POOL);
    let result = claims(ctx, out, size, t0).await;
    client
        .delete_pool(POOL)
        .await
        .context("DELETE /v1/pools/bench")?;
    ctx.tracker.pool_gone(POOL);
    result
}

async fn claims(ctx: &Ctx<'_>, out: &mut Out, size: u32, defined: Instant) -> Result<()> {
    let (client, runs) = (ctx.client, ctx.args.warm_runs);
    wait_full(ctx, size).await?;
    out.note(format!(
        "warm: the pool of {size} filled {:.0} ms after PUT /v1/pools/{POOL}",
        ms(defined.elapsed())
    ));
    eprintln!("bench: warm claims x{runs}");
    let req = CreateSandboxRequest {
        pool: Some(POOL.to_string()),
        ..ctx.create_req()
    };
    let (mut claim, mut total, mut first) = (Vec::new(), Vec::new(), Vec::new());
    let mut misses = 0;
    for _ in 0..runs {
        wait_full(ctx, size).await?;
        let t0 = Instant::now();
        let sb = client.create_sandbox(&req).await.context("claim")?;
        let t1 = Instant::now();
        ctx.tracker.sandbox(&sb.id);
        let t2 = first_output(client, &sb.id).await?;
        client.delete_sandbox(&sb.id).await.context("delete")?;
        ctx.tracker.sandbox_gone(&sb.id);
        if sb.pool.as_deref() != Some(POOL) {
            misses += 1; // served cold: not a claim
            continue;
        }
        claim.push(t1 - t0);
        total.push(t2 - t0);
        first.push(t2 - t1);
    }
    if misses > 0 {
        out.note(format!(
            "warm: {misses} of {runs} creates found the pool empty and were served cold \
             (left out of the warm rows)"
        ));
    }
    out.results.extend([
        stat("warm: claim → first output", total),
        stat("  claim (201)", claim),
        stat("  exec → first output", first),
    ]);
    Ok(())
}

/// Wait until the pool holds `size` ready sandboxes (`GET /v1/pools`).
async fn wait_full(ctx: &Ctx<'_>, size: u32) -> Result<()> {
    let waited = poll_until(
        Duration::from_secs(60),
        Duration::from_millis(5),
        || async {
            let pools = ctx.client.list_pools().await.context("GET /v1/pools")?;
            let pool = pools
                .iter()
                .find(|p| p.name == POOL)
                .context("the bench pool disappeared")?;
            Ok((pool.ready >= size).then_some(()))
        },
    )
    .await;
    if let Err(e) = waited {
        let why = match ctx.client.get_pool(POOL).await {
            Ok(p) => format!(
                "ready {}, filling {}, last_error {:?}",
                p.ready, p.filling, p.last_error
            ),
            Err(e) => e.to_string(),
        };
        return Err(e.context(format!(
            "waiting for the pool to hold {size} ready sandboxes ({why})"
        )));
    }
    Ok(())
}
