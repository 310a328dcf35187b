//! File requests: [`Request::ReadFile`], [`Request::WriteFile`] and [`Request::FileOp`].
//!
//! Every path resolves inside the sandbox's [`Root`], `..` and absolute symlinks included.
//! All file-system work runs on tokio's
//! blocking pool: the agent's single thread only moves frames, so a big file or a slow disk
//! never stalls other connections.
//!
//! [`Request::ReadFile`]: warren_proto::Request::ReadFile
//! [`Request::WriteFile`]: warren_proto::Request::WriteFile
//! [`Request::FileOp`]: warren_proto::Request::FileOp

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use rustix::fs::OFlags;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Encoder, FramedRead};
use warren_proto::AgentCode;
use warren_proto::{
    is_metadata_key, normalize_metadata, Event, FileKind, FileOp, FileOpResult, FileStat, Frame,
    FrameCodec, ProtoError, MAX_FRAME_LEN, MAX_METADATA_VALUE_LEN, METADATA_XATTR_PREFIX,
};

use crate::error::ConnError;
use crate::root::{At, Root, Tree};

/// File content is read and sent in chunks of this size (one data frame each).
pub(crate) const READ_CHUNK: usize = 256 * 1024;
/// Frame layout (must match [`FrameCodec`]; checked by a test): `u32` BE length, tag, payload.
pub(crate) const HEADER_LEN: usize = 5;
pub(crate) const TAG_DATA: u8 = 7;
/// Default mode of written files and of created directories.
const FILE_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;
/// Temporary files get a name with this many attempts before giving up.
const TEMP_ATTEMPTS: u32 = 16;

/// A failed file operation, reported to the host as [`Event::Error`].
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub(crate) struct FileError {
    pub code: AgentCode,
    pub message: String,
}

impl FileError {
    pub(crate) fn new(code: AgentCode, message: impl Into<String>) -> FileError {
        FileError {
            code,
            message: message.into(),
        }
    }

    /// Maps an I/O error on `path` (`what` says what was attempted).
    pub(crate) fn io(what: &str, path: &Path, e: &io::Error) -> FileError {
        FileError::new(
            io_code(e),
            format!("{what} {}: {e}", path.to_string_lossy()),
        )
    }
}

/// The protocol's error code for an I/O error.
pub(crate) fn io_code(e: &io::Error) -> AgentCode {
    match e.raw_os_error() {
        Some(libc::ENOENT) => AgentCode::NotFound,
        Some(libc::ENOTDIR) => AgentCode::NotADirectory,
        Some(libc::EISDIR) => AgentCode::IsADirectory,
        Some(libc::ENOTEMPTY) => AgentCode::NotEmpty,
        Some(libc::EEXIST) => AgentCode::Exists,
        Some(libc::EACCES | libc::EPERM) => AgentCode::PermissionDenied,
        Some(libc::EINVAL | libc::ENAMETOOLONG | libc::ELOOP) => AgentCode::InvalidPath,
        Some(libc::EDQUOT) => AgentCode::QuotaExceeded,
        Some(libc::ENOSPC) => AgentCode::NoSpace,
        Some(_) => AgentCode::Io,
        None => match e.kind() {
            io::ErrorKind::NotFound => AgentCode::NotFound,
            io::ErrorKind::AlreadyExists => AgentCode::Exists,
            io::ErrorKind::PermissionDenied => AgentCode::PermissionDenied,
            io::ErrorKind::QuotaExceeded => AgentCode::QuotaExceeded,
            io::ErrorKind::StorageFull => AgentCode::NoSpace,
            _ => AgentCode::Io,
        },
    }
}

/// Checks a path from the host: absolute, no NUL byte.
pub(crate) fn check_path(path: &str) -> Result<PathBuf, FileError> {
    if !path.starts_with('/') {
        return Err(FileError::new(
            AgentCode::InvalidPath,
            format!("{path:?} is not an absolute path"),
        ));
    }
    if path.contains('\0') {
        return Err(FileError::new(
            AgentCode::InvalidPath,
            format!("{path:?} contains a NUL byte"),
        ));
    }
    Ok(PathBuf::from(path))
}

