//! The `__sandbox-init` helper and the setup of a sandbox's PID 1.
//!
//! The daemon is a multithreaded async process and never forks to do work. To make a
//! sandbox it execs a fresh copy of the binary (`warren __sandbox-init`) whose `main()`
//! calls [`run_helper`] before it starts any thread. The helper (single-threaded):
//!
//! 1. reads an [`InitSpec`] (JSON) from stdin — by then the daemon has already moved it
//!    into the sandbox cgroup (made and limited by the daemon);
//! 2. sets its own `oom_score_adj` to -1000 (inherited by the agent, which resets its children to 0);
//! 3. `unshare`s mount, UTS, IPC, network, PID and cgroup namespaces and forks;
//! 4. the parent waits for the child's verdict on a pipe, prints one JSON line
//!    (`{"pid":N}` or `{"error":"..."}`) and exits; the child — PID 1 of the new PID
//!    namespace — builds the root file system, binds the agent socket at the host path
//!    `<sandbox_dir>/agent.sock`, pivots, drops privileges and returns the listening socket
//!    to `main()`, which runs the agent on it.
//!
//! The sandbox does not die with the daemon: the helper exits, so PID 1 is reparented to the
//! host's init, and no parent-death signal is set. It dies when its cgroup is killed.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::waitpid;
use nix::unistd::{chdir, dup2, fork, pipe2, sethostname, setsid, ForkResult, Pid};

