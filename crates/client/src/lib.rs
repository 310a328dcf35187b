//! Rust SDK for Warren's HTTP API.
//!
//! A [`Client`] talks to one `warren serve` daemon; every method maps to one endpoint and
//! returns the wire types of [`warren_api`] (re-exported as [`api`]). Failures are a typed
//! [`Error`]: [`Error::Api`] carries the server's stable error `code`.
//!
//! ```no_run
//! use futures::StreamExt;
//! use warren_client::{api::CreateSandboxRequest, api::ExecRequest, Client, ExecStreamEvent};
//!
//! # async fn demo() -> Result<(), warren_client::Error> {
//! let client = Client::from_env()?; // WARREN_URL, default http://127.0.0.1:7400
//! let sb = client.create_sandbox(&CreateSandboxRequest::default()).await?;
//! let sandbox = client.sandbox(&sb.id);
//!
//! // Run a command and wait for it.
//! let result = sandbox.run(["uname", "-a"]).await?;
//! println!("exit {}: {}", result.exit_code, result.stdout);
//!
//! // Or stream its output as it is produced.
//! let req = ExecRequest { cmd: vec!["ls".into(), "-la".into()], ..Default::default() };
//! let mut events = sandbox.exec_stream(&req).await?;
//! while let Some(event) = events.next().await {
//!     match event? {
//!         ExecStreamEvent::Stdout(bytes) => print!("{}", String::from_utf8_lossy(&bytes)),
//!         ExecStreamEvent::Stderr(bytes) => eprint!("{}", String::from_utf8_lossy(&bytes)),
//!         ExecStreamEvent::Exit(exit) => println!("exit {}", exit.exit_code),
//!     }
//! }
//! sandbox.delete().await?;
//! # Ok(())
//! # }
//! ```

mod images;
mod lifecycle;
mod pools;
mod ports;
mod processes;
mod search;
mod sse;
mod templates;
mod volumes;

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::{Method, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use images::{PullEvent, PullEvents};
pub use lifecycle::{LifecycleEvent, LifecycleEvents};
pub use templates::{BuildEvent, BuildEvents, TemplateBuild};
pub use warren_api::PortAddress;
/// The name [`PortAddress`] had in this SDK before it moved to `warren_api`.
pub type PortForward = PortAddress;
pub use processes::{OutputEvent, OutputStream, ProcessHandle, PtyEvent, PtySession};
pub use search::FileWatch;
pub use warren_api as api;
use warren_api::{
    Capabilities, CreateSandboxRequest, ErrorBody, ExecRequest, ExecResult, ExecUser, ExitEvent,
    FileInfo, FileList, MkdirRequest, MoveRequest, OutputChunk, OutputEncoding, Sandbox,
    SetTimeoutRequest, UploadedFiles,
};

/// The daemon's address when `WARREN_URL` is not set.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7400";

/// The environment variable [`Client::from_env`] (and the CLI) read the API key from.
pub const API_KEY_ENV: &str = "WARREN_API_KEY";

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused or failed the request; `code` is its stable snake_case error code
    /// (`sandbox_not_found`, `invalid_request`, ...). An `error` event in the middle of an
    /// exec stream is reported here too, with status 500.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// The request did not get an answer (connection refused, reset, ...).
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The answer was not what the API promises.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// A terminal WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The base URL is unusable.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
}

impl Error {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True for `sandbox_not_found`.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some("sandbox_not_found")
    }

    /// True for `file_not_found` (a path inside a sandbox).
    pub fn is_file_not_found(&self) -> bool {
        self.code() == Some("file_not_found")
    }
}

/// A client of one Warren server. Cheap to clone (connections are pooled and shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// Sent as `Authorization: Bearer` with every request.
    api_key: Option<String>,
}

