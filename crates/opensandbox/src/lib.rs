//! OpenSandbox's APIs served by Warren.
//!
//! [`router`] answers OpenSandbox's lifecycle API (`/v1/sandboxes`, `/v1/snapshots`, …) and,
//! at the endpoint it hands out for port 44772, OpenSandbox's in-sandbox execd API (commands
//! over SSE, background commands, bash sessions, files, metrics). Nothing runs in the
//! sandbox for it: each request is translated here onto Warren's [`Engine`] (execs, durable
//! processes, file operations), so no OpenSandbox type reaches the engine or the runtime.
//! The server mounts the router under a prefix (`/opensandbox`), which makes the SDK's
//! domain `HOST:PORT/opensandbox`.
//!
//! Errors leave in OpenSandbox's shape, `{"code": "...", "message": "..."}`, and every
//! answer carries the request's `x-request-id` (one is made when the client sent none).

mod envfile;
mod error;
mod execd;
mod files;
mod lifecycle;
mod model;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use warren_engine::Engine;

pub use error::OsError;
use error::OsResult;

/// Header of the lifecycle API's key.
pub const API_KEY_HEADER: &str = "open-sandbox-api-key";
/// Header of the per-sandbox token the execd endpoint requires.
pub const EXECD_TOKEN_HEADER: &str = "x-execd-access-token";
/// The port OpenSandbox's SDK asks an endpoint for to reach execd.
pub const EXECD_PORT: u16 = 44772;
/// The port of OpenSandbox's egress sidecar (Warren enforces egress itself).
pub const EGRESS_PORT: u16 = 18080;
/// Header that tells the SDK to manage egress through the lifecycle API.
const ORIGIN_HEADER: &str = "open-sandbox-origin";
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub use warren_api::Gate;

/// How the surface is set up.
#[derive(Clone, Default)]
pub struct Options {
    /// Where the server mounts [`router`] (`/opensandbox`): endpoints handed out include it.
    pub prefix: String,
    /// Image names a client may use for Warren images (`opensandbox/code-interpreter:latest`
    /// → `python`).
    pub image_aliases: BTreeMap<String, String>,
    pub gate: Option<Arc<dyn Gate>>,
}

#[derive(Clone)]
pub(crate) struct Os {
    pub engine: Engine,
    pub opts: Arc<Options>,
    pub commands: Arc<Mutex<execd::Foreground>>,
    pub sessions: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// OpenSandbox's lifecycle API under `/v1` and execd under `/execd/{sandbox}`.
pub fn router(engine: Engine, opts: Options) -> Router {
    let os = Os {
        engine,
        opts: Arc::new(opts),
        commands: Arc::default(),
        sessions: Arc::default(),
    };
    Router::new()
        .merge(lifecycle::routes())
        .merge(execd::routes())
        .merge(files::routes())
        .merge(sessions::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(os.clone(), authorize))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(os)
}

async fn not_found(req: Request) -> OsError {
    OsError::not_found(format!(
        "no OpenSandbox route {} {}",
        req.method(),
        req.uri().path()
    ))
}

/// Echo the client's `x-request-id`, or make one, on every answer.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:032x}", rand::random::<u128>()))
                .unwrap_or_else(|_| HeaderValue::from_static("warren"))
        });
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The lifecycle API takes `OPEN-SANDBOX-API-KEY` (or `Authorization: Bearer`); an execd
/// endpoint takes its sandbox's token in `X-EXECD-ACCESS-TOKEN`, or an API key (the SDK's
/// server-proxy mode sends it).
async fn authorize(State(os): State<Os>, req: Request, next: Next) -> Response {
    let Some(gate) = os.opts.gate.clone() else {
        return next.run(req).await;
    };
    let key = header(&req, API_KEY_HEADER).or_else(|| {
        header(&req, "authorization").and_then(|v| v.strip_prefix("Bearer ").map(str::trim))
    });
    if key.is_some_and(|k| gate.accepts_key(k)) {
        return next.run(req).await;
    }
    if let Some(sandbox) = execd::sandbox_of(req.uri().path()) {
        if let Some(token) = header(&req, EXECD_TOKEN_HEADER) {
            let want = gate.token_for(sandbox);
            if constant_eq(want.as_bytes(), token.as_bytes()) {
                return next.run(req).await;
            }
            return OsError::forbidden("the access token does not open this sandbox")
                .into_response();
        }
        if key.is_none() {
            return OsError::unauthorized(
                "this endpoint needs its X-EXECD-ACCESS-TOKEN (from the endpoint's headers)",
            )
            .into_response();
        }
    }
    match key {
        Some(_) => OsError::unauthorized("the API key is not valid").into_response(),
        None => {
            OsError::unauthorized("an API key is required: OPEN-SANDBOX-API-KEY").into_response()
        }
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The whole of a small file (`None` when missing), in OpenSandbox's error shape.
pub(crate) async fn read_small(
    os: &Os,
    sid: &str,
    path: &str,
    cap: u64,
) -> OsResult<Option<Vec<u8>>> {
    Ok(os.engine.read_small(sid, path, cap).await?)
}

/// Milliseconds since the epoch, as OpenSandbox's events carry them.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
