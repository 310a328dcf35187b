//! The host side of the agent protocol for a sandbox of any backend: commands, files,
//! processes, terminals, ports, search and watch.
//!
//! A backend only says how to reach a sandbox's agent ([`Runtime::agent`]: one fresh
//! connection per request); everything said over that connection is here, once, in the terms
//! of [`warren_proto::host`], with the agent's refusals mapped to typed [`RuntimeError`]s.

use std::io;

use bytes::Bytes;
use futures::StreamExt;
use warren_proto::host::{self as proto, ExecEvent};
use warren_proto::{ProtoError, Request};

use crate::{
    AgentCode, AttachStream, ByteStream, ExecOutput, ExecSpec, ExecStream, ExitInfo, FileOp,
    FileOpResult, FileStat, PortStream, ProcessInfo, ProcessOp, ProcessSpec, ReplaceOutcome,
    ReplaceSpec, Runtime, RuntimeError, SandboxId, SearchOutcome, SearchSpec, WatchStream,
    WriteOptions,
};

/// Codes with which the agent refuses to start a command.
const SPAWN_CODES: [AgentCode; 3] = [
    AgentCode::NotFound,
    AgentCode::BadCwd,
    AgentCode::SpawnFailed,
];

/// The agent of sandbox `id`, reached through its backend. Cheap: it holds two references
/// and opens a connection per call.
#[derive(Clone, Copy)]
pub struct AgentClient<'a> {
    runtime: &'a dyn Runtime,
    id: &'a SandboxId,
}

