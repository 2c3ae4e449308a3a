use credgate_accounts::{CreateAccount, PatchAccount};
use credgate_config::Integrations;
use credgate_crypto::{Key, KeyId, Keyring};
use credgate_store::{SqliteStore, Store};
use credgate_test_support::{FakeTokenEndpoint, Fault, RedisServer};
use serde_json::json;

use super::*;
use crate::{Clock, SystemClock};

struct Fixture {
    endpoint: FakeTokenEndpoint,
    dir: tempfile::TempDir,
    key: String,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_client("{ id: cid }", "").await
    }

    /// `client` is the integration's `client:` block; `auth_extra` is added to
    /// `config.auth` (e.g. `, revokePath: /revoke`). Secret files may be written
    /// into the fixture's folder by the caller first: they are relative to it.
    async fn with_client(client: &str, auth_extra: &str) -> Self {
        let endpoint = FakeTokenEndpoint::start().await;
        let dir = tempfile::tempdir().unwrap();
        let integrations = dir.path().join("integrations");
        std::fs::create_dir(&integrations).unwrap();
        std::fs::write(
            integrations.join("vendor.yaml"),
            format!(
                "name: vendor\nbase_urls: [ \"https://api.example.com\" ]\ncredentials:\n  format: oauth2\n  client: {client}\n  config:\n    auth: {{ tokenHost: \"{}\"{auth_extra} }}\nauthorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n",
                endpoint.host()
            ),
        )
        .unwrap();
        Self {
            endpoint,
            dir,
            key: Key::generate().to_base64().expose().to_owned(),
        }
    }

    /// A replica: its own store connection, keyring and refresher.
    async fn replica(&self, settings: RefreshConfig, redis: Option<&str>) -> Arc<Refresher> {
        let integrations: Integrations =
            credgate_config::load_integrations(&self.dir.path().join("integrations")).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&self.dir.path().join("db")).unwrap());
        let id = KeyId::new("k1").unwrap();
        let ring = Keyring::new(vec![(id.clone(), Key::from_base64(&id, &self.key).unwrap())]).unwrap();
        let accounts = Accounts::unlock(store, Arc::new(ring), Arc::new(integrations))
            .await
            .unwrap();
        let coordinator = match redis {
            Some(url) => Coordinator::redis(url, settings.lock_ttl).await.unwrap(),
            None => Coordinator::local(settings.lock_ttl),
        };
        let token = TokenClient::new(settings.token_timeout, None).unwrap();
        Arc::new(Refresher::new(
            accounts,
            token,
            Arc::new(coordinator),
            settings,
            Arc::new(SystemClock),
        ))
    }
}

fn fast() -> RefreshConfig {
    RefreshConfig {
        backoff_base: Duration::from_millis(40),
        backoff_max: Duration::from_millis(400),
        tick: Duration::from_millis(20),
        lock_ttl: Duration::from_secs(3),
        token_timeout: Duration::from_secs(2),
        ..RefreshConfig::default()
    }
}

async fn create(refresher: &Refresher, id: &str, expires_in: i64) {
    let input: CreateAccount = serde_json::from_value(json!({
        "id": id, "integration": "vendor",
        "credentials": { "access_token": "at-0", "refresh_token": "rt-0", "expires_in": expires_in }
    }))
    .unwrap();
    refresher.accounts().create(input).await.unwrap();
}

