//! Starting a command: PATH lookup, checks that give clear errors, and the child's setup.
//!
//! The child is started the way glibc's `posix_spawn` does it, not with `fork`: `clone` with
//! `CLONE_VM | CLONE_VFORK` on a small dedicated stack. The child shares the agent's memory
//! (no page tables to copy, which makes it ~0.8 ms cheaper than a fork) and the agent is
//! suspended until the child has called `execve` or exited. Everything the child needs (paths,
//! argv, envp, descriptors, identity) is prepared before the clone; the child only makes raw
//! system calls and reports a failure by storing its errno in memory the parent reads after
//! the clone returns (as glibc does; no error pipe needed, since the memory is shared).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use rustix::fs::OFlags;
use tokio::net::unix::pipe;
use warren_proto::{AgentCode, ExecSpec};

use crate::root::Root;

/// `PATH` used when the command's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a command did not start; `code` as in [`warren_proto::Event::Error`].
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub(crate) struct SpawnError {
    pub code: AgentCode,
    pub message: String,
}

impl SpawnError {
    fn new(code: AgentCode, message: impl Into<String>) -> Self {
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
pub(crate) fn spawn(spec: &ExecSpec, root: &Root) -> Result<Spawned, SpawnError> {
    let (pid, parents) = start(spec, root, None)?;
    let Some((stdin_parent, stdout_parent, stderr_parent)) = parents else {
        // Unreachable: without a terminal, `start` always makes pipes.
        // SAFETY: kill has no memory-safety preconditions; the group exists (its leader is
        // our unreaped child).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        return Err(SpawnError::new(AgentCode::SpawnFailed, "no pipes"));
    };
    // The child is never waited for here: the reaper collects every child with waitpid(-1).
    let pipes = (|| -> io::Result<Spawned> {
        Ok(Spawned {
            pid,
            stdin: stdin_parent.map(pipe::Sender::from_owned_fd).transpose()?,
            stdout: pipe::Receiver::from_owned_fd(stdout_parent)?,
            stderr: pipe::Receiver::from_owned_fd(stderr_parent)?,
        })
    })();
    pipes.map_err(|e| {
        // Do not leave a command running that nobody can see; the reaper collects it.
        // SAFETY: kill has no memory-safety preconditions; the group exists (its leader is
        // our unreaped child).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        SpawnError::new(AgentCode::SpawnFailed, format!("cannot set up pipes: {e}"))
    })
}

/// Starts `spec` in the terminal whose slave side is `slave`: it becomes the command's stdin,
/// stdout, stderr and (after `setsid`) its controlling terminal. Returns the pid; the caller
/// keeps the master. `spec.stdin` is ignored (a terminal always has input).
pub(crate) fn spawn_pty(spec: &ExecSpec, root: &Root, slave: &OwnedFd) -> Result<i32, SpawnError> {
    start(spec, root, Some(slave)).map(|(pid, _)| pid)
}

/// The parent ends of the pipes: (stdin if any, stdout, stderr).
type ParentEnds = (Option<OwnedFd>, OwnedFd, OwnedFd);

/// Checks and starts `spec` (its cwd inside `root`), with pipes (returned) or on the terminal
/// `pty`.
fn start(
    spec: &ExecSpec,
    root: &Root,
    pty: Option<&OwnedFd>,
) -> Result<(i32, Option<ParentEnds>), SpawnError> {
    let Some(arg0) = spec.argv.first() else {
        return Err(SpawnError::new(AgentCode::SpawnFailed, "empty argv"));
    };
    let cwd: &str = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
    // Open until the child has exec'd (it is close-on-exec).
    let cwd_fd = open_cwd(root, cwd)?;
    let program = resolve(arg0, spec, cwd, root.programs())?;
    let failed =
        |e: io::Error| SpawnError::new(AgentCode::SpawnFailed, format!("cannot run {arg0}: {e}"));
    let nul = || failed(io::Error::new(io::ErrorKind::InvalidInput, NUL_MESSAGE));

    let program_c = CString::new(program.as_os_str().as_bytes()).map_err(|_| nul())?;
    let argv_c = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| nul())?;
    // As std's `Command::env_clear().envs(..)`: the last value of a name wins, sorted by name.
    let env: BTreeMap<&str, &str> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let env_c = env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| nul())?;
    // [slot for "/bin/sh", argv..., NULL]: execve gets &argv_p[1..]; the leading slot lets the
    // child build the `/bin/sh program args...` fallback (see `child_main`) without allocating.
    let mut argv_p: Vec<*const libc::c_char> = Vec::with_capacity(argv_c.len() + 2);
    argv_p.push(c"/bin/sh".as_ptr());
    argv_p.extend(argv_c.iter().map(|a| a.as_ptr()));
    argv_p.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = Vec::with_capacity(env_c.len() + 1);
    envp.extend(env_c.iter().map(|e| e.as_ptr()));
    envp.push(std::ptr::null());

