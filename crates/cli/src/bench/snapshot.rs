//! snapshot: snapshot and rollback of a large workspace (default 1 GiB in 10,000 files)
//! and of a tiny one, so that the output shows whether the cost grows with the size.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use warren_api::{CreateSandboxRequest, CreateSnapshotRequest, ExecRequest};

use super::files::human_size;
use super::stats::{stat, Stat};
use super::{Ctx, Out};

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    if let Some(caps) = &ctx.caps {
        if !caps.features.snapshots || !caps.features.rollback {
            out.note("snapshot: skipped: the runtime has no snapshots/rollback");
            return Ok(());
        }
        out.note(format!(
            "snapshot: storage backend {} (reflink {})",
            caps.storage.backend, caps.storage.reflink
        ));
    }
    let args = ctx.args;
    let per_dir = args.snapshot_files.clamp(1, 100);
    let dirs = (args.snapshot_files / per_dir).max(1);
    let files = dirs * per_dir;
    let per_file = (args.snapshot_size / files).max(1);
    let label = format!("{}/{files} files", human_size(args.snapshot_size));
    let script = format!(
        "set -e; mkdir -p /workspace/big; cd /workspace/big; i=0; \
         while [ $i -lt {dirs} ]; do mkdir d$i; \
         head -c {chunk} /dev/urandom | split -b {per_file} -a 3 -d - d$i/f; \
         i=$((i+1)); done; sync",
        chunk = per_file * per_dir
    );
    with_sandbox(ctx, out, |id| {
        let (label, script) = (label.clone(), script.clone());
        async move {
            eprintln!("bench: building a {label} workspace");
            let t0 = Instant::now();
            run_sh(ctx, &id, &script, 3600).await?;
            let built = t0.elapsed();
            let check = run_sh(
                ctx,
                &id,
                "find /workspace/big -type f | wc -l; du -sk /workspace/big | cut -f1",
                600,
            )
            .await?;
            let mut nums = check.split_whitespace().map(|n| n.parse::<u64>());
            let (Some(Ok(n)), Some(Ok(kib))) = (nums.next(), nums.next()) else {
                bail!("unexpected output of the workspace check: {check:?}");
            };
            if n != files {
                bail!("the workspace has {n} files, {files} expected");
            }
            let note = format!(
                "snapshot: built {n} files, {} on disk, in {:.1} s",
                human_size(kib * 1024),
                built.as_secs_f64()
            );
            Ok((note, measure(ctx, &id, &label).await?))
        }
    })
    .await?;
    with_sandbox(ctx, out, |id| async move {
        run_sh(ctx, &id, "echo tiny > /workspace/tiny.txt", 60).await?;
        Ok((String::new(), measure(ctx, &id, "tiny, 1 file").await?))
    })
    .await
}

/// Create a sandbox, run `f` on it, delete it; `f` returns a note and rows.
async fn with_sandbox<'a, F, Fut>(ctx: &'a Ctx<'_>, out: &mut Out, f: F) -> Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(String, Vec<Stat>)>> + 'a,
{
    let req = CreateSandboxRequest {
        timeout_secs: Some(3600),
        ..ctx.create_req()
    };
    let sb = ctx.client.create_sandbox(&req).await.context("create")?;
    ctx.tracker.sandbox(&sb.id);
    let result = f(sb.id.clone()).await;
    ctx.client.delete_sandbox(&sb.id).await.context("delete")?;
    ctx.tracker.sandbox_gone(&sb.id);
    let (note, rows) = result?;
    if !note.is_empty() {
        out.note(note);
    }
    out.results.extend(rows);
    Ok(())
}

async fn run_sh(ctx: &Ctx<'_>, id: &str, script: &str, timeout_secs: u64) -> Result<String> {
    let req = ExecRequest {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        timeout_secs: Some(timeout_secs),
        ..Default::default()
    };
    let r = ctx.client.exec(id, &req).await.context("exec sh")?;
    if r.exit_code != 0 {
        bail!(
            "`sh -c {script:?}` exited {}: {}",
            r.exit_code,
            r.stderr.trim()
        );
    }
    Ok(r.stdout)
}

/// `--snapshot-runs` snapshots (all but the first deleted again, untimed), then as many
/// rollbacks to the first one.
async fn measure(ctx: &Ctx<'_>, id: &str, label: &str) -> Result<Vec<Stat>> {
    let (client, runs) = (ctx.client, ctx.args.snapshot_runs.max(1));
    eprintln!("bench: snapshot and rollback x{runs} ({label})");
    let mut keep: Option<String> = None;
    let (mut snaps, mut rollbacks): (Vec<Duration>, Vec<Duration>) = (vec![], vec![]);
    let mut size = 0;
    let result = async {
        for _ in 0..runs {
            let t0 = Instant::now();
            let snap = client
                .create_snapshot(id, &CreateSnapshotRequest { name: None })
                .await
                .context("snapshot")?;
            snaps.push(t0.elapsed());
            ctx.tracker.snapshot(&snap.id);
            size = snap.size_bytes;
            if keep.is_none() {
                keep = Some(snap.id);
            } else {
                client
                    .delete_snapshot(&snap.id)
                    .await
                    .context("delete snapshot")?;
                ctx.tracker.snapshot_gone(&snap.id);
            }
        }
        let snap = keep.clone().unwrap_or_default();
        for _ in 0..runs {
            let t0 = Instant::now();
            client.rollback(id, &snap).await.context("rollback")?;
            rollbacks.push(t0.elapsed());
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(snap) = keep {
        client
            .delete_snapshot(&snap)
            .await
            .context("delete snapshot")?;
        ctx.tracker.snapshot_gone(&snap);
    }
    result?;
    Ok(vec![
        stat(&format!("snapshot: create ({label})"), snaps)
            .with_extra(size as f64 / (1024.0 * 1024.0), "MiB held"),
        stat(&format!("snapshot: rollback ({label})"), rollbacks),
    ])
}
