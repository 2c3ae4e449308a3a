use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use credgate_crypto::{mask, Keyring};
use credgate_store::{Account, Status};
use serde::Serialize;

/// An account as the admin API and the CLI show it: credentials masked
/// (`sk_l…9fQ2`), times as RFC 3339.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AccountView {
    pub id: String,
    pub integration: String,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub credentials: BTreeMap<String, String>,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub expires_at: Option<String>,
    pub next_refresh_at: Option<String>,
    pub last_refreshed_at: Option<String>,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// Shown in place of a value that does not open with the configured keys.
pub(crate) const UNREADABLE: &str = "[cannot decrypt]";

impl AccountView {
    pub fn new(account: &Account, keyring: &Keyring) -> Self {
        let credentials = account
            .credentials
            .iter()
            .map(|(field, sealed)| {
                let masked = match keyring.open(&account.id, field, sealed) {
                    Ok(plain) => mask(plain.expose()),
                    Err(error) => {
                        tracing::warn!(account.id = %account.id, field, %error, "stored credential does not open");
                        UNREADABLE.to_owned()
                    }
                };
                (field.clone(), masked)
            })
            .collect();
        Self {
            id: account.id.clone(),
            integration: account.integration.clone(),
            status: account.status,
            last_error: account.last_error.clone(),
            credentials,
            metadata: account.metadata.clone(),
            expires_at: account.expires_at.map(rfc3339),
            next_refresh_at: account.next_refresh_at.map(rfc3339),
            last_refreshed_at: account.last_refreshed_at.map(rfc3339),
            version: account.version,
            created_at: rfc3339(account.created_at),
            updated_at: rfc3339(account.updated_at),
        }
    }
}

pub(crate) fn rfc3339(unix_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}
