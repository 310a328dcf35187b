//! Durable processes and terminals inside a running sandbox: start, list, get, signal, stdin,
//! resize, and attachments to the bounded output log. The runtime's agent owns the processes;
//! the engine validates requests, resolves users and environments (as for exec) and maps
//! errors to the API's codes.

use chrono::{DateTime, Utc};
use warren_api::{
    signal_name, CreateProcessRequest, ErrorCode, Process, ProcessState, PtySize, SignalValue,
    MAX_LOG_BYTES, MAX_PTY_DIM, MIN_LOG_BYTES,
};
use warren_runtime::AgentCode;
use warren_runtime::{AttachStream, ByteStream, ProcessInfo, ProcessOp, ProcessSpec, RuntimeError};

use crate::{CommandParts, Engine, EngineError};

pub use warren_runtime::AttachEvent;

/// Longest accepted tag.
pub const MAX_TAG_LEN: usize = 64;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest(msg.into())
}

/// The engine error of an agent process error (`RuntimeError::Process`); another code is a
/// runtime error.
fn process_engine_error(code: AgentCode, message: String) -> EngineError {
    let code = match code {
        AgentCode::ProcessNotFound => ErrorCode::ProcessNotFound,
        AgentCode::NotAPty => ErrorCode::NotAPty,
        AgentCode::StdinClosed => ErrorCode::StdinClosed,
        AgentCode::TagInUse => ErrorCode::TagInUse,
        AgentCode::InvalidSignal => ErrorCode::InvalidSignal,
        other => {
            return EngineError::Runtime(RuntimeError::Process {
                code: other,
                message,
            })
        }
    };
    EngineError::Process { code, message }
}

fn ms_time(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default()
}

/// The API form of the agent's process state.
pub fn process_info(info: ProcessInfo) -> Process {
    Process {
        pid: info.pid,
        tag: info.tag,
        cmd: info.argv,
        state: match info.state {
            warren_runtime::ProcessState::Running => ProcessState::Running,
            warren_runtime::ProcessState::Exited => ProcessState::Exited,
        },
        exit_code: info.exit_code,
        signal: info.signal.map(signal_name),
        timed_out: info.timed_out,
        started_at: ms_time(info.started_at_ms),
        ended_at: info.ended_at_ms.map(ms_time),
        pty: info.pty.map(|p| PtySize {
            rows: p.rows,
            cols: p.cols,
        }),
        stdin_open: info.stdin_open,
        output_start: info.output_start,
        output_end: info.output_end,
        address: None,
        url: None,
    }
}

/// Rows and columns in 1..=[`MAX_PTY_DIM`].
pub fn validate_pty(rows: u16, cols: u16) -> Result<(), EngineError> {
    if !(1..=MAX_PTY_DIM).contains(&rows) || !(1..=MAX_PTY_DIM).contains(&cols) {
        return Err(invalid(format!(
            "rows and cols must be between 1 and {MAX_PTY_DIM}, got {rows}x{cols}"
        )));
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), EngineError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(invalid(format!(
            "tag must be 1-{MAX_TAG_LEN} characters [A-Za-z0-9_.-] and not all digits, got {tag:?}"
        )));
    }
    Ok(())
}

/// A pid (decimal) or a tag.
fn validate_selector(selector: &str) -> Result<(), EngineError> {
    if selector.parse::<i32>().is_ok_and(|p| p > 0) {
        return Ok(());
    }
    validate_tag(selector).map_err(|_| invalid(format!("{selector:?} is neither a pid nor a tag")))
}

impl Engine {
    /// Map a runtime failure of a process call. `agent_down_fails` marks the sandbox failed
    /// on an i/o error (not for stdin uploads: a broken upload may be the client's).
    async fn process_error(
        &self,
        id: &str,
        err: RuntimeError,
        agent_down_fails: bool,
    ) -> EngineError {
        match err {
            RuntimeError::Process { code, message } => process_engine_error(code, message),
            e @ (RuntimeError::Io(_) | RuntimeError::Agent(_)) if !agent_down_fails => {
                EngineError::Runtime(e)
            }
            other => self.spawn_error(id, other).await,
        }
    }

