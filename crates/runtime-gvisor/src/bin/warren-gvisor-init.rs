//! Test support: plays the `warren` binary's helper roles — `__sandbox-init` (native
//! sandboxes), `__gvisor-init` and `__gvisor-agent` (gVisor sandboxes) — so this crate's
//! tests run sandboxes without the CLI.

use std::ffi::OsStr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let role = std::env::args_os().nth(1);
    match role.as_deref() {
        Some(r) if r == OsStr::new(warren_runtime_native::SANDBOX_INIT_ARG) => {
            warren_runtime_native::init::sandbox_init_main()
        }
        Some(r) if r == OsStr::new(warren_runtime_gvisor::INIT_ARG) => {
            warren_runtime_gvisor::init::init_main()
        }
        Some(r) if r == OsStr::new(warren_runtime_gvisor::AGENT_ARG) => {
            warren_runtime_gvisor::agent::agent_main()
        }
        _ => {
            eprintln!("usage: warren-gvisor-init __sandbox-init|__gvisor-init|__gvisor-agent");
            ExitCode::from(2)
        }
    }
}
