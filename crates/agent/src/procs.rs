//! Durable processes: started by one connection, owned by the agent.
//!
//! Each process has an output log: a bounded ring of (stream, bytes) chunks in one byte
//! offset space (`output_start..output_end`). Reader tasks move the process's output into
//! the log as fast as it comes, whether or not anyone is attached (memory stays bounded by the
//! ring; the oldest output is dropped). Any number of attachments replay the log from an
//! offset and follow it; one that falls behind the ring is told exactly what it lost.
//!
//! Everything here runs on the agent's single thread, so the table and the processes are
//! `Rc<RefCell<..>>`, never borrowed across an await.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{pipe, OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{oneshot, Notify};
use tokio_util::codec::{Encoder, FramedRead};
use warren_proto::AgentCode;
use warren_proto::{
    Event, Frame, FrameCodec, ProcessInfo, ProcessOp, ProcessSpec, ProcessState, PtySize,
};

use crate::error::ConnError;
use crate::pty;
use crate::reaper::{ExitInfo, SharedReaper};
use crate::root::Root;
use crate::spawn;

/// Output is read in chunks of at most this size (also the largest chunk in the log).
const READ_CHUNK: usize = 64 * 1024;
/// Log capacity when the spec says 0.
const DEFAULT_LOG_BYTES: u64 = 4 << 20;
/// Bounds of a log's capacity.
const MIN_LOG_BYTES: u64 = 4 << 10;
const MAX_LOG_BYTES: u64 = 1 << 30;
/// Each chunk is charged this much on top of its bytes, so that a stream of tiny writes
/// cannot grow the ring's bookkeeping beyond its capacity.
const CHUNK_OVERHEAD: u64 = 64;
/// A chunk smaller than this is merged with the next output of the same stream.
const MERGE_BELOW: usize = 4 << 10;
/// An attachment sends at most this much per write to its connection.
const SEND_BATCH: usize = 256 * 1024;
/// After the process exited, wait this long for its output to reach EOF (a background
/// process may hold it open forever).
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// Exited processes kept for inspection.
const KEEP_EXITED: usize = 64;
/// `TERM` of a PTY process whose environment has none.
const DEFAULT_TERM: &str = "xterm-256color";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Stdout,
    Stderr,
}

#[derive(Debug)]
struct Chunk {
    /// Offset of the first byte.
    at: u64,
    which: Which,
    data: Bytes,
}

/// The bounded output log.
#[derive(Debug)]
pub(crate) struct Log {
    chunks: VecDeque<Chunk>,
    start: u64,
    end: u64,
    /// Bytes held plus the per-chunk overhead; at most `cap` after every push.
    mem: u64,
    cap: u64,
}

impl Log {
    pub(crate) fn new(cap: u64) -> Log {
        Log {
            chunks: VecDeque::new(),
            start: 0,
            end: 0,
            mem: 0,
            cap,
        }
    }

    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    pub(crate) fn push(&mut self, which: Which, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let n = data.len() as u64;
        match self.chunks.back_mut() {
            Some(last)
                if last.which == which
                    && last.data.len() < MERGE_BELOW
                    && last.data.len() + data.len() <= READ_CHUNK =>
            {
                let mut merged = BytesMut::with_capacity(last.data.len() + data.len());
                merged.extend_from_slice(&last.data);
                merged.extend_from_slice(data);
                last.data = merged.freeze();
                self.mem += n;
            }
            _ => {
                self.chunks.push_back(Chunk {
                    at: self.end,
                    which,
                    data: Bytes::copy_from_slice(data),
                });
                self.mem += n + CHUNK_OVERHEAD;
            }
        }
        self.end += n;
        self.trim();
    }

