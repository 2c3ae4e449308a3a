//! The data path end to end: real clients (curl, Python requests, hyper) through the
//! real binary to a fake vendor that records exactly what arrived.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use credgate_proxy::appkeys::digest_hex;
use credgate_test_support::{curl, http, Answer, Credgate, Deployment, FakeVendor};
use http::{Method, StatusCode};
use serde_json::json;

const BILLING_KEY: &str = "billing-app-key-123";
const OTHER_KEY: &str = "other-app-key-456";
const SECRET: &str = "sk_test_SECRET_abcdefghijklmnop";

fn integration(name: &str, base: &str, authorization: &str, credentials: &str) -> (String, String) {
    (
        name.to_owned(),
        format!(
            "name: {name}\nbase_urls: [ \"{base}\" ]\ncredentials: {credentials}\nauthorization: {authorization}\n"
        ),
    )
}

/// A vendor over HTTP and one over HTTPS, with one integration per authorization
/// format, app keys, and accounts created through the admin API.
struct World {
    vendor: FakeVendor,
    tls_vendor: FakeVendor,
    deployment: Deployment,
    server: Credgate,
}

async fn world(proxy_settings: &str) -> World {
    let vendor = FakeVendor::http().await;
    let tls_vendor = FakeVendor::https().await;
    let api_key = "{ format: api_key }";
    let integrations = [
        integration(
            "vendor-bearer",
            &vendor.url(),
            "{ format: bearer, config: { path: api_key } }",
            api_key,
        ),
        integration(
            "vendor-header",
            &vendor.url(),
            "{ format: header, config: { name: X-Api-Key, value: \"key={{api_key}}\" } }",
            api_key,
        ),
        integration("vendor-basic", &vendor.url(), "{ format: basic }", "{ format: basic }"),
        integration(
            "vendor-query",
            &format!("{}/v1", vendor.url()),
            "{ format: query, config: { name: api_key, value: \"{{api_key}}\" } }",
            api_key,
        ),
        integration(
            "vendor-tls",
            &tls_vendor.url(),
            "{ format: bearer, config: { path: api_key } }",
            api_key,
        ),
    ];
    let refs: Vec<(&str, String)> = integrations.iter().map(|(n, y)| (n.as_str(), y.clone())).collect();
    let settings = format!(
        "extra_ca_file: ca.pem, app_keys: [ \
           {{ name: billing, sha256: \"{}\", accounts: [acme-bearer, acme-header, acme-basic, acme-query, acme-tls] }}, \
           {{ name: other, sha256: \"{}\", accounts: [other-acct] }} ]{proxy_settings}",
        digest_hex(BILLING_KEY),
        digest_hex(OTHER_KEY),
    );
    let deployment = Deployment::with_integrations(&refs, &settings);
    std::fs::write(
        deployment.dir.path().join("ca.pem"),
        tls_vendor.ca_pem.as_ref().unwrap(),
    )
    .unwrap();
    let server = deployment.start();
    for (id, integration, credentials) in [
        ("acme-bearer", "vendor-bearer", json!({ "api_key": SECRET })),
        ("acme-header", "vendor-header", json!({ "api_key": SECRET })),
        (
            "acme-basic",
            "vendor-basic",
            json!({ "username": "acme", "password": SECRET }),
        ),
        ("acme-query", "vendor-query", json!({ "api_key": SECRET })),
        ("acme-tls", "vendor-tls", json!({ "api_key": SECRET })),
        ("other-acct", "vendor-bearer", json!({ "api_key": "other-secret" })),
    ] {
        let body = json!({ "id": id, "integration": integration, "credentials": credentials }).to_string();
        let reply = http(
            Method::POST,
            &server.admin_url("/v1/accounts"),
            Some(&deployment.admin_token),
            Some(&body),
        )
        .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    World {
        vendor,
        tls_vendor,
        deployment,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_injected_and_proxy_headers_never_reach_the_vendor() {
    let w = world(", allow_private_upstreams: true").await;
    let proxy = w.server.proxy_url();

    // curl -x with the account as proxy user: absolute-form, Proxy-Authorization.
    let url = format!("{}/v1/things?x=1", w.vendor.url());
    let (status, out) = curl(
        &[
            "-x",
            &proxy,
            "-U",
            &format!("acme-bearer:{BILLING_KEY}"),
            "-H",
            "Authorization: Bearer the-apps-own-token",
            "-H",
            "Connection: x-hop",
            "-H",
            "X-Hop: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "credgate-trace: 1",
            "-H",
            "Accept: application/json",
            &url,
        ],
        &[],
    );
    assert_eq!(status, 200, "{out}");
    let seen = w.vendor.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.uri, "/v1/things?x=1");
    assert_eq!(r.headers["authorization"], format!("Bearer {SECRET}"));
    assert_eq!(r.headers["accept"], "application/json");
    for gone in [
        "proxy-authorization",
        "proxy-connection",
        "keep-alive",
        "x-hop",
        "credgate-trace",
        "credgate-account",
    ] {
        assert!(
            !r.headers.contains_key(gone),
            "{gone} reached the vendor: {:?}",
            r.headers
        );
    }

    // http_proxy=http://account:key@host:port with an unmodified curl.
    let env_proxy = format!("http://acme-header:{BILLING_KEY}@{}", w.server.proxy_addr);
    let (status, out) = curl(
        &[&format!("{}/v2/items", w.vendor.url())],
        &[("http_proxy", &env_proxy)],
    );
    assert_eq!(status, 200, "{out}");
    let r = w.vendor.requests().pop().unwrap();
    assert_eq!(r.headers["x-api-key"], format!("key={SECRET}"));
    assert!(!r.headers.contains_key("authorization"));

    // Origin-form with Host and the credgate-account header; query injection.
    let (status, out) = curl(
        &[
            "-H",
            &format!("Host: 127.0.0.1:{}", w.vendor.port()),
            "-H",
            "credgate-account: acme-query",
            "-H",
            &format!("credgate-app-key: {BILLING_KEY}"),
            &format!("{proxy}/v1/search?q=a%20b"),
        ],
        &[],
    );
    assert_eq!(status, 200, "{out}");
    let r = w.vendor.requests().pop().unwrap();
    assert_eq!(r.uri, format!("/v1/search?q=a%20b&api_key={SECRET}"));

    // Python requests with a proxies dict; basic auth replaces the app's header.
    let script = r#"
import sys, requests
r = requests.get(sys.argv[1], proxies={"http": sys.argv[2]}, headers={"Authorization": "Bearer app"}, timeout=30)
print(r.status_code)
"#;
    let py_proxy = format!("http://acme-basic:{BILLING_KEY}@{}", w.server.proxy_addr);
    let output = Command::new("python3")
        .args(["-c", script, &format!("{}/basic", w.vendor.url()), &py_proxy])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("python3 with requests must be installed (see README prerequisites)");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r = w.vendor.requests().pop().unwrap();
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("acme:{SECRET}"));
    assert_eq!(r.headers["authorization"], format!("Basic {expected}"));

    // http:// to an integration declared https:// is originated over TLS and the
    // vendor's certificate (from the test CA) is verified.
    let (status, out) = curl(
        &[
            "-x",
            &proxy,
            "-U",
            &format!("acme-tls:{BILLING_KEY}"),
            &format!("http://localhost:{}/secure", w.tls_vendor.port()),
        ],
        &[],
    );
    assert_eq!(status, 200, "{out}");
    let r = w.tls_vendor.requests().pop().unwrap();
    assert_eq!(r.headers["authorization"], format!("Bearer {SECRET}"));

    let logs = w.server.kill9();
    assert!(!logs.contains(SECRET), "a secret reached the log");
    drop(w.deployment);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_credgate_errors_and_the_vendor_sees_nothing() {
    // Private upstreams allowed, so that only the refusal under test stands
    // between the request and the (loopback) vendor.
    let w = world(", allow_private_upstreams: true").await;
    let proxy = w.server.proxy_url();
    let user = |account: &str, key: &str| format!("{account}:{key}");
    let vendor_url = format!("{}/v1/x", w.vendor.url());
    let cases: Vec<(Vec<String>, u16, &str)> = vec![
        (
            vec![
                "-U".into(),
                user("acme-bearer", BILLING_KEY),
                "http://example.com/v1/x".into(),
            ],
            403,
            "host_not_allowed",
        ),
        (
            vec![
                "-U".into(),
                user("acme-bearer", BILLING_KEY),
                format!("http://localhost:{}/v1/x", w.vendor.port()),
            ],
            403,
            "host_not_allowed",
        ),
        (
            vec![
                "-U".into(),
                user("acme-query", BILLING_KEY),
                format!("{}/v2/outside-base-path", w.vendor.url()),
            ],
            403,
            "host_not_allowed",
        ),
        (
            vec!["-U".into(), user("nobody", BILLING_KEY), vendor_url.clone()],
            404,
            "account_not_found",
        ),
        (
            vec!["-U".into(), user("other-acct", BILLING_KEY), vendor_url.clone()],
            404,
            "account_not_found",
        ),
        (
            vec!["-U".into(), user("acme-bearer", OTHER_KEY), vendor_url.clone()],
            404,
            "account_not_found",
        ),
        (
            vec!["-U".into(), user("acme-bearer", "wrong-key"), vendor_url.clone()],
            407,
            "proxy_auth_required",
        ),
        (vec![vendor_url.clone()], 407, "proxy_auth_required"),
        (
            vec![
                "-U".into(),
                user("acme-bearer", BILLING_KEY),
                format!("{}/a/../admin", w.vendor.url()),
                "--path-as-is".into(),
            ],
            400,
            "bad_request",
        ),
    ];
    for (args, status, code) in cases {
        let mut full = vec!["-x".to_owned(), proxy.clone()];
        full.extend(args.clone());
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let (got, out) = curl(&refs, &[]);
        assert_eq!(got, status, "{args:?}: {out}");
        assert!(
            out.to_ascii_lowercase().contains(&format!("credgate-error: {code}")),
            "{args:?}: {out}"
        );
        assert!(out.contains(&format!("\"error\":\"{code}\"")), "{args:?}: {out}");
        if status == 407 {
            assert!(
                out.to_ascii_lowercase()
                    .contains("proxy-authenticate: basic realm=\"credgate\""),
                "{out}"
            );
        }
    }
    // CONNECT (what HTTPS_PROXY clients send) is refused with a clear code.
    let (status, out) = curl(
        &[
            "-x",
            &proxy,
            "-U",
            &user("acme-tls", BILLING_KEY),
            "-p",
            &format!("https://localhost:{}/", w.tls_vendor.port()),
        ],
        &[],
    );
    assert!(
        out.contains("405")
            && out
                .to_ascii_lowercase()
                .contains("credgate-error: connect_not_supported"),
        "{status} {out}"
    );
    assert!(w.vendor.requests().is_empty(), "{:?}", w.vendor.requests());
    assert!(w.tls_vendor.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_upstreams_are_refused_after_dns_unless_allowed() {
    let w = world("").await;
    // The world allows nothing private by default: its vendors are on loopback.
    for url in [
        format!("{}/v1/x", w.vendor.url()),
        format!("http://localhost:{}/secure", w.tls_vendor.port()),
    ] {
        let account = if url.contains("localhost") {
            "acme-tls"
        } else {
            "acme-bearer"
        };
        let (status, out) = curl(
            &[
                "-x",
                &w.server.proxy_url(),
                "-U",
                &format!("{account}:{BILLING_KEY}"),
                &url,
            ],
            &[],
        );
        assert_eq!(status, 403, "{out}");
        assert!(out.contains("private address"), "{out}");
    }
    assert!(w.vendor.requests().is_empty());
    assert!(w.tls_vendor.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_normalized_and_a_429_passes_through_once() {
    let w = world(", allow_private_upstreams: true").await;
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 30;
    w.vendor.answer(Answer::Fixed {
        status: StatusCode::TOO_MANY_REQUESTS,
        headers: vec![
            ("x-ratelimit-limit".into(), "5000".into()),
            ("x-ratelimit-remaining".into(), "0".into()),
            ("x-ratelimit-reset".into(), reset.to_string()),
        ],
        body: "{\"message\":\"slow down\"}".into(),
    });
    let (status, out) = curl(
        &[
            "-x",
            &w.server.proxy_url(),
            "-U",
            &format!("acme-bearer:{BILLING_KEY}"),
            &format!("{}/v1/x", w.vendor.url()),
        ],
        &[],
    );
    assert_eq!(status, 429, "{out}");
    let lower = out.to_ascii_lowercase();
    assert!(lower.contains("ratelimit-limit: 5000"), "{out}");
    assert!(lower.contains("ratelimit-remaining: 0"), "{out}");
    let header = |name: &str| -> u64 {
        lower
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!((28..=31).contains(&header("ratelimit-reset")), "{out}");
    assert_eq!(header("retry-after"), header("ratelimit-reset"));
    assert!(out.contains("slow down"), "the vendor's body passes through: {out}");
    assert!(!lower.contains("credgate-error"), "{out}");
    assert_eq!(w.vendor.requests().len(), 1, "a 429 is never retried inside the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_reach_the_proxy_at_once() {
    let w = world(", allow_private_upstreams: true").await;
    let args = |_: ()| {
        vec![
            "-x".to_owned(),
            w.server.proxy_url(),
            "-U".into(),
            format!("acme-bearer:{BILLING_KEY}"),
            format!("{}/v1/x", w.vendor.url()),
        ]
    };
    let run = |a: Vec<String>| curl(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert_eq!(run(args(())).0, 200);
    let patch = json!({ "credentials": { "api_key": "sk_rotated_0000000000" } }).to_string();
    let token = Some(w.deployment.admin_token.as_str());
    let reply = http(
        Method::PATCH,
        &w.server.admin_url("/v1/accounts/acme-bearer"),
        token,
        Some(&patch),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(run(args(())).0, 200);
    assert_eq!(
        w.vendor.requests().pop().unwrap().headers["authorization"],
        "Bearer sk_rotated_0000000000"
    );
    let reply = http(
        Method::DELETE,
        &w.server.admin_url("/v1/accounts/acme-bearer"),
        token,
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(run(args(())).0, 404);
    assert_eq!(w.vendor.requests().len(), 2);
}

/// 200 MB each way through the proxy while its peak resident memory stays under
/// 64 MB: bodies stream, they are never buffered whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_in_bounded_memory() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    const SIZE: u64 = 200 * 1024 * 1024;
    let w = world(", allow_private_upstreams: true").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>>();
    let request = |body| {
        http::Request::post(format!("{}/v1/upload", w.server.proxy_url()))
            .header("host", format!("127.0.0.1:{}", w.vendor.port()))
            .header("credgate-account", "acme-bearer")
            .header("credgate-app-key", BILLING_KEY)
            .body(body)
            .unwrap()
    };

    // Upload: 3,200 chunks of 64 KiB, generated lazily.
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let frames = futures_util::stream::iter((0..SIZE / (64 * 1024)).map(move |_| Ok(Frame::data(chunk.clone()))));
    let response = client.request(request(StreamBody::new(frames).boxed())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(w.vendor.requests().pop().unwrap().body_len, SIZE);

    // Download.
    w.vendor.answer(Answer::Stream { bytes: SIZE });
    let empty = http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed();
    let response = client.request(request(empty)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);
    let peak = w.server.peak_rss_kib();
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    eprintln!("credgate peak RSS after 2 x 200 MB: {} MiB", peak / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world(", header_read_timeout: 1s, max_header_bytes: 16384").await;
    // A 100 KiB header: refused, connection closed.
    let mut stream = tokio::net::TcpStream::connect(&w.server.proxy_addr).await.unwrap();
    let big = format!(
        "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let _ = stream.write_all(big.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

    // A client that never finishes its head is disconnected by the header timeout.
    let mut slow = tokio::net::TcpStream::connect(&w.server.proxy_addr).await.unwrap();
    slow.write_all(b"GET http://example.com/ HTTP/1.1\r\nHost: exa")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the slow client was not disconnected");
}

/// A client that opens a large download and stops reading is dropped once its
/// response has waited `header_read_timeout` for it, instead of holding a
/// connection (and the vendor's behind it) for as long as it likes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: u64 = 1024 * 1024 * 1024;
    let w = world(", allow_private_upstreams: true, header_read_timeout: 1s").await;
    w.vendor.answer(Answer::Stream { bytes: SIZE });
    let mut client = tokio::net::TcpStream::connect(&w.server.proxy_addr).await.unwrap();
    let head = format!(
        "GET /v1/export HTTP/1.1\r\nHost: 127.0.0.1:{}\r\ncredgate-account: acme-bearer\r\n\
         credgate-app-key: {BILLING_KEY}\r\n\r\n",
        w.vendor.port()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    // The behaviour under test: the client reads nothing for three timeouts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the connection was still open");
    let received = received.len() as u64;
    assert!(
        received < SIZE / 8,
        "{received} bytes arrived: the stalled response was not cut off"
    );
    assert!(
        w.server.logs().contains("the client stopped reading its response"),
        "{}",
        w.server.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    let w = world(", allow_private_upstreams: true").await;
    let arrived = std::sync::Arc::new(tokio::sync::Notify::new());
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    w.vendor.answer(Answer::Held {
        arrived: arrived.clone(),
        release: release.clone(),
    });
    let proxy = w.server.proxy_url();
    let url = format!("{}/v1/slow", w.vendor.url());
    let request = tokio::task::spawn_blocking(move || {
        curl(&["-x", &proxy, "-U", &format!("acme-bearer:{BILLING_KEY}"), &url], &[])
    });
    tokio::time::timeout(Duration::from_secs(30), arrived.notified())
        .await
        .expect("request reached the vendor");
    let pid = w.server.pid();
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    // The listener closes at once; the request in flight is still answered.
    let closed = credgate_test_support::eventually(Duration::from_secs(10), || {
        let addr = w.server.proxy_addr.clone();
        async move { tokio::net::TcpStream::connect(addr).await.is_err() }
    })
    .await;
    assert!(closed, "the proxy kept accepting after SIGTERM");
    release.notify_one();
    let (code, out) = request.await.unwrap();
    assert_eq!(code, 200, "{out}");
    assert!(out.contains("slow"), "{out}");
    let (exit, logs) = w.server.stop();
    assert!(exit.success(), "{exit}: {logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_forwards_without_credentials_and_tunnels_listed_hosts() {
    let w = world(", allow_private_upstreams: true, passthrough: true").await;
    let proxy = w.server.proxy_url();
    // No account: forwarded untouched, nothing injected.
    let (status, out) = curl(
        &[
            "-x",
            &proxy,
            "-U",
            &format!(":{BILLING_KEY}"),
            "-H",
            "Authorization: Bearer apps-own",
            &format!("{}/open", w.vendor.url()),
        ],
        &[],
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        w.vendor.requests().pop().unwrap().headers["authorization"],
        "Bearer apps-own"
    );

    // CONNECT to a host some integration lists: a plain tunnel, TLS end to end.
    let ca = w.deployment.dir.path().join("ca.pem");
    let (status, out) = curl(
        &[
            "-x",
            &proxy,
            "-U",
            &format!(":{BILLING_KEY}"),
            "-p",
            "--cacert",
            ca.to_str().unwrap(),
            &format!("https://localhost:{}/tunnelled", w.tls_vendor.port()),
        ],
        &[],
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(w.tls_vendor.requests().pop().unwrap().uri, "/tunnelled");
    // CONNECT elsewhere is refused.
    let (_, out) = curl(
        &[
            "-x",
            &proxy,
            "-U",
            &format!(":{BILLING_KEY}"),
            "-p",
            "https://example.com/",
        ],
        &[],
    );
    assert!(
        out.contains("403") && out.to_ascii_lowercase().contains("credgate-error: host_not_allowed"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_works() {
    let w = world(", allow_private_upstreams: true").await;
    let (status, out) = curl(
        &[
            "--http2-prior-knowledge",
            "-H",
            &format!("Host: 127.0.0.1:{}", w.vendor.port()),
            "-H",
            "credgate-account: acme-bearer",
            "-H",
            &format!("credgate-app-key: {BILLING_KEY}"),
            &format!("{}/v1/h2", w.server.proxy_url()),
        ],
        &[],
    );
    assert_eq!(status, 200, "{out}");
    assert!(out.starts_with("HTTP/2 200"), "{out}");
    assert_eq!(
        w.vendor.requests().pop().unwrap().headers["authorization"],
        format!("Bearer {SECRET}")
    );
}
