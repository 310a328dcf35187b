//! The Connect protocol (v1) with the JSON codec, as envd speaks it: unary calls are a
//! plain JSON body answered with plain JSON (errors: an HTTP status and
//! `{"code": "not_found", "message": ...}`); server streams are enveloped, both ways, as
//! `[flags u8][length u32 BE][json]` and end with an end-of-stream envelope (flags `0x02`)
//! holding `{}` or `{"error": {...}}`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use warren_api::ErrorCode;
use warren_engine::EngineError;

/// Largest request message accepted (requests are small: paths, argv, stdin chunks).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Keepalive interval when the client names none (`Keepalive-Ping-Interval`, seconds).
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(50);
/// Envelope flag of the end-of-stream message.
const END_STREAM: u8 = 0x02;
/// Envelope flag of a compressed message.
const COMPRESSED: u8 = 0x01;

/// Connect's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error (Connect's table).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::REQUEST_TIMEOUT,
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An RPC's failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

pub type RpcResult<T> = Result<T, RpcError>;

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> RpcError {
        RpcError::new(Code::InvalidArgument, message)
    }

    /// What the SDK reads as "the sandbox is gone" (its message names it "not found").
    pub fn sandbox_gone(id: &str) -> RpcError {
        RpcError::new(Code::Unavailable, format!("The sandbox {id} was not found"))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

impl From<EngineError> for RpcError {
    fn from(e: EngineError) -> RpcError {
        let code = match e.code() {
            ErrorCode::FileExists | ErrorCode::TagInUse => Code::AlreadyExists,
            ErrorCode::InvalidState
            | ErrorCode::InvalidTransition
            | ErrorCode::SandboxPaused
            | ErrorCode::SandboxStopped
            | ErrorCode::StdinClosed
            | ErrorCode::NotAPty
            | ErrorCode::DirectoryNotEmpty
            | ErrorCode::NotADirectory
            | ErrorCode::IsADirectory => Code::FailedPrecondition,
            ErrorCode::NoSpace | ErrorCode::DiskQuotaExceeded | ErrorCode::PayloadTooLarge => {
                Code::ResourceExhausted
            }
            ErrorCode::SandboxNotFound => Code::Unavailable,
            ErrorCode::DeadlineExceeded => Code::DeadlineExceeded,
            c => match c.http_status() {
                400 | 422 => Code::InvalidArgument,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::NotFound,
                409 => Code::FailedPrecondition,
                429 | 507 => Code::ResourceExhausted,
                501 => Code::Unimplemented,
                503 => Code::Unavailable,
                504 => Code::DeadlineExceeded,
                _ => Code::Internal,
            },
        };
        RpcError::new(code, e.to_string())
    }
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        if self.code == Code::Internal {
            tracing::warn!(message = %self.message, "envd call failed");
        }
        let mut resp = (self.code.http_status(), self.json().to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// How a call arrived: one JSON body, or one enveloped message of a server stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    Stream,
}

/// The call's kind from its `Content-Type`; another codec is refused.
pub fn kind(headers: &HeaderMap) -> RpcResult<Kind> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        "application/json" => Ok(Kind::Unary),
        "application/connect+json" => Ok(Kind::Stream),
        other => Err(RpcError::new(
            Code::Unimplemented,
            format!("content type {other:?} is not served: use the JSON codec"),
        )),
    }
}

/// The request message: the body (unary) or its one envelope (stream).
pub fn decode<T: DeserializeOwned>(kind: Kind, headers: &HeaderMap, body: &[u8]) -> RpcResult<T> {
    let encoding = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "identity")
    };
    let json: &[u8] = match kind {
        Kind::Unary => {
            if let Some(enc) = encoding("content-encoding") {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    format!("content encoding {enc:?} is not served"),
                ));
            }
            body
        }
        Kind::Stream => {
            if body.len() < 5 {
                return Err(RpcError::invalid("the stream request has no envelope"));
            }
            let flags = body[0];
            let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
            if flags & COMPRESSED != 0 {
                return Err(RpcError::new(
                    Code::Unimplemented,
                    "compressed messages are not served (connect-content-encoding: identity)",
                ));
            }
            body.get(5..5 + len)
                .ok_or_else(|| RpcError::invalid("the request envelope is truncated"))?
        }
    };
    let json = if json.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        json
    };
    serde_json::from_slice(json)
        .map_err(|e| RpcError::invalid(format!("the request message is not valid: {e}")))
}

