//! Helpers shared by the native runtime's kernel tests: commands through the sandbox's agent.

#![allow(dead_code)]

use futures::StreamExt;
use warren_runtime::{AgentClient, ExecOutput, ExecSpec, ProcessSpec, ProcessState, SandboxId};
use warren_runtime_native::NativeRuntime;

pub fn sh(script: &str) -> ExecSpec {
    ExecSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![(
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        )],
        cwd: "/".into(),
        ..Default::default()
    }
}

/// Run a shell script to completion; (exit code, stdout). Stderr is printed when it fails.
pub async fn run(rt: &NativeRuntime, id: &SandboxId, script: &str) -> (i32, String) {
    let mut stream = AgentClient::new(rt, id)
        .exec(sh(script), None)
        .await
        .expect("exec");
    let mut out = Vec::new();
    let mut err = Vec::new();
    while let Some(item) = stream.next().await {
        match item.expect("exec stream") {
            ExecOutput::Stdout(b) => out.extend_from_slice(&b),
            ExecOutput::Stderr(b) => err.extend_from_slice(&b),
            ExecOutput::Exit(e) => {
                if e.exit_code != 0 {
                    eprintln!("stderr: {}", String::from_utf8_lossy(&err));
                }
                return (e.exit_code, String::from_utf8_lossy(&out).into());
            }
        }
    }
    panic!("exec stream ended without an exit");
}

/// Start a durable process tagged `tag` whose output log keeps `log_bytes`.
pub async fn start_process(
    rt: &NativeRuntime,
    id: &SandboxId,
    tag: &str,
    script: &str,
    log_bytes: u64,
) {
    let info = AgentClient::new(rt, id)
        .start_process(ProcessSpec {
            exec: sh(script),
            tag: Some(tag.into()),
            pty: None,
            log_bytes,
        })
        .await
        .expect("start process");
    assert_eq!(info.state, ProcessState::Running);
}
