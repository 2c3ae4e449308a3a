use super::*;
use crate::ListFilter;
use credgate_crypto::{Key, Keyring};

fn ring() -> Keyring {
    Keyring::new(vec![(KeyId::new("k1").unwrap(), Key::generate())]).unwrap()
}

fn account(ring: &Keyring, id: &str, integration: &str) -> Account {
    let mut credentials = BTreeMap::new();
    credentials.insert(
        "api_key".to_owned(),
        ring.seal(id, "api_key", b"sk_test_secret").unwrap(),
    );
    Account {
        id: id.to_owned(),
        integration: integration.to_owned(),
        credentials,
        metadata: Default::default(),
        status: Status::Active,
        last_error: None,
        expires_at: None,
        next_refresh_at: None,
        last_refreshed_at: None,
        version: 0,
        created_at: 1_000,
        updated_at: 1_000,
        refresh_failures: 0,
    }
}

fn event(id: &str, account: &str) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        kind: "integrated_account:created".to_owned(),
        account_id: account.to_owned(),
        payload: serde_json::json!({ "account": account }),
        created_at: 1_000,
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("credgate.db")).unwrap()
}

#[tokio::test]
async fn create_get_round_trip_and_duplicates_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ring = ring();
    let created = store
        .create(account(&ring, "acme", "stripe"), vec![event("e1", "acme")])
        .await
        .unwrap();
    assert_eq!(created.version, 1);
    let read = store.get("acme").await.unwrap().unwrap();
    assert_eq!(read, created);
    assert_eq!(
        ring.open("acme", "api_key", &read.credentials["api_key"])
            .unwrap()
            .expose(),
        "sk_test_secret"
    );
    assert!(store.get("nobody").await.unwrap().is_none());

    let duplicate = store
        .create(account(&ring, "acme", "stripe"), vec![event("e2", "acme")])
        .await;
    assert!(matches!(duplicate, Err(StoreError::AlreadyExists(id)) if id == "acme"));
    // The refused create wrote no event.
    let events = store.outbox_due(i64::MAX, 10).await.unwrap();
    assert_eq!(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e1"]);
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let ring = ring();
    open(&dir)
        .create(account(&ring, "acme", "stripe"), vec![])
        .await
        .unwrap();
    let reopened = open(&dir);
    assert_eq!(reopened.get("acme").await.unwrap().unwrap().integration, "stripe");
}

#[tokio::test]
async fn update_is_compare_and_set_on_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ring = ring();
    let v1 = store.create(account(&ring, "acme", "stripe"), vec![]).await.unwrap();
    let mut change = v1.clone();
    change.status = Status::NeedsReauth;
    let v2 = store.update(change, vec![event("e1", "acme")]).await.unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(store.get("acme").await.unwrap().unwrap().status, Status::NeedsReauth);

    // A stale copy (version 1) loses, and its event is not written.
    let stale = store.update(v1, vec![event("e2", "acme")]).await;
    assert!(
        matches!(stale, Err(StoreError::VersionConflict { expected: 1, .. })),
        "{stale:?}"
    );
    let ids: Vec<_> = store
        .outbox_due(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, ["e1"]);

    let mut missing = account(&ring, "ghost", "stripe");
    missing.version = 1;
    assert!(matches!(
        store.update(missing, vec![]).await,
        Err(StoreError::NotFound(_))
    ));
}

/// Two connections (as two processes would have) race to update from the same
/// version, many times over: exactly one wins each round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_with_the_same_expected_version_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(&dir), open(&dir));
    let ring = ring();
    let mut current = a.create(account(&ring, "acme", "stripe"), vec![]).await.unwrap();
    for round in 0..50 {
        let mut from_a = current.clone();
        from_a.last_error = Some(format!("a{round}"));
        let mut from_b = current.clone();
        from_b.last_error = Some(format!("b{round}"));
        let (ra, rb) = tokio::join!(a.update(from_a, vec![]), b.update(from_b, vec![]));
        let winners: Vec<_> = [ra, rb].into_iter().filter_map(Result::ok).collect();
        assert_eq!(winners.len(), 1, "round {round}");
        current = a.get("acme").await.unwrap().unwrap();
        assert_eq!(current.version, winners[0].version);
        assert_eq!(current.last_error, winners[0].last_error);
    }
    assert_eq!(current.version, 51);
}

