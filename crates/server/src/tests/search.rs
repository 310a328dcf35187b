//! `POST .../files/search`, `POST .../files/replace` and `GET .../files/watch` over the fake
//! runtime (the real agent, on a host directory).

use super::*;

async fn put(a: &App, id: &str, path: &str, data: &str) {
    let req = Request::put(format!("/v1/sandboxes/{id}/files?path={path}"))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(data.to_string()))
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

async fn get(a: &App, id: &str, path: &str) -> String {
    let req = Request::get(format!("/v1/sandboxes/{id}/files?path={path}"))
        .body(Body::empty())
        .unwrap();
    let resp = a.send(req).await;
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn setup() -> (App, String) {
    let a = app().await;
    let id = a.create("{}").await.id;
    put(
        &a,
        &id,
        "/workspace/a.rs",
        "fn main() {}\nlet x;\nfn two() {}\n",
    )
    .await;
    put(&a, &id, "/workspace/src/b.rs", "fn b() {}\n").await;
    put(&a, &id, "/workspace/notes.txt", "fn in notes\n").await;
    put(&a, &id, "/workspace/.git/c.rs", "fn hidden() {}\n").await;
    (a, id)
}

async fn post(a: &App, id: &str, what: &str, body: Value) -> (StatusCode, Value) {
    a.call(
        Method::POST,
        &format!("/v1/sandboxes/{id}/files/{what}"),
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn search_names_and_content() {
    let (a, id) = setup().await;
    let (status, v) = post(
        &a,
        &id,
        "search",
        json!({"path": "/workspace", "glob": "**/*.rs"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"matches": [{"path": "/workspace/a.rs"}, {"path": "/workspace/src/b.rs"}],
               "files_scanned": 2, "truncated": false})
    );
    let (status, v) = post(
        &a,
        &id,
        "search",
        json!({"path": "/workspace", "pattern": "^fn \\w+", "glob": "*.rs", "hidden": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let hits: Vec<(String, u64)> = v["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_string(),
                m["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hits,
        [
            ("/workspace/.git/c.rs".to_string(), 1),
            ("/workspace/a.rs".to_string(), 1),
            ("/workspace/a.rs".to_string(), 3),
            ("/workspace/src/b.rs".to_string(), 1),
        ]
    );
    assert_eq!(v["matches"][1]["text"], "fn main() {}");
    // max_results.
    let (_, v) = post(
        &a,
        &id,
        "search",
        json!({"path": "/workspace", "pattern": "fn", "max_results": 2}),
    )
    .await;
    assert_eq!(v["matches"].as_array().unwrap().len(), 2);
    assert_eq!(v["truncated"], true);
}

#[tokio::test]
async fn search_errors() {
    let (a, id) = setup().await;
    for body in [
        json!({"path": "/workspace"}),
        json!({"path": "workspace", "glob": "*"}),
        json!({"path": "/workspace", "pattern": "(unclosed"}),
        json!({"path": "/workspace", "glob": "a["}),
        json!({"path": "/workspace", "glob": "*", "max_results": 0}),
        json!({"path": "/workspace", "glob": "*", "max_results": 10001}),
        json!({"path": "/workspace", "glob": "*", "bogus": 1}),
    ] {
        let (status, v) = post(&a, &id, "search", body.clone()).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, v) = post(&a, &id, "search", json!({"path": "/nope", "glob": "*"})).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "file_not_found");
    let (status, v) = post(&a, "sb-nope", "search", json!({"path": "/", "glob": "*"})).await;
    assert_error(status, &v, StatusCode::NOT_FOUND, "sandbox_not_found");
}

#[tokio::test]
async fn replace_rewrites_matching_files() {
    let (a, id) = setup().await;
    let (status, v) = post(
        &a,
        &id,
        "replace",
        json!({"path": "/workspace", "glob": "**/*.rs", "pattern": "fn (\\w+)", "replacement": "fn ${1}_v2"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"files": [{"path": "/workspace/a.rs", "replacements": 2},
                         {"path": "/workspace/src/b.rs", "replacements": 1}],
               "total_replacements": 3, "truncated": false})
    );
    assert_eq!(
        get(&a, &id, "/workspace/a.rs").await,
        "fn main_v2() {}\nlet x;\nfn two_v2() {}\n"
    );
    assert_eq!(get(&a, &id, "/workspace/notes.txt").await, "fn in notes\n");
    // A bad pattern is refused before anything changes.
    let (status, v) = post(
        &a,
        &id,
        "replace",
        json!({"path": "/workspace", "pattern": "[", "replacement": "x"}),
    )
    .await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("regular expression"));
    // max_files.
    let (_, v) = post(
        &a,
        &id,
        "replace",
        json!({"path": "/workspace", "pattern": "fn", "replacement": "pub fn", "max_files": 1}),
    )
    .await;
    assert_eq!(v["files"].as_array().unwrap().len(), 1);
    assert_eq!(v["truncated"], true);
}

#[tokio::test]
async fn watch_streams_changes_as_sse() {
    let (a, id) = setup().await;
    let req = Request::get(format!(
        "/v1/sandboxes/{id}/files/watch?path=/workspace&recursive=true"
    ))
    .body(Body::empty())
    .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The watch is active when the response starts: a change made now is reported.
    put(&a, &id, "/workspace/src/new.rs", "fn new() {}\n").await;
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains("/workspace/src/new.rs") {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("no event for the new file")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(seen.contains("event: created"), "{seen}");
    let (status, v) = a
        .call(
            Method::GET,
            &format!("/v1/sandboxes/{id}/files/watch?path=relative"),
            None,
        )
        .await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
}
