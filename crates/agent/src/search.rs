//! [`Request::SearchFiles`] and [`Request::ReplaceFiles`]: walks below a directory (never
//! following symlinks) on tokio's blocking pool, bounded in results and time.
//!
//! [`Request::SearchFiles`]: warren_proto::Request::SearchFiles
//! [`Request::ReplaceFiles`]: warren_proto::Request::ReplaceFiles

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use globset::{GlobBuilder, GlobMatcher};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio_util::codec::Encoder;
use warren_proto::AgentCode;
use warren_proto::{
    Event, Frame, FrameCodec, ProtoError, ReplaceSpec, ReplacedFile, SearchMatch, SearchSpec,
    MAX_FRAME_LEN,
};

use crate::error::ConnError;
use crate::files::{blocking, check_path, send_error, FileError};
use crate::root::{Root, Tree};

/// Lines longer than this many characters are cut in results.
const MAX_LINE_CHARS: usize = 1000;
/// A file with a NUL byte in its first this-many bytes is binary and skipped.
const BINARY_PROBE: usize = 8192;
/// Results are kept below this many (estimated) encoded bytes so the answer fits a frame.
const ANSWER_BUDGET: usize = MAX_FRAME_LEN / 8 * 7;

pub(crate) async fn search(
    mut w: OwnedWriteHalf,
    root: Arc<Root>,
    spec: SearchSpec,
) -> Result<(), ConnError> {
    match blocking(move || run_search(&root, &spec)).await {
        Ok(event) => send_fitting(&mut w, event).await,
        Err(e) => send_error(&mut w, e).await,
    }
}

pub(crate) async fn replace(
    mut w: OwnedWriteHalf,
    root: Arc<Root>,
    spec: ReplaceSpec,
) -> Result<(), ConnError> {
    match blocking(move || run_replace(&root, &spec)).await {
        Ok(event) => send_fitting(&mut w, event).await,
        Err(e) => send_error(&mut w, e).await,
    }
}

/// Sends a result, cutting its list (and marking it truncated) if it does not fit a frame.
async fn send_fitting(w: &mut OwnedWriteHalf, mut event: Event) -> Result<(), ConnError> {
    loop {
        let mut out = BytesMut::new();
        match FrameCodec.encode(Frame::Event(event.clone()), &mut out) {
            Ok(()) => {
                w.write_all(&out).await?;
                return Ok(());
            }
            Err(ProtoError::FrameTooLarge(_)) => match &mut event {
                Event::SearchResult {
                    matches, truncated, ..
                } if !matches.is_empty() => {
                    matches.truncate(matches.len() / 4 * 3);
                    *truncated = true;
                }
                Event::ReplaceResult {
                    files, truncated, ..
                } if !files.is_empty() => {
                    files.truncate(files.len() / 4 * 3);
                    *truncated = true;
                }
                _ => return Err(ProtoError::FrameTooLarge(MAX_FRAME_LEN + 1).into()),
            },
            Err(e) => return Err(e.into()),
        }
    }
}

/// Which files a walk visits.
struct Walk {
    /// The start, as the host named it (results are named below it).
    root: PathBuf,
    tree: Tree,
    glob: Option<GlobMatcher>,
    /// The glob has no `/`: it is matched against file names only.
    glob_on_name: bool,
    hidden: bool,
    deadline: Instant,
}

