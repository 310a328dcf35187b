//! Templates (`/v1/templates`): build an image from a Dockerfile (multipart upload, SSE build
//! log), list, inspect, delete.

use std::convert::Infallible;
use tokio::io::AsyncWriteExt;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use warren_api::{
    BuildLog, BuildStep, BuildTemplateForm, BuildTemplateRequest, ErrorBody, Template, TemplateList,
};
use warren_engine::templates::BuildEvent;
use warren_engine::Engine;

use crate::error::ApiError;
use crate::exec::wants_event_stream;

/// Largest build context accepted.
const MAX_CONTEXT_BYTES: u64 = 2 << 30;
/// Largest Dockerfile and other text fields.
const MAX_FIELD_BYTES: usize = 1 << 20;

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(
            routes!(build_template, list_templates)
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .routes(routes!(get_template, delete_template))
}

/// Every template.
#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, description = "The templates", body = TemplateList)))]
pub(crate) async fn list_templates(
    State(engine): State<Engine>,
) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList {
        templates: engine.list_templates()?,
    }))
}

/// Build a template from a Dockerfile: FROM, RUN (shell and exec form), COPY, ADD (local
/// files and tar archives), ENV, ARG, WORKDIR, USER, LABEL, EXPOSE, CMD, ENTRYPOINT; any
/// other instruction is refused with its line. Each RUN runs in a sandbox made from the
/// steps before it (with `network`), whose writable layer becomes the next layer; unchanged
/// steps come from the build cache. With `Accept: text/event-stream` the response streams
/// `step` and `log` events and ends with one `template` event or one `error` event
/// (`{"code","message"}`); otherwise it answers when the build is done. The result is an
/// image of the template's name, usable in creates and pools.
#[utoipa::path(post, path = "/v1/templates", tag = "templates",
    request_body(content = BuildTemplateForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, description = "The template, or SSE `step`/`log` events then the template with `Accept: text/event-stream`",
            content(
                (Template = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "`invalid_request`: a bad name, form or Dockerfile (its line named)", body = ErrorBody),
        (status = 404, description = "`image_not_found`: the FROM image", body = ErrorBody),
        (status = 409, description = "`image_in_use`: a template of that name is in use, or a pulled image has the name", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the context is over 2 GiB", body = ErrorBody),
        (status = 422, description = "`build_failed`: a step failed (a RUN's exit status, a COPY source missing)", body = ErrorBody),
        (status = 502, description = "`registry_error`: pulling the FROM image failed", body = ErrorBody),
    ))]
