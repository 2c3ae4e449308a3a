//! The embedded store: one SQLite file in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool. One
//! connection per `SqliteStore` behind a `std::sync::Mutex`: SQLite serialises
//! writers anyway, the hot request path reads from the in-memory cache and never
//! from here, and a std mutex is right for a lock that is never held across an
//! `.await` (it is only taken inside `spawn_blocking`).
//!
//! Durability: WAL with `synchronous = FULL`, so a transaction that returned is on
//! disk even if the machine loses power; losing a rotated refresh token would break
//! the customer's connection. Writes use `BEGIN IMMEDIATE` so that two processes
//! sharing the file queue on the write lock (up to `busy_timeout`) instead of
//! failing on a read-to-write upgrade.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use credgate_crypto::{KeyCheck, KeyId, Sealed};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::{Account, ListFilter, NewEvent, OutboxEvent, Status, Store, StoreError};

/// Schema migrations, applied in order; `PRAGMA user_version` records how many ran.
/// Append only: never edit a migration that has shipped.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE accounts (
    id                TEXT PRIMARY KEY,
    integration       TEXT NOT NULL,
    credentials       TEXT NOT NULL,   -- JSON object: field -> sealed envelope
    metadata          TEXT NOT NULL,   -- JSON object
    status            TEXT NOT NULL,
    last_error        TEXT,
    expires_at        INTEGER,
    next_refresh_at   INTEGER,
    last_refreshed_at INTEGER,
    version           INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;
CREATE INDEX accounts_by_integration ON accounts (integration, id);
CREATE INDEX accounts_due ON accounts (next_refresh_at) WHERE status = 'active';

CREATE TABLE outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT NOT NULL UNIQUE,
    kind            TEXT NOT NULL,
    account_id      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER
) STRICT;
CREATE INDEX outbox_pending ON outbox (next_attempt_at) WHERE delivered_at IS NULL;

CREATE TABLE key_checks (
    key_id     TEXT PRIMARY KEY,
    sealed     TEXT NOT NULL
) STRICT;
"#,
    // 2: consecutive failed refreshes, for backoff that survives restarts.
    "ALTER TABLE accounts ADD COLUMN refresh_failures INTEGER NOT NULL DEFAULT 0;",
    // 3: one-time tokens already used (connect states), kept until they expire.
    "CREATE TABLE used_once (key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) STRICT;",
];

/// How long a writer waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    /// The connection. A std mutex: only ever locked inside `spawn_blocking`, never
    /// across an await. `Arc` so the blocking closure can own a handle.
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", parent.display())))?;
        }
        create_private(path)?;
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
        migrate(&mut conn)?;
        Ok(Self {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while the lock was held cannot leave a half-done write:
            // rusqlite rolls back a dropped transaction. So a poisoned lock is safe.
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// Creates the database file readable by its owner only, before SQLite does (SQLite
/// gives its `-wal` and `-shm` files the same mode as the database).
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .map(drop)
        .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(backend)?;
    let supported = MIGRATIONS.len() as i64;
    if current > supported {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported,
        });
    }
    for migration in &MIGRATIONS[current as usize..] {
        tx.execute_batch(migration).map_err(backend)?;
    }
    tx.pragma_update(None, "user_version", supported).map_err(backend)?;
    tx.commit().map_err(backend)
}

fn backend(error: rusqlite::Error) -> StoreError {
    StoreError::Backend(error.to_string())
}

const ACCOUNT_COLUMNS: &str = "id, integration, credentials, metadata, status, last_error, \
     expires_at, next_refresh_at, last_refreshed_at, version, created_at, updated_at, refresh_failures";

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Account, StoreError>> {
    let id: String = row.get(0)?;
    let credentials: String = row.get(2)?;
    let metadata: String = row.get(3)?;
    let status: String = row.get(4)?;
    let parsed = (|| {
        let raw: BTreeMap<String, String> = serde_json::from_str(&credentials)
            .map_err(|_| StoreError::Corrupt(format!("account {id}: credentials are not a JSON object")))?;
        let credentials = raw
            .into_iter()
            .map(|(field, text)| {
                Sealed::parse(text)
                    .map(|sealed| (field.clone(), sealed))
                    .map_err(|_| StoreError::Corrupt(format!("account {id}: field {field} is not a sealed value")))
            })
            .collect::<Result<_, _>>()?;
        let metadata = serde_json::from_str(&metadata)
            .map_err(|_| StoreError::Corrupt(format!("account {id}: metadata is not a JSON object")))?;
        let status =
            Status::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("account {id}: unknown status")))?;
        Ok((credentials, metadata, status))
    })();
    Ok(match parsed {
        Err(error) => Err(error),
        Ok((credentials, metadata, status)) => Ok(Account {
            integration: row.get(1)?,
            credentials,
            metadata,
            status,
            last_error: row.get(5)?,
            expires_at: row.get(6)?,
            next_refresh_at: row.get(7)?,
            last_refreshed_at: row.get(8)?,
            version: row.get(9)?,
            created_at: row.get(10)?,
            updated_at: row.get(11)?,
            refresh_failures: row.get(12)?,
            id,
        }),
    })
}

