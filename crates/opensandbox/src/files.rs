//! execd's file API at `/execd/{sandbox}`: info, list, directories, upload (multipart
//! `metadata` + `file` parts), download (with `Range`), permissions, move, remove, search,
//! replace. Paths are resolved inside the sandbox by Warren's engine; owners and groups are
//! named through the sandbox's own `/etc/passwd` and `/etc/group`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use warren_api::{ErrorCode, ExecRequest, ExecUser, FileKind, SearchRequest};
use warren_engine::ByteStream;

use crate::error::{OsError, OsResult};
use crate::model::{mode_from_os, mode_to_os};
use crate::{read_small, Os};
use warren_engine::files::AccountNames;

/// Largest file `replace` rewrites.
const MAX_REPLACE_BYTES: u64 = 64 * 1024 * 1024;
/// Most entries a search answers with.
const MAX_SEARCH_RESULTS: u32 = 1000;

pub(crate) fn routes() -> Router<Os> {
    Router::new()
        .route("/execd/{sid}/files/info", get(info))
        .route("/execd/{sid}/files", axum::routing::delete(remove_files))
        .route("/execd/{sid}/files/permissions", post(permissions))
        .route("/execd/{sid}/files/mv", post(move_files))
        .route("/execd/{sid}/files/search", get(search))
        .route("/execd/{sid}/files/replace", post(replace))
        .route(
            "/execd/{sid}/files/upload",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/execd/{sid}/files/download", get(download))
        .route("/execd/{sid}/directories/list", get(list))
        .route(
            "/execd/{sid}/directories",
            post(make_dirs).delete(remove_dirs),
        )
}

/// A file as execd describes it.
#[derive(Debug, Clone, Serialize)]
struct FileInfo {
    path: String,
    size: u64,
    modified_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    owner: String,
    group: String,
    mode: u32,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// Names of the sandbox's users and groups (read once per request, when needed).
struct Names(AccountNames);

impl Names {
    async fn load(os: &Os, sid: &str) -> OsResult<Names> {
        Ok(Names(os.engine.account_names(sid).await?))
    }

    fn info(&self, f: &warren_api::FileInfo) -> FileInfo {
        FileInfo {
            path: f.path.clone(),
            size: f.size,
            modified_at: f.modified_at,
            created_at: f.modified_at,
            owner: self.0.user(f.uid),
            group: self.0.group(f.gid),
            mode: mode_to_os(f.mode),
            kind: match f.kind {
                FileKind::File => "file",
                FileKind::Dir => "directory",
                FileKind::Symlink => "symlink",
                FileKind::Other => "other",
            },
        }
    }
}

/// Every `path=` of a query (execd repeats it).
fn paths(q: &Option<String>) -> OsResult<Vec<String>> {
    let paths: Vec<String> = q
        .as_deref()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .filter(|(k, _)| k == "path")
                .map(|(_, v)| v.into_owned())
                .collect()
        })
        .unwrap_or_default();
    if paths.is_empty() {
        return Err(OsError::invalid("give at least one path="));
    }
    Ok(paths)
}

fn param(q: &Option<String>, name: &str) -> Option<String> {
    q.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    })
}

/// `GET /files/info?path=...`: `{path: FileInfo}`.
async fn info(
    State(os): State<Os>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
) -> OsResult<Json<BTreeMap<String, FileInfo>>> {
    let paths = paths(&q)?;
    let names = Names::load(&os, &sid).await?;
    let mut out = BTreeMap::new();
    for p in paths {
        let f = os.engine.stat(&sid, &p).await?;
        out.insert(p, names.info(&f));
    }
    Ok(Json(out))
}

/// `GET /directories/list?path=&depth=`: entries under `path`, `depth` levels down.
async fn list(
    State(os): State<Os>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
) -> OsResult<Json<Vec<FileInfo>>> {
    let path = param(&q, "path").ok_or_else(|| OsError::invalid("path is required"))?;
    let depth =
        match param(&q, "depth") {
            None => 1,
            Some(d) => d.parse::<u32>().ok().filter(|d| *d >= 1).ok_or_else(|| {
                OsError::invalid(format!("depth {d:?} must be a positive integer"))
            })?,
        };
    let names = Names::load(&os, &sid).await?;
    let listed = os
        .engine
        .list_files(&sid, &path, depth.min(warren_engine::files::MAX_LIST_DEPTH))
        .await?;
    Ok(Json(listed.entries.iter().map(|f| names.info(f)).collect()))
}

/// What execd takes for a path's permissions (`mode` in octal-looking decimal).
#[derive(Debug, Default, Deserialize)]
struct Permission {
    #[serde(default)]
    mode: Option<i64>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
}