impl<'a> AgentClient<'a> {
    pub fn new(runtime: &'a dyn Runtime, id: &'a SandboxId) -> AgentClient<'a> {
        AgentClient { runtime, id }
    }

    async fn conn(&self) -> Result<Box<dyn PortStream>, RuntimeError> {
        self.runtime.agent(self.id).await
    }

    /// Run a command; its output streams until the exit. Dropping the stream before the
    /// exit kills the command's process group.
    pub async fn exec(
        &self,
        spec: ExecSpec,
        stdin: Option<Bytes>,
    ) -> Result<ExecStream, RuntimeError> {
        let events = proto::exec(self.conn().await?, spec, stdin)
            .await
            .map_err(exec_error)?;
        Ok(Box::pin(
            events.filter_map(|ev| futures::future::ready(exec_event(ev))),
        ))
    }

    /// Stream a regular file out of the sandbox: its metadata, then its content.
    pub async fn read_file(&self, path: &str) -> Result<(FileStat, ByteStream), RuntimeError> {
        let (stat, data) = proto::read_file(self.conn().await?, path)
            .await
            .map_err(file_error)?;
        Ok((stat, Box::pin(data.map(|r| r.map_err(file_error)))))
    }

    /// Stream the directory tree at `path` as a tar archive (names relative to `path`,
    /// modes and mtimes kept, symlinks stored as symlinks): the directory's metadata, then
    /// the archive's bytes. An error item ends a failed stream.
    pub async fn read_archive(&self, path: &str) -> Result<(FileStat, ByteStream), RuntimeError> {
        let (stat, data) = proto::read_archive(self.conn().await?, path)
            .await
            .map_err(file_error)?;
        Ok((stat, Box::pin(data.map(|r| r.map_err(file_error)))))
    }

    /// Write a regular file atomically (temporary file + rename) from a stream; nothing
    /// changes unless the whole stream arrived.
    pub async fn write_file(
        &self,
        path: &str,
        opts: WriteOptions,
        data: ByteStream,
    ) -> Result<FileStat, RuntimeError> {
        let req = Request::WriteFile {
            path: path.to_string(),
            mode: opts.mode,
            parents: opts.parents,
            uid: opts.uid,
            gid: opts.gid,
        };
        proto::write_file(self.conn().await?, req, data)
            .await
            .map_err(file_error)
    }

    /// Stat, list, mkdir, remove, rename.
    pub async fn file_op(&self, op: FileOp) -> Result<FileOpResult, RuntimeError> {
        proto::file_op(self.conn().await?, op)
            .await
            .map_err(file_error)
    }

    /// Search file names (glob) or contents (regex) below a path, bounded in results and
    /// time; symlinks are not followed.
    pub async fn search_files(&self, spec: SearchSpec) -> Result<SearchOutcome, RuntimeError> {
        let (matches, files_scanned, truncated) = proto::search_files(self.conn().await?, spec)
            .await
            .map_err(file_error)?;
        Ok(SearchOutcome {
            matches,
            files_scanned,
            truncated,
        })
    }

    /// Replace regex matches in the files below a path, each file rewritten atomically.
    pub async fn replace_files(&self, spec: ReplaceSpec) -> Result<ReplaceOutcome, RuntimeError> {
        let (files, total_replacements, truncated) = proto::replace_files(self.conn().await?, spec)
            .await
            .map_err(file_error)?;
        Ok(ReplaceOutcome {
            files,
            total_replacements,
            truncated,
        })
    }

    /// Watch a path for changes; returns once the watch is active. The watch lives as long
    /// as its connection: dropping the stream ends it.
    pub async fn watch_files(
        &self,
        path: &str,
        recursive: bool,
    ) -> Result<WatchStream, RuntimeError> {
        let events = proto::watch_files(self.conn().await?, path, recursive)
            .await
            .map_err(file_error)?;
        Ok(Box::pin(events.map(|r| r.map_err(file_error))))
    }

    /// Start a durable process (owned by the agent, output kept in a bounded log).
    pub async fn start_process(&self, spec: ProcessSpec) -> Result<ProcessInfo, RuntimeError> {
        proto::start_process(self.conn().await?, spec)
            .await
            .map_err(process_error)
    }

    /// Running and recently exited processes.
    pub async fn list_processes(&self) -> Result<Vec<ProcessInfo>, RuntimeError> {
        proto::list_processes(self.conn().await?)
            .await
            .map_err(process_error)
    }

    /// Get, signal, close stdin, resize — `selector` is a pid or a tag.
    pub async fn process_op(
        &self,
        selector: &str,
        op: ProcessOp,
    ) -> Result<ProcessInfo, RuntimeError> {
        proto::process_op(self.conn().await?, selector, op)
            .await
            .map_err(process_error)
    }

    /// Feed `data` to the process's stdin (or PTY) as it arrives; stdin stays open.
    pub async fn write_stdin(
        &self,
        selector: &str,
        data: ByteStream,
    ) -> Result<ProcessInfo, RuntimeError> {
        proto::write_stdin(self.conn().await?, selector, data)
            .await
            .map_err(process_error)
    }

    /// Replay a process's output from `offset` and (with `follow`) follow it until exit.
    /// Dropping the stream detaches (the process goes on).
    pub async fn attach(
        &self,
        selector: &str,
        offset: u64,
        follow: bool,
    ) -> Result<AttachStream, RuntimeError> {
        let events = proto::attach(self.conn().await?, selector, offset, follow)
            .await
            .map_err(process_error)?;
        Ok(Box::pin(events.map(|item| item.map_err(process_error))))
    }

    /// Open a TCP connection to `127.0.0.1:port` inside the sandbox: the agent dials it and
    /// splices the bytes (see [`warren_proto::Request::Connect`]).
    pub async fn connect_port(&self, port: u16) -> Result<Box<dyn PortStream>, RuntimeError> {
        match proto::connect(self.conn().await?, port).await {
            Ok(raw) => Ok(Box::new(raw)),
            Err(e) => Err(port_error(e)),
        }
    }

    /// Listen on `127.0.0.1:port` inside the sandbox (see
    /// [`warren_proto::Request::Accept`]): returns once the listener is bound;
    /// [`PendingAccept::accepted`] then waits for one connection.
    pub async fn listen(&self, port: u16) -> Result<PendingAccept, RuntimeError> {
        match proto::listen(self.conn().await?, port).await {
            Ok(l) => Ok(PendingAccept(l)),
            Err(e) => Err(port_error(e)),
        }
    }
}

/// A listener inside a sandbox waiting for one connection ([`AgentClient::listen`]).
/// Dropping it gives up the wait; the listener stays.
pub struct PendingAccept(proto::Listening<Box<dyn PortStream>>);

impl PendingAccept {
    /// The next connection made to the listener, as a byte stream.
    pub async fn accepted(self) -> Result<Box<dyn PortStream>, RuntimeError> {
        match self.0.accepted().await {
            Ok(raw) => Ok(Box::new(raw)),
            Err(e) => Err(port_error(e)),
        }
    }
}

fn port_error(e: ProtoError) -> RuntimeError {
    match e {
        ProtoError::Remote { code, message } => RuntimeError::Port {
            code: AgentCode::parse(&code),
            message,
        },
        e => RuntimeError::Agent(e),
    }
}

