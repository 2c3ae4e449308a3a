//! `credgate.yaml`: listeners, store, keys, Redis, webhooks and refresh tuning.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::Collector;
use crate::secret_ref::SecretRef;
use crate::url::check_url;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub redis: Option<RedisConfig>,
    pub keys: Vec<KeySource>,
    #[serde(default = "default_integrations_dir")]
    pub integrations_dir: PathBuf,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub connect: Option<ConnectConfig>,
    #[serde(default)]
    pub refresh: RefreshConfig,
}

fn default_integrations_dir() -> PathBuf {
    PathBuf::from("integrations")
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    #[serde(default = "default_proxy_listen")]
    pub listen: SocketAddr,
    /// Forward requests that name no account, untouched and without credentials.
    #[serde(default)]
    pub passthrough: bool,
    /// Allow upstreams on loopback, private, link-local and metadata addresses.
    #[serde(default)]
    pub allow_private_upstreams: bool,
    /// Application keys; when any are configured, every proxied request needs one.
    #[serde(default)]
    pub app_keys: Vec<AppKeyConfig>,
    /// PEM file of extra CA certificates trusted for upstream TLS (besides webpki roots).
    #[serde(default)]
    pub extra_ca_file: Option<PathBuf>,
    /// Time an upstream gets to answer with response headers.
    #[serde(default = "default_upstream_timeout", with = "crate::duration")]
    pub upstream_timeout: Duration,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Proxy worker threads (one runtime and connection pool each); default: one
    /// per CPU.
    #[serde(default)]
    pub threads: Option<usize>,
    #[serde(default = "default_header_read_timeout", with = "crate::duration")]
    pub header_read_timeout: Duration,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Request bodies up to this size are kept so a request refused with 401 can
    /// be retried once after a forced refresh; larger bodies stream unbuffered.
    #[serde(default = "default_replay_buffer_bytes")]
    pub replay_buffer_bytes: usize,
}

fn default_replay_buffer_bytes() -> usize {
    64 * 1024
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: default_proxy_listen(),
            passthrough: false,
            allow_private_upstreams: false,
            app_keys: Vec::new(),
            extra_ca_file: None,
            upstream_timeout: default_upstream_timeout(),
            max_connections: default_max_connections(),
            threads: None,
            header_read_timeout: default_header_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
            replay_buffer_bytes: default_replay_buffer_bytes(),
        }
    }
}

fn default_upstream_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_max_connections() -> usize {
    4096
}

fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

/// An application allowed to use the proxy. The key itself is never in the config:
/// either its SHA-256 (`sha256: <hex>`, from `credgate app-key`) or a reference.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppKeyConfig {
    pub name: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub key: Option<SecretRef>,
    /// Account ids this key may use; empty means any.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Integrations this key may use; empty means any.
    #[serde(default)]
    pub integrations: Vec<String>,
}

fn default_proxy_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// Bearer token for `/v1`. Optional only on a loopback listener.
    #[serde(default)]
    pub token: Option<SecretRef>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub url: String,
}

/// Where accounts live, parsed from `store.url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://<path>`; a relative path is relative to the config file's folder.
    Sqlite(PathBuf),
    Postgres(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
}

/// One key of the keyring. The first one listed encrypts; all decrypt.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    pub id: String,
    #[serde(default)]
    pub from_env: Option<String>,
    #[serde(default)]
    pub from_file: Option<PathBuf>,
    /// Dev mode: create the key file with a fresh key when it does not exist.
    #[serde(default)]
    pub generate_if_missing: bool,
}

impl KeySource {
    pub fn secret_ref(&self) -> Option<SecretRef> {
        SecretRef::from_parts(self.from_env.clone(), self.from_file.clone(), self.generate_if_missing).ok()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: SecretRef,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// The OAuth callback as registered with vendors: this admin listener's
    /// `/v1/oauth/callback` as the browser reaches it.
    pub redirect_uri: String,
    /// Origins `redirect_to` may point at after a connection (no open redirect).
    #[serde(default)]
    pub allowed_return_origins: Vec<String>,
    /// How long a connect state (and a connect link) stays valid.
    #[serde(default = "default_state_ttl", with = "crate::duration")]
    pub state_ttl: Duration,
}

fn default_state_ttl() -> Duration {
    Duration::from_secs(600)
}

/// Refresh tuning. The defaults follow DESIGN.md.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshConfig {
    /// A token expiring within this is refreshed before use.
    #[serde(default = "default_skew", with = "crate::duration")]
    pub skew: Duration,
    /// Proactive refresh happens between `window_min` and `window_max` before expiry.
    #[serde(default = "default_window_min", with = "crate::duration")]
    pub window_min: Duration,
    #[serde(default = "default_window_max", with = "crate::duration")]
    pub window_max: Duration,
    /// Lifetime of the cross-replica refresh lock; a refresher that hangs loses it.
    #[serde(default = "default_lock_ttl", with = "crate::duration")]
    pub lock_ttl: Duration,
    /// Timeout of one token request; must be shorter than `lock_ttl`.
    #[serde(default = "default_token_timeout", with = "crate::duration")]
    pub token_timeout: Duration,
    /// First retry delay after a transient failure; doubles per failure, with jitter.
    #[serde(default = "default_backoff_base", with = "crate::duration")]
    pub backoff_base: Duration,
    #[serde(default = "default_backoff_max", with = "crate::duration")]
    pub backoff_max: Duration,
    /// How often the scheduler looks for due accounts.
    #[serde(default = "default_tick", with = "crate::duration")]
    pub tick: Duration,
    /// Due accounts read per scheduler pass, and refreshed at once at most.
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            skew: default_skew(),
            window_min: default_window_min(),
            window_max: default_window_max(),
            lock_ttl: default_lock_ttl(),
            token_timeout: default_token_timeout(),
            backoff_base: default_backoff_base(),
            backoff_max: default_backoff_max(),
            tick: default_tick(),
            batch: default_batch(),
            concurrency: default_concurrency(),
        }
    }
}