fn query_accounts(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Account>, StoreError> {
    let mut statement = conn.prepare_cached(sql).map_err(backend)?;
    let rows = statement.query_map(params, account_from_row).map_err(backend)?;
    let mut accounts = Vec::new();
    for row in rows {
        accounts.push(row.map_err(backend)??);
    }
    Ok(accounts)
}

fn credentials_json(account: &Account) -> String {
    let map: BTreeMap<&str, &str> = account
        .credentials
        .iter()
        .map(|(field, sealed)| (field.as_str(), sealed.as_str()))
        .collect();
    serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned())
}

fn write_events(tx: &rusqlite::Transaction<'_>, events: &[NewEvent]) -> Result<(), StoreError> {
    let mut statement = tx
        .prepare_cached(
            "INSERT INTO outbox (id, kind, account_id, payload, created_at, next_attempt_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        )
        .map_err(backend)?;
    for event in events {
        statement
            .execute(params![
                event.id,
                event.kind,
                event.account_id,
                event.payload.to_string(),
                event.created_at
            ])
            .map_err(backend)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, id: &str) -> Result<Option<Account>, StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?1");
            Ok(query_accounts(conn, &sql, [id])?.pop())
        })
        .await
    }

    async fn create(&self, mut account: Account, events: Vec<NewEvent>) -> Result<Account, StoreError> {
        self.run(move |conn| {
            account.version = 1;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let inserted = tx
                .execute(
                    "INSERT INTO accounts (id, integration, credentials, metadata, status, last_error, \
                     expires_at, next_refresh_at, last_refreshed_at, version, created_at, updated_at, \
                     refresh_failures) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) ON CONFLICT (id) DO NOTHING",
                    params![
                        account.id,
                        account.integration,
                        credentials_json(&account),
                        serde_json::Value::Object(account.metadata.clone()).to_string(),
                        account.status.as_str(),
                        account.last_error,
                        account.expires_at,
                        account.next_refresh_at,
                        account.last_refreshed_at,
                        account.version,
                        account.created_at,
                        account.updated_at,
                        account.refresh_failures,
                    ],
                )
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists(account.id));
            }
            write_events(&tx, &events)?;
            tx.commit().map_err(backend)?;
            Ok(account)
        })
        .await
    }

    async fn update(&self, mut account: Account, events: Vec<NewEvent>) -> Result<Account, StoreError> {
        self.run(move |conn| {
            let expected = account.version;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let updated = tx
                .execute(
                    "UPDATE accounts SET integration = ?2, credentials = ?3, metadata = ?4, status = ?5, \
                     last_error = ?6, expires_at = ?7, next_refresh_at = ?8, last_refreshed_at = ?9, \
                     version = version + 1, updated_at = ?10, refresh_failures = ?12 WHERE id = ?1 AND version = ?11",
                    params![
                        account.id,
                        account.integration,
                        credentials_json(&account),
                        serde_json::Value::Object(account.metadata.clone()).to_string(),
                        account.status.as_str(),
                        account.last_error,
                        account.expires_at,
                        account.next_refresh_at,
                        account.last_refreshed_at,
                        account.updated_at,
                        expected,
                        account.refresh_failures,
                    ],
                )
                .map_err(backend)?;
            if updated == 0 {
                let exists: bool = tx
                    .query_row("SELECT 1 FROM accounts WHERE id = ?1", [&account.id], |_| Ok(true))
                    .optional()
                    .map_err(backend)?
                    .unwrap_or(false);
                return Err(if exists {
                    StoreError::VersionConflict {
                        id: account.id,
                        expected,
                    }
                } else {
                    StoreError::NotFound(account.id)
                });
            }
            write_events(&tx, &events)?;
            tx.commit().map_err(backend)?;
            account.version = expected + 1;
            Ok(account)
        })
        .await
    }

    async fn delete(&self, id: &str, expected_version: i64, events: Vec<NewEvent>) -> Result<(), StoreError> {
        let id = id.to_owned();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            let deleted = tx
                .execute(
                    "DELETE FROM accounts WHERE id = ?1 AND version = ?2",
                    params![id, expected_version],
                )
                .map_err(backend)?;
            if deleted == 0 {
                let exists = tx
                    .query_row("SELECT 1 FROM accounts WHERE id = ?1", [&id], |_| Ok(()))
                    .optional()
                    .map_err(backend)?
                    .is_some();
                return Err(if exists {
                    StoreError::VersionConflict {
                        id,
                        expected: expected_version,
                    }
                } else {
                    StoreError::NotFound(id)
                });
            }
            write_events(&tx, &events)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<Account>, StoreError> {
        let filter = filter.clone();
        self.run(move |conn| {
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts \
                 WHERE (?1 IS NULL OR integration = ?1) AND (?2 IS NULL OR status = ?2) \
                 AND (?3 IS NULL OR id > ?3) ORDER BY id LIMIT ?4"
            );
            query_accounts(
                conn,
                &sql,
                params![
                    filter.integration,
                    filter.status.map(Status::as_str),
                    filter.after,
                    filter.limit as i64
                ],
            )
        })
        .await
    }

    async fn due_for_refresh(&self, now_ms: i64, limit: usize) -> Result<Vec<Account>, StoreError> {
        self.run(move |conn| {
            let sql = format!(
                "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE status = 'active' \
                 AND next_refresh_at <= ?1 ORDER BY next_refresh_at LIMIT ?2"
            );
            query_accounts(conn, &sql, params![now_ms, limit as i64])
        })
        .await
    }

    async fn outbox_due(&self, now_ms: i64, limit: usize) -> Result<Vec<OutboxEvent>, StoreError> {
        self.run(move |conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT id, kind, account_id, payload, created_at, attempts, next_attempt_at FROM outbox \
                     WHERE delivered_at IS NULL AND next_attempt_at <= ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = statement
                .query_map(params![now_ms, limit as i64], |row| {
                    let payload: String = row.get(3)?;
                    Ok(OutboxEvent {
                        id: row.get(0)?,
                        kind: row.get(1)?,
                        account_id: row.get(2)?,
                        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
                        created_at: row.get(4)?,
                        attempts: row.get(5)?,
                        next_attempt_at: row.get(6)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
        .await
    }

    async fn outbox_claim(
        &self,
        event_id: &str,
        seen_next_attempt_ms: i64,
        lease_until_ms: i64,
    ) -> Result<bool, StoreError> {
        let event_id = event_id.to_owned();
        self.run(move |conn| {
            let claimed = conn
                .execute(
                    "UPDATE outbox SET next_attempt_at = ?3 \
                     WHERE id = ?1 AND next_attempt_at = ?2 AND delivered_at IS NULL",
                    params![event_id, seen_next_attempt_ms, lease_until_ms],
                )
                .map_err(backend)?;
            Ok(claimed == 1)
        })
        .await
    }

    async fn outbox_delivered(&self, event_id: &str, now_ms: i64) -> Result<(), StoreError> {
        let event_id = event_id.to_owned();
        self.run(move |conn| {
            conn.execute(
                "UPDATE outbox SET delivered_at = ?2 WHERE id = ?1",
                params![event_id, now_ms],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn outbox_retry_at(&self, event_id: &str, attempts: u32, next_attempt_ms: i64) -> Result<(), StoreError> {
        let event_id = event_id.to_owned();
        self.run(move |conn| {
            conn.execute(
                "UPDATE outbox SET attempts = ?2, next_attempt_at = ?3 WHERE id = ?1",
                params![event_id, attempts, next_attempt_ms],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn use_once(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool, StoreError> {
        let key = key.to_owned();
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(backend)?;
            tx.execute("DELETE FROM used_once WHERE expires_at < ?1", [now_ms])
                .map_err(backend)?;
            let inserted = tx
                .execute(
                    "INSERT INTO used_once (key, expires_at) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                    params![key, expires_at_ms],
                )
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(inserted == 1)
        })
        .await
    }

    async fn key_checks(&self) -> Result<Vec<KeyCheck>, StoreError> {
        self.run(|conn| {
            let mut statement = conn
                .prepare_cached("SELECT key_id, sealed FROM key_checks ORDER BY key_id")
                .map_err(backend)?;
            let rows = statement
                .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
                .map_err(backend)?;
            let mut checks = Vec::new();
            for row in rows {
                let (key_id, sealed) = row.map_err(backend)?;
                let corrupt = || StoreError::Corrupt(format!("key check for {key_id}"));
                checks.push(KeyCheck {
                    key_id: KeyId::new(key_id.clone()).map_err(|_| corrupt())?,
                    sealed: Sealed::parse(sealed).map_err(|_| corrupt())?,
                });
            }
            Ok(checks)
        })
        .await
    }

    async fn add_key_check(&self, check: &KeyCheck) -> Result<(), StoreError> {
        let (key_id, sealed) = (check.key_id.to_string(), check.sealed.as_str().to_owned());
        self.run(move |conn| {
            conn.execute(
                "INSERT INTO key_checks (key_id, sealed) VALUES (?1, ?2) ON CONFLICT (key_id) DO NOTHING",
                params![key_id, sealed],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn remove_key_check(&self, key_id: &str) -> Result<(), StoreError> {
        let key_id = key_id.to_owned();
        self.run(move |conn| {
            conn.execute("DELETE FROM key_checks WHERE key_id = ?1", [key_id])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn count_sealed_with(&self, key_id: &str) -> Result<u64, StoreError> {
        // Envelopes are `cg1:<key id>:…` inside a JSON string, so the key id is always
        // preceded by `"cg1:` and followed by `:`. Key ids are [A-Za-z0-9_-] only, and
        // `_` is escaped because it is a LIKE wildcard.
        let pattern = format!("%\"cg1:{}:%", key_id.replace('_', "\\_"));
        self.run(move |conn| {
            conn.query_row(
                "SELECT count(*) FROM accounts WHERE credentials LIKE ?1 ESCAPE '\\'",
                [pattern],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests;
