//! The [`Broker`]: registry of sandbox credentials, token derivation and
//! the per-connection HTTP server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::CountingBody;
use crate::credential::{mask_value, validate_set, Upstream};
use crate::key::hmac_sha256;
use crate::{BrokerError, Credential, MaskedCredential, SecretKey};

/// Default port of the broker's loopback forwarder inside sandboxes.
pub const DEFAULT_PORT: u16 = 4780;
/// Most credentials one sandbox may have.
pub const MAX_CREDENTIALS: usize = 64;
/// Longest accepted sandbox id, in bytes.
pub const MAX_SANDBOX_ID_LEN: usize = 256;
/// Prefix of every token.
pub const TOKEN_PREFIX: &str = "wrn_";

/// Settings of a [`Broker`].
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Port at which the broker is reached from inside a sandbox
    /// (`http://127.0.0.1:<port>`); only used to build the base URLs that
    /// [`Broker::register`] returns.
    pub port: u16,
    /// Timeout for establishing a TCP connection to an upstream
    /// (default 10 s). A timeout is answered with 504.
    pub connect_timeout: Duration,
    /// Timeout from sending a request upstream until its response headers
    /// arrive; `None` (the default) waits as long as the client does.
    /// Response bodies (streams) never time out. A timeout is answered
    /// with 504.
    pub response_timeout: Option<Duration>,
    /// How long an idle pooled upstream connection is kept (default 90 s).
    pub pool_idle_timeout: Duration,
    /// How long a sandbox client may take to send a request's headers
    /// (default 30 s).
    pub header_read_timeout: Duration,
    /// `User-Agent` sent upstream when the sandbox's client sent none
    /// (default none: the header is then simply absent).
    pub user_agent: Option<String>,
    /// Offer HTTP/2 (ALPN) to https upstreams (default true); HTTP/1.1 is
    /// always available.
    pub http2: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            port: DEFAULT_PORT,
            connect_timeout: Duration::from_secs(10),
            response_timeout: None,
            pool_idle_timeout: Duration::from_secs(90),
            header_read_timeout: Duration::from_secs(30),
            user_agent: None,
            http2: true,
        }
    }
}

/// Usage of one credential of one sandbox since it was first registered
/// (counters survive re-registration with new tokens, and are dropped by
/// [`Broker::unregister`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Position of the credential.
    pub index: usize,
    /// Its upstream URL.
    pub upstream: String,
    /// Requests forwarded upstream.
    pub requests: u64,
    /// Requests refused by the broker for this credential (missing,
    /// unknown or foreign token).
    pub rejected: u64,
    /// Forwarded requests that got no upstream response (502 or 504).
    pub upstream_errors: u64,
    /// Upstream responses with a 1xx status.
    pub status_1xx: u64,
    /// Upstream responses with a 2xx status.
    pub status_2xx: u64,
    /// Upstream responses with a 3xx status.
    pub status_3xx: u64,
    /// Upstream responses with a 4xx status.
    pub status_4xx: u64,
    /// Upstream responses with a 5xx status.
    pub status_5xx: u64,
    /// Request body bytes sent upstream.
    pub bytes_up: u64,
    /// Response body bytes sent back to the sandbox.
    pub bytes_down: u64,
}

/// Live counters behind a [`Usage`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub status: [AtomicU64; 5],
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

