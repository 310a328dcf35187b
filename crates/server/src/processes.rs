//! `/v1/sandboxes/{id}/processes`: durable processes, their output log (SSE) and terminals
//! (WebSocket).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::{stream, SinkExt, Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::IntoParams;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use warren_api::{
    CreateProcessRequest, ErrorBody, LostEvent, OutputChunk, OutputEncoding, Process, ProcessState,
    PtyMessage, ResizeRequest, SignalRequest,
};
use warren_engine::processes::AttachEvent;
use warren_engine::{ByteStream, Engine, EngineError};
use warren_runtime::{AttachStream, RuntimeError};

use crate::encode::ChunkEncoder;
use crate::error::{ApiError, ApiJson, ApiQuery, SandboxId};
use warren_api::ErrorCode;

/// The routes of this module, each registered with its OpenAPI operation (merged into
/// [`crate::router`]).
pub(crate) fn routes() -> OpenApiRouter<Engine> {
    OpenApiRouter::new()
        .routes(routes!(start_process, list_processes))
        .routes(routes!(get_process))
        .routes(routes!(signal_process))
        // Input streams to the process: no body limit on this route only.
        .routes(routes!(write_stdin).layer(DefaultBodyLimit::disable()))
        .routes(routes!(close_stdin))
        .routes(routes!(resize_process))
        .routes(routes!(output))
        .routes(routes!(pty))
}

/// Raw bytes for a process's stdin (`application/octet-stream`).
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct StdinContent(#[allow(dead_code)] Vec<u8>);

/// The `{id}` and `{pid}` path segments (`pid` is a pid or a tag).
pub(crate) struct ProcPath {
    id: String,
    pid: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ProcPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<(String, String)>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path((id, pid))) => Ok(ProcPath { id, pid }),
            Err(rejection) => Err(ApiError::new(
                ErrorCode::ProcessNotFound,
                format!("no such process ({})", rejection.body_text()),
            )),
        }
    }
}

const ERRORS_409: &str = "`invalid_state`: the sandbox is not running";

/// Start a durable process.
///
/// The process belongs to the sandbox, not to this request: it runs until it exits, is
/// signalled, times out (`timeout_secs`) or the sandbox goes. Its stdout and stderr are kept,
/// interleaved in one offset space, in a bounded log (`log_bytes`) that
/// `GET .../output` and `GET .../pty` replay and follow. With `pty` it runs in a new
/// pseudo-terminal (stdout and stderr are the terminal; stdin is always open).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = CreateProcessRequest,
    responses(
        (status = 201, description = "The process, running", body = Process),
        (status = 400, description = "`invalid_request`, `command_not_found`, `invalid_cwd` or `spawn_failed`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state` or `tag_in_use`", body = ErrorBody),
        (status = 500, description = "`runtime_error`", body = ErrorBody),
        (status = 501, description = "`not_supported` by this runtime", body = ErrorBody),
    ))]
pub(crate) async fn start_process(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
    ApiJson(req): ApiJson<CreateProcessRequest>,
) -> Result<(StatusCode, Json<Process>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(engine.start_process(&id, req).await?),
    ))
}

/// Running and recently exited processes, by pid.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, description = "The processes", body = Vec<Process>),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = ERRORS_409, body = ErrorBody),
        (status = 501, description = "`not_supported`", body = ErrorBody),
    ))]
pub(crate) async fn list_processes(
    State(engine): State<Engine>,
    SandboxId(id): SandboxId,
) -> Result<Json<Vec<Process>>, ApiError> {
    Ok(Json(engine.list_processes(&id).await?))
}

/// One process, by pid or tag.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Pid or tag")),
    responses(
        (status = 200, description = "The process", body = Process),
        (status = 400, description = "`invalid_request`: neither a pid nor a tag", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `process_not_found`", body = ErrorBody),
        (status = 409, description = ERRORS_409, body = ErrorBody),
    ))]
