//! Credentials, their validation and their masked (displayable) form.

use std::collections::HashSet;
use std::fmt;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use serde::{Deserialize, Serialize};

use crate::BrokerError;

/// Longest accepted credential value, in bytes.
pub const MAX_VALUE_LEN: usize = 8 * 1024;
/// Longest accepted environment variable name.
pub const MAX_ENV_NAME_LEN: usize = 128;
/// Longest accepted upstream URL.
pub const MAX_UPSTREAM_LEN: usize = 2048;

/// Headers that must never be the credential header: hop-by-hop headers
/// (RFC 9110 §7.6.1 and the usual non-standard ones) and the ones whose
/// meaning is framing or routing, not authentication.
const FORBIDDEN_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

/// One upstream API credential of a sandbox.
///
/// The `value` is the real secret; it stays in the broker (in memory, and
/// sealed at rest by the daemon) and never enters the sandbox. `Debug`
/// masks it. The type deliberately does not implement `Serialize`, so it
/// cannot end up in an API response by accident; use
/// [`crate::Broker::masked`] for display and [`crate::SecretKey::seal`]
/// for storage.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Credential {
    /// Absolute `http` or `https` URL of the upstream API, optionally with
    /// a path prefix (`https://api.openai.com/v1`); no query, fragment or
    /// userinfo. A plain `http` upstream is allowed: the operator names
    /// upstreams, and choosing one reached without TLS is their call.
    pub upstream: String,
    /// Header that carries the credential (`x-api-key`, `authorization`).
    pub header: String,
    /// The real secret sent upstream in `header`.
    pub value: String,
    /// Sandbox environment variable that receives the broker's base URL
    /// for this credential (`ANTHROPIC_BASE_URL`).
    pub base_url_env: String,
    /// Sandbox environment variable that receives the sandbox's token for
    /// this credential (`ANTHROPIC_API_KEY`).
    pub token_env: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("upstream", &self.upstream)
            .field("header", &self.header)
            .field("value", &mask_value(&self.value))
            .field("base_url_env", &self.base_url_env)
            .field("token_env", &self.token_env)
            .finish()
    }
}

/// A credential as shown in API responses: everything but the value, which
/// is reduced to at most a 4-character prefix and its length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskedCredential {
    /// Position of the credential in the sandbox's list (the `<i>` in
    /// `/c/<i>`).
    pub index: usize,
    /// The upstream URL.
    pub upstream: String,
    /// The credential header.
    pub header: String,
    /// The masked value, e.g. `sk-a…(41 chars)`.
    pub value: String,
    /// Environment variable holding the base URL inside the sandbox.
    pub base_url_env: String,
    /// Environment variable holding the token inside the sandbox.
    pub token_env: String,
}

/// Mask a secret: a prefix of at most 4 characters (fewer for short
/// values: never more than a quarter of the value) and the length.
pub fn mask_value(value: &str) -> String {
    let n = value.chars().count();
    let shown = (n / 4).min(4);
    let prefix: String = value.chars().take(shown).collect();
    format!("{prefix}…({n} chars)")
}

/// The parsed parts of an upstream URL that the proxy needs.
#[derive(Clone, Debug)]
pub(crate) struct Upstream {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// Path prefix without a trailing slash (`""` or `/v1`).
    pub prefix: String,
}

impl Upstream {
    /// Parse and check an upstream URL.
    pub(crate) fn parse(upstream: &str) -> Result<Upstream, String> {
        if upstream.len() > MAX_UPSTREAM_LEN {
            return Err(format!("upstream longer than {MAX_UPSTREAM_LEN} bytes"));
        }
        if upstream.contains('?') || upstream.contains('#') {
            return Err("upstream must not have a query or fragment".to_string());
        }
        let uri: Uri = upstream
            .parse()
            .map_err(|e| format!("upstream is not a valid URL: {e}"))?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => "http",
            Some("https") => "https",
            Some(other) => return Err(format!("upstream scheme {other:?} is not http or https")),
            None => return Err("upstream must be an absolute http(s) URL".to_string()),
        };
        let Some(authority) = uri.authority() else {
            return Err("upstream must be an absolute http(s) URL".to_string());
        };
        if authority.as_str().contains('@') {
            return Err("upstream must not contain userinfo".to_string());
        }
        if authority.host().is_empty() {
            return Err("upstream has no host".to_string());
        }
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Upstream {
            scheme: scheme.to_string(),
            authority: authority.as_str().to_ascii_lowercase(),
            prefix,
        })
    }
}

