//! Search, replace and watch below a path in a running sandbox.

use std::time::Duration;

use futures::StreamExt;
use warren_api::{
    FileEvent, FileEventKind, FileKind, ReplaceRequest, ReplaceResult, ReplacedFile, SearchMatch,
    SearchRequest, SearchResult, DEFAULT_SEARCH_FILE_BYTES, DEFAULT_SEARCH_RESULTS,
    MAX_SEARCH_RESULTS,
};
use warren_runtime::AgentCode;
use warren_runtime::{ReplaceSpec, RuntimeError, SearchSpec};

use super::{invalid, validate_path};
use crate::{Engine, EngineError};

/// A search or replacement stops (with `truncated`) after this long.
pub const SEARCH_TIME_LIMIT: Duration = Duration::from_secs(10);
/// Default and largest `max_files` of a replacement.
pub const MAX_REPLACE_FILES: u32 = 10_000;
/// Longest accepted glob, pattern or replacement (bytes).
const MAX_EXPR_LEN: usize = 4096;
/// Compiled regexes may not grow beyond this (guards against pathological patterns).
const REGEX_SIZE_LIMIT: usize = 10 << 20;

/// Changes reported by [`Engine::watch_files`]; dropping it ends the watch.
pub type FileEvents =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<FileEvent, EngineError>> + Send>>;

fn check_len(field: &str, s: &str) -> Result<(), EngineError> {
    if s.len() > MAX_EXPR_LEN {
        return Err(invalid(format!(
            "{field} is {} bytes long; the maximum is {MAX_EXPR_LEN}",
            s.len()
        )));
    }
    Ok(())
}

/// A valid regular expression, or `invalid_request` with the parser's message.
pub fn validate_pattern(pattern: &str) -> Result<(), EngineError> {
    check_len("pattern", pattern)?;
    regex::bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| invalid(format!("pattern is not a valid regular expression: {e}")))
}

/// A glob the agent will accept (`globset` syntax), not empty.
fn validate_glob(glob: &str) -> Result<(), EngineError> {
    check_len("glob", glob)?;
    if glob.is_empty() {
        return Err(invalid("glob must not be empty"));
    }
    globset::Glob::new(glob)
        .map(drop)
        .map_err(|e| invalid(format!("glob is not valid: {e}")))
}

fn api_kind(kind: warren_runtime::FileKind) -> FileKind {
    match kind {
        warren_runtime::FileKind::Dir => FileKind::Dir,
        _ => FileKind::File,
    }
}

fn api_event(kind: warren_runtime::FileEventKind) -> FileEventKind {
    match kind {
        warren_runtime::FileEventKind::Created => FileEventKind::Created,
        warren_runtime::FileEventKind::Modified => FileEventKind::Modified,
        warren_runtime::FileEventKind::Deleted => FileEventKind::Deleted,
        warren_runtime::FileEventKind::Renamed => FileEventKind::Renamed,
    }
}

impl Engine {
    /// Search file names (`glob`) or contents (`pattern`) below `req.path`.
    pub async fn search_files(
        &self,
        id: &str,
        req: SearchRequest,
    ) -> Result<SearchResult, EngineError> {
        validate_path("path", &req.path)?;
        if req.glob.is_none() && req.pattern.is_none() {
            return Err(invalid("give a glob, a pattern, or both"));
        }
        if let Some(g) = &req.glob {
            validate_glob(g)?;
        }
        if let Some(p) = &req.pattern {
            validate_pattern(p)?;
        }
        let max_results = req.max_results.unwrap_or(DEFAULT_SEARCH_RESULTS);
        if !(1..=MAX_SEARCH_RESULTS).contains(&max_results) {
            return Err(invalid(format!(
                "max_results must be between 1 and {MAX_SEARCH_RESULTS}, got {max_results}"
            )));
        }
        self.ready(id).await?;
        let spec = SearchSpec {
            path: req.path,
            glob: req.glob,
            pattern: req.pattern,
            max_results,
            max_file_bytes: req.max_file_bytes.unwrap_or(DEFAULT_SEARCH_FILE_BYTES),
            hidden: req.hidden,
            timeout_ms: SEARCH_TIME_LIMIT.as_millis() as u64,
        };
        match self.agent(&crate::sandbox_id(id)?).search_files(spec).await {
            Ok(out) => Ok(SearchResult {
                matches: out
                    .matches
                    .into_iter()
                    .map(|m| SearchMatch {
                        path: m.path,
                        line: m.line,
                        text: m.text,
                    })
                    .collect(),
                files_scanned: out.files_scanned,
                truncated: out.truncated,
            }),
            Err(e) => Err(self.search_error(id, e).await),
        }
    }

