//! E2B's API served by Warren.
//!
//! [`router`] answers, on Warren's main listener:
//! - E2B's control plane (`POST /v2/sandboxes`, `GET /v2/sandboxes`, `/sandboxes/{id}/...`,
//!   `/snapshots`, `/templates/{id}`), which the `e2b` SDKs reach with `E2B_API_URL`; the
//!   key is E2B's header `X-API-KEY`; errors leave in E2B's shape,
//!   `{"code": <HTTP status>, "message": "..."}` (the SDK's generated client fails on any
//!   other shape);
//! - envd, the in-sandbox API (processes, terminals, files, watches over Connect RPC and
//!   `/files`), which the SDKs reach with `E2B_SANDBOX_URL` and route by the
//!   `E2b-Sandbox-Id` header; it opens with the sandbox's access token ([`envd`]).
//!
//! Every request is translated onto Warren's [`Engine`]; no E2B type reaches the engine or
//! the runtime, and nothing E2B-specific runs inside the sandbox.

mod control;
mod envd;
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
    /// envd's polled file watchers.
    pub watchers: envd::Watchers,
    /// envs and cwd of started processes, for envd's `List`.
    pub configs: envd::Configs,
    /// Sandboxes' account names, for envd's entry info.
    pub names: envd::NamesCache,
    /// Signs sandbox tokens when the daemon has no keys (tokens then only route signed
    /// file URLs; envd checks none).
    pub secret: Arc<[u8; 32]>,
}

impl E2b {
    /// Sandbox `id`'s envd access token: the daemon's per-sandbox token, or one this
    /// process signs when the daemon has no keys.
    pub fn token(&self, id: &str) -> String {
        use hmac::{KeyInit, Mac};
        if let Some(g) = &self.opts.gate {
            return g.token_for(id);
        }
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.secret[..]);
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new(&block.into());
        mac.update(b"warren e2b envd token\0");
        mac.update(id.as_bytes());
        let bytes = mac.finalize().into_bytes();
        format!(
            "wet_{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }
}

/// Equal strings, compared in time that does not depend on where they differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// `n` random bytes in hex.
pub(crate) fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) type IdempotentSlot = Arc<tokio::sync::Mutex<Option<String>>>;

/// The paths this surface owns on the shared listener (it checks their credentials).
pub fn owns(path: &str) -> bool {
    envd::owns(path)
        || path.starts_with("/v2/sandboxes")
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
        watchers: envd::Watchers::default(),
        configs: envd::Configs::default(),
        names: envd::NamesCache::default(),
        secret: Arc::new({
            use rand::RngCore;
            let mut k = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut k);
            k
        }),
    };
    control::routes()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .merge(envd::routes())
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