/// A path that names an entry that can be created, replaced or removed: not `/`, not ending
/// in `/`, `.` or `..`. Returns (parent, file name).
fn split_path(path: &Path) -> Result<(PathBuf, &std::ffi::OsStr), FileError> {
    let bytes = path.as_os_str().as_bytes();
    let bad = || {
        FileError::new(
            AgentCode::InvalidPath,
            format!("{} does not name a file", path.to_string_lossy()),
        )
    };
    if bytes.ends_with(b"/") || bytes.ends_with(b"/.") || bytes.ends_with(b"/..") {
        return Err(bad());
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent.to_path_buf(), name)),
        _ => Err(bad()),
    }
}

fn kind_of(md: &Metadata) -> FileKind {
    let ft = md.file_type();
    if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// Builds the protocol's metadata of `path` (found at `host`) from its (lstat) metadata.
fn file_stat(path: &Path, host: &Path, md: &Metadata) -> FileStat {
    let kind = kind_of(md);
    let link_target = if kind == FileKind::Symlink {
        fs::read_link(host)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    FileStat {
        path: path.to_string_lossy().into_owned(),
        kind,
        size: md.size(),
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        link_target,
        metadata: BTreeMap::new(),
    }
}

/// [`file_stat`] with the file's metadata ([`read_metadata`]).
fn file_stat_with_metadata(path: &Path, host: &Path, md: &Metadata) -> FileStat {
    let mut st = file_stat(path, host, md);
    st.metadata = read_metadata(host, st.kind);
    st
}

pub(crate) fn lstat(root: &Root, path: &Path) -> Result<FileStat, FileError> {
    let err = |e| FileError::io("stat", path, &e);
    let at = root.entry(path).map_err(err)?;
    let md = fs::symlink_metadata(&*at).map_err(err)?;
    Ok(file_stat_with_metadata(path, &at, &md))
}

/// Runs blocking file-system work on tokio's blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, FileError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FileError::new(AgentCode::Io, format!("file task failed: {e}")))?
}

pub(crate) async fn send(w: &mut OwnedWriteHalf, frame: Frame) -> Result<(), ConnError> {
    let mut out = BytesMut::with_capacity(256);
    FrameCodec.encode(frame, &mut out)?;
    w.write_all(&out).await?;
    Ok(())
}

pub(crate) async fn send_error(w: &mut OwnedWriteHalf, e: FileError) -> Result<(), ConnError> {
    send(
        w,
        Frame::Event(Event::Error {
            code: e.code.as_str().to_owned(),
            message: e.message,
        }),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// ReadFile

pub(crate) async fn read_file(
    mut w: OwnedWriteHalf,
    root: Arc<Root>,
    path: String,
) -> Result<(), ConnError> {
    let opened = blocking(move || open_for_read(&root, &path)).await;
    let (file, stat) = match opened {
        Ok(v) => v,
        Err(e) => return send_error(&mut w, e).await,
    };
    let file = Arc::new(file);
    send(&mut w, Frame::Event(Event::File(stat))).await?;
    loop {
        let f = file.clone();
        // One chunk in flight: the next is read only after this one was handed to the
        // socket (backpressure: the file is never buffered whole).
        match blocking(move || read_chunk(&f)).await {
            Ok(Some(frame)) => w.write_all(&frame).await?,
            Ok(None) => return send(&mut w, Frame::DataEnd).await,
            // Instead of DataEnd: the host must not take a short file for a whole one.
            Err(e) => return send_error(&mut w, e).await,
        }
    }
}

fn open_for_read(root: &Root, path: &str) -> Result<(File, FileStat), FileError> {
    let path = check_path(path)?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer (regular files ignore it).
    let flags = OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK;
    let file = File::from(
        root.open_in(&path, flags)
            .map_err(|e| FileError::io("open", &path, &e))?,
    );
    let md = file
        .metadata()
        .map_err(|e| FileError::io("stat", &path, &e))?;
    match kind_of(&md) {
        // Not a symlink (opened): no link target to read.
        FileKind::File => Ok((file, file_stat(&path, &path, &md))),
        FileKind::Dir => Err(FileError::new(
            AgentCode::IsADirectory,
            format!("{} is a directory", path.to_string_lossy()),
        )),
        _ => Err(FileError::new(
            AgentCode::InvalidPath,
            format!("{} is not a regular file", path.to_string_lossy()),
        )),
    }
}

/// Reads one chunk straight into an encoded data frame; `None` at EOF.
fn read_chunk(file: &File) -> Result<Option<BytesMut>, FileError> {
    let mut out = BytesMut::with_capacity(HEADER_LEN + READ_CHUNK);
    out.put_bytes(0, HEADER_LEN + READ_CHUNK);
    let n = loop {
        match (&*file).read(&mut out[HEADER_LEN..]) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(FileError::new(AgentCode::Io, format!("read: {e}")));
            }
        }
    };
    if n == 0 {
        return Ok(None);
    }
    out.truncate(HEADER_LEN + n);
    // n <= READ_CHUNK, far below u32::MAX and MAX_FRAME_LEN.
    let len = (n + 1) as u32;
    out[0..4].copy_from_slice(&len.to_be_bytes());
    out[4] = TAG_DATA;
    Ok(Some(out))
}

// ---------------------------------------------------------------------------------------
// WriteFile

/// Parameters of a [`warren_proto::Request::WriteFile`].
pub(crate) struct WriteReq {
    pub path: String,
    pub mode: Option<u32>,
    pub parents: bool,
    pub uid: u32,
    pub gid: u32,
}

/// A temporary file that is unlinked when dropped unless it was renamed into place: on any
/// error, an early end of the connection, or cancellation.
struct TempFile {
    path: Option<PathBuf>,
    /// The directory `path` names through (it must stay open as long as `path` is used).
    _dir: Arc<At>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            // One unlink: quick enough to do here, even on the agent's thread.
            let _ = fs::remove_file(p);
        }
    }
}

