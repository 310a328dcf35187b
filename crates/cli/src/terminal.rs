//! Interactive terminals: `warren exec -it`, `warren attach` and `warren ps`.
//!
//! The local terminal is put in raw mode while a session runs and restored afterwards — on
//! a normal end, an error, or a panic. Input bytes go to the remote terminal as they are
//! typed; `SIGWINCH` resizes it. `Ctrl-]` detaches (the process goes on; `warren attach ID
//! PID` reattaches and redraws from the output the server still keeps).

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::{Mutex, Once};

use anyhow::Context;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_api::{CreateProcessRequest, Process, ProcessState, PtySize};
use warren_client::{Client, PtyEvent};

/// The detach key: `Ctrl-]`.
pub const DETACH_KEY: u8 = 0x1d;

/// The terminal settings to restore (also from the panic hook).
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);
static HOOK: Once = Once::new();

fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(t) = saved {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &t);
    }
}

/// Raw mode on the local terminal until dropped.
pub struct RawMode(());

impl RawMode {
    /// `None` when stdin is not a terminal.
    pub fn enable() -> anyhow::Result<Option<RawMode>> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Ok(None);
        }
        let orig = termios::tcgetattr(stdin.as_fd()).context("reading terminal settings")?;
        let mut raw = orig.clone();
        termios::cfmakeraw(&mut raw);
        *SAVED.lock().unwrap_or_else(|p| p.into_inner()) = Some(orig);
        HOOK.call_once(|| {
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                prev(info);
            }));
        });
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .context("setting the terminal to raw mode")?;
        Ok(Some(RawMode(())))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// The local terminal's size (of stdout, else stdin), if it is one.
pub fn local_size() -> Option<PtySize> {
    for fd in [libc::STDOUT_FILENO, libc::STDIN_FILENO] {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
        if rc == 0 && ws.ws_row > 0 && ws.ws_col > 0 {
            return Some(PtySize {
                rows: ws.ws_row.min(1000),
                cols: ws.ws_col.min(1000),
            });
        }
    }
    None
}

/// How a terminal session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The process exited with this status.
    Exit(u8),
    /// The user pressed the detach key; the process goes on.
    Detached,
}

/// The message for [`Ended::Detached`].
pub fn detached_hint(id: &str, pid: &str) {
    eprintln!("\nwarren: detached; reattach with `warren attach {id} {pid}`");
}

/// `req` with a PTY of the local terminal's size (else 80x24), its input open, and our
/// `TERM`.
pub fn with_tty(mut req: CreateProcessRequest) -> CreateProcessRequest {
    req.pty = Some(local_size().unwrap_or(PtySize { rows: 24, cols: 80 }));
    req.stdin = Some(true);
    if let Ok(term) = std::env::var("TERM") {
        req.env.entry("TERM".into()).or_insert(term);
    }
    req
}

/// Start `req.cmd` in a new PTY (durable: it outlives this client); returns its pid.
pub async fn start_tty(
    client: &Client,
    id: &str,
    req: CreateProcessRequest,
) -> anyhow::Result<String> {
    let p = client.start_process(id, &with_tty(req)).await?;
    Ok(p.pid.to_string())
}

/// `warren exec -t [-i]`: run `req.cmd` in a new PTY and connect this terminal to it.
pub async fn exec_tty(
    client: &Client,
    id: &str,
    req: CreateProcessRequest,
    interactive: bool,
) -> anyhow::Result<u8> {
    let pid = start_tty(client, id, req).await?;
    match session(client, id, &pid, interactive, true).await? {
        Ended::Exit(code) => Ok(code),
        Ended::Detached => {
            detached_hint(id, &pid);
            Ok(0)
        }
    }
}

/// `warren attach ID PID`.
pub async fn attach(client: &Client, id: &str, pid: &str) -> anyhow::Result<u8> {
    let p = client.get_process(id, pid).await?;
    if p.state == ProcessState::Exited {
        print_exit(&p);
        return Ok(exit_code(&p));
    }
    match session(client, id, pid, true, p.pty.is_some()).await? {
        Ended::Exit(code) => Ok(code),
        Ended::Detached => {
            detached_hint(id, pid);
            Ok(0)
        }
    }
}

fn exit_code(p: &Process) -> u8 {
    p.exit_code
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(255)
}

fn print_exit(p: &Process) {
    if p.timed_out {
        eprintln!("warren: the process timed out and was killed");
    }
}

