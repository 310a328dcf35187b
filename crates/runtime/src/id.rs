//! [`SandboxId`]: a sandbox's name, checked once where it is made.

use std::fmt;

/// Most bytes in an id (it is a hostname, a cgroup name and a path component).
pub const MAX_ID_LEN: usize = 63;

/// A sandbox's id: `[a-z0-9-]`, 1..=63 bytes, not starting with `-`, so it is safe as a
/// hostname, a cgroup name and a path component. Made only by [`SandboxId::parse`], so a
/// backend given one never checks it again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SandboxId(String);

/// Why a string is not a [`SandboxId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sandbox id {id:?}: {why}")]
pub struct InvalidId {
    pub id: String,
    pub why: &'static str,
}

impl SandboxId {
    pub fn parse(id: &str) -> Result<SandboxId, InvalidId> {
        check(id).map_err(|why| InvalidId {
            id: id.to_string(),
            why,
        })?;
        Ok(SandboxId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rule of [`SandboxId`], for other names that live in the same places (snapshot ids,
/// directory names found on disk).
pub fn check(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err("must be 1 to 63 bytes");
    }
    if id.starts_with('-') {
        return Err("must not start with '-'");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may hold only a-z, 0-9 and '-'");
    }
    Ok(())
}

impl std::ops::Deref for SandboxId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for SandboxId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SandboxId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for SandboxId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        SandboxId::parse("abc-123").unwrap();
        SandboxId::parse(&"a".repeat(63)).unwrap();
        for bad in ["", "-a", "a/b", "..", "A", "a b", "a\0"] {
            assert!(SandboxId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SandboxId::parse(&"a".repeat(64)).is_err());
        assert_eq!(SandboxId::parse("sb-1").unwrap(), "sb-1");
    }
}
