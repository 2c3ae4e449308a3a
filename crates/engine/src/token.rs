//! The token endpoint client, driven entirely by the integration's YAML: grant,
//! client authentication (Basic header or body), body format (form or JSON), scope
//! separator and extra parameters; and the response parser (RFC 6749 section 5).
//!
//! Nothing here logs or formats a token: errors carry the vendor's error *code*
//! and the HTTP status only (an `error_description` can echo request content).

use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use credgate_config::{BodyFormat, ClientAuthMethod, ExpiresInUnit, Integration};
use credgate_crypto::SecretString;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// Largest token response read (a token response is a few KiB at most).
const MAX_RESPONSE: usize = 256 * 1024;

/// What to ask the token endpoint for. `Debug` names the grant only: the code and
/// the PKCE verifier are secrets.
pub enum Grant<'a> {
    RefreshToken(&'a SecretString),
    ClientCredentials,
    /// The connect flow's code exchange, with the PKCE verifier if one was sent.
    AuthorizationCode {
        code: &'a str,
        verifier: Option<&'a str>,
        redirect_uri: &'a str,
    },
}

impl std::fmt::Debug for Grant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::RefreshToken(_) => "RefreshToken([redacted])",
            Self::ClientCredentials => "ClientCredentials",
            Self::AuthorizationCode { .. } => "AuthorizationCode([redacted])",
        })
    }
}

/// The client credentials used to authenticate at the token endpoint.
#[derive(Clone, Debug)]
pub struct ClientAuth {
    pub id: String,
    /// `None` for public clients.
    pub secret: Option<SecretString>,
}

/// A successful token response.
#[derive(Debug)]
pub struct Tokens {
    pub access_token: SecretString,
    /// A rotated refresh token; `None` means keep the current one.
    pub refresh_token: Option<SecretString>,
    /// Unix ms; `None` when neither the response, the JWT nor `default_ttl` says.
    pub expires_at: Option<i64>,
    pub token_type: Option<String>,
    pub scope: Option<String>,
    /// The whole response object minus the tokens, for fields the integration
    /// copies into metadata (e.g. Salesforce `instance_url`).
    pub extra: Map<String, Value>,
}

/// How a token request failed, classified by what to do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The grant is dead (`invalid_grant`, `unauthorized_client`, 401): the
    /// customer must reconnect. No retry.
    #[error("the vendor refused the grant ({code}, HTTP {status})")]
    Auth { code: String, status: u16 },
    /// The client credentials were refused; another secret may work.
    #[error("the vendor refused the client credentials (invalid_client, HTTP {status})")]
    InvalidClient { status: u16 },
    /// Slow down; retry after the given delay.
    #[error("the token endpoint is rate limiting (HTTP 429)")]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, a timeout, a network error or an unreadable answer: retry with backoff.
    #[error("transient token endpoint failure: {0}")]
    Transient(String),
    /// Trouble on credgate's side (a credential that does not open, client
    /// credentials or a token URL not configured): retried with backoff, never
    /// blamed on the customer.
    #[error("{0}")]
    Local(String),
    /// Another 4xx with an OAuth error code (`invalid_request`, `invalid_scope`,
    /// …): trouble with the grant that retrying will not fix.
    #[error("the vendor rejected the token request ({code}, HTTP {status})")]
    Rejected { code: String, status: u16 },
}

#[derive(Clone, Debug)]
pub struct TokenClient {
    http: crate::http::HttpClient,
    timeout: Duration,
}

pub use crate::http::ClientError as TokenClientError;

impl TokenClient {
    /// A client trusting webpki roots plus an optional extra CA file.
    pub fn new(timeout: Duration, extra_ca: Option<&Path>) -> Result<Self, TokenClientError> {
        Ok(Self {
            http: crate::http::client(timeout, extra_ca)?,
            timeout,
        })
    }

