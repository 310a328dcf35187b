//! Warren's credential broker: agents in sandboxes call LLM (and other)
//! APIs without the real API keys ever entering the sandbox.
//!
//! # How it works
//!
//! A sandbox is created with credentials ([`Credential`]): an upstream
//! URL, the header that carries the key, the real key, and two environment
//! variable names. [`Broker::register`] returns, for credential `i`,
//! `base_url_env = http://127.0.0.1:<port>/c/<i>` and `token_env =
//! <token>`; the daemon injects these into the sandbox's commands. An SDK
//! in the sandbox then talks plain HTTP to the broker (through a loopback
//! forwarder to a per-sandbox Unix socket) and sends the token where it
//! would send the key. The broker checks the token, replaces it with the
//! real value, and forwards the request to the upstream (path and query
//! kept, bodies streamed both ways, so server-sent events pass event by
//! event).
//!
//! The broker does not listen itself: the host integration accepts a
//! connection that is known to come from one sandbox and hands it to
//! [`Broker::serve_connection`] with that sandbox's id.
//!
//! # Threat model
//!
//! *Outside the sandbox, always:* the real credential values (in the
//! daemon's memory, and sealed at rest with [`SecretKey::seal`] under a
//! 0600 key file), the master key and both of its subkeys. Nothing the
//! broker sends into a sandbox contains a value: responses carry only the
//! upstream's answer (minus any response header that would echo the
//! value), errors name codes, and [`Broker::masked`] shows at most a
//! 4-character prefix.
//!
//! *Inside the sandbox:* a token per credential, an HMAC of the sandbox id,
//! the credential's index and a generation under a subkey of the master
//! key. Code in the sandbox can use the token — that is its purpose — but
//! only through the broker and only for that credential's upstream.
//!
//! *A stolen token* (leaked from the sandbox, say in a log) is worth
//! little elsewhere: the upstream does not accept it, and the broker
//! accepts it only on a connection attributed to the sandbox it was issued
//! to. The same token presented from another sandbox is refused (403
//! `broker_token_foreign`, logged as a warning), an unknown one with 401.
//! So a thief must already run code in the very same sandbox, where the
//! token is available anyway. Tokens die with [`Broker::unregister`], and
//! a new `generation` in [`Broker::register`] rotates them (after a fork
//! or a snapshot restore, so that copies of a sandbox do not share
//! tokens).
//!
//! *What the broker trusts:* the sandbox id that the host integration
//! passes with each connection (attribution is the transport's job), and
//! the upstream URLs that operators configure. An `http://` upstream sends
//! the real value in clear text; allowing it is the operator's choice.
//! The broker does not limit what a sandbox asks the upstream to do with
//! the credential (any method and path below the upstream's prefix), nor
//! how much: [`Broker::usage`] counts requests and bytes per credential.

#![warn(missing_docs)]

mod body;
mod broker;
mod credential;
mod error;
mod key;
mod proxy;

pub use broker::{
    Broker, BrokerConfig, Usage, DEFAULT_PORT, MAX_CREDENTIALS, MAX_SANDBOX_ID_LEN, TOKEN_PREFIX,
};
pub use credential::{
    mask_value, validate_set, Credential, MaskedCredential, MAX_ENV_NAME_LEN, MAX_UPSTREAM_LEN,
    MAX_VALUE_LEN,
};
pub use error::BrokerError;
pub use key::{SecretKey, KEY_LEN};
pub use proxy::{codes, BROKER_HEADER};
