//! The OAuth connect flow against a real third-party authorization server
//! (oidc-provider, PKCE on): a person logs in and consents (Python requests plays
//! them), credgate exchanges the code, stores the tokens, proxies with them and
//! refreshes them. And every way a connection must be refused.
#![allow(clippy::unwrap_used)]

use credgate_test_support::{curl, http, login, Credgate, Deployment, FakeVendor, OidcProvider};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const CLIENT_ID: &str = "credgate";
const CLIENT_SECRET: &str = "credgate-test-client-secret";
const APP: &str = "https://app.example.com";

struct Connect {
    provider: OidcProvider,
    vendor: FakeVendor,
    receiver: FakeVendor,
    deployment: Deployment,
    server: Credgate,
    redirect_uri: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn integration(name: &str, provider: &OidcProvider, vendor: &FakeVendor) -> (String, String) {
    (
        name.to_owned(),
        format!(
            "name: {name}\nbase_urls: [ \"{}\" ]\ncredentials:\n  format: oauth2\n  client: {{ id: {CLIENT_ID}, secret: {{ from_env: IDP_CLIENT_SECRET }} }}\n  config:\n    auth: {{ tokenHost: \"{}\", tokenPath: /token, authorizePath: /auth }}\n    scope: [ openid, offline_access, api ]\n    pkce: {{ method: S256 }}\n    authorizeParams: {{ prompt: consent }}\n    options: {{ authorizationMethod: header, bodyFormat: form }}\nauthorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n",
            vendor.url(),
            provider.issuer
        ),
    )
}

async fn setup(state_ttl: &str) -> Connect {
    let port = free_port();
    let redirect_uri = format!("http://127.0.0.1:{port}/v1/oauth/callback");
    let provider = OidcProvider::start(CLIENT_ID, CLIENT_SECRET, &redirect_uri);
    let vendor = FakeVendor::http().await;
    let receiver = FakeVendor::http().await;
    let integrations = [
        integration("idp", &provider, &vendor),
        integration("idp2", &provider, &vendor),
    ];
    let refs: Vec<(&str, String)> = integrations.iter().map(|(n, y)| (n.as_str(), y.clone())).collect();
    let extra = format!(
        "connect: {{ redirect_uri: \"{redirect_uri}\", allowed_return_origins: [ \"{APP}\" ], state_ttl: {state_ttl} }}\nwebhooks: [ {{ url: \"{}/hooks\", secret: {{ from_env: TEST_WEBHOOK_SECRET }} }} ]\n",
        receiver.url()
    );
    let deployment = Deployment::with_config(&refs, "allow_private_upstreams: true", &extra);
    deployment.set_admin_port(port);
    let mut command = deployment.command(&["serve"]);
    command
        .env("IDP_CLIENT_SECRET", CLIENT_SECRET)
        .env("TEST_WEBHOOK_SECRET", "whsec_dGVzdA==");
    let server = Credgate::start(command);
    Connect {
        provider,
        vendor,
        receiver,
        deployment,
        server,
        redirect_uri,
    }
}

impl Connect {
    fn admin(&self) -> Option<&str> {
        Some(&self.deployment.admin_token)
    }

