//! The host side of the agent protocol: [`ping`], [`exec`], [`read_file`], [`write_file`] and
//! [`file_op`] over any byte stream.
//!
//! Each call consumes one connection (one connection carries one conversation).

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tokio_util::codec::{Framed, FramedRead, FramedWrite};

mod search;
pub use search::{replace_files, search_files, watch_files, FileChange, WatchEvents};

use crate::{
    Event, ExecSpec, FileOp, FileOpResult, FileStat, Frame, FrameCodec, ProcessInfo, ProcessOp,
    ProcessSpec, ProtoError, Request, MAX_FRAME_LEN,
};

/// Stdin is sent in frames of at most this many bytes (well below [`MAX_FRAME_LEN`]).
const STDIN_CHUNK: usize = 256 * 1024;
const _: () = assert!(STDIN_CHUNK < MAX_FRAME_LEN);

/// What a running command reports after [`exec`] returned.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Never yielded by [`ExecEvents`] (the pid is in [`ExecEvents::pid`]); kept so callers can
    /// forward the start of a command through the same type.
    Started {
        pid: i32,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// The last event; `exit_code` is 128+signal for a signal death.
    Exit {
        exit_code: i32,
        signal: Option<i32>,
        timed_out: bool,
        duration_us: u64,
    },
}

/// Checks that the agent answers; returns `(protocol, agent_version)`.
pub async fn ping<T: AsyncRead + AsyncWrite + Unpin>(io: T) -> Result<(u32, String), ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed.send(Frame::Request(Request::Ping)).await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::Pong {
            protocol,
            agent_version,
        }))) => Ok((protocol, agent_version)),
        Some(Ok(Frame::Event(Event::Error { code, message }))) => {
            Err(ProtoError::Remote { code, message })
        }
        Some(Ok(other)) => Err(ProtoError::Unexpected(describe(&other))),
        Some(Err(e)) => Err(e),
        None => Err(ProtoError::Closed),
    }
}

/// Runs a command through the agent.
///
/// Sends [`Request::Exec`], then, if `stdin` is `Some`, the stdin bytes and
/// [`Frame::StdinEof`] from a spawned task (`spec.stdin` is set to `stdin.is_some()`: without
/// bytes the command reads `/dev/null`), concurrently with reading the output (so a
/// command that writes a lot before reading its stdin cannot deadlock). Waits for
/// [`Event::Started`] (an [`Event::Error`] becomes [`ProtoError::Remote`]) and returns the
/// remaining events. Must be called within a tokio runtime.
pub async fn exec<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    io: T,
    mut spec: ExecSpec,
    stdin: Option<Bytes>,
) -> Result<ExecEvents, ProtoError> {
    // Without stdin bytes there is no way to send any later: give the command /dev/null
    // rather than a pipe that never ends.
    spec.stdin = stdin.is_some();
    let (r, w) = tokio::io::split(io);
    let mut writer = FramedWrite::new(w, FrameCodec);
    writer.send(Frame::Request(Request::Exec(spec))).await?;

    let (stdin_task, writer) = match stdin {
        Some(data) => (Some(tokio::spawn(send_exec_stdin(writer, data))), None),
        None => (None, Some(Box::new(writer) as Box<dyn Send>)),
    };
    let mut events = ExecEvents {
        pid: 0,
        frames: Some(Box::pin(FramedRead::new(r, FrameCodec))),
        stdin_task,
        _writer: writer,
    };
    // On any error below, dropping `events` stops the stdin writer and closes the connection.
    let frames = events.frames.as_mut().ok_or(ProtoError::Closed)?;
    match frames.next().await {
        Some(Ok(Frame::Event(Event::Started { pid }))) => {
            events.pid = pid;
            Ok(events)
        }
        Some(Ok(Frame::Event(Event::Error { code, message }))) => {
            Err(ProtoError::Remote { code, message })
        }
        Some(Ok(other)) => Err(ProtoError::Unexpected(describe(&other))),
        Some(Err(e)) => Err(e),
        None => Err(ProtoError::Closed),
    }
}

async fn send_exec_stdin<W: AsyncWrite + Unpin>(
    mut writer: FramedWrite<W, FrameCodec>,
    data: Bytes,
) {
    let mut offset = 0;
    while offset < data.len() {
        let end = (offset + STDIN_CHUNK).min(data.len());
        if writer
            .feed(Frame::Stdin(data.slice(offset..end)))
            .await
            .is_err()
        {
            // The agent went away (or closed its side after an error): the reader reports it.
            return;
        }
        offset = end;
    }
    let _ = writer.send(Frame::StdinEof).await;
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame, ProtoError>> + Send>>;

/// The events of a started command: [`ExecEvent::Stdout`], [`ExecEvent::Stderr`], and finally
/// [`ExecEvent::Exit`], after which the stream ends. A connection that ends before the exit
/// yields [`ProtoError::Closed`]. Dropping it closes the connection, which makes the agent kill
/// the command's process group if it is still running.
pub struct ExecEvents {
    pid: i32,
    frames: Option<FrameStream>,
    stdin_task: Option<JoinHandle<()>>,
    /// Keeps the write half alive when no stdin task owns it.
    _writer: Option<Box<dyn Send>>,
}

impl ExecEvents {
    /// The command's pid in the sandbox; it leads its own process group and session.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    fn finish(&mut self) {
        self.frames = None;
        self._writer = None;
        if let Some(task) = self.stdin_task.take() {
            task.abort();
        }
    }
}