/// Connect this terminal to process `pid` until it exits or the user detaches. Dropping the
/// future (e.g. on a signal) restores the terminal.
pub async fn session(
    client: &Client,
    id: &str,
    pid: &str,
    interactive: bool,
    has_pty: bool,
) -> anyhow::Result<Ended> {
    let mut pty = client.pty(id, pid).await?;
    if let Some(size) = local_size() {
        // Best effort: the process may not have a terminal (then this is `not_a_pty`).
        let _ = client.resize(id, pid, size.rows, size.cols).await;
    }
    let raw = if interactive {
        RawMode::enable()?
    } else {
        None
    };
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        .context("listening for SIGWINCH")?;
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let mut buf = vec![0u8; 4096];
    let mut input_open = interactive;
    // Whether the remote terminal's current input line is empty (nothing typed since the
    // last line end): there one `^D` is end-of-file, elsewhere it only hands over the line.
    let mut line_empty = true;
    let outcome: anyhow::Result<Ended> = loop {
        tokio::select! {
            ev = pty.next() => match ev {
                Some(Ok(PtyEvent::Output(b))) => {
                    stdout.write_all(&b).await.context("writing output")?;
                    stdout.flush().await.context("writing output")?;
                }
                Some(Ok(PtyEvent::Lost { from, to })) => {
                    eprint!("\r\nwarren: {} bytes of output were dropped\r\n", to - from);
                }
                Some(Ok(PtyEvent::Error { code, message })) => {
                    eprint!("\r\nwarren: {code}: {message}\r\n");
                }
                Some(Ok(PtyEvent::Exit(p))) => {
                    drop(raw);
                    print_exit(&p);
                    return Ok(Ended::Exit(exit_code(&p)));
                }
                Some(Err(e)) => break Err(e.into()),
                None => break Err(anyhow::anyhow!("the server closed the terminal session")),
            },
            n = stdin.read(&mut buf), if input_open => match n {
                Ok(0) | Err(_) => {
                    input_open = false;
                    // End of our input: the remote terminal gets end-of-file (`^D` through
                    // the session, so it arrives after everything typed before it; a second
                    // one if a partial line is pending, which the first only hands over).
                    if has_pty {
                        let eof: &'static [u8] = if line_empty { b"\x04" } else { b"\x04\x04" };
                        pty.send(bytes::Bytes::from_static(eof)).await?;
                    } else {
                        let _ = client.close_stdin(id, pid).await;
                    }
                }
                Ok(n) => {
                    let data = &buf[..n];
                    if let Some(i) = data.iter().position(|&b| b == DETACH_KEY) {
                        if i > 0 {
                            pty.send(bytes::Bytes::copy_from_slice(&data[..i])).await?;
                        }
                        drop(raw);
                        return Ok(Ended::Detached);
                    }
                    line_empty = matches!(data.last(), Some(b'\n' | b'\r'));
                    pty.send(bytes::Bytes::copy_from_slice(data)).await?;
                }
            },
            _ = winch.recv() => {
                if let Some(size) = local_size() {
                    pty.resize(size.rows, size.cols).await?;
                }
            }
        }
    };
    drop(raw);
    outcome
}

/// `warren ps ID`.
pub async fn ps(client: &Client, id: &str, json: bool) -> anyhow::Result<u8> {
    let list = client.list_processes(id).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", table(&list));
    }
    Ok(0)
}

fn table(list: &[Process]) -> String {
    let mut rows = vec![[
        "PID".to_string(),
        "TAG".to_string(),
        "STATE".to_string(),
        "EXIT".to_string(),
        "TTY".to_string(),
        "COMMAND".to_string(),
    ]];
    for p in list {
        rows.push([
            p.pid.to_string(),
            p.tag.clone().unwrap_or_else(|| "-".into()),
            match p.state {
                ProcessState::Running => "running".into(),
                ProcessState::Exited => "exited".into(),
            },
            match (&p.signal, p.exit_code) {
                (Some(s), _) => s.clone(),
                (None, Some(c)) => c.to_string(),
                (None, None) => "-".into(),
            },
            p.pty
                .map(|s| format!("{}x{}", s.cols, s.rows))
                .unwrap_or_else(|| "-".into()),
            p.cmd.join(" "),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        for (i, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}  ", r[i]));
        }
        out.push_str(&r[5]);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_table() {
        let p = Process {
            pid: 7,
            tag: Some("web".into()),
            cmd: vec!["sleep".into(), "1".into()],
            state: ProcessState::Exited,
            exit_code: Some(143),
            signal: Some("SIGTERM".into()),
            timed_out: false,
            started_at: chrono::DateTime::default(),
            ended_at: None,
            pty: None,
            stdin_open: false,
            output_start: 0,
            output_end: 0,
            address: None,
            url: None,
        };
        let t = table(&[p]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PID  TAG  STATE"));
        assert!(lines[1].contains("SIGTERM"));
        assert!(lines[1].ends_with("sleep 1"));
    }
}
