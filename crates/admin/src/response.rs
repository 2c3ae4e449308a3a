//! JSON responses and the one place that maps errors to HTTP status codes.

use bytes::Bytes;
use credgate_accounts::AccountError;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use serde_json::json;

pub(crate) type Body = Full<Bytes>;

pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>, field: Option<&str>) -> Response<Body> {
    let mut body = json!({ "error": code, "message": message.into() });
    if let Some(field) = field {
        body["field"] = json!(field);
    }
    json(status, &body)
}

pub(crate) fn no_content() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

pub(crate) fn unauthorized() -> Response<Body> {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid admin token is required (Authorization: Bearer …)",
        None,
    );
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

pub(crate) fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint", None)
}

pub(crate) fn method_not_allowed() -> Response<Body> {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed here",
        None,
    )
}

/// Account errors to status codes. Input problems are 422 with the field named;
/// internal ones are 500 with the detail in the log only.
pub(crate) fn account_error(error: &AccountError) -> Response<Body> {
    let (status, code) = match error {
        AccountError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field"),
        AccountError::UnknownIntegration(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_integration"),
        AccountError::NotFound(_) => (StatusCode::NOT_FOUND, "account_not_found"),
        AccountError::AlreadyExists(_) => (StatusCode::CONFLICT, "account_exists"),
        AccountError::Conflict(_) => (StatusCode::CONFLICT, "version_conflict"),
        AccountError::MissingKey(_) | AccountError::Crypto(_) | AccountError::Store(_) => {
            tracing::error!(%error, "admin request failed");
            return self::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the credgate log",
                None,
            );
        }
    };
    self::error(status, code, error.to_string(), error.field())
}
