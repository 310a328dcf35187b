//! One connection: one request (see the protocol docs in [`warren_proto`]), handed to the
//! module that serves it.

use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::{Encoder, FramedRead};
use warren_proto::{Event, Frame, FrameCodec, Request, PROTOCOL_VERSION};

use crate::error::ConnError;
use crate::exec::exec;
use crate::procs::SharedProcs;
use crate::reaper::SharedReaper;
use crate::root::Root;
use crate::{archive, files, ports, procs, search, watch};

pub(crate) async fn handle(
    stream: UnixStream,
    reaper: SharedReaper,
    procs: SharedProcs,
    root: Arc<Root>,
    listeners: ports::SharedListeners,
) -> Result<(), ConnError> {
    let (r, mut w) = stream.into_split();
    let mut frames = FramedRead::new(r, FrameCodec);
    let first = frames.next().await.ok_or(ConnError::NoRequest)??;
    match first {
        Frame::Request(Request::Ping) => {
            let mut out = BytesMut::with_capacity(64);
            FrameCodec.encode(
                Frame::Event(Event::Pong {
                    protocol: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                }),
                &mut out,
            )?;
            w.write_all(&out).await?;
            Ok(())
        }
        Frame::Request(Request::Exec(spec)) => exec(frames, w, spec, reaper, &root).await,
        Frame::Request(Request::ReadFile { path }) => files::read_file(w, root, path).await,
        Frame::Request(Request::ReadArchive { path }) => archive::read_archive(w, root, path).await,
        Frame::Request(Request::WriteFile {
            path,
            mode,
            parents,
            uid,
            gid,
        }) => {
            let req = files::WriteReq {
                path,
                mode,
                parents,
                uid,
                gid,
            };
            files::write_file(frames, w, root, req).await
        }
        Frame::Request(Request::FileOp(op)) => files::file_op(w, root, op).await,
        Frame::Request(Request::StartProcess(spec)) => {
            procs::start(w, procs, reaper, &root, spec).await
        }
        Frame::Request(Request::ListProcesses) => procs::list(w, procs).await,
        Frame::Request(Request::ProcessOp { selector, op }) => {
            procs::op(w, procs, selector, op).await
        }
        Frame::Request(Request::WriteStdin { selector }) => {
            procs::write_stdin(frames, w, procs, selector).await
        }
        Frame::Request(Request::Attach {
            selector,
            offset,
            follow,
        }) => procs::attach(frames, w, procs, selector, offset, follow).await,
        Frame::Request(Request::Connect { port }) => ports::connect(frames, w, &root, port).await,
        Frame::Request(Request::Accept { port }) => {
            ports::accept(frames, w, &root, listeners, port).await
        }
        Frame::Request(Request::SearchFiles(spec)) => search::search(w, root, spec).await,
        Frame::Request(Request::ReplaceFiles(spec)) => search::replace(w, root, spec).await,
        Frame::Request(Request::WatchFiles { path, recursive }) => {
            watch::watch(frames, w, root, path, recursive).await
        }
        _ => Err(ConnError::NotARequest),
    }
}
