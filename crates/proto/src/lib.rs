//! The agent protocol: how the host talks to the agent that runs as PID 1 in a sandbox.
//!
//! The transport is any reliable byte stream (a Unix socket for the native runtime; a vsock
//! or a gVisor-forwarded socket later), so every backend speaks the same protocol.
//!
//! Wire format: each frame is `u32` big-endian length `L`, then `L` bytes: one tag byte and
//! the payload. Control frames carry JSON ([`Request`] from host to agent, [`Event`] from
//! agent to host); data frames carry raw bytes, so process output is binary-safe and never
//! re-encoded on the way.
//!
//! One connection carries one conversation: the host sends a [`Request`] first; for
//! [`Request::Exec`] the agent answers [`Event::Started`], streams [`Frame::Stdout`] and
//! [`Frame::Stderr`], and ends with [`Event::Exit`]. The host may send [`Frame::Stdin`] and
//! [`Frame::StdinEof`] meanwhile. If the host closes the connection before the exit, the agent
//! kills the command's process group: a one-shot exec never outlives its caller.

mod code;
pub mod codec;
pub mod host;
mod metadata;
mod temp;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use code::AgentCode;
pub use codec::{Frame, FrameCodec, ProtoError, MAX_FRAME_LEN};
pub use metadata::{
    is_metadata_key, normalize_metadata, MAX_METADATA_KEYS, MAX_METADATA_KEY_LEN,
    MAX_METADATA_VALUE_LEN, METADATA_XATTR_PREFIX,
};
pub use temp::{is_write_temp, write_temp_name, WRITE_TEMP_MARK};

/// Version of this protocol; the agent reports it in [`Event::Pong`].
pub const PROTOCOL_VERSION: u32 = 1;

/// A request from the host; always the first frame of a connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version check; answered by [`Event::Pong`].
    Ping,
    /// Run a command and stream its output.
    Exec(ExecSpec),
    /// Stream a regular file: the agent answers [`Event::File`] (its metadata), then
    /// [`Frame::Data`] chunks, then [`Frame::DataEnd`]; or [`Event::Error`].
    ReadFile { path: String },
    /// Write a regular file atomically: the host follows with [`Frame::Data`] chunks and
    /// [`Frame::DataEnd`]; the agent writes a temporary file in the same directory and
    /// renames it into place only after `DataEnd`, then answers [`Event::File`]. A
    /// connection closed before `DataEnd` leaves the old file (or nothing) in place.
    WriteFile {
        path: String,
        /// Permission bits (default 0o644); ownership: see `uid`/`gid`.
        mode: Option<u32>,
        /// Create missing parent directories (mode 0o755).
        parents: bool,
        uid: u32,
        gid: u32,
    },
    /// One metadata operation, answered by [`Event::FileOp`] or [`Event::Error`].
    FileOp(FileOp),
    /// Stream the directory tree at `path` as a tar archive (ustar/GNU, names relative to
    /// `path`, modes and mtimes kept, symlinks stored as symlinks and never followed): the
    /// agent answers [`Event::File`] (the directory's metadata), then [`Frame::Data`] chunks
    /// of the archive, then [`Frame::DataEnd`]; or [`Event::Error`] (also instead of
    /// `DataEnd` when reading failed midway).
    ReadArchive { path: String },
    /// Start a durable process: it belongs to the agent, not to this connection, and its
    /// output is kept in a bounded log that any number of [`Request::Attach`]es can replay.
    /// Answered by [`Event::Process`] once it runs (or [`Event::Error`] with the spawn codes,
    /// or `tag_in_use`).
    StartProcess(ProcessSpec),
    /// Every process the agent knows, running and recently exited: [`Event::Processes`].
    ListProcesses,
    /// An operation on one process, addressed by pid (decimal) or tag: answered by
    /// [`Event::Process`] with its state afterwards, or [`Event::Error`] (`process_not_found`,
    /// `not_a_pty`, `stdin_closed`, `invalid_signal`).
    ProcessOp { selector: String, op: ProcessOp },
    /// Write the [`Frame::Data`] frames that follow to the process's stdin (or its PTY), in
    /// order, as they arrive, until [`Frame::DataEnd`] (stdin stays open) or the connection
    /// closes; then [`Event::Process`]. A terminal session keeps one of these open.
    WriteStdin { selector: String },
    /// Replay and follow a process's output log from byte `offset` (stdout and stderr
    /// interleaved in production order share one offset space): [`Event::Attached`], then,
    /// if `offset` was already dropped from the bounded log, [`Event::Lost`], then
    /// [`Frame::Stdout`]/[`Frame::Stderr`] chunks; then [`Event::Ended`] once the process
    /// exited and everything was sent — or at once when `follow` is false and the log is
    /// drained. Closing the connection detaches; the process is unaffected.
    Attach {
        selector: String,
        offset: u64,
        follow: bool,
    },
    /// Open a TCP connection to `127.0.0.1:port` inside the sandbox: [`Event::Connected`]
    /// (or [`Event::Error`] `connection_refused`), after which the connection carries the raw
    /// bytes of that TCP stream in both directions — no more frames.
    Connect { port: u16 },
    /// The reverse of [`Request::Connect`]: listen on `127.0.0.1:port` inside the sandbox
    /// (one listener per port, bound by the first such request and kept for the agent's
    /// life, so connections that arrive while no host waits queue in its backlog) and hand
    /// one accepted TCP connection to this host connection. The agent answers
    /// [`Event::Listening`] once the listener is bound (or [`Event::Error`]
    /// `address_in_use`), then [`Event::Connected`] when a connection came, after which raw
    /// bytes flow both ways as after `Connect`. Closing the host connection before that
    /// gives up the wait (the listener stays). The credential broker is reached this way.
    Accept { port: u16 },
    /// Walk `spec.path` (symlinks are never followed) for file names or content matches:
    /// answered by [`Event::SearchResult`] or [`Event::Error`].
    SearchFiles(SearchSpec),
    /// Replace regex matches in the files below `spec.path`, each changed file rewritten
    /// atomically (temporary file + rename, keeping mode and owner): [`Event::ReplaceResult`].
    ReplaceFiles(ReplaceSpec),
    /// Watch `path` with inotify (and, with `recursive`, every directory below it, including
    /// new ones): a stream of [`Event::FileEvent`] until the host closes the connection (or
    /// [`Event::Error`] first if the watch cannot be set up).
    WatchFiles { path: String, recursive: bool },
}

