//! `/v1/sandboxes/{id}/files`: raw file content in and out (streamed, never buffered whole),
//! and JSON metadata operations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use warren_api::{
    ErrorBody, ExecUser, FileInfo, FileList, FileMetadataRequest, MkdirRequest, MoveRequest,
    UploadedFiles,
};
use warren_engine::{ByteStream, Engine, EngineError};
use warren_runtime::RuntimeError;

use crate::error::{ApiError, ApiJson, ApiQuery, SandboxId};

/// Header of `GET .../files` with the file's permission bits, octal (`0644`).
const FILE_SIZE_HEADER: &str = "x-warren-file-size";
const FILE_MODE_HEADER: &str = "x-warren-file-mode";

/// Raw file content (`application/octet-stream`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct FileContent(#[allow(dead_code)] Vec<u8>);

/// `?path=` of read, stat.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PathQuery {
    /// Absolute path inside the sandbox.
    path: String,
}

/// Query of `PUT .../files`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WriteQuery {
    /// Absolute path inside the sandbox; missing parent directories are created (0755).
    path: String,
    /// Permission bits as an octal string, e.g. `0644` or `755` (default `0644`).
    mode: Option<String>,
    /// Owner of the file: `root` (0:0, default) or `user` (1000:1000).
    user: Option<ExecUser>,
}

/// Query of `GET .../files/list`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Absolute path of a directory inside the sandbox.
    path: String,
    /// How many levels deep to list, 1 (direct children, default) to 10.
    depth: Option<u32>,
}

/// Query of `DELETE .../files`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RemoveQuery {
    /// Absolute path inside the sandbox.
    path: String,
    /// Remove a directory with everything in it (default false).
    recursive: Option<bool>,
}

fn parse_mode(mode: Option<&str>) -> Result<Option<u32>, ApiError> {
    let Some(m) = mode else { return Ok(None) };
    match u32::from_str_radix(m, 8) {
        Ok(v) if v <= 0o7777 && !m.is_empty() => Ok(Some(v)),
        _ => Err(ApiError::invalid_request(format!(
            "mode must be octal permission bits between 0 and 7777, got {m:?}"
        ))),
    }
}

/// Download a regular file.
///
/// The body is the file's exact bytes, streamed with chunked transfer encoding (no
/// `Content-Length`: a file may grow while it is read, and `/proc` files report size 0);
/// `X-Warren-File-Size` is its size when the read started and `X-Warren-File-Mode` its
/// permission bits in octal (`0644`). If reading fails midway the connection is cut before
/// the final chunk, so a short body is never mistaken for the whole file.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "The file's content", body = FileContent, content_type = "application/octet-stream",
            headers(("X-Warren-File-Mode" = String, description = "Permission bits, octal"),
                    ("X-Warren-File-Size" = u64, description = "Size when the read started"))),
        (status = 400, description = "`invalid_request`, `is_a_directory`, `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the sandbox is not running", body = ErrorBody),
        (status = 500, description = "`io_error` or `runtime_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
    ))]