pub(crate) async fn get_process(
    State(engine): State<Engine>,
    p: ProcPath,
) -> Result<Json<Process>, ApiError> {
    Ok(Json(engine.get_process(&p.id, &p.pid).await?))
}

/// Send a signal to the process's whole process group.
///
/// `signal` is a name (`TERM`, `SIGTERM`, `kill`) or a number (`15`). Signalling an exited
/// process changes nothing. The answer is the process's state right after the signal was
/// sent (it may still be running while it handles it).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/signal", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Pid or tag")),
    request_body = SignalRequest,
    responses(
        (status = 200, description = "The process", body = Process),
        (status = 400, description = "`invalid_request` or `invalid_signal`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `process_not_found`", body = ErrorBody),
        (status = 409, description = ERRORS_409, body = ErrorBody),
    ))]
pub(crate) async fn signal_process(
    State(engine): State<Engine>,
    p: ProcPath,
    ApiJson(req): ApiJson<SignalRequest>,
) -> Result<Json<Process>, ApiError> {
    Ok(Json(
        engine.signal_process(&p.id, &p.pid, &req.signal).await?,
    ))
}

/// Write the request body to the process's stdin (or terminal), streamed as it arrives (no
/// body size limit). Stdin stays open afterwards; close it with `DELETE`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Pid or tag")),
    request_body(content = StdinContent, content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "The process after the write", body = Process),
        (status = 400, description = "`invalid_request` (also: the upload was interrupted)", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `process_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state` or `stdin_closed` (or never opened)", body = ErrorBody),
    ))]
pub(crate) async fn write_stdin(
    State(engine): State<Engine>,
    p: ProcPath,
    body: Body,
) -> Result<Json<Process>, ApiError> {
    let broken = Arc::new(AtomicBool::new(false));
    let flag = broken.clone();
    let data: ByteStream = Box::pin(body.into_data_stream().map(move |chunk| {
        chunk.map_err(|e| {
            flag.store(true, Ordering::SeqCst);
            RuntimeError::Io(std::io::Error::other(format!("upload interrupted: {e}")))
        })
    }));
    match engine.write_stdin(&p.id, &p.pid, data).await {
        Ok(info) => Ok(Json(info)),
        Err(EngineError::Runtime(e)) if broken.load(Ordering::SeqCst) => Err(
            ApiError::invalid_request(format!("the upload was interrupted ({e})")),
        ),
        Err(e) => Err(e.into()),
    }
}

/// Close the process's stdin (a terminal gets end-of-file, `^D`).
#[utoipa::path(delete, path = "/v1/sandboxes/{id}/processes/{pid}/stdin", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Pid or tag")),
    responses(
        (status = 200, description = "The process", body = Process),
        (status = 404, description = "`sandbox_not_found` or `process_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state` or `stdin_closed`", body = ErrorBody),
    ))]
pub(crate) async fn close_stdin(
    State(engine): State<Engine>,
    p: ProcPath,
) -> Result<Json<Process>, ApiError> {
    Ok(Json(engine.close_stdin(&p.id, &p.pid).await?))
}

/// Set the size of the process's terminal (its foreground group gets `SIGWINCH`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/processes/{pid}/resize", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Pid or tag")),
    request_body = ResizeRequest,
    responses(
        (status = 200, description = "The process", body = Process),
        (status = 400, description = "`invalid_request`: rows or cols outside 1..=1000", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `process_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state` or `not_a_pty`", body = ErrorBody),
    ))]
pub(crate) async fn resize_process(
    State(engine): State<Engine>,
    p: ProcPath,
    ApiJson(req): ApiJson<ResizeRequest>,
) -> Result<Json<Process>, ApiError> {
    Ok(Json(
        engine
            .resize_process(&p.id, &p.pid, req.rows, req.cols)
            .await?,
    ))
}

/// Query of `GET .../output`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct OutputQuery {
    /// Byte offset to start from (default 0: everything still kept). A `Last-Event-ID`
    /// header, when present, wins over this parameter.
    offset: Option<u64>,
    /// Keep the stream open and follow new output until the process exits (default false:
    /// send what the log holds now and end).
    follow: Option<bool>,
    /// `utf8` (default) or `base64`.
    encoding: Option<OutputEncoding>,
}

