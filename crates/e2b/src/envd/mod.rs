//! envd, E2B's in-sandbox API, served host-side on Warren's listener: the SDK sends every
//! call for every sandbox to `E2B_SANDBOX_URL` and names the sandbox in the
//! `E2b-Sandbox-Id` header, with the sandbox's access token in `X-Access-Token`.
//!
//! - `process.Process/*` and `filesystem.Filesystem/*`: Connect RPCs ([`connect`]),
//!   translated onto the engine's durable processes, files and watches ([`process`],
//!   [`filesystem`]).
//! - `GET|POST /files` and `GET /health`: plain HTTP ([`files`]); a signed file URL
//!   arrives without sandbox headers and is routed by its signature.
//!
//! The user a call acts as comes from `Authorization: Basic base64("user:")` (RPCs) or
//! `?username=` (`/files`): `user` (uid 1000, home `/home/user`, the default) or `root`.

pub(crate) mod connect;
mod files;
mod filesystem;
mod process;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use warren_api::{ExecUser, SandboxState};

use crate::E2b;
use connect::{Code, Kind, RpcError, RpcResult};

pub(crate) use filesystem::{NamesCache, Watchers};
pub(crate) use process::Configs;

/// The paths envd owns on the shared listener.
pub fn owns(path: &str) -> bool {
    path.starts_with("/process.Process/")
        || path.starts_with("/filesystem.Filesystem/")
        || path == "/files"
        || path == "/health"
}

pub(crate) fn routes() -> Router<E2b> {
    Router::new()
        .route("/process.Process/{method}", post(process_rpc))
        .route("/filesystem.Filesystem/{method}", post(filesystem_rpc))
        .route("/health", get(health))
        .merge(files::routes())
}

/// Who a call acts as, and where relative paths start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct User(pub ExecUser);

impl User {
    pub fn parse(name: &str) -> RpcResult<User> {
        match name {
            "" | "user" => Ok(User(ExecUser::User)),
            "root" => Ok(User(ExecUser::Root)),
            other => Err(RpcError::invalid(format!(
                "user {other:?} does not exist in this sandbox: Warren sandboxes have `user` and `root`"
            ))),
        }
    }

    /// From `Authorization: Basic base64("name:")`; none is the default user.
    fn from_headers(headers: &HeaderMap) -> RpcResult<User> {
        let Some(v) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return Ok(User(ExecUser::User));
        };
        let Some(b64) = v.strip_prefix("Basic ") else {
            return Ok(User(ExecUser::User));
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| RpcError::invalid("the Authorization header is not valid base64"))?;
        let raw = String::from_utf8_lossy(&raw);
        User::parse(raw.split(':').next().unwrap_or(""))
    }

    pub fn home(self) -> &'static str {
        match self.0 {
            ExecUser::Root => "/root",
            ExecUser::User => "/home/user",
        }
    }

    /// An absolute path: relative ones (and `~`) start at the user's home.
    pub fn resolve(self, path: &str) -> RpcResult<String> {
        let path = path.trim();
        if path.starts_with('/') {
            return Ok(path.to_string());
        }
        let rest = match path {
            "" | "~" | "." => return Ok(self.home().to_string()),
            p => p.strip_prefix("~/").unwrap_or(p),
        };
        Ok(format!("{}/{}", self.home(), rest.trim_start_matches("./")))
    }
}

