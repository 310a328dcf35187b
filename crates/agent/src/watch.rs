//! [`Request::WatchFiles`]: inotify on a path (and every directory below it when recursive),
//! reported as [`Event::FileEvent`]s until the host closes the connection. Dropping the
//! watch (on any return) closes the inotify descriptor, which removes all its watches.
//!
//! [`Request::WatchFiles`]: warren_proto::Request::WatchFiles

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;
use warren_proto::AgentCode;
use warren_proto::{Event, FileEventKind, FileKind, Frame, FrameCodec};

use crate::error::ConnError;
use crate::files::{blocking, check_path, send, send_error, FileError};
use crate::root::{Root, Tree};

/// Most directories one recursive watch adds.
const MAX_WATCHES: usize = 8192;
/// How long the first half of a rename waits for its second half from a later read.
const MOVE_PAIRING: std::time::Duration = std::time::Duration::from_millis(20);

/// The inotify instance, pollable by tokio.
struct Fd(Inotify);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
}

/// An entry found below a newly watched directory.
type Found = (PathBuf, FileKind);

/// Adds watches for `dir` and (when `recursive`) the directories below it, never following
/// symlinks. Returns the watched directories and the entries found below `dir` (for
/// `created` events when `dir` is new).
fn add_tree(
    fd: &Fd,
    tree: &Tree,
    dir: &Path,
    recursive: bool,
    budget: usize,
) -> (Vec<(WatchDescriptor, PathBuf)>, Vec<Found>) {
    let mut watched = Vec::new();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let flags = mask() | AddWatchFlags::IN_ONLYDIR | AddWatchFlags::IN_DONT_FOLLOW;
    while let Some(d) = stack.pop() {
        if watched.len() >= budget {
            break;
        }
        let Ok(wd) = fd.0.add_watch(&tree.host(&d), flags) else {
            continue;
        };
        watched.push((wd, d.clone()));
        if !recursive {
            continue;
        }
        let Ok(entries) = fs::read_dir(tree.host(&d)) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = d.join(entry.file_name());
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            found.push((
                path.clone(),
                if is_dir {
                    FileKind::Dir
                } else {
                    FileKind::File
                },
            ));
            if is_dir {
                stack.push(path);
            }
        }
    }
    (watched, found)
}

struct Watch {
    fd: Arc<AsyncFd<Fd>>,
    /// Where the watched paths are (the `dirs` paths are as the host names them).
    tree: Arc<Tree>,
    recursive: bool,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Files written to since their last close.
    dirty: HashSet<PathBuf>,
    root_kind: FileKind,
    /// `IN_MOVED_FROM`s still waiting for their `IN_MOVED_TO` (cookie, path, kind): the
    /// kernel queues the two halves of a rename one after the other, so a read can end
    /// between them. Paired in the next batch, or reported as moved out (deleted) once
    /// [`MOVE_PAIRING`] passes without one.
    unpaired: Vec<(u32, PathBuf, FileKind)>,
}

impl Watch {
    async fn add(&mut self, dir: PathBuf) -> Vec<Found> {
        let fd = self.fd.clone();
        let tree = self.tree.clone();
        let recursive = self.recursive;
        let budget = MAX_WATCHES.saturating_sub(self.dirs.len());
        let res =
            blocking(move || Ok(add_tree(fd.get_ref(), &tree, &dir, recursive, budget))).await;
        let Ok((watched, found)) = res else {
            return Vec::new();
        };
        self.dirs.extend(watched);
        found
    }

    /// Moves the recorded paths of watched directories below `from` to below `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        for p in self.dirs.values_mut() {
            if let Ok(rest) = p.strip_prefix(from) {
                *p = to.join(rest);
            }
        }
    }
}

fn file_event(event: FileEventKind, path: &Path, kind: FileKind, to: Option<&Path>) -> Frame {
    Frame::Event(Event::FileEvent {
        event,
        path: path.to_string_lossy().into_owned(),
        kind,
        to: to.map(|t| t.to_string_lossy().into_owned()),
    })
}

