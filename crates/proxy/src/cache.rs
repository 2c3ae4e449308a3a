//! The hot path's account cache: a warm request makes no store round trip.
//!
//! Entries hold the *sealed* account (plaintext is only ever made per request) plus
//! what can be derived once per account: its integration and its rendered origins.
//! Admin writes invalidate by id. A generation counter makes a load that raced an
//! invalidation discard its result instead of caching stale data.
//!
//! Within one process this is exact. Across replicas, invalidations arrive over
//! Redis pub/sub, which delivers at most once; so entries also expire after a
//! bounded age (`max_age`), which caps how long a lost message can leave a stale
//! copy (a deleted key, an old token) in use.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use credgate_config::{Integration, Integrations};
use credgate_store::{Account, Store, StoreError};

use crate::target::{origins, Origin};

/// What the proxy needs about one account, derived once per load.
#[derive(Debug)]
pub struct Entry {
    pub account: Account,
    pub integration: Arc<Integration>,
    pub origins: Vec<Origin>,
    /// When this copy was read from the store.
    pub loaded: std::time::Instant,
}

#[derive(Debug)]
pub struct AccountCache {
    store: Arc<dyn Store>,
    integrations: Arc<Integrations>,
    /// Account id → entry. A std `RwLock`: held only to clone an `Arc` or insert,
    /// never across an await, so an async lock would only add cost.
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    /// Bumped by every invalidation.
    generation: AtomicU64,
    capacity: usize,
    max_age: std::time::Duration,
}

impl AccountCache {
    pub fn new(
        store: Arc<dyn Store>,
        integrations: Arc<Integrations>,
        capacity: usize,
        max_age: std::time::Duration,
    ) -> Self {
        Self {
            store,
            integrations,
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            capacity: capacity.max(1),
            max_age,
        }
    }

    /// The account, from memory when warm. `None` when it does not exist or its
    /// integration is no longer configured.
    pub async fn get(&self, id: &str) -> Result<Option<Arc<Entry>>, StoreError> {
        if let Some(entry) = self.read().get(id) {
            if entry.loaded.elapsed() < self.max_age {
                return Ok(Some(Arc::clone(entry)));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let Some(account) = self.store.get(id).await? else {
            return Ok(None);
        };
        let Some(integration) = self.integrations.get(&account.integration).cloned() else {
            tracing::warn!(account.id = id, integration = %account.integration, "account's integration is not configured");
            return Ok(None);
        };
        let entry = Arc::new(Entry {
            origins: origins(&integration, &account.metadata),
            account,
            integration,
            loaded: std::time::Instant::now(),
        });
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) == generation {
            if entries.len() >= self.capacity {
                // Crude but bounded: drop an arbitrary entry; it reloads on next use.
                if let Some(victim) = entries.keys().next().cloned() {
                    entries.remove(&victim);
                }
            }
            entries.insert(id.to_owned(), Arc::clone(&entry));
        }
        Ok(Some(entry))
    }

    /// Caches a copy of an account known to be current (e.g. just refreshed),
    /// unless a newer version is cached already. Returns the entry to use.
    pub fn put(&self, account: Account) -> Option<Arc<Entry>> {
        let integration = self.integrations.get(&account.integration).cloned()?;
        let entry = Arc::new(Entry {
            origins: origins(&integration, &account.metadata),
            account,
            integration,
            loaded: std::time::Instant::now(),
        });
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match entries.get(&entry.account.id) {
            Some(cached) if cached.account.version >= entry.account.version => Some(Arc::clone(cached)),
            _ => {
                entries.insert(entry.account.id.clone(), Arc::clone(&entry));
                Some(entry)
            }
        }
    }

    pub fn invalidate(&self, id: &str) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(id);
    }

    /// Drops every entry (after missing change notifications).
    pub fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }
}
