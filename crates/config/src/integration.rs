//! One vendor's auth scheme as data: `config/integrations/<name>.yaml`.
//!
//! The `credentials.config` block keeps the seed-style camelCase names (`tokenHost`,
//! `authorizePath`, `authorizationMethod`, …) that the OAuth client libraries people
//! already know use; everything credgate adds is snake_case.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::Collector;
use crate::secret_ref::{SecretRef, ValueOrRef};
use crate::template::Template;
use crate::url::check_url;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Integration {
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// Where this integration's credentials may be sent. Entries may template
    /// declared metadata (`{{metadata.instance_url}}`).
    pub base_urls: Vec<Template>,
    /// Account metadata that templates may use, with the pattern a value must match.
    #[serde(default)]
    pub metadata: BTreeMap<String, MetadataField>,
    pub credentials: Credentials,
    pub authorization: Authorization,
    #[serde(default)]
    pub rate_limit: Option<RateLimitMapping>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataField {
    /// A URL pattern with `*` standing for one DNS label, e.g. `https://*.my.salesforce.com`.
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default)]
    pub required: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialFormat {
    Oauth2,
    Oauth2ClientCredentials,
    ApiKey,
    Basic,
    Custom,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub format: CredentialFormat,
    /// For `custom`: the names of the fields an account stores.
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub client: Option<ClientConfig>,
    #[serde(default)]
    pub config: Option<OAuthConfig>,
    #[serde(default)]
    pub expires_in_unit: ExpiresInUnit,
    /// Lifetime assumed when the vendor gives neither `expires_in` nor a JWT `exp`.
    #[serde(default, with = "crate::duration::option")]
    pub default_ttl: Option<Duration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub id: ValueOrRef,
    #[serde(default)]
    pub secret: Option<SecretRef>,
    /// The secret being rotated out: tried when the vendor answers
    /// `invalid_client` to `secret`, so a vendor-side rotation needs no
    /// synchronised restart.
    #[serde(default)]
    pub previous_secret: Option<SecretRef>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExpiresInUnit {
    #[default]
    Seconds,
    Milliseconds,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub auth: AuthEndpoints,
    #[serde(default)]
    pub scope: Vec<String>,
    #[serde(default = "default_scope_separator", rename = "scopeSeparator")]
    pub scope_separator: String,
    #[serde(default)]
    pub pkce: Option<Pkce>,
    #[serde(default)]
    pub options: OAuthOptions,
    #[serde(default, rename = "authorizeParams")]
    pub authorize_params: BTreeMap<String, String>,
    #[serde(default, rename = "tokenParams")]
    pub token_params: BTreeMap<String, String>,
    /// Token-response fields copied into account metadata at connect time
    /// (Salesforce `instance_url`).
    #[serde(default, rename = "metadataFromToken")]
    pub metadata_from_token: Vec<String>,
}

fn default_scope_separator() -> String {
    " ".to_owned()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthEndpoints {
    /// May template declared metadata (`https://{{metadata.subdomain}}.zendesk.com`).
    pub token_host: Option<Template>,
    #[serde(default = "default_token_path")]
    pub token_path: String,
    #[serde(default)]
    pub authorize_host: Option<Template>,
    #[serde(default = "default_authorize_path")]
    pub authorize_path: String,
    /// RFC 7009 revocation endpoint path on `tokenHost`.
    #[serde(default)]
    pub revoke_path: Option<String>,
}

fn default_token_path() -> String {
    "/oauth/token".to_owned()
}

fn default_authorize_path() -> String {
    "/oauth/authorize".to_owned()
}

fn join_url(host: &str, path: &str) -> String {
    format!("{}/{}", host.trim_end_matches('/'), path.trim_start_matches('/'))
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkce {
    pub method: PkceMethod,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum PkceMethod {
    S256,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OAuthOptions {
    #[serde(default)]
    pub authorization_method: ClientAuthMethod,
    #[serde(default)]
    pub body_format: BodyFormat,
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with client id and secret (RFC 6749 section 2.3.1).
    #[default]
    Header,
    /// `client_id` and `client_secret` in the request body.
    Body,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BodyFormat {
    #[default]
    Form,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    pub format: AuthorizationFormat,
    #[serde(default)]
    pub config: AuthorizationConfig,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationFormat {
    /// `Authorization: Bearer <value at path>`.
    Bearer,
    /// A named header with a template value.
    Header,
    /// `Authorization: Basic base64(username:password)`, each a template.
    Basic,
    /// A query parameter with a template value.
    Query,
}

/// The union of every format's settings; [`Integration::validate`] checks that each
/// format gets exactly the ones it uses.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationConfig {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub value: Option<Template>,
    #[serde(default)]
    pub username: Option<Template>,
    #[serde(default)]
    pub password: Option<Template>,
}

/// Declarative mapping of a vendor's rate-limit headers onto the IETF fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitMapping {
    #[serde(default)]
    pub limit: Option<HeaderRef>,
    #[serde(default)]
    pub remaining: Option<HeaderRef>,
    #[serde(default)]
    pub reset: Option<TimeHeader>,
    /// The length of the window, when the vendor states it instead of a reset time.
    #[serde(default)]
    pub window: Option<TimeHeader>,
    /// A `used/limit` pair, optionally behind `key=` (Salesforce `api-usage=25/15000`).
    #[serde(default)]
    pub usage: Option<UsageHeader>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRef {
    pub header: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeHeader {
    pub header: String,
    #[serde(default)]
    pub unit: TimeUnit,
    #[serde(default)]
    pub kind: TimeKind,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageHeader {
    pub header: String,
    #[serde(default)]
    pub key: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum TimeUnit {
    #[default]
    #[serde(rename = "s")]
    Seconds,
    #[serde(rename = "ms")]
    Milliseconds,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeKind {
    #[default]
    Delta,
    Epoch,
}

// === impl CredentialFormat ===

impl CredentialFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Oauth2 => "oauth2",
            Self::Oauth2ClientCredentials => "oauth2_client_credentials",
            Self::ApiKey => "api_key",
            Self::Basic => "basic",
            Self::Custom => "custom",
        }
    }

    pub fn is_oauth(self) -> bool {
        matches!(self, Self::Oauth2 | Self::Oauth2ClientCredentials)
    }

    /// The template context path that holds a stored field (`access_token` is
    /// `oauth.token.access_token` for OAuth formats; others use the field name).
    pub fn context_path(self, field: &str) -> String {
        if self.is_oauth() {
            format!("oauth.token.{field}")
        } else {
            field.to_owned()
        }
    }

    /// The stored field behind a context path, if the path names one.
    pub fn field_for_path(self, path: &str) -> Option<&str> {
        if self.is_oauth() {
            path.strip_prefix("oauth.token.")
        } else if path.starts_with("metadata.") {
            None
        } else {
            Some(path)
        }
    }
}

impl AuthorizationFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Header => "header",
            Self::Basic => "basic",
            Self::Query => "query",
        }
    }
}

// === impl Integration ===

/// Secret credential fields an OAuth account may store.
pub const OAUTH_SECRET_FIELDS: &[&str] = &["access_token", "refresh_token"];
/// Non-secret fields of the OAuth token context.
pub const OAUTH_PLAIN_FIELDS: &[&str] = &["token_type", "scope", "expires_at"];

impl Integration {
    /// The credential fields an account of this integration may store, and whether
    /// each is required at creation.
    pub fn credential_fields(&self) -> Vec<(String, bool)> {
        let fixed: &[(&str, bool)] = match self.credentials.format {
            CredentialFormat::ApiKey => &[("api_key", true)],
            CredentialFormat::Basic => &[("username", true), ("password", true)],
            CredentialFormat::Oauth2 => &[("access_token", true), ("refresh_token", false)],
            CredentialFormat::Oauth2ClientCredentials => {
                let has_client = self.credentials.client.is_some();
                return vec![
                    ("access_token".into(), false),
                    ("client_id".into(), !has_client),
                    ("client_secret".into(), !has_client),
                ];
            }
            CredentialFormat::Custom => {
                return self.credentials.fields.iter().map(|f| (f.clone(), true)).collect();
            }
        };
        fixed.iter().map(|(f, required)| ((*f).to_owned(), *required)).collect()
    }

    pub(crate) fn validate(&mut self, file: &Path, errors: &mut Collector<'_>) {
        let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if !is_name(&self.name) {
            errors.error("name", "must be lowercase letters, digits, `_` or `-`");
        } else if self.name != stem {
            errors.error("name", format!("must match the file name ({stem})"));
        }
        self.validate_base_urls(errors);
        self.validate_credentials(errors);
        self.validate_authorization(errors);
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit.validate(errors);
        }
    }

    fn validate_base_urls(&self, errors: &mut Collector<'_>) {
        if self.base_urls.is_empty() {
            errors.error("base_urls", "list at least one URL credentials may be sent to");
        }
        for (name, field) in &self.metadata {
            if let Some(pattern) = &field.pattern {
                let path = format!("metadata.{name}.pattern");
                if pattern.matches('*').count() > 1 {
                    errors.error(path, "use at most one `*` (it stands for one DNS label)");
                } else if let Err(message) = check_url(&pattern.replace('*', "x")) {
                    errors.error(path, message);
                }
            }
        }
        for (i, url) in self.base_urls.iter().enumerate() {
            self.check_templated_url(&format!("base_urls[{i}]"), url, errors);
        }
    }

    /// A URL that may template declared metadata: every variable must be
    /// `metadata.<name>` with a `pattern`, and the URL must pass [`check_url`]
    /// with the patterns substituted.
    fn check_templated_url(&self, path: &str, url: &Template, errors: &mut Collector<'_>) {
        let mut concrete = String::new();
        let mut unknown = None;
        let _ = url.render_into(&mut concrete, |var, out| {
            match self.declared_pattern(var) {
                Some(pattern) => out.push_str(&pattern.replace('*', "x")),
                None => unknown = Some(var.to_owned()),
            }
            true
        });
        if let Some(var) = unknown {
            errors.error(
                path,
                format!("{{{{{var}}}}} must name account metadata declared under `metadata` with a `pattern`"),
            );
        } else if let Err(message) = check_url(&concrete) {
            errors.error(path, message);
        }
    }

    fn declared_pattern(&self, var: &str) -> Option<&str> {
        var.strip_prefix("metadata.")
            .and_then(|name| self.metadata.get(name))
            .and_then(|field| field.pattern.as_deref())
    }

    /// Renders a URL template with an account's metadata. `None` when a value is
    /// missing or does not match its declared pattern: a credential or a token
    /// request never goes to a URL built from unchecked metadata.
    pub fn render_url(&self, url: &Template, metadata: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let mut rendered = String::new();
        url.render_into(&mut rendered, |var, out| {
            let (Some(name), Some(pattern)) = (var.strip_prefix("metadata."), self.declared_pattern(var)) else {
                return false;
            };
            match metadata.get(name).and_then(serde_json::Value::as_str) {
                Some(value) if crate::url::matches_pattern(value, pattern) => {
                    out.push_str(value.trim_end_matches('/'));
                    true
                }
                _ => false,
            }
        })
        .ok()?;
        Some(rendered)
    }

    /// The token endpoint for an account with this metadata.
    pub fn token_url(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let auth = &self.credentials.config.as_ref()?.auth;
        let host = self.render_url(auth.token_host.as_ref()?, metadata)?;
        Some(join_url(&host, &auth.token_path))
    }

    /// The authorize endpoint (`authorizeHost`, else `tokenHost`) for this metadata.
    pub fn authorize_url(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let auth = &self.credentials.config.as_ref()?.auth;
        let host = auth.authorize_host.as_ref().or(auth.token_host.as_ref())?;
        Some(join_url(&self.render_url(host, metadata)?, &auth.authorize_path))
    }

    /// The RFC 7009 revocation endpoint, if declared.
    pub fn revoke_url(&self, metadata: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let auth = &self.credentials.config.as_ref()?.auth;
        let host = self.render_url(auth.token_host.as_ref()?, metadata)?;
        Some(join_url(&host, auth.revoke_path.as_ref()?))
    }

    fn validate_credentials(&self, errors: &mut Collector<'_>) {
        let credentials = &self.credentials;
        let format = credentials.format;
        if format == CredentialFormat::Custom {
            if credentials.fields.is_empty() {
                errors.error("credentials.fields", "a custom format lists the fields it stores");
            }
            for (i, field) in credentials.fields.iter().enumerate() {
                if !is_name(field) || field == "metadata" || field == "oauth" {
                    errors.error(
                        format!("credentials.fields[{i}]"),
                        "must be lowercase letters, digits or `_`, and not `metadata` or `oauth`",
                    );
                }
            }
        } else if !credentials.fields.is_empty() {
            errors.error("credentials.fields", "only the custom format lists fields");
        }

        if !format.is_oauth() {
            if credentials.config.is_some() {
                errors.error("credentials.config", "only oauth2 formats take an OAuth config");
            }
            if credentials.client.is_some() {
                errors.error("credentials.client", "only oauth2 formats take a client");
            }
            return;
        }
        let Some(config) = &credentials.config else {
            errors.error("credentials.config", "oauth2 formats need `config.auth.tokenHost`");
            return;
        };
        match &config.auth.token_host {
            None => errors.error("credentials.config.auth.tokenHost", "is required for oauth2 formats"),
            Some(host) => self.check_templated_url("credentials.config.auth.tokenHost", host, errors),
        }
        if let Some(host) = &config.auth.authorize_host {
            self.check_templated_url("credentials.config.auth.authorizeHost", host, errors);
        }
        for (field, value) in [
            ("tokenPath", Some(&config.auth.token_path)),
            ("authorizePath", Some(&config.auth.authorize_path)),
            ("revokePath", config.auth.revoke_path.as_ref()),
        ] {
            if let Some(value) = value {
                if !value.starts_with('/') {
                    errors.error(format!("credentials.config.auth.{field}"), "must start with `/`");
                }
            }
        }
        if format == CredentialFormat::Oauth2 && credentials.client.is_none() {
            errors.error(
                "credentials.client",
                "oauth2 needs a client id (and usually a secret) to refresh tokens",
            );
        }
        if format == CredentialFormat::Oauth2ClientCredentials && config.pkce.is_some() {
            errors.error(
                "credentials.config.pkce",
                "PKCE applies to the authorization code flow only",
            );
        }
        if config.scope_separator.is_empty() {
            errors.error("credentials.config.scopeSeparator", "must not be empty");
        }
    }

    fn validate_authorization(&self, errors: &mut Collector<'_>) {
        let config = &self.authorization.config;
        let allowed: &[&str] = match self.authorization.format {
            AuthorizationFormat::Bearer => &["path"],
            AuthorizationFormat::Header | AuthorizationFormat::Query => &["name", "value"],
            AuthorizationFormat::Basic => &["username", "password"],
        };
        let given = [
            ("path", config.path.is_some()),
            ("name", config.name.is_some()),
            ("value", config.value.is_some()),
            ("username", config.username.is_some()),
            ("password", config.password.is_some()),
        ];
        for (field, present) in given {
            let wanted = allowed.contains(&field);
            let defaulted = self.authorization.format == AuthorizationFormat::Basic;
            if present && !wanted {
                errors.error(
                    format!("authorization.config.{field}"),
                    format!(
                        "is not used by authorization format {}",
                        self.authorization.format.as_str()
                    ),
                );
            } else if !present && wanted && !defaulted {
                errors.error(
                    format!("authorization.config.{field}"),
                    "is required for this authorization format",
                );
            }
        }
        if let Some(path) = &config.path {
            self.check_context_path("authorization.config.path", path, errors);
        }
        for (field, template) in [
            ("value", &config.value),
            ("username", &config.username),
            ("password", &config.password),
        ] {
            if let Some(template) = template {
                for var in template.vars() {
                    self.check_context_path(&format!("authorization.config.{field}"), var, errors);
                }
            }
        }
        if let Some(name) = &config.name {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() || name.is_empty() {
                errors.error("authorization.config.name", "is not a valid header or parameter name");
            }
        }
    }

    /// Checks that a template variable names something an account of this
    /// integration will have.
    fn check_context_path(&self, field: &str, path: &str, errors: &mut Collector<'_>) {
        let format = self.credentials.format;
        if let Some(name) = path.strip_prefix("metadata.") {
            if !self.metadata.contains_key(name) {
                errors.error(field, format!("`{path}`: declare `{name}` under `metadata` first"));
            }
            return;
        }
        let known = match format.field_for_path(path) {
            Some(stored) => {
                self.credential_fields().iter().any(|(f, _)| f == stored)
                    || (format.is_oauth() && (OAUTH_PLAIN_FIELDS.contains(&stored)))
            }
            None => false,
        };
        if !known {
            let choices: Vec<String> = self
                .credential_fields()
                .iter()
                .map(|(f, _)| format.context_path(f))
                .collect();
            errors.error(
                field,
                format!(
                    "`{path}` is not a field of {} credentials (expected one of: {})",
                    format.as_str(),
                    choices.join(", ")
                ),
            );
        }
    }
}

impl RateLimitMapping {
    fn validate(&self, errors: &mut Collector<'_>) {
        let headers = [
            ("limit", self.limit.as_ref().map(|h| &h.header)),
            ("remaining", self.remaining.as_ref().map(|h| &h.header)),
            ("reset", self.reset.as_ref().map(|h| &h.header)),
            ("window", self.window.as_ref().map(|h| &h.header)),
            ("usage", self.usage.as_ref().map(|h| &h.header)),
        ];
        for (field, header) in headers {
            if let Some(header) = header {
                if http::HeaderName::from_bytes(header.as_bytes()).is_err() {
                    errors.error(format!("rate_limit.{field}.header"), "is not a valid header name");
                }
            }
        }
        if self.window.as_ref().is_some_and(|w| w.kind == TimeKind::Epoch) {
            errors.error("rate_limit.window.kind", "a window is a length of time, not an epoch");
        }
    }
}

fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

pub(crate) fn rebase_secrets(integration: &mut Integration, base: &Path) {
    if let Some(client) = &mut integration.credentials.client {
        client.id.rebase(base);
        for secret in [&mut client.secret, &mut client.previous_secret].into_iter().flatten() {
            secret.rebase(base);
        }
    }
}
