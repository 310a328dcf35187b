//! Wire types of durable processes and terminals (`/v1/sandboxes/{id}/processes`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ExecUser;

/// Smallest accepted `log_bytes` (1 MiB).
pub const MIN_LOG_BYTES: u64 = 1024 * 1024;
/// Largest accepted `log_bytes` (64 MiB).
pub const MAX_LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Largest terminal dimension (rows or columns).
pub const MAX_PTY_DIM: u16 = 1000;

/// A terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PtySize {
    /// 1..=1000.
    pub rows: u16,
    /// 1..=1000.
    pub cols: u16,
}

/// Body of `POST /v1/sandboxes/{id}/processes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProcessRequest {
    /// argv; the first element is looked up in `PATH` when it has no slash.
    pub cmd: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory inside the sandbox (default `/workspace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<ExecUser>,
    /// A name unique among the sandbox's processes, usable instead of the pid
    /// (1-64 characters `[A-Za-z0-9_.-]`, not all digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Run in a new pseudo-terminal of this size (stdout and stderr are the terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    /// Keep stdin open for `POST .../stdin` (a PTY always has input). Default false:
    /// stdin is `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
    /// Kill the process group after this many seconds (default: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Capacity of the output log in bytes (1 MiB..=64 MiB; default: server setting);
    /// older output is dropped beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<u64>,
    /// Also make this port inside the sandbox reachable from the host (like
    /// `POST .../ports/{port}/forward`): the create response then carries `address` and
    /// `url`. The forward exists before the process starts, so a client polls until the
    /// process listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_port: Option<u16>,
}

/// Whether a process still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    Exited,
}

/// A durable process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Process {
    /// Pid inside the sandbox (also its process group).
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub cmd: Vec<String>,
    pub state: ProcessState,
    /// Set once exited; a death by signal N reports 128+N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Name of the signal that killed it (`SIGTERM`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtySize>,
    pub stdin_open: bool,
    /// Offset of the oldest output byte still kept.
    pub output_start: u64,
    /// Output bytes produced so far (stdout and stderr share one offset space).
    pub output_end: u64,
    /// Only in the create response, with `expose_port`: where that port is reachable on
    /// the server's host (`127.0.0.1:NNNNN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Only in the create response, with `expose_port`: `http://` + `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A signal: a name (`TERM`, `SIGTERM`, `kill`) or a number (`15` or `"15"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SignalValue {
    Number(i32),
    Name(String),
}

impl SignalValue {
    /// The signal number, if this names a known signal (or is a number in 1..=64).
    pub fn number(&self) -> Option<i32> {
        match self {
            SignalValue::Number(n) => (1..=64).contains(n).then_some(*n),
            SignalValue::Name(s) => parse_signal(s),
        }
    }
}

/// Body of `POST .../processes/{pid}/signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    pub signal: SignalValue,
}

/// Body of `POST .../processes/{pid}/resize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// 1..=1000.
    pub rows: u16,
    /// 1..=1000.
    pub cols: u16,
}

/// Data of the `lost` SSE event (and of the terminal's `lost` message): output in
/// `from..to` was dropped from the bounded log before it could be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LostEvent {
    pub from: u64,
    pub to: u64,
    /// `to - from`.
    pub bytes: u64,
}

/// Text messages on a terminal WebSocket (`GET .../processes/{pid}/pty`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PtyMessage {
    /// Client → server: set the terminal size.
    Resize { rows: u16, cols: u16 },
    /// Client → server: signal the process group.
    Signal { signal: SignalValue },
    /// Server → client: output was dropped.
    Lost(LostEvent),
    /// Server → client: the process exited; the server closes the socket next.
    Exit(Process),
    /// Server → client: the attachment failed.
    Error { code: String, message: String },
}

/// The number of a signal name: `TERM`, `SIGTERM`, `term` or a decimal number (1..=64).
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    (1..=31).find(|&n| crate::signal_name(n).strip_prefix("SIG") == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("int"), Some(2));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(parse_signal("NOPE"), None);
        assert_eq!(parse_signal("0"), None);
        let r: SignalRequest = serde_json::from_str(r#"{"signal":9}"#).unwrap();
        assert_eq!(r.signal.number(), Some(9));
        let r: SignalRequest = serde_json::from_str(r#"{"signal":"HUP"}"#).unwrap();
        assert_eq!(r.signal.number(), Some(1));
    }

    #[test]
    fn pty_messages() {
        let m: PtyMessage = serde_json::from_str(r#"{"type":"resize","rows":5,"cols":7}"#).unwrap();
        assert_eq!(m, PtyMessage::Resize { rows: 5, cols: 7 });
        let m: PtyMessage = serde_json::from_str(r#"{"type":"signal","signal":"INT"}"#).unwrap();
        assert_eq!(
            m,
            PtyMessage::Signal {
                signal: SignalValue::Name("INT".into())
            }
        );
        let lost = serde_json::to_string(&PtyMessage::Lost(LostEvent {
            from: 1,
            to: 3,
            bytes: 2,
        }))
        .unwrap();
        assert_eq!(lost, r#"{"type":"lost","from":1,"to":3,"bytes":2}"#);
        assert!(serde_json::from_str::<CreateProcessRequest>(r#"{"cmd":["a"],"x":1}"#).is_err());
    }
}