impl Counters {
    /// Count an upstream response status.
    pub(crate) fn count_status(&self, status: u16) {
        let class = usize::from(status / 100);
        if (1..=5).contains(&class) {
            self.status[class - 1].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One registered credential, ready for the proxy.
pub(crate) struct CredEntry {
    pub index: usize,
    pub upstream: Upstream,
    pub upstream_url: String,
    pub header: HeaderName,
    /// The real value, marked sensitive.
    pub value: HeaderValue,
    /// Raw real value (for the `<scheme> <value>` form and scrubbing).
    pub raw_value: String,
    pub value_has_space: bool,
    /// This credential's token.
    pub token: String,
    pub counters: Arc<Counters>,
    cred: Credential,
}

/// One registered sandbox.
struct SandboxEntry {
    creds: Vec<Arc<CredEntry>>,
    /// All tokens of the sandbox, for scrubbing extra headers.
    tokens: Arc<[String]>,
}

/// Who a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pub sandbox: Arc<str>,
    pub index: usize,
}

#[derive(Default)]
struct State {
    sandboxes: HashMap<String, SandboxEntry>,
    /// SHA-256 of every live token → its owner. Hashing keeps the lookup
    /// from comparing secret bytes in variable time.
    tokens: HashMap<[u8; 32], Owner>,
}

pub(crate) type UpstreamClient =
    Client<HttpsConnector<HttpConnector>, CountingBody<hyper::body::Incoming>>;

/// Shared state of a [`Broker`].
pub(crate) struct Inner {
    token_key: [u8; 32],
    pub cfg: BrokerConfig,
    pub user_agent: Option<HeaderValue>,
    pub client: UpstreamClient,
    state: RwLock<State>,
}

/// The credential broker. Cheap to clone; all clones share one registry
/// and one upstream connection pool.
#[derive(Clone)]
pub struct Broker {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("cfg", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a token, the key of the token index.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    out
}

/// Compare two byte strings in time independent of their contents.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn check_sandbox_id(sandbox: &str) -> Result<(), BrokerError> {
    if sandbox.is_empty() {
        return Err(BrokerError::InvalidSandbox("empty".to_string()));
    }
    if sandbox.len() > MAX_SANDBOX_ID_LEN {
        return Err(BrokerError::InvalidSandbox(format!(
            "longer than {MAX_SANDBOX_ID_LEN} bytes"
        )));
    }
    if sandbox.contains('\0') {
        return Err(BrokerError::InvalidSandbox("contains NUL".to_string()));
    }
    Ok(())
}

fn build_client(cfg: &BrokerConfig) -> Result<UpstreamClient, BrokerError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    // ring builds much faster here than aws-lc-rs (no CMake, small C
    // part). rustls 0.23.48 deprecated ring's provider because it lacks
    // post-quantum key exchange; classical X25519/ECDHE is what we get.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(provider)
        .map_err(|e| BrokerError::Tls(e.to_string()))?
        .https_or_http()
        .enable_http1();
    let https = if cfg.http2 {
        builder.enable_http2().wrap_connector(http)
    } else {
        builder.wrap_connector(http)
    };
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https))
}

impl Broker {
    /// A broker with master key `key` (only its token subkey is kept) and
    /// settings `cfg`.
    ///
    /// Fails only if the configuration is unusable (port 0, a `user_agent`
    /// that is not a valid header value) or TLS cannot be set up.
    pub fn new(key: SecretKey, cfg: BrokerConfig) -> Result<Broker, BrokerError> {
        if cfg.port == 0 {
            return Err(BrokerError::InvalidConfig("port must not be 0".to_string()));
        }
        let user_agent = match &cfg.user_agent {
            Some(ua) => Some(HeaderValue::from_str(ua).map_err(|_| {
                BrokerError::InvalidConfig("user_agent is not a valid header value".to_string())
            })?),
            None => None,
        };
        let client = build_client(&cfg)?;
        Ok(Broker {
            inner: Arc::new(Inner {
                token_key: key.token_key(),
                cfg,
                user_agent,
                client,
                state: RwLock::new(State::default()),
            }),
        })
    }

    /// The configuration this broker was made with.
    pub fn config(&self) -> &BrokerConfig {
        &self.inner.cfg
    }

