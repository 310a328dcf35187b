//! Test-only: runs the agent on a Unix socket path (`warren-agent-test SOCKET`), so
//! integration tests get it in a fresh single-threaded process.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: warren-agent-test SOCKET");
        return ExitCode::from(2);
    };
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {}: {e}", path.to_string_lossy());
            return ExitCode::from(1);
        }
    };
    match warren_agent::serve(OwnedFd::from(listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agent: {e}");
            ExitCode::from(1)
        }
    }
}