    // Only a privileged agent changes identity; an unprivileged one (tests, development) can
    // still run commands as itself.
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let change_identity = euid == 0 || spec.uid != euid || spec.gid != egid;

    // (parent end, child end) of each standard stream; a terminal's slave is all three.
    let (parents, stdin_child, stdout_child, stderr_child) = match pty {
        Some(slave) => {
            let copy = || high_fd(slave.try_clone().map_err(failed)?).map_err(failed);
            (None, copy()?, copy()?, copy()?)
        }
        None => {
            let (stdin_parent, stdin_child) = if spec.stdin {
                let (r, w) = pipe().map_err(failed)?;
                (Some(w), r)
            } else {
                (None, dev_null().map_err(failed)?)
            };
            let (stdout_parent, stdout_child) = pipe().map_err(failed)?;
            let (stderr_parent, stderr_child) = pipe().map_err(failed)?;
            (
                Some((stdin_parent, stdout_parent, stderr_parent)),
                stdin_child,
                stdout_child,
                stderr_child,
            )
        }
    };

    let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK_SIZE);
    let args = ChildArgs {
        program: program_c.as_ptr(),
        argv: argv_p.as_mut_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd_fd.as_raw_fd(),
        stdio: [
            stdin_child.as_raw_fd(),
            stdout_child.as_raw_fd(),
            stderr_child.as_raw_fd(),
        ],
        controlling_tty: pty.is_some(),
        change_identity,
        uid: spec.uid,
        gid: spec.gid,
        err: AtomicI32::new(0),
    };
    let pid = clone_vfork(&args, &mut stack).map_err(failed)?;
    // The child has exec'd or exited by now (CLONE_VFORK); it wrote `err` only if it failed.
    let err = args.err.load(Ordering::Acquire);
    drop((stdin_child, stdout_child, stderr_child));
    if err != 0 {
        // Reap it here, as std does: nobody registers a failed command with the reaper, and
        // the reaper cannot have collected it (it runs on this thread, and we did not yield).
        let mut status = 0;
        // SAFETY: waitpid writes only the status, through a valid pointer to a local.
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        let e = io::Error::from_raw_os_error(err);
        return Err(match e.kind() {
            io::ErrorKind::NotFound => SpawnError::new(AgentCode::NotFound, format!("{arg0}: {e}")),
            _ => failed(e),
        });
    }

    Ok((pid, parents))
}

/// What std reports for a NUL byte in a program, argument or environment string.
const NUL_MESSAGE: &str = "nul byte found in provided data";

/// The child's stack. It runs a handful of system calls, no deep calls; generous anyway,
/// since it has no guard page.
const CHILD_STACK_SIZE: usize = 64 * 1024;

/// Everything the child needs, prepared by the parent; pointers into the parent's memory,
/// valid while the parent is suspended in `clone_vfork`.
struct ChildArgs {
    program: *const libc::c_char,
    /// `[slot, argv..., NULL]`; the child may overwrite `argv[1]` for the `/bin/sh` fallback.
    argv: *mut *const libc::c_char,
    envp: *const *const libc::c_char,
    /// The cwd, opened (`O_PATH`) inside the sandbox's root.
    cwd: RawFd,
    /// Descriptors (all >= 3, CLOEXEC) to install as 0, 1, 2.
    stdio: [RawFd; 3],
    /// Make stdin (a terminal's slave) the controlling terminal of the new session.
    controlling_tty: bool,
    change_identity: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// The child's errno if a setup step or execve failed; 0 if it exec'd.
    err: AtomicI32,
}

