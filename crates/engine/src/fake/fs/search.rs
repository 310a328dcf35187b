//! Search and replace over a fake tree (no time limit: the tree is small and in memory).

use bytes::Bytes;
use globset::{GlobBuilder, GlobMatcher};
use warren_runtime::{
    ReplaceOutcome, ReplaceSpec, ReplacedFile, RuntimeError, SearchMatch, SearchOutcome, SearchSpec,
};

use super::{ferr, is_below, now, read_only, Content, Tree};

const MAX_LINE_CHARS: usize = 1000;
const BINARY_PROBE: usize = 8192;

fn matcher(glob: Option<&str>) -> Result<Option<(GlobMatcher, bool)>, RuntimeError> {
    glob.map(|g| {
        GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map(|m| (m.compile_matcher(), !g.contains('/')))
            .map_err(|e| ferr("invalid_request", format!("bad glob: {e}")))
    })
    .transpose()
}

fn regex(pattern: &str) -> Result<regex::bytes::Regex, RuntimeError> {
    regex::bytes::Regex::new(pattern)
        .map_err(|e| ferr("invalid_request", format!("bad pattern: {e}")))
}

impl Tree {
    /// Regular files below `root` selected by `glob` (sorted), as (path, content).
    fn files_below(
        &self,
        root: &str,
        glob: Option<&str>,
        hidden: bool,
        max_bytes: u64,
    ) -> Result<Vec<(String, Bytes)>, RuntimeError> {
        let root = super::normalize(root)?;
        let glob = matcher(glob)?;
        let Some(node) = self.nodes.get(&root) else {
            return Err(ferr(
                "not_found",
                format!("{root}: no such file or directory"),
            ));
        };
        if let Content::File(b) = &node.content {
            return Ok(vec![(root, b.clone())]);
        }
        let mut out = Vec::new();
        for (path, node) in &self.nodes {
            if !is_below(path, &root) {
                continue;
            }
            let Content::File(data) = &node.content else {
                continue; // directories are walked, symlinks never followed
            };
            let rel = path[root.len()..].trim_start_matches('/');
            if !hidden && rel.split('/').any(|c| c.starts_with('.')) {
                continue;
            }
            if data.len() as u64 > max_bytes {
                continue;
            }
            if let Some((g, on_name)) = &glob {
                let name = rel.rsplit('/').next().unwrap_or(rel);
                if !g.is_match(if *on_name { name } else { rel }) {
                    continue;
                }
            }
            out.push((path.clone(), data.clone()));
        }
        Ok(out)
    }

    pub(crate) fn search(&self, spec: &SearchSpec) -> Result<SearchOutcome, RuntimeError> {
        let files = self.files_below(
            &spec.path,
            spec.glob.as_deref(),
            spec.hidden,
            spec.max_file_bytes,
        )?;
        let re = spec.pattern.as_deref().map(regex).transpose()?;
        let max = spec.max_results as usize;
        let mut out = SearchOutcome {
            matches: Vec::new(),
            files_scanned: 0,
            truncated: false,
        };
        'files: for (path, data) in files {
            let Some(re) = &re else {
                if out.matches.len() == max {
                    out.truncated = true;
                    break;
                }
                out.files_scanned += 1;
                out.matches.push(SearchMatch {
                    path,
                    line: None,
                    text: None,
                });
                continue;
            };
            if data[..data.len().min(BINARY_PROBE)].contains(&0) {
                continue;
            }
            out.files_scanned += 1;
            let body = data.strip_suffix(b"\n").unwrap_or(&data);
            for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                if re.is_match(line) {
                    if out.matches.len() == max {
                        out.truncated = true;
                        break 'files;
                    }
                    let text: String = String::from_utf8_lossy(line)
                        .chars()
                        .take(MAX_LINE_CHARS)
                        .collect();
                    out.matches.push(SearchMatch {
                        path: path.clone(),
                        line: Some(i as u64 + 1),
                        text: Some(text),
                    });
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn replace(&mut self, spec: &ReplaceSpec) -> Result<ReplaceOutcome, RuntimeError> {
        let files = self.files_below(
            &spec.path,
            spec.glob.as_deref(),
            spec.hidden,
            spec.max_file_bytes,
        )?;
        let re = regex(&spec.pattern)?;
        let mut out = ReplaceOutcome {
            files: Vec::new(),
            total_replacements: 0,
            truncated: false,
        };
        for (path, data) in files {
            if data[..data.len().min(BINARY_PROBE)].contains(&0) {
                continue;
            }
            let count = re.find_iter(&data).count() as u64;
            if count == 0 {
                continue;
            }
            if out.files.len() == spec.max_files as usize {
                out.truncated = true;
                break;
            }
            if read_only(&path) {
                return Err(ferr("permission_denied", format!("{path}: read-only")));
            }
            let new = Bytes::from(
                re.replace_all(&data, spec.replacement.as_bytes())
                    .into_owned(),
            );
            if let Some(node) = self.nodes.get_mut(&path) {
                node.content = Content::File(new);
                node.mtime = now();
            }
            out.total_replacements += count;
            out.files.push(ReplacedFile {
                path,
                replacements: count,
            });
        }
        Ok(out)
    }
}
