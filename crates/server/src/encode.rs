//! Turning raw command output into the JSON strings of the API.

use base64::Engine as _;
use warren_api::OutputEncoding;

/// Incremental lossy UTF-8 decoder: a multi-byte character split across chunks is held back
/// until it is complete; invalid bytes become U+FFFD exactly as `String::from_utf8_lossy`
/// would turn them.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Decode `chunk` after whatever was held back. Returns the text and how many input bytes
    /// it accounts for (held-back bytes are counted when they are finally emitted).
    pub fn push(&mut self, chunk: &[u8]) -> (String, usize) {
        let mut input = std::mem::take(&mut self.pending);
        input.extend_from_slice(chunk);
        let mut out = String::with_capacity(input.len());
        let mut rest: &[u8] = &input;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            // Incomplete character at the end: wait for the next chunk.
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        let consumed = input.len() - rest.len();
        self.pending = rest.to_vec();
        (out, consumed)
    }

    /// End of input: a held-back incomplete character becomes U+FFFD.
    pub fn finish(&mut self) -> (String, usize) {
        let pending = std::mem::take(&mut self.pending);
        (
            String::from_utf8_lossy(&pending).into_owned(),
            pending.len(),
        )
    }
}

/// Per-chunk encoder for the SSE stream.
#[derive(Debug)]
pub enum ChunkEncoder {
    Utf8(Utf8Decoder),
    Base64,
}

impl ChunkEncoder {
    pub fn new(encoding: OutputEncoding) -> Self {
        match encoding {
            OutputEncoding::Utf8 => ChunkEncoder::Utf8(Utf8Decoder::default()),
            OutputEncoding::Base64 => ChunkEncoder::Base64,
        }
    }

    /// Encoded text of `chunk` and the number of raw bytes it represents.
    pub fn push(&mut self, chunk: &[u8]) -> (String, usize) {
        match self {
            ChunkEncoder::Utf8(d) => d.push(chunk),
            ChunkEncoder::Base64 => (
                base64::engine::general_purpose::STANDARD.encode(chunk),
                chunk.len(),
            ),
        }
    }

    pub fn finish(&mut self) -> (String, usize) {
        match self {
            ChunkEncoder::Utf8(d) => d.finish(),
            ChunkEncoder::Base64 => (String::new(), 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_character_is_held_back() {
        let mut d = Utf8Decoder::default();
        let e = "é".as_bytes();
        assert_eq!(d.push(&[b'a', e[0]]), ("a".to_string(), 1));
        assert_eq!(d.push(&[e[1], b'b']), ("éb".to_string(), 3));
        assert_eq!(d.finish(), (String::new(), 0));
    }

    #[test]
    fn four_byte_character_one_byte_at_a_time() {
        let mut d = Utf8Decoder::default();
        let mut out = String::new();
        let mut n = 0;
        for b in "x🦀y".as_bytes() {
            let (s, c) = d.push(&[*b]);
            out.push_str(&s);
            n += c;
        }
        assert_eq!(out, "x🦀y");
        assert_eq!(n, 6);
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut d = Utf8Decoder::default();
        let (s, n) = d.push(b"a\xffb\xc3");
        assert_eq!(s, "a\u{fffd}b");
        assert_eq!(n, 3);
        assert_eq!(d.finish(), ("\u{fffd}".to_string(), 1));
        // Same as the lossy decoder over the whole input.
        let mut d = Utf8Decoder::default();
        let input = b"\xe2\x82x\xf0\x9f\x92\x96\xed\xa0\x80z";
        let (s, _) = d.push(input);
        let (t, _) = d.finish();
        assert_eq!(s + &t, String::from_utf8_lossy(input));
    }
}
