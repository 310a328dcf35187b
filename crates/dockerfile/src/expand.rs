//! Variable substitution and quote removal on one word, as Docker does it (BuildKit's
//! `frontend/dockerfile/shell/lex.go`).

use std::iter::Peekable;
use std::str::Chars;

/// Expands `$VAR`, `${VAR}`, `${VAR:-word}`, `${VAR-word}`, `${VAR:+word}`, `${VAR+word}`,
/// `${VAR:?message}` and `${VAR?message}` in `word` and removes quotes, with `\` as the escape
/// character. See [`expand_with_escape`].
pub fn expand(word: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_with_escape(word, '\\', lookup)
}

/// [`expand`] with the escape character of the Dockerfile (`\` or `` ` ``, see the `escape`
/// parser directive).
///
/// `lookup` returns a variable's value, `None` when it is unset; an unset variable expands to
/// the empty string. The word is processed like a shell word: single quotes keep everything
/// literal, double quotes keep everything literal except `$` expansions and escaped `"`, `$` and
/// escape characters, and outside quotes the escape character makes the next character literal.
/// The quotes and escapes themselves are removed. The word inside `${VAR:-word}` is processed
/// the same way and may itself contain variables. The pattern forms (`${VAR#p}`, `${VAR%p}`,
/// `${VAR/p/r}`) are refused.
pub fn expand_with_escape(
    word: &str,
    escape: char,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    Expander {
        chars: word.chars().peekable(),
        escape,
        lookup,
    }
    .word(None)
}

const MISSING_BRACE: &str = "syntax error: missing '}'";

fn unterminated(quote: &str) -> String {
    format!("unexpected end of statement while looking for matching {quote}")
}

struct Expander<'a> {
    chars: Peekable<Chars<'a>>,
    escape: char,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Expander<'_> {
    /// Reads up to `stop` (consumed) or, without one, to the end.
    fn word(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(&c) = self.chars.peek() {
            if Some(c) == stop {
                self.chars.next();
                return Ok(out);
            }
            match c {
                '$' => out.push_str(&self.dollar()?),
                '\'' => out.push_str(&self.single_quoted()?),
                '"' => out.push_str(&self.double_quoted()?),
                _ => {
                    self.chars.next();
                    if c != self.escape {
                        out.push(c);
                    } else if let Some(next) = self.chars.next() {
                        out.push(next);
                    }
                }
            }
        }
        match stop {
            Some(_) => Err(MISSING_BRACE.into()),
            None => Ok(out),
        }
    }

    fn single_quoted(&mut self) -> Result<String, String> {
        self.chars.next();
        let mut out = String::new();
        loop {
            match self.chars.next() {
                None => return Err(unterminated("single-quote")),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, String> {
        self.chars.next();
        let mut out = String::new();
        loop {
            match self.chars.peek().copied() {
                None => return Err(unterminated("double-quote")),
                Some('"') => {
                    self.chars.next();
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) => {
                    self.chars.next();
                    // Inside double quotes the escape character only escapes `"`, `$` and
                    // itself; before anything else it stays.
                    let escape = self.escape;
                    let escaped = self
                        .chars
                        .next_if(|&n| c == escape && (n == '"' || n == '$' || n == c));
                    out.push(escaped.unwrap_or(c));
                }
            }
        }
    }

    /// At a `$`: a variable, a `${...}` form, or a literal `$` when no name follows.
    fn dollar(&mut self) -> Result<String, String> {
        self.chars.next();
        if self.chars.next_if_eq(&'{').is_none() {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok((self.lookup)(&name).unwrap_or_default());
        }
        match self.chars.peek() {
            None => return Err(MISSING_BRACE.into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let value = (self.lookup)(&name);
        let (colon, modifier) = match self.chars.next() {
            Some('}') => return Ok(value.unwrap_or_default()),
            Some(':') => (true, self.chars.next()),
            other => (false, other),
        };
        let modifier = match modifier {
            Some(m @ ('-' | '+' | '?')) => m,
            None => return Err(MISSING_BRACE.into()),
            Some(m) => {
                let colon = if colon { ":" } else { "" };
                return Err(format!("unsupported modifier ({colon}{m}) in substitution"));
            }
        };
        let word = self.word(Some('}'))?;
        // With a colon, an empty value counts as unset.
        let unset = value.as_ref().is_none_or(|v| colon && v.is_empty());
        match (modifier, unset) {
            ('-', true) | ('+', false) => Ok(word),
            ('-', false) | ('?', false) => Ok(value.unwrap_or_default()),
            ('+', true) => Ok(String::new()),
            _ if !word.is_empty() => Err(format!("{name}: {word}")),
            _ if value.is_none() => Err(format!("{name}: is not allowed to be unset")),
            _ => Err(format!("{name}: is not allowed to be empty")),
        }
    }

    /// A variable name: letters, digits and `_`; or a run of digits (a positional parameter);
    /// or one special parameter character. Empty when none of these follows.
    fn name(&mut self) -> String {
        let mut name = String::new();
        match self.chars.peek() {
            Some(c) if c.is_ascii_digit() => {
                while let Some(c) = self.chars.next_if(char::is_ascii_digit) {
                    name.push(c);
                }
            }
            Some(&c) if "@*#?-$!".contains(c) => {
                self.chars.next();
                name.push(c);
            }
            _ => {
                while let Some(c) = self.chars.next_if(|c| c.is_alphanumeric() || *c == '_') {
                    name.push(c);
                }
            }
        }
        name
    }
}
