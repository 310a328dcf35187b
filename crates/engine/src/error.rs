use warren_runtime::RuntimeError;

/// Everything the engine can refuse or fail with. `code()` is the API's snake_case error
/// code and `http_status()` its status; the server maps nothing else.
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
    #[error("image {0} not found")]
    ImageNotFound(String),
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
    Spawn { code: &'static str, message: String },
    /// A file operation failed inside the sandbox: `file_not_found` (404),
    /// `not_a_directory`, `is_a_directory`, `invalid_path` (400), `file_exists`,
    /// `directory_not_empty` (409), `permission_denied` (403), `disk_quota_exceeded`,
    /// `no_space` (507), `io_error` (500).
    #[error("{message}")]
    File { code: &'static str, message: String },
    /// A durable-process operation failed: `process_not_found` (404), `not_a_pty`,
    /// `stdin_closed`, `tag_in_use` (409), `invalid_signal` (400).
    #[error("{message}")]
    Process { code: &'static str, message: String },
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
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::SandboxNotFound(_) => "sandbox_not_found",
            EngineError::InvalidRequest(_) => "invalid_request",
            EngineError::PayloadTooLarge(_) => "payload_too_large",
            EngineError::ImageNotFound(_) => "image_not_found",
            EngineError::InvalidState { .. } => "invalid_state",
            EngineError::InvalidTransition { .. } => "invalid_transition",
            EngineError::Paused(_) => "sandbox_paused",
            EngineError::Stopped(_) => "sandbox_stopped",
            EngineError::SnapshotNotFound(_) => "snapshot_not_found",
            EngineError::DeadlineExceeded(_) => "deadline_exceeded",
            EngineError::SnapshotInUse(_) => "snapshot_in_use",
            EngineError::Spawn { code, .. } => code,
            EngineError::File { code, .. } => code,
            EngineError::Process { code, .. } => code,
            EngineError::NotSupported(_) => "not_supported",
            EngineError::PortUnreachable { .. } => "port_unreachable",
            EngineError::LimitReached(_) => "limit_reached",
            EngineError::CapacityExhausted(_) => "capacity_exhausted",
            EngineError::HostUnderPressure(_) => "host_under_pressure",
            EngineError::PoolNotFound(_) => "pool_not_found",
            EngineError::PoolFromConfig(_) => "pool_from_config",
            EngineError::Runtime(_) => "runtime_error",
            EngineError::Store(_) => "store_error",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::Config(_) => "invalid_config",
        }
    }

    pub fn http_status(&self) -> u16 {
        match self {
            EngineError::SandboxNotFound(_) => 404,
            EngineError::InvalidRequest(_) => 400,
            EngineError::PayloadTooLarge(_) => 413,
            EngineError::ImageNotFound(_) => 400,
            EngineError::InvalidState { .. }
            | EngineError::InvalidTransition { .. }
            | EngineError::Paused(_)
            | EngineError::Stopped(_)
            | EngineError::SnapshotInUse(_) => 409,
            EngineError::SnapshotNotFound(_) => 404,
            EngineError::DeadlineExceeded(_) => 504,
            EngineError::Spawn { .. } => 400,
            EngineError::File { code, .. } => match *code {
                "file_not_found" => 404,
                "not_a_directory" | "is_a_directory" | "invalid_path" => 400,
                "file_exists" | "directory_not_empty" => 409,
                "permission_denied" => 403,
                "disk_quota_exceeded" | "no_space" => 507,
                _ => 500,
            },
            EngineError::Process { code, .. } => match *code {
                "process_not_found" => 404,
                "invalid_signal" => 400,
                _ => 409,
            },
            EngineError::NotSupported(_) => 501,
            EngineError::PortUnreachable { .. } => 502,
            EngineError::LimitReached(_) | EngineError::CapacityExhausted(_) => 429,
            EngineError::HostUnderPressure(_) => 503,
            EngineError::PoolNotFound(_) => 404,
            EngineError::PoolFromConfig(_) => 409,
            EngineError::Runtime(_) | EngineError::Store(_) | EngineError::Config(_) => 500,
            EngineError::ShuttingDown => 503,
        }
    }
}

/// The API code of a runtime file error code (`RuntimeError::File`).
pub(crate) fn file_code(runtime_code: &str) -> &'static str {
    match runtime_code {
        "not_found" => "file_not_found",
        "not_a_directory" => "not_a_directory",
        "is_a_directory" => "is_a_directory",
        "invalid_path" => "invalid_path",
        "exists" => "file_exists",
        "not_empty" => "directory_not_empty",
        "permission_denied" => "permission_denied",
        "quota_exceeded" => "disk_quota_exceeded",
        "no_space" => "no_space",
        _ => "io_error",
    }
}
