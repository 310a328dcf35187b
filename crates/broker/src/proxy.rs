//! Handling of one request from a sandbox: route, token check, header
//! rewriting and streaming forwarding.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};

use crate::body::{CountingBody, Direction, ExchangeLog};
use crate::broker::{ct_eq, CredEntry, Inner};

/// Boxed error of response bodies.
pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;
/// Body of every response the broker sends to a sandbox.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Response header that marks every answer from the broker.
pub const BROKER_HEADER: &str = "x-warren-broker";

/// Error codes of the broker's own JSON error responses.
pub mod codes {
    /// 401: the credential header is absent or empty.
    pub const TOKEN_MISSING: &str = "broker_token_missing";
    /// 401: the token is not a live token.
    pub const TOKEN_UNKNOWN: &str = "broker_token_unknown";
    /// 403: the token is live but belongs to another sandbox (or another
    /// credential of this sandbox).
    pub const TOKEN_FOREIGN: &str = "broker_token_foreign";
    /// 404: the path is not `/c/<i>/...` of a registered credential.
    pub const ROUTE_UNKNOWN: &str = "broker_route_unknown";
    /// 502: the upstream could not be reached or failed.
    pub const UPSTREAM_FAILED: &str = "broker_upstream_failed";
    /// 504: connecting to the upstream, or waiting for its response
    /// headers, timed out.
    pub const UPSTREAM_TIMEOUT: &str = "broker_upstream_timeout";
}

/// A JSON error response `{"error":{"code":..,"message":..}}`.
fn error_response(status: StatusCode, code: &str, message: &str) -> Response<ResponseBody> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } }).to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(BROKER_HEADER, HeaderValue::from_static("1"));
    resp
}

/// Split `/c/<i>[/<rest>]` into `i` and `/<rest>` (or `""`). The index
/// must be canonical decimal (no sign, no leading zeros).
pub(crate) fn parse_route(path: &str) -> Option<(usize, &str)> {
    let after = path.strip_prefix("/c/")?;
    let (index, rest) = match after.find('/') {
        Some(pos) => after.split_at(pos),
        None => (after, ""),
    };
    if index.is_empty()
        || index.len() > 6
        || !index.bytes().all(|b| b.is_ascii_digit())
        || (index.len() > 1 && index.starts_with('0'))
    {
        return None;
    }
    Some((index.parse().ok()?, rest))
}

/// Remove hop-by-hop headers: those listed in `Connection`, and
/// Connection, Keep-Alive, Proxy-*, TE, Trailer, Transfer-Encoding and
/// Upgrade.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Remove every header whose value contains one of `secrets`.
fn strip_containing(headers: &mut HeaderMap, secrets: &[&str]) {
    let names: Vec<HeaderName> = headers
        .iter()
        .filter(|(_, v)| secrets.iter().any(|s| contains(v.as_bytes(), s.as_bytes())))
        .map(|(n, _)| n.clone())
        .collect();
    for name in names {
        headers.remove(name);
    }
}

/// Whether an upstream error was a timeout.
fn is_timeout(err: &(dyn StdError + 'static)) -> bool {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        cur = e.source();
    }
    false
}

/// An error and its sources, on one line.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Outcome of checking the presented token.
enum TokenCheck {
    /// Valid; the client's auth scheme (`Bearer`), if it used one.
    Ok(Option<String>),
    Rejected(StatusCode, &'static str, &'static str),
}

fn check_token(inner: &Inner, sandbox: &str, entry: &CredEntry, headers: &HeaderMap) -> TokenCheck {
    let Some(presented) = headers.get(&entry.header) else {
        return TokenCheck::Rejected(
            StatusCode::UNAUTHORIZED,
            codes::TOKEN_MISSING,
            "no broker token in the credential header",
        );
    };
    let Ok(raw) = presented.to_str() else {
        return TokenCheck::Rejected(
            StatusCode::UNAUTHORIZED,
            codes::TOKEN_UNKNOWN,
            "unknown broker token",
        );
    };
    let raw = raw.trim();
    let (scheme, token) = match raw.split_once(' ') {
        Some((scheme, token)) => (Some(scheme.to_string()), token.trim()),
        None => (None, raw),
    };
    if token.is_empty() {
        return TokenCheck::Rejected(
            StatusCode::UNAUTHORIZED,
            codes::TOKEN_MISSING,
            "no broker token in the credential header",
        );
    }
    match inner.owner(token) {
        None => TokenCheck::Rejected(
            StatusCode::UNAUTHORIZED,
            codes::TOKEN_UNKNOWN,
            "unknown broker token",
        ),
        Some(owner) if &*owner.sandbox != sandbox => TokenCheck::Rejected(
            StatusCode::FORBIDDEN,
            codes::TOKEN_FOREIGN,
            "token belongs to another sandbox",
        ),
        Some(owner) if owner.index != entry.index => TokenCheck::Rejected(
            StatusCode::FORBIDDEN,
            codes::TOKEN_FOREIGN,
            "token belongs to another credential of this sandbox",
        ),
        Some(_) if ct_eq(token.as_bytes(), entry.token.as_bytes()) => TokenCheck::Ok(scheme),
        // The index and the entry disagree only if the sandbox was
        // re-registered between the two look-ups.
        Some(_) => TokenCheck::Rejected(
            StatusCode::UNAUTHORIZED,
            codes::TOKEN_UNKNOWN,
            "unknown broker token",
        ),
    }
}

