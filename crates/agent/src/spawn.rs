//! Starting a command: PATH lookup, checks that give clear errors, and the child's setup.

use std::borrow::Cow;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tokio::net::unix::pipe;
use warren_proto::ExecSpec;

/// `PATH` used when the command's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a command did not start; `code` as in [`warren_proto::Event::Error`].
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub(crate) struct SpawnError {
    pub code: &'static str,
    pub message: String,
}

impl SpawnError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// A started command: it leads its own session and process group (pgid = pid).
#[derive(Debug)]
pub(crate) struct Spawned {
    pub pid: i32,
    pub stdin: Option<pipe::Sender>,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// Starts `spec`. Must run inside the tokio runtime (the pipes register with its reactor).
///
/// The checks (cwd, PATH lookup) are a few `stat`s on local files: not worth a thread.
pub(crate) fn spawn(spec: &ExecSpec) -> Result<Spawned, SpawnError> {
    let Some(arg0) = spec.argv.first() else {
        return Err(SpawnError::new("spawn_failed", "empty argv"));
    };
    let cwd: &str = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    check_cwd(cwd)?;
    let program = resolve(arg0, spec, cwd)?;
    let cwd_c =
        CString::new(cwd).map_err(|_| SpawnError::new("bad_cwd", "cwd contains a NUL byte"))?;

    // Only a privileged agent changes identity; an unprivileged one (tests, development) can
    // still run commands as itself.
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let change_identity = euid == 0 || spec.uid != euid || spec.gid != egid;
    let (uid, gid) = (spec.uid, spec.gid);

    let mut cmd = Command::new(program.as_ref());
    cmd.arg0(arg0)
        .args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (sigprocmask, rt_sigaction, close_range, setsid, open, write, close, setgroups,
    // setgid, setuid, chdir) on data prepared before the fork; it does not allocate
    // (io::Error::last_os_error wraps the errno without allocating).
    unsafe {
        cmd.pre_exec(move || {
            // Signal mask and dispositions back to defaults: ignored signals (the agent ignores
            // SIGPIPE and SIGHUP) would otherwise survive exec.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            // The raw syscall, because libc refuses its internal signals (32, 33), which a
            // parent created with posix_spawn may have left ignored. An all-zero kernel
            // `struct sigaction` is SIG_DFL with no flags and an empty mask.
            let dfl = [0u64; 4];
            for sig in 1..=64 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::syscall(
                        libc::SYS_rt_sigaction,
                        sig,
                        dfl.as_ptr(),
                        std::ptr::null_mut::<u64>(),
                        8usize,
                    );
                }
            }
            // Descriptors the agent inherited without CLOEXEC must not reach commands. Marked
            // CLOEXEC rather than closed: std reports exec failures through a CLOEXEC pipe.
            // Best effort (Linux >= 5.11).
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent is protected from the OOM killer (-1000); commands must not be.
            // Best effort: /proc may be missing.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
            }
            if change_identity {
                if libc::setgroups(0, std::ptr::null()) < 0 || libc::setgid(gid) < 0 {
                    return Err(io::Error::last_os_error());
                }
                if uid != 0 && libc::setuid(uid) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // After setuid, so the command's own permissions decide.
            if libc::chdir(cwd_c.as_ptr()) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }

    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SpawnError::new("not_found", format!("{arg0}: {e}")),
        _ => SpawnError::new("spawn_failed", format!("cannot run {arg0}: {e}")),
    })?;
    let pid = child.id() as i32;
    // `child` is never waited for: the reaper collects every child with waitpid(-1).
    let pipes = (|| -> io::Result<Spawned> {
        let stdin = match child.stdin.take() {
            Some(s) => Some(pipe::Sender::from_owned_fd(OwnedFd::from(s))?),
            None => None,
        };
        let stdout = child.stdout.take().ok_or_else(missing_pipe)?;
        let stderr = child.stderr.take().ok_or_else(missing_pipe)?;
        Ok(Spawned {
            pid,
            stdin,
            stdout: pipe::Receiver::from_owned_fd(OwnedFd::from(stdout))?,
            stderr: pipe::Receiver::from_owned_fd(OwnedFd::from(stderr))?,
        })
    })();
    pipes.map_err(|e| {
        // Do not leave a command running that nobody can see; the reaper collects it.
        // SAFETY: kill has no memory-safety preconditions; the group exists (its leader is
        // our unreaped child).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        SpawnError::new("spawn_failed", format!("cannot set up pipes: {e}"))
    })
}

fn missing_pipe() -> io::Error {
    io::Error::other("missing child pipe")
}

fn check_cwd(cwd: &str) -> Result<(), SpawnError> {
    if !cwd.starts_with('/') {
        return Err(SpawnError::new(
            "bad_cwd",
            format!("cwd {cwd} is not an absolute path"),
        ));
    }
    match std::fs::metadata(cwd) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(SpawnError::new(
            "bad_cwd",
            format!("cwd {cwd} is not a directory"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpawnError::new(
            "bad_cwd",
            format!("cwd {cwd} does not exist"),
        )),
        Err(e) => Err(SpawnError::new("bad_cwd", format!("cwd {cwd}: {e}"))),
    }
}

/// Finds `arg0` like execvp would, but in the `PATH` of the command's environment.
fn resolve<'a>(arg0: &'a str, spec: &ExecSpec, cwd: &str) -> Result<Cow<'a, Path>, SpawnError> {
    if arg0.is_empty() {
        return Err(SpawnError::new("not_found", "empty command name"));
    }
    if arg0.contains('/') {
        // Relative paths are resolved by exec, against the new cwd.
        return Ok(Cow::Borrowed(Path::new(arg0)));
    }
    let path = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let mut candidate = PathBuf::from(cwd);
        candidate.push(dir); // an absolute dir replaces cwd
        candidate.push(arg0);
        if let Ok(m) = std::fs::metadata(&candidate) {
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return Ok(Cow::Owned(candidate));
            }
        }
    }
    Err(SpawnError::new(
        "not_found",
        format!("{arg0}: command not found in PATH={path}"),
    ))
}
