//! The `__sandbox-init` helper and the setup of a sandbox's PID 1.
//!
//! The daemon is a multithreaded async process and never forks to do work. To make a
//! sandbox it execs a fresh copy of the binary (`warren __sandbox-init`) whose `main()`
//! calls [`run_helper`] before it starts any thread. The helper (single-threaded, host root,
//! already moved into the sandbox's cgroup by the daemon):
//!
//! 1. closes every inherited fd above 2, reads an [`InitSpec`] (JSON) from stdin and sets its
//!    `oom_score_adj` to -1000 (inherited by the agent, which resets its children to 0);
//! 2. enters a private mount namespace and binds the agent socket at the host path
//!    `<sandbox_dir>/agent.sock` (as root, before anything runs as the sandbox);
//! 3. with a user namespace ([`InitSpec::idmap`]): forks a child that becomes the range's
//!    first host uid and creates the user namespace, owned by that uid (per-user kernel
//!    budgets are charged to a namespace's owner all the way up, so the owner must not be
//!    root); the helper writes the child's `uid_map`/`gid_map` and then
//! 4. builds the root file system in its mount namespace (`rootfs::prepare`: overlays whose
//!    lower layers are idmapped, `/dev`), as host root, before the child copies it;
//! 5. the child (or, without a user namespace, the helper itself) unshares mount, UTS, IPC,
//!    network, PID and cgroup namespaces — owned by the user namespace — and forks the
//!    sandbox's PID 1, which mounts what must belong to its own namespaces (`/proc`, `/sys`,
//!    `/dev/pts`), pivots, becomes non-dumpable, closes every fd it does not need, drops
//!    capabilities, loads seccomp and returns the listening socket to `main()`, which runs
//!    the agent on it;
//! 6. the helper waits for PID 1's verdict on a pipe, prints one JSON line (`{"pid":N}` or
//!    `{"error":"..."}`) and exits.
//!
//! PID 1's stdout and stderr are the helper's stderr: a pipe the daemon drains into the
//! sandbox's `agent.log` (no host file is open in a sandbox). The sandbox does not die with
//! the daemon: the helper exits, so PID 1 is reparented to the host's init, and no
//! parent-death signal is set. It dies when its cgroup is killed.

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::OFlag;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::waitpid;
use nix::unistd::{
    chdir, dup2, fork, pipe2, setgroups, sethostname, setresgid, setresuid, setsid, ForkResult,
    Gid, Pid, Uid,
};
use serde::Deserialize;

use crate::init_error::InitError;
use crate::init_error::{io_ctx, sys};
use crate::spec::{HelperReport, InitSpec, SOCKET_NAME};
use crate::{caps, net, rootfs, seccomp, userns};
use warren_runtime::IdMap;

/// What PID 1 writes on the verdict pipe when it is ready; anything else is an error message.
const READY: &[u8] = b"ready";

/// Second argument that makes the helper check whether user namespaces work here (see
/// [`probe_userns`]) instead of making a sandbox.
pub const PROBE_USERNS_ARG: &str = "--probe-userns";

