use std::fmt;

use aes_gcm::aead::{AeadInPlace, KeyInit, OsRng};
use aes_gcm::{AeadCore, Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

use crate::{CryptoError, Sealed, SecretString};

const KEY_LEN: usize = 32;
pub(crate) const NONCE_LEN: usize = 12;
pub(crate) const TAG_LEN: usize = 16;
/// Credentials are tokens and keys, not documents; a cap keeps a hostile API
/// client from storing megabytes per field.
pub const MAX_PLAINTEXT_LEN: usize = 64 * 1024;

/// The plaintext sealed as a key check value; what matters is that it authenticates.
const KEY_CHECK_PLAINTEXT: &[u8] = b"credgate key check v1";
/// Associated-data "account" of key check values: not a valid account id, so a key
/// check can never be confused with a credential.
const KEY_CHECK_SCOPE: &str = "\0keycheck";

/// A key's name in the keyring, stored inside every envelope.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn new(id: impl Into<String>) -> Result<Self, CryptoError> {
        let id = id.into();
        let valid =
            !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Self(id))
        } else {
            Err(CryptoError::InvalidKeyId(id))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 32 bytes of AES-256 key material, zeroized on drop and never printed.
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

impl Key {
    /// A new random key from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let key = Aes256Gcm::generate_key(OsRng);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&key);
        Self(bytes)
    }

    /// Parses standard base64 (surrounding whitespace ignored) of exactly 32 bytes.
    pub fn from_base64(key_id: &KeyId, text: &str) -> Result<Self, CryptoError> {
        let malformed = |reason| CryptoError::MalformedKey {
            key_id: key_id.to_string(),
            reason,
        };
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| malformed("not valid base64"))?,
        );
        if decoded.len() != KEY_LEN {
            return Err(malformed("must decode to exactly 32 bytes"));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(Self(bytes))
    }

    /// Standard base64, for `credgate keygen` and dev-mode key files.
    pub fn to_base64(&self) -> SecretString {
        SecretString::new(STANDARD.encode(*self.0))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key([redacted])")
    }
}

/// A key check value: a known plaintext sealed under one key, stored beside the data.
/// Opening it proves that a configured key is the one that encrypted the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyCheck {
    pub key_id: KeyId,
    pub sealed: Sealed,
}

/// The keys credgate knows. The first (primary) key seals; every key opens.
///
/// Holds ready-to-use ciphers (the expanded key schedule) so that opening a value on
/// the request path costs one AES-GCM pass and no key setup. The `aes-gcm` `zeroize`
/// feature wipes the schedules on drop.
pub struct Keyring {
    keys: Vec<(KeyId, Aes256Gcm)>,
}

impl Keyring {
    pub fn new(keys: Vec<(KeyId, Key)>) -> Result<Self, CryptoError> {
        if keys.is_empty() {
            return Err(CryptoError::EmptyKeyring);
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            if ring.iter().any(|(existing, _)| *existing == id) {
                return Err(CryptoError::DuplicateKeyId(id.to_string()));
            }
            let cipher = Aes256Gcm::new_from_slice(&key.0[..]).map_err(|_| CryptoError::MalformedKey {
                key_id: id.to_string(),
                reason: "wrong length",
            })?;
            ring.push((id, cipher));
        }
        Ok(Self { keys: ring })
    }

