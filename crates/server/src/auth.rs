//! API keys: who may use the API.
//!
//! A key is `wk_<id>_<secret>`: `id` (12 hex digits) names it, `secret` (32 random bytes,
//! hex) proves it. The key file (`warren serve --api-keys FILE`, managed with `warren key
//! create|ls|rm`) keeps each key's id, name, creation time and the SHA-256 of its secret,
//! never the secret itself: a secret of 256 random bits needs no slow hash, and a leaked
//! file lets nobody in. The daemon reads the file at start and again whenever it changes
//! (polled every second), so a removed key stops working within a second.
//!
//! Every route but `/healthz` requires `Authorization: Bearer <key>` once keys are
//! configured; a missing or unknown key is 401 `unauthorized`. A daemon with no key file
//! serves loopback only (`warren serve` refuses a non-loopback `--listen` without one).
//!
//! The data plane has tokens of its own: a sandbox's reverse proxy
//! (`/v1/sandboxes/{id}/proxy/…`) also opens with that sandbox's token ([`SandboxTokens`]:
//! an HMAC of its id under a key kept in the data dir), sent as `X-Warren-Token` or as the
//! query parameter `warren_token` (removed before the request goes on). A token opens its
//! own sandbox's proxy and nothing else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warren_api::ErrorCode;

use crate::error::ApiError;

/// Prefix of every key.
pub const KEY_PREFIX: &str = "wk_";

/// Everything that can go wrong with the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a key file: {source}")]
    Format {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no key {0:?} (by id or name)")]
    NotFound(String),
    #[error("a key named {0:?} exists already")]
    Exists(String),
}

/// One key as the file keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeyFileData {
    keys: Vec<KeyRecord>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyFileError + '_ {
    move |source| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest_hex(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// `(id, secret)` of a presented key, if it has the shape of one.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

/// Equal without an early exit (the time taken says nothing about where they differ).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The key file, read and written whole (small: one line per key).
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn new(path: impl Into<PathBuf>) -> KeyFile {
        KeyFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its keys; a file that does not exist has none.
    pub fn load(&self) -> Result<Vec<KeyRecord>, KeyFileError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.path)(e)),
        };
        let data: KeyFileData =
            serde_json::from_slice(&bytes).map_err(|source| KeyFileError::Format {
                path: self.path.clone(),
                source,
            })?;
        Ok(data.keys)
    }

    fn store(&self, keys: Vec<KeyRecord>) -> Result<(), KeyFileError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let json = serde_json::to_vec_pretty(&KeyFileData { keys }).map_err(|source| {
            KeyFileError::Format {
                path: self.path.clone(),
                source,
            }
        })?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&json)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(io_err(&self.path))
    }

    /// Make a key named `name`; returns its record and the key itself (shown once: the file
    /// keeps only its digest).
    pub fn create(&self, name: &str) -> Result<(KeyRecord, String), KeyFileError> {
        let mut keys = self.load()?;
        if keys.iter().any(|k| k.name == name) {
            return Err(KeyFileError::Exists(name.to_string()));
        }
        let id = format!("{:012x}", rand::random::<u64>() >> 16);
        let secret: String = (0..4)
            .map(|_| format!("{:016x}", rand::random::<u64>()))
            .collect();
        let record = KeyRecord {
            id: id.clone(),
            name: name.to_string(),
            created_at: Utc::now(),
            sha256: digest_hex(&secret),
        };
        keys.push(record.clone());
        self.store(keys)?;
        Ok((record, format!("{KEY_PREFIX}{id}_{secret}")))
    }

    /// Remove the key whose id or name is `which`.
    pub fn remove(&self, which: &str) -> Result<KeyRecord, KeyFileError> {
        let mut keys = self.load()?;
        let i = keys
            .iter()
            .position(|k| k.id == which || k.name == which)
            .ok_or_else(|| KeyFileError::NotFound(which.to_string()))?;
        let gone = keys.remove(i);
        self.store(keys)?;
        Ok(gone)
    }
}

/// The keys a daemon accepts, kept in step with the key file.
#[derive(Clone)]
pub struct ApiKeys {
    /// Secret digests by key id.
    keys: Arc<RwLock<HashMap<String, String>>>,
}

