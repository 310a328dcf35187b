//! The error codes of Warren's API: one enum, so every surface (native REST, E2B,
//! OpenSandbox) maps the same codes, exhaustively, to its own error shape and status.

/// Every error code the engine and the native server answer with (the `code` of
/// [`crate::ErrorDetail`], as [`ErrorCode::as_str`] spells it). The HTTP status of each is
/// [`ErrorCode::http_status`] on the native API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    SandboxNotFound,
    InvalidRequest,
    PayloadTooLarge,
    ImageNotFound,
    InvalidState,
    InvalidTransition,
    SandboxPaused,
    SandboxStopped,
    SnapshotNotFound,
    DeadlineExceeded,
    SnapshotInUse,
    CommandNotFound,
    InvalidCwd,
    SpawnFailed,
    FileNotFound,
    NotADirectory,
    IsADirectory,
    InvalidPath,
    FileExists,
    DirectoryNotEmpty,
    PermissionDenied,
    DiskQuotaExceeded,
    NoSpace,
    IoError,
    ProcessNotFound,
    NotAPty,
    StdinClosed,
    TagInUse,
    InvalidSignal,
    NotSupported,
    PortUnreachable,
    LimitReached,
    CapacityExhausted,
    HostUnderPressure,
    PoolNotFound,
    PoolFromConfig,
    RuntimeError,
    StoreError,
    ShuttingDown,
    InvalidConfig,
    NotFound,
    ProxyError,
    MethodNotAllowed,
    TooManyStreams,
    /// The sandbox asked for a network mode this server does not offer.
    NetworkUnavailable,
    /// The sandbox asked for a runtime (`gvisor`) this server cannot run.
    RuntimeUnavailable,
    /// The image is used by a sandbox or a pool.
    ImageInUse,
    /// The registry could not be reached, refused, or sent something unusable.
    RegistryError,
    /// No volume of that name.
    VolumeNotFound,
    /// The volume is mounted by a sandbox.
    VolumeInUse,
    /// A volume of that name exists already.
    VolumeExists,
    /// A template build failed (a step exited non-zero, an input was missing).
    BuildFailed,
    /// No API key, or one the server does not accept.
    Unauthorized,
}

impl ErrorCode {
    /// The HTTP status of each code on the native API (the one place that decides it; another
    /// API surface may map the same codes to its own statuses).
    pub fn http_status(self) -> u16 {
        use ErrorCode as C;
        match self {
            C::InvalidRequest
            | C::CommandNotFound
            | C::InvalidCwd
            | C::SpawnFailed
            | C::NotADirectory
            | C::IsADirectory
            | C::InvalidPath
            | C::InvalidSignal
            | C::NetworkUnavailable
            | C::RuntimeUnavailable => 400,
            C::PermissionDenied => 403,
            C::Unauthorized => 401,
            C::SandboxNotFound
            | C::ImageNotFound
            | C::SnapshotNotFound
            | C::FileNotFound
            | C::ProcessNotFound
            | C::PoolNotFound
            | C::VolumeNotFound
            | C::NotFound => 404,
            C::MethodNotAllowed => 405,
            C::InvalidState
            | C::InvalidTransition
            | C::SandboxPaused
            | C::SandboxStopped
            | C::SnapshotInUse
            | C::FileExists
            | C::DirectoryNotEmpty
            | C::NotAPty
            | C::StdinClosed
            | C::TagInUse
            | C::ImageInUse
            | C::VolumeInUse
            | C::VolumeExists
            | C::PoolFromConfig => 409,
            C::BuildFailed => 422,
            C::PayloadTooLarge => 413,
            C::LimitReached | C::CapacityExhausted | C::TooManyStreams => 429,
            C::IoError | C::RuntimeError | C::StoreError | C::InvalidConfig => 500,
            C::NotSupported => 501,
            C::PortUnreachable | C::ProxyError | C::RegistryError => 502,
            C::HostUnderPressure | C::ShuttingDown => 503,
            C::DeadlineExceeded => 504,
            C::DiskQuotaExceeded | C::NoSpace => 507,
        }
    }

