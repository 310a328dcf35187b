//! The fake runtime's durable processes: an in-memory model with a bounded output log per
//! process, good enough to exercise the engine, the HTTP layer, the client and the CLI.
//!
//! Commands (`argv[0]`):
//! - `echo ARGS...`: prints its arguments and a newline, exits 0.
//! - `cat`: echoes whatever is written to its stdin (or PTY) to stdout; exits 0 when stdin
//!   is closed. On a PTY, `^C` (0x03) kills it with SIGINT and `^D` (0x04) ends it.
//! - `split-utf8`: stdout `caf\xc3`, stdout `\xa9\n` (`é` split), stderr `warn\n`; exits 0.
//! - `fail CODE`: stderr `failing\n`, exits CODE (default 1).
//! - `yes N`: N bytes of `y` in chunks of at most 4096 bytes, exits 0.
//! - `ticks N`: `tick I\n` for I in 1..=N, one every 10 ms, then exits 0.
//! - `sleep`: prints `started\n` and runs until signalled (or timed out).
//! - anything else: the spawn fails with `not_found`.
//!
//! Any signal but SIGWINCH (28) and SIGCONT (18) ends a running process (exit 128+N); an
//! exited process stays listed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::{stream, StreamExt};
use tokio::sync::watch;
use warren_runtime::{
    AttachEvent, AttachStream, ByteStream, ProcessInfo, ProcessOp, ProcessSpec, ProcessState,
    RuntimeError,
};

/// The error the agent would send: `code` as in the agent protocol.
fn perr(code: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Process {
        code: code.to_string(),
        message: message.into(),
    }
}

fn spawn_err(code: &str, message: impl Into<String>) -> RuntimeError {
    RuntimeError::Spawn {
        code: code.to_string(),
        message: message.into(),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

struct Chunk {
    start: u64,
    stderr: bool,
    data: Bytes,
}

struct State {
    info: ProcessInfo,
    log: VecDeque<Chunk>,
    cap: u64,
    kept: u64,
}

/// One fake process; shared by the table and its attachments.
pub(crate) struct Proc {
    state: Mutex<State>,
    /// Bumped on every change (output, exit).
    changed: watch::Sender<u64>,
}

impl Proc {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn running(&self) -> bool {
        self.lock().info.state == ProcessState::Running
    }

    fn info(&self) -> ProcessInfo {
        self.lock().info.clone()
    }

    fn emit(&self, stderr: bool, data: impl Into<Bytes>) {
        let data = data.into();
        if data.is_empty() {
            return;
        }
        {
            let mut st = self.lock();
            let start = st.info.output_end;
            st.info.output_end += data.len() as u64;
            st.kept += data.len() as u64;
            st.log.push_back(Chunk {
                start,
                stderr,
                data,
            });
            while st.kept > st.cap {
                match st.log.pop_front() {
                    Some(c) => st.kept -= c.data.len() as u64,
                    None => break,
                }
            }
            st.info.output_start = st.log.front().map_or(st.info.output_end, |c| c.start);
        }
        self.bump();
    }

    fn exit(&self, code: i32, signal: Option<i32>, timed_out: bool) {
        {
            let mut st = self.lock();
            if st.info.state == ProcessState::Exited {
                return;
            }
            st.info.state = ProcessState::Exited;
            st.info.exit_code = Some(code);
            st.info.signal = signal;
            st.info.timed_out = timed_out;
            st.info.ended_at_ms = Some(now_ms());
            st.info.stdin_open = false;
        }
        self.bump();
    }

    fn is_cat(&self) -> bool {
        self.lock().info.argv.first().map(String::as_str) == Some("cat")
    }

    /// Bytes written to stdin.
    fn input(&self, data: &[u8]) {
        let (cat, pty) = {
            let st = self.lock();
            (
                st.info.argv.first().map(String::as_str) == Some("cat"),
                st.info.pty.is_some(),
            )
        };
        if !cat {
            return;
        }
        if pty {
            for (i, b) in data.iter().enumerate() {
                match b {
                    0x03 => {
                        self.emit(false, Bytes::copy_from_slice(&data[..i]));
                        self.emit(false, "^C\r\n");
                        self.exit(130, Some(2), false);
                        return;
                    }
                    0x04 => {
                        self.emit(false, Bytes::copy_from_slice(&data[..i]));
                        self.exit(0, None, false);
                        return;
                    }
                    _ => {}
                }
            }
        }
        self.emit(false, Bytes::copy_from_slice(data));
    }
}

#[derive(Default)]
struct Table {
    next_pid: i32,
    procs: BTreeMap<i32, Arc<Proc>>,
}

/// Every sandbox's processes.
#[derive(Default, Clone)]
pub(crate) struct Procs {
    tables: Arc<Mutex<HashMap<String, Table>>>,
}

impl std::fmt::Debug for Procs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Procs")
    }
}