impl Client {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:7400`).
    pub fn new(base_url: &str) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Client::with_http_client(base_url, http)
    }

    /// Like [`Client::new`] with a caller-configured `reqwest::Client`.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Result<Client, Error> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: base_url.to_string(),
            reason: reason.to_string(),
        };
        let base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            return Err(invalid("not a server address"));
        }
        Ok(Client {
            http,
            base,
            api_key: None,
        })
    }

    /// The same client, sending `key` (`Authorization: Bearer`) with every request: what
    /// a server started with `--api-keys` needs.
    pub fn with_api_key(mut self, key: impl Into<String>) -> Client {
        self.api_key = Some(key.into()).filter(|k: &String| !k.is_empty());
        self
    }

    /// A request to `path` on the server (with the API key), for routes this SDK has no
    /// method for (another API surface, such as `/opensandbox`).
    pub fn raw_request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut url = self.base.clone();
        match path.split_once('?') {
            Some((p, q)) => {
                url.set_path(p);
                url.set_query(Some(q));
            }
            None => url.set_path(path),
        }
        self.http_request(method, url)
    }

    /// A request to `url`, with the API key.
    fn http_request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        match &self.api_key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// A client of `$WARREN_URL`, or of [`DEFAULT_URL`] when it is unset or empty.
    pub fn from_env() -> Result<Client, Error> {
        let client = match std::env::var("WARREN_URL") {
            Ok(url) if !url.trim().is_empty() => Client::new(url.trim()),
            _ => Client::new(DEFAULT_URL),
        }?;
        Ok(match std::env::var(API_KEY_ENV) {
            Ok(key) if !key.trim().is_empty() => client.with_api_key(key.trim()),
            _ => client,
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// A handle on the sandbox `id` (no request is made).
    pub fn sandbox(&self, id: impl Into<String>) -> SandboxHandle {
        SandboxHandle {
            client: self.clone(),
            id: id.into(),
        }
    }

    /// `GET /healthz`: Ok when the server answers.
    pub async fn health(&self) -> Result<(), Error> {
        let resp = self.request(Method::GET, &["healthz"]).send().await?;
        check(resp).await.map(drop)
    }

    /// `GET /v1/capabilities`.
    pub async fn capabilities(&self) -> Result<Capabilities, Error> {
        self.call(Method::GET, &["v1", "capabilities"], None::<&()>)
            .await
    }

    /// `POST /v1/images/pull`: pull an image from its registry; returns when it is stored.
    pub async fn pull_image(&self, reference: &str) -> Result<warren_api::Image, Error> {
        let req = warren_api::PullImageRequest {
            reference: reference.to_string(),
        };
        self.call(Method::POST, &["v1", "images", "pull"], Some(&req))
            .await
    }

    /// `POST /v1/images/import?name=`: store the image of a tar stream (an OCI image
    /// layout or a `docker save` archive) as `name`.
    pub async fn import_image(
        &self,
        name: &str,
        archive: impl Into<reqwest::Body>,
    ) -> Result<warren_api::Image, Error> {
        let mut url = self.url(&["v1", "images", "import"]);
        url.query_pairs_mut().append_pair("name", name);
        let resp = self
            .http_request(Method::POST, url)
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-tar"),
            )
            .body(archive)
            .send()
            .await?;
        decode(check(resp).await?).await
    }

    /// `GET /v1/images`.
    pub async fn list_images(&self) -> Result<Vec<warren_api::Image>, Error> {
        let list: warren_api::ImageList = self
            .call(Method::GET, &["v1", "images"], None::<&()>)
            .await?;
        Ok(list.images)
    }

    /// `GET /v1/images/{name}` (the name is percent-encoded for you).
    pub async fn get_image(&self, name: &str) -> Result<warren_api::Image, Error> {
        self.call(Method::GET, &["v1", "images", name], None::<&()>)
            .await
    }

    /// `DELETE /v1/images/{name}`: 409 `image_in_use` while a sandbox or pool uses it.
    pub async fn delete_image(&self, name: &str) -> Result<(), Error> {
        let resp = self
            .request(Method::DELETE, &["v1", "images", name])
            .send()
            .await?;
        check(resp).await.map(drop)
    }

    /// `POST /v1/sandboxes`: create a sandbox; returns once it runs.
    pub async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<Sandbox, Error> {
        self.call(Method::POST, &["v1", "sandboxes"], Some(req))
            .await
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn get_sandbox(&self, id: &str) -> Result<Sandbox, Error> {
        self.call(Method::GET, &["v1", "sandboxes", id], None::<&()>)
            .await
    }

    /// `GET /v1/sandboxes`: the sandboxes whose metadata has every `(key, value)` pair of
    /// `metadata` (all of them when it is empty), oldest first.
    pub async fn list_sandboxes<K, V>(&self, metadata: &[(K, V)]) -> Result<Vec<Sandbox>, Error>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut url = self.url(&["v1", "sandboxes"]);
        if !metadata.is_empty() {
            let mut query = url.query_pairs_mut();
            for (k, v) in metadata {
                query.append_pair(&format!("metadata.{}", k.as_ref()), v.as_ref());
            }
        }
        let resp = self.http_request(Method::GET, url).send().await?;
        decode(check(resp).await?).await
    }

    /// `DELETE /v1/sandboxes/{id}`: kill everything in the sandbox and remove it.
    pub async fn delete_sandbox(&self, id: &str) -> Result<(), Error> {
        let resp = self
            .request(Method::DELETE, &["v1", "sandboxes", id])
            .send()
            .await?;
        check(resp).await.map(drop)
    }

    /// Alias of [`Client::delete_sandbox`] (the orchestrator's `DestroySandbox`).
    pub async fn destroy_sandbox(&self, id: &str) -> Result<(), Error> {
        self.delete_sandbox(id).await
    }

    /// `POST /v1/sandboxes/{id}/timeout`: the sandbox now expires `timeout_secs` from now.
    pub async fn set_timeout(&self, id: &str, timeout_secs: u64) -> Result<Sandbox, Error> {
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "timeout"],
            Some(&SetTimeoutRequest { timeout_secs }),
        )
        .await
    }

    /// `PATCH /v1/sandboxes/{id}/metadata`: set keys (`Some`) and remove keys (`None`);
    /// other keys are kept.
    pub async fn update_metadata(
        &self,
        id: &str,
        patch: &BTreeMap<String, Option<String>>,
    ) -> Result<Sandbox, Error> {
        self.call(
            Method::PATCH,
            &["v1", "sandboxes", id, "metadata"],
            Some(patch),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/exec`: run a command to completion. Each of stdout/stderr is
    /// capped by the server, and all non-streamed execs share an output budget: what is
    /// dropped is in `stdout_truncated_bytes` / `stderr_truncated_bytes` (`truncated`); use
    /// [`Client::exec_stream`] for large output. Large output of mostly control bytes comes
    /// as base64 even when text was asked for (`stdout_encoding`): read it with
    /// [`ExecResult::stdout_raw`] / [`ExecResult::stdout_text`], which decode as needed.
    pub async fn exec(&self, id: &str, req: &ExecRequest) -> Result<ExecResult, Error> {
        self.call(Method::POST, &["v1", "sandboxes", id, "exec"], Some(req))
            .await
    }

