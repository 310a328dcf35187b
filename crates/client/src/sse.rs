//! A small Server-Sent Events parser (the subset of the WHATWG rules Warren needs: `event`,
//! `data`, `id` fields, comments, LF or CRLF line ends).

use std::collections::VecDeque;

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