impl Walk {
    fn new(
        sandbox: &Root,
        path: &str,
        glob: Option<&str>,
        hidden: bool,
        timeout_ms: u64,
    ) -> Result<Walk, FileError> {
        let root = check_path(path)?;
        let tree = Tree::open(sandbox, &root).map_err(|e| FileError::io("stat", &root, &e))?;
        let glob_on_name = glob.is_some_and(|g| !g.contains('/'));
        let glob = match glob {
            Some(g) => Some(
                GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| {
                        FileError::new(AgentCode::InvalidRequest, format!("bad glob: {e}"))
                    })?
                    .compile_matcher(),
            ),
            None => None,
        };
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        Ok(Walk {
            root,
            tree,
            glob,
            glob_on_name,
            hidden,
            deadline,
        })
    }

    fn selects(&self, path: &Path) -> bool {
        let Some(glob) = &self.glob else {
            return true;
        };
        if self.glob_on_name {
            path.file_name().is_some_and(|n| glob.is_match(n))
        } else {
            path.strip_prefix(&self.root)
                .is_ok_and(|rel| glob.is_match(rel))
        }
    }

    /// Calls `visit` with every selected regular file (sorted, depth-first; its path as the
    /// host sees it, and as the agent reaches it) until it returns false. Returns false when
    /// the time ran out.
    fn run(&self, mut visit: impl FnMut(&Path, &Path) -> bool) -> Result<bool, FileError> {
        let host = self.tree.host(&self.root);
        let md = fs::metadata(&host).map_err(|e| FileError::io("stat", &self.root, &e))?;
        if md.is_file() {
            visit(&self.root, &host);
            return Ok(true);
        }
        if !md.is_dir() {
            return Err(FileError::new(
                AgentCode::InvalidPath,
                format!("{} is neither a file nor a directory", self.root.display()),
            ));
        }
        let mut stack = Vec::new();
        self.push_children(&self.root, &mut stack)
            .map_err(|e| FileError::io("list", &self.root, &e))?;
        while let Some(path) = stack.pop() {
            if Instant::now() >= self.deadline {
                return Ok(false);
            }
            let host = self.tree.host(&path);
            let Ok(md) = fs::symlink_metadata(&host) else {
                continue; // vanished meanwhile
            };
            if md.is_dir() {
                // Unreadable directories are skipped.
                let _ = self.push_children(&path, &mut stack);
            } else if md.is_file() && self.selects(&path) && !visit(&path, &host) {
                break;
            }
        }
        Ok(true)
    }

    fn push_children(&self, dir: &Path, stack: &mut Vec<PathBuf>) -> io::Result<()> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.tree.host(dir))? {
            let name = entry?.file_name();
            if self.hidden || !name.as_encoded_bytes().starts_with(b".") {
                names.push(name);
            }
        }
        names.sort();
        stack.extend(names.into_iter().rev().map(|n| dir.join(n)));
        Ok(())
    }
}

/// Reads a regular file without following a symlink; `None` if it is binary, too big or
/// unreadable.
fn read_text(path: &Path, max_bytes: u64) -> Option<(File, Vec<u8>)> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let md = file.metadata().ok()?;
    if !md.is_file() || md.size() > max_bytes {
        return None;
    }
    let mut buf = Vec::with_capacity(md.size() as usize);
    (&mut file).take(max_bytes + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > max_bytes || buf[..buf.len().min(BINARY_PROBE)].contains(&0) {
        return None;
    }
    Some((file, buf))
}

fn compile(pattern: &str) -> Result<regex::bytes::Regex, FileError> {
    regex::bytes::Regex::new(pattern)
        .map_err(|e| FileError::new(AgentCode::InvalidRequest, format!("bad pattern: {e}")))
}

fn line_text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    match text.char_indices().nth(MAX_LINE_CHARS) {
        Some((cut, _)) => text[..cut].to_string(),
        None => text.into_owned(),
    }
}

