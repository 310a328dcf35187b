//! A directory in overlay form (a sandbox's upper directory, a layer filled by
//! [`crate::copy_into_layer`]) → an OCI layer tar, and the stored layer made from it.
//!
//! The tar is deterministic, so the same content always gives the same `diff_id`: a
//! depth-first walk with each directory's entries in byte order, no user or group names,
//! seconds-only mtimes, and whiteouts and opaque markers with fixed metadata. Overlay form
//! becomes OCI form: a character device 0/0 becomes a `.wh.<name>` entry, a directory with
//! `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry. Extended attributes other than
//! overlayfs's own (and SELinux labels and POSIX ACLs, which belong to the host) are
//! written as PAX `SCHILY.xattr.*` records for files and directories. Owners are shifted
//! out of the sandbox's user namespace, file capabilities included.
//!
//! The stored directory is not a second copy of the source: the tar is streamed through a
//! pipe into [`crate::extract`], so the layer a sandbox later mounts is exactly what
//! anyone pulling the tar would get, and the `diff_id` is hashed on the way.
//!
//! The source is read through directory descriptors with `O_NOFOLLOW` at every step: a
//! symlink is stored as a symlink and never leads the walk elsewhere.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::debug;

use crate::extract::{extract, Compression, Extracted};
use crate::tree::{self, io_err, Kind, Meta, Xattrs};
use crate::{ImageError, Layer};

/// The media type of a committed layer (an uncompressed tar).
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// How many ids a sandbox's user namespace maps.
const ID_RANGE: u64 = 65536;

/// How a directory is made into a layer (see [`crate::ImageStore::commit_layer_blocking`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOptions {
    /// The host id of root inside the sandbox that wrote the directory (the first id of its
    /// user namespace), or 0. When not 0, every uid and gid in `[id_shift, id_shift +
    /// 65536)` is stored as `id - id_shift` and any other id is an error naming the path;
    /// when 0, ids are stored as they are.
    pub id_shift: u32,
    /// Paths relative to the directory (`etc/hostname`, `/etc/resolv.conf`, `proc`, …) that
    /// are left out, a directory with all it holds: what Warren writes into every sandbox
    /// (Docker leaves the same out of a RUN's layer).
    pub skip: Vec<PathBuf>,
    /// The layers below, top-most first. A directory that holds nothing once skipped and
    /// redundant paths are left out, is not opaque, has no extended attributes and exists
    /// in the layers below as a directory with the same mode, uid and gid (after the shift)
    /// changes nothing and is left out too (Warren makes `etc/` in every upper directory).
    pub lowers: Vec<PathBuf>,
}

/// A layer made by [`crate::ImageStore::commit_layer_blocking`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The stored layer: `digest` is its `diff_id` (the blob is the uncompressed tar),
    /// `size` the tar's size, `media_type` [`LAYER_MEDIA_TYPE`].
    pub layer: Layer,
    /// Entries in its tar (whiteouts and opaque markers included): 0 when the directory
    /// changed nothing, in which case the layer is the empty tar.
    pub entries: usize,
}

/// Write the layer tar of `src` (a directory in overlay form) to `out`; return how many
/// entries it has. A layer stored by a commit, written back with default options, gives
/// the tar it was made from.
pub fn write_layer_tar(
    src: &Path,
    opts: &CommitOptions,
    out: impl Write,
) -> Result<usize, ImageError> {
    let root: OwnedFd =
        tree::open_dir_at(rustix::fs::CWD, src.as_os_str()).map_err(|e| io_err(src, e))?;
    let mut w = TarWriter {
        out: Out {
            tar: tar::Builder::new(out),
            src,
            entries: 0,
        },
        opts,
        skip: opts.skip.iter().map(|p| normal(p)).collect(),
        links: HashMap::new(),
        pending: Vec::new(),
    };
    w.walk(&root, Path::new(""))?;
    let Out {
        mut tar, entries, ..
    } = w.out;
    tar.finish().map_err(|e| io_err(src, e))?;
    let mut out = tar.into_inner().map_err(|e| io_err(src, e))?;
    out.flush().map_err(|e| io_err(src, e))?;
    Ok(entries)
}

