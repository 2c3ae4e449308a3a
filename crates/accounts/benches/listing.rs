//! A masked listing opens and masks every credential field of every account.
#![allow(clippy::unwrap_used)]
use std::collections::BTreeMap;
use std::sync::Arc;

use credgate_accounts::AccountView;
use credgate_crypto::{Key, KeyId, Keyring};
use credgate_store::{Account, Status};
use criterion::{criterion_group, criterion_main, Criterion};

fn masked_listing_of_10_000_accounts(c: &mut Criterion) {
    let ring = Arc::new(Keyring::new(vec![(KeyId::new("k1").unwrap(), Key::generate())]).unwrap());
    let accounts: Vec<Account> = (0..10_000)
        .map(|i| {
            let id = format!("acct-{i:05}");
            let mut credentials = BTreeMap::new();
            for field in ["access_token", "refresh_token"] {
                let value = format!("{field}-{i}-{}", "x".repeat(150));
                credentials.insert(field.to_owned(), ring.seal(&id, field, value.as_bytes()).unwrap());
            }
            Account {
                id,
                integration: "hubspot".into(),
                credentials,
                metadata: Default::default(),
                status: Status::Active,
                last_error: None,
                expires_at: Some(1_800_000_000_000),
                next_refresh_at: None,
                last_refreshed_at: None,
                version: 1,
                created_at: 1_700_000_000_000,
                updated_at: 1_700_000_000_000,
                refresh_failures: 0,
            }
        })
        .collect();
    let mut group = c.benchmark_group("listing");
    group.sample_size(20);
    group.bench_function("mask 10,000 accounts (2 fields each)", |b| {
        b.iter(|| accounts.iter().map(|a| AccountView::new(a, &ring)).collect::<Vec<_>>())
    });
    group.finish();
}

criterion_group!(benches, masked_listing_of_10_000_accounts);
criterion_main!(benches);
