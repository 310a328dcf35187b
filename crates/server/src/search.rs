//! `/v1/sandboxes/{id}/files/search`, `/files/replace` and `/files/watch` (Server-Sent
//! Events from inotify inside the sandbox).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::{stream, Stream, StreamExt};
use warren_api::{
    ErrorBody, ReplaceRequest, ReplaceResult, SearchRequest, SearchResult, WatchQuery,
};
use warren_engine::files::FileEvents;
use warren_engine::Engine;

use crate::error::{ApiError, ApiJson, ApiQuery, SandboxId};

/// Keep-alive comments on a watch stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<Engine> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(routes!(search))
        .routes(routes!(replace))
        .routes(routes!(watch))
}

/// Search file names (`glob`) or file contents (`pattern`, a regular expression) below a
/// path. Symlinks are not followed; binary files and files over `max_file_bytes` are
/// skipped; the search stops after `max_results` matches or 10 s (`truncated: true`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/search", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SearchRequest,
    responses(
        (status = 200, description = "Matches", body = SearchResult),
        (status = 400, description = "`invalid_request` (bad glob or pattern), `not_a_directory` or `invalid_path`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
    ))]
pub(crate) async fn search(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<SearchRequest>,
) -> Result<Json<SearchResult>, ApiError> {
    Ok(Json(engine.search_files(&id, req).await?))
}

/// Replace the matches of a regular expression in the (text) files below a path; each
/// changed file is rewritten atomically (temporary file + rename) with its mode and owner.
/// The pattern is checked before anything changes.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/replace", tag = "files",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ReplaceRequest,
    responses(
        (status = 200, description = "Changed files", body = ReplaceResult),
        (status = 400, description = "`invalid_request` (bad pattern or glob) or `invalid_path`", body = ErrorBody),
        (status = 403, description = "`permission_denied`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
        (status = 507, description = "`disk_quota_exceeded` (the sandbox's `resources.disk_mib` is used up) or `no_space` (its file system is full)", body = ErrorBody),
    ))]
pub(crate) async fn replace(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<ReplaceRequest>,
) -> Result<Json<ReplaceResult>, ApiError> {
    Ok(Json(engine.replace_files(&id, req).await?))
}

/// Watch a path for changes, as Server-Sent Events named `created`, `modified`, `deleted`
/// and `renamed` (data: `FileEvent`). The response starts once the watch is active. The
/// stream lasts until the client disconnects or the sandbox goes away; a keep-alive comment
/// is sent every 15 s. If the watch fails midway, the last event is `error` (data:
/// `ErrorBody`).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/watch", tag = "files",
    params(("id" = String, Path, description = "Sandbox id"), WatchQuery),
    responses(
        (status = 200, description = "Server-Sent Events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_request` or `invalid_path`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `file_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
    ))]
pub(crate) async fn watch(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiQuery(q): ApiQuery<WatchQuery>,
) -> Result<Response, ApiError> {
    let events = engine.watch_files(&id, &q.path, q.recursive).await?;
    let mut response = Sse::new(sse_events(events))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn sse_events(events: FileEvents) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    stream::unfold(Some(events), |state| async move {
        let mut events = state?;
        match events.next().await {
            Some(Ok(ev)) => {
                let event = Event::default()
                    .event(ev.event.as_str())
                    .json_data(&ev)
                    .unwrap_or_else(|_| Event::default().event(ev.event.as_str()));
                Some((Ok(event), Some(events)))
            }
            Some(Err(e)) => {
                let err = ApiError::from(e);
                let event = Event::default()
                    .event("error")
                    .json_data(err.body())
                    .unwrap_or_else(|_| Event::default().event("error"));
                Some((Ok(event), None))
            }
            None => None,
        }
    })
}
