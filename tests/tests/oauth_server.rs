//! credgate against a real third-party OAuth 2.0 server (oidc-provider from npm)
//! with refresh-token rotation on: a customer's tokens from a real authorization
//! code + PKCE flow, refreshed by credgate through the proxy and the admin API.
#![allow(clippy::unwrap_used)]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use credgate_test_support::{curl, http, login, Credgate, Deployment, FakeVendor, OidcProvider};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "credgate";
const CLIENT_SECRET: &str = "credgate-test-client-secret";
const REDIRECT: &str = "http://127.0.0.1:9/callback";

/// The token endpoint, called the way a vendor's customer app would.
async fn token(issuer: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let body: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let basic = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::post(format!("{issuer}/token"))
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_against_a_real_oauth_server_with_rotation() {
    let provider = OidcProvider::start(CLIENT_ID, CLIENT_SECRET, REDIRECT);
    let issuer = provider.issuer.clone();

    // The customer connects: authorization code with PKCE S256, login, consent.
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let authorize = format!(
        "{issuer}/auth?client_id={CLIENT_ID}&response_type=code&redirect_uri={}&scope=openid%20offline_access%20api&prompt=consent&state=s1&code_challenge={challenge}&code_challenge_method=S256",
        form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    let redirect = tokio::task::spawn_blocking(move || login(&authorize, REDIRECT, "alice"))
        .await
        .unwrap();
    let code = redirect
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("code="))
        .unwrap()
        .to_owned();
    let (status, tokens) = token(
        &issuer,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let first_access = tokens["access_token"].as_str().unwrap().to_owned();
    let first_refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    // credgate holds those tokens; the access token is treated as expired.
    let vendor = FakeVendor::http().await;
    let integration = format!(
        "name: idp\nbase_urls: [ \"{}\" ]\ncredentials:\n  format: oauth2\n  client: {{ id: {CLIENT_ID}, secret: {{ from_env: IDP_CLIENT_SECRET }} }}\n  config:\n    auth: {{ tokenHost: \"{issuer}\", tokenPath: /token }}\n    options: {{ authorizationMethod: header, bodyFormat: form }}\nauthorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n",
        vendor.url()
    );
    let deployment = Deployment::with_config(&[("idp", integration)], "allow_private_upstreams: true", "");
    let mut command = deployment.command(&["serve"]);
    command.env("IDP_CLIENT_SECRET", CLIENT_SECRET);
    let server = Credgate::start(command);
    let admin = Some(deployment.admin_token.as_str());
    let body = json!({
        "id": "alice-idp", "integration": "idp",
        "credentials": { "access_token": first_access, "refresh_token": first_refresh, "expires_in": 0 }
    })
    .to_string();
    let reply = http(Method::POST, &server.admin_url("/v1/accounts"), admin, Some(&body)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    // A proxied call makes credgate refresh at the real server first.
    let (status, out) = curl_via(&server, &vendor);
    assert_eq!(status, 200, "{out}");
    let second_access = bearer(&vendor);
    assert_ne!(second_access, first_access);

    // The rotated refresh token credgate stored works: force a refresh.
    let reply = http(
        Method::POST,
        &server.admin_url("/v1/accounts/alice-idp/refresh"),
        admin,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["status"], "active");
    let (status, out) = curl_via(&server, &vendor);
    assert_eq!(status, 200, "{out}");
    let third_access = bearer(&vendor);
    assert_ne!(third_access, second_access);

    // Rotation is on: the refresh token credgate spent first is dead. (Last,
    // because oidc-provider answers reuse by revoking the whole grant, which is
    // exactly why credgate must never spend one twice.)
    let (status, answer) = token(
        &issuer,
        &[("grant_type", "refresh_token"), ("refresh_token", &first_refresh)],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "invalid_grant");
    let logs = server.kill9();
    for secret in [
        first_access.as_str(),
        first_refresh.as_str(),
        second_access.as_str(),
        CLIENT_SECRET,
    ] {
        assert!(!logs.contains(secret), "a token reached the log");
    }
}

fn curl_via(server: &Credgate, vendor: &FakeVendor) -> (u16, String) {
    curl(
        &[
            "-x",
            &server.proxy_url(),
            "-H",
            "credgate-account: alice-idp",
            &format!("{}/me", vendor.url()),
        ],
        &[],
    )
}

fn bearer(vendor: &FakeVendor) -> String {
    let request = vendor.requests().pop().unwrap();
    request.headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}
