//! A cap on long-lived responses: SSE streams, WebSockets, upgraded proxy connections and
//! Connect streams (E2B's envd).
//!
//! Each holds a connection (and, for most, a connection to a sandbox's agent) for as long
//! as the client likes. They are counted apart from the connection cap and kept below it,
//! so that a client holding many streams cannot starve short requests (`/healthz`, a
//! delete): the stream beyond `max_streams` gets 429 `too_many_streams` at once, before its
//! handler runs (an exec over the cap never starts).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;
use crate::exec::wants_event_stream;
use crate::output::Held;
use warren_api::ErrorCode;

/// Shared count of open streams.
#[derive(Clone, Debug)]
pub(crate) struct StreamLimit {
    sem: Arc<Semaphore>,
    max: usize,
}

impl StreamLimit {
    pub(crate) fn new(max: usize) -> StreamLimit {
        StreamLimit {
            sem: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

/// One open stream's place. The middleware keeps a clone in the response body; a handler
/// that upgrades the connection moves the one in the request's extensions into the task
/// that serves the upgraded connection.
#[derive(Clone, Debug)]
pub(crate) struct StreamPermit(#[allow(dead_code)] Arc<OwnedSemaphorePermit>);

/// GET routes whose answer is always a stream.
const STREAM_ROUTES: [&str; 5] = [
    "/v1/events",
    "/v1/sandboxes/{id}/events",
    "/v1/sandboxes/{id}/files/watch",
    "/v1/sandboxes/{id}/processes/{pid}/output",
    "/v1/sandboxes/{id}/processes/{pid}/pty",
];

fn is_stream(req: &Request) -> bool {
    // A WebSocket, or any upgrade through the proxy.
    if req.headers().contains_key(header::UPGRADE) {
        return true;
    }
    // A Connect streaming call (E2B's envd: process output, watches, input streams), or a
    // client asking any route for Server-Sent Events (OpenSandbox's commands too).
    let connect_stream = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/connect+"));
    if connect_stream || wants_event_stream(req.headers()) {
        return true;
    }
    let Some(path) = req.extensions().get::<MatchedPath>() else {
        return false;
    };
    match path.as_str() {
        "/v1/sandboxes/{id}/exec" => wants_event_stream(req.headers()),
        p => req.method() == Method::GET && STREAM_ROUTES.contains(&p),
    }
}

/// Route middleware: counts streams, refuses those over the cap.
pub(crate) async fn limit_streams(
    State(limit): State<StreamLimit>,
    mut req: Request,
    next: Next,
) -> Response {
    if !is_stream(&req) {
        return next.run(req).await;
    }
    let Ok(permit) = limit.sem.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::TooManyStreams,
            format!(
                "the server already serves {} streams (SSE, WebSocket), its maximum; close one \
                 or use the non-streaming form",
                limit.max
            ),
        )
        .into_response();
    };
    let permit = StreamPermit(Arc::new(permit));
    req.extensions_mut().insert(permit.clone());
    let (parts, body) = next.run(req).await.into_parts();
    Response::from_parts(parts, Held::body(body, permit))
}
