//! concurrent: many clients, each with its own connection pool, running `true` in a loop
//! on a few shared sandboxes for a fixed time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use warren_client::Client;

use super::stats::stat;
use super::{exec_req, Ctx, Out};

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let args = ctx.args;
    let (clients, n) = (args.clients.max(1), args.concurrent_sandboxes.max(1));
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let sb = ctx
            .client
            .create_sandbox(&ctx.create_req())
            .await
            .context("create")?;
        ctx.tracker.sandbox(&sb.id);
        ids.push(sb.id);
    }
    let result = measure(ctx, out, &ids, clients).await;
    for id in &ids {
        ctx.client.delete_sandbox(id).await.context("delete")?;
        ctx.tracker.sandbox_gone(id);
    }
    result
}

async fn measure(ctx: &Ctx<'_>, out: &mut Out, ids: &[String], clients: usize) -> Result<()> {
    let secs = ctx.args.concurrent_secs.max(1);
    eprintln!(
        "bench: {clients} clients running `true` on {} sandboxes for {secs} s",
        ids.len()
    );
    let base = ctx.client.base_url().to_string();
    // Every client connects and runs one exec first, so that the timed part starts with
    // all of them ready.
    let start = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let client = Client::new(&base)?;
        let id = ids[i % ids.len()].clone();
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            let req = exec_req(&["true"]);
            let warm = client.exec(&id, &req).await;
            start.wait().await;
            warm.context("warm-up exec")?;
            let deadline = Instant::now() + Duration::from_secs(secs);
            let (mut samples, mut errors, mut first_error) = (Vec::new(), 0usize, None);
            while Instant::now() < deadline {
                let t0 = Instant::now();
                match client.exec(&id, &req).await {
                    Ok(r) if r.exit_code == 0 => samples.push(t0.elapsed()),
                    Ok(r) => {
                        errors += 1;
                        first_error.get_or_insert(format!("`true` exited {}", r.exit_code));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                }
            }
            anyhow::Ok((samples, errors, first_error))
        }));
    }
    start.wait().await;
    let t0 = Instant::now();
    let (mut all, mut errors, mut first_error) = (Vec::new(), 0, None);
    for t in tasks {
        let (samples, e, first) = t.await.context("client task")??;
        all.extend(samples);
        errors += e;
        first_error = first_error.or(first);
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let rate = all.len() as f64 / elapsed;
    if errors > 0 {
        out.note(format!(
            "concurrent: {errors} execs failed (first: {})",
            first_error.unwrap_or_default()
        ));
    }
    out.results.push(
        stat(&format!("concurrent: {clients} clients × exec `true`"), all)
            .with_extra(rate, "execs/s"),
    );
    Ok(())
}