    /// Validate and start a durable process.
    pub async fn start_process(
        &self,
        id: &str,
        req: CreateProcessRequest,
    ) -> Result<Process, EngineError> {
        if let Some(tag) = &req.tag {
            validate_tag(tag)?;
        }
        if let Some(p) = req.pty {
            validate_pty(p.rows, p.cols)?;
        }
        let log_bytes = req
            .log_bytes
            .unwrap_or(self.inner.config.default_process_log_bytes);
        if !(MIN_LOG_BYTES..=MAX_LOG_BYTES).contains(&log_bytes) {
            return Err(invalid(format!(
                "log_bytes must be between {MIN_LOG_BYTES} and {MAX_LOG_BYTES}, got {log_bytes}"
            )));
        }
        let exec = self.command_spec(
            id,
            CommandParts {
                cmd: req.cmd,
                env: req.env,
                cwd: req.cwd,
                user: req.user,
                timeout_secs: req.timeout_secs,
                stdin: req.stdin.unwrap_or(false) || req.pty.is_some(),
            },
        )?;
        // The forward first: a bad port or a runtime without ports fails before anything
        // runs (the forward needs no listener until a connection arrives).
        let forward = match req.expose_port {
            Some(port) => Some(self.forward_port(id, port).await?),
            None => None,
        };
        let spec = ProcessSpec {
            exec,
            tag: req.tag,
            pty: req.pty.map(|p| warren_runtime::PtySize {
                rows: p.rows,
                cols: p.cols,
            }),
            log_bytes,
        };
        match self
            .agent(&crate::sandbox_id(id)?)
            .start_process(spec)
            .await
        {
            Ok(info) => {
                let mut p = process_info(info);
                if let Some(f) = forward {
                    p.address = Some(f.address.to_string());
                    p.url = Some(f.url);
                }
                Ok(p)
            }
            Err(e) => Err(self.process_error(id, e, true).await),
        }
    }

    /// Running and recently exited processes, by pid.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<Process>, EngineError> {
        self.ready(id).await?;
        match self.agent(&crate::sandbox_id(id)?).list_processes().await {
            Ok(mut list) => {
                list.sort_by_key(|p| p.pid);
                Ok(list.into_iter().map(process_info).collect())
            }
            Err(e) => Err(self.process_error(id, e, true).await),
        }
    }

    async fn process_op(
        &self,
        id: &str,
        selector: &str,
        op: ProcessOp,
    ) -> Result<Process, EngineError> {
        validate_selector(selector)?;
        self.ready(id).await?;
        match self
            .agent(&crate::sandbox_id(id)?)
            .process_op(selector, op)
            .await
        {
            Ok(info) => Ok(process_info(info)),
            Err(e) => Err(self.process_error(id, e, true).await),
        }
    }

    /// One process by pid or tag.
    pub async fn get_process(&self, id: &str, selector: &str) -> Result<Process, EngineError> {
        self.process_op(id, selector, ProcessOp::Get).await
    }

    /// Signal a process's group; an unknown name is `invalid_signal`.
    pub async fn signal_process(
        &self,
        id: &str,
        selector: &str,
        signal: &SignalValue,
    ) -> Result<Process, EngineError> {
        let signal = signal.number().ok_or_else(|| EngineError::Process {
            code: ErrorCode::InvalidSignal,
            message: format!("unknown signal {signal:?}"),
        })?;
        self.process_op(id, selector, ProcessOp::Signal { signal })
            .await
    }

    /// Close stdin (a PTY gets EOF).
    pub async fn close_stdin(&self, id: &str, selector: &str) -> Result<Process, EngineError> {
        self.process_op(id, selector, ProcessOp::CloseStdin).await
    }

    /// Resize a process's terminal.
    pub async fn resize_process(
        &self,
        id: &str,
        selector: &str,
        rows: u16,
        cols: u16,
    ) -> Result<Process, EngineError> {
        validate_pty(rows, cols)?;
        self.process_op(id, selector, ProcessOp::Resize { rows, cols })
            .await
    }

    /// Feed a stream to the process's stdin (which stays open).
    pub async fn write_stdin(
        &self,
        id: &str,
        selector: &str,
        data: ByteStream,
    ) -> Result<Process, EngineError> {
        validate_selector(selector)?;
        self.ready(id).await?;
        match self
            .agent(&crate::sandbox_id(id)?)
            .write_stdin(selector, data)
            .await
        {
            Ok(info) => Ok(process_info(info)),
            Err(e) => Err(self.process_error(id, e, false).await),
        }
    }

    /// Replay the output log from `offset` and, with `follow`, follow it until the exit.
    pub async fn attach(
        &self,
        id: &str,
        selector: &str,
        offset: u64,
        follow: bool,
    ) -> Result<AttachStream, EngineError> {
        validate_selector(selector)?;
        self.ready(id).await?;
        match self
            .agent(&crate::sandbox_id(id)?)
            .attach(selector, offset, follow)
            .await
        {
            Ok(s) => Ok(self.attached(id, s)),
            Err(e) => Err(self.process_error(id, e, true).await),
        }
    }

    /// Map an error that arrives in the middle of an attachment stream.
    pub fn attach_error(&self, err: RuntimeError) -> EngineError {
        match err {
            RuntimeError::Process { code, message } => process_engine_error(code, message),
            RuntimeError::Unsupported(what) => EngineError::NotSupported(what),
            other => EngineError::Runtime(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_selectors() {
        assert!(validate_tag("web-1").is_ok());
        assert!(validate_tag("123").is_err());
        assert!(validate_tag("a b").is_err());
        assert!(validate_tag("").is_err());
        assert!(validate_selector("42").is_ok());
        assert!(validate_selector("web").is_ok());
        assert!(validate_selector("0").is_err());
        assert!(validate_selector("a/b").is_err());
        assert!(validate_pty(0, 10).is_err());
        assert!(validate_pty(1001, 10).is_err());
        assert!(validate_pty(24, 80).is_ok());
    }
}
