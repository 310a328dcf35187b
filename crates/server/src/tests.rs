use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use base64::Engine as _;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use warren_api::{ExecResult, ExitEvent, OutputChunk, Sandbox};

use crate::testing::TestEngine;

struct App {
    router: Router,
    t: TestEngine,
}

async fn app() -> App {
    let t = TestEngine::new().await;
    App {
        router: crate::router(t.engine.clone()),
        t,
    }
}

impl App {
    async fn send(&self, req: Request<Body>) -> Response {
        self.router.clone().oneshot(req).await.unwrap()
    }

    async fn call(&self, method: Method, uri: &str, body: Option<&str>) -> (StatusCode, Value) {
        let mut b = Request::builder().method(method).uri(uri);
        if body.is_some() {
            b = b.header(header::CONTENT_TYPE, "application/json");
        }
        let req = b
            .body(body.map(|s| Body::from(s.to_string())).unwrap_or_default())
            .unwrap();
        let resp = self.send(req).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&bytes)))
        };
        (status, value)
    }

    async fn create(&self, body: &str) -> Sandbox {
        let (status, v) = self.call(Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        serde_json::from_value(v).unwrap()
    }

    async fn exec(&self, id: &str, body: Value) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/exec"),
            Some(&body.to_string()),
        )
        .await
    }

    async fn exec_sse(&self, id: &str, body: Value) -> (Response, Vec<Sse>) {
        let req = Request::post(format!("/v1/sandboxes/{id}/exec"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = self.send(req).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let events = parse_sse(std::str::from_utf8(&bytes).unwrap());
        (Response::from_parts(parts, Body::empty()), events)
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct Sse {
    event: String,
    id: String,
    data: String,
}

fn parse_sse(text: &str) -> Vec<Sse> {
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut ev = Sse::default();
        let mut any = false;
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event: ") {
                ev.event = v.to_string();
                any = true;
            } else if let Some(v) = line.strip_prefix("id: ") {
                ev.id = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                ev.data = v.to_string();
            }
        }
        if any {
            out.push(ev);
        }
    }
    out
}

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn healthz_and_capabilities() {
    let a = app().await;
    let resp = a
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");

    let (status, caps) = a.call(Method::GET, "/v1/capabilities", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(caps["runtime"], "fake");
    assert_eq!(caps["limits"]["max_request_bytes"], 64 * 1024);
}

#[tokio::test]
async fn openapi_documents_every_route_and_schema() {
    let a = app().await;
    let (status, doc) = a.call(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, method) in [
        ("/healthz", "get"),
        ("/v1/capabilities", "get"),
        ("/v1/openapi.json", "get"),
        ("/v1/sandboxes", "post"),
        ("/v1/sandboxes", "get"),
        ("/v1/sandboxes/{id}", "get"),
        ("/v1/sandboxes/{id}", "delete"),
        ("/v1/sandboxes/{id}/timeout", "post"),
        ("/v1/sandboxes/{id}/exec", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} undocumented"
        );
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Capabilities",
        "CreateSandboxRequest",
        "ErrorBody",
        "ExecRequest",
        "ExecResult",
        "ExitEvent",
        "OutputChunk",
        "Sandbox",
        "SetTimeoutRequest",
        "Resources",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(serde_json::to_value(crate::openapi()).unwrap(), doc);
}

#[test]
fn committed_openapi_document_is_current() {
    let committed: Value = serde_json::from_str(include_str!("../../../docs/openapi.json"))
        .expect("docs/openapi.json is not valid JSON");
    let generated = serde_json::to_value(crate::openapi()).unwrap();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: run `cargo run -p warren -- openapi > docs/openapi.json`"
    );
}

