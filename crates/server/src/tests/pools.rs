//! Warm pools and admission errors over HTTP, on the fake runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use warren_api::Pool;
use warren_engine::{EngineConfig, MemoryProbe};

async fn app_with(adjust: impl FnOnce(&mut EngineConfig)) -> App {
    let t = TestEngine::with_config(adjust).await;
    App {
        router: crate::router(t.engine.clone()),
        t,
    }
}

async fn pool(a: &App, name: &str) -> (StatusCode, Value) {
    a.call(Method::GET, &format!("/v1/pools/{name}"), None)
        .await
}

async fn put(a: &App, name: &str, body: Value) -> (StatusCode, Value) {
    a.call(
        Method::PUT,
        &format!("/v1/pools/{name}"),
        Some(&body.to_string()),
    )
    .await
}

/// Wait until the pool has `n` ready sandboxes and none filling.
async fn full(a: &App, name: &str, n: u32) -> Pool {
    for _ in 0..500 {
        let (status, v) = pool(a, name).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        let p: Pool = serde_json::from_value(v).unwrap();
        if p.ready == n && p.filling == 0 {
            return p;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool {name} never filled to {n}");
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn pools_over_http() {
    let a = app().await;
    let (status, v) = put(
        &a,
        "py",
        json!({"size": 2, "resources": {"memory_mib": 256}, "env": {"P": "1"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["name"], "py");
    assert_eq!(v["size"], 2);
    assert_eq!(v["source"], "api");
    assert_eq!(v["env_keys"], json!(["P"]));
    assert!(v.get("env").is_none(), "env values are never echoed: {v}");
    let p = full(&a, "py", 2).await;
    assert_eq!(p.resources.memory_mib, Some(256));

    let (status, list) = a.call(Method::GET, "/v1/pools", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Unclaimed sandboxes are not listed.
    let (_, sandboxes) = a.call(Method::GET, "/v1/sandboxes", None).await;
    assert_eq!(sandboxes, json!([]));

    let made = a.t.runtime.creates.load(Ordering::SeqCst);
    let sb = a
        .create(r#"{"pool":"py","env":{"MINE":"x"},"metadata":{"k":"v"},"timeout_secs":60}"#)
        .await;
    assert_eq!(sb.pool.as_deref(), Some("py"));
    assert_eq!(sb.env_keys, ["MINE", "P"]);
    assert_eq!(sb.timeout_secs, 60);
    assert_eq!(a.t.runtime.creates.load(Ordering::SeqCst), made);
    let (status, v) = a.exec(&sb.id, json!({"cmd": ["env"]})).await;
    assert_eq!(status, StatusCode::OK);
    let out = v["stdout"].as_str().unwrap();
    assert!(out.contains("MINE=x\n") && out.contains("P=1\n"), "{out}");
    let p = full(&a, "py", 2).await;
    assert_eq!((p.claimed, p.claims), (1, 1));

    // Errors.
    let (status, v) = a
        .call(Method::POST, "/v1/sandboxes", Some(r#"{"pool":"nope"}"#))
        .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "pool_not_found")
    );
    let (status, v) = pool(&a, "nope").await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "pool_not_found")
    );
    let (status, v) = put(&a, "x", json!({"size": 1, "imgae": "host"})).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, v) = put(&a, "x", json!({})).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, v) = put(&a, "Not_OK", json!({"size": 1})).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let (status, v) = put(&a, "x", json!({"size": 1, "image": "nope"})).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "image_not_found")
    );
    let (status, v) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"pool":"py","resources":{"memory_mib":512}}"#),
        )
        .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // An unclaimed sandbox's id is not the API's.
    let member =
        a.t.runtime
            .live()
            .into_iter()
            .find(|id| *id != sb.id)
            .unwrap();
    let (status, v) = a
        .call(Method::GET, &format!("/v1/sandboxes/{member}"), None)
        .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "sandbox_not_found")
    );

    let (status, _) = a.call(Method::DELETE, "/v1/pools/py", None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(a.t.runtime.live(), vec![sb.id.clone()]);
    let (status, v) = a.call(Method::DELETE, "/v1/pools/py", None).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::NOT_FOUND, "pool_not_found")
    );
    let (status, v) = a.call(Method::POST, "/v1/pools/py", None).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn admission_errors_are_typed_and_immediate() {
    let available = Arc::new(AtomicU64::new(8192));
    let probe = available.clone();
    let a = app_with(move |c| {
        c.max_sandboxes = 2;
        c.max_committed_memory_mib = 1024;
        c.min_available_memory_mib = 256;
        c.memory_probe = MemoryProbe::from_fn(move || Some(probe.load(Ordering::SeqCst)));
    })
    .await;
    let (_, caps) = a.call(Method::GET, "/v1/capabilities", None).await;
    assert_eq!(caps["limits"]["max_committed_memory_mib"], 1024);
    assert_eq!(caps["limits"]["min_available_memory_mib"], 256);
    assert_eq!(caps["limits"]["max_pool_size"], 256);
    assert_eq!(caps["features"]["pools"], true);

    a.create(r#"{"resources":{"memory_mib":512}}"#).await;
    let (status, v) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"resources":{"memory_mib":1024}}"#),
        )
        .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "capacity_exhausted"),
        "{v}"
    );
    a.create(r#"{"resources":{"memory_mib":256}}"#).await;
    let (status, v) = a
        .call(
            Method::POST,
            "/v1/sandboxes",
            Some(r#"{"resources":{"memory_mib":16}}"#),
        )
        .await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "limit_reached"),
        "{v}"
    );
    available.store(64, Ordering::SeqCst);
    let (status, v) = a.call(Method::POST, "/v1/sandboxes", Some("{}")).await;
    assert_eq!(
        (status, code(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "host_under_pressure"),
        "{v}"
    );
    assert_eq!(a.t.runtime.live().len(), 2);
}

#[test]
fn openapi_documents_pools() {
    let doc = serde_json::to_value(crate::openapi()).unwrap();
    let paths = &doc["paths"];
    assert!(paths["/v1/pools"]["get"].is_object());
    for m in ["get", "put", "delete"] {
        assert!(paths["/v1/pools/{name}"][m].is_object(), "{m}");
    }
    assert!(doc["components"]["schemas"]["PoolSpec"].is_object());
}