/// A process's output as Server-Sent Events, replayed from a byte offset and optionally
/// followed.
///
/// stdout and stderr share one offset space (bytes in production order). Events:
/// `stdout` / `stderr` (data: `OutputChunk`, `offset` = the raw offset of its first byte),
/// `lost` (data: `LostEvent`: output in `from..to` was dropped from the bounded log before it
/// could be sent — never skipped silently), then `exit` (data: `Process`) once the process
/// exited and all its output was sent. Without `follow`, a still-running process's stream
/// ends with `end` (data: `Process`) once the log is drained. If the runtime fails, the last
/// event is `error` (data: `ErrorBody`).
///
/// Every event's `id` is the raw offset just after what was delivered, so reconnecting with
/// `Last-Event-ID: <last id>` (which takes precedence over `?offset=`) delivers every byte
/// exactly once. With `encoding=utf8` (invalid bytes become U+FFFD) a character split across
/// chunks is held back until complete — the `id` then stays before it; only a character
/// interrupted by output of the other stream is emitted as U+FFFD.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}/output", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Pid or tag"),
           ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this offset (wins over `offset`)"),
           OutputQuery),
    responses(
        (status = 200, description = "Server-Sent Events", body = String, content_type = "text/event-stream"),
        (status = 400, description = "`invalid_request`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `process_not_found`", body = ErrorBody),
        (status = 409, description = ERRORS_409, body = ErrorBody),
    ))]
pub(crate) async fn output(
    State(engine): State<Engine>,
    p: ProcPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<OutputQuery>,
) -> Result<Response, ApiError> {
    let offset = match headers.get("last-event-id") {
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                ApiError::invalid_request("Last-Event-ID must be a byte offset (an integer)")
            })?,
        None => q.offset.unwrap_or(0),
    };
    let follow = q.follow.unwrap_or(false);
    let attach = engine.attach(&p.id, &p.pid, offset, follow).await?;
    let state = SseState {
        engine,
        attach,
        out: OutputDecoder::new(q.encoding.unwrap_or_default(), offset),
        done: false,
    };
    let mut response = Sse::new(sse_events(state))
        .keep_alive(KeepAlive::default())
        .into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// One decoded item of an attachment.
enum Item {
    Chunk {
        stderr: bool,
        data: String,
        offset: u64,
        id: u64,
    },
    Lost(LostEvent),
}

/// Turns attachment events into offset-tagged, encoded chunks. Tracks the raw position, so
/// bytes before the requested offset are never sent twice and a gap is always reported.
struct OutputDecoder {
    encoding: OutputEncoding,
    /// The raw offset of the next byte to arrive.
    pos: u64,
    /// The offset the client asked for; earlier bytes are skipped.
    want: u64,
    /// Held-back bytes of a split UTF-8 character: (stderr?, its encoder, its start).
    pending: Option<(bool, ChunkEncoder, u64)>,
}

impl OutputDecoder {
    fn new(encoding: OutputEncoding, want: u64) -> Self {
        OutputDecoder {
            encoding,
            pos: want,
            want,
            pending: None,
        }
    }

    /// The resume offset: everything before it was delivered, nothing after.
    fn delivered(&self) -> u64 {
        self.pending
            .as_ref()
            .map_or(self.pos, |(_, _, start)| *start)
    }

    fn attached(&mut self, offset: u64, out: &mut Vec<Item>) {
        if offset > self.want {
            out.push(Item::Lost(LostEvent {
                from: self.want,
                to: offset,
                bytes: offset - self.want,
            }));
            self.want = offset;
        }
        self.pos = offset;
    }

