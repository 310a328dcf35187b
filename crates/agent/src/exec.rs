//! A one-shot command (`Request::Exec`): its output streamed as frames while it runs, its
//! exit status at the end; killed with its process group if the host goes away.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{pipe, OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::{Encoder, FramedRead};
use warren_proto::{Event, ExecSpec, Frame, FrameCodec};

use crate::error::ConnError;
use crate::reaper::{ExitInfo, SharedReaper};
use crate::root::Root;
use crate::spawn;

/// Output is read from the pipes in chunks of this size, each sent as one frame at once.
const READ_CHUNK: usize = 64 * 1024;
/// Pipes are not read while this much output waits for the host (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// After the command exited, wait this long for its pipes to reach EOF (a background process
/// may hold them open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// After the grace period, read at most this much more from each pipe.
const DRAIN_LIMIT: usize = 4 << 20;

/// Frame layout (must match [`FrameCodec`]; checked by a test): `u32` BE length, tag, payload.
const HEADER_LEN: usize = 5;
const TAG_STDOUT: u8 = 3;
const TAG_STDERR: u8 = 4;

/// SIGKILLs the command's process group when dropped before the command exited: on any early
/// return, or when the task is cancelled.
struct GroupGuard {
    pgid: i32,
    exited: bool,
}

impl GroupGuard {
    fn kill(&self) {
        if !self.exited {
            // SAFETY: kill has no memory-safety preconditions. The leader is not reaped yet
            // (we have not seen its exit), so the group id cannot have been recycled.
            unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Stdout,
    Stderr,
}

enum ReadOutcome {
    Data,
    WouldBlock,
    Eof,
}

pub(crate) async fn exec(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    spec: ExecSpec,
    reaper: SharedReaper,
    root: &Root,
) -> Result<(), ConnError> {
    // Small at first (a quiet command never needs more); grows by reads to ~HIGH_WATER.
    let mut out = BytesMut::with_capacity(256);
    let start = Instant::now();
    let child = match spawn::spawn(&spec, root) {
        Ok(child) => child,
        Err(e) => {
            FrameCodec.encode(
                Frame::Event(Event::Error {
                    code: e.code.as_str().to_owned(),
                    message: e.message,
                }),
                &mut out,
            )?;
            w.write_all(&out).await?;
            return Ok(());
        }
    };
    // Registered before the first await: the reaper cannot have collected it yet.
    let mut exit_rx = reaper.borrow_mut().register(child.pid);
    let mut guard = GroupGuard {
        pgid: child.pid,
        exited: false,
    };
    FrameCodec.encode(Frame::Event(Event::Started { pid: child.pid }), &mut out)?;

    let mut stdout = Some(child.stdout);
    let mut stderr = Some(child.stderr);
    let mut stdin = child.stdin;
    let mut stdin_buf = Bytes::new();
    let mut stderr_first = false;
    let mut exit: Option<ExitInfo> = None;
    let mut timed_out = false;
    let mut exit_sent = false;

    let timeout_at = spec
        .timeout_ms
        .and_then(|ms| tokio::time::Instant::now().checked_add(Duration::from_millis(ms)));
    let timeout = tokio::time::sleep_until(timeout_at.unwrap_or_else(far_future));
    tokio::pin!(timeout);
    let drain = tokio::time::sleep_until(far_future());
    tokio::pin!(drain);

    loop {
        if !exit_sent && stdout.is_none() && stderr.is_none() {
            if let Some(info) = exit {
                let (exit_code, signal) = if timed_out {
                    (128 + libc::SIGKILL, Some(libc::SIGKILL))
                } else {
                    (info.exit_code, info.signal)
                };
                let duration_us =
                    u64::try_from(info.at.saturating_duration_since(start).as_micros())
                        .unwrap_or(u64::MAX);
                FrameCodec.encode(
                    Frame::Event(Event::Exit {
                        exit_code,
                        signal,
                        timed_out,
                        duration_us,
                    }),
                    &mut out,
                )?;
                exit_sent = true;
            }
        }
        if exit_sent && out.is_empty() {
            return Ok(());
        }
        let reading = !exit_sent && out.len() < HIGH_WATER;
        let pipes_open = stdout.is_some() || stderr.is_some();

        // Biased order: exit and flushing first; the host's frames and stdin (mutually
        // exclusive, and limited by the command consuming stdin) before output, so neither
        // stdin nor a disconnect waits behind a command that writes without pause.
        tokio::select! {
            biased;
            res = &mut exit_rx, if exit.is_none() => {
                let info = res.map_err(|_| ConnError::ReaperGone)?;
                guard.exited = true;
                exit = Some(info);
                stdin = None;
                stdin_buf.clear();
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
            }
            res = w.writable(), if !out.is_empty() => {
                res?;
                loop {
                    match w.try_write(&out) {
                        Ok(n) => {
                            out.advance(n);
                            if out.is_empty() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => return host_gone(&mut guard, exit_rx, exit).await,
                    }
                }
            }
            () = &mut timeout, if timeout_at.is_some() && exit.is_none() && !timed_out => {
                // The exit may be collected but not yet seen: then it was no timeout.
                match exit_rx.try_recv() {
                    Ok(info) => {
                        guard.exited = true;
                        exit = Some(info);
                        stdin = None;
                        stdin_buf.clear();
                        drain.as_mut().reset(tokio::time::Instant::now() + DRAIN_GRACE);
                    }
                    Err(_) => {
                        guard.kill();
                        timed_out = true;
                    }
                }
            }
            () = &mut drain, if exit.is_some() && pipes_open => {
                for (pipe, tag) in [(&mut stdout, TAG_STDOUT), (&mut stderr, TAG_STDERR)] {
                    if let Some(p) = pipe.take() {
                        let mut total = 0;
                        while total < DRAIN_LIMIT {
                            let before = out.len();
                            match read_frame(&p, &mut out, tag) {
                                Ok(ReadOutcome::Data) => total += out.len() - before,
                                _ => break,
                            }
                        }
                    }
                }
            }
            res = poll_fn(|cx| poll_stdin(cx, &stdin)), if !stdin_buf.is_empty() => {
                let mut broken = res.is_err();
                if let (false, Some(s)) = (broken, stdin.as_ref()) {
                    loop {
                        match s.try_write(&stdin_buf) {
                            Ok(n) => {
                                stdin_buf.advance(n);
                                if stdin_buf.is_empty() {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(_) => {
                                broken = true;
                                break;
                            }
                        }
                    }
                }
                if broken || stdin.is_none() {
                    // The command closed its stdin: the rest is discarded.
                    stdin = None;
                    stdin_buf.clear();
                }
            }
            frame = frames.next(), if stdin_buf.is_empty() && !exit_sent => match frame {
                Some(Ok(Frame::Stdin(data))) => {
                    if stdin.is_some() {
                        stdin_buf = data;
                    }
                }
                Some(Ok(Frame::StdinEof)) => stdin = None,
                Some(Ok(_)) => {
                    // A protocol violation ends the conversation (the guard kills the group).
                    return Err(ConnError::UnexpectedFrame);
                }
                Some(Err(_)) | None => {
                    if exit.is_some() {
                        return Ok(()); // nobody to tell the exit to
                    }
                    return host_gone(&mut guard, exit_rx, exit).await;
                }
            },
            (which, res) = poll_fn(|cx| poll_pipes(cx, &stdout, &stderr, stderr_first)),
                if reading && pipes_open =>
            {
                let (pipe, tag) = match which {
                    Which::Stdout => (&mut stdout, TAG_STDOUT),
                    Which::Stderr => (&mut stderr, TAG_STDERR),
                };
                stderr_first = which == Which::Stdout;
                let outcome = match (res, pipe.as_ref()) {
                    (Ok(()), Some(p)) => read_frame(p, &mut out, tag),
                    (Err(e), _) => Err(e),
                    (Ok(()), None) => Ok(ReadOutcome::Eof),
                };
                match outcome {
                    Ok(ReadOutcome::Data | ReadOutcome::WouldBlock) => {}
                    // A broken pipe counts as EOF: the command gets SIGPIPE, not us.
                    Ok(ReadOutcome::Eof) | Err(_) => *pipe = None,
                }
            }
        }
    }
}

/// The host is gone: kill the command's group (if still running) and wait until it is reaped.
async fn host_gone(
    guard: &mut GroupGuard,
    exit_rx: tokio::sync::oneshot::Receiver<ExitInfo>,
    exit: Option<ExitInfo>,
) -> Result<(), ConnError> {
    if exit.is_some() {
        return Ok(());
    }
    guard.kill();
    // SIGKILL cannot be blocked: the leader exits promptly and the reaper collects it.
    let _ = exit_rx.await;
    guard.exited = true;
    Err(ConnError::HostGone(guard.pgid))
}

fn far_future() -> tokio::time::Instant {
    // About 30 years: effectively never, without risking overflow.
    tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// Polls both pipes for readability, starting with the one not served last (fairness).
fn poll_pipes(
    cx: &mut Context<'_>,
    stdout: &Option<pipe::Receiver>,
    stderr: &Option<pipe::Receiver>,
    stderr_first: bool,
) -> Poll<(Which, io::Result<()>)> {
    let order = if stderr_first {
        [(Which::Stderr, stderr), (Which::Stdout, stdout)]
    } else {
        [(Which::Stdout, stdout), (Which::Stderr, stderr)]
    };
    for (which, pipe) in order {
        if let Some(p) = pipe {
            if let Poll::Ready(res) = p.poll_read_ready(cx) {
                return Poll::Ready((which, res));
            }
        }
    }
    Poll::Pending
}

fn poll_stdin(cx: &mut Context<'_>, stdin: &Option<pipe::Sender>) -> Poll<io::Result<()>> {
    match stdin {
        Some(s) => s.poll_write_ready(cx),
        // Closed meanwhile: let the handler discard the pending data.
        None => Poll::Ready(Ok(())),
    }
}

/// Reads one chunk of `pipe` straight into `out` as a data frame (no intermediate copy).
fn read_frame(pipe: &pipe::Receiver, out: &mut BytesMut, tag: u8) -> io::Result<ReadOutcome> {
    let start = out.len();
    out.reserve(HEADER_LEN + READ_CHUNK);
    out.put_bytes(0, HEADER_LEN);
    match pipe.try_read_buf(&mut (&mut *out).limit(READ_CHUNK)) {
        Ok(0) => {
            out.truncate(start);
            Ok(ReadOutcome::Eof)
        }
        Ok(n) => {
            // n <= READ_CHUNK, far below u32::MAX and MAX_FRAME_LEN.
            let len = (n + 1) as u32;
            out[start..start + 4].copy_from_slice(&len.to_be_bytes());
            out[start + 4] = tag;
            Ok(ReadOutcome::Data)
        }
        Err(e) => {
            out.truncate(start);
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(ReadOutcome::WouldBlock)
            } else {
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-built data frames match the codec's.
    #[test]
    fn header_matches_codec() {
        for (frame, tag) in [
            (Frame::Stdout(Bytes::from_static(b"abc")), TAG_STDOUT),
            (Frame::Stderr(Bytes::from_static(b"abc")), TAG_STDERR),
        ] {
            let mut expected = BytesMut::new();
            FrameCodec.encode(frame, &mut expected).unwrap();
            let mut ours = BytesMut::new();
            ours.put_u32(4);
            ours.put_u8(tag);
            ours.put_slice(b"abc");
            assert_eq!(expected, ours);
            assert_eq!(ours.len(), HEADER_LEN + 3);
        }
    }
}
