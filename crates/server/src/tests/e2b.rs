//! E2B's control plane over HTTP on the fake runtime: its error shape, bad input that
//! changes nothing, idempotent creates, list paging, pause/connect, and its key header.

use super::*;

async fn e2b_call(a: &App, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    a.call(method, uri, body.map(|b| b.to_string()).as_deref())
        .await
}

fn assert_e2b_error(v: &Value, code: u16) {
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

#[tokio::test]
async fn bad_creates_are_e2b_errors_and_change_nothing() {
    let a = app().await;
    for (body, code) in [
        (json!({"templateID": "no-such-template"}), 404),
        (
            json!({"templateID": "base", "autoPause": true, "autoPauseMemory": false, "autoResume": {"enabled": true}}),
            400,
        ),
        (
            json!({"templateID": "base", "metadata": {"e2b.templateID": "x"}}),
            400,
        ),
        (
            json!({"templateID": "base", "network": {"dnsServers": ["1.1.1.1"]}}),
            400,
        ),
        (json!({"templateID": "base", "timeout": 999_999_999}), 400),
        (json!({"timeout": 10}), 400),
    ] {
        let (s, v) = e2b_call(&a, Method::POST, "/v2/sandboxes", Some(body.clone())).await;
        assert_eq!(s.as_u16(), code, "{body}: {v}");
        assert_e2b_error(&v, code);
    }
    assert!(
        a.t.runtime.live().is_empty(),
        "a refused create made a sandbox"
    );
    let (s, v) = e2b_call(&a, Method::GET, "/sandboxes/sb-nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_e2b_error(&v, 404);
}

#[tokio::test]
async fn creates_are_idempotent_lists_page_and_pause_is_409_twice() {
    let a = app().await;
    let create = |key: &'static str| {
        let req = Request::post("/v2/sandboxes")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key)
            .body(Body::from(
                json!({"templateID": "base", "metadata": {"k": "v"}}).to_string(),
            ))
            .unwrap();
        a.send(req)
    };
    let first = create("same-key").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value =
        serde_json::from_slice(&first.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let again: Value = serde_json::from_slice(
        &create("same-key")
            .await
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(
        first["sandboxID"], again["sandboxID"],
        "a retried create made a second sandbox"
    );
    assert_eq!(first["envdVersion"], "0.6.13");
    assert_eq!(a.t.runtime.live().len(), 1);
    for _ in 0..2 {
        e2b_call(
            &a,
            Method::POST,
            "/v2/sandboxes",
            Some(json!({"templateID": "base", "metadata": {"k": "v"}})),
        )
        .await;
    }
    // Pages of 2: the token leads to the rest, oldest first; desc reverses.
    let resp = a
        .send(
            Request::get("/v2/sandboxes?limit=2&metadata=k%3Dv")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let token = resp.headers()["x-next-token"].to_str().unwrap().to_string();
    let page1: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(page1.as_array().unwrap().len(), 2);
    let resp = a
        .send(
            Request::get(format!(
                "/v2/sandboxes?limit=2&metadata=k%3Dv&nextToken={token}"
            ))
            .body(Body::empty())
            .unwrap(),
        )
        .await;
    assert!(resp.headers().get("x-next-token").is_none());
    let page2: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(page2.as_array().unwrap().len(), 1);
    let (_, desc) = e2b_call(&a, Method::GET, "/v2/sandboxes?order=desc", None).await;
    assert_eq!(desc[0]["sandboxID"], page2[0]["sandboxID"], "newest first");
    // Pause: 204, then 409; state paused; connect resumes with 201.
    let id = first["sandboxID"].as_str().unwrap();
    let (s, _) = e2b_call(&a, Method::POST, &format!("/sandboxes/{id}/pause"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = e2b_call(&a, Method::POST, &format!("/sandboxes/{id}/pause"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, v) = e2b_call(&a, Method::GET, "/v2/sandboxes?state=paused", None).await;
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    // A timeout past the server's maximum is refused before anything changes.
    let (s, v) = e2b_call(
        &a,
        Method::POST,
        &format!("/v2/sandboxes/{id}/connect"),
        Some(json!({"timeout": 1_000_000_000_000_000_000u64})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, v) = e2b_call(&a, Method::GET, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(v["state"], "paused", "a refused connect resumed it");
    // The first connect resumes it (201), the next finds it running (200).
    for want in [StatusCode::CREATED, StatusCode::OK] {
        let (s, _) = e2b_call(
            &a,
            Method::POST,
            &format!("/v2/sandboxes/{id}/connect"),
            Some(json!({"timeout": 60})),
        )
        .await;
        assert_eq!(s, want);
    }
    let (s, _) = e2b_call(&a, Method::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = e2b_call(&a, Method::DELETE, &format!("/sandboxes/{id}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_e2b_key_header_is_required() {
    let (_engine, router, auth, key) = keyed().await;
    let call = |headers: Vec<(&'static str, String)>| {
        let r = router.clone();
        async move {
            let mut b =
                Request::post("/v2/sandboxes").header(header::CONTENT_TYPE, "application/json");
            for (k, v) in headers {
                b = b.header(k, v);
            }
            let resp = r
                .oneshot(
                    b.body(Body::from(json!({"templateID": "base"}).to_string()))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (s, v) = call(vec![]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_e2b_error(&v, 401);
    let (s, v) = call(vec![("x-api-key", "wk_0_0".into())]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_e2b_error(&v, 401);
    let (s, v) = call(vec![("x-api-key", key.clone())]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["sandboxID"].as_str().unwrap();
    assert_eq!(v["envdAccessToken"], auth.tokens.token_for(id));
}

/// envd on the fake runtime: routing by `E2b-Sandbox-Id`, the access token, Connect's
/// error shapes for bad input (unary and streaming), a gone sandbox as "was not found",
/// `/health`, and signed file URLs that are refused without a valid signature.
#[tokio::test]
async fn envd_checks_its_token_and_answers_connect_errors() {
    let (_engine, router, auth, key) = keyed().await;
    let send = |req: Request<Body>| {
        let r = router.clone();
        async move {
            let resp = r.oneshot(req).await.unwrap();
            let status = resp.status();
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, ct, bytes)
        }
    };
    let create = || {
        Request::post("/v2/sandboxes")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-api-key", &key)
            .body(Body::from(json!({"templateID": "base"}).to_string()))
            .unwrap()
    };
    let (s, _, b) = send(create()).await;
    assert_eq!(s, StatusCode::CREATED);
    let made: Value = serde_json::from_slice(&b).unwrap();
    let id = made["sandboxID"].as_str().unwrap().to_string();
    let token = made["envdAccessToken"].as_str().unwrap().to_string();
    let (_, _, b) = send(create()).await;
    let other: Value = serde_json::from_slice(&b).unwrap();
    let other_token = other["envdAccessToken"].as_str().unwrap().to_string();

    let rpc = |method: &str, headers: Vec<(&str, String)>, ct: &str, body: Vec<u8>| {
        let mut b = Request::post(format!("/process.Process/{method}"))
            .header(header::CONTENT_TYPE, ct)
            .header("connect-protocol-version", "1");
        for (k, v) in headers {
            b = b.header(k, v);
        }
        b.body(Body::from(body)).unwrap()
    };
    let unary_error = |s: StatusCode, b: &[u8], status: u16, code: &str| {
        assert_eq!(s.as_u16(), status, "{}", String::from_utf8_lossy(b));
        let v: Value = serde_json::from_slice(b).unwrap();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    };
    let with = |t: &str| {
        vec![
            ("e2b-sandbox-id", id.clone()),
            ("x-access-token", t.to_string()),
        ]
    };
    let json_ct = "application/json";

    // Routing and the token.
    let (s, _, b) = send(rpc("List", vec![], json_ct, b"{}".to_vec())).await;
    unary_error(s, &b, 400, "invalid_argument");
    let (s, _, b) = send(rpc(
        "List",
        vec![("e2b-sandbox-id", id.clone())],
        json_ct,
        b"{}".to_vec(),
    ))
    .await;
    unary_error(s, &b, 401, "unauthenticated");
    let (s, _, b) = send(rpc("List", with(&other_token), json_ct, b"{}".to_vec())).await;
    unary_error(s, &b, 401, "unauthenticated");
    // An API key is not an access token.
    let (s, _, b) = send(rpc("List", with(&key), json_ct, b"{}".to_vec())).await;
    unary_error(s, &b, 401, "unauthenticated");

    // Bad input, with the right token.
    let (s, _, b) = send(rpc("List", with(&token), "application/proto", vec![1, 2])).await;
    unary_error(s, &b, 501, "unimplemented");
    let (s, _, b) = send(rpc(
        "SendSignal",
        with(&token),
        json_ct,
        b"{not json".to_vec(),
    ))
    .await;
    unary_error(s, &b, 400, "invalid_argument");
    let (s, _, b) = send(rpc("SendSignal", with(&token), json_ct, b"{}".to_vec())).await;
    unary_error(s, &b, 400, "invalid_argument");
    let (s, _, b) = send(rpc("NoSuchMethod", with(&token), json_ct, b"{}".to_vec())).await;
    unary_error(s, &b, 501, "unimplemented");
    // A stream's error is its end-of-stream message, under 200.
    let (s, ct, b) = send(rpc(
        "Start",
        with(&token),
        "application/connect+json",
        vec![0, 0, 0, 0, 9, b'{'],
    ))
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ct, "application/connect+json");
    assert_eq!(b[0], 0x02, "not an end-of-stream envelope: {b:?}");
    let end: Value = serde_json::from_slice(&b[5..]).unwrap();
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");

    // /health, then the sandbox is killed: envd says it "was not found" (what the SDK
    // reads as killed), the health probe answers 502.
    let health = |t: &str| {
        Request::get("/health")
            .header("e2b-sandbox-id", &id)
            .header("x-access-token", t)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(health(&token)).await.0, StatusCode::NO_CONTENT);
    let kill = Request::delete(format!("/sandboxes/{id}"))
        .header("x-api-key", &key)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(kill).await.0, StatusCode::NO_CONTENT);
    let (s, _, b) = send(health(&token)).await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
    assert!(String::from_utf8_lossy(&b).contains("was not found"));
    let (s, _, b) = send(rpc("List", with(&token), json_ct, b"{}".to_vec())).await;
    unary_error(s, &b, 503, "unavailable");
    assert!(String::from_utf8_lossy(&b).contains("was not found"));

    // Signed file URLs arrive without headers: a wrong or expired signature opens nothing.
    let other_id = other["sandboxID"].as_str().unwrap();
    let sig = sign("/a.txt", "read", "", &auth.tokens.token_for(other_id), None);
    let get = |q: String| {
        Request::get(format!("/files?{q}"))
            .body(Body::empty())
            .unwrap()
    };
    let (s, _, b) = send(get(format!("path=/a.txt&signature={sig}x"))).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (s, _, b) = send(get(format!("path=/b.txt&signature={sig}"))).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let old = chrono::Utc::now().timestamp() - 10;
    let expired = sign(
        "/a.txt",
        "read",
        "",
        &auth.tokens.token_for(other_id),
        Some(old),
    );
    let (s, _, b) = send(get(format!(
        "path=/a.txt&signature={expired}&signature_expiration={old}"
    )))
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&b).contains("expired"));
    let (s, _, _) = send(get("path=/a.txt".into())).await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "no sandbox named and no signature"
    );
}

/// E2B's signature, computed independently of the server's code (as the SDK does).
fn sign(path: &str, op: &str, user: &str, token: &str, exp: Option<i64>) -> String {
    use base64::Engine as _;
    use sha2::Digest;
    let raw = match exp {
        Some(e) => format!("{path}:{op}:{user}:{token}:{e}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    let d = sha2::Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(d)
    )
}