    fn lost(&mut self, from: u64, to: u64, out: &mut Vec<Item>) {
        self.flush(out);
        let from = from.max(self.want);
        if to > from {
            out.push(Item::Lost(LostEvent {
                from,
                to,
                bytes: to - from,
            }));
        }
        self.pos = self.pos.max(to);
        self.want = self.want.max(to);
    }

    fn chunk(&mut self, stderr: bool, bytes: &[u8], out: &mut Vec<Item>) {
        let start = self.pos;
        self.pos += bytes.len() as u64;
        // Skip what precedes the requested offset (a runtime may replay from earlier).
        let skip = usize::try_from(self.want.saturating_sub(start)).unwrap_or(usize::MAX);
        if skip >= bytes.len() {
            return;
        }
        let bytes = &bytes[skip..];
        let start = start + skip as u64;
        self.want = self.pos;
        if matches!(&self.pending, Some((s, _, _)) if *s != stderr) {
            self.flush(out);
        }
        let (mut enc, offset) = match self.pending.take() {
            Some((_, enc, p)) => (enc, p),
            None => (ChunkEncoder::new(self.encoding), start),
        };
        let (data, n) = enc.push(bytes);
        let id = offset + n as u64;
        if id < self.pos {
            self.pending = Some((stderr, enc, id));
        }
        if !data.is_empty() {
            out.push(Item::Chunk {
                stderr,
                data,
                offset,
                id,
            });
        }
    }

    /// Emit held-back bytes (as U+FFFD).
    fn flush(&mut self, out: &mut Vec<Item>) {
        if let Some((stderr, mut enc, offset)) = self.pending.take() {
            let (data, n) = enc.finish();
            if !data.is_empty() {
                out.push(Item::Chunk {
                    stderr,
                    data,
                    offset,
                    id: offset + n as u64,
                });
            }
        }
    }
}

struct SseState {
    engine: Engine,
    attach: AttachStream,
    out: OutputDecoder,
    done: bool,
}

fn sse_events(state: SseState) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut items = Vec::new();
        let mut events = Vec::new();
        match st.attach.next().await {
            Some(Ok(AttachEvent::Attached { offset, .. })) => st.out.attached(offset, &mut items),
            Some(Ok(AttachEvent::Lost { from, to })) => st.out.lost(from, to, &mut items),
            Some(Ok(AttachEvent::Stdout(b))) => st.out.chunk(false, &b, &mut items),
            Some(Ok(AttachEvent::Stderr(b))) => st.out.chunk(true, &b, &mut items),
            Some(Ok(AttachEvent::Ended(info))) => {
                st.out.flush(&mut items);
                let process = warren_engine::processes::process_info(info);
                let name = if process.state == ProcessState::Exited {
                    "exit"
                } else {
                    "end"
                };
                st.done = true;
                push_items(&mut events, items);
                events.push(json_event(name, st.out.delivered(), &process));
                return Some((events, st));
            }
            Some(Err(e)) => {
                st.out.flush(&mut items);
                st.done = true;
                push_items(&mut events, items);
                let err = ApiError::from(st.engine.attach_error(e));
                events.push(json_event("error", st.out.delivered(), &err.body()));
                return Some((events, st));
            }
            None => {
                st.out.flush(&mut items);
                st.done = true;
                push_items(&mut events, items);
                let err = ApiError::new(
                    ErrorCode::RuntimeError,
                    "the output stream ended before the process did",
                );
                events.push(json_event("error", st.out.delivered(), &err.body()));
                return Some((events, st));
            }
        }
        push_items(&mut events, items);
        Some((events, st))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

fn push_items(events: &mut Vec<Event>, items: Vec<Item>) {
    for item in items {
        events.push(match item {
            Item::Chunk {
                stderr,
                data,
                offset,
                id,
            } => json_event(
                if stderr { "stderr" } else { "stdout" },
                id,
                &OutputChunk { data, offset },
            ),
            Item::Lost(l) => json_event("lost", l.to, &l),
        });
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|err| {
        // Cannot happen for these plain structs; never panic on a request path.
        let body = ErrorBody {
            error: warren_api::ErrorDetail {
                code: "internal".into(),
                message: err.to_string(),
            },
        };
        serde_json::to_string(&body).unwrap_or_default()
    })
}

