//! Wire types of file search, replace and watch (`/v1/sandboxes/{id}/files/search`,
//! `/files/replace`, `/files/watch`).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::FileKind;

/// Default and largest `max_results` of a search.
pub const DEFAULT_SEARCH_RESULTS: u32 = 1000;
pub const MAX_SEARCH_RESULTS: u32 = 10_000;
/// Default `max_file_bytes`: bigger files are skipped (10 MiB).
pub const DEFAULT_SEARCH_FILE_BYTES: u64 = 10 * 1024 * 1024;

/// Body of `POST /v1/sandboxes/{id}/files/search`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// Absolute directory (or file) to search below. Symlinks are never followed.
    pub path: String,
    /// Glob over paths relative to `path` (`**/*.rs`); a glob without `/` matches file
    /// names at any depth. Without `pattern`, the matching file names are the results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Regular expression (Rust `regex` syntax) searched line by line; binary files (a NUL
    /// byte in the first 8 KiB) are skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// At most this many matches (default 1000, at most 10000); then `truncated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_results: Option<u32>,
    /// Skip files bigger than this (default 10 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
    /// Include files and directories whose name starts with `.`.
    #[serde(default)]
    pub hidden: bool,
}

/// One search hit: a file (name search) or a line of a file (content search).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchMatch {
    /// Absolute path of the file.
    pub path: String,
    /// 1-based line number (content search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The matching line, cut to 1000 characters (content search).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Answer of `POST /v1/sandboxes/{id}/files/search`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    pub matches: Vec<SearchMatch>,
    /// Files looked at.
    pub files_scanned: u64,
    /// The search stopped early: result limit, answer size or the 10 s time limit.
    pub truncated: bool,
}

/// Body of `POST /v1/sandboxes/{id}/files/replace`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    /// Absolute directory (or file) below which to replace.
    pub path: String,
    /// Only files matching this glob (as in [`SearchRequest::glob`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// Regular expression to replace.
    pub pattern: String,
    /// Replacement; `$1`, `${name}` refer to capture groups (`$$` is a literal `$`).
    pub replacement: String,
    /// Change at most this many files (default and maximum 10000); then `truncated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,
}

/// A file changed by a replacement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplacedFile {
    pub path: String,
    pub replacements: u64,
}

/// Answer of `POST /v1/sandboxes/{id}/files/replace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplaceResult {
    pub files: Vec<ReplacedFile>,
    pub total_replacements: u64,
    /// Stopped early (`max_files` or the time limit); files not listed were not changed.
    pub truncated: bool,
}

/// Query of `GET /v1/sandboxes/{id}/files/watch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// Absolute path to watch (a directory or a file).
    pub path: String,
    /// Also watch every directory below `path`, including new ones.
    #[serde(default)]
    pub recursive: bool,
}

/// What happened (the SSE event name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileEventKind {
    Created,
    Modified,
    Deleted,
    Renamed,
}

impl FileEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FileEventKind::Created => "created",
            FileEventKind::Modified => "modified",
            FileEventKind::Deleted => "deleted",
            FileEventKind::Renamed => "renamed",
        }
    }
}

/// Data of one watch event (the SSE event name is its [`FileEventKind`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileEvent {
    /// What happened; also the SSE event name.
    pub event: FileEventKind,
    /// Absolute path (for `renamed`: the old one).
    pub path: String,
    /// `file` or `dir`.
    pub kind: FileKind,
    /// New path of a `renamed` entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}
