//! The admin API: JSON over HTTP on its own listener, behind a bearer token.
//!
//! Separate from the proxy listener so that it can bind elsewhere (loopback by
//! default) and so that a proxied request can never reach it. Every read masks
//! secrets; every error is `{"error": code, "message": …, "field": …}` with no
//! secret in it. `/healthz` and `/readyz` need no token and show no account data.
#![forbid(unsafe_code)]

mod auth;
mod response;
mod routes;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use credgate_accounts::Accounts;
use credgate_crypto::SecretString;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Most concurrent admin connections; the admin API is for operators and scripts.
const MAX_CONNECTIONS: usize = 256;
/// A request body larger than this is refused (accounts are small).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish at shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin handlers share.
#[derive(Debug)]
pub struct AdminState {
    pub accounts: Accounts,
    /// The bearer token for `/v1`. `None` only on a loopback listener (validated
    /// by the config); compared in constant time.
    pub token: Option<SecretString>,
}

/// Serves the admin API on `listener` until `shutdown` changes, then lets
/// in-flight requests finish (up to a drain timeout).
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<()>,
) {
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => break,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let service = service_fn(move |request: hyper::Request<Incoming>| {
            let state = Arc::clone(&state);
            async move { Ok::<_, Infallible>(routes::handle(&state, request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("admin connections did not drain in time");
    }
}
