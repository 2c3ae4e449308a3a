//! Durable storage of accounts, the webhook outbox and key checks, behind one trait.
//!
//! The [`Store`] trait is what every caller sees; [`SqliteStore`] is the embedded
//! default and a PostgreSQL backend implements the same trait. The rules every
//! backend keeps:
//! - every write to an account bumps its `version`; [`Store::update`] is a
//!   compare-and-set on that version, so a writer holding a stale copy (a refresher
//!   whose lock expired) can never overwrite newer data;
//! - webhook events are written to the outbox in the same transaction as the account
//!   change that caused them, so a status change and its event exist together or not
//!   at all;
//! - the store holds only sealed credentials ([`credgate_crypto::Sealed`]); it never
//!   sees a key or a plaintext.
#![forbid(unsafe_code)]

mod model;
mod sqlite;

pub use model::*;
pub use sqlite::SqliteStore;

use async_trait::async_trait;
use credgate_crypto::KeyCheck;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("account {0} already exists")]
    AlreadyExists(String),
    #[error("account {0} not found")]
    NotFound(String),
    /// The compare-and-set lost: someone wrote the account since it was read.
    #[error("account {id} was changed concurrently (expected version {expected})")]
    VersionConflict { id: String, expected: i64 },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the store's schema version {found} is newer than this credgate supports ({supported})")]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("storage backend: {0}")]
    Backend(String),
}

/// Accounts, outbox and key checks. Implementations are cheap to clone-share behind
/// an `Arc` and safe to call from many tasks at once.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    async fn get(&self, id: &str) -> Result<Option<Account>, StoreError>;

    /// Inserts a new account at version 1, with its events, atomically.
    async fn create(&self, account: Account, events: Vec<NewEvent>) -> Result<Account, StoreError>;

    /// Writes `account` if the stored version still equals `account.version`; the
    /// stored copy gets `version + 1`. Events are written in the same transaction.
    async fn update(&self, account: Account, events: Vec<NewEvent>) -> Result<Account, StoreError>;

    /// Deletes an account if its version is still `expected_version`, with its events.
    async fn delete(&self, id: &str, expected_version: i64, events: Vec<NewEvent>) -> Result<(), StoreError>;

    /// A page of accounts in id order, after `filter.after`.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<Account>, StoreError>;

    /// Active accounts whose `next_refresh_at` is at or before `now_ms`, soonest first.
    async fn due_for_refresh(&self, now_ms: i64, limit: usize) -> Result<Vec<Account>, StoreError>;

    /// Undelivered outbox events whose next attempt is due, oldest first.
    async fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Claims an event for delivery until `lease_until_ms`, if its next attempt is
    /// still `seen_next_attempt_ms` (no other replica claimed it meanwhile).
    async fn outbox_claim(
        &self,
        event_id: &str,
        seen_next_attempt_ms: i64,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError>;

    async fn outbox_delivered(&self, event_id: &str, now_ms: i64) -> Result<(), StoreError>;

    async fn outbox_retry_at(&self, event_id: &str, attempts: u32, next_attempt_ms: i64) -> Result<(), StoreError>;

    /// Records `key` as used until `expires_at_ms`; `false` if it was used before.
    /// Makes one-time tokens (OAuth connect states) work once across replicas.
    async fn use_once(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool, StoreError>;

    async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError>;

    /// Records a key check unless one for the same key id exists.
    async fn add_key_check(&self, check: &KeyCheck) -> Result<(), StoreError>;

    async fn remove_key_check(&self, key_id: &str) -> Result<(), StoreError>;

    /// How many accounts hold at least one value sealed under `key_id`.
    async fn count_sealed_with(&self, key_id: &str) -> Result<u64, StoreError>;
}
