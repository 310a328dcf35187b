//! Validation of client input. Everything here runs before any state changes, so bad input
//! is refused with `invalid_request` and leaves nothing behind.

use std::collections::BTreeMap;

use warren_api::Resources;
use warren_runtime::{ExecSpec, MAX_FRAME_LEN};

use crate::{EngineConfig, EngineError};

const MAX_MAP_ENTRIES: usize = 128;
const MAX_KEY_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 16 * 1024;
const MIN_MEMORY_MIB: u64 = 16;
/// Smallest `resources.disk_mib`.
pub const MIN_DISK_MIB: u64 = 16;
pub(crate) const MIN_PIDS: u64 = 8;
/// Longest a single exec may be told to run.
pub const MAX_EXEC_TIMEOUT_SECS: u64 = 7 * 24 * 3600;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest(msg.into())
}

pub fn timeout(secs: u64, config: &EngineConfig) -> Result<u64, EngineError> {
    if secs == 0 {
        return Err(invalid("timeout_secs must be at least 1"));
    }
    if secs > config.max_timeout_secs {
        return Err(invalid(format!(
            "timeout_secs {secs} exceeds the server maximum of {}",
            config.max_timeout_secs
        )));
    }
    Ok(secs)
}

/// Fill defaults and check bounds.
pub fn resources(req: Option<&Resources>, config: &EngineConfig) -> Result<Resources, EngineError> {
    let d = &config.default_resources;
    let req = req.cloned().unwrap_or_default();
    let out = Resources {
        cpus: req.cpus.or(d.cpus),
        memory_mib: req.memory_mib.or(d.memory_mib),
        pids: req.pids.or(d.pids),
        disk_mib: req.disk_mib.or(d.disk_mib),
    };
    if let Some(c) = out.cpus {
        if !c.is_finite() || c < 0.01 || c > config.max_cpus {
            return Err(invalid(format!(
                "resources.cpus must be between 0.01 and {}, got {c}",
                config.max_cpus
            )));
        }
    }
    if let Some(m) = out.memory_mib {
        if m < MIN_MEMORY_MIB || m > config.max_memory_mib {
            return Err(invalid(format!(
                "resources.memory_mib must be between {MIN_MEMORY_MIB} and {}, got {m}",
                config.max_memory_mib
            )));
        }
    }
    if let Some(p) = out.pids {
        if p < MIN_PIDS || p > config.max_pids {
            return Err(invalid(format!(
                "resources.pids must be between {MIN_PIDS} and {}, got {p}",
                config.max_pids
            )));
        }
    }
    if let Some(m) = out.disk_mib {
        if config.max_disk_mib == 0 {
            return Err(invalid(
                "resources.disk_mib: this server cannot limit disk use (its storage has no \
                 quotas, see storage.disk_quota in GET /v1/capabilities; the btrfs backend \
                 has them)",
            ));
        }
        if m < MIN_DISK_MIB || m > config.max_disk_mib {
            return Err(invalid(format!(
                "resources.disk_mib must be between {MIN_DISK_MIB} and {}, got {m}",
                config.max_disk_mib
            )));
        }
    }
    Ok(out)
}

fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

pub fn env(what: &str, env: &BTreeMap<String, String>) -> Result<(), EngineError> {
    if env.len() > MAX_MAP_ENTRIES {
        return Err(invalid(format!(
            "{what}: at most {MAX_MAP_ENTRIES} entries"
        )));
    }
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || has_nul(k) || k.len() > MAX_KEY_LEN {
            return Err(invalid(format!("{what}: invalid variable name {k:?}")));
        }
        if has_nul(v) || v.len() > MAX_VALUE_LEN {
            return Err(invalid(format!("{what}: invalid value for {k}")));
        }
    }
    // A sandbox's env and a command's env each get half of what one command may carry to
    // the agent, so that their sum with a short argv still fits (see `command_size`).
    let mut w = CountingWriter(0);
    serde_json::to_writer(&mut w, env)
        .map_err(|e| invalid(format!("{what} cannot be encoded: {e}")))?;
    if w.0 > MAX_COMMAND_BYTES / 2 {
        return Err(EngineError::PayloadTooLarge(format!(
            "{what} encodes to {} bytes; the maximum is {}",
            w.0,
            MAX_COMMAND_BYTES / 2
        )));
    }
    Ok(())
}

