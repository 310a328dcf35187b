//! Warren's HTTP API.
//!
//! [`router`] turns an [`Engine`] into an axum [`Router`] serving the `/v1` API; [`openapi`]
//! is the OpenAPI document generated from the same handlers and the `warren_api` types.
//! Every error leaves as `{"error":{"code":"...","message":"..."}}` ([`warren_api::ErrorBody`]).
//! [`serve`] serves it on a bound listener with the connection limits of the engine's config,
//! until a shutdown future completes.

pub mod auth;
mod drain;
mod encode;
mod error;
mod events;
mod exec;
mod files;
mod images;
mod lifecycle;
mod listen;
mod network;
mod output;
mod pools;
mod ports;
mod processes;
mod search;
mod streams;
mod templates;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod volumes;

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router};
use tower_http::trace::TraceLayer;
use utoipa::openapi::path::Operation;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use warren_api::{
    Capabilities, CreateSandboxRequest, ErrorBody, ExitEvent, OutputChunk, Sandbox,
    SetTimeoutRequest,
};
use warren_engine::Engine;

pub use error::ApiError;
use error::{ApiJson, SandboxId};
pub use listen::{serve, serve_opts, serve_with};

/// Every route of the API, each registered together with its OpenAPI operation, so the
/// router and the document cannot drift apart (the proxy, whose catch-all path OpenAPI
/// cannot spell, is the one route added by hand; see `ports`).
fn api() -> OpenApiRouter<Engine> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(capabilities))
        .routes(routes!(openapi_json))
        .routes(routes!(create_sandbox, list_sandboxes))
        .routes(routes!(get_sandbox, delete_sandbox))
        .routes(routes!(set_timeout))
        .routes(routes!(update_metadata))
        .routes(routes!(exec::exec))
        .routes(routes!(files::read_file, files::remove))
        // Uploads stream to the sandbox: no body limit on these two routes only.
        .routes(routes!(files::write_file).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::upload).layer(DefaultBodyLimit::disable()))
        .routes(routes!(files::read_archive))
        .routes(routes!(files::stat))
        .routes(routes!(files::list))
        .routes(routes!(files::mkdir))
        .routes(routes!(files::set_metadata))
        .routes(routes!(files::move_path))
        .merge(processes::routes())
        .merge(lifecycle::routes())
        .merge(network::routes())
        .merge(images::routes())
        .merge(volumes::routes())
        .merge(templates::routes())
        .merge(pools::routes())
        .merge(events::routes())
        .merge(ports::routes())
        .merge(search::routes())
}

/// The full HTTP API over `engine`, open to anyone who can connect (see [`router_with`]).
pub fn router(engine: Engine) -> Router {
    router_with(engine, None)
}

/// The full HTTP API over `engine`; with `auth`, every route but `/healthz` needs an API
/// key (`Authorization: Bearer`), and a sandbox's proxy also opens with its token (see
/// [`auth`]).
pub fn router_with(engine: Engine, auth: Option<auth::Auth>) -> Router {
    router_opts(
        engine,
        ServeOptions {
            auth,
            ..Default::default()
        },
    )
}

/// Where the OpenSandbox-compatible API is mounted (the SDK's domain is `HOST:PORT` + this).
pub const OPENSANDBOX_PREFIX: &str = "/opensandbox";

/// What the API serves besides the engine: keys and tokens, and the compatible surfaces'
/// settings.
#[derive(Clone, Default)]
pub struct ServeOptions {
    pub auth: Option<auth::Auth>,
    /// Image names other APIs' clients may use for Warren images (`--image-alias`).
    pub image_aliases: BTreeMap<String, String>,
}

impl ServeOptions {
    /// The keys and tokens, as the other surfaces take them.
    fn gate(&self) -> Option<std::sync::Arc<dyn warren_api::Gate>> {
        self.auth
            .clone()
            .map(|a| std::sync::Arc::new(a) as std::sync::Arc<dyn warren_api::Gate>)
    }
}