impl std::fmt::Debug for ExecEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecEvents")
            .field("pid", &self.pid)
            .field("finished", &self.frames.is_none())
            .finish()
    }
}

impl Drop for ExecEvents {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Stream for ExecEvents {
    type Item = Result<ExecEvent, ProtoError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(frames) = this.frames.as_mut() else {
            return Poll::Ready(None);
        };
        let last = match ready!(frames.as_mut().poll_next(cx)) {
            Some(Ok(Frame::Stdout(b))) => return Poll::Ready(Some(Ok(ExecEvent::Stdout(b)))),
            Some(Ok(Frame::Stderr(b))) => return Poll::Ready(Some(Ok(ExecEvent::Stderr(b)))),
            Some(Ok(Frame::Event(Event::Exit {
                exit_code,
                signal,
                timed_out,
                duration_us,
            }))) => Ok(ExecEvent::Exit {
                exit_code,
                signal,
                timed_out,
                duration_us,
            }),
            Some(Ok(Frame::Event(Event::Error { code, message }))) => {
                Err(ProtoError::Remote { code, message })
            }
            Some(Ok(other)) => Err(ProtoError::Unexpected(describe(&other))),
            Some(Err(e)) => Err(e),
            None => Err(ProtoError::Closed),
        };
        this.finish();
        Poll::Ready(Some(last))
    }
}

/// File content is sent in data frames of at most this many bytes.
const DATA_CHUNK: usize = 256 * 1024;
const _: () = assert!(DATA_CHUNK < MAX_FRAME_LEN);

/// Maps an answer that is neither the expected event nor data.
fn unexpected(frame: Option<Result<Frame, ProtoError>>) -> ProtoError {
    match frame {
        Some(Ok(Frame::Event(Event::Error { code, message }))) => {
            ProtoError::Remote { code, message }
        }
        Some(Ok(other)) => ProtoError::Unexpected(describe(&other)),
        Some(Err(e)) => e,
        None => ProtoError::Closed,
    }
}

/// Streams a regular file out of the sandbox: returns its metadata and its content.
///
/// An [`Event::Error`] (instead of the metadata, or instead of [`Frame::DataEnd`] when
/// reading failed midway) becomes [`ProtoError::Remote`]. Dropping the [`FileData`] early
/// closes the connection.
pub async fn read_file<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    io: T,
    path: impl Into<String>,
) -> Result<(FileStat, FileData), ProtoError> {
    read_stream(io, Request::ReadFile { path: path.into() }).await
}

/// Streams the directory tree at `path` out of the sandbox as a tar archive: returns the
/// directory's metadata and the archive's bytes (see [`Request::ReadArchive`]). Errors as
/// in [`read_file`].
pub async fn read_archive<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    io: T,
    path: impl Into<String>,
) -> Result<(FileStat, FileData), ProtoError> {
    read_stream(io, Request::ReadArchive { path: path.into() }).await
}

/// Send a request that the agent answers with [`Event::File`] and then a data stream.
async fn read_stream<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    io: T,
    req: Request,
) -> Result<(FileStat, FileData), ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed.send(Frame::Request(req)).await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::File(stat)))) => Ok((
            stat,
            FileData {
                frames: Some(Box::pin(framed)),
            },
        )),
        other => Err(unexpected(other)),
    }
}

/// The content of a file being read: chunks of bytes, ending after the agent's
/// [`Frame::DataEnd`]. A connection that ends before it yields [`ProtoError::Closed`]; an
/// error is always the last item.
pub struct FileData {
    frames: Option<FrameStream>,
}

impl std::fmt::Debug for FileData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileData")
            .field("finished", &self.frames.is_none())
            .finish()
    }
}

impl Stream for FileData {
    type Item = Result<Bytes, ProtoError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(frames) = this.frames.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(frames.as_mut().poll_next(cx));
        let last = match frame {
            Some(Ok(Frame::Data(b))) => return Poll::Ready(Some(Ok(b))),
            Some(Ok(Frame::DataEnd)) => None,
            other => Some(Err(unexpected(other))),
        };
        this.frames = None;
        Poll::Ready(last)
    }
}

/// Writes a file atomically through the agent: sends `req` (a [`Request::WriteFile`]), the
/// bytes of `data` as [`Frame::Data`] chunks, then [`Frame::DataEnd`], and returns the
/// metadata of the written file.
///
/// If `data` yields an error, the connection is dropped without `DataEnd` (so the agent
/// discards its temporary file and leaves the target alone) and the error is returned as
/// [`ProtoError::Io`] wrapping it (`io::Error::other`: get it back with
/// `into_inner()` and `downcast`). An [`Event::Error`] from the agent, even one that
/// arrives while data is still being sent, becomes [`ProtoError::Remote`].
pub async fn write_file<T, S, E>(io: T, req: Request, data: S) -> Result<FileStat, ProtoError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !matches!(req, Request::WriteFile { .. }) {
        return Err(ProtoError::Unexpected(format!(
            "write_file needs a write-file request, not a {}",
            describe(&Frame::Request(req))
        )));
    }
    match send_with_data(io, req, data).await? {
        Some(Ok(Frame::Event(Event::File(stat)))) => Ok(stat),
        other => Err(unexpected(other)),
    }
}

