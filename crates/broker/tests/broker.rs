//! End-to-end tests of the broker against a loopback upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use warren_broker::{Broker, BrokerConfig, BrokerError, Credential, SecretKey};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
type UpBody = UnsyncBoxBody<Bytes, Infallible>;

const ANTHROPIC_KEY: &str = "sk-ant-REAL-0123456789abcdefghij";
const OPENAI_KEY: &str = "sk-openai-REAL-abcdefghij0123456789";
const SPACED_KEY: &str = "Token realtoken0123456789";

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    uri: String,
    headers: HeaderMap,
}

/// A loopback upstream that records requests.
#[derive(Clone)]
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// When each SSE event was handed to the upstream's connection.
    sse_sent: Arc<Mutex<Vec<Instant>>>,
    /// Signalled when an upload's first body bytes arrive.
    upload_started: Arc<Notify>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = Upstream {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            sse_sent: Arc::default(),
            upload_started: Arc::new(Notify::new()),
        };
        let server = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let up = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| up.clone().handle(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        up
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
        let uri = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            uri: uri.clone(),
            headers: req.headers().clone(),
        });
        let path = req.uri().path().to_string();
        if path.ends_with("/sse") {
            let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
            let sent = self.sse_sent.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    sent.lock().unwrap().push(Instant::now());
                    let event = format!("event: tick\ndata: {{\"n\":{i}}}\n\n");
                    if tx.send_data(Bytes::from(event)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            let resp = Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(body.boxed_unsync())
                .unwrap();
            return Ok(resp);
        }
        if path.ends_with("/upload") {
            let mut body = req.into_body();
            let mut total = 0usize;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    if first && !data.is_empty() {
                        first = false;
                        self.upload_started.notify_one();
                    }
                }
            }
            return Ok(Response::new(full(total.to_string())));
        }
        if path.ends_with("/slow") {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let mut resp = Response::new(full(format!("{{\"ok\":true,\"uri\":\"{uri}\"}}")));
        resp.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        // A keep-alive/connection pair the broker must not pass back.
        resp.headers_mut()
            .insert("keep-alive", "timeout=5".parse().unwrap());
        if path.ends_with("/echo-key") {
            if let Some(v) = req.headers().get("x-api-key") {
                resp.headers_mut().insert("x-echo", v.clone());
            }
            resp.headers_mut()
                .insert("x-harmless", "1".parse().unwrap());
        }
        Ok(resp)
    }
}

fn full(s: impl Into<Bytes>) -> UpBody {
    Full::new(s.into()).boxed_unsync()
}

fn creds(up: &Upstream) -> Vec<Credential> {
    vec![
        Credential {
            upstream: format!("http://{}/v1", up.addr),
            header: "x-api-key".into(),
            value: ANTHROPIC_KEY.into(),
            base_url_env: "ANTHROPIC_BASE_URL".into(),
            token_env: "ANTHROPIC_API_KEY".into(),
        },
        Credential {
            upstream: format!("http://{}", up.addr),
            header: "Authorization".into(),
            value: OPENAI_KEY.into(),
            base_url_env: "OPENAI_BASE_URL".into(),
            token_env: "OPENAI_API_KEY".into(),
        },
        Credential {
            upstream: format!("http://{}/", up.addr),
            header: "authorization".into(),
            value: SPACED_KEY.into(),
            base_url_env: "OTHER_BASE_URL".into(),
            token_env: "OTHER_TOKEN".into(),
        },
    ]
}

fn env(env: &[(String, String)], name: &str) -> String {
    env.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{name} not in env"))
}

fn broker_with(cfg: BrokerConfig) -> Broker {
    Broker::new(SecretKey::from_bytes([42; 32]), cfg).unwrap()
}

fn broker() -> Broker {
    broker_with(BrokerConfig::default())
}

/// A hyper client connected to the broker as `sandbox`, over an in-memory
/// duplex pipe.
async fn connect(broker: &Broker, sandbox: &str) -> SendRequest<ReqBody> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let b = broker.clone();
    let sb = sandbox.to_string();
    tokio::spawn(async move { b.serve_connection(server_io, &sb).await });
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

