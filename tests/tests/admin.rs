//! The real `credgate` binary, driven over its admin API and CLI.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::Stdio;

use credgate_test_support::{http, Deployment};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const STRIPE_KEY: &str = "sk_live_SECRET_0123456789_abcdefghij_9fQ2";
const HUBSPOT_ACCESS: &str = "hubspot-ACCESS-secret-token-9876543210";
const HUBSPOT_REFRESH: &str = "hubspot-REFRESH-secret-token-1234567890";

fn stripe_account(id: &str) -> String {
    json!({ "id": id, "integration": "stripe", "credentials": { "api_key": STRIPE_KEY } }).to_string()
}

fn hubspot_account(id: &str) -> String {
    json!({
        "id": id, "integration": "hubspot",
        "credentials": { "access_token": HUBSPOT_ACCESS, "refresh_token": HUBSPOT_REFRESH, "expires_in": 1800 },
        "metadata": { "portal": "42" }
    })
    .to_string()
}

#[tokio::test]
async fn accounts_survive_a_restart() {
    let deployment = Deployment::new();
    let server = deployment.start();
    let token = Some(deployment.admin_token.as_str());
    let created = http(
        Method::POST,
        &server.admin_url("/v1/accounts"),
        token,
        Some(&stripe_account("acme-stripe")),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.json()["credentials"]["api_key"], "sk_l…9fQ2");
    let created = http(
        Method::POST,
        &server.admin_url("/v1/accounts"),
        token,
        Some(&hubspot_account("acme-hubspot")),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let before = http(Method::GET, &server.admin_url("/v1/accounts/acme-hubspot"), token, None)
        .await
        .json();

    let (status, _) = server.stop();
    assert!(status.success(), "{status}");

    let server = deployment.start();
    let after = http(Method::GET, &server.admin_url("/v1/accounts/acme-hubspot"), token, None).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.json(), before);
    assert_eq!(after.json()["credentials"]["access_token"], "hubs…3210");
    assert_eq!(after.json()["metadata"]["portal"], "42");
    let list = http(Method::GET, &server.admin_url("/v1/accounts"), token, None)
        .await
        .json();
    let ids: Vec<&str> = list["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme-hubspot", "acme-stripe"]);
}

