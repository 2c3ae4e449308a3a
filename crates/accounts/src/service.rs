use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use credgate_config::{Integration, Integrations};
use credgate_crypto::{Keyring, Sealed};
use credgate_store::{Account, ListFilter, NewEvent, Status, Store, StoreError};
use rand::RngCore;
use serde_json::{json, Map, Value};

use crate::input::{merge, validate_credentials, validate_id, validate_metadata, Credentials};
use crate::{events, AccountError, AccountView, CreateAccount, PatchAccount};

/// The largest page a listing returns.
pub const MAX_PAGE: usize = 1000;

/// Creates, reads, changes and deletes accounts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Accounts {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    integrations: Arc<Integrations>,
    /// Proactive refresh window (DESIGN.md: 60 s to 180 s before expiry).
    refresh_window: (Duration, Duration),
}

/// One page of a listing; `next` is the cursor for the following page.
#[derive(Debug, serde::Serialize)]
pub struct Page {
    pub accounts: Vec<AccountView>,
    pub next: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RekeyReport {
    pub accounts_rekeyed: u64,
    pub values_resealed: u64,
    /// Key ids that no stored value uses any more; they may leave the config.
    pub keys_retired: Vec<String>,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn event_id() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("evt_{hex}")
}

/// A webhook event for `account`, ready for the outbox.
pub fn new_event(kind: &str, account: &Account, reason: Option<&str>, now: i64) -> NewEvent {
    let id = event_id();
    NewEvent {
        payload: json!({
            "id": id,
            "type": kind,
            "account_id": account.id,
            "integration": account.integration,
            "timestamp": crate::view::rfc3339(now),
            "reason": reason,
        }),
        id,
        kind: kind.to_owned(),
        account_id: account.id.clone(),
        created_at: now,
    }
}

impl Accounts {
    /// Checks the keyring against the store and returns the service.
    ///
    /// Refuses to start when a configured key does not match the key check stored
    /// under its id, when the store holds values sealed with a key that is not
    /// configured, or when a stored value does not open. Nothing is decrypted for
    /// use before this passes.
    pub async fn unlock(
        store: Arc<dyn Store>,
        keyring: Arc<Keyring>,
        integrations: Arc<Integrations>,
    ) -> Result<Self, AccountError> {
        for check in store.key_checks().await? {
            if !keyring.verify(&check)? {
                let id = check.key_id.as_str();
                if store.count_sealed_with(id).await? > 0 {
                    return Err(AccountError::MissingKey(id.to_owned()));
                }
                store.remove_key_check(id).await?;
            }
        }
        // A store written before key checks existed, or whose checks were lost:
        // open one stored value as a last line of defence.
        let sample = store
            .list(&ListFilter {
                limit: 1,
                ..Default::default()
            })
            .await?;
        if let Some(account) = sample.first() {
            if let Some((field, sealed)) = account.credentials.iter().next() {
                keyring.open(&account.id, field, sealed)?;
            }
        }
        for check in keyring.key_checks() {
            store.add_key_check(&check).await?;
        }
        Ok(Self {
            store,
            keyring,
            integrations,
            refresh_window: (Duration::from_secs(60), Duration::from_secs(180)),
        })
    }

    /// Sets the proactive refresh window used when credentials are written.
    pub fn with_refresh_window(mut self, min: Duration, max: Duration) -> Self {
        self.refresh_window = (min, max);
        self
    }

