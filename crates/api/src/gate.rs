//! What every API surface asks of the daemon's credentials (the server's `Auth`
//! implements it once; the OpenSandbox and E2B surfaces take it as `Arc<dyn Gate>`).

/// Who may call: the daemon's API keys and its per-sandbox tokens.
pub trait Gate: Send + Sync {
    /// Whether `key` is a valid API key.
    fn accepts_key(&self, key: &str) -> bool;
    /// The token that opens sandbox `id`'s data plane (execd, envd, its reverse proxy).
    fn token_for(&self, id: &str) -> String;
    /// A token for a link to port `port` of sandbox `id` that needs no header, valid until
    /// `expires` (Unix seconds); it goes in the proxy path as `~TOKEN`.
    fn route_token(&self, id: &str, port: u16, expires: i64) -> String;
}