/// The native API under `/v1`, E2B's control plane on its own paths (`/v2/sandboxes`,
/// `/sandboxes/...`) and OpenSandbox's under [`OPENSANDBOX_PREFIX`]; each other surface
/// checks its own headers and answers in its own error shape.
pub fn router_opts(engine: Engine, opts: ServeOptions) -> Router {
    let gate = opts.gate();
    let auth = opts.auth;
    let body_limit = usize::try_from(engine.config().max_request_bytes).unwrap_or(usize::MAX);
    let output_budget = output::OutputBudget::new(engine.config().max_exec_output_bytes);
    let streams = streams::StreamLimit::new(engine.config().max_streams);
    let e2b = warren_e2b::router(
        engine.clone(),
        warren_e2b::Options {
            image_aliases: opts.image_aliases.clone(),
            gate: gate.clone(),
        },
    )
    .route_layer(axum::middleware::from_fn_with_state(
        streams.clone(),
        streams::limit_streams,
    ));
    let opensandbox = warren_opensandbox::router(
        engine.clone(),
        warren_opensandbox::Options {
            prefix: OPENSANDBOX_PREFIX.into(),
            image_aliases: opts.image_aliases,
            gate,
        },
    )
    .route_layer(axum::middleware::from_fn_with_state(
        streams.clone(),
        streams::limit_streams,
    ));
    let (routes, _) = api().split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            streams,
            streams::limit_streams,
        ))
        .layer(axum::Extension(output_budget))
        .layer(axum::Extension(auth.as_ref().map(|a| a.tokens.clone())))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(engine)
        .merge(e2b)
        .nest(OPENSANDBOX_PREFIX, opensandbox)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            auth::require_key,
        ))
        .layer(axum::middleware::from_fn(drain::close_after_refused_body))
        .layer(TraceLayer::new_for_http())
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut doc) = api().split_for_parts();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        proxy_without_path(&mut doc);
        unique_operation_ids(&mut doc);
        doc.servers = Some(vec![utoipa::openapi::ServerBuilder::new()
            .url("http://127.0.0.1:7400")
            .description(Some(
                "The default address of `warren serve` (`--listen` changes it)",
            ))
            .build()]);
        doc
    })
    .clone()
}

/// The operations of a path item with their method names.
fn operations_mut(item: &mut utoipa::openapi::PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", &mut item.get),
        ("put", &mut item.put),
        ("post", &mut item.post),
        ("delete", &mut item.delete),
        ("options", &mut item.options),
        ("head", &mut item.head),
        ("patch", &mut item.patch),
        ("trace", &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.as_mut().map(|op| (method, op)))
    .collect()
}

/// `/proxy/{port}` without a trailing path is a route too (the path `/` in the sandbox):
/// the same operations as `/proxy/{port}/{path}`, without the `path` parameter.
fn proxy_without_path(doc: &mut utoipa::openapi::OpenApi) {
    let Some(mut item) = doc
        .paths
        .paths
        .get("/v1/sandboxes/{id}/proxy/{port}/{path}")
        .cloned()
    else {
        return;
    };
    for (_, op) in operations_mut(&mut item) {
        if let Some(params) = &mut op.parameters {
            params.retain(|p| p.name != "path");
        }
        if let Some(id) = &mut op.operation_id {
            id.push_str("_root");
        }
    }
    doc.paths
        .paths
        .insert("/v1/sandboxes/{id}/proxy/{port}".to_string(), item);
}