/// Write the layer tar of `src` through a pipe into [`extract`] into `work` (an empty
/// directory): the extracted layer, its digest and size, and the number of entries.
pub(crate) fn commit_into(
    src: &Path,
    opts: &CommitOptions,
    work: &Path,
) -> Result<(Extracted, usize), ImageError> {
    let (reader, writer) = io::pipe().map_err(|e| ImageError::Io(format!("pipe: {e}")))?;
    let cut = AtomicBool::new(false);
    std::thread::scope(|s| {
        let writer = Watched {
            inner: writer,
            failed: &cut,
        };
        // Deep trees recurse deeply: the walk gets a roomy stack of its own.
        let producer = std::thread::Builder::new()
            .name("layer-tar".into())
            .stack_size(64 << 20)
            .spawn_scoped(s, move || {
                write_layer_tar(src, opts, io::BufWriter::with_capacity(1 << 16, writer))
            })
            .map_err(|e| ImageError::Io(format!("starting the tar writer: {e}")))?;
        let extracted = extract(
            io::BufReader::with_capacity(1 << 16, reader),
            Compression::None,
            work,
            &[],
        );
        let produced = producer
            .join()
            .map_err(|_| ImageError::Io("the tar writer panicked".into()))?;
        match (produced, extracted) {
            (Ok(n), Ok(x)) => Ok((x, n)),
            // The source could not be read (the extraction saw a cut stream, if anything).
            (Err(e), _) if !cut.load(Ordering::Relaxed) => Err(e),
            // The extraction stopped reading: its error is the cause.
            (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
        }
    })
}

/// A writer that notes when a write fails.
struct Watched<'a, W> {
    inner: W,
    failed: &'a AtomicBool,
}

impl<W: Write> Write for Watched<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf).inspect_err(|_| {
            self.failed.store(true, Ordering::Relaxed);
        })
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| {
            self.failed.store(true, Ordering::Relaxed);
        })
    }
}

impl Committed {
    pub(crate) fn new(x: &Extracted, entries: usize) -> Committed {
        Committed {
            layer: Layer {
                diff_id: x.diff_id.clone(),
                digest: x.diff_id.clone(),
                size: x.tar_bytes,
                media_type: LAYER_MEDIA_TYPE.to_string(),
            },
            entries,
        }
    }
}

/// `p` as normal components (`/etc/hosts`, `./etc/hosts` → `etc/hosts`).
fn normal(p: &Path) -> PathBuf {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .collect()
}

/// A directory whose header waits until something below it is written (or it is found
/// redundant). Its owner is already shifted.
struct Pending {
    rel: PathBuf,
    meta: Meta,
    xattrs: Xattrs,
    opaque: bool,
    written: bool,
}

/// The tar being written.
struct Out<'a, W: Write> {
    tar: tar::Builder<W>,
    src: &'a Path,
    entries: usize,
}