    /// `POST /v1/sandboxes/{id}/exec` as a stream: output as it is produced, then the exit.
    /// Errors that stop the command from starting (unknown sandbox, command not found, ...)
    /// are returned here; dropping the stream closes the connection, which kills the
    /// command.
    pub async fn exec_stream(&self, id: &str, req: &ExecRequest) -> Result<ExecEvents, Error> {
        let resp = self
            .request(Method::POST, &["v1", "sandboxes", id, "exec"])
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .json(req)
            .send()
            .await?;
        let resp = check(resp).await?;
        let is_sse = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            return Err(Error::Decode(
                "expected a text/event-stream response".to_string(),
            ));
        }
        let base64 = req.encoding == Some(OutputEncoding::Base64);
        Ok(ExecEvents::new(resp, base64))
    }

    /// `GET /v1/sandboxes/{id}/files?path=`: a regular file's content as a stream of
    /// chunks. Errors before the first byte (no such file, a directory, ...) are returned
    /// here; a failure midway is an item of the stream.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<FileStream, Error> {
        let resp = self
            .files_request(Method::GET, id, None, &[("path", path)])
            .send()
            .await?;
        let resp = check(resp).await?;
        Ok(Box::pin(
            resp.bytes_stream().map(|c| c.map_err(Error::Http)),
        ))
    }

    /// `GET /v1/sandboxes/{id}/files/archive?path=`: the directory tree at `path` as a
    /// stream of tar archive bytes (names relative to `path`, symlinks as symlinks). A
    /// failure midway is an item of the stream (the archive is then incomplete).
    pub async fn read_archive(&self, id: &str, path: &str) -> Result<FileStream, Error> {
        let resp = self
            .files_request(Method::GET, id, Some("archive"), &[("path", path)])
            .send()
            .await?;
        let resp = check(resp).await?;
        Ok(Box::pin(
            resp.bytes_stream().map(|c| c.map_err(Error::Http)),
        ))
    }

    /// `POST /v1/sandboxes/{id}/files/upload?dir=`: several files in one
    /// `multipart/form-data` request, streamed part by part. Each name is a path relative to
    /// `dir` (`a.txt`, `src/lib.rs`; absolute names and `..` are refused); the files are
    /// owned by root, mode 0644, parents created.
    pub async fn upload_files(
        &self,
        id: &str,
        dir: &str,
        files: Vec<(String, reqwest::Body)>,
    ) -> Result<UploadedFiles, Error> {
        self.upload_files_as(id, dir, files, ExecUser::Root).await
    }

    /// [`Client::upload_files`] with an owner (see [`Client::write_file_as`]).
    pub async fn upload_files_as(
        &self,
        id: &str,
        dir: &str,
        files: Vec<(String, reqwest::Body)>,
        user: ExecUser,
    ) -> Result<UploadedFiles, Error> {
        let mut form = reqwest::multipart::Form::new();
        for (name, body) in files {
            form = form.part(
                "file",
                reqwest::multipart::Part::stream(body).file_name(name),
            );
        }
        let mut query = vec![("dir", dir)];
        if user == ExecUser::User {
            query.push(("user", "user"));
        }
        let resp = self
            .files_request(Method::POST, id, Some("upload"), &query)
            .multipart(form)
            .send()
            .await?;
        decode(check(resp).await?).await
    }

    /// [`Client::read_file`], collected in memory.
    pub async fn read_file_bytes(&self, id: &str, path: &str) -> Result<Vec<u8>, Error> {
        let mut stream = self.read_file(id, path).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// `PUT /v1/sandboxes/{id}/files?path=`: create or replace a file, owned by root, with
    /// `mode` (default 0o644). The body is streamed: pass bytes, a `String`, or e.g.
    /// `reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(tokio::fs::File))`.
    /// The write is atomic: an interrupted upload changes nothing.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
        mode: Option<u32>,
    ) -> Result<FileInfo, Error> {
        self.write_file_as(id, path, body, mode, ExecUser::Root)
            .await
    }

    /// [`Client::write_file`] with an owner: [`ExecUser::User`] makes the file (and any
    /// parent directory created for it) belong to `user` (1000:1000).
    pub async fn write_file_as(
        &self,
        id: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
        mode: Option<u32>,
        user: ExecUser,
    ) -> Result<FileInfo, Error> {
        let mode = mode.map(|m| format!("{m:o}"));
        let mut query = vec![("path", path)];
        if let Some(m) = &mode {
            query.push(("mode", m));
        }
        if user == ExecUser::User {
            query.push(("user", "user"));
        }
        let resp = self
            .files_request(Method::PUT, id, None, &query)
            .header(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )
            .body(body)
            .send()
            .await?;
        decode(check(resp).await?).await
    }

    /// `GET /v1/sandboxes/{id}/files/stat?path=`: metadata (symlinks are not followed).
    pub async fn stat(&self, id: &str, path: &str) -> Result<FileInfo, Error> {
        let resp = self
            .files_request(Method::GET, id, Some("stat"), &[("path", path)])
            .send()
            .await?;
        decode(check(resp).await?).await
    }

    /// `GET /v1/sandboxes/{id}/files/list`: the entries below a directory, `depth` (1..=10)
    /// levels deep.
    pub async fn list_files(&self, id: &str, path: &str, depth: u32) -> Result<FileList, Error> {
        let depth = depth.to_string();
        let resp = self
            .files_request(
                Method::GET,
                id,
                Some("list"),
                &[("path", path), ("depth", &depth)],
            )
            .send()
            .await?;
        decode(check(resp).await?).await
    }

    /// `POST /v1/sandboxes/{id}/files/mkdir`: `mkdir -p` (owned by root, mode 0755);
    /// returns the directory's metadata.
    pub async fn mkdir(&self, id: &str, path: &str) -> Result<FileInfo, Error> {
        let req = MkdirRequest {
            path: path.to_string(),
            ..Default::default()
        };
        self.mkdir_with(id, &req).await
    }

    /// `POST /v1/sandboxes/{id}/files/mkdir` with every option.
    pub async fn mkdir_with(&self, id: &str, req: &MkdirRequest) -> Result<FileInfo, Error> {
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "files", "mkdir"],
            Some(req),
        )
        .await
    }

    /// `POST /v1/sandboxes/{id}/files/metadata`: set (or, with an empty value, remove)
    /// metadata keys of a file or directory; answers the file with its metadata.
    pub async fn set_file_metadata(
        &self,
        id: &str,
        path: &str,
        metadata: std::collections::BTreeMap<String, String>,
    ) -> Result<FileInfo, Error> {
        let req = warren_api::FileMetadataRequest {
            path: path.to_string(),
            metadata,
        };
        self.call(
            Method::POST,
            &["v1", "sandboxes", id, "files", "metadata"],
            Some(&req),
        )
        .await
    }

    /// `DELETE /v1/sandboxes/{id}/files?path=`: remove a file, symlink, empty directory,
    /// or with `recursive` a directory tree.
    pub async fn remove_path(&self, id: &str, path: &str, recursive: bool) -> Result<(), Error> {
        let recursive = if recursive { "true" } else { "false" };
        let resp = self
            .files_request(
                Method::DELETE,
                id,
                None,
                &[("path", path), ("recursive", recursive)],
            )
            .send()
            .await?;
        check(resp).await.map(drop)
    }

    /// `POST /v1/sandboxes/{id}/files/move`: rename `from` to `to`; an existing `to` is
    /// `file_exists` unless `overwrite`.
    pub async fn move_path(
        &self,
        id: &str,
        from: &str,
        to: &str,
        overwrite: bool,
    ) -> Result<(), Error> {
        let req = MoveRequest {
            from: from.to_string(),
            to: to.to_string(),
            overwrite: Some(overwrite),
        };
        let resp = self
            .request(Method::POST, &["v1", "sandboxes", id, "files", "move"])
            .json(&req)
            .send()
            .await?;
        check(resp).await.map(drop)
    }

    fn files_request(
        &self,
        method: Method,
        id: &str,
        op: Option<&str>,
        query: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
        let mut segments = vec!["v1", "sandboxes", id, "files"];
        segments.extend(op);
        let mut url = self.url(&segments);
        url.query_pairs_mut().extend_pairs(query);
        self.http_request(method, url)
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    fn request(&self, method: Method, segments: &[&str]) -> reqwest::RequestBuilder {
        self.http_request(method, self.url(segments))
    }

    /// The API key this client sends, if any.
    pub(crate) fn api_key(&self) -> Option<&str> {
        self.api_key.as_deref()
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
    ) -> Result<T, Error> {
        let mut req = self.request(method, segments);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await?;
        decode(check(resp).await?).await
    }
}

