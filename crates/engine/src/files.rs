//! File access inside a running sandbox: read and write streams, stat, list, mkdir, remove,
//! move, file metadata. Paths are validated here; the runtime's agent resolves them inside
//! the sandbox.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use warren_api::{ErrorCode, ExecUser, FileInfo, FileKind, FileList};
use warren_runtime::{ByteStream, FileOp, FileOpResult, FileStat, RuntimeError, WriteOptions};

use crate::error::file_code;
use crate::{Engine, EngineError};

mod accounts;
mod search;
pub use accounts::{parse_ids, AccountNames};
pub use search::{validate_pattern, FileEvents, MAX_REPLACE_FILES, SEARCH_TIME_LIMIT};
/// Whether a path is a write's temporary file (see [`warren_runtime::is_write_temp`]).
pub use warren_runtime::is_write_temp;

/// Longest path accepted (bytes), like Linux's `PATH_MAX`.
pub const MAX_PATH_LEN: usize = 4096;
/// Deepest listing.
pub const MAX_LIST_DEPTH: u32 = 10;
/// Most entries one listing returns (then `truncated`).
pub const MAX_LIST_ENTRIES: u32 = 10_000;
/// Default permission bits of written files.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest(msg.into())
}

/// An absolute path without NUL bytes, at most [`MAX_PATH_LEN`] bytes.
pub fn validate_path(field: &str, path: &str) -> Result<(), EngineError> {
    if !path.starts_with('/') {
        return Err(invalid(format!(
            "{field} must be an absolute path (starting with `/`), got {path:?}"
        )));
    }
    if path.contains('\0') {
        return Err(invalid(format!("{field} must not contain NUL bytes")));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(invalid(format!(
            "{field} is {} bytes long; the maximum is {MAX_PATH_LEN}",
            path.len()
        )));
    }
    Ok(())
}

fn validate_mode(mode: Option<u32>) -> Result<(), EngineError> {
    match mode {
        Some(m) if m > 0o7777 => Err(invalid(format!("mode {m:o} (octal) has bits beyond 07777"))),
        _ => Ok(()),
    }
}

fn is_root(path: &str) -> bool {
    path.bytes().all(|b| b == b'/')
}

fn owner(user: ExecUser) -> (u32, u32) {
    match user {
        ExecUser::Root => (0, 0),
        ExecUser::User => (1000, 1000),
    }
}

/// The API form of the agent's metadata.
pub fn file_info(stat: FileStat) -> FileInfo {
    FileInfo {
        path: stat.path,
        kind: match stat.kind {
            warren_runtime::FileKind::File => FileKind::File,
            warren_runtime::FileKind::Dir => FileKind::Dir,
            warren_runtime::FileKind::Symlink => FileKind::Symlink,
            warren_runtime::FileKind::Other => FileKind::Other,
        },
        size: stat.size,
        mode: stat.mode,
        uid: stat.uid,
        gid: stat.gid,
        modified_at: DateTime::<Utc>::from_timestamp(stat.mtime, 0).unwrap_or_default(),
        link_target: stat.link_target,
        metadata: stat.metadata,
    }
}