/// An operation id used by several operations (one handler serving several methods) gets
/// its method appended, so that every operation id is unique as OpenAPI requires.
fn unique_operation_ids(doc: &mut utoipa::openapi::OpenApi) {
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for item in doc.paths.paths.values_mut() {
        for (_, op) in operations_mut(item) {
            if let Some(id) = &op.operation_id {
                *uses.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for item in doc.paths.paths.values_mut() {
        for (method, op) in operations_mut(item) {
            if let Some(id) = &mut op.operation_id {
                if uses.get(id.as_str()).is_some_and(|n| *n > 1) {
                    id.push('_');
                    id.push_str(method);
                }
            }
        }
    }
}

/// The `api_key` security scheme (a bearer token; see [`auth`]).
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`warren key create`); required when the server runs \
                         with `--api-keys`",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warren",
        description = "Self-hosted sandboxes for AI agents. Every error is \
            `{\"error\":{\"code\":\"snake_case\",\"message\":\"...\"}}`; unknown routes are \
            404 `not_found`, wrong methods 405 `method_not_allowed`, malformed bodies 400 \
            `invalid_request`, oversized bodies 413 `payload_too_large`. A server started \
            with `--api-keys` needs `Authorization: Bearer <key>` on every route but \
            `/healthz` (401 `unauthorized` otherwise).",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerKeys),
    security((), ("api_key" = [])),
    // The port proxy: routed by hand (see `ports::routes`).
    paths(ports::proxy),
    // What streams carry (SSE events, WebSocket messages): no operation's body names these,
    // so they are listed here. Every other schema comes with the operation that uses it.
    components(schemas(
        ExitEvent,
        OutputChunk,
        warren_api::LostEvent,
        warren_api::PtyMessage,
        warren_api::SandboxEvent,
        warren_api::EventKind,
        warren_api::EventsLost,
        warren_api::FileEvent,
        warren_api::FileEventKind,
        warren_api::PullProgress,
        warren_api::BuildStep,
        warren_api::BuildLog,
    )),
    tags((name = "sandboxes", description = "Sandbox lifecycle and commands"),
         (name = "files", description = "Files inside a running sandbox"),
         (name = "meta", description = "Health, capabilities, this document"),
         (name = "processes", description = "Durable processes and terminals in a running sandbox"),
         (name = "ports", description = "Network ports inside a running sandbox"),
         (name = "lifecycle", description = "Pause, stop, snapshots, rollback and fork"),
         (name = "events", description = "Lifecycle events (Server-Sent Events)"),
         (name = "pools", description = "Warm pools of ready sandboxes"),
         (name = "network", description = "A sandbox's network mode, address and live egress policy"),
         (name = "images", description = "OCI images pulled from registries"),
         (name = "volumes", description = "Named volumes that outlive sandboxes"),
         (name = "templates", description = "Images built from a Dockerfile"))
)]
struct ApiDoc;

/// Liveness probe.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "The server is up", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok"
}

/// What this server and its runtime support.
#[utoipa::path(get, path = "/v1/capabilities", tag = "meta",
    responses((status = 200, description = "Capabilities", body = Capabilities)))]
async fn capabilities(State(engine): State<Engine>) -> Json<Capabilities> {
    Json(engine.capabilities())
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// Create a sandbox; returns once it is running.
///
/// With `snapshot` its files start as a copy of that snapshot's (a restore). With `pool`
/// (or a spec that is a pool's, see `GET /v1/pools`) a ready sandbox of the pool is handed
/// over at once, with this request's env, metadata, timeout and lifecycle options; its
/// `pool` field says so. An empty pool falls back to a cold create.
///
/// Admission is checked at once: beyond `limits.max_sandboxes` 429 `limit_reached`;
/// beyond `limits.max_committed_memory_mib` (the memory limits of all sandboxes, after
/// evicting unclaimed pool sandboxes) 429 `capacity_exhausted`; with the host's available
/// memory below `limits.min_available_memory_mib` 503 `host_under_pressure`.
#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes",
    request_body = CreateSandboxRequest,
    responses(
        (status = 201, description = "The sandbox, running", body = Sandbox),
        (status = 400, description = "`invalid_request` or `image_not_found`", body = ErrorBody),
        (status = 403, description = "`permission_denied`: a `host_path` outside every allowed prefix", body = ErrorBody),
        (status = 404, description = "`snapshot_not_found`, `pool_not_found` or `volume_not_found`", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 429, description = "`limit_reached`: too many sandboxes; `capacity_exhausted`: not enough memory left to commit", body = ErrorBody),
        (status = 500, description = "`runtime_error` or `store_error`", body = ErrorBody),
        (status = 503, description = "`shutting_down`, or `host_under_pressure`: the host is low on memory", body = ErrorBody),
    ))]