/// Whether `name` is `[A-Za-z_][A-Za-z0-9_]*` and not too long.
fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return false,
    }
    name.len() <= MAX_ENV_NAME_LEN && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Credential {
    /// Check this credential on its own (see the field docs); the error
    /// never contains the value. [`crate::Broker::register`] also checks
    /// that no two credentials of a sandbox share an environment name.
    pub fn validate(&self) -> Result<(), BrokerError> {
        self.check()
            .map_err(|reason| BrokerError::InvalidCredential { index: 0, reason })
    }

    /// [`Credential::validate`] with a plain reason.
    pub(crate) fn check(&self) -> Result<(), String> {
        Upstream::parse(&self.upstream)?;
        let header = HeaderName::from_bytes(self.header.as_bytes())
            .map_err(|_| format!("header {:?} is not a valid HTTP header name", self.header))?;
        let lower = header.as_str();
        if FORBIDDEN_HEADERS.contains(&lower) || lower.starts_with("proxy-") {
            return Err(format!(
                "header {lower:?} is a hop-by-hop or framing header and cannot carry a credential"
            ));
        }
        for (what, name) in [
            ("base_url_env", &self.base_url_env),
            ("token_env", &self.token_env),
        ] {
            if !valid_env_name(name) {
                return Err(format!(
                    "{what} {name:?} is not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)"
                ));
            }
        }
        if self.base_url_env == self.token_env {
            return Err("base_url_env and token_env must differ".to_string());
        }
        if self.value.is_empty() {
            return Err("value is empty".to_string());
        }
        if self.value.len() > MAX_VALUE_LEN {
            return Err(format!("value is longer than {MAX_VALUE_LEN} bytes"));
        }
        if self.value.trim() != self.value {
            return Err("value has leading or trailing whitespace".to_string());
        }
        if HeaderValue::from_str(&self.value).is_err() || self.value.contains('\t') {
            return Err("value is not a valid HTTP header value".to_string());
        }
        Ok(())
    }
}

/// Check a sandbox's whole credential list: each credential, and that no
/// environment name is used twice (what [`crate::Broker::register`] checks,
/// without registering anything).
pub fn validate_set(creds: &[Credential]) -> Result<(), BrokerError> {
    let mut seen = HashSet::new();
    for (index, cred) in creds.iter().enumerate() {
        cred.check()
            .map_err(|reason| BrokerError::InvalidCredential { index, reason })?;
        for name in [&cred.base_url_env, &cred.token_env] {
            if !seen.insert(name.as_str()) {
                return Err(BrokerError::InvalidCredential {
                    index,
                    reason: format!("environment variable {name:?} is used by another credential"),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred() -> Credential {
        Credential {
            upstream: "https://api.anthropic.com".into(),
            header: "x-api-key".into(),
            value: "sk-ant-0123456789abcdefghijklmnopqrstuvwxyz".into(),
            base_url_env: "ANTHROPIC_BASE_URL".into(),
            token_env: "ANTHROPIC_API_KEY".into(),
        }
    }

    #[test]
    fn valid_credential_passes() {
        cred().validate().unwrap();
        let mut c = cred();
        c.upstream = "http://127.0.0.1:8080/v1/".into();
        c.header = "Authorization".into();
        c.value = "Bearer abc".into();
        c.validate().unwrap();
    }

    #[test]
    fn bad_upstreams_are_refused() {
        for bad in [
            "api.anthropic.com",
            "/v1",
            "ftp://example.com",
            "https://user:pw@example.com",
            "https://example.com/?a=b",
            "https://example.com/#x",
            "https://exa mple.com",
            "",
        ] {
            let mut c = cred();
            c.upstream = bad.into();
            assert!(c.validate().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        for bad in [
            "",
            "x api key",
            "Host",
            "content-length",
            "Connection",
            "Transfer-Encoding",
            "proxy-authorization",
            "TE",
            "upgrade",
            "x-key\n",
        ] {
            let mut c = cred();
            c.header = bad.into();
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_env_names_and_values_are_refused() {
        for bad in ["", "1ABC", "A-B", "A B", "É"] {
            let mut c = cred();
            c.token_env = bad.into();
            assert!(c.validate().is_err(), "{bad:?} accepted");
        }
        let mut c = cred();
        c.token_env = c.base_url_env.clone();
        assert!(c.validate().is_err());
        for bad in [String::new(), "a\nb".into(), " x".into(), "x".repeat(8193)] {
            let mut c = cred();
            c.value = bad;
            let err = c.validate().unwrap_err().to_string();
            assert!(!err.contains("sk-ant"));
        }
    }

    #[test]
    fn env_names_unique_across_a_sandbox() {
        let a = cred();
        let mut b = cred();
        b.base_url_env = "OTHER_BASE_URL".into();
        let err = validate_set(&[a.clone(), b]).unwrap_err();
        assert!(matches!(
            err,
            BrokerError::InvalidCredential { index: 1, .. }
        ));
        let mut c = cred();
        c.base_url_env = "OPENAI_BASE_URL".into();
        c.token_env = "OPENAI_API_KEY".into();
        validate_set(&[a, c]).unwrap();
    }

    #[test]
    fn masking_shows_at_most_four_chars() {
        let v = "sk-ant-0123456789abcdefghijklmnopqrstuvwxyz";
        assert_eq!(mask_value(v), format!("sk-a…({} chars)", v.len()));
        assert_eq!(mask_value("abcdefg"), "a…(7 chars)");
        assert_eq!(mask_value("abc"), "…(3 chars)");
        let dbg = format!("{:?}", cred());
        assert!(!dbg.contains(v), "{dbg}");
    }

    #[test]
    fn upstream_prefix_is_normalised() {
        let u = Upstream::parse("HTTPS://API.openai.com/v1/").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.authority, "api.openai.com");
        assert_eq!(u.prefix, "/v1");
        let u = Upstream::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!(u.authority, "127.0.0.1:9");
        assert_eq!(u.prefix, "");
    }
}