fn kind_of(ev: &InotifyEvent) -> FileKind {
    if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
        FileKind::Dir
    } else {
        FileKind::File
    }
}

pub(crate) async fn watch(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    sandbox: Arc<Root>,
    path: String,
    recursive: bool,
) -> Result<(), ConnError> {
    let root = match check_path(&path) {
        Ok(p) => p,
        Err(e) => return send_error(&mut w, e).await,
    };
    let r = root.clone();
    let opened =
        blocking(move || Tree::open(&sandbox, &r).map_err(|e| FileError::io("stat", &r, &e)));
    let tree = match opened.await {
        Ok(t) => Arc::new(t),
        Err(e) => return send_error(&mut w, e).await,
    };
    let init = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
        .map_err(|e| FileError::new(AgentCode::Io, format!("inotify_init: {e}")))
        .and_then(|i| {
            // SAFETY: `Fd` owns the inotify descriptor (an `OwnedFd` inside `Inotify`) and
            // always returns that same descriptor; it stays open until the `AsyncFd` drops it.
            unsafe { AsyncFd::register(Fd(i)) }
                .map_err(|e| FileError::new(AgentCode::Io, format!("inotify: {e}")))
        });
    let fd = match init {
        Ok(fd) => Arc::new(fd),
        Err(e) => return send_error(&mut w, e).await,
    };
    // The root itself: a directory (a file is watched directly).
    let r = root.clone();
    let f = fd.clone();
    let t = tree.clone();
    let root_wd = blocking(move || {
        let host = t.host(&r);
        let md = fs::metadata(&host).map_err(|e| FileError::io("stat", &r, &e))?;
        let flags = if md.is_dir() {
            mask() | AddWatchFlags::IN_ONLYDIR
        } else {
            mask()
        };
        let wd = f
            .get_ref()
            .0
            .add_watch(&host, flags)
            .map_err(|e| FileError::io("watch", &r, &std::io::Error::from(e)))?;
        Ok((wd, md.is_dir()))
    })
    .await;
    let (root_wd, root_is_dir) = match root_wd {
        Ok(v) => v,
        Err(e) => return send_error(&mut w, e).await,
    };
    let mut watch = Watch {
        fd: fd.clone(),
        tree: tree.clone(),
        recursive,
        dirs: HashMap::from([(root_wd, root.clone())]),
        dirty: HashSet::new(),
        root_kind: if root_is_dir {
            FileKind::Dir
        } else {
            FileKind::File
        },
        unpaired: Vec::new(),
    };
    if recursive && root_is_dir {
        let subdirs = blocking({
            let r = root.clone();
            let t = tree.clone();
            move || {
                let mut dirs = Vec::new();
                if let Ok(entries) = fs::read_dir(t.host(&r)) {
                    for e in entries.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            dirs.push(r.join(e.file_name()));
                        }
                    }
                }
                Ok(dirs)
            }
        })
        .await
        .unwrap_or_default();
        for d in subdirs {
            watch.add(d).await;
        }
    }
    send(&mut w, Frame::Event(Event::Watching)).await?;
    loop {
        let pairing = tokio::time::sleep(MOVE_PAIRING);
        let events = tokio::select! {
            // A rename's second half did not come: the files moved out of the watch.
            () = pairing, if !watch.unpaired.is_empty() => {
                let stale = std::mem::take(&mut watch.unpaired);
                for frame in moved_out(&mut watch, stale) {
                    send(&mut w, frame).await?;
                }
                continue;
            }
            frame = frames.next() => match frame {
                // The host closed the connection (or sent something): the watch ends.
                None | Some(Err(_)) => return Ok(()),
                Some(Ok(_)) => return Err(ConnError::UnexpectedFrame),
            },
            ready = fd.readable() => {
                let mut guard = ready?;
                match guard.try_io(|inner| inner.get_ref().0.read_events().map_err(std::io::Error::from)) {
                    Ok(Ok(events)) => events,
                    Ok(Err(e)) if e.raw_os_error() == Some(Errno::EAGAIN as i32) => continue,
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_would_block) => continue,
                }
            }
        };
        let out = translate(&mut watch, &root, events).await;
        for frame in out {
            send(&mut w, frame).await?;
        }
        if watch.dirs.is_empty() {
            // The root went away: nothing more can be reported.
            return Ok(());
        }
    }
}