    /// Drops output from the front until the log fits its capacity; `start` advances
    /// exactly by the bytes dropped.
    fn trim(&mut self) {
        while self.mem > self.cap {
            let excess = self.mem - self.cap;
            let Some(front) = self.chunks.front_mut() else {
                self.mem = 0;
                break;
            };
            let len = front.data.len() as u64;
            if excess >= len {
                self.mem -= len + CHUNK_OVERHEAD;
                self.chunks.pop_front();
                self.start = self.chunks.front().map_or(self.end, |c| c.at);
            } else {
                // Split the oldest chunk: drop exactly `excess` of its bytes.
                front.data = front.data.slice(excess as usize..);
                front.at += excess;
                self.start = front.at;
                self.mem -= excess;
            }
        }
    }

    /// The output at `offset` (`start <= offset < end`), at most `max` bytes of one chunk.
    pub(crate) fn read(&self, offset: u64, max: usize) -> Option<(Which, Bytes)> {
        if offset < self.start || offset >= self.end {
            return None;
        }
        let i = self
            .chunks
            .partition_point(|c| c.at + c.data.len() as u64 <= offset);
        let c = self.chunks.get(i)?;
        let rel = usize::try_from(offset.checked_sub(c.at)?).ok()?;
        let to = c.data.len().min(rel.saturating_add(max));
        Some((c.which, c.data.slice(rel..to)))
    }
}

/// Where a process's input goes.
#[derive(Clone)]
enum Input {
    Pipe(Rc<pipe::Sender>),
    Pty(Rc<pty::Master>),
}

struct ProcState {
    info: ProcessInfo,
    log: Log,
    stdin: Option<Input>,
    pty: Option<Rc<pty::Master>>,
    /// Exited, and its output reached EOF (or the grace period ended): attachments end once
    /// they have sent the log.
    done: bool,
}

/// One durable process.
pub(crate) struct Proc {
    state: RefCell<ProcState>,
    /// Woken on new output and when the process is done.
    changed: Notify,
}

impl Proc {
    fn info(&self) -> ProcessInfo {
        let st = self.state.borrow();
        let mut info = st.info.clone();
        info.output_start = st.log.start();
        info.output_end = st.log.end();
        info.stdin_open = st.stdin.is_some();
        info
    }

    fn append(&self, which: Which, data: &[u8]) {
        self.state.borrow_mut().log.push(which, data);
        self.changed.notify_waiters();
    }

    fn running(&self) -> bool {
        self.state.borrow().info.state == ProcessState::Running
    }
}

/// The agent's process table.
#[derive(Default)]
pub(crate) struct Procs {
    by_pid: HashMap<i32, Rc<Proc>>,
    /// Exited processes, oldest first.
    exited: VecDeque<i32>,
}

pub(crate) type SharedProcs = Rc<RefCell<Procs>>;

impl Procs {
    fn find(&self, selector: &str) -> Option<Rc<Proc>> {
        if let Ok(pid) = selector.parse::<i32>() {
            if let Some(p) = self.by_pid.get(&pid) {
                return Some(p.clone());
            }
        }
        self.by_pid
            .values()
            .find(|p| p.state.borrow().info.tag.as_deref() == Some(selector))
            .cloned()
    }

    fn remove(&mut self, pid: i32) {
        self.by_pid.remove(&pid);
        self.exited.retain(|p| *p != pid);
    }