#[tokio::test]
async fn the_sqlite_file_never_contains_a_plaintext_secret() {
    let deployment = Deployment::new();
    let server = deployment.start();
    let token = Some(deployment.admin_token.as_str());
    for (i, body) in [stripe_account("s1"), hubspot_account("h1")].iter().enumerate() {
        let reply = http(Method::POST, &server.admin_url("/v1/accounts"), token, Some(body)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{i}: {}", reply.body);
    }
    // Rotate one secret too, so that old pages of the WAL are in play.
    let patch = json!({ "credentials": { "api_key": format!("{STRIPE_KEY}-v2") } }).to_string();
    let reply = http(Method::PATCH, &server.admin_url("/v1/accounts/s1"), token, Some(&patch)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    // Search while running (WAL not yet checkpointed) and after a clean stop.
    let check = || {
        let mut files = 0;
        for suffix in ["", "-wal", "-shm"] {
            let path = format!("{}{suffix}", deployment.db_path().display());
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            files += 1;
            for secret in [
                STRIPE_KEY,
                HUBSPOT_ACCESS,
                HUBSPOT_REFRESH,
                "SECRET_0123",
                "ACCESS-secret",
                "REFRESH-secret",
            ] {
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{path} contains {secret}"
                );
            }
        }
        assert!(files >= 1);
    };
    check();
    let (status, _) = server.stop();
    assert!(status.success());
    check();
}

#[tokio::test]
async fn the_admin_api_refuses_requests_without_the_token() {
    let deployment = Deployment::new();
    let server = deployment.start();
    for (method, path) in [
        (Method::GET, "/v1/accounts"),
        (Method::POST, "/v1/accounts"),
        (Method::GET, "/v1/accounts/x"),
        (Method::DELETE, "/v1/accounts/x"),
        (Method::GET, "/v1/integrations"),
    ] {
        for token in [None, Some("wrong-token"), Some("test-admin-token-012345678")] {
            let reply = http(
                method.clone(),
                &server.admin_url(path),
                token,
                Some(&stripe_account("sneaky")),
            )
            .await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{method} {path} {token:?}");
            assert_eq!(reply.json()["error"], "unauthorized");
            assert_eq!(reply.headers["www-authenticate"], "Bearer");
        }
    }
    let health = http(Method::GET, &server.admin_url("/healthz"), None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = http(Method::GET, &server.admin_url("/readyz"), None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    // Nothing was created by the refused requests.
    let list = http(
        Method::GET,
        &server.admin_url("/v1/accounts"),
        Some(&deployment.admin_token),
        None,
    )
    .await;
    assert_eq!(list.json()["accounts"], json!([]));
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_naming_the_field_and_stores_nothing() {
    let deployment = Deployment::new();
    let server = deployment.start();
    let token = Some(deployment.admin_token.as_str());
    let url = server.admin_url("/v1/accounts");
    let reply = http(Method::POST, &url, token, Some(&stripe_account("taken"))).await;
    assert_eq!(reply.status, StatusCode::CREATED);

    let cases: Vec<(String, StatusCode, &str, Option<&str>)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, "invalid_json", None),
        (
            "[1,2]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("body"),
        ),
        (
            json!({ "integration": "stripe" }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("id"),
        ),
        (
            json!({ "id": "a", "integration": "nope", "credentials": {} }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_integration",
            Some("integration"),
        ),
        (
            json!({ "id": "a", "integration": "stripe", "credentials": {} }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("credentials.api_key"),
        ),
        (
            json!({ "id": "a", "integration": "stripe", "credentials": { "api_key": "k", "password": STRIPE_KEY } })
                .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("credentials.password"),
        ),
        (
            json!({ "id": "a", "integration": "stripe", "credentials": STRIPE_KEY }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("credentials"),
        ),
        (
            json!({ "id": "a", "integration": "stripe", "credentials": { "api_key": [STRIPE_KEY] } }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("credentials.api_key"),
        ),
        (
            json!({ "id": "a", "integration": "stripe", "api_key": STRIPE_KEY }).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            Some("api_key"),
        ),
        (
            stripe_account("taken"),
            StatusCode::CONFLICT,
            "account_exists",
            Some("id"),
        ),
    ];
    for (body, status, code, field) in cases {
        let reply = http(Method::POST, &url, token, Some(&body)).await;
        assert_eq!(reply.status, status, "{body}: {}", reply.body);
        let json = reply.json();
        assert_eq!(json["error"], code, "{body}: {}", reply.body);
        assert_eq!(json["field"].as_str(), field, "{body}: {}", reply.body);
        assert!(!reply.body.contains(STRIPE_KEY), "{}", reply.body);
    }
    let missing = http(Method::GET, &server.admin_url("/v1/accounts/nobody"), token, None).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "account_not_found");

    let list = http(Method::GET, &url, token, None).await.json();
    assert_eq!(list["accounts"].as_array().unwrap().len(), 1, "{list}");
    let logs = server.kill9();
    assert!(!logs.contains(STRIPE_KEY), "a secret reached the log:\n{logs}");
}

/// Every admin operation, with debug logging on: no response body and no log line
/// carries a secret, the admin token included.
#[tokio::test]
async fn no_response_or_log_line_contains_a_secret() {
    let deployment = Deployment::new();
    let server = deployment.start();
    let token = Some(deployment.admin_token.as_str());
    let mut bodies = Vec::new();
    for body in [stripe_account("s"), hubspot_account("h")] {
        bodies.push(
            http(Method::POST, &server.admin_url("/v1/accounts"), token, Some(&body))
                .await
                .body,
        );
    }
    for path in [
        "/v1/accounts",
        "/v1/accounts/s",
        "/v1/accounts/h",
        "/v1/integrations",
        "/healthz",
        "/readyz",
    ] {
        bodies.push(http(Method::GET, &server.admin_url(path), token, None).await.body);
    }
    let patch = json!({ "credentials": { "access_token": format!("{HUBSPOT_ACCESS}-2") } }).to_string();
    bodies.push(
        http(Method::PATCH, &server.admin_url("/v1/accounts/h"), token, Some(&patch))
            .await
            .body,
    );
    bodies.push(
        http(Method::DELETE, &server.admin_url("/v1/accounts/s"), token, None)
            .await
            .body,
    );
    let (status, logs) = server.stop();
    assert!(status.success());
    assert!(logs.contains("admin request"), "request logging is on:\n{logs}");
    for secret in [
        STRIPE_KEY,
        HUBSPOT_ACCESS,
        HUBSPOT_REFRESH,
        deployment.admin_token.as_str(),
        deployment.key.as_str(),
    ] {
        for body in &bodies {
            assert!(!body.contains(secret), "response contains a secret: {body}");
        }
        assert!(!logs.contains(secret), "log contains a secret:\n{logs}");
    }
}

#[tokio::test]
async fn a_wrong_key_stops_start_up_before_anything_is_decrypted() {
    let mut deployment = Deployment::new();
    let server = deployment.start();
    let reply = http(
        Method::POST,
        &server.admin_url("/v1/accounts"),
        Some(&deployment.admin_token),
        Some(&stripe_account("s")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    server.stop();

    deployment.key = credgate_test_support::random_key();
    let output = deployment.command(&["serve"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refusing to start: key k1 does not match the key that encrypted this store"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");

    deployment.key = "not-base64!".into();
    let output = deployment.command(&["serve"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("keys: k1: malformed encryption key k1: not valid base64"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-base64!"), "{stderr}");

    let output = deployment
        .command(&["serve"])
        .env_remove("CREDGATE_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("environment variable CREDGATE_KEY is not set"),
        "{stderr}"
    );
}

/// kill -9 while writes are in flight: every write that was acknowledged is there
/// after a restart, and the database is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_write_loses_no_acknowledged_account() {
    let deployment = Deployment::new();
    let server = deployment.start();
    let url = server.admin_url("/v1/accounts");
    let token = deployment.admin_token.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for writer in 0..4 {
        let (url, token, tx) = (url.clone(), token.clone(), tx.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{writer}-{i}");
                let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
                let request = http::Request::post(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Full::new(bytes::Bytes::from(stripe_account(&id))))
                    .unwrap();
                match client.request(request).await {
                    Ok(response) if response.status() == StatusCode::CREATED => {
                        if tx.send(id).is_err() {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }
    drop(tx);
    let mut acknowledged = Vec::new();
    while acknowledged.len() < 40 {
        acknowledged.push(rx.recv().await.unwrap());
    }
    server.kill9();
    while let Ok(id) = rx.try_recv() {
        acknowledged.push(id);
    }

    let server = deployment.start();
    for id in &acknowledged {
        let reply = http(
            Method::GET,
            &server.admin_url(&format!("/v1/accounts/{id}")),
            Some(&deployment.admin_token),
            None,
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "acknowledged account {id} was lost");
    }
    server.stop();
    let db = rusqlite::Connection::open(deployment.db_path()).unwrap();
    let integrity: String = db.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(integrity, "ok");
}

#[tokio::test]
async fn the_cli_manages_accounts_with_reliable_exit_codes() {
    let deployment = Deployment::new();
    let server = deployment.start();
    let admin_url = server.admin_url("");
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut command = deployment.command(args);
        command
            .env("CREDGATE_ADMIN_URL", &admin_url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).unwrap();
        }
        drop(input);
        let output = child.wait_with_output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let credentials = json!({ "api_key": STRIPE_KEY }).to_string();
    let (code, out, err) = run(
        &["accounts", "add", "--id", "cli-1", "--integration", "stripe", "--json"],
        Some(&credentials),
    );
    assert_eq!(code, Some(0), "{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["credentials"]["api_key"], "sk_l…9fQ2");

    let (code, _, err) = run(
        &["accounts", "add", "--id", "cli-1", "--integration", "stripe"],
        Some(&credentials),
    );
    assert_eq!(code, Some(5), "{err}");
    let (code, _, err) = run(
        &["accounts", "add", "--id", "cli-2", "--integration", "stripe"],
        Some("{}"),
    );
    assert_eq!(code, Some(6), "{err}");
    assert!(err.contains("credentials.api_key"), "{err}");
    let (code, _, err) = run(
        &["accounts", "add", "--id", "cli-2", "--integration", "stripe"],
        Some(STRIPE_KEY),
    );
    assert_eq!(code, Some(6), "{err}");
    assert!(!err.contains(STRIPE_KEY), "{err}");

    let (code, out, _) = run(&["accounts", "list"], None);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.contains("cli-1") && out.contains("stripe") && out.contains("active"),
        "{out}"
    );
    let (code, out, _) = run(&["accounts", "list", "--json"], None);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().len(),
        1
    );
    let (code, out, _) = run(&["accounts", "show", "cli-1"], None);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("credentials.api_key") && out.contains("sk_l…9fQ2"),
        "{out}"
    );
    assert!(!out.contains(STRIPE_KEY));

    let (code, _, _) = run(&["accounts", "rm", "cli-1"], None);
    assert_eq!(code, Some(0));
    let (code, _, err) = run(&["accounts", "show", "cli-1"], None);
    assert_eq!(code, Some(4), "{err}");

    let mut wrong_token = deployment.command(&["accounts", "list"]);
    let output = wrong_token
        .env("CREDGATE_ADMIN_URL", &admin_url)
        .env("CREDGATE_ADMIN_TOKEN", "nope")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7));
    server.stop();
    let output = deployment
        .command(&["accounts", "list"])
        .env("CREDGATE_ADMIN_URL", &admin_url)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(7), "server is down");
}
