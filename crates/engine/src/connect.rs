//! The connect flow: authorization code with PKCE, driven by the integration's YAML.
//!
//! No server-side session: the `state` sent to the vendor *is* the pending
//! connection, sealed with the keyring (AES-256-GCM, authenticated and encrypted):
//! integration, account id, `redirect_to`, connect-time metadata, the PKCE verifier
//! (which therefore never leaves credgate in the clear), an expiry, and a nonce
//! that the store records on use so a state works once, across replicas. Connect
//! links for customers' browsers are sealed the same way.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use credgate_accounts::{AccountError, AccountView, CreateAccount, PatchAccount};
use credgate_config::{ConnectConfig, Integration, PkceMethod};
use credgate_crypto::Sealed;
use rand::RngCore;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::token::{Grant, TokenError};
use crate::{Clock, Refresher};

/// Associated-data "account" for sealed connect tokens: not a valid account id.
const SCOPE: &str = "\0connect";

/// What a connection is for: which integration, which account, where to return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRequest {
    pub integration: String,
    pub account_id: String,
    pub redirect_to: Option<String>,
    /// Metadata to store on the account (e.g. a customer's subdomain).
    pub metadata: BTreeMap<String, String>,
}

/// Why a connection was refused. Messages are for the person in the browser.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("OAuth connections are not configured (connect.redirect_uri)")]
    NotConfigured,
    #[error("unknown integration {0}")]
    UnknownIntegration(String),
    #[error("integration {0} does not use the authorization code flow")]
    NotConnectable(String),
    #[error("redirect_to must be on an allowed origin (connect.allowed_return_origins)")]
    RedirectNotAllowed,
    #[error("metadata {0} is missing or does not match the integration's pattern")]
    Metadata(String),
    #[error("invalid account id: use 1 to 128 characters from [A-Za-z0-9._-]")]
    BadAccountId,
    #[error("this link is invalid")]
    Invalid,
    #[error("this link has expired; start the connection again")]
    Expired,
    #[error("this link was already used; start the connection again")]
    AlreadyUsed,
    #[error("this callback belongs to another integration")]
    WrongIntegration,
    #[error("the vendor did not grant access ({0})")]
    Vendor(String),
    #[error("the vendor refused the authorization code: {0}")]
    Exchange(TokenError),
    #[error("the connection could not be saved: {0}")]
    Account(AccountError),
    #[error("the connection could not be completed right now; try again")]
    Unavailable,
}

/// The outcome of a callback: where to send the browser, and what happened.
#[derive(Debug)]
pub struct Callback {
    pub redirect_to: Option<String>,
    pub account_id: Option<String>,
    pub outcome: Result<AccountView, ConnectError>,
}

#[derive(Debug)]
pub struct Connect {
    refresher: Arc<Refresher>,
    settings: Option<ConnectConfig>,
    clock: Arc<dyn Clock>,
}

impl Connect {
    pub fn new(refresher: Arc<Refresher>, settings: Option<ConnectConfig>, clock: Arc<dyn Clock>) -> Self {
        Self {
            refresher,
            settings,
            clock,
        }
    }

    fn settings(&self) -> Result<&ConnectConfig, ConnectError> {
        self.settings.as_ref().ok_or(ConnectError::NotConfigured)
    }

    fn integration(&self, name: &str) -> Result<Arc<Integration>, ConnectError> {
        let integration = self
            .refresher
            .accounts()
            .integrations()
            .get(name)
            .cloned()
            .ok_or_else(|| ConnectError::UnknownIntegration(name.to_owned()))?;
        let connectable = integration.credentials.format == credgate_config::CredentialFormat::Oauth2
            && integration
                .credentials
                .config
                .as_ref()
                .is_some_and(|c| c.auth.authorize_host.is_some() || c.auth.token_host.is_some());
        if !connectable {
            return Err(ConnectError::NotConnectable(name.to_owned()));
        }
        Ok(integration)
    }

