//! `warren cp` and `warren fs ...`: files inside a sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use chrono::SecondsFormat;
use futures::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use warren_api::{ExecUser, FileInfo, FileKind};
use warren_client::Client;

use crate::{FsCommand, User};

/// One side of `warren cp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path, or `-` (stdin/stdout).
    Local(String),
    /// `ID:/path`.
    Remote { id: String, path: String },
}

/// `ID:/abs/path` is remote (the id has no `/` and the path is absolute); anything else,
/// e.g. `./a:b` or `/tmp/x:/y`, is local.
pub fn parse_location(s: &str) -> Location {
    if let Some((id, path)) = s.split_once(':') {
        if !id.is_empty() && !id.contains('/') && path.starts_with('/') {
            return Location::Remote {
                id: id.to_string(),
                path: path.to_string(),
            };
        }
    }
    Location::Local(s.to_string())
}

fn basename(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
}

fn parse_mode(mode: Option<&str>) -> anyhow::Result<Option<u32>> {
    mode.map(|m| {
        u32::from_str_radix(m, 8)
            .ok()
            .filter(|v| *v <= 0o7777)
            .with_context(|| format!("--mode must be octal permission bits (e.g. 0644), got {m:?}"))
    })
    .transpose()
}

/// `warren cp SRC DST`.
pub async fn cp(
    client: &Client,
    src: &str,
    dst: &str,
    mode: Option<&str>,
    user: Option<User>,
) -> anyhow::Result<u8> {
    let mode = parse_mode(mode)?;
    let user = match user {
        Some(User::User) => ExecUser::User,
        _ => ExecUser::Root,
    };
    match (parse_location(src), parse_location(dst)) {
        (Location::Local(local), Location::Remote { id, path }) => {
            upload(client, &local, &id, &path, mode, user).await
        }
        (Location::Remote { id, path }, Location::Local(local)) => {
            download(client, &id, &path, &local).await
        }
        (Location::Remote { .. }, Location::Remote { .. }) => {
            bail!("copying between sandboxes is not supported; copy through a local file")
        }
        (Location::Local(_), Location::Local(_)) => {
            bail!("one side of `warren cp` must be in a sandbox: ID:/path")
        }
    }
}

async fn upload(
    client: &Client,
    local: &str,
    id: &str,
    path: &str,
    mode: Option<u32>,
    user: ExecUser,
) -> anyhow::Result<u8> {
    let info = if local == "-" {
        if path.ends_with('/') {
            bail!("give the file name to write standard input to: {id}:{path}NAME");
        }
        let body = warren_client::body_from_reader(tokio::io::stdin());
        client.write_file_as(id, path, body, mode, user).await?
    } else {
        let meta = tokio::fs::metadata(local)
            .await
            .with_context(|| format!("cannot read {local}"))?;
        if meta.is_dir() {
            return upload_dir(client, local, id, path, mode, user).await;
        }
        let mut target = path.to_string();
        if target.ends_with('/') {
            let name = basename(local).with_context(|| format!("no file name in {local}"))?;
            target.push_str(name);
        }
        let file = tokio::fs::File::open(local)
            .await
            .with_context(|| format!("cannot open {local}"))?;
        let body = warren_client::body_from_reader(file);
        client.write_file_as(id, &target, body, mode, user).await?
    };
    eprintln!("{} bytes -> {id}:{}", info.size, info.path);
    Ok(0)
}

