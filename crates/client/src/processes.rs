//! Durable processes and terminals: `/v1/sandboxes/{id}/processes`.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use reqwest::Method;
use tokio_tungstenite::tungstenite::Message;
use warren_api::{
    CreateProcessRequest, ErrorBody, LostEvent, OutputChunk, Process, ProcessState, PtyMessage,
    ResizeRequest, SignalRequest, SignalValue,
};

use crate::{check, decode, decode_base64, sse, ByteStream, Client, Error};

/// How often [`Client::output`] reconnects in a row without receiving anything before it
/// gives up.
const MAX_RECONNECTS: u32 = 5;
const RECONNECT_DELAY: Duration = Duration::from_millis(200);

/// One item of a process's output ([`Client::output`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OutputEvent {
    /// Raw bytes starting at `offset` in the process's output.
    Stdout {
        offset: u64,
        data: Bytes,
    },
    Stderr {
        offset: u64,
        data: Bytes,
    },
    /// Output in `from..to` was dropped from the server's bounded log before it was read.
    Lost {
        from: u64,
        to: u64,
    },
    /// The process exited; always the last item.
    Exit(Process),
}

/// A process's output, replayed and followed until it exits; reconnects by itself from the
/// last offset it received when the connection drops.
pub type OutputStream = std::pin::Pin<Box<dyn Stream<Item = Result<OutputEvent, Error>> + Send>>;

fn signal_value(signal: &str) -> SignalValue {
    match signal.parse::<i32>() {
        Ok(n) => SignalValue::Number(n),
        Err(_) => SignalValue::Name(signal.to_string()),
    }
}

impl Client {
    fn process_segments<'a>(id: &'a str, pid: &'a str, op: Option<&'a str>) -> Vec<&'a str> {
        let mut s = vec!["v1", "sandboxes", id, "processes", pid];
        s.extend(op);
        s
    }

    /// Start a durable process. With `expose_port`, the returned [`Process`] also carries
    /// `address` and `url` where that port is reachable from the server's host.
    pub async fn start_process(
        &self,
        id: &str,
        req: &CreateProcessRequest,
    ) -> Result<Process, Error> {
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "processes"],
            Some(req),
        )
        .await
    }

    /// Running and recently exited processes.
    pub async fn list_processes(&self, id: &str) -> Result<Vec<Process>, Error> {
        self.call::<(), _>(Method::GET, &["v1", "sandboxes", id, "processes"], None)
            .await
    }

    /// One process by pid or tag.
    pub async fn get_process(&self, id: &str, pid: &str) -> Result<Process, Error> {
        self.call::<(), _>(Method::GET, &Self::process_segments(id, pid, None), None)
            .await
    }

    /// Signal a process's group: `signal` is a name (`TERM`, `SIGINT`) or a number.
    pub async fn signal_process(
        &self,
        id: &str,
        pid: &str,
        signal: &str,
    ) -> Result<Process, Error> {
        let body = SignalRequest {
            signal: signal_value(signal),
        };
        self.call(
            Method::POST,
            &Self::process_segments(id, pid, Some("signal")),
            Some(&body),
        )
        .await
    }

    /// Write to a process's stdin (streamed; stdin stays open).
    pub async fn write_stdin(
        &self,
        id: &str,
        pid: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Process, Error> {
        let resp = self
            .request(
                Method::POST,
                &Self::process_segments(id, pid, Some("stdin")),
            )
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await?;
        decode(check(resp).await?).await
    }

    /// Close a process's stdin (a terminal gets end-of-file).
    pub async fn close_stdin(&self, id: &str, pid: &str) -> Result<Process, Error> {
        self.call::<(), _>(
            Method::DELETE,
            &Self::process_segments(id, pid, Some("stdin")),
            None,
        )
        .await
    }

    /// Resize a process's terminal.
    pub async fn resize(
        &self,
        id: &str,
        pid: &str,
        rows: u16,
        cols: u16,
    ) -> Result<Process, Error> {
        self.call(
            Method::POST,
            &Self::process_segments(id, pid, Some("resize")),
            Some(&ResizeRequest { rows, cols }),
        )
        .await
    }

    /// A process's output from byte `offset`, followed until it exits. If the connection
    /// drops first, the stream reconnects from the last offset it received (every byte is
    /// delivered exactly once); it ends after [`OutputEvent::Exit`] or an error.
    pub fn output(&self, id: &str, pid: &str, offset: u64) -> OutputStream {
        let state = Follow {
            client: self.clone(),
            id: id.to_string(),
            pid: pid.to_string(),
            offset,
            reader: None,
            failures: 0,
            done: false,
        };
        Box::pin(futures::stream::unfold(state, |mut st| async move {
            if st.done {
                return None;
            }
            let item = st.next().await;
            if item
                .as_ref()
                .is_none_or(|r| r.is_err() || matches!(r, Ok(OutputEvent::Exit(_))))
            {
                st.done = true;
            }
            item.map(|i| (i, st))
        }))
    }

    /// A handle on one process (by pid or tag).
    pub fn process(&self, id: &str, pid: &str) -> ProcessHandle {
        ProcessHandle {
            client: self.clone(),
            id: id.to_string(),
            pid: pid.to_string(),
            output: None,
            buf: Bytes::new(),
            exit: None,
            lost_bytes: 0,
        }
    }

    /// Open a terminal session (WebSocket) on a process, replaying the output the server
    /// still keeps.
    pub async fn pty(&self, id: &str, pid: &str) -> Result<PtySession, Error> {
        self.pty_from(id, pid, None).await
    }

    /// Like [`Client::pty`], replaying from byte `offset` (`None`: everything kept).
    pub async fn pty_from(
        &self,
        id: &str,
        pid: &str,
        offset: Option<u64>,
    ) -> Result<PtySession, Error> {
        let mut url = self.url(&Self::process_segments(id, pid, Some("pty")));
        if let Some(o) = offset {
            url.query_pairs_mut().append_pair("offset", &o.to_string());
        }
        let scheme = match url.scheme() {
            "https" => "wss",
            _ => "ws",
        };
        url.set_scheme(scheme)
            .map_err(|_| Error::WebSocket("cannot make a WebSocket URL".into()))?;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::WebSocket(e.to_string()))?;
        if let Some(key) = self.api_key() {
            let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| Error::WebSocket("the API key is not a valid header value".into()))?;
            request
                .headers_mut()
                .insert(reqwest::header::AUTHORIZATION, value);
        }
        let (ws, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                return Err(match serde_json::from_slice::<ErrorBody>(&body) {
                    Ok(e) => Error::Api {
                        status,
                        code: e.error.code,
                        message: e.error.message,
                    },
                    Err(_) => Error::Api {
                        status,
                        code: format!("http_{status}"),
                        message: String::from_utf8_lossy(&body).into_owned(),
                    },
                });
            }
            Err(e) => return Err(Error::WebSocket(e.to_string())),
        };
        Ok(PtySession { ws, done: false })
    }
}

