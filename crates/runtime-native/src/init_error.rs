//! What can go wrong while a sandbox is set up by its helper and PID 1 (`init`, `rootfs`).

use std::io;

use nix::errno::Errno;

use crate::cgroup::CgroupError;
use crate::{caps, seccomp};

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

/// A failed syscall, with what was being done.
pub(super) fn sys(what: impl Into<String>) -> impl FnOnce(Errno) -> InitError {
    let what = what.into();
    move |source| InitError::Sys { what, source }
}

/// A failed I/O call, with what was being done.
pub(super) fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> InitError {
    let what = what.into();
    move |source| InitError::Io { what, source }
}