fn run_search(root: &Root, spec: &SearchSpec) -> Result<Event, FileError> {
    let walk = Walk::new(
        root,
        &spec.path,
        spec.glob.as_deref(),
        spec.hidden,
        spec.timeout_ms,
    )?;
    let regex = spec.pattern.as_deref().map(compile).transpose()?;
    let max = spec.max_results as usize;
    let mut matches = Vec::new();
    let mut files_scanned = 0u64;
    let mut truncated = false;
    let mut budget = ANSWER_BUDGET;
    let mut add = |m: SearchMatch, matches: &mut Vec<SearchMatch>| -> bool {
        let cost = 64 + m.path.len() + m.text.as_ref().map_or(0, |t| t.len() * 2);
        if matches.len() >= max || cost > budget {
            return false;
        }
        budget -= cost;
        matches.push(m);
        true
    };
    let finished = walk.run(|path, host| {
        let name = path.to_string_lossy().into_owned();
        let Some(regex) = &regex else {
            files_scanned += 1;
            if !add(
                SearchMatch {
                    path: name,
                    line: None,
                    text: None,
                },
                &mut matches,
            ) {
                truncated = true;
                return false;
            }
            return true;
        };
        let Some((_, content)) = read_text(host, spec.max_file_bytes) else {
            return true;
        };
        files_scanned += 1;
        let body = content.strip_suffix(b"\n").unwrap_or(&content);
        for (i, line) in body.split(|&b| b == b'\n').enumerate() {
            if Instant::now() >= walk.deadline {
                truncated = true;
                return false;
            }
            if regex.is_match(line) {
                let m = SearchMatch {
                    path: name.clone(),
                    line: Some(i as u64 + 1),
                    text: Some(line_text(line)),
                };
                if !add(m, &mut matches) {
                    truncated = true;
                    return false;
                }
            }
        }
        true
    })?;
    Ok(Event::SearchResult {
        matches,
        files_scanned,
        truncated: truncated || !finished,
    })
}

fn run_replace(root: &Root, spec: &ReplaceSpec) -> Result<Event, FileError> {
    let walk = Walk::new(
        root,
        &spec.path,
        spec.glob.as_deref(),
        spec.hidden,
        spec.timeout_ms,
    )?;
    let regex = compile(&spec.pattern)?;
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut truncated = false;
    let mut failure = None;
    let finished = walk.run(|path, host| {
        let Some((file, content)) = read_text(host, spec.max_file_bytes) else {
            return true;
        };
        let count = regex.find_iter(&content).count() as u64;
        if count == 0 {
            return true;
        }
        if files.len() >= spec.max_files as usize {
            truncated = true;
            return false;
        }
        let new = regex.replace_all(&content, spec.replacement.as_bytes());
        if let Err(e) = rewrite(path, host, &file, &new) {
            failure = Some(e);
            return false;
        }
        total += count;
        files.push(ReplacedFile {
            path: path.to_string_lossy().into_owned(),
            replacements: count,
        });
        true
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Event::ReplaceResult {
        files,
        total_replacements: total,
        truncated: truncated || !finished,
    })
}

/// A random 64-bit number (std's hasher keys come from the OS's random source).
fn random() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Replaces `path` (reached at `host`, opened as `old`) with `data` atomically: a temporary
/// file in the same directory with the old file's mode and owner, renamed over it.
fn rewrite(path: &Path, host: &Path, old: &File, data: &[u8]) -> Result<(), FileError> {
    let err = |what: &str, e: io::Error| FileError::io(what, path, &e);
    let md = old.metadata().map_err(|e| err("stat", e))?;
    let (Some(dir), Some(name)) = (host.parent(), host.file_name()) else {
        return Err(FileError::new(
            AgentCode::InvalidPath,
            "no parent directory",
        ));
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".warren-{:016x}", random()));
    let tmp = dir.join(tmp_name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOCTTY)
        .open(&tmp)
        .map_err(|e| err("create a temporary file for", e))?;
    let res = (|| {
        file.write_all(data).map_err(|e| err("write", e))?;
        file.sync_all().map_err(|e| err("sync", e))?;
        std::os::unix::fs::fchown(&file, Some(md.uid()), Some(md.gid()))
            .map_err(|e| err("chown", e))?;
        file.set_permissions(fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(|e| err("chmod", e))?;
        fs::rename(&tmp, host).map_err(|e| err("rename into place", e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}
