//! Test support (feature `testing`): an engine over the fake runtime
//! ([`warren_testkit::FakeRuntime`], re-exported here: host directories served by the real
//! agent; its module docs list the fake's commands and ports) in a temporary directory, and
//! an in-process HTTP server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use warren_api::Resources;
use warren_engine::{Engine, EngineConfig};

pub use warren_testkit::FakeRuntime;

/// Small limits, so tests can hit them: 64 KiB bodies, 1 KiB of captured output per stream.
pub fn test_config(data_dir: &Path) -> EngineConfig {
    EngineConfig {
        default_timeout_secs: 300,
        max_timeout_secs: 3600,
        max_sandboxes: 0,
        default_resources: Resources {
            cpus: Some(1.0),
            memory_mib: Some(512),
            pids: Some(256),
            disk_mib: None,
        },
        max_cpus: 4.0,
        max_memory_mib: 8192,
        max_pids: 4096,
        max_request_bytes: 64 * 1024,
        max_exec_capture_bytes: 1024,
        // Whatever the host has: admission is tested with explicit settings.
        max_committed_memory_mib: 0,
        min_available_memory_mib: 0,
        min_free_disk_mib: 0,
        ..EngineConfig::with_defaults(data_dir.to_path_buf())
    }
}

/// An engine over a [`FakeRuntime`] in a fresh temporary directory.
pub struct TestEngine {
    pub engine: Engine,
    pub runtime: FakeRuntime,
    pub dir: tempfile::TempDir,
}

impl TestEngine {
    pub async fn new() -> TestEngine {
        Self::with_config(|_| {}).await
    }

    /// Panics on setup failure (test code only).
    pub async fn with_config(adjust: impl FnOnce(&mut EngineConfig)) -> TestEngine {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = test_config(dir.path());
        adjust(&mut config);
        let runtime = FakeRuntime::default();
        let engine = Engine::open(config, Arc::new(runtime.clone()))
            .await
            .expect("open engine");
        TestEngine {
            engine,
            runtime,
            dir,
        }
    }
}

/// [`crate::router`] over a [`TestEngine`], served on an ephemeral loopback port until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    pub engine: TestEngine,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// Panics on setup failure (test code only).
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// [`TestServer::start`] with an adjusted [`test_config`]. Served by [`crate::serve`],
    /// with its connection limits.
    pub async fn start_with(adjust: impl FnOnce(&mut EngineConfig)) -> TestServer {
        let engine = TestEngine::with_config(adjust).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let served = engine.engine.clone();
        let task = tokio::spawn(async move {
            let _ = crate::serve(listener, served, std::future::pending()).await;
        });
        TestServer {
            addr,
            url: format!("http://{addr}"),
            engine,
            task,
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
