//! A connection to a fake sandbox's agent, watched on its way: it reads the frames that pass
//! (never changes them) to count what tests ask about, and injects the few faults a kernel
//! sandbox would produce but a hosted agent cannot:
//!
//! - an exec of `broken`: after its first stdout frame the connection fails (an agent that
//!   went away mid-command);
//! - an upload to a sandbox with a disk limit: once the bytes sent pass what is left of the
//!   limit, the agent is cut off and the host reads `quota_exceeded` (what the agent answers
//!   on `EDQUOT`);
//! - counted on drop: an exec whose exit was not read (killed by its caller), an upload whose
//!   end was not sent (aborted).

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio_util::codec::{Decoder, Encoder};
use warren_proto::{Event, Frame, FrameCodec, Request};

/// What the fake counts across all its sandboxes.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub drops: Arc<AtomicUsize>,
    pub aborted_writes: Arc<AtomicUsize>,
}

#[derive(Debug, PartialEq)]
enum Kind {
    /// No complete request yet.
    Unknown,
    Exec {
        broken: bool,
    },
    Write,
    Other,
}

pub(crate) struct Watched {
    inner: UnixStream,
    kind: Kind,
    /// Bytes written, not yet decoded (only while the request is being understood or an
    /// upload's end is awaited).
    sent: BytesMut,
    /// Bytes read, not yet decoded (only for execs, until their exit).
    got: BytesMut,
    /// The exchange ended as it should (exit read, upload ended).
    done: bool,
    /// `broken` exec: the stdout frame passed, fail from now on.
    failing: bool,
    /// Bytes an upload may still send (`None`: no limit).
    room: Option<u64>,
    /// A synthetic answer for the host to read instead of the agent's, then EOF.
    answer: Option<BytesMut>,
    counters: Arc<Counters>,
}

impl Watched {
    pub(crate) fn new(inner: UnixStream, room: Option<u64>, counters: Arc<Counters>) -> Watched {
        Watched {
            inner,
            kind: Kind::Unknown,
            sent: BytesMut::new(),
            got: BytesMut::new(),
            done: false,
            failing: false,
            room,
            answer: None,
            counters,
        }
    }

    /// Looks at what the host sent; returns an error answer to inject, if any.
    fn saw_sent(&mut self, data: &[u8]) {
        let watching = match self.kind {
            Kind::Unknown => true,
            Kind::Write => !self.done,
            _ => false,
        };
        if !watching {
            return;
        }
        self.sent.extend_from_slice(data);
        while let Ok(Some(frame)) = FrameCodec.decode(&mut self.sent) {
            match (&self.kind, frame) {
                (Kind::Unknown, Frame::Request(Request::Exec(spec))) => {
                    let broken = spec.argv.first().is_some_and(|a| a == "broken");
                    self.kind = Kind::Exec { broken };
                    self.sent.clear();
                    return;
                }
                (Kind::Unknown, Frame::Request(Request::WriteFile { .. })) => {
                    self.kind = Kind::Write;
                }
                (Kind::Unknown, _) => {
                    self.kind = Kind::Other;
                    self.sent.clear();
                    return;
                }
                (Kind::Write, Frame::Data(d)) => {
                    if let Some(room) = self.room.as_mut() {
                        match room.checked_sub(d.len() as u64) {
                            Some(left) => *room = left,
                            None => {
                                let mut out = BytesMut::new();
                                let _ = FrameCodec.encode(
                                    Frame::Event(Event::Error {
                                        code: "quota_exceeded".into(),
                                        message: "write: Disk quota exceeded (os error 122)".into(),
                                    }),
                                    &mut out,
                                );
                                self.answer = Some(out);
                                self.done = true;
                                self.sent.clear();
                                return;
                            }
                        }
                    }
                }
                (Kind::Write, Frame::DataEnd) => {
                    self.done = true;
                    self.sent.clear();
                    return;
                }
                _ => {}
            }
        }
    }

    /// Looks at what the agent answered (execs only).
    fn saw_got(&mut self, data: &[u8]) {
        let Kind::Exec { broken } = self.kind else {
            return;
        };
        if self.done {
            return;
        }
        self.got.extend_from_slice(data);
        while let Ok(Some(frame)) = FrameCodec.decode(&mut self.got) {
            match frame {
                Frame::Event(Event::Exit { .. } | Event::Error { .. }) => {
                    self.done = true;
                    self.got.clear();
                    return;
                }
                Frame::Stdout(_) if broken => self.failing = true,
                _ => {}
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(answer) = this.answer.as_mut() {
            let n = answer.len().min(buf.remaining());
            buf.put_slice(&answer[..n]);
            answer.advance(n);
            return Poll::Ready(Ok(()));
        }
        if this.failing {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the fake agent went away (`broken`)",
            )));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &res {
            let fresh = buf.filled()[before..].to_vec();
            this.saw_got(&fresh);
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.answer.is_some() {
            // Cut off: the rest of the upload goes nowhere.
            return Poll::Ready(Ok(data.len()));
        }
        let res = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &res {
            let n = *n;
            this.saw_sent(&data[..n]);
            if this.answer.is_some() {
                // The agent sees the upload end early and drops its temporary file.
                // SAFETY: shutdown(2) on the descriptor `inner` owns; no memory is involved.
                unsafe { libc::shutdown(this.inner.as_raw_fd(), libc::SHUT_RDWR) };
            }
        }
        res
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        match self.kind {
            Kind::Exec { .. } => self.counters.drops.fetch_add(1, Ordering::SeqCst),
            Kind::Write => self.counters.aborted_writes.fetch_add(1, Ordering::SeqCst),
            Kind::Unknown | Kind::Other => 0,
        };
    }
}
