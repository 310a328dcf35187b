//! Ports for [`NativeRuntime`]: one agent connection per TCP connection; the agent dials the
//! port on the sandbox's own loopback and splices the bytes (see
//! [`warren_proto::Request::Connect`]).

use std::io;

use tokio::net::UnixStream;
use warren_proto::host as agent;
use warren_proto::ProtoError;

use crate::{connect, spec, NativeRuntime};
use warren_runtime::{PortStream, RuntimeError};

impl NativeRuntime {
    pub(super) async fn connect_port_impl(
        &self,
        id: &str,
        port: u16,
    ) -> Result<Box<dyn PortStream>, RuntimeError> {
        let stream = self.port_agent_stream(id).await?;
        match agent::connect(stream, port).await {
            Ok(raw) => Ok(Box::new(raw)),
            Err(ProtoError::Remote { code, message }) => Err(RuntimeError::Port { code, message }),
            Err(e) => Err(RuntimeError::Agent(e)),
        }
    }

    /// Connects to the agent of sandbox `id`; an unknown sandbox is [`RuntimeError::NotFound`].
    async fn port_agent_stream(&self, id: &str) -> Result<UnixStream, RuntimeError> {
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
}
