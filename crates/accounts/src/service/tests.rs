use std::path::Path;

use credgate_crypto::{Key, KeyId};
use credgate_store::SqliteStore;
use serde_json::json;

use super::*;

fn integrations() -> Arc<Integrations> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/integrations");
    Arc::new(credgate_config::load_integrations(&dir).unwrap())
}

fn keyring(keys: &[(&str, &Key)]) -> Arc<Keyring> {
    let keys = keys
        .iter()
        .map(|(id, key)| {
            let id = KeyId::new(*id).unwrap();
            let copy = Key::from_base64(&id, key.to_base64().expose()).unwrap();
            (id, copy)
        })
        .collect();
    Arc::new(Keyring::new(keys).unwrap())
}

async fn service(dir: &tempfile::TempDir, keys: &[(&str, &Key)]) -> Result<Accounts, AccountError> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).unwrap());
    Accounts::unlock(store, keyring(keys), integrations()).await
}

fn create(id: &str, integration: &str, credentials: Value) -> CreateAccount {
    serde_json::from_value(json!({ "id": id, "integration": integration, "credentials": credentials })).unwrap()
}

#[tokio::test]
async fn create_masks_and_emits_created() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let accounts = service(&dir, &[("k1", &key)]).await.unwrap();
    let view = accounts
        .create(create(
            "acme-stripe",
            "stripe",
            json!({ "api_key": "sk_live_0123456789abcdef9fQ2" }),
        ))
        .await
        .unwrap();
    assert_eq!(view.credentials["api_key"], "sk_l…9fQ2");
    assert_eq!(view.status, Status::Active);
    let events = accounts.store().outbox_due(i64::MAX, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, events::CREATED);
    assert_eq!(events[0].payload["account_id"], "acme-stripe");
}

#[tokio::test]
async fn bad_input_names_the_field_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let accounts = service(&dir, &[("k1", &key)]).await.unwrap();
    let cases = [
        (create("bad id!", "stripe", json!({ "api_key": "x" })), "id"),
        (create("a", "nope", json!({ "api_key": "x" })), "integration"),
        (create("a", "stripe", json!({})), "credentials.api_key"),
        (
            create("a", "stripe", json!({ "api_key": "x", "extra": "y" })),
            "credentials.extra",
        ),
        (
            create("a", "stripe", json!({ "api_key": 12345 })),
            "credentials.api_key",
        ),
        (
            create("a", "jira", json!({ "username": "u", "password": "p" })),
            "metadata.site_url",
        ),
        (
            create("a", "github", json!({ "access_token": "t", "expires_in": "soon" })),
            "credentials.expires_in",
        ),
    ];
    for (input, field) in cases {
        let error = accounts.create(input).await.unwrap_err();
        assert_eq!(error.field(), Some(field), "{error}");
        assert!(!error.to_string().contains("12345"), "{error}");
    }
    let tampered: CreateAccount = serde_json::from_value(json!({
        "id": "sf", "integration": "salesforce",
        "credentials": { "access_token": "t" },
        "metadata": { "instance_url": "https://evil.example.com/.my.salesforce.com" }
    }))
    .unwrap();
    let error = accounts.create(tampered).await.unwrap_err();
    assert_eq!(error.field(), Some("metadata.instance_url"));
    let listed = accounts.list(ListFilter::default()).await.unwrap();
    assert!(listed.accounts.is_empty());
    assert!(accounts.store().outbox_due(i64::MAX, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn oauth_expiry_and_new_credentials_reactivate() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let accounts = service(&dir, &[("k1", &key)]).await.unwrap();
    let before = now_ms();
    accounts
        .create(create(
            "acme-hubspot",
            "hubspot",
            json!({ "access_token": "at-1", "refresh_token": "rt-1", "expires_in": 1800 }),
        ))
        .await
        .unwrap();
    let stored = accounts.store().get("acme-hubspot").await.unwrap().unwrap();
    let expires = stored.expires_at.unwrap();
    assert!(expires >= before + 1_800_000 && expires <= now_ms() + 1_800_000);

    // Simulate the lifecycle engine marking it broken.
    let mut broken = stored;
    broken.status = Status::NeedsReauth;
    broken.last_error = Some("invalid_grant".into());
    accounts.store().update(broken, vec![]).await.unwrap();

    let patch: PatchAccount = serde_json::from_value(json!({
        "credentials": { "access_token": "at-2", "refresh_token": "rt-2" }
    }))
    .unwrap();
    let view = accounts.patch("acme-hubspot", patch).await.unwrap();
    assert_eq!(view.status, Status::Active);
    assert_eq!(view.last_error, None);
    let kinds: Vec<_> = accounts
        .store()
        .outbox_due(i64::MAX, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, [events::CREATED, events::REACTIVATED]);
    let stored = accounts.store().get("acme-hubspot").await.unwrap().unwrap();
    let opened = accounts
        .keyring()
        .open("acme-hubspot", "refresh_token", &stored.credentials["refresh_token"]);
    assert_eq!(opened.unwrap().expose(), "rt-2");
}

#[tokio::test]
async fn patch_cannot_remove_a_required_field() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    let accounts = service(&dir, &[("k1", &key)]).await.unwrap();
    accounts
        .create(create("s", "stripe", json!({ "api_key": "k" })))
        .await
        .unwrap();
    let patch: PatchAccount = serde_json::from_value(json!({ "credentials": { "api_key": null } })).unwrap();
    let error = accounts.patch("s", patch).await.unwrap_err();
    assert_eq!(error.field(), Some("credentials.api_key"));
    let stale: PatchAccount = serde_json::from_value(json!({ "metadata": {}, "version": 9 })).unwrap();
    assert!(matches!(
        accounts.patch("s", stale).await,
        Err(AccountError::Conflict(_))
    ));
}

