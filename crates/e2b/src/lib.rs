//! E2B's API served by Warren (first part: the control plane).
//!
//! [`router`] answers E2B's REST paths (`POST /v2/sandboxes`, `GET /v2/sandboxes`,
//! `/sandboxes/{id}/...`, `/snapshots`, `/templates/{id}`) on Warren's main listener, so the
//! `e2b` SDKs pointed at it with `E2B_API_URL` work unchanged. Every request is translated
//! onto Warren's [`Engine`]; no E2B type reaches the engine or the runtime. Errors leave in
//! E2B's shape, `{"code": <HTTP status>, "message": "..."}` (the SDK's generated client
//! fails on any other shape). The key is E2B's header `X-API-KEY`.
//!
//! Not yet here: envd (the in-sandbox Connect-RPC API for processes and files), which the
//! SDK reaches through `E2B_SANDBOX_URL`.

mod control;
mod error;
mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use warren_engine::Engine;

pub use error::E2bError;

/// The envd version Warren reports: high enough that the SDK enables every feature it
/// gates on a version.
pub const ENVD_VERSION: &str = "0.6.13";
/// What `clientID` says.
pub const CLIENT_ID: &str = "warren";

pub use warren_api::Gate;

#[derive(Clone, Default)]
pub struct Options {
    /// Template names a client may use for Warren images (`base` → `python`).
    pub image_aliases: BTreeMap<String, String>,
    pub gate: Option<Arc<dyn Gate>>,
}

#[derive(Clone)]
pub(crate) struct E2b {
    pub engine: Engine,
    pub opts: Arc<Options>,
    /// `Idempotency-Key` → the sandbox its create made (kept an hour), behind a lock its
    /// create holds.
    pub idempotent: Arc<tokio::sync::Mutex<HashMap<String, (IdempotentSlot, Instant)>>>,
}

pub(crate) type IdempotentSlot = Arc<tokio::sync::Mutex<Option<String>>>;

/// The paths this surface owns on the shared listener.
pub fn owns(path: &str) -> bool {
    path.starts_with("/v2/sandboxes")
        || path == "/sandboxes"
        || path.starts_with("/sandboxes/")
        || path == "/snapshots"
        || path.starts_with("/templates/")
}

pub fn router(engine: Engine, opts: Options) -> Router {
    let state = E2b {
        engine,
        opts: Arc::new(opts),
        idempotent: Arc::default(),
    };
    control::routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// The key a request presents: `X-API-KEY`, or `Authorization: Bearer`.
fn api_key(headers: &axum::http::HeaderMap) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    header("x-api-key")
        .or_else(|| header("authorization").and_then(|v| v.strip_prefix("Bearer ")))
        .map(|k| k.trim().to_string())
}

/// `X-API-KEY` (or `Authorization: Bearer`) must be one of the daemon's keys.
async fn authorize(State(s): State<E2b>, req: Request, next: Next) -> Response {
    let Some(gate) = s.opts.gate.clone() else {
        return next.run(req).await;
    };
    let key = api_key(req.headers());
    match key {
        Some(k) if gate.accepts_key(&k) => next.run(req).await,
        Some(_) => E2bError::new(401, "Invalid API key").into_response(),
        None => E2bError::new(401, "An API key is required: X-API-KEY").into_response(),
    }
}
