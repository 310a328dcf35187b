//! Images (`/v1/images`): pull from a registry (with SSE progress), list, inspect, delete.
//! An image's name holds `/` and `:`; in a path it is percent-encoded
//! (`/v1/images/127.0.0.1%3A5000%2Fteam%2Fpy%3A3.12`).

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use warren_api::{ErrorBody, Image, ImageList, PullImageRequest, PullProgress};
use warren_engine::Engine;
use warren_image::Progress;

use crate::error::{ApiError, ApiJson};
use crate::exec::wants_event_stream;

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(list_images))
        .routes(routes!(pull_image))
        .routes(routes!(import_image).layer(axum::extract::DefaultBodyLimit::disable()))
        .routes(routes!(get_image, delete_image))
}

/// Every image a sandbox can be made from: the built-in `host`, then the pulled ones.
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, description = "The images", body = ImageList)))]
pub(crate) async fn list_images(State(engine): State<Engine>) -> Result<Json<ImageList>, ApiError> {
    Ok(Json(ImageList {
        images: engine.list_images()?,
    }))
}

/// Pull an image from an OCI registry (plain HTTP only for `--insecure-registry` ones);
/// layers already stored are not fetched again. With `Accept: text/event-stream` the
/// response streams `progress` events (per layer: bytes done and total) and ends with one
/// `image` event (the image) or one `error` event (`{"code","message"}`); otherwise it
/// answers when the pull is done.
#[utoipa::path(post, path = "/v1/images/pull", tag = "images",
    request_body = PullImageRequest,
    responses(
        (status = 200, description = "The image, or SSE progress then the image with `Accept: text/event-stream`",
            content(
                (Image = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "`invalid_request`: not a reference, or an unsupported layer type", body = ErrorBody),
        (status = 404, description = "`image_not_found`: the registry has no such image", body = ErrorBody),
        (status = 502, description = "`registry_error`: unreachable, refused credentials, or data that does not match its digest", body = ErrorBody),
    ))]
pub(crate) async fn pull_image(
    State(engine): State<Engine>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<PullImageRequest>,
) -> Result<Response, ApiError> {
    if !wants_event_stream(&headers) {
        let image = engine.pull_image(&req.reference, |_| {}).await?;
        return Ok(Json(image).into_response());
    }
    // The pull runs in its own task: a client that goes away does not leave half a layer
    // (the store finishes or discards it either way).
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let progress_tx = tx.clone();
    tokio::spawn(async move {
        let report = move |p: Progress| {
            let ev = match p {
                Progress::Resolved { layers, .. } => layers
                    .into_iter()
                    .map(|(layer, size, cached)| PullProgress {
                        layer,
                        done: if cached { size } else { 0 },
                        total: size,
                        complete: cached,
                    })
                    .collect::<Vec<_>>(),
                Progress::Layer {
                    digest,
                    done,
                    total,
                } => vec![PullProgress {
                    layer: digest,
                    done,
                    total,
                    complete: false,
                }],
                Progress::LayerDone { digest } => vec![PullProgress {
                    layer: digest,
                    done: 0,
                    total: 0,
                    complete: true,
                }],
            };
            for p in ev {
                if let Ok(e) = Event::default().event("progress").json_data(&p) {
                    let _ = progress_tx.send(e);
                }
            }
        };
        let last = match engine.pull_image(&req.reference, report).await {
            Ok(image) => Event::default().event("image").json_data(&image),
            Err(e) => {
                let e = ApiError::from(e);
                Event::default()
                    .event("error")
                    .json_data(serde_json::json!({
                        "code": e.code.as_str(),
                        "message": e.message,
                    }))
            }
        };
        if let Ok(ev) = last {
            let _ = tx.send(ev);
        }
    });
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(Ok::<_, Infallible>);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Query of `POST /v1/images/import`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ImportQuery {
    /// The name to store it as (`name:tag`, `host/name:tag`).
    name: String,
}

/// Import an image from a tar stream: an OCI image layout (as `skopeo copy …
/// oci-archive:` writes it) or a `docker save` archive, one image each. Every blob is
/// checked against its digest and every layer against the config's `diff_id`; layers
/// already stored are shared.
#[utoipa::path(post, path = "/v1/images/import", tag = "images",
    params(ImportQuery),
    request_body(content = String, content_type = "application/x-tar", description = "The archive"),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 400, description = "`invalid_request`: not an image archive, a blob that does not match its digest, a bad name", body = ErrorBody),
    ))]
pub(crate) async fn import_image(
    State(engine): State<Engine>,
    crate::error::ApiQuery(q): crate::error::ApiQuery<ImportQuery>,
    body: axum::body::Body,
) -> Result<Json<Image>, ApiError> {
    let stream = body
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    Ok(Json(engine.import_image(&q.name, stream).await?))
}

/// One image, by name (percent-encoded in the path).
#[utoipa::path(get, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name, percent-encoded")),
    responses(
        (status = 200, description = "The image", body = Image),
        (status = 404, description = "`image_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn get_image(
    State(engine): State<Engine>,
    Path(name): Path<String>,
) -> Result<Json<Image>, ApiError> {
    Ok(Json(engine.get_image(&name)?))
}

/// Delete an image and the layers no other image uses.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Image name, percent-encoded")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`invalid_request`: a built-in image", body = ErrorBody),
        (status = 404, description = "`image_not_found`", body = ErrorBody),
        (status = 409, description = "`image_in_use`: a sandbox or pool uses it", body = ErrorBody),
    ))]
pub(crate) async fn delete_image(
    State(engine): State<Engine>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    engine.delete_image(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
