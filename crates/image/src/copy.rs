//! Dockerfile `COPY` and `ADD`: files of a build context written into a fresh layer
//! directory, which [`crate::ImageStore::commit_layer_blocking`] then stores.
//!
//! Docker's rules, as far as they go here:
//!
//! - Sources are relative to the context (a leading `/` is its root); `..` may not climb
//!   out of it. A component with `*`, `?`, `[…]` or `\` is a pattern (Go's
//!   `filepath.Match`, `*` matching dot files too), matched against the context's names.
//! - A source is followed if it is a symlink, inside the context: an absolute target or
//!   `..` starts again at or stops at the context root (`openat2` with `RESOLVE_IN_ROOT`),
//!   so nothing outside the context is ever read. Symlinks inside a copied directory are
//!   copied as symlinks.
//! - A directory source has its contents copied, not itself. The destination is a
//!   directory if it ends in `/` (or is `.`), if there are several sources or a pattern, if
//!   the source is a directory or an archive (ADD), or if it is a directory in the image
//!   (its symlinks followed inside the image root, as `COPY f /app` finds `/app` through a
//!   symlink); a single file otherwise becomes the destination itself. A destination that
//!   is a non-directory in the image where a directory is needed is an error.
//! - Everything copied gets `owner` (0:0 unless `--chown`) and its own mode unless
//!   `--chmod` (files and directories, not symlinks); mtimes are kept. Directories made for
//!   the destination take the mode, owner and mtime of the image's directory of that path if
//!   there is one (so the layer does not change it), else 0755, `owner` and mtime 0 (a
//!   fixed time: the same COPY gives the same layer); a destination directory made for a
//!   single directory source takes that directory's mode and mtime.
//! - ADD of a local tar archive (plain, gzip or zstd, told by its first bytes and a valid
//!   tar header) extracts it into the destination directory, with the archive's owners,
//!   modes, mtimes and extended attributes. bzip2 and xz archives are refused (use COPY and
//!   `RUN tar`); URLs are the builder's business and refused here.
//!
//! Left out: extended attributes of context files, hard links between them (copied as
//! separate files), and fifos, sockets and device nodes (in the context or in an archive),
//! each with a debug log. Names starting with `.wh.` are refused: OCI layers reserve them.
//!
//! The layer is written through directory descriptors without following symlinks, so a
//! symlink copied in a moment ago never leads a later write elsewhere.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::archive::{self, Packed};
use crate::extract::open_in;
use crate::glob;
use crate::tree::{self, io_err, Kind, Meta};
use crate::ImageError;

/// One COPY or ADD.
#[derive(Debug, Clone, Copy)]
pub struct CopySpec<'a> {
    /// The build context, extracted on the host (untrusted: it came from the client).
    pub context: &'a Path,
    /// The sources as the Dockerfile names them, relative to the context.
    pub sources: &'a [String],
    /// The destination: absolute, or relative to `workdir`.
    pub dest: &'a str,
    /// The working directory at that point of the build.
    pub workdir: &'a str,
    /// uid and gid of everything copied (Docker: 0:0 unless `--chown`).
    pub owner: (u32, u32),
    /// `--chmod`: the mode of the files and directories copied.
    pub mode: Option<u32>,
    /// ADD: local tar archives are extracted.
    pub add: bool,
    /// The image so far, top-most layer first.
    pub lowers: &'a [PathBuf],
}

/// What [`copy_into_layer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    /// `sha256:<hex>` over every source entry taken (its path in the context, type and mode,
    /// and a file's content, a symlink's target), sorted by path: what the build cache keys
    /// the COPY on (with the instruction itself). Owners and mtimes are not in it.
    pub files_digest: String,
    /// Entries made in the layer (directories made for the destination included).
    pub entries: usize,
}

