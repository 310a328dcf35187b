//! `/v1/sandboxes/{id}/processes` over the fake runtime (the real agent's processes).

use super::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use warren_api::{Process, ProcessState, PtyMessage};

async fn sandbox(a: &App) -> String {
    a.create("{}").await.id
}

async fn start(a: &App, id: &str, body: Value) -> (StatusCode, Value) {
    a.call(
        Method::POST,
        &format!("/v1/sandboxes/{id}/processes"),
        Some(&body.to_string()),
    )
    .await
}

async fn started(a: &App, id: &str, body: Value) -> Process {
    let (status, v) = start(a, id, body).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    serde_json::from_value(v).unwrap()
}

/// Waits until the process has exited (it runs for real, in the fake's agent).
async fn ended(a: &App, id: &str, sel: &str) -> Process {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, v) = a
            .call(
                Method::GET,
                &format!("/v1/sandboxes/{id}/processes/{sel}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let p: Process = serde_json::from_value(v).unwrap();
        if p.state != ProcessState::Running {
            return p;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sel} never ended");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The process as it is now.
async fn process(a: &App, id: &str, pid: i32) -> Process {
    let (status, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/{pid}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn sse(a: &App, uri: &str, last_id: Option<&str>) -> Vec<Sse> {
    let mut b = Request::get(uri);
    if let Some(l) = last_id {
        b = b.header("last-event-id", l);
    }
    let resp = a.send(b.body(Body::empty()).unwrap()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/event-stream",
        "content type"
    );
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    parse_sse(std::str::from_utf8(&bytes).unwrap())
}

fn chunk(e: &Sse) -> OutputChunk {
    serde_json::from_str(&e.data).unwrap()
}

fn text_of(events: &[Sse]) -> String {
    events
        .iter()
        .filter(|e| e.event == "stdout" || e.event == "stderr")
        .map(|e| chunk(e).data)
        .collect()
}

#[tokio::test]
async fn start_list_get_and_errors() {
    let a = app().await;
    let id = sandbox(&a).await;
    let p = started(&a, &id, json!({"cmd": ["echo", "hi"], "tag": "greet"})).await;
    assert_eq!(p.cmd, vec!["echo", "hi"]);
    assert_eq!(p.tag.as_deref(), Some("greet"));
    assert!(!p.stdin_open);
    ended(&a, &id, "greet").await;

    let (status, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/greet"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let got: Process = serde_json::from_value(v).unwrap();
    assert_eq!(got.pid, p.pid);
    assert_eq!(got.state, ProcessState::Exited);
    assert_eq!(got.exit_code, Some(0));
    assert_eq!(got.output_end, 3);
    let (status, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/{}", p.pid),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");

    started(&a, &id, json!({"cmd": ["sleep"], "tag": "busy"})).await;
    let (status, v) = a
        .call(Method::GET, &format!("/v1/sandboxes/{id}/processes"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let list: Vec<Process> = serde_json::from_value(v).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1].state, ProcessState::Running);

    // Errors. (An exited process gives its tag up; a running one holds it.)
    let (s, v) = start(&a, &id, json!({"cmd": ["echo"], "tag": "busy"})).await;
    assert_error(s, &v, StatusCode::CONFLICT, "tag_in_use");
    let (s, v) = start(&a, &id, json!({"cmd": ["nope"]})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "command_not_found");
    let (s, v) = start(&a, &id, json!({"cmd": []})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, v) = start(&a, &id, json!({"cmd": ["echo"], "bogus": 1})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, v) = start(&a, &id, json!({"cmd": ["echo"], "log_bytes": 10})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, v) = start(
        &a,
        &id,
        json!({"cmd": ["echo"], "pty": {"rows": 0, "cols": 80}}),
    )
    .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, v) = start(&a, &id, json!({"cmd": ["echo"], "tag": "12"})).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, v) = start(&a, "sb-nope", json!({"cmd": ["echo"]})).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
    let (s, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/9999"),
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "process_not_found");
    let (s, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/no%20pe"),
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, v) = a
        .call(Method::GET, "/v1/sandboxes/sb-nope/processes", None)
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
}

#[tokio::test]
async fn signal_stdin_resize() {
    let a = app().await;
    let id = sandbox(&a).await;
    let base = format!("/v1/sandboxes/{id}/processes");
    started(&a, &id, json!({"cmd": ["sleep"], "tag": "s"})).await;
    let (s, v) = a
        .call(
            Method::POST,
            &format!("{base}/s/signal"),
            Some(r#"{"signal":"NOPE"}"#),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_signal");
    let (s, v) = a
        .call(
            Method::POST,
            &format!("{base}/s/signal"),
            Some(r#"{"signal":999}"#),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_signal");
    let (s, v) = a
        .call(
            Method::POST,
            &format!("{base}/s/signal"),
            Some(r#"{"signal":"TERM"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = ended(&a, &id, "s").await;
    assert_eq!(p.state, ProcessState::Exited);
    assert_eq!(p.signal.as_deref(), Some("SIGTERM"));
    assert_eq!(p.exit_code, Some(143));

    // stdin: a cat echoes it, closing stdin ends it.
    let cat = started(&a, &id, json!({"cmd": ["cat"], "stdin": true})).await;
    assert!(cat.stdin_open);
    let req = Request::post(format!("{base}/{}/stdin", cat.pid))
        .body(Body::from(vec![b'x'; 100_000]))
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "large stdin ignores the JSON limit"
    );
    let (s, v) = a
        .call(Method::DELETE, &format!("{base}/{}/stdin", cat.pid), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = ended(&a, &id, &cat.pid.to_string()).await;
    assert_eq!(p.state, ProcessState::Exited);
    assert_eq!(p.output_end, 100_000);
    // Closing it again changes nothing; writing to it is refused.
    let (s, v) = a
        .call(Method::DELETE, &format!("{base}/{}/stdin", cat.pid), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let req = Request::post(format!("{base}/{}/stdin", cat.pid))
        .body(Body::from("more"))
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);

    // resize
    let (s, v) = a
        .call(
            Method::POST,
            &format!("{base}/s/resize"),
            Some(r#"{"rows":10,"cols":20}"#),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "not_a_pty");
    let t = started(
        &a,
        &id,
        json!({"cmd": ["cat"], "pty": {"rows": 24, "cols": 80}}),
    )
    .await;
    assert!(t.stdin_open);
    let (s, v) = a
        .call(
            Method::POST,
            &format!("{base}/{}/resize", t.pid),
            Some(r#"{"rows":50,"cols":132}"#),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pty"], json!({"rows": 50, "cols": 132}));
    let (s, v) = a
        .call(
            Method::POST,
            &format!("{base}/{}/resize", t.pid),
            Some(r#"{"rows":0,"cols":132}"#),
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn sse_output_and_exactly_once_reconnect() {
    let a = app().await;
    let id = sandbox(&a).await;
    let p = started(&a, &id, json!({"cmd": ["ticks", "5"]})).await;
    let base_uri = format!("/v1/sandboxes/{id}/processes/{}/output", p.pid);
    let uri = format!("{base_uri}?follow=true");
    let events = sse(&a, &uri, None).await;
    let all = "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n";
    assert_eq!(text_of(&events), all);
    let last = events.last().unwrap();
    assert_eq!(last.event, "exit");
    let exit: Process = serde_json::from_str(&last.data).unwrap();
    assert_eq!(exit.exit_code, Some(0));
    assert_eq!(last.id, all.len().to_string());

    // Reconnect after each event: the rest arrives exactly once.
    for (i, e) in events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event == "stdout")
    {
        let before = text_of(&events[..=i]);
        let rest = sse(&a, &format!("{uri}&offset=0"), Some(&e.id)).await;
        assert_eq!(format!("{before}{}", text_of(&rest)), all);
        if rest[0].event == "stdout" {
            assert_eq!(chunk(&rest[0]).offset.to_string(), e.id);
        } else {
            assert_eq!(rest[0].event, "exit");
        }
    }

    // UTF-8 split across chunks: held back, ids stay on raw offsets.
    // Followed live: the two halves arrive as two chunks.
    let p = started(&a, &id, json!({"cmd": ["split-utf8-then-warn"]})).await;
    let base_uri = format!("/v1/sandboxes/{id}/processes/{}/output", p.pid);
    let uri = format!("{base_uri}?follow=true");
    let events = sse(&a, &uri, None).await;
    let got: Vec<(&str, String, u64, &str)> = events
        .iter()
        .filter(|e| e.event != "exit")
        .map(|e| {
            let c = chunk(e);
            (e.event.as_str(), c.data, c.offset, e.id.as_str())
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("stdout", "caf".to_string(), 0, "3"),
            ("stdout", "é\n".to_string(), 3, "6"),
            ("stderr", "warn\n".to_string(), 6, "11"),
        ]
    );
    let rest = sse(&a, &uri, Some("3")).await;
    assert_eq!(text_of(&rest), "é\nwarn\n");
    let b64 = sse(&a, &format!("{base_uri}?encoding=base64&offset=4"), None).await;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(chunk(&b64[0]).data)
        .unwrap();
    assert_eq!(raw, b"\xa9\n");

    // Not following: a running process's stream ends with `end`.
    let p = started(&a, &id, json!({"cmd": ["sleep"]})).await;
    while process(&a, &id, p.pid).await.output_end < 8 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let events = sse(
        &a,
        &format!("/v1/sandboxes/{id}/processes/{}/output", p.pid),
        None,
    )
    .await;
    assert_eq!(text_of(&events), "started\n");
    assert_eq!(events.last().unwrap().event, "end");

    // Bad input.
    let (s, v) = a.call(Method::GET, &format!("{uri}?offset=x"), None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
    let resp = a
        .send(
            Request::get(&uri)
                .header("last-event-id", "abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (s, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/4242/output"),
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "process_not_found");
}

#[tokio::test]
async fn dropped_output_is_reported_as_lost() {
    let a = app().await;
    let id = sandbox(&a).await;
    let n = 3 * 1024 * 1024;
    let p = started(
        &a,
        &id,
        json!({"cmd": ["yes", n.to_string()], "log_bytes": 1024 * 1024}),
    )
    .await;
    // Once it has written everything, the start of its output is gone.
    let p = ended(&a, &id, &p.pid.to_string()).await;
    assert!(p.output_start > 0);
    let events = sse(
        &a,
        &format!(
            "/v1/sandboxes/{id}/processes/{}/output?encoding=base64",
            p.pid
        ),
        None,
    )
    .await;
    assert_eq!(events[0].event, "lost");
    let lost: warren_api::LostEvent = serde_json::from_str(&events[0].data).unwrap();
    assert_eq!(lost.from, 0);
    assert_eq!(lost.to, p.output_start);
    assert_eq!(lost.bytes, p.output_start);
    assert_eq!(events[0].id, p.output_start.to_string());
    let bytes: usize = events
        .iter()
        .filter(|e| e.event == "stdout")
        .map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(chunk(e).data)
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(bytes as u64, n - p.output_start);
}

#[tokio::test]
async fn capabilities_and_a_terminal_without_upgrade() {
    let a = app().await;
    let (_, caps) = a.call(Method::GET, "/v1/capabilities", None).await;
    assert_eq!(caps["features"]["processes"], true);
    let id = sandbox(&a).await;
    // The terminal route without an upgrade.
    let (s, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/1/pty"),
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request");
}

#[tokio::test]
async fn sandbox_must_be_running() {
    let a = app().await;
    let id = sandbox(&a).await;
    // The runtime loses the sandbox: the next call marks it failed.
    a.t.runtime.lose(&id);
    let (s, v) = start(&a, &id, json!({"cmd": ["echo"]})).await;
    assert_error(s, &v, StatusCode::CONFLICT, "invalid_state");
    let (s, v) = a
        .call(Method::GET, &format!("/v1/sandboxes/{id}/processes"), None)
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "invalid_state");
    let (s, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/processes/1/output"),
            None,
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "invalid_state");
}

async fn next_ws(
    ws: &mut (impl futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
) -> WsMessage {
    tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("ws timeout")
        .expect("ws ended")
        .expect("ws error")
}

#[tokio::test]
async fn websocket_terminal_round_trip_and_sharing() {
    let server = crate::testing::TestServer::start().await;
    let engine = &server.engine.engine;
    let id = engine
        .create(warren_api::CreateSandboxRequest::default())
        .await
        .unwrap()
        .id;
    let p = engine
        .start_process(
            &id,
            warren_api::CreateProcessRequest {
                cmd: vec!["cat".into()],
                tag: Some("term".into()),
                pty: Some(warren_api::PtySize { rows: 24, cols: 80 }),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    engine
        .write_stdin(
            &id,
            "term",
            Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(
                b"before ",
            ))])),
        )
        .await
        .unwrap();
    let url = format!("ws://{}/v1/sandboxes/{id}/processes/term/pty", server.addr);
    let (mut one, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    // The retained log is replayed first.
    assert_eq!(next_ws(&mut one).await, WsMessage::Binary("before ".into()));
    let (mut two, _) = tokio_tungstenite::connect_async(format!("{url}?offset=7"))
        .await
        .unwrap();

    one.send(WsMessage::Binary("hi".into())).await.unwrap();
    assert_eq!(next_ws(&mut one).await, WsMessage::Binary("hi".into()));
    assert_eq!(next_ws(&mut two).await, WsMessage::Binary("hi".into()));
    two.send(WsMessage::Binary("yo".into())).await.unwrap();
    assert_eq!(next_ws(&mut one).await, WsMessage::Binary("yo".into()));
    assert_eq!(next_ws(&mut two).await, WsMessage::Binary("yo".into()));

    one.send(WsMessage::Text(
        r#"{"type":"resize","rows":40,"cols":100}"#.into(),
    ))
    .await
    .unwrap();
    one.send(WsMessage::Text(
        r#"{"type":"resize","rows":0,"cols":100}"#.into(),
    ))
    .await
    .unwrap();
    match next_ws(&mut one).await {
        WsMessage::Text(t) => {
            let m: PtyMessage = serde_json::from_str(t.as_str()).unwrap();
            assert!(
                matches!(m, PtyMessage::Error { ref code, .. } if code == "invalid_request"),
                "{m:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let got = engine.get_process(&id, "term").await.unwrap();
    assert_eq!(
        got.pty,
        Some(warren_api::PtySize {
            rows: 40,
            cols: 100
        })
    );

    one.send(WsMessage::Text(
        r#"{"type":"signal","signal":"INT"}"#.into(),
    ))
    .await
    .unwrap();
    for ws in [&mut one, &mut two] {
        match next_ws(ws).await {
            WsMessage::Text(t) => {
                let m: PtyMessage = serde_json::from_str(t.as_str()).unwrap();
                let PtyMessage::Exit(p2) = m else {
                    panic!("{m:?}")
                };
                assert_eq!(p2.pid, p.pid);
                assert_eq!(p2.signal.as_deref(), Some("SIGINT"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(next_ws(ws).await, WsMessage::Close(_)));
    }

    // Unknown process: refused before the upgrade.
    let err = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/sandboxes/{id}/processes/nope/pty",
        server.addr
    ))
    .await
    .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 404),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn timeout_kills_and_is_reported() {
    let a = app().await;
    let id = sandbox(&a).await;
    let p = started(&a, &id, json!({"cmd": ["sleep"], "timeout_secs": 1})).await;
    let events = sse(
        &a,
        &format!("/v1/sandboxes/{id}/processes/{}/output?follow=true", p.pid),
        None,
    )
    .await;
    let exit: Process = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert!(exit.timed_out);
    assert_eq!(exit.signal.as_deref(), Some("SIGKILL"));
    assert_eq!(exit.exit_code, Some(137));
    assert!(exit.ended_at.is_some());
}
