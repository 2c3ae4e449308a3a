//! The credential lifecycle through real processes: several credgate replicas on
//! one SQLite file and one real redis-server, a fake vendor, a fake token endpoint
//! that rotates refresh tokens, and a webhook receiver.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use credgate_crypto::SecretString;
use credgate_engine::webhooks::Endpoint;
use credgate_test_support::{
    curl, http, Answer, Credgate, Deployment, FakeTokenEndpoint, FakeVendor, Fault, RedisServer,
};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Lifecycle {
    vendor: FakeVendor,
    endpoint: FakeTokenEndpoint,
    receiver: FakeVendor,
    deployment: Deployment,
    _redis: RedisServer,
}

/// `overrides` replace the test defaults of the `refresh:` block.
async fn lifecycle(overrides: &[(&str, &str)]) -> Lifecycle {
    let mut settings = vec![
        ("lock_ttl", "3s"),
        ("token_timeout", "2s"),
        ("backoff_base", "200ms"),
        ("backoff_max", "2s"),
        ("tick", "100ms"),
    ];
    for (key, value) in overrides {
        settings.retain(|(k, _)| k != key);
        settings.push((key, value));
    }
    let refresh: Vec<String> = settings.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let refresh = refresh.join(", ");
    let vendor = FakeVendor::http().await;
    let endpoint = FakeTokenEndpoint::start().await;
    let receiver = FakeVendor::http().await;
    let redis = RedisServer::start();
    let integration = format!(
        "name: crm\nbase_urls: [ \"{}\" ]\ncredentials:\n  format: oauth2\n  client: {{ id: test-client }}\n  config:\n    auth: {{ tokenHost: \"{}\", tokenPath: /oauth/token }}\n    options: {{ authorizationMethod: body }}\nauthorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n",
        vendor.url(),
        endpoint.host()
    );
    let extra = format!(
        "redis: {{ url: \"{}\" }}\nrefresh: {{ {refresh} }}\nwebhooks: [ {{ url: \"{}/hooks\", secret: {{ from_env: TEST_WEBHOOK_SECRET }} }} ]\n",
        redis.url(),
        receiver.url()
    );
    let deployment = Deployment::with_config(&[("crm", integration)], "allow_private_upstreams: true", &extra);
    Lifecycle {
        vendor,
        endpoint,
        receiver,
        deployment,
        _redis: redis,
    }
}

