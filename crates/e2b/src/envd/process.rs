//! `process.Process`: E2B's commands and terminals as Warren durable processes. A started
//! process outlives its stream (a dropped connection loses nothing: `Connect` picks it up
//! again by pid or tag), and the stream's deadline (`Connect-Timeout-Ms`) is the process's
//! timeout, as in envd.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::response::Response;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use warren_api::{CreateProcessRequest, Process, ProcessState, PtySize, SignalValue};
use warren_engine::processes::AttachEvent;

use super::connect::{self, Code, RpcError, RpcResult, Step, StreamTx, Timing};
use super::{Call, User};
use crate::E2b;

/// A `uint32` that may arrive as a JSON number or string (proto3 JSON allows both).
fn lenient_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    use serde::de::Error;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| D::Error::custom("not a uint32")),
        serde_json::Value::String(s) => s.parse().map_err(D::Error::custom),
        serde_json::Value::Null => Ok(0),
        _ => Err(D::Error::custom("not a uint32")),
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase")]
struct ProcessConfig {
    cmd: String,
    args: Vec<String>,
    envs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Size {
    #[serde(deserialize_with = "lenient_u32")]
    cols: u32,
    #[serde(deserialize_with = "lenient_u32")]
    rows: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Pty {
    size: Option<Size>,
}

impl Pty {
    fn size(&self) -> RpcResult<PtySize> {
        let s = self.size.as_ref();
        let dim = |v: Option<u32>, what: &str| {
            u16::try_from(v.unwrap_or(0))
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| RpcError::invalid(format!("the terminal's {what} must be 1..=1000")))
        };
        Ok(PtySize {
            rows: dim(s.map(|s| s.rows), "rows")?,
            cols: dim(s.map(|s| s.cols), "cols")?,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StartRequest {
    process: Option<ProcessConfig>,
    pty: Option<Pty>,
    tag: Option<String>,
    stdin: Option<bool>,
}

/// `{"pid": N}` or `{"tag": "..."}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selector {
    #[serde(deserialize_with = "lenient_opt_u32")]
    pid: Option<u32>,
    tag: Option<String>,
}

fn lenient_opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    lenient_u32(d).map(|n| (n > 0).then_some(n))
}

impl Selector {
    fn of(s: Option<Selector>) -> RpcResult<String> {
        match s {
            Some(Selector { pid: Some(pid), .. }) => Ok(pid.to_string()),
            Some(Selector { tag: Some(t), .. }) if !t.is_empty() => Ok(t),
            _ => Err(RpcError::invalid(
                "a process selector (pid or tag) is required",
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Selected {
    process: Option<Selector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Input {
    stdin: Option<String>,
    pty: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendInputRequest {
    process: Option<Selector>,
    input: Option<Input>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct SendSignalRequest {
    process: Option<Selector>,
    signal: serde_json::Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UpdateRequest {
    process: Option<Selector>,
    pty: Option<Pty>,
}

/// Most process configurations remembered for `List` (the oldest is forgotten first).
const MAX_CONFIGS: usize = 10_000;

/// What a `Start` asked for that Warren's process record does not keep (the envs and
/// cwd `List` reports), by sandbox and pid. Kept in memory: after a daemon restart,
/// `List` reports processes without them.
#[derive(Default, Clone)]
pub(crate) struct Configs(Arc<Mutex<ConfigMap>>);

/// A process's envs and cwd, with the order it was remembered in.
type Remembered = (u64, BTreeMap<String, String>, String);

#[derive(Default)]
struct ConfigMap {
    seq: u64,
    map: HashMap<(String, i32), Remembered>,
}

impl Configs {
    fn lock(&self) -> std::sync::MutexGuard<'_, ConfigMap> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, sid: &str, pid: i32, envs: BTreeMap<String, String>, cwd: String) {
        let mut m = self.lock();
        m.seq += 1;
        let seq = m.seq;
        m.map.insert((sid.to_string(), pid), (seq, envs, cwd));
        if m.map.len() > MAX_CONFIGS {
            let oldest = m
                .map
                .iter()
                .min_by_key(|(_, v)| v.0)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                m.map.remove(&k);
            }
        }
    }

    /// The envs and cwd of `sid`'s processes in `running`; the others are forgotten.
    fn of(&self, sid: &str, running: &[i32]) -> HashMap<i32, (BTreeMap<String, String>, String)> {
        let mut m = self.lock();
        m.map
            .retain(|(s, pid), _| s != sid || running.contains(pid));
        m.map
            .iter()
            .filter(|((s, _), _)| s == sid)
            .map(|((_, pid), (_, envs, cwd))| (*pid, (envs.clone(), cwd.clone())))
            .collect()
    }
}

pub(super) async fn call(s: E2b, method: &str, call: Call) -> Response {
    match method {
        "Start" => start(s, call).await,
        "Connect" => connect_to(s, call).await,
        "List" => unary(list(&s, &call).await),
        "SendInput" => unary(send_input(&s, &call).await),
        "SendSignal" => unary(send_signal(&s, &call).await),
        "CloseStdin" => unary(close_stdin(&s, &call).await),
        "Update" => unary(update(&s, &call).await),
        other => respond_error(&call, super::unknown_method("process.Process", other)),
    }
}

fn unary(r: RpcResult<serde_json::Value>) -> Response {
    match r {
        Ok(v) => connect::unary(&v),
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

fn respond_error(call: &Call, e: RpcError) -> Response {
    match call.kind {
        connect::Kind::Stream => connect::stream_error(e),
        connect::Kind::Unary => axum::response::IntoResponse::into_response(e),
    }
}

async fn start(s: E2b, call: Call) -> Response {
    let req: StartRequest = match call.message() {
        Ok(r) => r,
        Err(e) => return respond_error(&call, e),
    };
    let timing = call.timing();
    let spec = match start_spec(req, call.user, &timing) {
        Ok(spec) => spec,
        Err(e) => return respond_error(&call, e),
    };
    let pty = spec.pty.is_some();
    let (envs, cwd) = (spec.env.clone(), spec.cwd.clone().unwrap_or_default());
    let p = match s.engine.start_process(&call.sid, spec).await {
        Ok(p) => p,
        Err(e) => return respond_error(&call, e.into()),
    };
    s.configs.remember(&call.sid, p.pid, envs, cwd);
    let sid = call.sid;
    connect::stream(move |tx| async move {
        if tx.send(&start_event(p.pid)).await.is_err() {
            return Ok(());
        }
        follow(&s, &sid, &p, 0, pty, &tx, timing).await
    })
}

/// The engine's process request for a `StartRequest`: argv is `cmd` + `args`, the cwd
/// defaults to the user's home, stdin stays open unless the client says `stdin: false`
/// (envd's default for older SDKs), and the stream's deadline is the process's timeout.
fn start_spec(req: StartRequest, user: User, timing: &Timing) -> RpcResult<CreateProcessRequest> {
    let config = req
        .process
        .ok_or_else(|| RpcError::invalid("process (the command to run) is required"))?;
    if config.cmd.is_empty() {
        return Err(RpcError::invalid("process.cmd must not be empty"));
    }
    let pty = req.pty.as_ref().map(Pty::size).transpose()?;
    let mut cmd = vec![config.cmd];
    cmd.extend(config.args);
    let cwd = match config.cwd.as_deref() {
        Some(c) if !c.is_empty() => user.resolve(c)?,
        _ => user.home().to_string(),
    };
    Ok(CreateProcessRequest {
        cmd,
        env: config.envs,
        cwd: Some(cwd),
        user: Some(user.0),
        tag: req.tag.filter(|t| !t.is_empty()),
        pty,
        stdin: Some(pty.is_some() || req.stdin.unwrap_or(true)),
        timeout_secs: timing.timeout_secs(),
        log_bytes: None,
        expose_port: None,
    })
}

fn start_event(pid: i32) -> serde_json::Value {
    json!({"event": {"start": {"pid": pid}}})
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Go's `ProcessState.String()` for a signal: what envd reports.
fn signal_status(signal: &str) -> String {
    let text = match signal {
        "SIGKILL" => "killed",
        "SIGTERM" => "terminated",
        "SIGINT" => "interrupt",
        "SIGHUP" => "hangup",
        "SIGQUIT" => "quit",
        "SIGPIPE" => "broken pipe",
        "SIGSEGV" => "segmentation fault",
        "SIGABRT" => "aborted",
        "SIGALRM" => "alarm clock",
        "SIGUSR1" => "user defined signal 1",
        "SIGUSR2" => "user defined signal 2",
        other => return format!("signal: {other}"),
    };
    format!("signal: {text}")
}

/// The `end` event of an exited process, as envd words it: a normal exit is
/// `exited: true`, `exit status N`; a death by signal has exit code -1 and
/// `signal: killed`.
fn end_event(p: &Process) -> serde_json::Value {
    let mut end = match (&p.signal, p.exit_code) {
        (Some(sig), _) => json!({
            "exitCode": -1,
            "exited": false,
            "status": signal_status(sig),
        }),
        (None, code) => {
            let code = code.unwrap_or(-1);
            json!({
                "exitCode": code,
                "exited": true,
                "status": format!("exit status {code}"),
            })
        }
    };
    if p.timed_out {
        end["error"] = json!("context deadline exceeded");
    }
    json!({"event": {"end": end}})
}

/// Stream a process's output from `offset` until it exits, the client leaves, the
/// deadline passes, or the sandbox goes away.
async fn follow(
    s: &E2b,
    sid: &str,
    p: &Process,
    offset: u64,
    pty: bool,
    tx: &StreamTx,
    timing: Timing,
) -> RpcResult<()> {
    let selector = p.pid.to_string();
    let mut out = s
        .engine
        .attach(sid, &selector, offset, true)
        .await
        .map_err(RpcError::from)?;
    let keepalive = json!({"event": {"keepalive": {}}});
    loop {
        let item = match connect::next_item(&mut out, tx, &timing, &keepalive).await {
            Step::Item(item) => item,
            Step::Gone => return Ok(()),
            Step::Deadline => {
                return Err(RpcError::new(
                    Code::DeadlineExceeded,
                    "the stream's deadline passed",
                ))
            }
        };
        let msg = match item {
            Some(Ok(AttachEvent::Stdout(b))) if pty => json!({"event": {"data": {"pty": b64(&b)}}}),
            Some(Ok(AttachEvent::Stdout(b))) => json!({"event": {"data": {"stdout": b64(&b)}}}),
            Some(Ok(AttachEvent::Stderr(b))) => json!({"event": {"data": {"stderr": b64(&b)}}}),
            Some(Ok(AttachEvent::Ended(info))) => {
                let _ = tx
                    .send(&end_event(&warren_engine::processes::process_info(info)))
                    .await;
                return Ok(());
            }
            Some(Ok(AttachEvent::Attached { .. } | AttachEvent::Lost { .. })) => continue,
            Some(Err(e)) => return Err(super::broken(s, sid, s.engine.attach_error(e)).await),
            None => return Err(super::broken(s, sid, "the output stream closed").await),
        };
        if tx.send(&msg).await.is_err() {
            return Ok(());
        }
    }
}

/// `Connect`: attach to a running (or exited) process by pid or tag; output from now on.
async fn connect_to(s: E2b, call: Call) -> Response {
    let req: Selected = match call.message() {
        Ok(r) => r,
        Err(e) => return respond_error(&call, e),
    };
    let selector = match Selector::of(req.process) {
        Ok(sel) => sel,
        Err(e) => return respond_error(&call, e),
    };
    let p = match s.engine.get_process(&call.sid, &selector).await {
        Ok(p) => p,
        Err(e) => return respond_error(&call, e.into()),
    };
    let timing = call.timing();
    let sid = call.sid;
    connect::stream(move |tx| async move {
        if tx.send(&start_event(p.pid)).await.is_err() {
            return Ok(());
        }
        let pty = p.pty.is_some();
        follow(&s, &sid, &p, p.output_end, pty, &tx, timing).await
    })
}

/// `List`: the running processes.
async fn list(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let _: serde_json::Value = call.message()?;
    let procs: Vec<Process> = s
        .engine
        .list_processes(&call.sid)
        .await?
        .into_iter()
        .filter(|p| p.state == ProcessState::Running)
        .collect();
    let pids: Vec<i32> = procs.iter().map(|p| p.pid).collect();
    let mut configs = s.configs.of(&call.sid, &pids);
    let items: Vec<serde_json::Value> = procs
        .into_iter()
        .map(|p| {
            let mut argv = p.cmd.into_iter();
            let (envs, cwd) = configs.remove(&p.pid).unwrap_or_default();
            let config = ProcessConfig {
                cmd: argv.next().unwrap_or_default(),
                args: argv.collect(),
                envs,
                cwd: (!cwd.is_empty()).then_some(cwd),
            };
            let mut v = json!({"config": config, "pid": p.pid});
            if let Some(tag) = p.tag {
                v["tag"] = json!(tag);
            }
            v
        })
        .collect();
    Ok(json!({ "processes": items }))
}

fn decode_b64(what: &str, s: &str) -> RpcResult<Vec<u8>> {
    let e = base64::engine::general_purpose::STANDARD;
    e.decode(s.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s.trim()))
        .map_err(|_| RpcError::invalid(format!("{what} is not valid base64")))
}

/// `SendInput`: bytes to stdin (or the terminal).
async fn send_input(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: SendInputRequest = call.message()?;
    let selector = Selector::of(req.process)?;
    let input = req.input.unwrap_or_default();
    let data = match (input.stdin, input.pty) {
        (Some(d), _) => decode_b64("input.stdin", &d)?,
        (None, Some(d)) => decode_b64("input.pty", &d)?,
        (None, None) => Vec::new(),
    };
    let chunk: Result<bytes::Bytes, warren_engine::RuntimeError> = Ok(data.into());
    s.engine
        .write_stdin(
            &call.sid,
            &selector,
            Box::pin(futures::stream::iter([chunk])),
        )
        .await?;
    Ok(json!({}))
}

/// `SendSignal`: SIGTERM or SIGKILL (E2B's enum), to the process group.
async fn send_signal(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: SendSignalRequest = call.message()?;
    let selector = Selector::of(req.process)?;
    let signal = match &req.signal {
        serde_json::Value::String(name) => match name.as_str() {
            "SIGNAL_SIGKILL" => 9,
            "SIGNAL_SIGTERM" => 15,
            other => warren_api::parse_signal(other.trim_start_matches("SIGNAL_"))
                .ok_or_else(|| RpcError::invalid(format!("unknown signal {other:?}")))?,
        },
        serde_json::Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| RpcError::invalid(format!("unknown signal {n}")))?,
        _ => return Err(RpcError::invalid("signal is required")),
    };
    // An exited process is gone for E2B (envd forgets it): `not_found`, which the SDK's
    // `kill` reports as `False`.
    let p = s.engine.get_process(&call.sid, &selector).await?;
    if p.state == ProcessState::Exited {
        return Err(RpcError::new(
            Code::NotFound,
            format!("process {selector} has exited"),
        ));
    }
    s.engine
        .signal_process(&call.sid, &selector, &SignalValue::Number(signal))
        .await?;
    Ok(json!({}))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputStart {
    process: Option<Selector>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputData {
    input: Option<Input>,
}

/// One message of a `StreamInput` client stream.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StreamInputRequest {
    start: Option<StreamInputStart>,
    data: Option<StreamInputData>,
}

/// `StreamInput`: a client stream, `start{process}` then `data{input}` messages, fed to
/// the process's input as they arrive (one write that lasts the whole stream).
pub(super) async fn stream_input(s: E2b, sid: String, body: axum::body::Body) -> Response {
    let mut msgs = connect::Envelopes::new(body);
    let result = async {
        let selector = loop {
            match msgs.next::<StreamInputRequest>().await? {
                Some(StreamInputRequest {
                    start: Some(st), ..
                }) => break Selector::of(st.process)?,
                Some(_) => continue, // keepalives before the start
                None => return Err(RpcError::invalid("the input stream has no start message")),
            }
        };
        s.engine.get_process(&sid, &selector).await?;
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<bytes::Bytes, warren_engine::RuntimeError>>(8);
        let data: warren_engine::ByteStream =
            Box::pin(futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|v| (v, rx))
            }));
        let feed = async move {
            while let Some(m) = msgs.next::<StreamInputRequest>().await? {
                let Some(input) = m.data.and_then(|d| d.input) else {
                    continue;
                };
                let chunk = match (input.stdin, input.pty) {
                    (Some(d), _) | (None, Some(d)) => decode_b64("input", &d)?,
                    (None, None) => continue,
                };
                if tx.send(Ok(chunk.into())).await.is_err() {
                    break;
                }
            }
            Ok::<(), RpcError>(())
        };
        let (fed, written) = tokio::join!(feed, s.engine.write_stdin(&sid, &selector, data));
        fed?;
        written?;
        Ok(json!({}))
    };
    connect::stream_reply(result.await)
}

/// `CloseStdin`.
async fn close_stdin(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: Selected = call.message()?;
    let selector = Selector::of(req.process)?;
    s.engine.close_stdin(&call.sid, &selector).await?;
    Ok(json!({}))
}

/// `Update`: a new terminal size.
async fn update(s: &E2b, call: &Call) -> RpcResult<serde_json::Value> {
    let req: UpdateRequest = call.message()?;
    let selector = Selector::of(req.process)?;
    if let Some(pty) = req.pty {
        let size = pty.size()?;
        s.engine
            .resize_process(&call.sid, &selector, size.rows, size.cols)
            .await?;
    }
    Ok(json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(exit: Option<i32>, signal: Option<&str>) -> Process {
        Process {
            pid: 7,
            tag: None,
            cmd: vec!["x".into()],
            state: ProcessState::Exited,
            exit_code: exit,
            signal: signal.map(str::to_string),
            timed_out: false,
            started_at: chrono::Utc::now(),
            ended_at: None,
            pty: None,
            stdin_open: false,
            output_start: 0,
            output_end: 0,
            address: None,
            url: None,
        }
    }

    #[test]
    fn end_events_read_like_envd() {
        let e = end_event(&proc(Some(3), None));
        assert_eq!(e["event"]["end"]["exitCode"], 3);
        assert_eq!(e["event"]["end"]["status"], "exit status 3");
        assert_eq!(e["event"]["end"]["exited"], true);
        let e = end_event(&proc(Some(137), Some("SIGKILL")));
        assert_eq!(e["event"]["end"]["exitCode"], -1);
        assert_eq!(e["event"]["end"]["status"], "signal: killed");
    }

    #[test]
    fn start_requests_translate() {
        let req: StartRequest = serde_json::from_str(
            r#"{"process":{"cmd":"/bin/bash","args":["-l","-c","echo hi"],"envs":{"A":"1"},"cwd":"w"},
                "pty":{"size":{"cols":80,"rows":"24"}},"stdin":false,"tag":"t"}"#,
        )
        .unwrap();
        let timing = Timing {
            deadline: Some(tokio::time::Instant::now() + std::time::Duration::from_millis(1500)),
            keepalive: std::time::Duration::from_secs(50),
        };
        let spec = start_spec(req, User::parse("").unwrap(), &timing).unwrap();
        assert_eq!(spec.cmd, ["/bin/bash", "-l", "-c", "echo hi"]);
        assert_eq!(spec.cwd.as_deref(), Some("/home/user/w"));
        assert_eq!(spec.pty, Some(PtySize { rows: 24, cols: 80 }));
        assert_eq!(spec.stdin, Some(true), "a terminal always has input");
        assert_eq!(spec.timeout_secs, Some(2));
        assert_eq!(spec.tag.as_deref(), Some("t"));
        let bad: StartRequest = serde_json::from_str(r#"{"process":{"cmd":""}}"#).unwrap();
        assert!(start_spec(bad, User::parse("").unwrap(), &timing).is_err());
        let sel: Selector = serde_json::from_str(r#"{"pid":"12"}"#).unwrap();
        assert_eq!(Selector::of(Some(sel)).unwrap(), "12");
        assert!(Selector::of(None).is_err());
    }
}
