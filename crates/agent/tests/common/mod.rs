//! The test harness shared by the agent's integration tests: a real agent process (the
//! test-only `warren-agent-test` binary) on a unique socket in its own temp dir.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory removed when dropped, even when the test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh, empty [`unique_dir`].
    pub fn new(prefix: &str) -> TempDir {
        let d = unique_dir(prefix);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh temp dir path `<prefix>-<pid>-<n>`, unique within this test binary.
pub fn unique_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ))
}

/// A temp dir path `<prefix>-<pid>-<name>`.
pub fn named_dir(prefix: &str, name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()))
}

/// A running agent; killed (and its temp dir removed) on drop, even when the test fails.
pub struct Agent {
    pub child: Child,
    pub dir: PathBuf,
    pub sock: PathBuf,
}

impl Agent {
    /// Empties and creates `dir` (and its `subdirs`), starts an agent on `dir/agent.sock`
    /// and waits until it accepts.
    pub fn start_in(dir: PathBuf, subdirs: &[&str]) -> Agent {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for sub in subdirs {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let sock = dir.join("agent.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_warren-agent-test"))
            .arg(&sock)
            // Must not leak into commands (they get exactly spec.env).
            .env("WARREN_AGENT_LEAK", "1")
            .spawn()
            .unwrap();
        let agent = Agent { child, dir, sock };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&agent.sock).is_err() {
            assert!(Instant::now() < deadline, "agent did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        agent
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub async fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.sock).await.unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SIGTERM makes the agent kill its commands' groups; SIGKILL if it does not exit.
        // SAFETY: kill on our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
