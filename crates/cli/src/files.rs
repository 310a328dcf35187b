//! `warren cp` and `warren fs ...`: files inside a sandbox.

use std::path::PathBuf;

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
            bail!("{local} is a directory; `warren cp` copies single files for now");
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
    let mut stream = client.read_file(id, path).await?;
    if local == "-" {
        let mut out = tokio::io::stdout();
        return copy_out(&mut stream, &mut out).await;
    }
    let mut target = PathBuf::from(local);
    if tokio::fs::metadata(&target).await.is_ok_and(|m| m.is_dir()) {
        let name = basename(path).with_context(|| format!("no file name in {path}"))?;
        target.push(name);
    }
    let mut file = tokio::fs::File::create(&target)
        .await
        .with_context(|| format!("cannot create {}", target.display()))?;
    let result = copy_out(&mut stream, &mut file).await;
    if result.is_err() {
        // Never leave a truncated copy that looks complete.
        drop(file);
        let _ = tokio::fs::remove_file(&target).await;
    }
    result
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
