//! Peers doing the cold lifecycle's work without an API: create an isolated environment,
//! run `true` in it, tear it down.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::stats::{stat, Stat};

/// `bwrap --unshare-all` running `true` on the host's /usr, the same image Warren uses.
pub async fn bwrap(runs: usize) -> Result<Stat> {
    let bwrap = ["/usr/bin/bwrap", "/bin/bwrap"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("bwrap"))
        .context("bwrap not installed (apt-get install bubblewrap)")?;
    let mut argv: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    .map(String::from)
    .to_vec();
    for link in ["bin", "sbin", "lib", "lib64"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(link)) {
            argv.push("--symlink".into());
            argv.push(target.to_string_lossy().into_owned());
            argv.push(format!("/{link}"));
        }
    }
    argv.push("true".into());
    eprintln!("bench: bubblewrap baseline x{runs}");
    let samples = spawn_runs(&bwrap, &argv, runs).await?;
    Ok(stat("baseline: bwrap --unshare-all true", samples))
}

/// gVisor: `runsc --rootless --network=none do true`; `None` when runsc is not on PATH.
pub async fn runsc(runs: usize) -> Result<Option<Stat>> {
    let Some(runsc) = which("runsc") else {
        return Ok(None);
    };
    let argv: Vec<String> = ["--rootless", "--network=none", "do", "true"]
        .map(String::from)
        .to_vec();
    eprintln!("bench: runsc baseline x{runs}");
    let samples = spawn_runs(&runsc, &argv, runs).await?;
    Ok(Some(stat(
        "baseline: runsc --rootless --network=none do true",
        samples,
    )))
}

async fn spawn_runs(
    program: &Path,
    argv: &[String],
    runs: usize,
) -> Result<Vec<std::time::Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let output = tokio::process::Command::new(program)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        samples.push(t0.elapsed());
    }
    Ok(samples)
}

/// `program` in one of `$PATH`'s directories.
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}
