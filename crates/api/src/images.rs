//! Images on the wire: what `GET /v1/images` lists and `POST /v1/images/pull` takes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Body of `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImageRequest {
    /// `host[:port]/name[:tag]` or `name@sha256:…` (a name without a registry is Docker
    /// Hub's).
    #[serde(rename = "ref")]
    pub reference: String,
}

/// What an image's config gives its sandboxes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageConfigView {
    /// `KEY=VALUE`: the environment of every command (a sandbox's and a request's `env` win).
    pub env: Vec<String>,
    /// Default working directory of commands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Default user of commands (`name`, `uid` or `uid:gid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
}

/// An image a sandbox can be made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Image {
    /// The name to create sandboxes with (the normalised reference it was pulled as;
    /// `host` for the built-in one).
    pub name: String,
    /// `sha256:…` of its manifest (absent for `host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Compressed size of its layers, as pulled.
    pub size_bytes: u64,
    pub layers: usize,
    pub config: ImageConfigView,
    /// Built into the runtime (cannot be pulled or deleted).
    pub builtin: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_at: Option<DateTime<Utc>>,
}

/// `GET /v1/images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// An SSE event of `POST /v1/images/pull` with `Accept: text/event-stream`: `progress`
/// events, then one `image` event (the result) or one `error` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullProgress {
    /// Digest of the layer's blob.
    pub layer: String,
    /// Bytes received.
    pub done: u64,
    /// Its size.
    pub total: u64,
    /// Whether it is stored (downloaded, verified and extracted, or already there).
    pub complete: bool,
}