/// The sandbox a call is for, checked: `E2b-Sandbox-Id` names it, `X-Access-Token` must
/// be its token (when the daemon has keys), and it must exist.
pub(crate) async fn sandbox(s: &E2b, headers: &HeaderMap) -> RpcResult<String> {
    let id = header(headers, "e2b-sandbox-id").ok_or_else(|| {
        RpcError::invalid("the E2b-Sandbox-Id header is required (set E2B_SANDBOX_URL)")
    })?;
    check_token(s, &id, headers)?;
    running(s, &id).await?;
    Ok(id)
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn check_token(s: &E2b, id: &str, headers: &HeaderMap) -> RpcResult<()> {
    if s.opts.gate.is_none() {
        return Ok(());
    }
    match header(headers, "x-access-token") {
        Some(t) if crate::same(&t, &s.token(id)) => Ok(()),
        Some(_) => Err(RpcError::new(
            Code::Unauthenticated,
            "the access token is not this sandbox's",
        )),
        None => Err(RpcError::new(
            Code::Unauthenticated,
            "an access token is required: X-Access-Token",
        )),
    }
}

/// The sandbox exists (a gone one is what the SDK reads as "killed or timed out").
async fn running(s: &E2b, id: &str) -> RpcResult<SandboxState> {
    match s.engine.get(id).await {
        Ok(sb) => Ok(sb.state),
        Err(_) => Err(RpcError::sandbox_gone(id)),
    }
}

/// After a stream broke: the sandbox is gone (or no longer running: E2B's proxy finds
/// no running sandbox then either), or the reason.
pub(crate) async fn broken(s: &E2b, id: &str, why: impl std::fmt::Display) -> RpcError {
    match running(s, id).await {
        Ok(SandboxState::Running) => RpcError::new(
            Code::Unavailable,
            format!("the connection to sandbox {id} ended before the stream completed: {why}"),
        ),
        _ => RpcError::sandbox_gone(id),
    }
}

/// What every RPC gets: the sandbox, the user, and the request.
pub(crate) struct Call {
    pub sid: String,
    pub user: User,
    pub kind: Kind,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    pub fn message<T: serde::de::DeserializeOwned>(&self) -> RpcResult<T> {
        connect::decode(self.kind, &self.headers, &self.body)
    }

    pub fn timing(&self) -> connect::Timing {
        connect::Timing::of(&self.headers)
    }
}

/// The checked call: its codec, sandbox and user, and its one message (at most
/// [`connect::MAX_MESSAGE`] bytes).
async fn call_of(s: &E2b, req: axum::extract::Request) -> RpcResult<Call> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let kind = connect::kind(&headers)?;
    let body = axum::body::to_bytes(body, connect::MAX_MESSAGE)
        .await
        .map_err(|_| {
            RpcError::new(
                Code::ResourceExhausted,
                format!(
                    "the request message is larger than {} bytes",
                    connect::MAX_MESSAGE
                ),
            )
        })?;
    let sid = sandbox(s, &headers).await?;
    let user = User::from_headers(&headers)?;
    Ok(Call {
        sid,
        user,
        kind,
        headers,
        body,
    })
}

/// An error before the call ran, in the shape its kind expects.
fn refuse(headers: &HeaderMap, err: RpcError) -> Response {
    match connect::kind(headers) {
        Ok(Kind::Stream) => connect::stream_error(err),
        _ => err.into_response(),
    }
}

async fn process_rpc(
    State(s): State<E2b>,
    Path(method): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let headers = req.headers().clone();
    if method == "StreamInput" {
        // A client stream: its messages are handled as they arrive.
        let checked = async {
            let sid = sandbox(&s, &headers).await?;
            User::from_headers(&headers)?;
            Ok::<_, RpcError>(sid)
        };
        return match checked.await {
            Ok(sid) => process::stream_input(s, sid, req.into_body()).await,
            Err(e) => connect::stream_error(e),
        };
    }
    match call_of(&s, req).await {
        Ok(call) => process::call(s, &method, call).await,
        Err(e) => refuse(&headers, e),
    }
}

async fn filesystem_rpc(
    State(s): State<E2b>,
    Path(method): Path<String>,
    req: axum::extract::Request,
) -> Response {
    let headers = req.headers().clone();
    match call_of(&s, req).await {
        Ok(call) => filesystem::call(s, &method, call).await,
        Err(e) => refuse(&headers, e),
    }
}

/// A method this service does not have.
pub(crate) fn unknown_method(service: &str, method: &str) -> RpcError {
    RpcError::new(
        Code::Unimplemented,
        format!("{service}/{method} is not served by Warren"),
    )
}

/// `GET /health`: 204 while the sandbox runs; 502 with "was not found" once it is gone
/// (what the SDK's probe after a broken stream reads as "killed").
async fn health(State(s): State<E2b>, headers: HeaderMap) -> Response {
    let Some(id) = header(&headers, "e2b-sandbox-id") else {
        return StatusCode::NO_CONTENT.into_response();
    };
    if let Err(e) = check_token(&s, &id, &headers) {
        return files::http_error(401, e.message).into_response();
    }
    match running(&s, &id).await {
        Ok(SandboxState::Running) => StatusCode::NO_CONTENT.into_response(),
        _ => files::http_error(502, RpcError::sandbox_gone(&id).message).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_paths() {
        let u = User::parse("").unwrap();
        assert_eq!(u.resolve("a/b").unwrap(), "/home/user/a/b");
        assert_eq!(u.resolve("~/x").unwrap(), "/home/user/x");
        assert_eq!(u.resolve("~").unwrap(), "/home/user");
        assert_eq!(u.resolve("/etc").unwrap(), "/etc");
        let r = User::parse("root").unwrap();
        assert_eq!(r.resolve("./f").unwrap(), "/root/f");
        assert_eq!(User::parse("bob").unwrap_err().code, Code::InvalidArgument);
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            "Basic cm9vdDo=".parse().unwrap(), // "root:"
        );
        assert_eq!(User::from_headers(&h).unwrap().0, ExecUser::Root);
        assert!(owns("/process.Process/Start"));
        assert!(owns("/files"));
        assert!(!owns("/filesx"));
    }
}
