//! [`Request::ReadArchive`]: a directory tree streamed out as a tar archive.
//!
//! The archive is built by the `tar` crate on tokio's blocking pool, writing into a
//! [`ChunkWriter`] that hands fixed-size chunks to the agent's thread through a small bounded
//! channel: at most a few chunks are in memory, and a slow host slows the walk down (the
//! blocking task waits on the channel) instead of buffering the tree.
//!
//! [`Request::ReadArchive`]: warren_proto::Request::ReadArchive

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;
use warren_proto::AgentCode;
use warren_proto::{Event, FileKind, Frame};

use crate::error::ConnError;
use crate::files::{self, FileError, READ_CHUNK};
use crate::root::{Root, Tree};

/// What the archive builder hands to the connection.
enum Msg {
    Chunk(Bytes),
    /// The archive is complete (everything before was sent).
    Done,
    Failed(FileError),
}

pub(crate) async fn read_archive(
    mut w: OwnedWriteHalf,
    root: Arc<Root>,
    path: String,
) -> Result<(), ConnError> {
    let dir = match files::check_path(&path) {
        Ok(p) => p,
        Err(e) => return files::send_error(&mut w, e).await,
    };
    let opened = files::blocking(move || {
        let stat = files::lstat(&root, &dir)?;
        let tree = Tree::open(&root, &dir).map_err(|e| FileError::io("open", &dir, &e))?;
        Ok((stat, tree))
    })
    .await;
    let (stat, tree) = match opened {
        Ok((s, tree)) if s.kind == FileKind::Dir => (s, tree),
        Ok(_) => {
            let e = FileError::new(
                AgentCode::NotADirectory,
                format!("{path} is not a directory"),
            );
            return files::send_error(&mut w, e).await;
        }
        Err(e) => return files::send_error(&mut w, e).await,
    };
    files::send(&mut w, Frame::Event(Event::File(stat))).await?;
    let (tx, mut rx) = mpsc::channel::<Msg>(2);
    tokio::task::spawn_blocking(move || {
        let msg = match build(&tree, tx.clone()) {
            Ok(()) => Msg::Done,
            Err(e) => Msg::Failed(e),
        };
        // The receiver is gone only when the host went away: nothing to tell anyone.
        let _ = tx.blocking_send(msg);
    });
    loop {
        match rx.recv().await {
            Some(Msg::Chunk(b)) => files::send(&mut w, Frame::Data(b)).await?,
            Some(Msg::Done) => return files::send(&mut w, Frame::DataEnd).await,
            Some(Msg::Failed(e)) => return files::send_error(&mut w, e).await,
            // The builder ended without a verdict (it panicked): never claim completeness.
            None => {
                let e = FileError::new(AgentCode::Io, "the archive task ended unexpectedly");
                return files::send_error(&mut w, e).await;
            }
        }
    }
}

/// Buffers the archive's bytes and sends them in chunks of [`READ_CHUNK`].
struct ChunkWriter {
    tx: mpsc::Sender<Msg>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(READ_CHUNK),
        ));
        self.tx
            .blocking_send(Msg::Chunk(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the host went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = READ_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= READ_CHUNK {
            self.send_buf()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buf()
    }
}

/// Walks `root` (depth first, sorted by name) and writes every directory, regular file and
/// symlink below it into a tar archive, with names relative to `root`. Symlinks are stored
/// as symlinks and never followed; other kinds (sockets, FIFOs, devices) are skipped, as are
/// entries that vanish during the walk.
fn build(tree: &Tree, tx: mpsc::Sender<Msg>) -> Result<(), FileError> {
    let root = tree.host(tree.shown());
    let shown = |rel: &Path| tree.shown().join(rel);
    let writer = ChunkWriter {
        tx,
        buf: Vec::with_capacity(READ_CHUNK),
    };
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut entries = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                continue
            }
            Err(e) => return Err(FileError::io("read directory", &shown(&rel), &e)),
        };
        entries.sort();
        // Reverse so that popping the stack visits subdirectories in name order.
        let mut subdirs = Vec::new();
        for name in entries {
            let rel_path = rel.join(&name);
            let full = root.join(&rel_path);
            let md = match fs::symlink_metadata(&full) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FileError::io("stat", &shown(&rel_path), &e)),
            };
            let ft = md.file_type();
            if !(ft.is_dir() || ft.is_file() || ft.is_symlink()) {
                continue;
            }
            match tar.append_path_with_name(&full, &rel_path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Err(FileError::new(AgentCode::Io, "the host went away"))
                }
                Err(e) => return Err(FileError::io("archive", &shown(&rel_path), &e)),
            }
            if ft.is_dir() {
                subdirs.push(rel_path);
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    let mut writer = tar
        .into_inner()
        .map_err(|e| FileError::new(AgentCode::Io, format!("finish archive: {e}")))?;
    writer
        .flush()
        .map_err(|e| FileError::new(AgentCode::Io, format!("finish archive: {e}")))
}
