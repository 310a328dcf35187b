//! execd's bash sessions: a session is a durable `bash` process reading commands from its
//! stdin, so `cd`, exports and functions persist between runs (and across a daemon
//! restart). A run writes the command and a marker carrying `$?`, then streams what the
//! session prints until the marker comes back. Runs of one session are serialized.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warren_api::{CreateProcessRequest, ErrorCode, ProcessState, SignalValue};
use warren_engine::{AttachEvent, EngineError};

use crate::error::{OsError, OsResult};
use crate::execd::{event_stream, new_id, Event, Lines};
use crate::Os;

pub(crate) fn routes() -> Router<Os> {
    Router::new()
        .route("/execd/{sid}/session", post(create))
        .route("/execd/{sid}/session/{session}/run", post(run))
        .route("/execd/{sid}/session/{session}", delete(remove))
}

#[derive(Debug, Default, Deserialize)]
struct CreateSession {
    #[serde(default)]
    cwd: Option<String>,
}

#[derive(Debug, Serialize)]
struct Created {
    session_id: String,
}

fn session_error(session: &str) -> impl Fn(EngineError) -> OsError + '_ {
    move |e| match e.code() {
        ErrorCode::ProcessNotFound => OsError::not_found(format!("no session {session}")),
        _ => OsError::from(e),
    }
}

fn is_session(id: &str) -> bool {
    id.starts_with('s')
}

async fn create(
    State(os): State<Os>,
    Path(sid): Path<String>,
    req: axum::body::Bytes,
) -> OsResult<Json<Created>> {
    let req: CreateSession = crate::error::optional_json(&req)?;
    let session_id = new_id('s');
    let env = crate::envfile::command_env(&os, &sid, &Default::default()).await?;
    os.engine
        .start_process(
            &sid,
            CreateProcessRequest {
                cmd: vec!["bash".into(), "--noprofile".into(), "--norc".into()],
                env,
                cwd: req.cwd,
                tag: Some(session_id.clone()),
                stdin: Some(true),
                ..Default::default()
            },
        )
        .await?;
    Ok(Json(Created { session_id }))
}

#[derive(Debug, Deserialize)]
struct RunInSession {
    command: String,
    #[serde(default)]
    cwd: Option<String>,
    /// Milliseconds.
    #[serde(default)]
    timeout: Option<u64>,
}

/// A word the shell reads as exactly `s`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The text written to the session for one run: the command with stdin from /dev/null
/// (so it cannot eat the marker line), then the marker with the command's status.
fn script(command: &str, cwd: Option<&str>, marker: &str) -> String {
    let cd = cwd
        .map(|c| format!("cd -- {} && ", quote(c)))
        .unwrap_or_default();
    format!(
        "{cd}{{ {command}\n}} </dev/null\nprintf '%s%d\\n' {} \"$?\"\n",
        quote(marker)
    )
}

/// The lock that serializes a session's runs. Locks nobody holds or waits for are dropped
/// once there are many (a session whose sandbox is gone leaves nothing behind for long).
fn lock_of(os: &Os, sid: &str, session: &str) -> Arc<tokio::sync::Mutex<()>> {
    const PRUNE_ABOVE: usize = 1024;
    let mut map = os.sessions.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() > PRUNE_ABOVE {
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
    }
    map.entry(format!("{sid}/{session}")).or_default().clone()
}

async fn run(
    State(os): State<Os>,
    Path((sid, session)): Path<(String, String)>,
    req: Result<Json<RunInSession>, JsonRejection>,
) -> OsResult<Response> {
    let Json(req) = req?;
    if req.command.trim().is_empty() {
        return Err(OsError::invalid("command must not be empty"));
    }
    if !is_session(&session) {
        return Err(OsError::not_found(format!("no session {session}")));
    }
    let lock = lock_of(&os, &sid, &session);
    let guard = lock.lock_owned().await;
    let p = os
        .engine
        .get_process(&sid, &session)
        .await
        .map_err(session_error(&session))?;
    if p.state != ProcessState::Running {
        return Err(OsError::from_code(
            ErrorCode::InvalidState,
            format!("session {session} has ended"),
        ));
    }
    // Attach first (from the log's end), so nothing the run prints is missed.
    let stream = os
        .engine
        .attach(&sid, &session, p.output_end, true)
        .await
        .map_err(session_error(&session))?;
    let marker = format!("__warren_{:016x}__", rand::random::<u64>());
    let text = script(&req.command, req.cwd.as_deref(), &marker);
    let input: warren_engine::ByteStream =
        Box::pin(futures::stream::once(async move { Ok(Bytes::from(text)) }));
    os.engine
        .write_stdin(&sid, &session, input)
        .await
        .map_err(session_error(&session))?;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let _ = tx.try_send(Event::text("init", new_id('r')).frame());
    let deadline = req.timeout.filter(|t| *t > 0).map(Duration::from_millis);
    tokio::spawn(async move {
        let _guard = guard;
        let end = follow(&os, stream, &marker, &tx, deadline).await;
        if let Some(ev) = end {
            let _ = tx.send(ev.frame()).await;
        }
        if let Err(e) = os.engine.get_process(&sid, &session).await {
            tracing::debug!(%sid, %session, error = %e, "session gone after a run");
        }
    });
    Ok(event_stream(rx))
}

