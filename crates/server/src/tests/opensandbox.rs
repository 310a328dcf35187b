//! OpenSandbox's surface over HTTP on the fake runtime: its error shape and request ids,
//! bad input that changes nothing, state and metadata mapping, filters and pages,
//! endpoints, and its own auth (API key header, per-sandbox execd tokens).

use super::*;

const OS: &str = "/opensandbox/v1";

async fn os_call(a: &App, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    a.call(
        method,
        &format!("{OS}{uri}"),
        body.map(|b| b.to_string()).as_deref(),
    )
    .await
}

fn assert_os_error(v: &Value, code: &str) {
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(
        v.get("error").is_none(),
        "OpenSandbox's shape, not Warren's: {v}"
    );
}

#[tokio::test]
async fn bad_creates_are_typed_and_change_nothing() {
    let a = app().await;
    for (body, status, code) in [
        (
            json!({"image": {"uri": "host"}, "resourceLimits": {"cpu": "lots"}}),
            400,
            "WARREN::INVALID_REQUEST",
        ),
        (
            json!({"image": {"uri": "host"}, "resourceLimits": {"memory": "12Qi"}}),
            400,
            "WARREN::INVALID_REQUEST",
        ),
        (
            json!({"image": {"uri": "host"}, "resourceLimits": {"gpu": "1"}}),
            501,
            "WARREN::NOT_SUPPORTED",
        ),
        (
            json!({"image": {"uri": "host"}, "timeout": 30}),
            400,
            "WARREN::INVALID_REQUEST",
        ),
        (
            json!({"image": {"uri": "host"}, "metadata": {"opensandbox.image": "x"}}),
            400,
            "WARREN::INVALID_REQUEST",
        ),
        (
            json!({"image": {"uri": "no/such-image:latest"}}),
            404,
            "WARREN::IMAGE_NOT_FOUND",
        ),
        (
            json!({"image": {"uri": "host"}, "snapshotId": "snap-x"}),
            400,
            "WARREN::INVALID_REQUEST",
        ),
        (json!({}), 400, "WARREN::INVALID_REQUEST"),
        (
            json!({"image": {"uri": "host"}, "volumes": [{"name": "v", "mountPath": "/m"}]}),
            400,
            "WARREN::INVALID_REQUEST",
        ),
        (
            json!({"image": {"uri": "host"}, "platform": {"os": "windows", "arch": "amd64"}}),
            400,
            "WARREN::INVALID_REQUEST",
        ),
    ] {
        let (s, v) = os_call(&a, Method::POST, "/sandboxes", Some(body.clone())).await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert_os_error(&v, code);
    }
    let (s, v) = a
        .call(Method::POST, &format!("{OS}/sandboxes"), Some("{not json"))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_os_error(&v, "WARREN::INVALID_REQUEST");
    assert!(
        a.t.runtime.live().is_empty(),
        "a refused create made a sandbox"
    );
    let (_, list) = os_call(&a, Method::GET, "/sandboxes", None).await;
    assert_eq!(list["pagination"]["totalItems"], 0, "{list}");
}

