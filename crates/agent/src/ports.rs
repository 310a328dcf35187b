//! [`Request::Connect`](warren_proto::Request::Connect): a TCP connection to a port inside the
//! sandbox, spliced onto the host's connection.
//!
//! The agent connects to `127.0.0.1:port` (then `[::1]:port` as a fallback), answers
//! [`Event::Connected`] (or [`Event::Error`] `connection_refused`), and from then on copies raw
//! bytes both ways until both directions are done. A half-close travels: when one side stops
//! sending, the other side's write half is shut down, and the opposite direction goes on.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, FramedRead};
use warren_proto::AgentCode;
use warren_proto::{Event, Frame, FrameCodec};

use crate::error::ConnError;
use crate::root::Root;

/// Connects to `port` on the sandbox's loopback and splices the host connection onto it.
pub(crate) async fn connect(
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    root: &Root,
    port: u16,
) -> Result<(), ConnError> {
    let target = root.port(port);
    let dialed = match target {
        Ok(None) => dial(port).await,
        Ok(Some(addr)) => TcpStream::connect(addr).await,
        Err(e) => Err(e),
    };
    let mut tcp = match dialed {
        Ok(s) => s,
        Err(e) => {
            let mut out = BytesMut::new();
            FrameCodec.encode(
                Frame::Event(Event::Error {
                    code: AgentCode::ConnectionRefused.as_str().into(),
                    message: format!("cannot connect to port {port} in the sandbox: {e}"),
                }),
                &mut out,
            )?;
            w.write_all(&out).await?;
            return Ok(());
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut out = BytesMut::new();
    FrameCodec.encode(Frame::Event(Event::Connected), &mut out)?;
    w.write_all(&out).await?;

    // Bytes the host sent right behind its request may already sit in the codec's buffer:
    // they belong to the TCP stream and go first.
    let parts = frames.into_parts();
    if !parts.read_buf.is_empty() {
        tcp.write_all(&parts.read_buf).await?;
    }
    let mut host = parts
        .io
        .reunite(w)
        .map_err(|e| ConnError::Io(io::Error::other(e.to_string())))?;
    // copy_bidirectional shuts down each write side once its source reached EOF (half-close)
    // and returns when both directions are done.
    tokio::io::copy_bidirectional(&mut host, &mut tcp).await?;
    Ok(())
}

async fn dial(port: u16) -> io::Result<TcpStream> {
    match TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(s) => Ok(s),
        Err(e4) => TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .map_err(|_| e4),
    }
}
