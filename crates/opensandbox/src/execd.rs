//! OpenSandbox's execd at `/execd/{sandbox}`: `/ping`, `/command` (SSE), background
//! commands with status, logs and interrupt, and `/metrics`. Foreground commands are Warren
//! execs (a dropped stream kills them); background commands are durable processes tagged
//! with the command's id, so they outlive the request and their output is kept.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use warren_api::{
    CreateProcessRequest, ErrorCode, ExecRequest, ExecUser, ProcessState, SignalValue,
};
use warren_engine::{AttachEvent, EngineError, ExecOutput};

use crate::error::{OsError, OsResult};
use crate::{now_ms, Os};

/// Header carrying the next cursor of `GET /command/{id}/logs`.
pub const CURSOR_HEADER: &str = "EXECD-COMMANDS-TAIL-CURSOR";
/// Foreground commands remembered for status and interrupt.
const FOREGROUND_KEPT: usize = 1024;
/// Most output one logs call returns (the cursor pages through the rest).
const MAX_LOGS_BYTES: usize = 16 * 1024 * 1024;

pub(crate) fn routes() -> Router<Os> {
    Router::new()
        .route("/execd/{sid}/ping", get(ping))
        .route("/execd/{sid}/command", post(run).delete(interrupt))
        .route("/execd/{sid}/command/status/{cid}", get(status))
        .route("/execd/{sid}/command/{cid}/logs", get(logs))
        .route("/execd/{sid}/metrics", get(metrics))
        .route("/execd/{sid}/metrics/watch", get(watch_metrics))
        // execd's code interpreter, isolated sessions and per-identity file routes.
        .route("/execd/{sid}/code", axum::routing::any(unsupported))
        .route("/execd/{sid}/code/{*rest}", axum::routing::any(unsupported))
        .route("/execd/{sid}/v1/{*rest}", axum::routing::any(unsupported))
}

/// Parts of execd Warren does not serve: a typed 501 rather than a 404.
async fn unsupported(uri: axum::http::Uri) -> OsError {
    OsError::unsupported(format!(
        "{} is not served by Warren's execd (code contexts, isolated sessions and per-identity file routes are not supported; run commands and use /files)",
        uri.path()
    ))
}

/// The sandbox an execd path is for.
pub(crate) fn sandbox_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/execd/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

/// One event of execd's stream: a bare JSON object and a blank line.
#[derive(Debug, Clone, Serialize, Default)]
pub(crate) struct Event {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<u64>,
    pub timestamp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<EventError>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct EventError {
    pub ename: String,
    pub evalue: String,
    pub traceback: Vec<String>,
}

impl Event {
    pub fn new(kind: &'static str) -> Event {
        Event {
            kind,
            timestamp: now_ms(),
            ..Default::default()
        }
    }

    pub fn text(kind: &'static str, text: String) -> Event {
        Event {
            text: Some(text),
            ..Event::new(kind)
        }
    }

    pub fn complete(elapsed: Duration) -> Event {
        Event {
            execution_time: Some(elapsed.as_millis() as u64),
            ..Event::new("execution_complete")
        }
    }

    pub fn error(ename: &str, evalue: String, traceback: Vec<String>) -> Event {
        Event {
            error: Some(EventError {
                ename: ename.into(),
                evalue,
                traceback,
            }),
            ..Event::new("error")
        }
    }

    pub fn frame(&self) -> Bytes {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.extend_from_slice(b"\n\n");
        Bytes::from(v)
    }