    /// Checks a request before anything is issued for it.
    pub fn check(&self, request: &ConnectRequest) -> Result<(), ConnectError> {
        let settings = self.settings()?;
        self.integration(&request.integration)?;
        let valid_id = !request.account_id.is_empty()
            && request.account_id.len() <= 128
            && request
                .account_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_id {
            return Err(ConnectError::BadAccountId);
        }
        if let Some(target) = &request.redirect_to {
            if !allowed_return(target, &settings.allowed_return_origins) {
                return Err(ConnectError::RedirectNotAllowed);
            }
        }
        let integration = self.integration(&request.integration)?;
        for (name, declared) in &integration.metadata {
            let given = request.metadata.get(name);
            let valid = match (given, &declared.pattern) {
                (None, _) => !declared.required,
                (Some(value), Some(pattern)) => credgate_config::matches_pattern(value, pattern),
                (Some(_), None) => true,
            };
            if !valid {
                return Err(ConnectError::Metadata(name.clone()));
            }
        }
        Ok(())
    }

    /// A link a customer's browser can open without the admin token.
    pub fn link(&self, request: &ConnectRequest) -> Result<(String, i64), ConnectError> {
        self.check(request)?;
        let settings = self.settings()?;
        let expires = self.clock.now_ms() + settings.state_ttl.as_millis() as i64;
        let token = self.seal(
            "link",
            &request.integration,
            json!({ "r": to_json(request), "e": expires }),
        )?;
        let origin = origin_of(&settings.redirect_uri).ok_or(ConnectError::NotConfigured)?;
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("link", &token)
            .finish();
        Ok((format!("{origin}/v1/connect/{}?{query}", request.integration), expires))
    }

    /// Reads a connect link back.
    pub fn open_link(&self, integration: &str, token: &str) -> Result<ConnectRequest, ConnectError> {
        let value = self.open("link", integration, token)?;
        if value["e"].as_i64().is_none_or(|e| e < self.clock.now_ms()) {
            return Err(ConnectError::Expired);
        }
        from_json(&value["r"]).ok_or(ConnectError::Invalid)
    }