/// Stream a run's output until its marker; the event that ends the run.
async fn follow(
    os: &Os,
    mut stream: warren_engine::AttachStream,
    marker: &str,
    tx: &mpsc::Sender<Bytes>,
    deadline: Option<Duration>,
) -> Option<Event> {
    let started = Instant::now();
    let marker = marker.as_bytes();
    let mut pending: Vec<u8> = Vec::new();
    let mut out = Lines::default();
    let mut err = Lines::default();
    loop {
        let next = match deadline {
            Some(d) => {
                match tokio::time::timeout(d.saturating_sub(started.elapsed()), stream.next()).await
                {
                    Ok(item) => item,
                    Err(_) => {
                        return Some(Event::error(
                            "TimeoutError",
                            "124".into(),
                            vec![format!(
                                "the run took longer than {} ms; the session keeps running it",
                                d.as_millis()
                            )],
                        ))
                    }
                }
            }
            None => stream.next().await,
        };
        let mut frames = Vec::new();
        match next {
            Some(Ok(AttachEvent::Stdout(b))) => {
                pending.extend_from_slice(&b);
                if let Some(at) = find(&pending, marker) {
                    frames.extend(
                        out.push(&pending[..at])
                            .into_iter()
                            .map(|t| Event::text("stdout", t)),
                    );
                    frames.extend(out.finish().map(|t| Event::text("stdout", t)));
                    frames.extend(err.finish().map(|t| Event::text("stderr", t)));
                    let rest = &pending[at + marker.len()..];
                    let code = rest
                        .split(|b| *b == b'\n')
                        .next()
                        .and_then(|c| std::str::from_utf8(c).ok())
                        .and_then(|c| c.trim().parse::<i32>().ok())
                        .unwrap_or(-1);
                    for f in frames {
                        let _ = tx.send(f.frame()).await;
                    }
                    return Some(Event::exit(code, None, false, started.elapsed()));
                }
                // Keep what could be the start of the marker.
                let keep = pending.len().min(marker.len() - 1);
                let emit: Vec<u8> = pending.drain(..pending.len() - keep).collect();
                frames.extend(
                    out.push(&emit)
                        .into_iter()
                        .map(|t| Event::text("stdout", t)),
                );
            }
            Some(Ok(AttachEvent::Stderr(b))) => {
                frames.extend(err.push(&b).into_iter().map(|t| Event::text("stderr", t)));
            }
            Some(Ok(AttachEvent::Attached { .. } | AttachEvent::Lost { .. })) => {}
            Some(Ok(AttachEvent::Ended(info))) => {
                let p = warren_engine::processes::process_info(info);
                return Some(Event::error(
                    "SessionExited",
                    p.exit_code.unwrap_or(-1).to_string(),
                    vec!["the session's shell exited".into()],
                ));
            }
            Some(Err(e)) => {
                return Some(Event::error(
                    "CommandExecError",
                    "-1".into(),
                    vec![os.engine.attach_error(e).to_string()],
                ))
            }
            None => return None,
        }
        for f in frames {
            if tx.send(f.frame()).await.is_err() {
                return None;
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn remove(
    State(os): State<Os>,
    Path((sid, session)): Path<(String, String)>,
) -> OsResult<StatusCode> {
    if !is_session(&session) {
        return Err(OsError::not_found(format!("no session {session}")));
    }
    os.engine
        .signal_process(&sid, &session, &SignalValue::Name("SIGKILL".into()))
        .await
        .map_err(session_error(&session))?;
    os.sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&format!("{sid}/{session}"));
    Ok(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_quote_and_mark() {
        let s = script("echo hi", Some("/tmp/it's"), "M");
        assert_eq!(
            s,
            "cd -- '/tmp/it'\\''s' && { echo hi\n} </dev/null\nprintf '%s%d\\n' 'M' \"$?\"\n"
        );
        assert_eq!(find(b"abcMdef", b"Md"), Some(3));
    }
}
