//! Test support: plays the `warren` binary's `__sandbox-init` role (see
//! `warren_runtime_native::init`), so this crate's tests run sandboxes without the CLI.

use std::ffi::OsStr;
use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::args_os().nth(1).as_deref()
        != Some(OsStr::new(warren_runtime_native::SANDBOX_INIT_ARG))
    {
        eprintln!(
            "usage: warren-sandbox-init {} (run by the native runtime)",
            warren_runtime_native::SANDBOX_INIT_ARG
        );
        return ExitCode::from(2);
    }
    warren_runtime_native::init::sandbox_init_main()
}
