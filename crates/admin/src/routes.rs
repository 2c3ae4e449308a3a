use bytes::Bytes;
use credgate_accounts::{CreateAccount, PatchAccount};
use credgate_config::Integration;
use credgate_store::{ListFilter, Status};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::response::{self, Body};
use crate::{auth, connect, AdminState, MAX_BODY};

pub(crate) async fn handle(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = route(state, request).await;
    // Paths hold account ids, never secrets; query strings are not logged.
    tracing::info!(http.method = %method, http.path = %path, http.status = response.status().as_u16(), "admin request");
    response
}

async fn route(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match segments.as_slice() {
        ["healthz"] => return response::json(StatusCode::OK, &json!({ "status": "ok" })),
        ["readyz"] => return ready(state).await,
        // The vendor redirects the customer's browser here: no admin token.
        ["v1", "oauth", "callback"] | ["v1", "oauth", "callback", _] if request.method() == Method::GET => {
            let integration = segments.get(3).map(|s| s.to_string());
            return connect::callback(state, request.uri().query(), integration.as_deref()).await;
        }
        // A signed connect link stands in for the admin token.
        ["v1", "connect", integration] if request.method() == Method::GET && has_link(request.uri().query()) => {
            let integration = integration.to_string();
            return connect::start_from_link(state, &integration, request.uri().query());
        }
        ["v1", ..] => {}
        _ => return response::not_found(),
    }
    if !auth::authorized(state.token.as_ref(), request.headers()) {
        return response::unauthorized();
    }
    let method = request.method().clone();
    match (segments.as_slice(), method) {
        (["v1", "accounts"], Method::GET) => list_accounts(state, request.uri().query()).await,
        (["v1", "accounts"], Method::POST) => create_account(state, request).await,
        (["v1", "accounts", id], Method::GET) => result(state.accounts.get(id).await, StatusCode::OK),
        (["v1", "accounts", id], Method::PATCH) => {
            let id = id.to_string();
            patch_account(state, &id, request).await
        }
        (["v1", "accounts", id], Method::DELETE) => match state.accounts.delete(id).await {
            Ok(account) => {
                state.changed(id);
                if let Some(refresher) = state.refresher.clone() {
                    // Revoke in the background: the account is gone either way.
                    tokio::spawn(async move { refresher.revoke(&account).await });
                }
                response::no_content()
            }
            Err(error) => response::account_error(&error),
        },
        (["v1", "accounts", id, "refresh"], Method::POST) => {
            let id = id.to_string();
            refresh_account(state, &id).await
        }
        (["v1", "connect", integration], Method::GET) => {
            let integration = integration.to_string();
            connect::start(state, &integration, request.uri().query())
        }
        (["v1", "connect-links"], Method::POST) => match json_body(request).await {
            Ok(body) => connect::create_link(state, body),
            Err(response) => response,
        },
        (["v1", "integrations"], Method::GET) => {
            let list: Vec<Value> = state
                .accounts
                .integrations()
                .values()
                .map(|i| integration_view(i))
                .collect();
            response::json(StatusCode::OK, &json!({ "integrations": list }))
        }
        (["v1", "accounts"] | ["v1", "accounts", _] | ["v1", "accounts", _, "refresh"] | ["v1", "integrations"], _) => {
            response::method_not_allowed()
        }
        _ => response::not_found(),
    }
}

/// Forces a refresh now (through the same single flight and lock as any other).
async fn refresh_account(state: &AdminState, id: &str) -> Response<Body> {
    use credgate_engine::{Reason, RefreshError};
    let account = match state.accounts.store().get(id).await {
        Ok(Some(account)) => account,
        Ok(None) => return response::account_error(&credgate_accounts::AccountError::NotFound(id.to_owned())),
        Err(error) => return response::account_error(&error.into()),
    };
    let oauth = state
        .accounts
        .integrations()
        .get(&account.integration)
        .is_some_and(|i| i.credentials.format.is_oauth());
    let Some(refresher) = state.refresher.as_ref().filter(|_| oauth) else {
        return response::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_refreshable",
            "only OAuth accounts are refreshed",
            None,
        );
    };
    match refresher
        .refresh(
            id,
            Reason::Forced {
                seen_version: account.version,
            },
        )
        .await
    {
        Ok(account) => {
            state.changed(id);
            response::json(StatusCode::OK, &state.accounts.view(&account))
        }
        Err(RefreshError::NotFound) => {
            response::account_error(&credgate_accounts::AccountError::NotFound(id.to_owned()))
        }
        Err(RefreshError::NeedsReauth) => response::error(
            StatusCode::CONFLICT,
            "needs_reauth",
            "the vendor refused the grant; the account must be reconnected",
            None,
        ),
        Err(RefreshError::Unavailable { retry_after }) => {
            let mut response = response::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "refresh_unavailable",
                format!("the token endpoint failed; retry in {} s", retry_after.as_secs().max(1)),
                None,
            );
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from(retry_after.as_secs().max(1)),
            );
            response
        }
    }
}

