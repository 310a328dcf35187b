use warren_api::ErrorCode;
use warren_runtime::{AgentCode, RuntimeError};

/// Everything the engine can refuse or fail with. [`EngineError::code`] is its API error
/// code; what that means in HTTP (or another API's terms) is each API surface's choice.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("{0}")]
    InvalidRequest(String),
    /// A request that is well-formed but too large to carry out (413), e.g. a command whose
    /// argv and environment do not fit in one message to the sandbox's agent.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No image of that name (the message says which exist).
    #[error("{0}")]
    ImageNotFound(String),
    /// A sandbox or pool uses the image.
    #[error("{0}")]
    ImageInUse(String),
    /// Pulling from a registry failed.
    #[error("{0}")]
    Registry(String),
    /// The server's configuration does not allow it (403 `permission_denied`), e.g. a host
    /// directory outside every allowed prefix.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    /// The volume is mounted by sandboxes (their ids in the message).
    #[error("{0}")]
    VolumeInUse(String),
    #[error("volume {0} exists already")]
    VolumeExists(String),
    /// A template build failed: a step exited non-zero, an input was missing.
    #[error("{0}")]
    BuildFailed(String),
    /// The sandbox is in a state that does not allow the operation (409).
    #[error("sandbox {id} is {state}: {message}")]
    InvalidState {
        id: String,
        state: warren_api::SandboxState,
        message: String,
    },
    /// A lifecycle operation that the sandbox's state does not allow (409).
    #[error("cannot {op} sandbox {id}: it is {state}")]
    InvalidTransition {
        id: String,
        state: warren_api::SandboxState,
        op: &'static str,
    },
    /// The sandbox is paused and was not created with `auto_resume` (409).
    #[error("sandbox {0} is paused (resume it, or create it with auto_resume)")]
    Paused(String),
    /// The sandbox is stopped and was not created with `auto_resume` (409).
    #[error("sandbox {0} is stopped (start it, or create it with auto_resume)")]
    Stopped(String),
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// A lifecycle operation missed its deadline (504); the sandbox is `failed`.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The snapshot is being read by a restore or rollback right now (409).
    #[error("snapshot {0} is in use by a restore or rollback; try again when it is done")]
    SnapshotInUse(String),
    /// The command could not be started: `command_not_found` (404-ish, but reported 400),
    /// `invalid_cwd`, `spawn_failed`.
    #[error("{message}")]
    Spawn { code: ErrorCode, message: String },
    /// A file operation failed inside the sandbox: `file_not_found` (404),
    /// `not_a_directory`, `is_a_directory`, `invalid_path` (400), `file_exists`,
    /// `directory_not_empty` (409), `permission_denied` (403), `disk_quota_exceeded`,
    /// `no_space` (507), `not_supported` (501, e.g. no extended attributes for file
    /// metadata), `io_error` (500).
    #[error("{message}")]
    File { code: ErrorCode, message: String },
    /// A durable-process operation failed: `process_not_found` (404), `not_a_pty`,
    /// `stdin_closed`, `tag_in_use` (409), `invalid_signal` (400).
    #[error("{message}")]
    Process { code: ErrorCode, message: String },
    /// The runtime does not support the operation (501 `not_supported`).
    #[error("this server's runtime does not support {0}")]
    NotSupported(&'static str),
    /// Nothing answers on a port inside the sandbox (502 `port_unreachable`).
    #[error("port {port} in the sandbox is unreachable: {message}")]
    PortUnreachable { port: u16, message: String },
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The memory limits already committed leave no room for the new sandbox (429).
    #[error("{0}")]
    CapacityExhausted(String),
    /// A network mode this server does not offer.
    #[error("{0}")]
    NetworkUnavailable(String),
    /// A runtime this server cannot run (400 `runtime_unavailable`), or a feature the
    /// sandbox's runtime lacks.
    #[error("{0}")]
    RuntimeUnavailable(String),
    /// The host's available memory is below the floor (503); nothing was created.
    #[error("{0}")]
    HostUnderPressure(String),
    #[error("pool {0} not found")]
    PoolNotFound(String),
    /// The pool is defined in the daemon's config file and changed only there (409).
    #[error("pool {0} is defined in the server's config file; change it there")]
    PoolFromConfig(String),
    #[error("runtime: {0}")]
    Runtime(#[from] RuntimeError),
    #[error("store: {0}")]
    Store(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The engine's configuration is unusable (only at start).
    #[error("configuration: {0}")]
    Config(String),
}

impl EngineError {
    pub fn code(&self) -> ErrorCode {
        use ErrorCode as C;
        match self {
            EngineError::SandboxNotFound(_) => C::SandboxNotFound,
            EngineError::InvalidRequest(_) => C::InvalidRequest,
            EngineError::PayloadTooLarge(_) => C::PayloadTooLarge,
            EngineError::ImageNotFound(_) => C::ImageNotFound,
            EngineError::ImageInUse(_) => C::ImageInUse,
            EngineError::Registry(_) => C::RegistryError,
            EngineError::PermissionDenied(_) => C::PermissionDenied,
            EngineError::VolumeNotFound(_) => C::VolumeNotFound,
            EngineError::VolumeInUse(_) => C::VolumeInUse,
            EngineError::VolumeExists(_) => C::VolumeExists,
            EngineError::BuildFailed(_) => C::BuildFailed,
            EngineError::InvalidState { .. } => C::InvalidState,
            EngineError::InvalidTransition { .. } => C::InvalidTransition,
            EngineError::Paused(_) => C::SandboxPaused,
            EngineError::Stopped(_) => C::SandboxStopped,
            EngineError::SnapshotNotFound(_) => C::SnapshotNotFound,
            EngineError::DeadlineExceeded(_) => C::DeadlineExceeded,
            EngineError::SnapshotInUse(_) => C::SnapshotInUse,
            EngineError::Spawn { code, .. }
            | EngineError::File { code, .. }
            | EngineError::Process { code, .. } => *code,
            EngineError::NotSupported(_) => C::NotSupported,
            EngineError::PortUnreachable { .. } => C::PortUnreachable,
            EngineError::LimitReached(_) => C::LimitReached,
            EngineError::CapacityExhausted(_) => C::CapacityExhausted,
            EngineError::NetworkUnavailable(_) => C::NetworkUnavailable,
            EngineError::RuntimeUnavailable(_) => C::RuntimeUnavailable,
            EngineError::HostUnderPressure(_) => C::HostUnderPressure,
            EngineError::PoolNotFound(_) => C::PoolNotFound,
            EngineError::PoolFromConfig(_) => C::PoolFromConfig,
            EngineError::Runtime(_) => C::RuntimeError,
            EngineError::Store(_) => C::StoreError,
            EngineError::ShuttingDown => C::ShuttingDown,
            EngineError::Config(_) => C::InvalidConfig,
        }
    }
}

/// The API code of an agent's file error (`RuntimeError::File`).
pub(crate) fn file_code(code: AgentCode) -> ErrorCode {
    match code {
        AgentCode::NotFound => ErrorCode::FileNotFound,
        AgentCode::NotADirectory => ErrorCode::NotADirectory,
        AgentCode::IsADirectory => ErrorCode::IsADirectory,
        AgentCode::InvalidPath => ErrorCode::InvalidPath,
        AgentCode::Exists => ErrorCode::FileExists,
        AgentCode::NotEmpty => ErrorCode::DirectoryNotEmpty,
        AgentCode::PermissionDenied => ErrorCode::PermissionDenied,
        AgentCode::QuotaExceeded => ErrorCode::DiskQuotaExceeded,
        AgentCode::NoSpace => ErrorCode::NoSpace,
        AgentCode::InvalidRequest => ErrorCode::InvalidRequest,
        AgentCode::NotSupported => ErrorCode::NotSupported,
        AgentCode::Io
        | AgentCode::BadCwd
        | AgentCode::SpawnFailed
        | AgentCode::ProcessNotFound
        | AgentCode::NotAPty
        | AgentCode::StdinClosed
        | AgentCode::TagInUse
        | AgentCode::InvalidSignal
        | AgentCode::ConnectionRefused
        | AgentCode::AddressInUse
        | AgentCode::Other => ErrorCode::IoError,
    }
}