pub(crate) async fn write_file(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    root: Arc<Root>,
    req: WriteReq,
) -> Result<(), ConnError> {
    let mode = req.mode.unwrap_or(FILE_MODE) & 0o7777;
    let (uid, gid) = (req.uid, req.gid);
    let target = match check_path(&req.path) {
        Ok(p) => p,
        Err(e) => return send_error(&mut w, e).await,
    };
    let t = target.clone();
    let prepared = blocking(move || prepare_write(&root, &t, req.parents, uid, gid)).await;
    let (file, tmp_path, dir) = match prepared {
        Ok(v) => v,
        Err(e) => return send_error(&mut w, e).await,
    };
    let dir = Arc::new(dir);
    let mut tmp = TempFile {
        path: Some(tmp_path.clone()),
        _dir: dir.clone(),
    };
    let file = Arc::new(file);
    loop {
        match frames.next().await {
            Some(Ok(Frame::Data(data))) => {
                let f = file.clone();
                let t = target.clone();
                // Next frame only after this one is written: the socket applies backpressure.
                let res = blocking(move || {
                    (&*f)
                        .write_all(&data)
                        .map_err(|e| FileError::io("write", &t, &e))
                })
                .await;
                if let Err(e) = res {
                    return send_error(&mut w, e).await;
                }
            }
            Some(Ok(Frame::DataEnd)) => break,
            Some(Ok(_)) => return Err(ConnError::UnexpectedFrame),
            // The host went away (or sent garbage) before DataEnd: `tmp` is unlinked.
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ConnError::HostGoneBeforeDataEnd),
        }
    }
    let t = target.clone();
    let res = blocking(move || finish_write(&file, &tmp_path, &dir, &t, mode, uid, gid)).await;
    match res {
        Ok(stat) => {
            tmp.path = None; // renamed into place
            send(&mut w, Frame::Event(Event::File(stat))).await
        }
        Err(e) => send_error(&mut w, e).await,
    }
}