/// A search below a directory (see [`Request::SearchFiles`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SearchSpec {
    /// Absolute directory (or file) to search.
    pub path: String,
    /// Glob over paths relative to `path` (e.g. `**/*.rs`); without `pattern`, the names
    /// matching it are the results.
    pub glob: Option<String>,
    /// Regex searched in each line of the (non-binary) files.
    pub pattern: Option<String>,
    pub max_results: u32,
    /// Files bigger than this are skipped.
    pub max_file_bytes: u64,
    /// Include entries whose name starts with `.`.
    pub hidden: bool,
    /// Stop (with `truncated`) after this long.
    pub timeout_ms: u64,
}

/// One search hit: a file name, or a line (1-based) of a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchMatch {
    pub path: String,
    pub line: Option<u64>,
    pub text: Option<String>,
}

/// A replacement below a directory (see [`Request::ReplaceFiles`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ReplaceSpec {
    pub path: String,
    pub glob: Option<String>,
    pub pattern: String,
    /// `regex` replacement syntax (`$1`, `${name}`).
    pub replacement: String,
    /// Change at most this many files (then `truncated`).
    pub max_files: u32,
    pub max_file_bytes: u64,
    pub hidden: bool,
    pub timeout_ms: u64,
}

/// A file changed by a replacement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplacedFile {
    pub path: String,
    pub replacements: u64,
}

/// What happened to a watched path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileEventKind {
    Created,
    Modified,
    Deleted,
    Renamed,
}