/// Send `req`, then `data` as [`Frame::Data`] chunks and [`Frame::DataEnd`], and return the
/// agent's answer. The agent answers early only to refuse, so that is watched for while
/// sending; if `data` fails, the connection is dropped without `DataEnd` (the agent then
/// discards what it received).
async fn send_with_data<T, S, E>(
    io: T,
    req: Request,
    data: S,
) -> Result<Option<Result<Frame, ProtoError>>, ProtoError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (r, w) = tokio::io::split(io);
    let mut reader = FramedRead::new(r, FrameCodec);
    let mut writer = FramedWrite::new(w, FrameCodec);
    writer.send(Frame::Request(req)).await?;
    futures::pin_mut!(data);
    loop {
        let chunk = tokio::select! {
            biased;
            frame = reader.next() => return Err(early_answer(frame)),
            chunk = data.next() => chunk,
        };
        let mut bytes = match chunk {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(ProtoError::Io(std::io::Error::other(e))),
            None => break,
        };
        while !bytes.is_empty() {
            let part = bytes.split_to(bytes.len().min(DATA_CHUNK));
            tokio::select! {
                biased;
                frame = reader.next() => return Err(early_answer(frame)),
                res = writer.send(Frame::Data(part)) => {
                    if let Err(e) = res {
                        return Err(error_after_send_failure(&mut reader, e).await);
                    }
                }
            }
        }
    }
    if let Err(e) = writer.send(Frame::DataEnd).await {
        return Err(error_after_send_failure(&mut reader, e).await);
    }
    Ok(reader.next().await)
}

/// An answer that arrived before the data was all sent: only an error makes sense.
fn early_answer(frame: Option<Result<Frame, ProtoError>>) -> ProtoError {
    match frame {
        Some(Ok(Frame::Event(e))) if !matches!(e, Event::Error { .. }) => ProtoError::Unexpected(
            format!("{} before the end of the data", describe(&Frame::Event(e))),
        ),
        other => unexpected(other),
    }
}

/// Sending failed, most likely because the agent refused and closed: prefer its reason.
async fn error_after_send_failure<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, FrameCodec>,
    send_error: ProtoError,
) -> ProtoError {
    match tokio::time::timeout(std::time::Duration::from_secs(1), reader.next()).await {
        Ok(Some(Ok(Frame::Event(Event::Error { code, message })))) => {
            ProtoError::Remote { code, message }
        }
        _ => send_error,
    }
}

/// Runs one metadata operation ([`FileOp`]).
pub async fn file_op<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    op: FileOp,
) -> Result<FileOpResult, ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed.send(Frame::Request(Request::FileOp(op))).await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::FileOp(res)))) => Ok(res),
        other => Err(unexpected(other)),
    }
}

/// Opens a TCP connection to `port` inside the sandbox ([`Request::Connect`]): sends the
/// request, waits for [`Event::Connected`] (an [`Event::Error`], e.g. `connection_refused`,
/// becomes [`ProtoError::Remote`]) and returns the connection, which from then on carries the
/// raw bytes of that TCP stream. Bytes the agent sent right behind `Connected` (already read
/// into the codec's buffer) are replayed first.
pub async fn connect<T: AsyncRead + AsyncWrite + Send + Unpin>(
    io: T,
    port: u16,
) -> Result<RawStream<T>, ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed
        .send(Frame::Request(Request::Connect { port }))
        .await?;
    expect_event(&mut framed, |e| matches!(e, Event::Connected)).await?;
    Ok(raw(framed))
}

/// Waits for the next frame to be the event `want` picks; an [`Event::Error`] becomes
/// [`ProtoError::Remote`], anything else [`ProtoError::Unexpected`].
async fn expect_event<T: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<T, FrameCodec>,
    want: fn(&Event) -> bool,
) -> Result<(), ProtoError> {
    match framed.next().await {
        Some(Ok(Frame::Event(e))) if want(&e) => Ok(()),
        Some(Ok(Frame::Event(Event::Error { code, message }))) => {
            Err(ProtoError::Remote { code, message })
        }
        Some(Ok(other)) => Err(ProtoError::Unexpected(describe(&other))),
        Some(Err(e)) => Err(e),
        None => Err(ProtoError::Closed),
    }
}

/// The connection after its last frame: raw bytes, those already read first.
fn raw<T>(framed: Framed<T, FrameCodec>) -> RawStream<T> {
    let parts = framed.into_parts();
    RawStream {
        prefix: parts.read_buf,
        io: parts.io,
    }
}

/// Listens on `port` inside the sandbox ([`Request::Accept`]): sends the request and waits
/// for [`Event::Listening`] (an [`Event::Error`], e.g. `address_in_use`, becomes
/// [`ProtoError::Remote`]). The listener is bound when this returns;
/// [`Listening::accepted`] waits for a connection.
pub async fn listen<T: AsyncRead + AsyncWrite + Send + Unpin>(
    io: T,
    port: u16,
) -> Result<Listening<T>, ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed
        .send(Frame::Request(Request::Accept { port }))
        .await?;
    expect_event(&mut framed, |e| matches!(e, Event::Listening)).await?;
    Ok(Listening { framed })
}

