//! `credgate serve`: unlock the store, start the listeners, wait for a signal, drain.

use std::sync::Arc;
use std::time::Duration;

use credgate_accounts::Accounts;
use credgate_admin::AdminState;
use credgate_config::{Config, OsEnv, ServerConfig, StoreUrl};
use credgate_engine::connect::Connect;
use credgate_engine::coordination::Coordinator;
use credgate_engine::token::TokenClient;
use credgate_engine::webhooks::{Endpoint, Webhooks};
use credgate_engine::{Clock, Reason, RefreshError, Refresher, SystemClock};
use credgate_listener::Limits;
use credgate_proxy::{AccountCache, AppKeys, Entry, Freshness, Proxy, ProxyError};
use credgate_store::{SqliteStore, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::exit::{Code, Failure};
use crate::secrets;

pub async fn run(config: Config) -> Result<(), Failure> {
    let refresh = &config.server.refresh;
    let accounts = unlock(&config)
        .await?
        .with_refresh_window(refresh.window_min, refresh.window_max);
    let token = secrets::admin_token(&config.server, &OsEnv)?;
    if token.is_none() {
        tracing::warn!("the admin API has no token: anyone on this host can use it (allowed on loopback only)");
    }
    let settings = &config.server.proxy;
    let integrations = Arc::new(config.integrations.clone());
    let cache = Arc::new(AccountCache::new(
        Arc::clone(accounts.store()),
        Arc::clone(&integrations),
        CACHE_CAPACITY,
        CACHE_MAX_AGE,
    ));

    let coordinator = Arc::new(match &config.server.redis {
        Some(redis) => Coordinator::redis(&redis.url, refresh.lock_ttl)
            .await
            .map_err(|e| Failure::new(Code::Failure, format!("redis.url: {e}")))?,
        None => {
            tracing::info!("no redis configured: refresh single flight is per process only");
            Coordinator::local(refresh.lock_ttl)
        }
    });
    let token_client = TokenClient::new(refresh.token_timeout, settings.extra_ca_file.as_deref())
        .map_err(|e| Failure::new(Code::Config, format!("refresh: {e}")))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let refresher = Arc::new(Refresher::new(
        accounts.clone(),
        token_client,
        Arc::clone(&coordinator),
        refresh.clone(),
        Arc::clone(&clock),
    ));
    let freshness: Arc<dyn Freshness> = Arc::new(EngineFreshness {
        refresher: Arc::clone(&refresher),
        cache: Arc::clone(&cache),
    });

    let threads = settings
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map(usize::from).unwrap_or(1));
    let proxies = (0..threads)
        .map(|_| proxy(&config, &accounts, &integrations, &cache, &freshness))
        .collect::<Result<Vec<_>, _>>()?;
    if !proxies[0].app_keys.required() {
        tracing::warn!("no proxy.app_keys: any local process can use every account (allowed on loopback only)");
    }

    let proxy_listener = bind(settings.listen, "proxy").await?;
    let admin_listener = bind(config.server.admin.listen, "admin").await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(());
    let on_change = {
        let (cache, coordinator) = (Arc::clone(&cache), Arc::clone(&coordinator));
        move |id: &str| {
            cache.invalidate(id);
            let (coordinator, id) = (Arc::clone(&coordinator), id.to_owned());
            tokio::spawn(async move { coordinator.announce(&id).await });
        }
    };
    let state = Arc::new(AdminState {
        accounts: accounts.clone(),
        token,
        on_change: Some(Arc::new(on_change)),
        refresher: Some(Arc::clone(&refresher)),
        connect: Some(Arc::new(Connect::new(
            Arc::clone(&refresher),
            config.server.connect.clone(),
            Arc::clone(&clock),
        ))),
    });
    let limits = Limits {
        max_connections: settings.max_connections,
        header_read_timeout: settings.header_read_timeout,
        max_header_bytes: settings.max_header_bytes,
        ..Limits::default()
    };
    let workers = credgate_proxy::serve_per_thread(proxy_listener, proxies, limits, shutdown_rx.clone())
        .map_err(|e| Failure::new(Code::Failure, format!("cannot start proxy workers: {e}")))?;
    let admin_task = tokio::spawn(credgate_admin::serve(admin_listener, state, shutdown_rx.clone()));
    let scheduler = tokio::spawn(credgate_engine::scheduler::run(
        Arc::clone(&refresher),
        Arc::clone(&clock),
        shutdown_rx.clone(),
    ));
    tokio::spawn(invalidate_on_change(Arc::clone(&coordinator), Arc::clone(&cache)));
    let webhooks = Arc::new(webhooks(&config, &accounts, clock)?);
    let webhook_task = tokio::spawn(webhooks.run(Duration::from_millis(500), shutdown_rx));

    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    let _ = shutdown_tx.send(());
    let _ = tokio::join!(admin_task, scheduler, webhook_task);
    refresher.drain(config.server.refresh.lock_ttl).await;
    let _ = tokio::task::spawn_blocking(move || {
        for worker in workers {
            let _ = worker.join();
        }
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Drops cached accounts that changed here or on another replica.
async fn invalidate_on_change(coordinator: Arc<Coordinator>, cache: Arc<AccountCache>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut changes = coordinator.changes();
    loop {
        match changes.recv().await {
            // The feed reconnected: messages may have been lost meanwhile.
            Ok(id) if id == credgate_engine::coordination::RESYNC => cache.clear(),
            Ok(id) => cache.invalidate(&id),
            // Missed some: forget everything rather than serve a stale token.
            Err(RecvError::Lagged(_)) => cache.clear(),
            Err(RecvError::Closed) => return,
        }
    }
}

fn webhooks(config: &Config, accounts: &Accounts, clock: Arc<dyn Clock>) -> Result<Webhooks, Failure> {
    let mut endpoints = Vec::new();
    for (i, hook) in config.server.webhooks.iter().enumerate() {
        let secret = hook
            .secret
            .resolve(&OsEnv, Default::default)
            .map_err(|e| Failure::new(Code::Config, format!("webhooks[{i}].secret: {e}")))?;
        endpoints.push(Endpoint::new(hook.url.clone(), &secret.value));
    }
    Webhooks::new(
        Arc::clone(accounts.store()),
        endpoints,
        config.server.proxy.extra_ca_file.as_deref(),
        clock,
    )
    .map_err(|e| Failure::new(Code::Config, format!("webhooks: {e}")))
}

/// A vendor 401 does not force a refresh of a token refreshed less than this ago.
const RECENT_REFRESH_MS: i64 = 30_000;

/// The engine behind the proxy's freshness seam: refreshes through the single
/// flight and puts the result in the cache.
struct EngineFreshness {
    refresher: Arc<Refresher>,
    cache: Arc<AccountCache>,
}

impl Freshness for EngineFreshness {
    fn is_fresh(&self, entry: &Entry) -> bool {
        self.refresher.is_fresh(&entry.account, &entry.integration)
    }

    fn refresh(
        &self,
        entry: Arc<Entry>,
        refused_version: Option<i64>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Arc<Entry>, ProxyError>> + Send + 'static>> {
        let (refresher, cache) = (Arc::clone(&self.refresher), Arc::clone(&self.cache));
        Box::pin(async move {
            if !entry.integration.credentials.format.is_oauth() {
                // An API key the vendor refuses is the vendor's answer to pass on.
                return Ok(entry);
            }
            if refused_version.is_some() {
                let just_refreshed = entry
                    .account
                    .last_refreshed_at
                    .is_some_and(|at| credgate_accounts::now_ms() - at < RECENT_REFRESH_MS);
                if just_refreshed {
                    // The token is seconds old: the 401 is about something else.
                    // Refreshing again on every such answer would hammer the vendor.
                    return Ok(entry);
                }
            }
            let reason = match refused_version {
                Some(seen_version) => Reason::Forced { seen_version },
                None => Reason::Expiring,
            };
            match refresher.refresh(&entry.account.id, reason).await {
                Ok(account) => cache.put((*account).clone()).ok_or(ProxyError::AccountNotFound),
                Err(RefreshError::NeedsReauth) => Err(ProxyError::NeedsReauth),
                Err(RefreshError::NotFound) => Err(ProxyError::AccountNotFound),
                Err(RefreshError::Unavailable { retry_after }) => Err(ProxyError::RefreshUnavailable {
                    retry_after_secs: retry_after.as_secs().max(1),
                }),
            }
        })
    }
}

/// Accounts the proxy keeps in memory at most (each entry is the sealed account).
const CACHE_CAPACITY: usize = 100_000;
/// The longest a cached account is used without reading the store again: the
/// bound on staleness when a change notification is lost.
const CACHE_MAX_AGE: Duration = Duration::from_secs(30);

/// One proxy worker's state: shared cache and keyring, its own upstream pool.
fn proxy(
    config: &Config,
    accounts: &Accounts,
    integrations: &Arc<credgate_config::Integrations>,
    cache: &Arc<AccountCache>,
    freshness: &Arc<dyn Freshness>,
) -> Result<Proxy, Failure> {
    let settings = &config.server.proxy;
    let app_keys =
        AppKeys::from_config(&settings.app_keys, &OsEnv).map_err(|e| Failure::new(Code::Config, e.to_string()))?;
    let client = credgate_proxy::upstream::Client::new(
        settings.allow_private_upstreams,
        settings.extra_ca_file.as_deref(),
        settings.upstream_timeout,
    )
    .map_err(|e| Failure::new(Code::Config, format!("proxy: {e}")))?;
    Ok(Proxy {
        cache: Arc::clone(cache),
        keyring: accounts.keyring_arc(),
        integrations: Arc::clone(integrations),
        app_keys,
        client,
        passthrough: settings.passthrough,
        allow_private_upstreams: settings.allow_private_upstreams,
        upstream_timeout: settings.upstream_timeout,
        freshness: Some(Arc::clone(freshness)),
        replay_limit: settings.replay_buffer_bytes,
    })
}

/// Opens the store and proves the configured keys are the right ones.
pub async fn unlock(config: &Config) -> Result<Accounts, Failure> {
    let keyring = secrets::keyring(&config.server, &OsEnv)?;
    let store = open_store(&config.server)?;
    Accounts::unlock(store, Arc::new(keyring), Arc::new(config.integrations.clone()))
        .await
        .map_err(|error| Failure::new(Code::Failure, format!("refusing to start: {error}")))
}

fn open_store(config: &ServerConfig) -> Result<Arc<dyn Store>, Failure> {
    match config.store_url() {
        Some(StoreUrl::Sqlite(path)) => SqliteStore::open(&path)
            .map(|store| Arc::new(store) as Arc<dyn Store>)
            .map_err(|e| {
                Failure::new(
                    Code::Failure,
                    format!("cannot open the store at {}: {e}", path.display()),
                )
            }),
        Some(StoreUrl::Postgres(_)) => Err(Failure::new(
            Code::Config,
            "store.url: the PostgreSQL backend is not available in this build yet; use sqlite://",
        )),
        None => Err(Failure::new(
            Code::Config,
            "store.url: must be sqlite://<path> or postgres://…",
        )),
    }
}

async fn bind(addr: std::net::SocketAddr, name: &str) -> Result<TcpListener, Failure> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new(Code::Failure, format!("cannot listen on {addr} ({name}): {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    // Tests and operators read the real address from this line (port 0 is allowed).
    tracing::info!(listener = name, addr = %local, "listening");
    Ok(listener)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
