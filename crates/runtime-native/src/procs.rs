//! Durable processes for [`NativeRuntime`]: each call is one connection to the sandbox's
//! agent, which owns the processes and their output logs.

use futures::StreamExt;
use warren_proto::host::{self as agent, AttachItem};
use warren_proto::ProtoError;

use crate::files::map_file_error;
use crate::NativeRuntime;
use warren_runtime::{
    AttachEvent, AttachStream, ByteStream, ProcessInfo, ProcessOp, ProcessSpec, RuntimeError,
};

/// Codes with which the agent refuses to start a command.
const SPAWN_CODES: [&str; 3] = ["not_found", "bad_cwd", "spawn_failed"];

impl NativeRuntime {
    pub(super) async fn start_process_impl(
        &self,
        id: &str,
        spec: ProcessSpec,
    ) -> Result<ProcessInfo, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        agent::start_process(stream, spec)
            .await
            .map_err(map_process_error)
    }

    pub(super) async fn list_processes_impl(
        &self,
        id: &str,
    ) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        agent::list_processes(stream)
            .await
            .map_err(map_process_error)
    }

    pub(super) async fn process_op_impl(
        &self,
        id: &str,
        selector: &str,
        op: ProcessOp,
    ) -> Result<ProcessInfo, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        agent::process_op(stream, selector, op)
            .await
            .map_err(map_process_error)
    }

    pub(super) async fn write_stdin_impl(
        &self,
        id: &str,
        selector: &str,
        data: ByteStream,
    ) -> Result<ProcessInfo, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        agent::write_stdin(stream, selector, data)
            .await
            .map_err(map_process_error)
    }

    pub(super) async fn attach_impl(
        &self,
        id: &str,
        selector: &str,
        offset: u64,
        follow: bool,
    ) -> Result<AttachStream, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        let events = agent::attach(stream, selector, offset, follow)
            .await
            .map_err(map_process_error)?;
        Ok(Box::pin(
            events.map(|item| item.map(map_item).map_err(map_process_error)),
        ))
    }
}

fn map_item(item: AttachItem) -> AttachEvent {
    match item {
        AttachItem::Attached { offset, end } => AttachEvent::Attached { offset, end },
        AttachItem::Lost { from, to } => AttachEvent::Lost { from, to },
        AttachItem::Stdout(b) => AttachEvent::Stdout(b),
        AttachItem::Stderr(b) => AttachEvent::Stderr(b),
        AttachItem::Ended(info) => AttachEvent::Ended(info),
    }
}

/// Spawn refusals become [`RuntimeError::Spawn`], the others [`RuntimeError::Process`]; an
/// error of the caller's own stdin stream comes back as it was.
fn map_process_error(e: ProtoError) -> RuntimeError {
    match e {
        ProtoError::Remote { code, message } if SPAWN_CODES.contains(&code.as_str()) => {
            RuntimeError::Spawn { code, message }
        }
        ProtoError::Remote { code, message } => RuntimeError::Process { code, message },
        e => map_file_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(code: &str) -> ProtoError {
        ProtoError::Remote {
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn process_errors_map() {
        for code in SPAWN_CODES {
            assert!(matches!(
                map_process_error(remote(code)),
                RuntimeError::Spawn { code: c, .. } if c == code
            ));
        }
        for code in [
            "process_not_found",
            "not_a_pty",
            "stdin_closed",
            "tag_in_use",
            "invalid_signal",
        ] {
            assert!(matches!(
                map_process_error(remote(code)),
                RuntimeError::Process { code: c, message } if c == code && message == "m"
            ));
        }
        let wrapped = ProtoError::Io(std::io::Error::other(RuntimeError::Setup("body".into())));
        assert!(matches!(
            map_process_error(wrapped),
            RuntimeError::Setup(m) if m == "body"
        ));
        assert!(matches!(
            map_process_error(ProtoError::Closed),
            RuntimeError::Agent(ProtoError::Closed)
        ));
    }
}