impl Procs {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Table>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn add_sandbox(&self, id: &str) {
        self.lock().insert(
            id.to_string(),
            Table {
                next_pid: 100,
                procs: BTreeMap::new(),
            },
        );
    }

    pub(crate) fn remove_sandbox(&self, id: &str) {
        if let Some(t) = self.lock().remove(id) {
            for p in t.procs.values() {
                p.exit(137, Some(9), false);
            }
        }
    }

    fn find(&self, id: &str, selector: &str) -> Result<Arc<Proc>, RuntimeError> {
        let tables = self.lock();
        let table = tables
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let found = match selector.parse::<i32>() {
            Ok(pid) => table.procs.get(&pid).cloned(),
            Err(_) => table
                .procs
                .values()
                .find(|p| p.lock().info.tag.as_deref() == Some(selector))
                .cloned(),
        };
        found.ok_or_else(|| perr("process_not_found", format!("no process {selector}")))
    }

    pub(crate) fn list(&self, id: &str) -> Result<Vec<ProcessInfo>, RuntimeError> {
        let tables = self.lock();
        let table = tables
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        Ok(table.procs.values().map(|p| p.info()).collect())
    }

    pub(crate) fn start(&self, id: &str, spec: ProcessSpec) -> Result<ProcessInfo, RuntimeError> {
        let argv = spec.exec.argv.clone();
        let name = argv.first().cloned().unwrap_or_default();
        let known = ["echo", "cat", "split-utf8", "fail", "yes", "ticks", "sleep"];
        if !known.contains(&name.as_str()) {
            return Err(spawn_err("not_found", format!("{name}: command not found")));
        }
        let arg = |d: u64| argv.get(1).and_then(|a| a.parse::<u64>().ok()).unwrap_or(d);
        let proc = {
            let mut tables = self.lock();
            let table = tables
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
            if let Some(tag) = &spec.tag {
                if table
                    .procs
                    .values()
                    .any(|p| p.lock().info.tag.as_ref() == Some(tag))
                {
                    return Err(perr("tag_in_use", format!("tag {tag} is in use")));
                }
            }
            let pid = table.next_pid;
            table.next_pid += 1;
            let proc = Arc::new(Proc {
                state: Mutex::new(State {
                    info: ProcessInfo {
                        pid,
                        tag: spec.tag.clone(),
                        argv: argv.clone(),
                        state: ProcessState::Running,
                        exit_code: None,
                        signal: None,
                        timed_out: false,
                        started_at_ms: now_ms(),
                        ended_at_ms: None,
                        pty: spec.pty,
                        stdin_open: spec.exec.stdin || spec.pty.is_some(),
                        output_start: 0,
                        output_end: 0,
                    },
                    log: VecDeque::new(),
                    cap: spec.log_bytes.max(1),
                    kept: 0,
                }),
                changed: watch::channel(0).0,
            });
            table.procs.insert(pid, proc.clone());
            proc
        };
        match name.as_str() {
            "echo" => {
                proc.emit(false, format!("{}\n", argv[1..].join(" ")));
                proc.exit(0, None, false);
            }
            "split-utf8" => {
                proc.emit(false, &b"caf\xc3"[..]);
                proc.emit(false, &b"\xa9\n"[..]);
                proc.emit(true, "warn\n");
                proc.exit(0, None, false);
            }
            "fail" => {
                proc.emit(true, "failing\n");
                proc.exit(i32::try_from(arg(1)).unwrap_or(1), None, false);
            }
            "yes" => {
                let mut n = arg(10);
                while n > 0 {
                    let k = n.min(4096);
                    proc.emit(false, vec![b'y'; k as usize]);
                    n -= k;
                }
                proc.exit(0, None, false);
            }
            "ticks" => {
                let n = arg(3);
                let p = proc.clone();
                tokio::spawn(async move {
                    for i in 1..=n {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if !p.running() {
                            return;
                        }
                        p.emit(false, format!("tick {i}\n"));
                    }
                    p.exit(0, None, false);
                });
            }
            "sleep" => proc.emit(false, "started\n"),
            _ => {}
        }
        if let Some(ms) = spec.exec.timeout_ms {
            let p = proc.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                p.exit(137, Some(9), true);
            });
        }
        Ok(proc.info())
    }

    pub(crate) fn op(
        &self,
        id: &str,
        selector: &str,
        op: ProcessOp,
    ) -> Result<ProcessInfo, RuntimeError> {
        let p = self.find(id, selector)?;
        match op {
            ProcessOp::Get => {}
            ProcessOp::Signal { signal } => {
                if !(1..=64).contains(&signal) {
                    return Err(perr("invalid_signal", format!("invalid signal {signal}")));
                }
                if p.running() && signal != 28 && signal != 18 {
                    p.exit(128 + signal, Some(signal), false);
                }
            }
            ProcessOp::CloseStdin => {
                if !p.lock().info.stdin_open {
                    return Err(perr("stdin_closed", "stdin is closed"));
                }
                p.lock().info.stdin_open = false;
                p.bump();
                if p.is_cat() {
                    p.exit(0, None, false);
                }
            }
            ProcessOp::Resize { rows, cols } => {
                let mut st = p.lock();
                match st.info.pty.as_mut() {
                    Some(size) => {
                        size.rows = rows;
                        size.cols = cols;
                    }
                    None => return Err(perr("not_a_pty", "the process has no terminal")),
                }
            }
        }
        Ok(p.info())
    }

    pub(crate) async fn write_stdin(
        &self,
        id: &str,
        selector: &str,
        mut data: ByteStream,
    ) -> Result<ProcessInfo, RuntimeError> {
        let p = self.find(id, selector)?;
        if !p.lock().info.stdin_open {
            return Err(perr("stdin_closed", "stdin is closed"));
        }
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            if !p.lock().info.stdin_open {
                return Err(perr("stdin_closed", "stdin is closed"));
            }
            p.input(&chunk);
        }
        Ok(p.info())
    }

    pub(crate) fn attach(
        &self,
        id: &str,
        selector: &str,
        offset: u64,
        follow: bool,
    ) -> Result<AttachStream, RuntimeError> {
        let p = self.find(id, selector)?;
        // Like the agent: `Attached` at the first byte still kept (at most the end), then
        // `Lost` for what was requested but dropped.
        let (start, end) = {
            let st = p.lock();
            (st.info.output_start, st.info.output_end)
        };
        let at = offset.max(start).min(end);
        let mut first = vec![Ok(AttachEvent::Attached { offset: at, end })];
        if offset < start {
            first.push(Ok(AttachEvent::Lost {
                from: offset,
                to: at,
            }));
        }
        let st = Attach {
            rx: p.changed.subscribe(),
            proc: p,
            pos: at,
            follow,
            done: false,
        };
        let rest = stream::unfold(st, |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                st.rx.borrow_and_update();
                if let Some(ev) = st.next_event() {
                    if matches!(ev, AttachEvent::Ended(_)) {
                        st.done = true;
                    }
                    return Some((Ok(ev), st));
                }
                if st.rx.changed().await.is_err() {
                    st.done = true;
                    let info = st.proc.info();
                    return Some((Ok(AttachEvent::Ended(info)), st));
                }
            }
        });
        Ok(Box::pin(stream::iter(first).chain(rest)))
    }
}

struct Attach {
    proc: Arc<Proc>,
    rx: watch::Receiver<u64>,
    pos: u64,
    follow: bool,
    done: bool,
}

impl Attach {
    /// The next event available now, if any.
    fn next_event(&mut self) -> Option<AttachEvent> {
        let st = self.proc.lock();
        if self.pos < st.info.output_start {
            let from = self.pos;
            self.pos = st.info.output_start;
            return Some(AttachEvent::Lost { from, to: self.pos });
        }
        if let Some(c) = st
            .log
            .iter()
            .find(|c| c.start + c.data.len() as u64 > self.pos)
        {
            let skip = usize::try_from(self.pos - c.start).unwrap_or(0);
            let data = c.data.slice(skip..);
            self.pos = c.start + c.data.len() as u64;
            return Some(if c.stderr {
                AttachEvent::Stderr(data)
            } else {
                AttachEvent::Stdout(data)
            });
        }
        if st.info.state == ProcessState::Exited || !self.follow {
            return Some(AttachEvent::Ended(st.info.clone()));
        }
        None
    }
}