    /// How a command's end is told: `execution_complete` for 0, `error` with the exit code
    /// otherwise.
    pub fn exit(code: i32, signal: Option<i32>, timed_out: bool, elapsed: Duration) -> Event {
        if code == 0 && !timed_out {
            return Event::complete(elapsed);
        }
        let mut why = Vec::new();
        if timed_out {
            why.push("the command ran past its timeout and was killed".to_string());
        }
        if let Some(s) = signal {
            why.push(format!("killed by signal {s}"));
        }
        let ename = if timed_out {
            "TimeoutError"
        } else {
            "CommandExecError"
        };
        Event::error(ename, code.to_string(), why)
    }
}

/// Splits output into events at line ends (each keeps its `\n`), holding back only an
/// unfinished UTF-8 character.
#[derive(Default)]
pub(crate) struct Lines {
    carry: Vec<u8>,
}

impl Lines {
    pub fn push(&mut self, data: &[u8]) -> Vec<String> {
        self.carry.extend_from_slice(data);
        let cut = match std::str::from_utf8(&self.carry) {
            Ok(_) => self.carry.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.carry.len(),
        };
        let rest = self.carry.split_off(cut);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text.split_inclusive('\n').map(str::to_string).collect()
    }

    pub fn finish(&mut self) -> Option<String> {
        (!self.carry.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.carry)).into_owned())
    }
}