/// Reads one SSE response.
struct SseReader {
    body: ByteStream,
    parser: sse::SseParser,
    pending: VecDeque<sse::SseEvent>,
}

impl SseReader {
    /// The next event; `None` when the body ended or broke.
    async fn next(&mut self) -> Option<sse::SseEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            match self.body.next().await {
                Some(Ok(bytes)) => self.parser.push(&bytes, &mut self.pending),
                Some(Err(_)) | None => return None,
            }
        }
    }
}

struct Follow {
    client: Client,
    id: String,
    pid: String,
    offset: u64,
    reader: Option<SseReader>,
    /// Connections in a row that delivered nothing.
    failures: u32,
    done: bool,
}

impl Follow {
    async fn connect(&mut self) -> Result<SseReader, Error> {
        let mut url = self.client.url(&Client::process_segments(
            &self.id,
            &self.pid,
            Some("output"),
        ));
        url.query_pairs_mut()
            .append_pair("follow", "true")
            .append_pair("encoding", "base64")
            .append_pair("offset", &self.offset.to_string());
        let resp = self.client.get_event_stream(url).await?;
        Ok(SseReader {
            body: Box::pin(resp.bytes_stream()),
            parser: sse::SseParser::default(),
            pending: VecDeque::new(),
        })
    }

