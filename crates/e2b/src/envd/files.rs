//! envd's plain-HTTP file API: `GET /files` (download) and `POST /files` (upload as
//! `application/octet-stream` or `multipart/form-data`), gzip both ways, `X-Metadata-*`
//! headers kept as the file's metadata, and signed URLs (`signature`,
//! `signature_expiration`) that arrive without sandbox headers. Errors are E2B's
//! `{"code": <status>, "message": ...}`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;
use warren_api::FileInfo;

use super::connect::{Code, RpcError};
use super::{check_token, header, running, User};
use crate::{E2b, E2bError};

/// Header prefix of file metadata on uploads.
const METADATA_PREFIX: &str = "x-metadata-";

pub(super) fn routes() -> Router<E2b> {
    Router::new()
        .route("/files", get(download).post(upload))
        .layer(
            tower::ServiceBuilder::new()
                .layer(
                    RequestDecompressionLayer::new()
                        .gzip(true)
                        .no_br()
                        .no_deflate()
                        .no_zstd(),
                )
                .layer(
                    CompressionLayer::new()
                        .gzip(true)
                        .no_br()
                        .no_deflate()
                        .no_zstd(),
                ),
        )
}

/// An error in E2B's HTTP shape.
pub(super) fn http_error(code: u16, message: impl Into<String>) -> E2bError {
    E2bError::new(code, message)
}

fn rpc_to_http(e: RpcError) -> E2bError {
    let code = match e.code {
        Code::Unauthenticated => 401,
        Code::Unavailable => 502,
        Code::NotFound => 404,
        Code::ResourceExhausted => 429,
        _ => 400,
    };
    http_error(code, e.message)
}

