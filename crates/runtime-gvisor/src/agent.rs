//! `__gvisor-agent`: the sandbox's PID 1 inside gVisor, the same agent as a native
//! sandbox's.
//!
//! runsc starts it (through the host's loader, see [`crate::bundle`]) as root of gVisor's
//! kernel with the capabilities the bundle grants. Before it serves:
//!
//! 1. it becomes non-dumpable, leads its own session and binds its socket at
//!    [`bundle::SOCKET`] (a host socket at `<sandbox>/run/agent.sock`, runsc's
//!    `--host-uds=create`), owner-only;
//! 2. it unmounts everything under `/dev/.warren` (its binary, loader and libraries, which
//!    stay mapped, and the socket directory, whose listening socket stays bound): nothing
//!    in the sandbox can then replace the socket on the host, nor see the host's files;
//! 3. it sets `no_new_privs`, drops to the native runtime's default capabilities and loads
//!    the native runtime's seccomp filter (gVisor enforces it for every process inside), so
//!    a command meets the same rules on both runtimes.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::mount::{umount2, MntFlags};
use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr,
};
use nix::sys::stat::{umask, Mode};

use warren_runtime_native::storage::unescape_mountinfo;

use crate::bundle::{self, AGENT_DIR};

#[derive(Debug, thiserror::Error)]
pub enum AgentSetupError {
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("reading the mount table: {0}")]
    Mounts(std::io::Error),
    #[error(transparent)]
    Caps(#[from] warren_runtime_native::caps::CapsError),
    #[error(transparent)]
    Seccomp(#[from] warren_runtime_native::seccomp::SeccompError),
    #[error("reading the seccomp program: {0}")]
    SeccompProgram(std::io::Error),
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> AgentSetupError {
    let what = what.into();
    move |source| AgentSetupError::Sys { what, source }
}

/// The whole life of `<exe> __gvisor-agent`: set up (above), then serve.
pub fn agent_main() -> std::process::ExitCode {
    warren_runtime_native::init::serve_as_pid1(crate::AGENT_ARG, setup())
}

fn setup() -> Result<OwnedFd, AgentSetupError> {
    nix::sys::prctl::set_dumpable(false).map_err(sys("set non-dumpable"))?;
    // runsc starts PID 1 as a session leader already; that is fine too.
    let _ = nix::unistd::setsid();
    let listener = bind_socket()?;
    umask(Mode::from_bits_truncate(0o022));
    let bpf = std::fs::read(bundle::SECCOMP).map_err(AgentSetupError::SeccompProgram)?;
    hide_agent_files()?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("set no_new_privs"))?;
    warren_runtime_native::caps::apply_default()?;
    warren_runtime_native::seccomp::load_bpf(&bpf)?;
    Ok(listener)
}

fn bind_socket() -> Result<OwnedFd, AgentSetupError> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(sys("agent socket"))?;
    let addr = UnixAddr::new(bundle::SOCKET).map_err(sys("agent socket address"))?;
    umask(Mode::from_bits_truncate(0o177));
    bind(sock.as_raw_fd(), &addr).map_err(sys(format!("bind {}", bundle::SOCKET)))?;
    listen(&sock, Backlog::MAXCONN).map_err(sys("listen on the agent socket"))?;
    Ok(sock)
}

/// Unmount every mount at or below [`AGENT_DIR`], deepest first, and remove the
/// directories (they are gVisor's `/dev` tmpfs's).
fn hide_agent_files() -> Result<(), AgentSetupError> {
    let table = std::fs::read_to_string("/proc/self/mounts").map_err(AgentSetupError::Mounts)?;
    let mut points = mount_points_below(&table, AGENT_DIR);
    points.retain(|p| p != bundle::RUN_DIR);
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in &points {
        umount2(p.as_str(), MntFlags::MNT_DETACH).map_err(sys(format!("unmount {p}")))?;
    }
    // The socket's directory must stay mounted (gVisor routes host connections to the
    // socket through that mount), but hidden under an empty read-only tmpfs: nothing inside
    // can then replace the socket on the host with a link elsewhere (unmounting it needs
    // CAP_SYS_ADMIN, which goes next).
    nix::mount::mount(
        Some("tmpfs"),
        bundle::RUN_DIR,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_RDONLY
            | nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("size=4k,mode=0"),
    )
    .map_err(sys(format!("cover {}", bundle::RUN_DIR)))?;
    for p in points {
        // The binds' mount points, deepest first: files, or directories where runsc made
        // them itself (it does since 2023).
        if std::fs::remove_file(&p).is_err() {
            let _ = std::fs::remove_dir(&p);
        }
    }
    let _ = std::fs::remove_dir(format!("{AGENT_DIR}/lib"));
    Ok(())
}

/// Mount points in a `/proc/self/mounts` text at or below `dir` (octal escapes decoded).
fn mount_points_below(table: &str, dir: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|p| String::from_utf8_lossy(&unescape_mountinfo(p)).into_owned())
        .filter(|p| p == dir || p.starts_with(&format!("{dir}/")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_below_the_agent_dir_are_found() {
        let table = "none / 9p rw 0 0\n\
            none /dev tmpfs rw 0 0\n\
            none /dev/.warren/warren 9p ro 0 0\n\
            none /dev/.warren/lib/libc.so.6 9p ro 0 0\n\
            none /dev/.warren/run 9p rw 0 0\n\
            none /dev/.warrenx 9p rw 0 0\n\
            none /dev/.warren/with\\040space 9p rw 0 0\n";
        assert_eq!(
            mount_points_below(table, AGENT_DIR),
            [
                "/dev/.warren/warren",
                "/dev/.warren/lib/libc.so.6",
                "/dev/.warren/run",
                "/dev/.warren/with space"
            ]
        );
    }
}
