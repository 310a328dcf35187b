//! A sandbox's network (`/v1/sandboxes/{id}/network`): mode, address and the egress policy
//! in force, which `PUT` replaces live.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_api::{ErrorBody, SandboxNetwork, UpdateNetworkRequest};
use warren_engine::Engine;

use crate::error::{ApiError, ApiJson, SandboxId};

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new().routes(routes!(get_network, put_network))
}

/// The sandbox's network mode, address (and gateway, which is its DNS server) and the
/// egress policy in force.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/network", tag = "network",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Its network", body = SandboxNetwork),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn get_network(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
) -> Result<Json<SandboxNetwork>, ApiError> {
    Ok(Json(engine.network(&id).await?))
}

/// Replace the egress policy of a `nat` sandbox, live: running processes keep running, new
/// connections follow the new policy at once and established ones it denies are cut (TCP
/// reset). A stopped sandbox gets it when it starts.
#[utoipa::path(put, path = "/v1/sandboxes/{id}/network", tag = "network",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = UpdateNetworkRequest,
    responses(
        (status = 200, description = "The network now", body = SandboxNetwork),
        (status = 400, description = "`invalid_request`: a bad target, too many rules, or an `isolated` sandbox; `network_unavailable`: no egress policies on this server", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: being created or deleted, or failed", body = ErrorBody),
    ))]
pub(crate) async fn put_network(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<UpdateNetworkRequest>,
) -> Result<Json<SandboxNetwork>, ApiError> {
    Ok(Json(engine.update_network(&id, req).await?))
}
