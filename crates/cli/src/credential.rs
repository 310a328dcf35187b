//! `--credential SPEC` of `create` and `run`: a key the credential broker keeps outside the
//! sandbox.
//!
//! `SPEC` is a preset name or comma-separated `key=value` pairs:
//!
//! - `anthropic`: `https://api.anthropic.com`, header `x-api-key`, the key from this
//!   shell's `$ANTHROPIC_API_KEY`, inside `ANTHROPIC_BASE_URL` and `ANTHROPIC_API_KEY`;
//! - `openai`: `https://api.openai.com/v1`, header `authorization` (`Bearer`), the key from
//!   `$OPENAI_API_KEY`, inside `OPENAI_BASE_URL` and `OPENAI_API_KEY`;
//! - `upstream=URL,header=NAME,value-env=VAR,base-url-env=NAME,token-env=NAME` (or
//!   `value-file=PATH` instead of `value-env`); a preset name first
//!   (`anthropic,value-env=MY_KEY`) fills in what is not given.
//!
//! The key itself is never an argument: arguments are visible to every user of the host in
//! the process list.

use warren_api::CredentialRequest;

struct Preset {
    name: &'static str,
    upstream: &'static str,
    header: &'static str,
    key_env: &'static str,
    base_url_env: &'static str,
    token_env: &'static str,
}

const PRESETS: &[Preset] = &[
    Preset {
        name: "anthropic",
        upstream: "https://api.anthropic.com",
        header: "x-api-key",
        key_env: "ANTHROPIC_API_KEY",
        base_url_env: "ANTHROPIC_BASE_URL",
        token_env: "ANTHROPIC_API_KEY",
    },
    Preset {
        name: "openai",
        upstream: "https://api.openai.com/v1",
        header: "authorization",
        key_env: "OPENAI_API_KEY",
        base_url_env: "OPENAI_BASE_URL",
        token_env: "OPENAI_API_KEY",
    },
];

/// Parse one `--credential` (clap value parser): the key is read now, from the named
/// environment variable or file.
pub fn parse(spec: &str) -> Result<CredentialRequest, String> {
    let mut upstream = None;
    let mut header = None;
    let mut value_env = None;
    let mut value_file = None;
    let mut base_url_env = None;
    let mut token_env = None;
    for (i, part) in spec.split(',').map(str::trim).enumerate() {
        let Some((key, val)) = part.split_once('=') else {
            let preset = PRESETS
                .iter()
                .find(|p| p.name == part && i == 0)
                .ok_or_else(|| {
                    format!(
                        "{part:?} is neither KEY=VALUE nor a preset first ({})",
                        PRESETS
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
            upstream = Some(preset.upstream.to_string());
            header = Some(preset.header.to_string());
            value_env = Some(preset.key_env.to_string());
            base_url_env = Some(preset.base_url_env.to_string());
            token_env = Some(preset.token_env.to_string());
            continue;
        };
        let slot = match key {
            "upstream" => &mut upstream,
            "header" => &mut header,
            "value-env" => &mut value_env,
            "value-file" => &mut value_file,
            "base-url-env" => &mut base_url_env,
            "token-env" => &mut token_env,
            "value" => {
                return Err(
                    "the key is not taken as an argument (the process list shows \
                            arguments): use value-env=VAR or value-file=PATH"
                        .into(),
                )
            }
            other => return Err(format!("unknown key {other:?}")),
        };
        *slot = Some(val.to_string());
    }
    let need = |v: Option<String>, what: &str| v.ok_or_else(|| format!("{what}= is missing"));
    let value = match (value_file, value_env) {
        (Some(path), _) => std::fs::read_to_string(&path)
            .map_err(|e| format!("value-file {path}: {e}"))?
            .trim()
            .to_string(),
        (None, Some(var)) => std::env::var(&var)
            .map_err(|_| format!("${var} (the key) is not set in this environment"))?,
        (None, None) => return Err("value-env= or value-file= is missing".into()),
    };
    Ok(CredentialRequest {
        upstream: need(upstream, "upstream")?,
        header: need(header, "header")?,
        value,
        base_url_env: need(base_url_env, "base-url-env")?,
        token_env: need(token_env, "token-env")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_and_pairs() {
        std::env::set_var("WARREN_TEST_CRED_KEY", "sk-test-123");
        let c = parse("anthropic,value-env=WARREN_TEST_CRED_KEY").unwrap();
        assert_eq!(c.upstream, "https://api.anthropic.com");
        assert_eq!(c.header, "x-api-key");
        assert_eq!(c.value, "sk-test-123");
        assert_eq!(c.token_env, "ANTHROPIC_API_KEY");
        let c = parse(
            "upstream=http://198.51.100.1:80/v1,header=authorization,\
             value-env=WARREN_TEST_CRED_KEY,base-url-env=X_URL,token-env=X_KEY",
        )
        .unwrap();
        assert_eq!(c.base_url_env, "X_URL");
        assert!(parse("upstream=https://x,value=sk").is_err());
        assert!(parse("nope").is_err());
        assert!(parse("upstream=https://x,header=h,base-url-env=A,token-env=B").is_err());
        assert!(parse("upstream=https://x,header=h,value-env=WARREN_TEST_UNSET_VAR,base-url-env=A,token-env=B")
            .unwrap_err()
            .contains("not set"));
    }
}
