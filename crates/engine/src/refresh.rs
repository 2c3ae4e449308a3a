//! One refresh per account at a time, in this process and across replicas.
//!
//! In-process, concurrent callers for one account share one task (a single
//! flight). Across replicas, the task first takes the account's lock; a replica
//! that loses waits for the winner's change notification (or polls the store),
//! then reads the new token. Under the lock the account is read again: someone
//! may have refreshed already. Every write is compare-and-set on the version, so a
//! refresher whose lock expired cannot overwrite newer tokens (fencing).
//!
//! Failures are classified by what to do next: a dead grant (`invalid_grant` and
//! friends) marks the account `needs_reauth` with an outbox webhook in the same
//! transaction, after re-reading the store (another replica may have rotated the
//! token we just spent); passing trouble (5xx, timeouts, 429) keeps it `active`,
//! records `last_error`, and schedules a retry with exponential backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credgate_accounts::{events, schedule, Accounts};
use credgate_config::{CredentialFormat, Integration, OsEnv, RefreshConfig};
use credgate_crypto::SecretString;
use credgate_store::{Account, Status, StoreError};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::coordination::Coordinator;
use crate::token::{ClientAuth, Grant, TokenClient, TokenError, Tokens};
use crate::Clock;

/// Why a refresh is wanted; decides whether it is still needed once we hold the lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The scheduler found it due (`next_refresh_at` passed).
    Due,
    /// A request needs a token and the stored one expires within the skew.
    Expiring,
    /// The vendor refused a token we believed fresh (reactive 401), or an operator
    /// asked: refresh unless someone already did since `seen_version`.
    Forced { seen_version: i64 },
}

/// What a caller gets when it cannot have a fresh token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefreshError {
    #[error("the account needs to be reconnected")]
    NeedsReauth,
    #[error("the token cannot be refreshed right now; retry in {} s", retry_after.as_secs())]
    Unavailable { retry_after: Duration },
    #[error("account not found")]
    NotFound,
}

pub type Outcome = Result<Arc<Account>, RefreshError>;

/// An integration's client credentials, resolved once at start-up.
#[derive(Clone, Debug)]
struct IntegrationClient {
    id: String,
    /// Current secret first, then the one being rotated out.
    secrets: Vec<SecretString>,
}

pub struct Refresher {
    accounts: Accounts,
    token: TokenClient,
    coordinator: Arc<Coordinator>,
    settings: RefreshConfig,
    clock: Arc<dyn Clock>,
    clients: HashMap<String, IntegrationClient>,
    /// Refreshes in flight, by account id. A std mutex: held only to look up or
    /// insert, never across an await.
    inflight: Mutex<HashMap<String, Shared<BoxFuture<'static, Outcome>>>>,
    /// Where refresh tasks run (the main runtime), whichever thread asks.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    /// Must be called inside the runtime that should run refresh tasks.
    pub fn new(
        accounts: Accounts,
        token: TokenClient,
        coordinator: Arc<Coordinator>,
        settings: RefreshConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let mut clients = HashMap::new();
        for (name, integration) in accounts.integrations() {
            let Some(client) = &integration.credentials.client else {
                continue;
            };
            // An integration whose client credentials are not set up (yet) still
            // proxies with stored tokens; its refreshes wait, retrying with backoff,
            // until it is configured. Start-up does not fail for it.
            let resolved = (|| {
                let id = client.id.resolve(&OsEnv)?;
                let mut secrets = Vec::new();
                for secret in [&client.secret, &client.previous_secret].into_iter().flatten() {
                    secrets.push(secret.resolve(&OsEnv, SecretString::default)?.value);
                }
                Ok::<_, credgate_config::SecretError>(IntegrationClient { id, secrets })
            })();
            match resolved {
                Ok(client) => {
                    clients.insert(name.clone(), client);
                }
                Err(error) => tracing::warn!(
                    integration = %name,
                    %error,
                    "OAuth client credentials not configured; refreshes for this integration will wait"
                ),
            }
        }
        Self {
            accounts,
            token,
            coordinator,
            settings,
            clock,
            clients,
            inflight: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    pub fn settings(&self) -> &RefreshConfig {
        &self.settings
    }

    pub fn coordinator(&self) -> &Arc<Coordinator> {
        &self.coordinator
    }

    /// Whether a request may use this account's stored token as it is.
    pub fn is_fresh(&self, account: &Account, integration: &Integration) -> bool {
        if !integration.credentials.format.is_oauth() {
            return true;
        }
        if !account.credentials.contains_key("access_token") {
            return false;
        }
        let horizon = self.clock.now_ms() + self.settings.skew.as_millis() as i64;
        account.expires_at.is_none_or(|expires| expires > horizon)
    }

    /// Refreshes the account (or joins the refresh in flight) and returns it as
    /// stored afterwards.
    pub async fn refresh(self: &Arc<Self>, id: &str, reason: Reason) -> Outcome {
        let (flight, joined) = self.flight(id, reason);
        let outcome = flight.await;
        // A forced refresh that joined someone else's flight may have got an
        // answer that refreshed nothing (that flight did not need to): fly its own.
        if let (true, Reason::Forced { seen_version }, Ok(account)) = (joined, reason, &outcome) {
            if account.version == seen_version {
                return self.flight(id, reason).0.await;
            }
        }
        outcome
    }

    /// Waits (up to `timeout`) for the refreshes in flight, so that a shutdown
    /// never abandons one between the vendor rotating a token and the store
    /// write that keeps it.
    pub async fn drain(&self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending: Vec<_> = self
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            if pending.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, futures_util::future::join_all(pending))
                .await
                .is_err()
            {
                tracing::warn!("shutting down with token refreshes still in flight");
                return;
            }
        }
    }