async fn download(client: &Client, id: &str, path: &str, local: &str) -> anyhow::Result<u8> {
    if local == "-" {
        let mut stream = client.read_file(id, path).await?;
        let mut out = tokio::io::stdout();
        return copy_out(&mut stream, &mut out).await;
    }
    let info = client.stat(id, path).await?;
    if info.kind == FileKind::Dir {
        return download_dir(client, id, path, local).await;
    }
    let mut stream = client.read_file(id, path).await?;
    let mut target = PathBuf::from(local);
    if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
        let name = basename(path).with_context(|| format!("no file name in {path}"))?;
        target.push(name);
    }
    // Like cp(1): a new file gets the source's permission bits (less the umask), an existing
    // one keeps its own; setuid, setgid and sticky bits never come from a sandbox.
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(local_file_mode(info.mode))
        .open(&target)
        .await
        .with_context(|| format!("cannot create {}", target.display()))?;
    let mut result = copy_out(&mut stream, &mut file).await;
    if let Ok(0) = result {
        if let Err(e) = strip_special_bits(&file).await {
            result = Err(anyhow::Error::new(e)
                .context(format!("cannot set the mode of {}", target.display())));
        }
    }
    if result.is_err() {
        // Never leave a truncated copy that looks complete (but never remove what is not a
        // regular file, such as /dev/null).
        drop(file);
        if tokio::fs::symlink_metadata(&target)
            .await
            .is_ok_and(|m| m.is_file())
        {
            let _ = tokio::fs::remove_file(&target).await;
        }
    }
    result
}

/// Clears setuid, setgid and sticky bits of a regular file we wrote (an existing file we
/// replaced keeps them for a root writer, since the kernel only drops them for others).
async fn strip_special_bits(file: &tokio::fs::File) -> std::io::Result<()> {
    let md = file.metadata().await?;
    let mode = md.permissions().mode();
    if md.is_file() && mode & 0o7000 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))
            .await?;
    }
    Ok(())
}

/// One entry of a local tree to upload, relative to its root.
enum LocalEntry {
    Dir(String),
    File { rel: String, mode: u32 },
    Symlink(String),
}