/// A durable process to start.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// What to run; `exec.stdin` keeps a stdin pipe open for [`Request::WriteStdin`]
    /// (otherwise stdin is `/dev/null`; a PTY always has input).
    pub exec: ExecSpec,
    /// Caller-chosen name, unique among the agent's processes; usable instead of the pid.
    pub tag: Option<String>,
    /// Run in a new pseudo-terminal of this size (stdout and stderr are the terminal).
    pub pty: Option<PtySize>,
    /// Capacity of the output log in bytes; older output is dropped beyond it.
    pub log_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Operations on one process (see [`Request::ProcessOp`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ProcessOp {
    Get,
    /// Send a signal to the process's whole process group.
    Signal {
        signal: i32,
    },
    /// Close stdin (for a PTY: write EOF, `^D`).
    CloseStdin,
    /// Set a PTY's window size; the kernel sends SIGWINCH to its foreground group.
    Resize {
        rows: u16,
        cols: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    Exited,
}

/// A durable process as the agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Pid in the sandbox's PID namespace; also its process group and session id.
    pub pid: i32,
    pub tag: Option<String>,
    pub argv: Vec<String>,
    pub state: ProcessState,
    /// Set once exited: the status, or 128+signal.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Unix time in milliseconds.
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub pty: Option<PtySize>,
    pub stdin_open: bool,
    /// Offset of the oldest byte still in the output log.
    pub output_start: u64,
    /// Bytes of output produced so far: the end offset of the log.
    pub output_end: u64,
}

/// File operations that need no data stream. Paths are absolute paths inside the sandbox;
/// the agent resolves them in its own root (the sandbox's), so nothing outside is reachable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileOp {
    /// Metadata of `path` itself (a symlink is reported as a symlink).
    Stat { path: String },
    /// Entries below the directory `path`, `depth` levels deep (1 = direct children),
    /// at most `limit` of them (then `truncated`).
    List {
        path: String,
        depth: u32,
        limit: u32,
    },
    Mkdir {
        path: String,
        parents: bool,
        mode: Option<u32>,
        uid: u32,
        gid: u32,
    },
    /// Remove a file, a symlink, or (with `recursive`) a directory tree. A non-empty
    /// directory without `recursive` is `not_empty`.
    Remove { path: String, recursive: bool },
    /// `rename(2)`; refuses to overwrite an existing target unless `overwrite`.
    Rename {
        from: String,
        to: String,
        overwrite: bool,
    },
    /// Set or (with an empty value) remove metadata keys of the file or directory `path`
    /// (not followed: a symlink is `invalid_request`); keys not named stay as they are. Keys
    /// and values must pass [`normalize_metadata`] (else `invalid_request`, and nothing
    /// changes). Stored as user extended attributes ([`METADATA_XATTR_PREFIX`]`key`); a file
    /// system without them is `not_supported`. Answered by [`FileOpResult::Stat`] of the file
    /// afterwards. Keys are applied one by one: an i/o failure midway may leave some set.
    SetMetadata {
        path: String,
        metadata: BTreeMap<String, String>,
    },
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Metadata of one file, as the agent sees it inside the sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileStat {
    /// Absolute path inside the sandbox.
    pub path: String,
    pub kind: FileKind,
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Target of a symlink.
    pub link_target: Option<String>,
    /// Metadata set by [`FileOp::SetMetadata`] (regular files and directories only). Absent
    /// on the wire when empty, so peers that predate it still parse this.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// Answer to a [`FileOp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FileOpResult {
    Stat(FileStat),
    List {
        entries: Vec<FileStat>,
        truncated: bool,
    },
    Done,
}

/// A command to run. The host has already resolved users and merged environments.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExecSpec {
    /// argv; `argv[0]` is searched in the `PATH` of `env` when it has no slash.
    pub argv: Vec<String>,
    /// The complete environment of the command (nothing is inherited from the agent).
    pub env: Vec<(String, String)>,
    /// Working directory (absolute, inside the sandbox).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Kill the process group after this many milliseconds.
    pub timeout_ms: Option<u64>,
    /// When false the command's stdin is `/dev/null` and stdin frames are ignored.
    pub stdin: bool,
}

/// An event from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Pong {
        protocol: u32,
        agent_version: String,
    },
    /// The command is running with this pid (in the sandbox's PID namespace); it leads its
    /// own process group and session.
    Started { pid: i32 },
    /// The command ended. `exit_code` is 128+signal for a signal death.
    Exit {
        exit_code: i32,
        signal: Option<i32>,
        timed_out: bool,
        duration_us: u64,
    },
    /// Metadata of the file a [`Request::ReadFile`] streams or a [`Request::WriteFile`]
    /// wrote.
    File(FileStat),
    /// Answer to a [`Request::FileOp`].
    FileOp(FileOpResult),
    /// A process's state (answer to most process requests).
    Process(ProcessInfo),
    /// Answer to [`Request::ListProcesses`].
    Processes { processes: Vec<ProcessInfo> },
    /// An attachment starts: output frames follow from `offset` (≥ the requested one when
    /// that was dropped); `end` is the log's end at this moment.
    Attached { offset: u64, end: u64 },
    /// Output between `from` and `to` was dropped from the bounded log before this
    /// attachment could read it; the next output frame starts at `to`.
    Lost { from: u64, to: u64 },
    /// The attachment is complete: the process exited and all its output was sent (or, when
    /// not following, the log is drained).
    Ended(ProcessInfo),
    /// [`Request::Connect`] succeeded, or [`Request::Accept`] accepted a connection: raw
    /// bytes follow.
    Connected,
    /// [`Request::Accept`]: the listener is bound; [`Event::Connected`] follows when a
    /// connection arrives.
    Listening,
    /// Answer to [`Request::SearchFiles`].
    SearchResult {
        matches: Vec<SearchMatch>,
        files_scanned: u64,
        truncated: bool,
    },
    /// Answer to [`Request::ReplaceFiles`].
    ReplaceResult {
        files: Vec<ReplacedFile>,
        total_replacements: u64,
        truncated: bool,
    },
    /// [`Request::WatchFiles`] is set up: [`Event::FileEvent`]s follow.
    Watching,
    /// A change below a watched path ([`Request::WatchFiles`]); `to` is the new path of a
    /// rename. `kind` is [`FileKind::Dir`] or [`FileKind::File`].
    FileEvent {
        event: FileEventKind,
        path: String,
        kind: FileKind,
        to: Option<String>,
    },
    /// The request failed before or instead of running (e.g. command not found: code
    /// `not_found`, bad cwd: `bad_cwd`, anything else: `spawn_failed`). File requests use
    /// `not_found`, `not_a_directory`, `is_a_directory`, `not_empty`, `exists`,
    /// `permission_denied`, `invalid_path`, `quota_exceeded` (`EDQUOT`), `no_space`
    /// (`ENOSPC`), `invalid_request`, `not_supported` (the file system lacks a feature, e.g.
    /// extended attributes for [`FileOp::SetMetadata`]) and `io`.
    Error { code: String, message: String },
}