/// A [`Request::Accept`] waiting for a connection inside the sandbox. Dropping it gives up
/// the wait.
#[derive(Debug)]
pub struct Listening<T> {
    framed: Framed<T, FrameCodec>,
}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Listening<T> {
    /// Waits for [`Event::Connected`]: the connection then carries the raw bytes of the
    /// accepted TCP stream (bytes read past the frame are replayed first).
    pub async fn accepted(mut self) -> Result<RawStream<T>, ProtoError> {
        expect_event(&mut self.framed, |e| matches!(e, Event::Connected)).await?;
        Ok(raw(self.framed))
    }
}

/// A connection after [`connect`]: raw bytes both ways, starting with any bytes that were
/// read past the `Connected` frame.
#[derive(Debug)]
pub struct RawStream<T> {
    prefix: bytes::BytesMut,
    io: T,
}

impl<T> RawStream<T> {
    /// The underlying connection; bytes still in the replay buffer are lost.
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for RawStream<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for RawStream<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A short description of an unexpected frame (never its payload).
fn describe(frame: &Frame) -> String {
    match frame {
        Frame::Request(Request::Ping) => "ping request".into(),
        Frame::Request(Request::Exec(_)) => "exec request".into(),
        Frame::Request(Request::ReadFile { .. }) => "read-file request".into(),
        Frame::Request(Request::ReadArchive { .. }) => "read-archive request".into(),
        Frame::Request(Request::WriteFile { .. }) => "write-file request".into(),
        Frame::Request(Request::FileOp(_)) => "file-op request".into(),
        Frame::Request(Request::StartProcess(_)) => "start-process request".into(),
        Frame::Request(Request::ListProcesses) => "list-processes request".into(),
        Frame::Request(Request::ProcessOp { .. }) => "process-op request".into(),
        Frame::Request(Request::WriteStdin { .. }) => "write-stdin request".into(),
        Frame::Request(Request::Attach { .. }) => "attach request".into(),
        Frame::Request(Request::Connect { .. }) => "connect request".into(),
        Frame::Request(Request::Accept { .. }) => "accept request".into(),
        Frame::Request(Request::SearchFiles(_)) => "search-files request".into(),
        Frame::Request(Request::ReplaceFiles(_)) => "replace-files request".into(),
        Frame::Request(Request::WatchFiles { .. }) => "watch-files request".into(),
        Frame::Event(e) => match e {
            Event::File(_) => "file event".into(),
            Event::FileOp(_) => "file-op event".into(),
            Event::Process(_) => "process event".into(),
            Event::Processes { .. } => "processes event".into(),
            Event::Attached { .. } => "attached event".into(),
            Event::Lost { .. } => "lost event".into(),
            Event::Ended(_) => "ended event".into(),
            Event::Connected => "connected event".into(),
            Event::Listening => "listening event".into(),
            Event::SearchResult { .. } => "search-result event".into(),
            Event::ReplaceResult { .. } => "replace-result event".into(),
            Event::Watching => "watching event".into(),
            Event::FileEvent { .. } => "file event (watch)".into(),
            Event::Pong { .. } => "pong event".into(),
            Event::Started { .. } => "started event".into(),
            Event::Exit { .. } => "exit event".into(),
            Event::Error { .. } => "error event".into(),
        },
        Frame::Stdout(b) => format!("stdout frame of {} bytes", b.len()),
        Frame::Stderr(b) => format!("stderr frame of {} bytes", b.len()),
        Frame::Stdin(b) => format!("stdin frame of {} bytes", b.len()),
        Frame::StdinEof => "stdin eof frame".into(),
        Frame::Data(b) => format!("data frame of {} bytes", b.len()),
        Frame::DataEnd => "data end frame".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Durable processes

/// Sends `req` and expects one [`Event::Process`] back.
async fn process_request<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    req: Request,
) -> Result<ProcessInfo, ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed.send(Frame::Request(req)).await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::Process(info)))) => Ok(info),
        other => Err(unexpected(other)),
    }
}

/// Starts a durable process ([`Request::StartProcess`]); returns it once it runs. Spawn
/// failures (`not_found`, `bad_cwd`, `spawn_failed`) and `tag_in_use` are
/// [`ProtoError::Remote`].
pub async fn start_process<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    spec: ProcessSpec,
) -> Result<ProcessInfo, ProtoError> {
    process_request(io, Request::StartProcess(spec)).await
}

/// Every process the agent knows, running and recently exited.
pub async fn list_processes<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
) -> Result<Vec<ProcessInfo>, ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    framed.send(Frame::Request(Request::ListProcesses)).await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::Processes { processes: all }))) => Ok(all),
        other => Err(unexpected(other)),
    }
}

/// One operation on the process `selector` (pid or tag); returns its state afterwards.
pub async fn process_op<T: AsyncRead + AsyncWrite + Unpin>(
    io: T,
    selector: impl Into<String>,
    op: ProcessOp,
) -> Result<ProcessInfo, ProtoError> {
    let req = Request::ProcessOp {
        selector: selector.into(),
        op,
    };
    process_request(io, req).await
}

/// Feeds `data` to the stdin (or PTY) of process `selector`: each item is sent as it comes
/// (in [`Frame::Data`] frames), then [`Frame::DataEnd`]; returns the process's state. Stdin
/// stays open (close it with [`ProcessOp::CloseStdin`]).
///
/// If `data` yields an error, the connection is dropped (what was sent is written) and the
/// error comes back as [`ProtoError::Io`] wrapping it. A refusal from the agent
/// (`process_not_found`, `stdin_closed`), even while data is still being sent, becomes
/// [`ProtoError::Remote`].
pub async fn write_stdin<T, S, E>(
    io: T,
    selector: impl Into<String>,
    data: S,
) -> Result<ProcessInfo, ProtoError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let req = Request::WriteStdin {
        selector: selector.into(),
    };
    match send_with_data(io, req, data).await? {
        Some(Ok(Frame::Event(Event::Process(info)))) => Ok(info),
        other => Err(unexpected(other)),
    }
}