fn empty() -> ReqBody {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<ReqBody> {
    let mut b = Request::get(uri).header("host", "127.0.0.1:4780");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(empty()).unwrap()
}

async fn send(
    sender: &mut SendRequest<ReqBody>,
    req: Request<ReqBody>,
) -> (StatusCode, HeaderMap, Bytes) {
    sender.ready().await.unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

fn error_code(body: &Bytes) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn x_api_key_is_swapped_and_path_query_kept() {
    let up = Upstream::start().await;
    let b = broker();
    let e = b.register("sb1", 0, creds(&up)).unwrap();
    assert_eq!(env(&e, "ANTHROPIC_BASE_URL"), "http://127.0.0.1:4780/c/0");
    assert_eq!(env(&e, "OPENAI_BASE_URL"), "http://127.0.0.1:4780/c/1");
    let token = env(&e, "ANTHROPIC_API_KEY");
    assert!(token.starts_with("wrn_"));
    let other_token = env(&e, "OPENAI_API_KEY");
    let bearer = format!("Bearer {token}");
    let cookie = format!("session={other_token}");

    let mut c = connect(&b, "sb1").await;
    let (status, headers, body) = send(
        &mut c,
        get(
            "/c/0/messages?beta=true&x=%2F",
            &[
                ("x-api-key", &token),
                // The SDK also sent the token elsewhere: must not leak.
                ("authorization", &bearer),
                ("cookie", &cookie),
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("x-kept", "yes"),
                ("anthropic-version", "2023-06-01"),
            ],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(headers["x-warren-broker"], "1");
    assert!(!headers.contains_key("keep-alive"));

    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.uri, "/v1/messages?beta=true&x=%2F");
    assert_eq!(s.headers["x-api-key"], ANTHROPIC_KEY);
    assert_eq!(s.headers.get_all("x-api-key").iter().count(), 1);
    assert_eq!(s.headers["host"], up.addr.to_string());
    assert_eq!(s.headers["x-kept"], "yes");
    assert_eq!(s.headers["anthropic-version"], "2023-06-01");
    for gone in [
        "authorization",
        "cookie",
        "x-drop-me",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
    ] {
        assert!(!s.headers.contains_key(gone), "{gone} was forwarded");
    }
    for (name, value) in s.headers.iter() {
        let v = value.to_str().unwrap_or("");
        assert!(!v.contains("wrn_"), "{name} carries a token");
    }

    // An upstream echoing the real value in a header does not leak it.
    let (status, headers, _) = send(&mut c, get("/c/0/echo-key", &[("x-api-key", &token)])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("x-echo"));
    assert_eq!(headers["x-harmless"], "1");

    // Path-less request goes to the prefix itself.
    send(&mut c, get("/c/0", &[("x-api-key", &token)])).await;
    send(
        &mut c,
        get(
            "/c/1",
            &[("authorization", &format!("Bearer {other_token}"))],
        ),
    )
    .await;
    let seen = up.seen();
    assert_eq!(seen[2].uri, "/v1");
    assert_eq!(seen[3].uri, "/");

    let usage = b.usage("sb1");
    assert_eq!(usage.len(), 3);
    assert_eq!(usage[0].requests, 3);
    assert_eq!(usage[0].status_2xx, 3);
    assert!(usage[0].bytes_down > 0);
    assert_eq!(usage[1].requests, 1);
    assert_eq!(usage[2].requests, 0);
}

#[tokio::test]
async fn bearer_authorization_is_swapped() {
    let up = Upstream::start().await;
    let b = broker();
    let e = b.register("sb1", 0, creds(&up)).unwrap();
    let mut c = connect(&b, "sb1").await;

    let t1 = env(&e, "OPENAI_API_KEY");
    let (status, _, _) = send(
        &mut c,
        get(
            "/c/1/v1/chat/completions",
            &[("authorization", &format!("Bearer {t1}"))],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A value that already has a scheme is sent as it is.
    let t2 = env(&e, "OTHER_TOKEN");
    let (status, _, _) = send(
        &mut c,
        get("/c/2/x", &[("authorization", &format!("Bearer {t2}"))]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // A bare token gets the bare value.
    let (status, _, _) = send(&mut c, get("/c/1/y", &[("authorization", &t1)])).await;
    assert_eq!(status, StatusCode::OK);

    let seen = up.seen();
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {OPENAI_KEY}").as_str()
    );
    assert_eq!(seen[1].uri, "/x");
    assert_eq!(seen[1].headers["authorization"], SPACED_KEY);
    assert_eq!(seen[2].headers["authorization"], OPENAI_KEY);
}

#[tokio::test]
async fn sse_events_arrive_one_by_one() {
    let up = Upstream::start().await;
    let b = broker();
    let e = b.register("sb1", 0, creds(&up)).unwrap();
    let token = env(&e, "ANTHROPIC_API_KEY");
    let mut c = connect(&b, "sb1").await;
    c.ready().await.unwrap();
    let resp = c
        .send_request(get(
            "/c/0/sse",
            &[("x-api-key", &token), ("accept", "text/event-stream")],
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            buf.extend_from_slice(data);
            let events = buf.windows(2).filter(|w| w == b"\n\n").count();
            while arrivals.len() < events {
                arrivals.push(Instant::now());
            }
        }
    }
    let text = String::from_utf8(buf).unwrap();
    assert_eq!(text.matches("event: tick").count(), 5, "{text}");
    assert!(text.contains("{\"n\":4}"));
    let sent = up.sse_sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 5);
    assert_eq!(arrivals.len(), 5);
    // Buffering would deliver the first event only after the last was
    // sent. Streaming delivers it ~800 ms earlier.
    assert!(
        arrivals[0] < sent[4],
        "first event arrived {:?} after the last was sent",
        arrivals[0].duration_since(sent[4])
    );
    for i in 0..4 {
        assert!(
            arrivals[i] < sent[i + 1],
            "event {i} arrived after event {} was sent",
            i + 1
        );
    }
}

#[tokio::test]
async fn token_errors() {
    let up = Upstream::start().await;
    let b = broker();
    let ea = b.register("sb-a", 0, creds(&up)).unwrap();
    let eb = b.register("sb-b", 0, creds(&up)).unwrap();
    let ta = env(&ea, "ANTHROPIC_API_KEY");
    let tb = env(&eb, "ANTHROPIC_API_KEY");
    assert_ne!(ta, tb);
    let ta_openai = env(&ea, "OPENAI_API_KEY");
    let mut c = connect(&b, "sb-a").await;

    let check =
        |(status, headers, body): (StatusCode, HeaderMap, Bytes), want: StatusCode, code: &str| {
            assert_eq!(status, want, "{body:?}");
            assert_eq!(headers["x-warren-broker"], "1");
            assert_eq!(headers["content-type"], "application/json");
            assert_eq!(error_code(&body), code);
            let text = String::from_utf8_lossy(&body);
            assert!(!text.contains("REAL"), "{text}");
        };

    // Sandbox B's token, presented on a connection from sandbox A.
    check(
        send(&mut c, get("/c/0/messages", &[("x-api-key", &tb)])).await,
        StatusCode::FORBIDDEN,
        "broker_token_foreign",
    );
    // A's token for credential 1 used on credential 0.
    check(
        send(&mut c, get("/c/0/messages", &[("x-api-key", &ta_openai)])).await,
        StatusCode::FORBIDDEN,
        "broker_token_foreign",
    );
    check(
        send(
            &mut c,
            get(
                "/c/0/messages",
                &[(
                    "x-api-key",
                    "wrn_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                )],
            ),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "broker_token_unknown",
    );
    check(
        send(
            &mut c,
            get("/c/0/messages", &[("x-api-key", ANTHROPIC_KEY)]),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "broker_token_unknown",
    );
    // The token in the wrong header counts as missing.
    check(
        send(
            &mut c,
            get(
                "/c/0/messages",
                &[("authorization", &format!("Bearer {ta}"))],
            ),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "broker_token_missing",
    );
    check(
        send(&mut c, get("/c/0/messages", &[])).await,
        StatusCode::UNAUTHORIZED,
        "broker_token_missing",
    );
    check(
        send(&mut c, get("/c/9/messages", &[("x-api-key", &ta)])).await,
        StatusCode::NOT_FOUND,
        "broker_route_unknown",
    );
    check(
        send(&mut c, get("/v1/messages", &[("x-api-key", &ta)])).await,
        StatusCode::NOT_FOUND,
        "broker_route_unknown",
    );
    check(
        send(&mut c, get("/c/x/messages", &[("x-api-key", &ta)])).await,
        StatusCode::NOT_FOUND,
        "broker_route_unknown",
    );
    // A connection from an unregistered sandbox.
    let mut stranger = connect(&b, "sb-unknown").await;
    check(
        send(&mut stranger, get("/c/0/messages", &[("x-api-key", &ta)])).await,
        StatusCode::NOT_FOUND,
        "broker_route_unknown",
    );
    assert!(
        up.seen().is_empty(),
        "a refused request reached the upstream"
    );
    assert_eq!(b.usage("sb-a")[0].rejected, 6);

    // Still works, then stops working on unregister / rotation.
    assert_eq!(
        send(&mut c, get("/c/0/m", &[("x-api-key", &ta)])).await.0,
        StatusCode::OK
    );
    let ea2 = b.register("sb-a", 1, creds(&up)).unwrap();
    let ta2 = env(&ea2, "ANTHROPIC_API_KEY");
    assert_ne!(ta, ta2);
    check(
        send(&mut c, get("/c/0/m", &[("x-api-key", &ta)])).await,
        StatusCode::UNAUTHORIZED,
        "broker_token_unknown",
    );
    assert_eq!(
        send(&mut c, get("/c/0/m", &[("x-api-key", &ta2)])).await.0,
        StatusCode::OK
    );
    // Counters survive the rotation.
    assert_eq!(b.usage("sb-a")[0].requests, 2);
    b.unregister("sb-b");
    check(
        send(&mut c, get("/c/0/m", &[("x-api-key", &tb)])).await,
        StatusCode::UNAUTHORIZED,
        "broker_token_unknown",
    );
    b.unregister("sb-a");
    check(
        send(&mut c, get("/c/0/m", &[("x-api-key", &ta2)])).await,
        StatusCode::NOT_FOUND,
        "broker_route_unknown",
    );
    assert!(b.usage("sb-a").is_empty());
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // A port that nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let up = Upstream::start().await;
    let b = broker_with(BrokerConfig {
        response_timeout: Some(Duration::from_millis(300)),
        ..BrokerConfig::default()
    });
    let mut cs = creds(&up);
    cs[1].upstream = format!("http://127.0.0.1:{port}/v1");
    let e = b.register("sb1", 0, cs).unwrap();
    let mut c = connect(&b, "sb1").await;

    let t1 = env(&e, "OPENAI_API_KEY");
    let (status, headers, body) = send(
        &mut c,
        get("/c/1/chat", &[("authorization", &format!("Bearer {t1}"))]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-warren-broker"], "1");
    assert_eq!(error_code(&body), "broker_upstream_failed");
    assert!(!String::from_utf8_lossy(&body).contains("REAL"));

    let t0 = env(&e, "ANTHROPIC_API_KEY");
    let (status, _, body) = send(&mut c, get("/c/0/slow", &[("x-api-key", &t0)])).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_code(&body), "broker_upstream_timeout");

    let usage = b.usage("sb1");
    assert_eq!(usage[0].upstream_errors, 1);
    assert_eq!(usage[1].upstream_errors, 1);
}

#[tokio::test]
async fn request_body_streams() {
    let up = Upstream::start().await;
    let b = broker();
    let e = b.register("sb1", 0, creds(&up)).unwrap();
    let token = env(&e, "ANTHROPIC_API_KEY");
    let mut c = connect(&b, "sb1").await;

    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 32; // 8 MiB
    let (mut tx, body) = Channel::<Bytes, BoxError>::new(2);
    let req = Request::post("/c/0/upload")
        .header("x-api-key", &token)
        .header("content-type", "application/octet-stream")
        .body(body.boxed_unsync())
        .unwrap();
    c.ready().await.unwrap();
    let response = tokio::spawn(c.send_request(req));

    tx.send_data(Bytes::from(vec![b'a'; CHUNK])).await.unwrap();
    // The upstream sees the first bytes while the rest has not even been
    // produced yet: nothing buffers the whole body.
    tokio::time::timeout(Duration::from_secs(20), up.upload_started.notified())
        .await
        .expect("upstream got no body bytes before the request body ended: buffered?");
    for _ in 1..CHUNKS {
        tx.send_data(Bytes::from(vec![b'b'; CHUNK])).await.unwrap();
    }
    drop(tx);
    let resp = response.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (CHUNK * CHUNKS).to_string());
    let usage = b.usage("sb1");
    assert_eq!(usage[0].bytes_up, (CHUNK * CHUNKS) as u64);
    assert_eq!(usage[0].requests, 1);
}

#[tokio::test]
async fn masked_view_never_shows_the_value() {
    let up = Upstream::start().await;
    let b = broker();
    b.register("sb1", 0, creds(&up)).unwrap();
    let masked = b.masked("sb1");
    assert_eq!(masked.len(), 3);
    assert_eq!(
        masked[0].value,
        format!("sk-a…({} chars)", ANTHROPIC_KEY.len())
    );
    assert_eq!(masked[0].header, "x-api-key");
    assert_eq!(masked[1].token_env, "OPENAI_API_KEY");
    let json = serde_json::to_string(&masked).unwrap();
    for secret in [ANTHROPIC_KEY, OPENAI_KEY, SPACED_KEY, "REAL"] {
        assert!(!json.contains(secret), "{json}");
    }
    assert!(!format!("{:?}", creds(&up)).contains("REAL"));
    assert!(b.masked("nope").is_empty());
}

#[tokio::test]
async fn register_validates() {
    let up = Upstream::start().await;
    let b = broker();
    let mut cs = creds(&up);
    cs[2].token_env = "ANTHROPIC_API_KEY".into();
    let err = b.register("sb1", 0, cs).unwrap_err();
    assert!(
        matches!(err, BrokerError::InvalidCredential { index: 2, .. }),
        "{err}"
    );
    let mut cs = creds(&up);
    cs[0].upstream = "https://user:pw@example.com".into();
    assert!(b.register("sb1", 0, cs).is_err());
    let mut cs = creds(&up);
    cs[0].header = "Host".into();
    assert!(b.register("sb1", 0, cs).is_err());
    assert!(b.masked("sb1").is_empty());
}

#[test]
fn tokens_are_derived_from_key_sandbox_index_and_generation() {
    let cs = vec![
        Credential {
            upstream: "https://api.anthropic.com".into(),
            header: "x-api-key".into(),
            value: ANTHROPIC_KEY.into(),
            base_url_env: "ANTHROPIC_BASE_URL".into(),
            token_env: "ANTHROPIC_API_KEY".into(),
        },
        Credential {
            upstream: "https://api.openai.com/v1".into(),
            header: "authorization".into(),
            value: OPENAI_KEY.into(),
            base_url_env: "OPENAI_BASE_URL".into(),
            token_env: "OPENAI_API_KEY".into(),
        },
    ];
    let key = [9u8; 32];
    let b1 = Broker::new(SecretKey::from_bytes(key), BrokerConfig::default()).unwrap();
    let b2 = Broker::new(
        SecretKey::from_bytes(key),
        BrokerConfig {
            port: 9999,
            ..BrokerConfig::default()
        },
    )
    .unwrap();
    let e1 = b1.register("sb1", 3, cs.clone()).unwrap();
    let e2 = b2.register("sb1", 3, cs.clone()).unwrap();
    for name in ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"] {
        assert_eq!(
            env(&e1, name),
            env(&e2, name),
            "token changed across instances"
        );
    }
    assert_eq!(env(&e2, "OPENAI_BASE_URL"), "http://127.0.0.1:9999/c/1");
    assert_ne!(env(&e1, "ANTHROPIC_API_KEY"), env(&e1, "OPENAI_API_KEY"));

    let rotated = b1.register("sb1", 4, cs.clone()).unwrap();
    assert_ne!(
        env(&e1, "ANTHROPIC_API_KEY"),
        env(&rotated, "ANTHROPIC_API_KEY")
    );
    let other_sandbox = b1.register("sb2", 3, cs.clone()).unwrap();
    assert_ne!(
        env(&e1, "ANTHROPIC_API_KEY"),
        env(&other_sandbox, "ANTHROPIC_API_KEY")
    );
    let b3 = Broker::new(SecretKey::from_bytes([10; 32]), BrokerConfig::default()).unwrap();
    let other_key = b3.register("sb1", 3, cs).unwrap();
    assert_ne!(
        env(&e1, "ANTHROPIC_API_KEY"),
        env(&other_key, "ANTHROPIC_API_KEY")
    );
    // The token is not the value, nor derived from it.
    for (_, v) in &e1 {
        assert!(!v.contains("REAL"));
    }
}

#[test]
fn seal_and_open() {
    let key = SecretKey::generate().unwrap();
    let secret = ANTHROPIC_KEY.as_bytes();
    let sealed = key.seal(secret).unwrap();
    assert!(sealed.starts_with("v1."));
    assert!(!sealed.contains("REAL"));
    assert_eq!(key.open(&sealed).unwrap(), secret);
    // Fresh nonce each time.
    let again = key.seal(secret).unwrap();
    assert_ne!(sealed, again);
    assert_eq!(key.open(&again).unwrap(), secret);
    // Empty plaintext works too.
    assert_eq!(key.open(&key.seal(b"").unwrap()).unwrap(), b"");

    // Tampering anywhere (nonce, ciphertext, tag) is detected.
    let body = &sealed[3..];
    for pos in [0, body.len() / 2, body.len() - 2] {
        let mut chars: Vec<char> = body.chars().collect();
        chars[pos] = if chars[pos] == 'A' { 'B' } else { 'A' };
        let tampered = format!("v1.{}", chars.into_iter().collect::<String>());
        assert!(
            matches!(key.open(&tampered), Err(BrokerError::Sealed(_))),
            "pos {pos}"
        );
    }
    assert!(key.open("v1.").is_err());
    assert!(key.open("v2.AAAA").is_err());
    assert!(key.open("v1.!!!").is_err());
    assert!(key.open(&sealed[..sealed.len() - 4]).is_err());

    // Another key cannot open it.
    let other = SecretKey::generate().unwrap();
    assert!(matches!(other.open(&sealed), Err(BrokerError::Sealed(_))));
    assert_eq!(format!("{key:?}"), "SecretKey(<redacted>)");
}

#[test]
fn key_file_is_created_private_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.key");
    let key = SecretKey::load_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // No temporary file left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Loading again gives the same key.
    let again = SecretKey::load_or_create(&path).unwrap();
    let sealed = key.seal(b"x").unwrap();
    assert_eq!(again.open(&sealed).unwrap(), b"x");

    // Group/other permissions are refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = SecretKey::load_or_create(&path).unwrap_err();
    assert!(matches!(err, BrokerError::KeyFile { .. }), "{err}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(SecretKey::load_or_create(&path).is_err());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(SecretKey::load_or_create(&path).is_ok());

    // Wrong sizes are refused, and the file is left alone.
    for len in [0usize, 31, 33, 64] {
        let p = dir.path().join(format!("short-{len}.key"));
        std::fs::write(&p, vec![1u8; len]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = SecretKey::load_or_create(&p).unwrap_err();
        assert!(matches!(err, BrokerError::KeyFile { .. }), "{len}: {err}");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), len as u64);
    }

    // A symlink is not followed.
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(SecretKey::load_or_create(&link).is_err());

    // A missing directory is an error, not a panic.
    assert!(SecretKey::load_or_create(dir.path().join("no/such/dir/key")).is_err());
}
