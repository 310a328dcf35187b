//! `/v1/sandboxes/{id}/ports/{port}` (a host address forwarded to a port inside the sandbox)
//! and `/v1/sandboxes/{id}/proxy/{port}/...` (an HTTP/1.1 reverse proxy to it, with streamed
//! bodies and WebSocket / `Upgrade` support).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Json;
use hyper_util::rt::TokioIo;
use warren_api::{ErrorBody, PortAddress};
use warren_engine::Engine;

use crate::error::ApiError;
use warren_api::ErrorCode;

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn bad_path(rejection: PathRejection) -> ApiError {
    ApiError::invalid_request(rejection.body_text())
}

fn parse_port(port: &str) -> Result<u16, ApiError> {
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ApiError::invalid_request(format!(
            "port must be a number between 1 and 65535, got {port:?}"
        ))),
    }
}

/// Forward a port to an address on the server's loopback.
///
/// The first call opens a listener on `127.0.0.1` (an ephemeral port); later calls return the
/// same address. Every TCP connection to it is a connection to `127.0.0.1:{port}` inside the
/// sandbox (closed at once when nothing listens there). The listener and its connections are
/// closed when the sandbox is deleted.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/ports/{port}", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id"),
           ("port" = u16, Path, description = "Port inside the sandbox, 1-65535")),
    responses(
        (status = 200, description = "The forwarded address", body = PortAddress),
        (status = 400, description = "`invalid_request`: bad port", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the sandbox is not running", body = ErrorBody),
        (status = 501, description = "`not_supported`: the runtime has no ports", body = ErrorBody),
    ))]
pub(crate) async fn port_address(
    State(engine): State<Engine>,
    axum::Extension(tokens): axum::Extension<Option<crate::auth::SandboxTokens>>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<PortAddress>, ApiError> {
    let Path((id, port)) = path.map_err(bad_path)?;
    let port = parse_port(&port)?;
    let mut address = engine.forward_port(&id, port).await?;
    // With API keys on: the token that opens this sandbox's proxy (and nothing else).
    address.access_token = tokens.map(|t| t.token_for(&id));
    Ok(Json(address))
}

/// Reverse-proxy an HTTP request to a port inside the sandbox.
///
/// Any method. The part of the path after `/proxy/{port}` (and the query) is the target
/// inside the sandbox; `Host` becomes `127.0.0.1:{port}` and `X-Forwarded-For`,
/// `X-Forwarded-Host` and `X-Forwarded-Proto` are added. Bodies stream both ways (server-sent
/// events flow as they are produced). A request with `Connection: upgrade` (e.g. a
/// WebSocket) is forwarded as such; on a `101` answer both connections are spliced together.
#[utoipa::path(
    method(get, post, put, patch, delete, head, options),
    path = "/v1/sandboxes/{id}/proxy/{port}/{path}", tag = "ports",
    params(("id" = String, Path, description = "Sandbox id"),
           ("port" = u16, Path, description = "Port inside the sandbox, 1-65535"),
           ("path" = String, Path, description = "Path inside the sandbox, without its leading `/` (`/proxy/{port}` alone is `/`)")),
    responses(
        (status = 200, description = "Whatever the service in the sandbox answers (any status, headers and body)"),
        (status = 400, description = "`invalid_request`: bad port", body = ErrorBody),
        (status = 404, description = "`sandbox_not_found`", body = ErrorBody),
        (status = 409, description = "`invalid_state`: the sandbox is not running", body = ErrorBody),
        (status = 501, description = "`not_supported`: the runtime has no ports", body = ErrorBody),
        (status = 502, description = "`port_unreachable`: nothing listens on the port; `proxy_error`: the service did not answer HTTP", body = ErrorBody),
    ))]
