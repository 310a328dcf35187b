//! Warren's engine: the sandbox state machine, the store, the TTL reaper.
//!
//! The engine owns no kernel details: it drives a [`warren_runtime::Runtime`] and keeps the
//! records. It is what the HTTP server calls.

mod error;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::EngineError;
pub use warren_runtime::{ExecOutput, ExecStream, ExitInfo};

use warren_api::{Capabilities, CreateSandboxRequest, ExecRequest, Resources, Sandbox};
use warren_runtime::Runtime;

/// Server-side limits and defaults.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    /// 0 = unlimited.
    pub max_sandboxes: u64,
    pub default_resources: Resources,
    pub max_cpus: f64,
    pub max_memory_mib: u64,
    pub max_pids: u64,
    /// Largest request body the server accepts (reported in capabilities).
    pub max_request_bytes: u64,
    /// Per-stream cap on output kept for a non-streaming exec response.
    pub max_exec_capture_bytes: usize,
}

/// The engine handle; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    runtime: Arc<dyn Runtime>,
}

impl Engine {
    /// Open the store under `config.data_dir`, clean what a crashed run left, start nothing.
    pub async fn open(config: EngineConfig, runtime: Arc<dyn Runtime>) -> Result<Engine, EngineError> {
        let _ = (&config, &runtime);
        todo!()
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    pub fn capabilities(&self) -> Capabilities {
        todo!()
    }

    /// Validate, record, create in the runtime. Returns the sandbox in state `running`.
    pub async fn create(&self, req: CreateSandboxRequest) -> Result<Sandbox, EngineError> {
        let _ = req;
        todo!()
    }

    pub async fn get(&self, id: &str) -> Result<Sandbox, EngineError> {
        let _ = id;
        todo!()
    }

    /// Sandboxes whose metadata contains every `filter` pair, oldest first.
    pub async fn list(&self, filter: &BTreeMap<String, String>) -> Result<Vec<Sandbox>, EngineError> {
        let _ = filter;
        todo!()
    }

    /// Delete; deleting a sandbox that is already being deleted is fine.
    pub async fn delete(&self, id: &str) -> Result<(), EngineError> {
        let _ = id;
        todo!()
    }

    pub async fn set_timeout(&self, id: &str, timeout_secs: u64) -> Result<Sandbox, EngineError> {
        let _ = (id, timeout_secs);
        todo!()
    }

    /// Validate and start a command; the stream yields output and ends with `Exit`.
    pub async fn exec(&self, id: &str, req: ExecRequest) -> Result<ExecStream, EngineError> {
        let _ = (id, req);
        todo!()
    }

    /// Start the TTL reaper (runs until the process ends).
    pub fn spawn_reaper(&self) -> tokio::task::JoinHandle<()> {
        todo!()
    }

    /// Delete every sandbox (used on SIGTERM/SIGINT).
    pub async fn shutdown(&self) {
        todo!()
    }
}