    /// The key that seals new values.
    pub fn primary(&self) -> &KeyId {
        &self.keys[0].0
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|(id, _)| id)
    }

    /// Seals `plaintext` under the primary key, bound to `account` and `field`.
    pub fn seal(&self, account: &str, field: &str, plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        let (key_id, cipher) = &self.keys[0];
        seal_with(key_id, cipher, account, field, plaintext)
    }

    /// Opens a value sealed for `account` and `field` with whichever key sealed it.
    pub fn open(&self, account: &str, field: &str, sealed: &Sealed) -> Result<SecretString, CryptoError> {
        let cipher = self.cipher(sealed.key_id())?;
        let (buffer, range) = open_with(cipher, account, field, sealed)?;
        let text = std::str::from_utf8(&buffer[range]).map_err(|_| CryptoError::NotUtf8)?;
        Ok(SecretString::new(text))
    }

    /// Whether `sealed` must be re-sealed to be under the primary key (for `rekey`).
    pub fn needs_rekey(&self, sealed: &Sealed) -> bool {
        sealed.key_id() != self.primary().as_str()
    }

    /// One key check value per key in the ring.
    pub fn key_checks(&self) -> Vec<KeyCheck> {
        self.keys
            .iter()
            .map(|(id, cipher)| {
                let sealed = seal_with(id, cipher, KEY_CHECK_SCOPE, id.as_str(), KEY_CHECK_PLAINTEXT)
                    .expect("the key check plaintext is far below the size limit");
                KeyCheck {
                    key_id: id.clone(),
                    sealed,
                }
            })
            .collect()
    }

    /// Verifies a stored key check against the configured key of the same id.
    /// A check for a key id that is not configured is not an error here: the store
    /// decides whether data under that key still exists.
    pub fn verify(&self, check: &KeyCheck) -> Result<bool, CryptoError> {
        let Some((_, cipher)) = self.keys.iter().find(|(id, _)| *id == check.key_id) else {
            return Ok(false);
        };
        match open_with(cipher, KEY_CHECK_SCOPE, check.key_id.as_str(), &check.sealed) {
            Ok((buffer, range)) if buffer[range.clone()] == *KEY_CHECK_PLAINTEXT => Ok(true),
            _ => Err(CryptoError::KeyCheckFailed(check.key_id.to_string())),
        }
    }

    fn cipher(&self, key_id: &str) -> Result<&Aes256Gcm, CryptoError> {
        self.keys
            .iter()
            .find(|(id, _)| id.as_str() == key_id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| CryptoError::UnknownKeyId(key_id.to_owned()))
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("keys", &self.keys.iter().map(|(id, _)| id).collect::<Vec<_>>())
            .finish()
    }
}

/// Associated data: the account and the field, each length-prefixed so that no two
/// (account, field) pairs encode to the same bytes.
fn associated_data(account: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(8 + account.len() + field.len());
    aad.extend_from_slice(&(account.len() as u32).to_be_bytes());
    aad.extend_from_slice(account.as_bytes());
    aad.extend_from_slice(&(field.len() as u32).to_be_bytes());
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn seal_with(
    key_id: &KeyId,
    cipher: &Aes256Gcm,
    account: &str,
    field: &str,
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(CryptoError::TooLong);
    }
    let nonce = Aes256Gcm::generate_nonce(OsRng);
    let mut buffer = Zeroizing::new(Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN));
    buffer.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(&nonce, &associated_data(account, field), &mut buffer[..])
        .map_err(|_| CryptoError::TooLong)?;
    let mut payload = Vec::with_capacity(NONCE_LEN + buffer.len() + TAG_LEN);
    payload.extend_from_slice(&nonce);
    payload.extend_from_slice(&buffer);
    payload.extend_from_slice(&tag);
    Ok(Sealed::assemble(key_id.as_str(), payload))
}

/// Opens `sealed` in a copy of its payload that is decrypted where it lies and
/// zeroized on drop. Returns the buffer and the plaintext's range in it.
fn open_with(
    cipher: &Aes256Gcm,
    account: &str,
    field: &str,
    sealed: &Sealed,
) -> Result<(Zeroizing<Vec<u8>>, std::ops::Range<usize>), CryptoError> {
    let mut payload = Zeroizing::new(sealed.payload().to_vec());
    let len = payload.len();
    let (nonce, rest) = payload.split_at_mut(NONCE_LEN);
    let (ciphertext, tag) = rest.split_at_mut(len - NONCE_LEN - TAG_LEN);
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(nonce),
            &associated_data(account, field),
            ciphertext,
            aes_gcm::Tag::from_slice(tag),
        )
        .map_err(|_| CryptoError::Decrypt)?;
    Ok((payload, NONCE_LEN..len - TAG_LEN))
}

#[cfg(test)]
mod tests;
