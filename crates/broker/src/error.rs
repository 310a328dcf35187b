//! The broker's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the broker's own API (not in a proxied
/// request: those are answered with a JSON error response instead).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A credential handed to [`crate::Broker::register`] (or checked with
    /// [`crate::Credential::validate`]) is not acceptable. The reason never
    /// contains the credential's value.
    #[error("credential {index}: {reason}")]
    InvalidCredential {
        /// Position of the credential in the list (0 for a lone
        /// [`crate::Credential::validate`]).
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The sandbox id is not acceptable (empty, too long or containing NUL).
    #[error("invalid sandbox id: {0}")]
    InvalidSandbox(String),
    /// The broker's configuration is not acceptable.
    #[error("invalid broker configuration: {0}")]
    InvalidConfig(String),
    /// The key file exists but is not a key this broker accepts (wrong size,
    /// readable by group or others, not a regular file, ...).
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Sealed data could not be opened: malformed, tampered with, or sealed
    /// with another key.
    #[error("sealed data cannot be opened: {0}")]
    Sealed(String),
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// The TLS client could not be set up.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// An I/O error (key file handling).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
