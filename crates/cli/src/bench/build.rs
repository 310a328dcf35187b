//! Template builds: a first build of a small Dockerfile (COPY of 1 MiB, two RUNs) from
//! `--image`, then rebuilds of the unchanged Dockerfile, every step from the build cache;
//! with buildah on the host, the same Dockerfile rebuilt by `buildah build --layers` as the
//! baseline (its own cache, same base image pulled from the same registry).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt;
use warren_client::{BuildEvent, TemplateBuild};

use super::stats::stat;
use super::{Ctx, Out};

const TEMPLATE: &str = "warren-bench-build";

fn dockerfile(base: &str) -> String {
    format!(
        "FROM {base}\nUSER root\nCOPY data /data\nRUN echo built > /built\n\
         RUN cat /data > /dev/null && echo ok > /checked\nCMD [\"cat\", \"/built\"]\n"
    )
}

/// A context directory holding `data` (1 MiB) and the Dockerfile.
fn context(dir: &Path, base: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("data"), data)?;
    std::fs::write(dir.join("Dockerfile"), dockerfile(base))?;
    Ok(())
}

fn tar(dir: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut t = tar::Builder::new(&mut buf);
        t.follow_symlinks(false);
        t.append_dir_all(".", dir)?;
        t.finish()?;
    }
    Ok(buf)
}

async fn build_once(
    ctx: &Ctx<'_>,
    dir: &Path,
    base: &str,
    no_cache: bool,
) -> Result<(Duration, usize)> {
    let body = tar(dir)?;
    let t0 = Instant::now();
    let mut events = ctx
        .client
        .build_template_events(TemplateBuild {
            name: TEMPLATE.into(),
            dockerfile: dockerfile(base),
            context: Some(warren_client::body_from_reader(std::io::Cursor::new(body))),
            no_cache,
            ..Default::default()
        })
        .await?;
    while let Some(ev) = events.next().await {
        if let BuildEvent::Done(t) = ev? {
            return Ok((t0.elapsed(), t.cached_steps));
        }
    }
    bail!("the build's event stream ended without its result")
}

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let Some(base) = ctx.args.image.clone() else {
        out.note("build: skipped: it needs --image (the FROM image, an OCI image)");
        return Ok(());
    };
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path().join("ctx");
    context(&dir, &base)?;
    let runs = ctx.args.build_runs;
    eprintln!("bench: template build from {base}, then {runs} rebuilds");
    let (first, _) = build_once(ctx, &dir, &base, true).await?;
    out.results
        .push(stat("build: first build (2 RUN, COPY 1 MiB)", vec![first]));
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (took, cached) = build_once(ctx, &dir, &base, false).await?;
        if cached != 3 {
            bail!("a rebuild took {cached} of 3 steps from the cache");
        }
        samples.push(took);
    }
    out.results
        .push(stat("build: unchanged rebuild (all steps cached)", samples));
    if let Err(e) = ctx.client.delete_template(TEMPLATE).await {
        out.note(format!("build: deleting the bench template: {e}"));
    }
    match buildah(&dir, runs).await {
        Ok(Some((first, cached))) => {
            out.results
                .push(stat("baseline: buildah build --layers, first", vec![first]));
            out.results
                .push(stat("baseline: buildah build --layers, rebuild", cached));
        }
        Ok(None) => out.note("build: no buildah on this host: no baseline"),
        Err(e) => out.note(format!("build: buildah baseline failed: {e:#}")),
    }
    Ok(())
}

/// buildah's first build and `runs` cached rebuilds of the same context, in a store of its
/// own (removed after).
async fn buildah(dir: &Path, runs: usize) -> Result<Option<(Duration, Vec<Duration>)>> {
    let Some(bin) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("buildah"))
            .find(|p| p.is_file())
    }) else {
        return Ok(None);
    };
    let store = tempfile::tempdir()?;
    std::fs::write(store.path().join("registries.conf"), "")?;
    let run = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(extra)
            .env("BUILDAH_ISOLATION", "chroot")
            .env(
                "REGISTRIES_CONFIG_PATH",
                store.path().join("registries.conf"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    };
    let dir_s = dir.to_string_lossy().into_owned();
    let build_args = [
        "build",
        "--tls-verify=false",
        "--network",
        "host",
        "--layers",
        "-t",
        "bench",
        dir_s.as_str(),
    ];
    let once = || async {
        let t0 = Instant::now();
        let o = run(&build_args).output().await?;
        if !o.status.success() {
            bail!(
                "buildah build: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Ok::<_, anyhow::Error>(t0.elapsed())
    };
    let first = once().await?;
    let mut cached = Vec::with_capacity(runs);
    for _ in 0..runs {
        cached.push(once().await?);
    }
    let _ = run(&["rmi", "-a", "-f"]).output().await;
    Ok(Some((first, cached)))
}