/// Entry point of `warren __sandbox-init`. Call it from `main()` before creating any thread
/// or async runtime.
///
/// In the helper process it never returns `Ok`: it prints its one-line report on stdout and
/// exits (`0` on success). It returns `Ok(listener)` only in the sandbox's PID 1, after all
/// setup is done: `main()` must then run the agent on `listener` (a listening Unix stream
/// socket, `O_NONBLOCK` and `CLOEXEC`). PID 1's stdin is the sandbox's `/dev/null`, its
/// stdout and stderr are the helper's stderr (the daemon's log pipe).
///
/// `Err` means the helper could not even report (its stdout is gone); `main()` should print
/// it to stderr and exit with a non-zero code.
pub fn run_helper() -> Result<OwnedFd, InitError> {
    // Nothing the daemon inherited from whoever started it may reach a sandbox.
    close_fds_from(3, &[]);
    let probe =
        std::env::args_os().nth(2).as_deref() == Some(std::ffi::OsStr::new(PROBE_USERNS_ARG));
    let outcome = if probe {
        read_spec().and_then(|spec| probe_userns(&spec).map(|()| Stage::Parent(Pid::from_raw(0))))
    } else {
        read_spec().and_then(|spec| helper(&spec))
    };
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

/// Read and check the [`InitSpec`] on stdin (also for other launchers' helpers): exactly
/// one JSON value, so a helper can go on reading the daemon's later messages (see
/// [`HelperReport::Netns`]) from the same stdin.
pub fn read_spec() -> Result<InitSpec, InitError> {
    let mut de = serde_json::Deserializer::from_reader(io::stdin().lock());
    let spec = InitSpec::deserialize(&mut de).map_err(|e| InitError::Spec(e.to_string()))?;
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

/// Fail unless this process has exactly one thread (`fork` is only sound then).
pub fn single_threaded() -> Result<(), InitError> {
    match thread_count()? {
        1 => Ok(()),
        n => Err(InitError::Spec(format!(
            "the helper must be single-threaded to fork, it has {n} threads"
        ))),
    }
}

/// Close every fd from `first` up, except those in `keep` (`close_range(2)`).
pub fn close_fds_from(first: RawFd, keep: &[RawFd]) {
    let mut keep: Vec<RawFd> = keep.iter().copied().filter(|fd| *fd >= first).collect();
    keep.sort_unstable();
    let mut lo = first;
    for fd in keep.into_iter().chain(std::iter::once(RawFd::MAX)) {
        if fd > lo {
            let hi = if fd == RawFd::MAX {
                u32::MAX
            } else {
                (fd - 1) as u32
            };
            // SAFETY: close_range only closes descriptors; none of those in the range is
            // owned by a live Rust object the caller still uses (the caller names those in
            // `keep`).
            unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi, 0u32) };
        }
        lo = fd.saturating_add(1);
    }
}

/// The private mount namespace the helper builds the root file system in (its mounts are
/// copied into the sandbox's own namespace and vanish with both).
pub fn private_mount_ns() -> Result<(), InitError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(sys("unshare mount namespace"))?;
    // Nothing mounted here may propagate back to the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("make / rprivate"))
}

/// The namespaces a sandbox gets besides mount (made first) and user.
const SANDBOX_NS: CloneFlags = CloneFlags::CLONE_NEWUTS
    .union(CloneFlags::CLONE_NEWIPC)
    .union(CloneFlags::CLONE_NEWNET)
    .union(CloneFlags::CLONE_NEWPID)
    .union(CloneFlags::CLONE_NEWCGROUP);

fn helper(spec: &InitSpec) -> Result<Stage, InitError> {
    // The daemon already put this process into the sandbox cgroup (before sending the spec).
    // Best effort: lowering it needs CAP_SYS_RESOURCE, which some hosts (containers) lack;
    // the agent then merely shares its commands' chances of being picked.
    if let Err(e) = fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(error = %e, "cannot set the agent's oom_score_adj to -1000");
    }
    single_threaded()?;
    private_mount_ns()?;
    let paths = spec.paths();
    let listener = bind_agent_socket(&paths.dir)?;
    // PID 1's verdict: READY, or an error message, then EOF.
    let (verdict_rd, verdict_wr) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    if let Some(map) = spec.idmap {
        return with_userns(spec, &map, listener, verdict_rd, verdict_wr);
    }
    rootfs::prepare(spec, None)?;
    // PID 1 starts in its root (its working directory).
    chdir(&paths.rootfs).map_err(sys("chdir to the root"))?;
    unshare(SANDBOX_NS).map_err(sys("unshare namespaces"))?;
    match fork_checked()? {
        ForkResult::Parent { child } => {
            drop(verdict_wr);
            wait_verdict(verdict_rd)?;
            Ok(Stage::Parent(child))
        }
        ForkResult::Child => {
            drop(verdict_rd);
            pid1(spec, listener, verdict_wr)
        }
    }
}