pub(crate) async fn build_template(
    State(engine): State<Engine>,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut multipart = multipart.map_err(|e| ApiError::invalid_request(e.body_text()))?;
    let upload = engine.build_scratch()?;
    let mut req = BuildTemplateRequest::default();
    let mut context = None;
    let mut have = (false, false);
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::invalid_request(format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        if name == "context" {
            let path = upload.path().join("context");
            let store_err = |e: std::io::Error| {
                ApiError::from(warren_engine::EngineError::Store(e.to_string()))
            };
            let mut f = tokio::fs::File::create(&path).await.map_err(store_err)?;
            let mut size = 0u64;
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| ApiError::invalid_request(format!("the context was cut: {e}")))?
            {
                size += chunk.len() as u64;
                if size > MAX_CONTEXT_BYTES {
                    return Err(ApiError::new(
                        warren_api::ErrorCode::PayloadTooLarge,
                        format!("the build context is over {MAX_CONTEXT_BYTES} bytes"),
                    ));
                }
                f.write_all(&chunk).await.map_err(store_err)?;
            }
            f.flush().await.map_err(store_err)?;
            context = Some(path);
            continue;
        }
        let mut text = Vec::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| ApiError::invalid_request(format!("field {name} was cut: {e}")))?
        {
            if text.len() + chunk.len() > MAX_FIELD_BYTES {
                return Err(ApiError::new(
                    warren_api::ErrorCode::PayloadTooLarge,
                    format!("field {name} is over {MAX_FIELD_BYTES} bytes"),
                ));
            }
            text.extend_from_slice(&chunk);
        }
        let text = String::from_utf8(text)
            .map_err(|_| ApiError::invalid_request(format!("field {name} is not UTF-8")))?;
        let json_err =
            |e: serde_json::Error| ApiError::invalid_request(format!("field {name}: {e}"));
        match name.as_str() {
            "name" => {
                req.name = text.trim().to_string();
                have.0 = true;
            }
            "dockerfile" => {
                req.dockerfile = text;
                have.1 = true;
            }
            "build_args" => req.build_args = serde_json::from_str(&text).map_err(json_err)?,
            "start_cmd" => req.start_cmd = Some(text).filter(|t| !t.trim().is_empty()),
            "ready_cmd" => req.ready_cmd = Some(text).filter(|t| !t.trim().is_empty()),
            "ready_timeout_secs" => {
                req.ready_timeout_secs = Some(text.trim().parse().map_err(|_| {
                    ApiError::invalid_request("ready_timeout_secs must be a number of seconds")
                })?)
            }
            "network" => req.network = Some(serde_json::from_str(&text).map_err(json_err)?),
            "runtime" => {
                req.runtime = Some(
                    serde_json::from_value(serde_json::Value::String(text.trim().to_string()))
                        .map_err(json_err)?,
                )
            }
            "no_cache" => req.no_cache = matches!(text.trim(), "true" | "1"),
            other => {
                return Err(ApiError::invalid_request(format!(
                    "unknown form field {other:?} (name, dockerfile, context, build_args, \
                     start_cmd, ready_cmd, ready_timeout_secs, network, runtime, no_cache)"
                )))
            }
        }
    }
    if !have.0 || !have.1 {
        return Err(ApiError::invalid_request(
            "the form needs a `name` and a `dockerfile` field",
        ));
    }
    // Bounded: a reader that falls behind loses log output (told so), never the daemon's
    // memory (see `warren_engine::templates`).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BuildEvent>(1024);
    // The build runs in its own task: a client that goes away does not stop it halfway
    // (its sandboxes are removed and its result recorded either way).
    let build = tokio::spawn({
        let engine = engine.clone();
        async move {
            let r = engine.build_template(req, context, tx).await;
            drop(upload);
            r
        }
    });
    let finished =
        |r: Result<Result<Template, warren_engine::EngineError>, tokio::task::JoinError>| {
            r.map_err(|e| warren_engine::EngineError::Store(format!("the build task failed: {e}")))
                .and_then(|r| r)
        };
    if !wants_event_stream(&headers) {
        while rx.recv().await.is_some() {}
        let template = finished(build.await)?;
        return Ok((StatusCode::CREATED, Json(template)).into_response());
    }
    let log = tokio_stream::wrappers::ReceiverStream::new(rx).filter_map(|ev| async move {
        match ev {
            BuildEvent::Step(s) => Event::default().event("step").json_data::<BuildStep>(s),
            BuildEvent::Log(l) => Event::default().event("log").json_data::<BuildLog>(l),
        }
        .ok()
    });
    // After the log (the build dropped its sender): the result.
    let last = futures::stream::once(async move {
        match finished(build.await) {
            Ok(t) => Event::default().event("template").json_data(&t),
            Err(e) => error_event(ApiError::from(e)),
        }
    })
    .filter_map(|ev| async move { ev.ok() });
    let events = log.chain(last).map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn error_event(e: ApiError) -> Result<Event, axum::Error> {
    Event::default()
        .event("error")
        .json_data(serde_json::json!({
            "code": e.code.as_str(),
            "message": e.message,
        }))
}

/// One template, by name (percent-encoded in the path).
#[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name, percent-encoded")),
    responses(
        (status = 200, description = "The template", body = Template),
        (status = 404, description = "`image_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn get_template(
    State(engine): State<Engine>,
    Path(name): Path<String>,
) -> Result<Json<Template>, ApiError> {
    Ok(Json(engine.get_template(&name)?))
}

/// Delete a template and the layers no other image uses.
#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates",
    params(("name" = String, Path, description = "Template name, percent-encoded")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`image_not_found`", body = ErrorBody),
        (status = 409, description = "`image_in_use`: a sandbox, pool or snapshot uses it", body = ErrorBody),
    ))]
pub(crate) async fn delete_template(
    State(engine): State<Engine>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    engine.delete_template(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
