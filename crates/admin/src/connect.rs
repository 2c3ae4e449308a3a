//! The connect endpoints: start a connection (admin token or signed link), mint
//! signed links, and the OAuth callback with its small built-in result page.

use std::collections::BTreeMap;

use credgate_engine::connect::{with_query, Connect, ConnectError, ConnectRequest};
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::response::{self, Body};
use crate::AdminState;

fn not_configured() -> Response<Body> {
    response::error(
        StatusCode::NOT_FOUND,
        "connect_not_configured",
        "OAuth connections are not configured (connect.redirect_uri)",
        None,
    )
}

fn params(query: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// `GET /v1/connect/{integration}?account_id=…&redirect_to=…&metadata.<name>=…`
pub(crate) fn start(state: &AdminState, integration: &str, query: Option<&str>) -> Response<Body> {
    let Some(connect) = state.connect.as_deref() else {
        return not_configured();
    };
    let params = params(query);
    let request = ConnectRequest {
        integration: integration.to_owned(),
        account_id: params.get("account_id").cloned().unwrap_or_default(),
        redirect_to: params.get("redirect_to").cloned(),
        metadata: params
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("metadata.").map(|name| (name.to_owned(), v.clone())))
            .collect(),
    };
    redirect_to_vendor(connect, &request)
}

/// `GET /v1/connect/{integration}?link=…`: the customer's browser, no admin token.
pub(crate) fn start_from_link(state: &AdminState, integration: &str, query: Option<&str>) -> Response<Body> {
    let Some(connect) = state.connect.as_deref() else {
        return not_configured();
    };
    let link = params(query).remove("link").unwrap_or_default();
    match connect.open_link(integration, &link) {
        Ok(request) => redirect_to_vendor(connect, &request),
        Err(error) => page(StatusCode::BAD_REQUEST, "Connection failed", &error.to_string()),
    }
}

fn redirect_to_vendor(connect: &Connect, request: &ConnectRequest) -> Response<Body> {
    match connect.authorize_url(request) {
        Ok(url) => found(&url),
        Err(error) => {
            tracing::info!(integration = %request.integration, %error, "connect refused");
            let status = match error {
                ConnectError::UnknownIntegration(_) => StatusCode::NOT_FOUND,
                ConnectError::Unavailable | ConnectError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            page(status, "Connection failed", &error.to_string())
        }
    }
}

/// `POST /v1/connect-links {integration, account_id, redirect_to?, metadata?}`
pub(crate) fn create_link(state: &AdminState, body: Value) -> Response<Body> {
    let Some(connect) = state.connect.as_deref() else {
        return not_configured();
    };
    let text = |field: &str| body.get(field).and_then(Value::as_str).map(str::to_owned);
    let (Some(integration), Some(account_id)) = (text("integration"), text("account_id")) else {
        return response::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "integration and account_id are required strings",
            Some(if text("integration").is_none() {
                "integration"
            } else {
                "account_id"
            }),
        );
    };
    let metadata: BTreeMap<String, String> = match body.get("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(value) => match serde_json::from_value(value.clone()) {
            Ok(metadata) => metadata,
            Err(_) => {
                return response::error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    "metadata must map names to strings",
                    Some("metadata"),
                )
            }
        },
    };
    let request = ConnectRequest {
        integration,
        account_id,
        redirect_to: text("redirect_to"),
        metadata,
    };
    match connect.link(&request) {
        Ok((url, expires)) => response::json(StatusCode::CREATED, &json!({ "url": url, "expires_at_ms": expires })),
        Err(error) => {
            let (status, code, field) = match &error {
                ConnectError::UnknownIntegration(_) => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_integration",
                    Some("integration"),
                ),
                ConnectError::NotConnectable(_) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "not_connectable", Some("integration"))
                }
                ConnectError::RedirectNotAllowed => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "redirect_not_allowed",
                    Some("redirect_to"),
                ),
                ConnectError::BadAccountId => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some("account_id")),
                ConnectError::Metadata(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", Some("metadata")),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "connect_unavailable", None),
            };
            response::error(status, code, error.to_string(), field)
        }
    }
}

/// `GET /v1/oauth/callback[/{integration}]?code=…&state=…` (or `error=…`).
pub(crate) async fn callback(state: &AdminState, query: Option<&str>, integration: Option<&str>) -> Response<Body> {
    let Some(connect) = state.connect.as_deref() else {
        return not_configured();
    };
    let result = connect.callback(&params(query), integration).await;
    let account = result.account_id.clone().unwrap_or_default();
    match (&result.outcome, &result.redirect_to) {
        (Ok(view), Some(target)) => {
            if let Some(changed) = &state.on_change {
                changed(&view.id);
            }
            found(&with_query(
                target,
                &[("status", "connected"), ("account_id", &account)],
            ))
        }
        (Ok(view), None) => {
            if let Some(changed) = &state.on_change {
                changed(&view.id);
            }
            page(
                StatusCode::OK,
                "Connected",
                &format!("Account {} is connected. You can close this window.", view.id),
            )
        }
        (Err(error), target) => {
            tracing::info!(account.id = %account, %error, "connection failed");
            let code = match error {
                ConnectError::Vendor(code) => code.clone(),
                ConnectError::Expired => "expired_state".into(),
                ConnectError::AlreadyUsed => "used_state".into(),
                ConnectError::Invalid | ConnectError::WrongIntegration => "invalid_state".into(),
                ConnectError::Exchange(_) => "exchange_failed".into(),
                _ => "connect_failed".into(),
            };
            // A state we could not open carries no trustworthy redirect: page only.
            match target {
                Some(target) => found(&with_query(
                    target,
                    &[("status", "error"), ("error", &code), ("account_id", &account)],
                )),
                None => page(StatusCode::BAD_REQUEST, "Connection failed", &error.to_string()),
            }
        }
    }
}

fn found(location: &str) -> Response<Body> {
    let mut response = response::no_content();
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// A minimal page for people, every dynamic part HTML-escaped.
fn page(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;")
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>{t}</h1><p>{m}</p></body></html>",
        t = escape(title),
        m = escape(message)
    );
    let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from(html)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
