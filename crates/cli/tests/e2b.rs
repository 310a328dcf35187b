//! E2B's own SDKs drive Warren unchanged, pointed at it with `E2B_API_URL` and
//! `E2B_SANDBOX_URL`:
//! - `tests/e2b/sdk_control.py` (PyPI `e2b`, pinned in `.ci/sdk-venvs`): create with
//!   metadata, envs, timeout, network options and an idempotency key; info; list with
//!   metadata and state filters and pages; timeout and connect; pause (in memory and
//!   filesystem-only) and resume; metrics; snapshots and a sandbox from one; fork; network
//!   updates; kill; E2B's error shape and its key header;
//! - `tests/e2b/sdk_envd.py`: commands (foreground, streamed, background, stdin, kill,
//!   exit codes, timeouts, users), PTYs, files (text, bytes, gzip, multipart and
//!   octet-stream, metadata, list, stat, move, remove, make_dir), watches, signed URLs,
//!   envd's token, health, a stream cut by a kill, and the async client;
//! - `tests/e2b/sdk_smoke.mjs` (npm `e2b`, locked in `.ci/js/package-lock.json`): the main
//!   steps with the JavaScript SDK.
//!
//! The SDKs live in `.ci/venvs/e2b` and `.ci/venvs/js` (made by `.ci/sdk-venvs`);
//! `WARREN_E2B_PYTHON` names another interpreter that has the Python one.

mod common;

use std::path::PathBuf;

use common::{api_key, rt, run_script, Daemon};
use warren_client::Client;

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_E2B_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/venvs/e2b/bin/python");
    assert!(
        venv.exists(),
        "E2B's SDK virtualenv is missing at {}: run `bash .ci/sdk-venvs` (which .ci/run does) \
         or set WARREN_E2B_PYTHON",
        venv.display()
    );
    venv
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2b")
        .join(name)
}

fn js_sdk() -> PathBuf {
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.ci/venvs/js/node_modules/e2b/dist/index.mjs");
    assert!(
        sdk.exists(),
        "E2B's JavaScript SDK is missing at {}: run `bash .ci/sdk-venvs`",
        sdk.display()
    );
    sdk
}

fn assert_passed(text: &str, tests: &[&str], suffix: &str) {
    for t in tests {
        assert!(
            text.contains(&format!("ok {t}{suffix}")),
            "{t} did not pass:\n{text}"
        );
    }
}

/// One daemon with API keys; E2B's Python SDK drives the control plane and envd
/// (commands, PTY, files, watches, signed URLs), then the npm SDK does the main steps.
#[test]
fn the_e2b_sdks_work_unchanged() {
    let python = python();
    let js = js_sdk();
    let dir = tempfile::tempdir().unwrap();
    let (keys, key) = api_key(dir.path(), "e2b");
    let d = Daemon::start_with(&["--api-keys", keys.to_str().unwrap()]);
    let env = [
        ("E2B_API_URL", d.url.as_ref()),
        ("E2B_SANDBOX_URL", d.url.as_ref()),
        ("E2B_API_KEY", key.as_ref()),
        ("E2B_JS_SDK", js.as_os_str()),
        // What the scripts expect differs where the runtime lacks a feature (gVisor: xattrs).
        ("WARREN_RUNTIME", common::runtime().as_str().as_ref()),
    ];
    let text = run_script(&python, &script("sdk_control.py"), &[], &env);
    assert_passed(
        &text,
        &[
            "create_and_info",
            "timeout_and_connect",
            "pause_resume",
            "list",
            "metrics",
            "snapshots_and_fork",
            "network",
            "idempotency",
            "kill_and_errors",
        ],
        " (",
    );
    let text = run_script(&python, &script("sdk_envd.py"), &[], &env);
    assert_passed(
        &text,
        &[
            "run_foreground",
            "run_streaming",
            "run_exit_code",
            "run_envs_cwd",
            "run_as_root",
            "run_timeout",
            "background_list_kill",
            "connect_running",
            "stdin",
            "stdin_stream",
            "output_encoding",
            "pty",
            "pty_kill",
            "pty_connect",
            "files_read_write",
            "files_write_files",
            "files_upload_modes",
            "files_gzip",
            "files_list_depth",
            "files_info",
            "files_ops",
            "files_errors",
            "files_metadata",
            "watch",
            "signed_urls",
            "envd_auth",
            "is_running",
            "kill_mid_command",
            "async_commands",
            "async_files",
            "async_pty",
        ],
        " (",
    );
    let text = run_script(
        std::path::Path::new("node"),
        &script("sdk_smoke.mjs"),
        &[],
        &env,
    );
    assert_passed(
        &text,
        &[
            "create",
            "commands",
            "background",
            "files",
            "watch",
            "pty",
            "signed_url",
            "info",
            "list",
            "set_timeout",
            "kill",
        ],
        "\n",
    );
    let client = Client::new(&d.url).unwrap().with_api_key(&key);
    let left = rt()
        .block_on(client.list_sandboxes::<&str, &str>(&[]))
        .unwrap();
    assert!(left.is_empty(), "sandboxes left behind: {left:?}");
}