impl Lifecycle {
    fn start(&self) -> Credgate {
        let mut command = self.deployment.command(&["serve"]);
        command.env("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET);
        Credgate::start(command)
    }

    async fn create(&self, server: &Credgate, id: &str, refresh_token: &str, expires_in: i64) {
        let body = json!({
            "id": id, "integration": "crm",
            "credentials": { "access_token": "at-0", "refresh_token": refresh_token, "expires_in": expires_in }
        })
        .to_string();
        let reply = http(
            Method::POST,
            &server.admin_url("/v1/accounts"),
            Some(&self.deployment.admin_token),
            Some(&body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }

    async fn account(&self, server: &Credgate, id: &str) -> Value {
        http(
            Method::GET,
            &server.admin_url(&format!("/v1/accounts/{id}")),
            Some(&self.deployment.admin_token),
            None,
        )
        .await
        .json()
    }

    /// Webhook deliveries whose signature verifies, as (id, type).
    fn webhooks(&self) -> Vec<(String, String)> {
        let endpoint = Endpoint::new(String::new(), &SecretString::new(WEBHOOK_SECRET));
        self.receiver
            .requests()
            .into_iter()
            .map(|r| {
                let id = r.headers["webhook-id"].to_str().unwrap().to_owned();
                let timestamp: i64 = r.headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
                let signature = r.headers["webhook-signature"].to_str().unwrap();
                assert_eq!(
                    signature,
                    endpoint.sign(&id, timestamp, &r.body),
                    "bad signature on {id}"
                );
                let payload: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(payload["id"], id.as_str());
                (id, payload["type"].as_str().unwrap().to_owned())
            })
            .collect()
    }
}

async fn proxied(client: &HyperClient, proxy: &str, vendor_port: u16, account: &str) -> (StatusCode, String) {
    let request = http::Request::get(format!("{proxy}/v1/data"))
        .header("host", format!("127.0.0.1:{vendor_port}"))
        .header("credgate-account", account)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .unwrap()
        .unwrap();
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

type HyperClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<Bytes>,
>;

fn client() -> HyperClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Three replicas, one store, one Redis; 500 concurrent requests on an expired
/// token: exactly one refresh, and every request reaches the vendor with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_refresh_an_expired_token_exactly_once() {
    let l = lifecycle(&[]).await;
    l.endpoint.seed("rt-0");
    let replicas = [l.start(), l.start(), l.start()];
    l.create(&replicas[0], "acme", "rt-0", 0).await;
    let client = client();
    let mut requests = Vec::new();
    for i in 0..500 {
        let (client, proxy, port) = (client.clone(), replicas[i % 3].proxy_url(), l.vendor.port());
        requests.push(tokio::spawn(
            async move { proxied(&client, &proxy, port, "acme").await },
        ));
    }
    for request in requests {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(l.endpoint.count("refresh_token"), 1, "{:?}", l.endpoint.calls());
    let seen = l.vendor.requests();
    assert_eq!(seen.len(), 500);
    assert!(seen.iter().all(|r| r.headers["authorization"] == "Bearer at-1"));
    let account = l.account(&replicas[1], "acme").await;
    assert_eq!(account["status"], "active");
    assert!(account["last_refreshed_at"].is_string());
}

/// The replica holding the lock dies mid-refresh: after the lock expires another
/// replica completes the refresh; nobody declares needs_reauth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_lock_holder_mid_refresh_is_survived() {
    let l = lifecycle(&[]).await;
    l.endpoint.seed("rt-0");
    l.endpoint.fail_next([Fault::Hang]);
    let a = l.start();
    // Registered before the refresh can arrive, so its notification is not missed.
    let arrived = l.endpoint.arrived.notified();
    tokio::pin!(arrived);
    arrived.as_mut().enable();
    l.create(&a, "acme", "rt-0", 0).await;
    // a's scheduler (or this request) takes the lock and hangs at the vendor.
    let client = client();
    let (proxy, port) = (a.proxy_url(), l.vendor.port());
    let first = tokio::spawn({
        let client = client.clone();
        async move { proxied(&client, &proxy, port, "acme").await }
    });
    tokio::time::timeout(Duration::from_secs(20), arrived)
        .await
        .expect("the refresh reached the token endpoint");
    a.kill9();
    let _ = first.await;

    let b = l.start();
    let started = Instant::now();
    let (status, body) = proxied(&client, &b.proxy_url(), l.vendor.port(), "acme").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        l.vendor.requests().pop().unwrap().headers["authorization"],
        "Bearer at-1"
    );
    assert_eq!(l.endpoint.count("refresh_token"), 2);
    assert!(started.elapsed() < Duration::from_secs(15));
    let account = l.account(&b, "acme").await;
    assert_eq!(account["status"], "active", "{account}");
}

/// invalid_grant: needs_reauth once, exactly one signed webhook, no further token
/// calls; new credentials: active again with one `reactivated` webhook.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_then_reconnect() {
    let l = lifecycle(&[]).await;
    let replicas = [l.start(), l.start()];
    l.create(&replicas[0], "acme", "rt-revoked", 0).await;
    let client = client();
    for i in 0..10 {
        let (status, body) = proxied(&client, &replicas[i % 2].proxy_url(), l.vendor.port(), "acme").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body.contains("needs_reauth"), "{body}");
    }
    assert!(
        l.vendor.requests().is_empty(),
        "a needs_reauth account never reaches the vendor"
    );
    assert_eq!(l.endpoint.count("refresh_token"), 1);
    let delivered = credgate_test_support::eventually(Duration::from_secs(15), || async {
        l.webhooks()
            .iter()
            .any(|(_, kind)| kind == "integrated_account:authentication_error")
    })
    .await;
    assert!(delivered);
    let account = l.account(&replicas[1], "acme").await;
    assert_eq!(account["status"], "needs_reauth");

