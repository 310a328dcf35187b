//! File access for [`NativeRuntime`]: each call is one connection to the sandbox's agent,
//! which resolves paths in the sandbox's own root.

use std::io;

use futures::StreamExt;
use tokio::net::UnixStream;
use warren_proto::host as agent;
use warren_proto::{ProtoError, Request};

use crate::{connect, spec, NativeRuntime};
use warren_runtime::{ByteStream, FileOp, FileOpResult, FileStat, RuntimeError, WriteOptions};

impl NativeRuntime {
    /// Connects to the agent of sandbox `id`; an unknown sandbox is [`RuntimeError::NotFound`].
    pub(super) async fn agent_stream(&self, id: &str) -> Result<UnixStream, RuntimeError> {
        if spec::validate_id(id).is_err() {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let paths = self.inner.paths(id);
        if !tokio::fs::try_exists(&paths.dir).await.unwrap_or(false) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        match connect(&paths.socket).await {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(RuntimeError::NotFound(id.to_string()))
            }
            Err(e) => Err(RuntimeError::Agent(ProtoError::Io(e))),
        }
    }

    pub(super) async fn read_file_impl(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileStat, ByteStream), RuntimeError> {
        let stream = self.agent_stream(id).await?;
        let (stat, data) = agent::read_file(stream, path)
            .await
            .map_err(map_file_error)?;
        Ok((stat, Box::pin(data.map(|r| r.map_err(map_file_error)))))
    }

    pub(super) async fn read_archive_impl(
        &self,
        id: &str,
        path: &str,
    ) -> Result<(FileStat, ByteStream), RuntimeError> {
        let stream = self.agent_stream(id).await?;
        let (stat, data) = agent::read_archive(stream, path)
            .await
            .map_err(map_file_error)?;
        Ok((stat, Box::pin(data.map(|r| r.map_err(map_file_error)))))
    }

    pub(super) async fn write_file_impl(
        &self,
        id: &str,
        path: &str,
        opts: WriteOptions,
        data: ByteStream,
    ) -> Result<FileStat, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        let req = Request::WriteFile {
            path: path.to_string(),
            mode: opts.mode,
            parents: opts.parents,
            uid: opts.uid,
            gid: opts.gid,
        };
        agent::write_file(stream, req, data)
            .await
            .map_err(map_file_error)
    }

    pub(super) async fn file_op_impl(
        &self,
        id: &str,
        op: FileOp,
    ) -> Result<FileOpResult, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        agent::file_op(stream, op).await.map_err(map_file_error)
    }
}

impl NativeRuntime {
    pub(super) async fn search_files_impl(
        &self,
        id: &str,
        spec: warren_runtime::SearchSpec,
    ) -> Result<warren_runtime::SearchOutcome, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        let (matches, files_scanned, truncated) = agent::search_files(stream, spec)
            .await
            .map_err(map_file_error)?;
        Ok(warren_runtime::SearchOutcome {
            matches,
            files_scanned,
            truncated,
        })
    }

    pub(super) async fn replace_files_impl(
        &self,
        id: &str,
        spec: warren_runtime::ReplaceSpec,
    ) -> Result<warren_runtime::ReplaceOutcome, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        let (files, total_replacements, truncated) = agent::replace_files(stream, spec)
            .await
            .map_err(map_file_error)?;
        Ok(warren_runtime::ReplaceOutcome {
            files,
            total_replacements,
            truncated,
        })
    }

    /// The watch lives as long as its agent connection: dropping the stream closes it.
    pub(super) async fn watch_files_impl(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<warren_runtime::WatchStream, RuntimeError> {
        let stream = self.agent_stream(id).await?;
        let events = agent::watch_files(stream, path, recursive)
            .await
            .map_err(map_file_error)?;
        Ok(Box::pin(events.map(|r| r.map_err(map_file_error))))
    }
}

/// The agent's refusals become [`RuntimeError::File`]; an error of the caller's own data
/// stream (which the proto client wraps in an I/O error) comes back as it was.
pub(super) fn map_file_error(e: ProtoError) -> RuntimeError {
    match e {
        ProtoError::Remote { code, message } => RuntimeError::File { code, message },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_map() {
        assert!(matches!(
            map_file_error(ProtoError::Remote {
                code: "not_found".into(),
                message: "m".into()
            }),
            RuntimeError::File { code, message } if code == "not_found" && message == "m"
        ));
        let wrapped = ProtoError::Io(io::Error::other(RuntimeError::Setup("body".into())));
        assert!(matches!(
            map_file_error(wrapped),
            RuntimeError::Setup(m) if m == "body"
        ));
        assert!(matches!(
            map_file_error(ProtoError::Io(io::Error::from(io::ErrorKind::BrokenPipe))),
            RuntimeError::Agent(ProtoError::Io(_))
        ));
        assert!(matches!(
            map_file_error(ProtoError::Closed),
            RuntimeError::Agent(ProtoError::Closed)
        ));
    }
}