    /// Every code, in declaration order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::SandboxNotFound,
        ErrorCode::InvalidRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::ImageNotFound,
        ErrorCode::InvalidState,
        ErrorCode::InvalidTransition,
        ErrorCode::SandboxPaused,
        ErrorCode::SandboxStopped,
        ErrorCode::SnapshotNotFound,
        ErrorCode::DeadlineExceeded,
        ErrorCode::SnapshotInUse,
        ErrorCode::CommandNotFound,
        ErrorCode::InvalidCwd,
        ErrorCode::SpawnFailed,
        ErrorCode::FileNotFound,
        ErrorCode::NotADirectory,
        ErrorCode::IsADirectory,
        ErrorCode::InvalidPath,
        ErrorCode::FileExists,
        ErrorCode::DirectoryNotEmpty,
        ErrorCode::PermissionDenied,
        ErrorCode::DiskQuotaExceeded,
        ErrorCode::NoSpace,
        ErrorCode::IoError,
        ErrorCode::ProcessNotFound,
        ErrorCode::NotAPty,
        ErrorCode::StdinClosed,
        ErrorCode::TagInUse,
        ErrorCode::InvalidSignal,
        ErrorCode::NotSupported,
        ErrorCode::PortUnreachable,
        ErrorCode::LimitReached,
        ErrorCode::CapacityExhausted,
        ErrorCode::HostUnderPressure,
        ErrorCode::PoolNotFound,
        ErrorCode::PoolFromConfig,
        ErrorCode::RuntimeError,
        ErrorCode::StoreError,
        ErrorCode::ShuttingDown,
        ErrorCode::InvalidConfig,
        ErrorCode::NotFound,
        ErrorCode::ProxyError,
        ErrorCode::MethodNotAllowed,
        ErrorCode::TooManyStreams,
        ErrorCode::NetworkUnavailable,
        ErrorCode::RuntimeUnavailable,
        ErrorCode::ImageInUse,
        ErrorCode::RegistryError,
        ErrorCode::VolumeNotFound,
        ErrorCode::VolumeInUse,
        ErrorCode::VolumeExists,
        ErrorCode::BuildFailed,
        ErrorCode::Unauthorized,
    ];

    /// The code on the wire (`snake_case`).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::SandboxNotFound => "sandbox_not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::SandboxPaused => "sandbox_paused",
            ErrorCode::SandboxStopped => "sandbox_stopped",
            ErrorCode::SnapshotNotFound => "snapshot_not_found",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::SnapshotInUse => "snapshot_in_use",
            ErrorCode::CommandNotFound => "command_not_found",
            ErrorCode::InvalidCwd => "invalid_cwd",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::FileNotFound => "file_not_found",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::FileExists => "file_exists",
            ErrorCode::DirectoryNotEmpty => "directory_not_empty",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::DiskQuotaExceeded => "disk_quota_exceeded",
            ErrorCode::NoSpace => "no_space",
            ErrorCode::IoError => "io_error",
            ErrorCode::ProcessNotFound => "process_not_found",
            ErrorCode::NotAPty => "not_a_pty",
            ErrorCode::StdinClosed => "stdin_closed",
            ErrorCode::TagInUse => "tag_in_use",
            ErrorCode::InvalidSignal => "invalid_signal",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::PortUnreachable => "port_unreachable",
            ErrorCode::LimitReached => "limit_reached",
            ErrorCode::CapacityExhausted => "capacity_exhausted",
            ErrorCode::HostUnderPressure => "host_under_pressure",
            ErrorCode::PoolNotFound => "pool_not_found",
            ErrorCode::PoolFromConfig => "pool_from_config",
            ErrorCode::RuntimeError => "runtime_error",
            ErrorCode::StoreError => "store_error",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ProxyError => "proxy_error",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::TooManyStreams => "too_many_streams",
            ErrorCode::NetworkUnavailable => "network_unavailable",
            ErrorCode::RuntimeUnavailable => "runtime_unavailable",
            ErrorCode::ImageInUse => "image_in_use",
            ErrorCode::RegistryError => "registry_error",
            ErrorCode::VolumeNotFound => "volume_not_found",
            ErrorCode::VolumeInUse => "volume_in_use",
            ErrorCode::VolumeExists => "volume_exists",
            ErrorCode::BuildFailed => "build_failed",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }

    /// The code a wire string names, if any.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert_eq!(ErrorCode::parse(s), Some(*c));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
        assert_eq!(ErrorCode::NotAPty, "not_a_pty");
    }
}
