//! E2B's own Python SDK (PyPI `e2b`, pinned in `.ci/sdk-venvs`) drives Warren's E2B control
//! plane unchanged (`tests/e2b/sdk_control.py`): create with metadata, envs, timeout,
//! network options and an idempotency key; info; list with metadata and state filters and
//! pages; timeout and connect; pause (in memory and filesystem-only) and resume; metrics;
//! snapshots and a sandbox from one; fork; network updates; kill; E2B's error shape and
//! its key header.
//!
//! The SDK lives in `.ci/venvs/e2b` (made by `.ci/sdk-venvs`); `WARREN_E2B_PYTHON` names
//! another interpreter that has it.

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

#[test]
fn the_e2b_sdk_drives_the_control_plane() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (keys, key) = api_key(dir.path(), "e2b");
    let d = Daemon::start_with(&["--api-keys", keys.to_str().unwrap()]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2b/sdk_control.py");
    let text = run_script(
        &python,
        &script,
        &[],
        &[
            ("E2B_API_URL", d.url.as_ref()),
            ("E2B_API_KEY", key.as_ref()),
        ],
    );
    for t in [
        "create_and_info",
        "timeout_and_connect",
        "pause_resume",
        "list",
        "metrics",
        "snapshots_and_fork",
        "network",
        "idempotency",
        "kill_and_errors",
    ] {
        assert!(
            text.contains(&format!("ok {t} (")),
            "{t} did not pass:\n{text}"
        );
    }
    let client = Client::new(&d.url).unwrap().with_api_key(&key);
    let left = rt()
        .block_on(client.list_sandboxes::<&str, &str>(&[]))
        .unwrap();
    assert!(left.is_empty(), "sandboxes left behind: {left:?}");
}
