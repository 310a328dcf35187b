//! Why a connection to the agent ended early.

use std::io;

use warren_proto::ProtoError;

/// Why a connection ended early. Only logged: the connection is closed either way.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a request")]
    NoRequest,
    #[error("unexpected first frame (not a request)")]
    NotARequest,
    #[error("unexpected frame during the request")]
    UnexpectedFrame,
    #[error("host went away before the end of a file's data")]
    HostGoneBeforeDataEnd,
    #[error("host went away before the command {0} exited")]
    HostGone(i32),
    #[error("the reaper stopped")]
    ReaperGone,
}
