//! Volumes (`/v1/volumes`): named directories that outlive sandboxes, mounted with
//! `POST /v1/sandboxes` `volumes`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_api::{CreateVolumeRequest, ErrorBody, Volume, VolumeList};
use warren_engine::Engine;

use crate::error::{ApiError, ApiJson};

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(list_volumes, create_volume))
        .routes(routes!(get_volume, delete_volume))
}

/// Every volume, by name, with the bytes it takes and the sandboxes that mount it.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses((status = 200, description = "The volumes", body = VolumeList)))]
pub(crate) async fn list_volumes(
    State(engine): State<Engine>,
) -> Result<Json<VolumeList>, ApiError> {
    Ok(Json(VolumeList {
        volumes: engine.list_volumes().await?,
    }))
}

/// Make an empty volume. Its files belong to root inside every sandbox that mounts it
/// (whatever the sandbox's user-namespace range). `size_mib` is enforced where
/// `storage.volume_quota` is true.
#[utoipa::path(post, path = "/v1/volumes", tag = "volumes",
    request_body = CreateVolumeRequest,
    responses(
        (status = 201, description = "The volume", body = Volume),
        (status = 400, description = "`invalid_request`: a bad name, or `size_mib` where it cannot be enforced", body = ErrorBody),
        (status = 409, description = "`volume_exists`", body = ErrorBody),
        (status = 501, description = "`not_supported`: the runtime has no volumes", body = ErrorBody),
    ))]
pub(crate) async fn create_volume(
    State(engine): State<Engine>,
    ApiJson(req): ApiJson<CreateVolumeRequest>,
) -> Result<(StatusCode, Json<Volume>), ApiError> {
    Ok((StatusCode::CREATED, Json(engine.create_volume(req).await?)))
}

/// One volume.
#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "Volume name")),
    responses(
        (status = 200, description = "The volume", body = Volume),
        (status = 404, description = "`volume_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn get_volume(
    State(engine): State<Engine>,
    Path(name): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    Ok(Json(engine.get_volume(&name).await?))
}

/// Delete a volume and its files.
#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes",
    params(("name" = String, Path, description = "Volume name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`volume_not_found`", body = ErrorBody),
        (status = 409, description = "`volume_in_use`: a sandbox (in any state) mounts it", body = ErrorBody),
    ))]
pub(crate) async fn delete_volume(
    State(engine): State<Engine>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    engine.delete_volume(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