    /// Sets `next_refresh_at` for an account whose tokens were just written: a
    /// jittered time before expiry, or now for a client-credentials account that
    /// has no token yet. Non-OAuth accounts are never refreshed.
    pub fn schedule_refresh(&self, account: &mut Account, integration: &Integration, now: i64) {
        let format = integration.credentials.format;
        account.next_refresh_at = if !format.is_oauth() {
            None
        } else if !account.credentials.contains_key("access_token") {
            Some(now)
        } else {
            account.expires_at.map(|expires| {
                let (min, max) = self.refresh_window;
                crate::schedule::next_refresh_at(now, expires, min, max, &mut rand::thread_rng())
            })
        };
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub fn keyring_arc(&self) -> Arc<Keyring> {
        Arc::clone(&self.keyring)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn integrations(&self) -> &Integrations {
        &self.integrations
    }

    fn integration(&self, name: &str) -> Result<&Arc<Integration>, AccountError> {
        self.integrations
            .get(name)
            .ok_or_else(|| AccountError::UnknownIntegration(name.to_owned()))
    }

    fn seal_all(
        &self,
        id: &str,
        credentials: &Credentials,
        into: &mut BTreeMap<String, Sealed>,
    ) -> Result<(), AccountError> {
        for (field, value) in &credentials.fields {
            into.insert(field.clone(), self.keyring.seal(id, field, value.expose().as_bytes())?);
        }
        Ok(())
    }

    pub async fn create(&self, input: CreateAccount) -> Result<AccountView, AccountError> {
        validate_id(&input.id)?;
        let integration = self.integration(&input.integration)?;
        let now = now_ms();
        let credentials = validate_credentials(integration, &input.credentials, &[], now)?;
        validate_metadata(integration, &input.metadata)?;
        let mut account = Account {
            id: input.id,
            integration: input.integration,
            credentials: BTreeMap::new(),
            metadata: input.metadata,
            status: Status::Active,
            last_error: None,
            expires_at: credentials.expires_at,
            next_refresh_at: None,
            last_refreshed_at: None,
            version: 0,
            created_at: now,
            updated_at: now,
            refresh_failures: 0,
        };
        let mut sealed = BTreeMap::new();
        self.seal_all(&account.id, &credentials, &mut sealed)?;
        account.credentials = sealed;
        self.schedule_refresh(&mut account, integration, now);
        let event = new_event(events::CREATED, &account, None, now);
        let account = self.store.create(account, vec![event]).await?;
        Ok(self.view(&account))
    }

    pub async fn get(&self, id: &str) -> Result<AccountView, AccountError> {
        Ok(self.view(&self.load(id).await?))
    }

    async fn load(&self, id: &str) -> Result<Account, AccountError> {
        self.store
            .get(id)
            .await?
            .ok_or_else(|| AccountError::NotFound(id.to_owned()))
    }

    pub async fn list(&self, mut filter: ListFilter) -> Result<Page, AccountError> {
        if filter.limit == 0 || filter.limit > MAX_PAGE {
            filter.limit = MAX_PAGE;
        }
        let accounts = self.store.list(&filter).await?;
        let next = (accounts.len() == filter.limit)
            .then(|| accounts.last().map(|a| a.id.clone()))
            .flatten();
        Ok(Page {
            accounts: accounts.iter().map(|a| self.view(a)).collect(),
            next,
        })
    }

    pub async fn patch(&self, id: &str, patch: PatchAccount) -> Result<AccountView, AccountError> {
        let mut account = self.load(id).await?;
        if let Some(expected) = patch.version {
            if expected != account.version {
                return Err(AccountError::Conflict(id.to_owned()));
            }
        }
        let integration = Arc::clone(self.integration(&account.integration)?);
        let now = now_ms();
        let mut events = Vec::new();
        if let Some(metadata) = patch.metadata {
            merge(&mut account.metadata, metadata);
            validate_metadata(&integration, &account.metadata)?;
        }
        if let Some(input) = patch.credentials {
            let (removed, given): (Map<String, Value>, Map<String, Value>) =
                input.into_iter().partition(|(_, value)| value.is_null());
            for field in removed.keys() {
                account.credentials.remove(field);
            }
            let kept: Vec<&str> = account
                .credentials
                .keys()
                .filter(|field| !given.contains_key(*field))
                .map(String::as_str)
                .collect();
            let credentials = validate_credentials(&integration, &given, &kept, now)?;
            let mut sealed = std::mem::take(&mut account.credentials);
            self.seal_all(&account.id, &credentials, &mut sealed)?;
            account.credentials = sealed;
            if credentials.expires_at.is_some() {
                account.expires_at = credentials.expires_at;
            }
            if !credentials.fields.is_empty() {
                if account.status != Status::Active {
                    account.status = Status::Active;
                    events.push(new_event(events::REACTIVATED, &account, Some("new credentials"), now));
                }
                account.last_error = None;
                account.refresh_failures = 0;
                self.schedule_refresh(&mut account, &integration, now);
            }
        }
        account.updated_at = now;
        let account = self.store.update(account, events).await?;
        Ok(self.view(&account))
    }

    /// Deletes the account and returns it as it was (for token revocation).
    pub async fn delete(&self, id: &str) -> Result<Account, AccountError> {
        let account = self.load(id).await?;
        let event = new_event(events::DELETED, &account, None, now_ms());
        self.store.delete(id, account.version, vec![event]).await?;
        Ok(account)
    }

    pub fn view(&self, account: &Account) -> AccountView {
        AccountView::new(account, &self.keyring)
    }

    /// Re-seals every value that is not under the primary key, one account at a
    /// time with compare-and-set (a concurrent refresh simply wins and is re-read),
    /// so the service keeps running. Then retires key checks no value needs.
    pub async fn rekey(&self) -> Result<RekeyReport, AccountError> {
        let mut report = RekeyReport::default();
        let mut filter = ListFilter {
            limit: 500,
            ..Default::default()
        };
        loop {
            let page = self.store.list(&filter).await?;
            let Some(last) = page.last() else { break };
            filter.after = Some(last.id.clone());
            for account in page {
                let resealed = self.rekey_account(account).await?;
                if resealed > 0 {
                    report.accounts_rekeyed += 1;
                    report.values_resealed += resealed;
                }
            }
        }
        let primary = self.keyring.primary().as_str().to_owned();
        for check in self.store.key_checks().await? {
            let id = check.key_id.as_str();
            if id != primary && self.store.count_sealed_with(id).await? == 0 {
                self.store.remove_key_check(id).await?;
                report.keys_retired.push(id.to_owned());
            }
        }
        Ok(report)
    }

    async fn rekey_account(&self, mut account: Account) -> Result<u64, AccountError> {
        loop {
            let stale: Vec<String> = account
                .credentials
                .iter()
                .filter(|(_, sealed)| self.keyring.needs_rekey(sealed))
                .map(|(field, _)| field.clone())
                .collect();
            if stale.is_empty() {
                return Ok(0);
            }
            for field in &stale {
                let plain = self.keyring.open(&account.id, field, &account.credentials[field])?;
                let resealed = self.keyring.seal(&account.id, field, plain.expose().as_bytes())?;
                account.credentials.insert(field.clone(), resealed);
            }
            account.updated_at = now_ms();
            let id = account.id.clone();
            match self.store.update(account, vec![]).await {
                Ok(_) => return Ok(stale.len() as u64),
                Err(StoreError::VersionConflict { .. }) => match self.store.get(&id).await? {
                    Some(fresh) => account = fresh,
                    None => return Ok(0),
                },
                Err(StoreError::NotFound(_)) => return Ok(0),
                Err(error) => return Err(error.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests;