/// Starts `child_main(args)` in a new process that shares our memory, and returns its pid once
/// the child has called execve successfully or exited.
fn clone_vfork(args: &ChildArgs, stack: &mut Vec<u8>) -> io::Result<i32> {
    // The stack grows down on every Linux architecture Rust supports for this target family;
    // its top must be 16-byte aligned.
    let top = stack.as_mut_ptr().wrapping_add(stack.capacity());
    let top = top.wrapping_sub(top as usize % 16);
    let all: u64 = !0;
    let mut old: u64 = 0;
    // SAFETY: rt_sigprocmask reads the new mask from and writes the old one to valid locals;
    // the kernel mask size is 8 bytes. Blocking everything (glibc's internal signals too,
    // hence the raw syscall) means no signal handler can run in the child, where it would run
    // on our memory; the child resets every disposition to the default before it unblocks.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &all as *const u64,
            &mut old as *mut u64,
            8usize,
        )
    };
    // SAFETY: `child_main` is a non-unwinding extern "C" fn that only reads `args` and makes
    // raw system calls. CLONE_VM: the child shares our memory, so it runs on its own stack
    // (`top`, inside `stack`, which outlives the call and which nothing else uses); CLONE_VFORK:
    // we are suspended until the child execs or exits, so `args` and everything it points to
    // stay valid and unchanged while the child uses them, and the child never runs at the
    // same time as us. Without CLONE_FILES, CLONE_FS, CLONE_SIGHAND or CLONE_THREAD, the
    // child's descriptor table, cwd, signal dispositions and credentials are its own copies,
    // so its dup2, chdir, rt_sigaction, setsid and set*id calls do not affect the agent.
    // SIGCHLD as the exit signal: the reaper's waitpid(-1) collects it like any child.
    let pid = unsafe {
        libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            args as *const ChildArgs as *mut libc::c_void,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: as above; restores the mask saved before the clone.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &old as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        )
    };
    if pid < 0 {
        return Err(clone_err);
    }
    Ok(pid)
}

/// The child: set up, then execve. Returns (= exits with) 127 after storing the errno of the
/// failed step in `args.err`.
///
/// Runs on the parent's memory while the parent is suspended: it may only make raw system
/// calls (no allocation, locks, std I/O or panics, no libc wrappers that touch process-wide
/// state such as glibc's set*id, which signals the agent's threads), and it writes nothing
/// but `args.err`, `argv[1]` (for the `/bin/sh` fallback; the parent no longer needs it) and
/// the calling thread's `errno` (which the parent does not read after a successful clone).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `&ChildArgs` given to `clone_vfork`, alive while we run.
    let args = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: we are that child; `spawn` built `args` as `child_setup_and_exec` requires.
    let err = unsafe { child_setup_and_exec(args) };
    // Never 0: that means "exec'd".
    args.err
        .store(if err == 0 { libc::EIO } else { err }, Ordering::Release);
    127
}

/// Returns the errno of the step that failed; does not return if execve succeeds.
///
/// # Safety
///
/// Only in the child of `clone_vfork`, with every pointer in `args` valid and the strings and
/// pointer arrays NUL/NULL-terminated.
unsafe fn child_setup_and_exec(args: &ChildArgs) -> libc::c_int {
    /// A raw system call; returns the errno from the enclosing function if it fails.
    macro_rules! sys {
        ($($arg:expr),+ $(,)?) => {{
            // SAFETY: a raw system call (no libc state but errno) whose pointer arguments
            // point to valid locals or into `args`.
            let r = unsafe { libc::syscall($($arg),+) };
            if r < 0 {
                return errno();
            }
            r
        }};
    }
    // Signal dispositions back to defaults first (every signal is still blocked): ignored
    // signals (the agent ignores SIGPIPE and SIGHUP) would otherwise survive exec, and the
    // agent's handlers must never run here. Raw, because libc refuses its internal signals
    // (32, 33), which a parent created with posix_spawn may have left ignored. An all-zero
    // kernel `struct sigaction` is SIG_DFL with no flags and an empty mask. Best effort.
    let dfl = [0u64; 4];
    for sig in 1..=64 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: rt_sigaction reads the valid local `dfl` (kernel sigset size 8); it
            // changes only this process's dispositions (no CLONE_SIGHAND).
            unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    dfl.as_ptr(),
                    std::ptr::null_mut::<u64>(),
                    8usize,
                )
            };
        }
    }
    // The sources are >= 3 (see `high_fd`), so no dup3 clobbers a later source or gets
    // EINVAL for equal descriptors; the copies are without CLOEXEC. (dup3: aarch64 has no dup2.)
    for (target, &fd) in (0..).zip(args.stdio.iter()) {
        sys!(libc::SYS_dup3, fd, target as libc::c_int, 0);
    }
    // Descriptors the agent inherited without CLOEXEC must not reach commands. Best effort
    // (Linux >= 5.11).
    // SAFETY: no pointers; acts on this process's own descriptor table (no CLONE_FILES).
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    sys!(libc::SYS_setsid);
    if args.controlling_tty {
        // The new session has no controlling terminal yet: take stdin's.
        sys!(libc::SYS_ioctl, 0, libc::TIOCSCTTY, 0);
    }
    // The agent is protected from the OOM killer (-1000); commands must not be. Best effort:
    // /proc may be missing. This changes only the child: the kernel does not propagate
    // oom_score_adj to the other users of the mm from a vfork child (`task->vfork_done`).
    // SAFETY: openat reads a static NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: write reads 1 byte of a static; close of the descriptor just opened.
        unsafe {
            libc::syscall(libc::SYS_write, fd, b"0".as_ptr(), 1usize);
            libc::syscall(libc::SYS_close, fd);
        }
    }
    // Raw syscalls: glibc's wrappers would make every thread of the agent change identity.
    if args.change_identity {
        sys!(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>());
        sys!(libc::SYS_setgid, args.gid);
        if args.uid != 0 {
            sys!(libc::SYS_setuid, args.uid);
        }
    }
    // After setuid, so the command's own permissions decide.
    sys!(libc::SYS_fchdir, args.cwd);
    // Last: the command starts with an empty signal mask.
    let empty: u64 = 0;
    sys!(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK,
        &empty as *const u64,
        std::ptr::null_mut::<u64>(),
        8usize,
    );
    // SAFETY: `args.argv` has the fallback slot, then argv, then NULL (caller's contract), so
    // `add(1)` stays in bounds; program, argv and envp are valid and terminated.
    unsafe {
        libc::syscall(
            libc::SYS_execve,
            args.program,
            args.argv.add(1).cast_const(),
            args.envp,
        )
    };
    let err = errno();
    if err != libc::ENOEXEC {
        return err;
    }
    // Like execvp (which std used): a file without a `#!` line is run as a shell script, with
    // argv ["/bin/sh", program, argv[1..]..., NULL].
    // SAFETY: in bounds as above; the parent does not read argv again, so overwriting the
    // slot is invisible to it. The execve as above.
    unsafe {
        *args.argv.add(1) = args.program;
        libc::syscall(
            libc::SYS_execve,
            c"/bin/sh".as_ptr(),
            args.argv.cast_const(),
            args.envp,
        )
    };
    errno()
}

