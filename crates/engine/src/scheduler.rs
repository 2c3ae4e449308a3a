//! The proactive scheduler: every replica runs it; each due account is refreshed
//! under its lock, so replicas never refresh one account twice.

use std::sync::Arc;

use tokio::sync::{watch, Semaphore};

use crate::{Reason, Refresher};

/// Reads due accounts in batches every `refresh.tick` and refreshes them, at most
/// `refresh.concurrency` at once, until `shutdown` changes.
pub async fn run(refresher: Arc<Refresher>, clock: Arc<dyn crate::Clock>, mut shutdown: watch::Receiver<()>) {
    let settings = refresher.settings().clone();
    let permits = Arc::new(Semaphore::new(settings.concurrency));
    let mut tick = tokio::time::interval(settings.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let due = match refresher
            .accounts()
            .store()
            .due_for_refresh(clock.now_ms(), settings.batch)
            .await
        {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "scheduler cannot read due accounts");
                continue;
            }
        };
        for account in due {
            let permit = tokio::select! {
                _ = shutdown.changed() => return,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let refresher = Arc::clone(&refresher);
            tokio::spawn(async move {
                let _ = refresher.refresh(&account.id, Reason::Due).await;
                drop(permit);
            });
        }
    }
}