    l.endpoint.seed("rt-fresh");
    let patch =
        json!({ "credentials": { "access_token": "at-reconnected", "refresh_token": "rt-fresh", "expires_in": 3600 } })
            .to_string();
    let reply = http(
        Method::PATCH,
        &replicas[1].admin_url("/v1/accounts/acme"),
        Some(&l.deployment.admin_token),
        Some(&patch),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.json()["status"], "active");
    // Both replicas serve the new token: replica 1 at once, replica 0 as soon as
    // the change reaches it over Redis pub/sub (milliseconds; polled here).
    let (status, _) = proxied(&client, &replicas[1].proxy_url(), l.vendor.port(), "acme").await;
    assert_eq!(status, StatusCode::OK);
    let followed = credgate_test_support::eventually(Duration::from_secs(5), || async {
        proxied(&client, &replicas[0].proxy_url(), l.vendor.port(), "acme")
            .await
            .0
            == StatusCode::OK
    })
    .await;
    assert!(followed, "replica 0 kept a stale cached account");
    assert!(l
        .vendor
        .requests()
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer at-reconnected"));
    let reactivated = credgate_test_support::eventually(Duration::from_secs(15), || async {
        l.webhooks()
            .iter()
            .any(|(_, kind)| kind == "integrated_account:reactivated")
    })
    .await;
    assert!(reactivated);
    let hooks = l.webhooks();
    let distinct: HashSet<&str> = hooks.iter().map(|(id, _)| id.as_str()).collect();
    let count = |kind: &str| {
        hooks
            .iter()
            .filter(|(_, k)| k == kind)
            .map(|(id, _)| id)
            .collect::<HashSet<_>>()
            .len()
    };
    assert_eq!(count("integrated_account:authentication_error"), 1, "{hooks:?}");
    assert_eq!(count("integrated_account:reactivated"), 1, "{hooks:?}");
    assert_eq!(count("integrated_account:created"), 1, "{hooks:?}");
    assert_eq!(distinct.len(), 3, "{hooks:?}");
}

/// A receiver that is down gets every event once it is back, signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_survive_a_receiver_outage() {
    let l = lifecycle(&[]).await;
    l.receiver.answer(Answer::Fixed {
        status: StatusCode::SERVICE_UNAVAILABLE,
        headers: vec![],
        body: String::new(),
    });
    let server = l.start();
    for i in 0..5 {
        l.create(&server, &format!("acct-{i}"), "rt-x", 3600).await;
    }
    let token = Some(l.deployment.admin_token.as_str());
    let reply = http(Method::DELETE, &server.admin_url("/v1/accounts/acct-0"), token, None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let retried =
        credgate_test_support::eventually(Duration::from_secs(15), || async { l.receiver.requests().len() >= 12 })
            .await;
    assert!(retried, "deliveries were not retried: {}", l.receiver.requests().len());
    l.receiver.answer(Answer::ok("{}"));
    let all = credgate_test_support::eventually(Duration::from_secs(30), || async {
        let delivered: HashSet<String> = l.webhooks().into_iter().map(|(id, _)| id).collect();
        // 5 created + 1 deleted
        delivered.len() == 6 && {
            let reply = http(Method::GET, &server.admin_url("/healthz"), None, None).await;
            reply.status == StatusCode::OK
        }
    })
    .await;
    assert!(all);
    let kinds: Vec<String> = l.webhooks().into_iter().map(|(_, kind)| kind).collect();
    assert!(kinds.contains(&"integrated_account:deleted".to_owned()), "{kinds:?}");
}

/// With short-lived tokens the scheduler replaces each before it expires: no
/// request ever reaches the vendor with an expired token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proactive_refresh_keeps_short_lived_tokens_fresh() {
    let l = lifecycle(&[("skew", "0s")]).await;
    l.endpoint.seed("rt-0");
    l.endpoint.set_expires_in(Some(json!(4)));
    let server = l.start();
    let created = Instant::now();
    l.create(&server, "acme", "rt-0", 4).await;
    let client = client();
    let mut issued = vec![(0u64, created)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (status, body) = proxied(&client, &server.proxy_url(), l.vendor.port(), "acme").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await; // request pacing, not synchronisation
    }
    for (n, call) in l.endpoint.calls().iter().enumerate() {
        issued.push((n as u64 + 1, call.at));
    }
    assert!(issued.len() >= 4, "only {} refreshes in 10 s", issued.len() - 1);
    for request in l.vendor.requests() {
        let token = request.headers["authorization"]
            .to_str()
            .unwrap()
            .trim_start_matches("Bearer at-")
            .parse::<u64>()
            .unwrap();
        let (_, at) = issued.iter().find(|(n, _)| *n == token).unwrap();
        assert!(
            request.at < *at + Duration::from_secs(4),
            "at-{token} used after it expired"
        );
    }
}

