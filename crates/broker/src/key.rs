//! The broker's master key, its derived subkeys and at-rest sealing.
//!
//! One 32-byte master key (a file of mode 0600 next to the daemon's store)
//! is never used directly: two subkeys are derived from it with
//! HMAC-SHA256 under distinct labels, one for sealing credential values at
//! rest (ChaCha20-Poly1305) and one for deriving sandbox tokens. A token
//! therefore reveals nothing about the sealing key and vice versa.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, KeyInit as HmacKeyInit, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;

use crate::BrokerError;

/// Length of the master key in bytes.
pub const KEY_LEN: usize = 32;

/// Prefix of every sealed string; names the format version.
const SEALED_PREFIX: &str = "v1.";
/// Length of a ChaCha20-Poly1305 nonce.
const NONCE_LEN: usize = 12;
/// Length of a Poly1305 tag.
const TAG_LEN: usize = 16;
/// Associated data bound into every sealed blob (format and purpose).
const SEAL_AAD: &[u8] = b"warren-broker sealed v1";
/// Label of the sealing subkey.
const SEAL_LABEL: &[u8] = b"warren-broker/seal/v1";
/// Label of the token subkey.
const TOKEN_LABEL: &[u8] = b"warren-broker/token/v1";

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of the concatenation of `parts` under a 32-byte `key`.
///
/// HMAC zero-pads keys shorter than the hash's 64-byte block, so padding
/// the key here gives exactly HMAC(key, ...) through the infallible
/// fixed-size constructor.
pub(crate) fn hmac_sha256(key: &[u8; KEY_LEN], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    block[..KEY_LEN].copy_from_slice(key);
    let mut mac = <HmacSha256 as HmacKeyInit>::new(&block.into());
    block.fill(0);
    for part in parts {
        mac.update(part);
    }
    let out = mac.finalize().into_bytes();
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&out);
    bytes
}

/// The broker's 32-byte master key.
///
/// `Debug` never prints the key. Keep one per daemon: tokens and sealed
/// values made with one key are useless with another.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // Best effort: other copies (derived subkeys) live in the broker.
        self.0.fill(0);
        std::hint::black_box(&self.0);
    }
}

