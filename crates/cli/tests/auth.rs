//! API keys: `warren key` manages a key file, a daemon started with `--api-keys` answers
//! 401 `unauthorized` to requests without a valid key (every route but `/healthz`, every
//! transport: JSON, SSE, WebSocket), the SDK and CLI send `WARREN_API_KEY`, a revoked key
//! stops working within seconds, and a daemon refuses a non-loopback listener without keys.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{rt, sh, Daemon};
use warren_api::CreateSandboxRequest;
use warren_client::{Client, Error};

fn warren(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.args(args).env_remove("WARREN_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn status_of<T: std::fmt::Debug>(r: Result<T, Error>) -> (u16, String) {
    match r {
        Err(Error::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn api_keys_guard_every_route_and_can_be_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.json");
    let file_s = file.to_str().unwrap();
    let made = warren(&["key", "create", "--file", file_s, "--name", "ci"], &[]);
    assert!(made.status.success(), "{made:?}");
    let key = String::from_utf8_lossy(&made.stdout).trim().to_string();
    assert!(key.starts_with("wk_"), "{key}");
    let listed = warren(&["key", "ls", "--file", file_s], &[]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("ci"), "{listed}");
    assert!(!listed.contains(&key[16..]), "ls never shows a key");

    let d = Daemon::start_with(&["--api-keys", file_s]);
    rt().block_on(async {
        // No key, a wrong key: 401, with nothing done.
        let anon = Client::new(&d.url).unwrap();
        assert_eq!(
            status_of(anon.list_sandboxes::<&str, &str>(&[]).await),
            (401, "unauthorized".into())
        );
        let raw = reqwest::Client::new()
            .post(format!("{}/v1/sandboxes", d.url))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 401);
        assert_eq!(raw.headers()["www-authenticate"], "Bearer");
        // The key with its last hex digit changed (to another digit, whatever it was).
        let last = if key.ends_with('0') { '1' } else { '0' };
        let wrong = Client::new(&d.url)
            .unwrap()
            .with_api_key(format!("{}{last}", &key[..key.len() - 1]));
        assert_eq!(status_of(wrong.capabilities().await).0, 401);
        // Liveness stays open.
        let health = reqwest::get(format!("{}/healthz", d.url)).await.unwrap();
        assert_eq!(health.status(), 200);

        // The key: JSON, an SSE exec stream and a WebSocket terminal all work.
        let c = Client::new(&d.url).unwrap().with_api_key(&key);
        let sb = c
            .create_sandbox(&CreateSandboxRequest::default())
            .await
            .unwrap();
        assert_eq!(c.exec(&sb.id, &sh("echo hi")).await.unwrap().stdout, "hi\n");
        let mut stream = c.exec_stream(&sb.id, &sh("echo streamed")).await.unwrap();
        use futures::StreamExt;
        let mut seen = String::new();
        while let Some(ev) = stream.next().await {
            if let warren_client::ExecStreamEvent::Stdout(b) = ev.unwrap() {
                seen.push_str(&String::from_utf8_lossy(&b));
            }
        }
        assert_eq!(seen, "streamed\n");
        let proc = c
            .start_process(
                &sb.id,
                &warren_api::CreateProcessRequest {
                    cmd: vec!["sh".into()],
                    pty: Some(warren_api::PtySize { rows: 24, cols: 80 }),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let pty = c.pty(&sb.id, &proc.pid.to_string()).await;
        assert!(pty.is_ok(), "a terminal with the key: {pty:?}");
        drop(pty);

        // A sandbox's proxy token opens that sandbox's proxy, and nothing else.
        c.start_process(
            &sb.id,
            &warren_api::CreateProcessRequest {
                cmd: [
                    "python3",
                    "-m",
                    "http.server",
                    "8000",
                    "--bind",
                    "127.0.0.1",
                ]
                .map(String::from)
                .to_vec(),
                cwd: Some("/etc".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let port = c.port_address(&sb.id, 8000).await.unwrap();
        let token = port.access_token.clone().expect("a token with API keys on");
        let other = c
            .create_sandbox(&CreateSandboxRequest::default())
            .await
            .unwrap();
        let http = reqwest::Client::new();
        let proxy = |id: &str, query: &str| {
            format!("{}/v1/sandboxes/{id}/proxy/8000/hostname{query}", d.url)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let by_header = loop {
            let r = http
                .get(proxy(&sb.id, ""))
                .header("X-Warren-Token", &token)
                .send()
                .await
                .unwrap();
            if r.status() == 200 || Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(by_header.status(), 200);
        assert_eq!(by_header.text().await.unwrap().trim(), sb.id);
        let by_query = http
            .get(proxy(&sb.id, &format!("?warren_token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(by_query.status(), 200);
        for (url, header) in [
            (proxy(&other.id, ""), true),
            (proxy(&sb.id, ""), false),
            (format!("{}/v1/sandboxes/{}", d.url, sb.id), true),
        ] {
            let mut req = http.get(&url);
            if header {
                req = req.header("X-Warren-Token", &token);
            }
            assert_eq!(req.send().await.unwrap().status(), 401, "{url}");
        }
        c.delete_sandbox(&other.id).await.unwrap();

        // The CLI reads WARREN_API_KEY (never an argument).
        let url = d.url.clone();
        let (with, without) = tokio::task::spawn_blocking(move || {
            (
                warren(&["ls"], &[("WARREN_URL", &url), ("WARREN_API_KEY", &key)]),
                warren(&["ls"], &[("WARREN_URL", &url)]),
            )
        })
        .await
        .unwrap();
        assert!(with.status.success(), "{with:?}");
        assert!(String::from_utf8_lossy(&with.stdout).contains(&sb.id));
        assert!(!without.status.success());
        assert!(String::from_utf8_lossy(&without.stderr).contains("unauthorized"));

        // Revoked: refused within seconds, by the running daemon.
        let rm = warren(&["key", "rm", "--file", file_s, "ci"], &[]);
        assert!(rm.status.success(), "{rm:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.list_sandboxes::<&str, &str>(&[]).await {
                Err(Error::Api { status: 401, .. }) => break,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                other => panic!("the revoked key still works: {other:?}"),
            }
        }
    });
}

#[test]
fn a_daemon_without_keys_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = warren(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without API keys"), "{err}");
    assert!(
        !dir.path().join("data").exists(),
        "it refused before touching anything"
    );
}