impl Client {
    /// `GET url` asking for `text/event-stream`; a non-2xx answer is [`Error::Api`].
    pub(crate) async fn get_event_stream(&self, url: reqwest::Url) -> Result<Response, Error> {
        let resp = self
            .http_request(Method::GET, url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await?;
        check(resp).await
    }
}

/// Turn a non-2xx response into [`Error::Api`].
async fn check(resp: Response) -> Result<Response, Error> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await?;
    Err(match serde_json::from_slice::<ErrorBody>(&body) {
        Ok(e) => Error::Api {
            status: status.as_u16(),
            code: e.error.code,
            message: e.error.message,
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: fallback_code(status),
            message: {
                let text = String::from_utf8_lossy(&body).trim().to_string();
                if text.is_empty() {
                    status.to_string()
                } else {
                    text
                }
            },
        },
    })
}

/// A code for an error response that did not come from Warren (e.g. a proxy's).
fn fallback_code(status: StatusCode) -> String {
    status
        .canonical_reason()
        .map(|r| r.to_ascii_lowercase().replace([' ', '-'], "_"))
        .unwrap_or_else(|| format!("http_{}", status.as_u16()))
}

async fn decode<T: DeserializeOwned>(resp: Response) -> Result<T, Error> {
    let body = resp.bytes().await?;
    serde_json::from_slice(&body).map_err(|e| Error::Decode(e.to_string()))
}