    /// Register (or replace) the credentials of `sandbox`.
    ///
    /// `generation` selects the token set: the same key, sandbox, index and
    /// generation always give the same token, so the daemon can re-register
    /// after a restart from its store, and bumps the generation to rotate
    /// tokens (after a fork or a snapshot restore, say). Replacing a
    /// registration revokes the old tokens at once.
    ///
    /// Returns the environment to inject into the sandbox's commands: for
    /// credential `i`, `base_url_env = http://127.0.0.1:<port>/c/<i>` and
    /// `token_env = <token>`, in credential order. The token of credential
    /// `i` is `wrn_` + base64url (no padding) of HMAC-SHA256 under the
    /// key's token subkey of `"broker-token\0" + sandbox + "\0" + i + "\0" +
    /// generation` (numbers in decimal).
    pub fn register(
        &self,
        sandbox: &str,
        generation: u64,
        creds: Vec<Credential>,
    ) -> Result<Vec<(String, String)>, BrokerError> {
        check_sandbox_id(sandbox)?;
        if creds.len() > MAX_CREDENTIALS {
            return Err(BrokerError::InvalidCredential {
                index: MAX_CREDENTIALS,
                reason: format!("at most {MAX_CREDENTIALS} credentials per sandbox"),
            });
        }
        validate_set(&creds)?;
        let sandbox_arc: Arc<str> = Arc::from(sandbox);
        let mut prepared = Vec::with_capacity(creds.len());
        let mut env = Vec::with_capacity(creds.len() * 2);
        for (index, cred) in creds.into_iter().enumerate() {
            let invalid = |reason: String| BrokerError::InvalidCredential { index, reason };
            let upstream = Upstream::parse(&cred.upstream).map_err(invalid)?;
            let header = HeaderName::from_bytes(cred.header.as_bytes())
                .map_err(|_| invalid("header is not a valid HTTP header name".to_string()))?;
            let mut value = HeaderValue::from_str(&cred.value)
                .map_err(|_| invalid("value is not a valid HTTP header value".to_string()))?;
            value.set_sensitive(true);
            let token = self.token(sandbox, index, generation);
            // The same as `env` gives later.
            env.push((
                cred.base_url_env.clone(),
                format!("http://127.0.0.1:{}/c/{index}", self.inner.cfg.port),
            ));
            env.push((cred.token_env.clone(), token.clone()));
            prepared.push((upstream, header, value, token, cred));
        }

        let mut state = self.write();
        let old = state.sandboxes.remove(sandbox);
        if let Some(old) = &old {
            for t in old.tokens.iter() {
                state.tokens.remove(&token_hash(t));
            }
        }
        let mut creds = Vec::with_capacity(prepared.len());
        let mut tokens = Vec::with_capacity(prepared.len());
        for (index, (upstream, header, value, token, cred)) in prepared.into_iter().enumerate() {
            let counters = old
                .as_ref()
                .and_then(|o| o.creds.get(index))
                .map(|c| c.counters.clone())
                .unwrap_or_default();
            state.tokens.insert(
                token_hash(&token),
                Owner {
                    sandbox: sandbox_arc.clone(),
                    index,
                },
            );
            tokens.push(token.clone());
            creds.push(Arc::new(CredEntry {
                index,
                upstream,
                upstream_url: cred.upstream.clone(),
                header,
                value,
                raw_value: cred.value.clone(),
                value_has_space: cred.value.contains(' '),
                token,
                counters,
                cred,
            }));
        }
        state.sandboxes.insert(
            sandbox.to_string(),
            SandboxEntry {
                creds,
                tokens: tokens.into(),
            },
        );
        drop(state);
        tracing::info!(
            sandbox,
            generation,
            credentials = env.len() / 2,
            "broker: sandbox registered"
        );
        Ok(env)
    }

    /// Forget `sandbox`: its tokens stop working at once (requests already
    /// being forwarded run to completion) and its usage counters go.
    pub fn unregister(&self, sandbox: &str) {
        let mut state = self.write();
        if let Some(old) = state.sandboxes.remove(sandbox) {
            for t in old.tokens.iter() {
                state.tokens.remove(&token_hash(t));
            }
            drop(state);
            tracing::info!(sandbox, "broker: sandbox unregistered");
        }
    }

    /// The credentials of `sandbox` as they may be shown (value masked);
    /// empty if the sandbox is not registered.
    pub fn masked(&self, sandbox: &str) -> Vec<MaskedCredential> {
        let state = self.read();
        let Some(entry) = state.sandboxes.get(sandbox) else {
            return Vec::new();
        };
        entry
            .creds
            .iter()
            .map(|c| MaskedCredential {
                index: c.index,
                upstream: c.cred.upstream.clone(),
                header: c.cred.header.clone(),
                value: mask_value(&c.cred.value),
                base_url_env: c.cred.base_url_env.clone(),
                token_env: c.cred.token_env.clone(),
            })
            .collect()
    }

    /// The environment [`Broker::register`] returned for `sandbox` (its current tokens);
    /// empty if the sandbox is not registered.
    pub fn env(&self, sandbox: &str) -> Vec<(String, String)> {
        let state = self.read();
        let Some(entry) = state.sandboxes.get(sandbox) else {
            return Vec::new();
        };
        let port = self.inner.cfg.port;
        entry
            .creds
            .iter()
            .flat_map(|c| {
                [
                    (
                        c.cred.base_url_env.clone(),
                        format!("http://127.0.0.1:{port}/c/{}", c.index),
                    ),
                    (c.cred.token_env.clone(), c.token.clone()),
                ]
            })
            .collect()
    }

