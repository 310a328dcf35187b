//! The output of a non-streaming exec: kept up to a per-stream cap and within a server-wide
//! budget, then written straight into the JSON response body.
//!
//! Memory stays bounded whatever a sandbox prints: each kept byte is charged to the
//! [`OutputBudget`] until the response has been handed to the connection, output beyond the
//! cap or the budget is only counted, and the body is built from the kept bytes with no
//! intermediate copy of the whole output. Text whose JSON form would be much larger than
//! its base64 form (control or invalid bytes escape to up to 6 bytes each) is sent as base64.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use base64::Engine as _;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use warren_api::{ExitEvent, OutputEncoding};

use crate::encode::Utf8Decoder;

/// Text output whose JSON string would be larger than this and larger than its base64 form
/// is sent as base64.
pub const TEXT_TO_BASE64_THRESHOLD: usize = 1 << 20;

/// Kept output is stored in blocks of this size (a multiple of 3: full blocks encode to
/// whole base64 groups).
const BLOCK: usize = 3 * 21_845;

/// Server-wide budget of output bytes kept for non-streaming exec results in flight.
#[derive(Debug)]
pub struct OutputBudget {
    used: AtomicU64,
    max: u64,
}

impl OutputBudget {
    pub fn new(max: u64) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            used: AtomicU64::new(0),
            max,
        })
    }

    /// Bytes currently held by execs in flight.
    #[cfg(test)]
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Take up to `want` bytes; returns how many were granted.
    fn take(&self, want: u64) -> u64 {
        let mut used = self.used.load(Ordering::SeqCst);
        loop {
            let got = want.min(self.max.saturating_sub(used));
            if got == 0 {
                return 0;
            }
            match self
                .used
                .compare_exchange(used, used + got, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return got,
                Err(now) => used = now,
            }
        }
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }
}

/// The part of the budget one exec holds; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<OutputBudget>,
    bytes: u64,
}