/// Steps 3 to 5 with a user namespace, with one child (C) between us (H) and PID 1:
/// - C becomes the range's first host uid and makes the user namespace (so that uid owns
///   it), then says "userns";
/// - H writes C's id maps, builds the root file system with idmapped lower layers (as host
///   root, in the mount namespace C still shares), and sends "go" with a handle on the
///   root's top directory;
/// - C enters that directory (a path through the root-only sandbox dir would be closed to
///   its uid; a working directory is carried into a new mount namespace), becomes root of
///   the namespace, unshares the other namespaces (owned by the user namespace), forks
///   PID 1 and reports its pid.
fn with_userns(
    spec: &InitSpec,
    map: &IdMap,
    listener: OwnedFd,
    verdict_rd: OwnedFd,
    verdict_wr: OwnedFd,
) -> Result<Stage, InitError> {
    let (ours, theirs) = UnixStream::pair().map_err(io_ctx("socketpair"))?;
    match fork_checked()? {
        ForkResult::Child => {
            drop((ours, verdict_rd));
            let mut up = theirs;
            let forked = make_userns_as_owner(map)
                .and_then(|()| {
                    up.write_all(b"userns\n")
                        .map_err(io_ctx("report the namespace"))
                })
                .and_then(|()| receive_root(&up))
                .and_then(|root| {
                    nix::unistd::fchdir(root.as_raw_fd()).map_err(sys("enter the root"))
                })
                .and_then(|()| become_root_inside())
                .and_then(|()| {
                    unshare(CloneFlags::CLONE_NEWNS | SANDBOX_NS).map_err(sys("unshare namespaces"))
                })
                .and_then(|()| fork_checked());
            match forked {
                Ok(ForkResult::Child) => {
                    drop(up);
                    pid1(spec, listener, verdict_wr)
                }
                Ok(ForkResult::Parent { child }) => {
                    let _ = writeln!(up, "pid {child}");
                    // SAFETY: `_exit` ends this forked child at once, without running
                    // destructors that belong to the parent's state.
                    unsafe { libc::_exit(0) }
                }
                Err(e) => {
                    let _ = writeln!(up, "error {}", one_line(&e));
                    // SAFETY: as above.
                    unsafe { libc::_exit(1) }
                }
            }
        }
        ForkResult::Parent { child } => {
            drop((theirs, verdict_wr, listener));
            let mut up = io::BufReader::new(ours);
            let outcome = map_userns(&mut up, child, map)
                .and_then(|ns| rootfs::prepare(spec, Some(ns.as_fd())))
                .and_then(|()| send_root(up.get_ref(), &spec.paths().rootfs))
                .and_then(|()| expect_line(&mut up, "pid"))
                .and_then(|pid| {
                    pid.parse::<i32>()
                        .map_err(|_| InitError::Child(format!("bad pid from the child: {pid:?}")))
                })
                .and_then(|pid| wait_verdict(verdict_rd).map(|()| Pid::from_raw(pid)));
            // On an error C sees EOF (or its own failure) and exits; reap it either way.
            drop(up);
            let _ = waitpid(child, None);
            outcome.map(Stage::Parent)
        }
    }
}

/// H: "go", with an `O_PATH` handle on the root's top directory (the overlay just mounted
/// at `rootfs`).
fn send_root(sock: &UnixStream, rootfs: &std::path::Path) -> Result<(), InitError> {
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open the root"))?;
    let fds = [root.as_raw_fd()];
    let iov = [io::IoSlice::new(b"go")];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(sys("send the root"))?;
    Ok(())
}

/// C: wait for "go" and the root's handle (EOF: the helper failed and reports why).
fn receive_root(sock: &UnixStream) -> Result<OwnedFd, InitError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 8];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(sys("wait for the helper"))?;
    let mut root = None;
    for c in msg.cmsgs().map_err(sys("read the helper's message"))? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed `fd` in this process for us; nothing
                // else owns it.
                let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                root.get_or_insert(owned);
            }
        }
    }
    let bytes = msg.bytes;
    match root {
        Some(fd) if buf.get(..bytes) == Some(b"go".as_slice()) => Ok(fd),
        // SAFETY: `_exit` ends this forked child without running the parent's destructors;
        // the helper reports its own failure.
        _ => unsafe { libc::_exit(1) },
    }
}

/// C, after H mapped the namespace: root inside (the same host uid as now, with every
/// capability in the namespace).
fn become_root_inside() -> Result<(), InitError> {
    setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
        .map_err(sys("setresgid 0 in the user namespace"))?;
    setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
        .map_err(sys("setresuid 0 in the user namespace"))
}

fn fork_checked() -> Result<ForkResult, InitError> {
    single_threaded()?;
    // SAFETY: the process has exactly one thread (checked just above), so the child is a
    // faithful copy with no lock held by a vanished thread; it only makes syscalls and
    // ordinary single-threaded Rust calls before it exits or returns into `main()`.
    unsafe { fork() }.map_err(sys("fork"))
}

fn one_line(e: &InitError) -> String {
    e.to_string().replace('\n', " ")
}