    /// The vendor's authorize URL for this request, with a sealed state.
    pub fn authorize_url(&self, request: &ConnectRequest) -> Result<String, ConnectError> {
        self.check(request)?;
        let settings = self.settings()?;
        let integration = self.integration(&request.integration)?;
        let config = integration
            .credentials
            .config
            .as_ref()
            .ok_or(ConnectError::NotConfigured)?;
        let clients = self.refresher.integration_clients(&integration.name);
        let client = clients.first().ok_or(ConnectError::Unavailable)?;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let verifier = config.pkce.as_ref().map(|_| {
            let mut bytes = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut bytes);
            URL_SAFE_NO_PAD.encode(bytes)
        });
        let state = self.seal(
            "state",
            &integration.name,
            json!({
                "r": to_json(request),
                "v": verifier,
                "n": URL_SAFE_NO_PAD.encode(nonce),
                "e": self.clock.now_ms() + settings.state_ttl.as_millis() as i64,
            }),
        )?;
        let mut query = form_urlencoded::Serializer::new(String::new());
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.id)
            .append_pair("redirect_uri", &settings.redirect_uri)
            .append_pair("state", &state);
        if !config.scope.is_empty() {
            query.append_pair("scope", &config.scope.join(&config.scope_separator));
        }
        if let (Some(pkce), Some(verifier)) = (&config.pkce, &verifier) {
            let PkceMethod::S256 = pkce.method;
            let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
            query
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
        }
        for (name, value) in &config.authorize_params {
            query.append_pair(name, value);
        }
        let base = integration
            .authorize_url(&metadata_map(request))
            .ok_or(ConnectError::NotConfigured)?;
        let separator = if base.contains('?') { '&' } else { '?' };
        Ok(format!("{base}{separator}{}", query.finish()))
    }

    /// Completes a connection from the vendor's redirect. `path_integration` is
    /// set when the callback path names an integration (`/v1/oauth/callback/<name>`).
    pub async fn callback(&self, query: &BTreeMap<String, String>, path_integration: Option<&str>) -> Callback {
        let Some(state) = query.get("state") else {
            return failed(None, None, ConnectError::Invalid);
        };
        let integration_hint = path_integration.map(str::to_owned).or_else(|| sealed_for(state));
        let Some(integration_name) = integration_hint else {
            return failed(None, None, ConnectError::Invalid);
        };
        let value = match self.open("state", &integration_name, state) {
            Ok(value) => value,
            // Sealed for another integration than the callback path names.
            Err(ConnectError::Invalid) if path_integration.is_some() && sealed_for(state).is_some() => {
                return failed(None, None, ConnectError::WrongIntegration)
            }
            Err(error) => return failed(None, None, error),
        };
        let Some(request) = from_json(&value["r"]) else {
            return failed(None, None, ConnectError::Invalid);
        };
        let (redirect_to, account) = (request.redirect_to.clone(), Some(request.account_id.clone()));
        let now = self.clock.now_ms();
        let expires = value["e"].as_i64().unwrap_or(0);
        if expires < now {
            return failed(redirect_to, account, ConnectError::Expired);
        }
        let nonce = value["n"].as_str().unwrap_or_default();
        match self
            .refresher
            .accounts()
            .store()
            .use_once(&format!("connect:{nonce}"), expires, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return failed(redirect_to, account, ConnectError::AlreadyUsed),
            Err(_) => return failed(redirect_to, account, ConnectError::Unavailable),
        }
        if let Some(error) = query.get("error") {
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return failed(redirect_to, account, ConnectError::Vendor(code));
        }
        let Some(code) = query.get("code") else {
            return failed(redirect_to, account, ConnectError::Invalid);
        };
        let outcome = self.exchange(&request, code, value["v"].as_str()).await;
        Callback {
            redirect_to,
            account_id: account,
            outcome,
        }
    }

    async fn exchange(
        &self,
        request: &ConnectRequest,
        code: &str,
        verifier: Option<&str>,
    ) -> Result<AccountView, ConnectError> {
        let settings = self.settings()?;
        let integration = self.integration(&request.integration)?;
        let clients = self.refresher.integration_clients(&integration.name);
        let mut tokens = Err(ConnectError::Unavailable);
        let metadata = metadata_map(request);
        for client in &clients {
            let grant = Grant::AuthorizationCode {
                code,
                verifier,
                redirect_uri: &settings.redirect_uri,
            };
            match self
                .refresher
                .token_client()
                .request(&integration, &metadata, grant, client, self.clock.now_ms())
                .await
            {
                Err(TokenError::InvalidClient { status }) => {
                    tokens = Err(ConnectError::Exchange(TokenError::InvalidClient { status }))
                }
                other => {
                    tokens = other.map_err(ConnectError::Exchange);
                    break;
                }
            }
        }
        let tokens = tokens?;
        let mut credentials = Map::new();
        credentials.insert("access_token".into(), json!(tokens.access_token.expose()));
        if let Some(refresh) = &tokens.refresh_token {
            credentials.insert("refresh_token".into(), json!(refresh.expose()));
        }
        if let Some(expires_at) = tokens.expires_at {
            credentials.insert("expires_at".into(), json!(expires_at as f64 / 1000.0));
        }
        for (field, value) in [("token_type", &tokens.token_type), ("scope", &tokens.scope)] {
            if let Some(value) = value {
                credentials.insert(field.into(), json!(value));
            }
        }
        let mut metadata = metadata_map(request);
        let copied = integration
            .credentials
            .config
            .as_ref()
            .map(|c| c.metadata_from_token.clone())
            .unwrap_or_default();
        for field in copied {
            if let Some(value) = tokens.extra.get(&field) {
                metadata.insert(field, value.clone());
            }
        }
        let accounts = self.refresher.accounts();
        let existing = accounts
            .store()
            .get(&request.account_id)
            .await
            .map_err(|_| ConnectError::Unavailable)?;
        let view = match existing {
            // Reconnect: new credentials (and metadata) for the same account.
            Some(account) if account.integration == integration.name => {
                accounts
                    .patch(
                        &request.account_id,
                        PatchAccount {
                            credentials: Some(credentials),
                            metadata: Some(metadata),
                            version: None,
                        },
                    )
                    .await
            }
            Some(_) => Err(AccountError::AlreadyExists(request.account_id.clone())),
            None => {
                accounts
                    .create(CreateAccount {
                        id: request.account_id.clone(),
                        integration: integration.name.clone(),
                        credentials,
                        metadata,
                    })
                    .await
            }
        };
        let view = view.map_err(ConnectError::Account)?;
        self.refresher.coordinator().announce(&view.id).await;
        Ok(view)
    }

    fn seal(&self, kind: &str, integration: &str, value: Value) -> Result<String, ConnectError> {
        let field = format!("{kind}:{integration}");
        let sealed = self
            .refresher
            .accounts()
            .keyring()
            .seal(SCOPE, &field, value.to_string().as_bytes())
            .map_err(|_| ConnectError::Unavailable)?;
        // The integration travels in clear beside the seal so that the shared
        // callback knows which associated data to open it with; it is
        // authenticated as part of that associated data.
        Ok(format!("{integration}.{}", sealed.into_string()))
    }

    fn open(&self, kind: &str, integration: &str, token: &str) -> Result<Value, ConnectError> {
        let (named, sealed) = token.split_once('.').ok_or(ConnectError::Invalid)?;
        if named != integration {
            return Err(ConnectError::Invalid);
        }
        let sealed = Sealed::parse(sealed).map_err(|_| ConnectError::Invalid)?;
        let plain = self
            .refresher
            .accounts()
            .keyring()
            .open(SCOPE, &format!("{kind}:{integration}"), &sealed)
            .map_err(|_| ConnectError::Invalid)?;
        serde_json::from_str(plain.expose()).map_err(|_| ConnectError::Invalid)
    }
}