#[tokio::test]
async fn sandbox_lifecycle() {
    let a = app().await;
    let sb = a
        .create(r#"{"metadata":{"owner":"alice"},"env":{"A":"1"},"timeout_secs":60}"#)
        .await;
    assert_eq!(sb.state, warren_api::SandboxState::Running);
    assert_eq!(sb.env_keys, vec!["A".to_string()]);
    assert_eq!(sb.timeout_secs, 60);

    let (status, got) = a
        .call(Method::GET, &format!("/v1/sandboxes/{}", sb.id), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["id"], sb.id.as_str());

    let (status, list) = a.call(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);

    let (status, body) = a
        .call(Method::DELETE, &format!("/v1/sandboxes/{}", sb.id), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(body, Value::Null);

    let (status, body) = a
        .call(Method::GET, &format!("/v1/sandboxes/{}", sb.id), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox_not_found");
    let (status, body) = a
        .call(Method::DELETE, &format!("/v1/sandboxes/{}", sb.id), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox_not_found");
    assert!(a.t.runtime.sandboxes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_and_invalid_ids_are_404() {
    let a = app().await;
    for uri in [
        "/v1/sandboxes/nope",
        "/v1/sandboxes/%FF%FE",
        "/v1/sandboxes/..%2F..",
    ] {
        let (status, body) = a.call(Method::GET, uri, None).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox_not_found");
    }
    let (status, body) = a.exec("nope", json!({"cmd": ["echo", "hi"]})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox_not_found");
    let (status, body) = a
        .call(
            Method::POST,
            "/v1/sandboxes/nope/timeout",
            Some(r#"{"timeout_secs":10}"#),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "sandbox_not_found");
}

#[tokio::test]
async fn list_filters_on_metadata() {
    let a = app().await;
    let one = a.create(r#"{"metadata":{"team":"a","n":"1"}}"#).await;
    let two = a.create(r#"{"metadata":{"team":"a","n":"2"}}"#).await;
    let _three = a.create(r#"{"metadata":{"team":"b x"}}"#).await;

    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, v) = a
        .call(Method::GET, "/v1/sandboxes?metadata.team=a", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&v), vec![one.id.clone(), two.id.clone()]);
    let (_, v) = a
        .call(
            Method::GET,
            "/v1/sandboxes?metadata.team=a&metadata.n=2",
            None,
        )
        .await;
    assert_eq!(ids(&v), vec![two.id.clone()]);
    let (_, v) = a
        .call(Method::GET, "/v1/sandboxes?metadata.team=b%20x", None)
        .await;
    assert_eq!(ids(&v).len(), 1);
    let (_, v) = a
        .call(Method::GET, "/v1/sandboxes?metadata.team=c", None)
        .await;
    assert_eq!(ids(&v).len(), 0);

    for bad in [
        "/v1/sandboxes?team=a",
        "/v1/sandboxes?limit=3",
        "/v1/sandboxes?metadata.=x",
        "/v1/sandboxes?metadata.n=1&metadata.n=2",
    ] {
        let (status, body) = a.call(Method::GET, bad, None).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn malformed_bodies_are_invalid_request() {
    let a = app().await;
    for body in [
        "{",
        "not json",
        r#"{"imag":"host"}"#,
        r#"{"timeout_secs":"ten"}"#,
        r#"{"resources":{"memory_mib":-5}}"#,
        r#"{"resources":{"pids":1.5}}"#,
        r#"{"resources":{"cpus":1,"gpus":1}}"#,
        r#"{"timeout_secs":18446744073709551616}"#,
        "[]",
        "[null, {}]",
        "null",
        "",
    ] {
        let (status, v) = a.call(Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }

    // Missing and wrong content type.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/jsonx"),
        Some("json"),
    ] {
        let mut b = Request::post("/v1/sandboxes");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let resp = a.send(b.body(Body::from("{}")).unwrap()).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    assert!(a.t.runtime.sandboxes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn absurd_limits_are_refused() {
    let a = app().await;
    for body in [
        r#"{"resources":{"cpus":-1}}"#,
        r#"{"resources":{"cpus":0}}"#,
        r#"{"resources":{"cpus":1e308}}"#,
        r#"{"resources":{"memory_mib":0}}"#,
        r#"{"resources":{"memory_mib":18446744073709551615}}"#,
        r#"{"resources":{"pids":0}}"#,
        r#"{"resources":{"pids":18446744073709551615}}"#,
        r#"{"timeout_secs":0}"#,
        r#"{"timeout_secs":18446744073709551615}"#,
    ] {
        let (status, v) = a.call(Method::POST, "/v1/sandboxes", Some(body)).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, v) = a
        .call(Method::POST, "/v1/sandboxes", Some(r#"{"image":"ubuntu"}"#))
        .await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "image_not_found");
    assert!(a.t.runtime.sandboxes.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversized_body_is_413() {
    let a = app().await;
    let big = format!(r#"{{"metadata":{{"k":"{}"}}}}"#, "x".repeat(70 * 1024));
    let (status, v) = a.call(Method::POST, "/v1/sandboxes", Some(&big)).await;
    assert_error(
        status,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    // Without a Content-Length (a streamed body) too.
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..70).map(|_| Ok("x".repeat(1024))).collect();
    let body = Body::from_stream(futures::stream::iter(chunks));
    let resp = a
        .send(
            Request::post("/v1/sandboxes")
                .header(header::CONTENT_TYPE, "application/json")
                .body(body)
                .unwrap(),
        )
        .await;
    let status = resp.status();
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_error(
        status,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let a = app().await;
    for uri in [
        "/",
        "/v1",
        "/v2/sandboxes",
        "/v1/sandboxes/x/y",
        "/v1/sandboxes/x/exec/z",
    ] {
        let (status, v) = a.call(Method::GET, uri, None).await;
        assert_error(status, &v, StatusCode::NOT_FOUND, "not_found");
    }
    for (m, uri) in [
        (Method::PUT, "/v1/sandboxes"),
        (Method::DELETE, "/v1/sandboxes"),
        (Method::PATCH, "/v1/sandboxes/abc"),
        (Method::GET, "/v1/sandboxes/abc/exec"),
        (Method::GET, "/v1/sandboxes/abc/timeout"),
        (Method::POST, "/healthz"),
    ] {
        let (status, v) = a.call(m.clone(), uri, None).await;
        assert_error(
            status,
            &v,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        let resp = a
            .send(
                Request::builder()
                    .method(m)
                    .uri(uri)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert!(
            resp.headers().contains_key(header::ALLOW),
            "{uri}: no Allow header"
        );
    }
}

#[tokio::test]
async fn set_timeout_moves_expiry() {
    let a = app().await;
    let sb = a.create(r#"{"timeout_secs":60}"#).await;
    let uri = format!("/v1/sandboxes/{}/timeout", sb.id);
    let (status, v) = a
        .call(Method::POST, &uri, Some(r#"{"timeout_secs":1000}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let updated: Sandbox = serde_json::from_value(v).unwrap();
    assert_eq!(updated.timeout_secs, 1000);
    assert!(updated.expires_at > sb.expires_at);

    for body in [
        r#"{"timeout_secs":-1}"#,
        r#"{"timeout_secs":"x"}"#,
        r#"{}"#,
        r#"{"timeout_secs":5,"x":1}"#,
        r#"{"timeout_secs":99999999}"#,
    ] {
        let (status, v) = a.call(Method::POST, &uri, Some(body)).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
}

#[tokio::test]
async fn exec_collects_output() {
    let a = app().await;
    let sb = a.create("{}").await;

    let (status, v) = a
        .exec(&sb.id, json!({"cmd": ["echo", "hello", "world"]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let r: ExecResult = serde_json::from_value(v).unwrap();
    assert_eq!(r.stdout, "hello world\n");
    assert_eq!(r.stderr, "");
    assert_eq!(r.exit_code, 0);
    assert!(!r.truncated);
    assert_eq!(r.duration_ms, 1);

    let (_, v) = a.exec(&sb.id, json!({"cmd": ["fail", "3"]})).await;
    let r: ExecResult = serde_json::from_value(v).unwrap();
    assert_eq!((r.exit_code, r.stderr.as_str()), (3, "failing\n"));

    let (_, v) = a
        .exec(&sb.id, json!({"cmd": ["cat"], "stdin": "piped ✓"}))
        .await;
    assert_eq!(v["stdout"], "piped ✓");

    let (_, v) = a.exec(&sb.id, json!({"cmd": ["split-utf8"]})).await;
    assert_eq!(v["stdout"], "café\n");
    assert_eq!(v["stderr"], "warn\n");

    let (_, v) = a
        .exec(&sb.id, json!({"cmd": ["binary"], "encoding": "base64"}))
        .await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(v["stdout"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());

    let (_, v) = a.exec(&sb.id, json!({"cmd": ["binary"]})).await;
    let text = v["stdout"].as_str().unwrap();
    assert!(text.starts_with("\u{0}\u{1}"));
    assert!(text.contains('\u{fffd}'));

    let (_, v) = a.exec(&sb.id, json!({"cmd": ["yes", "5000"]})).await;
    let r: ExecResult = serde_json::from_value(v).unwrap();
    assert!(r.truncated);
    assert_eq!(r.stdout.len(), 1024);

    let (_, v) = a.exec(&sb.id, json!({"cmd": ["killed"]})).await;
    let r: ExecResult = serde_json::from_value(v).unwrap();
    assert_eq!(r.exit_code, 137);
    assert_eq!(r.signal.as_deref(), Some("SIGKILL"));
    assert!(r.timed_out);
    assert_eq!(r.duration_ms, 2000);

    let (_, v) = a
        .exec(&sb.id, json!({"cmd": ["env"], "env": {"FOO": "bar"}}))
        .await;
    assert!(v["stdout"].as_str().unwrap().contains("FOO=bar\n"), "{v}");
}

#[tokio::test]
async fn exec_errors() {
    let a = app().await;
    let sb = a.create("{}").await;
    for body in [
        json!({"cmd": []}),
        json!({"cmd": [""]}),
        json!({}),
        json!({"cmd": "echo hi"}),
        json!({"cmd": ["echo"], "user": "admin"}),
        json!({"cmd": ["echo"], "encoding": "hex"}),
        json!({"cmd": ["echo"], "timeout_secs": -1}),
        json!({"cmd": ["echo"], "cwd": "relative/dir"}),
        json!({"cmd": ["echo"], "bogus": true}),
    ] {
        let (status, v) = a.exec(&sb.id, body.clone()).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, v) = a.exec(&sb.id, json!({"cmd": ["no-such-command"]})).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "command_not_found");
    let (status, v) = a.exec(&sb.id, json!({"cmd": ["broken"]})).await;
    assert_error(
        status,
        &v,
        StatusCode::INTERNAL_SERVER_ERROR,
        "runtime_error",
    );
}

#[tokio::test]
async fn exec_sse_utf8_split_arrives_whole() {
    let a = app().await;
    let sb = a.create("{}").await;
    let (resp, events) = a.exec_sse(&sb.id, json!({"cmd": ["split-utf8"]})).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
    assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");

    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["stdout", "stderr", "stdout", "exit"]);
    let chunk = |e: &Sse| serde_json::from_str::<OutputChunk>(&e.data).unwrap().data;
    assert_eq!(chunk(&events[0]), "caf");
    assert_eq!(chunk(&events[1]), "warn\n");
    assert_eq!(chunk(&events[2]), "é\n");
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["3", "8", "11", "11"]);
    let exit: ExitEvent = serde_json::from_str(&events[3].data).unwrap();
    assert_eq!(exit.exit_code, 0);
    assert_eq!(exit.signal, None);
}

#[tokio::test]
async fn exec_sse_base64_round_trip() {
    let a = app().await;
    let sb = a.create("{}").await;
    let (_, events) = a
        .exec_sse(&sb.id, json!({"cmd": ["binary"], "encoding": "base64"}))
        .await;
    let mut bytes = Vec::new();
    for e in &events[..events.len() - 1] {
        assert_eq!(e.event, "stdout");
        let c: OutputChunk = serde_json::from_str(&e.data).unwrap();
        bytes.extend(
            base64::engine::general_purpose::STANDARD
                .decode(c.data)
                .unwrap(),
        );
    }
    assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());
    let last = events.last().unwrap();
    assert_eq!((last.event.as_str(), last.id.as_str()), ("exit", "256"));

    // Streaming is not capped.
    let (_, events) = a.exec_sse(&sb.id, json!({"cmd": ["yes", "10000"]})).await;
    assert_eq!(events.last().unwrap().id, "10000");
}

#[tokio::test]
async fn exec_sse_errors() {
    let a = app().await;
    let sb = a.create("{}").await;
    // Failures before the command starts are plain JSON errors.
    let (resp, events) = a.exec_sse("missing", json!({"cmd": ["echo"]})).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(events.is_empty());
    let (resp, _) = a.exec_sse(&sb.id, json!({"cmd": []})).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // A runtime failure mid-stream ends with an `error` event.
    let (_, events) = a.exec_sse(&sb.id, json!({"cmd": ["broken"]})).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["stdout", "error"]);
    let err: warren_api::ErrorBody = serde_json::from_str(&events[1].data).unwrap();
    assert_eq!(err.error.code, "runtime_error");
}

#[tokio::test]
async fn exec_sse_disconnect_kills_the_command() {
    let a = app().await;
    let sb = a.create("{}").await;
    let req = Request::post(format!("/v1/sandboxes/{}/exec", sb.id))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream;q=0.9")
        .body(Body::from(json!({"cmd": ["sleep"]}).to_string()))
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
    assert!(text.contains("started"), "{text}");
    assert_eq!(
        a.t.runtime.drops.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    drop(body);
    assert_eq!(
        a.t.runtime.drops.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[test]
fn metadata_filter_parsing() {
    let f = crate::parse_metadata_filter("metadata.a=1&metadata.b%20c=x+y").unwrap();
    assert_eq!(f.get("a").map(String::as_str), Some("1"));
    assert_eq!(f.get("b c").map(String::as_str), Some("x y"));
    assert!(crate::parse_metadata_filter("").unwrap().is_empty());
    assert!(crate::parse_metadata_filter("metadata.a=1&metadata.a=1").is_ok());
}