impl Reservation {
    pub fn new(budget: &Arc<OutputBudget>) -> Reservation {
        Reservation {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    fn grow(&mut self, want: u64) -> u64 {
        let got = self.budget.take(want);
        self.bytes += got;
        got
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// One output stream (stdout or stderr) of a non-streaming exec.
#[derive(Debug)]
pub struct Capture {
    blocks: Vec<Vec<u8>>,
    kept: u64,
    /// Bytes the command wrote, kept or not.
    total: u64,
    cap: u64,
    /// Once a byte was dropped, every later byte is dropped too: the kept output is a prefix.
    full: bool,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        Capture {
            blocks: Vec::new(),
            kept: 0,
            total: 0,
            cap: cap as u64,
            full: false,
        }
    }

    /// Keep what the cap and the budget allow of `chunk`; count the rest.
    pub fn push(&mut self, chunk: &[u8], reservation: &mut Reservation) {
        let len = chunk.len() as u64;
        self.total += len;
        if self.full {
            return;
        }
        let want = len.min(self.cap - self.kept);
        let got = reservation.grow(want);
        if got < len {
            self.full = true;
        }
        // got <= chunk.len(), which is a usize.
        self.append(&chunk[..got as usize]);
    }

    fn append(&mut self, mut data: &[u8]) {
        self.kept += data.len() as u64;
        while !data.is_empty() {
            if self.blocks.last().is_none_or(|b| b.len() >= BLOCK) {
                // The first block grows as needed (most outputs are small); later ones are
                // allocated whole.
                let cap = if self.blocks.is_empty() { 0 } else { BLOCK };
                self.blocks.push(Vec::with_capacity(cap));
            }
            let Some(block) = self.blocks.last_mut() else {
                return;
            };
            let n = (BLOCK - block.len()).min(data.len());
            if block.capacity() < block.len() + n {
                let target = (block.capacity() * 2).max(block.len() + n).min(BLOCK);
                block.reserve_exact(target - block.len());
            }
            block.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    pub fn truncated_bytes(&self) -> u64 {
        self.total - self.kept
    }

    /// UTF-8 output cut by truncation in the middle of a character: drop the partial
    /// character (it counts as truncated) rather than turn it into U+FFFD.
    fn trim_partial_char(&mut self) {
        if !self.full {
            return;
        }
        // The last (up to) 3 bytes, wherever the block boundaries fall.
        let mut tail: Vec<u8> = self
            .blocks
            .iter()
            .rev()
            .flat_map(|b| b.iter().rev())
            .take(3)
            .copied()
            .collect();
        tail.reverse();
        let mut cut = incomplete_tail(&tail);
        self.kept -= cut as u64;
        // Only the end shrinks: every block but the last stays full.
        while cut > 0 {
            let Some(last) = self.blocks.last_mut() else {
                break;
            };
            let n = cut.min(last.len());
            last.truncate(last.len() - n);
            cut -= n;
            if last.is_empty() {
                self.blocks.pop();
            }
        }
    }

    /// The encoding this stream will be sent in and the length of its JSON string contents.
    fn plan(&mut self, requested: OutputEncoding) -> (OutputEncoding, usize) {
        let base64_len = (self.kept as usize).div_ceil(3) * 4;
        if requested == OutputEncoding::Base64 {
            return (OutputEncoding::Base64, base64_len);
        }
        self.trim_partial_char();
        let mut decoder = Utf8Decoder::default();
        let mut text_len = 0;
        for block in &self.blocks {
            text_len += escaped_len(&decoder.push(block).0);
        }
        text_len += escaped_len(&decoder.finish().0);
        if text_len > TEXT_TO_BASE64_THRESHOLD && text_len > base64_len {
            (OutputEncoding::Base64, base64_len)
        } else {
            (OutputEncoding::Utf8, text_len)
        }
    }

    /// The stream as the contents of a JSON string, encoded one block at a time as the
    /// body is sent.
    fn into_part(self, encoding: OutputEncoding) -> Part {
        Part::Output {
            encoding,
            blocks: self.blocks.into_iter(),
            decoder: Utf8Decoder::default(),
        }
    }
}

/// A piece of the result body.
enum Part {
    Fixed(Bytes),
    Output {
        encoding: OutputEncoding,
        blocks: std::vec::IntoIter<Vec<u8>>,
        decoder: Utf8Decoder,
    },
}

impl Part {
    /// The next chunk of this part, or `None` when it is done.
    fn next_chunk(&mut self) -> Option<Bytes> {
        match self {
            Part::Fixed(b) => (!b.is_empty()).then(|| std::mem::take(b)),
            Part::Output {
                encoding,
                blocks,
                decoder,
            } => loop {
                let mut out = String::new();
                match (blocks.next(), *encoding) {
                    // Every block but the last is a multiple of 3 bytes long: no padding
                    // inside.
                    (Some(block), OutputEncoding::Base64) => {
                        base64::engine::general_purpose::STANDARD.encode_string(&block, &mut out)
                    }
                    (Some(block), OutputEncoding::Utf8) => {
                        escape_into(&mut out, &decoder.push(&block).0)
                    }
                    (None, OutputEncoding::Utf8) => {
                        escape_into(&mut out, &decoder.finish().0);
                        if out.is_empty() {
                            return None;
                        }
                        return Some(Bytes::from(out));
                    }
                    (None, OutputEncoding::Base64) => return None,
                }
                if !out.is_empty() {
                    return Some(Bytes::from(out));
                }
            },
        }
    }
}

/// Length of a trailing, valid-so-far but incomplete UTF-8 sequence (0..=3).
pub fn incomplete_tail(bytes: &[u8]) -> usize {
    let lowest = bytes.len().saturating_sub(3);
    for i in (lowest..bytes.len()).rev() {
        if bytes[i] & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: the sequence starts further left
        }
        return match std::str::from_utf8(&bytes[i..]) {
            Err(e) if e.valid_up_to() == 0 && e.error_len().is_none() => bytes.len() - i,
            _ => 0,
        };
    }
    0
}

/// The JSON escape of an ASCII byte, if it needs one (`None` for `\u00XX` escapes).
fn short_escape(b: u8) -> Option<&'static str> {
    Some(match b {
        b'"' => "\\\"",
        b'\\' => "\\\\",
        b'\n' => "\\n",
        b'\r' => "\\r",
        b'\t' => "\\t",
        0x08 => "\\b",
        0x0c => "\\f",
        _ => return None,
    })
}

fn escaped_len(s: &str) -> usize {
    s.len()
        + s.bytes()
            .map(|b| match b {
                _ if short_escape(b).is_some() => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// Append `s` as the contents of a JSON string.
fn escape_into(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        // `b` is ASCII, so `i` and `i + 1` are character boundaries.
        out.push_str(&s[start..i]);
        match short_escape(b) {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// The JSON body of an `ExecResult` for a finished command, sent as it is encoded from the
/// kept output (never a second copy of the whole output), with an exact `Content-Length`.
/// It holds `hold` (the output's budget) until it has been sent or dropped.
pub struct ResultBody {
    parts: std::collections::VecDeque<Part>,
    remaining: u64,
    _hold: Reservation,
}

impl ResultBody {
    pub fn new(
        exit: &ExitEvent,
        mut stdout: Capture,
        mut stderr: Capture,
        requested: OutputEncoding,
        hold: Reservation,
    ) -> ResultBody {
        let (out_enc, out_len) = stdout.plan(requested);
        let (err_enc, err_len) = stderr.plan(requested);
        let (out_cut, err_cut) = (stdout.truncated_bytes(), stderr.truncated_bytes());
        let mut head = format!("{{\"exit_code\":{}", exit.exit_code);
        if let Some(signal) = &exit.signal {
            head.push_str(",\"signal\":\"");
            escape_into(&mut head, signal);
            head.push('"');
        }
        head.push_str(&format!(",\"timed_out\":{},\"stdout\":\"", exit.timed_out));
        let middle = "\",\"stderr\":\"".to_string();
        let tail = format!(
            "\",\"stdout_encoding\":\"{}\",\"stderr_encoding\":\"{}\",\"stdout_bytes\":{},\
             \"stderr_bytes\":{},\"stdout_truncated_bytes\":{out_cut},\
             \"stderr_truncated_bytes\":{err_cut},\"truncated\":{},\"duration_ms\":{}}}",
            encoding_name(out_enc),
            encoding_name(err_enc),
            stdout.total,
            stderr.total,
            out_cut > 0 || err_cut > 0,
            exit.duration_ms,
        );
        let remaining = (head.len() + out_len + middle.len() + err_len + tail.len()) as u64;
        let parts = [
            Part::Fixed(Bytes::from(head)),
            stdout.into_part(out_enc),
            Part::Fixed(Bytes::from(middle)),
            stderr.into_part(err_enc),
            Part::Fixed(Bytes::from(tail)),
        ]
        .into_iter()
        .collect();
        ResultBody {
            parts,
            remaining,
            _hold: hold,
        }
    }
}

impl HttpBody for ResultBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        while let Some(part) = this.parts.front_mut() {
            match part.next_chunk() {
                Some(chunk) => {
                    this.remaining = this.remaining.saturating_sub(chunk.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                None => {
                    this.parts.pop_front();
                }
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn encoding_name(e: OutputEncoding) -> &'static str {
    match e {
        OutputEncoding::Utf8 => "utf8",
        OutputEncoding::Base64 => "base64",
    }
}

/// A response body that keeps `hold` (a budget reservation, a stream permit) alive until
/// the body has been sent or dropped.
pub struct Held<T> {
    inner: Body,
    hold: Option<T>,
}

impl<T: Send + Unpin + 'static> Held<T> {
    pub fn body(inner: Body, hold: T) -> Body {
        Body::new(Held {
            inner,
            hold: Some(hold),
        })
    }
}

impl<T: Unpin> HttpBody for Held<T> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.hold = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_api::ExecResult;

    fn exit() -> ExitEvent {
        ExitEvent {
            exit_code: 3,
            signal: Some("SIGKILL".into()),
            timed_out: true,
            duration_ms: 7,
        }
    }

    fn capture(data: &[u8], cap: usize, budget: &Arc<OutputBudget>) -> (Capture, Reservation) {
        let mut r = Reservation::new(budget);
        let mut c = Capture::new(cap);
        // Odd chunk sizes, so blocks and characters split anywhere.
        for chunk in data.chunks(7_001) {
            c.push(chunk, &mut r);
        }
        (c, r)
    }

    /// The whole body, checked against its declared length.
    fn text_of(out: Capture, err: Capture, encoding: OutputEncoding, hold: Reservation) -> String {
        let body = ResultBody::new(&exit(), out, err, encoding, hold);
        let declared = body.size_hint().exact();
        let bytes = futures::executor::block_on(http_body_util::BodyExt::collect(body))
            .unwrap()
            .to_bytes();
        assert_eq!(declared, Some(bytes.len() as u64));
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn parse(body: &str) -> ExecResult {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {}", &body[..200]))
    }

    #[test]
    fn body_is_the_json_of_an_exec_result() {
        let budget = OutputBudget::new(1 << 30);
        let text = "héllo \"quoted\" \\ tab\t nl\n bell\u{7} 🦀 \u{1f}".repeat(1000);
        let (out, r1) = capture(text.as_bytes(), 1 << 20, &budget);
        let (err, _r2) = capture(b"a\xffb", 1 << 20, &budget);
        let body = text_of(out, err, OutputEncoding::Utf8, r1);
        // Same text as serde_json would write.
        let json = serde_json::to_string(&text).unwrap();
        assert!(body.contains(&format!("\"stdout\":{json}")));
        let res = parse(&body);
        assert_eq!(res.stdout, text);
        assert_eq!(res.stderr, "a\u{fffd}b");
        assert_eq!(res.stdout_encoding, OutputEncoding::Utf8);
        assert_eq!(res.stdout_bytes, text.len() as u64);
        assert_eq!(res.stderr_bytes, 3);
        assert_eq!((res.stdout_truncated_bytes, res.truncated), (0, false));
        assert_eq!(res.exit_code, 3);
        assert_eq!(res.signal.as_deref(), Some("SIGKILL"));
        assert!(res.timed_out);
        assert_eq!(res.duration_ms, 7);
    }

    #[test]
    fn control_heavy_text_becomes_base64() {
        let budget = OutputBudget::new(1 << 30);
        let nuls = vec![0u8; 3 << 20];
        let (out, r1) = capture(&nuls, 4 << 20, &budget);
        let (err, _r2) = capture(&[0u8; 1000], 4 << 20, &budget);
        let body = text_of(out, err, OutputEncoding::Utf8, r1);
        // 4/3 of the output, not 6 times.
        assert!(body.len() < (4 << 20) + 10_000, "{}", body.len());
        let res = parse(&body);
        assert_eq!(res.stdout_encoding, OutputEncoding::Base64);
        assert_eq!(res.stdout_raw().unwrap(), nuls);
        // Small output stays text whatever it holds.
        assert_eq!(res.stderr_encoding, OutputEncoding::Utf8);
        assert_eq!(res.stderr_raw().unwrap(), vec![0u8; 1000]);
    }

    #[test]
    fn cap_truncates_and_counts_exactly() {
        let budget = OutputBudget::new(1 << 30);
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 251) as u8).collect();
        let (out, r) = capture(&data, 200_000, &budget);
        assert_eq!(budget.in_use(), 200_000);
        let (err, _r2) = capture(b"", 10, &budget);
        // The budget is held until the body is done.
        let res = parse(&text_of(out, err, OutputEncoding::Base64, r));
        assert_eq!(budget.in_use(), 0);
        assert_eq!(res.stdout_raw().unwrap(), data[..200_000]);
        assert_eq!(res.stdout_truncated_bytes, 300_000);
        assert_eq!(res.stdout_bytes, 500_000);
        assert!(res.truncated);
    }

    #[test]
    fn budget_is_shared_and_truncates_a_prefix() {
        let budget = OutputBudget::new(100_000);
        let data = vec![b'x'; 80_000];
        let (a, ra) = capture(&data, 1 << 20, &budget);
        let mut rb = Reservation::new(&budget);
        let mut b = Capture::new(1 << 20);
        b.push(&data, &mut rb);
        assert_eq!(b.kept, 20_000);
        drop(ra);
        // Room again, but the kept output stays a prefix: nothing more is kept.
        b.push(b"later", &mut rb);
        assert_eq!(b.kept, 20_000);
        assert_eq!(b.truncated_bytes(), 60_005);
        assert_eq!(a.kept, 80_000);
        assert_eq!(budget.in_use(), 20_000);
        drop(rb);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn truncation_drops_a_split_character() {
        let budget = OutputBudget::new(1 << 30);
        let (out, r) = capture("abéé".as_bytes(), 5, &budget);
        let (err, _r2) = capture(b"", 5, &budget);
        let res = parse(&text_of(out, err, OutputEncoding::Utf8, r));
        assert_eq!(res.stdout, "abé");
        // The half character counts as dropped: kept + dropped = written.
        assert_eq!(res.stdout_truncated_bytes, 2);
        assert_eq!(res.stdout.len() as u64 + res.stdout_truncated_bytes, 6);
        // Split over two blocks.
        let mut data = vec![b'a'; BLOCK - 1];
        data.extend_from_slice("€x".as_bytes());
        let (out, r) = capture(&data, BLOCK + 1, &budget);
        let (err, _r2) = capture(b"", 5, &budget);
        let res = parse(&text_of(out, err, OutputEncoding::Utf8, r));
        assert_eq!(res.stdout, "a".repeat(BLOCK - 1));
        assert_eq!(res.stdout_truncated_bytes, 4);
        // Not truncated: an incomplete last character is U+FFFD as always.
        let (out, r) = capture(b"a\xc3", 100, &budget);
        let (err, _r2) = capture(b"", 5, &budget);
        let res = parse(&text_of(out, err, OutputEncoding::Utf8, r));
        assert_eq!(res.stdout, "a\u{fffd}");
    }

    #[test]
    fn blocks_hold_little_more_than_their_bytes() {
        let budget = OutputBudget::new(1 << 30);
        let mut r = Reservation::new(&budget);
        let mut c = Capture::new(1 << 30);
        for _ in 0..1_000_000 {
            c.push(b"z", &mut r);
        }
        let capacity: usize = c.blocks.iter().map(Vec::capacity).sum();
        assert!(capacity < 1_000_000 + 2 * BLOCK, "{capacity}");
    }
}
