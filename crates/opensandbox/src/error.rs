//! OpenSandbox's error shape, `{"code": "...", "message": "..."}`, and the mapping of
//! Warren's error codes onto it.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use warren_api::ErrorCode;
use warren_engine::EngineError;

/// An error answer: its status and `{code, message}`.
#[derive(Debug, Clone)]
pub struct OsError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

impl OsError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> OsError {
        OsError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    /// Warren's `code` with its native status, spelled `WARREN::SANDBOX_NOT_FOUND`.
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> OsError {
        OsError {
            status: StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: format!("WARREN::{}", code.as_str().to_ascii_uppercase()),
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> OsError {
        OsError::from_code(ErrorCode::InvalidRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> OsError {
        OsError::from_code(ErrorCode::NotFound, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> OsError {
        OsError::from_code(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> OsError {
        OsError::from_code(ErrorCode::PermissionDenied, message)
    }

    pub fn unsupported(message: impl Into<String>) -> OsError {
        OsError::from_code(ErrorCode::NotSupported, message)
    }
}

impl From<EngineError> for OsError {
    fn from(e: EngineError) -> OsError {
        OsError::from_code(e.code(), e.to_string())
    }
}

impl From<JsonRejection> for OsError {
    fn from(e: JsonRejection) -> OsError {
        OsError::invalid(format!("malformed JSON body: {}", e.body_text()))
    }
}

impl From<QueryRejection> for OsError {
    fn from(e: QueryRejection) -> OsError {
        OsError::invalid(format!("malformed query: {}", e.body_text()))
    }
}

impl IntoResponse for OsError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = %self.code, message = %self.message, "opensandbox request failed");
        }
        let body = Body {
            code: &self.code,
            message: &self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl std::fmt::Display for OsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

pub type OsResult<T> = Result<T, OsError>;

/// A JSON body that may be absent (the SDK sends none, or an empty one, where every field
/// is optional): `T::default()` then.
pub fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> OsResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| OsError::invalid(format!("malformed JSON body: {e}")))
}