fn default_lock_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_token_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_backoff_base() -> Duration {
    Duration::from_secs(5)
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(3 * 3600)
}

fn default_tick() -> Duration {
    Duration::from_secs(1)
}

fn default_batch() -> usize {
    200
}

fn default_concurrency() -> usize {
    16
}

fn default_skew() -> Duration {
    Duration::from_secs(30)
}

fn default_window_min() -> Duration {
    Duration::from_secs(60)
}

fn default_window_max() -> Duration {
    Duration::from_secs(180)
}

impl ServerConfig {
    pub fn store_url(&self) -> Option<StoreUrl> {
        parse_store_url(&self.store.url)
    }

    pub(crate) fn rebase(&mut self, base: &Path) {
        if self.integrations_dir.is_relative() {
            self.integrations_dir = base.join(&self.integrations_dir);
        }
        if let Some(StoreUrl::Sqlite(path)) = self.store_url() {
            if path.is_relative() {
                self.store.url = format!("sqlite://{}", base.join(path).display());
            }
        }
        for key in &mut self.keys {
            if let Some(path) = &mut key.from_file {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
            }
        }
        if let Some(token) = &mut self.admin.token {
            token.rebase(base);
        }
        for app in &mut self.proxy.app_keys {
            if let Some(key) = &mut app.key {
                key.rebase(base);
            }
        }
        if let Some(path) = &mut self.proxy.extra_ca_file {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        for hook in &mut self.webhooks {
            hook.secret.rebase(base);
        }
    }

    pub(crate) fn validate(&self, errors: &mut Collector<'_>) {
        if self.store_url().is_none() {
            errors.error("store.url", "must be sqlite://<path> or postgres://…");
        }
        if self.keys.is_empty() {
            errors.error("keys", "configure at least one encryption key; the first one encrypts");
        }
        for (i, key) in self.keys.iter().enumerate() {
            if credgate_crypto::KeyId::new(key.id.clone()).is_err() {
                errors.error(format!("keys[{i}].id"), "use 1 to 32 characters from [A-Za-z0-9_-]");
            }
            if self.keys[..i].iter().any(|k| k.id == key.id) {
                errors.error(format!("keys[{i}].id"), format!("duplicate key id {}", key.id));
            }
            if let Err(message) =
                SecretRef::from_parts(key.from_env.clone(), key.from_file.clone(), key.generate_if_missing)
            {
                errors.error(format!("keys[{i}]"), message);
            }
        }
        if self.admin.token.is_none() && !self.admin.listen.ip().is_loopback() {
            errors.error(
                "admin.token",
                "an admin listener on a non-loopback address needs a token ({ from_env: CREDGATE_ADMIN_TOKEN })",
            );
        }
        if self.proxy.app_keys.is_empty() && !self.proxy.listen.ip().is_loopback() {
            errors.error(
                "proxy.app_keys",
                "a proxy listener on a non-loopback address needs app keys, or anyone who reaches it can use every credential",
            );
        }
        for (i, app) in self.proxy.app_keys.iter().enumerate() {
            match (&app.sha256, &app.key) {
                (Some(hash), None) => {
                    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        errors.error(format!("proxy.app_keys[{i}].sha256"), "must be 64 hex characters");
                    }
                }
                (None, Some(_)) => {}
                _ => errors.error(format!("proxy.app_keys[{i}]"), "give exactly one of sha256 or key"),
            }
        }
        if self.proxy.threads == Some(0) {
            errors.error("proxy.threads", "must be at least 1");
        }
        if self.proxy.max_connections == 0 {
            errors.error("proxy.max_connections", "must be at least 1");
        }
        if let Some(redis) = &self.redis {
            if !(redis.url.starts_with("redis://")
                || redis.url.starts_with("rediss://")
                || redis.url.starts_with("unix://"))
            {
                errors.error("redis.url", "must be redis://, rediss:// or unix://");
            }
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            if let Err(message) = check_url(&hook.url) {
                errors.error(format!("webhooks[{i}].url"), message);
            }
        }
        if let Some(connect) = &self.connect {
            if let Err(message) = check_url(&connect.redirect_uri) {
                errors.error("connect.redirect_uri", message);
            }
            for (i, origin) in connect.allowed_return_origins.iter().enumerate() {
                if let Err(message) = check_url(origin) {
                    errors.error(format!("connect.allowed_return_origins[{i}]"), message);
                }
            }
        }
        let refresh = &self.refresh;
        if refresh.window_min > refresh.window_max {
            errors.error("refresh.window_min", "must not be larger than refresh.window_max");
        }
        if refresh.token_timeout >= refresh.lock_ttl {
            errors.error(
                "refresh.token_timeout",
                "must be shorter than refresh.lock_ttl, or a slow refresh could outlive its lock",
            );
        }
        if refresh.backoff_base.is_zero() || refresh.backoff_base > refresh.backoff_max {
            errors.error(
                "refresh.backoff_base",
                "must be above zero and at most refresh.backoff_max",
            );
        }
        if refresh.batch == 0 || refresh.concurrency == 0 || refresh.tick.is_zero() {
            errors.error("refresh", "batch, concurrency and tick must be above zero");
        }
    }
}

fn parse_store_url(url: &str) -> Option<StoreUrl> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        return (!path.is_empty()).then(|| StoreUrl::Sqlite(PathBuf::from(path)));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Some(StoreUrl::Postgres(url.to_owned()));
    }
    None
}