pub(crate) async fn proxy(
    State(engine): State<Engine>,
    mut req: Request,
) -> Result<Response, ApiError> {
    // `/v1/sandboxes/{id}/proxy/{port}[/rest]`, split on the raw (still encoded) path.
    let raw_path = req.uri().path().to_string();
    let mut segments = raw_path.splitn(7, '/');
    let (id, port) = match (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) {
        (Some(""), Some("v1"), Some("sandboxes"), Some(id), Some("proxy"), Some(port)) => {
            (id.to_string(), port.to_string())
        }
        _ => return Err(ApiError::invalid_request("malformed proxy path")),
    };
    let port = parse_port(&port)?;
    let rest = segments.next().unwrap_or("");
    let target = match req.uri().query() {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    };
    let target: Uri = target
        .parse()
        .map_err(|e| ApiError::invalid_request(format!("bad target path: {e}")))?;

    let stream = engine.connect_port(&id, port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(proxy_error)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("proxy connection: {e}");
        }
    });

    let upgrade = wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let (parts, body) = req.into_parts();
    let mut out = hyper::Request::builder()
        .method(parts.method.clone())
        .uri(target)
        .version(hyper::Version::HTTP_11)
        .body(body)
        .map_err(|e| ApiError::invalid_request(format!("cannot forward the request: {e}")))?;
    let headers = out.headers_mut();
    copy_end_to_end(&parts.headers, headers);
    if let Some(v) = parts.headers.get(header::HOST) {
        headers.insert(HeaderName::from_static("x-forwarded-host"), v.clone());
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
    if let Some(ip) = peer {
        let value = match parts.headers.get("x-forwarded-for").map(|v| v.to_str()) {
            Some(Ok(prev)) => format!("{prev}, {ip}"),
            _ => ip.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static("x-forwarded-for"), v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) {
        headers.insert(header::HOST, v);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(v) = parts.headers.get(header::UPGRADE) {
            headers.insert(header::UPGRADE, v.clone());
        }
    }

    let mut resp = sender.send_request(out).await.map_err(proxy_error)?;

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ApiError::new(
                ErrorCode::ProxyError,
                "the service switched protocols without being asked to",
            ));
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let mut answer = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        if let Some(h) = answer.headers_mut() {
            // A 101 keeps its Connection and Upgrade headers: they are the answer.
            for (name, value) in resp.headers() {
                h.append(name.clone(), value.clone());
            }
        }
        // An upgraded connection is a stream: it keeps its place until it closes.
        let permit = parts
            .extensions
            .get::<crate::streams::StreamPermit>()
            .cloned();
        tokio::spawn(async move {
            let _permit = permit;
            let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!("proxy upgrade failed: {e}");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!("upgraded proxy connection: {e}");
            }
        });
        return answer
            .body(Body::empty())
            .map_err(|e| ApiError::new(ErrorCode::ProxyError, e.to_string()));
    }

    let (parts, body) = resp.into_parts();
    let mut answer = Response::builder().status(parts.status);
    if let Some(h) = answer.headers_mut() {
        copy_end_to_end(&parts.headers, h);
    }
    answer
        .body(Body::new(body))
        .map_err(|e| ApiError::new(ErrorCode::ProxyError, e.to_string()))
}

fn proxy_error(e: hyper::Error) -> ApiError {
    ApiError::new(
        ErrorCode::ProxyError,
        format!("the service in the sandbox did not answer HTTP/1.1: {e}"),
    )
}