/// The calling thread's errno (in the child: the suspended parent thread's slot, which it
/// does not read after a successful clone).
fn errno() -> libc::c_int {
    // SAFETY: __errno_location returns a valid pointer to the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// A pipe (read end, write end), both CLOEXEC and >= 3.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 writes two descriptors into the valid 2-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are new descriptors that only we own.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok((high_fd(r)?, high_fd(w)?))
}

/// `/dev/null` for a command without stdin.
fn dev_null() -> io::Result<OwnedFd> {
    let f = std::fs::File::open("/dev/null")?; // O_CLOEXEC, like every std open
    high_fd(f.into())
}

/// Moves `fd` to a number >= 3 (only when the agent runs with 0, 1 or 2 closed), so that the
/// child's dup2s onto 0, 1, 2 cannot overwrite one another's sources.
fn high_fd(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= 3 {
        return Ok(fd);
    }
    // SAFETY: fcntl on a descriptor we own; F_DUPFD_CLOEXEC returns a new one only we own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Opens the command's cwd inside `root` (symlinks followed, inside).
fn open_cwd(root: &Root, cwd: &str) -> Result<OwnedFd, SpawnError> {
    if !cwd.starts_with('/') {
        return Err(SpawnError::new(
            AgentCode::BadCwd,
            format!("cwd {cwd} is not an absolute path"),
        ));
    }
    if cwd.contains('\0') {
        return Err(SpawnError::new(
            AgentCode::BadCwd,
            "cwd contains a NUL byte",
        ));
    }
    match root.open_in(Path::new(cwd), OFlags::PATH | OFlags::DIRECTORY) {
        Ok(fd) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Err(SpawnError::new(
            AgentCode::BadCwd,
            format!("cwd {cwd} is not a directory"),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SpawnError::new(
            AgentCode::BadCwd,
            format!("cwd {cwd} does not exist"),
        )),
        Err(e) => Err(SpawnError::new(
            AgentCode::BadCwd,
            format!("cwd {cwd}: {e}"),
        )),
    }
}

/// Finds `arg0` like execvp would, but in the `PATH` of the command's environment (after
/// `programs`, a hosted agent's own directory of commands).
fn resolve<'a>(
    arg0: &'a str,
    spec: &ExecSpec,
    cwd: &str,
    programs: Option<&Path>,
) -> Result<Cow<'a, Path>, SpawnError> {
    if arg0.is_empty() {
        return Err(SpawnError::new(AgentCode::NotFound, "empty command name"));
    }
    if arg0.contains('/') {
        // Relative paths are resolved by exec, against the new cwd.
        return Ok(Cow::Borrowed(Path::new(arg0)));
    }
    if let Some(candidate) = programs.map(|dir| dir.join(arg0)) {
        if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
            return Ok(Cow::Owned(candidate));
        }
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
        AgentCode::NotFound,
        format!("{arg0}: command not found in PATH={path}"),
    ))
}
