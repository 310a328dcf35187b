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

/// An engine and its API with one key required: the engine, the router, its auth and the
/// key.
async fn keyed() -> (TestEngine, Router, crate::auth::Auth, String) {
    use crate::auth::{ApiKeys, Auth, KeyFile, SandboxTokens};
    let t = TestEngine::new().await;
    let file = KeyFile::new(t.dir.path().join("keys.json"));
    let (_, key) = file.create("t").unwrap();
    let auth = Auth {
        keys: ApiKeys::fixed(file.load().unwrap()),
        tokens: SandboxTokens::open(&t.dir.path().join("access.key")).unwrap(),
    };
    let router = crate::router_with(t.engine.clone(), Some(auth.clone()));
    (t, router, auth, key)
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
    // The default runtime, and every runtime the backend knows (the fake runs no gVisor).
    assert_eq!(caps["runtime"], "native");
    assert_eq!(caps["runtimes"][0]["name"], "native");
    assert_eq!(caps["runtimes"][0]["available"], true);
    assert_eq!(caps["runtimes"][1]["name"], "gvisor");
    assert_eq!(caps["runtimes"][1]["available"], false);
    assert!(caps["runtimes"][1]["unavailable_reason"].is_string());
    // Asking for it: 400 runtime_unavailable saying why, and nothing made.
    let (status, err) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"runtime": "gvisor"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "runtime_unavailable");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("simulates"),
        "{err}"
    );
    let (status, err) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"runtime": "firecracker"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"]["code"], "invalid_request", "{err}");
    let (_, list) = a.call(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    // A native sandbox says so.
    let (status, sb) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"runtime": "native"}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sb}");
    assert_eq!(sb["runtime"], "native");
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
        ("/v1/sandboxes/{id}/pause", "post"),
        ("/v1/sandboxes/{id}/resume", "post"),
        ("/v1/sandboxes/{id}/stop", "post"),
        ("/v1/sandboxes/{id}/start", "post"),
        ("/v1/sandboxes/{id}/stats", "get"),
        ("/v1/sandboxes/{id}/snapshots", "post"),
        ("/v1/sandboxes/{id}/snapshots", "get"),
        ("/v1/sandboxes/{id}/rollback", "post"),
        ("/v1/sandboxes/{id}/fork", "post"),
        ("/v1/sandboxes/{id}/events", "get"),
        ("/v1/snapshots", "get"),
        ("/v1/snapshots/{id}", "get"),
        ("/v1/snapshots/{id}", "delete"),
        ("/v1/events", "get"),
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
        "Snapshot",
        "CreateSnapshotRequest",
        "RollbackRequest",
        "ForkRequest",
        "SandboxStats",
        "SandboxEvent",
        "EventKind",
        "EventsLost",
        "StorageInfo",
        "TimeoutAction",
        "IdleAction",
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

#[test]
fn openapi_operation_ids_are_unique() {
    let doc = serde_json::to_value(crate::openapi()).unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(id) = op.get("operationId") else {
                continue; // path-level fields
            };
            let id = id.as_str().unwrap().to_string();
            if let Some(other) = seen.insert(id.clone(), format!("{method} {path}")) {
                panic!("operationId {id} of {method} {path} is also {other}'s");
            }
        }
    }
    // The proxy without a trailing path is documented too, without a `path` parameter.
    let root = &doc["paths"]["/v1/sandboxes/{id}/proxy/{port}"];
    for method in ["get", "post", "put", "patch", "delete", "head", "options"] {
        let params = root[method]["parameters"].as_array().unwrap();
        assert!(params.iter().all(|p| p["name"] != "path"), "{method}");
        assert_eq!(params.len(), 2, "{method}");
    }
    assert!(doc["servers"][0]["url"].is_string());
}

