//! API input for creating and changing accounts, and its validation against the
//! account's integration.

use std::collections::BTreeMap;

use credgate_config::{matches_pattern, CredentialFormat, ExpiresInUnit, Integration};
use credgate_crypto::SecretString;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::AccountError;

/// `POST /v1/accounts`.
///
/// Build it from JSON with [`CreateAccount::from_json`], not serde: serde's type
/// errors quote the offending value, which may be a secret sent in the wrong place.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    pub id: String,
    pub integration: String,
    #[serde(default)]
    pub credentials: Map<String, Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// `PATCH /v1/accounts/{id}`: given credential and metadata fields replace the
/// stored ones; `null` removes an optional field. New credentials for an account in
/// `needs_reauth` make it `active` again.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchAccount {
    #[serde(default)]
    pub credentials: Option<Map<String, Value>>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// Optional optimistic-concurrency guard: refuse if the account has moved on.
    #[serde(default)]
    pub version: Option<i64>,
}

impl CreateAccount {
    pub fn from_json(body: Value) -> Result<Self, AccountError> {
        let mut object = into_object(body, "body")?;
        only_fields(&object, &["id", "integration", "credentials", "metadata"], "")?;
        Ok(Self {
            id: take_string(&mut object, "id")?,
            integration: take_string(&mut object, "integration")?,
            credentials: take_object(&mut object, "credentials")?.unwrap_or_default(),
            metadata: take_object(&mut object, "metadata")?.unwrap_or_default(),
        })
    }
}

impl PatchAccount {
    pub fn from_json(body: Value) -> Result<Self, AccountError> {
        let mut object = into_object(body, "body")?;
        only_fields(&object, &["credentials", "metadata", "version"], "")?;
        let version = match object.remove("version") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
            Some(_) => return Err(AccountError::invalid("version", "must be an integer")),
        };
        Ok(Self {
            credentials: take_object(&mut object, "credentials")?,
            metadata: take_object(&mut object, "metadata")?,
            version,
        })
    }
}

fn into_object(value: Value, field: &str) -> Result<Map<String, Value>, AccountError> {
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(AccountError::invalid(field, "must be a JSON object")),
    }
}

fn only_fields(object: &Map<String, Value>, allowed: &[&str], prefix: &str) -> Result<(), AccountError> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(AccountError::invalid(
            format!("{prefix}{key}"),
            format!("unknown field (expected: {})", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn take_string(object: &mut Map<String, Value>, field: &str) -> Result<String, AccountError> {
    match object.remove(field) {
        Some(Value::String(text)) => Ok(text),
        None | Some(Value::Null) => Err(AccountError::invalid(field, "is required")),
        Some(_) => Err(AccountError::invalid(field, "must be a string")),
    }
}

fn take_object(object: &mut Map<String, Value>, field: &str) -> Result<Option<Map<String, Value>>, AccountError> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(AccountError::invalid(field, "must be a JSON object")),
    }
}

/// `Debug` names the credential fields, never their values.
impl std::fmt::Debug for CreateAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateAccount")
            .field("id", &self.id)
            .field("integration", &self.integration)
            .field("credentials", &self.credentials.keys().collect::<Vec<_>>())
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl std::fmt::Debug for PatchAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchAccount")
            .field(
                "credentials",
                &self.credentials.as_ref().map(|c| c.keys().collect::<Vec<_>>()),
            )
            .field("metadata", &self.metadata)
            .field("version", &self.version)
            .finish()
    }
}

/// Non-secret fields of an OAuth token response that may be given at creation.
const OAUTH_TIMING_FIELDS: &[&str] = &["expires_in", "expires_at"];
const OAUTH_EXTRA_FIELDS: &[&str] = &["token_type", "scope"];

/// Validated credentials: plaintext fields to seal, and the expiry they imply.
pub(crate) struct Credentials {
    pub fields: BTreeMap<String, SecretString>,
    pub expires_at: Option<i64>,
}

pub(crate) fn validate_id(id: &str) -> Result<(), AccountError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !id.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(AccountError::invalid(
            "id",
            "use 1 to 128 characters from [A-Za-z0-9._-], not starting with `.`",
        ))
    }
}

