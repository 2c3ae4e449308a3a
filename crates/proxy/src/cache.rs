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
        let Some(entry) = self.entry(account) else {
            tracing::warn!(account.id = id, "account's integration is not configured");
            return Ok(None);
        };
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) == generation {
            self.insert(&mut entries, Arc::clone(&entry));
        }
        Ok(Some(entry))
    }

    /// Caches a copy of an account known to be current (e.g. just refreshed),
    /// unless a newer version is cached already. Returns the entry to use.
    pub fn put(&self, account: Account) -> Option<Arc<Entry>> {
        let entry = self.entry(account)?;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        match entries.get(&entry.account.id) {
            Some(cached) if cached.account.version > entry.account.version => Some(Arc::clone(cached)),
            _ => {
                self.insert(&mut entries, Arc::clone(&entry));
                Some(entry)
            }
        }
    }

    /// Derives what the proxy needs from a freshly read account.
    fn entry(&self, account: Account) -> Option<Arc<Entry>> {
        let integration = self.integrations.get(&account.integration).cloned()?;
        Some(Arc::new(Entry {
            origins: origins(&integration, &account.metadata),
            account,
            integration,
            loaded: std::time::Instant::now(),
        }))
    }

    /// Inserts within the capacity bound.
    fn insert(&self, entries: &mut HashMap<String, Arc<Entry>>, entry: Arc<Entry>) {
        if entries.len() >= self.capacity && !entries.contains_key(&entry.account.id) {
            // Crude but bounded: drop an arbitrary entry; it reloads on next use.
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(entry.account.id.clone(), entry);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use credgate_store::{SqliteStore, Status};

    use super::*;

    fn account(id: &str, version: i64) -> Account {
        Account {
            id: id.to_owned(),
            integration: "stripe".into(),
            credentials: BTreeMap::new(),
            metadata: Default::default(),
            status: Status::Active,
            last_error: None,
            expires_at: None,
            next_refresh_at: None,
            last_refreshed_at: None,
            version,
            created_at: 0,
            updated_at: 0,
            refresh_failures: 0,
        }
    }

    fn cache(capacity: usize, max_age: Duration) -> (tempfile::TempDir, AccountCache) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
        let integrations = credgate_config::load_integrations(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/integrations"),
        )
        .unwrap();
        (dir, AccountCache::new(store, Arc::new(integrations), capacity, max_age))
    }

    #[tokio::test]
    async fn put_keeps_the_newest_version_within_capacity() {
        let (_dir, cache) = cache(2, Duration::from_secs(60));
        cache.put(account("a", 2)).unwrap();
        assert_eq!(
            cache.put(account("a", 1)).unwrap().account.version,
            2,
            "an older copy never wins"
        );
        cache.put(account("b", 1)).unwrap();
        cache.put(account("c", 1)).unwrap();
        assert_eq!(cache.len(), 2, "capacity holds for put too");
        let mut unknown = account("d", 1);
        unknown.integration = "gone".into();
        assert!(cache.put(unknown).is_none());
    }

    #[tokio::test]
    async fn entries_older_than_max_age_are_read_again() {
        let (_dir, cache) = cache(10, Duration::ZERO);
        cache.put(account("a", 1)).unwrap();
        // Not in the store: once the cached copy is too old, the answer is the store's.
        assert!(cache.get("a").await.unwrap().is_none());
    }
}
