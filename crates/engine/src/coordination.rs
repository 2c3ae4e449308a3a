//! What replicas share: a per-account refresh lock and a change feed.
//!
//! With Redis: the lock is `SET credgate:lock:<account> <random> NX PX <ttl>`,
//! released by a compare-and-delete script (so a refresher whose lock expired can
//! never delete its successor's), and every account change is published on
//! `credgate:changed` so that other replicas drop cached copies and waiting
//! refreshers wake at once. Without Redis there is one process: the in-process
//! single flight is the lock, and the change feed is local.
//!
//! When Redis is unreachable, the lock cannot be taken and refreshes fail as
//! transient (retried with backoff). Refreshing without the lock could let two
//! replicas spend the same rotating refresh token, which some vendors punish by
//! revoking the whole grant.

use std::time::Duration;

use futures_util::StreamExt;
use rand::RngCore;
use redis::aio::ConnectionManager;
use tokio::sync::broadcast;

const CHANNEL: &str = "credgate:changed";

/// Sent on the local feed (never a valid account id) when the Redis feed has
/// (re)connected: changes published while it was down were lost, so listeners
/// drop everything they cached.
pub const RESYNC: &str = "*";

/// The script that deletes a lock only if it still holds our value.
const RELEASE: &str =
    r#"if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end"#;

#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct CoordinationError(String);

impl From<redis::RedisError> for CoordinationError {
    fn from(error: redis::RedisError) -> Self {
        Self(error.to_string())
    }
}

/// A held lock; pass it back to [`Coordinator::unlock`].
#[derive(Debug)]
pub struct Lock {
    key: String,
    /// Our random value, so that only we can release it.
    token: String,
}

pub struct Coordinator {
    redis: Option<Redis>,
    /// Account ids that changed, here or (with Redis) on any replica.
    changes: broadcast::Sender<String>,
    lock_ttl: Duration,
}

struct Redis {
    /// Commands; the manager reconnects by itself.
    connection: ConnectionManager,
    release: redis::Script,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator")
            .field("redis", &self.redis.is_some())
            .field("lock_ttl", &self.lock_ttl)
            .finish()
    }
}

impl Coordinator {
    /// One process, no Redis.
    pub fn local(lock_ttl: Duration) -> Self {
        Self {
            redis: None,
            changes: broadcast::channel(4096).0,
            lock_ttl,
        }
    }

    /// Connects to Redis and starts relaying the change feed into this process.
    pub async fn redis(url: &str, lock_ttl: Duration) -> Result<Self, CoordinationError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2);
        let connection = client.get_connection_manager_with_config(config).await?;
        let changes = broadcast::channel(4096).0;
        tokio::spawn(relay(client, changes.clone()));
        Ok(Self {
            redis: Some(Redis {
                connection,
                release: redis::Script::new(RELEASE),
            }),
            changes,
            lock_ttl,
        })
    }

    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Takes the account's refresh lock if nobody holds it.
    pub async fn try_lock(&self, account: &str) -> Result<Option<Lock>, CoordinationError> {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        let lock = Lock {
            key: format!("credgate:lock:{account}"),
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let Some(redis) = &self.redis else {
            return Ok(Some(lock));
        };
        let mut connection = redis.connection.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&lock.key)
            .arg(&lock.token)
            .arg("NX")
            .arg("PX")
            .arg(self.lock_ttl.as_millis() as u64)
            .query_async(&mut connection)
            .await?;
        Ok(set.map(|_| lock))
    }

    /// Releases a lock if it is still ours.
    pub async fn unlock(&self, lock: Lock) {
        let Some(redis) = &self.redis else { return };
        let mut connection = redis.connection.clone();
        let released: Result<i64, _> = redis
            .release
            .key(&lock.key)
            .arg(&lock.token)
            .invoke_async(&mut connection)
            .await;
        match released {
            Ok(1) => {}
            Ok(_) => tracing::warn!(lock = %lock.key, "refresh lock had expired before release"),
            Err(error) => tracing::warn!(%error, "cannot release refresh lock; it expires by itself"),
        }
    }

    /// Tells every replica (this one included) that an account changed.
    pub async fn announce(&self, account: &str) {
        let _ = self.changes.send(account.to_owned());
        let Some(redis) = &self.redis else { return };
        let mut connection = redis.connection.clone();
        let published: Result<i64, _> = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(account)
            .query_async(&mut connection)
            .await;
        if let Err(error) = published {
            tracing::warn!(%error, "cannot publish an account change");
        }
    }

    /// A feed of changed account ids. Subscribe *before* reading the state you
    /// wait to see change, or a change in between is missed.
    pub fn changes(&self) -> broadcast::Receiver<String> {
        self.changes.subscribe()
    }
}

/// Relays Redis pub/sub into the local feed, reconnecting with a capped backoff.
/// Messages we published ourselves come back too; receivers tolerate duplicates.
async fn relay(client: redis::Client, changes: broadcast::Sender<String>) {
    let mut delay = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(CHANNEL).await {
                Ok(()) => {
                    delay = Duration::from_millis(100);
                    let _ = changes.send(RESYNC.to_owned());
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        if let Ok(account) = message.get_payload::<String>() {
                            let _ = changes.send(account);
                        }
                    }
                    tracing::warn!("redis change feed disconnected; reconnecting");
                }
                Err(error) => tracing::warn!(%error, "cannot subscribe to the redis change feed"),
            },
            Err(error) => tracing::warn!(%error, "cannot connect to redis for the change feed"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use credgate_test_support::RedisServer;

    #[tokio::test]
    async fn one_holder_at_a_time_and_only_the_holder_releases() {
        let server = RedisServer::start();
        let a = Coordinator::redis(&server.url(), Duration::from_secs(30))
            .await
            .unwrap();
        let b = Coordinator::redis(&server.url(), Duration::from_secs(30))
            .await
            .unwrap();
        let held = a.try_lock("acme").await.unwrap().expect("free lock");
        assert!(b.try_lock("acme").await.unwrap().is_none());
        assert!(b.try_lock("other").await.unwrap().is_some());
        // A forged release (same key, another value) does nothing.
        b.unlock(Lock {
            key: held.key.clone(),
            token: "not-ours".into(),
        })
        .await;
        assert!(b.try_lock("acme").await.unwrap().is_none());
        a.unlock(held).await;
        assert!(b.try_lock("acme").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn a_lock_expires_by_itself() {
        let server = RedisServer::start();
        let a = Coordinator::redis(&server.url(), Duration::from_millis(200))
            .await
            .unwrap();
        let _held = a.try_lock("acme").await.unwrap().unwrap();
        let freed = credgate_test_support::eventually(Duration::from_secs(5), || async {
            a.try_lock("acme").await.unwrap().is_some()
        })
        .await;
        assert!(freed);
    }

    #[tokio::test]
    async fn changes_reach_other_replicas() {
        let server = RedisServer::start();
        let a = Coordinator::redis(&server.url(), Duration::from_secs(30))
            .await
            .unwrap();
        let b = Coordinator::redis(&server.url(), Duration::from_secs(30))
            .await
            .unwrap();
        let mut feed = b.changes();
        // The relay subscribes asynchronously: announce until b hears it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut heard = false;
        while !heard && tokio::time::Instant::now() < deadline {
            a.announce("acme").await;
            heard = matches!(
                tokio::time::timeout(Duration::from_millis(100), feed.recv()).await,
                Ok(Ok(id)) if id == "acme"
            );
        }
        assert!(heard);
    }
}
