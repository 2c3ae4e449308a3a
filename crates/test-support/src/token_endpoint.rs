//! `FakeTokenEndpoint`: an OAuth 2.0 token endpoint that rotates refresh tokens
//! (a reused one gets `invalid_grant`), counts calls per grant, and serves queued
//! faults (503, 429, `invalid_grant`, hang) before answering normally.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A scripted answer, served once, before normal behaviour resumes.
#[derive(Clone, Debug)]
pub enum Fault {
    Status(u16),
    /// 429 with `Retry-After: <secs>`.
    RateLimited(u64),
    /// 400 `invalid_grant` whatever the token.
    InvalidGrant,
    /// 401 `invalid_client`.
    InvalidClient,
    /// Never answers (until the endpoint is dropped).
    Hang,
    /// Waits until the `Notify` is notified, then answers normally.
    Held(Arc<Notify>),
}

/// One request as the endpoint saw it.
#[derive(Clone, Debug)]
pub struct TokenCall {
    pub grant_type: String,
    pub params: HashMap<String, String>,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
struct State {
    /// Refresh tokens that are currently valid.
    valid: HashSet<String>,
    issued: u64,
    faults: VecDeque<Fault>,
    calls: Vec<TokenCall>,
    expires_in: Option<Value>,
}

#[derive(Debug)]
pub struct FakeTokenEndpoint {
    addr: SocketAddr,
    /// Endpoint state. A std mutex: never held across an await.
    state: Arc<Mutex<State>>,
    /// Notified whenever a request arrives (before it is answered).
    pub arrived: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeTokenEndpoint {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            expires_in: Some(json!(3600)),
            ..Default::default()
        }));
        let arrived = Arc::new(Notify::new());
        let (shared, notify) = (Arc::clone(&state), Arc::clone(&arrived));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (shared, notify) = (Arc::clone(&shared), Arc::clone(&notify));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (shared, notify) = (Arc::clone(&shared), Arc::clone(&notify));
                        async move { Ok::<_, Infallible>(answer(request, shared, notify).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            state,
            arrived,
            task,
        }
    }

    /// `http://127.0.0.1:<port>` (the token path is free: every path answers).
    pub fn host(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// Makes `token` a valid refresh token.
    pub fn seed(&self, token: &str) {
        self.state.lock().unwrap().valid.insert(token.to_owned());
    }

    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().faults.extend(faults);
    }

    /// What `expires_in` to answer with (`None` leaves it out).
    pub fn set_expires_in(&self, value: Option<Value>) {
        self.state.lock().unwrap().expires_in = value;
    }

    pub fn calls(&self) -> Vec<TokenCall> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn count(&self, grant_type: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|c| c.grant_type == grant_type)
            .count()
    }
}

async fn answer(request: Request<Incoming>, state: Arc<Mutex<State>>, arrived: Arc<Notify>) -> Response<Full<Bytes>> {
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let params: HashMap<String, String> = if content_type.as_deref().is_some_and(|c| c.contains("json")) {
        serde_json::from_slice::<HashMap<String, Value>>(&body)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
            .collect()
    } else {
        form_urlencoded::parse(&body).into_owned().collect()
    };
    let grant_type = params.get("grant_type").cloned().unwrap_or_default();
    let fault = {
        let mut state = state.lock().unwrap();
        state.calls.push(TokenCall {
            grant_type: grant_type.clone(),
            params: params.clone(),
            authorization,
            content_type,
            at: std::time::Instant::now(),
        });
        state.faults.pop_front()
    };
    arrived.notify_waiters();
    match fault {
        Some(Fault::Hang) => std::future::pending().await,
        Some(Fault::Held(release)) => release.notified().await,
        Some(Fault::Status(code)) => return reply(code, json!({ "error": "server_error" }), None),
        Some(Fault::RateLimited(secs)) => return reply(429, json!({ "error": "slow_down" }), Some(secs)),
        Some(Fault::InvalidGrant) => return reply(400, json!({ "error": "invalid_grant" }), None),
        Some(Fault::InvalidClient) => return reply(401, json!({ "error": "invalid_client" }), None),
        None => {}
    }
    let mut state = state.lock().unwrap();
    state.issued += 1;
    let n = state.issued;
    let mut token = json!({ "access_token": format!("at-{n}"), "token_type": "Bearer" });
    if let Some(expires_in) = state.expires_in.clone() {
        token["expires_in"] = expires_in;
    }
    match grant_type.as_str() {
        "refresh_token" => {
            let presented = params.get("refresh_token").cloned().unwrap_or_default();
            if !state.valid.remove(&presented) {
                return reply(
                    400,
                    json!({ "error": "invalid_grant", "error_description": "reused or unknown" }),
                    None,
                );
            }
            let next = format!("rt-{n}");
            state.valid.insert(next.clone());
            token["refresh_token"] = json!(next);
            reply(200, token, None)
        }
        "client_credentials" => reply(200, token, None),
        _ => reply(400, json!({ "error": "unsupported_grant_type" }), None),
    }
}

fn reply(status: u16, body: Value, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", http::HeaderValue::from_static("application/json"));
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from(secs));
    }
    response
}