/// One item of an attachment ([`attach`]).
#[derive(Debug, Clone, PartialEq)]
pub enum AttachItem {
    /// Always first: output follows from `offset`; `end` was the log's end then.
    Attached {
        offset: u64,
        end: u64,
    },
    /// Output in `from..to` was dropped from the bounded log before it could be sent.
    Lost {
        from: u64,
        to: u64,
    },
    Stdout(Bytes),
    Stderr(Bytes),
    /// Always last.
    Ended(ProcessInfo),
}

/// Replays the output of process `selector` from byte `offset` and, with `follow`, follows it
/// until the process exited and everything was sent. Waits for [`Event::Attached`] (an
/// [`Event::Error`] becomes [`ProtoError::Remote`]); the returned stream yields that first.
pub async fn attach<T: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    io: T,
    selector: impl Into<String>,
    offset: u64,
    follow: bool,
) -> Result<AttachEvents, ProtoError> {
    let mut framed = Framed::new(io, FrameCodec);
    let req = Request::Attach {
        selector: selector.into(),
        offset,
        follow,
    };
    framed.send(Frame::Request(req)).await?;
    match framed.next().await {
        Some(Ok(Frame::Event(Event::Attached { offset, end }))) => Ok(AttachEvents {
            first: Some(AttachItem::Attached { offset, end }),
            frames: Some(Box::pin(framed)),
        }),
        other => Err(unexpected(other)),
    }
}

/// The items of an attachment: [`AttachItem::Attached`], then output and
/// [`AttachItem::Lost`] markers, and [`AttachItem::Ended`] last, after which the stream ends.
/// A connection that ends before `Ended` yields [`ProtoError::Closed`]; an error is always
/// the last item. Dropping it detaches (the process goes on).
pub struct AttachEvents {
    first: Option<AttachItem>,
    frames: Option<FrameStream>,
}

impl std::fmt::Debug for AttachEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachEvents")
            .field("finished", &self.frames.is_none())
            .finish()
    }
}