/// A real OpenAPI validator (Python's `openapi-spec-validator`, which `.ci/run` installs)
/// accepts the document.
#[test]
fn openapi_document_passes_a_validator() {
    const INSTALL: &str = "install it with `python3 -m pip install openapi-spec-validator` \
        (.ci/run does)";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec(&crate::openapi()).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("No module named"),
        "the OpenAPI validator is missing: {INSTALL}\n{text}"
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "openapi-spec-validator rejects the document:\n{text}"
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
    assert!(a.t.runtime.live().is_empty());
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
    assert!(a.t.runtime.live().is_empty());
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
    assert_error(status, &v, StatusCode::NOT_FOUND, "image_not_found");
    assert!(a.t.runtime.live().is_empty());
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

/// Every operation of the document is served by the router (routes and operations are
/// registered together; this catches the one route added by hand drifting from its doc).
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let a = app().await;
    let doc = serde_json::to_value(crate::openapi()).unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let uri = path
            .replace("{id}", "sb-nosuchsandbox")
            .replace("{pid}", "1")
            .replace("{port}", "8080")
            .replace("{name}", "nosuchpool")
            .replace("{path}", "a/b");
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let resp = a
                .send(
                    Request::builder()
                        .method(m)
                        .uri(&uri)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            let status = resp.status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND && method != "head" {
                let bytes = resp.into_body().collect().await.unwrap().to_bytes();
                let v: Value = serde_json::from_slice(&bytes).unwrap();
                assert_ne!(
                    v["error"]["code"], "not_found",
                    "{method} {path} is not routed"
                );
            }
        }
    }
    assert_eq!(operations, 80, "operations documented");
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let a = app().await;
    for uri in [
        "/",
        "/v1",
        "/v3/sandboxes",
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

    let t = std::time::Instant::now();
    let (status, v) = a
        .exec(&sb.id, json!({"cmd": ["echo", "hello", "world"]}))
        .await;
    let took = t.elapsed();
    assert_eq!(status, StatusCode::OK, "{v}");
    let r: ExecResult = serde_json::from_value(v).unwrap();
    assert_eq!(r.stdout, "hello world\n");
    assert_eq!(r.stderr, "");
    assert_eq!(r.exit_code, 0);
    assert!(!r.truncated);
    // The agent's measure of the command, within the request's.
    assert!(u128::from(r.duration_ms) <= took.as_millis(), "{r:?}");

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
    assert_eq!(
        (r.stdout_bytes, r.stdout_truncated_bytes),
        (5000, 5000 - 1024)
    );
    assert_eq!((r.stderr_bytes, r.stderr_truncated_bytes), (0, 0));

    let (_, v) = a
        .exec(&sb.id, json!({"cmd": ["sleep"], "timeout_secs": 1}))
        .await;
    let r: ExecResult = serde_json::from_value(v).unwrap();
    assert_eq!(r.exit_code, 137);
    assert_eq!(r.signal.as_deref(), Some("SIGKILL"));
    assert!(r.timed_out);
    assert!(r.duration_ms >= 1000, "{r:?}");

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

mod files {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::Ordering;
    use warren_api::{FileInfo, FileList, SandboxState};

    async fn put(app: &App, id: &str, query: &str, body: Body) -> (StatusCode, Value) {
        let req = Request::put(format!("/v1/sandboxes/{id}/files?{query}"))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .unwrap();
        let resp = app.send(req).await;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get_raw(app: &App, id: &str, path: &str) -> (StatusCode, header::HeaderMap, Vec<u8>) {
        let req = Request::get(format!("/v1/sandboxes/{id}/files?path={path}"))
            .body(Body::empty())
            .unwrap();
        let resp = app.send(req).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes().to_vec();
        (parts.status, parts.headers, bytes)
    }

    fn code(v: &Value) -> &str {
        v["error"]["code"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn binary_round_trip() {
        let app = app().await;
        let id = app.create("{}").await.id;
        let data: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let (status, v) = put(
            &app,
            &id,
            "path=/workspace/sub/bin&mode=0600&user=user",
            Body::from(data.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let info: FileInfo = serde_json::from_value(v).unwrap();
        assert_eq!(
            (info.size, info.mode, info.uid, info.gid),
            (70_000, 0o600, 1000, 1000)
        );
        assert_eq!(info.path, "/workspace/sub/bin");

        let (status, headers, body) = get_raw(&app, &id, "/workspace/sub/bin").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, data);
        assert_eq!(headers["x-warren-file-size"], "70000");
        assert!(headers.get(header::CONTENT_LENGTH).is_none());
        assert_eq!(headers[header::CONTENT_TYPE], "application/octet-stream");
        assert_eq!(headers["x-warren-file-mode"], "0600");

        // Default owner root, mode 0644; empty files work.
        let (status, v) = put(&app, &id, "path=/workspace/empty", Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (v["mode"].as_u64(), v["uid"].as_u64()),
            (Some(0o644), Some(0))
        );
        let (_, _, body) = get_raw(&app, &id, "/workspace/empty").await;
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn large_streamed_body_ignores_the_json_limit() {
        let app = app().await;
        let id = app.create("{}").await.id;
        // 20 MiB in 1 MiB chunks, through a route whose JSON limit would be 64 KiB.
        let chunks = (0..20u8).map(|i| Ok::<_, std::io::Error>(Bytes::from(vec![i; 1 << 20])));
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (status, v) = put(&app, &id, "path=/tmp/big", body).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["size"], 20 << 20);
        let (status, _, body) = get_raw(&app, &id, "/tmp/big").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 20 << 20);
        assert!(body
            .chunks(1 << 20)
            .enumerate()
            .all(|(i, c)| c.iter().all(|b| *b as usize == i)));
        // Other routes keep the limit.
        let big = format!(r#"{{"path":"/{}"}}"#, "a".repeat(100_000));
        let (status, v) = app
            .call(
                Method::POST,
                &format!("/v1/sandboxes/{id}/files/mkdir"),
                Some(&big),
            )
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    }

    #[tokio::test]
    async fn interrupted_upload_changes_nothing() {
        let app = app().await;
        let id = app.create("{}").await.id;
        let (status, _) = put(&app, &id, "path=/workspace/f", Body::from("old")).await;
        assert_eq!(status, StatusCode::OK);
        let chunks = vec![
            Ok(Bytes::from_static(b"new data")),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (status, v) = put(&app, &id, "path=/workspace/f", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(code(&v), "invalid_request");
        assert_eq!(app.t.runtime.aborted_writes.load(Ordering::SeqCst), 1);
        let (_, _, body) = get_raw(&app, &id, "/workspace/f").await;
        assert_eq!(body, b"old");
        assert_eq!(
            app.t.engine.get(&id).await.unwrap().state,
            SandboxState::Running
        );
    }

    #[tokio::test]
    async fn metadata_operations() {
        let app = app().await;
        let id = app.create("{}").await.id;
        let base = format!("/v1/sandboxes/{id}/files");
        let (status, v) = app
            .call(
                Method::POST,
                &format!("{base}/mkdir"),
                Some(r#"{"path":"/workspace/a/b","mode":448}"#),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(
            (v["kind"].as_str(), v["mode"].as_u64()),
            (Some("dir"), Some(0o700))
        );
        assert!(v["modified_at"].as_str().unwrap().contains('T'));
        put(&app, &id, "path=/workspace/a/b/f.txt", Body::from("hi")).await;

        let (status, v) = app
            .call(
                Method::GET,
                &format!("{base}/stat?path=/workspace/a/b/f.txt"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (v["kind"].as_str(), v["size"].as_u64()),
            (Some("file"), Some(2))
        );

        let (status, v) = app
            .call(
                Method::GET,
                &format!("{base}/list?path=/workspace&depth=3"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let list: FileList = serde_json::from_value(v).unwrap();
        let paths: Vec<&str> = list.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["/workspace/a", "/workspace/a/b", "/workspace/a/b/f.txt"]
        );
        assert!(!list.truncated);
        let (_, v) = app
            .call(Method::GET, &format!("{base}/list?path=/workspace"), None)
            .await;
        assert_eq!(v["entries"].as_array().unwrap().len(), 1);

        app.t
            .runtime
            .symlink(&id, "/workspace/link", "a/b")
            .unwrap();
        let (_, v) = app
            .call(
                Method::GET,
                &format!("{base}/stat?path=/workspace/link"),
                None,
            )
            .await;
        assert_eq!(
            (v["kind"].as_str(), v["link_target"].as_str()),
            (Some("symlink"), Some("a/b"))
        );

        let (status, v) = app
            .call(
                Method::POST,
                &format!("{base}/move"),
                Some(r#"{"from":"/workspace/a/b/f.txt","to":"/workspace/g.txt"}"#),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
        let (_, _, body) = get_raw(&app, &id, "/workspace/g.txt").await;
        assert_eq!(body, b"hi");

        let (status, _) = app
            .call(
                Method::DELETE,
                &format!("{base}?path=/workspace/a&recursive=true"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, v) = app
            .call(Method::GET, &format!("{base}/stat?path=/workspace/a"), None)
            .await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::NOT_FOUND, "file_not_found")
        );
    }

    #[tokio::test]
    async fn error_codes() {
        let app = app().await;
        let id = app.create("{}").await.id;
        let base = format!("/v1/sandboxes/{id}/files");
        put(&app, &id, "path=/workspace/f", Body::from("x")).await;
        put(&app, &id, "path=/workspace/d/inner", Body::from("x")).await;
        app.t.runtime.symlink(&id, "/workspace/link", "f").unwrap();
        app.t
            .runtime
            .symlink(&id, "/workspace/loop", "loop")
            .unwrap();

        let cases: Vec<(Method, String, Option<&str>, StatusCode, &str)> = vec![
            (
                Method::GET,
                base.clone(),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}?path=rel"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}?path=/a%00b"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}?path=/{}", "a".repeat(5000)),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}?path=/f&bogus=1"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}/list?path=/&depth=0"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}/list?path=/&depth=11"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}/list?path=/&depth=x"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::DELETE,
                format!("{base}?path=/workspace/f&recursive=maybe"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::DELETE,
                format!("{base}?path=/"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::POST,
                format!("{base}/mkdir"),
                Some(r#"{"path":"/x","nope":1}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::POST,
                format!("{base}/move"),
                Some(r#"{"from":"/x"}"#),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Method::GET,
                format!("{base}?path=/workspace/missing"),
                None,
                StatusCode::NOT_FOUND,
                "file_not_found",
            ),
            (
                Method::GET,
                format!("{base}?path=/workspace"),
                None,
                StatusCode::BAD_REQUEST,
                "is_a_directory",
            ),
            (
                Method::GET,
                format!("{base}/list?path=/workspace/f"),
                None,
                StatusCode::BAD_REQUEST,
                "not_a_directory",
            ),
            (
                Method::GET,
                format!("{base}?path=/workspace/loop"),
                None,
                StatusCode::BAD_REQUEST,
                "invalid_path",
            ),
            (
                Method::POST,
                format!("{base}/mkdir"),
                Some(r#"{"path":"/workspace/f","parents":false}"#),
                StatusCode::CONFLICT,
                "file_exists",
            ),
            (
                Method::POST,
                format!("{base}/move"),
                Some(r#"{"from":"/workspace/link","to":"/workspace/f"}"#),
                StatusCode::CONFLICT,
                "file_exists",
            ),
            (
                Method::DELETE,
                format!("{base}?path=/workspace/d"),
                None,
                StatusCode::CONFLICT,
                "directory_not_empty",
            ),
            (
                Method::DELETE,
                format!("{base}?path=/readonly"),
                None,
                StatusCode::FORBIDDEN,
                "permission_denied",
            ),
            (
                Method::GET,
                format!("{base}?path=/io-error"),
                None,
                StatusCode::INTERNAL_SERVER_ERROR,
                "io_error",
            ),
            (
                Method::GET,
                "/v1/sandboxes/sb-nope/files/stat?path=/".to_string(),
                None,
                StatusCode::NOT_FOUND,
                "sandbox_not_found",
            ),
        ];
        for (method, uri, body, status, want) in cases {
            let (got, v) = app.call(method.clone(), &uri, body).await;
            assert_eq!((got, code(&v)), (status, want), "{method} {uri}: {v}");
        }
        for q in [
            "path=/workspace/g&mode=999",
            "path=/workspace/g&mode=",
            "path=/workspace/g&user=bob",
            "mode=0644",
        ] {
            let (status, v) = put(&app, &id, q, Body::from("x")).await;
            assert_eq!(
                (status, code(&v)),
                (StatusCode::BAD_REQUEST, "invalid_request"),
                "{q}"
            );
        }
        let (status, v) = put(&app, &id, "path=/readonly/x", Body::from("x")).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::FORBIDDEN, "permission_denied")
        );
        let (status, v) = put(&app, &id, "path=/workspace", Body::from("x")).await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::BAD_REQUEST, "is_a_directory")
        );

        // The runtime lost the sandbox: it is marked failed, and files are then 409.
        let other = app.create("{}").await.id;
        app.t.runtime.lose(&other);
        let (status, v) = app
            .call(
                Method::GET,
                &format!("/v1/sandboxes/{other}/files/stat?path=/"),
                None,
            )
            .await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::CONFLICT, "invalid_state"),
            "{v}"
        );
        let (status, v) = app
            .call(
                Method::GET,
                &format!("/v1/sandboxes/{other}/files/stat?path=/"),
                None,
            )
            .await;
        assert_eq!(
            (status, code(&v)),
            (StatusCode::CONFLICT, "invalid_state"),
            "{v}"
        );
    }
}

/// A client that hangs up mid-upload over real TCP: the write is aborted, nothing appears.
#[tokio::test]
async fn upload_disconnect_over_tcp_writes_nothing() {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = crate::testing::TestServer::start().await;
    let engine = &server.engine.engine;
    let id = engine
        .create(warren_api::CreateSandboxRequest::default())
        .await
        .unwrap()
        .id;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PUT /v1/sandboxes/{id}/files?path=/workspace/partial HTTP/1.1\r\nhost: x\r\n\
         content-type: application/octet-stream\r\ncontent-length: 10000000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[7u8; 100_000]).await.unwrap();
    tcp.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(tcp);
    for _ in 0..100 {
        if server.engine.runtime.aborted_writes.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.engine.runtime.aborted_writes.load(Ordering::SeqCst),
        1,
        "the body error reached the runtime"
    );
    let err = engine.stat(&id, "/workspace/partial").await.unwrap_err();
    assert_eq!(err.code(), "file_not_found");

    // A complete upload over the same kind of connection works.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let req = format!(
        "PUT /v1/sandboxes/{id}/files?path=/workspace/full HTTP/1.1\r\nhost: x\r\n\
         connection: close\r\ncontent-length: 3\r\n\r\nabc"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(engine.stat(&id, "/workspace/full").await.unwrap().size, 3);
}

#[tokio::test]
async fn disk_limit_over_http() {
    let a = app().await;
    let (status, caps) = a.call(Method::GET, "/v1/capabilities", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(caps["storage"]["disk_quota"], true);
    assert!(caps["limits"]["max_disk_mib"].as_u64().unwrap() > 0);
    let sb = a.create(r#"{"resources":{"disk_mib":16}}"#).await;
    assert_eq!(sb.resources.disk_mib, Some(16));
    // A write past the limit: 507 with a typed code.
    let req = Request::put(format!("/v1/sandboxes/{}/files?path=/workspace/big", sb.id))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(vec![0u8; (16 << 20) + 1]))
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::INSUFFICIENT_STORAGE);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["error"]["code"], "disk_quota_exceeded", "{v}");
    // Out of range: 400, nothing made.
    let (status, v) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"resources":{"disk_mib":1}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_request");
    assert_eq!(a.t.runtime.live().len(), 1);
}

mod archive;
mod e2b;
mod lifecycle;
mod limits;
mod opensandbox;
mod pools;
mod processes;
mod search;