/// Copy what `spec` names into `layer`, an empty directory (see the module docs).
/// Blocking.
pub fn copy_into_layer(spec: &CopySpec<'_>, layer: &Path) -> Result<CopyResult, ImageError> {
    let open = |p: &Path| -> Result<OwnedFd, ImageError> {
        tree::open_dir_at(rustix::fs::CWD, p.as_os_str()).map_err(|e| io_err(p, e))
    };
    let mut c = Copier {
        spec,
        ctx: open(spec.context)?,
        root: open(layer)?,
        layer,
        records: Vec::new(),
        entries: 0,
        mtimes: Vec::new(),
    };
    if spec.sources.is_empty() {
        return Err(ImageError::BuildInput("COPY without a source".into()));
    }
    let mut sources = Vec::new();
    let mut pattern = false;
    for s in spec.sources {
        if spec.add
            && ["http://", "https://", "git@"]
                .iter()
                .any(|p| s.starts_with(p))
        {
            return Err(ImageError::BuildInput(format!(
                "ADD {s}: remote sources are not supported here"
            )));
        }
        let (found, wild) = c.expand(s)?;
        pattern |= wild;
        for rel in found {
            sources.push(c.open_source(s, rel)?);
        }
    }
    let (dest, dir_hint) = dest_path(spec.dest, spec.workdir);
    let real = tree::resolve(spec.lowers, &dest)?;
    let existing = if real.as_os_str().is_empty() {
        None
    } else {
        tree::lookup(spec.lowers, &real)?.map(|f| f.meta)
    };
    let single_dir = match sources.as_slice() {
        [s] => !matches!(s.what, What::File(_)),
        _ => false,
    };
    let exists_as_dir =
        real.as_os_str().is_empty() || existing.is_some_and(|m| m.kind == Kind::Dir);
    if dir_hint || pattern || sources.len() > 1 || single_dir || exists_as_dir {
        if existing.is_some_and(|m| m.kind != Kind::Dir) {
            return Err(ImageError::BuildInput(format!(
                "{}: is not a directory in the image",
                spec.dest
            )));
        }
        // A destination made for one directory is that directory.
        let made = match sources.as_slice() {
            [Source {
                what: What::Dir(_),
                meta,
                ..
            }] => Some(DirMeta {
                perm: spec.mode.unwrap_or(meta.perm),
                owner: spec.owner,
                mtime: meta.mtime,
            }),
            _ => None,
        };
        let dir = c.ensure_dir(&real, made)?;
        for s in sources {
            match s.what {
                What::Dir(fd) => {
                    c.record(&s.rel, b'd', s.meta.perm, Vec::new());
                    let fd = OwnedFd::from(fd);
                    c.copy_tree(&fd, &s.rel, &dir, &real)?;
                }
                What::File(f) => {
                    let name = s.rel.file_name().unwrap_or_default().to_os_string();
                    c.copy_file(f, &s.meta, &s.rel, &dir, &name, &real.join(&name))?;
                }
                What::Archive(f, packed) => c.unpack(f, packed, &s.rel, &real)?,
            }
        }
    } else if let Some(Source {
        what: What::File(f),
        meta,
        rel,
    }) = sources.pop()
    {
        let parent = real.parent().unwrap_or(Path::new(""));
        let dir = c.ensure_dir(parent, None)?;
        let name = real.file_name().unwrap_or_default().to_os_string();
        c.copy_file(f, &meta, &rel, &dir, &name, &real)?;
    }
    for (rel, mtime) in std::mem::take(&mut c.mtimes).iter().rev() {
        c.set_mtime(rel, *mtime)?;
    }
    Ok(CopyResult {
        files_digest: digest(&mut c.records),
        entries: c.entries,
    })
}

/// The destination as a clean path below the image root, and whether it names a directory
/// by its form (a trailing `/`, `.` or `..`).
fn dest_path(dest: &str, workdir: &str) -> (PathBuf, bool) {
    let hint = dest.is_empty()
        || dest.ends_with('/')
        || matches!(dest.rsplit('/').next(), Some("." | ".."));
    let full = if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{workdir}/{dest}")
    };
    let mut out: Vec<&str> = Vec::new();
    for part in full.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            p => out.push(p),
        }
    }
    (out.iter().collect(), hint)
}

/// A source, open.
struct Source {
    /// Its path in the context, as named (or matched).
    rel: PathBuf,
    meta: Meta,
    what: What,
}

enum What {
    Dir(File),
    File(File),
    Archive(File, Packed),
}

/// Mode, owner and mtime of a directory made in the layer.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    perm: u32,
    owner: (u32, u32),
    mtime: i64,
}

/// One source entry, for [`CopyResult::files_digest`].
struct Record {
    path: PathBuf,
    kind: u8,
    perm: u32,
    data: Vec<u8>,
}

struct Copier<'a> {
    spec: &'a CopySpec<'a>,
    ctx: OwnedFd,
    root: OwnedFd,
    layer: &'a Path,
    records: Vec<Record>,
    entries: usize,
    /// Directories whose mtime is set once everything is in, by path in the layer.
    mtimes: Vec<(PathBuf, i64)>,
}

