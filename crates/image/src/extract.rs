//! One layer blob → one overlay-ready directory.
//!
//! The blob is decompressed (gzip, zstd or none) and hashed as it streams: the SHA-256 of
//! the tar is the layer's `diff_id`, which the caller compares with the image config before
//! the directory is used. OCI whiteouts become overlayfs's: `.wh.NAME` a character device
//! 0:0 named `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque=y` attribute on its
//! directory. Owners, modes and mtimes (of directories too) are kept, and so are the
//! extended attributes of files and directories, except overlayfs's own `trusted.overlay.*`
//! (which only the whiteout entries above may bring). Fifos are made; other device nodes
//! become empty files (a layer directory is on the host, where a device node would be
//! usable).
//!
//! Paths never leave the destination: entries go through `tar`'s `unpack_in` (which refuses
//! `..` and resolves parents inside the destination), whiteouts are made relative to a
//! directory opened with `RESOLVE_IN_ROOT`, and a hard link to a file of a lower layer is
//! copied from that layer, resolved the same way.
//!
//! Blocking file-system work: call it from `spawn_blocking`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};

use crate::ImageError;

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer of media type `media_type` (OCI and Docker types).
    pub fn of_media_type(media_type: &str) -> Result<Compression, ImageError> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            other => Err(ImageError::Unsupported(format!(
                "layer media type {other:?}"
            ))),
        }
    }
}

/// Counts and hashes what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What [`extract`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Its size.
    pub tar_bytes: u64,
}

/// Extract the layer in `blob` (compressed as `compression`) into `dest`, an existing empty
/// directory. `lowers` are the extracted layers below this one, top-most first (only read,
/// for hard links to their files).
pub fn extract(
    blob: impl Read,
    compression: Compression,
    dest: &Path,
    lowers: &[PathBuf],
) -> Result<Extracted, ImageError> {
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(blob)
                .map_err(|e| ImageError::Corrupt(format!("zstd: {e}")))?,
        ),
    };
    let hashing = Hashing {
        inner: reader,
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut archive = tar::Archive::new(hashing);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    // Extended attributes are set below, on files and directories, without overlayfs's own.
    archive.set_unpack_xattrs(false);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let root: OwnedFd = File::open(dest).map_err(|e| io_err(dest, e))?.into();
    let corrupt = |e: io::Error| ImageError::Corrupt(format!("layer archive: {e}"));
    // Directory mtimes change as entries land in them: set once everything is in.
    let mut mtimes: Vec<(PathBuf, i64)> = Vec::new();
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        let path = entry.path().map_err(corrupt)?.into_owned();
        let rel = relative(&path)?;
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // The root itself ("./"): its metadata is the image's business, not ours.
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        if name.as_bytes() == b".wh..wh..opq" {
            let dir = open_dir(&root, parent, true)?;
            rustix::fs::fsetxattr(
                &dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| io_err(&path, e.into()))?;
            continue;
        }
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            if hidden.is_empty() {
                return Err(ImageError::Corrupt(format!(
                    "bad whiteout {}",
                    path.display()
                )));
            }
            let hidden = OsStr::from_bytes(hidden);
            let dir = open_dir(&root, parent, true)?;
            // Something of this layer by that name goes (a lower one is what is hidden).
            let _ = rustix::fs::unlinkat(&dir, hidden, rustix::fs::AtFlags::empty());
            let _ = rustix::fs::unlinkat(&dir, hidden, rustix::fs::AtFlags::REMOVEDIR);
            rustix::fs::mknodat(
                &dir,
                hidden,
                rustix::fs::FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| io_err(&path, e.into()))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link() {
            let target = entry
                .link_name()
                .map_err(corrupt)?
                .ok_or_else(|| {
                    ImageError::Corrupt(format!("{}: hard link without target", path.display()))
                })?
                .into_owned();
            let target_rel = relative(&target)?;
            if open_in(&root, &target_rel, OFlags::PATH | OFlags::NOFOLLOW).is_err() {
                // Its target is in a lower layer: this layer gets a copy.
                copy_from_lower(&root, &rel, &target_rel, lowers, &entry)?;
                continue;
            }
        }
        let mtime = entry
            .header()
            .mtime()
            .ok()
            .and_then(|t| i64::try_from(t).ok());
        if kind.is_fifo() {
            make_fifo(&root, &rel, entry.header())?;
            mtimes.extend(mtime.map(|t| (rel, t)));
            continue;
        }
        let xattrs = if kind.is_file() || kind.is_dir() {
            xattrs_of(&mut entry).map_err(corrupt)?
        } else {
            Vec::new()
        };
        if !entry.unpack_in(dest).map_err(|e| io_err(&path, e))? {
            return Err(ImageError::Corrupt(format!(
                "entry {} points outside the layer",
                path.display()
            )));
        }
        if !xattrs.is_empty() {
            let flags = if kind.is_dir() {
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW
            } else {
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK
            };
            let fd = open_in(&root, &rel, flags).map_err(|e| io_err(&path, e.into()))?;
            for (key, value) in &xattrs {
                rustix::fs::fsetxattr(&fd, key, value, rustix::fs::XattrFlags::empty())
                    .map_err(|e| io_err(&path, e.into()))?;
            }
        }
        // `tar` sets no directory mtime and makes an mtime of 0 one of 1.
        if kind.is_dir() || (mtime == Some(0) && !kind.is_hard_link()) {
            mtimes.extend(mtime.map(|t| (rel, t)));
        }
    }
    for (rel, mtime) in mtimes.iter().rev() {
        set_mtime(&root, rel, *mtime)?;
    }
    // Whatever follows the end-of-archive blocks is part of the tar and of its digest.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(corrupt)?;
    Ok(Extracted {
        diff_id: format!("sha256:{:x}", rest.hasher.finalize()),
        tar_bytes: rest.bytes,
    })
}

