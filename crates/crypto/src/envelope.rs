use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::CryptoError;

/// Version tag of the envelope format. A new format gets a new tag; old ones stay
/// readable so that stored data never needs a flag day.
const VERSION: &str = "cg1";

/// An encrypted value as stored: `cg1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>`.
///
/// The payload is decoded once, when the envelope is parsed, so that opening a
/// value on the request path costs one AES-GCM pass and no base64. Not secret (it
/// is what the store holds), but `Debug` shows only the key id and the length,
/// which is all anybody reading a log needs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sealed {
    text: String,
    /// `nonce ‖ ciphertext ‖ tag`, decoded from `text`.
    payload: Box<[u8]>,
}

/// The shortest payload that can hold anything: a nonce and a tag.
const MIN_PAYLOAD_LEN: usize = crate::keyring::NONCE_LEN + crate::keyring::TAG_LEN;

impl Sealed {
    /// Wraps a stored envelope after checking its shape and decoding its payload.
    /// Opening it may still fail (wrong key, tampered ciphertext).
    pub fn parse(text: impl Into<String>) -> Result<Self, CryptoError> {
        let text = text.into();
        let (_, encoded) = split(&text)?;
        let payload = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| CryptoError::MalformedEnvelope)?;
        if payload.len() < MIN_PAYLOAD_LEN {
            return Err(CryptoError::MalformedEnvelope);
        }
        Ok(Self {
            text,
            payload: payload.into(),
        })
    }

    pub(crate) fn assemble(key_id: &str, payload: Vec<u8>) -> Self {
        let mut text = String::with_capacity(VERSION.len() + key_id.len() + 2 + payload.len() * 4 / 3 + 4);
        text.push_str(VERSION);
        text.push(':');
        text.push_str(key_id);
        text.push(':');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut text);
        Self {
            text,
            payload: payload.into(),
        }
    }

    /// The id of the key that sealed this value.
    pub fn key_id(&self) -> &str {
        // `parse` and `assemble` guarantee the shape: the id follows `cg1:`.
        let rest = &self.text[VERSION.len() + 1..];
        rest.split_once(':').map(|(key_id, _)| key_id).unwrap_or_default()
    }

    /// `nonce ‖ ciphertext ‖ tag`, at least [`MIN_PAYLOAD_LEN`] bytes.
    pub(crate) fn payload(&self) -> &[u8] {
        &self.payload
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

fn split(text: &str) -> Result<(&str, &str), CryptoError> {
    let rest = text
        .strip_prefix(VERSION)
        .and_then(|rest| rest.strip_prefix(':'))
        .ok_or(CryptoError::MalformedEnvelope)?;
    let (key_id, payload) = rest.split_once(':').ok_or(CryptoError::MalformedEnvelope)?;
    if key_id.is_empty() || payload.is_empty() {
        return Err(CryptoError::MalformedEnvelope);
    }
    Ok((key_id, payload))
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed({}, {} bytes)", self.key_id(), self.text.len())
    }
}
