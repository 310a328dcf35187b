//! From Dockerfile text to instructions: parser directives, comments, line continuations, and
//! the splitting of an instruction's arguments into flags and words.

use crate::DockerfileError;

/// One instruction, its continuation lines joined.
#[derive(Debug)]
pub(crate) struct Instruction {
    /// 1-based line where the instruction starts.
    pub line: usize,
    /// The instruction word, upper-cased.
    pub keyword: String,
    /// Everything after the keyword, trimmed.
    pub args: String,
}

/// Splits `text` into instructions; also returns the escape character.
///
/// As Docker does: parser directives (`# escape=`, `# syntax=`, `# check=`) are only read at
/// the very top, before any other line; a line whose last character (trailing blanks aside) is
/// the escape character continues on the next line, the escape character removed and the lines
/// joined as they are; comment and blank lines inside a continuation are skipped.
pub(crate) fn instructions(text: &str) -> Result<(char, Vec<Instruction>), DockerfileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text.lines().collect();
    let mut escape = '\\';
    let mut seen = Vec::new();
    let mut next = 0;
    while let Some((key, value)) = lines.get(next).and_then(|line| directive(line)) {
        let error = |message: String| DockerfileError {
            line: next + 1,
            message,
        };
        if seen.contains(&key) {
            return Err(error(format!("the {key} parser directive is given twice")));
        }
        match key.as_str() {
            "escape" => {
                escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    _ => return Err(error(format!("invalid escape {value:?}: use \\ or `"))),
                }
            }
            "syntax" | "check" => {}
            // An unknown directive is a comment, and comments end the directives.
            _ => break,
        }
        seen.push(key);
        next += 1;
    }

    let mut out = Vec::new();
    while let Some(first) = lines.get(next) {
        let line = next + 1;
        next += 1;
        let first = first.trim_start();
        if first.is_empty() || first.starts_with('#') {
            continue;
        }
        let (piece, mut continued) = continuation(first, escape);
        let mut joined = piece.to_string();
        while let Some(more) = lines.get(next).filter(|_| continued) {
            next += 1;
            let trimmed = more.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (piece, again) = continuation(more, escape);
            joined.push_str(piece);
            continued = again;
        }
        let joined = joined.trim();
        if joined.is_empty() {
            continue;
        }
        let (keyword, args) = joined
            .split_once(char::is_whitespace)
            .unwrap_or((joined, ""));
        out.push(Instruction {
            line,
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
    }
    Ok((escape, out))
}

/// A `# key=value` parser directive: the lower-cased key and the value.
fn directive(line: &str) -> Option<(String, &str)> {
    let (key, value) = line.trim_start().strip_prefix('#')?.split_once('=')?;
    let (key, value) = (key.trim(), value.trim());
    let mut chars = key.chars();
    let valid = chars.next()?.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric());
    (valid && !value.is_empty()).then(|| (key.to_ascii_lowercase(), value))
}

/// The line without a trailing escape character, and whether there was one.
fn continuation(line: &str, escape: char) -> (&str, bool) {
    match line.trim_end_matches([' ', '\t']).strip_suffix(escape) {
        Some(rest) => (rest, true),
        None => (line, false),
    }
}

/// Leading `--name[=value]` flags of an instruction, and the rest. A lone `--` ends the flags.
pub(crate) fn take_flags(args: &str) -> (Vec<(String, Option<String>)>, &str) {
    let mut flags = Vec::new();
    let mut rest = args.trim_start();
    while let Some(after) = rest.strip_prefix("--") {
        let (flag, tail) = after.split_at(after.find(char::is_whitespace).unwrap_or(after.len()));
        rest = tail.trim_start();
        if flag.is_empty() {
            break;
        }
        flags.push(match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), Some(value.to_string())),
            None => (flag.to_string(), None),
        });
    }
    (flags, rest)
}

/// Splits on whitespace outside quotes, keeping quotes and escapes in the words (they are
/// removed by the expansion of each word), as Docker splits `ENV`, `LABEL` and `ARG`.
pub(crate) fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if quote.is_none() && c.is_whitespace() {
            if in_word {
                words.push(std::mem::take(&mut word));
                in_word = false;
            }
            continue;
        }
        in_word = true;
        word.push(c);
        if quote == Some(c) {
            quote = None;
        } else if quote.is_none() && (c == '"' || c == '\'') {
            quote = Some(c);
        } else if c == escape && quote != Some('\'') {
            word.extend(chars.next());
        }
    }
    if in_word {
        words.push(word);
    }
    words
}