impl<W: Write> Out<'_, W> {
    fn err(&self, path: &Path, e: impl Into<io::Error>) -> ImageError {
        io_err(&self.src.join(path), e)
    }

    /// An entry without data (a directory, a fifo).
    fn empty(&mut self, mut h: tar::Header, path: &Path) -> Result<(), ImageError> {
        self.tar
            .append_data(&mut h, path, io::empty())
            .map_err(|e| self.err(path, e))?;
        self.entries += 1;
        Ok(())
    }

    /// A symlink or a hard link.
    fn link(&mut self, mut h: tar::Header, path: &Path, target: &Path) -> Result<(), ImageError> {
        self.tar
            .append_link(&mut h, path, target)
            .map_err(|e| self.err(path, e))?;
        self.entries += 1;
        Ok(())
    }

    fn dir(&mut self, dir: &Pending) -> Result<(), ImageError> {
        let h = header(
            &dir.meta,
            dir.meta.uid,
            dir.meta.gid,
            tar::EntryType::Directory,
        );
        self.pax(&dir.rel, &dir.xattrs)?;
        self.empty(h, &dir.rel)?;
        if dir.opaque {
            self.marker(&dir.rel.join(".wh..wh..opq"))?;
        }
        Ok(())
    }

    /// A whiteout or opaque marker: an empty file with fixed metadata.
    fn marker(&mut self, path: &Path) -> Result<(), ImageError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.empty(h, path)
    }

    /// A PAX header with `xattrs` for the next entry, if there are any.
    fn pax(&mut self, path: &Path, xattrs: &[(OsString, Vec<u8>)]) -> Result<(), ImageError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (name, value) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(name.as_bytes());
            pax_record(&mut data, &key, value);
        }
        let mut h = tar::Header::new_ustar();
        let n = b"././@PaxHeader";
        h.as_old_mut().name[..n.len()].copy_from_slice(n);
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.tar
            .append(&h, &data[..])
            .map_err(|e| self.err(path, e))
    }
}

/// A header with `meta`'s mode and mtime, owned by `uid:gid`, of size 0.
fn header(meta: &Meta, uid: u32, gid: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(meta.perm);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(u64::try_from(meta.mtime).unwrap_or(0));
    h.set_size(0);
    h
}

struct TarWriter<'a, W: Write> {
    out: Out<'a, W>,
    opts: &'a CommitOptions,
    skip: HashSet<PathBuf>,
    /// Files with more than one link already written, by identity: later names are links.
    links: HashMap<(u32, u32, u64), PathBuf>,
    /// The directories being walked, outermost first.
    pending: Vec<Pending>,
}