impl ApiKeys {
    /// The keys of `file` now, and a task that reloads them whenever the file changes (a
    /// file that turns unreadable keeps the keys last read, and says so in the log).
    pub fn watch(file: KeyFile) -> Result<ApiKeys, KeyFileError> {
        let keys = ApiKeys {
            keys: Arc::new(RwLock::new(Self::index(file.load()?))),
        };
        let this = keys.clone();
        tokio::spawn(async move {
            let stamp = |m: std::io::Result<std::fs::Metadata>| {
                m.ok().map(|m| (m.modified().ok(), m.len()))
            };
            let mut seen: Option<(Option<SystemTime>, u64)> =
                stamp(tokio::fs::metadata(file.path()).await);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = stamp(tokio::fs::metadata(file.path()).await);
                if now == seen {
                    continue;
                }
                seen = now;
                let path = file.path().to_path_buf();
                let loaded = tokio::task::spawn_blocking(move || KeyFile::new(path).load()).await;
                match loaded {
                    Ok(Ok(records)) => {
                        tracing::info!(keys = records.len(), "API keys reloaded");
                        this.replace(Self::index(records));
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "API keys not reloaded"),
                    Err(e) => tracing::error!(error = %e, "API key reload failed"),
                }
            }
        });
        Ok(keys)
    }

    /// Fixed keys (tests).
    pub fn fixed(records: Vec<KeyRecord>) -> ApiKeys {
        ApiKeys {
            keys: Arc::new(RwLock::new(Self::index(records))),
        }
    }

    fn index(records: Vec<KeyRecord>) -> HashMap<String, String> {
        records.into_iter().map(|k| (k.id, k.sha256)).collect()
    }

    fn replace(&self, keys: HashMap<String, String>) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
    }

    /// Whether `key` is one of them.
    pub fn accepts(&self, key: &str) -> bool {
        let Some((id, secret)) = split_key(key) else {
            return false;
        };
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.get(id)
            .is_some_and(|want| same(want.as_bytes(), digest_hex(secret).as_bytes()))
    }
}

/// Header that carries a sandbox token.
pub const TOKEN_HEADER: &str = "x-warren-token";
/// Query parameter that carries a sandbox token (for clients that cannot set headers).
pub const TOKEN_PARAM: &str = "warren_token";

/// Per-sandbox tokens: `wst_` + hex HMAC-SHA256 of the sandbox id under a 32-byte key kept
/// at `<data-dir>/access.key` (made once, mode 0600), so a token outlives a daemon restart
/// and needs no storage.
#[derive(Clone)]
pub struct SandboxTokens {
    key: Arc<[u8; 32]>,
}

impl SandboxTokens {
    /// The tokens of the key at `path`, which is made if missing.
    pub fn open(path: &Path) -> Result<SandboxTokens, KeyFileError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        match std::fs::read(path) {
            Ok(b) if b.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&b);
                return Ok(SandboxTokens { key: Arc::new(key) });
            }
            Ok(_) => {
                return Err(KeyFileError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "not a 32-byte key",
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
        let key: [u8; 32] = rand::random();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| {
                f.write_all(&key)?;
                f.sync_all()
            })
            .map_err(io_err(path))?;
        Ok(SandboxTokens { key: Arc::new(key) })
    }

    fn mac(&self, parts: &[&[u8]]) -> String {
        // A key shorter than the block is zero-padded by HMAC itself: the same MAC.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(&self.key[..]);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&block.into());
        for p in parts {
            mac.update(p);
        }
        hex(&mac.finalize().into_bytes())
    }

    /// Sandbox `id`'s token.
    pub fn token_for(&self, id: &str) -> String {
        format!(
            "wst_{}",
            self.mac(&[b"warren sandbox token\0", id.as_bytes()])
        )
    }

    /// A token that opens sandbox `id`'s port `port` through the reverse proxy until
    /// `expires` (Unix seconds): `EXPIRES.MAC`, carried in the URL as the path segment
    /// `~EXPIRES.MAC` after the port (a link that needs no header).
    pub fn route_token(&self, id: &str, port: u16, expires: i64) -> String {
        let mac = self.mac(&[
            b"warren route token\0",
            id.as_bytes(),
            b"\0",
            port.to_string().as_bytes(),
            b"\0",
            expires.to_string().as_bytes(),
        ]);
        format!("{expires}.{mac}")
    }

    /// Whether `token` is [`SandboxTokens::route_token`]'s for `id` and `port`, not expired.
    fn accepts_route(&self, id: &str, port: u16, token: &str) -> bool {
        let Some(expires) = token.split('.').next().and_then(|e| e.parse::<i64>().ok()) else {
            return false;
        };
        expires >= chrono::Utc::now().timestamp()
            && same(
                self.route_token(id, port, expires).as_bytes(),
                token.as_bytes(),
            )
    }

    fn accepts(&self, id: &str, token: &str) -> bool {
        same(self.token_for(id).as_bytes(), token.as_bytes())
    }
}

/// What the API requires: API keys, and the tokens that open one sandbox's data plane.
#[derive(Clone)]
pub struct Auth {
    pub keys: ApiKeys,
    pub tokens: SandboxTokens,
}

impl warren_api::Gate for Auth {
    fn accepts_key(&self, key: &str) -> bool {
        self.keys.accepts(key)
    }

