//! Search, replace and watch requests ([`Request::SearchFiles`], [`Request::ReplaceFiles`],
//! [`Request::WatchFiles`]).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::{unexpected, FrameStream};
use crate::{
    Event, FileEventKind, FileKind, Frame, FrameCodec, ProtoError, ReplaceSpec, ReplacedFile,
    Request, SearchMatch, SearchSpec,
};

/// Runs a search: `(matches, files_scanned, truncated)`.
pub async fn search_files<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    spec: SearchSpec,
) -> Result<(Vec<SearchMatch>, u64, bool), ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed
        .send(Frame::Request(Request::SearchFiles(spec)))
        .await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::SearchResult {
            matches,
            files_scanned,
            truncated,
        }))) => Ok((matches, files_scanned, truncated)),
        other => Err(unexpected(other)),
    }
}

/// Runs a replacement: `(files, total_replacements, truncated)`.
pub async fn replace_files<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    spec: ReplaceSpec,
) -> Result<(Vec<ReplacedFile>, u64, bool), ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed
        .send(Frame::Request(Request::ReplaceFiles(spec)))
        .await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::ReplaceResult {
            files,
            total_replacements,
            truncated,
        }))) => Ok((files, total_replacements, truncated)),
        other => Err(unexpected(other)),
    }
}

/// One change reported by a watch.
#[derive(Debug, Clone, PartialEq)]
pub struct FileChange {
    pub event: FileEventKind,
    pub path: String,
    pub kind: FileKind,
    /// New path of a rename.
    pub to: Option<String>,
}

/// Starts watching `path`; returns once the agent confirmed the watch ([`Event::Watching`]),
/// so every change made after this returns is reported. An [`Event::Error`] becomes
/// [`ProtoError::Remote`].
pub async fn watch_files<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    io: T,
    path: impl Into<String>,
    recursive: bool,
) -> Result<WatchEvents, ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    let req = Request::WatchFiles {
        path: path.into(),
        recursive,
    };
    framed.send(Frame::Request(req)).await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::Watching))) => Ok(WatchEvents {
            frames: Some(Box::pin(framed)),
        }),
        other => Err(unexpected(other)),
    }
}

/// The changes of a watch, until the agent closes the connection (then the stream ends with
/// [`ProtoError::Closed`]). Dropping it closes the connection, which ends the watch.
pub struct WatchEvents {
    frames: Option<FrameStream>,
}

impl std::fmt::Debug for WatchEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchEvents")
            .field("finished", &self.frames.is_none())
            .finish()
    }
}

impl Stream for WatchEvents {
    type Item = Result<FileChange, ProtoError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(frames) = this.frames.as_mut() else {
            return Poll::Ready(None);
        };
        let err = match ready!(frames.as_mut().poll_next(cx)) {
            Some(Ok(Frame::Event(Event::FileEvent {
                event,
                path,
                kind,
                to,
            }))) => {
                return Poll::Ready(Some(Ok(FileChange {
                    event,
                    path,
                    kind,
                    to,
                })))
            }
            other => unexpected(other),
        };
        this.frames = None;
        Poll::Ready(Some(Err(err)))
    }
}