    async fn next(&mut self) -> Option<Result<OutputEvent, Error>> {
        loop {
            let reader = match self.reader.as_mut() {
                Some(r) => r,
                None => {
                    if self.failures > 0 {
                        tokio::time::sleep(RECONNECT_DELAY).await;
                    }
                    match self.connect().await {
                        Ok(r) => self.reader.insert(r),
                        Err(e @ Error::Api { .. }) => return Some(Err(e)),
                        Err(e) => {
                            self.failures += 1;
                            if self.failures > MAX_RECONNECTS {
                                return Some(Err(e));
                            }
                            continue;
                        }
                    }
                }
            };
            let Some(ev) = reader.next().await else {
                // Dropped before the exit: reconnect from where we are.
                self.reader = None;
                self.failures += 1;
                if self.failures > MAX_RECONNECTS {
                    return Some(Err(Error::Decode(
                        "the output stream kept ending before the exit event".into(),
                    )));
                }
                continue;
            };
            if let Some(item) = self.convert(ev) {
                self.failures = 0;
                return Some(item);
            }
        }
    }

    fn convert(&mut self, ev: sse::SseEvent) -> Option<Result<OutputEvent, Error>> {
        let bad =
            |what: &str, e: serde_json::Error| Error::Decode(format!("bad {what} event: {e}"));
        Some(match ev.event.as_str() {
            "stdout" | "stderr" => {
                let chunk: OutputChunk = match serde_json::from_str(&ev.data) {
                    Ok(c) => c,
                    Err(e) => return Some(Err(bad("output", e))),
                };
                let data = match decode_base64(&chunk.data) {
                    Ok(d) => Bytes::from(d),
                    Err(e) => return Some(Err(e)),
                };
                self.offset = ev
                    .id
                    .and_then(|id| id.parse().ok())
                    .unwrap_or(chunk.offset + data.len() as u64);
                let offset = chunk.offset;
                Ok(if ev.event == "stdout" {
                    OutputEvent::Stdout { offset, data }
                } else {
                    OutputEvent::Stderr { offset, data }
                })
            }
            "lost" => match serde_json::from_str::<LostEvent>(&ev.data) {
                Ok(l) => {
                    self.offset = self.offset.max(l.to);
                    Ok(OutputEvent::Lost {
                        from: l.from,
                        to: l.to,
                    })
                }
                Err(e) => Err(bad("lost", e)),
            },
            "exit" | "end" => match serde_json::from_str::<Process>(&ev.data) {
                Ok(p) if p.state == ProcessState::Exited => Ok(OutputEvent::Exit(p)),
                // `end` of a running process (not expected while following): go on.
                Ok(_) => {
                    self.reader = None;
                    return None;
                }
                Err(e) => Err(bad("exit", e)),
            },
            "error" => Err(match serde_json::from_str::<ErrorBody>(&ev.data) {
                Ok(e) => Error::Api {
                    status: 500,
                    code: e.error.code,
                    message: e.error.message,
                },
                Err(e) => bad("error", e),
            }),
            _ => return None,
        })
    }
}

/// One process, with file-like access to its output: [`ProcessHandle::read`] returns its
/// output (stdout and stderr in production order) and 0 once it exited and everything was
/// read.
pub struct ProcessHandle {
    client: Client,
    id: String,
    pid: String,
    output: Option<OutputStream>,
    buf: Bytes,
    exit: Option<Process>,
    lost_bytes: u64,
}

impl std::fmt::Debug for ProcessHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessHandle")
            .field("id", &self.id)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl ProcessHandle {
    /// The pid or tag this handle addresses.
    pub fn pid(&self) -> &str {
        &self.pid
    }

    /// Output bytes the server dropped before [`ProcessHandle::read`] could get them.
    pub fn lost_bytes(&self) -> u64 {
        self.lost_bytes
    }

    /// The process's current state.
    pub async fn info(&self) -> Result<Process, Error> {
        self.client.get_process(&self.id, &self.pid).await
    }

    /// Read output into `buf` (from the start of what the server keeps); `Ok(0)` at the end.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            if !self.buf.is_empty() {
                let n = buf.len().min(self.buf.len());
                buf[..n].copy_from_slice(&self.buf.split_to(n));
                return Ok(n);
            }
            if self.exit.is_some() || buf.is_empty() {
                return Ok(0);
            }
            let output = self
                .output
                .get_or_insert_with(|| self.client.output(&self.id, &self.pid, 0));
            match output.next().await {
                Some(Ok(OutputEvent::Stdout { data, .. } | OutputEvent::Stderr { data, .. })) => {
                    self.buf = data
                }
                Some(Ok(OutputEvent::Lost { from, to })) => self.lost_bytes += to - from,
                Some(Ok(OutputEvent::Exit(p))) => self.exit = Some(p),
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
    }

    /// Read all remaining output until the process exits.
    pub async fn read_to_end(&mut self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.read(&mut buf).await?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// Write to the process's stdin.
    pub async fn write(&self, data: impl Into<reqwest::Body>) -> Result<Process, Error> {
        self.client.write_stdin(&self.id, &self.pid, data).await
    }

    /// Close the process's stdin.
    pub async fn close_stdin(&self) -> Result<Process, Error> {
        self.client.close_stdin(&self.id, &self.pid).await
    }

    /// Resize its terminal.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<Process, Error> {
        self.client.resize(&self.id, &self.pid, rows, cols).await
    }

    /// Send a signal (`TERM`, `KILL`, a number, ...).
    pub async fn signal(&self, signal: &str) -> Result<Process, Error> {
        self.client
            .signal_process(&self.id, &self.pid, signal)
            .await
    }

    /// Wait for the process to exit (without reading its output).
    pub async fn wait(&self) -> Result<Process, Error> {
        let now = self.info().await?;
        if now.state == ProcessState::Exited {
            return Ok(now);
        }
        let mut output = self.client.output(&self.id, &self.pid, now.output_end);
        while let Some(ev) = output.next().await {
            if let OutputEvent::Exit(p) = ev? {
                return Ok(p);
            }
        }
        Err(Error::Decode("the output ended before the exit".into()))
    }
}

