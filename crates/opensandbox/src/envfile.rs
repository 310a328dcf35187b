//! execd's persistent environment: the SDK's `commands.set_env(KEY, VALUE)` appends
//! `KEY='VALUE'` (or `KEY="escaped"`) to the file named by `EXECD_ENVS`, and every later
//! command and session starts with what the file says. Warren keeps no state for it: the
//! file lives in the sandbox (so it is in snapshots and forks) and is read at each start.

use std::collections::BTreeMap;

use crate::error::OsResult;
use crate::{read_small, Os};

/// Where the file lives in every sandbox (writable by root and by `user`).
pub const ENV_FILE: &str = "/tmp/.opensandbox-execd.env";
const MAX_ENV_FILE: u64 = 1024 * 1024;

/// The environment a command starts with: the file's entries, then the request's, and
/// `EXECD_ENVS` naming the file.
pub async fn command_env(
    os: &Os,
    sid: &str,
    request: &BTreeMap<String, String>,
) -> OsResult<BTreeMap<String, String>> {
    let mut env = match read_small(os, sid, ENV_FILE, MAX_ENV_FILE).await? {
        Some(text) => parse(&String::from_utf8_lossy(&text)),
        None => BTreeMap::new(),
    };
    env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.insert("EXECD_ENVS".into(), ENV_FILE.into());
    Ok(env)
}

fn valid_key(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `KEY='literal'`, `KEY="with \\n escapes"` or `KEY=bare` lines; later lines win; others
/// (comments, blanks, malformed) are skipped.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !valid_key(k) {
            continue;
        }
        let value = if let Some(inner) = v.strip_prefix('\'') {
            match inner.strip_suffix('\'') {
                Some(lit) => lit.to_string(),
                None => continue,
            }
        } else if let Some(inner) = v.strip_prefix('"') {
            match inner.strip_suffix('"') {
                Some(esc) => unescape(esc),
                None => continue,
            }
        } else {
            v.trim_end().to_string()
        };
        out.insert(k.to_string(), value);
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_forms_parse() {
        let text = "A='x y'\nB=\"it's \\\"q\\\"\\n2\"\n# c\nbad line\n1X=no\nC=bare\nA='later'\nD='unterminated\n";
        let env = parse(text);
        assert_eq!(env.get("A").map(String::as_str), Some("later"));
        assert_eq!(env.get("B").map(String::as_str), Some("it's \"q\"\n2"));
        assert_eq!(env.get("C").map(String::as_str), Some("bare"));
        assert!(!env.contains_key("1X") && !env.contains_key("D"));
    }
}
