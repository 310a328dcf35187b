//! `GET .../files/archive` and `POST .../files/upload` over the fake runtime.

use super::*;

async fn sandbox(a: &App) -> String {
    a.create("{}").await.id
}

fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "warren-test-boundary";
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(a: &App, id: &str, query: &str, parts: &[(&str, &[u8])]) -> (StatusCode, Value) {
    let (ctype, body) = multipart(parts);
    let req = Request::post(format!("/v1/sandboxes/{id}/files/upload?{query}"))
        .header(header::CONTENT_TYPE, ctype)
        .body(Body::from(body))
        .unwrap();
    let resp = a.send(req).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn multipart_upload_writes_every_part() {
    let a = app().await;
    let id = sandbox(&a).await;
    let big = vec![7u8; 300_000];
    let (status, v) = upload(
        &a,
        &id,
        "dir=/workspace/up&user=user",
        &[("a.txt", b"alpha"), ("sub/deep/b.bin", &big), ("./c", b"")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let files: warren_api::UploadedFiles = serde_json::from_value(v).unwrap();
    let paths: Vec<_> = files.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/workspace/up/a.txt",
            "/workspace/up/sub/deep/b.bin",
            "/workspace/up/c"
        ]
    );
    assert!(files.files.iter().all(|f| f.uid == 1000 && f.mode == 0o644));
    assert_eq!(files.files[1].size, 300_000);
    let req = Request::get(format!(
        "/v1/sandboxes/{id}/files?path=/workspace/up/sub/deep/b.bin"
    ))
    .body(Body::empty())
    .unwrap();
    let body = a
        .send(req)
        .await
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], &big[..]);
}

#[tokio::test]
async fn multipart_upload_refuses_escaping_names() {
    let a = app().await;
    let id = sandbox(&a).await;
    for name in ["../evil", "a/../../evil", "/etc/passwd", "..", "."] {
        let (status, v) = upload(&a, &id, "dir=/workspace", &[(name, b"x")]).await;
        assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (status, v) = upload(&a, &id, "dir=relative", &[("a", b"x")]).await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
    // Not multipart at all.
    let (status, v) = a
        .call(
            Method::POST,
            &format!("/v1/sandboxes/{id}/files/upload?dir=/workspace"),
            Some("{}"),
        )
        .await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
}

#[test]
fn upload_targets() {
    use crate::files::upload_target;
    assert_eq!(upload_target("/w/", "a/./b").unwrap(), "/w/a/b");
    assert_eq!(upload_target("/", "x").unwrap(), "/x");
    assert!(upload_target("/w", "a/..").is_err());
    assert!(upload_target("/w", "//a").is_err());
    assert!(upload_target("/w", "").is_err());
}

#[tokio::test]
async fn archive_streams_the_tree() {
    let a = app().await;
    let id = sandbox(&a).await;
    let (status, v) = upload(
        &a,
        &id,
        "dir=/workspace/proj",
        &[("README", b"hello"), ("src/main.rs", b"fn main() {}")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    a.t.runtime
        .symlink(&id, "/workspace/proj/link", "README")
        .unwrap();
    let req = Request::get(format!(
        "/v1/sandboxes/{id}/files/archive?path=/workspace/proj"
    ))
    .body(Body::empty())
    .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/x-tar");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut archive = tar::Archive::new(&body[..]);
    let mut seen = Vec::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().display().to_string();
        let kind = e.header().entry_type();
        let mut content = String::new();
        if kind.is_file() {
            std::io::Read::read_to_string(&mut e, &mut content).unwrap();
        }
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        seen.push((path, content, link));
    }
    seen.sort();
    let want = |p: &str, c: &str, l: &str| (p.to_string(), c.to_string(), l.to_string());
    assert_eq!(
        seen,
        vec![
            want("README", "hello", ""),
            want("link", "", "README"),
            want("src", "", ""),
            want("src/main.rs", "fn main() {}", ""),
        ]
    );

    for (path, code, status) in [
        (
            "/workspace/proj/README",
            "not_a_directory",
            StatusCode::BAD_REQUEST,
        ),
        ("/nope", "file_not_found", StatusCode::NOT_FOUND),
        ("rel", "invalid_request", StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = a
            .call(
                Method::GET,
                &format!("/v1/sandboxes/{id}/files/archive?path={path}"),
                None,
            )
            .await;
        assert_error(s, &v, status, code);
    }
}

#[tokio::test]
async fn expose_port_returns_the_address() {
    let a = app().await;
    let id = sandbox(&a).await;
    let uri = format!("/v1/sandboxes/{id}/processes");
    let (status, v) = a
        .call(
            Method::POST,
            &uri,
            Some(r#"{"cmd":["sleep","100"],"expose_port":8080}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let address = v["address"].as_str().unwrap().to_string();
    assert!(address.starts_with("127.0.0.1:"), "{v}");
    assert_eq!(v["url"], format!("http://{address}"));
    // Only the create response carries it.
    let (_, got) = a
        .call(Method::GET, &format!("{uri}/{}", v["pid"]), None)
        .await;
    assert!(got.get("address").is_none(), "{got}");
    // A bad port is refused before anything starts.
    let (status, v) = a
        .call(
            Method::POST,
            &uri,
            Some(r#"{"cmd":["sleep","100"],"expose_port":0}"#),
        )
        .await;
    assert_error(status, &v, StatusCode::BAD_REQUEST, "invalid_request");
}