    /// Asks the integration's token endpoint for a token.
    pub async fn request(
        &self,
        integration: &Integration,
        metadata: &Map<String, Value>,
        grant: Grant<'_>,
        client: &ClientAuth,
        now_ms: i64,
    ) -> Result<Tokens, TokenError> {
        let Some(config) = integration.credentials.config.as_ref() else {
            return Err(TokenError::Local(format!(
                "integration {} has no OAuth config",
                integration.name
            )));
        };
        let Some(url) = integration.token_url(metadata) else {
            return Err(TokenError::Local(
                "no token URL: the account's metadata is missing or does not match its pattern".into(),
            ));
        };
        let options = &config.options;
        // Zeroizing: the parameters hold the refresh token and maybe the secret.
        let mut params: Vec<(&str, Zeroizing<String>)> = Vec::new();
        let text = |s: &str| Zeroizing::new(s.to_owned());
        match grant {
            Grant::RefreshToken(token) => {
                params.push(("grant_type", text("refresh_token")));
                params.push(("refresh_token", text(token.expose())));
            }
            Grant::AuthorizationCode {
                code,
                verifier,
                redirect_uri,
            } => {
                params.push(("grant_type", text("authorization_code")));
                params.push(("code", text(code)));
                params.push(("redirect_uri", text(redirect_uri)));
                if let Some(verifier) = verifier {
                    params.push(("code_verifier", text(verifier)));
                }
            }
            Grant::ClientCredentials => {
                params.push(("grant_type", text("client_credentials")));
                if !config.scope.is_empty() {
                    params.push(("scope", Zeroizing::new(config.scope.join(&config.scope_separator))));
                }
            }
        }
        for (name, value) in &config.token_params {
            params.push((name.as_str(), text(value)));
        }
        let (status, retry_after, bytes) = self.post(&url, options, params, client).await?;
        parse_response(integration, status, retry_after, &bytes, now_ms)
    }

    /// Revokes a token at the integration's RFC 7009 endpoint, if it declares one.
    /// Returns `Ok(false)` when there is no revocation endpoint.
    pub async fn revoke(
        &self,
        integration: &Integration,
        metadata: &Map<String, Value>,
        token: &SecretString,
        hint: &str,
        client: &ClientAuth,
    ) -> Result<bool, TokenError> {
        let Some(config) = integration.credentials.config.as_ref() else {
            return Ok(false);
        };
        let Some(url) = integration.revoke_url(metadata) else {
            return Ok(false);
        };
        let params = vec![
            ("token", Zeroizing::new(token.expose().to_owned())),
            ("token_type_hint", Zeroizing::new(hint.to_owned())),
        ];
        let (status, _, _) = self.post(&url, &config.options, params, client).await?;
        match status.as_u16() {
            200..=299 => Ok(true),
            code if code >= 500 => Err(TokenError::Transient(format!("HTTP {code}"))),
            code => Err(TokenError::Rejected {
                code: "revocation_refused".into(),
                status: code,
            }),
        }
    }

    /// POSTs parameters with the integration's client authentication and body
    /// format; returns the status, any `Retry-After`, and the (bounded) body.
    async fn post(
        &self,
        url: &str,
        options: &credgate_config::OAuthOptions,
        mut params: Vec<(&str, Zeroizing<String>)>,
        client: &ClientAuth,
    ) -> Result<(StatusCode, Option<Duration>, Bytes), TokenError> {
        let text = |s: &str| Zeroizing::new(s.to_owned());
        let mut request = Request::post(url).header(header::ACCEPT, "application/json");
        match options.authorization_method {
            ClientAuthMethod::Header => {
                let id = form_encode(&client.id);
                let secret = client
                    .secret
                    .as_ref()
                    .map(|s| form_encode(s.expose()))
                    .unwrap_or_default();
                let pair = Zeroizing::new(format!("{}:{}", id.as_str(), secret.as_str()));
                let value = Zeroizing::new(format!("Basic {}", STANDARD.encode(pair.as_bytes())));
                request = request.header(header::AUTHORIZATION, value.as_str());
            }
            ClientAuthMethod::Body => {
                params.push(("client_id", text(&client.id)));
                if let Some(secret) = &client.secret {
                    params.push(("client_secret", text(secret.expose())));
                }
            }
        }
        let body = Zeroizing::new(match options.body_format {
            BodyFormat::Form => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                let mut form = form_urlencoded::Serializer::new(String::new());
                for (name, value) in &params {
                    form.append_pair(name, value);
                }
                form.finish()
            }
            BodyFormat::Json => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                let object: Map<String, Value> = params
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), Value::String(value.to_string())))
                    .collect();
                Value::Object(object).to_string()
            }
        });
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .map_err(|_| TokenError::Local("the token URL is not valid".into()))?;
        tokio::time::timeout(self.timeout, async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| TokenError::Transient(format!("{e}")))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let bytes = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|_| TokenError::Transient("unreadable token response".into()))?
                .to_bytes();
            Ok::<_, TokenError>((status, retry_after, bytes))
        })
        .await
        .map_err(|_| TokenError::Transient(format!("no answer within {} s", self.timeout.as_secs())))?
    }
}