/// Checks credential fields against the integration's format. `kept` names stored
/// fields that stay as they are (for a patch), so required fields may come from
/// either. `now_ms` turns `expires_in` into an absolute time.
pub(crate) fn validate_credentials(
    integration: &Integration,
    input: &Map<String, Value>,
    kept: &[&str],
    now_ms: i64,
) -> Result<Credentials, AccountError> {
    let format = integration.credentials.format;
    let allowed = integration.credential_fields();
    let mut fields = BTreeMap::new();
    let mut expires_at = None;
    for (name, value) in input {
        let field = format!("credentials.{name}");
        if format.is_oauth() && OAUTH_TIMING_FIELDS.contains(&name.as_str()) {
            expires_at = Some(parse_expiry(
                name,
                value,
                integration.credentials.expires_in_unit,
                now_ms,
            )?);
            continue;
        }
        let known = allowed.iter().any(|(f, _)| f == name)
            || (format.is_oauth() && OAUTH_EXTRA_FIELDS.contains(&name.as_str()));
        if !known {
            let expected: Vec<&str> = allowed.iter().map(|(f, _)| f.as_str()).collect();
            return Err(AccountError::invalid(
                field,
                format!(
                    "is not a field of {} credentials (expected: {})",
                    format.as_str(),
                    expected.join(", ")
                ),
            ));
        }
        let text = match value {
            Value::String(text) if !text.is_empty() => text,
            Value::String(_) => return Err(AccountError::invalid(field, "must not be empty")),
            // Never echo the value: it may be a secret sent with the wrong type.
            _ => return Err(AccountError::invalid(field, "must be a string")),
        };
        fields.insert(name.clone(), SecretString::new(text.as_str()));
    }
    for (name, required) in &allowed {
        if *required && !fields.contains_key(name) && !kept.contains(&name.as_str()) {
            return Err(AccountError::invalid(
                format!("credentials.{name}"),
                format!("is required for {} credentials", format.as_str()),
            ));
        }
    }
    if format == CredentialFormat::Oauth2 && expires_at.is_none() {
        expires_at = integration
            .credentials
            .default_ttl
            .map(|ttl| now_ms.saturating_add(ttl.as_millis() as i64));
    }
    Ok(Credentials { fields, expires_at })
}

fn parse_expiry(name: &str, value: &Value, unit: ExpiresInUnit, now_ms: i64) -> Result<i64, AccountError> {
    let field = format!("credentials.{name}");
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    if name == "expires_at" {
        if let Value::String(text) = value {
            if let Ok(time) = humantime::parse_rfc3339_weak(text) {
                let ms = time
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                return Ok(ms);
            }
        }
        return match number {
            Some(seconds) if seconds.is_finite() && seconds >= 0.0 => Ok((seconds * 1000.0) as i64),
            _ => Err(AccountError::invalid(field, "must be RFC 3339 or unix seconds")),
        };
    }
    let scale = match unit {
        ExpiresInUnit::Seconds => 1000.0,
        ExpiresInUnit::Milliseconds => 1.0,
    };
    match number {
        Some(n) if n.is_finite() && n >= 0.0 && n * scale < 1e15 => Ok(now_ms + (n * scale) as i64),
        _ => Err(AccountError::invalid(field, "must be a non-negative number")),
    }
}

/// Checks metadata against the integration's declarations: required fields present,
/// patterned fields strings that match their pattern.
pub(crate) fn validate_metadata(integration: &Integration, metadata: &Map<String, Value>) -> Result<(), AccountError> {
    for (name, declared) in &integration.metadata {
        let field = format!("metadata.{name}");
        match metadata.get(name) {
            None | Some(Value::Null) if declared.required => {
                return Err(AccountError::invalid(field, "is required by this integration"));
            }
            None | Some(Value::Null) => {}
            Some(value) => {
                if let Some(pattern) = &declared.pattern {
                    let Some(text) = value.as_str() else {
                        return Err(AccountError::invalid(field, "must be a string"));
                    };
                    if !matches_pattern(text, pattern) {
                        return Err(AccountError::invalid(field, format!("must match {pattern}")));
                    }
                }
            }
        }
    }
    if metadata.len() > 64 {
        return Err(AccountError::invalid("metadata", "at most 64 keys"));
    }
    Ok(())
}

/// Applies a JSON merge: given keys replace, `null` removes.
pub(crate) fn merge(base: &mut Map<String, Value>, patch: Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            base.remove(&key);
        } else {
            base.insert(key, value);
        }
    }
}