/// Reads the enveloped messages of a client stream as they arrive.
pub struct Envelopes {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    done: bool,
}

impl Envelopes {
    pub fn new(body: Body) -> Envelopes {
        Envelopes {
            body: body.into_data_stream(),
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next message, `None` at the end of the stream (or at its end-stream envelope).
    pub async fn next<T: DeserializeOwned>(&mut self) -> RpcResult<Option<T>> {
        use futures::StreamExt;
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Err(RpcError::new(
                        Code::ResourceExhausted,
                        format!("a message is larger than {MAX_MESSAGE} bytes"),
                    ));
                }
                if self.buf.len() >= 5 + len {
                    let msg: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
                    if flags & COMPRESSED != 0 {
                        return Err(RpcError::new(
                            Code::Unimplemented,
                            "compressed messages are not served",
                        ));
                    }
                    if flags & END_STREAM != 0 {
                        self.done = true;
                        return Ok(None);
                    }
                    return serde_json::from_slice(&msg).map(Some).map_err(|e| {
                        RpcError::invalid(format!("a request message is not valid: {e}"))
                    });
                }
            }
            if self.done {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(RpcError::invalid(
                        "the request stream ended inside a message",
                    ))
                };
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => {
                    return Err(RpcError::new(
                        Code::Canceled,
                        format!("the request stream broke: {e}"),
                    ))
                }
                None => self.done = true,
            }
        }
    }
}

/// A client stream's answer: its one message, then the end of the stream.
pub fn stream_reply<T: Serialize>(result: RpcResult<T>) -> Response {
    match result.and_then(|m| {
        serde_json::to_vec(&m).map_err(|e| RpcError::new(Code::Internal, e.to_string()))
    }) {
        Ok(json) => {
            let mut body = envelope(0, &json).to_vec();
            body.extend_from_slice(&end_frame(None));
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/connect+json")],
                body,
            )
                .into_response()
        }
        Err(e) => stream_error(e),
    }
}

/// A unary answer.
pub fn unary<T: Serialize>(msg: &T) -> Response {
    match serde_json::to_vec(msg) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => RpcError::new(Code::Internal, e.to_string()).into_response(),
    }
}

fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + json.len());
    out.push(flags);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    Bytes::from(out)
}

/// The end-of-stream envelope: `{}` or `{"error": {...}}`.
pub fn end_frame(err: Option<&RpcError>) -> Bytes {
    let body = match err {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({"error": e.json()}),
    };
    envelope(END_STREAM, body.to_string().as_bytes())
}

/// Timing a stream honours: the client's deadline (`Connect-Timeout-Ms`) and how often
/// an idle stream sends a keepalive (`Keepalive-Ping-Interval`, seconds).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub deadline: Option<Instant>,
    pub keepalive: Duration,
}

impl Timing {
    pub fn of(headers: &HeaderMap) -> Timing {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Timing {
            deadline: num("connect-timeout-ms")
                .filter(|&ms| ms > 0)
                .map(|ms| Instant::now() + Duration::from_millis(ms)),
            keepalive: num("keepalive-ping-interval")
                .filter(|&s| s > 0)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_KEEPALIVE),
        }
    }

    /// The client's deadline as whole seconds from now, rounded up (at least 1).
    pub fn timeout_secs(&self) -> Option<u64> {
        self.deadline.map(|d| {
            let left = d.saturating_duration_since(Instant::now());
            left.as_millis().div_ceil(1000).max(1) as u64
        })
    }
}

/// What waiting for a server stream's next item ended with.
pub enum Step<T> {
    /// The source's next item (`None`: the source ended).
    Item(Option<T>),
    /// The client's deadline passed.
    Deadline,
    /// The client went away.
    Gone,
}

/// The next item of `source` for a server stream, sending `keepalive` whenever the stream
/// was idle for [`Timing::keepalive`]; ends early at the deadline or when the client left.
pub async fn next_item<S>(
    source: &mut S,
    tx: &StreamTx,
    timing: &Timing,
    keepalive: &serde_json::Value,
) -> Step<S::Item>
where
    S: futures::Stream + Unpin,
{
    use futures::StreamExt;
    loop {
        let deadline = async {
            match timing.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = deadline => return Step::Deadline,
            _ = tx.closed() => return Step::Gone,
            r = tokio::time::timeout(timing.keepalive, source.next()) => match r {
                Ok(item) => return Step::Item(item),
                Err(_) => {
                    if tx.send(keepalive).await.is_err() {
                        return Step::Gone;
                    }
                }
            },
        }
    }
}

