//! File metadata: small string key/value pairs attached to a file inside a sandbox (see
//! [`crate::FileOp::SetMetadata`]). The agent stores key `k` as the user extended attribute
//! `user.warren.k`, so the pairs follow the file through renames and vanish with it.
//!
//! Both sides check requests with [`normalize_metadata`]: the host to refuse bad input before
//! it reaches a sandbox, the agent because it trusts no host.

use std::collections::BTreeMap;

/// Prefix of the extended attribute that holds metadata key `k`: `user.warren.k`.
pub const METADATA_XATTR_PREFIX: &str = "user.warren.";
/// Longest key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Longest value, in bytes (UTF-8).
pub const MAX_METADATA_VALUE_LEN: usize = 4096;
/// Most keys one [`crate::FileOp::SetMetadata`] may carry.
pub const MAX_METADATA_KEYS: usize = 32;

/// Whether `key` (already lowercased) is a valid metadata key: 1 to
/// [`MAX_METADATA_KEY_LEN`] bytes of `[a-z0-9_.-]`.
pub fn is_metadata_key(key: &str) -> bool {
    (1..=MAX_METADATA_KEY_LEN).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

/// Checks a metadata change and lowercases its keys (HTTP header names, one source of keys,
/// arrive lowercased, so keys are case-insensitive). Keys are 1 to [`MAX_METADATA_KEY_LEN`]
/// bytes of `[A-Za-z0-9_.-]`, values at most [`MAX_METADATA_VALUE_LEN`] bytes (an empty value
/// removes the key), at most [`MAX_METADATA_KEYS`] keys, and no two keys that differ only in
/// case. No keys at all is fine (nothing changes). The error says what is wrong, for the
/// caller.
pub fn normalize_metadata(
    metadata: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, String> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(format!(
            "metadata has {} keys; at most {MAX_METADATA_KEYS} may be set at once",
            metadata.len()
        ));
    }
    let mut out = BTreeMap::new();
    for (key, value) in metadata {
        let lower = key.to_ascii_lowercase();
        if !is_metadata_key(&lower) {
            return Err(format!(
                "metadata key {key:?} is invalid: keys are 1 to {MAX_METADATA_KEY_LEN} bytes of \
                 letters, digits, `_`, `.` and `-`"
            ));
        }
        if value.len() > MAX_METADATA_VALUE_LEN {
            return Err(format!(
                "the value of metadata key {lower:?} is {} bytes; the maximum is \
                 {MAX_METADATA_VALUE_LEN}",
                value.len()
            ));
        }
        if out.insert(lower.clone(), value).is_some() {
            return Err(format!(
                "metadata key {lower:?} is given twice (keys are case-insensitive)"
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keys_are_checked_and_lowercased() {
        let ok = normalize_metadata(map(&[("Owner", "me"), ("a.b_c-9", ""), ("x", "y")])).unwrap();
        assert_eq!(ok, map(&[("owner", "me"), ("a.b_c-9", ""), ("x", "y")]));
        let long = "k".repeat(MAX_METADATA_KEY_LEN);
        assert!(normalize_metadata(map(&[(&long, "v")])).is_ok());
        for bad in [
            "",
            "a b",
            "a/b",
            "ä",
            "a:b",
            "a\0b",
            &"k".repeat(MAX_METADATA_KEY_LEN + 1),
        ] {
            let e = normalize_metadata(map(&[(bad, "v")])).unwrap_err();
            assert!(e.contains("is invalid"), "{bad:?}: {e}");
        }
        let e = normalize_metadata(map(&[("Key", "1"), ("key", "2")])).unwrap_err();
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn limits() {
        assert_eq!(normalize_metadata(BTreeMap::new()), Ok(BTreeMap::new()));
        let v = "v".repeat(MAX_METADATA_VALUE_LEN);
        assert!(normalize_metadata(map(&[("k", &v)])).is_ok());
        let v = "v".repeat(MAX_METADATA_VALUE_LEN + 1);
        assert!(normalize_metadata(map(&[("k", &v)]))
            .unwrap_err()
            .contains("maximum"));
        let many = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(normalize_metadata(many(MAX_METADATA_KEYS)).is_ok());
        assert!(normalize_metadata(many(MAX_METADATA_KEYS + 1))
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn stats_without_metadata_keep_their_old_form() {
        let old = r#"{"path":"/a","kind":"file","size":1,"mode":420,"uid":0,"gid":0,"mtime":1,"link_target":null}"#;
        let st: crate::FileStat = serde_json::from_str(old).unwrap();
        assert!(st.metadata.is_empty());
        assert_eq!(serde_json::to_string(&st).unwrap(), old);
        let with = crate::FileStat {
            metadata: map(&[("k", "v")]),
            ..st
        };
        let json = serde_json::to_string(&with).unwrap();
        assert!(json.ends_with(r#""metadata":{"k":"v"}}"#), "{json}");
        assert_eq!(
            serde_json::from_str::<crate::FileStat>(&json).unwrap(),
            with
        );
        let op = crate::FileOp::SetMetadata {
            path: "/a".into(),
            metadata: map(&[("k", "")]),
        };
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(
            json,
            r#"{"op":"set_metadata","path":"/a","metadata":{"k":""}}"#
        );
    }

    #[test]
    fn xattr_names_fit() {
        // XATTR_NAME_MAX is 255.
        assert!(METADATA_XATTR_PREFIX.len() + MAX_METADATA_KEY_LEN <= 255);
    }
}
