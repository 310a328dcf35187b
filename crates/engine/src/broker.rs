//! The credential broker in the engine: which sandboxes have credentials, how they are kept
//! (sealed under the daemon's key, see [`StoredCredentials`]), the environment their
//! commands get, and the per-sandbox task that carries connections from inside the sandbox
//! to the broker.
//!
//! The way in is the agent's [`Request::Accept`](warren_runtime::PendingAccept): the agent
//! listens on `127.0.0.1:4780` inside the sandbox (any network mode, `isolated` included)
//! and hands each connection to the host over the sandbox's own agent socket. A connection
//! that arrives that way can only come from that sandbox, so the broker attributes it
//! without trusting anything the sandbox says; a token of another sandbox is refused (403).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use warren_api::{CredentialRequest, SandboxCredential, SandboxState};
use warren_broker::{Broker, BrokerConfig, Credential, SecretKey, DEFAULT_PORT};

use crate::{sandbox_id, Engine, EngineError};

/// The broker's master key, in the data dir (0600, made on first start).
pub(crate) const KEY_FILE: &str = "broker.key";
/// Connections one sandbox may have open to the broker at once; more wait in the
/// listener's backlog inside the sandbox.
const MAX_CONNECTIONS: usize = 64;
/// How often the task of a sandbox that is not running looks again.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Back-off after the agent failed a listen or an accept.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long binding the listener may take before a create or start goes on without it (the
/// task binds it later).
const BIND_WITHIN: Duration = Duration::from_secs(2);

/// The broker, the key that seals credentials at rest, and the tasks feeding it.
pub(crate) struct Brokerage {
    broker: Broker,
    key: SecretKey,
    tasks: Mutex<HashMap<String, tokio::task::AbortHandle>>,
}

/// A sandbox's credentials as its record (and the store) keeps them: the list sealed under
/// the daemon's key (ChaCha20-Poly1305; the values never reach the store in plaintext) and
/// the masked view that responses show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredCredentials {
    pub sealed: String,
    pub shown: Vec<SandboxCredential>,
}

/// What is sealed: the credentials as they were asked for.
#[derive(Serialize, Deserialize)]
struct Plain {
    upstream: String,
    header: String,
    value: String,
    base_url_env: String,
    token_env: String,
}

fn to_credential(c: &CredentialRequest) -> Credential {
    Credential {
        upstream: c.upstream.clone(),
        header: c.header.clone(),
        value: c.value.clone(),
        base_url_env: c.base_url_env.clone(),
        token_env: c.token_env.clone(),
    }
}

fn no_broker() -> EngineError {
    EngineError::NetworkUnavailable(
        "this server has no credential broker (its runtime cannot carry connections from \
         inside a sandbox to it; see GET /v1/capabilities network.broker)"
            .into(),
    )
}

fn broker_err(e: warren_broker::BrokerError) -> EngineError {
    match e {
        warren_broker::BrokerError::InvalidCredential { .. } => {
            EngineError::InvalidRequest(format!("credentials: {e}"))
        }
        e => EngineError::Config(format!("credential broker: {e}")),
    }
}

