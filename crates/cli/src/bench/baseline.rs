//! Peers doing Warren's work without an API: bubblewrap creating an isolated environment,
//! running `true` in it and tearing it down; bare gVisor (`runsc`) running a command,
//! exec'ing into a container, and idling.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::memory::{procs_recursive, sum_pss, CgroupRoot, PssSum};
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

/// Bare gVisor: an OCI bundle holding the host's `/usr` (what Warren's `host` image is),
/// run by `runsc` with the flags Warren's gVisor sandboxes get (`--platform=ptrace
/// --network=none --ignore-cgroups`), in a scratch directory removed afterwards.
pub struct Runsc {
    exe: PathBuf,
}

/// A bundle (`<dir>/bundle`) and runsc's state (`<dir>/state`) for one baseline.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn new(name: &str, args: &[&str]) -> Result<Bundle> {
        let dir =
            std::env::temp_dir().join(format!("warren-bench-runsc-{name}-{}", std::process::id()));
        let bundle = Bundle { dir };
        bundle
            .write(args)
            .with_context(|| format!("making the runsc bundle in {}", bundle.dir.display()))?;
        Ok(bundle)
    }

    fn write(&self, args: &[&str]) -> std::io::Result<()> {
        let _ = std::fs::remove_dir_all(&self.dir);
        let rootfs = self.dir.join("bundle/rootfs");
        for d in ["usr", "proc", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::create_dir_all(self.dir.join("state"))?;
        for link in ["bin", "sbin", "lib", "lib64"] {
            if let Ok(target) = std::fs::read_link(Path::new("/").join(link)) {
                std::os::unix::fs::symlink(target, rootfs.join(link))?;
            }
        }
        let config = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
                "cwd": "/",
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "bench",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/usr", "type": "bind", "source": "/usr",
                 "options": ["rbind", "ro"]},
            ],
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            ]},
        });
        std::fs::write(self.dir.join("bundle/config.json"), config.to_string())
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Runsc {
    /// runsc, if installed and usable (it needs root without `--rootless`).
    pub fn find() -> Result<Runsc, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root (runsc run without --rootless)".into());
        }
        let exe = which("runsc")
            .or_else(|| Some(PathBuf::from("/usr/bin/runsc")).filter(|p| p.is_file()))
            .ok_or("runsc is not installed (apt-get install runsc)")?;
        Ok(Runsc { exe })
    }

    fn args(&self, b: &Bundle, cmd: &[&str]) -> Vec<String> {
        let mut v = vec![
            format!("--root={}", b.dir.join("state").display()),
            "--platform=ptrace".into(),
            "--network=none".into(),
            "--ignore-cgroups".into(),
        ];
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    }

    /// `runsc run` of `echo ready` (create, start, wait, delete): the cold lifecycle's work.
    pub async fn lifecycle(&self, runs: usize) -> Result<Stat> {
        let b = Bundle::new("run", &["echo", "ready"])?;
        let bundle = b.dir.join("bundle").display().to_string();
        eprintln!("bench: runsc run baseline x{runs}");
        let mut samples = Vec::with_capacity(runs);
        for i in 0..runs {
            let argv = self.args(&b, &["run", "--bundle", &bundle, &format!("bench-{i}")]);
            let t0 = Instant::now();
            let out = run(&self.exe, &argv).await?;
            samples.push(t0.elapsed());
            if !String::from_utf8_lossy(&out).contains("ready") {
                bail!(
                    "runsc run printed {:?}, not ready",
                    String::from_utf8_lossy(&out)
                );
            }
        }
        Ok(stat(
            "baseline: runsc run (echo ready), bare gVisor",
            samples,
        ))
    }

    /// What a sandbox platform on bare runsc does for create → first output → delete:
    /// `run --detach` of an idle container, `exec echo ready`, `delete --force`. Rows: the
    /// whole, then each step.
    pub async fn sandbox_lifecycle(&self, runs: usize) -> Result<Vec<Stat>> {
        let b = Bundle::new("sandbox", &["sleep", "infinity"])?;
        eprintln!("bench: runsc sandbox lifecycle baseline x{runs}");
        let (mut total, mut start, mut exec, mut delete) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs {
            let id = format!("bench-sb-{i}");
            let t0 = Instant::now();
            self.start(&b, &id, None).await?;
            let t1 = Instant::now();
            let said = run(&self.exe, &self.args(&b, &["exec", &id, "echo", "ready"])).await;
            let t2 = Instant::now();
            run(&self.exe, &self.args(&b, &["delete", "--force", &id])).await?;
            let t3 = Instant::now();
            if !String::from_utf8_lossy(&said?).contains("ready") {
                bail!("runsc exec printed no ready");
            }
            total.push(t3 - t0);
            start.push(t1 - t0);
            exec.push(t2 - t1);
            delete.push(t3 - t2);
        }
        Ok(vec![
            stat(
                "baseline: runsc run --detach → exec → delete --force, bare gVisor",
                total,
            ),
            stat("baseline:   runsc run --detach", start),
            stat("baseline:   runsc exec (echo ready)", exec),
            stat("baseline:   runsc delete --force", delete),
        ])
    }

    /// `runsc exec <id> true` on a detached container, after 20 warm-up calls.
    pub async fn exec_round_trip(&self, runs: usize) -> Result<Stat> {
        let b = Bundle::new("exec", &["sleep", "infinity"])?;
        self.start(&b, "bench-exec", None).await?;
        eprintln!("bench: runsc exec baseline x{runs}");
        let measured = async {
            let argv = self.args(&b, &["exec", "bench-exec", "true"]);
            let mut samples = Vec::with_capacity(runs);
            for i in 0..runs + 20 {
                let t0 = Instant::now();
                run(&self.exe, &argv).await?;
                if i >= 20 {
                    samples.push(t0.elapsed());
                }
            }
            Ok(stat("baseline: runsc exec (true), bare gVisor", samples))
        }
        .await;
        self.delete(&b, "bench-exec").await;
        measured
    }

    /// A detached idle container (`sleep infinity`) whose processes are in `cgroup` (made
    /// here, removed after): their PSS and the cgroup's usage, after `settle`.
    pub async fn idle(
        &self,
        root: &CgroupRoot,
        settle: std::time::Duration,
    ) -> Result<(PssSum, Option<u64>)> {
        let b = Bundle::new("idle", &["sleep", "infinity"])?;
        let cgroup = root
            .dir
            .join(format!("warren-bench-runsc-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup).with_context(|| format!("making {}", cgroup.display()))?;
        let measured = async {
            self.start(&b, "bench-idle", Some(&cgroup)).await?;
            tokio::time::sleep(settle).await;
            let pids = procs_recursive(&cgroup)
                .with_context(|| format!("reading {}", cgroup.display()))?;
            Ok((sum_pss(&pids), root.usage_bytes(&cgroup).ok()))
        }
        .await;
        self.delete(&b, "bench-idle").await;
        // The container's processes leave the cgroup as they exit.
        for _ in 0..500 {
            if std::fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        measured
    }

    /// `runsc run --detach` of the bundle's command as `id`, its processes in `cgroup`
    /// when given (a shell joins it, then execs runsc).
    async fn start(&self, b: &Bundle, id: &str, cgroup: Option<&Path>) -> Result<()> {
        let bundle = b.dir.join("bundle").display().to_string();
        let argv = self.args(b, &["run", "--detach", "--bundle", &bundle, id]);
        let (program, argv) = match cgroup {
            None => (self.exe.clone(), argv),
            Some(cg) => {
                let mut sh = vec![
                    "-c".to_string(),
                    r#"echo $$ > "$0/cgroup.procs" && exec "$@""#.to_string(),
                    cg.display().to_string(),
                    self.exe.display().to_string(),
                ];
                sh.extend(argv);
                (PathBuf::from("/bin/sh"), sh)
            }
        };
        // The container keeps runsc's stdout and stderr: files, not pipes (whose end would
        // never come while it runs).
        let log = b.dir.join(format!("{id}.log"));
        let file =
            std::fs::File::create(&log).with_context(|| format!("making {}", log.display()))?;
        let status = tokio::process::Command::new(&program)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .status()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !status.success() {
            bail!(
                "runsc run --detach {status}: {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(())
    }

    /// Stop and forget a detached container (errors only logged: cleanup).
    async fn delete(&self, b: &Bundle, id: &str) {
        if let Err(e) = run(&self.exe, &self.args(b, &["delete", "--force", id])).await {
            eprintln!("bench: runsc delete {id}: {e:#}");
        }
    }
}

/// Run `program` to its end; its stdout, or an error with its stderr.
async fn run(program: &Path, argv: &[String]) -> Result<Vec<u8>> {
    let output = tokio::process::Command::new(program)
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            argv.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

async fn spawn_runs(
    program: &Path,
    argv: &[String],
    runs: usize,
) -> Result<Vec<std::time::Duration>> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        run(program, argv).await?;
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
