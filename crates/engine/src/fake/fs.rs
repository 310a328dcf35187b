//! The fake runtime's in-memory file trees, one per sandbox.
//!
//! Each new sandbox gets `/`, `/workspace`, `/tmp`, `/home/user` (1000:1000) and
//! `/readonly` (anything below it, and it itself, refuses changes with
//! `permission_denied`). Reading `/io-error` fails with `io`.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{stream, StreamExt};
use warren_runtime::{
    ByteStream, FileKind, FileOp, FileOpResult, FileStat, RuntimeError, WriteOptions,
};

mod search;

/// Read chunks are at most this big.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone)]
enum Content {
    File(Bytes),
    Dir,
    Symlink(String),
}

#[derive(Debug, Clone)]
struct Node {
    content: Content,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn ferr(code: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::File {
        code: code.to_string(),
        message: message.into(),
    }
}

/// `/a//b/./c/` → `/a/b/c`; `..` pops (never above `/`).
pub(crate) fn normalize(path: &str) -> Result<String, RuntimeError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ferr(
            "invalid_path",
            format!("{path:?}: not an absolute path"),
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(i) => Some(&path[..i]),
        None => None,
    }
}

/// `child` is strictly below `dir`.
fn is_below(child: &str, dir: &str) -> bool {
    if dir == "/" {
        return child != "/";
    }
    child.len() > dir.len() && child.starts_with(dir) && child.as_bytes()[dir.len()] == b'/'
}

fn read_only(path: &str) -> bool {
    path == "/readonly" || is_below(path, "/readonly")
}