fn form_encode(value: &str) -> Zeroizing<String> {
    Zeroizing::new(form_urlencoded::byte_serialize(value.as_bytes()).collect())
}

fn parse_retry_after(text: &str) -> Option<Duration> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(text.trim()).ok()?;
    Some(
        date.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Classifies and parses a token endpoint answer.
pub fn parse_response(
    integration: &Integration,
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &[u8],
    now_ms: i64,
) -> Result<Tokens, TokenError> {
    let json: Option<Map<String, Value>> = serde_json::from_slice(body).ok();
    let error_code = json
        .as_ref()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let code = status.as_u16();
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Err(TokenError::RateLimited { retry_after });
    }
    if status.is_server_error() {
        return Err(TokenError::Transient(format!("HTTP {code}")));
    }
    // Some vendors answer 200 with an error body: an `error` and no token is an error.
    let has_token = json
        .as_ref()
        .is_some_and(|o| o.get("access_token").and_then(Value::as_str).is_some());
    if !status.is_success() || (error_code.is_some() && !has_token) {
        let Some(error) = error_code else {
            // No OAuth error code: a 401 still means the grant is refused; any
            // other answer (a proxy's 403 page, a 404 from a wrong path, a
            // redirect) says nothing about the grant and is retried.
            return Err(if code == 401 {
                TokenError::Auth {
                    code: "unauthorized".into(),
                    status: code,
                }
            } else {
                TokenError::Transient(format!("HTTP {code} without an OAuth error"))
            });
        };
        return Err(match (error.as_str(), code) {
            ("invalid_client", _) => TokenError::InvalidClient { status: code },
            ("invalid_grant" | "unauthorized_client", _) | (_, 401) => TokenError::Auth {
                code: error,
                status: code,
            },
            ("slow_down" | "temporarily_unavailable" | "server_error", _) => TokenError::Transient(error),
            _ => TokenError::Rejected {
                code: error,
                status: code,
            },
        });
    }
    let Some(mut object) = json else {
        return Err(TokenError::Transient("the token response is not a JSON object".into()));
    };
    let Some(Value::String(access)) = object.remove("access_token") else {
        return Err(TokenError::Transient("the token response has no access_token".into()));
    };
    let access_token = SecretString::new(access);
    let refresh_token = match object.remove("refresh_token") {
        Some(Value::String(token)) if !token.is_empty() => Some(SecretString::new(token)),
        _ => None,
    };
    let expires_at = expires_at(integration, object.remove("expires_in").as_ref(), &access_token, now_ms);
    let token_type = object.remove("token_type").and_then(|v| v.as_str().map(str::to_owned));
    let scope = object.remove("scope").and_then(|v| v.as_str().map(str::to_owned));
    object.remove("id_token");
    Ok(Tokens {
        access_token,
        refresh_token,
        expires_at,
        token_type,
        scope,
        extra: object,
    })
}

/// `expires_in` (seconds or milliseconds, number or string); absent, a JWT
/// access token's `exp`; then the integration's `default_ttl`.
fn expires_at(
    integration: &Integration,
    expires_in: Option<&Value>,
    access: &SecretString,
    now_ms: i64,
) -> Option<i64> {
    let scale = match integration.credentials.expires_in_unit {
        ExpiresInUnit::Seconds => 1000.0,
        ExpiresInUnit::Milliseconds => 1.0,
    };
    let given = match expires_in {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    if let Some(value) = given.filter(|v| v.is_finite() && *v >= 0.0 && *v * scale < 1e15) {
        return Some(now_ms + (value * scale) as i64);
    }
    if let Some(exp) = jwt_exp(access.expose()) {
        return Some(exp * 1000);
    }
    integration
        .credentials
        .default_ttl
        .map(|ttl| now_ms + ttl.as_millis() as i64)
}

/// The `exp` claim of a JWT, read without verifying it: only to learn when the
/// vendor will stop accepting it. Anything malformed is `None`.
pub fn jwt_exp(token: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    claims
        .get("exp")
        .and_then(Value::as_f64)
        .filter(|exp| *exp > 0.0 && *exp < 1e11)
        .map(|exp| exp as i64)
}

#[cfg(test)]
mod tests;
