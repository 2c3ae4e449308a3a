//! The data path: accept a request, find its account, inject the credential, forward
//! it to the vendor over a pooled client, and normalize the vendor's rate-limit
//! answer. DESIGN.md's "Data path" section, step by step, is [`Proxy::handle`].
#![forbid(unsafe_code)]

pub mod appkeys;
pub mod cache;
mod connect;
mod error;
pub mod headers;
pub mod inject;
pub mod ratelimit;
pub mod target;
pub mod upstream;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use credgate_crypto::Keyring;
use credgate_listener::Limits;
use credgate_store::Status;
use http::{header, HeaderMap, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use appkeys::AppKeys;
pub use cache::{AccountCache, Entry};
pub use error::{Origin as ErrorOrigin, ProxyError};
use inject::Injection;
use target::Target;
use upstream::{RequestBody, ResponseBody, UpstreamError};

/// Responses are the vendor's body streamed through, or our own small JSON body.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

/// Keeps OAuth credentials fresh: the seam where the lifecycle engine plugs in.
/// Without one, the stored token is used as it is.
pub trait Freshness: Send + Sync {
    /// Whether the entry's token may be used as it is. On every request: cheap.
    fn is_fresh(&self, entry: &Entry) -> bool;

    /// Refreshes the account (joining a refresh already in flight) and returns
    /// the fresh entry. `refused_version` is set after the vendor answered 401 to
    /// the token of that account version: refresh unless someone already did.
    fn refresh(
        &self,
        entry: Arc<Entry>,
        refused_version: Option<i64>,
    ) -> Pin<Box<dyn Future<Output = Result<Arc<Entry>, ProxyError>> + Send + 'static>>;
}

/// The header naming the account, for clients that can set headers.
pub const ACCOUNT_HEADER: &str = "credgate-account";
/// The app key, for clients that cannot use `Proxy-Authorization`.
pub const APP_KEY_HEADER: &str = "credgate-app-key";

/// Everything the data path needs. Shared by all connections behind an `Arc`.
pub struct Proxy {
    pub cache: Arc<AccountCache>,
    pub keyring: Arc<Keyring>,
    pub integrations: Arc<credgate_config::Integrations>,
    pub app_keys: AppKeys,
    /// This worker's pooled upstream client (its timeout bounds each exchange).
    pub client: upstream::Client,
    pub passthrough: bool,
    pub allow_private_upstreams: bool,
    pub upstream_timeout: Duration,
    pub freshness: Option<Arc<dyn Freshness>>,
    /// Request bodies up to this size are buffered so that a request refused with
    /// 401 can be replayed once after a forced refresh; larger ones stream.
    pub replay_limit: usize,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("passthrough", &self.passthrough)
            .field("allow_private_upstreams", &self.allow_private_upstreams)
            .finish_non_exhaustive()
    }
}

/// Who the request says it is: the account and the app key, both optional.
struct Caller {
    account: Option<String>,
    app_key: Option<String>,
}

