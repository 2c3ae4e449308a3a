//! Lifecycle figures (a plain harness: these are end-to-end timings, not
//! micro-benchmarks). Run: `cargo bench -p credgate-engine --bench lifecycle`.
//! - refreshes per second one replica sustains against a local fake token
//!   endpoint, with in-process coordination and with a real Redis;
//! - the Redis lock's cost per refresh (lock + compare-and-delete + publish);
//! - the scheduler's per-tick query time and the process's memory with 1,000,000
//!   accounts in the SQLite store.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use credgate_accounts::{Accounts, CreateAccount};
use credgate_config::RefreshConfig;
use credgate_crypto::{Key, KeyId, Keyring};
use credgate_engine::coordination::Coordinator;
use credgate_engine::token::TokenClient;
use credgate_engine::{Reason, Refresher, SystemClock};
use credgate_store::{SqliteStore, Store};
use credgate_test_support::{FakeTokenEndpoint, RedisServer};

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

async fn refresher(dir: &std::path::Path, endpoint: &FakeTokenEndpoint, redis: Option<&str>) -> Arc<Refresher> {
    let folder = dir.join("integrations");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(
        folder.join("vendor.yaml"),
        format!(
            "name: vendor\nbase_urls: [ \"https://api.example.com\" ]\ncredentials:\n  format: oauth2\n  client: {{ id: cid }}\n  config:\n    auth: {{ tokenHost: \"{}\" }}\nauthorization: {{ format: bearer, config: {{ path: oauth.token.access_token }} }}\n",
            endpoint.host()
        ),
    )
    .unwrap();
    let integrations = credgate_config::load_integrations(&folder).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.join("db")).unwrap());
    let ring = Keyring::new(vec![(KeyId::new("k1").unwrap(), Key::generate())]).unwrap();
    let accounts = Accounts::unlock(store, Arc::new(ring), Arc::new(integrations))
        .await
        .unwrap();
    let settings = RefreshConfig::default();
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

/// Refreshes `accounts` accounts `rounds` times each, `concurrency` at once.
async fn refresh_rate(redis: Option<&str>, accounts: usize, rounds: usize) -> f64 {
    let endpoint = FakeTokenEndpoint::start().await;
    let dir = tempfile::tempdir().unwrap();
    let refresher = refresher(dir.path(), &endpoint, redis).await;
    for i in 0..accounts {
        let token = format!("rt-seed-{i}");
        endpoint.seed(&token);
        let input: CreateAccount = serde_json::from_value(serde_json::json!({
            "id": format!("a{i}"), "integration": "vendor",
            "credentials": { "access_token": "at", "refresh_token": token, "expires_in": 3600 }
        }))
        .unwrap();
        refresher.accounts().create(input).await.unwrap();
    }
    let started = Instant::now();
    for _ in 0..rounds {
        let mut tasks = Vec::new();
        for i in 0..accounts {
            let refresher = Arc::clone(&refresher);
            tasks.push(tokio::spawn(async move {
                let id = format!("a{i}");
                let version = refresher.accounts().store().get(&id).await.unwrap().unwrap().version;
                refresher
                    .refresh(&id, Reason::Forced { seen_version: version })
                    .await
                    .unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    }
    (accounts * rounds) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = RedisServer::start();

        let local = refresh_rate(None, 16, 20).await;
        let shared = refresh_rate(Some(&redis.url()), 16, 20).await;
        println!("refreshes/s, 16 accounts at once, in-process coordination: {local:.0}");
        println!("refreshes/s, 16 accounts at once, Redis locks:               {shared:.0}");

        let coordinator = Coordinator::redis(&redis.url(), Duration::from_secs(30)).await.unwrap();
        let mut samples = Vec::new();
        for i in 0..2000 {
            let id = format!("lock-{i}");
            let started = Instant::now();
            let lock = coordinator.try_lock(&id).await.unwrap().unwrap();
            coordinator.unlock(lock).await;
            coordinator.announce(&id).await;
            samples.push(started.elapsed());
        }
        println!("Redis lock + release + publish per refresh: median {:?}", median(samples));

        // 1,000,000 accounts: bulk-loaded with SQL (the API path fsyncs each write).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.db");
        let store = SqliteStore::open(&path).unwrap();
        let before = rss_mib();
        {
            let mut conn = rusqlite::Connection::open(&path).unwrap();
            conn.pragma_update(None, "synchronous", "OFF").unwrap();
            let tx = conn.transaction().unwrap();
            {
                let mut insert = tx
                    .prepare(
                        "INSERT INTO accounts (id, integration, credentials, metadata, status, expires_at, \
                         next_refresh_at, version, created_at, updated_at) VALUES (?1, 'vendor', '{}', '{}', 'active', ?2, ?3, 1, 0, 0)",
                    )
                    .unwrap();
                let now = credgate_accounts::now_ms();
                for i in 0..1_000_000i64 {
                    // Tokens spread over the next hour; 200 due right now.
                    let due = if i < 200 { now - 1000 } else { now + 60_000 + (i % 3_600_000) };
                    insert.execute(rusqlite::params![format!("acct-{i:07}"), due + 120_000, due]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let now = credgate_accounts::now_ms();
        let mut samples = Vec::new();
        for _ in 0..50 {
            let started = Instant::now();
            let due = store.due_for_refresh(now, 200).await.unwrap();
            samples.push(started.elapsed());
            assert_eq!(due.len(), 200);
        }
        println!("scheduler tick with 1,000,000 accounts (200 due): median {:?}", median(samples));
        let mut samples = Vec::new();
        for _ in 0..50 {
            let started = Instant::now();
            let due = store.due_for_refresh(now - 10_000, 200).await.unwrap();
            samples.push(started.elapsed());
            assert!(due.is_empty());
        }
        println!("scheduler tick with 1,000,000 accounts (none due): median {:?}", median(samples));
        println!(
            "resident memory: {:.1} MiB before loading, {:.1} MiB after 100 ticks (the scheduler holds one batch)",
            before,
            rss_mib()
        );
    });
}