/// Checks file metadata as the agent will (see [`warren_runtime::normalize_metadata`]):
/// keys 1 to [`MAX_METADATA_KEY_LEN`](warren_runtime::MAX_METADATA_KEY_LEN) bytes of
/// `[A-Za-z0-9_.-]`, lowercased; values at most
/// [`MAX_METADATA_VALUE_LEN`](warren_runtime::MAX_METADATA_VALUE_LEN) bytes; at most
/// [`MAX_METADATA_KEYS`](warren_runtime::MAX_METADATA_KEYS) keys. Returns them normalized.
pub fn validate_file_metadata(
    metadata: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, EngineError> {
    warren_runtime::normalize_metadata(metadata).map_err(invalid)
}

fn unexpected(op: &str) -> EngineError {
    EngineError::Runtime(RuntimeError::Setup(format!(
        "the runtime answered {op} with an unexpected result"
    )))
}

impl Engine {
    /// Map a runtime failure of a file operation. Only a sandbox the runtime no longer
    /// knows is marked failed: an i/o error may be the client's (a broken upload).
    async fn file_error(&self, id: &str, err: RuntimeError) -> EngineError {
        match err {
            RuntimeError::File { code, message } => EngineError::File {
                code: file_code(code),
                message,
            },
            RuntimeError::Unsupported(what) => EngineError::NotSupported(what),
            RuntimeError::NotFound(_) => {
                self.mark_failed(id, "the sandbox's runtime state is gone")
                    .await
            }
            other => EngineError::Runtime(other),
        }
    }

    async fn op(&self, id: &str, op: FileOp) -> Result<FileOpResult, EngineError> {
        self.ready(id).await?;
        match self.agent(&crate::sandbox_id(id)?).file_op(op).await {
            Ok(r) => Ok(r),
            Err(e) => Err(self.file_error(id, e).await),
        }
    }

    /// Stream a regular file out of the sandbox: its metadata and its content.
    pub async fn read_file(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileInfo, ByteStream), EngineError> {
        validate_path("path", path)?;
        self.ready(id).await?;
        match self.agent(&crate::sandbox_id(id)?).read_file(path).await {
            Ok((stat, body)) => Ok((file_info(stat), body)),
            Err(e) => Err(self.file_error(id, e).await),
        }
    }

    /// Stream the directory tree at `path` as a tar archive: the directory's metadata and
    /// the archive's bytes (built inside the sandbox, streamed, never held whole).
    pub async fn read_archive(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileInfo, ByteStream), EngineError> {
        validate_path("path", path)?;
        self.ready(id).await?;
        match self.agent(&crate::sandbox_id(id)?).read_archive(path).await {
            Ok((stat, body)) => Ok((file_info(stat), body)),
            Err(e) => Err(self.file_error(id, e).await),
        }
    }

    /// Write a regular file from a stream, atomically: nothing changes unless the whole
    /// stream arrives (a stream item that is an error aborts the write). Missing parent
    /// directories are created (0755). The file is owned by root (0:0) or, with
    /// [`ExecUser::User`], by `user` (1000:1000); its mode is `mode` or 0644.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        user: ExecUser,
        body: ByteStream,
    ) -> Result<FileInfo, EngineError> {
        validate_path("path", path)?;
        if is_root(path) {
            return Err(invalid("cannot write to `/`"));
        }
        validate_mode(mode)?;
        self.ready(id).await?;
        let (uid, gid) = owner(user);
        let opts = WriteOptions {
            mode: Some(mode.unwrap_or(DEFAULT_FILE_MODE)),
            parents: true,
            uid,
            gid,
        };
        match self
            .agent(&crate::sandbox_id(id)?)
            .write_file(path, opts, body)
            .await
        {
            Ok(stat) => Ok(file_info(stat)),
            Err(e) => Err(self.file_error(id, e).await),
        }
    }

    /// [`Engine::write_file`] from a stream that borrows (a multipart part borrows its
    /// request body, so it cannot become a `'static` [`ByteStream`]): the stream is pumped
    /// through a small channel while the write runs in the same task. A stream error ends
    /// the write unfinished and is answered as `invalid_request` naming the upload.
    pub async fn write_from<S, E>(
        &self,
        id: &str,
        path: &str,
        mode: Option<u32>,
        user: ExecUser,
        body: S,
    ) -> Result<FileInfo, EngineError>
    where
        S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        use futures::StreamExt;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, RuntimeError>>(4);
        let broken = std::sync::Mutex::new(None::<String>);
        let pump = async {
            let tx = tx;
            let mut body = std::pin::pin!(body);
            while let Some(item) = body.next().await {
                let item = item.map_err(|e| {
                    let msg = e.to_string();
                    if let Ok(mut b) = broken.lock() {
                        *b = Some(msg.clone());
                    }
                    RuntimeError::Io(std::io::Error::other(format!("upload interrupted: {msg}")))
                });
                let stop = item.is_err();
                if tx.send(item).await.is_err() || stop {
                    break;
                }
            }
        };
        let data: ByteStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|v| (v, rx))
        }));
        let (_, written) = tokio::join!(pump, self.write_file(id, path, mode, user, data));
        let broken = broken.lock().ok().and_then(|mut b| b.take());
        match (written, broken) {
            (Err(EngineError::Runtime(_)), Some(why)) => Err(invalid(format!(
                "the upload of {path:?} was interrupted; it was not written ({why})"
            ))),
            (written, _) => written,
        }
    }

    /// Metadata of `path` (symlinks are not followed).
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo, EngineError> {
        validate_path("path", path)?;
        match self
            .op(
                id,
                FileOp::Stat {
                    path: path.to_string(),
                },
            )
            .await?
        {
            FileOpResult::Stat(stat) => Ok(file_info(stat)),
            _ => Err(unexpected("stat")),
        }
    }

    /// Entries below the directory `path`, `depth` (1..=10) levels deep, at most
    /// [`MAX_LIST_ENTRIES`].
    pub async fn list_files(
        &self,
        id: &str,
        path: &str,
        depth: u32,
    ) -> Result<FileList, EngineError> {
        validate_path("path", path)?;
        if !(1..=MAX_LIST_DEPTH).contains(&depth) {
            return Err(invalid(format!(
                "depth must be between 1 and {MAX_LIST_DEPTH}, got {depth}"
            )));
        }
        let op = FileOp::List {
            path: path.to_string(),
            depth,
            limit: MAX_LIST_ENTRIES,
        };
        match self.op(id, op).await? {
            FileOpResult::List { entries, truncated } => Ok(FileList {
                // Uploads in flight, or whose connection just ended and whose temporary
                // file the agent is still unlinking, are not files of the sandbox's.
                entries: entries
                    .into_iter()
                    .filter(|e| !is_write_temp(&e.path))
                    .map(file_info)
                    .collect(),
                truncated,
            }),
            _ => Err(unexpected("list")),
        }
    }

    /// Set file metadata of the regular file or directory `path` (symlinks are not followed
    /// and refused): each key is set to its value, or removed when the value is empty; keys
    /// not named are left alone. Keys are case-insensitive (stored lowercased). Invalid input
    /// ([`validate_file_metadata`]) is `invalid_request` and changes nothing; a file system
    /// without user extended attributes is `not_supported`. Returns the file's metadata
    /// afterwards.
    pub async fn set_file_metadata(
        &self,
        id: &str,
        path: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<FileInfo, EngineError> {
        validate_path("path", path)?;
        if is_root(path) {
            return Err(invalid("cannot set metadata on `/`"));
        }
        let metadata = validate_file_metadata(metadata)?;
        let op = FileOp::SetMetadata {
            path: path.to_string(),
            metadata,
        };
        match self.op(id, op).await? {
            FileOpResult::Stat(stat) => Ok(file_info(stat)),
            _ => Err(unexpected("set metadata")),
        }
    }

    /// `not_supported` (and nothing done) when sandbox `id`'s runtime has no file metadata
    /// at all (gVisor: no extended attributes): callers that write a file and then its
    /// metadata ask first, so a refusal leaves no file behind.
    pub fn check_file_metadata(&self, id: &str) -> Result<(), EngineError> {
        let kind = self
            .map()
            .get(id)
            .map(|e| e.record.lifecycle.runtime)
            .ok_or_else(|| EngineError::SandboxNotFound(id.to_string()))?;
        let supported = self
            .inner
            .runtime
            .info()
            .kind(kind)
            .is_none_or(|k| k.file_metadata);
        if supported {
            Ok(())
        } else {
            Err(EngineError::File {
                code: ErrorCode::NotSupported,
                message: format!(
                    "sandbox {id}'s runtime ({kind}) does not support extended attributes, \
                     which hold file metadata"
                ),
            })
        }
    }

    /// Create a directory (with `parents`, also its missing parents, and an existing
    /// directory is fine); returns its metadata.
    pub async fn mkdir(
        &self,
        id: &str,
        path: &str,
        parents: bool,
        mode: Option<u32>,
        user: ExecUser,
    ) -> Result<FileInfo, EngineError> {
        validate_path("path", path)?;
        validate_mode(mode)?;
        let (uid, gid) = owner(user);
        let op = FileOp::Mkdir {
            path: path.to_string(),
            parents,
            mode,
            uid,
            gid,
        };
        self.op(id, op).await?;
        self.stat(id, path).await
    }

    /// Remove a file, a symlink, an empty directory or (with `recursive`) a directory tree.
    pub async fn remove(&self, id: &str, path: &str, recursive: bool) -> Result<(), EngineError> {
        validate_path("path", path)?;
        if is_root(path) {
            return Err(invalid("refusing to remove `/`"));
        }
        self.op(
            id,
            FileOp::Remove {
                path: path.to_string(),
                recursive,
            },
        )
        .await
        .map(drop)
    }

    /// Rename `from` to `to`; an existing `to` is `file_exists` unless `overwrite`.
    pub async fn move_path(
        &self,
        id: &str,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<(), EngineError> {
        validate_path("from", from)?;
        validate_path("to", to)?;
        if is_root(from) || is_root(to) {
            return Err(invalid("cannot move `/` or onto `/`"));
        }
        self.op(
            id,
            FileOp::Rename {
                from: from.to_string(),
                to: to.to_string(),
                overwrite,
            },
        )
        .await
        .map(drop)
    }
}