fn json_event<T: Serialize>(name: &str, id: u64, value: &T) -> Event {
    Event::default()
        .event(name)
        .id(id.to_string())
        .data(to_json(value))
}

/// Query of `GET .../pty`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PtyQuery {
    /// Replay output from this byte offset (default: the whole retained log, so a
    /// reattaching terminal redraws).
    offset: Option<u64>,
}

/// A terminal session over WebSocket (`101 Switching Protocols`).
///
/// Binary frames from the client are written to the process's terminal (or stdin); its output
/// arrives as binary frames, replayed from `offset` (default: everything still in the log)
/// and then followed. Text frames are JSON control messages (`PtyMessage`): the client sends
/// `{"type":"resize","rows":R,"cols":C}` and `{"type":"signal","signal":"INT"}`; the server
/// sends `{"type":"lost","from","to","bytes"}` when output was dropped,
/// `{"type":"error","code","message"}` when a control message or input failed, and finally
/// `{"type":"exit", ...Process}` when the process exited, then closes the socket. Closing the
/// socket detaches; the process goes on. Several sessions on one process share it: each
/// receives all output and each may type (input is written in arrival order).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/processes/{pid}/pty", tag = "processes",
    params(("id" = String, Path, description = "Sandbox id"),
           ("pid" = String, Path, description = "Pid or tag"),
           PtyQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "`invalid_request`: not a WebSocket upgrade", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found` or `process_not_found`", body = ErrorBody),
        (status = 409, description = ERRORS_409, body = ErrorBody),
    ))]
pub(crate) async fn pty(
    State(engine): State<Engine>,
    p: ProcPath,
    ApiQuery(q): ApiQuery<PtyQuery>,
    permit: Option<axum::Extension<crate::streams::StreamPermit>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|e| {
        ApiError::invalid_request(format!("this route needs a WebSocket upgrade: {e}"))
    })?;
    let offset = match q.offset {
        Some(o) => o,
        None => engine.get_process(&p.id, &p.pid).await?.output_start,
    };
    let attach = engine.attach(&p.id, &p.pid, offset, true).await?;
    Ok(ws.on_upgrade(move |socket| async move {
        // Counted as an open stream for as long as the session lasts.
        let _permit = permit;
        terminal(engine, p, offset, attach, socket).await
    }))
}

fn text(msg: &PtyMessage) -> Message {
    Message::Text(to_json(msg).into())
}

fn error_message(e: EngineError) -> Message {
    let e = ApiError::from(e);
    text(&PtyMessage::Error {
        code: e.code.to_string(),
        message: e.message,
    })
}

async fn terminal(
    engine: Engine,
    p: ProcPath,
    offset: u64,
    mut attach: AttachStream,
    socket: WebSocket,
) {
    let (mut tx, mut rx) = socket.split();
    // Messages to the client from the input side (errors of control messages and stdin).
    let (notes_tx, mut notes_rx) = mpsc::channel::<Message>(16);
    // The stdin writer: one long-lived write_stdin fed by the socket's binary frames.
    let mut stdin: Option<mpsc::Sender<Result<Bytes, RuntimeError>>> = None;
    let mut pos = offset;
    loop {
        tokio::select! {
            ev = attach.next() => {
                let msg = match ev {
                    Some(Ok(AttachEvent::Attached { offset: start, .. })) => {
                        let lost = (start > pos).then(|| PtyMessage::Lost(LostEvent {
                            from: pos, to: start, bytes: start - pos,
                        }));
                        pos = start;
                        match lost { Some(l) => text(&l), None => continue }
                    }
                    Some(Ok(AttachEvent::Lost { from, to })) => {
                        let from = from.max(pos);
                        if to <= from { continue }
                        pos = to;
                        text(&PtyMessage::Lost(LostEvent { from, to, bytes: to - from }))
                    }
                    Some(Ok(AttachEvent::Stdout(b) | AttachEvent::Stderr(b))) => {
                        pos += b.len() as u64;
                        Message::Binary(b)
                    }
                    Some(Ok(AttachEvent::Ended(info))) => {
                        let process = warren_engine::processes::process_info(info);
                        let _ = tx.send(text(&PtyMessage::Exit(process))).await;
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(error_message(engine.attach_error(e))).await;
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                    None => {
                        let _ = tx.send(Message::Close(None)).await;
                        return;
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            Some(note) = notes_rx.recv() => {
                if tx.send(note).await.is_err() {
                    return;
                }
            }
            msg = rx.next() => {
                match msg {
                    Some(Ok(Message::Binary(data))) => {
                        let sender = stdin.get_or_insert_with(|| {
                            spawn_stdin(engine.clone(), &p, notes_tx.clone())
                        });
                        if sender.send(Ok(data)).await.is_err() {
                            // The writer ended (reported through notes); start over next time.
                            stdin = None;
                        }
                    }
                    Some(Ok(Message::Text(t))) => {
                        let engine = engine.clone();
                        let notes = notes_tx.clone();
                        let (id, pid) = (p.id.clone(), p.pid.clone());
                        let result = match serde_json::from_str::<PtyMessage>(t.as_str()) {
                            Ok(PtyMessage::Resize { rows, cols }) => {
                                engine.resize_process(&id, &pid, rows, cols).await.map(|_| ())
                            }
                            Ok(PtyMessage::Signal { signal }) => {
                                engine.signal_process(&id, &pid, &signal).await.map(|_| ())
                            }
                            Ok(_) => Err(EngineError::InvalidRequest(
                                "clients send only `resize` and `signal` messages".into(),
                            )),
                            Err(e) => Err(EngineError::InvalidRequest(format!(
                                "invalid control message: {e}"
                            ))),
                        };
                        if let Err(e) = result {
                            let _ = notes.send(error_message(e)).await;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
}

fn spawn_stdin(
    engine: Engine,
    p: &ProcPath,
    notes: mpsc::Sender<Message>,
) -> mpsc::Sender<Result<Bytes, RuntimeError>> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, RuntimeError>>(64);
    let (id, pid) = (p.id.clone(), p.pid.clone());
    tokio::spawn(async move {
        let data: ByteStream = Box::pin(tokio_stream_from(rx));
        if let Err(e) = engine.write_stdin(&id, &pid, data).await {
            let _ = notes.send(error_message(e)).await;
        }
    });
    tx
}

fn tokio_stream_from<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dec: &mut OutputDecoder, chunks: &[(bool, &[u8])]) -> Vec<(bool, String, u64, u64)> {
        let mut out = Vec::new();
        for (stderr, b) in chunks {
            dec.chunk(*stderr, b, &mut out);
        }
        dec.flush(&mut out);
        out.into_iter()
            .filter_map(|i| match i {
                Item::Chunk {
                    stderr,
                    data,
                    offset,
                    id,
                } => Some((stderr, data, offset, id)),
                Item::Lost(_) => None,
            })
            .collect()
    }

    #[test]
    fn split_character_keeps_offsets() {
        let mut dec = OutputDecoder::new(OutputEncoding::Utf8, 0);
        let out = run(&mut dec, &[(false, b"caf\xc3"), (false, b"\xa9\n")]);
        assert_eq!(
            out,
            vec![
                (false, "caf".to_string(), 0, 3),
                (false, "é\n".to_string(), 3, 6)
            ]
        );
    }

    #[test]
    fn skips_before_requested_offset() {
        let mut dec = OutputDecoder::new(OutputEncoding::Utf8, 4);
        let mut items = Vec::new();
        dec.attached(2, &mut items);
        assert!(items.is_empty());
        let out = run(&mut dec, &[(false, b"abcdef")]);
        assert_eq!(out, vec![(false, "cdef".to_string(), 4, 8)]);
    }
}
