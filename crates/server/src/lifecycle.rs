//! Pause, resume, stop, start, stats, snapshots, rollback and fork
//! (`/v1/sandboxes/{id}/...` and `/v1/snapshots`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warren_api::{
    CreateSnapshotRequest, ErrorBody, ForkRequest, RollbackRequest, Sandbox, SandboxStats, Snapshot,
};
use warren_engine::Engine;

use crate::error::{ApiError, ApiJson, ApiQuery, OptionalJson, SandboxId, SnapshotId};

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(stop))
        .routes(routes!(start))
        .routes(routes!(stats))
        .routes(routes!(create_snapshot, list_sandbox_snapshots))
        .routes(routes!(rollback))
        .routes(routes!(fork))
        .routes(routes!(list_snapshots))
        .routes(routes!(get_snapshot, delete_snapshot))
}

/// The body of pause, resume, stop and start: nothing, or an empty JSON object.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NoBody {}

const TRANSITION_409: &str = "`invalid_transition`: the sandbox's state does not allow it \
    (e.g. resume of a stopped sandbox), or `invalid_state`";

/// Freeze every process of a running sandbox (its memory stays; nothing runs).
///
/// Pausing a paused sandbox changes nothing (200). Exec, process, file and port calls on a
/// paused sandbox are 409 `sandbox_paused`, unless it was created with `auto_resume`: then
/// they resume it first. The timeout keeps running; `on_timeout` decides what expiry does.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<NoBody>, description = "Optional: no body or `{}`"),
    responses(
        (status = 200, description = "The sandbox, `paused`", body = Sandbox),
        (status = 400, description = "`invalid_request`: a body other than `{}`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = TRANSITION_409, body = ErrorBody),
        (status = 500, description = "`runtime_error`: the sandbox is now `failed`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
    ))]
pub(crate) async fn pause(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.pause(&id).await?))
}

/// Thaw a paused sandbox; its processes go on where they were. The timeout counts again
/// from now.
///
/// Resuming a running sandbox changes nothing (200); a stopped one is 409
/// `invalid_transition` (use `start`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<NoBody>, description = "Optional: no body or `{}`"),
    responses(
        (status = 200, description = "The sandbox, `running`", body = Sandbox),
        (status = 400, description = "`invalid_request`: a body other than `{}`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = TRANSITION_409, body = ErrorBody),
        (status = 500, description = "`runtime_error`: the sandbox is now `failed`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
    ))]
pub(crate) async fn resume(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.resume(&id).await?))
}

/// End every process of a running or paused sandbox and keep its files.
///
/// Port forwards are closed. Stopping a stopped sandbox changes nothing (200). Calls that
/// need a running sandbox are 409 `sandbox_stopped` unless it was created with
/// `auto_resume` (then they start it first).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<NoBody>, description = "Optional: no body or `{}`"),
    responses(
        (status = 200, description = "The sandbox, `stopped`", body = Sandbox),
        (status = 400, description = "`invalid_request`: a body other than `{}`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = TRANSITION_409, body = ErrorBody),
        (status = 500, description = "`runtime_error`: the sandbox is now `failed`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
    ))]
pub(crate) async fn stop(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.stop(&id).await?))
}

/// Boot a stopped sandbox again on its kept files (fresh processes). The timeout counts
/// again from now.
///
/// Starting a running sandbox changes nothing (200); a paused one is 409
/// `invalid_transition` (use `resume`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/start", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<NoBody>, description = "Optional: no body or `{}`"),
    responses(
        (status = 200, description = "The sandbox, `running`", body = Sandbox),
        (status = 400, description = "`invalid_request`: a body other than `{}`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = TRANSITION_409, body = ErrorBody),
        (status = 500, description = "`runtime_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
    ))]
pub(crate) async fn start(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    OptionalJson(NoBody {}): OptionalJson<NoBody>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.start(&id).await?))
}

/// Usage of a running, paused or stopped sandbox: CPU time, memory, processes, disk and
/// network counters.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/stats", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The figures", body = SandboxStats),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: being created or deleted, or failed", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
    ))]
pub(crate) async fn stats(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
) -> Result<Json<SandboxStats>, ApiError> {
    Ok(Json(engine.stats(&id).await?))
}

/// Snapshot the sandbox's files (running, paused or stopped).
///
/// A running sandbox's processes are frozen while the files are copied and go on
/// afterwards; processes and memory are not part of a snapshot. The snapshot outlives its
/// sandbox. Use it with `POST /v1/sandboxes {"snapshot": ...}` (a new sandbox with these
/// files) or `POST .../rollback`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshots", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<CreateSnapshotRequest>, description = "Optional"),
    responses(
        (status = 201, description = "The snapshot", body = Snapshot),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: being created, changing state or deleted, or failed", body = ErrorBody),
        (status = 500, description = "`runtime_error` or `store_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
    ))]