pub fn metadata(m: &BTreeMap<String, String>) -> Result<(), EngineError> {
    if m.len() > MAX_MAP_ENTRIES {
        return Err(invalid(format!(
            "metadata: at most {MAX_MAP_ENTRIES} entries"
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_KEY_LEN || has_nul(k) {
            return Err(invalid(format!("metadata: invalid key {k:?}")));
        }
        if v.len() > MAX_VALUE_LEN || has_nul(v) {
            return Err(invalid(format!("metadata: value of {k} is invalid")));
        }
    }
    Ok(())
}

pub fn cmd(cmd: &[String]) -> Result<(), EngineError> {
    match cmd.first() {
        None => return Err(invalid("cmd must not be empty")),
        Some(c) if c.is_empty() => return Err(invalid("cmd[0] must not be empty")),
        _ => {}
    }
    if cmd.iter().any(|a| has_nul(a)) {
        return Err(invalid("cmd arguments must not contain NUL bytes"));
    }
    Ok(())
}

pub fn cwd(cwd: &str) -> Result<(), EngineError> {
    if !cwd.starts_with('/') || has_nul(cwd) || cwd.len() > 4096 {
        return Err(invalid(format!(
            "cwd must be an absolute path, got {cwd:?}"
        )));
    }
    Ok(())
}

/// Largest encoded command (argv, environment, cwd) sent to the agent. The rest of a
/// message (a durable process's tag, terminal size, log size, the framing) fits easily in
/// what [`MAX_FRAME_LEN`] leaves beyond it.
pub const MAX_COMMAND_BYTES: usize = MAX_FRAME_LEN - 16 * 1024;

/// Counts what is written to it.
struct CountingWriter(usize);

impl std::io::Write for CountingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A command (after the sandbox's and the default environment are merged in) must fit in
/// one message to the agent: at most [`MAX_COMMAND_BYTES`] as the agent protocol encodes it
/// (JSON, so control characters count up to 6 bytes each). Beyond: 413
/// `payload_too_large`. Linux itself refuses an argv and environment over `ARG_MAX`.
pub fn command_size(spec: &ExecSpec) -> Result<(), EngineError> {
    let mut w = CountingWriter(0);
    serde_json::to_writer(&mut w, spec)
        .map_err(|e| invalid(format!("command cannot be encoded: {e}")))?;
    if w.0 > MAX_COMMAND_BYTES {
        return Err(EngineError::PayloadTooLarge(format!(
            "the command (argv, env and cwd, with the sandbox's env) encodes to {} bytes; \
             the maximum is {MAX_COMMAND_BYTES}",
            w.0
        )));
    }
    Ok(())
}

/// `idle_timeout_secs`: at least 1, at most the server's maximum timeout.
pub fn idle_timeout(secs: u64, config: &EngineConfig) -> Result<u64, EngineError> {
    if secs == 0 || secs > config.max_timeout_secs {
        return Err(invalid(format!(
            "idle_timeout_secs must be between 1 and {}",
            config.max_timeout_secs
        )));
    }
    Ok(secs)
}

/// A snapshot's name: at most 128 bytes, no control characters.
pub fn snapshot_name(name: &str) -> Result<(), EngineError> {
    if name.len() > 128 || name.chars().any(char::is_control) {
        return Err(invalid(
            "snapshot name must be at most 128 bytes without control characters",
        ));
    }
    Ok(())
}

/// A pool's name: 1 to 63 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
pub fn pool_name(name: &str) -> Result<(), EngineError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !ok {
        return Err(invalid(format!(
            "pool name {name:?} must be 1 to 63 of a-z, 0-9, '-' and '_', starting with a \
             letter or digit"
        )));
    }
    Ok(())
}

pub fn exec_timeout(secs: u64) -> Result<u64, EngineError> {
    if secs == 0 || secs > MAX_EXEC_TIMEOUT_SECS {
        return Err(invalid(format!(
            "timeout_secs must be between 1 and {MAX_EXEC_TIMEOUT_SECS}"
        )));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::config;

    #[test]
    fn resources_bounds() {
        let c = config();
        let ok = resources(None, &c).unwrap();
        assert_eq!(ok, c.default_resources);
        for bad in [
            Resources {
                cpus: Some(-1.0),
                ..Default::default()
            },
            Resources {
                cpus: Some(f64::NAN),
                ..Default::default()
            },
            Resources {
                cpus: Some(1e9),
                ..Default::default()
            },
            Resources {
                memory_mib: Some(1),
                ..Default::default()
            },
            Resources {
                memory_mib: Some(u64::MAX),
                ..Default::default()
            },
            Resources {
                pids: Some(0),
                ..Default::default()
            },
            Resources {
                pids: Some(u64::MAX),
                ..Default::default()
            },
        ] {
            assert!(resources(Some(&bad), &c).is_err(), "{bad:?} accepted");
        }
        let r = resources(
            Some(&Resources {
                cpus: Some(0.5),
                ..Default::default()
            }),
            &c,
        )
        .unwrap();
        assert_eq!(r.cpus, Some(0.5));
        assert_eq!(r.memory_mib, c.default_resources.memory_mib);
    }

    #[test]
    fn inputs() {
        assert!(cmd(&[]).is_err());
        assert!(cmd(&["".into()]).is_err());
        assert!(cmd(&["a\0b".into()]).is_err());
        assert!(cmd(&["true".into()]).is_ok());
        assert!(cwd("relative").is_err());
        assert!(cwd("/tmp").is_ok());
        assert!(env("env", &[("A=B".to_string(), "x".to_string())].into()).is_err());
        assert!(env("env", &[("".to_string(), "x".to_string())].into()).is_err());
        assert!(env("env", &[("A".to_string(), "x".to_string())].into()).is_ok());
        let huge: BTreeMap<String, String> = (0..100)
            .map(|i| (format!("K{i}"), "v".repeat(MAX_VALUE_LEN)))
            .collect();
        assert_eq!(env("env", &huge).unwrap_err().code(), "payload_too_large");
        assert!(metadata(&[("".to_string(), "x".to_string())].into()).is_err());
        assert!(timeout(0, &config()).is_err());
        assert!(timeout(u64::MAX, &config()).is_err());
        assert!(exec_timeout(0).is_err());
        let spec = |argv: Vec<String>| ExecSpec {
            argv,
            env: vec![("A".into(), "\u{1}".repeat(100))],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            timeout_ms: None,
            stdin: false,
        };
        assert!(command_size(&spec(vec!["x".repeat(100_000)])).is_ok());
        let big = command_size(&spec(vec!["x".repeat(3_000_000)])).unwrap_err();
        assert_eq!(big.code(), "payload_too_large");
        // Escaping counts: 200k control characters are 1.2 MB once encoded.
        assert!(command_size(&spec(vec!["\u{1}".repeat(200_000)])).is_err());
        for good in ["py", "node-20", "a_b", "0x"] {
            assert!(pool_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Py", "-x", "_x", "a/b", "a b", &"x".repeat(64)] {
            assert!(pool_name(bad).is_err(), "{bad}");
        }
    }
}
