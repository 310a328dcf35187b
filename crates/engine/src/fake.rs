//! An in-memory [`Runtime`] for testing the engine and the HTTP layer without a kernel.
//!
//! It keeps a set of "live" sandboxes and runs a few built-in commands:
//! `echo ARGS..` (stdout), `fail N` (exit N), `cat` (stdin to stdout), `split` (writes the
//! bytes of "é" across two chunks), `bytes` (all 256 byte values). Anything else is
//! `not_found`. Failures can be injected with [`FakeRuntime::fail_next_create`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use warren_runtime::{
    ExecOutput, ExecSpec, ExecStream, ExitInfo, Runtime, RuntimeError, RuntimeInfo, SandboxSpec,
};

#[derive(Default)]
pub struct FakeRuntime {
    live: Mutex<HashSet<String>>,
    fail_next_create: AtomicBool,
    create_delay: Mutex<Duration>,
    pub shut_down: AtomicBool,
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime::default()
    }

    pub fn fail_next_create(&self) {
        self.fail_next_create.store(true, Ordering::SeqCst);
    }

    pub fn set_create_delay(&self, d: Duration) {
        if let Ok(mut g) = self.create_delay.lock() {
            *g = d;
        }
    }

    pub fn live(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .live
            .lock()
            .map(|g| g.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn is_live(&self, id: &str) -> bool {
        self.live.lock().map(|g| g.contains(id)).unwrap_or(false)
    }
}

fn exit(code: i32) -> ExecOutput {
    ExecOutput::Exit(ExitInfo {
        exit_code: code,
        signal: None,
        timed_out: false,
        duration_us: 1,
    })
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn info(&self) -> RuntimeInfo {
        RuntimeInfo {
            name: "fake".into(),
            cgroup: "none".into(),
            namespaces: vec![],
            user_namespace: false,
            seccomp: false,
            capabilities: vec![],
            images: vec!["host".into()],
        }
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let delay = self.create_delay.lock().map(|g| *g).unwrap_or_default();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.fail_next_create.swap(false, Ordering::SeqCst) {
            return Err(RuntimeError::Setup("injected failure".into()));
        }
        if let Ok(mut g) = self.live.lock() {
            g.insert(spec.id.clone());
        }
        Ok(())
    }

    async fn exec(
        &self,
        id: &str,
        spec: ExecSpec,
        stdin: Option<Bytes>,
    ) -> Result<ExecStream, RuntimeError> {
        if !self.is_live(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let args = &spec.argv[1..];
        let items: Vec<ExecOutput> = match spec.argv[0].as_str() {
            "echo" => vec![
                ExecOutput::Stdout(Bytes::from(args.join(" ") + "\n")),
                exit(0),
            ],
            "env" => {
                let text: String = spec.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                vec![ExecOutput::Stdout(Bytes::from(text)), exit(0)]
            }
            "fail" => vec![
                ExecOutput::Stderr(Bytes::from_static(b"failing\n")),
                exit(args.first().and_then(|a| a.parse().ok()).unwrap_or(1)),
            ],
            "cat" => vec![ExecOutput::Stdout(stdin.unwrap_or_default()), exit(0)],
            "split" => vec![
                ExecOutput::Stdout(Bytes::from_static(b"a\xc3")),
                ExecOutput::Stdout(Bytes::from_static(b"\xa9b")),
                exit(0),
            ],
            "bytes" => vec![
                ExecOutput::Stdout(Bytes::from((0..=255u8).collect::<Vec<u8>>())),
                exit(0),
            ],
            other => {
                return Err(RuntimeError::Spawn {
                    code: "not_found".into(),
                    message: format!("{other}: command not found"),
                })
            }
        };
        Ok(Box::pin(futures::stream::iter(items.into_iter().map(Ok))))
    }

    async fn destroy(&self, id: &str) -> Result<(), RuntimeError> {
        if let Ok(mut g) = self.live.lock() {
            g.remove(id);
        }
        Ok(())
    }

    async fn cleanup_all(&self) -> Result<Vec<String>, RuntimeError> {
        let mut g = self
            .live
            .lock()
            .map_err(|_| RuntimeError::Setup("poisoned".into()))?;
        Ok(g.drain().collect())
    }

    async fn shutdown(&self) -> Result<(), RuntimeError> {
        self.shut_down.store(true, Ordering::SeqCst);
        Ok(())
    }
}