/// The vendor refuses a token credgate believed fresh: one forced refresh, and the
/// request (its small body kept) is replayed once with the new token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_401_forces_one_refresh_and_one_replay() {
    let l = lifecycle(&[]).await;
    l.endpoint.seed("rt-0");
    let server = l.start();
    l.create(&server, "acme", "rt-0", 3600).await;
    l.vendor.answer_once(Answer::Fixed {
        status: StatusCode::UNAUTHORIZED,
        headers: vec![],
        body: "{\"error\":\"expired\"}".into(),
    });
    let (status, out) = curl(
        &[
            "-x",
            &server.proxy_url(),
            "-H",
            "credgate-account: acme",
            "-H",
            "content-type: application/json",
            "--data",
            "{\"name\":\"widget\"}",
            &format!("{}/v1/items", l.vendor.url()),
        ],
        &[],
    );
    assert_eq!(status, 200, "{out}");
    let seen = l.vendor.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["authorization"], "Bearer at-0");
    assert_eq!(seen[1].headers["authorization"], "Bearer at-1");
    assert_eq!(seen[1].body, b"{\"name\":\"widget\"}");
    assert_eq!(l.endpoint.count("refresh_token"), 1);

    // A 401 to the token just refreshed is the vendor's answer: passed through.
    l.vendor.answer(Answer::Fixed {
        status: StatusCode::UNAUTHORIZED,
        headers: vec![],
        body: "{}".into(),
    });
    let client = client();
    let (status, _) = proxied(&client, &server.proxy_url(), l.vendor.port(), "acme").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        l.endpoint.count("refresh_token") <= 2,
        "at most one more forced refresh"
    );
}

/// The token has expired and the token endpoint is down: 503 with Retry-After,
/// and requests do not hammer the endpoint while it backs off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_while_the_vendor_is_down_is_503_with_retry_after() {
    let l = lifecycle(&[("backoff_base", "5s"), ("backoff_max", "60s")]).await;
    l.endpoint.seed("rt-0");
    l.endpoint.fail_next(std::iter::repeat_n(Fault::Status(503), 50));
    let server = l.start();
    l.create(&server, "acme", "rt-0", 0).await;
    let (_, out) = curl(
        &[
            "-x",
            &server.proxy_url(),
            "-H",
            "credgate-account: acme",
            &format!("{}/v1/items", l.vendor.url()),
        ],
        &[],
    );
    let out = out.to_ascii_lowercase();
    assert!(out.starts_with("http/1.1 503"), "{out}");
    assert!(out.contains("credgate-error: refresh_unavailable"), "{out}");
    let retry_after: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{out}");
    let calls = l.endpoint.count("refresh_token");
    let client = client();
    for _ in 0..20 {
        let (status, _) = proxied(&client, &server.proxy_url(), l.vendor.port(), "acme").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        l.endpoint.count("refresh_token"),
        calls,
        "requests during backoff reached the token endpoint"
    );
    assert!(l.vendor.requests().is_empty());
    assert_eq!(l.account(&server, "acme").await["status"], "active");
}