/// A command's events as the runtime reports them (`Started` is only the handshake).
fn exec_event(ev: Result<ExecEvent, ProtoError>) -> Option<Result<ExecOutput, RuntimeError>> {
    match ev {
        Ok(ExecEvent::Started { .. }) => None,
        Ok(ExecEvent::Stdout(b)) => Some(Ok(ExecOutput::Stdout(b))),
        Ok(ExecEvent::Stderr(b)) => Some(Ok(ExecOutput::Stderr(b))),
        Ok(ExecEvent::Exit {
            exit_code,
            signal,
            timed_out,
            duration_us,
        }) => Some(Ok(ExecOutput::Exit(ExitInfo {
            exit_code,
            signal,
            timed_out,
            duration_us,
        }))),
        Err(e) => Some(Err(RuntimeError::Agent(e))),
    }
}

/// A command the agent refused to start is [`RuntimeError::Spawn`].
fn exec_error(e: ProtoError) -> RuntimeError {
    match e {
        ProtoError::Remote { code, message } => RuntimeError::Spawn {
            code: AgentCode::parse(&code),
            message,
        },
        e => RuntimeError::Agent(e),
    }
}

/// The agent's refusals become [`RuntimeError::File`]; an error of the caller's own data
/// stream (which the proto client wraps in an I/O error) comes back as it was.
fn file_error(e: ProtoError) -> RuntimeError {
    match e {
        ProtoError::Remote { code, message } => RuntimeError::File {
            code: AgentCode::parse(&code),
            message,
        },
        ProtoError::Io(io) => match io.get_ref().is_some_and(|inner| inner.is::<RuntimeError>()) {
            true => match io
                .into_inner()
                .map(|inner| inner.downcast::<RuntimeError>())
            {
                Some(Ok(original)) => *original,
                // Unreachable after the check above; keep the error either way.
                Some(Err(other)) => RuntimeError::Agent(ProtoError::Io(io::Error::other(other))),
                None => RuntimeError::Agent(ProtoError::Closed),
            },
            false => RuntimeError::Agent(ProtoError::Io(io)),
        },
        e => RuntimeError::Agent(e),
    }
}

/// Spawn refusals become [`RuntimeError::Spawn`], the others [`RuntimeError::Process`]; an
/// error of the caller's own stdin stream comes back as it was.
fn process_error(e: ProtoError) -> RuntimeError {
    match e {
        ProtoError::Remote { code, message } => match AgentCode::parse(&code) {
            code if SPAWN_CODES.contains(&code) => RuntimeError::Spawn { code, message },
            code => RuntimeError::Process { code, message },
        },
        e => file_error(e),
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
    fn events_map() {
        assert!(exec_event(Ok(ExecEvent::Started { pid: 1 })).is_none());
        assert!(matches!(
            exec_event(Ok(ExecEvent::Stdout(Bytes::from_static(b"x")))),
            Some(Ok(ExecOutput::Stdout(b))) if b == "x"
        ));
        assert!(matches!(
            exec_event(Ok(ExecEvent::Exit {
                exit_code: 137,
                signal: Some(9),
                timed_out: false,
                duration_us: 5
            })),
            Some(Ok(ExecOutput::Exit(ExitInfo {
                exit_code: 137,
                signal: Some(9),
                ..
            })))
        ));
        assert!(matches!(
            exec_event(Err(ProtoError::Closed)),
            Some(Err(RuntimeError::Agent(ProtoError::Closed)))
        ));
        assert!(matches!(
            exec_error(remote("not_found")),
            RuntimeError::Spawn {
                code: AgentCode::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn file_errors_map() {
        assert!(matches!(
            file_error(remote("not_found")),
            RuntimeError::File { code: AgentCode::NotFound, message } if message == "m"
        ));
        let wrapped = ProtoError::Io(io::Error::other(RuntimeError::Setup("body".into())));
        assert!(matches!(
            file_error(wrapped),
            RuntimeError::Setup(m) if m == "body"
        ));
        assert!(matches!(
            file_error(ProtoError::Io(io::Error::from(io::ErrorKind::BrokenPipe))),
            RuntimeError::Agent(ProtoError::Io(_))
        ));
        assert!(matches!(
            file_error(ProtoError::Closed),
            RuntimeError::Agent(ProtoError::Closed)
        ));
    }

    #[test]
    fn process_errors_map() {
        for code in SPAWN_CODES {
            assert!(matches!(
                process_error(remote(code.as_str())),
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
                process_error(remote(code)),
                RuntimeError::Process { code: c, message } if c.as_str() == code && message == "m"
            ));
        }
        let wrapped = ProtoError::Io(io::Error::other(RuntimeError::Setup("body".into())));
        assert!(matches!(
            process_error(wrapped),
            RuntimeError::Setup(m) if m == "body"
        ));
        assert!(matches!(
            process_error(ProtoError::Closed),
            RuntimeError::Agent(ProtoError::Closed)
        ));
    }
}
