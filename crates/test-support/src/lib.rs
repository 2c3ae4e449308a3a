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

/// Runs curl (`-sS -i`, 30 s limit) with every proxy variable of the environment
/// cleared (so `NO_PROXY` cannot bypass credgate) plus `env`; returns the last
/// status code and the full output (headers and body).
pub fn curl(args: &[&str], env: &[(&str, &str)]) -> (u16, String) {
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "-i", "--max-time", "30"]).args(args);
    for name in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "no_proxy",
        "NO_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("curl must be installed (README prerequisites)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .lines()
        .rev()
        .find(|line| line.starts_with("HTTP/"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, text)
}