/// Every directory, file and symlink below `root` (not following symlinks), parents first.
fn walk_local(root: &Path) -> anyhow::Result<Vec<LocalEntry>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("cannot read {}", dir.display()))?;
        names.sort();
        let mut subdirs = Vec::new();
        for name in names {
            let rel_path = rel.join(&name);
            let full = root.join(&rel_path);
            let md = std::fs::symlink_metadata(&full)
                .with_context(|| format!("cannot stat {}", full.display()))?;
            let rel_str = rel_path
                .to_str()
                .with_context(|| format!("{} is not valid UTF-8", full.display()))?
                .to_string();
            let ft = md.file_type();
            if ft.is_dir() {
                out.push(LocalEntry::Dir(rel_str));
                subdirs.push(rel_path);
            } else if ft.is_file() {
                out.push(LocalEntry::File {
                    rel: rel_str,
                    mode: md.permissions().mode() & 0o7777,
                });
            } else if ft.is_symlink() {
                out.push(LocalEntry::Symlink(rel_str));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// `warren cp LOCALDIR ID:/dir`: every file below `local`, streamed one by one. A remote
/// path ending in `/` receives the directory under its own name.
async fn upload_dir(
    client: &Client,
    local: &str,
    id: &str,
    path: &str,
    mode: Option<u32>,
    user: ExecUser,
) -> anyhow::Result<u8> {
    let mut target = path.to_string();
    if target.ends_with('/') {
        let name = basename(local).with_context(|| format!("no directory name in {local}"))?;
        target.push_str(name);
    }
    let target = target.trim_end_matches('/').to_string();
    if target.is_empty() {
        bail!("cannot upload a directory over `/`");
    }
    let root = PathBuf::from(local);
    let entries = tokio::task::spawn_blocking(move || walk_local(&root))
        .await
        .context("walking the local directory")??;
    let mkdir = |dir: String| warren_api::MkdirRequest {
        path: dir,
        parents: Some(true),
        user: Some(user),
        ..Default::default()
    };
    client.mkdir_with(id, &mkdir(target.clone())).await?;
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in entries {
        match entry {
            LocalEntry::Dir(rel) => {
                client
                    .mkdir_with(id, &mkdir(format!("{target}/{rel}")))
                    .await?;
            }
            LocalEntry::File { rel, mode: own } => {
                let src = Path::new(local).join(&rel);
                let file = tokio::fs::File::open(&src)
                    .await
                    .with_context(|| format!("cannot open {}", src.display()))?;
                let body = warren_client::body_from_reader(file);
                let info = client
                    .write_file_as(
                        id,
                        &format!("{target}/{rel}"),
                        body,
                        Some(mode.unwrap_or(own)),
                        user,
                    )
                    .await?;
                files += 1;
                bytes += info.size;
            }
            LocalEntry::Symlink(rel) => {
                eprintln!("warren: skipping symlink {local}/{rel}");
            }
        }
    }
    eprintln!("{files} files, {bytes} bytes -> {id}:{target}");
    Ok(0)
}

/// Reads the chunks of a channel as one byte stream (on a blocking thread).
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.chunk = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// The permission bits a downloaded file gets on this host: the sandbox's `rwx` bits only.
/// Setuid, setgid and sticky bits never leave a sandbox (its root could otherwise plant a
/// setuid binary owned by whoever runs the CLI).
pub fn local_file_mode(remote: u32) -> u32 {
    remote & 0o777
}

/// The permission bits a downloaded directory gets: never group- or world-writable, never
/// setgid or sticky, and always `rwx` for its owner (so the rest of the tree can be
/// written into it).
pub fn local_dir_mode(remote: u32) -> u32 {
    (remote & 0o755) | 0o700
}

/// Unpacks a tar archive into `dest`, refusing entries that would land outside it.
///
/// The archive comes from a sandbox, so nothing in it is trusted beyond names and content:
/// modes are masked ([`local_file_mode`], [`local_dir_mode`]), owners and extended
/// attributes (file capabilities) are ignored, and only regular files, directories,
/// symlinks and hard links inside `dest` are created (devices and FIFOs are skipped).
pub fn unpack_archive(reader: impl std::io::Read, dest: &Path) -> anyhow::Result<()> {
    use tar::EntryType;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_preserve_ownerships(false);
    archive.set_unpack_xattrs(false);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().context("reading the archive")? {
        let mut entry = entry.context("reading the archive")?;
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let kind = entry.header().entry_type();
        // Old-style headers name a directory with a trailing `/` (the tar crate does too).
        let is_dir = kind == EntryType::Directory
            || (entry.header().as_ustar().is_none() && entry.path_bytes().ends_with(b"/"));
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            EntryType::XGlobalHeader
            | EntryType::XHeader
            | EntryType::GNULongName
            | EntryType::GNULongLink => continue,
            _ => {
                eprintln!("warren: skipping {name:?} (not a file, directory or link)");
                continue;
            }
        }
        // With permissions not preserved the tar crate applies `mode & 0o777 & !mask`: a
        // directory is never group/world-writable even for the moment before it is fixed
        // up below.
        entry.set_mask(if is_dir { 0o022 } else { 0 });
        let mode = entry.header().mode().unwrap_or(0o644);
        let inside = entry
            .unpack_in(dest)
            .with_context(|| format!("unpacking {name}"))?;
        if !inside {
            bail!(
                "the archive entry {name:?} would land outside {}",
                dest.display()
            );
        }
        if is_dir {
            if let Some(path) = entry_target(dest, &entry) {
                // `unpack_in` made this a real directory (it refuses to reuse a symlink).
                let md = std::fs::symlink_metadata(&path)
                    .with_context(|| format!("unpacking {name}"))?;
                if md.is_dir() {
                    std::fs::set_permissions(
                        &path,
                        std::fs::Permissions::from_mode(local_dir_mode(mode)),
                    )
                    .with_context(|| format!("unpacking {name}"))?;
                }
            }
        }
    }
    Ok(())
}

/// Where `unpack_in(dest)` put `entry` (`None` for the destination itself).
fn entry_target<R: std::io::Read>(dest: &Path, entry: &tar::Entry<'_, R>) -> Option<PathBuf> {
    let path = entry.path().ok()?;
    let mut out = dest.to_path_buf();
    for part in path.components() {
        if let std::path::Component::Normal(p) = part {
            out.push(p);
        }
    }
    (out != dest).then_some(out)
}

/// `warren cp ID:/dir LOCALDIR`: the tree as a tar stream, unpacked as it arrives. An
/// existing local directory receives it under the remote directory's name.
async fn download_dir(client: &Client, id: &str, path: &str, local: &str) -> anyhow::Result<u8> {
    let mut dest = PathBuf::from(local);
    if tokio::fs::metadata(&dest).await.is_ok_and(|m| m.is_dir()) {
        if let Some(name) = basename(path) {
            dest.push(name);
        }
    }
    tokio::fs::create_dir_all(&dest)
        .await
        .with_context(|| format!("cannot create {}", dest.display()))?;
    let mut stream = client.read_archive(id, path).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let target = dest.clone();
    let unpack = tokio::task::spawn_blocking(move || {
        unpack_archive(
            ChannelReader {
                rx,
                chunk: bytes::Bytes::new(),
            },
            &target,
        )
    });
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    break; // The unpacker stopped: its error says why.
                }
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let unpacked = unpack.await.context("unpacking the archive")?;
    if let Some(e) = failure {
        return Err(anyhow::Error::new(e).context("download interrupted"));
    }
    unpacked?;
    eprintln!("{id}:{path} -> {}", dest.display());
    Ok(0)
}