#[tokio::test]
async fn delete_checks_the_version_and_writes_its_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ring = ring();
    store.create(account(&ring, "acme", "stripe"), vec![]).await.unwrap();
    assert!(matches!(
        store.delete("acme", 7, vec![]).await,
        Err(StoreError::VersionConflict { .. })
    ));
    store.delete("acme", 1, vec![event("gone", "acme")]).await.unwrap();
    assert!(store.get("acme").await.unwrap().is_none());
    assert!(matches!(
        store.delete("acme", 1, vec![]).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.outbox_due(i64::MAX, 10).await.unwrap()[0].id, "gone");
}

#[tokio::test]
async fn list_filters_and_pages_by_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ring = ring();
    for i in 0..25 {
        let integration = if i % 2 == 0 { "stripe" } else { "github" };
        let mut a = account(&ring, &format!("acct-{i:02}"), integration);
        if i % 5 == 0 {
            a.status = Status::NeedsReauth;
        }
        store.create(a, vec![]).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut filter = ListFilter {
        integration: Some("stripe".into()),
        limit: 4,
        ..Default::default()
    };
    loop {
        let page = store.list(&filter).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        filter.after = page.last().map(|a| a.id.clone());
        seen.extend(page.into_iter().map(|a| a.id));
    }
    let expected: Vec<_> = (0..25).step_by(2).map(|i| format!("acct-{i:02}")).collect();
    assert_eq!(seen, expected);

    let needs_reauth = store
        .list(&ListFilter {
            status: Some(Status::NeedsReauth),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(needs_reauth.len(), 5);
}

#[tokio::test]
async fn due_for_refresh_returns_active_due_accounts_soonest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ring = ring();
    for (id, at, status) in [
        ("late", 300, Status::Active),
        ("early", 100, Status::Active),
        ("future", 900, Status::Active),
        ("broken", 50, Status::NeedsReauth),
    ] {
        let mut a = account(&ring, id, "github");
        a.next_refresh_at = Some(at);
        a.status = status;
        store.create(a, vec![]).await.unwrap();
    }
    store.create(account(&ring, "never", "stripe"), vec![]).await.unwrap();
    let due: Vec<_> = store
        .due_for_refresh(500, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(due, ["early", "late"]);
    assert_eq!(store.due_for_refresh(500, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn outbox_retries_and_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ring = ring();
    store
        .create(
            account(&ring, "acme", "stripe"),
            vec![event("e1", "acme"), event("e2", "acme")],
        )
        .await
        .unwrap();
    assert!(store.outbox_claim("e1", 1_000, 3_000).await.unwrap());
    assert!(!store.outbox_claim("e1", 1_000, 3_000).await.unwrap(), "claimed twice");
    store.outbox_retry_at("e1", 1, 5_000).await.unwrap();
    let due: Vec<_> = store
        .outbox_due(2_000, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(due, ["e2"]);
    store.outbox_delivered("e2", 2_000).await.unwrap();
    let later = store.outbox_due(6_000, 10).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!((later[0].id.as_str(), later[0].attempts), ("e1", 1));
}

#[tokio::test]
async fn key_checks_and_counting_values_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let ring = ring();
    let check = ring.key_checks().remove(0);
    store.add_key_check(&check).await.unwrap();
    let other_key = self::ring();
    store.add_key_check(&other_key.key_checks().remove(0)).await.unwrap(); // same id: kept
    let stored = store.key_checks().await.unwrap();
    assert_eq!(stored, vec![check]);
    assert_eq!(ring.verify(&stored[0]), Ok(true));

    store.create(account(&ring, "acme", "stripe"), vec![]).await.unwrap();
    assert_eq!(store.count_sealed_with("k1").await.unwrap(), 1);
    assert_eq!(store.count_sealed_with("k").await.unwrap(), 0);
    store.remove_key_check("k1").await.unwrap();
    assert!(store.key_checks().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    let conn = Connection::open(dir.path().join("credgate.db")).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let error = SqliteStore::open(&dir.path().join("credgate.db")).unwrap_err();
    assert!(matches!(error, StoreError::SchemaTooNew { found: 99, .. }), "{error}");
}

#[tokio::test]
async fn one_time_keys_work_once_until_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (open(&dir), open(&dir));
    assert!(a.use_once("state-1", 2_000, 1_000).await.unwrap());
    assert!(!b.use_once("state-1", 2_000, 1_000).await.unwrap(), "used twice");
    assert!(a.use_once("state-2", 2_000, 1_000).await.unwrap());
    // Expired entries are swept; the key could be used again, but by then the
    // token it guards has expired too and is refused before this check.
    assert!(a.use_once("state-1", 9_000, 3_000).await.unwrap());
}
