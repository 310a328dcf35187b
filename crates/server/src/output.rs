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

    /// Write the stream as a JSON string (quotes included), releasing blocks as they go.
    fn write(self, encoding: OutputEncoding, out: &mut String) {
        out.push('"');
        match encoding {
            OutputEncoding::Base64 => {
                for block in self.blocks {
                    // Every block but the last is a multiple of 3 bytes long.
                    base64::engine::general_purpose::STANDARD.encode_string(&block, out);
                }
            }
            OutputEncoding::Utf8 => {
                let mut decoder = Utf8Decoder::default();
                for block in self.blocks {
                    escape_into(out, &decoder.push(&block).0);
                }
                escape_into(out, &decoder.finish().0);
            }
        }
        out.push('"');
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

/// The JSON body of an `ExecResult` for a finished command, built from its captured output.
pub fn result_body(
    exit: &ExitEvent,
    mut stdout: Capture,
    mut stderr: Capture,
    requested: OutputEncoding,
) -> String {
    let (out_enc, out_len) = stdout.plan(requested);
    let (err_enc, err_len) = stderr.plan(requested);
    let (out_total, err_total) = (stdout.total, stderr.total);
    let (out_cut, err_cut) = (stdout.truncated_bytes(), stderr.truncated_bytes());
    let mut body = String::with_capacity(out_len + err_len + 512);
    body.push_str(&format!("{{\"exit_code\":{}", exit.exit_code));
    if let Some(signal) = &exit.signal {
        body.push_str(",\"signal\":\"");
        escape_into(&mut body, signal);
        body.push('"');
    }
    body.push_str(&format!(",\"timed_out\":{},\"stdout\":", exit.timed_out));
    stdout.write(out_enc, &mut body);
    body.push_str(",\"stderr\":");
    stderr.write(err_enc, &mut body);
    body.push_str(&format!(
        ",\"stdout_encoding\":\"{}\",\"stderr_encoding\":\"{}\",\"stdout_bytes\":{out_total},\
         \"stderr_bytes\":{err_total},\"stdout_truncated_bytes\":{out_cut},\
         \"stderr_truncated_bytes\":{err_cut},\"truncated\":{},\"duration_ms\":{}}}",
        encoding_name(out_enc),
        encoding_name(err_enc),
        out_cut > 0 || err_cut > 0,
        exit.duration_ms,
    ));
    body
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

    fn parse(body: &str) -> ExecResult {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {}", &body[..200]))
    }

    #[test]
    fn body_is_the_json_of_an_exec_result() {
        let budget = OutputBudget::new(1 << 30);
        let text = "héllo \"quoted\" \\ tab\t nl\n bell\u{7} 🦀 \u{1f}".repeat(1000);
        let (out, _r1) = capture(text.as_bytes(), 1 << 20, &budget);
        let (err, _r2) = capture(b"a\xffb", 1 << 20, &budget);
        let res = parse(&result_body(&exit(), out, err, OutputEncoding::Utf8));
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
        // Same text as serde_json would write.
        let (out, _r) = capture(text.as_bytes(), 1 << 20, &budget);
        let mut mine = String::new();
        out.write(OutputEncoding::Utf8, &mut mine);
        assert_eq!(mine, serde_json::to_string(&text).unwrap());
    }

    #[test]
    fn control_heavy_text_becomes_base64() {
        let budget = OutputBudget::new(1 << 30);
        let nuls = vec![0u8; 3 << 20];
        let (out, _r1) = capture(&nuls, 4 << 20, &budget);
        let (err, _r2) = capture(&[0u8; 1000], 4 << 20, &budget);
        let body = result_body(&exit(), out, err, OutputEncoding::Utf8);
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
        let res = parse(&result_body(&exit(), out, err, OutputEncoding::Base64));
        assert_eq!(res.stdout_raw().unwrap(), data[..200_000]);
        assert_eq!(res.stdout_truncated_bytes, 300_000);
        assert_eq!(res.stdout_bytes, 500_000);
        assert!(res.truncated);
        drop(r);
        assert_eq!(budget.in_use(), 0);
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
        let (out, _r) = capture("abéé".as_bytes(), 5, &budget);
        let (err, _r2) = capture(b"", 5, &budget);
        let res = parse(&result_body(&exit(), out, err, OutputEncoding::Utf8));
        assert_eq!(res.stdout, "abé");
        // The half character counts as dropped: kept + dropped = written.
        assert_eq!(res.stdout_truncated_bytes, 2);
        assert_eq!(res.stdout.len() as u64 + res.stdout_truncated_bytes, 6);
        // Split over two blocks.
        let mut data = vec![b'a'; BLOCK - 1];
        data.extend_from_slice("€x".as_bytes());
        let (out, _r) = capture(&data, BLOCK + 1, &budget);
        let (err, _r2) = capture(b"", 5, &budget);
        let res = parse(&result_body(&exit(), out, err, OutputEncoding::Utf8));
        assert_eq!(res.stdout, "a".repeat(BLOCK - 1));
        assert_eq!(res.stdout_truncated_bytes, 4);
        // Not truncated: an incomplete last character is U+FFFD as always.
        let (out, _r) = capture(b"a\xc3", 100, &budget);
        let (err, _r2) = capture(b"", 5, &budget);
        let res = parse(&result_body(&exit(), out, err, OutputEncoding::Utf8));
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
