//! Secrets at rest: the AES-256-GCM envelope, the keyring, and secret value types. No I/O.
//!
//! Every stored credential field is sealed on its own, with a fresh random 96-bit nonce
//! and the account id plus field name as associated data, so that a ciphertext copied
//! onto another account or field fails to open instead of being accepted. The envelope
//! is text (`cg1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`) so it survives any
//! store and can be inspected for its key id without the key.
//!
//! A [`Keyring`] holds one or more keys: the first encrypts, all decrypt, which is
//! what makes online key rotation (`credgate rekey`) possible. A [`KeyCheck`] value
//! sealed under each key lets the server refuse to start with a wrong key before it
//! decrypts anything.
#![forbid(unsafe_code)]

mod envelope;
mod keyring;
mod mask;
mod secret;

pub use envelope::Sealed;
pub use keyring::{Key, KeyCheck, KeyId, Keyring};
pub use mask::mask;
pub use secret::SecretString;

/// Why a key, an envelope or a ciphertext was refused. No variant ever carries a
/// secret or a plaintext, so these errors are safe to log and to show.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("malformed encryption key {key_id}: {reason}")]
    MalformedKey { key_id: String, reason: &'static str },
    #[error("invalid key id {0:?}: use 1 to 32 characters from [A-Za-z0-9_-]")]
    InvalidKeyId(String),
    #[error("duplicate key id {0} in the keyring")]
    DuplicateKeyId(String),
    #[error("the keyring is empty: configure at least one key")]
    EmptyKeyring,
    #[error("malformed ciphertext envelope")]
    MalformedEnvelope,
    #[error("value was encrypted with key {0}, which is not in the keyring")]
    UnknownKeyId(String),
    #[error("decryption failed: wrong key, tampered ciphertext, or a value that belongs to another account or field")]
    Decrypt,
    #[error("value is larger than the 64 KiB limit for one credential field")]
    TooLong,
    #[error("decrypted value is not valid UTF-8")]
    NotUtf8,
    #[error("key {0} does not match the key that encrypted this store (key check failed)")]
    KeyCheckFailed(String),
}