fn opened(refresher: &Refresher, account: &Account, field: &str) -> String {
    refresher
        .accounts()
        .keyring()
        .open(&account.id, field, &account.credentials[field])
        .unwrap()
        .expose()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_refresh_and_rotation_is_stored() {
    let f = Fixture::new().await;
    f.endpoint.seed("rt-0");
    let refresher = f.replica(fast(), None).await;
    create(&refresher, "acme", 0).await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let r = Arc::clone(&refresher);
            tokio::spawn(async move { r.refresh("acme", Reason::Expiring).await })
        })
        .collect();
    for call in calls {
        let account = call.await.unwrap().unwrap();
        assert_eq!(opened(&refresher, &account, "access_token"), "at-1");
    }
    assert_eq!(f.endpoint.count("refresh_token"), 1);
    let stored = refresher.accounts().store().get("acme").await.unwrap().unwrap();
    assert_eq!(opened(&refresher, &stored, "refresh_token"), "rt-1");
    let (expires, next) = (stored.expires_at.unwrap(), stored.next_refresh_at.unwrap());
    assert!((60_000..=180_000).contains(&(expires - next)), "{}", expires - next);
    // Fresh now: nothing more to do.
    refresher.refresh("acme", Reason::Expiring).await.unwrap();
    assert_eq!(f.endpoint.count("refresh_token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_needs_reauth_once_and_new_credentials_reactivate() {
    let f = Fixture::new().await;
    // rt-0 is not seeded: the vendor answers invalid_grant.
    let refresher = f.replica(fast(), None).await;
    create(&refresher, "acme", 0).await;
    for _ in 0..5 {
        assert_eq!(
            refresher.refresh("acme", Reason::Expiring).await.unwrap_err(),
            RefreshError::NeedsReauth
        );
    }
    assert_eq!(f.endpoint.count("refresh_token"), 1, "no retries after a dead grant");
    let stored = refresher.accounts().store().get("acme").await.unwrap().unwrap();
    assert_eq!(stored.status, Status::NeedsReauth);
    assert!(stored.last_error.as_deref().unwrap().contains("invalid_grant"));
    let kinds = || async {
        refresher
            .accounts()
            .store()
            .outbox_due(i64::MAX, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds().await, [events::CREATED, events::AUTHENTICATION_ERROR]);

    f.endpoint.seed("rt-new");
    let patch: PatchAccount = serde_json::from_value(json!({
        "credentials": { "access_token": "at-new", "refresh_token": "rt-new", "expires_in": 0 }
    }))
    .unwrap();
    refresher.accounts().patch("acme", patch).await.unwrap();
    assert_eq!(
        kinds().await,
        [events::CREATED, events::AUTHENTICATION_ERROR, events::REACTIVATED]
    );
    let account = refresher.refresh("acme", Reason::Expiring).await.unwrap();
    assert_eq!(account.status, Status::Active);
    assert_eq!(f.endpoint.count("refresh_token"), 2);
}

/// A 503 storm: every retry waits longer, the account stays active with the
/// error recorded, and the scheduler recovers it by itself once the vendor does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_storm_backs_off_stays_active_and_recovers() {
    let f = Fixture::new().await;
    f.endpoint.seed("rt-0");
    f.endpoint.fail_next(std::iter::repeat_n(Fault::Status(503), 5));
    let refresher = f.replica(fast(), None).await;
    create(&refresher, "acme", 0).await;
    let (tx, rx) = tokio::sync::watch::channel(());
    let scheduler = tokio::spawn(crate::scheduler::run(Arc::clone(&refresher), Arc::new(SystemClock), rx));
    let mut seen_failures = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut recovered = false;
    while !recovered && tokio::time::Instant::now() < deadline {
        let account = refresher.accounts().store().get("acme").await.unwrap().unwrap();
        assert_eq!(
            account.status,
            Status::Active,
            "a transient failure never changes the status"
        );
        if account.refresh_failures > 0 {
            assert!(account.last_error.as_deref().unwrap().contains("503"));
            seen_failures = seen_failures.max(account.refresh_failures);
        }
        recovered = account.last_refreshed_at.is_some();
        tokio::time::sleep(Duration::from_millis(5)).await; // polling interval, not synchronisation
    }
    let _ = tx.send(());
    scheduler.await.unwrap();
    assert!(recovered, "never recovered");
    assert!(seen_failures >= 3, "saw {seen_failures} failures");
    let calls = f.endpoint.calls();
    assert_eq!(calls.len(), 6);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1].at - w[0].at).collect();
    // Equal jitter keeps each delay in [half, full] of a doubling base, so the
    // fourth gap (160-320 ms) is always longer than the first (20-40 ms + tick).
    assert!(gaps[3] > gaps[0], "backoff did not grow: {gaps:?}");
    let account = refresher.accounts().store().get("acme").await.unwrap().unwrap();
    assert_eq!((account.refresh_failures, account.last_error.clone()), (0, None));
}