impl Brokerage {
    /// The broker with the key of `data_dir` (made there, 0600, on first use).
    pub(crate) fn open(data_dir: &Path) -> Result<Brokerage, EngineError> {
        let key = SecretKey::load_or_create(data_dir.join(KEY_FILE)).map_err(broker_err)?;
        let broker = Broker::new(key.clone(), BrokerConfig::default()).map_err(broker_err)?;
        Ok(Brokerage {
            broker,
            key,
            tasks: Mutex::new(HashMap::new()),
        })
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, tokio::task::AbortHandle>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `creds` for sandbox `id` (checking them all) and seal them for its record.
    fn register(&self, id: &str, creds: Vec<Credential>) -> Result<StoredCredentials, EngineError> {
        let plain: Vec<Plain> = creds
            .iter()
            .map(|c| Plain {
                upstream: c.upstream.clone(),
                header: c.header.clone(),
                value: c.value.clone(),
                base_url_env: c.base_url_env.clone(),
                token_env: c.token_env.clone(),
            })
            .collect();
        // Tokens are derived from the sandbox id (and generation 0): a fork or a restore is
        // another sandbox and gets other tokens; a restarted daemon derives the same ones.
        self.broker.register(id, 0, creds).map_err(broker_err)?;
        let sealed = serde_json::to_vec(&plain)
            .map_err(|e| EngineError::Store(format!("sealing credentials: {e}")))
            .and_then(|json| self.key.seal(&json).map_err(broker_err));
        let sealed = match sealed {
            Ok(s) => s,
            Err(e) => {
                self.broker.unregister(id);
                return Err(e);
            }
        };
        let shown = self
            .broker
            .masked(id)
            .into_iter()
            .map(|m| SandboxCredential {
                upstream: m.upstream,
                header: m.header,
                value: m.value,
                base_url_env: m.base_url_env,
                token_env: m.token_env,
            })
            .collect();
        Ok(StoredCredentials { sealed, shown })
    }

    /// The credentials sealed in `stored`.
    fn open_sealed(&self, stored: &StoredCredentials) -> Result<Vec<Credential>, EngineError> {
        let json = self.key.open(&stored.sealed).map_err(broker_err)?;
        let plain: Vec<Plain> = serde_json::from_slice(&json)
            .map_err(|e| EngineError::Store(format!("sealed credentials: {e}")))?;
        Ok(plain
            .into_iter()
            .map(|p| Credential {
                upstream: p.upstream,
                header: p.header,
                value: p.value,
                base_url_env: p.base_url_env,
                token_env: p.token_env,
            })
            .collect())
    }
}

impl Engine {
    fn brokerage(&self) -> Option<&Brokerage> {
        self.inner.broker.as_ref()
    }

    /// Whether sandboxes here can have credentials.
    pub(crate) fn broker_available(&self) -> bool {
        self.brokerage().is_some()
    }

    /// Check `reqs` without registering anything (a claim checks before it picks).
    pub(crate) fn check_credentials(&self, reqs: &[CredentialRequest]) -> Result<(), EngineError> {
        if reqs.is_empty() {
            return Ok(());
        }
        if !self.broker_available() {
            return Err(no_broker());
        }
        let creds: Vec<Credential> = reqs.iter().map(to_credential).collect();
        warren_broker::validate_set(&creds).map_err(broker_err)
    }

    /// Check `reqs` and register them for the new sandbox `id`; `None` when there are none.
    /// Nothing is registered when this fails.
    pub(crate) fn register_credentials(
        &self,
        id: &str,
        reqs: &[CredentialRequest],
    ) -> Result<Option<StoredCredentials>, EngineError> {
        if reqs.is_empty() {
            return Ok(None);
        }
        let Some(b) = self.brokerage() else {
            return Err(no_broker());
        };
        let creds: Vec<Credential> = reqs.iter().map(to_credential).collect();
        b.register(id, creds).map(Some)
    }

    /// The credentials a record keeps, as a create asks for them (a fork gets its source's
    /// keys, and tokens of its own).
    pub(crate) fn credential_requests(
        &self,
        stored: Option<&StoredCredentials>,
    ) -> Result<Vec<CredentialRequest>, EngineError> {
        let (Some(stored), Some(b)) = (stored, self.brokerage()) else {
            return Ok(Vec::new());
        };
        Ok(b.open_sealed(stored)?
            .into_iter()
            .map(|c| CredentialRequest {
                upstream: c.upstream,
                header: c.header,
                value: c.value,
                base_url_env: c.base_url_env,
                token_env: c.token_env,
            })
            .collect())
    }

    /// After a restart: register again what the records hold and serve it (sandboxes that
    /// are not running get their task, which waits for them). A record whose credentials
    /// cannot be opened (another key: the key file was replaced) goes on without them.
    pub(crate) async fn restore_credentials(&self) {
        let held: Vec<(String, SandboxState, StoredCredentials)> = self
            .map()
            .values()
            .filter(|e| e.record.state != SandboxState::Failed)
            .filter_map(|e| {
                let c = e.record.credentials.clone()?;
                Some((e.record.id.clone(), e.record.state, c))
            })
            .collect();
        for (id, state, stored) in held {
            let result = match self.brokerage() {
                Some(b) => b.open_sealed(&stored).and_then(|creds| {
                    b.broker
                        .register(&id, 0, creds)
                        .map(drop)
                        .map_err(broker_err)
                }),
                None => Err(no_broker()),
            };
            match result {
                Ok(()) if state == SandboxState::Running => self.serve_credentials(&id).await,
                Ok(()) => self.spawn_feed(&id),
                Err(e) => {
                    warn!(sandbox = %id, error = %e, "its credentials cannot be used any more")
                }
            }
        }
    }