    /// The flight for `id`, and whether it was already in the air.
    fn flight(self: &Arc<Self>, id: &str, reason: Reason) -> (Shared<BoxFuture<'static, Outcome>>, bool) {
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(id) {
                Some(flight) => (flight.clone(), true),
                None => {
                    let this = Arc::clone(self);
                    let key = id.to_owned();
                    // A task, so the refresh completes even if every caller goes
                    // away; the guard leaves the map even if the task panics.
                    let task = self.runtime.spawn(async move {
                        let _landed = Landed {
                            refresher: Arc::clone(&this),
                            id: key.clone(),
                        };
                        this.run(&key, reason).await
                    });
                    let flight = async move {
                        task.await.unwrap_or(Err(RefreshError::Unavailable {
                            retry_after: Duration::from_secs(1),
                        }))
                    }
                    .boxed()
                    .shared();
                    inflight.insert(id.to_owned(), flight.clone());
                    (flight, false)
                }
            }
        }
    }

    fn needed(&self, reason: Reason, account: &Account) -> bool {
        let now = self.clock.now_ms();
        match reason {
            Reason::Due => account.next_refresh_at.is_some_and(|at| at <= now),
            Reason::Expiring => self
                .accounts
                .integrations()
                .get(&account.integration)
                .is_some_and(|integration| !self.is_fresh(account, integration)),
            Reason::Forced { seen_version } => account.version == seen_version,
        }
    }

    /// Outside the lock: decide, take the lock or wait for whoever holds it.
    async fn run(&self, id: &str, reason: Reason) -> Outcome {
        let give_up = tokio::time::Instant::now() + self.settings.lock_ttl * 2;
        loop {
            // Subscribe before reading, so a change in between is not missed.
            let mut changes = self.coordinator.changes();
            let account = self.load(id).await?;
            if let Some(refused) = inactive(&account) {
                return Err(refused);
            }
            if !self.needed(reason, &account) {
                return Ok(Arc::new(account));
            }
            if let Some(waiting) = self.backing_off(reason, &account) {
                return waiting;
            }
            match self.coordinator.try_lock(id).await {
                Ok(Some(lock)) => {
                    let outcome = self.locked(id, reason).await;
                    self.coordinator.unlock(lock).await;
                    self.coordinator.announce(id).await;
                    return outcome;
                }
                Ok(None) => {
                    if tokio::time::Instant::now() >= give_up {
                        return Err(RefreshError::Unavailable {
                            retry_after: Duration::from_secs(1),
                        });
                    }
                    // Another replica is refreshing: wake on its announcement, or
                    // poll the store in case the notification is lost.
                    let poll = Duration::from_millis(250);
                    let _ = tokio::time::timeout(poll, async {
                        while let Ok(changed) = changes.recv().await {
                            if changed == id {
                                break;
                            }
                        }
                    })
                    .await;
                }
                Err(error) => {
                    tracing::warn!(account.id = id, %error, "cannot take the refresh lock");
                    return Err(RefreshError::Unavailable {
                        retry_after: Duration::from_secs(5),
                    });
                }
            }
        }
    }

    /// While a failed account waits out its backoff, requests do not hit the
    /// vendor again: they get the stored token while it is valid, 503 after.
    fn backing_off(&self, reason: Reason, account: &Account) -> Option<Outcome> {
        if matches!(reason, Reason::Forced { .. }) || account.refresh_failures == 0 {
            return None;
        }
        let now = self.clock.now_ms();
        let retry_at = account.next_refresh_at.filter(|at| *at > now)?;
        let still_valid =
            account.expires_at.is_some_and(|e| e > now) && account.credentials.contains_key("access_token");
        Some(if still_valid && reason == Reason::Expiring {
            Ok(Arc::new(account.clone()))
        } else {
            Err(RefreshError::Unavailable {
                retry_after: Duration::from_millis((retry_at - now) as u64).max(Duration::from_secs(1)),
            })
        })
    }

    async fn load(&self, id: &str) -> Result<Account, RefreshError> {
        match self.accounts.store().get(id).await {
            Ok(Some(account)) => Ok(account),
            Ok(None) => Err(RefreshError::NotFound),
            Err(error) => {
                tracing::error!(account.id = id, %error, "store read failed during refresh");
                Err(RefreshError::Unavailable {
                    retry_after: Duration::from_secs(5),
                })
            }
        }
    }

    /// Under the lock: read again, call the vendor, write with compare-and-set.
    async fn locked(&self, id: &str, reason: Reason) -> Outcome {
        let account = self.load(id).await?;
        if let Some(refused) = inactive(&account) {
            return Err(refused);
        }
        if !self.needed(reason, &account) {
            return Ok(Arc::new(account));
        }
        let Some(integration) = self.accounts.integrations().get(&account.integration).cloned() else {
            return Err(RefreshError::NotFound);
        };
        let started = self.clock.now_ms();
        let result = self.call_vendor(&account, &integration, started).await;
        match result {
            Ok(tokens) => self.store_tokens(account, &integration, tokens).await,
            Err(error) => self.store_failure(account, error).await,
        }
    }

    /// Opens one stored credential field, if present.
    fn open(&self, account: &Account, field: &str) -> Result<Option<SecretString>, TokenError> {
        let keyring = self.accounts.keyring();
        account
            .credentials
            .get(field)
            .map(|sealed| keyring.open(&account.id, field, sealed))
            .transpose()
            .map_err(|error| {
                tracing::error!(account.id = %account.id, field, %error, "stored credential does not open");
                TokenError::Local("a stored credential does not open with the configured keys".into())
            })
    }

    /// The integration's configured clients, current secret first.
    pub(crate) fn integration_clients(&self, integration: &str) -> Vec<ClientAuth> {
        let Some(client) = self.clients.get(integration) else {
            return Vec::new();
        };
        if client.secrets.is_empty() {
            return vec![ClientAuth {
                id: client.id.clone(),
                secret: None,
            }];
        }
        client
            .secrets
            .iter()
            .map(|secret| ClientAuth {
                id: client.id.clone(),
                secret: Some(secret.clone()),
            })
            .collect()
    }

    pub(crate) fn token_client(&self) -> &TokenClient {
        &self.token
    }

    /// Which clients to try: the account's own (client-credentials accounts may
    /// carry one), else the integration's, current secret first.
    fn clients(&self, account: &Account, integration: &Integration) -> Result<Vec<ClientAuth>, TokenError> {
        let mut clients: Vec<ClientAuth> = Vec::new();
        if let (Some(id), secret) = (self.open(account, "client_id")?, self.open(account, "client_secret")?) {
            clients.push(ClientAuth {
                id: id.expose().to_owned(),
                secret,
            });
        } else {
            clients = self.integration_clients(&integration.name);
        }
        if clients.is_empty() {
            return Err(TokenError::Local(format!(
                "client credentials for integration {} are not configured",
                integration.name
            )));
        }
        Ok(clients)
    }

    /// Revokes a deleted account's tokens at the vendor (RFC 7009), refresh token
    /// first, when its integration declares a revocation endpoint. Best effort:
    /// the account is already gone here, so failures are logged, not retried.
    pub async fn revoke(&self, account: &Account) {
        let Some(integration) = self.accounts.integrations().get(&account.integration).cloned() else {
            return;
        };
        if integration
            .credentials
            .config
            .as_ref()
            .and_then(|c| c.auth.revoke_path.as_ref())
            .is_none()
        {
            return;
        }
        let Ok(clients) = self.clients(account, &integration) else {
            return;
        };
        for (field, hint) in [("refresh_token", "refresh_token"), ("access_token", "access_token")] {
            let Ok(Some(token)) = self.open(account, field) else {
                continue;
            };
            match self
                .token
                .revoke(&integration, &account.metadata, &token, hint, &clients[0])
                .await
            {
                Ok(_) => tracing::info!(account.id = %account.id, hint, "token revoked at the vendor"),
                Err(error) => tracing::warn!(account.id = %account.id, hint, %error, "token revocation failed"),
            }
        }
    }

    async fn call_vendor(&self, account: &Account, integration: &Integration, now: i64) -> Result<Tokens, TokenError> {
        let clients = self.clients(account, integration)?;
        let refresh_token = match integration.credentials.format {
            CredentialFormat::Oauth2 => match self.open(account, "refresh_token")? {
                Some(token) => Some(token),
                None => {
                    return Err(TokenError::Auth {
                        code: "no_refresh_token".into(),
                        status: 0,
                    })
                }
            },
            _ => None,
        };
        let mut last = None;
        let started = std::time::Instant::now();
        for (attempt, client) in clients.iter().enumerate() {
            // Another secret only while the lock can outlast one more request.
            if attempt > 0 && started.elapsed() + self.settings.token_timeout >= self.settings.lock_ttl {
                break;
            }
            let grant = match &refresh_token {
                Some(token) => Grant::RefreshToken(token),
                None => Grant::ClientCredentials,
            };
            match self
                .token
                .request(integration, &account.metadata, grant, client, now)
                .await
            {
                Err(TokenError::InvalidClient { status }) => {
                    tracing::warn!(account.id = %account.id, integration = %integration.name, "client secret refused; trying the next one");
                    last = Some(TokenError::InvalidClient { status });
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(TokenError::InvalidClient { status: 401 }))
    }

    /// Writes the new tokens. If the account changed since we read it, the new
    /// tokens are applied onto the current row and written again, as long as
    /// nobody replaced the credential we spent (an admin edit of metadata, or a
    /// rekey, must not make us drop a refresh token the vendor already rotated).
    /// If someone did replace it (a reconnect, or a refresher whose lock we
    /// outlived), theirs is newer and ours is dropped.
    async fn store_tokens(&self, account: Account, integration: &Integration, tokens: Tokens) -> Outcome {
        let keyring = self.accounts.keyring();
        let id = account.id.clone();
        let spent = account.credentials.get("refresh_token").cloned();
        let mut fields = Vec::new();
        let mut add = |field: &str, value: Option<&str>| -> Result<(), RefreshError> {
            if let Some(value) = value {
                let sealed = keyring.seal(&id, field, value.as_bytes()).map_err(|error| {
                    tracing::error!(account.id = %id, %error, "cannot seal a new token");
                    RefreshError::Unavailable {
                        retry_after: Duration::from_secs(5),
                    }
                })?;
                fields.push((field.to_owned(), sealed));
            }
            Ok(())
        };
        add("access_token", Some(tokens.access_token.expose()))?;
        add("refresh_token", tokens.refresh_token.as_ref().map(|t| t.expose()))?;
        add("token_type", tokens.token_type.as_deref())?;
        add("scope", tokens.scope.as_deref())?;
        let mut current = account;
        for _ in 0..3 {
            if current.credentials.get("refresh_token") != spent.as_ref() || current.status != Status::Active {
                tracing::warn!(account.id = %id, "refresh result discarded: the credential was replaced meanwhile");
                return Ok(Arc::new(current));
            }
            let now = self.clock.now_ms();
            let mut updated = current.clone();
            for (field, sealed) in &fields {
                updated.credentials.insert(field.clone(), sealed.clone());
            }
            updated.expires_at = tokens.expires_at;
            updated.last_refreshed_at = Some(now);
            updated.last_error = None;
            updated.refresh_failures = 0;
            updated.updated_at = now;
            self.accounts.schedule_refresh(&mut updated, integration, now);
            match self.accounts.store().update(updated, vec![]).await {
                Ok(stored) => {
                    tracing::info!(account.id = %id, integration = %integration.name, "token refreshed");
                    return Ok(Arc::new(stored));
                }
                Err(StoreError::VersionConflict { .. }) => current = self.load(&id).await?,
                Err(error) => {
                    tracing::error!(account.id = %id, %error, "cannot store refreshed tokens");
                    break;
                }
            }
        }
        Err(RefreshError::Unavailable {
            retry_after: Duration::from_secs(5),
        })
    }

    async fn store_failure(&self, account: Account, error: TokenError) -> Outcome {
        let now = self.clock.now_ms();
        let id = account.id.clone();
        // invalid_client is deliberately *not* dead: it means our client secret is
        // wrong, which would otherwise flip every account of the integration to
        // needs_reauth. It is retried with backoff (and logged) until fixed.
        let dead = matches!(error, TokenError::Auth { .. } | TokenError::Rejected { .. });
        // (TokenError::Local, credgate's own trouble, is retried like a 5xx.)
        if dead {
            // Another replica may have rotated the refresh token we just spent.
            let current = self.load(&id).await?;
            if current.version != account.version {
                return if current.status == Status::Active {
                    Ok(Arc::new(current))
                } else {
                    Err(RefreshError::NeedsReauth)
                };
            }
            let mut broken = current;
            broken.status = if matches!(error, TokenError::Rejected { .. }) {
                Status::Error
            } else {
                Status::NeedsReauth
            };
            broken.last_error = Some(error.to_string());
            broken.next_refresh_at = None;
            broken.updated_at = now;
            let event =
                credgate_accounts::new_event(events::AUTHENTICATION_ERROR, &broken, Some(&error.to_string()), now);
            tracing::warn!(account.id = %id, %error, "refresh failed for good; the account needs to be reconnected");
            return match self.accounts.store().update(broken, vec![event]).await {
                Ok(_) => Err(RefreshError::NeedsReauth),
                Err(StoreError::VersionConflict { .. }) => self.load(&id).await.map(Arc::new),
                Err(_) => Err(RefreshError::Unavailable {
                    retry_after: Duration::from_secs(5),
                }),
            };
        }
        let failures = account.refresh_failures.saturating_add(1);
        let delay = match &error {
            TokenError::RateLimited {
                retry_after: Some(after),
            } => *after,
            _ => schedule::backoff(
                failures,
                self.settings.backoff_base,
                self.settings.backoff_max,
                &mut rand::thread_rng(),
            ),
        };
        tracing::warn!(account.id = %id, %error, failures, retry_in_ms = delay.as_millis() as u64, "refresh failed; will retry");
        let retry_at = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        // Record the backoff even if the account changed meanwhile, or the
        // scheduler would call the vendor again on its next tick.
        let mut current = account;
        for _ in 0..3 {
            let mut waiting = current.clone();
            waiting.last_error = Some(error.to_string());
            waiting.refresh_failures = failures;
            waiting.next_refresh_at = Some(retry_at);
            waiting.updated_at = now;
            match self.accounts.store().update(waiting, vec![]).await {
                Err(StoreError::VersionConflict { .. }) => current = self.load(&id).await?,
                Err(store_error) => {
                    tracing::error!(account.id = %id, error = %store_error, "cannot record the refresh failure");
                    break;
                }
                Ok(_) => break,
            }
        }
        Err(RefreshError::Unavailable {
            retry_after: delay.max(Duration::from_secs(1)),
        })
    }
}

/// Removes a finished flight from the map when its task ends, however it ends.
struct Landed {
    refresher: Arc<Refresher>,
    id: String,
}

impl Drop for Landed {
    fn drop(&mut self) {
        self.refresher
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Why an account that is not `active` cannot be refreshed.
fn inactive(account: &Account) -> Option<RefreshError> {
    match account.status {
        Status::Active => None,
        Status::NeedsReauth => Some(RefreshError::NeedsReauth),
        // A permanent vendor rejection an operator must look at: same answer the
        // proxy gives for it from its cache.
        Status::Error => Some(RefreshError::Unavailable {
            retry_after: Duration::from_secs(60),
        }),
    }
}

#[cfg(test)]
mod tests;
