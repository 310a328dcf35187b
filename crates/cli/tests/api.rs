//! Every error path of the HTTP contract, with a raw HTTP client, against the real daemon.

mod common;

use common::*;
use serde_json::{json, Value};

async fn call(method: reqwest::Method, url: String, body: Option<&str>) -> (u16, Value) {
    let http = reqwest::Client::new();
    let mut rb = http.request(method, url);
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = rb.send().await.expect("http");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[test]
fn error_paths() {
    let d = Daemon::start();
    rt().block_on(async {
        let u = &d.url;
        use reqwest::Method as M;
        let (s, _) = call(M::GET, format!("{u}/healthz"), None).await;
        assert_eq!(s, 200);
        let (s, v) = call(M::GET, format!("{u}/v1/capabilities"), None).await;
        assert_eq!(s, 200);
        // The default runtime (the gVisor twin of this suite serves --runtime gvisor).
        assert_eq!(v["runtime"], common::runtime().as_str());
        let (s, v) = call(M::GET, format!("{u}/v1/openapi.json"), None).await;
        assert_eq!(s, 200);
        assert!(v["paths"]["/v1/sandboxes/{id}/exec"].is_object(), "{v}");

        let bad_creates = [
            ("{not json", "invalid_request"),
            (r#"{"imag":"host"}"#, "invalid_request"),
            (r#"{"image":"nope"}"#, "image_not_found"),
            (r#"{"timeout_secs":-1}"#, "invalid_request"),
            (r#"{"timeout_secs":0}"#, "invalid_request"),
            (r#"{"timeout_secs":99999999999}"#, "invalid_request"),
            (r#"{"resources":{"cpus":-1}}"#, "invalid_request"),
            (r#"{"resources":{"cpus":1000}}"#, "invalid_request"),
            (r#"{"resources":{"memory_mib":-5}}"#, "invalid_request"),
            (r#"{"resources":{"memory_mib":1}}"#, "invalid_request"),
            (
                r#"{"resources":{"memory_mib":1099511627776}}"#,
                "invalid_request",
            ),
            (r#"{"resources":{"pids":0}}"#, "invalid_request"),
            (r#"{"resources":{"gpus":1}}"#, "invalid_request"),
            (r#"{"env":{"A=B":"x"}}"#, "invalid_request"),
            (r#"{"metadata":"x"}"#, "invalid_request"),
        ];
        for (body, want) in bad_creates {
            let (s, v) = call(M::POST, format!("{u}/v1/sandboxes"), Some(body)).await;
            assert!((400..500).contains(&s), "{body}: {s} {v}");
            assert_eq!(code(&v), want, "{body}: {v}");
        }
        // Bad input changed nothing.
        let (_, v) = call(M::GET, format!("{u}/v1/sandboxes"), None).await;
        assert_eq!(v.as_array().map(|a| a.len()), Some(0), "{v}");

        // Oversized body.
        let big = format!(r#"{{"metadata":{{"k":"{}"}}}}"#, "x".repeat(32 << 20));
        let (s, v) = call(M::POST, format!("{u}/v1/sandboxes"), Some(&big)).await;
        assert_eq!(s, 413, "{v}");
        assert_eq!(code(&v), "payload_too_large");

        // Unknown ids.
        for (m, path, body) in [
            (M::GET, "/v1/sandboxes/sb-nope", None),
            (M::DELETE, "/v1/sandboxes/sb-nope", None),
            (
                M::POST,
                "/v1/sandboxes/sb-nope/timeout",
                Some(r#"{"timeout_secs":5}"#),
            ),
            (
                M::POST,
                "/v1/sandboxes/sb-nope/exec",
                Some(r#"{"cmd":["true"]}"#),
            ),
        ] {
            let (s, v) = call(m.clone(), format!("{u}{path}"), body).await;
            assert_eq!((s, code(&v)), (404, "sandbox_not_found"), "{m} {path}: {v}");
        }
        // Routing errors are JSON too.
        let (s, v) = call(M::GET, format!("{u}/v1/nope"), None).await;
        assert_eq!((s, code(&v)), (404, "not_found"), "{v}");
        let (s, v) = call(M::PUT, format!("{u}/v1/sandboxes"), Some("{}")).await;
        assert_eq!((s, code(&v)), (405, "method_not_allowed"), "{v}");

        // Exec input errors on a real sandbox.
        let (s, sb) = call(
            M::POST,
            format!("{u}/v1/sandboxes"),
            Some(r#"{"metadata":{"t":"api"}}"#),
        )
        .await;
        assert_eq!(s, 201, "{sb}");
        let id = sb["id"].as_str().unwrap().to_string();
        for body in [
            r#"{"cmd":[]}"#,
            r#"{"cmd":[""]}"#,
            r#"{"cmd":"true"}"#,
            r#"{"cmd":["true"],"cwd":"relative"}"#,
            r#"{"cmd":["true"],"user":"admin"}"#,
            r#"{"cmd":["true"],"timeout_secs":0}"#,
            r#"{"cmd":["true"],"bogus":1}"#,
            "[",
        ] {
            let (s, v) = call(M::POST, format!("{u}/v1/sandboxes/{id}/exec"), Some(body)).await;
            assert_eq!((s, code(&v)), (400, "invalid_request"), "{body}: {v}");
        }
        let (s, v) = call(
            M::POST,
            format!("{u}/v1/sandboxes/{id}/timeout"),
            Some(r#"{"timeout_secs":-3}"#),
        )
        .await;
        assert_eq!((s, code(&v)), (400, "invalid_request"), "{v}");
        let (s, v) = call(
            M::POST,
            format!("{u}/v1/sandboxes/{id}/timeout"),
            Some(r#"{"timeout_secs":600}"#),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["timeout_secs"], 600);

        // Metadata filtering.
        let (s, v) = call(M::GET, format!("{u}/v1/sandboxes?metadata.t=api"), None).await;
        assert_eq!(s, 200);
        assert_eq!(v.as_array().map(|a| a.len()), Some(1), "{v}");
        let (_, v) = call(M::GET, format!("{u}/v1/sandboxes?metadata.t=other"), None).await;
        assert_eq!(v.as_array().map(|a| a.len()), Some(0), "{v}");

        let (s, _) = call(M::DELETE, format!("{u}/v1/sandboxes/{id}"), None).await;
        assert_eq!(s, 204);
        let (s, v) = call(M::GET, format!("{u}/v1/sandboxes/{id}"), None).await;
        assert_eq!((s, code(&v)), (404, "sandbox_not_found"));
        let _ = json!({});
    });
}

/// Red-team #12: half-written requests are cut off after `--header-read-timeout`, and the
/// daemon answers well-behaved clients meanwhile and afterwards.
#[test]
fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start_with(&["--header-read-timeout", "1", "--max-connections", "100"]);
    rt().block_on(async {
        let addr = d.url.trim_start_matches("http://").to_string();
        let mut slow = Vec::new();
        for _ in 0..50 {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
                .await
                .unwrap();
            slow.push(s);
        }
        let (s, _) = call(reqwest::Method::GET, format!("{}/healthz", d.url), None).await;
        assert_eq!(s, 200);
        let (s, v) = call(
            reqwest::Method::GET,
            format!("{}/v1/capabilities", d.url),
            None,
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(v["limits"]["max_connections"], 100);
        assert_eq!(v["limits"]["max_streams"], 50);
        for mut s in slow {
            let mut buf = Vec::new();
            // Closed by the server (a 408 or nothing); a hang fails here.
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut buf))
                    .await
                    .expect("a half-written request kept its connection");
        }
        let (s, _) = call(reqwest::Method::GET, format!("{}/healthz", d.url), None).await;
        assert_eq!(s, 200);
        // Beyond the last issued event: 400.
        let (s, v) = call(
            reqwest::Method::GET,
            format!("{}/v1/events?after=18446744073709551615", d.url),
            None,
        )
        .await;
        assert_eq!((s, code(&v)), (400, "invalid_request"), "{v}");
    });
}
