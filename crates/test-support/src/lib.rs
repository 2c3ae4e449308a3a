//! Test support: real-process helpers shared by the integration tests.
//!
//! [`Credgate`] runs the real `credgate` binary against a temporary config, store
//! and key, captures everything it logs, and finds the port it bound from its own
//! `listening` log line, so tests never pick a fixed port. [`FakeVendor`] is the
//! upstream that records what arrived.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_client;
mod oidc;
mod process;
mod redis_server;
mod token_endpoint;
mod vendor;

pub use http_client::{http, Reply};
pub use oidc::{login, OidcProvider};
pub use process::{credgate_binary, random_key, workspace_root, Credgate, Deployment};
pub use redis_server::RedisServer;
pub use token_endpoint::{FakeTokenEndpoint, Fault, TokenCall};
pub use vendor::{Answer, FakeVendor, Recorded};

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: std::time::Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