impl Proxy {
    /// Handles one request; never fails (refusals are responses).
    ///
    /// Kept shallow: each `async fn` that awaits another stores that future twice
    /// (rust-lang/rust#62958), so every layer between here and the upstream client
    /// doubled the state an in-flight request holds (44 KiB with four layers, 3 KiB
    /// now; `tests/request_state.rs` keeps it that way).
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let method = request.method().clone();
        let caller = match caller(request.headers()) {
            Ok(caller) => caller,
            Err(error) => return error.into_response(None).map(Either::Right),
        };
        let account = caller.account.clone();
        let outcome = if method == Method::CONNECT {
            // Boxed, like every rare path: it keeps the request future small.
            Box::pin(connect::tunnel(&self, request, &caller)).await
        } else {
            match self.route(&request, caller).await {
                Ok(route) => self.send(request, route).await,
                Err(error) => Err(error),
            }
        };
        match outcome {
            Ok(response) => {
                tracing::debug!(
                    account.id = account.as_deref().unwrap_or("-"),
                    http.method = %method,
                    http.status = response.status().as_u16(),
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "proxied"
                );
                response
            }
            Err(error) => {
                let account = account.as_deref();
                match error.origin() {
                    ErrorOrigin::Client => {
                        tracing::info!(account.id = account.unwrap_or("-"), code = error.code(), %error, "refused")
                    }
                    ErrorOrigin::Vendor => {
                        tracing::warn!(account.id = account.unwrap_or("-"), code = error.code(), %error, "upstream failed")
                    }
                    ErrorOrigin::Credgate => {}
                }
                error.into_response(account).map(Either::Right)
            }
        }
    }

    /// Decides where the request goes and with which credential: the target, the
    /// app key, the account and its state, the allowed origin, a fresh token.
    async fn route(&self, request: &Request<Incoming>, caller: Caller) -> Result<Route, ProxyError> {
        let target = Target::from_request(request)?;
        let app = self
            .app_keys
            .authenticate(caller.app_key.as_deref())
            .ok_or(ProxyError::ProxyAuthRequired(
                "a valid app key is required (the proxy password, or credgate-app-key)",
            ))?;
        let Some(account_id) = caller.account else {
            if self.passthrough {
                let origin = target
                    .as_origin()
                    .ok_or_else(|| ProxyError::BadRequest("the request host is not valid".into()))?;
                return Ok(Route {
                    target,
                    origin,
                    entry: None,
                });
            }
            return Err(ProxyError::ProxyAuthRequired(
                "name an account: the credgate-account header or the proxy user name",
            ));
        };
        if !app.may_use_account(&account_id) {
            return Err(ProxyError::AccountNotFound);
        }
        let entry = self
            .cache
            .get(&account_id)
            .await
            .map_err(|e| ProxyError::Internal(format!("store: {e}")))?
            .ok_or(ProxyError::AccountNotFound)?;
        if !app.may_use_integration(&entry.integration.name) {
            return Err(ProxyError::AccountNotFound);
        }
        match entry.account.status {
            Status::Active => {}
            Status::NeedsReauth => return Err(ProxyError::NeedsReauth),
            Status::Error => return Err(ProxyError::RefreshUnavailable { retry_after_secs: 60 }),
        }
        let origin = target.find_origin(&entry.origins).cloned().ok_or_else(|| {
            ProxyError::HostNotAllowed(format!(
                "{} is not a base URL of integration {}",
                target.host, entry.integration.name
            ))
        })?;
        let mut entry = entry;
        if let Some(freshness) = &self.freshness {
            if !freshness.is_fresh(&entry) {
                entry = freshness.refresh(entry, None).await?;
            }
        }
        Ok(Route {
            target,
            origin,
            entry: Some(entry),
        })
    }

    /// Sends the request upstream with the account's credential (if any) and
    /// returns the vendor's response with hop-by-hop headers removed and rate
    /// limits normalized. A 401 to a credential we believed fresh forces one
    /// refresh and, when the body could be kept, one retry.
    async fn send(&self, request: Request<Incoming>, route: Route) -> Result<Response<ProxyBody>, ProxyError> {
        let Route { target, origin, entry } = route;
        let target = &target;
        let (parts, body) = request.into_parts();
        if !self.allow_private_upstreams {
            if let Some(ip) = origin.host.parse().ok().filter(|ip| upstream::is_forbidden(*ip)) {
                return Err(ProxyError::HostNotAllowed(format!(
                    "{ip} is a private address (set proxy.allow_private_upstreams to allow it)"
                )));
            }
        }
        let mut headers = parts.headers;
        headers::strip_hop_by_hop(&mut headers);
        headers::strip_credgate(&mut headers);
        headers.remove(header::HOST);
        let Some(mut entry) = entry else {
            let body = Either::Left(body);
            let response = self
                .dispatch(&parts.method, target, &origin, headers, None, body)
                .await?;
            return Ok(finish(response, None));
        };
        // The app's own credential never reaches the vendor.
        headers.remove(header::AUTHORIZATION);
        // Only an OAuth credential can be refreshed and the request replayed; only
        // then are the body and the headers kept for a second attempt.
        let replayable = self.freshness.is_some() && entry.integration.credentials.format.is_oauth();
        let limit = if replayable { self.replay_limit } else { 0 };
        let (body, replay) = read_for_replay(body, &headers, limit).await?;
        let kept_headers = replay.as_ref().filter(|_| replayable).map(|_| headers.clone());
        let injection = inject::render(&entry.account, &entry.integration, &self.keyring)?;
        let mut response = self
            .dispatch(&parts.method, target, &origin, headers, Some(injection), body)
            .await?;
        if response.status() == http::StatusCode::UNAUTHORIZED {
            if let Some(freshness) = &self.freshness {
                let refused = entry.account.version;
                match freshness.refresh(Arc::clone(&entry), Some(refused)).await {
                    Ok(fresh) if fresh.account.version != refused => {
                        entry = fresh;
                        if let (Some(replay), Some(headers)) = (replay, kept_headers) {
                            tracing::info!(account.id = %entry.account.id, "vendor refused the token; refreshed and retrying once");
                            let injection = inject::render(&entry.account, &entry.integration, &self.keyring)?;
                            let body = Either::Right(Full::new(replay));
                            response = self
                                .dispatch(&parts.method, target, &origin, headers, Some(injection), body)
                                .await?;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(account.id = %entry.account.id, %error, "forced refresh after a 401 failed")
                    }
                }
            }
        }
        Ok(finish(response, Some(&entry)))
    }

    /// One exchange with the vendor. The client's future is boxed: it is the largest
    /// part of a request's state, and each `async fn` above it would store it twice.
    async fn dispatch(
        &self,
        method: &Method,
        target: &Target,
        origin: &target::Origin,
        headers: HeaderMap,
        injection: Option<Injection>,
        body: RequestBody,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let query = match &injection {
            Some(Injection::Query(pair)) => Some(pair.as_str()),
            _ => None,
        };
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = target.upstream_uri(origin, query)?;
        *request.headers_mut() = headers;
        if let Some(Injection::Header(name, value)) = injection {
            request.headers_mut().insert(name, value);
        }
        let response = Box::pin(self.client.send(origin, request)).await;
        response.map_err(|error| match error {
            UpstreamError::PrivateAddress { .. } => ProxyError::HostNotAllowed(format!(
                "{} resolves to a private address (set proxy.allow_private_upstreams to allow it)",
                origin.host
            )),
            UpstreamError::Timeout(timeout) => ProxyError::UpstreamTimeout(timeout.as_secs()),
            error => ProxyError::UpstreamUnreachable(error_chain(&error)),
        })
    }
}