/// Answer one request from `sandbox`.
pub(crate) async fn handle(
    inner: Arc<Inner>,
    sandbox: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let Some((index, rest)) = parse_route(&path) else {
        tracing::debug!(sandbox = &*sandbox, path = %path, "broker: unknown route");
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            codes::ROUTE_UNKNOWN,
            "path must be /c/<credential index>/...",
        ));
    };
    let Some(route) = inner.route(&sandbox, index) else {
        tracing::debug!(
            sandbox = &*sandbox,
            credential = index,
            "broker: unknown credential"
        );
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            codes::ROUTE_UNKNOWN,
            "no such credential for this sandbox",
        ));
    };
    let entry = route.entry;
    let scheme = match check_token(&inner, &sandbox, &entry, req.headers()) {
        TokenCheck::Ok(scheme) => scheme,
        TokenCheck::Rejected(status, code, message) => {
            entry.counters.rejected.fetch_add(1, Ordering::Relaxed);
            if status == StatusCode::FORBIDDEN {
                tracing::warn!(
                    sandbox = &*sandbox,
                    credential = index,
                    code,
                    "broker: {message}"
                );
            } else {
                tracing::debug!(
                    sandbox = &*sandbox,
                    credential = index,
                    code,
                    "broker: {message}"
                );
            }
            return Ok(error_response(status, code, message));
        }
    };

    // Target URL: upstream + its prefix + the rest of the path + query.
    let mut target = format!(
        "{}://{}{}{}",
        entry.upstream.scheme, entry.upstream.authority, entry.upstream.prefix, rest
    );
    if entry.upstream.prefix.is_empty() && rest.is_empty() {
        target.push('/');
    }
    if let Some(q) = req.uri().query() {
        target.push('?');
        target.push_str(q);
    }
    let Ok(uri) = target.parse::<Uri>() else {
        return Ok(error_response(
            StatusCode::NOT_FOUND,
            codes::ROUTE_UNKNOWN,
            "path cannot be forwarded",
        ));
    };

    let (parts, body) = req.into_parts();
    let method = parts.method;
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    // Host is set from the target by the client; Expect was answered by
    // our own server already.
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    headers.remove(&entry.header);
    let tokens: Vec<&str> = route.sandbox_tokens.iter().map(String::as_str).collect();
    strip_containing(&mut headers, &tokens);
    let value = match scheme {
        Some(scheme) if !entry.value_has_space => {
            match HeaderValue::from_str(&format!("{scheme} {}", entry.raw_value)) {
                Ok(mut v) => {
                    v.set_sensitive(true);
                    v
                }
                Err(_) => entry.value.clone(),
            }
        }
        _ => entry.value.clone(),
    };
    headers.insert(entry.header.clone(), value);
    if let Some(ua) = &inner.user_agent {
        headers
            .entry(header::USER_AGENT)
            .or_insert_with(|| ua.clone());
    }

    let mut up = Request::new(CountingBody::new(
        body,
        entry.counters.clone(),
        Direction::Up,
    ));
    *up.method_mut() = method.clone();
    *up.uri_mut() = uri;
    *up.headers_mut() = headers;

    entry.counters.requests.fetch_add(1, Ordering::Relaxed);
    let fut = inner.client.request(up);
    let result = match inner.cfg.response_timeout {
        Some(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => {
                entry
                    .counters
                    .upstream_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    sandbox = &*sandbox,
                    credential = index,
                    method = %method,
                    path = rest,
                    status = 504,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "broker: upstream response timed out"
                );
                return Ok(error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    codes::UPSTREAM_TIMEOUT,
                    "upstream did not respond in time",
                ));
            }
        },
        None => fut.await,
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(err) => {
            entry
                .counters
                .upstream_errors
                .fetch_add(1, Ordering::Relaxed);
            let timeout = is_timeout(&err);
            let (status, code) = if timeout {
                (StatusCode::GATEWAY_TIMEOUT, codes::UPSTREAM_TIMEOUT)
            } else {
                (StatusCode::BAD_GATEWAY, codes::UPSTREAM_FAILED)
            };
            let detail = error_chain(&err);
            tracing::warn!(
                sandbox = &*sandbox,
                credential = index,
                method = %method,
                path = rest,
                status = status.as_u16(),
                duration_ms = started.elapsed().as_millis() as u64,
                error = %detail,
                "broker: upstream request failed"
            );
            return Ok(error_response(
                status,
                code,
                &format!("upstream {} failed: {detail}", entry.upstream.authority),
            ));
        }
    };

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // An upstream that echoes the real value in a header must not leak
    // it into the sandbox.
    strip_containing(&mut parts.headers, &[entry.raw_value.as_str()]);
    parts
        .headers
        .insert(BROKER_HEADER, HeaderValue::from_static("1"));
    let status = parts.status.as_u16();
    entry.counters.count_status(status);
    let body =
        CountingBody::new(body, entry.counters.clone(), Direction::Down).with_log(ExchangeLog {
            sandbox: sandbox.clone(),
            index,
            method,
            path: rest.to_string(),
            status,
            started,
            headers_after_ms: started.elapsed().as_millis(),
        });
    Ok(Response::from_parts(
        parts,
        body.map_err(BoxError::from).boxed_unsync(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse_route("/c/0/v1/messages"), Some((0, "/v1/messages")));
        assert_eq!(parse_route("/c/12"), Some((12, "")));
        assert_eq!(parse_route("/c/3/"), Some((3, "/")));
        for bad in [
            "/",
            "/c/",
            "/c//x",
            "/c/01/x",
            "/c/-1/x",
            "/c/a/x",
            "/d/0/x",
            "/c/1234567/x",
        ] {
            assert_eq!(parse_route(bad), None, "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-custom"),
            ("keep-alive", "timeout=5"),
            ("x-custom", "1"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-type", "application/json"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn timeouts_are_recognised() {
        let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        assert!(is_timeout(&e));
        let e = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no");
        assert!(!is_timeout(&e));
    }
}