/// Run a helper command as root; its failure is a 400 with what it said.
async fn run_root(os: &Os, sid: &str, cmd: Vec<String>) -> OsResult<()> {
    let what = cmd.join(" ");
    let stream = os
        .engine
        .exec(
            sid,
            ExecRequest {
                cmd,
                user: Some(ExecUser::Root),
                timeout_secs: Some(60),
                ..Default::default()
            },
        )
        .await?;
    let done = os.engine.collect(stream).await?;
    match done.exit {
        Some(x) if x.exit_code == 0 => Ok(()),
        _ => Err(OsError::invalid(format!(
            "{what}: {}",
            String::from_utf8_lossy(&done.stderr).trim()
        ))),
    }
}

/// `chown OWNER:GROUP` where either is given (names or ids, resolved in the sandbox).
async fn chown(
    os: &Os,
    sid: &str,
    path: &str,
    owner: Option<&str>,
    group: Option<&str>,
) -> OsResult<()> {
    let spec = match (
        owner.filter(|o| !o.is_empty()),
        group.filter(|g| !g.is_empty()),
    ) {
        (None, None) => return Ok(()),
        (Some(o), None) => o.to_string(),
        (None, Some(g)) => format!(":{g}"),
        (Some(o), Some(g)) => format!("{o}:{g}"),
    };
    run_root(
        os,
        sid,
        vec!["chown".into(), "-h".into(), spec, "--".into(), path.into()],
    )
    .await
}

async fn apply(os: &Os, sid: &str, path: &str, p: &Permission) -> OsResult<()> {
    if let Some(m) = p.mode {
        let mode = mode_from_os("mode", m)?;
        run_root(
            os,
            sid,
            vec![
                "chmod".into(),
                format!("{mode:o}"),
                "--".into(),
                path.into(),
            ],
        )
        .await?;
    }
    chown(os, sid, path, p.owner.as_deref(), p.group.as_deref()).await
}

/// `POST /files/permissions {path: {mode, owner, group}}`.
async fn permissions(
    State(os): State<Os>,
    Path(sid): Path<String>,
    req: Result<Json<BTreeMap<String, Permission>>, JsonRejection>,
) -> OsResult<StatusCode> {
    let Json(req) = req?;
    for (path, p) in &req {
        warren_engine::files::validate_path("path", path)?;
        os.engine.stat(&sid, path).await?;
        apply(&os, &sid, path, p).await?;
    }
    Ok(StatusCode::OK)
}

/// `POST /directories {path: {mode, owner, group}}`: made with their parents.
async fn make_dirs(
    State(os): State<Os>,
    Path(sid): Path<String>,
    req: Result<Json<BTreeMap<String, Permission>>, JsonRejection>,
) -> OsResult<StatusCode> {
    let Json(req) = req?;
    for (path, p) in &req {
        let mode = p.mode.map(|m| mode_from_os("mode", m)).transpose()?;
        match os
            .engine
            .mkdir(&sid, path, true, mode, ExecUser::Root)
            .await
        {
            Ok(_) => {}
            Err(e) if e.code() == ErrorCode::FileExists => {}
            Err(e) => return Err(e.into()),
        }
        // mkdir's mode passes through the umask: set it exactly, with the owners.
        apply(&os, &sid, path, p).await?;
    }
    Ok(StatusCode::OK)
}