impl Copier<'_> {
    /// The context paths `source` names: itself, or what its patterns match (sorted).
    fn expand(&self, source: &str) -> Result<(Vec<PathBuf>, bool), ImageError> {
        let mut parts: Vec<&str> = Vec::new();
        for part in source.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(ImageError::BuildInput(format!(
                            "{source}: outside the build context"
                        )));
                    }
                }
                p => parts.push(p),
            }
        }
        let is_pattern = |p: &str| p.contains(['*', '?', '[', '\\']);
        if !parts.iter().any(|p| is_pattern(p)) {
            return Ok((vec![parts.iter().collect()], false));
        }
        let mut found = vec![PathBuf::new()];
        for part in parts {
            if !is_pattern(part) {
                found.iter_mut().for_each(|f| f.push(part));
                continue;
            }
            let bad = |_| ImageError::BuildInput(format!("{source}: bad pattern {part:?}"));
            glob::matches(part, "").map_err(bad)?;
            let mut next = Vec::new();
            for base in &found {
                let Ok(dir) = open_in(&self.ctx, base, OFlags::RDONLY | OFlags::DIRECTORY) else {
                    continue;
                };
                for name in tree::list_sorted(&dir).map_err(|e| self.ctx_err(base, e))? {
                    if glob::matches(part, &name.to_string_lossy()).map_err(bad)? {
                        next.push(base.join(&name));
                    }
                }
            }
            found = next;
        }
        found.retain(|p| open_in(&self.ctx, p, OFlags::PATH).is_ok());
        if found.is_empty() {
            return Err(ImageError::BuildInput(format!(
                "{source}: matches no file in the build context"
            )));
        }
        Ok((found, true))
    }

    /// Open source `rel` (named `named` in the Dockerfile), following symlinks inside the
    /// context.
    fn open_source(&self, named: &str, rel: PathBuf) -> Result<Source, ImageError> {
        let fd = match open_in(&self.ctx, &rel, OFlags::PATH) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => {
                return Err(ImageError::BuildInput(format!(
                    "{named}: not found in the build context"
                )))
            }
            Err(rustix::io::Errno::LOOP) => {
                return Err(ImageError::BuildInput(format!(
                    "{named}: too many levels of symbolic links"
                )))
            }
            Err(e) => return Err(self.ctx_err(&rel, e)),
        };
        let meta = tree::stat_fd(&fd).map_err(|e| self.ctx_err(&rel, e))?;
        let what = match meta.kind {
            Kind::Dir => What::Dir(
                tree::reopen(&fd, OFlags::RDONLY | OFlags::DIRECTORY)
                    .map_err(|e| self.ctx_err(&rel, e))?,
            ),
            Kind::File => {
                let f = tree::reopen(&fd, OFlags::RDONLY).map_err(|e| self.ctx_err(&rel, e))?;
                match self.spec.add.then(|| archive::kind(&f, &rel)).transpose()? {
                    Some(Some(packed)) => What::Archive(f, packed),
                    _ => What::File(f),
                }
            }
            _ => {
                return Err(ImageError::BuildInput(format!(
                    "{named}: not a file or directory"
                )))
            }
        };
        Ok(Source { rel, meta, what })
    }

    /// Directory `path` of the layer, with the directories on the way (see the module docs
    /// for their metadata); `last` is the metadata of `path` itself if the image has none.
    fn ensure_dir(&mut self, path: &Path, last: Option<DirMeta>) -> Result<OwnedFd, ImageError> {
        let mut dir = self.root.try_clone().map_err(|e| io_err(self.layer, e))?;
        let mut at = PathBuf::new();
        let names: Vec<&OsStr> = path.iter().collect();
        for (i, name) in names.iter().enumerate() {
            at.push(name);
            let meta = match tree::lookup(self.spec.lowers, &at)? {
                Some(f) if f.meta.kind == Kind::Dir => DirMeta {
                    perm: f.meta.perm,
                    owner: (f.meta.uid, f.meta.gid),
                    mtime: f.meta.mtime,
                },
                _ => last.filter(|_| i + 1 == names.len()).unwrap_or(DirMeta {
                    perm: 0o755,
                    owner: self.spec.owner,
                    mtime: 0,
                }),
            };
            dir = self.make_dir(&dir, name, &at)?;
            self.dir_meta(&dir, &at, &meta)?;
            self.mtimes.push((at.clone(), meta.mtime));
        }
        Ok(dir)
    }

    /// The contents of context directory `src` (at `from`) into layer directory `dst` (at
    /// `to`).
    fn copy_tree(
        &mut self,
        src: &OwnedFd,
        from: &Path,
        dst: &OwnedFd,
        to: &Path,
    ) -> Result<(), ImageError> {
        for name in tree::list_sorted(src).map_err(|e| self.ctx_err(from, e))? {
            let (from, to) = (from.join(&name), to.join(&name));
            if name.as_bytes().starts_with(b".wh.") {
                return Err(reserved(&from));
            }
            let meta = tree::stat_at(src, &name).map_err(|e| self.ctx_err(&from, e))?;
            match meta.kind {
                Kind::Dir => {
                    let sub = tree::open_dir_at(src, &name).map_err(|e| self.ctx_err(&from, e))?;
                    let made = self.make_dir(dst, &name, &to)?;
                    self.copy_tree(&sub, &from, &made, &to)?;
                    let perm = self.spec.mode.unwrap_or(meta.perm);
                    let m = DirMeta {
                        perm,
                        owner: self.spec.owner,
                        mtime: meta.mtime,
                    };
                    self.dir_meta(&made, &to, &m)?;
                    set_times(&made, None, m.mtime).map_err(|e| self.err(&to, e))?;
                    self.record(&from, b'd', meta.perm, Vec::new());
                }
                Kind::File => {
                    let (f, meta) =
                        tree::open_file_at(src, &name).map_err(|e| self.ctx_err(&from, e))?;
                    self.copy_file(f, &meta, &from, dst, &name, &to)?;
                }
                Kind::Symlink => {
                    let target = rustix::fs::readlinkat(src, &name, Vec::new())
                        .map_err(|e| self.ctx_err(&from, e))?;
                    self.clear(dst, &name, &to)?;
                    rustix::fs::symlinkat(target.as_c_str(), dst, &name)
                        .map_err(|e| self.err(&to, e))?;
                    let (uid, gid) = self.spec.owner;
                    rustix::fs::chownat(
                        dst,
                        &name,
                        Some(rustix::fs::Uid::from_raw(uid)),
                        Some(rustix::fs::Gid::from_raw(gid)),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.err(&to, e))?;
                    set_times(dst, Some(&name), meta.mtime).map_err(|e| self.err(&to, e))?;
                    self.record(&from, b'l', 0, target.into_bytes());
                    self.entries += 1;
                }
                other => debug!(path = %from.display(), kind = ?other, "not copied"),
            }
        }
        Ok(())
    }

    /// Context file `f` (at `from`) as `name` in layer directory `dst` (at `to`).
    fn copy_file(
        &mut self,
        mut f: File,
        meta: &Meta,
        from: &Path,
        dst: &OwnedFd,
        name: &OsStr,
        to: &Path,
    ) -> Result<(), ImageError> {
        if name.as_bytes().starts_with(b".wh.") {
            return Err(reserved(to));
        }
        self.clear(dst, name, to)?;
        let out = rustix::fs::openat(
            dst,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err(to, e))?;
        let mut out = File::from(out);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.ctx_err(from, e)),
            };
            hash.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| self.err(to, e))?;
        }
        let (uid, gid) = self.spec.owner;
        rustix::fs::fchown(
            &out,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| self.err(to, e))?;
        let perm = self.spec.mode.unwrap_or(meta.perm);
        rustix::fs::fchmod(&out, Mode::from_raw_mode(perm)).map_err(|e| self.err(to, e))?;
        set_times(&out, None, meta.mtime).map_err(|e| self.err(to, e))?;
        self.record(from, b'f', meta.perm, hash.finalize().to_vec());
        self.entries += 1;
        Ok(())
    }

    /// Extract archive `f` (context file `from`) into layer directory `to`.
    fn unpack(
        &mut self,
        mut f: File,
        packed: Packed,
        from: &Path,
        to: &Path,
    ) -> Result<(), ImageError> {
        let mut hash = Sha256::new();
        f.rewind().map_err(|e| self.ctx_err(from, e))?;
        io::copy(&mut f, &mut hash).map_err(|e| self.ctx_err(from, e))?;
        self.record(from, b'f', 0, hash.finalize().to_vec());
        f.rewind().map_err(|e| self.ctx_err(from, e))?;
        let done = archive::unpack(f, packed, from, &self.layer.join(to))?;
        self.entries += done.entries;
        let dirs = done.dir_mtimes.into_iter();
        self.mtimes.extend(dirs.map(|(rel, t)| (to.join(rel), t)));
        Ok(())
    }

    /// Directory `name` in layer directory `dir` (at `at`): the one there, or a new one in
    /// place of whatever else is there.
    fn make_dir(&mut self, dir: &OwnedFd, name: &OsStr, at: &Path) -> Result<OwnedFd, ImageError> {
        match tree::stat_at(dir, name) {
            Ok(m) if m.kind == Kind::Dir => {
                return tree::open_dir_at(dir, name).map_err(|e| self.err(at, e))
            }
            Ok(_) => self.clear(dir, name, at)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.err(at, e)),
        }
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)).map_err(|e| self.err(at, e))?;
        self.entries += 1;
        tree::open_dir_at(dir, name).map_err(|e| self.err(at, e))
    }

    fn dir_meta(&self, dir: &OwnedFd, at: &Path, m: &DirMeta) -> Result<(), ImageError> {
        rustix::fs::fchown(
            dir,
            Some(rustix::fs::Uid::from_raw(m.owner.0)),
            Some(rustix::fs::Gid::from_raw(m.owner.1)),
        )
        .map_err(|e| self.err(at, e))?;
        rustix::fs::fchmod(dir, Mode::from_raw_mode(m.perm)).map_err(|e| self.err(at, e))
    }

    /// Remove `name` from layer directory `dir` (a directory with all it holds).
    fn clear(&self, dir: &OwnedFd, name: &OsStr, at: &Path) -> Result<(), ImageError> {
        match tree::stat_at(dir, name) {
            Ok(m) if m.kind == Kind::Dir => {
                let sub = tree::open_dir_at(dir, name).map_err(|e| self.err(at, e))?;
                for n in tree::list_sorted(&sub).map_err(|e| self.err(at, e))? {
                    self.clear(&sub, &n, &at.join(&n))?;
                }
                rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(|e| self.err(at, e))
            }
            Ok(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| self.err(at, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(at, e)),
        }
    }

    /// Set the mtime of `rel` in the layer, if it is still a directory there.
    fn set_mtime(&self, rel: &Path, mtime: i64) -> Result<(), ImageError> {
        let dir = rustix::fs::openat2(
            &self.root,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
        );
        match dir {
            Ok(dir) => set_times(&dir, None, mtime).map_err(|e| self.err(rel, e)),
            Err(_) => Ok(()),
        }
    }

    fn record(&mut self, path: &Path, kind: u8, perm: u32, data: Vec<u8>) {
        self.records.push(Record {
            path: path.to_path_buf(),
            kind,
            perm,
            data,
        });
    }

    fn err(&self, at: &Path, e: impl Into<io::Error>) -> ImageError {
        io_err(&self.layer.join(at), e)
    }

    fn ctx_err(&self, at: &Path, e: impl Into<io::Error>) -> ImageError {
        io_err(&self.spec.context.join(at), e)
    }
}