/// A request body streamed from any reader (a `tokio::fs::File`, stdin, ...), for
/// [`Client::write_file`]: nothing is held in memory beyond one chunk.
pub fn body_from_reader<R>(reader: R) -> reqwest::Body
where
    R: tokio::io::AsyncRead + Send + 'static,
{
    reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(reader))
}

/// Decode output requested with `encoding: base64`.
pub fn decode_base64(data: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| Error::Decode(format!("bad base64 output: {e}")))
}

/// One item of a streamed exec.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecStreamEvent {
    /// Raw bytes (UTF-8 text when the request asked for `utf8`, exact bytes for `base64`).
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Always the last item.
    Exit(ExitEvent),
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Send>>;

/// A file's content as it downloads ([`Client::read_file`]).
pub type FileStream = Pin<Box<dyn Stream<Item = Result<bytes::Bytes, Error>> + Send>>;

/// The live output of a command started with [`Client::exec_stream`]: a
/// `Stream<Item = Result<ExecStreamEvent, Error>>` that ends after [`ExecStreamEvent::Exit`].
pub struct ExecEvents {
    body: ByteStream,
    parser: sse::SseParser,
    pending: VecDeque<sse::SseEvent>,
    base64: bool,
    done: bool,
}

impl std::fmt::Debug for ExecEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecEvents")
            .field("base64", &self.base64)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ExecEvents {
    fn new(resp: Response, base64: bool) -> ExecEvents {
        ExecEvents {
            body: Box::pin(resp.bytes_stream()),
            parser: sse::SseParser::default(),
            pending: VecDeque::new(),
            base64,
            done: false,
        }
    }

    /// Wait for the end, collecting the output: `(stdout, stderr, exit)`.
    pub async fn collect_all(mut self) -> Result<(Vec<u8>, Vec<u8>, ExitEvent), Error> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(event) = self.next().await {
            match event? {
                ExecStreamEvent::Stdout(b) => out.extend(b),
                ExecStreamEvent::Stderr(b) => err.extend(b),
                ExecStreamEvent::Exit(exit) => return Ok((out, err, exit)),
            }
        }
        Err(Error::Decode(
            "the stream ended before the exit event".into(),
        ))
    }

    /// Convert one SSE event; `None` for event types this client does not know.
    fn convert(&mut self, ev: sse::SseEvent) -> Option<Result<ExecStreamEvent, Error>> {
        let chunk = |data: &str, base64: bool| -> Result<Vec<u8>, Error> {
            let chunk: OutputChunk = serde_json::from_str(data)
                .map_err(|e| Error::Decode(format!("bad output event: {e}")))?;
            if base64 {
                decode_base64(&chunk.data)
            } else {
                Ok(chunk.data.into_bytes())
            }
        };
        Some(match ev.event.as_str() {
            "stdout" => chunk(&ev.data, self.base64).map(ExecStreamEvent::Stdout),
            "stderr" => chunk(&ev.data, self.base64).map(ExecStreamEvent::Stderr),
            "exit" => {
                self.done = true;
                serde_json::from_str::<ExitEvent>(&ev.data)
                    .map(ExecStreamEvent::Exit)
                    .map_err(|e| Error::Decode(format!("bad exit event: {e}")))
            }
            "error" => {
                self.done = true;
                Err(match serde_json::from_str::<ErrorBody>(&ev.data) {
                    Ok(e) => Error::Api {
                        status: 500,
                        code: e.error.code,
                        message: e.error.message,
                    },
                    Err(e) => Error::Decode(format!("bad error event: {e}")),
                })
            }
            _ => return None,
        })
    }
}