impl<W: Write> TarWriter<'_, W> {
    fn walk(&mut self, dir: &OwnedFd, rel: &Path) -> Result<(), ImageError> {
        let names = tree::list_sorted(dir).map_err(|e| self.out.err(rel, e))?;
        for name in names {
            let path = rel.join(&name);
            if self.skip.contains(&path) {
                continue;
            }
            if name.as_bytes().starts_with(b".wh.") {
                return Err(ImageError::Unsupported(format!(
                    "{}: names starting with .wh. are reserved for whiteouts in layers",
                    path.display()
                )));
            }
            let meta = match tree::stat_at(dir, &name) {
                Ok(m) => m,
                // Gone since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.out.err(&path, e)),
            };
            match meta.kind {
                Kind::Char if meta.is_whiteout() => {
                    let mut wh = b".wh.".to_vec();
                    wh.extend_from_slice(name.as_bytes());
                    self.flush()?;
                    self.out
                        .marker(&path.with_file_name(OsStr::from_bytes(&wh)))?;
                }
                Kind::Dir => self.dir(dir, &name, &path)?,
                Kind::File => self.file(dir, &name, &path)?,
                Kind::Symlink => {
                    let target = rustix::fs::readlinkat(dir, &name, Vec::new())
                        .map_err(|e| self.out.err(&path, e))?;
                    let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                    let h = self.header(&path, &meta, tar::EntryType::Symlink)?;
                    self.flush()?;
                    self.out.link(h, &path, &target)?;
                }
                Kind::Fifo => {
                    let h = self.header(&path, &meta, tar::EntryType::Fifo)?;
                    self.flush()?;
                    self.out.empty(h, &path)?;
                }
                Kind::Socket | Kind::Char | Kind::Block => {
                    debug!(path = %path.display(), kind = ?meta.kind, "not taken into a layer");
                }
            }
        }
        Ok(())
    }

    fn dir(&mut self, parent: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), ImageError> {
        let fd = match tree::open_dir_at(parent, name) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.out.err(path, e)),
        };
        let mut meta = tree::stat_fd(&fd).map_err(|e| self.out.err(path, e))?;
        (meta.uid, meta.gid) = (self.shift(path, meta.uid)?, self.shift(path, meta.gid)?);
        let (xattrs, opaque) = self.xattrs(&fd, path)?;
        self.pending.push(Pending {
            rel: path.to_path_buf(),
            meta,
            xattrs,
            opaque,
            written: false,
        });
        self.walk(&fd, path)?;
        let Some(dir) = self.pending.pop() else {
            return Ok(());
        };
        if dir.written || self.redundant(&dir)? {
            return Ok(());
        }
        self.flush()?;
        self.out.dir(&dir)
    }

    fn file(&mut self, parent: &OwnedFd, name: &OsStr, path: &Path) -> Result<(), ImageError> {
        let (file, meta) = match tree::open_file_at(parent, name) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.out.err(path, e)),
        };
        if meta.nlink > 1 {
            if let Some(first) = self.links.get(&meta.id).cloned() {
                let h = self.header(path, &meta, tar::EntryType::Link)?;
                self.flush()?;
                return self.out.link(h, path, &first);
            }
        }
        let (xattrs, _) = self.xattrs(&file, path)?;
        let mut h = self.header(path, &meta, tar::EntryType::Regular)?;
        h.set_size(meta.size);
        self.flush()?;
        self.out.pax(path, &xattrs)?;
        let exact = Exact {
            inner: file,
            left: meta.size,
        };
        self.out
            .tar
            .append_data(&mut h, path, exact)
            .map_err(|e| self.out.err(path, e))?;
        self.out.entries += 1;
        if meta.nlink > 1 {
            self.links.insert(meta.id, path.to_path_buf());
        }
        Ok(())
    }

    /// Write the headers of the directories being walked that are not written yet.
    fn flush(&mut self) -> Result<(), ImageError> {
        for dir in self.pending.iter_mut().filter(|d| !d.written) {
            self.out.dir(dir)?;
            dir.written = true;
        }
        Ok(())
    }

    /// Whether directory `dir`, which holds nothing to write, is already in the lowers.
    fn redundant(&self, dir: &Pending) -> Result<bool, ImageError> {
        if dir.opaque || !dir.xattrs.is_empty() {
            return Ok(false);
        }
        Ok(match tree::lookup(&self.opts.lowers, &dir.rel)? {
            Some(f) => {
                f.meta.kind == Kind::Dir
                    && (f.meta.perm, f.meta.uid, f.meta.gid)
                        == (dir.meta.perm, dir.meta.uid, dir.meta.gid)
            }
            None => false,
        })
    }

    /// The header of a non-directory: `meta` with its owner shifted.
    fn header(
        &self,
        path: &Path,
        meta: &Meta,
        kind: tar::EntryType,
    ) -> Result<tar::Header, ImageError> {
        let (uid, gid) = (self.shift(path, meta.uid)?, self.shift(path, meta.gid)?);
        Ok(header(meta, uid, gid, kind))
    }

    /// The extended attributes of `path` to keep, and whether it is an opaque directory.
    fn xattrs(
        &self,
        fd: impl std::os::fd::AsFd,
        path: &Path,
    ) -> Result<(Xattrs, bool), ImageError> {
        let mut opaque = false;
        let mut keep = Vec::new();
        for (name, value) in tree::xattrs(fd).map_err(|e| self.out.err(path, e))? {
            let n = name.as_bytes();
            if let Some(ovl) = n.strip_prefix(b"trusted.overlay.") {
                match ovl {
                    b"opaque" => opaque |= value == b"y",
                    // The content is elsewhere (a renamed directory, a copied-up file whose
                    // data stayed below): it cannot be taken from this directory.
                    b"redirect" | b"metacopy" => {
                        return Err(ImageError::Unsupported(format!(
                            "{}: overlayfs {} (mount the sandbox's overlay with \
                             redirect_dir=off,metacopy=off)",
                            path.display(),
                            String::from_utf8_lossy(ovl)
                        )))
                    }
                    // origin, impure, nlink, protattr, …: overlayfs's bookkeeping.
                    _ => {}
                }
                continue;
            }
            if n == b"security.selinux" || n.starts_with(b"system.") {
                // A host label; ACLs carry host ids.
                continue;
            }
            let value = if n == b"security.capability" {
                self.shift_capability(path, value)?
            } else {
                value
            };
            keep.push((name, value));
        }
        Ok((keep, opaque))
    }

    /// A file capability written in a user namespace is version 3, naming the host id of
    /// the namespace's root: shifted, and made version 2 when that is root.
    fn shift_capability(&self, path: &Path, mut v: Vec<u8>) -> Result<Vec<u8>, ImageError> {
        const REVISION_MASK: u32 = 0xff00_0000;
        const REVISION_2: u32 = 0x0200_0000;
        const REVISION_3: u32 = 0x0300_0000;
        const EFFECTIVE: u32 = 0x0000_0001;
        let word = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if v.len() != 24 || word(&v[0..4]) & REVISION_MASK != REVISION_3 {
            return Ok(v);
        }
        let root = self.shift(path, word(&v[20..24]))?;
        if root == 0 {
            let magic = REVISION_2 | (word(&v[0..4]) & EFFECTIVE);
            v[0..4].copy_from_slice(&magic.to_le_bytes());
            v.truncate(20);
        } else {
            v[20..24].copy_from_slice(&root.to_le_bytes());
        }
        Ok(v)
    }

    fn shift(&self, path: &Path, id: u32) -> Result<u32, ImageError> {
        let shift = self.opts.id_shift;
        if shift == 0 {
            return Ok(id);
        }
        match u64::from(id).checked_sub(u64::from(shift)) {
            Some(n) if n < ID_RANGE => Ok(id - shift),
            _ => Err(ImageError::Corrupt(format!(
                "{}: owned by host id {id}, outside the sandbox's ids {shift}..{}",
                self.out.src.join(path).display(),
                u64::from(shift) + ID_RANGE
            ))),
        }
    }
}

