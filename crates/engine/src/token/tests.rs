use super::*;
use credgate_test_support::{FakeTokenEndpoint, Fault};
use serde_json::{json, Map, Value};

pub(crate) fn integration(yaml: &str) -> Integration {
    let dir = tempfile::tempdir().unwrap();
    let name = yaml.lines().find_map(|l| l.strip_prefix("name: ")).unwrap().trim();
    let path = dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    credgate_config::load_integration(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn oauth(token_host: &str, options: &str, extra: &str) -> Integration {
    integration(&format!(
        "name: v\nbase_urls: [ \"https://api.example.com\" ]\ncredentials:\n  format: oauth2\n  client: {{ id: my-client, secret: {{ from_env: X }} }}\n  config:\n    auth: {{ tokenHost: \"{token_host}\", tokenPath: /oauth/token }}\n    scope: [ a, b ]\n    options: {options}\n{extra}authorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n"
    ))
}

const NOW: i64 = 1_800_000_000_000;

fn parse(integration: &Integration, status: u16, body: serde_json::Value) -> Result<Tokens, TokenError> {
    parse_response(
        integration,
        StatusCode::from_u16(status).unwrap(),
        None,
        body.to_string().as_bytes(),
        NOW,
    )
}

fn jwt(exp: i64) -> String {
    let claims = URL_SAFE_NO_PAD.encode(json!({ "sub": "x", "exp": exp }).to_string());
    format!("eyJhbGciOiJub25lIn0.{claims}.sig")
}

#[test]
fn expiry_in_all_its_shapes() {
    let seconds = oauth("https://t.example.com", "{}", "");
    let millis = oauth("https://t.example.com", "{}", "  expires_in_unit: milliseconds\n");
    let ttl = oauth("https://t.example.com", "{}", "  default_ttl: 2h\n");
    let at = |i: &Integration, body| parse(i, 200, body).unwrap().expires_at;
    assert_eq!(
        at(&seconds, json!({ "access_token": "t", "expires_in": 1800 })),
        Some(NOW + 1_800_000)
    );
    assert_eq!(
        at(&seconds, json!({ "access_token": "t", "expires_in": "1800" })),
        Some(NOW + 1_800_000)
    );
    assert_eq!(
        at(&millis, json!({ "access_token": "t", "expires_in": 90_000 })),
        Some(NOW + 90_000)
    );
    assert_eq!(
        at(&seconds, json!({ "access_token": jwt(1_800_000_600) })),
        Some(1_800_000_600_000)
    );
    assert_eq!(at(&ttl, json!({ "access_token": "opaque" })), Some(NOW + 7_200_000));
    assert_eq!(at(&seconds, json!({ "access_token": "opaque" })), None);
    assert_eq!(
        at(&ttl, json!({ "access_token": "t", "expires_in": "soon" })),
        Some(NOW + 7_200_000)
    );
}

#[test]
fn rotation_and_extra_fields() {
    let i = oauth("https://t.example.com", "{}", "");
    let tokens = parse(&i, 200, json!({ "access_token": "a", "refresh_token": "r2", "instance_url": "https://x.my.salesforce.com", "scope": "a b" })).unwrap();
    assert_eq!(tokens.refresh_token.unwrap().expose(), "r2");
    assert_eq!(tokens.extra["instance_url"], "https://x.my.salesforce.com");
    assert_eq!(tokens.scope.as_deref(), Some("a b"));
    let kept = parse(&i, 200, json!({ "access_token": "a" })).unwrap();
    assert!(kept.refresh_token.is_none());
}

#[test]
fn errors_are_classified_by_what_to_do_next() {
    let i = oauth("https://t.example.com", "{}", "");
    let auth = |code: &str, status| TokenError::Auth {
        code: code.into(),
        status,
    };
    assert_eq!(
        parse(&i, 400, json!({ "error": "invalid_grant" })).unwrap_err(),
        auth("invalid_grant", 400)
    );
    assert_eq!(
        parse(&i, 400, json!({ "error": "unauthorized_client" })).unwrap_err(),
        auth("unauthorized_client", 400)
    );
    assert_eq!(parse(&i, 401, json!({})).unwrap_err(), auth("unauthorized", 401));
    // A 4xx without an OAuth error (a WAF page, a wrong path) is not about the grant.
    assert!(matches!(parse(&i, 403, json!("<html>")), Err(TokenError::Transient(_))));
    assert!(matches!(parse(&i, 404, json!({})), Err(TokenError::Transient(_))));
    assert_eq!(
        parse(&i, 401, json!({ "error": "invalid_client" })).unwrap_err(),
        TokenError::InvalidClient { status: 401 }
    );
    assert_eq!(
        parse(&i, 200, json!({ "error": "invalid_grant" })).unwrap_err(),
        auth("invalid_grant", 200)
    );
    assert!(matches!(parse(&i, 503, json!({})), Err(TokenError::Transient(_))));
    assert!(matches!(
        parse(&i, 200, json!("not an object")),
        Err(TokenError::Transient(_))
    ));
    assert!(matches!(parse(&i, 429, json!({})), Err(TokenError::RateLimited { .. })));
    assert_eq!(
        parse(&i, 400, json!({ "error": "invalid_scope" })).unwrap_err(),
        TokenError::Rejected {
            code: "invalid_scope".into(),
            status: 400
        }
    );
    // Error messages carry codes, never tokens or descriptions.
    let text = parse(
        &i,
        400,
        json!({ "error": "invalid_grant", "error_description": "token rt-secret is dead" }),
    )
    .unwrap_err()
    .to_string();
    assert!(!text.contains("rt-secret"), "{text}");
}

#[test]
fn jwt_exp_is_total() {
    assert_eq!(jwt_exp(&jwt(1_900_000_000)), Some(1_900_000_000));
    for garbage in ["", "a.b", "a.b.c.d", "x.!!!.y", "a.e30.b", "opaque-token"] {
        assert_eq!(jwt_exp(garbage), None, "{garbage}");
    }
}

#[tokio::test]
async fn requests_follow_the_integration() {
    let endpoint = FakeTokenEndpoint::start().await;
    endpoint.seed("rt-0");
    let client = TokenClient::new(Duration::from_secs(5), None).unwrap();
    let auth = ClientAuth {
        id: "my client".into(),
        secret: Some(SecretString::new("s3cret/+")),
    };

    // Basic header, form body.
    let header_form = oauth(
        &endpoint.host(),
        "{ authorizationMethod: header, bodyFormat: form }",
        "",
    );
    let refresh = SecretString::new("rt-0");
    let tokens = client
        .request(&header_form, &Map::new(), Grant::RefreshToken(&refresh), &auth, NOW)
        .await
        .unwrap();
    assert_eq!(tokens.refresh_token.as_ref().unwrap().expose(), "rt-1");
    let call = endpoint.calls().pop().unwrap();
    let expected = STANDARD.encode("my+client:s3cret%2F%2B");
    assert_eq!(
        call.authorization.as_deref(),
        Some(format!("Basic {expected}").as_str())
    );
    assert_eq!(call.content_type.as_deref(), Some("application/x-www-form-urlencoded"));
    assert_eq!(call.params["refresh_token"], "rt-0");
    assert!(!call.params.contains_key("client_secret"));

    // Reusing the rotated-away token is invalid_grant.
    let reused = client
        .request(&header_form, &Map::new(), Grant::RefreshToken(&refresh), &auth, NOW)
        .await
        .unwrap_err();
    assert!(matches!(reused, TokenError::Auth { .. }), "{reused:?}");

    // Body auth, JSON body, client credentials with scopes and extra params.
    let body_json = oauth(
        &endpoint.host(),
        "{ authorizationMethod: body, bodyFormat: json }\n    scopeSeparator: \",\"\n    tokenParams: { audience: api }",
        "",
    );
    client
        .request(&body_json, &Map::new(), Grant::ClientCredentials, &auth, NOW)
        .await
        .unwrap();
    let call = endpoint.calls().pop().unwrap();
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert!(call.authorization.is_none());
    assert_eq!(call.params["client_id"], "my client");
    assert_eq!(call.params["client_secret"], "s3cret/+");
    assert_eq!(call.params["scope"], "a,b");
    assert_eq!(call.params["audience"], "api");
    assert_eq!(endpoint.count("client_credentials"), 1);

    endpoint.fail_next([Fault::Status(503), Fault::RateLimited(7)]);
    let e = client
        .request(&body_json, &Map::new(), Grant::ClientCredentials, &auth, NOW)
        .await
        .unwrap_err();
    assert!(matches!(e, TokenError::Transient(_)));
    let e = client
        .request(&body_json, &Map::new(), Grant::ClientCredentials, &auth, NOW)
        .await
        .unwrap_err();
    assert_eq!(
        e,
        TokenError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
}

#[tokio::test]
async fn a_hanging_endpoint_times_out() {
    let endpoint = FakeTokenEndpoint::start().await;
    endpoint.fail_next([Fault::Hang]);
    let client = TokenClient::new(Duration::from_millis(300), None).unwrap();
    let i = oauth(&endpoint.host(), "{}", "");
    let auth = ClientAuth {
        id: "c".into(),
        secret: None,
    };
    let e = client
        .request(&i, &Map::new(), Grant::ClientCredentials, &auth, NOW)
        .await
        .unwrap_err();
    assert!(
        matches!(e, TokenError::Transient(ref m) if m.contains("no answer")),
        "{e:?}"
    );
}

/// A token endpoint on each customer's own host, from checked account metadata.
#[tokio::test]
async fn token_urls_template_declared_metadata() {
    let endpoint = FakeTokenEndpoint::start().await;
    // A pattern without `*` allows exactly one value (loopback http is only
    // accepted for literal loopback hosts, so the test cannot use a wildcard).
    let host = endpoint.host();
    let i = integration(&format!(
        "name: site\nmetadata:\n  site: {{ pattern: \"{host}\" }}\nbase_urls: [ \"https://api.example.com\" ]\ncredentials:\n  format: oauth2_client_credentials\n  config:\n    auth: {{ tokenHost: \"{{{{metadata.site}}}}\", tokenPath: /t }}\nauthorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n"
    ));
    let client = TokenClient::new(Duration::from_secs(5), None).unwrap();
    let auth = ClientAuth {
        id: "c".into(),
        secret: None,
    };
    let good: Map<String, Value> = [("site".to_owned(), json!(endpoint.host()))].into_iter().collect();
    client
        .request(&i, &good, Grant::ClientCredentials, &auth, NOW)
        .await
        .unwrap();
    assert_eq!(endpoint.count("client_credentials"), 1);
    // Metadata that does not match the pattern never builds a URL.
    let bad: Map<String, Value> = [("site".to_owned(), json!("http://evil.example.com"))]
        .into_iter()
        .collect();
    let error = client
        .request(&i, &bad, Grant::ClientCredentials, &auth, NOW)
        .await
        .unwrap_err();
    assert!(matches!(error, TokenError::Local(_)), "{error:?}");
    assert_eq!(endpoint.count("client_credentials"), 1);
}