impl Stream for AttachEvents {
    type Item = Result<AttachItem, ProtoError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        let Some(frames) = this.frames.as_mut() else {
            return Poll::Ready(None);
        };
        let last = match ready!(frames.as_mut().poll_next(cx)) {
            Some(Ok(Frame::Stdout(b))) => return Poll::Ready(Some(Ok(AttachItem::Stdout(b)))),
            Some(Ok(Frame::Stderr(b))) => return Poll::Ready(Some(Ok(AttachItem::Stderr(b)))),
            Some(Ok(Frame::Event(Event::Lost { from, to }))) => {
                return Poll::Ready(Some(Ok(AttachItem::Lost { from, to })))
            }
            Some(Ok(Frame::Event(Event::Ended(info)))) => Ok(AttachItem::Ended(info)),
            other => Err(unexpected(other)),
        };
        this.frames = None;
        Poll::Ready(Some(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::DuplexStream;

    type AgentSide = Framed<DuplexStream, FrameCodec>;

    fn pair() -> (DuplexStream, AgentSide) {
        let (host, agent) = tokio::io::duplex(64 * 1024);
        (host, Framed::new(agent, FrameCodec))
    }

    fn exit(code: i32) -> Frame {
        Frame::Event(Event::Exit {
            exit_code: code,
            signal: None,
            timed_out: false,
            duration_us: 1,
        })
    }

    #[tokio::test]
    async fn ping_round_trip() {
        let (host, mut agent) = pair();
        let fake = tokio::spawn(async move {
            let req = agent.next().await.unwrap().unwrap();
            assert_eq!(req, Frame::Request(Request::Ping));
            agent
                .send(Frame::Event(Event::Pong {
                    protocol: 1,
                    agent_version: "v".into(),
                }))
                .await
                .unwrap();
        });
        assert_eq!(ping(host).await.unwrap(), (1, "v".to_owned()));
        fake.await.unwrap();
    }

    #[tokio::test]
    async fn exec_streams_stdin_and_events() {
        let (host, mut agent) = pair();
        let input = Bytes::from(
            (0..(STDIN_CHUNK * 2 + 10))
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        let expected = input.clone();
        let fake = tokio::spawn(async move {
            let Some(Ok(Frame::Request(Request::Exec(spec)))) = agent.next().await else {
                panic!("no exec");
            };
            assert!(spec.stdin);
            agent
                .send(Frame::Event(Event::Started { pid: 42 }))
                .await
                .unwrap();
            // Output before reading any stdin (the client must not deadlock).
            for _ in 0..64 {
                agent
                    .send(Frame::Stdout(Bytes::from(vec![1u8; 16 * 1024])))
                    .await
                    .unwrap();
            }
            let mut got = Vec::new();
            loop {
                match agent.next().await.unwrap().unwrap() {
                    Frame::Stdin(b) => {
                        assert!(b.len() <= STDIN_CHUNK);
                        got.extend_from_slice(&b);
                    }
                    Frame::StdinEof => break,
                    other => panic!("{other:?}"),
                }
            }
            assert!(got == expected);
            agent
                .send(Frame::Stderr(Bytes::from_static(b"e")))
                .await
                .unwrap();
            agent.send(exit(3)).await.unwrap();
        });
        let spec = ExecSpec {
            argv: vec!["cat".into()],
            ..Default::default()
        };
        let mut events = exec(host, spec, Some(input)).await.unwrap();
        assert_eq!(events.pid(), 42);
        let mut stdout = 0;
        let mut rest = Vec::new();
        while let Some(ev) = events.next().await {
            match ev.unwrap() {
                ExecEvent::Stdout(b) => stdout += b.len(),
                other => rest.push(other),
            }
        }
        assert_eq!(stdout, 64 * 16 * 1024);
        assert_eq!(
            rest,
            vec![
                ExecEvent::Stderr(Bytes::from_static(b"e")),
                ExecEvent::Exit {
                    exit_code: 3,
                    signal: None,
                    timed_out: false,
                    duration_us: 1
                }
            ]
        );
        fake.await.unwrap();
    }

    #[tokio::test]
    async fn exec_errors() {
        // Remote refusal.
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent
                .send(Frame::Event(Event::Error {
                    code: "not_found".into(),
                    message: "nope".into(),
                }))
                .await
                .unwrap();
        });
        match exec(host, ExecSpec::default(), None).await {
            Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "not_found"),
            other => panic!("{other:?}"),
        }

        // Connection closed before the exit.
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let Some(Ok(Frame::Request(Request::Exec(spec)))) = agent.next().await else {
                panic!("no exec");
            };
            assert!(!spec.stdin);
            agent
                .send(Frame::Event(Event::Started { pid: 1 }))
                .await
                .unwrap();
            agent
                .send(Frame::Stdout(Bytes::from_static(b"x")))
                .await
                .unwrap();
        });
        let spec = ExecSpec {
            stdin: true, // without stdin bytes the client turns this off
            ..Default::default()
        };
        let mut events = exec(host, spec, None).await.unwrap();
        assert!(matches!(
            events.next().await,
            Some(Ok(ExecEvent::Stdout(_)))
        ));
        assert!(matches!(events.next().await, Some(Err(ProtoError::Closed))));
        assert!(events.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_events_closes_the_connection() {
        let (host, mut agent) = pair();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent
                .send(Frame::Event(Event::Started { pid: 1 }))
                .await
                .unwrap();
            // Drain stdin until the host goes away.
            while let Some(Ok(_)) = agent.next().await {}
            let _ = tx.send(());
        });
        let events = exec(
            host,
            ExecSpec::default(),
            Some(Bytes::from(vec![0u8; 4 << 20])),
        )
        .await
        .unwrap();
        drop(events);
        tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
    }

    fn stat(path: &str, size: u64) -> FileStat {
        FileStat {
            path: path.into(),
            kind: crate::FileKind::File,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1,
            link_target: None,
            metadata: Default::default(),
        }
    }

    fn write_req(path: &str) -> Request {
        Request::WriteFile {
            path: path.into(),
            mode: Some(0o600),
            parents: true,
            uid: 1,
            gid: 2,
        }
    }

    #[tokio::test]
    async fn read_file_streams_until_data_end() {
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let Some(Ok(Frame::Request(Request::ReadFile { path }))) = agent.next().await else {
                panic!("no read");
            };
            assert_eq!(path, "/f");
            agent
                .send(Frame::Event(Event::File(stat("/f", 4))))
                .await
                .unwrap();
            agent
                .send(Frame::Data(Bytes::from_static(b"\0\xff")))
                .await
                .unwrap();
            agent
                .send(Frame::Data(Bytes::from_static(b"ab")))
                .await
                .unwrap();
            agent.send(Frame::DataEnd).await.unwrap();
            // Anything after DataEnd is not part of the file.
            let _ = agent.send(Frame::Data(Bytes::from_static(b"zz"))).await;
        });
        let (st, mut data) = read_file(host, "/f").await.unwrap();
        assert_eq!(st, stat("/f", 4));
        let mut got = Vec::new();
        while let Some(chunk) = data.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got, b"\0\xffab");
        assert!(data.next().await.is_none());
    }

    #[tokio::test]
    async fn read_file_errors() {
        // Refused up front.
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent
                .send(Frame::Event(Event::Error {
                    code: "is_a_directory".into(),
                    message: "/d".into(),
                }))
                .await
                .unwrap();
        });
        match read_file(host, "/d").await {
            Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "is_a_directory"),
            other => panic!("{other:?}"),
        }

        // Closed before DataEnd, and an error midway.
        for fail_with_error in [false, true] {
            let (host, mut agent) = pair();
            tokio::spawn(async move {
                let _ = agent.next().await;
                agent
                    .send(Frame::Event(Event::File(stat("/f", 9))))
                    .await
                    .unwrap();
                agent
                    .send(Frame::Data(Bytes::from_static(b"x")))
                    .await
                    .unwrap();
                if fail_with_error {
                    agent
                        .send(Frame::Event(Event::Error {
                            code: "io".into(),
                            message: "EIO".into(),
                        }))
                        .await
                        .unwrap();
                }
            });
            let (_, mut data) = read_file(host, "/f").await.unwrap();
            assert_eq!(
                data.next().await.unwrap().unwrap(),
                Bytes::from_static(b"x")
            );
            match data.next().await {
                Some(Err(ProtoError::Remote { code, .. })) => {
                    assert!(fail_with_error);
                    assert_eq!(code, "io");
                }
                Some(Err(ProtoError::Closed)) => assert!(!fail_with_error),
                other => panic!("{other:?}"),
            }
            assert!(data.next().await.is_none());
        }
    }

    #[tokio::test]
    async fn write_file_sends_chunks_then_data_end() {
        let (host, mut agent) = pair();
        let big = Bytes::from(
            (0..(3 * DATA_CHUNK + 7))
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        let expected = big.clone();
        let fake = tokio::spawn(async move {
            let Some(Ok(Frame::Request(req))) = agent.next().await else {
                panic!("no request");
            };
            assert_eq!(req, write_req("/w"));
            let mut got = Vec::new();
            loop {
                match agent.next().await.unwrap().unwrap() {
                    Frame::Data(b) => {
                        assert!(b.len() <= DATA_CHUNK);
                        got.extend_from_slice(&b);
                    }
                    Frame::DataEnd => break,
                    other => panic!("{other:?}"),
                }
            }
            assert!(got == [&b"head"[..], &expected[..]].concat());
            agent
                .send(Frame::Event(Event::File(stat("/w", got.len() as u64))))
                .await
                .unwrap();
        });
        let data = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"head")),
            Ok(Bytes::new()),
            Ok(big),
        ]);
        let st = write_file(host, write_req("/w"), data).await.unwrap();
        assert_eq!(st.size, (3 * DATA_CHUNK + 11) as u64);
        fake.await.unwrap();
    }

    #[derive(Debug, thiserror::Error)]
    #[error("body broke")]
    struct BodyError;

    #[tokio::test]
    async fn write_file_data_error_drops_without_data_end() {
        let (host, mut agent) = pair();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = agent.next().await;
            let mut frames = Vec::new();
            while let Some(Ok(f)) = agent.next().await {
                frames.push(f);
            }
            let _ = tx.send(frames);
        });
        let data = futures::stream::iter(vec![Ok(Bytes::from_static(b"part")), Err(BodyError)]);
        match write_file(host, write_req("/w"), data).await {
            Err(ProtoError::Io(e)) => {
                assert!(e.into_inner().unwrap().downcast::<BodyError>().is_ok());
            }
            other => panic!("{other:?}"),
        }
        let frames = rx.await.unwrap();
        assert_eq!(frames, vec![Frame::Data(Bytes::from_static(b"part"))]);
    }

    #[tokio::test]
    async fn write_file_early_refusal() {
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent
                .send(Frame::Event(Event::Error {
                    code: "is_a_directory".into(),
                    message: "/d".into(),
                }))
                .await
                .unwrap();
            // Closes without reading the data.
        });
        // More data than the duplex buffer holds: sending alone would block forever.
        let data = futures::stream::iter(
            (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 64 * 1024]))),
        );
        match write_file(host, write_req("/d"), data).await {
            Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "is_a_directory"),
            other => panic!("{other:?}"),
        }
        // Not a write request.
        let (host, _agent) = pair();
        let empty = futures::stream::empty::<Result<Bytes, std::io::Error>>();
        assert!(matches!(
            write_file(host, Request::Ping, empty).await,
            Err(ProtoError::Unexpected(_))
        ));
    }

    #[tokio::test]
    async fn file_op_round_trip() {
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let Some(Ok(Frame::Request(Request::FileOp(op)))) = agent.next().await else {
                panic!("no op");
            };
            assert_eq!(
                op,
                FileOp::List {
                    path: "/".into(),
                    depth: 1,
                    limit: 2
                }
            );
            agent
                .send(Frame::Event(Event::FileOp(FileOpResult::List {
                    entries: vec![stat("/a", 1)],
                    truncated: true,
                })))
                .await
                .unwrap();
        });
        let op = FileOp::List {
            path: "/".into(),
            depth: 1,
            limit: 2,
        };
        assert_eq!(
            file_op(host, op).await.unwrap(),
            FileOpResult::List {
                entries: vec![stat("/a", 1)],
                truncated: true
            }
        );

        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent
                .send(Frame::Event(Event::Error {
                    code: "exists".into(),
                    message: "/b".into(),
                }))
                .await
                .unwrap();
        });
        let op = FileOp::Rename {
            from: "/a".into(),
            to: "/b".into(),
            overwrite: false,
        };
        match file_op(host, op).await {
            Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "exists"),
            other => panic!("{other:?}"),
        }
        // Closed without an answer.
        let (host, agent) = pair();
        drop(agent);
        let op = FileOp::Stat { path: "/".into() };
        assert!(matches!(
            file_op(host, op).await,
            Err(ProtoError::Closed | ProtoError::Io(_))
        ));
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;
    use crate::{ProcessState, PtySize};
    use tokio::io::DuplexStream;

    type AgentSide = Framed<DuplexStream, FrameCodec>;

    fn pair() -> (DuplexStream, AgentSide) {
        let (host, agent) = tokio::io::duplex(64 * 1024);
        (host, Framed::new(agent, FrameCodec))
    }

    fn info(pid: i32) -> ProcessInfo {
        ProcessInfo {
            pid,
            tag: Some("t".into()),
            argv: vec!["sh".into()],
            state: ProcessState::Running,
            exit_code: None,
            signal: None,
            timed_out: false,
            started_at_ms: 1,
            ended_at_ms: None,
            pty: Some(PtySize { rows: 2, cols: 3 }),
            stdin_open: true,
            output_start: 0,
            output_end: 5,
        }
    }

    fn error(code: &str) -> Frame {
        Frame::Event(Event::Error {
            code: code.into(),
            message: "m".into(),
        })
    }

    #[tokio::test]
    async fn start_and_op_round_trip() {
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let Some(Ok(Frame::Request(Request::StartProcess(spec)))) = agent.next().await else {
                panic!("no start");
            };
            assert_eq!(spec.tag.as_deref(), Some("t"));
            agent
                .send(Frame::Event(Event::Process(info(7))))
                .await
                .unwrap();
        });
        let spec = ProcessSpec {
            tag: Some("t".into()),
            ..Default::default()
        };
        assert_eq!(start_process(host, spec).await.unwrap(), info(7));

        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let Some(Ok(Frame::Request(req))) = agent.next().await else {
                panic!("no op");
            };
            assert_eq!(
                req,
                Request::ProcessOp {
                    selector: "t".into(),
                    op: ProcessOp::Signal { signal: 99 }
                }
            );
            agent.send(error("invalid_signal")).await.unwrap();
        });
        match process_op(host, "t", ProcessOp::Signal { signal: 99 }).await {
            Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "invalid_signal"),
            other => panic!("{other:?}"),
        }

        // Closed without an answer.
        let (host, agent) = pair();
        drop(agent);
        assert!(matches!(
            process_op(host, "t", ProcessOp::Get).await,
            Err(ProtoError::Closed | ProtoError::Io(_))
        ));
    }

    #[tokio::test]
    async fn write_stdin_sends_data_as_it_comes() {
        let (host, mut agent) = pair();
        let fake = tokio::spawn(async move {
            let Some(Ok(Frame::Request(Request::WriteStdin { selector }))) = agent.next().await
            else {
                panic!("no write");
            };
            assert_eq!(selector, "7");
            let mut got = Vec::new();
            loop {
                match agent.next().await.unwrap().unwrap() {
                    Frame::Data(b) => {
                        assert!(!b.is_empty() && b.len() <= DATA_CHUNK);
                        got.extend_from_slice(&b);
                    }
                    Frame::DataEnd => break,
                    other => panic!("{other:?}"),
                }
            }
            agent
                .send(Frame::Event(Event::Process(info(7))))
                .await
                .unwrap();
            got
        });
        let big = Bytes::from(vec![9u8; DATA_CHUNK + 3]);
        let data = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(Bytes::from_static(b"ab")),
            Ok(Bytes::new()),
            Ok(big.clone()),
        ]);
        assert_eq!(write_stdin(host, "7", data).await.unwrap(), info(7));
        assert!(fake.await.unwrap() == [&b"ab"[..], &big[..]].concat());

        // A refusal while data is still being sent.
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent.send(error("stdin_closed")).await.unwrap();
        });
        let data = futures::stream::iter(
            (0..64).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![0u8; 64 * 1024]))),
        );
        match write_stdin(host, "7", data).await {
            Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "stdin_closed"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn attach_yields_items_until_ended() {
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let Some(Ok(Frame::Request(req))) = agent.next().await else {
                panic!("no attach");
            };
            assert_eq!(
                req,
                Request::Attach {
                    selector: "t".into(),
                    offset: 1,
                    follow: true
                }
            );
            for frame in [
                Frame::Event(Event::Attached { offset: 3, end: 5 }),
                Frame::Event(Event::Lost { from: 1, to: 3 }),
                Frame::Stdout(Bytes::from_static(b"o")),
                Frame::Stderr(Bytes::from_static(b"e")),
                Frame::Event(Event::Ended(info(7))),
                Frame::Stdout(Bytes::from_static(b"after the end")),
            ] {
                let _ = agent.send(frame).await;
            }
        });
        let events = attach(host, "t", 1, true).await.unwrap();
        let items: Vec<_> = events.map(|i| i.unwrap()).collect().await;
        assert_eq!(
            items,
            vec![
                AttachItem::Attached { offset: 3, end: 5 },
                AttachItem::Lost { from: 1, to: 3 },
                AttachItem::Stdout(Bytes::from_static(b"o")),
                AttachItem::Stderr(Bytes::from_static(b"e")),
                AttachItem::Ended(info(7)),
            ]
        );
    }

    #[tokio::test]
    async fn attach_errors() {
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent.send(error("process_not_found")).await.unwrap();
        });
        match attach(host, "x", 0, true).await {
            Err(ProtoError::Remote { code, .. }) => assert_eq!(code, "process_not_found"),
            other => panic!("{other:?}"),
        }

        // Closed before Ended.
        let (host, mut agent) = pair();
        tokio::spawn(async move {
            let _ = agent.next().await;
            agent
                .send(Frame::Event(Event::Attached { offset: 0, end: 0 }))
                .await
                .unwrap();
            agent
                .send(Frame::Stdout(Bytes::from_static(b"x")))
                .await
                .unwrap();
        });
        let mut events = attach(host, "x", 0, true).await.unwrap();
        assert!(matches!(
            events.next().await,
            Some(Ok(AttachItem::Attached { .. }))
        ));
        assert!(matches!(
            events.next().await,
            Some(Ok(AttachItem::Stdout(_)))
        ));
        assert!(matches!(events.next().await, Some(Err(ProtoError::Closed))));
        assert!(events.next().await.is_none());
    }
}