/// One PAX record: `<length> <key>=<value>\n`, the length counting itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Exactly `left` bytes of `inner`: a file cut short while it is read is an error (a tar
/// entry must be as long as its header says).
struct Exact {
    inner: File,
    left: u64,
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being committed",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        for value_len in [0usize, 1, 80, 85, 86, 87, 990, 995, 996, 10_000] {
            let mut out = Vec::new();
            let value = vec![b'v'; value_len];
            pax_record(&mut out, b"SCHILY.xattr.user.x", &value);
            let space = out.iter().position(|b| *b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..space]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value of {value_len}");
        }
    }

    #[test]
    fn capabilities_leave_the_namespace() {
        let opts = CommitOptions {
            id_shift: 100_000,
            ..Default::default()
        };
        let w = TarWriter {
            out: Out {
                tar: tar::Builder::new(Vec::new()),
                src: Path::new("/src"),
                entries: 0,
            },
            opts: &opts,
            skip: HashSet::new(),
            links: HashMap::new(),
            pending: Vec::new(),
        };
        let mut v3 = 0x0300_0001u32.to_le_bytes().to_vec();
        v3.extend_from_slice(&[0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v3.extend_from_slice(&100_000u32.to_le_bytes());
        let v2 = w.shift_capability(Path::new("f"), v3.clone()).unwrap();
        assert_eq!(v2.len(), 20);
        assert_eq!(&v2[0..4], &0x0200_0001u32.to_le_bytes());
        assert_eq!(&v2[4..20], &v3[4..20]);
        v3[20..24].copy_from_slice(&101_000u32.to_le_bytes());
        let shifted = w.shift_capability(Path::new("f"), v3.clone()).unwrap();
        assert_eq!(&shifted[20..24], &1000u32.to_le_bytes());
        v3[20..24].copy_from_slice(&5u32.to_le_bytes());
        assert!(w.shift_capability(Path::new("f"), v3).is_err());
    }
}