impl Stream for ExecEvents {
    type Item = Result<ExecStreamEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(ev) = self.pending.pop_front() {
                match self.convert(ev) {
                    Some(item) => return Poll::Ready(Some(item)),
                    None => continue,
                }
            }
            let this = &mut *self;
            match this.body.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(bytes))) => this.parser.push(&bytes, &mut this.pending),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Http(e))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Decode(
                        "the stream ended before the exit event".into(),
                    ))));
                }
            }
        }
    }
}

/// A sandbox by id: the calls of [`Client`] that take one, bound to it.
#[derive(Debug, Clone)]
pub struct SandboxHandle {
    client: Client,
    id: String,
}

impl SandboxHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The sandbox's current record.
    pub async fn info(&self) -> Result<Sandbox, Error> {
        self.client.get_sandbox(&self.id).await
    }

    pub async fn exec(&self, req: &ExecRequest) -> Result<ExecResult, Error> {
        self.client.exec(&self.id, req).await
    }

    /// Run `cmd` with defaults (UTF-8 output, root, `/workspace`) and wait for it.
    pub async fn run<I, S>(&self, cmd: I) -> Result<ExecResult, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let req = ExecRequest {
            cmd: cmd.into_iter().map(Into::into).collect(),
            ..Default::default()
        };
        self.exec(&req).await
    }

    pub async fn exec_stream(&self, req: &ExecRequest) -> Result<ExecEvents, Error> {
        self.client.exec_stream(&self.id, req).await
    }

    pub async fn set_timeout(&self, timeout_secs: u64) -> Result<Sandbox, Error> {
        self.client.set_timeout(&self.id, timeout_secs).await
    }

    pub async fn delete(&self) -> Result<(), Error> {
        self.client.delete_sandbox(&self.id).await
    }

    pub async fn read_file(&self, path: &str) -> Result<FileStream, Error> {
        self.client.read_file(&self.id, path).await
    }

    pub async fn read_archive(&self, path: &str) -> Result<FileStream, Error> {
        self.client.read_archive(&self.id, path).await
    }

    pub async fn upload_files(
        &self,
        dir: &str,
        files: Vec<(String, reqwest::Body)>,
    ) -> Result<UploadedFiles, Error> {
        self.client.upload_files(&self.id, dir, files).await
    }

    pub async fn read_file_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.client.read_file_bytes(&self.id, path).await
    }

    pub async fn write_file(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        mode: Option<u32>,
    ) -> Result<FileInfo, Error> {
        self.client.write_file(&self.id, path, body, mode).await
    }

    pub async fn write_file_as(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
        mode: Option<u32>,
        user: ExecUser,
    ) -> Result<FileInfo, Error> {
        self.client
            .write_file_as(&self.id, path, body, mode, user)
            .await
    }

    pub async fn stat(&self, path: &str) -> Result<FileInfo, Error> {
        self.client.stat(&self.id, path).await
    }

    pub async fn list_files(&self, path: &str, depth: u32) -> Result<FileList, Error> {
        self.client.list_files(&self.id, path, depth).await
    }

    pub async fn mkdir(&self, path: &str) -> Result<FileInfo, Error> {
        self.client.mkdir(&self.id, path).await
    }

    pub async fn mkdir_with(&self, req: &MkdirRequest) -> Result<FileInfo, Error> {
        self.client.mkdir_with(&self.id, req).await
    }

    pub async fn remove_path(&self, path: &str, recursive: bool) -> Result<(), Error> {
        self.client.remove_path(&self.id, path, recursive).await
    }

    pub async fn move_path(&self, from: &str, to: &str, overwrite: bool) -> Result<(), Error> {
        self.client.move_path(&self.id, from, to, overwrite).await
    }
}

#[cfg(test)]
mod tests;