/// One item of a terminal session.
#[derive(Debug, Clone, PartialEq)]
pub enum PtyEvent {
    Output(Bytes),
    /// Output in `from..to` was dropped before it was sent.
    Lost {
        from: u64,
        to: u64,
    },
    /// A control message or input failed (the session goes on).
    Error {
        code: String,
        message: String,
    },
    /// The process exited; the session ends.
    Exit(Process),
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A terminal session over WebSocket ([`Client::pty`]). Dropping it detaches; the process
/// goes on.
pub struct PtySession {
    ws: Ws,
    done: bool,
}

impl std::fmt::Debug for PtySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtySession").finish_non_exhaustive()
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> Error {
    Error::WebSocket(e.to_string())
}

impl PtySession {
    /// Type into the terminal.
    pub async fn send(&mut self, data: impl Into<Bytes>) -> Result<(), Error> {
        self.ws
            .send(Message::Binary(data.into()))
            .await
            .map_err(ws_err)
    }

    async fn control(&mut self, msg: &PtyMessage) -> Result<(), Error> {
        let text = serde_json::to_string(msg).map_err(|e| Error::Decode(e.to_string()))?;
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(ws_err)
    }

    /// Set the terminal size.
    pub async fn resize(&mut self, rows: u16, cols: u16) -> Result<(), Error> {
        self.control(&PtyMessage::Resize { rows, cols }).await
    }

    /// Signal the process group (`INT`, `TERM`, a number, ...).
    pub async fn signal(&mut self, signal: &str) -> Result<(), Error> {
        self.control(&PtyMessage::Signal {
            signal: signal_value(signal),
        })
        .await
    }

    /// Detach politely.
    pub async fn close(mut self) -> Result<(), Error> {
        self.ws.close(None).await.map_err(ws_err)
    }

    /// The next event; `None` after [`PtyEvent::Exit`] or when the server closed.
    pub async fn next(&mut self) -> Option<Result<PtyEvent, Error>> {
        if self.done {
            return None;
        }
        loop {
            let msg = match self.ws.next().await {
                None => {
                    self.done = true;
                    return None;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(ws_err(e)));
                }
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Binary(b) => return Some(Ok(PtyEvent::Output(b))),
                Message::Text(t) => {
                    let m = match serde_json::from_str::<PtyMessage>(t.as_str()) {
                        Ok(m) => m,
                        Err(e) => return Some(Err(Error::Decode(format!("bad message: {e}")))),
                    };
                    return Some(Ok(match m {
                        PtyMessage::Lost(l) => PtyEvent::Lost {
                            from: l.from,
                            to: l.to,
                        },
                        PtyMessage::Error { code, message } => PtyEvent::Error { code, message },
                        PtyMessage::Exit(p) => {
                            self.done = true;
                            PtyEvent::Exit(p)
                        }
                        PtyMessage::Resize { .. } | PtyMessage::Signal { .. } => continue,
                    }));
                }
                Message::Close(_) => {
                    self.done = true;
                    return None;
                }
                _ => {}
            }
        }
    }
}
