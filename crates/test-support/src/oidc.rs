//! `OidcProvider`: a real, third-party OAuth 2.0 server (panva's oidc-provider,
//! from the npm registry) run with Node from `tests/oidc`, with PKCE and refresh
//! token rotation on; and [`login`], which plays the user at its login and consent
//! pages with Python `requests` and returns the redirect carrying the code.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::workspace_root;

#[derive(Debug)]
pub struct OidcProvider {
    child: Child,
    pub issuer: String,
}

fn fixture() -> PathBuf {
    workspace_root().join("tests/oidc")
}

impl OidcProvider {
    pub fn start(client_id: &str, client_secret: &str, redirect_uri: &str) -> Self {
        let dir = fixture();
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc` (README prerequisites)"
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .env("CLIENT_ID", client_id)
            .env("CLIENT_SECRET", client_secret)
            .env("REDIRECT_URI", redirect_uri)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node must be on PATH (README prerequisites)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let Some(issuer) = value["issuer"].as_str() {
                        let _ = tx.send(issuer.to_owned());
                    }
                }
            }
        });
        let issuer = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("oidc-provider did not start within 30 s");
        Self { child, issuer }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Logs in as `user` and consents; returns the URL the browser would be sent to
/// (starting with `redirect_uri`, carrying `code` and `state`).
pub fn login(authorize_url: &str, redirect_uri: &str, user: &str) -> String {
    let output = Command::new("python3")
        .arg(fixture().join("login.py"))
        .args([authorize_url, redirect_uri, user])
        .output()
        .expect("python3 with requests must be installed (README prerequisites)");
    assert!(
        output.status.success(),
        "login failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}
