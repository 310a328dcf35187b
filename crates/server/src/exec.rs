//! `POST /v1/sandboxes/{id}/exec`: collected JSON or a live SSE stream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures::{stream, Stream, StreamExt};
use serde::Serialize;
use warren_api::{signal_name, ErrorBody, ExecRequest, ExecResult, ExitEvent, OutputChunk};
use warren_engine::{Engine, EngineError, ExecOutput, ExecStream, ExitInfo};

use crate::encode::ChunkEncoder;
use crate::error::{ApiError, ApiJson, SandboxId};
use crate::output::{Capture, OutputBudget, Reservation, ResultBody};
use warren_api::ErrorCode;

/// Run a command in a sandbox.
///
/// Without streaming the response is the finished command's [`ExecResult`]. Each of stdout
/// and stderr keeps at most `limits.max_exec_capture_bytes`, and all non-streamed execs in
/// flight together keep at most `limits.max_exec_output_bytes`; what is dropped is counted
/// in `stdout_truncated_bytes` / `stderr_truncated_bytes`. Text output that would escape to
/// a JSON string over 1 MiB and larger than its base64 is sent as base64
/// (`stdout_encoding`). With `Accept: text/event-stream` the response is
/// a Server-Sent Events stream of `stdout` and `stderr` events (data: `OutputChunk` JSON, in
/// the requested encoding, UTF-8 characters never split) ending with one `exit` event (data:
/// `ExitEvent` JSON). Each event's `id` is the number of output bytes (stdout and stderr
/// together) delivered so far. If the runtime fails mid-stream, the last event is `error`
/// (data: `ErrorBody` JSON). Closing the connection kills the command.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = ExecRequest,
    responses(
        (status = 200, description = "The finished command, or its live output as SSE when the request has `Accept: text/event-stream`",
            content(
                (ExecResult = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "`invalid_request`, `command_not_found`, `invalid_cwd` or `spawn_failed`", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the sandbox is not running", body = ErrorBody),
        (status = 413, description = "`payload_too_large`", body = ErrorBody),
        (status = 500, description = "`runtime_error`", body = ErrorBody),
    ))]
pub(crate) async fn exec(
    State(engine): State<Engine>,
    Extension(budget): Extension<Arc<OutputBudget>>,
    SandboxId(id): SandboxId,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    let encoding = req.encoding.unwrap_or_default();
    let streaming = wants_event_stream(&headers);
    let output = engine.exec(&id, req).await?;
    if streaming {
        return Ok(sse_response(output, encoding));
    }
    let cap = engine.config().max_exec_capture_bytes;
    // The body holds the output's budget until it has been sent.
    let body = collect(output, cap, encoding, &budget).await?;
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

pub(crate) fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().any(|value| {
        value.to_str().is_ok_and(|v| {
            v.split(',').any(|item| {
                item.split(';')
                    .next()
                    .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("text/event-stream"))
            })
        })
    })
}

fn exit_event(info: &ExitInfo) -> ExitEvent {
    ExitEvent {
        exit_code: info.exit_code,
        signal: info.signal.map(signal_name),
        timed_out: info.timed_out,
        duration_ms: info.duration_us / 1000,
    }
}

/// Run the command to its end, keeping its output within the per-stream cap and the
/// server-wide budget. Returns the JSON body, which holds that budget.
async fn collect(
    mut output: ExecStream,
    cap: usize,
    encoding: warren_api::OutputEncoding,
    budget: &Arc<OutputBudget>,
) -> Result<ResultBody, ApiError> {
    let mut reservation = Reservation::new(budget);
    let mut stdout = Capture::new(cap);
    let mut stderr = Capture::new(cap);
    let exit = loop {
        match output.next().await {
            Some(Ok(ExecOutput::Stdout(bytes))) => stdout.push(&bytes, &mut reservation),
            Some(Ok(ExecOutput::Stderr(bytes))) => stderr.push(&bytes, &mut reservation),
            Some(Ok(ExecOutput::Exit(info))) => break info,
            Some(Err(err)) => return Err(EngineError::Runtime(err).into()),
            None => return Err(ended_without_exit()),
        }
    };
    Ok(ResultBody::new(
        &exit_event(&exit),
        stdout,
        stderr,
        encoding,
        reservation,
    ))
}

fn ended_without_exit() -> ApiError {
    ApiError::new(
        ErrorCode::RuntimeError,
        "the command's output ended without an exit status",
    )
}

fn sse_response(output: ExecStream, encoding: warren_api::OutputEncoding) -> Response {
    let state = SseState {
        output,
        stdout: ChunkEncoder::new(encoding),
        stderr: ChunkEncoder::new(encoding),
        offset: 0,
        done: false,
    };
    let events = sse_events(state);
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

struct SseState {
    output: ExecStream,
    stdout: ChunkEncoder,
    stderr: ChunkEncoder,
    /// Raw output bytes (stdout + stderr) delivered so far.
    offset: u64,
    done: bool,
}

/// The SSE events of a running command. Polled only while the client is connected: when the
/// response body is dropped, so is the `ExecStream`, which kills the command.
fn sse_events(state: SseState) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        let mut events = Vec::new();
        match st.output.next().await {
            Some(Ok(ExecOutput::Stdout(bytes))) => {
                let (data, n) = st.stdout.push(&bytes);
                st.push_chunk(&mut events, "stdout", data, n);
            }
            Some(Ok(ExecOutput::Stderr(bytes))) => {
                let (data, n) = st.stderr.push(&bytes);
                st.push_chunk(&mut events, "stderr", data, n);
            }
            Some(Ok(ExecOutput::Exit(info))) => {
                st.flush(&mut events);
                events.push(json_event("exit", st.offset, &exit_event(&info)));
                st.done = true;
            }
            Some(Err(err)) => {
                st.flush(&mut events);
                let err = ApiError::from(EngineError::Runtime(err));
                events.push(json_event("error", st.offset, &err.body()));
                st.done = true;
            }
            None => {
                st.flush(&mut events);
                events.push(json_event("error", st.offset, &ended_without_exit().body()));
                st.done = true;
            }
        }
        Some((events, st))
    })
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)))
}

impl SseState {
    fn push_chunk(&mut self, events: &mut Vec<Event>, name: &str, data: String, n: usize) {
        if data.is_empty() {
            return;
        }
        let offset = self.offset;
        self.offset += n as u64;
        events.push(json_event(name, self.offset, &OutputChunk { data, offset }));
    }

    /// End of output: held-back partial characters become U+FFFD.
    fn flush(&mut self, events: &mut Vec<Event>) {
        let (data, n) = self.stdout.finish();
        self.push_chunk(events, "stdout", data, n);
        let (data, n) = self.stderr.finish();
        self.push_chunk(events, "stderr", data, n);
    }
}

fn json_event<T: Serialize>(name: &str, offset: u64, value: &T) -> Event {
    let data = serde_json::to_string(value).unwrap_or_else(|err| {
        // Cannot happen for these plain structs; never panic on a request path.
        let body = ErrorBody {
            error: warren_api::ErrorDetail {
                code: "internal".into(),
                message: err.to_string(),
            },
        };
        serde_json::to_string(&body).unwrap_or_default()
    });
    Event::default()
        .event(name)
        .id(offset.to_string())
        .data(data)
}