/// A streamed answer of execd events.
pub(crate) fn event_stream(rx: mpsc::Receiver<Bytes>) -> Response {
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Body::from_stream(body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// A fresh command id (also a valid process tag).
pub(crate) fn new_id(prefix: char) -> String {
    format!("{prefix}{:016x}", rand::random::<u64>())
}

/// `uid`/`gid` as Warren's users: 0 is root, 1000 the image's `user`.
fn user_of(uid: Option<i64>, gid: Option<i64>) -> OsResult<Option<ExecUser>> {
    match (uid, gid) {
        (None, None) => Ok(None),
        (Some(0), None | Some(0)) => Ok(Some(ExecUser::Root)),
        (Some(1000), None | Some(1000)) => Ok(Some(ExecUser::User)),
        (None, Some(_)) => Err(OsError::invalid("gid needs uid")),
        (Some(u), g) => Err(OsError::unsupported(format!(
            "uid {u}{}: Warren runs commands as root (0) or user (1000)",
            g.map(|g| format!(", gid {g}")).unwrap_or_default()
        ))),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunCommand {
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    argv: Option<Vec<String>>,
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    background: bool,
    /// Milliseconds.
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    uid: Option<i64>,
    #[serde(default)]
    gid: Option<i64>,
    #[serde(default)]
    envs: BTreeMap<String, String>,
}

/// `bash -c TEXT` (or `sh -c` where there is no bash), or the argv as given.
fn argv_of(req: &RunCommand, shell: &str) -> OsResult<Vec<String>> {
    match (&req.command, &req.argv) {
        (Some(c), None) if !c.trim().is_empty() => Ok(vec![shell.into(), "-c".into(), c.clone()]),
        (None, Some(a)) if a.first().is_some_and(|a| !a.is_empty()) => Ok(a.clone()),
        (Some(_), Some(_)) => Err(OsError::invalid("give command or argv, not both")),
        _ => Err(OsError::invalid("command must not be empty")),
    }
}

/// What the content of a command was, for its status.
fn content_of(cmd: &[String]) -> String {
    match cmd {
        [sh, c, text] if (sh == "bash" || sh == "sh") && c == "-c" => text.clone(),
        _ => cmd.join(" "),
    }
}

fn timeout_secs(ms: Option<u64>) -> Option<u64> {
    ms.filter(|ms| *ms > 0).map(|ms| ms.div_ceil(1000))
}

#[derive(Debug)]
struct Entry {
    id: String,
    sandbox: String,
    content: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    error: Option<String>,
    cancel: Option<oneshot::Sender<()>>,
}

/// Foreground commands of the last while (their status and a way to interrupt them).
#[derive(Debug, Default)]
pub(crate) struct Foreground {
    entries: VecDeque<Entry>,
}

impl Foreground {
    fn add(&mut self, e: Entry) {
        if self.entries.len() >= FOREGROUND_KEPT {
            let done = self.entries.iter().position(|e| e.finished_at.is_some());
            let _ = self.entries.remove(done.unwrap_or(0));
        }
        self.entries.push_back(e);
    }

    fn get_mut(&mut self, sandbox: &str, id: &str) -> Option<&mut Entry> {
        self.entries
            .iter_mut()
            .find(|e| e.id == id && e.sandbox == sandbox)
    }
}

/// `GET /ping`: 200 while the sandbox runs.
async fn ping(State(os): State<Os>, Path(sid): Path<String>) -> OsResult<StatusCode> {
    let s = os.engine.get(&sid).await?;
    if s.state != warren_api::SandboxState::Running {
        return Err(OsError::from_code(
            ErrorCode::InvalidState,
            format!("sandbox {sid} is {}", s.state),
        ));
    }
    Ok(StatusCode::OK)
}

/// `POST /command`: run a command and stream its output, or start it in the background.
async fn run(
    State(os): State<Os>,
    Path(sid): Path<String>,
    req: Result<Json<RunCommand>, JsonRejection>,
) -> OsResult<Response> {
    let Json(req) = req?;
    let user = user_of(req.uid, req.gid)?;
    let env = crate::envfile::command_env(&os, &sid, &req.envs).await?;
    let id = new_id('c');
    if req.background {
        let start = |shell: &str| -> OsResult<CreateProcessRequest> {
            Ok(CreateProcessRequest {
                cmd: argv_of(&req, shell)?,
                env: env.clone(),
                cwd: req.cwd.clone(),
                user,
                tag: Some(id.clone()),
                timeout_secs: timeout_secs(req.timeout),
                ..Default::default()
            })
        };
        let first = start("bash")?;
        match os.engine.start_process(&sid, first).await {
            Err(e) if e.code() == ErrorCode::CommandNotFound && req.argv.is_none() => {
                os.engine.start_process(&sid, start("sh")?).await?;
            }
            other => {
                other?;
            }
        }
        let (tx, rx) = mpsc::channel(2);
        let _ = tx.try_send(Event::text("init", id).frame());
        let _ = tx.try_send(Event::complete(Duration::ZERO).frame());
        return Ok(event_stream(rx));
    }
    let exec = |shell: &str| -> OsResult<ExecRequest> {
        Ok(ExecRequest {
            cmd: argv_of(&req, shell)?,
            env: env.clone(),
            cwd: req.cwd.clone(),
            timeout_secs: timeout_secs(req.timeout),
            user,
            ..Default::default()
        })
    };
    let first = exec("bash")?;
    let content = content_of(&first.cmd);
    let started = Instant::now();
    let stream = match os.engine.exec(&sid, first).await {
        Err(e) if e.code() == ErrorCode::CommandNotFound && req.argv.is_none() => {
            os.engine.exec(&sid, exec("sh")?).await?
        }
        other => other?,
    };
    let (cancel_tx, cancel_rx) = oneshot::channel();
    if let Ok(mut fg) = os.commands.lock() {
        fg.add(Entry {
            id: id.clone(),
            sandbox: sid.clone(),
            content,
            started_at: Utc::now(),
            finished_at: None,
            exit_code: None,
            error: None,
            cancel: Some(cancel_tx),
        });
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let _ = tx.try_send(Event::text("init", id.clone()).frame());
    tokio::spawn(pump_exec(os, sid, id, stream, tx, cancel_rx, started));
    Ok(event_stream(rx))
}

/// Forward an exec's output as events; dropping the stream (client gone, or interrupt)
/// kills the command.
async fn pump_exec(
    os: Os,
    sid: String,
    id: String,
    mut stream: warren_engine::ExecStream,
    tx: mpsc::Sender<Bytes>,
    mut cancel: oneshot::Receiver<()>,
    started: Instant,
) {
    let mut out = Lines::default();
    let mut err = Lines::default();
    let mut result: Result<(i32, Option<i32>, bool), String> =
        Err("the command was interrupted".into());
    loop {
        let item = tokio::select! {
            item = stream.next() => item,
            _ = &mut cancel => break,
            _ = tx.closed() => break,
        };
        let frames: Vec<Event> = match item {
            Some(Ok(ExecOutput::Stdout(b))) => out
                .push(&b)
                .into_iter()
                .map(|t| Event::text("stdout", t))
                .collect(),
            Some(Ok(ExecOutput::Stderr(b))) => err
                .push(&b)
                .into_iter()
                .map(|t| Event::text("stderr", t))
                .collect(),
            Some(Ok(ExecOutput::Exit(x))) => {
                result = Ok((x.exit_code, x.signal, x.timed_out));
                break;
            }
            Some(Err(e)) => {
                result = Err(os.engine.attach_error(e).to_string());
                break;
            }
            None => {
                result = Err("the command's stream ended without an exit".into());
                break;
            }
        };
        for f in frames {
            if tx.send(f.frame()).await.is_err() {
                break;
            }
        }
    }
    drop(stream);
    let mut tail: Vec<Event> = Vec::new();
    if let Some(t) = out.finish() {
        tail.push(Event::text("stdout", t));
    }
    if let Some(t) = err.finish() {
        tail.push(Event::text("stderr", t));
    }
    let end = match &result {
        Ok((code, signal, timed_out)) => Event::exit(*code, *signal, *timed_out, started.elapsed()),
        Err(why) => Event::error("CommandExecError", "-1".into(), vec![why.clone()]),
    };
    tail.push(end);
    for f in tail {
        let _ = tx.send(f.frame()).await;
    }
    if let Ok(mut fg) = os.commands.lock() {
        if let Some(e) = fg.get_mut(&sid, &id) {
            e.finished_at = Some(Utc::now());
            e.cancel = None;
            match result {
                Ok((code, _, _)) => e.exit_code = Some(code),
                Err(why) => e.error = Some(why),
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct IdQuery {
    id: String,
}

/// `DELETE /command?id=`: interrupt a command (a foreground one is killed with its stream,
/// a background one gets SIGTERM).
async fn interrupt(
    State(os): State<Os>,
    Path(sid): Path<String>,
    q: Result<Query<IdQuery>, axum::extract::rejection::QueryRejection>,
) -> OsResult<StatusCode> {
    let Query(q) = q?;
    let fg = os
        .commands
        .lock()
        .ok()
        .and_then(|mut fg| fg.get_mut(&sid, &q.id).map(|e| e.cancel.take()));
    match fg {
        Some(Some(cancel)) => {
            let _ = cancel.send(());
            Ok(StatusCode::OK)
        }
        Some(None) => Ok(StatusCode::OK),
        None => {
            os.engine
                .signal_process(&sid, &q.id, &SignalValue::Name("SIGTERM".into()))
                .await
                .map_err(command_error(&q.id))?;
            Ok(StatusCode::OK)
        }
    }
}

fn command_error(id: &str) -> impl Fn(EngineError) -> OsError + '_ {
    move |e| match e.code() {
        ErrorCode::ProcessNotFound => OsError::not_found(format!("no command {id}")),
        _ => OsError::from(e),
    }
}

#[derive(Debug, Serialize)]
struct CommandStatus {
    id: String,
    content: String,
    running: bool,
    exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

async fn status(
    State(os): State<Os>,
    Path((sid, cid)): Path<(String, String)>,
) -> OsResult<Json<CommandStatus>> {
    let fg = os.commands.lock().ok().and_then(|mut fg| {
        fg.get_mut(&sid, &cid).map(|e| CommandStatus {
            id: e.id.clone(),
            content: e.content.clone(),
            running: e.finished_at.is_none(),
            exit_code: e.exit_code,
            error: e.error.clone(),
            started_at: e.started_at,
            finished_at: e.finished_at,
        })
    });
    if let Some(s) = fg {
        return Ok(Json(s));
    }
    let p = os
        .engine
        .get_process(&sid, &cid)
        .await
        .map_err(command_error(&cid))?;
    Ok(Json(CommandStatus {
        id: cid,
        content: content_of(&p.cmd),
        running: p.state == ProcessState::Running,
        exit_code: p.exit_code,
        error: p.signal.map(|s| format!("killed by {s}")),
        started_at: p.started_at,
        finished_at: p.ended_at,
    }))
}

#[derive(Debug, Deserialize)]
struct CursorQuery {
    #[serde(default)]
    cursor: Option<u64>,
}

/// `GET /command/{id}/logs?cursor=N`: a background command's output (stdout and stderr as
/// they were written) from byte `cursor` on; the next cursor comes back in
/// `EXECD-COMMANDS-TAIL-CURSOR`.
async fn logs(
    State(os): State<Os>,
    Path((sid, cid)): Path<(String, String)>,
    q: Result<Query<CursorQuery>, axum::extract::rejection::QueryRejection>,
) -> OsResult<Response> {
    let Query(q) = q?;
    let mut stream = os
        .engine
        .attach(&sid, &cid, q.cursor.unwrap_or(0), false)
        .await
        .map_err(command_error(&cid))?;
    let mut pos = q.cursor.unwrap_or(0);
    let mut content = Vec::new();
    while let Some(item) = stream.next().await {
        match item.map_err(|e| OsError::from(os.engine.attach_error(e)))? {
            AttachEvent::Attached { offset, .. } => pos = offset,
            AttachEvent::Lost { to, .. } => pos = to,
            AttachEvent::Stdout(b) | AttachEvent::Stderr(b) => {
                content.extend_from_slice(&b);
                pos += b.len() as u64;
                if content.len() >= MAX_LOGS_BYTES {
                    break;
                }
            }
            AttachEvent::Ended(_) => break,
        }
    }
    let mut resp = String::from_utf8_lossy(&content)
        .into_owned()
        .into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&pos.to_string()) {
        resp.headers_mut().insert(CURSOR_HEADER, v);
    }
    Ok(resp)
}

#[derive(Debug, Serialize)]
struct Metrics {
    cpu_count: f64,
    cpu_used_pct: f64,
    mem_total_mib: f64,
    mem_used_mib: f64,
    timestamp: i64,
}

/// CPU use measured over a tenth of a second, memory now.
async fn sample(os: &Os, sid: &str) -> OsResult<Metrics> {
    let u = os.engine.usage(sid, Duration::from_millis(100)).await?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    Ok(Metrics {
        cpu_count: u.cpus,
        cpu_used_pct: u.cpu_used_pct,
        mem_total_mib: u
            .stats
            .memory_limit_bytes
            .map(mib)
            .or(u.sandbox.resources.memory_mib.map(|m| m as f64))
            .unwrap_or(0.0),
        mem_used_mib: mib(u.stats.memory_bytes),
        timestamp: now_ms(),
    })
}

async fn metrics(State(os): State<Os>, Path(sid): Path<String>) -> OsResult<Json<Metrics>> {
    Ok(Json(sample(&os, &sid).await?))
}

/// `GET /metrics/watch`: a sample a second, until the client goes or the sandbox does.
async fn watch_metrics(State(os): State<Os>, Path(sid): Path<String>) -> OsResult<Response> {
    let first = sample(&os, &sid).await?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        let mut next = Ok(first);
        while let Ok(m) = next {
            let mut frame = serde_json::to_vec(&m).unwrap_or_default();
            frame.extend_from_slice(b"\n\n");
            if tx.send(Bytes::from(frame)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(900)).await;
            next = sample(&os, &sid).await;
        }
    });
    Ok(event_stream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_ends_and_whole_characters() {
        let mut l = Lines::default();
        assert_eq!(l.push(b"a\nb"), vec!["a\n", "b"]);
        let e = "é".as_bytes();
        assert_eq!(l.push(&[b'x', e[0]]), vec!["x"]);
        assert_eq!(l.push(&[e[1], b'\n']), vec!["é\n"]);
        assert_eq!(l.finish(), None);
        assert_eq!(l.push(&[0xff, b'z']), vec!["\u{fffd}z"]);
    }

    #[test]
    fn exits_are_told_the_opensandbox_way() {
        let ok = Event::exit(0, None, false, Duration::from_millis(5));
        assert_eq!(ok.kind, "execution_complete");
        let bad = Event::exit(7, None, false, Duration::ZERO);
        assert_eq!(bad.kind, "error");
        assert_eq!(bad.error.unwrap().evalue, "7");
        let frame = Event::text("stdout", "a\n".into()).frame();
        assert!(frame.ends_with(b"}\n\n") && !frame[..frame.len() - 2].contains(&b'\n'));
    }
}
