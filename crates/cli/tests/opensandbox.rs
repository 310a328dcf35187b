//! OpenSandbox's own Python SDK (PyPI `opensandbox`, pinned in `.ci/run`) drives Warren
//! unchanged: `tests/opensandbox/sdk_e2e.py` creates sandboxes with an image alias, env,
//! metadata, limits and a network policy, runs foreground, streamed, failing, timed-out and
//! background commands (status, logs with the tail cursor, interrupt), bash sessions, the
//! file API (round trips, ranges, info, listing, permissions, move, replace, search),
//! endpoints for a server started inside, list filters and pages, metadata patches,
//! pause/resume, renew, host-path volumes (read-only and read-write), snapshots (and a
//! sandbox made from one) and kill, then checks
//! the surface's auth: no key, a wrong key, another sandbox's endpoint token.
//!
//! `tests/opensandbox/sdk_smoke.mjs` then does the main steps with the JavaScript SDK (npm
//! `@alibaba-group/opensandbox`).
//!
//! The SDKs are installed by `.ci/sdk-venvs` (which `.ci/run` and README's test command
//! run): a virtualenv `.ci/venvs/opensandbox` and `.ci/venvs/js/node_modules`; point
//! `WARREN_OPENSANDBOX_PYTHON` at another interpreter that has the Python SDK to use that.

mod common;

use std::path::PathBuf;

use common::{api_key, rt, run_script, Daemon};
use warren_client::Client;

const ALIAS: &str = "opensandbox/code-interpreter:latest";

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WARREN_OPENSANDBOX_PYTHON") {
        return PathBuf::from(p);
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/venvs/opensandbox/bin/python");
    assert!(
        venv.exists(),
        "the OpenSandbox SDK's virtualenv is missing at {}: run `bash .ci/sdk-venvs` (which .ci/run does) \
         or set WARREN_OPENSANDBOX_PYTHON",
        venv.display()
    );
    venv
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/opensandbox")
        .join(name)
}

fn js_sdk() -> PathBuf {
    let sdk = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.ci/venvs/js/node_modules/@alibaba-group/opensandbox/dist/index.js");
    assert!(
        sdk.exists(),
        "the OpenSandbox JavaScript SDK is missing at {}: run `bash .ci/sdk-venvs`",
        sdk.display()
    );
    sdk
}

#[test]
fn the_opensandbox_sdks_work_unchanged() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let (keys, key) = api_key(dir.path(), "sdk");
    // A host directory the sandboxes may mount; world-writable because a sandbox's root is
    // an unprivileged uid on the host (host paths are not idmapped).
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("hello.txt"), "from the host\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o1777)).unwrap();
    // tempdir's parent is 0700 for some users; the sandbox must reach the mount's source
    // through the daemon (root), which it does whatever the parents' modes are.

    let alias = format!("{ALIAS}=host");
    let d = Daemon::start_with(&[
        "--api-keys",
        keys.to_str().unwrap(),
        "--image-alias",
        &alias,
        "--allow-host-path",
        host.to_str().unwrap(),
    ]);
    let domain = format!("{}/opensandbox", d.url);
    let sdk = js_sdk();
    let run = |program: &std::path::Path, file: &str, args: &[&str]| {
        run_script(
            program,
            &script(file),
            args,
            &[
                ("OPENSANDBOX_JS_SDK", sdk.as_os_str()),
                ("OPEN_SANDBOX_DOMAIN", domain.as_ref()),
                ("OPEN_SANDBOX_API_KEY", key.as_ref()),
                ("WARREN_OS_IMAGE", ALIAS.as_ref()),
                ("WARREN_OS_HOST_DIR", host.as_os_str()),
                // gVisor refuses host directory mounts: the script checks the refusal.
                ("WARREN_RUNTIME", common::runtime().as_str().as_ref()),
            ],
        )
    };
    let all = run(&python, "sdk_e2e.py", &[]);
    for t in [
        "create_with_spec",
        "commands",
        "background_commands",
        "sessions",
        "files",
        "endpoints",
        "manager",
        "pause_resume",
        "renew",
        "volumes",
        "snapshots",
        "server_proxy",
        "kill",
        "errors",
    ] {
        assert!(
            all.contains(&format!("ok {t} (")),
            "{t} did not pass:\n{all}"
        );
    }
    let auth = run(&python, "sdk_e2e.py", &["auth"]);
    for t in [
        "auth_missing_key",
        "auth_wrong_key",
        "auth_endpoint_tokens",
        "auth_request_id",
    ] {
        assert!(
            auth.contains(&format!("ok {t} (")),
            "{t} did not pass:\n{auth}"
        );
    }

    let js = run(std::path::Path::new("node"), "sdk_smoke.mjs", &[]);
    for t in [
        "create",
        "commands",
        "files",
        "background",
        "metrics",
        "pause_resume_renew",
        "list",
        "kill",
    ] {
        assert!(
            js.contains(&format!("ok {t}\n")),
            "{t} did not pass with the JS SDK:\n{js}"
        );
    }

    // Everything the SDKs made is gone.
    let client = Client::new(&d.url).unwrap().with_api_key(&key);
    let left = rt()
        .block_on(client.list_sandboxes::<&str, &str>(&[]))
        .unwrap();
    assert!(left.is_empty(), "sandboxes left behind: {left:?}");
}
