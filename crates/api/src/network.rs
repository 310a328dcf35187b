//! A sandbox's network on the wire: mode, address, egress policy.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a sandbox is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own address; outbound connections masqueraded through the host, under the egress
    /// policy; DNS through Warren's proxy.
    Nat,
    /// Loopback only (no DNS either).
    Isolated,
}

impl NetworkMode {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkMode::Nat => "nat",
            NetworkMode::Isolated => "isolated",
        }
    }
}

/// What a rule (or the default) does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EgressAction {
    #[default]
    Allow,
    Deny,
}

/// One egress rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    pub action: EgressAction,
    /// An IPv4 CIDR (`10.0.0.0/8`), an IPv4 address, a domain (`pypi.org`: that name only)
    /// or a wildcard (`*.pythonhosted.org`: every name below it, not the name itself).
    #[schema(example = "*.pythonhosted.org")]
    pub target: String,
}

/// Where a sandbox's outbound connections may go. The most specific rule decides: a rule
/// for the exact address, then the names the address was resolved from through Warren's
/// DNS (an exact name before wildcards, longer wildcards first), then the longest CIDR that
/// holds it, then `default`; at equal specificity `deny` wins. Other sandboxes, the host
/// (except its DNS proxy), link-local and metadata addresses are denied whatever it says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    /// What happens to what no rule covers (`allow` when absent).
    #[serde(default)]
    pub default: EgressAction,
    /// At most 1,000 rules.
    #[serde(default)]
    pub rules: Vec<EgressRule>,
}

/// `network` of `POST /v1/sandboxes` and of a pool's spec.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// The server's default (`warren serve --default-network`, `nat` unless set) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<NetworkMode>,
    /// Allow everything when absent. Only for `nat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressPolicy>,
}

/// Answer of `GET /v1/sandboxes/{id}/network` (and `network` of a sandbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxNetwork {
    pub mode: NetworkMode,
    /// The sandbox's IPv4 address (`nat` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Its gateway, which is also its DNS server (`nat` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The policy in force.
    pub egress: EgressPolicy,
}

/// Body of `PUT /v1/sandboxes/{id}/network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateNetworkRequest {
    /// Replaces the policy in force: new connections follow it at once, established ones
    /// it denies are cut, running processes keep running.
    pub egress: EgressPolicy,
}

/// `network` of `GET /v1/capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkCapabilities {
    /// Modes a sandbox can have here.
    pub modes: Vec<NetworkMode>,
    /// The mode a sandbox gets when it names none.
    pub default_mode: NetworkMode,
    /// Whether egress policies (CIDR and domain rules, live updates) are enforced.
    pub egress: bool,
    /// Whether the credential broker is offered.
    pub broker: bool,
    /// Range of `nat` sandbox addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<String>,
}

/// A credential the broker keeps for a sandbox (`credentials` of `POST /v1/sandboxes`).
/// Inside the sandbox `base_url_env` holds the broker's URL for it
/// (`http://127.0.0.1:4780/c/<index>`, in every network mode) and `token_env` a token
/// valid for this sandbox only; a request to that URL with the token in `header` goes to
/// `upstream` (path and query kept) with `header` set to `value`. `value` never enters the
/// sandbox and is never shown again (responses show it masked).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    /// `https://` (or `http://`) URL of the upstream API, optionally with a path prefix.
    pub upstream: String,
    /// Header that carries the key: `x-api-key`, `authorization` (`Bearer <token>` is
    /// swapped for `Bearer <value>`), ...
    pub header: String,
    /// The real key.
    pub value: String,
    /// Environment variable that receives the broker's base URL (`ANTHROPIC_BASE_URL`).
    pub base_url_env: String,
    /// Environment variable that receives the sandbox's token (`ANTHROPIC_API_KEY`).
    pub token_env: String,
}

impl std::fmt::Debug for CredentialRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialRequest")
            .field("upstream", &self.upstream)
            .field("header", &self.header)
            .field("value", &"<redacted>")
            .field("base_url_env", &self.base_url_env)
            .field("token_env", &self.token_env)
            .finish()
    }
}

/// A credential of a sandbox as responses show it: the value masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SandboxCredential {
    pub upstream: String,
    pub header: String,
    /// At most a 4-character prefix and the length: `sk-a…(41 chars)`.
    pub value: String,
    pub base_url_env: String,
    pub token_env: String,
}
