//! A small Server-Sent Events parser (the subset of the WHATWG rules Warren needs: `event`,
//! `data`, `id` fields, comments, LF or CRLF line ends).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};

use crate::{ByteStream, Error};

/// A response body read as SSE, each event turned into an item by `convert` (`None` skips
/// it). Ends with the body; with `end_on_error`, also right after an error item.
pub(crate) struct EventStream<T> {
    body: Option<ByteStream>,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
    convert: fn(SseEvent) -> Option<Result<T, Error>>,
    end_on_error: bool,
}

impl<T> EventStream<T> {
    pub fn new(
        resp: reqwest::Response,
        convert: fn(SseEvent) -> Option<Result<T, Error>>,
        end_on_error: bool,
    ) -> EventStream<T> {
        EventStream {
            body: Some(Box::pin(resp.bytes_stream())),
            parser: SseParser::default(),
            pending: VecDeque::new(),
            convert,
            end_on_error,
        }
    }

    pub fn finished(&self) -> bool {
        self.body.is_none()
    }
}

impl<T> Stream for EventStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            while let Some(ev) = this.pending.pop_front() {
                if let Some(item) = (this.convert)(ev) {
                    if item.is_err() && this.end_on_error {
                        this.body = None;
                        this.pending.clear();
                    }
                    return Poll::Ready(Some(item));
                }
            }
            let Some(body) = this.body.as_mut() else {
                return Poll::Ready(None);
            };
            match futures::ready!(body.poll_next_unpin(cx)) {
                Some(Ok(bytes)) => this.parser.push(&bytes, &mut this.pending),
                Some(Err(e)) => {
                    this.body = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                None => {
                    this.body = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// Event type; `message` when the server gave none.
    pub event: String,
    pub data: String,
    pub id: Option<String>,
}

#[derive(Debug, Default)]
pub(crate) struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl SseParser {
    /// Feed bytes; complete events are appended to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut VecDeque<SseEvent>) {
        self.buf.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let mut line = &self.buf[start..start + pos];
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start += pos + 1;
            self.line(&line, out);
        }
        self.buf.drain(..start);
    }

    fn line(&mut self, line: &str, out: &mut VecDeque<SseEvent>) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if std::mem::take(&mut self.has_data) {
                out.push_back(SseEvent {
                    event: if event.is_empty() {
                        "message".to_string()
                    } else {
                        event
                    },
                    data,
                    id: self.id.clone(),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return; // comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = VecDeque::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        out.into_iter().collect()
    }

    #[test]
    fn events_across_chunk_boundaries() {
        let text = b"event: stdout\ndata: {\"data\":\"hi\"}\nid: 2\n\n: keep-alive\n\nevent: exit\r\ndata:{}\r\nid: 2\r\n\r\n";
        let whole = parse(&[text]);
        assert_eq!(
            whole,
            vec![
                SseEvent {
                    event: "stdout".into(),
                    data: "{\"data\":\"hi\"}".into(),
                    id: Some("2".into())
                },
                SseEvent {
                    event: "exit".into(),
                    data: "{}".into(),
                    id: Some("2".into())
                },
            ]
        );
        let bytewise: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse(&bytewise), whole);
    }

    #[test]
    fn multi_line_data_and_default_type() {
        let ev = parse(&[b"data: a\ndata: b\n\n"]);
        assert_eq!(ev[0].event, "message");
        assert_eq!(ev[0].data, "a\nb");
        // No data: nothing dispatched.
        assert!(parse(&[b"event: x\n\n"]).is_empty());
        // Incomplete event: nothing yet.
        assert!(parse(&[b"event: x\ndata: 1\n"]).is_empty());
    }
}