pub(crate) async fn read_file(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Response, ApiError> {
    let (info, content) = engine.read_file(&id, &q.path).await?;
    let body = Body::from_stream(content.map(|chunk| chunk.map_err(std::io::Error::other)));
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(FILE_SIZE_HEADER, HeaderValue::from(info.size));
    if let Ok(v) = HeaderValue::from_str(&format!("{:04o}", info.mode)) {
        headers.insert(FILE_MODE_HEADER, v);
    }
    Ok(resp)
}

/// Upload a regular file (create or replace).
///
/// The request body is the file's content, any size, streamed to the sandbox (no body limit
/// applies). The write is atomic: the file appears, or replaces the old one, only once the
/// whole body has arrived; an interrupted upload changes nothing. The file is owned by root
/// (0:0) unless `user=user` (1000:1000), with mode `mode` (default 0644); missing parent
/// directories are created (0755, same owner).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), WriteQuery),
    request_body(content = FileContent, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The written file", body = FileInfo),
        (status = 400, description = "`invalid_request` (also: the upload was interrupted), `is_a_directory`, `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the sandbox is not running", body = ErrorBody),
        (status = 500, description = "`io_error` or `runtime_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 507, description = "`disk_quota_exceeded` (the sandbox's `resources.disk_mib` is used up) or `no_space` (its file system is full)", body = ErrorBody),
    ))]
pub(crate) async fn write_file(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<WriteQuery>,
    body: Body,
) -> Result<Json<FileInfo>, ApiError> {
    let mode = parse_mode(q.mode.as_deref())?;
    // A body error (the client went away, a malformed chunk) ends the stream with an
    // error, so the runtime aborts the write; the flag tells it apart from a runtime error.
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let data: ByteStream = Box::pin(body.into_data_stream().map(move |chunk| {
        chunk.map_err(|e| {
            flag.store(true, Ordering::SeqCst);
            RuntimeError::Io(std::io::Error::other(format!("upload interrupted: {e}")))
        })
    }));
    match engine
        .write_file(&id, &q.path, mode, q.user.unwrap_or_default(), data)
        .await
    {
        Ok(info) => Ok(Json(info)),
        Err(EngineError::Runtime(e)) if broken.load(Ordering::SeqCst) => {
            Err(ApiError::invalid_request(format!(
                "the upload was interrupted; nothing was written ({e})"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Query of `GET .../files/archive`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ArchiveQuery {
    /// Absolute path of a directory inside the sandbox.
    path: String,
}

/// A tar archive (`application/x-tar`).
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct TarArchive(#[allow(dead_code)] Vec<u8>);

/// Download a directory tree as a tar archive.
///
/// The archive is built inside the sandbox and streamed (chunked transfer encoding): entry
/// names are relative to `path` (which itself is not an entry), modes, owners and mtimes are
/// kept, symlinks are stored as symlinks and never followed; sockets, FIFOs and devices are
/// left out. If reading fails midway the connection is cut before the final chunk, so a
/// truncated archive is never mistaken for a whole one.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/archive", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ArchiveQuery),
    responses(
        (status = 200, description = "The tree as a tar archive", body = TarArchive, content_type = "application/x-tar"),
        (status = 400, description = "`invalid_request`, `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the sandbox is not running", body = ErrorBody),
        (status = 500, description = "`io_error` or `runtime_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
    ))]
pub(crate) async fn read_archive(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<ArchiveQuery>,
) -> Result<Response, ApiError> {
    let (_, content) = engine.read_archive(&id, &q.path).await?;
    let body = Body::from_stream(content.map(|chunk| chunk.map_err(std::io::Error::other)));
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(resp)
}

/// Query of `POST .../files/upload`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct UploadQuery {
    /// Absolute path of the directory the files are written under.
    dir: String,
    /// Owner of the files (and created directories): `root` (default) or `user`.
    user: Option<ExecUser>,
}

/// A `multipart/form-data` body: one part per file, its filename the path relative to `dir`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UploadForm {
    /// One or more files; each part's filename is a relative path like `src/main.rs`.
    #[schema(value_type = Vec<String>, format = Binary)]
    file: Vec<Vec<u8>>,
}

/// The sandbox path for an upload part named `name` below `dir`: a relative path whose
/// components are not `..` (empty and `.` components are dropped).
pub(crate) fn upload_target(dir: &str, name: &str) -> Result<String, ApiError> {
    let bad = |why: &str| {
        ApiError::invalid_request(format!("part filename {name:?} is not allowed: {why}"))
    };
    if name.starts_with('/') {
        return Err(bad("it must be a relative path"));
    }
    if name.contains('\0') || name.contains('\\') {
        return Err(bad("it must not contain NUL bytes or backslashes"));
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad("it must not contain `..`")),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(bad("it names no file"));
    }
    Ok(format!("{}/{}", dir.trim_end_matches('/'), parts.join("/")))
}

/// Upload several files at once (`multipart/form-data`).
///
/// Each part with a filename is one file: the filename is its path relative to `dir`
/// (`a.txt`, `src/lib.rs`; absolute names and `..` components are refused with 400).
/// Parts are streamed one after the other, each written atomically like `PUT .../files`
/// (mode 0644, missing parents created); no body limit applies. Parts without a filename
/// are ignored. A failure stops the upload: the files written before it stay.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/upload", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), UploadQuery),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The written files, in order", body = UploadedFiles),
        (status = 400, description = "`invalid_request` (a bad part name, a malformed or interrupted body), `is_a_directory`, `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the sandbox is not running", body = ErrorBody),
        (status = 500, description = "`io_error` or `runtime_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 507, description = "`disk_quota_exceeded` (the sandbox's `resources.disk_mib` is used up) or `no_space` (its file system is full)", body = ErrorBody),
    ))]
pub(crate) async fn upload(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<UploadQuery>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<UploadedFiles>, ApiError> {
    let mut multipart = multipart.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    warren_engine::files::validate_path("dir", &q.dir)?;
    let user = q.user.unwrap_or_default();
    let mut files = Vec::new();
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(ApiError::invalid_request(format!(
                    "malformed multipart body: {e}"
                )))
            }
        };
        let Some(name) = field.file_name().map(str::to_owned) else {
            continue;
        };
        let path = upload_target(&q.dir, &name)?;
        let stream = futures::stream::unfold(field, |mut f| async move {
            f.chunk().await.transpose().map(|item| (item, f))
        });
        files.push(engine.write_from(&id, &path, None, user, stream).await?);
    }
    Ok(Json(UploadedFiles { files }))
}

/// Metadata of a file, directory or symlink (symlinks are not followed).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/stat", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), PathQuery),
    responses(
        (status = 200, description = "The metadata", body = FileInfo),
        (status = 400, description = "`invalid_request`, `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
    ))]