    /// The environment the broker gives sandbox `id`'s commands (empty without credentials).
    pub(crate) fn broker_env(&self, id: &str) -> Vec<(String, String)> {
        self.brokerage()
            .map(|b| b.broker.env(id))
            .unwrap_or_default()
    }

    /// Forget `id`'s credentials and stop its task (the sandbox is gone, or never came up).
    pub(crate) fn drop_credentials(&self, id: &str) {
        if let Some(b) = self.brokerage() {
            if let Some(task) = b.tasks().remove(id) {
                task.abort();
            }
            b.broker.unregister(id);
        }
    }

    /// Stop every broker task (shutdown; the registrations go with the process).
    pub(crate) fn stop_brokers(&self) {
        if let Some(b) = self.brokerage() {
            for (_, task) in b.tasks().drain() {
                task.abort();
            }
        }
    }

    /// Make the broker reachable inside running sandbox `id`, if it has credentials: bind
    /// the listener now (so a command started right after this finds it) and start the task
    /// that hands its connections to the broker (once per sandbox; it follows the sandbox
    /// through pauses and restarts until [`Engine::drop_credentials`]).
    pub(crate) async fn serve_credentials(&self, id: &str) {
        let Some(b) = self.brokerage() else {
            return;
        };
        if b.broker.env(id).is_empty() {
            return;
        }
        if let Ok(sid) = sandbox_id(id) {
            // Dropping the pending accept gives up the wait; the listener stays.
            match tokio::time::timeout(BIND_WITHIN, self.agent(&sid).listen(DEFAULT_PORT)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    warn!(sandbox = %id, error = %e, "binding the credential broker's listener")
                }
                Err(_) => {
                    warn!(sandbox = %id, "binding the credential broker's listener: no answer")
                }
            }
        }
        self.spawn_feed(id);
    }

    /// Start the task that feeds sandbox `id`'s broker connections to the broker (once).
    fn spawn_feed(&self, id: &str) {
        let Some(b) = self.brokerage() else {
            return;
        };
        let mut tasks = b.tasks();
        if tasks.contains_key(id) {
            return;
        }
        let task = tokio::spawn(feed(
            Arc::downgrade(&self.inner),
            self.inner.runtime.clone(),
            b.broker.clone(),
            id.to_string(),
        ));
        tasks.insert(id.to_string(), task.abort_handle());
    }
}

/// Hands the connections made to the broker's address inside sandbox `id` to the broker,
/// at most [`MAX_CONNECTIONS`] at once, while the engine lives. While the sandbox is not
/// running (paused, stopped, starting) it waits; connections made meanwhile queue.
async fn feed(
    engine: std::sync::Weak<crate::Inner>,
    runtime: Arc<dyn warren_runtime::Runtime>,
    broker: Broker,
    id: String,
) {
    let Ok(sid) = sandbox_id(&id) else {
        return;
    };
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut retry = RETRY_MIN;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let state = match engine.upgrade() {
            Some(inner) => Engine { inner }.map().get(&id).map(|e| e.record.state),
            None => return,
        };
        match state {
            None | Some(SandboxState::Deleting) => return,
            Some(SandboxState::Running) => {}
            Some(_) => {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        }
        let agent = warren_runtime::AgentClient::new(&*runtime, &sid);
        let accepted = match agent.listen(DEFAULT_PORT).await {
            Ok(pending) => pending.accepted().await,
            Err(e) => Err(e),
        };
        match accepted {
            Ok(stream) => {
                retry = RETRY_MIN;
                let broker = broker.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    broker.serve_connection(stream, &id).await;
                    drop(permit);
                });
            }
            Err(e) => {
                // The agent went away (the sandbox stopped, paused mid-wait or died): look
                // at the sandbox again after a while.
                debug!(sandbox = %id, error = %e, "broker listener");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}