    /// Forgets the oldest exited processes beyond [`KEEP_EXITED`].
    fn note_exited(&mut self, pid: i32) {
        self.exited.push_back(pid);
        while self.exited.len() > KEEP_EXITED {
            if let Some(old) = self.exited.pop_front() {
                self.by_pid.remove(&old);
            }
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

async fn send(w: &mut OwnedWriteHalf, event: Event) -> Result<(), ConnError> {
    let mut out = BytesMut::with_capacity(256);
    FrameCodec.encode(Frame::Event(event), &mut out)?;
    w.write_all(&out).await?;
    Ok(())
}

async fn send_error(
    w: &mut OwnedWriteHalf,
    code: AgentCode,
    message: impl Into<String>,
) -> Result<(), ConnError> {
    send(
        w,
        Event::Error {
            code: code.as_str().to_owned(),
            message: message.into(),
        },
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Start

/// What a started process's output comes from.
enum Output {
    Pipes(pipe::Receiver, pipe::Receiver),
    Pty(Rc<pty::Master>),
}

pub(crate) async fn start(
    mut w: OwnedWriteHalf,
    procs: SharedProcs,
    reaper: SharedReaper,
    root: &Root,
    mut spec: ProcessSpec,
) -> Result<(), ConnError> {
    if let Some(tag) = &spec.tag {
        let holder = procs.borrow().find(tag);
        if let Some(p) = holder {
            if p.running() {
                return send_error(&mut w, AgentCode::TagInUse, format!("tag {tag} is in use"))
                    .await;
            }
            // An exited holder gives its tag up (the selector must stay unambiguous).
            let pid = p.state.borrow().info.pid;
            procs.borrow_mut().remove(pid);
        }
    }
    let cap = match spec.log_bytes {
        0 => DEFAULT_LOG_BYTES,
        n => n.clamp(MIN_LOG_BYTES, MAX_LOG_BYTES),
    };
    let started = match spec.pty {
        Some(size) => start_pty(&mut spec, root, size),
        None => spawn::spawn(&spec.exec, root).map(|child| {
            (
                child.pid,
                child.stdin.map(|s| Input::Pipe(Rc::new(s))),
                Output::Pipes(child.stdout, child.stderr),
                None,
            )
        }),
    };
    let (pid, stdin, output, master) = match started {
        Ok(v) => v,
        Err(e) => return send_error(&mut w, e.code, e.message).await,
    };
    // Registered before the first await: the reaper cannot have collected it yet.
    let exit_rx = reaper.borrow_mut().register(pid);
    let info = ProcessInfo {
        pid,
        tag: spec.tag.clone(),
        argv: spec.exec.argv.clone(),
        state: ProcessState::Running,
        exit_code: None,
        signal: None,
        timed_out: false,
        started_at_ms: now_ms(),
        ended_at_ms: None,
        pty: spec.pty,
        stdin_open: stdin.is_some(),
        output_start: 0,
        output_end: 0,
    };
    let proc = Rc::new(Proc {
        state: RefCell::new(ProcState {
            info,
            log: Log::new(cap),
            stdin,
            pty: master,
            done: false,
        }),
        changed: Notify::new(),
    });
    {
        let mut table = procs.borrow_mut();
        // A recycled pid: the old entry is long gone from the kernel's point of view.
        table.remove(pid);
        table.by_pid.insert(pid, proc.clone());
    }
    let mut readers = Vec::new();
    match output {
        Output::Pipes(stdout, stderr) => {
            readers.push(tokio::task::spawn_local(read_pipe(
                proc.clone(),
                stdout,
                Which::Stdout,
            )));
            readers.push(tokio::task::spawn_local(read_pipe(
                proc.clone(),
                stderr,
                Which::Stderr,
            )));
        }
        Output::Pty(master) => {
            readers.push(tokio::task::spawn_local(read_pty(proc.clone(), master)));
        }
    }
    tokio::task::spawn_local(supervise(
        proc.clone(),
        procs,
        exit_rx,
        spec.exec.timeout_ms,
        readers,
    ));
    send(&mut w, Event::Process(proc.info())).await
}

type Started = (i32, Option<Input>, Output, Option<Rc<pty::Master>>);

fn start_pty(
    spec: &mut ProcessSpec,
    root: &Root,
    size: PtySize,
) -> Result<Started, spawn::SpawnError> {
    if !spec.exec.env.iter().any(|(k, _)| k == "TERM") {
        spec.exec
            .env
            .push(("TERM".to_owned(), DEFAULT_TERM.to_owned()));
    }
    let failed = |e: io::Error| spawn::SpawnError {
        code: AgentCode::SpawnFailed,
        message: format!("cannot open a pty: {e}"),
    };
    let pair = pty::open(size).map_err(failed)?;
    let pid = spawn::spawn_pty(&spec.exec, root, &pair.slave)?;
    // Only the child holds the slave now: its exit (and its children's) ends the output.
    drop(pair.slave);
    // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
    // the AsyncFd's whole lifetime.
    let master = match unsafe { AsyncFd::register(pair.master) } {
        Ok(m) => Rc::new(m),
        Err(e) => {
            let e = io::Error::other(e.to_string());
            // SAFETY: kill has no memory-safety preconditions; the group's leader is our
            // unreaped child.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            return Err(failed(e));
        }
    };
    Ok((
        pid,
        Some(Input::Pty(master.clone())),
        Output::Pty(master.clone()),
        Some(master),
    ))
}

async fn read_pipe(proc: Rc<Proc>, rx: pipe::Receiver, which: Which) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if rx.readable().await.is_err() {
            return;
        }
        match rx.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => proc.append(which, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

async fn read_pty(proc: Rc<Proc>, master: Rc<pty::Master>) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pty::read(&master, &mut buf).await {
            Ok(0) => return,
            Ok(n) => proc.append(Which::Stdout, &buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Waits for the exit (killing the group on timeout), then for the output's EOF.
async fn supervise(
    proc: Rc<Proc>,
    procs: SharedProcs,
    mut exit_rx: oneshot::Receiver<ExitInfo>,
    timeout_ms: Option<u64>,
    readers: Vec<tokio::task::JoinHandle<()>>,
) {
    let pid = proc.state.borrow().info.pid;
    let mut timed_out = false;
    let deadline = timeout_ms
        .and_then(|ms| tokio::time::Instant::now().checked_add(Duration::from_millis(ms)));
    let exit = loop {
        let timeout = async {
            match deadline {
                Some(d) if !timed_out => tokio::time::sleep_until(d).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            res = &mut exit_rx => break res.ok(),
            () = timeout => {
                // The exit may be collected but not yet seen: then it was no timeout.
                if let Ok(info) = exit_rx.try_recv() {
                    break Some(info);
                }
                // SAFETY: kill has no memory-safety preconditions; the leader is not reaped
                // yet, so the group id cannot have been recycled.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                timed_out = true;
            }
        }
    };
    {
        let mut st = proc.state.borrow_mut();
        st.info.state = ProcessState::Exited;
        st.info.ended_at_ms = Some(now_ms());
        st.info.timed_out = timed_out;
        match exit {
            Some(_) if timed_out => {
                st.info.exit_code = Some(128 + libc::SIGKILL);
                st.info.signal = Some(libc::SIGKILL);
            }
            Some(info) => {
                st.info.exit_code = Some(info.exit_code);
                st.info.signal = info.signal;
            }
            None => {}
        }
        st.stdin = None;
    }
    procs.borrow_mut().note_exited(pid);
    proc.changed.notify_waiters();

    let mut readers = readers;
    let all = futures::future::join_all(readers.iter_mut());
    if tokio::time::timeout(DRAIN_GRACE, all).await.is_err() {
        for r in &readers {
            r.abort();
        }
    }
    {
        let mut st = proc.state.borrow_mut();
        st.done = true;
        st.pty = None;
    }
    proc.changed.notify_waiters();
}

// ---------------------------------------------------------------------------------------
// List, operations

pub(crate) async fn list(mut w: OwnedWriteHalf, procs: SharedProcs) -> Result<(), ConnError> {
    let mut all: Vec<ProcessInfo> = procs.borrow().by_pid.values().map(|p| p.info()).collect();
    all.sort_by_key(|i| (i.started_at_ms, i.pid));
    send(&mut w, Event::Processes { processes: all }).await
}

pub(crate) async fn op(
    mut w: OwnedWriteHalf,
    procs: SharedProcs,
    selector: String,
    op: ProcessOp,
) -> Result<(), ConnError> {
    let Some(proc) = procs.borrow().find(&selector) else {
        return not_found(&mut w, &selector).await;
    };
    match op {
        ProcessOp::Get => {}
        ProcessOp::Signal { signal } => {
            if !(1..=64).contains(&signal) {
                return send_error(
                    &mut w,
                    AgentCode::InvalidSignal,
                    format!("invalid signal {signal}"),
                )
                .await;
            }
            if proc.running() {
                let pid = proc.state.borrow().info.pid;
                // SAFETY: kill has no memory-safety preconditions; the leader is not reaped
                // yet (the process is running), so the group id cannot have been recycled.
                unsafe { libc::kill(-pid, signal) };
            }
        }
        ProcessOp::CloseStdin => {
            let input = proc.state.borrow().stdin.clone();
            match input {
                Some(Input::Pipe(_)) => proc.state.borrow_mut().stdin = None,
                Some(Input::Pty(master)) => {
                    if let Err(e) = pty::write_all(&master, b"\x04").await {
                        return send_error(
                            &mut w,
                            AgentCode::Io,
                            format!("writing to the pty: {e}"),
                        )
                        .await;
                    }
                }
                None => {}
            }
        }
        ProcessOp::Resize { rows, cols } => {
            let master = proc.state.borrow().pty.clone();
            let is_pty = proc.state.borrow().info.pty.is_some();
            match master {
                Some(m) => {
                    let size = PtySize { rows, cols };
                    if let Err(e) = pty::resize(&m, size) {
                        return send_error(&mut w, AgentCode::Io, format!("resizing the pty: {e}"))
                            .await;
                    }
                    proc.state.borrow_mut().info.pty = Some(size);
                }
                // An exited PTY process: nothing to resize.
                None if is_pty => {}
                None => {
                    return send_error(&mut w, AgentCode::NotAPty, format!("{selector} has no pty"))
                        .await
                }
            }
        }
    }
    send(&mut w, Event::Process(proc.info())).await
}

async fn not_found(w: &mut OwnedWriteHalf, selector: &str) -> Result<(), ConnError> {
    send_error(
        w,
        AgentCode::ProcessNotFound,
        format!("no process {selector}"),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// Stdin

pub(crate) async fn write_stdin(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    procs: SharedProcs,
    selector: String,
) -> Result<(), ConnError> {
    let Some(proc) = procs.borrow().find(&selector) else {
        return not_found(&mut w, &selector).await;
    };
    if proc.state.borrow().stdin.is_none() {
        return stdin_closed(&mut w, &selector).await;
    }
    loop {
        let data = match frames.next().await {
            Some(Ok(Frame::Data(data))) => data,
            Some(Ok(Frame::DataEnd)) => break,
            Some(Ok(_)) => return Err(ConnError::UnexpectedFrame),
            // The host went away: what arrived was written; stdin stays open.
            Some(Err(_)) | None => return Ok(()),
        };
        // Looked up per chunk, so a CloseStdin meanwhile takes effect after this chunk.
        let input = proc.state.borrow().stdin.clone();
        let res = match input {
            Some(Input::Pipe(s)) => write_pipe(&s, &data).await,
            Some(Input::Pty(m)) => pty::write_all(&m, &data).await,
            None => return stdin_closed(&mut w, &selector).await,
        };
        if res.is_err() {
            // The process closed its stdin (EPIPE): further input has nowhere to go.
            if let Some(Input::Pipe(_)) = proc.state.borrow().stdin {
                proc.state.borrow_mut().stdin = None;
            }
            return stdin_closed(&mut w, &selector).await;
        }
    }
    send(&mut w, Event::Process(proc.info())).await
}

async fn stdin_closed(w: &mut OwnedWriteHalf, selector: &str) -> Result<(), ConnError> {
    send_error(
        w,
        AgentCode::StdinClosed,
        format!("stdin of {selector} is closed"),
    )
    .await
}

async fn write_pipe(s: &pipe::Sender, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        s.writable().await?;
        match s.try_write(buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Attach

pub(crate) async fn attach(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    mut w: OwnedWriteHalf,
    procs: SharedProcs,
    selector: String,
    offset: u64,
    follow: bool,
) -> Result<(), ConnError> {
    let Some(proc) = procs.borrow().find(&selector) else {
        return not_found(&mut w, &selector).await;
    };
    let mut out = BytesMut::with_capacity(256);
    let mut next = {
        let st = proc.state.borrow();
        let (start, end) = (st.log.start(), st.log.end());
        let at = offset.max(start).min(end);
        FrameCodec.encode(Frame::Event(Event::Attached { offset: at, end }), &mut out)?;
        if offset < start {
            FrameCodec.encode(
                Frame::Event(Event::Lost {
                    from: offset,
                    to: at,
                }),
                &mut out,
            )?;
        }
        at
    };
    loop {
        // Created before looking at the log: output appended after the look wakes it.
        let changed = proc.changed.notified();
        let finished = {
            let st = proc.state.borrow();
            if next < st.log.start() {
                let to = st.log.start();
                FrameCodec.encode(Frame::Event(Event::Lost { from: next, to }), &mut out)?;
                next = to;
            }
            while out.len() < SEND_BATCH {
                let Some((which, data)) = st.log.read(next, READ_CHUNK) else {
                    break;
                };
                next += data.len() as u64;
                let frame = match which {
                    Which::Stdout => Frame::Stdout(data),
                    Which::Stderr => Frame::Stderr(data),
                };
                FrameCodec.encode(frame, &mut out)?;
            }
            next >= st.log.end() && (st.done || !follow)
        };
        if finished {
            FrameCodec.encode(Frame::Event(Event::Ended(proc.info())), &mut out)?;
        }
        if !out.is_empty() {
            w.write_all(&out).await?;
            out.clear();
            if out.capacity() > 2 * SEND_BATCH {
                out = BytesMut::with_capacity(256);
            }
        }
        if finished {
            return Ok(());
        }
        if proc.state.borrow().log.end() > next {
            continue;
        }
        tokio::select! {
            () = changed => {}
            // The host detached (or broke the protocol): the process is unaffected.
            _ = frames.next() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(log: &Log) -> Vec<u8> {
        let mut at = log.start();
        let mut out = Vec::new();
        while let Some((_, b)) = log.read(at, 7) {
            at += b.len() as u64;
            out.extend_from_slice(&b);
        }
        assert_eq!(at, log.end());
        out
    }

    #[test]
    fn log_is_bounded_and_offsets_exact() {
        let mut log = Log::new(MIN_LOG_BYTES);
        let mut all = Vec::new();
        for i in 0..5000u32 {
            let line = format!("line {i}\n");
            let which = if i % 3 == 0 {
                Which::Stderr
            } else {
                Which::Stdout
            };
            log.push(which, line.as_bytes());
            all.extend_from_slice(line.as_bytes());
            assert!(log.mem <= log.cap);
            assert_eq!(log.end(), all.len() as u64);
        }
        assert!(log.start() > 0);
        let kept = collect(&log);
        assert_eq!(&all[log.start() as usize..], &kept[..]);
        // Reads inside a chunk start exactly there.
        let mid = log.start() + 3;
        let (_, b) = log.read(mid, 100).unwrap();
        assert_eq!(&b[..], &all[mid as usize..mid as usize + b.len()]);
        assert!(log.read(log.start() - 1, 1).is_none());
        assert!(log.read(log.end(), 1).is_none());
    }

    #[test]
    fn big_chunks_split_at_the_front() {
        let mut log = Log::new(MIN_LOG_BYTES);
        log.push(Which::Stdout, &[1u8; 3000]);
        log.push(Which::Stderr, &[2u8; 3000]);
        assert_eq!(log.end(), 6000);
        assert_eq!(log.mem, log.cap);
        assert_eq!(log.start(), 6000 + 2 * CHUNK_OVERHEAD - MIN_LOG_BYTES);
        let (which, b) = log.read(log.start(), usize::MAX).unwrap();
        assert_eq!(which, Which::Stdout);
        assert_eq!(b.len() as u64, 3000 - log.start());
        // One huge push keeps only its tail.
        log.push(Which::Stdout, &vec![3u8; 10_000]);
        assert_eq!(log.end(), 16_000);
        assert_eq!(log.end() - log.start(), MIN_LOG_BYTES - CHUNK_OVERHEAD);
    }
}