/// The integration a sealed token claims (unauthenticated until opened).
fn sealed_for(token: &str) -> Option<String> {
    token.split_once('.').map(|(name, _)| name.to_owned())
}

fn failed(redirect_to: Option<String>, account_id: Option<String>, error: ConnectError) -> Callback {
    Callback {
        redirect_to,
        account_id,
        outcome: Err(error),
    }
}

fn metadata_map(request: &ConnectRequest) -> Map<String, Value> {
    request.metadata.iter().map(|(k, v)| (k.clone(), json!(v))).collect()
}

fn to_json(request: &ConnectRequest) -> Value {
    json!({ "i": request.integration, "a": request.account_id, "t": request.redirect_to, "m": request.metadata })
}

fn from_json(value: &Value) -> Option<ConnectRequest> {
    Some(ConnectRequest {
        integration: value["i"].as_str()?.to_owned(),
        account_id: value["a"].as_str()?.to_owned(),
        redirect_to: value["t"].as_str().map(str::to_owned),
        metadata: serde_json::from_value(value["m"].clone()).unwrap_or_default(),
    })
}

/// `scheme://host[:port]` of a URL.
fn origin_of(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    Some(format!(
        "{}://{}",
        uri.scheme_str()?,
        uri.authority()?.as_str().to_ascii_lowercase()
    ))
}

/// `redirect_to` must be an absolute http(s) URL on an allowed origin, compared
/// exactly (scheme, host and port), never by prefix.
pub fn allowed_return(target: &str, allowed: &[String]) -> bool {
    let Some(origin) = origin_of(target) else {
        return false;
    };
    if target.contains('\\') || !(target.starts_with("https://") || target.starts_with("http://")) {
        return false;
    }
    allowed.iter().any(|a| origin_of(a).is_some_and(|o| o == origin))
}

/// Appends `params` to `url`'s query.
pub fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_origins_are_compared_exactly() {
        let allowed = vec!["https://app.example.com".to_owned()];
        assert!(allowed_return("https://app.example.com/done?x=1", &allowed));
        assert!(allowed_return("https://APP.example.com/", &allowed));
        for bad in [
            "https://app.example.com.evil.com/",
            "https://evil.com/https://app.example.com",
            "http://app.example.com/",
            "https://app.example.com:8443/",
            "//app.example.com/",
            "/relative",
            "javascript:alert(1)",
            "https://user@evil.com",
            "https:\\\\evil.com",
        ] {
            assert!(!allowed_return(bad, &allowed), "{bad}");
        }
    }
}
