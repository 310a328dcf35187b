//! E2B's error shape: `{"code": <int>, "message": "..."}`, with `Retry-After` on 429/503.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use warren_api::ErrorCode;
use warren_engine::EngineError;

#[derive(Debug, Clone, Serialize)]
pub struct E2bError {
    pub code: u16,
    pub message: String,
}

impl E2bError {
    pub fn new(code: u16, message: impl Into<String>) -> E2bError {
        E2bError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> E2bError {
        E2bError::new(400, message)
    }

    pub fn not_found(message: impl Into<String>) -> E2bError {
        E2bError::new(404, message)
    }
}

impl From<EngineError> for E2bError {
    fn from(e: EngineError) -> E2bError {
        let status = match e.code() {
            // E2B reports no 501/507 on its control plane: a feature Warren lacks is a
            // bad request there.
            ErrorCode::NotSupported => 400,
            c => c.http_status(),
        };
        E2bError::new(status, e.to_string())
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "e2b request failed");
        }
        let mut resp = (status, Json(&self)).into_response();
        if matches!(self.code, 429 | 503) {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        resp
    }
}

pub type E2bResult<T> = Result<T, E2bError>;