impl SecretKey {
    /// A key from raw bytes (tests, or a key kept elsewhere).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SecretKey {
        SecretKey(bytes)
    }

    /// A fresh random key from the operating system's generator.
    pub fn generate() -> Result<SecretKey, BrokerError> {
        let mut bytes = [0u8; KEY_LEN];
        OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| BrokerError::Random(e.to_string()))?;
        Ok(SecretKey(bytes))
    }

    /// Load the key from `path`, or create it there if there is no file.
    ///
    /// A new key file holds exactly 32 random bytes and has mode 0600; it
    /// is written to a temporary file in the same directory (created with
    /// `O_EXCL`), synced, and then hard-linked into place, so a reader
    /// never sees a partial key and two racing creators agree on one key.
    ///
    /// An existing file is refused if it is not a regular file (symlinks
    /// are not followed), is not exactly 32 bytes, is accessible by group
    /// or others, or is owned by another user.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<SecretKey, BrokerError> {
        let path = path.as_ref();
        match Self::load(path) {
            Err(BrokerError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        let key = SecretKey::generate()?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "key".to_string());
        let mut suffix = [0u8; 8];
        OsRng
            .try_fill_bytes(&mut suffix)
            .map_err(|e| BrokerError::Random(e.to_string()))?;
        let tmp = dir.join(format!(
            ".{name}.tmp-{}",
            suffix
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
        let result = (|| -> Result<(), BrokerError> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc_o_nofollow())
                .open(&tmp)?;
            // The mode given to open() is filtered by the umask; make sure.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(&key.0)?;
            file.sync_all()?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // hard_link fails if `path` exists: never clobber a key that
        // another process created meanwhile.
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Ok(d) = File::open(&dir) {
                    let _ = d.sync_all();
                }
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(e.into()),
        }
    }

    /// Load an existing key file (see [`SecretKey::load_or_create`] for
    /// the checks).
    fn load(path: &Path) -> Result<SecretKey, BrokerError> {
        let bad = |reason: &str| BrokerError::KeyFile {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        let meta = fs::symlink_metadata(path)?;
        if !meta.file_type().is_file() {
            return Err(bad("not a regular file"));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(bad(&format!(
                "mode {:o} gives access to group or others (want 0600)",
                meta.mode() & 0o777
            )));
        }
        let euid = rustix::process::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(bad(&format!(
                "owned by uid {}, not by this process (uid {euid})",
                meta.uid()
            )));
        }
        if meta.len() != KEY_LEN as u64 {
            return Err(bad(&format!("{} bytes long (want {KEY_LEN})", meta.len())));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .custom_flags(libc_o_nofollow())
            .open(path)?;
        let mut bytes = [0u8; KEY_LEN];
        file.read_exact(&mut bytes)?;
        let mut rest = [0u8; 1];
        if file.read(&mut rest)? != 0 {
            return Err(bad("longer than 32 bytes"));
        }
        Ok(SecretKey(bytes))
    }

    /// The subkey for sealing.
    fn seal_key(&self) -> [u8; 32] {
        hmac_sha256(&self.0, &[SEAL_LABEL])
    }

    /// The subkey for tokens.
    pub(crate) fn token_key(&self) -> [u8; 32] {
        hmac_sha256(&self.0, &[TOKEN_LABEL])
    }

    /// Encrypt and authenticate `plaintext` for storage.
    ///
    /// The result is `v1.<base64url(nonce || ciphertext || tag)>`, with a
    /// fresh random 96-bit nonce per call and ChaCha20-Poly1305 under the
    /// sealing subkey. Fails only if the random number generator fails or
    /// the plaintext is absurdly large (> 256 GiB).
    pub fn seal(&self, plaintext: &[u8]) -> Result<String, BrokerError> {
        let cipher = ChaCha20Poly1305::new(&self.seal_key().into());
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| BrokerError::Random(e.to_string()))?;
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: SEAL_AAD,
                },
            )
            .map_err(|_| BrokerError::Sealed("plaintext too large to seal".to_string()))?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Decrypt a string made by [`SecretKey::seal`] with the same key.
    ///
    /// Fails if the string is malformed, was modified, or was sealed with
    /// another key.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, BrokerError> {
        let Some(encoded) = sealed.strip_prefix(SEALED_PREFIX) else {
            return Err(BrokerError::Sealed(
                "unknown format (want a \"v1.\" prefix)".to_string(),
            ));
        };
        let blob = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| BrokerError::Sealed("not valid base64url".to_string()))?;
        if blob.len() < NONCE_LEN + TAG_LEN {
            return Err(BrokerError::Sealed("too short".to_string()));
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        let cipher = ChaCha20Poly1305::new(&self.seal_key().into());
        cipher
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: ciphertext,
                    aad: SEAL_AAD,
                },
            )
            .map_err(|_| {
                BrokerError::Sealed("authentication failed (tampered with, or another key)".into())
            })
    }
}

/// `O_NOFOLLOW`, so that the key file is never read or written through a
/// symlink.
fn libc_o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_hmac_equals_plain_hmac() {
        let key = [0x5au8; KEY_LEN];
        let mut plain = <HmacSha256 as HmacKeyInit>::new_from_slice(&key).unwrap();
        plain.update(b"hello ");
        plain.update(b"world");
        let want = plain.finalize().into_bytes();
        assert_eq!(hmac_sha256(&key, &[b"hello ", b"world"])[..], want[..]);
    }

    #[test]
    fn subkeys_differ() {
        let k = SecretKey::from_bytes([1; KEY_LEN]);
        assert_ne!(k.seal_key(), k.token_key());
        assert_ne!(k.seal_key(), [1; KEY_LEN]);
    }
}