/// The sending half of a server stream. Messages are enveloped as they are sent; a send
/// fails once the client went away.
pub struct StreamTx {
    tx: mpsc::Sender<Bytes>,
}

/// The client is gone.
#[derive(Debug)]
pub struct Gone;

impl StreamTx {
    pub async fn send<T: Serialize>(&self, msg: &T) -> Result<(), Gone> {
        let json = serde_json::to_vec(msg).map_err(|_| Gone)?;
        self.tx.send(envelope(0, &json)).await.map_err(|_| Gone)
    }

    pub async fn send_json(&self, msg: serde_json::Value) -> Result<(), Gone> {
        self.send(&msg).await
    }

    /// Resolves once the client is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// A server-streaming answer: `produce` runs in its own task and sends messages; its
/// result becomes the end-of-stream envelope. When the client goes away, the body is
/// dropped and the next send fails, which ends `produce`.
pub fn stream<F, Fut>(produce: F) -> Response
where
    F: FnOnce(StreamTx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = RpcResult<()>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let end_tx = tx.clone();
    tokio::spawn(async move {
        let result = produce(StreamTx { tx }).await;
        let _ = end_tx.send(end_frame(result.as_ref().err())).await;
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::io::Error>(b), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/connect+json")],
        Body::from_stream(body),
    )
        .into_response()
}

/// A stream that fails before its first message (Connect puts stream errors in the
/// end-of-stream envelope, under status 200).
pub fn stream_error(err: RpcError) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/connect+json")],
        end_frame(Some(&err)),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/connect+json"),
        );
        assert_eq!(kind(&h).unwrap(), Kind::Stream);
        let body = envelope(0, br#"{"path":"/x"}"#);
        let v: serde_json::Value = decode(Kind::Stream, &h, &body).unwrap();
        assert_eq!(v["path"], "/x");
        assert!(decode::<serde_json::Value>(Kind::Stream, &h, &body[..4]).is_err());
        assert!(decode::<serde_json::Value>(Kind::Stream, &h, &body[..8]).is_err());
        let end = end_frame(Some(&RpcError::new(Code::NotFound, "gone")));
        assert_eq!(end[0], END_STREAM);
        let v: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(&end_frame(None)[5..], b"{}");
        // An empty unary body is the empty message.
        let v: serde_json::Value = decode(Kind::Unary, &h, b"").unwrap();
        assert!(v.as_object().unwrap().is_empty());
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/proto"),
        );
        assert_eq!(kind(&h).unwrap_err().code, Code::Unimplemented);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_streams_get_keepalives_until_the_deadline_or_the_client_leaves() {
        let (tx, mut rx) = mpsc::channel(8);
        let tx = StreamTx { tx };
        let timing = Timing {
            deadline: Some(Instant::now() + Duration::from_secs(5)),
            keepalive: Duration::from_secs(2),
        };
        let ka = serde_json::json!({"keepalive": {}});
        let mut idle = futures::stream::pending::<u8>();
        assert!(matches!(
            next_item(&mut idle, &tx, &timing, &ka).await,
            Step::Deadline
        ));
        // Idle for 5 s with a 2 s interval: two keepalives, enveloped.
        for _ in 0..2 {
            let frame = rx.try_recv().unwrap();
            assert_eq!(&frame[5..], br#"{"keepalive":{}}"#);
        }
        assert!(rx.try_recv().is_err());
        let mut ready = futures::stream::iter([7u8]);
        let no_deadline = Timing {
            deadline: None,
            ..timing
        };
        assert!(matches!(
            next_item(&mut ready, &tx, &no_deadline, &ka).await,
            Step::Item(Some(7))
        ));
        drop(rx);
        assert!(matches!(
            next_item(&mut idle, &tx, &no_deadline, &ka).await,
            Step::Gone
        ));
    }

    #[test]
    fn engine_errors_map() {
        let e: RpcError = EngineError::InvalidRequest("x".into()).into();
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(e.code.http_status(), StatusCode::BAD_REQUEST);
    }
}