/// Where `route` decided a request goes.
struct Route {
    target: Target,
    /// The integration's origin the target lies in (for passthrough, the target's).
    origin: target::Origin,
    /// The account whose credential goes there; `None` for passthrough.
    entry: Option<Arc<Entry>>,
}

/// The vendor's response as the caller gets it.
fn finish(response: Response<ResponseBody>, entry: Option<&Entry>) -> Response<ProxyBody> {
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    let mapping = entry.and_then(|e| e.integration.rate_limit.as_ref());
    ratelimit::normalize(&mut parts.headers, mapping, parts.status, SystemTime::now());
    Response::from_parts(parts, Either::Left(body))
}

/// Returns the request body to send first and, when it was small enough to keep
/// (at most `limit`), a copy to replay. Bodies without a declared length, or
/// larger than `limit`, stream through and cannot be replayed.
async fn read_for_replay(
    body: Incoming,
    headers: &HeaderMap,
    limit: usize,
) -> Result<(RequestBody, Option<Bytes>), ProxyError> {
    use http_body_util::BodyExt;
    use hyper::body::Body;
    if body.is_end_stream() {
        return Ok((Either::Right(Full::new(Bytes::new())), Some(Bytes::new())));
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match declared {
        Some(length) if length <= limit => {
            let bytes = http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map_err(|_| ProxyError::BadRequest("the request body could not be read".into()))?
                .to_bytes();
            Ok((Either::Right(Full::new(bytes.clone())), Some(bytes)))
        }
        _ => Ok((Either::Left(body), None)),
    }
}

/// Reads the account and app key from `credgate-account`, `credgate-app-key` and
/// `Proxy-Authorization: Basic base64(account:app-key)`.
fn caller(headers: &HeaderMap) -> Result<Caller, ProxyError> {
    // Looked up by `HeaderName`, so that the name is not parsed again per request.
    static ACCOUNT: http::HeaderName = http::HeaderName::from_static(ACCOUNT_HEADER);
    static APP_KEY: http::HeaderName = http::HeaderName::from_static(APP_KEY_HEADER);
    let text = |name: &http::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let mut account = text(&ACCOUNT).map(str::to_owned);
    let mut app_key = text(&APP_KEY).map(str::to_owned);
    if let Some(value) = headers.get(header::PROXY_AUTHORIZATION) {
        let malformed = ProxyError::ProxyAuthRequired("Proxy-Authorization must be Basic base64(account:app-key)");
        let encoded = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
            .ok_or(malformed)?;
        let decoded = zeroize::Zeroizing::new(
            STANDARD
                .decode(encoded.trim())
                .map_err(|_| ProxyError::ProxyAuthRequired("Proxy-Authorization is not valid base64"))?,
        );
        let text = std::str::from_utf8(&decoded)
            .map_err(|_| ProxyError::ProxyAuthRequired("Proxy-Authorization is not UTF-8"))?;
        let (user, password) = text.split_once(':').unwrap_or((text, ""));
        if account.is_none() && !user.is_empty() {
            account = Some(user.to_owned());
        }
        if app_key.is_none() && !password.is_empty() {
            app_key = Some(password.to_owned());
        }
    }
    Ok(Caller { account, app_key })
}

/// An error and its sources, for a 502 message. Connection errors name hosts and
/// OS errors, never request content.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(source) = current {
        text.push_str(": ");
        text.push_str(&source.to_string());
        current = source.source();
    }
    text
}

