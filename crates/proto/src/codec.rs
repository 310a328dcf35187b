//! Framing of the agent protocol (see the crate docs).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::{Event, Request};

/// Largest frame accepted, tag included. Data frames are split below this by the sender.
pub const MAX_FRAME_LEN: usize = 1 << 20;

const TAG_REQUEST: u8 = 1;
const TAG_EVENT: u8 = 2;
const TAG_STDOUT: u8 = 3;
const TAG_STDERR: u8 = 4;
const TAG_STDIN: u8 = 5;
const TAG_STDIN_EOF: u8 = 6;
const TAG_DATA: u8 = 7;
const TAG_DATA_END: u8 = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    #[error("empty frame")]
    EmptyFrame,
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    #[error("malformed control message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("connection closed")]
    Closed,
    #[error("unexpected frame: {0}")]
    Unexpected(String),
    /// The agent refused the request with an [`crate::Event::Error`].
    #[error("{code}: {message}")]
    Remote { code: String, message: String },
}

/// One frame of the protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Request(Request),
    Event(Event),
    Stdout(Bytes),
    Stderr(Bytes),
    Stdin(Bytes),
    StdinEof,
    /// A chunk of file content (either direction).
    Data(Bytes),
    /// The end of a file's content.
    DataEnd,
}

/// `tokio_util` codec for [`Frame`]s.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtoError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtoError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(ProtoError::FrameTooLarge(len));
        }
        if len == 0 {
            return Err(ProtoError::EmptyFrame);
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        src.advance(4);
        let mut body = src.split_to(len);
        let tag = body.get_u8();
        let frame = match tag {
            TAG_REQUEST => Frame::Request(serde_json::from_slice(&body)?),
            TAG_EVENT => Frame::Event(serde_json::from_slice(&body)?),
            TAG_STDOUT => Frame::Stdout(body.freeze()),
            TAG_STDERR => Frame::Stderr(body.freeze()),
            TAG_STDIN => Frame::Stdin(body.freeze()),
            TAG_STDIN_EOF => Frame::StdinEof,
            TAG_DATA => Frame::Data(body.freeze()),
            TAG_DATA_END => Frame::DataEnd,
            other => return Err(ProtoError::UnknownTag(other)),
        };
        Ok(Some(frame))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtoError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtoError> {
        let (tag, payload): (u8, Bytes) = match frame {
            Frame::Request(r) => (TAG_REQUEST, serde_json::to_vec(&r)?.into()),
            Frame::Event(e) => (TAG_EVENT, serde_json::to_vec(&e)?.into()),
            Frame::Stdout(b) => (TAG_STDOUT, b),
            Frame::Stderr(b) => (TAG_STDERR, b),
            Frame::Stdin(b) => (TAG_STDIN, b),
            Frame::StdinEof => (TAG_STDIN_EOF, Bytes::new()),
            Frame::Data(b) => (TAG_DATA, b),
            Frame::DataEnd => (TAG_DATA_END, Bytes::new()),
        };
        let len = payload.len() + 1;
        if len > MAX_FRAME_LEN {
            return Err(ProtoError::FrameTooLarge(len));
        }
        dst.reserve(4 + len);
        dst.put_u32(len as u32);
        dst.put_u8(tag);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExecSpec;

    fn round_trip(frame: Frame) {
        let mut buf = BytesMut::new();
        FrameCodec.encode(frame.clone(), &mut buf).unwrap();
        // Feed byte by byte: the decoder must wait for whole frames.
        let mut partial = BytesMut::new();
        let mut out = None;
        for b in buf.iter() {
            assert!(out.is_none());
            partial.put_u8(*b);
            out = FrameCodec.decode(&mut partial).unwrap();
        }
        assert_eq!(out, Some(frame));
        assert!(partial.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Request(Request::Ping));
        round_trip(Frame::Request(Request::Exec(ExecSpec {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            timeout_ms: Some(5),
            stdin: true,
        })));
        round_trip(Frame::Event(Event::Exit {
            exit_code: 137,
            signal: Some(9),
            timed_out: true,
            duration_us: 12,
        }));
        round_trip(Frame::Stdout(Bytes::from_static(b"\0\xff binary")));
        round_trip(Frame::Stderr(Bytes::from_static(b"err")));
        round_trip(Frame::Stdin(Bytes::from_static(b"in")));
        round_trip(Frame::StdinEof);
        round_trip(Frame::Data(Bytes::from_static(b"\x00file")));
        round_trip(Frame::DataEnd);
        round_trip(Frame::Request(Request::FileOp(crate::FileOp::List {
            path: "/workspace".into(),
            depth: 2,
            limit: 100,
        })));
        round_trip(Frame::Event(Event::FileOp(crate::FileOpResult::Done)));
        // Every event must be encodable: serde refuses some shapes in an internally tagged
        // enum only at run time (e.g. a newtype variant holding a list).
        let info = crate::ProcessInfo {
            pid: 7,
            tag: Some("t".into()),
            argv: vec!["sh".into()],
            state: crate::ProcessState::Exited,
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            started_at_ms: 1,
            ended_at_ms: Some(2),
            pty: Some(crate::PtySize { rows: 24, cols: 80 }),
            stdin_open: false,
            output_start: 0,
            output_end: 10,
        };
        for event in [
            Event::Process(info.clone()),
            Event::Processes {
                processes: vec![info.clone(), info.clone()],
            },
            Event::Attached { offset: 1, end: 2 },
            Event::Lost { from: 1, to: 2 },
            Event::Ended(info.clone()),
            Event::Connected,
            Event::Listening,
            Event::SearchResult {
                matches: vec![crate::SearchMatch {
                    path: "/a".into(),
                    line: Some(1),
                    text: Some("x".into()),
                }],
                files_scanned: 1,
                truncated: false,
            },
            Event::ReplaceResult {
                files: vec![crate::ReplacedFile {
                    path: "/a".into(),
                    replacements: 2,
                }],
                total_replacements: 2,
                truncated: true,
            },
            Event::Watching,
            Event::FileEvent {
                event: crate::FileEventKind::Renamed,
                path: "/a".into(),
                kind: crate::FileKind::File,
                to: Some("/b".into()),
            },
            Event::FileOp(crate::FileOpResult::List {
                entries: vec![],
                truncated: false,
            }),
        ] {
            round_trip(Frame::Event(event));
        }
        for request in [
            Request::ListProcesses,
            Request::ProcessOp {
                selector: "t".into(),
                op: crate::ProcessOp::Resize { rows: 1, cols: 2 },
            },
            Request::Attach {
                selector: "7".into(),
                offset: 3,
                follow: true,
            },
            Request::Connect { port: 80 },
            Request::Accept { port: 4780 },
            Request::ReadArchive {
                path: "/workspace".into(),
            },
            Request::StartProcess(crate::ProcessSpec::default()),
            Request::SearchFiles(crate::SearchSpec::default()),
            Request::ReplaceFiles(crate::ReplaceSpec::default()),
            Request::WatchFiles {
                path: "/w".into(),
                recursive: true,
            },
        ] {
            round_trip(Frame::Request(request));
        }
    }

    #[test]
    fn rejects_bad_frames() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 99][..]);
        assert!(matches!(
            FrameCodec.decode(&mut buf),
            Err(ProtoError::UnknownTag(99))
        ));
        let mut buf = BytesMut::from(&[0xffu8, 0, 0, 0][..]);
        assert!(matches!(
            FrameCodec.decode(&mut buf),
            Err(ProtoError::FrameTooLarge(_))
        ));
    }
}