#[tokio::test]
async fn a_wrong_key_stops_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let right = Key::generate();
    let accounts = service(&dir, &[("k1", &right)]).await.unwrap();
    accounts
        .create(create("s", "stripe", json!({ "api_key": "k" })))
        .await
        .unwrap();
    drop(accounts);

    let wrong = Key::generate();
    let error = service(&dir, &[("k1", &wrong)]).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "key k1 does not match the key that encrypted this store (key check failed)"
    );
    // Another id with k1's data still in the store: refused, naming the missing key.
    let error = service(&dir, &[("k2", &wrong)]).await.unwrap_err();
    assert!(
        matches!(error, AccountError::MissingKey(ref id) if id == "k1"),
        "{error}"
    );
}

#[tokio::test]
async fn rekey_moves_everything_to_the_primary_key_and_retires_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let old = Key::generate();
    let accounts = service(&dir, &[("old", &old)]).await.unwrap();
    for i in 0..7 {
        accounts
            .create(create(
                &format!("s{i}"),
                "stripe",
                json!({ "api_key": format!("key-{i}") }),
            ))
            .await
            .unwrap();
    }
    drop(accounts);

    let new = Key::generate();
    let rotated = service(&dir, &[("new", &new), ("old", &old)]).await.unwrap();
    let report = rotated.rekey().await.unwrap();
    assert_eq!(report.accounts_rekeyed, 7);
    assert_eq!(report.values_resealed, 7);
    assert_eq!(report.keys_retired, ["old"]);
    assert_eq!(rotated.rekey().await.unwrap().values_resealed, 0);
    drop(rotated);

    // The old key can now leave the config.
    let only_new = service(&dir, &[("new", &new)]).await.unwrap();
    let view = only_new.get("s3").await.unwrap();
    assert_eq!(view.credentials["api_key"], "****");
    let stored = only_new.store().get("s3").await.unwrap().unwrap();
    let opened = only_new
        .keyring()
        .open("s3", "api_key", &stored.credentials["api_key"])
        .unwrap();
    assert_eq!(opened.expose(), "key-3");
}
