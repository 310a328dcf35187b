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

pub mod client;
pub mod codec;

use serde::{Deserialize, Serialize};

pub use codec::{Frame, FrameCodec, ProtoError, MAX_FRAME_LEN};

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
    /// The request failed before or instead of running (e.g. command not found: code
    /// `not_found`, bad cwd: `bad_cwd`, anything else: `spawn_failed`).
    Error { code: String, message: String },
}
