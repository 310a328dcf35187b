//! Names of the temporary files the agent writes uploads into before renaming them over
//! their target (`.NAME.warren-HEX16`, next to the target): watchers see them come and go,
//! and a surface that promises plain file events may hide them.

/// What the agent appends to `.NAME` for a write's temporary file, before 16 hex digits.
pub const WRITE_TEMP_MARK: &str = ".warren-";

/// The temporary name for writing `name` with a random `nonce`.
pub fn write_temp_name(name: &std::ffi::OsStr, nonce: u64) -> std::ffi::OsString {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!("{WRITE_TEMP_MARK}{nonce:016x}"));
    tmp
}

/// Whether the last component of `path` is such a temporary name.
pub fn is_write_temp(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let Some(rest) = name.strip_prefix('.') else {
        return false;
    };
    match rest.rsplit_once(WRITE_TEMP_MARK) {
        Some((target, hex)) => {
            !target.is_empty() && hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised() {
        let t = write_temp_name(std::ffi::OsStr::new("a.txt"), 0xabc);
        let t = t.to_str().unwrap();
        assert_eq!(t, ".a.txt.warren-0000000000000abc");
        assert!(is_write_temp(&format!("/home/user/{t}")));
        assert!(!is_write_temp("/home/user/a.txt"));
        assert!(!is_write_temp("/x/.a.warren-123"));
        assert!(!is_write_temp("/x/.warren-0000000000000abc"));
    }
}