/// Turns one batch of inotify events into protocol events, in order.
async fn translate(watch: &mut Watch, root: &Path, events: Vec<InotifyEvent>) -> Vec<Frame> {
    let mut out = Vec::new();
    // IN_MOVED_FROM waiting for its IN_MOVED_TO: cookie → (path, kind); those of the last
    // batch first.
    let carried = std::mem::take(&mut watch.unpaired);
    let carried_cookies: Vec<u32> = carried.iter().map(|(c, _, _)| *c).collect();
    let mut moves = carried;
    for ev in events {
        if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
            watch.dirs.remove(&ev.wd);
            continue;
        }
        let Some(dir) = watch.dirs.get(&ev.wd).cloned() else {
            continue;
        };
        let path = match &ev.name {
            Some(n) => dir.join(n),
            None => dir.clone(),
        };
        let kind = kind_of(&ev);
        let m = ev.mask;
        if m.contains(AddWatchFlags::IN_CREATE) {
            out.push(file_event(FileEventKind::Created, &path, kind, None));
            if kind == FileKind::Dir && watch.recursive {
                for (p, k) in watch.add(path).await {
                    out.push(file_event(FileEventKind::Created, &p, k, None));
                }
            }
        } else if m.contains(AddWatchFlags::IN_MODIFY) {
            watch.dirty.insert(path);
        } else if m.contains(AddWatchFlags::IN_CLOSE_WRITE) {
            if watch.dirty.remove(&path) {
                out.push(file_event(FileEventKind::Modified, &path, kind, None));
            }
        } else if m.contains(AddWatchFlags::IN_DELETE) {
            watch.dirty.remove(&path);
            out.push(file_event(FileEventKind::Deleted, &path, kind, None));
        } else if m.contains(AddWatchFlags::IN_DELETE_SELF) {
            if path == root {
                out.push(file_event(
                    FileEventKind::Deleted,
                    &path,
                    watch.root_kind,
                    None,
                ));
            }
        } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
            moves.push((ev.cookie, path, kind));
        } else if m.contains(AddWatchFlags::IN_MOVED_TO) {
            match moves.iter().position(|(c, _, _)| *c == ev.cookie) {
                Some(i) => {
                    let (_, from, kind) = moves.remove(i);
                    if watch.dirty.remove(&from) {
                        watch.dirty.insert(path.clone());
                    }
                    if kind == FileKind::Dir {
                        watch.moved(&from, &path);
                    }
                    out.push(file_event(FileEventKind::Renamed, &from, kind, Some(&path)));
                }
                None => {
                    // Moved in from outside the watch.
                    out.push(file_event(FileEventKind::Created, &path, kind, None));
                    if kind == FileKind::Dir && watch.recursive {
                        for (p, k) in watch.add(path).await {
                            out.push(file_event(FileEventKind::Created, &p, k, None));
                        }
                    }
                }
            }
        }
    }
    // Carried over and still unpaired after a whole batch: moved out of the watch. This
    // batch's own may still pair in the next one.
    let (stale, waiting): (Vec<_>, Vec<_>) = moves
        .into_iter()
        .partition(|(c, _, _)| carried_cookies.contains(c));
    out.extend(moved_out(watch, stale));
    watch.unpaired = waiting;
    out
}

/// Files and directories moved out of the watch: gone as far as the watcher can tell.
fn moved_out(watch: &mut Watch, moves: Vec<(u32, PathBuf, FileKind)>) -> Vec<Frame> {
    let mut out = Vec::new();
    for (_, from, kind) in moves {
        watch.dirty.remove(&from);
        out.push(file_event(FileEventKind::Deleted, &from, kind, None));
        let gone: Vec<WatchDescriptor> = watch
            .dirs
            .iter()
            .filter(|(_, p)| p.starts_with(&from))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            let _ = watch.fd.get_ref().0.rm_watch(wd);
            watch.dirs.remove(&wd);
        }
    }
    out
}
