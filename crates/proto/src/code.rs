//! Why the agent refused a request: the `code` of [`crate::Event::Error`], typed.

/// The codes the agent answers with. On the wire a code is its [`AgentCode::as_str`]; a
/// code this host does not know (a newer agent) reads as [`AgentCode::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentCode {
    NotFound,
    NotADirectory,
    IsADirectory,
    NotEmpty,
    Exists,
    PermissionDenied,
    InvalidPath,
    QuotaExceeded,
    NoSpace,
    Io,
    InvalidRequest,
    BadCwd,
    SpawnFailed,
    ProcessNotFound,
    NotAPty,
    StdinClosed,
    TagInUse,
    InvalidSignal,
    ConnectionRefused,
    AddressInUse,
    /// The file system does not support what was asked (e.g. extended attributes).
    NotSupported,
    /// A code this side does not know.
    Other,
}

impl AgentCode {
    const ALL: &'static [AgentCode] = &[
        AgentCode::NotFound,
        AgentCode::NotADirectory,
        AgentCode::IsADirectory,
        AgentCode::NotEmpty,
        AgentCode::Exists,
        AgentCode::PermissionDenied,
        AgentCode::InvalidPath,
        AgentCode::QuotaExceeded,
        AgentCode::NoSpace,
        AgentCode::Io,
        AgentCode::InvalidRequest,
        AgentCode::BadCwd,
        AgentCode::SpawnFailed,
        AgentCode::ProcessNotFound,
        AgentCode::NotAPty,
        AgentCode::StdinClosed,
        AgentCode::TagInUse,
        AgentCode::InvalidSignal,
        AgentCode::ConnectionRefused,
        AgentCode::AddressInUse,
        AgentCode::NotSupported,
    ];

    /// The code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            AgentCode::NotFound => "not_found",
            AgentCode::NotADirectory => "not_a_directory",
            AgentCode::IsADirectory => "is_a_directory",
            AgentCode::NotEmpty => "not_empty",
            AgentCode::Exists => "exists",
            AgentCode::PermissionDenied => "permission_denied",
            AgentCode::InvalidPath => "invalid_path",
            AgentCode::QuotaExceeded => "quota_exceeded",
            AgentCode::NoSpace => "no_space",
            AgentCode::Io => "io",
            AgentCode::InvalidRequest => "invalid_request",
            AgentCode::BadCwd => "bad_cwd",
            AgentCode::SpawnFailed => "spawn_failed",
            AgentCode::ProcessNotFound => "process_not_found",
            AgentCode::NotAPty => "not_a_pty",
            AgentCode::StdinClosed => "stdin_closed",
            AgentCode::TagInUse => "tag_in_use",
            AgentCode::InvalidSignal => "invalid_signal",
            AgentCode::ConnectionRefused => "connection_refused",
            AgentCode::AddressInUse => "address_in_use",
            AgentCode::NotSupported => "not_supported",
            AgentCode::Other => "other",
        }
    }

    /// The code a wire string names ([`AgentCode::Other`] if none).
    pub fn parse(s: &str) -> AgentCode {
        AgentCode::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .unwrap_or(AgentCode::Other)
    }
}

impl std::fmt::Display for AgentCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in AgentCode::ALL {
            assert_eq!(AgentCode::parse(c.as_str()), *c);
        }
        assert_eq!(AgentCode::parse("from_the_future"), AgentCode::Other);
    }
}
