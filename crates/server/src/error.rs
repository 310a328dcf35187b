//! The one error shape of the API and the extractors that never leak axum's plain-text
//! rejections.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use warren_api::{ErrorBody, ErrorCode, ErrorDetail};
use warren_engine::EngineError;

/// An error response: `{"error":{"code":"...","message":"..."}}` with its status.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

/// The HTTP status of each error code ([`ErrorCode::http_status`]).
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl ApiError {
    /// An error with `code`'s status ([`status_of`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status: status_of(code),
            code,
            message: message.into(),
        }
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_string(),
                message: self.message.clone(),
            },
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        let e = ApiError::new(err.code(), err.to_string());
        if e.status.is_server_error() {
            tracing::error!(code = e.code.as_str(), "request failed: {err}");
        }
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// A JSON object body whose rejections are API errors: 400 `invalid_request` for anything
/// malformed (syntax, types, unknown fields, not an object, missing or wrong content type),
/// 413 `payload_too_large` for a body over the limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::invalid_request(
                "expected a request body with `Content-Type: application/json`",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        parse_object(&bytes).map(ApiJson)
    }
}

/// Like [`ApiJson`], but an absent or empty (whitespace-only) body is `T::default()`, with
/// or without a content type. A non-empty body follows [`ApiJson`]'s rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned + Default,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let json = json_content_type(&parts.headers);
        let req = Request::from_parts(parts, body);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(bytes_rejection)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(ApiError::invalid_request(
                "expected a request body with `Content-Type: application/json` (or no body)",
            ));
        }
        parse_object(&bytes).map(OptionalJson)
    }
}

/// A JSON object (not an array or a scalar) as `T`.
fn parse_object<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also accept a struct written as a JSON array; the API takes objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "the request body must be a JSON object",
        ));
    }
    match Json::<T>::from_bytes(bytes) {
        Ok(Json(value)) => Ok(value),
        // body_text() is "Failed to parse/deserialize ...: <serde message>".
        Err(rejection) => Err(ApiError::invalid_request(rejection.body_text())),
    }
}

fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = mime.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "request body is larger than the server accepts",
        )
    } else {
        ApiError::invalid_request(rejection.body_text())
    }
}

/// The `{id}` path segment. An id that cannot even be extracted is simply not found.
#[derive(Debug, Clone)]
pub struct SandboxId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SandboxId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(SandboxId(id)),
            Err(rejection) => Err(path_rejection(rejection)),
        }
    }
}

fn path_rejection(rejection: PathRejection) -> ApiError {
    ApiError::new(
        ErrorCode::SandboxNotFound,
        format!("no such sandbox ({})", rejection.body_text()),
    )
}

/// Query parameters whose rejections are API errors: 400 `invalid_request` for a missing,
/// malformed or unknown parameter.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    // body_text() is "Failed to deserialize query string: <serde message>".
    ApiError::invalid_request(rejection.body_text())
}

/// The `{id}` path segment of `/v1/snapshots/{id}`; an id that cannot be extracted is not
/// found.
#[derive(Debug, Clone)]
pub struct SnapshotId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SnapshotId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(id)) => Ok(SnapshotId(id)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::SnapshotNotFound,
                format!("no such snapshot ({})", rejection.body_text()),
            )),
        }
    }
}

#[cfg(test)]
mod code_tests {
    use super::*;

    #[test]
    fn every_code_is_an_error_status() {
        for &code in ErrorCode::ALL {
            let s = status_of(code);
            assert!(s.is_client_error() || s.is_server_error(), "{code}: {s}");
            assert_eq!(ApiError::new(code, "m").body().error.code, code.as_str());
        }
    }
}
