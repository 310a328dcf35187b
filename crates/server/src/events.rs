//! `GET /v1/events` and `GET /v1/sandboxes/{id}/events`: lifecycle events as Server-Sent
//! Events, resumable with `Last-Event-ID`.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{stream, Stream, StreamExt};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_api::{ErrorBody, EventKind, EventsLost};
use warren_engine::{Engine, EventItem, EventStream};

use crate::error::{ApiError, ApiQuery, SandboxId};
use crate::processes::to_json;

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(all_events))
        .routes(routes!(sandbox_events))
}

/// Query of the event routes.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Resume after this sequence number (the `id` of the last event seen). A
    /// `Last-Event-ID` header, when present, wins over this parameter.
    after: Option<u64>,
}

const EVENTS_DOC: &str = "Each event: `id` = its `seq`, `event` = its `kind` (`created`, \
    `state`, `expired`, `idle`, `adopted`, `snapshot_created`, `snapshot_deleted`, \
    `rolled_back`, `deleted`), `data` = the `SandboxEvent` as JSON. `event: lost` (data \
    `EventsLost`, no id) reports events dropped before they could be sent.";

/// Lifecycle events of every sandbox, as Server-Sent Events.
///
/// Without `after` (or `Last-Event-ID`) the stream starts with the next event; with it, the
/// events the server still keeps with a greater `seq` are replayed first. The stream lasts
/// until the client disconnects; a keep-alive comment is sent every 15 s.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq (wins over `after`)"),
           EventsQuery),
    responses(
        (status = 200, description = EVENTS_DOC, body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
    ))]
pub(crate) async fn all_events(
    State(engine): State<Engine>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let after = resume_after(&headers, q.after)?;
    let events = engine.events(None, after)?;
    Ok(sse(events, false))
}

/// Lifecycle events of one sandbox, as Server-Sent Events.
///
/// Without `after` (or `Last-Event-ID`) every event the server still keeps for the sandbox
/// is replayed first (from `created` on), then new ones follow. The stream ends after the
/// sandbox's `deleted` event; a keep-alive comment is sent every 15 s. A sandbox that was
/// deleted recently still has its events.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/events", tag = "events",
    params(("id" = String, Path, description = "Sandbox id"),
           ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this seq (wins over `after`)"),
           EventsQuery),
    responses(
        (status = 200, description = EVENTS_DOC, body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn sandbox_events(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let after = resume_after(&headers, q.after)?;
    let events = engine.events(Some(&id), after)?;
    Ok(sse(events, true))
}

/// `Last-Event-ID` (wins) or `?after=`.
fn resume_after(headers: &HeaderMap, after: Option<u64>) -> Result<Option<u64>, ApiError> {
    match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid_request("Last-Event-ID must be an event seq (an integer)")
            }),
        None => Ok(after),
    }
}

/// The SSE name of an event kind: its snake_case JSON form.
fn kind_name(kind: EventKind) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "event".to_string(),
    }
}

fn to_sse(item: EventItem) -> Event {
    match item {
        EventItem::Event(ev) => Event::default()
            .id(ev.seq.to_string())
            .event(kind_name(ev.kind))
            .data(to_json(&ev)),
        EventItem::Lagged { missed } => Event::default()
            .event("lost")
            .data(to_json(&EventsLost { missed })),
    }
}

/// The stream as SSE; with `end_on_deleted`, it ends after a `deleted` event.
fn sse(events: EventStream, end_on_deleted: bool) -> Response {
    let mut response = Sse::new(sse_events(events, end_on_deleted))
        .keep_alive(KeepAlive::default())
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn sse_events(
    events: EventStream,
    end_on_deleted: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    stream::unfold(Some(events), move |events| async move {
        let mut events = events?;
        let item = events.next().await?;
        let last = end_on_deleted
            && matches!(&item, EventItem::Event(ev) if ev.kind == EventKind::Deleted);
        Some((Ok(to_sse(item)), (!last).then_some(events)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use warren_api::{SandboxEvent, SandboxState};

    #[tokio::test]
    async fn items_become_sse_events() {
        let ev: SandboxEvent = serde_json::from_value(serde_json::json!({
            "seq": 7, "time": "2026-11-23T12:00:00Z", "sandbox_id": "sb-1",
            "kind": "snapshot_created", "snapshot": "snap-1",
        }))
        .unwrap();
        let deleted = SandboxEvent {
            seq: 8,
            kind: EventKind::Deleted,
            snapshot: None,
            ..ev.clone()
        };
        let after = SandboxEvent {
            seq: 9,
            kind: EventKind::State,
            state: Some(SandboxState::Running),
            ..ev.clone()
        };
        let items = vec![
            EventItem::Lagged { missed: 3 },
            EventItem::Event(ev.clone()),
            EventItem::Event(deleted),
            EventItem::Event(after),
        ];
        let body = |end_on_deleted| {
            let items = items.clone();
            async move {
                let resp = sse(Box::pin(stream::iter(items)), end_on_deleted);
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8(bytes.to_vec()).unwrap()
            }
        };
        let text = body(true).await;
        let blocks: Vec<&str> = text.split("\n\n").filter(|b| !b.is_empty()).collect();
        assert_eq!(blocks.len(), 3, "{text}");
        assert_eq!(blocks[0], "event: lost\ndata: {\"missed\":3}");
        let lines: Vec<&str> = blocks[1].lines().collect();
        assert_eq!(lines[..2], ["id: 7", "event: snapshot_created"], "{text}");
        let data: SandboxEvent =
            serde_json::from_str(lines[2].strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data, ev);
        assert!(blocks[2].contains("\nevent: deleted\n"), "{}", blocks[2]);
        // The global stream goes on after a sandbox's deletion.
        let text = body(false).await;
        assert_eq!(text.split("\n\n").filter(|b| !b.is_empty()).count(), 4);
    }
}