/// Write a download to `out`; a reader that went away (`| head`) ends it like SIGPIPE.
async fn copy_out<W: AsyncWrite + Unpin>(
    stream: &mut warren_client::FileStream,
    out: &mut W,
) -> anyhow::Result<u8> {
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("download interrupted")?;
        match out.write_all(&chunk).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(141),
            Err(e) => return Err(e).context("writing the file"),
        }
    }
    match out.flush().await {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(141),
        Err(e) => Err(e).context("writing the file"),
    }
}

/// `warren fs ...`.
pub async fn fs(client: &Client, cmd: FsCommand) -> anyhow::Result<u8> {
    match cmd {
        FsCommand::Ls {
            id,
            path,
            depth,
            json,
        } => {
            let list = client.list_files(&id, &path, depth).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", ls_lines(&list.entries));
                if list.truncated {
                    eprintln!("warren: the listing was truncated (too many entries)");
                }
            }
            Ok(0)
        }
        FsCommand::Cat { id, path } => {
            let mut stream = client.read_file(&id, &path).await?;
            copy_out(&mut stream, &mut tokio::io::stdout()).await
        }
        FsCommand::Rm {
            id,
            path,
            recursive,
        } => {
            client.remove_path(&id, &path, recursive).await?;
            Ok(0)
        }
        FsCommand::Mkdir { id, path } => {
            client.mkdir(&id, &path).await?;
            Ok(0)
        }
        FsCommand::Grep {
            id,
            path,
            pattern,
            glob,
            json,
        } => {
            let req = warren_client::api::SearchRequest {
                path,
                glob,
                pattern: Some(pattern),
                ..Default::default()
            };
            let res = client.search_files(&id, &req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&res)?);
            } else {
                for m in &res.matches {
                    match (m.line, &m.text) {
                        (Some(line), Some(text)) => println!("{}:{line}:{text}", m.path),
                        _ => println!("{}", m.path),
                    }
                }
                if res.truncated {
                    eprintln!("warren: the search was truncated (result or time limit)");
                }
            }
            // Like grep: 1 when nothing matched.
            Ok(if res.matches.is_empty() { 1 } else { 0 })
        }
    }
}

/// `drwxr-xr-x  0  0  4096  2026-01-01T00:00:00Z  /path` per entry, columns aligned.
fn ls_lines(entries: &[FileInfo]) -> String {
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            let name = match &e.link_target {
                Some(t) => format!("{} -> {t}", e.path),
                None => e.path.clone(),
            };
            [
                mode_string(e.kind, e.mode),
                format!("{}:{}", e.uid, e.gid),
                e.size.to_string(),
                e.modified_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                name,
            ]
        })
        .collect();
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        out.push_str(&format!(
            "{}  {:<w1$}  {:>w2$}  {}  {}\n",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w1 = widths[1],
            w2 = widths[2],
        ));
    }
    out
}

