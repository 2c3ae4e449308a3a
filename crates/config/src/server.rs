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
    #[serde(default)]
    pub passthrough: bool,
    #[serde(default)]
    pub allow_private_upstreams: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: default_proxy_listen(),
            passthrough: false,
            allow_private_upstreams: false,
        }
    }
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
        SecretRef::from_parts(
            self.from_env.clone(),
            self.from_file.clone(),
            self.generate_if_missing,
        )
        .ok()
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
    pub redirect_uri: String,
    #[serde(default)]
    pub allowed_return_origins: Vec<String>,
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
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            skew: default_skew(),
            window_min: default_window_min(),
            window_max: default_window_max(),
        }
    }
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
        for hook in &mut self.webhooks {
            hook.secret.rebase(base);
        }
    }

    pub(crate) fn validate(&self, errors: &mut Collector<'_>) {
        if self.store_url().is_none() {
            errors.error("store.url", "must be sqlite://<path> or postgres://…");
        }
        if self.keys.is_empty() {
            errors.error(
                "keys",
                "configure at least one encryption key; the first one encrypts",
            );
        }
        for (i, key) in self.keys.iter().enumerate() {
            if credgate_crypto::KeyId::new(key.id.clone()).is_err() {
                errors.error(
                    format!("keys[{i}].id"),
                    "use 1 to 32 characters from [A-Za-z0-9_-]",
                );
            }
            if self.keys[..i].iter().any(|k| k.id == key.id) {
                errors.error(
                    format!("keys[{i}].id"),
                    format!("duplicate key id {}", key.id),
                );
            }
            if let Err(message) = SecretRef::from_parts(
                key.from_env.clone(),
                key.from_file.clone(),
                key.generate_if_missing,
            ) {
                errors.error(format!("keys[{i}]"), message);
            }
        }
        if self.admin.token.is_none() && !self.admin.listen.ip().is_loopback() {
            errors.error(
                "admin.token",
                "an admin listener on a non-loopback address needs a token ({ from_env: CREDGATE_ADMIN_TOKEN })",
            );
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
            errors.error(
                "refresh.window_min",
                "must not be larger than refresh.window_max",
            );
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