    /// Replace `pattern` by `replacement` in the files below `req.path`; the pattern is
    /// checked before anything changes.
    pub async fn replace_files(
        &self,
        id: &str,
        req: ReplaceRequest,
    ) -> Result<ReplaceResult, EngineError> {
        validate_path("path", &req.path)?;
        validate_pattern(&req.pattern)?;
        check_len("replacement", &req.replacement)?;
        if let Some(g) = &req.glob {
            validate_glob(g)?;
        }
        let max_files = req.max_files.unwrap_or(MAX_REPLACE_FILES);
        if !(1..=MAX_REPLACE_FILES).contains(&max_files) {
            return Err(invalid(format!(
                "max_files must be between 1 and {MAX_REPLACE_FILES}, got {max_files}"
            )));
        }
        self.ready(id).await?;
        let spec = ReplaceSpec {
            path: req.path,
            glob: req.glob,
            pattern: req.pattern,
            replacement: req.replacement,
            max_files,
            max_file_bytes: DEFAULT_SEARCH_FILE_BYTES,
            hidden: false,
            timeout_ms: SEARCH_TIME_LIMIT.as_millis() as u64,
        };
        match self
            .agent(&crate::sandbox_id(id)?)
            .replace_files(spec)
            .await
        {
            Ok(out) => Ok(ReplaceResult {
                files: out
                    .files
                    .into_iter()
                    .map(|f| ReplacedFile {
                        path: f.path,
                        replacements: f.replacements,
                    })
                    .collect(),
                total_replacements: out.total_replacements,
                truncated: out.truncated,
            }),
            Err(e) => Err(self.search_error(id, e).await),
        }
    }

    /// Watch `path` (and, with `recursive`, everything below it); returns once the watch is
    /// active. The stream ends when the sandbox goes away; dropping it ends the watch.
    pub async fn watch_files(
        &self,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<FileEvents, EngineError> {
        validate_path("path", path)?;
        self.ready(id).await?;
        match self
            .agent(&crate::sandbox_id(id)?)
            .watch_files(path, recursive)
            .await
        {
            Ok(stream) => Ok(self.attached(
                id,
                stream.map(|r| match r {
                    Ok(c) => Ok(FileEvent {
                        event: api_event(c.event),
                        path: c.path,
                        kind: api_kind(c.kind),
                        to: c.to,
                    }),
                    Err(e) => Err(EngineError::Runtime(e)),
                }),
            )),
            Err(e) => Err(self.search_error(id, e).await),
        }
    }

    /// Like [`Engine::file_error`], but the agent's `invalid_request` (a glob it refused)
    /// stays a client error.
    async fn search_error(&self, id: &str, e: RuntimeError) -> EngineError {
        match e {
            RuntimeError::File {
                code: AgentCode::InvalidRequest,
                message,
            } => EngineError::InvalidRequest(message),
            e => self.file_error(id, e).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_validated() {
        assert!(validate_pattern("fn \\w+").is_ok());
        let err = validate_pattern("(unclosed").unwrap_err();
        assert!(matches!(err, EngineError::InvalidRequest(m) if m.contains("regular expression")));
        assert!(validate_pattern(&"a".repeat(MAX_EXPR_LEN + 1)).is_err());
        assert!(validate_glob("").is_err());
        assert!(validate_glob("a[").is_err());
        assert!(validate_glob("**/*.rs").is_ok());
    }
}
