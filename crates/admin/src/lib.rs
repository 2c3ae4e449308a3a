//! The admin API: JSON over HTTP on its own listener, behind a bearer token.
//!
//! Separate from the proxy listener so that it can bind elsewhere (loopback by
//! default) and so that a proxied request can never reach it. Every read masks
//! secrets; every error is `{"error": code, "message": …, "field": …}` with no
//! secret in it. `/healthz` and `/readyz` need no token and show no account data.
#![forbid(unsafe_code)]

mod auth;
mod connect;
mod response;
mod routes;

use std::sync::Arc;

use credgate_accounts::Accounts;
use credgate_crypto::SecretString;
use credgate_listener::Limits;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A request body larger than this is refused (accounts are small).
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// A callback run with an account id after the account changed.
pub type OnChange = Arc<dyn Fn(&str) + Send + Sync>;

/// What the admin handlers share.
pub struct AdminState {
    pub accounts: Accounts,
    /// The bearer token for `/v1`. `None` only on a loopback listener (validated
    /// by the config); compared in constant time.
    pub token: Option<SecretString>,
    /// Called with an account id after every change, so caches (the proxy's)
    /// drop their copy.
    pub on_change: Option<OnChange>,
    /// Refreshes on request (`POST /v1/accounts/{id}/refresh`); `None` when the
    /// lifecycle engine is not running.
    pub refresher: Option<Arc<credgate_engine::Refresher>>,
    /// The OAuth connect flow (`/v1/connect`, `/v1/connect-links`, `/v1/oauth/callback`).
    pub connect: Option<Arc<credgate_engine::connect::Connect>>,
}

impl AdminState {
    pub(crate) fn changed(&self, id: &str) {
        if let Some(on_change) = &self.on_change {
            on_change(id);
        }
    }
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("accounts", &self.accounts)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Serves the admin API on `listener` until `shutdown` changes, then lets
/// in-flight requests finish.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: watch::Receiver<()>) {
    let limits = Limits {
        // The admin API is for operators and scripts.
        max_connections: 256,
        ..Limits::default()
    };
    credgate_listener::serve(
        listener,
        limits,
        |_peer| {
            let state = Arc::clone(&state);
            hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, std::convert::Infallible>(routes::handle(&state, request).await) }
            })
        },
        shutdown,
    )
    .await;
}