pub(crate) async fn stat(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<PathQuery>,
) -> Result<Json<FileInfo>, ApiError> {
    Ok(Json(engine.stat(&id, &q.path).await?))
}

/// List a directory, `depth` levels deep, sorted by path; at most 10 000 entries (then
/// `truncated` is true).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/list", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), ListQuery),
    responses(
        (status = 200, description = "The entries below `path`", body = FileList),
        (status = 400, description = "`invalid_request` (e.g. depth out of range), `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<FileList>, ApiError> {
    Ok(Json(
        engine
            .list_files(&id, &q.path, q.depth.unwrap_or(1))
            .await?,
    ))
}

/// Create a directory and return its metadata.
///
/// With `parents` (the default) missing parents are created too and an existing directory
/// is not an error (like `mkdir -p`); without it, an existing path is `file_exists`. New
/// directories get `mode` (default 0755) and belong to root, or to `user` (1000:1000).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/mkdir", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MkdirRequest,
    responses(
        (status = 200, description = "The directory", body = FileInfo),
        (status = 400, description = "`invalid_request`, `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`, or `file_not_found` (a parent, without `parents`)", body = ErrorBody),
        (status = 409, description = "`file_exists` or `invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
        (status = 507, description = "`disk_quota_exceeded` (the sandbox's `resources.disk_mib` is used up) or `no_space` (its file system is full)", body = ErrorBody),
    ))]
pub(crate) async fn mkdir(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<MkdirRequest>,
) -> Result<Json<FileInfo>, ApiError> {
    let info = engine
        .mkdir(
            &id,
            &req.path,
            req.parents.unwrap_or(true),
            req.mode,
            req.user.unwrap_or_default(),
        )
        .await?;
    Ok(Json(info))
}

/// Set or remove metadata keys of a file or directory; answers its metadata.
///
/// File metadata is small string key/value pairs kept with the file (in its user extended
/// attributes `user.warren.<key>`): it follows renames and snapshots, vanishes with the
/// file, and is dropped when an upload replaces the file. Stat and list answers show it as
/// `metadata`. Nothing changes when any key or value is refused.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/metadata", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = FileMetadataRequest,
    responses(
        (status = 200, description = "The file, with its metadata", body = FileInfo),
        (status = 400, description = "`invalid_request` (a bad key or value, a symlink, `/`) or `invalid_path`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported` (the sandbox's file system keeps no extended attributes)", body = ErrorBody),
        (status = 507, description = "`no_space` (also: the file system's per-file attribute space is full)", body = ErrorBody),
    ))]
pub(crate) async fn set_metadata(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<FileMetadataRequest>,
) -> Result<Json<FileInfo>, ApiError> {
    Ok(Json(
        engine
            .set_file_metadata(&id, &req.path, req.metadata)
            .await?,
    ))
}

/// Remove a file, a symlink, an empty directory, or with `recursive=true` a directory tree.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/files", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), RemoveQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "`invalid_request` (e.g. `/`), `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`directory_not_empty` or `invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
    ))]
pub(crate) async fn remove(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<RemoveQuery>,
) -> Result<StatusCode, ApiError> {
    engine
        .remove(&id, &q.path, q.recursive.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Move or rename a file or directory (`rename(2)`); an existing target is `file_exists`
/// unless `overwrite`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/move", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = MoveRequest,
    responses(
        (status = 204, description = "Moved"),
        (status = 400, description = "`invalid_request`, `not_a_directory`, `is_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`file_exists`, `directory_not_empty` or `invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
        (status = 507, description = "`disk_quota_exceeded` (the sandbox's `resources.disk_mib` is used up) or `no_space` (its file system is full)", body = ErrorBody),
    ))]
pub(crate) async fn move_path(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<StatusCode, ApiError> {
    engine
        .move_path(&id, &req.from, &req.to, req.overwrite.unwrap_or(false))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
