//! Application keys: which app may use which accounts.
//!
//! Keys are configured as SHA-256 digests (or references hashed at start-up) and
//! compared in constant time, so the config never holds a usable key and a timing
//! side channel cannot recover one.

use credgate_config::{AppKeyConfig, Env};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Clone, Debug)]
struct AppKey {
    name: String,
    digest: [u8; 32],
    accounts: Vec<String>,
    integrations: Vec<String>,
}

/// The configured keys. Empty means no app key is required (loopback only).
#[derive(Clone, Debug, Default)]
pub struct AppKeys {
    keys: Vec<AppKey>,
}

/// The app a request authenticated as.
#[derive(Clone, Copy, Debug)]
pub struct App<'a> {
    key: Option<&'a AppKey>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppKeyError {
    #[error("proxy.app_keys: {name}: {reason}")]
    Invalid { name: String, reason: String },
}

impl AppKeys {
    pub fn from_config(configs: &[AppKeyConfig], env: &dyn Env) -> Result<Self, AppKeyError> {
        let mut keys = Vec::with_capacity(configs.len());
        for config in configs {
            let invalid = |reason: String| AppKeyError::Invalid {
                name: config.name.clone(),
                reason,
            };
            let digest = match (&config.sha256, &config.key) {
                (Some(hex), _) => parse_hex(hex).ok_or_else(|| invalid("sha256 must be 64 hex characters".into()))?,
                (None, Some(reference)) => {
                    let resolved = reference
                        .resolve(env, Default::default)
                        .map_err(|e| invalid(e.to_string()))?;
                    digest(resolved.value.expose())
                }
                (None, None) => return Err(invalid("give sha256 or key".into())),
            };
            keys.push(AppKey {
                name: config.name.clone(),
                digest,
                accounts: config.accounts.clone(),
                integrations: config.integrations.clone(),
            });
        }
        Ok(Self { keys })
    }

    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Finds the app whose key this is. Every configured key is compared, so the
    /// time taken does not depend on which one matched.
    pub fn authenticate(&self, presented: Option<&str>) -> Option<App<'_>> {
        if !self.required() {
            return Some(App { key: None });
        }
        let presented = digest(presented?);
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.digest.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        found.map(|key| App { key: Some(key) })
    }
}

impl App<'_> {
    pub fn may_use_account(&self, id: &str) -> bool {
        self.key
            .is_none_or(|key| key.accounts.is_empty() || key.accounts.iter().any(|a| a == id))
    }

    pub fn may_use_integration(&self, name: &str) -> bool {
        self.key
            .is_none_or(|key| key.integrations.is_empty() || key.integrations.iter().any(|i| i == name))
    }

    pub fn name(&self) -> &str {
        self.key.map(|key| key.name.as_str()).unwrap_or("-")
    }
}

pub fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex of a key's digest, for `sha256:` in the config.
pub fn digest_hex(key: &str) -> String {
    digest(key).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let text = std::str::from_utf8(chunk).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(name: &str, key: &str, accounts: &[&str]) -> AppKeyConfig {
        AppKeyConfig {
            name: name.into(),
            sha256: Some(digest_hex(key)),
            key: None,
            accounts: accounts.iter().map(|a| a.to_string()).collect(),
            integrations: vec![],
        }
    }

    #[test]
    fn keys_authenticate_and_restrict() {
        let keys = AppKeys::from_config(
            &[
                config("billing", "key-one", &["acme-stripe"]),
                config("crm", "key-two", &[]),
            ],
            &HashMap::new(),
        )
        .unwrap();
        let billing = keys.authenticate(Some("key-one")).unwrap();
        assert_eq!(billing.name(), "billing");
        assert!(billing.may_use_account("acme-stripe"));
        assert!(!billing.may_use_account("acme-hubspot"));
        assert!(keys.authenticate(Some("key-one ")).is_none());
        assert!(keys.authenticate(None).is_none());
        assert!(keys.authenticate(Some("key-two")).unwrap().may_use_account("anything"));
        assert!(AppKeys::default().authenticate(None).is_some());
    }
}
