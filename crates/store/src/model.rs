use std::collections::BTreeMap;
use std::fmt;

use credgate_crypto::Sealed;
use serde::{Deserialize, Serialize};

/// One customer's connection to one vendor, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub id: String,
    pub integration: String,
    /// Field name → sealed value. Every credential field is sealed, including the
    /// less sensitive ones (token type, scope), so there is one rule, not a list.
    pub credentials: BTreeMap<String, Sealed>,
    /// Non-secret data templates may use (e.g. Salesforce `instance_url`).
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub status: Status,
    pub last_error: Option<String>,
    /// Unix milliseconds.
    pub expires_at: Option<i64>,
    pub next_refresh_at: Option<i64>,
    pub last_refreshed_at: Option<i64>,
    /// Bumped by every write; the compare-and-set token.
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Consecutive failed refreshes since the last success (drives backoff).
    pub refresh_failures: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Active,
    NeedsReauth,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsReauth => "needs_reauth",
            Self::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "needs_reauth" => Some(Self::NeedsReauth),
            "error" => Some(Self::Error),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which accounts [`crate::Store::list`] returns.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub integration: Option<String>,
    pub status: Option<Status>,
    /// Cursor: return accounts with an id greater than this.
    pub after: Option<String>,
    pub limit: usize,
}

/// A webhook event to write to the outbox along with an account change.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: String,
    pub kind: String,
    pub account_id: String,
    pub payload: serde_json::Value,
    pub created_at: i64,
}

/// An event waiting in (or delivered from) the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEvent {
    pub id: String,
    pub kind: String,
    pub account_id: String,
    pub payload: serde_json::Value,
    pub created_at: i64,
    pub attempts: u32,
    pub next_attempt_at: i64,
}