/// Read one line `<word> <rest>` from a child and return `rest`; its `error` lines and EOF
/// become errors.
fn expect_line(up: &mut impl BufRead, word: &str) -> Result<String, InitError> {
    let mut line = String::new();
    up.read_line(&mut line)
        .map_err(io_ctx("read from the namespace child"))?;
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix(word) {
        return Ok(rest.trim_start().to_string());
    }
    Err(InitError::Child(match line.strip_prefix("error ") {
        Some(msg) => msg.to_string(),
        None if line.is_empty() => format!("the namespace child exited before \"{word}\""),
        None => format!("unexpected line from the namespace child: {line:?}"),
    }))
}

/// Make the sandbox's user namespace and return it (a `/proc/<pid>/ns/user` handle, which
/// keeps it alive). A child makes it as the range's first host uid, so that uid owns it
/// (per-user kernel budgets are charged to a namespace's owner at every level up: a
/// root-owned namespace would share root's inotify instances); we, still host root, write
/// its id maps and let the child go.
fn make_userns(map: &IdMap) -> Result<fs::File, InitError> {
    // child -> us: "userns" once the namespace exists, or "error ...".
    let (up_rd, up_wr) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    // us -> child: EOF once we hold the namespace.
    let (down_rd, down_wr) = pipe2(OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    match fork_checked()? {
        ForkResult::Child => {
            drop((up_rd, down_wr));
            let mut up = fs::File::from(up_wr);
            let _ = match make_userns_as_owner(map) {
                Ok(()) => up.write_all(b"userns\n"),
                Err(e) => writeln!(up, "error {}", one_line(&e)),
            };
            drop(up);
            // Keep the namespace alive until the parent holds it.
            let _ = fs::File::from(down_rd).read(&mut [0u8; 1]);
            // SAFETY: `_exit` ends this forked child at once, without running destructors
            // that belong to the parent's state.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop((up_wr, down_rd));
            let ns = map_userns(&mut io::BufReader::new(fs::File::from(up_rd)), child, map);
            drop(down_wr);
            let _ = waitpid(child, None);
            ns
        }
    }
}

/// Once `child` says "userns" on `up` (it made its user namespace): write the namespace's id
/// maps and return a handle on it.
fn map_userns(up: &mut impl BufRead, child: Pid, map: &IdMap) -> Result<fs::File, InitError> {
    expect_line(up, "userns")?;
    userns::write_maps(child.as_raw(), map).map_err(io_ctx("map the sandbox's user namespace"))?;
    fs::File::open(format!("/proc/{child}/ns/user"))
        .map_err(io_ctx("open the sandbox's user namespace"))
}

/// Become the range's first host uid and gid and make a user namespace, which that uid then
/// owns. The permitted capabilities are kept across the uid change and raised again, so
/// this works even where unprivileged user namespaces are switched off
/// (`kernel.unprivileged_userns_clone=0`, AppArmor's restriction).
fn make_userns_as_owner(map: &IdMap) -> Result<(), InitError> {
    let (uid, gid) = (Uid::from_raw(map.host_id), Gid::from_raw(map.host_id));
    setgroups(&[]).map_err(sys("setgroups"))?;
    setresgid(gid, gid, gid).map_err(sys("setresgid to the sandbox's range"))?;
    nix::sys::prctl::set_keepcaps(true).map_err(sys("keep capabilities"))?;
    setresuid(uid, uid, uid).map_err(sys("setresuid to the sandbox's range"))?;
    let permitted = ::caps::read(None, ::caps::CapSet::Permitted)
        .map_err(|e| InitError::Child(format!("reading capabilities: {e}")))?;
    ::caps::set(None, ::caps::CapSet::Effective, &permitted)
        .map_err(|e| InitError::Child(format!("raising capabilities: {e}")))?;
    unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("unshare user namespace"))
}

/// PID 1: finish the sandbox, report on `verdict`, return the agent's socket. Never returns
/// an error: failures are reported on `verdict` and end the process.
fn pid1(spec: &InitSpec, listener: OwnedFd, verdict: OwnedFd) -> Result<Stage, InitError> {
    let mut verdict = fs::File::from(verdict);
    match sandbox_init(spec, &listener, verdict.as_raw_fd()) {
        Ok(()) => {
            // If the helper is gone there is nobody to tell; the daemon's ping decides
            // whether this sandbox counts as created.
            let _ = verdict.write_all(READY);
            drop(verdict);
            Ok(Stage::Agent(listener))
        }
        Err(e) => {
            let _ = verdict.write_all(e.to_string().as_bytes());
            drop(verdict);
            // SAFETY: `_exit` ends this forked child at once, without running atexit
            // handlers or destructors that belong to the parent's state.
            unsafe { libc::_exit(1) }
        }
    }
}

