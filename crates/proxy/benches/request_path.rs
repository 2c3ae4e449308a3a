//! The per-request work credgate adds: cache lookup, decrypt, render the header.
//! Target: under 2 µs.
#![allow(clippy::unwrap_used)]
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use credgate_crypto::{Key, KeyId, Keyring};
use credgate_proxy::{inject, AccountCache};
use credgate_store::{Account, SqliteStore, Status, Store};
use criterion::{criterion_group, criterion_main, Criterion};

fn request_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let integrations = Arc::new(
        credgate_config::load_integrations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/integrations"))
            .unwrap(),
    );
    let ring = Arc::new(Keyring::new(vec![(KeyId::new("k1").unwrap(), Key::generate())]).unwrap());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
    let cache = AccountCache::new(
        Arc::clone(&store),
        Arc::clone(&integrations),
        100_000,
        std::time::Duration::from_secs(3600),
    );
    runtime.block_on(async {
        for i in 0..1000 {
            let id = format!("acct-{i}");
            let token = format!("{}-{i}", "t".repeat(200));
            let mut credentials = BTreeMap::new();
            credentials.insert(
                "access_token".to_owned(),
                ring.seal(&id, "access_token", token.as_bytes()).unwrap(),
            );
            let account = Account {
                id: id.clone(),
                integration: "hubspot".into(),
                credentials,
                metadata: Default::default(),
                status: Status::Active,
                last_error: None,
                expires_at: None,
                next_refresh_at: None,
                last_refreshed_at: None,
                version: 0,
                created_at: 0,
                updated_at: 0,
                refresh_failures: 0,
            };
            store.create(account, vec![]).await.unwrap();
            cache.get(&id).await.unwrap().unwrap();
        }
    });
    c.bench_function("warm cache lookup + decrypt + render bearer header", |b| {
        b.to_async(&runtime).iter(|| async {
            let entry = cache.get("acct-500").await.unwrap().unwrap();
            inject::render(&entry.account, &entry.integration, &ring).unwrap()
        })
    });
    c.bench_function("render bearer header only (entry in hand)", |b| {
        let entry = runtime.block_on(cache.get("acct-500")).unwrap().unwrap();
        b.iter(|| inject::render(&entry.account, &entry.integration, &ring).unwrap())
    });
}

criterion_group!(benches, request_path);
criterion_main!(benches);
