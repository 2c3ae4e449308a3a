//! Renders an account's `authorization` into what goes on the wire.
//!
//! Plaintext exists only here: each sealed field the template names is opened into
//! a zeroizing buffer, the header value is built, and the buffers are wiped when
//! they drop. The resulting `HeaderValue` is marked sensitive (HPACK never-indexed,
//! redacted in `Debug`); its bytes are hyper's and are not zeroized.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use credgate_config::{AuthorizationFormat, Integration, Template};
use credgate_crypto::Keyring;
use credgate_store::Account;
use http::{header, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use crate::ProxyError;

/// The credential, ready to apply to a request.
#[derive(Debug)]
pub enum Injection {
    Header(HeaderName, HeaderValue),
    /// `name=value`, already form-encoded, to append to the query string.
    Query(Zeroizing<String>),
}

/// Builds the injection for `account` under its integration's `authorization`.
pub fn render(account: &Account, integration: &Integration, keyring: &Keyring) -> Result<Injection, ProxyError> {
    let config = &integration.authorization.config;
    let lookup = |var: &str, out: &mut String| lookup(account, integration, keyring, var, out);
    match integration.authorization.format {
        AuthorizationFormat::Bearer => {
            let path = config.path.as_deref().unwrap_or_default();
            let mut value = Zeroizing::new(String::from("Bearer "));
            if !lookup(path, &mut value) {
                return Err(missing(path));
            }
            Ok(Injection::Header(header::AUTHORIZATION, sensitive(&value)?))
        }
        AuthorizationFormat::Header => {
            let name = config.name.as_deref().unwrap_or_default();
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProxyError::Internal(format!("integration {}: bad header name", integration.name)))?;
            let value = render_template(config.value.as_ref(), lookup)?;
            Ok(Injection::Header(name, sensitive(&value)?))
        }
        AuthorizationFormat::Basic => {
            let username = render_default(config.username.as_ref(), "username", lookup)?;
            let password = render_default(config.password.as_ref(), "password", lookup)?;
            let pair = Zeroizing::new(format!("{}:{}", username.as_str(), password.as_str()));
            let mut value = Zeroizing::new(String::from("Basic "));
            STANDARD.encode_string(pair.as_bytes(), &mut value);
            Ok(Injection::Header(header::AUTHORIZATION, sensitive(&value)?))
        }
        AuthorizationFormat::Query => {
            let name = config.name.as_deref().unwrap_or_default();
            let value = render_template(config.value.as_ref(), lookup)?;
            let encoded: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(name, &value)
                .finish();
            Ok(Injection::Query(Zeroizing::new(encoded)))
        }
    }
}

/// Appends one context variable's value: a sealed credential field (opened here)
/// or a metadata value.
fn lookup(account: &Account, integration: &Integration, keyring: &Keyring, var: &str, out: &mut String) -> bool {
    if let Some(name) = var.strip_prefix("metadata.") {
        return match account.metadata.get(name) {
            Some(serde_json::Value::String(text)) => {
                out.push_str(text);
                true
            }
            Some(other @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                out.push_str(&other.to_string());
                true
            }
            _ => false,
        };
    }
    let Some(field) = integration.credentials.format.field_for_path(var) else {
        return false;
    };
    let Some(sealed) = account.credentials.get(field) else {
        return false;
    };
    match keyring.open(&account.id, field, sealed) {
        Ok(plain) => {
            out.push_str(plain.expose());
            true
        }
        Err(error) => {
            tracing::error!(account.id = %account.id, field, %error, "stored credential does not open");
            false
        }
    }
}

fn render_template(
    template: Option<&Template>,
    lookup: impl FnMut(&str, &mut String) -> bool,
) -> Result<Zeroizing<String>, ProxyError> {
    let mut out = Zeroizing::new(String::new());
    if let Some(template) = template {
        template.render_into(&mut out, lookup).map_err(missing)?;
    }
    Ok(out)
}

fn render_default(
    template: Option<&Template>,
    field: &str,
    mut lookup: impl FnMut(&str, &mut String) -> bool,
) -> Result<Zeroizing<String>, ProxyError> {
    match template {
        Some(template) => render_template(Some(template), lookup),
        None => {
            let mut out = Zeroizing::new(String::new());
            if lookup(field, &mut out) {
                Ok(out)
            } else {
                Err(missing(field))
            }
        }
    }
}

fn missing(var: &str) -> ProxyError {
    ProxyError::Internal(format!("the account has no usable value for {var}"))
}

fn sensitive(value: &str) -> Result<HeaderValue, ProxyError> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| ProxyError::Internal("the credential is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}