/// Read PID 1's verdict: `Ok` on READY, its message otherwise.
fn wait_verdict(rd: OwnedFd) -> Result<(), InitError> {
    let mut msg = Vec::new();
    let read = fs::File::from(rd).read_to_end(&mut msg);
    if read.is_ok() && msg == READY {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&msg).into_owned();
    Err(InitError::Child(match (read, text.is_empty()) {
        (Err(e), _) => format!("reading its status: {e}"),
        (Ok(_), true) => "the sandbox's PID 1 exited without a word".to_string(),
        (Ok(_), false) => text,
    }))
}

/// Everything PID 1 does before it hands the socket to the agent.
fn sandbox_init(spec: &InitSpec, listener: &OwnedFd, verdict: RawFd) -> Result<(), InitError> {
    // First: nothing in the sandbox may read or write this process's memory or fds through
    // /proc (`/proc/1/mem`, `/proc/1/fd/*`, `/proc/1/environ`), whatever its uid.
    nix::sys::prctl::set_dumpable(false).map_err(sys("set non-dumpable"))?;
    setsid().map_err(sys("setsid"))?;
    umask(Mode::from_bits_truncate(0o022));
    sethostname(&spec.id).map_err(sys("sethostname"))?;
    rootfs::mount_inside()?;
    net::loopback_up().map_err(sys("bring lo up"))?;
    rootfs::pivot()?;
    rootfs::harden()?;
    redirect_stdio()?;
    // Only the agent's socket and the verdict pipe stay open (0-2 are ours now).
    close_fds_from(3, &[listener.as_raw_fd(), verdict]);
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    caps::apply_default()?;
    // Last: after this only the syscalls the filter allows are left.
    seccomp::load_bpf(&spec.seccomp_bpf)?;
    Ok(())
}

/// stdin from the sandbox's own `/dev/null`; stdout joins stderr (the daemon's log pipe, set
/// up by the daemon as the helper's stderr). This also lets go of the helper's stdout pipe,
/// so the daemon sees EOF once the helper exits. Runs after `pivot`, so no host file is open.
fn redirect_stdio() -> Result<(), InitError> {
    let null = fs::File::open("/dev/null").map_err(io_ctx("open /dev/null"))?;
    dup2(null.as_raw_fd(), 0).map_err(sys("dup2 stdin"))?;
    dup2(2, 1).map_err(sys("dup2 stdout"))?;
    Ok(())
}

/// Check that this host can give sandboxes user namespaces the way [`helper`] does: a
/// namespace owned by an unprivileged uid, mapped by its root parent, and an overlay whose
/// lower layers (the image and `/usr`) are idmapped mounts, over an upper layer owned by the
/// range. Run by the daemon once at start (`warren __sandbox-init --probe-userns`, with an
/// [`InitSpec`] naming a scratch dir as `sandbox_dir`); leaves nothing behind (its mount
/// namespace dies with it; the caller removes the scratch dir).
fn probe_userns(spec: &InitSpec) -> Result<(), InitError> {
    let map = spec
        .idmap
        .ok_or_else(|| InitError::Spec("the probe needs an idmap".into()))?;
    single_threaded()?;
    private_mount_ns()?;
    let ns = make_userns(&map)?;
    rootfs::probe_overlay(spec, ns.as_fd())
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

/// The whole life of `<exe> __sandbox-init` (see [`crate::SANDBOX_INIT_ARG`]): build the
/// sandbox with [`run_helper`], then serve as its PID 1, the agent. Call it from `main()`
/// before any thread or async runtime exists; it stays single-threaded until
/// `warren_agent::serve` builds its own runtime.
pub fn sandbox_init_main() -> std::process::ExitCode {
    serve_as_pid1(crate::SANDBOX_INIT_ARG, run_helper())
}

/// A sandbox's PID 1 once it is set up (`listener`, or why not, reported as `role`): the
/// agent, until it is told to stop. Shared by every launcher's PID 1.
pub fn serve_as_pid1(
    role: &str,
    listener: Result<OwnedFd, impl std::fmt::Display>,
) -> std::process::ExitCode {
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("warren {role}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match warren_agent::serve(listener) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("warren agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