    /// Usage counters of `sandbox`'s credentials; empty if the sandbox is
    /// not registered.
    pub fn usage(&self, sandbox: &str) -> Vec<Usage> {
        let state = self.read();
        let Some(entry) = state.sandboxes.get(sandbox) else {
            return Vec::new();
        };
        entry
            .creds
            .iter()
            .map(|c| {
                let k = &c.counters;
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                Usage {
                    index: c.index,
                    upstream: c.upstream_url.clone(),
                    requests: get(&k.requests),
                    rejected: get(&k.rejected),
                    upstream_errors: get(&k.upstream_errors),
                    status_1xx: get(&k.status[0]),
                    status_2xx: get(&k.status[1]),
                    status_3xx: get(&k.status[2]),
                    status_4xx: get(&k.status[3]),
                    status_5xx: get(&k.status[4]),
                    bytes_up: get(&k.bytes_up),
                    bytes_down: get(&k.bytes_down),
                }
            })
            .collect()
    }

    /// Serve HTTP/1.1 on one connection that is known to come from
    /// `sandbox`, until it closes. The caller is responsible for that
    /// attribution (a per-sandbox socket); the broker never trusts anything
    /// the client says about where it is.
    pub async fn serve_connection<S>(&self, io: S, sandbox: &str)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let inner = self.inner.clone();
        let sandbox: Arc<str> = Arc::from(sandbox);
        let svc_sandbox = sandbox.clone();
        let service =
            service_fn(move |req| crate::proxy::handle(inner.clone(), svc_sandbox.clone(), req));
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.cfg.header_read_timeout)
            .serve_connection(TokioIo::new(io), service);
        if let Err(e) = conn.await {
            tracing::debug!(sandbox = &*sandbox, error = %e, "broker: connection ended with an error");
        }
    }

    /// The token of credential `index` of `sandbox` at `generation`:
    /// `wrn_` + base64url(HMAC-SHA256(token subkey,
    /// "broker-token\0" sandbox "\0" index "\0" generation)).
    fn token(&self, sandbox: &str, index: usize, generation: u64) -> String {
        let index = index.to_string();
        let generation = generation.to_string();
        let mac = hmac_sha256(
            &self.inner.token_key,
            &[
                b"broker-token\0",
                sandbox.as_bytes(),
                b"\0",
                index.as_bytes(),
                b"\0",
                generation.as_bytes(),
            ],
        );
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(mac))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.read()
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the proxy learns about a request's credential.
pub(crate) struct Route {
    pub entry: Arc<CredEntry>,
    pub sandbox_tokens: Arc<[String]>,
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Credential `index` of `sandbox`, if registered.
    pub(crate) fn route(&self, sandbox: &str, index: usize) -> Option<Route> {
        let state = self.read();
        let entry = state.sandboxes.get(sandbox)?;
        Some(Route {
            entry: entry.creds.get(index)?.clone(),
            sandbox_tokens: entry.tokens.clone(),
        })
    }

    /// Owner of a presented token, if it is live.
    pub(crate) fn owner(&self, token: &str) -> Option<Owner> {
        self.read().tokens.get(&token_hash(token)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_works() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn token_format() {
        let b = Broker::new(SecretKey::from_bytes([7; 32]), BrokerConfig::default()).unwrap();
        let t = b.token("sb", 0, 1);
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(t.len(), TOKEN_PREFIX.len() + 43);
        assert_ne!(t, b.token("sb", 1, 1));
        assert_ne!(t, b.token("sb", 0, 2));
        assert_ne!(t, b.token("sc", 0, 1));
        // The separators make (sandbox, index) unambiguous.
        assert_ne!(b.token("a1", 0, 0), b.token("a", 10, 0));
    }

    #[test]
    fn sandbox_ids_are_checked() {
        let b = Broker::new(SecretKey::from_bytes([7; 32]), BrokerConfig::default()).unwrap();
        assert!(b.register("", 0, vec![]).is_err());
        assert!(b.register("a\0b", 0, vec![]).is_err());
        assert!(b.register(&"x".repeat(257), 0, vec![]).is_err());
        assert!(b.register("ok", 0, vec![]).unwrap().is_empty());
    }

    #[test]
    fn env_repeats_what_register_returned() {
        let b = Broker::new(SecretKey::from_bytes([7; 32]), BrokerConfig::default()).unwrap();
        let cred = Credential {
            upstream: "https://api.example.com/v1".into(),
            header: "authorization".into(),
            value: "Bearer secret-value".into(),
            base_url_env: "X_BASE_URL".into(),
            token_env: "X_API_KEY".into(),
        };
        let env = b.register("sb-1", 0, vec![cred]).unwrap();
        assert_eq!(b.env("sb-1"), env);
        assert!(b.env("sb-2").is_empty());
        b.unregister("sb-1");
        assert!(b.env("sb-1").is_empty());
    }
}