    async fn link(&self, account: &str) -> String {
        let body =
            json!({ "integration": "idp", "account_id": account, "redirect_to": format!("{APP}/done") }).to_string();
        let reply = http(
            Method::POST,
            &self.server.admin_url("/v1/connect-links"),
            self.admin(),
            Some(&body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.json()["url"].as_str().unwrap().to_owned()
    }

    /// A person opens the link, logs in and consents; returns the callback URL.
    async fn consent(&self, url: String) -> String {
        let redirect = self.redirect_uri.clone();
        tokio::task::spawn_blocking(move || login(&url, &redirect, "alice"))
            .await
            .unwrap()
    }

    async fn account(&self, id: &str) -> (StatusCode, Value) {
        let reply = http(
            Method::GET,
            &self.server.admin_url(&format!("/v1/accounts/{id}")),
            self.admin(),
            None,
        )
        .await;
        (reply.status, reply.json())
    }

    fn proxied(&self, account: &str) -> u16 {
        let header = format!("credgate-account: {account}");
        curl(
            &[
                "-x",
                &self.server.proxy_url(),
                "-H",
                &header,
                &format!("{}/me", self.vendor.url()),
            ],
            &[],
        )
        .0
    }

    fn last_bearer(&self) -> String {
        let request = self.vendor.requests().pop().unwrap();
        request.headers["authorization"].to_str().unwrap().to_owned()
    }

    /// The `state` of the vendor URL that `GET /v1/connect/idp` redirects to.
    async fn fresh_state(&self, integration: &str, account: &str) -> String {
        let url = self.server.admin_url(&format!(
            "/v1/connect/{integration}?account_id={account}&redirect_to={APP}/done"
        ));
        let reply = http(Method::GET, &url, self.admin(), None).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.body);
        let location = reply.headers["location"].to_str().unwrap().to_owned();
        let query = location.split_once('?').unwrap().1;
        form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned()
    }

    async fn callback(&self, query: &[(&str, &str)], integration: Option<&str>) -> credgate_test_support::Reply {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let path = match integration {
            Some(name) => format!("/v1/oauth/callback/{name}?{query}"),
            None => format!("/v1/oauth/callback?{query}"),
        };
        http(Method::GET, &self.server.admin_url(&path), None, None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_proxy_and_refresh_against_a_real_oauth_server() {
    let c = setup("10m").await;
    let link = c.link("alice-idp").await;
    assert!(!link.contains(&c.deployment.admin_token));
    let callback = c.consent(link).await;
    assert!(callback.contains("code="), "{callback}");
    // The PKCE verifier never leaves credgate: not in the link, not at the vendor.
    let reply = http(Method::GET, &callback, None, None).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.body);
    assert_eq!(
        reply.headers["location"],
        format!("{APP}/done?status=connected&account_id=alice-idp")
    );

    let (status, account) = c.account("alice-idp").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(account["status"], "active");
    assert!(account["credentials"]["refresh_token"].is_string(), "{account}");
    assert!(
        account["next_refresh_at"].is_string(),
        "the first proactive refresh is scheduled: {account}"
    );

    assert_eq!(c.proxied("alice-idp"), 200);
    let first = c.last_bearer();
    let reply = http(
        Method::POST,
        &c.server.admin_url("/v1/accounts/alice-idp/refresh"),
        c.admin(),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(c.proxied("alice-idp"), 200);
    assert_ne!(c.last_bearer(), first);

    // Replaying the callback: refused, nothing changes.
    let version = c.account("alice-idp").await.1["version"].clone();
    let replay = http(Method::GET, &callback, None, None).await;
    assert_eq!(replay.status, StatusCode::FOUND);
    assert_eq!(
        replay.headers["location"],
        format!("{APP}/done?status=error&error=used_state&account_id=alice-idp")
    );
    assert_eq!(c.account("alice-idp").await.1["version"], version);
    let _ = &c.provider;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_are_refused_and_store_nothing() {
    let c = setup("10m").await;
    // redirect_to on a foreign origin: refused before anything is issued.
    for target in [
        "https://evil.example.com/x",
        "https://app.example.com.evil.com/",
        "javascript:alert(1)",
    ] {
        let body = json!({ "integration": "idp", "account_id": "x", "redirect_to": target }).to_string();
        let reply = http(
            Method::POST,
            &c.server.admin_url("/v1/connect-links"),
            c.admin(),
            Some(&body),
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{target}: {}",
            reply.body
        );
        assert_eq!(reply.json()["field"], "redirect_to");
        let url = c.server.admin_url(&format!(
            "/v1/connect/idp?account_id=x&redirect_to={}",
            form_urlencoded::byte_serialize(target.as_bytes()).collect::<String>()
        ));
        let reply = http(Method::GET, &url, c.admin(), None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{target}");
        assert!(reply.headers.get("location").is_none());
    }
    // Starting a connection needs the admin token or a signed link.
    let reply = http(
        Method::GET,
        &c.server.admin_url("/v1/connect/idp?account_id=x"),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = http(
        Method::GET,
        &c.server.admin_url("/v1/connect/idp?link=idp.cg1:k1:AAAA"),
        None,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("invalid"), "{}", reply.body);

    // The vendor says no.
    let state = c.fresh_state("idp", "bob").await;
    let reply = c.callback(&[("error", "access_denied"), ("state", &state)], None).await;
    assert_eq!(
        reply.headers["location"],
        format!("{APP}/done?status=error&error=access_denied&account_id=bob")
    );
    // A tampered state.
    let state = c.fresh_state("idp", "carol").await;
    let mut tampered = state.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let reply = c
        .callback(&[("code", "x"), ("state", &String::from_utf8(tampered).unwrap())], None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply.body.contains("This link is invalid") || reply.body.contains("this link is invalid"),
        "{}",
        reply.body
    );
    // A state from another integration, at that integration's callback.
    let reply = c.callback(&[("code", "x"), ("state", &state)], Some("idp2")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body.contains("another integration"), "{}", reply.body);
    // A failed exchange (a code the vendor never issued).
    let reply = c.callback(&[("code", "forged"), ("state", &state)], None).await;
    assert_eq!(
        reply.headers["location"],
        format!("{APP}/done?status=error&error=exchange_failed&account_id=carol")
    );

    for account in ["x", "bob", "carol"] {
        assert_eq!(
            c.account(account).await.0,
            StatusCode::NOT_FOUND,
            "{account} was stored"
        );
    }
    assert!(c.vendor.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_state_is_refused() {
    let c = setup("0s").await;
    let state = c.fresh_state("idp", "dave").await;
    let reply = c.callback(&[("code", "x"), ("state", &state)], None).await;
    assert_eq!(
        reply.headers["location"],
        format!("{APP}/done?status=error&error=expired_state&account_id=dave")
    );
    assert_eq!(c.account("dave").await.0, StatusCode::NOT_FOUND);
}

/// Reconnecting an account in needs_reauth makes it active again, with exactly
/// one `reactivated` webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_a_broken_account_reactivates_it_once() {
    let c = setup("10m").await;
    let body = json!({
        "id": "erin", "integration": "idp",
        "credentials": { "access_token": "dead", "refresh_token": "revoked-refresh-token", "expires_in": 0 }
    })
    .to_string();
    let reply = http(
        Method::POST,
        &c.server.admin_url("/v1/accounts"),
        c.admin(),
        Some(&body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        c.proxied("erin"),
        401,
        "the real server refuses the unknown refresh token"
    );
    assert_eq!(c.account("erin").await.1["status"], "needs_reauth");

    let callback = c.consent(c.link("erin").await).await;
    let reply = http(Method::GET, &callback, None, None).await;
    assert_eq!(
        reply.headers["location"],
        format!("{APP}/done?status=connected&account_id=erin")
    );
    assert_eq!(c.account("erin").await.1["status"], "active");
    assert_eq!(c.proxied("erin"), 200);

    let kinds = || -> Vec<String> {
        c.receiver
            .requests()
            .iter()
            .map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let delivered = credgate_test_support::eventually(std::time::Duration::from_secs(15), || async {
        kinds().iter().any(|k| k == "integrated_account:reactivated")
    })
    .await;
    assert!(delivered, "{:?}", kinds());
    let reactivated = kinds()
        .iter()
        .filter(|k| *k == "integrated_account:reactivated")
        .count();
    assert_eq!(reactivated, 1, "{:?}", kinds());
}