use super::cgroup::CgroupError;
use super::spec::{HelperReport, InitSpec, SOCKET_NAME};
use super::{caps, net, rootfs, seccomp};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("bad init spec: {0}")]
    Spec(String),
    #[error("{what}: {source}")]
    Sys { what: String, source: Errno },
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("join cgroup: {0}")]
    Cgroup(#[from] CgroupError),
    #[error("drop capabilities: {0}")]
    Caps(#[from] caps::CapsError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("sandbox init failed: {0}")]
    Child(String),
    #[error("cannot report to the daemon: {0}")]
    Report(io::Error),
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> InitError {
    move |source| InitError::Sys {
        what: what.to_string(),
        source,
    }
}

fn io_ctx(what: &'static str) -> impl FnOnce(io::Error) -> InitError {
    move |source| InitError::Io {
        what: what.to_string(),
        source,
    }
}

/// What the child writes on the pipe when it is ready; anything else is an error message.
const READY: &[u8] = b"ready";

/// Entry point of `warren __sandbox-init`. Call it from `main()` before creating any thread
/// or async runtime.
///
/// In the helper process it never returns `Ok`: it prints its one-line report on stdout and
/// exits (`0` on success). It returns `Ok(listener)` only in the sandbox's PID 1, after all
/// setup is done: `main()` must then run the agent on `listener` (a listening Unix stream
/// socket, `O_NONBLOCK` and `CLOEXEC`). PID 1's stdin is `/dev/null`, its stdout and stderr
/// go to `<sandbox_dir>/agent.log` on the host.
///
/// `Err` means the helper could not even report (its stdout is gone); `main()` should print
/// it to stderr and exit with a non-zero code.
pub fn run_helper() -> Result<OwnedFd, InitError> {
    let outcome = read_spec().and_then(|spec| helper(&spec));
    let report = match outcome {
        Ok(Stage::Agent(listener)) => return Ok(listener),
        Ok(Stage::Parent(pid)) => HelperReport::Ready { pid: pid.as_raw() },
        Err(e) => HelperReport::Failed {
            error: e.to_string(),
        },
    };
    let code = matches!(report, HelperReport::Failed { .. }) as i32;
    let mut out = io::stdout().lock();
    out.write_all(report.to_line().as_bytes())
        .and_then(|()| out.flush())
        .map_err(InitError::Report)?;
    std::process::exit(code)
}

enum Stage {
    /// We are the helper; the sandbox's PID 1 has this host pid and is ready.
    Parent(Pid),
    /// We are the sandbox's PID 1.
    Agent(OwnedFd),
}

fn read_spec() -> Result<InitSpec, InitError> {
    let mut buf = Vec::new();
    io::stdin()
        .lock()
        .read_to_end(&mut buf)
        .map_err(io_ctx("read spec from stdin"))?;
    let spec: InitSpec =
        serde_json::from_slice(&buf).map_err(|e| InitError::Spec(e.to_string()))?;
    spec.validate().map_err(InitError::Spec)?;
    Ok(spec)
}

/// Threads of the calling process (`fork` is only sound with exactly one).
fn thread_count() -> Result<usize, InitError> {
    let status =
        fs::read_to_string("/proc/self/status").map_err(io_ctx("read /proc/self/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| InitError::Spec("no Threads: line in /proc/self/status".into()))
}

fn helper(spec: &InitSpec) -> Result<Stage, InitError> {
    // The daemon already put this process into the sandbox cgroup (before sending the spec).
    // Best effort: lowering it needs CAP_SYS_RESOURCE, which some hosts (containers) lack;
    // the agent then merely shares its commands' chances of being picked.
    if let Err(e) = fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(error = %e, "cannot set the agent's oom_score_adj to -1000");
    }
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(sys("unshare namespaces"))?;
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;

    let threads = thread_count()?;
    if threads != 1 {
        return Err(InitError::Spec(format!(
            "the helper must be single-threaded to fork, it has {threads} threads"
        )));
    }
    // SAFETY: the process has exactly one thread (checked just above), so the child is a
    // faithful copy with no lock held by a vanished thread; it only makes syscalls and
    // ordinary single-threaded Rust calls before it returns into `main()`.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Parent { child } => {
            drop(wr);
            wait_ready(rd, child).map(|()| Stage::Parent(child))
        }
        ForkResult::Child => {
            drop(rd);
            let mut wr = fs::File::from(wr);
            match sandbox_init(spec) {
                Ok(listener) => {
                    // If the helper is gone there is nobody to tell; the daemon's ping
                    // decides whether this sandbox counts as created.
                    let _ = wr.write_all(READY);
                    drop(wr);
                    Ok(Stage::Agent(listener))
                }
                Err(e) => {
                    let _ = wr.write_all(e.to_string().as_bytes());
                    drop(wr);
                    // SAFETY: `_exit` ends this forked child at once, without running
                    // atexit handlers or destructors that belong to the parent's state.
                    unsafe { libc::_exit(1) }
                }
            }
        }
    }
}

/// Read the child's verdict; on failure reap it and say why.
fn wait_ready(rd: OwnedFd, child: Pid) -> Result<(), InitError> {
    let mut msg = Vec::new();
    let read = fs::File::from(rd).read_to_end(&mut msg);
    if read.is_ok() && msg == READY {
        return Ok(());
    }
    let status = waitpid(child, None)
        .map(|s| format!("{s:?}"))
        .unwrap_or_else(|e| format!("unknown ({e})"));
    let text = String::from_utf8_lossy(&msg).into_owned();
    Err(InitError::Child(match (read, text.is_empty()) {
        (Err(e), _) => format!("reading its status: {e}; it exited with {status}"),
        (Ok(_), true) => format!("it exited without a word ({status})"),
        (Ok(_), false) => text,
    }))
}

/// Everything PID 1 does before it hands the socket to the agent.
fn sandbox_init(spec: &InitSpec) -> Result<OwnedFd, InitError> {
    let paths = spec.paths();
    setsid().map_err(sys("setsid"))?;
    redirect_stdio(&paths.log)?;
    umask(Mode::from_bits_truncate(0o022));
    sethostname(&spec.id).map_err(sys("sethostname"))?;
    rootfs::mount_all(spec)?;
    net::loopback_up().map_err(sys("bring lo up"))?;
    let listener = bind_agent_socket(&paths.dir)?;
    rootfs::pivot(&paths.rootfs)?;
    rootfs::harden()?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    caps::apply_default()?;
    // Last: after this only the syscalls the filter allows are left.
    seccomp::load_bpf(&spec.seccomp_bpf)?;
    Ok(listener)
}

/// stdin from `/dev/null`, stdout and stderr appended to the sandbox's log on the host.
/// This also lets go of the helper's stdout pipe, so the daemon sees EOF once the helper
/// exits.
fn redirect_stdio(log: &std::path::Path) -> Result<(), InitError> {
    let null = fs::File::open("/dev/null").map_err(io_ctx("open /dev/null"))?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(io_ctx("open agent.log"))?;
    dup2(null.as_raw_fd(), 0).map_err(sys("dup2 stdin"))?;
    dup2(log.as_raw_fd(), 1).map_err(sys("dup2 stdout"))?;
    dup2(log.as_raw_fd(), 2).map_err(sys("dup2 stderr"))?;
    Ok(())
}

/// Bind and listen at `<dir>/agent.sock` (a host path, so the daemon can connect). Bound
/// relative to `dir` so long data directories do not hit the 108-byte `sun_path` limit.
fn bind_agent_socket(dir: &std::path::Path) -> Result<OwnedFd, InitError> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(sys("agent socket"))?;
    chdir(dir).map_err(sys("chdir to sandbox dir"))?;
    match fs::remove_file(SOCKET_NAME) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_ctx("remove stale agent.sock")(e))
        }
        _ => {}
    }
    let addr = UnixAddr::new(SOCKET_NAME).map_err(sys("agent socket address"))?;
    // Only root on the host may connect.
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = bind(sock.as_raw_fd(), &addr);
    umask(old);
    bound.map_err(sys("bind agent.sock"))?;
    listen(&sock, Backlog::MAXCONN).map_err(sys("listen on agent.sock"))?;
    Ok(sock)
}
