//! The server's limits over real connections ([`crate::serve`]): the header-read timeout,
//! the connection cap, the stream cap, and the output budget of non-streaming execs.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_api::{CreateSandboxRequest, ExecResult};

use crate::testing::TestServer;

/// A generous bound for things that must happen: only a hang fails it.
const EVENTUALLY: Duration = Duration::from_secs(30);

/// Send a request with `Connection: close` and read the whole answer.
async fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(EVENTUALLY, s.read_to_end(&mut out))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn status(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn json_body(resp: &str) -> Value {
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// Open an SSE stream and read until its headers arrived; returns the connection and the
/// status.
async fn open_stream(addr: SocketAddr, path: &str) -> (TcpStream, u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(EVENTUALLY, s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before the headers");
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    (s, status(&text), text)
}

#[tokio::test]
async fn half_written_headers_are_cut_off() {
    let srv = TestServer::start_with(|c| {
        c.header_read_timeout = Duration::from_millis(200);
        c.max_connections = 64;
        c.max_streams = 8;
    })
    .await;
    // Slowloris: a request line and half a header, then nothing.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // A connection that sends nothing at all.
    slow.push(TcpStream::connect(srv.addr).await.unwrap());
    for mut s in slow {
        let mut buf = Vec::new();
        // The server closes each one (no answer, or a 408): it does not wait forever.
        let read = tokio::time::timeout(EVENTUALLY, s.read_to_end(&mut buf))
            .await
            .expect("a half-written request kept its connection");
        if read.is_ok() && !buf.is_empty() {
            assert!(
                String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"),
                "{:?}",
                String::from_utf8_lossy(&buf)
            );
        }
    }
    let resp = request(srv.addr, "GET", "/healthz", None).await;
    assert_eq!(status(&resp), 200, "{resp}");
}

#[tokio::test]
async fn at_the_cap_idle_connections_make_room() {
    let srv = TestServer::start_with(|c| {
        c.max_connections = 3;
        c.max_streams = 1;
        c.header_read_timeout = Duration::from_secs(3600);
    })
    .await;
    // Three connections without a request: one sends nothing, two half a header.
    let mut held = vec![TcpStream::connect(srv.addr).await.unwrap()];
    for _ in 0..2 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nx-slow: ")
            .await
            .unwrap();
        held.push(s);
    }
    // A well-behaved client is served (connections are accepted in order, so the three are
    // there first): the oldest idle connection is closed for it.
    let resp = request(srv.addr, "GET", "/healthz", None).await;
    assert_eq!(status(&resp), 200, "{resp}");
    let mut buf = Vec::new();
    tokio::time::timeout(EVENTUALLY, held[0].read_to_end(&mut buf))
        .await
        .expect("the oldest idle connection was not closed")
        .unwrap();
    assert!(buf.is_empty(), "{buf:?}");
}

#[tokio::test]
async fn at_the_cap_busy_connections_make_newcomers_wait() {
    let srv = TestServer::start_with(|c| {
        c.max_connections = 3;
        c.max_streams = 1;
        c.header_read_timeout = Duration::from_secs(3600);
    })
    .await;
    let sb = srv
        .engine
        .engine
        .create(CreateSandboxRequest::default())
        .await
        .unwrap();
    // Three requests in progress (non-streamed execs that never end).
    let mut busy = Vec::new();
    let body = r#"{"cmd":["sleep"]}"#;
    for _ in 0..3 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let req = format!(
            "POST /v1/sandboxes/{}/exec HTTP/1.1\r\nhost: x\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            sb.id,
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        busy.push(s);
    }
    // The fourth waits: nothing is closed under a request in progress.
    let mut waiting = TcpStream::connect(srv.addr).await.unwrap();
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let early =
        tokio::time::timeout(Duration::from_millis(500), waiting.read_to_end(&mut out)).await;
    assert!(early.is_err(), "answered over the cap: {out:?}");
    // One ends: the waiting one is served.
    drop(busy.pop());
    tokio::time::timeout(EVENTUALLY, waiting.read_to_end(&mut out))
        .await
        .expect("not served after a connection closed")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

#[tokio::test]
async fn streams_over_their_cap_get_429_and_short_requests_go_on() {
    let srv = TestServer::start_with(|c| {
        c.max_connections = 16;
        c.max_streams = 2;
    })
    .await;
    let engine = &srv.engine.engine;
    let sb = engine
        .create(CreateSandboxRequest::default())
        .await
        .unwrap();
    let (first, s1, _) = open_stream(srv.addr, "/v1/events").await;
    let (_second, s2, _) = open_stream(srv.addr, &format!("/v1/sandboxes/{}/events", sb.id)).await;
    assert_eq!((s1, s2), (200, 200));

    let (_third, s3, head) = open_stream(srv.addr, "/v1/events").await;
    assert_eq!(s3, 429, "{head}");
    assert!(head.contains("too_many_streams"), "{head}");
    // A streamed exec over the cap is refused before it runs.
    let resp = {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let body = r#"{"cmd":["echo","x"]}"#;
        let req = format!(
            "POST /v1/sandboxes/{}/exec HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
             accept: text/event-stream\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n{body}",
            sb.id,
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    assert_eq!(status(&resp), 429, "{resp}");
    assert_eq!(json_body(&resp)["error"]["code"], "too_many_streams");
    // So is an E2B envd stream (Connect's streaming content type).
    let resp = {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let msg = br#"{"process":{"cmd":"echo"}}"#;
        let mut body = vec![0u8];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(msg);
        let head = format!(
            "POST /process.Process/Start HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
             content-type: application/connect+json\r\ne2b-sandbox-id: {}\r\n\
             content-length: {}\r\n\r\n",
            sb.id,
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    assert_eq!(status(&resp), 429, "{resp}");

    // Short requests are not streams.
    assert_eq!(
        status(&request(srv.addr, "GET", "/healthz", None).await),
        200
    );
    let resp = request(
        srv.addr,
        "POST",
        &format!("/v1/sandboxes/{}/exec", sb.id),
        Some(r#"{"cmd":["echo","hi"]}"#),
    )
    .await;
    assert_eq!(json_body(&resp)["stdout"], "hi\n", "{resp}");

    // Closing a stream frees its place.
    drop(first);
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let (_s, code, head) = open_stream(srv.addr, "/v1/events").await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 429, "{head}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let resp = request(
        srv.addr,
        "DELETE",
        &format!("/v1/sandboxes/{}", sb.id),
        None,
    )
    .await;
    assert_eq!(status(&resp), 204, "{resp}");
}

#[tokio::test]
async fn exec_output_budget_is_shared() {
    let srv = TestServer::start_with(|c| {
        c.max_exec_capture_bytes = 1024;
        c.max_exec_output_bytes = 1000;
    })
    .await;
    let sb = srv
        .engine
        .engine
        .create(CreateSandboxRequest::default())
        .await
        .unwrap();
    let path = format!("/v1/sandboxes/{}/exec", sb.id);
    let exec = |cmd: &'static str| {
        let path = path.clone();
        async move {
            let resp = request(srv.addr, "POST", &path, Some(cmd)).await;
            assert_eq!(status(&resp), 200, "{resp}");
            let r: ExecResult = serde_json::from_value(json_body(&resp)).unwrap();
            r
        }
    };
    // The budget (1000) is below the per-stream cap (1024): it decides.
    let r = exec(r#"{"cmd":["yes","5000"]}"#).await;
    assert_eq!(r.stdout.len(), 1000);
    assert_eq!((r.stdout_bytes, r.stdout_truncated_bytes), (5000, 4000));
    assert!(r.truncated);

    // A command that never ends holds its 8 bytes ("started\n") while it runs.
    let mut held = TcpStream::connect(srv.addr).await.unwrap();
    let body = r#"{"cmd":["sleep"]}"#;
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    held.write_all(req.as_bytes()).await.unwrap();
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let r = exec(r#"{"cmd":["yes","5000"]}"#).await;
        if r.stdout.len() == 992 {
            assert_eq!(r.stdout_truncated_bytes, 5000 - 992);
            break;
        }
        // Until the sleeping exec has printed.
        assert_eq!(r.stdout.len(), 1000);
        assert!(
            tokio::time::Instant::now() < deadline,
            "sleep never held its output"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its connection closes: the command is killed and the budget is whole again.
    drop(held);
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        let r = exec(r#"{"cmd":["yes","5000"]}"#).await;
        if r.stdout.len() == 1000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the budget was not given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn oversized_commands_and_future_event_ids_are_refused() {
    let srv = TestServer::start_with(|c| c.max_request_bytes = 8 << 20).await;
    let sb = srv
        .engine
        .engine
        .create(CreateSandboxRequest::default())
        .await
        .unwrap();
    let exec = format!("/v1/sandboxes/{}/exec", sb.id);
    // 3 MB of argv fits the body limit but not a message to the agent: 413, not 500.
    let body = format!(r#"{{"cmd":["echo","{}"]}}"#, "x".repeat(3_000_000));
    let resp = request(srv.addr, "POST", &exec, Some(&body)).await;
    assert_eq!(status(&resp), 413, "{}", &resp[..300.min(resp.len())]);
    assert_eq!(json_body(&resp)["error"]["code"], "payload_too_large");
    // So are 200,000 control characters: 6 bytes each once encoded.
    let body = format!(r#"{{"cmd":["echo","{}"]}}"#, "\\u0001".repeat(200_000));
    let resp = request(srv.addr, "POST", &exec, Some(&body)).await;
    assert_eq!(status(&resp), 413, "{}", &resp[..300.min(resp.len())]);
    // A large env is refused at create, before a sandbox exists to be unusable.
    let env: serde_json::Map<String, Value> = (0..100)
        .map(|i| (format!("K{i}"), Value::String("v".repeat(16 * 1024))))
        .collect();
    let body = serde_json::json!({ "env": env }).to_string();
    let before = srv
        .engine
        .engine
        .list(&Default::default())
        .await
        .unwrap()
        .len();
    let resp = request(srv.addr, "POST", "/v1/sandboxes", Some(&body)).await;
    assert_eq!(status(&resp), 413, "{}", &resp[..300.min(resp.len())]);
    let after = srv
        .engine
        .engine
        .list(&Default::default())
        .await
        .unwrap()
        .len();
    assert_eq!(before, after);
    // Below the limit it runs.
    // (Five arguments: one may not pass the kernel's 128 KiB per argument.)
    let arg = "x".repeat(100_000);
    let body = format!(r#"{{"cmd":["echo","{arg}","{arg}","{arg}","{arg}","{arg}"]}}"#);
    let resp = request(srv.addr, "POST", &exec, Some(&body)).await;
    assert_eq!(status(&resp), 200, "{}", &resp[..300.min(resp.len())]);

    for path in [
        "/v1/events?after=18446744073709551615",
        "/v1/events?after=999999",
    ] {
        let resp = request(srv.addr, "GET", path, None).await;
        assert_eq!(status(&resp), 400, "{path}: {resp}");
        assert_eq!(json_body(&resp)["error"]["code"], "invalid_request");
    }
    // The last issued seq is fine (nothing newer yet): the stream opens.
    let (_s, code, head) = open_stream(srv.addr, "/v1/events?after=1").await;
    assert_eq!(code, 200, "{head}");
}