/// Serves the proxy on one OS thread per [`Proxy`] in `proxies`, each running its
/// own single-threaded runtime with its own serve loop and upstream pool. An
/// acceptor task on the calling runtime hands connections to the threads in turn
/// ([`credgate_listener::distribute`]). Must be called within a tokio runtime.
///
/// Why not one work-stealing runtime: a proxied request is two connections (client
/// and vendor) whose tasks wake each other for every request. On a shared runtime
/// those wake-ups often cross threads (a futex and an IPI each); on a thread per
/// core they stay on one thread, as in nginx's worker model. Measured on the
/// 2-core benchmark machine: see the README. The account cache and keyring are
/// shared.
pub fn serve_per_thread(
    listener: TcpListener,
    proxies: Vec<Proxy>,
    limits: Limits,
    shutdown: watch::Receiver<()>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    /// Connections handed to a worker that has not started serving them yet. Small,
    /// so that a worker at its connection limit is passed over, not queued behind.
    const HANDOFF_QUEUE: usize = 8;
    let threads = proxies.len().max(1);
    let per_thread = Limits {
        max_connections: limits.max_connections.div_ceil(threads),
        ..limits
    };
    let mut handles = Vec::with_capacity(threads);
    let mut workers = Vec::with_capacity(threads);
    for (i, proxy) in proxies.into_iter().enumerate() {
        let (handoff, connections) = tokio::sync::mpsc::channel(HANDOFF_QUEUE);
        workers.push(handoff);
        let (limits, shutdown) = (per_thread.clone(), shutdown.clone());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = std::thread::Builder::new()
            .name(format!("credgate-proxy-{i}"))
            .spawn(move || {
                let connections = credgate_listener::Connections::Handoff(connections);
                runtime.block_on(serve(connections, Arc::new(proxy), limits, shutdown));
            })?;
        handles.push(handle);
    }
    tokio::spawn(credgate_listener::distribute(listener, workers, shutdown));
    Ok(handles)
}

/// Serves the proxy on `connections` until `shutdown` changes, then drains.
pub async fn serve(
    connections: impl Into<credgate_listener::Connections>,
    proxy: Arc<Proxy>,
    limits: Limits,
    shutdown: watch::Receiver<()>,
) {
    credgate_listener::serve(
        connections,
        limits,
        |_peer| {
            let proxy = Arc::clone(&proxy);
            hyper::service::service_fn(move |request| NeverFails {
                inner: Arc::clone(&proxy).handle(request),
            })
        },
        shutdown,
    )
    .await;
}

pin_project_lite::pin_project! {
    /// A future that cannot fail, as the `Result` a hyper service returns. A named
    /// future rather than an `async` block, which would store the request future
    /// twice (rust-lang/rust#62958).
    struct NeverFails<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> Future for NeverFails<F> {
    type Output = Result<F::Output, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}