async fn ready(state: &AdminState) -> Response<Body> {
    match state.accounts.store().key_checks().await {
        Ok(_) => response::json(StatusCode::OK, &json!({ "status": "ready" })),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            response::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "status": "store unavailable" }),
            )
        }
    }
}

fn result(
    outcome: Result<impl serde::Serialize, credgate_accounts::AccountError>,
    status: StatusCode,
) -> Response<Body> {
    match outcome {
        Ok(value) => response::json(status, &value),
        Err(error) => response::account_error(&error),
    }
}

async fn create_account(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    let body = match json_body(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match CreateAccount::from_json(body) {
        Ok(input) => {
            let id = input.id.clone();
            let outcome = state.accounts.create(input).await;
            if outcome.is_ok() {
                state.changed(&id);
            }
            result(outcome, StatusCode::CREATED)
        }
        Err(error) => response::account_error(&error),
    }
}

async fn patch_account(state: &AdminState, id: &str, request: Request<Incoming>) -> Response<Body> {
    let body = match json_body(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match PatchAccount::from_json(body) {
        Ok(patch) => {
            let outcome = state.accounts.patch(id, patch).await;
            if outcome.is_ok() {
                state.changed(id);
            }
            result(outcome, StatusCode::OK)
        }
        Err(error) => response::account_error(&error),
    }
}

async fn list_accounts(state: &AdminState, query: Option<&str>) -> Response<Body> {
    let mut filter = ListFilter::default();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "integration" => filter.integration = Some(value.into_owned()),
            "status" => match Status::parse(&value) {
                Some(status) => filter.status = Some(status),
                None => {
                    return response::error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "status must be active, needs_reauth or error",
                        Some("status"),
                    )
                }
            },
            "after" => filter.after = Some(value.into_owned()),
            "limit" => match value.parse() {
                Ok(limit) => filter.limit = limit,
                Err(_) => {
                    return response::error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "limit must be a number",
                        Some("limit"),
                    )
                }
            },
            other => {
                return response::error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("unknown query parameter {other:?}"),
                    Some(other),
                )
            }
        }
    }
    result(state.accounts.list(filter).await, StatusCode::OK)
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes. The errors never quote the body.
pub(crate) async fn json_body(request: Request<Incoming>) -> Result<Value, Response<Body>> {
    let bytes: Bytes = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Err(response::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body must be at most {MAX_BODY} bytes"),
                None,
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|error| {
        response::error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!(
                "request body is not valid JSON (line {}, column {})",
                error.line(),
                error.column()
            ),
            None,
        )
    })
}

fn has_link(query: Option<&str>) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).any(|(key, _)| key == "link")
}

fn integration_view(integration: &Integration) -> Value {
    let oauth = integration.credentials.config.as_ref();
    json!({
        "name": integration.name,
        "display_name": integration.display_name,
        "credentials_format": integration.credentials.format.as_str(),
        "authorization_format": integration.authorization.format.as_str(),
        "base_urls": integration.base_urls.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "credential_fields": integration.credential_fields().into_iter()
            .map(|(name, required)| json!({ "name": name, "required": required }))
            .collect::<Vec<_>>(),
        "metadata": integration.metadata.iter()
            .map(|(name, field)| json!({ "name": name, "pattern": field.pattern, "required": field.required }))
            .collect::<Vec<_>>(),
        "scopes": oauth.map(|o| o.scope.clone()).unwrap_or_default(),
        "pkce": oauth.and_then(|o| o.pkce.as_ref()).is_some(),
    })
}