pub(crate) fn reserved(path: &Path) -> ImageError {
    ImageError::BuildInput(format!(
        "{}: names starting with .wh. cannot be put in a layer",
        path.display()
    ))
}

/// Set the mtime (and atime) of `name` in `dir`, or of `dir` itself, without following a
/// symlink.
fn set_times(dir: impl AsFd, name: Option<&OsStr>, mtime: i64) -> io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    match name {
        Some(n) => rustix::fs::utimensat(dir, n, &times, AtFlags::SYMLINK_NOFOLLOW)?,
        None => rustix::fs::futimens(dir, &times)?,
    }
    Ok(())
}

/// The digest of `records` (see [`CopyResult::files_digest`]).
fn digest(records: &mut [Record]) -> String {
    records.sort_by(|a, b| {
        a.path
            .as_os_str()
            .as_bytes()
            .cmp(b.path.as_os_str().as_bytes())
    });
    let mut h = Sha256::new();
    for r in records.iter() {
        let path = r.path.as_os_str().as_bytes();
        h.update((path.len() as u64).to_le_bytes());
        h.update(path);
        h.update([r.kind]);
        h.update(r.perm.to_le_bytes());
        h.update((r.data.len() as u64).to_le_bytes());
        h.update(&r.data);
    }
    format!("sha256:{:x}", h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_clean_paths() {
        assert_eq!(dest_path("/app/", "/w"), (PathBuf::from("app"), true));
        assert_eq!(dest_path("f", "/w/x"), (PathBuf::from("w/x/f"), false));
        assert_eq!(dest_path(".", "/w"), (PathBuf::from("w"), true));
        assert_eq!(dest_path("../../..", "/w"), (PathBuf::new(), true));
        assert_eq!(dest_path("/a/../b", "/"), (PathBuf::from("b"), false));
    }
}
