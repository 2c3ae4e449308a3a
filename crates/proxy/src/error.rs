//! Every refusal credgate itself produces, and the one place that maps them to HTTP.
//!
//! A caller must be able to tell credgate's own 401/403/404 from the vendor's: ours
//! carry `credgate-error: <code>` and a JSON body naming the code and the account.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// Where a failure came from (pingora's error source): it decides the log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The calling application sent something we refuse.
    Client,
    /// The vendor could not be reached or misbehaved.
    Vendor,
    /// credgate itself failed.
    Credgate,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    ProxyAuthRequired(&'static str),
    #[error("account not found")]
    AccountNotFound,
    #[error("{0}")]
    HostNotAllowed(String),
    #[error("the account needs to be reconnected")]
    NeedsReauth,
    #[error("the credential could not be refreshed; try again later")]
    RefreshUnavailable { retry_after_secs: u64 },
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream did not answer within {0} s")]
    UpstreamTimeout(u64),
    #[error("{0}")]
    BadRequest(String),
    #[error("CONNECT is not supported; send plain http:// requests through credgate (it originates TLS itself)")]
    ConnectNotSupported,
    #[error("internal error")]
    Internal(String),
}

impl ProxyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::ProxyAuthRequired(_) => "proxy_auth_required",
            Self::AccountNotFound => "account_not_found",
            Self::HostNotAllowed(_) => "host_not_allowed",
            Self::NeedsReauth => "needs_reauth",
            Self::RefreshUnavailable { .. } => "refresh_unavailable",
            Self::UpstreamUnreachable(_) | Self::UpstreamTimeout(_) => "upstream_unreachable",
            Self::BadRequest(_) => "bad_request",
            Self::ConnectNotSupported => "connect_not_supported",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::ProxyAuthRequired(_) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Self::AccountNotFound => StatusCode::NOT_FOUND,
            Self::HostNotAllowed(_) => StatusCode::FORBIDDEN,
            Self::NeedsReauth => StatusCode::UNAUTHORIZED,
            Self::RefreshUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            Self::UpstreamUnreachable(_) | Self::UpstreamTimeout(_) => Origin::Vendor,
            Self::Internal(_) | Self::RefreshUnavailable { .. } => Origin::Credgate,
            _ => Origin::Client,
        }
    }

    /// The response a caller sees: a stable code, a plain message, the account id.
    /// Internal detail stays in the log.
    pub fn into_response(self, account: Option<&str>) -> Response<Full<Bytes>> {
        let message = match &self {
            Self::Internal(detail) => {
                tracing::error!(account.id = account.unwrap_or("-"), error = %detail, "proxy request failed");
                "internal error; see the credgate log".to_owned()
            }
            other => other.to_string(),
        };
        let body = serde_json::json!({ "error": self.code(), "message": message, "account": account });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("credgate-error", HeaderValue::from_static(self.code()));
        match self {
            Self::ProxyAuthRequired(_) => {
                headers.insert(
                    header::PROXY_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"credgate\""),
                );
            }
            Self::RefreshUnavailable { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}
