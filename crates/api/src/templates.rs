//! Templates on the wire: images built from a Dockerfile (`POST /v1/templates`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Image, NetworkRequest, Runtime};

/// The multipart form of `POST /v1/templates` (documentation: each field is a form part).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct BuildTemplateForm {
    /// The template's name: what sandboxes are created with (`image`). 1–128 of
    /// `[A-Za-z0-9_.:/-]`, starting with a letter or digit.
    pub name: String,
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// The build context: a tar archive (plain, gzip or zstd) of the files COPY and ADD
    /// name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Binary)]
    pub context: Option<Vec<u8>>,
    /// JSON object of `--build-arg` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_args: Option<String>,
    /// Started as a durable process tagged `start` in every sandbox made from the template
    /// (`sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    /// Run (`sh -c`) until it exits 0 before a sandbox made from the template counts as
    /// created (pool members too); at most `ready_timeout_secs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    /// Seconds `ready_cmd` may take to succeed (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_secs: Option<u64>,
    /// JSON of the RUN steps' network (mode and egress policy), as in a create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// What runs the RUN steps: `native` or `gvisor` (default: the server's default
    /// runtime). The template's files are the same either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Runtime>)]
    pub runtime: Option<String>,
    /// `true`: ignore the build cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_cache: Option<String>,
}

/// What a build is given, parsed from the form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildTemplateRequest {
    pub name: String,
    pub dockerfile: String,
    pub build_args: BTreeMap<String, String>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
    pub ready_timeout_secs: Option<u64>,
    pub network: Option<NetworkRequest>,
    pub runtime: Option<Runtime>,
    pub no_cache: bool,
}

/// A template: an image built from a Dockerfile, with what its sandboxes run at create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub name: String,
    /// The image (its config, layers and size).
    pub image: Image,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_timeout_secs: Option<u64>,
    /// The image it was built on (`FROM`).
    pub base: String,
    pub dockerfile: String,
    pub built_at: DateTime<Utc>,
    /// Wall time of the build, in milliseconds.
    pub build_ms: u64,
    /// Instructions after `FROM`.
    pub steps: usize,
    /// Of those, the ones the build cache answered.
    pub cached_steps: usize,
}

/// `GET /v1/templates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

/// A `step` event of a build: an instruction starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildStep {
    /// 1-based, of `total`.
    pub index: usize,
    pub total: usize,
    /// Its line in the Dockerfile.
    pub line: usize,
    pub instruction: String,
    /// The build cache had its result.
    pub cached: bool,
}

/// A `log` event of a build: output of a RUN step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildLog {
    /// `stdout` or `stderr`.
    pub stream: String,
    pub data: String,
}
