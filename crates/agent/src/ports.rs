//! [`Request::Connect`](warren_proto::Request::Connect): a TCP connection to a port inside the
//! sandbox, spliced onto the host's connection.
//!
//! The agent connects to `127.0.0.1:port` (then `[::1]:port` as a fallback), answers
//! [`Event::Connected`] (or [`Event::Error`] `connection_refused`), and from then on copies raw
//! bytes both ways until both directions are done. A half-close travels: when one side stops
//! sending, the other side's write half is shut down, and the opposite direction goes on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
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
    let tcp = match dialed {
        Ok(s) => s,
        Err(e) => {
            let event = Event::Error {
                code: AgentCode::ConnectionRefused.as_str().into(),
                message: format!("cannot connect to port {port} in the sandbox: {e}"),
            };
            return send(&mut w, event).await;
        }
    };
    splice(frames, w, tcp).await
}

/// Answers `Connected` and copies bytes between the host connection and `tcp` until both
/// directions are done.
async fn splice(
    frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    mut tcp: TcpStream,
) -> Result<(), ConnError> {
    let _ = tcp.set_nodelay(true);
    send(&mut w, Event::Connected).await?;

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

async fn send(w: &mut OwnedWriteHalf, event: Event) -> Result<(), ConnError> {
    let mut out = BytesMut::new();
    FrameCodec.encode(Frame::Event(event), &mut out)?;
    w.write_all(&out).await?;
    Ok(())
}

/// The agent's listeners of [`Request::Accept`](warren_proto::Request::Accept), by port:
/// bound by the first request for a port and kept, so that connections arriving while no
/// host connection waits queue in the backlog.
pub(crate) type SharedListeners = Rc<RefCell<HashMap<u16, Rc<TcpListener>>>>;

/// Listens on `port` of the sandbox's loopback (once per port), answers `Listening`, waits
/// for one connection and splices the host connection onto it. The host closing its
/// connection first ends the wait.
pub(crate) async fn accept(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    root: &Root,
    listeners: SharedListeners,
    port: u16,
) -> Result<(), ConnError> {
    let existing = listeners.borrow().get(&port).cloned();
    let listener = match existing {
        Some(l) => l,
        None => match listen(root, port) {
            Ok(l) => {
                let l = Rc::new(l);
                listeners.borrow_mut().insert(port, l.clone());
                l
            }
            Err(e) => {
                let code = match e.kind() {
                    io::ErrorKind::AddrInUse => AgentCode::AddressInUse,
                    _ => AgentCode::Io,
                };
                let event = Event::Error {
                    code: code.as_str().into(),
                    message: format!("cannot listen on port {port} in the sandbox: {e}"),
                };
                return send(&mut w, event).await;
            }
        },
    };
    send(&mut w, Event::Listening).await?;
    let tcp = tokio::select! {
        accepted = listener.accept() => accepted?.0,
        // The host sends nothing more before `Connected`: anything (or EOF) ends the wait.
        _ = frames.next() => return Ok(()),
    };
    splice(frames, w, tcp).await
}

/// Binds `127.0.0.1:port` (a hosted agent: the host address its port map gives, if any).
fn listen(root: &Root, port: u16) -> io::Result<TcpListener> {
    let addr = root
        .port(port)?
        .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn dial(port: u16) -> io::Result<TcpStream> {
    match TcpStream::connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
        Ok(s) => Ok(s),
        Err(e4) => TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .map_err(|_| e4),
    }
}