/// `path` of a tar entry as a relative path of normal components (`./a/b` → `a/b`); `..`
/// is refused.
fn relative(path: &Path) -> Result<PathBuf, ImageError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ImageError::Corrupt(format!(
                    "entry {} leaves the layer",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// The extended attributes of a tar entry (PAX `SCHILY.xattr.*` records), without
/// overlayfs's own: a layer never brings `trusted.overlay.*` along (whiteouts and opaque
/// directories come as `.wh.` entries).
fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<crate::tree::Xattrs> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for ext in exts {
        let ext = ext?;
        if let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
            if !key.starts_with(b"trusted.overlay.") {
                out.push((
                    OsStr::from_bytes(key).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(out)
}

/// A fifo entry (`tar` would make it a regular file).
fn make_fifo(root: &OwnedFd, rel: &Path, h: &tar::Header) -> Result<(), ImageError> {
    let dir = open_dir(root, rel.parent().unwrap_or(Path::new("")), true)?;
    let name = rel.file_name().unwrap_or_default();
    let _ = rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty());
    let mode = Mode::from_raw_mode(h.mode().unwrap_or(0o644) & 0o7777);
    rustix::fs::mknodat(&dir, name, rustix::fs::FileType::Fifo, mode, 0)
        .map_err(|e| io_err(rel, e.into()))?;
    let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok());
    let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok());
    rustix::fs::chownat(
        &dir,
        name,
        uid.map(rustix::fs::Uid::from_raw),
        gid.map(rustix::fs::Gid::from_raw),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(rel, e.into()))?;
    // After the owner (which clears set-id bits), and past the umask.
    rustix::fs::chmodat(&dir, name, mode, rustix::fs::AtFlags::empty())
        .map_err(|e| io_err(rel, e.into()))
}

/// Set the mtime (and atime) of `rel` below `root`, not following a symlink; something a
/// later entry removed is passed over.
fn set_mtime(root: &OwnedFd, rel: &Path, mtime: i64) -> Result<(), ImageError> {
    let Ok(dir) = open_dir(root, rel.parent().unwrap_or(Path::new("")), false) else {
        return Ok(());
    };
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    let times = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    match rustix::fs::utimensat(
        &dir,
        rel.file_name().unwrap_or_default(),
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(io_err(rel, e.into())),
    }
}

fn io_err(path: &Path, e: io::Error) -> ImageError {
    ImageError::Io(format!("{}: {e}", path.display()))
}

/// Open `rel` below `root` as if `root` were `/` (symlinks included).
pub(crate) fn open_in(root: &OwnedFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat2(
        root.as_fd(),
        rel,
        flags | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// The directory `rel` below `root` (resolved inside it), made (0755) where missing when
/// `create`.
fn open_dir(root: &OwnedFd, rel: &Path, create: bool) -> Result<OwnedFd, ImageError> {
    let flags = OFlags::DIRECTORY | OFlags::RDONLY;
    match open_in(root, rel, flags) {
        Ok(fd) => return Ok(fd),
        Err(rustix::io::Errno::NOENT) if create => {}
        Err(e) => return Err(io_err(rel, e.into())),
    }
    let mut at = PathBuf::new();
    let mut dir = open_in(root, &at, flags).map_err(|e| io_err(rel, e.into()))?;
    for c in rel.components() {
        at.push(c);
        dir = match open_in(root, &at, flags) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                rustix::fs::mkdirat(&dir, c.as_os_str(), Mode::from_raw_mode(0o755))
                    .map_err(|e| io_err(&at, e.into()))?;
                open_in(root, &at, flags).map_err(|e| io_err(&at, e.into()))?
            }
            Err(e) => return Err(io_err(&at, e.into())),
        };
    }
    Ok(dir)
}

/// A hard link whose target is in a lower layer: copy that file (its content and the
/// entry's owner and mode) to `rel`.
fn copy_from_lower<R: Read>(
    root: &OwnedFd,
    rel: &Path,
    target: &Path,
    lowers: &[PathBuf],
    entry: &tar::Entry<'_, R>,
) -> Result<(), ImageError> {
    for lower in lowers {
        let Ok(lower_root) = File::open(lower).map(OwnedFd::from) else {
            continue;
        };
        let Ok(src) = open_in(&lower_root, target, OFlags::RDONLY | OFlags::NOFOLLOW) else {
            continue;
        };
        let parent = open_dir(root, rel.parent().unwrap_or(Path::new("")), true)?;
        let name = rel
            .file_name()
            .ok_or_else(|| ImageError::Corrupt(format!("{}: no name", rel.display())))?;
        let _ = rustix::fs::unlinkat(&parent, name, rustix::fs::AtFlags::empty());
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let dst = rustix::fs::openat(
            &parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| io_err(rel, e.into()))?;
        let mut src = File::from(src);
        let mut dst = File::from(dst);
        io::copy(&mut src, &mut dst).map_err(|e| io_err(rel, e))?;
        let uid = h.uid().ok().and_then(|u| u32::try_from(u).ok());
        let gid = h.gid().ok().and_then(|g| u32::try_from(g).ok());
        rustix::fs::fchown(
            &dst,
            uid.map(rustix::fs::Uid::from_raw),
            gid.map(rustix::fs::Gid::from_raw),
        )
        .map_err(|e| io_err(rel, e.into()))?;
        rustix::fs::fchmod(&dst, Mode::from_raw_mode(mode)).map_err(|e| io_err(rel, e.into()))?;
        return Ok(());
    }
    Err(ImageError::Corrupt(format!(
        "hard link {} to {}, which no layer has",
        rel.display(),
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A tar in memory from (path, content | None for a directory | symlink target).
    fn tar_of(entries: &[(&str, Kind)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            match kind {
                Kind::File(data, mode) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, *data).unwrap();
                }
                Kind::Dir => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
                Kind::Symlink(to) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_size(0);
                    b.append_link(&mut h, path, to).unwrap();
                }
                Kind::Hardlink(to) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o640);
                    h.set_size(0);
                    b.append_link(&mut h, path, to).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    enum Kind {
        File(&'static [u8], u32),
        Dir,
        Symlink(&'static str),
        Hardlink(&'static str),
    }

    fn sha(b: &[u8]) -> String {
        format!("sha256:{:x}", Sha256::digest(b))
    }

    fn is_whiteout(p: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::symlink_metadata(p)
            .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
            .unwrap_or(false)
    }

    #[test]
    fn whiteouts_become_overlay_form_and_the_digest_is_the_tars() {
        let tar = tar_of(&[
            ("opt/", Kind::Dir),
            ("opt/a.txt", Kind::File(b"hello\n", 0o640)),
            ("opt/.wh.b.txt", Kind::File(b"", 0o644)),
            ("opt/dir/.wh..wh..opq", Kind::File(b"", 0o644)),
            ("opt/dir/z", Kind::File(b"z\n", 0o600)),
            ("new/deep/.wh.gone", Kind::File(b"", 0o644)),
            ("bin/sh", Kind::Symlink("/bin/busybox")),
        ]);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let blob = match c {
                Compression::None => tar.clone(),
                Compression::Gzip => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                    std::io::Write::write_all(&mut e, &tar).unwrap();
                    e.finish().unwrap()
                }
                Compression::Zstd => zstd::encode_all(&tar[..], 3).unwrap(),
            };
            let dir = tempfile::tempdir().unwrap();
            let got = extract(&blob[..], c, dir.path(), &[]).unwrap();
            assert_eq!(got.diff_id, sha(&tar), "{c:?}");
            assert_eq!(got.tar_bytes, tar.len() as u64);
            let d = dir.path();
            assert_eq!(std::fs::read(d.join("opt/a.txt")).unwrap(), b"hello\n");
            let m = std::fs::metadata(d.join("opt/a.txt")).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o640);
            assert!(is_whiteout(&d.join("opt/b.txt")));
            assert!(!d.join("opt/.wh.b.txt").exists());
            assert!(is_whiteout(&d.join("new/deep/gone")));
            let opaque =
                rustix::fs::getxattr(d.join("opt/dir"), "trusted.overlay.opaque", &mut [0u8; 4]);
            assert_eq!(opaque.unwrap(), 1);
            assert!(!d.join("opt/dir/.wh..wh..opq").exists());
            assert_eq!(
                std::fs::read_link(d.join("bin/sh")).unwrap(),
                Path::new("/bin/busybox")
            );
        }
    }

    #[test]
    fn nothing_lands_outside_the_layer() {
        // A symlink to / then a whiteout and a file through it: both stay inside.
        let outside = tempfile::tempdir().unwrap();
        let target: &'static str = Box::leak(outside.path().display().to_string().into_boxed_str());
        let tar = tar_of(&[
            ("esc", Kind::Symlink(target)),
            ("esc/.wh.victim", Kind::File(b"", 0o644)),
        ]);
        std::fs::write(outside.path().join("victim"), b"keep").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let _ = extract(&tar[..], Compression::None, dir.path(), &[]);
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"keep"
        );

        let tar = tar_of(&[
            ("esc", Kind::Symlink(target)),
            ("esc/new", Kind::File(b"x", 0o644)),
        ]);
        let dir = tempfile::tempdir().unwrap();
        assert!(extract(&tar[..], Compression::None, dir.path(), &[]).is_err());
        assert!(!outside.path().join("new").exists());

        // A hard link to a host file through a symlink is refused (not found in any layer).
        let tar = tar_of(&[
            ("esc", Kind::Symlink(target)),
            ("stolen", Kind::Hardlink("esc/victim")),
        ]);
        let dir = tempfile::tempdir().unwrap();
        assert!(extract(&tar[..], Compression::None, dir.path(), &[]).is_err());
        assert!(!dir.path().join("stolen").exists());

        // `..` is refused outright.
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut bad = h.as_bytes().to_vec();
        bad.extend_from_slice(&[0u8; 1024]);
        let dir = tempfile::tempdir().unwrap();
        assert!(extract(&bad[..], Compression::None, dir.path(), &[]).is_err());
    }

    #[test]
    fn hard_links_to_lower_layers_are_copied() {
        let lower = tempfile::tempdir().unwrap();
        std::fs::create_dir(lower.path().join("usr")).unwrap();
        std::fs::write(lower.path().join("usr/tool"), b"#!/bin/sh\n").unwrap();
        let tar = tar_of(&[
            ("usr/", Kind::Dir),
            ("usr/here", Kind::File(b"same layer", 0o644)),
            ("usr/link-here", Kind::Hardlink("usr/here")),
            ("usr/link-lower", Kind::Hardlink("usr/tool")),
        ]);
        let dir = tempfile::tempdir().unwrap();
        extract(
            &tar[..],
            Compression::None,
            dir.path(),
            &[lower.path().to_path_buf()],
        )
        .unwrap();
        let d = dir.path();
        assert_eq!(
            std::fs::metadata(d.join("usr/here")).unwrap().ino(),
            std::fs::metadata(d.join("usr/link-here")).unwrap().ino()
        );
        assert_eq!(
            std::fs::read(d.join("usr/link-lower")).unwrap(),
            b"#!/bin/sh\n"
        );
    }

    #[test]
    fn corrupt_streams_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(extract(&b"not gzip"[..], Compression::Gzip, dir.path(), &[]).is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(extract(&b"not zstd"[..], Compression::Zstd, dir.path(), &[]).is_err());
        assert!(Compression::of_media_type("application/x-foo").is_err());
    }
}