/// Creates missing parents (when asked) and an exclusive temporary file next to `target`:
/// the file, its path, and the directory it is in.
fn prepare_write(
    root: &Root,
    target: &Path,
    parents: bool,
    uid: u32,
    gid: u32,
) -> Result<(File, PathBuf, At), FileError> {
    let (dir, name) = split_path(target)?;
    match root.entry(target).and_then(|at| fs::symlink_metadata(&*at)) {
        Ok(md) if md.is_dir() => {
            return Err(FileError::new(
                AgentCode::IsADirectory,
                format!("{} is a directory", target.to_string_lossy()),
            ))
        }
        _ => {}
    }
    if parents {
        create_dirs(root, &dir, DIR_MODE, uid, gid)?;
    }
    let dir_at = root
        .follow(&dir)
        .map_err(|e| FileError::io("create a temporary file for", target, &e))?;
    let mut last = None;
    for _ in 0..TEMP_ATTEMPTS {
        let tmp = dir_at.join(warren_proto::write_temp_name(name, random()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp, dir_at)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(FileError::io("create a temporary file for", target, &e)),
        }
    }
    let e = last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EEXIST));
    Err(FileError::io("create a temporary file for", target, &e))
}

fn finish_write(
    file: &File,
    tmp: &Path,
    dir: &At,
    target: &Path,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<FileStat, FileError> {
    let err = |what: &str, e: io::Error| FileError::io(what, target, &e);
    file.sync_all().map_err(|e| err("sync", e))?;
    std::os::unix::fs::fchown(file, Some(uid), Some(gid)).map_err(|e| err("chown", e))?;
    // After chown, which may clear set-id bits.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| err("chmod", e))?;
    let name = target.file_name().ok_or_else(|| {
        err(
            "rename into place",
            io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    fs::rename(tmp, dir.join(name)).map_err(|e| err("rename into place", e))?;
    // Make the rename durable too (best effort: some file systems refuse to sync dirs).
    if let Ok(d) = File::open(&**dir) {
        let _ = d.sync_all();
    }
    let md = file.metadata().map_err(|e| err("stat", e))?;
    // A regular file: no link target to read.
    Ok(file_stat(target, target, &md))
}

/// A random 64-bit number (std's hasher keys come from the OS's random source).
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// `mkdir -p`: creates the missing directories of `dir` with `mode`, owned by `uid`/`gid`.
/// Existing ancestors are left alone.
fn create_dirs(root: &Root, dir: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), FileError> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        match root.follow(d).and_then(|at| fs::metadata(&*at)) {
            Ok(md) if md.is_dir() => break,
            Ok(_) => {
                return Err(FileError::new(
                    AgentCode::NotADirectory,
                    format!("{} is not a directory", d.to_string_lossy()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(d);
                cur = d.parent();
            }
            Err(e) => return Err(FileError::io("stat", d, &e)),
        }
    }
    for d in missing.into_iter().rev() {
        match make_dir(root, d, mode, uid, gid) {
            Ok(()) => {}
            // Raced with another creator: fine if it is a directory.
            Err(e) if e.code == AgentCode::Exists && is_dir(root, d) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Whether `path` is (or leads by symlinks to) a directory inside the root.
fn is_dir(root: &Root, path: &Path) -> bool {
    root.follow(path)
        .and_then(|at| fs::metadata(&*at))
        .is_ok_and(|m| m.is_dir())
}

/// One `mkdir` with exactly `mode` (not masked by the umask) and owner `uid`/`gid`.
fn make_dir(root: &Root, dir: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), FileError> {
    let at = root
        .entry(dir)
        .map_err(|e| FileError::io("mkdir", dir, &e))?;
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&*at)
        .map_err(|e| FileError::io("mkdir", dir, &e))?;
    std::os::unix::fs::lchown(&*at, Some(uid), Some(gid))
        .map_err(|e| FileError::io("chown", dir, &e))?;
    fs::set_permissions(&*at, fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| FileError::io("chmod", dir, &e))
}

// ---------------------------------------------------------------------------------------
// FileOp

pub(crate) async fn file_op(
    mut w: OwnedWriteHalf,
    root: Arc<Root>,
    op: FileOp,
) -> Result<(), ConnError> {
    match blocking(move || run_op(&root, op)).await {
        Ok(res) => {
            let out = encode_result(res)?;
            w.write_all(&out).await?;
            Ok(())
        }
        Err(e) => send_error(&mut w, e).await,
    }
}

/// Encodes an answer. A listing too big for one frame is cut (and marked `truncated`) so
/// that it fits: the host gets as much as the protocol can carry instead of a closed
/// connection.
fn encode_result(mut res: FileOpResult) -> Result<BytesMut, ConnError> {
    loop {
        let mut out = BytesMut::new();
        match FrameCodec.encode(Frame::Event(Event::FileOp(res.clone())), &mut out) {
            Ok(()) => return Ok(out),
            Err(ProtoError::FrameTooLarge(len)) => match &mut res {
                FileOpResult::List { entries, truncated } if !entries.is_empty() => {
                    // Scale down to ~7/8 of the limit; at least one fewer entry each round.
                    let keep = (entries.len() as u128 * (MAX_FRAME_LEN as u128 / 8 * 7)
                        / len.max(1) as u128) as usize;
                    entries.truncate(keep.min(entries.len() - 1));
                    *truncated = true;
                }
                _ => return Err(ProtoError::FrameTooLarge(len).into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

fn run_op(root: &Root, op: FileOp) -> Result<FileOpResult, FileError> {
    match op {
        FileOp::Stat { path } => Ok(FileOpResult::Stat(lstat(root, &check_path(&path)?)?)),
        FileOp::List { path, depth, limit } => list(root, &check_path(&path)?, depth, limit),
        FileOp::Mkdir {
            path,
            parents,
            mode,
            uid,
            gid,
        } => {
            let path = check_path(&path)?;
            mkdir(root, &path, parents, mode.unwrap_or(DIR_MODE), uid, gid)?;
            Ok(FileOpResult::Done)
        }
        FileOp::Remove { path, recursive } => {
            remove(root, &check_path(&path)?, recursive)?;
            Ok(FileOpResult::Done)
        }
        FileOp::Rename {
            from,
            to,
            overwrite,
        } => {
            rename(root, &check_path(&from)?, &check_path(&to)?, overwrite)?;
            Ok(FileOpResult::Done)
        }
        FileOp::SetMetadata { path, metadata } => Ok(FileOpResult::Stat(set_metadata(
            root,
            &check_path(&path)?,
            metadata,
        )?)),
    }
}

/// Entries below `root` (which may itself be a symlink to a directory), depth-first with
/// each directory's entries sorted by name, i.e. sorted by path component-wise. Symlinks
/// below `root` are reported, never followed.
fn list(root: &Root, path: &Path, depth: u32, limit: u32) -> Result<FileOpResult, FileError> {
    let tree = Tree::open(root, path).map_err(|e| FileError::io("stat", path, &e))?;
    let md = fs::metadata(tree.host(path)).map_err(|e| FileError::io("stat", path, &e))?;
    if !md.is_dir() {
        return Err(FileError::new(
            AgentCode::NotADirectory,
            format!("{} is not a directory", path.to_string_lossy()),
        ));
    }
    let limit = limit as usize;
    let mut entries = Vec::new();
    let mut truncated = false;
    // Stack of sorted entries still to visit, each with its depth; reversed for popping.
    let mut stack: Vec<(PathBuf, u32)> = Vec::new();
    push_children(&tree, path, 1, &mut stack).map_err(|e| FileError::io("list", path, &e))?;
    while let Some((path, level)) = stack.pop() {
        let host = tree.host(&path);
        let Ok(md) = fs::symlink_metadata(&host) else {
            continue; // vanished meanwhile
        };
        if entries.len() == limit {
            truncated = true;
            break;
        }
        entries.push(file_stat_with_metadata(&path, &host, &md));
        if level < depth && md.is_dir() {
            // An unreadable subdirectory is listed but not descended into.
            let _ = push_children(&tree, &path, level + 1, &mut stack);
        }
    }
    Ok(FileOpResult::List { entries, truncated })
}

fn push_children(
    tree: &Tree,
    dir: &Path,
    level: u32,
    stack: &mut Vec<(PathBuf, u32)>,
) -> io::Result<()> {
    let mut names = Vec::new();
    for entry in fs::read_dir(tree.host(dir))? {
        names.push(entry?.file_name());
    }
    names.sort();
    stack.extend(names.into_iter().rev().map(|n| (dir.join(n), level)));
    Ok(())
}

fn mkdir(
    root: &Root,
    path: &Path,
    parents: bool,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), FileError> {
    let (parent, _) = split_path(path)?;
    if parents {
        create_dirs(root, &parent, DIR_MODE, uid, gid)?;
        match root.entry(path).and_then(|at| fs::symlink_metadata(&*at)) {
            Ok(md) if md.is_dir() => return Ok(()),
            Ok(_) => {
                return Err(FileError::new(
                    AgentCode::Exists,
                    format!("{} exists and is not a directory", path.to_string_lossy()),
                ))
            }
            Err(_) => {}
        }
    }
    match make_dir(root, path, mode, uid, gid) {
        // Created concurrently: `mkdir -p` semantics.
        Err(e) if parents && e.code == AgentCode::Exists && is_dir(root, path) => Ok(()),
        r => r,
    }
}

fn remove(root: &Root, path: &Path, recursive: bool) -> Result<(), FileError> {
    let (_, _) = split_path(path)?; // refuses `/`
    let err = |e| FileError::io("remove", path, &e);
    let at = root.entry(path).map_err(err)?;
    let md = fs::symlink_metadata(&*at).map_err(err)?;
    let res = if md.is_dir() {
        if recursive {
            // Never follows symlinks: a link to a directory is unlinked, not descended into.
            fs::remove_dir_all(&*at)
        } else {
            fs::remove_dir(&*at)
        }
    } else {
        fs::remove_file(&*at)
    };
    res.map_err(|e| FileError::io("remove", path, &e))
}

fn rename(root: &Root, from: &Path, to: &Path, overwrite: bool) -> Result<(), FileError> {
    split_path(from)?;
    split_path(to)?;
    let err = |e: io::Error| {
        FileError::new(
            io_code(&e),
            format!(
                "rename {} to {}: {e}",
                from.to_string_lossy(),
                to.to_string_lossy()
            ),
        )
    };
    let (from_at, to_at) = (root.entry(from).map_err(err)?, root.entry(to).map_err(err)?);
    let (from, to) = (&*from_at, &*to_at);
    if overwrite {
        return fs::rename(from, to).map_err(err);
    }
    match rename_noreplace(from, to) {
        Ok(()) => Ok(()),
        // File systems without RENAME_NOREPLACE: check, then rename (not atomic).
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(err(io::Error::from_raw_os_error(libc::EEXIST)));
            }
            fs::rename(from, to).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

// ---------------------------------------------------------------------------------------
// Metadata: user extended attributes `user.warren.<key>`

/// Sets (or, with an empty value, removes) the metadata keys of the regular file or
/// directory `path` (not followed) and returns its metadata afterwards. Everything is checked
/// before anything changes.
fn set_metadata(
    root: &Root,
    path: &Path,
    metadata: BTreeMap<String, String>,
) -> Result<FileStat, FileError> {
    let metadata =
        normalize_metadata(metadata).map_err(|m| FileError::new(AgentCode::InvalidRequest, m))?;
    split_path(path)?; // `/` and paths ending in `..` would name a magic link, not a file
    let err = |e| FileError::io("stat", path, &e);
    let at = root.entry(path).map_err(err)?;
    let md = fs::symlink_metadata(&*at).map_err(err)?;
    match kind_of(&md) {
        FileKind::File | FileKind::Dir => {}
        FileKind::Symlink => {
            return Err(FileError::new(
                AgentCode::InvalidRequest,
                format!(
                    "{} is a symlink; metadata can only be set on regular files and directories",
                    path.to_string_lossy()
                ),
            ))
        }
        FileKind::Other => {
            return Err(FileError::new(
                AgentCode::InvalidRequest,
                format!(
                    "{} is not a regular file or directory; metadata can only be set on those",
                    path.to_string_lossy()
                ),
            ))
        }
    }
    // `l*xattr` on the entry's name: never follows it, even if it was swapped for a symlink
    // since the check (and the kernel refuses `user.` attributes on symlinks anyway).
    for (key, value) in &metadata {
        let name = format!("{METADATA_XATTR_PREFIX}{key}");
        let res = if value.is_empty() {
            match rustix::fs::lremovexattr(&*at, name.as_str()) {
                Err(rustix::io::Errno::NODATA) => Ok(()), // not set: already removed
                r => r,
            }
        } else {
            rustix::fs::lsetxattr(
                &*at,
                name.as_str(),
                value.as_bytes(),
                rustix::fs::XattrFlags::empty(),
            )
        };
        res.map_err(|e| xattr_error(path, key, io::Error::from(e)))?;
    }
    let md = fs::symlink_metadata(&*at).map_err(err)?;
    Ok(file_stat_with_metadata(path, &at, &md))
}

/// Maps a failure to set or remove metadata `key` of `path`.
fn xattr_error(path: &Path, key: &str, e: io::Error) -> FileError {
    let path = path.to_string_lossy();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => FileError::new(
            AgentCode::NotSupported,
            format!(
                "the file system of {path} does not support extended attributes, \
                 which hold file metadata"
            ),
        ),
        Some(libc::E2BIG) => FileError::new(
            AgentCode::InvalidRequest,
            format!("metadata key {key:?} of {path}: the value is too large for its file system"),
        ),
        Some(libc::ENOSPC) => FileError::new(
            AgentCode::NoSpace,
            format!(
                "set metadata key {key:?} of {path}: no space (the disk is full, or the file \
                 system's room for extended attributes of one file is used up)"
            ),
        ),
        _ => FileError::new(
            io_code(&e),
            format!("set metadata key {key:?} of {path}: {e}"),
        ),
    }
}

/// The metadata of the entry at `host` (not followed), of kind `kind`: its `user.warren.*`
/// extended attributes with the prefix stripped. Only regular files and directories have
/// any; a file system without extended attributes, an unreadable attribute, a name that is
/// not a valid key or a value that is not UTF-8 is skipped, never an error. One
/// `llistxattr` per entry; values are read only for our keys.
fn read_metadata(host: &Path, kind: FileKind) -> BTreeMap<String, String> {
    if !matches!(kind, FileKind::File | FileKind::Dir) {
        return BTreeMap::new();
    }
    let mut names = [0u8; 1024];
    match rustix::fs::llistxattr(host, &mut names[..]) {
        Ok(n) => metadata_values(host, &names[..n]),
        // More attribute names than fit: ask for the size, then read them all.
        Err(rustix::io::Errno::RANGE) => {
            let Ok(len) = rustix::fs::llistxattr_query(host) else {
                return BTreeMap::new();
            };
            // Grown meanwhile: a little slack, then give up.
            let mut names = vec![0u8; len + 1024];
            match rustix::fs::llistxattr(host, &mut names[..]) {
                Ok(n) => metadata_values(host, &names[..n]),
                Err(_) => BTreeMap::new(),
            }
        }
        Err(_) => BTreeMap::new(),
    }
}

/// The values of our keys among `names` (NUL-separated attribute names of `host`).
fn metadata_values(host: &Path, names: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut value = Vec::new();
    for name in names.split(|&b| b == 0) {
        let Some(key) = name.strip_prefix(METADATA_XATTR_PREFIX.as_bytes()) else {
            continue;
        };
        let Ok(key) = std::str::from_utf8(key) else {
            continue;
        };
        if !is_metadata_key(key) {
            continue;
        }
        value.resize(MAX_METADATA_VALUE_LEN, 0);
        // Longer than ours can be (set from inside the sandbox): `ERANGE`, skipped.
        let Ok(n) = rustix::fs::lgetxattr(host, name, &mut value[..]) else {
            continue;
        };
        match std::str::from_utf8(&value[..n]) {
            Ok(v) if !v.is_empty() => {
                out.insert(key.to_owned(), v.to_owned());
            }
            _ => {}
        }
    }
    out
}

fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use tokio_util::codec::Decoder;

    #[test]
    fn data_header_matches_codec() {
        let mut expected = BytesMut::new();
        FrameCodec
            .encode(Frame::Data(Bytes::from_static(b"abc")), &mut expected)
            .unwrap();
        let mut ours = BytesMut::new();
        ours.put_u32(4);
        ours.put_u8(TAG_DATA);
        ours.put_slice(b"abc");
        assert_eq!(expected, ours);
    }

    #[test]
    fn big_listings_are_cut_to_fit_a_frame() {
        let entry = FileStat {
            path: format!("/{}", "x".repeat(200)),
            kind: FileKind::File,
            size: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            link_target: None,
            metadata: BTreeMap::new(),
        };
        let res = FileOpResult::List {
            entries: vec![entry; 20_000],
            truncated: false,
        };
        let mut out = encode_result(res).unwrap();
        assert!(out.len() <= MAX_FRAME_LEN + 4);
        match FrameCodec.decode(&mut out).unwrap() {
            Some(Frame::Event(Event::FileOp(FileOpResult::List { entries, truncated }))) => {
                assert!(truncated);
                assert!(
                    entries.len() > 1000 && entries.len() < 20_000,
                    "{}",
                    entries.len()
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn codes() {
        let c = |n| io_code(&io::Error::from_raw_os_error(n));
        assert_eq!(c(libc::ENOENT).as_str(), "not_found");
        assert_eq!(c(libc::ENOTDIR).as_str(), "not_a_directory");
        assert_eq!(c(libc::EISDIR).as_str(), "is_a_directory");
        assert_eq!(c(libc::ENOTEMPTY).as_str(), "not_empty");
        assert_eq!(c(libc::EEXIST).as_str(), "exists");
        assert_eq!(c(libc::EPERM).as_str(), "permission_denied");
        assert_eq!(c(libc::EACCES).as_str(), "permission_denied");
        assert_eq!(c(libc::ELOOP).as_str(), "invalid_path");
        assert_eq!(c(libc::ENAMETOOLONG).as_str(), "invalid_path");
        assert_eq!(c(libc::EIO).as_str(), "io");
        assert_eq!(c(libc::EDQUOT).as_str(), "quota_exceeded");
        assert_eq!(c(libc::ENOSPC).as_str(), "no_space");
    }

    #[test]
    fn paths() {
        assert!(check_path("rel").is_err());
        assert!(check_path("/a\0b").is_err());
        assert!(split_path(Path::new("/")).is_err());
        assert!(split_path(Path::new("/a/")).is_err());
        assert!(split_path(Path::new("/a/..")).is_err());
        let (dir, name) = split_path(Path::new("/a/b")).unwrap();
        assert_eq!((dir.as_path(), name), (Path::new("/a"), "b".as_ref()));
    }
}