    fn token_for(&self, id: &str) -> String {
        self.tokens.token_for(id)
    }

    fn route_token(&self, id: &str, port: u16, expires: i64) -> String {
        self.tokens.route_token(id, port, expires)
    }
}

/// A signed proxy path, `/v1/sandboxes/{id}/proxy/{port}/~{token}[/rest]`: the sandbox,
/// the port, the token, and the path without the token segment.
fn signed_route(path: &str) -> Option<(&str, u16, &str, String)> {
    let rest = path.strip_prefix("/v1/sandboxes/")?;
    let (id, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("proxy/")?;
    let (port, rest) = rest.split_once('/')?;
    let (token, tail) = match rest.split_once('/') {
        Some((t, tail)) => (t, Some(tail)),
        None => (rest, None),
    };
    let token = token.strip_prefix('~')?;
    let port = port.parse().ok()?;
    let stripped = match tail {
        Some(tail) => format!("/v1/sandboxes/{id}/proxy/{port}/{tail}"),
        None => format!("/v1/sandboxes/{id}/proxy/{port}"),
    };
    Some((id, port, token, stripped))
}

/// Point `req` at `path` (its query kept).
fn set_path(req: &mut Request, path: &str) {
    let pq = match req.uri().query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = pq.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The sandbox id of a reverse-proxy path (`/v1/sandboxes/{id}/proxy/...`).
fn proxied_sandbox(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1/sandboxes/")?;
    let (id, rest) = rest.split_once('/')?;
    (rest == "proxy" || rest.starts_with("proxy/")).then_some(id)
}

/// The query without `warren_token` (the service inside never sees the token).
fn strip_token_param(req: &mut Request) {
    let Some(query) = req.uri().query() else {
        return;
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| p.split('=').next() != Some(TOKEN_PARAM))
        .collect();
    let path_and_query = if kept.is_empty() {
        req.uri().path().to_string()
    } else {
        format!("{}?{}", req.uri().path(), kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// The middleware: with keys configured, every route but `/healthz` needs one; a sandbox's
/// reverse proxy also opens with that sandbox's token.
pub(crate) async fn require_key(
    State(auth): State<Option<Auth>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(auth) = auth else {
        return next.run(req).await;
    };
    // The other surfaces (OpenSandbox's, E2B's) check their own headers and answer in
    // their own shapes.
    let path = req.uri().path();
    if path == "/healthz"
        || warren_e2b::owns(path)
        || path
            .strip_prefix(crate::OPENSANDBOX_PREFIX)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    {
        return next.run(req).await;
    }
    if let Some((id, port, token, stripped)) = signed_route(req.uri().path()) {
        if auth.tokens.accepts_route(id, port, token) {
            set_path(&mut req, &stripped);
            return next.run(req).await;
        }
        return unauthorized("the signed link is not valid for this port, or has expired");
    }
    let presented = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let Some(key) = presented {
        if auth.keys.accepts(key) {
            strip_token_param(&mut req);
            return next.run(req).await;
        }
    }
    if let Some(id) = proxied_sandbox(req.uri().path()).map(str::to_string) {
        let header = req
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let param = req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == TOKEN_PARAM)
                .map(|(_, v)| v.into_owned())
        });
        if let Some(token) = header.or(param) {
            if auth.tokens.accepts(&id, &token) {
                strip_token_param(&mut req);
                return next.run(req).await;
            }
            return unauthorized("the sandbox token does not open this sandbox");
        }
    }
    match presented {
        Some(_) => unauthorized("the API key is not valid (revoked, or never issued)"),
        None => unauthorized("an API key is required: Authorization: Bearer <key>"),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(ErrorCode::Unauthorized, message).into_response();
    resp.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_kept_as_digests_checked_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = KeyFile::new(dir.path().join("keys.json"));
        assert!(file.load().unwrap().is_empty());
        let (rec, key) = file.create("ci").unwrap();
        assert!(key.starts_with("wk_"), "{key}");
        assert!(matches!(file.create("ci"), Err(KeyFileError::Exists(_))));
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            !text.contains(key.rsplit('_').next().unwrap()),
            "the secret is not kept"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let keys = ApiKeys::fixed(file.load().unwrap());
        assert!(keys.accepts(&key));
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('0') { '1' } else { '0' });
        for bad in [wrong.as_str(), "", "wk_", "Bearer x", &key[..key.len() - 1]] {
            assert!(!keys.accepts(bad), "{bad}");
        }
        assert_eq!(file.remove(&rec.id).unwrap().name, "ci");
        assert!(matches!(file.remove("ci"), Err(KeyFileError::NotFound(_))));
        assert!(!ApiKeys::fixed(file.load().unwrap()).accepts(&key));
    }
}