/// Two replicas (own store connections, own refreshers) and one Redis: racing
/// refreshes of one account make exactly one token call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_refresh_through_the_redis_lock() {
    let redis = RedisServer::start();
    let f = Fixture::new().await;
    f.endpoint.seed("rt-0");
    let a = f.replica(fast(), Some(&redis.url())).await;
    let b = f.replica(fast(), Some(&redis.url())).await;
    create(&a, "acme", 0).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let r = Arc::clone(if i % 2 == 0 { &a } else { &b });
        calls.push(tokio::spawn(async move { r.refresh("acme", Reason::Expiring).await }));
    }
    for call in calls {
        let account = call.await.unwrap().unwrap();
        assert_eq!(opened(&a, &account, "access_token"), "at-1");
    }
    assert_eq!(f.endpoint.count("refresh_token"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_falls_back_to_the_previous_one() {
    let f = Fixture::new().await;
    f.endpoint.seed("rt-0");
    f.endpoint.fail_next([Fault::InvalidClient]);
    let refresher = f.replica(fast(), None).await;
    create(&refresher, "acme", 0).await;
    // The integration has a client id and no secret: one client, refused once,
    // then retried with backoff instead of breaking the account.
    let error = refresher.refresh("acme", Reason::Expiring).await.unwrap_err();
    assert!(matches!(error, RefreshError::Unavailable { .. }), "{error:?}");
    let account = refresher.accounts().store().get("acme").await.unwrap().unwrap();
    assert_eq!(account.status, Status::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_secret_falls_back_to_the_previous_one_and_tokens_are_revoked() {
    let f = Fixture::with_client(
        "{ id: cid, secret: { from_file: ../secret-new }, previous_secret: { from_file: ../secret-old } }",
        ", revokePath: /oauth/revoke",
    )
    .await;
    std::fs::write(f.dir.path().join("secret-new"), "new-secret").unwrap();
    std::fs::write(f.dir.path().join("secret-old"), "old-secret").unwrap();
    f.endpoint.seed("rt-0");
    // The vendor has not picked up the new secret yet.
    f.endpoint.fail_next([Fault::InvalidClient]);
    let refresher = f.replica(fast(), None).await;
    create(&refresher, "acme", 0).await;
    let account = refresher.refresh("acme", Reason::Expiring).await.unwrap();
    assert_eq!(opened(&refresher, &account, "access_token"), "at-1");
    let calls = f.endpoint.calls();
    let basic = |secret: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("cid:{secret}"))
        )
    };
    assert_eq!(calls[0].authorization.as_deref(), Some(basic("new-secret").as_str()));
    assert_eq!(calls[1].authorization.as_deref(), Some(basic("old-secret").as_str()));

    refresher.revoke(&account).await;
    let revoked: Vec<_> = f
        .endpoint
        .calls()
        .into_iter()
        .skip(2)
        .map(|c| (c.params["token"].clone(), c.params["token_type_hint"].clone()))
        .collect();
    assert_eq!(
        revoked,
        [
            ("rt-1".to_owned(), "refresh_token".to_owned()),
            ("at-1".to_owned(), "access_token".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_accounts_fetch_their_token_when_created_without_one() {
    let f = Fixture::new().await;
    let folder = f.dir.path().join("integrations");
    std::fs::write(
        folder.join("machine.yaml"),
        format!(
            "name: machine\nbase_urls: [ \"https://api.example.com\" ]\ncredentials:\n  format: oauth2_client_credentials\n  config:\n    auth: {{ tokenHost: \"{}\" }}\n    scope: [ read ]\nauthorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n",
            f.endpoint.host()
        ),
    )
    .unwrap();
    let refresher = f.replica(fast(), None).await;
    let input: CreateAccount = serde_json::from_value(json!({
        "id": "m2m", "integration": "machine",
        "credentials": { "client_id": "acct-client", "client_secret": "acct-secret" }
    }))
    .unwrap();
    refresher.accounts().create(input).await.unwrap();
    let stored = refresher.accounts().store().get("m2m").await.unwrap().unwrap();
    assert!(
        stored.next_refresh_at.unwrap() <= crate::SystemClock.now_ms(),
        "due at once"
    );
    let account = refresher.refresh("m2m", Reason::Due).await.unwrap();
    assert_eq!(opened(&refresher, &account, "access_token"), "at-1");
    let call = f.endpoint.calls().pop().unwrap();
    assert_eq!(call.grant_type, "client_credentials");
    assert_eq!(call.params["scope"], "read");
    // The account's own client, not the integration's.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("acct-client:acct-secret");
    assert_eq!(call.authorization.as_deref(), Some(format!("Basic {basic}").as_str()));
    assert!(account.next_refresh_at.is_some(), "re-fetched before it expires");
}

/// An admin edit lands while the vendor is rotating the token: the new tokens are
/// applied onto the edited row, not dropped (the spent refresh token is dead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_edit_does_not_lose_a_rotated_token() {
    let f = Fixture::new().await;
    f.endpoint.seed("rt-0");
    let release = Arc::new(tokio::sync::Notify::new());
    f.endpoint.fail_next([Fault::Held(Arc::clone(&release))]);
    let refresher = f.replica(fast(), None).await;
    create(&refresher, "acme", 0).await;
    // Registered before the request can arrive, so its notification is not missed.
    let arrived = f.endpoint.arrived.notified();
    tokio::pin!(arrived);
    arrived.as_mut().enable();
    let flight = {
        let r = Arc::clone(&refresher);
        tokio::spawn(async move { r.refresh("acme", Reason::Expiring).await })
    };
    tokio::time::timeout(Duration::from_secs(10), arrived).await.unwrap();
    let patch: PatchAccount = serde_json::from_value(json!({ "metadata": { "team": "blue" } })).unwrap();
    refresher.accounts().patch("acme", patch).await.unwrap();
    release.notify_one();
    let account = flight.await.unwrap().unwrap();
    assert_eq!(opened(&refresher, &account, "refresh_token"), "rt-1");
    let stored = refresher.accounts().store().get("acme").await.unwrap().unwrap();
    assert_eq!(opened(&refresher, &stored, "refresh_token"), "rt-1");
    assert_eq!(stored.metadata["team"], "blue");
}