async fn create_sandbox(
    State(engine): State<Engine>,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<Sandbox>), ApiError> {
    let sandbox = engine.create(req).await?;
    Ok((StatusCode::CREATED, Json(sandbox)))
}

/// List sandboxes, oldest first.
///
/// Filter with any number of `metadata.KEY=VALUE` query parameters (all must match). Any
/// other query parameter is rejected.
#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes",
    params(("metadata.KEY" = Option<String>, Query,
        description = "Repeatable: only sandboxes whose metadata has KEY=VALUE, e.g. `?metadata.owner=alice&metadata.task=42`")),
    responses(
        (status = 200, description = "Matching sandboxes", body = Vec<Sandbox>),
        (status = 400, description = "`invalid_request`: unknown query parameter", body = ErrorBody),
    ))]
async fn list_sandboxes(
    State(engine): State<Engine>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Sandbox>>, ApiError> {
    let filter = parse_metadata_filter(query.as_deref().unwrap_or(""))?;
    Ok(Json(engine.list(&filter).await?))
}

fn parse_metadata_filter(query: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let mut filter = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let Some(meta_key) = key.strip_prefix("metadata.") else {
            return Err(ApiError::invalid_request(format!(
                "unknown query parameter `{key}` (only `metadata.KEY=VALUE` filters are supported)"
            )));
        };
        if meta_key.is_empty() {
            return Err(ApiError::invalid_request(
                "empty metadata key in filter `metadata.=...`",
            ));
        }
        if let Some(previous) = filter.insert(meta_key.to_string(), value.to_string()) {
            if previous != value {
                return Err(ApiError::invalid_request(format!(
                    "conflicting filters for metadata key `{meta_key}`"
                )));
            }
        }
    }
    Ok(filter)
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The sandbox", body = Sandbox),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
    ))]
async fn get_sandbox(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.get(&id).await?))
}

/// Delete a sandbox: kill everything in it and remove it.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 500, description = "`runtime_error` or `store_error`", body = ErrorBody),
    ))]
async fn delete_sandbox(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
) -> Result<StatusCode, ApiError> {
    engine.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Set a sandbox's remaining lifetime, counted from now.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/timeout", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = SetTimeoutRequest,
    responses(
        (status = 200, description = "The sandbox with its new `expires_at`", body = Sandbox),
        (status = 400, description = "`invalid_request`: e.g. above the server's maximum", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`", body = ErrorBody),
    ))]
async fn set_timeout(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<SetTimeoutRequest>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.set_timeout(&id, req.timeout_secs).await?))
}

/// Change a sandbox's metadata: each key given is set, or removed when its value is `null`;
/// keys not given are kept. The result must still be valid metadata (or nothing changes).
#[utoipa::path(patch, path = "/v1/sandboxes/{id}/metadata", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body(content = BTreeMap<String, Option<String>>, description = "Keys to set (a string) or remove (`null`)"),
    responses(
        (status = 200, description = "The sandbox with its new metadata", body = Sandbox),
        (status = 400, description = "`invalid_request`: e.g. too many keys, or one too long", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
    ))]
async fn update_metadata(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(patch): ApiJson<BTreeMap<String, Option<String>>>,
) -> Result<Json<Sandbox>, ApiError> {
    Ok(Json(engine.update_metadata(&id, &patch).await?))
}

async fn not_found() -> ApiError {
    ApiError::new(warren_api::ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(
        warren_api::ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

#[cfg(test)]
mod tests;
