//! ADD's local archives: telling a tar archive (plain, gzip or zstd) from any other file,
//! and extracting one into a layer directory.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use tracing::debug;

use crate::tree::io_err;
use crate::ImageError;

/// How an ADD archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Packed {
    Plain,
    Gzip,
    Zstd,
}

/// What [`unpack`] did.
pub(crate) struct Unpacked {
    /// Entries extracted.
    pub entries: usize,
    /// The directories extracted with their mtimes (relative to the destination), to be
    /// set once nothing more lands in them.
    pub dir_mtimes: Vec<(PathBuf, i64)>,
}

/// Extract archive `f` (context file `from`) into directory `dest` of a layer, with the
/// archive's owners, modes, mtimes and extended attributes. Fifos and device nodes are
/// left out; names starting with `.wh.` and entries climbing out are errors.
pub(crate) fn unpack(
    f: File,
    packed: Packed,
    from: &Path,
    dest: &Path,
) -> Result<Unpacked, ImageError> {
    unpack_as(f, packed, from, dest, true)
}

/// A build context (a tar archive, plain, gzip or zstd, from a client) extracted into the
/// empty directory `dest` on the host: files as the archive has them, but owned by the
/// daemon and without extended attributes (nothing a client sends sets a host file's
/// `trusted.*` or `security.*`). COPY then gives what it copies its own owners. Returns the
/// entries extracted.
pub fn unpack_context(archive: &Path, dest: &Path) -> Result<usize, ImageError> {
    let f = File::open(archive).map_err(|e| io_err(archive, e))?;
    let packed = kind(&f, Path::new("context"))?.ok_or_else(|| {
        ImageError::BuildInput(
            "the build context is not a tar archive (plain, gzip or zstd)".into(),
        )
    })?;
    Ok(unpack_as(f, packed, Path::new("context"), dest, false)?.entries)
}

fn unpack_as(
    f: File,
    packed: Packed,
    from: &Path,
    dest: &Path,
    keep_owners: bool,
) -> Result<Unpacked, ImageError> {
    let bad = |e: io::Error| ImageError::BuildInput(format!("{}: {e}", from.display()));
    let leaves = |path: &Path| {
        ImageError::BuildInput(format!(
            "{}: entry {} leaves the destination",
            from.display(),
            path.display()
        ))
    };
    let mut archive = tar::Archive::new(decoder(f, packed).map_err(bad)?);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(keep_owners);
    archive.set_unpack_xattrs(keep_owners);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let mut done = Unpacked {
        entries: 0,
        dir_mtimes: Vec::new(),
    };
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let mut rel = PathBuf::new();
        for c in path.components() {
            match c {
                Component::Normal(n) if n.as_bytes().starts_with(b".wh.") => {
                    return Err(crate::copy::reserved(&path))
                }
                Component::Normal(n) => rel.push(n),
                Component::ParentDir => return Err(leaves(&path)),
                _ => {}
            }
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            debug!(archive = %from.display(), entry = %path.display(), "not extracted");
            continue;
        }
        if !entry.unpack_in(dest).map_err(bad)? {
            return Err(leaves(&path));
        }
        done.entries += 1;
        if kind.is_dir() {
            let mtime = entry
                .header()
                .mtime()
                .ok()
                .and_then(|t| i64::try_from(t).ok());
            done.dir_mtimes.extend(mtime.map(|t| (rel, t)));
        }
    }
    Ok(done)
}

/// Whether `f` (context file `rel`) is a tar archive ADD extracts, and how it is packed.
pub(crate) fn kind(f: &File, rel: &Path) -> Result<Option<Packed>, ImageError> {
    let read_err = |e: io::Error| io_err(rel, e);
    let mut magic = [0u8; 6];
    let n = std::os::unix::fs::FileExt::read_at(f, &mut magic, 0).map_err(read_err)?;
    let magic = &magic[..n];
    let packed = if magic.starts_with(&[0x1f, 0x8b]) {
        Packed::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Packed::Zstd
    } else if magic.starts_with(b"BZh") || magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(ImageError::Unsupported(format!(
            "ADD {}: bzip2 and xz archives are not extracted (COPY it and RUN tar)",
            rel.display()
        )));
    } else {
        Packed::Plain
    };
    // A clone shares the offset: `f` is read from its start again afterwards.
    let mut dup = f.try_clone().map_err(read_err)?;
    dup.rewind().map_err(read_err)?;
    let mut block = [0u8; 512];
    let is_tar = match decoder(dup, packed) {
        Ok(mut r) => r.read_exact(&mut block).is_ok() && is_tar_header(&block),
        Err(_) => false,
    };
    let mut f = f;
    f.rewind().map_err(read_err)?;
    Ok(is_tar.then_some(packed))
}

/// A valid (checksummed) tar header that is not the end-of-archive block.
fn is_tar_header(block: &[u8; 512]) -> bool {
    if block.iter().all(|b| *b == 0) {
        return false;
    }
    let Ok(sum) = tar::Header::from_byte_slice(block).cksum() else {
        return false;
    };
    let computed: u32 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    sum == computed
}

pub(crate) fn decoder(f: File, packed: Packed) -> io::Result<Box<dyn Read>> {
    Ok(match packed {
        Packed::Plain => Box::new(io::BufReader::new(f)),
        Packed::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::new(f))),
        Packed::Zstd => Box::new(zstd::stream::read::Decoder::new(f)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_are_told_by_their_checksum() {
        let mut h = tar::Header::new_gnu();
        h.set_path("a").unwrap();
        h.set_size(0);
        h.set_cksum();
        let mut block = [0u8; 512];
        block.copy_from_slice(h.as_bytes());
        assert!(is_tar_header(&block));
        block[0] = b'b';
        assert!(!is_tar_header(&block));
        assert!(!is_tar_header(&[0u8; 512]));
    }
}