#[tokio::test]
async fn sandboxes_list_page_and_patch_the_opensandbox_way() {
    let a = app().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = json!({
            "image": {"uri": "host"},
            "timeout": 600,
            "metadata": {"team": "a", "idx": i.to_string()},
            "resourceLimits": {"cpu": "500m", "memory": "256Mi"},
        });
        let (s, v) = os_call(&a, Method::POST, "/sandboxes", Some(body)).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        assert_eq!(v["status"]["state"], "Running", "{v}");
        assert_eq!(
            v["metadata"],
            json!({"team": "a", "idx": i.to_string()}),
            "Warren's own keys hidden: {v}"
        );
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    // Warren's view keeps the limits and the image the client named.
    let (_, native) = a
        .call(Method::GET, &format!("/v1/sandboxes/{}", ids[0]), None)
        .await;
    assert_eq!(native["resources"]["cpus"], 0.5, "{native}");
    assert_eq!(native["resources"]["memory_mib"], 256, "{native}");
    assert_eq!(native["metadata"]["opensandbox.image"], "host", "{native}");

    // metadata AND (one url-encoded parameter), state OR, pages.
    let (s, v) = os_call(
        &a,
        Method::GET,
        "/sandboxes?metadata=team%3Da%26idx%3D1",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["items"][0]["id"], ids[1].as_str());
    let (_, v) = os_call(
        &a,
        Method::GET,
        "/sandboxes?state=Paused&state=Running&pageSize=2",
        None,
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(
        v["pagination"],
        json!({"page": 1, "pageSize": 2, "totalItems": 3, "totalPages": 2, "hasNextPage": true})
    );
    let (_, v) = os_call(
        &a,
        Method::GET,
        "/sandboxes?state=Running&pageSize=2&page=2",
        None,
    )
    .await;
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["pagination"]["hasNextPage"], false);
    let (_, v) = os_call(&a, Method::GET, "/sandboxes?state=Paused", None).await;
    assert_eq!(v["pagination"]["totalItems"], 0, "{v}");
    let (s, v) = os_call(&a, Method::GET, "/sandboxes?pageSize=0", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // PATCH metadata: set and remove; Warren's keys cannot be touched.
    let (s, v) = os_call(
        &a,
        Method::PATCH,
        &format!("/sandboxes/{}/metadata", ids[0]),
        Some(json!({"owner": "me", "idx": null})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["metadata"], json!({"team": "a", "owner": "me"}), "{v}");
    let (s, v) = os_call(
        &a,
        Method::PATCH,
        &format!("/sandboxes/{}/metadata", ids[0]),
        Some(json!({"opensandbox.image": null})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");

    // Pause → Paused; resume.
    let (s, _) = os_call(
        &a,
        Method::POST,
        &format!("/sandboxes/{}/pause", ids[0]),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (_, v) = os_call(&a, Method::GET, &format!("/sandboxes/{}", ids[0]), None).await;
    assert_eq!(v["status"]["state"], "Paused", "{v}");
    // Pausing again is a no-op, as on Warren's own API.
    let (s, v) = os_call(
        &a,
        Method::POST,
        &format!("/sandboxes/{}/pause", ids[0]),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (s, _) = os_call(
        &a,
        Method::POST,
        &format!("/sandboxes/{}/resume", ids[0]),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);

    // Renew: an absolute time in the future.
    let want = chrono::Utc::now() + chrono::Duration::minutes(30);
    let (s, v) = os_call(
        &a,
        Method::POST,
        &format!("/sandboxes/{}/renew-expiration", ids[0]),
        Some(json!({"expiresAt": want})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(v["expiresAt"].clone()).unwrap();
    assert!((got - want).num_seconds().abs() <= 1, "{got} vs {want}");
    let past = chrono::Utc::now() - chrono::Duration::minutes(1);
    let (s, _) = os_call(
        &a,
        Method::POST,
        &format!("/sandboxes/{}/renew-expiration", ids[0]),
        Some(json!({"expiresAt": past})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Delete: 204, then 404.
    let (s, _) = os_call(&a, Method::DELETE, &format!("/sandboxes/{}", ids[2]), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = os_call(&a, Method::GET, &format!("/sandboxes/{}", ids[2]), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_os_error(&v, "WARREN::SANDBOX_NOT_FOUND");
}

#[tokio::test]
async fn endpoints_request_ids_and_unknown_routes() {
    let a = app().await;
    let (_, v) = os_call(
        &a,
        Method::POST,
        "/sandboxes",
        Some(json!({"image": {"uri": "host"}})),
    )
    .await;
    let id = v["id"].as_str().unwrap().to_string();
    let req = Request::get(format!("{OS}/sandboxes/{id}/endpoints/44772"))
        .header(header::HOST, "warren.example:7400")
        .header("x-request-id", "req-1")
        .body(Body::empty())
        .unwrap();
    let resp = a.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "req-1");
    assert_eq!(resp.headers()["open-sandbox-origin"], "template");
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(
        v["endpoint"],
        format!("warren.example:7400/opensandbox/execd/{id}")
    );
    assert_eq!(v["headers"], json!({}), "no keys, no token: {v}");
    let (s, v) = os_call(
        &a,
        Method::GET,
        &format!("/sandboxes/{id}/endpoints/8000"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        v["endpoint"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/v1/sandboxes/{id}/proxy/8000")),
        "{v}"
    );
    for bad in ["0", "70000", "http"] {
        let (s, v) = os_call(
            &a,
            Method::GET,
            &format!("/sandboxes/{id}/endpoints/{bad}"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, v) = os_call(&a, Method::GET, "/sandboxes/sb-nope/endpoints/44772", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_os_error(&v, "WARREN::SANDBOX_NOT_FOUND");
    // Every answer has a request id, even one the client did not ask for.
    let resp = a
        .send(
            Request::get(format!("{OS}/nowhere"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(!resp.headers()["x-request-id"].is_empty());
    let (s, v) = os_call(&a, Method::GET, "/templates", None).await;
    assert_eq!(s, StatusCode::NOT_IMPLEMENTED);
    assert_os_error(&v, "WARREN::NOT_SUPPORTED");
    let (s, _) = os_call(
        &a,
        Method::POST,
        "/metrics/events",
        Some(json!({"eventType": "sandbox.create"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn keys_and_tokens_guard_the_surface() {
    let (_engine, router, auth, key) = keyed().await;
    let send = |req: Request<Body>| {
        let r = router.clone();
        async move {
            let resp = r.oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let get = |uri: String, headers: &[(&str, &str)]| {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).unwrap()
    };
    // No key, a wrong key, Warren's bearer key (also accepted).
    let (s, v) = send(get(format!("{OS}/sandboxes"), &[])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_os_error(&v, "WARREN::UNAUTHORIZED");
    let (s, _) = send(get(
        format!("{OS}/sandboxes"),
        &[("open-sandbox-api-key", "wk_0_0")],
    ))
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let bearer = format!("Bearer {key}");
    let (s, _) = send(get(
        format!("{OS}/sandboxes"),
        &[("authorization", &bearer)],
    ))
    .await;
    assert_eq!(s, StatusCode::OK);
    // Two sandboxes; each endpoint carries its own token.
    let mut made = Vec::new();
    for _ in 0..2 {
        let req = Request::post(format!("{OS}/sandboxes"))
            .header("open-sandbox-api-key", &key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"image": {"uri": "host"}}).to_string()))
            .unwrap();
        let (s, v) = send(req).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        let (_, ep) = send(get(
            format!("{OS}/sandboxes/{id}/endpoints/44772"),
            &[("open-sandbox-api-key", &key)],
        ))
        .await;
        let token = ep["headers"]["X-EXECD-ACCESS-TOKEN"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(token, auth.tokens.token_for(&id));
        made.push((id, token));
    }
    let (a_id, a_token) = &made[0];
    let (b_id, _) = &made[1];
    let ping = |id: &str| format!("/opensandbox/execd/{id}/ping");
    let (s, _) = send(get(ping(a_id), &[("x-execd-access-token", a_token)])).await;
    assert_eq!(s, StatusCode::OK, "a sandbox's token opens its execd");
    let (s, v) = send(get(ping(b_id), &[("x-execd-access-token", a_token)])).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_os_error(&v, "WARREN::PERMISSION_DENIED");
    let (s, v) = send(get(ping(b_id), &[])).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    // A sandbox token opens nothing of the lifecycle API, nor Warren's own.
    let (s, _) = send(get(
        format!("{OS}/sandboxes/{a_id}"),
        &[("x-execd-access-token", a_token)],
    ))
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = send(get(
        format!("/v1/sandboxes/{a_id}"),
        &[("x-execd-access-token", a_token)],
    ))
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A signed link to a port needs no header, only for that sandbox and port, until it
    // expires.
    let exp = chrono::Utc::now().timestamp() + 600;
    let (s, ep) = send(get(
        format!("{OS}/sandboxes/{a_id}/endpoints/8000?expires={exp}"),
        &[("open-sandbox-api-key", &key)],
    ))
    .await;
    assert_eq!(s, StatusCode::OK, "{ep}");
    let endpoint = ep["endpoint"].as_str().unwrap();
    let path = &endpoint[endpoint.find("/v1/").unwrap()..];
    assert!(
        path.starts_with(&format!("/v1/sandboxes/{a_id}/proxy/8000/~{exp}.")),
        "{path}"
    );
    let (s, v) = send(get(format!("{path}/index.html"), &[])).await;
    assert_ne!(
        s,
        StatusCode::UNAUTHORIZED,
        "a signed link opens the proxy: {v}"
    );
    let other_port = path.replace("/proxy/8000/", "/proxy/8001/");
    let other_sandbox = path.replace(a_id.as_str(), b_id);
    let mut tampered = path.to_string();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    let expired = format!(
        "/v1/sandboxes/{a_id}/proxy/8000/~{}",
        auth.tokens
            .route_token(a_id, 8000, chrono::Utc::now().timestamp() - 1)
    );
    for bad in [other_port, other_sandbox, tampered, expired] {
        let (s, _) = send(get(format!("{bad}/index.html"), &[])).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let (s, _) = send(get(
        format!("{OS}/sandboxes/{a_id}/endpoints/8000?expires=12"),
        &[("open-sandbox-api-key", &key)],
    ))
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an expiry in the past");

    // The server-proxy mode's API key opens execd too.
    let (s, _) = send(get(ping(b_id), &[("open-sandbox-api-key", &key)])).await;
    assert_eq!(s, StatusCode::OK);
}