fn engine_to_http(e: warren_engine::EngineError) -> E2bError {
    use warren_api::ErrorCode as C;
    let code = match e.code() {
        C::NoSpace | C::DiskQuotaExceeded => 507,
        C::SandboxNotFound => 502,
        C::IsADirectory | C::NotADirectory | C::NotSupported => 400,
        c => c.http_status(),
    };
    http_error(code, e.to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FilesQuery {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    signature_expiration: Option<String>,
}

/// E2B's URL signature: `v1_` + unpadded base64 of
/// `sha256("{path}:{operation}:{user}:{token}[:{expiration}]")`.
pub(crate) fn signature(
    path: &str,
    operation: &str,
    user: &str,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let raw = match expiration {
        Some(exp) => format!("{path}:{operation}:{user}:{token}:{exp}"),
        None => format!("{path}:{operation}:{user}:{token}"),
    };
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// The sandbox and user of a `/files` request: by its headers and access token, or by a
/// signature over the path, operation, user and the sandbox's token (a signed URL names
/// no sandbox, so the signature picks it among the live ones).
async fn target(
    s: &E2b,
    headers: &HeaderMap,
    q: &FilesQuery,
    operation: &str,
) -> Result<(String, User), E2bError> {
    let username = q.username.clone().unwrap_or_default();
    let user = User::parse(&username).map_err(rpc_to_http)?;
    let named = header(headers, "e2b-sandbox-id");
    let by_signature = header(headers, "x-access-token").is_none() || named.is_none();
    let sid = match (&q.signature, &named) {
        (Some(sig), _) if by_signature => {
            let expiration =
                match q.signature_expiration.as_deref() {
                    None | Some("") => None,
                    Some(v) => Some(v.trim().parse::<i64>().map_err(|_| {
                        http_error(400, "signature_expiration must be Unix seconds")
                    })?),
                };
            if expiration.is_some_and(|exp| exp < chrono::Utc::now().timestamp()) {
                return Err(http_error(401, "signature is already expired"));
            }
            let path = q.path.clone().unwrap_or_default();
            let candidates: Vec<String> = match &named {
                Some(id) => vec![id.clone()],
                None => s
                    .engine
                    .list(&BTreeMap::new())
                    .await
                    .map_err(engine_to_http)?
                    .into_iter()
                    .map(|sb| sb.id)
                    .collect(),
            };
            candidates
                .into_iter()
                .find(|id| {
                    crate::same(
                        sig,
                        &signature(&path, operation, &username, &s.token(id), expiration),
                    )
                })
                .ok_or_else(|| http_error(401, "invalid signature"))?
        }
        (_, Some(id)) => {
            check_token(s, id, headers).map_err(rpc_to_http)?;
            id.clone()
        }
        (_, None) => {
            return Err(http_error(
                400,
                "the E2b-Sandbox-Id header (or a signed URL) is required",
            ))
        }
    };
    running(s, &sid).await.map_err(rpc_to_http)?;
    Ok((sid, user))
}

fn file_path(q: &FilesQuery, user: User) -> Result<String, E2bError> {
    match q.path.as_deref() {
        Some(p) if !p.trim().is_empty() => user.resolve(p).map_err(rpc_to_http),
        _ => Err(http_error(400, "the path query parameter is required")),
    }
}

/// `GET /files?path=`: the file's bytes (gzip when the client accepts it).
async fn download(
    State(s): State<E2b>,
    Query(q): Query<FilesQuery>,
    headers: HeaderMap,
) -> Result<Response, E2bError> {
    let (sid, user) = target(&s, &headers, &q, "read").await?;
    let path = file_path(&q, user)?;
    let (info, body) = s
        .engine
        .read_file(&sid, &path)
        .await
        .map_err(engine_to_http)?;
    let mut resp = Response::new(Body::from_stream(body.map_err(std::io::Error::other)));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    let name = super::filesystem::base_name(&info.path).replace(['"', '\\'], "_");
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// File metadata from `X-Metadata-*` headers (names arrive lowercased).
fn metadata_headers(headers: &HeaderMap) -> Result<BTreeMap<String, String>, E2bError> {
    let mut out = BTreeMap::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix(METADATA_PREFIX) {
            let v = value
                .to_str()
                .map_err(|_| http_error(400, format!("{name} is not valid text")))?;
            out.insert(key.to_string(), v.to_string());
        }
    }
    // Checked before anything is written, so a bad key changes nothing.
    warren_engine::files::validate_file_metadata(out).map_err(engine_to_http)
}

fn written(f: &FileInfo) -> serde_json::Value {
    let mut v =
        json!({"path": f.path, "name": super::filesystem::base_name(&f.path), "type": "file"});
    if !f.metadata.is_empty() {
        v["metadata"] = json!(f.metadata);
    }
    v
}

/// `POST /files?path=`: the body is the file (`application/octet-stream`, maybe gzip), or
/// `multipart/form-data` with `file` parts named by their filename (or `?path=` for one).
/// Parents are created; the file belongs to the user. Answers `[{path, name, type}]`.
async fn upload(
    State(s): State<E2b>,
    Query(q): Query<FilesQuery>,
    req: Request,
) -> Result<Response, E2bError> {
    let headers = req.headers().clone();
    let (sid, user) = target(&s, &headers, &q, "write").await?;
    let metadata = metadata_headers(&headers)?;
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let mut out = Vec::new();
    if multipart {
        let mut form = axum::extract::Multipart::from_request(req, &s)
            .await
            .map_err(|e| http_error(400, e.body_text()))?;
        let single = q.path.as_deref().filter(|p| !p.trim().is_empty());
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(http_error(400, e.body_text())),
            };
            let dest = match (single, field.file_name()) {
                (Some(p), _) if out.is_empty() => p.to_string(),
                (_, Some(name)) if !name.is_empty() => name.to_string(),
                _ => {
                    let msg = "a multipart file part needs a filename (its path)";
                    return Err(http_error(400, msg));
                }
            };
            let path = user.resolve(&dest).map_err(rpc_to_http)?;
            let f = store(&s, &sid, &path, user, field, &metadata).await?;
            out.push(written(&f));
        }
        if out.is_empty() {
            return Err(http_error(400, "the multipart body has no file part"));
        }
    } else {
        let path = file_path(&q, user)?;
        let body = req.into_body().into_data_stream();
        let f = store(&s, &sid, &path, user, body, &metadata).await?;
        out.push(written(&f));
    }
    Ok((StatusCode::OK, axum::Json(out)).into_response())
}

/// Write one file from a stream, then its metadata.
async fn store<S, E>(
    s: &E2b,
    sid: &str,
    path: &str,
    user: User,
    body: S,
    metadata: &BTreeMap<String, String>,
) -> Result<FileInfo, E2bError>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Send,
    E: std::fmt::Display,
{
    if !metadata.is_empty() {
        // Refused before anything is written where the runtime has no file metadata.
        s.engine.check_file_metadata(sid).map_err(engine_to_http)?;
    }
    let f = s
        .engine
        .write_from(sid, path, None, user.0, body)
        .await
        .map_err(engine_to_http)?;
    if metadata.is_empty() {
        return Ok(f);
    }
    s.engine
        .set_file_metadata(sid, &f.path, metadata.clone())
        .await
        .map_err(engine_to_http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_sdk() {
        // The SDK: "v1_" + base64(sha256("/a.txt:read::tok")) without padding.
        let sig = signature("/a.txt", "read", "", "tok", None);
        let want = base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(Sha256::digest(b"/a.txt:read::tok"));
        assert_eq!(sig, format!("v1_{want}"));
        assert!(!sig.ends_with('='));
        assert_ne!(sig, signature("/a.txt", "read", "", "tok", Some(5)));
        assert_ne!(sig, signature("/a.txt", "write", "", "tok", None));
    }

    #[test]
    fn metadata_comes_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-metadata-owner", "evals".parse().unwrap());
        h.insert("content-type", "text/plain".parse().unwrap());
        let m = metadata_headers(&h).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["owner"], "evals");
    }
}
