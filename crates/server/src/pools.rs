//! Warm pools (`/v1/pools`): ready sandboxes that `POST /v1/sandboxes` hands out without a
//! cold start.

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_api::{ErrorBody, Pool, PoolSpec};
use warren_engine::Engine;

use crate::error::{ApiError, ApiJson};
use warren_api::ErrorCode;

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(list_pools))
        .routes(routes!(get_pool, put_pool, delete_pool))
}

/// The `{name}` path segment; one that cannot be extracted is not found.
pub(crate) struct PoolName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PoolName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<String>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(name)) => Ok(PoolName(name)),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::PoolNotFound,
                format!("no such pool ({})", rejection.body_text()),
            )),
        }
    }
}

/// Every pool with what it holds now, by name.
#[utoipa::path(get, path = "/v1/pools", tag = "pools",
    responses((status = 200, description = "The pools", body = Vec<Pool>)))]
pub(crate) async fn list_pools(State(engine): State<Engine>) -> Json<Vec<Pool>> {
    Json(engine.list_pools())
}

/// One pool: its spec and its `ready`, `filling` and `claimed` counts.
#[utoipa::path(get, path = "/v1/pools/{name}", tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 200, description = "The pool", body = Pool),
        (status = 404, description = "`pool_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn get_pool(
    State(engine): State<Engine>,
    PoolName(name): PoolName,
) -> Result<Json<Pool>, ApiError> {
    Ok(Json(engine.get_pool(&name)?))
}

/// Define a pool, or redefine it (a new spec replaces the old one).
///
/// The server keeps `size` sandboxes of this spec running and ready in the background (at
/// most two being made at a time); `POST /v1/sandboxes {"pool": NAME}` takes one without a
/// cold start, and so does a create whose image and resources (after defaults) are the
/// pool's, if the pool has no `env`. A smaller size or a new spec deletes the unclaimed
/// sandboxes that no longer fit. Unclaimed sandboxes count against the committed memory
/// (`limits.max_committed_memory_mib`), not against `max_sandboxes`; when admission refuses
/// more, the pool stops filling and says why in `last_error`. The definition survives
/// restarts, and so do its ready sandboxes. Names: 1 to 63 of `a-z`, `0-9`, `-`, `_`.
#[utoipa::path(put, path = "/v1/pools/{name}", tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    request_body = PoolSpec,
    responses(
        (status = 200, description = "The pool as it is now (it fills in the background)", body = Pool),
        (status = 400, description = "`invalid_request` (name, size, resources, env) or `image_not_found`", body = ErrorBody),
        (status = 409, description = "`pool_from_config`: defined in the server's config file", body = ErrorBody),
        (status = 500, description = "`store_error`", body = ErrorBody),
        (status = 503, description = "`shutting_down`", body = ErrorBody),
    ))]
pub(crate) async fn put_pool(
    State(engine): State<Engine>,
    PoolName(name): PoolName,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> Result<Json<Pool>, ApiError> {
    Ok(Json(engine.put_pool(&name, spec).await?))
}

/// Delete a pool and its unclaimed sandboxes; returns once they are gone. Sandboxes
/// already claimed from it are their users' and stay.
#[utoipa::path(delete, path = "/v1/pools/{name}", tag = "pools",
    params(("name" = String, Path, description = "Pool name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`pool_not_found`", body = ErrorBody),
        (status = 409, description = "`pool_from_config`: defined in the server's config file", body = ErrorBody),
        (status = 500, description = "`store_error`", body = ErrorBody),
    ))]
pub(crate) async fn delete_pool(
    State(engine): State<Engine>,
    PoolName(name): PoolName,
) -> Result<StatusCode, ApiError> {
    engine.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