async fn remove_all(
    os: &Os,
    sid: &str,
    q: &Option<String>,
    recursive: bool,
) -> OsResult<StatusCode> {
    for p in paths(q)? {
        match os.engine.remove(sid, &p, recursive).await {
            Ok(()) => {}
            Err(e) if e.code() == ErrorCode::FileNotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(StatusCode::OK)
}

/// `DELETE /files?path=...`: gone already is fine.
async fn remove_files(
    State(os): State<Os>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
) -> OsResult<StatusCode> {
    remove_all(&os, &sid, &q, false).await
}

/// `DELETE /directories?path=...`: with everything in them.
async fn remove_dirs(
    State(os): State<Os>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
) -> OsResult<StatusCode> {
    remove_all(&os, &sid, &q, true).await
}

#[derive(Debug, Deserialize)]
struct Rename {
    src: String,
    dest: String,
}

/// `POST /files/mv [{src, dest}]`.
async fn move_files(
    State(os): State<Os>,
    Path(sid): Path<String>,
    req: Result<Json<Vec<Rename>>, JsonRejection>,
) -> OsResult<StatusCode> {
    let Json(req) = req?;
    for r in req {
        os.engine
            .move_path(&sid, &r.src, &r.dest, true)
            .await
            .map_err(OsError::from)?;
    }
    Ok(StatusCode::OK)
}

/// `GET /files/search?path=&pattern=`: files under `path` whose path matches the glob
/// (a pattern without `/` matches at any depth).
async fn search(
    State(os): State<Os>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
) -> OsResult<Json<Vec<FileInfo>>> {
    let path = param(&q, "path").ok_or_else(|| OsError::invalid("path is required"))?;
    let pattern = param(&q, "pattern").unwrap_or_else(|| "*".into());
    let glob = if pattern.contains('/') || pattern.starts_with("**") {
        pattern
    } else {
        format!("**/{pattern}")
    };
    let found = os
        .engine
        .search_files(
            &sid,
            SearchRequest {
                path: path.clone(),
                glob: Some(glob),
                max_results: Some(MAX_SEARCH_RESULTS),
                hidden: true,
                ..Default::default()
            },
        )
        .await?;
    let names = Names::load(&os, &sid).await?;
    let mut out = Vec::new();
    for m in found.matches {
        let full = if m.path.starts_with('/') {
            m.path
        } else {
            format!("{}/{}", path.trim_end_matches('/'), m.path)
        };
        match os.engine.stat(&sid, &full).await {
            Ok(f) => out.push(names.info(&f)),
            Err(e) if e.code() == ErrorCode::FileNotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
struct ReplaceItem {
    old: String,
    new: String,
}

#[derive(Debug, Serialize)]
struct Replaced {
    #[serde(rename = "replacedCount")]
    replaced_count: u64,
}

/// `POST /files/replace {path: {old, new}}`: every occurrence of the literal `old`.
async fn replace(
    State(os): State<Os>,
    Path(sid): Path<String>,
    req: Result<Json<BTreeMap<String, ReplaceItem>>, JsonRejection>,
) -> OsResult<Json<BTreeMap<String, Replaced>>> {
    let Json(req) = req?;
    let mut out = BTreeMap::new();
    for (path, r) in req {
        if r.old.is_empty() {
            return Err(OsError::invalid(format!("{path}: old must not be empty")));
        }
        let before = os.engine.stat(&sid, &path).await?;
        let bytes = read_small(&os, &sid, &path, MAX_REPLACE_BYTES)
            .await?
            .ok_or_else(|| {
                OsError::from_code(ErrorCode::FileNotFound, format!("{path} does not exist"))
            })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| OsError::invalid(format!("{path} is not UTF-8 text")))?;
        let count = text.matches(&r.old).count() as u64;
        if count > 0 {
            let new = text.replace(&r.old, &r.new);
            let body: ByteStream =
                Box::pin(futures::stream::once(async move { Ok(Bytes::from(new)) }));
            os.engine
                .write_file(
                    &sid,
                    &path,
                    Some(before.mode & 0o7777),
                    ExecUser::Root,
                    body,
                )
                .await?;
            if before.uid != 0 || before.gid != 0 {
                let ids = format!("{}:{}", before.uid, before.gid);
                chown(&os, &sid, &path, Some(&ids), None).await?;
            }
        }
        out.insert(
            path,
            Replaced {
                replaced_count: count,
            },
        );
    }
    Ok(Json(out))
}

#[derive(Debug, Default, Deserialize)]
struct UploadMeta {
    path: String,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    mode: Option<i64>,
}

/// `POST /files/upload`: multipart pairs of a `metadata` part (`{path, owner, group, mode}`)
/// and the `file` part it describes, each file streamed into the sandbox.
async fn upload(
    State(os): State<Os>,
    Path(sid): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> OsResult<StatusCode> {
    let mut multipart = multipart.map_err(|e| OsError::invalid(e.body_text()))?;
    let mut meta: Option<UploadMeta> = None;
    let mut written = 0usize;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(OsError::invalid(format!("malformed multipart body: {e}"))),
        };
        match field.name() {
            Some("metadata") => {
                let text = field
                    .bytes()
                    .await
                    .map_err(|e| OsError::invalid(format!("metadata part: {e}")))?;
                meta = Some(serde_json::from_slice(&text).map_err(|e| {
                    OsError::invalid(format!(
                        "metadata part is not {{path, owner, group, mode}}: {e}"
                    ))
                })?);
            }
            Some("file") => {
                let m = meta
                    .take()
                    .ok_or_else(|| OsError::invalid("a file part must follow its metadata part"))?;
                let mode = m.mode.map(|x| mode_from_os("mode", x)).transpose()?;
                let stream = futures::stream::unfold(field, |mut f| async move {
                    f.chunk().await.transpose().map(|item| (item, f))
                });
                os.engine
                    .write_from(&sid, &m.path, mode, ExecUser::Root, stream)
                    .await?;
                chown(&os, &sid, &m.path, m.owner.as_deref(), m.group.as_deref()).await?;
                written += 1;
            }
            _ => {}
        }
    }
    if written == 0 {
        return Err(OsError::invalid("no file part in the upload"));
    }
    Ok(StatusCode::OK)
}

/// The byte range `[start, end)` a `Range: bytes=...` header asks of `size` bytes;
/// `Err` when it cannot be satisfied, `Ok(None)` for a header we do not understand
/// (answered with the whole file, as HTTP allows).
fn byte_range(h: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(s), Some(e)) if s <= e => (s, e.saturating_add(1).min(size)),
        (Some(s), None) if b.is_empty() => (s, size),
        (None, Some(n)) if a.is_empty() => (size.saturating_sub(n), size),
        _ => return Ok(None),
    };
    if range.0 >= size || range.0 >= range.1 {
        return Err(());
    }
    Ok(Some(range))
}

/// Bytes `[start, end)` of a stream.
fn slice(
    body: ByteStream,
    start: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::unfold((body, 0u64), move |(mut body, pos)| async move {
        if pos >= end {
            return None;
        }
        let chunk = match body.next().await? {
            Ok(c) => c,
            Err(e) => return Some((Err(std::io::Error::other(e.to_string())), (body, end))),
        };
        let (from, to) = (pos, pos + chunk.len() as u64);
        if to <= start {
            // Wholly before the range: an empty item, filtered out below.
            return Some((Ok(Bytes::new()), (body, to)));
        }
        let lo = usize::try_from(start.saturating_sub(from)).unwrap_or(0);
        let hi = usize::try_from(end.min(to) - from).unwrap_or(chunk.len());
        Some((Ok(chunk.slice(lo..hi)), (body, to)))
    })
    .filter(|r| futures::future::ready(!matches!(r, Ok(b) if b.is_empty())))
}

/// `GET /files/download?path=[&offset=&limit=]`, with `Range: bytes=a-b` → 206.
async fn download(
    State(os): State<Os>,
    Path(sid): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> OsResult<Response> {
    let path = param(&q, "path").ok_or_else(|| OsError::invalid("path is required"))?;
    let (info, body) = os.engine.read_file(&sid, &path).await?;
    let size = info.size;
    let num = |name: &str| -> OsResult<Option<u64>> {
        param(&q, name)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| OsError::invalid(format!("{name} {v:?} is not a number")))
            })
            .transpose()
    };
    let (offset, limit) = (num("offset")?, num("limit")?);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) => match byte_range(h, size) {
            Ok(r) => r.map(|r| (r, true)),
            Err(()) => {
                let mut resp = OsError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "WARREN::RANGE_NOT_SATISFIABLE",
                    format!("{h} is outside the file's {size} bytes"),
                )
                .into_response();
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return Ok(resp);
            }
        },
        None if offset.is_some() || limit.is_some() => {
            let start = offset.unwrap_or(0).min(size);
            let end = limit.map_or(size, |l| start.saturating_add(l).min(size));
            Some(((start, end), false))
        }
        None => None,
    };
    let name = path.rsplit('/').next().unwrap_or("file").replace('"', "");
    let mut resp = match range {
        Some(((start, end), partial)) => {
            let mut resp = Body::from_stream(slice(body, start, end)).into_response();
            if partial {
                *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
            resp
        }
        None => {
            let body = body.map(|r| r.map_err(|e| std::io::Error::other(e.to_string())));
            let mut resp = Body::from_stream(body).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            resp
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(byte_range("bytes=0-4", 10), Ok(Some((0, 5))));
        assert_eq!(byte_range("bytes=5-", 10), Ok(Some((5, 10))));
        assert_eq!(byte_range("bytes=-3", 10), Ok(Some((7, 10))));
        assert_eq!(byte_range("bytes=8-100", 10), Ok(Some((8, 10))));
        assert_eq!(byte_range("bytes=10-", 10), Err(()));
        assert_eq!(byte_range("items=0-1", 10), Ok(None));
    }

    #[tokio::test]
    async fn slices_cross_chunks() {
        let chunks: Vec<Result<Bytes, warren_engine::RuntimeError>> = vec![
            Ok(Bytes::from("abc")),
            Ok(Bytes::from("defg")),
            Ok(Bytes::from("hij")),
        ];
        let body: ByteStream = Box::pin(futures::stream::iter(chunks));
        let got: Vec<u8> = slice(body, 2, 8)
            .map(|r| r.unwrap())
            .collect::<Vec<_>>()
            .await
            .concat();
        assert_eq!(got, b"cdefgh");
    }
}