fn mode_string(kind: FileKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        FileKind::Dir => 'd',
        FileKind::Symlink => 'l',
        FileKind::File => '-',
        FileKind::Other => '?',
    });
    for shift in [6u32, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    /// A tar archive of `(name, type, mode, uid, content or link target)`.
    fn archive(entries: &[(&str, tar::EntryType, u32, u64, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, mode, uid, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_uid(*uid);
            h.set_gid(*uid);
            h.set_mtime(1_700_000_000);
            // `set_path` refuses `..`: write the name bytes directly.
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
                h.set_link_name(std::str::from_utf8(data).unwrap()).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &b""[..]).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    fn scratch(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("warren-unpack-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(p.join("dest")).unwrap();
        p
    }

    #[test]
    fn unpack_masks_modes_and_owners() {
        use std::os::unix::fs::MetadataExt;
        use tar::EntryType as T;
        let root = scratch("modes");
        let dest = root.join("dest");
        let bytes = archive(&[
            ("shared/", T::Directory, 0o2777, 1234, b""),
            ("shared/suid", T::Regular, 0o4755, 0, b"#!/bin/sh\n"),
            ("shared/sgid", T::Regular, 0o2711, 0, b"x"),
            ("tmp/", T::Directory, 0o1777, 0, b""),
            ("tmp/sticky", T::Regular, 0o1666, 0, b"y"),
            ("locked/", T::Directory, 0o500, 0, b""),
            ("locked/inner", T::Regular, 0o640, 1234, b"z"),
            ("dev", T::Char, 0o666, 0, b""),
            ("link", T::Symlink, 0o777, 0, b"shared/suid"),
        ]);
        unpack_archive(&bytes[..], &dest).unwrap();
        let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("shared"), 0o755);
        assert_eq!(mode("shared/suid"), 0o755);
        assert_eq!(mode("shared/sgid"), 0o711);
        assert_eq!(mode("tmp"), 0o755);
        assert_eq!(mode("tmp/sticky"), 0o666);
        assert_eq!(mode("locked"), 0o700);
        assert_eq!(std::fs::read(dest.join("locked/inner")).unwrap(), b"z");
        let me = std::fs::metadata(&root).unwrap().uid();
        assert_eq!(
            std::fs::metadata(dest.join("locked/inner")).unwrap().uid(),
            me
        );
        assert_eq!(std::fs::metadata(dest.join("shared")).unwrap().uid(), me);
        assert!(!dest.join("dev").exists());
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("shared/suid")
        );
        // Unpacking again over the same tree keeps it at the same modes.
        unpack_archive(&bytes[..], &dest).unwrap();
        assert_eq!(mode("shared"), 0o755);
        assert_eq!(mode("shared/suid"), 0o755);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn unpack_stays_inside_the_destination() {
        use tar::EntryType as T;
        let root = scratch("escape");
        let dest = root.join("dest");
        let escape = archive(&[("../escape", T::Regular, 0o644, 0, b"x")]);
        let err = unpack_archive(&escape[..], &dest).unwrap_err();
        assert!(format!("{err:#}").contains("outside"), "{err:#}");
        assert!(!root.join("escape").exists());
        // Through a symlink planted by an earlier entry.
        let outside = root.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let target = outside.to_str().unwrap().as_bytes().to_vec();
        let through = archive(&[
            ("out", T::Symlink, 0o777, 0, &target),
            ("out/planted", T::Regular, 0o644, 0, b"x"),
        ]);
        assert!(unpack_archive(&through[..], &dest).is_err());
        assert!(!outside.join("planted").exists());
        // A hard link to a host file.
        let host = root.join("host-file");
        std::fs::write(&host, b"secret").unwrap();
        let hard = archive(&[("h", T::Link, 0o644, 0, host.to_str().unwrap().as_bytes())]);
        assert!(unpack_archive(&hard[..], &dest).is_err());
        assert!(!dest.join("h").exists());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("sb-1:/a/b"),
            Location::Remote {
                id: "sb-1".into(),
                path: "/a/b".into()
            }
        );
        for local in ["./a:/b", "/tmp/x:/y", "a:b", ":/x", "-", "file.txt"] {
            assert_eq!(
                parse_location(local),
                Location::Local(local.into()),
                "{local}"
            );
        }
        assert_eq!(basename("/a/b/"), Some("b"));
        assert_eq!(basename("/"), None);
        assert_eq!(mode_string(FileKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(FileKind::File, 0o640), "-rw-r-----");
        assert_eq!(parse_mode(Some("0644")).unwrap(), Some(0o644));
        assert!(parse_mode(Some("9")).is_err());
    }
}