/// True when the request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Copies every header except hop-by-hop ones (the fixed list and any named in
/// `Connection`) and `Host`.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|t| t == n) || name == header::HOST {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// The routes of this module (merged into [`crate::router`]).
pub(crate) fn routes() -> utoipa_axum::router::OpenApiRouter<Engine> {
    use axum::extract::DefaultBodyLimit;
    use axum::routing::any;
    utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(port_address))
        // The proxy takes every method and a catch-all `{*path}`, which an OpenAPI path
        // cannot spell: routed by hand, documented by `PortsDoc` (and `proxy_without_path`).
        // Proxied bodies stream through: no body limit on these routes.
        .route(
            "/v1/sandboxes/{id}/proxy/{port}",
            any(proxy).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/sandboxes/{id}/proxy/{port}/",
            any(proxy).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/sandboxes/{id}/proxy/{port}/{*path}",
            any(proxy).layer(DefaultBodyLimit::disable()),
        )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use warren_api::CreateSandboxRequest;
    use warren_testkit::fake::ports::{ECHO_PORT, HTTP_PORT};

    use crate::testing::TestServer;

    /// Sends `request` raw and reads the whole answer (the server closes: `Connection: close`).
    async fn raw(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("timed out")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    async fn get(srv: &TestServer, path: &str) -> String {
        raw(
            srv.addr,
            &format!(
                "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                srv.addr
            ),
        )
        .await
    }

    fn status(resp: &str) -> u16 {
        resp.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn body(resp: &str) -> &str {
        resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
    }

    fn error_code(resp: &str) -> String {
        let v: Value = serde_json::from_str(body(resp)).unwrap_or(Value::Null);
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }

    async fn sandbox(srv: &TestServer) -> String {
        srv.engine
            .engine
            .create(CreateSandboxRequest::default())
            .await
            .unwrap()
            .id
    }

    #[tokio::test]
    async fn port_address_route() {
        let srv = TestServer::start().await;
        let id = sandbox(&srv).await;
        let resp = get(&srv, &format!("/v1/sandboxes/{id}/ports/{HTTP_PORT}")).await;
        assert_eq!(status(&resp), 200, "{resp}");
        let v: Value = serde_json::from_str(body(&resp)).unwrap();
        assert_eq!(v["port"], HTTP_PORT);
        let address = v["address"].as_str().unwrap().to_string();
        assert!(address.starts_with("127.0.0.1:"), "{v}");
        assert_eq!(v["url"], format!("http://{address}"));
        // Same address the second time.
        let again = get(&srv, &format!("/v1/sandboxes/{id}/ports/{HTTP_PORT}")).await;
        let v2: Value = serde_json::from_str(body(&again)).unwrap();
        assert_eq!(v2["address"], address.as_str());
        // The address speaks to the fake HTTP server.
        let resp = raw(
            address.parse().unwrap(),
            "GET /direct HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await;
        assert!(body(&resp).starts_with("GET /direct\n"), "{resp}");

        for bad in ["0", "70000", "abc", "-1"] {
            let resp = get(&srv, &format!("/v1/sandboxes/{id}/ports/{bad}")).await;
            assert_eq!(status(&resp), 400, "{bad}: {resp}");
            assert_eq!(error_code(&resp), "invalid_request");
        }
        let resp = get(&srv, "/v1/sandboxes/sb-nope/ports/80").await;
        assert_eq!(status(&resp), 404);
        assert_eq!(error_code(&resp), "sandbox_not_found");

        // Deleting the sandbox closes the forwarded address.
        srv.engine.engine.delete(&id).await.unwrap();
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(&address).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused);
    }

    #[tokio::test]
    async fn proxy_http() {
        let srv = TestServer::start().await;
        let id = sandbox(&srv).await;
        let resp = get(
            &srv,
            &format!("/v1/sandboxes/{id}/proxy/{HTTP_PORT}/a/b%20c?x=1&y=2"),
        )
        .await;
        assert_eq!(status(&resp), 200, "{resp}");
        assert!(resp.to_ascii_lowercase().contains("x-fake: yes"), "{resp}");
        let b = body(&resp);
        assert!(b.starts_with("GET /a/b%20c?x=1&y=2\n"), "{b}");
        assert!(b.contains("\nhost: 127.0.0.1:8080\n"), "{b}");
        assert!(b.contains("\nx-forwarded-proto: http\n"), "{b}");
        assert!(
            b.contains(&format!("\nx-forwarded-host: {}\n", srv.addr)),
            "{b}"
        );
        // Hop-by-hop headers are not forwarded.
        assert!(
            b.contains("\nconnection: \n") || b.contains("\nconnection: keep-alive\n"),
            "{b}"
        );

        // Without a path: `/`.
        for path in ["", "/"] {
            let resp = get(&srv, &format!("/v1/sandboxes/{id}/proxy/{HTTP_PORT}{path}")).await;
            assert_eq!(status(&resp), 200, "{resp}");
            assert!(body(&resp).starts_with("GET /\n"), "{resp}");
        }

        // A body goes through; statuses too.
        let req = format!(
            "POST /v1/sandboxes/{id}/proxy/{HTTP_PORT}/submit HTTP/1.1\r\nhost: x\r\n\
             content-length: 5\r\nconnection: close\r\n\r\nhello"
        );
        let resp = raw(srv.addr, &req).await;
        assert_eq!(status(&resp), 200, "{resp}");
        assert!(body(&resp).starts_with("POST /submit\n"));
        assert!(body(&resp).ends_with("body: hello"), "{resp}");
        let resp = get(
            &srv,
            &format!("/v1/sandboxes/{id}/proxy/{HTTP_PORT}/status/404"),
        )
        .await;
        assert_eq!(status(&resp), 404);
    }

    #[tokio::test]
    async fn proxy_streams_sse() {
        let srv = TestServer::start().await;
        let id = sandbox(&srv).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(
            format!("GET /v1/sandboxes/{id}/proxy/{HTTP_PORT}/sse HTTP/1.1\r\nhost: x\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        // The first event arrives before the stream ends (the fake sends one per 50 ms).
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("data: 0") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("no first event")
                .unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_string();
        assert!(text.contains("text/event-stream"), "{text}");
        assert!(!text.contains("data: 2"), "buffered: {text}");
    }

    #[tokio::test]
    async fn proxy_upgrade() {
        let srv = TestServer::start().await;
        let id = sandbox(&srv).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(
            format!(
                "GET /v1/sandboxes/{id}/proxy/{HTTP_PORT}/ws HTTP/1.1\r\nhost: x\r\n\
                 connection: Upgrade\r\nupgrade: websocket\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
                .await
                .expect("no answer")
                .unwrap();
            assert_eq!(n, 1, "closed: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("upgrade: websocket"), "{head}");
        s.write_all(b"raw bytes after upgrade").await.unwrap();
        let mut echo = [0u8; 23];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(&echo, b"raw bytes after upgrade");
    }

    #[tokio::test]
    async fn proxy_errors() {
        let srv = TestServer::start().await;
        let id = sandbox(&srv).await;
        let resp = get(&srv, &format!("/v1/sandboxes/{id}/proxy/9/")).await;
        assert_eq!(status(&resp), 502, "{resp}");
        assert_eq!(error_code(&resp), "port_unreachable");
        let resp = get(&srv, &format!("/v1/sandboxes/{id}/proxy/0/")).await;
        assert_eq!(status(&resp), 400);
        let resp = get(&srv, "/v1/sandboxes/sb-nope/proxy/8080/").await;
        assert_eq!(status(&resp), 404);
        assert_eq!(error_code(&resp), "sandbox_not_found");
        // Not HTTP on the other end (the echo server sends the request back).
        let resp = get(&srv, &format!("/v1/sandboxes/{id}/proxy/{ECHO_PORT}/")).await;
        assert_eq!(status(&resp), 502, "{resp}");
        assert_eq!(error_code(&resp), "proxy_error");
    }
}