/// One sandbox's files.
#[derive(Debug, Clone)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    /// Bytes of file content.
    pub(crate) fn bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.content {
                Content::File(b) => b.len() as u64,
                _ => 0,
            })
            .sum()
    }

    pub(crate) fn new() -> Tree {
        let mut t = Tree {
            nodes: BTreeMap::new(),
        };
        for (path, owner) in [
            ("/", 0),
            ("/workspace", 0),
            ("/tmp", 0),
            ("/home", 0),
            ("/home/user", 1000),
            ("/readonly", 0),
        ] {
            t.nodes
                .insert(path.to_string(), dir_node(0o755, owner, owner));
        }
        t
    }

    fn stat(&self, path: &str) -> Result<FileStat, RuntimeError> {
        let node = self
            .nodes
            .get(path)
            .ok_or_else(|| ferr("not_found", format!("{path}: no such file or directory")))?;
        Ok(stat_of(path, node))
    }

    /// The parent of `path` must be an existing directory.
    fn check_parent(&self, path: &str) -> Result<(), RuntimeError> {
        let Some(p) = parent(path) else {
            return Ok(());
        };
        match self.nodes.get(p).map(|n| &n.content) {
            Some(Content::Dir) => Ok(()),
            Some(_) => Err(ferr("not_a_directory", format!("{p}: not a directory"))),
            None => Err(ferr("not_found", format!("{p}: no such file or directory"))),
        }
    }

    /// Create the missing ancestors of `path`.
    fn make_parents(&mut self, path: &str, uid: u32, gid: u32) -> Result<(), RuntimeError> {
        let mut ancestors = Vec::new();
        let mut cur = parent(path);
        while let Some(p) = cur {
            ancestors.push(p.to_string());
            cur = parent(p);
        }
        for a in ancestors.into_iter().rev() {
            match self.nodes.get(&a).map(|n| &n.content) {
                Some(Content::Dir) => {}
                Some(_) => return Err(ferr("not_a_directory", format!("{a}: not a directory"))),
                None => {
                    if read_only(&a) {
                        return Err(ferr("permission_denied", format!("{a}: read-only")));
                    }
                    self.nodes.insert(a, dir_node(0o755, uid, gid));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn read(&self, path: &str) -> Result<(FileStat, ByteStream), RuntimeError> {
        let path = normalize(path)?;
        if path == "/io-error" {
            return Err(ferr("io", "injected i/o error"));
        }
        let node = self
            .nodes
            .get(&path)
            .ok_or_else(|| ferr("not_found", format!("{path}: no such file or directory")))?;
        let data = match &node.content {
            Content::File(data) => data.clone(),
            Content::Dir => return Err(ferr("is_a_directory", format!("{path}: is a directory"))),
            Content::Symlink(_) => {
                return Err(ferr("invalid_path", format!("{path}: is a symlink")))
            }
        };
        let stat = stat_of(&path, node);
        let chunks: Vec<Result<Bytes, RuntimeError>> = (0..data.len())
            .step_by(CHUNK)
            .map(|i| Ok(data.slice(i..(i + CHUNK).min(data.len()))))
            .collect();
        Ok((stat, Box::pin(stream::iter(chunks))))
    }

    /// The tree below the directory `path` as a tar archive, built in memory (a fake).
    pub(crate) fn archive(&self, path: &str) -> Result<(FileStat, ByteStream), RuntimeError> {
        let path = normalize(path)?;
        let node = self
            .nodes
            .get(&path)
            .ok_or_else(|| ferr("not_found", format!("{path}: no such file or directory")))?;
        if !matches!(node.content, Content::Dir) {
            return Err(ferr("not_a_directory", format!("{path}: not a directory")));
        }
        let stat = stat_of(&path, node);
        let tar_err = |e: std::io::Error| ferr("io", format!("archive: {e}"));
        let mut tar = tar::Builder::new(Vec::new());
        for (p, n) in self.nodes.iter().filter(|(p, _)| is_below(p, &path)) {
            let rel = p[path.len()..].trim_start_matches('/');
            let mut h = tar::Header::new_gnu();
            h.set_mode(n.mode);
            h.set_uid(u64::from(n.uid));
            h.set_gid(u64::from(n.gid));
            h.set_mtime(u64::try_from(n.mtime).unwrap_or(0));
            match &n.content {
                Content::File(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    tar.append_data(&mut h, rel, &d[..]).map_err(tar_err)?;
                }
                Content::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    tar.append_data(&mut h, rel, std::io::empty())
                        .map_err(tar_err)?;
                }
                Content::Symlink(t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    tar.append_link(&mut h, rel, t).map_err(tar_err)?;
                }
            }
        }
        let data = Bytes::from(tar.into_inner().map_err(tar_err)?);
        let chunks: Vec<Result<Bytes, RuntimeError>> = (0..data.len())
            .step_by(CHUNK)
            .map(|i| Ok(data.slice(i..(i + CHUNK).min(data.len()))))
            .collect();
        Ok((stat, Box::pin(stream::iter(chunks))))
    }

    /// Check that `path` can be written (before the data is read).
    pub(crate) fn check_write(&self, path: &str, parents: bool) -> Result<String, RuntimeError> {
        let path = normalize(path)?;
        if read_only(&path) {
            return Err(ferr("permission_denied", format!("{path}: read-only")));
        }
        if let Some(n) = self.nodes.get(&path) {
            if matches!(n.content, Content::Dir) {
                return Err(ferr("is_a_directory", format!("{path}: is a directory")));
            }
        }
        if !parents {
            self.check_parent(&path)?;
        }
        Ok(path)
    }

    pub(crate) fn commit_write(
        &mut self,
        path: &str,
        opts: WriteOptions,
        data: Bytes,
    ) -> Result<FileStat, RuntimeError> {
        let path = self.check_write(path, opts.parents)?;
        if opts.parents {
            self.make_parents(&path, opts.uid, opts.gid)?;
        }
        let node = Node {
            content: Content::File(data),
            mode: opts.mode.unwrap_or(0o644),
            uid: opts.uid,
            gid: opts.gid,
            mtime: now(),
        };
        let stat = stat_of(&path, &node);
        self.nodes.insert(path, node);
        Ok(stat)
    }

    pub(crate) fn op(&mut self, op: FileOp) -> Result<FileOpResult, RuntimeError> {
        match op {
            FileOp::Stat { path } => Ok(FileOpResult::Stat(self.stat(&normalize(&path)?)?)),
            FileOp::List { path, depth, limit } => {
                let path = normalize(&path)?;
                let node = self.stat(&path)?;
                if node.kind != FileKind::Dir {
                    return Err(ferr("not_a_directory", format!("{path}: not a directory")));
                }
                let base_depth = if path == "/" {
                    0
                } else {
                    path.matches('/').count()
                };
                let mut entries = Vec::new();
                let mut truncated = false;
                for (p, n) in &self.nodes {
                    if !is_below(p, &path) || p.matches('/').count() - base_depth > depth as usize {
                        continue;
                    }
                    if entries.len() >= limit as usize {
                        truncated = true;
                        break;
                    }
                    entries.push(stat_of(p, n));
                }
                Ok(FileOpResult::List { entries, truncated })
            }
            FileOp::Mkdir {
                path,
                parents,
                mode,
                uid,
                gid,
            } => {
                let path = normalize(&path)?;
                match self.nodes.get(&path).map(|n| &n.content) {
                    Some(Content::Dir) if parents => return Ok(FileOpResult::Done),
                    Some(_) => return Err(ferr("exists", format!("{path}: already exists"))),
                    None => {}
                }
                if read_only(&path) {
                    return Err(ferr("permission_denied", format!("{path}: read-only")));
                }
                if parents {
                    self.make_parents(&path, uid, gid)?;
                } else {
                    self.check_parent(&path)?;
                }
                self.nodes
                    .insert(path, dir_node(mode.unwrap_or(0o755), uid, gid));
                Ok(FileOpResult::Done)
            }
            FileOp::Remove { path, recursive } => {
                let path = normalize(&path)?;
                self.stat(&path)?;
                if read_only(&path) {
                    return Err(ferr("permission_denied", format!("{path}: read-only")));
                }
                let below: Vec<String> = self
                    .nodes
                    .keys()
                    .filter(|p| is_below(p, &path))
                    .cloned()
                    .collect();
                if !below.is_empty() && !recursive {
                    return Err(ferr("not_empty", format!("{path}: directory not empty")));
                }
                for p in below {
                    self.nodes.remove(&p);
                }
                self.nodes.remove(&path);
                Ok(FileOpResult::Done)
            }
            FileOp::Rename {
                from,
                to,
                overwrite,
            } => {
                let (from, to) = (normalize(&from)?, normalize(&to)?);
                self.stat(&from)?;
                if read_only(&from) || read_only(&to) {
                    return Err(ferr("permission_denied", "read-only"));
                }
                if is_below(&to, &from) {
                    return Err(ferr("invalid_path", "cannot move a directory into itself"));
                }
                self.check_parent(&to)?;
                if from == to {
                    return Ok(FileOpResult::Done);
                }
                if let Some(existing) = self.nodes.get(&to) {
                    if !overwrite {
                        return Err(ferr("exists", format!("{to}: already exists")));
                    }
                    if matches!(existing.content, Content::Dir)
                        && self.nodes.keys().any(|p| is_below(p, &to))
                    {
                        return Err(ferr("not_empty", format!("{to}: directory not empty")));
                    }
                }
                let moved: Vec<(String, Node)> = self
                    .nodes
                    .iter()
                    .filter(|(p, _)| *p == &from || is_below(p, &from))
                    .map(|(p, n)| (format!("{to}{}", &p[from.len()..]), n.clone()))
                    .collect();
                self.nodes
                    .retain(|p, _| !(p == &from || is_below(p, &from)));
                self.nodes.extend(moved);
                Ok(FileOpResult::Done)
            }
        }
    }

    /// Make a symlink (for tests).
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> Result<(), RuntimeError> {
        let path = normalize(path)?;
        self.check_parent(&path)?;
        self.nodes.insert(
            path,
            Node {
                content: Content::Symlink(target.to_string()),
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: now(),
            },
        );
        Ok(())
    }
}

fn dir_node(mode: u32, uid: u32, gid: u32) -> Node {
    Node {
        content: Content::Dir,
        mode,
        uid,
        gid,
        mtime: now(),
    }
}

fn stat_of(path: &str, node: &Node) -> FileStat {
    let (kind, size, link_target) = match &node.content {
        Content::File(d) => (FileKind::File, d.len() as u64, None),
        Content::Dir => (FileKind::Dir, 4096, None),
        Content::Symlink(t) => (FileKind::Symlink, t.len() as u64, Some(t.clone())),
    };
    FileStat {
        path: path.to_string(),
        kind,
        size,
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        mtime: node.mtime,
        link_target,
    }
}

/// Read a whole upload; the first error aborts.
pub(crate) async fn drain(mut data: ByteStream) -> Result<Bytes, RuntimeError> {
    let mut buf = Vec::new();
    while let Some(chunk) = data.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(Bytes::from(buf))
}