pub(crate) async fn create_snapshot(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    OptionalJson(req): OptionalJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<Snapshot>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(engine.create_snapshot(&id, req).await?),
    ))
}

/// The snapshots taken of this sandbox, oldest first (also after it was deleted, as long
/// as some are left).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/snapshots", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "Its snapshots", body = Vec<Snapshot>),
        (status = 404, description = "`sandbox_not_found`: no such sandbox and no snapshot of one", body = ErrorBody),
    ))]
pub(crate) async fn list_sandbox_snapshots(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    let snapshots = engine.list_snapshots(Some(&id)).await?;
    if snapshots.is_empty() {
        // An empty list of an existing sandbox, or a typo.
        engine.get(&id).await?;
    }
    Ok(Json(snapshots))
}

/// Replace the sandbox's files with a snapshot's.
///
/// A running or paused sandbox goes `stopping` → `stopped` → `rolling_back` → `stopped` →
/// `starting` → `running` (its processes are ended; it comes back with fresh ones); a
/// stopped sandbox stays stopped. The snapshot may come from any sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/rollback", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = RollbackRequest,
    responses(
        (status = 200, description = "The sandbox with the snapshot's files", body = Sandbox),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `snapshot_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_transition`", body = ErrorBody),
        (status = 500, description = "`runtime_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
    ))]
pub(crate) async fn rollback(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<RollbackRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.rollback(&id, req).await?))
}

/// A new, running sandbox with a copy of this one's files as they are now (its processes
/// are not copied). Fields left out of the body are copied from the source sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", tag = "lifecycle",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = Option<ForkRequest>, description = "Optional"),
    responses(
        (status = 201, description = "The new sandbox, running", body = Sandbox),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
        (status = 429, description = "`limit_reached` or `capacity_exhausted` (see `POST /v1/sandboxes`)", body = ErrorBody),
        (status = 500, description = "`runtime_error` or `store_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
        (status = 504, description = "`deadline_exceeded`: the runtime did not finish in time; the sandbox is now `failed`", body = ErrorBody),
        (status = 503, description = "`host_under_pressure` or `shutting_down`", body = ErrorBody),
    ))]
pub(crate) async fn fork(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    OptionalJson(req): OptionalJson<ForkRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    Ok((StatusCode::CREATED, Json(engine.fork(&id, req).await?)))
}

/// Query of `GET /v1/snapshots`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct SnapshotsQuery {
    /// Only the snapshots of this sandbox (which may since have been deleted).
    sandbox_id: Option<String>,
}

/// Every snapshot, oldest first.
#[utoipa::path(get, path = "/v1/snapshots", tag = "lifecycle",
    params(SnapshotsQuery),
    responses(
        (status = 200, description = "The snapshots", body = Vec<Snapshot>),
        (status = 400, description = "`invalid_request`: unknown query parameter", body = ErrorBody),
    ))]
pub(crate) async fn list_snapshots(
    State(engine): State<Engine>,
    ApiQuery(q): ApiQuery<SnapshotsQuery>,
) -> Result<Json<Vec<Snapshot>>, ApiError> {
    Ok(Json(engine.list_snapshots(q.sandbox_id.as_deref()).await?))
}

/// One snapshot.
#[utoipa::path(get, path = "/v1/snapshots/{id}", tag = "lifecycle",
    params(("id" = String, Path, description = "Snapshot id")),
    responses(
        (status = 200, description = "The snapshot", body = Snapshot),
        (status = 404, description = "`snapshot_not_found`", body = ErrorBody),
    ))]
pub(crate) async fn get_snapshot(
    State(engine): State<Engine>,
    SnapshotId(id): SnapshotId,
) -> Result<Json<Snapshot>, ApiError> {
    Ok(Json(engine.get_snapshot(&id).await?))
}

/// Delete a snapshot and its files. Sandboxes made from it are not affected.
#[utoipa::path(delete, path = "/v1/snapshots/{id}", tag = "lifecycle",
    params(("id" = String, Path, description = "Snapshot id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`snapshot_not_found`", body = ErrorBody),
        (status = 409, description = "`snapshot_in_use`: a restore or rollback is copying it", body = ErrorBody),
        (status = 500, description = "`store_error`", body = ErrorBody),
    ))]
pub(crate) async fn delete_snapshot(
    State(engine): State<Engine>,
    SnapshotId(id): SnapshotId,
) -> Result<StatusCode, ApiError> {
    engine.delete_snapshot(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
