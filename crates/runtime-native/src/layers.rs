//! A sandbox's writable layers on the host: who owns them (its user-namespace range), the
//! identity files written into them, how much disk they take, and the small file-system
//! helpers the image, storage and lifecycle code share. A leaf: it uses only `spec` and
//! `userns`.
//!
//! Everything here is blocking file-system work: call it from `spawn_blocking`.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::spec::hosts_file;
use crate::userns;
use warren_runtime::RuntimeError;

/// Make the writable layers under `fs` (`upper`, `usr-upper`) belong to the range whose
/// root is host id `owner`: a layer that belongs to another range (a snapshot of another
/// sandbox, or one made without a user namespace, whose root is 0) has every owner in that
/// range moved to the same id in this one ([`userns::shift_tree`]). A no-op when the layers
/// are this range's already (one `stat` each).
pub fn own_layers(fs_dir: &Path, owner: u32) -> Result<(), RuntimeError> {
    for name in ["upper", "usr-upper"] {
        let layer = fs_dir.join(name);
        let from = userns::range_of(&layer)
            .map_err(|e| RuntimeError::Setup(format!("stat {}: {e}", layer.display())))?;
        if from == owner {
            continue;
        }
        let t0 = std::time::Instant::now();
        let done = userns::shift_tree(&layer, from, owner).map_err(|e| {
            RuntimeError::Setup(format!(
                "moving {} into the sandbox's id range: {e}",
                layer.display()
            ))
        })?;
        tracing::debug!(layer = %layer.display(), from, to = owner, entries = done.entries,
            visited = done.visited, us = t0.elapsed().as_micros() as u64, "layer owners moved");
    }
    Ok(())
}

/// Write the sandbox's `/etc/hostname` and `/etc/hosts` into its upper layer. In a layer
/// restored from another sandbox's snapshot, `/etc/hostname` is replaced and `/etc/hosts`
/// only while it is still the one written for the old name (a user's edits stay, and so
/// does a deleted one's whiteout). Never follows a symlink: a restored layer's contents
/// come from inside a sandbox. What it creates belongs to host id `owner` (root inside).
pub fn set_identity(upper: &Path, id: &str, owner: u32) -> io::Result<()> {
    let etc = upper.join("etc");
    match fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a directory", etc.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            mkdir_mode(&etc, 0o755)?;
            std::os::unix::fs::lchown(&etc, Some(owner), Some(owner))?;
        }
        Err(e) => return Err(e),
    }
    let (hostname, hosts) = (etc.join("hostname"), etc.join("hosts"));
    let old_name = read_small_regular(&hostname)?.map(|s| s.trim().to_string());
    let hosts_ours = match read_small_regular(&hosts)? {
        Some(content) => old_name.is_some_and(|old| content == hosts_file(&old)),
        None => !exists_nofollow(&hosts)?,
    };
    replace_file(&hostname, format!("{id}\n").as_bytes(), 0o644, owner)?;
    if hosts_ours {
        replace_file(&hosts, hosts_file(id).as_bytes(), 0o644, owner)?;
    }
    Ok(())
}

/// First line of every `/etc/resolv.conf` Warren writes (so it knows its own from a user's).
pub const RESOLV_MARK: &str = "# Warren:";

/// Write the sandbox's `/etc/resolv.conf` into its upper layer (`content` must start with
/// [`RESOLV_MARK`]): unless the layer holds one a user wrote (a restored snapshot's edits
/// stay, as does a deleted one's whiteout; one already equal to `content` is left
/// untouched). Never follows a symlink.
pub fn set_resolv_conf(upper: &Path, content: &str, owner: u32) -> io::Result<()> {
    let etc = upper.join("etc");
    if !fs::symlink_metadata(&etc).is_ok_and(|m| m.is_dir()) {
        mkdir_mode(&etc, 0o755)?;
        std::os::unix::fs::lchown(&etc, Some(owner), Some(owner))?;
    }
    let path = etc.join("resolv.conf");
    // A restored layer that already holds this very file keeps it as it is (mtime too).
    let write = match read_small_regular(&path)? {
        Some(old) => old.starts_with(RESOLV_MARK) && old != content,
        None => !exists_nofollow(&path)?,
    };
    if write {
        replace_file(&path, content.as_bytes(), 0o644, owner)?;
    }
    Ok(())
}

fn exists_nofollow(p: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(p) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The content of a regular file of at most 64 KiB (not following symlinks); `None` for
/// anything else or nothing.
fn read_small_regular(p: &Path) -> io::Result<Option<String>> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_file() && m.len() <= 64 * 1024 => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)?;
    let mut s = String::new();
    match io::Read::read_to_string(&mut f, &mut s) {
        Ok(_) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replace `p` (whatever it is: file, symlink, whiteout) by a new regular file, by rename.
fn replace_file(p: &Path, content: &[u8], mode: u32, owner: u32) -> io::Result<()> {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = p.with_file_name(format!(".{name}.warren-tmp"));
    remove_if_exists(&tmp)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    io::Write::write_all(&mut f, content)?;
    std::os::unix::fs::fchown(&f, Some(owner), Some(owner))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    drop(f);
    fs::rename(&tmp, p)
}

/// Make `<data_dir>/sandboxes` (root-only).
pub fn mkdir_sandboxes(data_dir: &Path) -> io::Result<()> {
    fs::create_dir_all(data_dir)?;
    mkdir_mode(&data_dir.join("sandboxes"), 0o700)
}

/// `dir`, empty, with exactly `mode` (whatever was there before is removed).
pub fn fresh_dir(dir: &Path, mode: u32) -> io::Result<()> {
    remove_if_exists(dir)?;
    fs::DirBuilder::new().mode(mode).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// `rm -rf`, and fine if it is already gone.
pub fn remove_if_exists(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => match fs::remove_dir_all(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
        Ok(_) => match fs::remove_file(p) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        },
    }
}

pub(super) fn mkdir_mode(p: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => {}
        Err(e) => return Err(e),
    }
    // Independent of the umask.
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

/// Bytes allocated on disk (`st_blocks * 512`) for the tree at `root`: symlinks are not
/// followed, other file systems mounted below are not entered, hard-linked files count
/// once. Entries that vanish or cannot be read while walking are skipped.
pub(super) fn allocated_bytes(root: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = meta.dev();
    let mut total = meta.blocks() * 512;
    if !meta.is_dir() {
        return total;
    }
    let mut seen_links = HashSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // `DirEntry::metadata` does not follow symlinks.
            let Ok(m) = entry.metadata() else {
                continue;
            };
            if m.dev() != dev {
                continue;
            }
            if !m.is_dir() && m.nlink() > 1 && !seen_links.insert(m.ino()) {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    total
}
