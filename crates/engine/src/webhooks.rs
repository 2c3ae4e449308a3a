//! Webhook delivery from the durable outbox, at least once, signed per Standard
//! Webhooks: `webhook-id`, `webhook-timestamp` and
//! `webhook-signature: v1,<base64(HMAC-SHA256(key, "<id>.<timestamp>.<body>"))>`.
//!
//! Events are written to the outbox in the same transaction as the change that
//! caused them; this loop claims due events (so replicas do not all send the same
//! one), posts them to every endpoint, and marks them delivered, or schedules a
//! retry with exponential backoff (capped at ten minutes, never giving up) when
//! any endpoint fails. Receivers deduplicate by `webhook-id`.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use credgate_crypto::SecretString;
use credgate_store::{OutboxEvent, Store};
use hmac::{Hmac, Mac};
use http::{header, Request};
use http_body_util::Full;
use sha2::Sha256;
use tokio::sync::watch;
use zeroize::Zeroizing;

use crate::http::HttpClient;
use crate::Clock;

/// How long a claimed event is ours before another replica may try it.
const LEASE: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(600);

/// A receiver and its signing key.
pub struct Endpoint {
    pub url: String,
    /// HMAC key: the base64 after `whsec_`, or the secret's bytes.
    key: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    pub fn new(url: String, secret: &SecretString) -> Self {
        let text = secret.expose();
        let key = match text.strip_prefix("whsec_").map(|b64| STANDARD.decode(b64)) {
            Some(Ok(bytes)) => bytes,
            _ => text.as_bytes().to_vec(),
        };
        Self {
            url,
            key: Zeroizing::new(key),
        }
    }

    /// The `webhook-signature` value for one delivery.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[derive(Debug)]
pub struct Webhooks {
    store: Arc<dyn Store>,
    endpoints: Vec<Endpoint>,
    http: HttpClient,
    clock: Arc<dyn Clock>,
}

impl Webhooks {
    pub fn new(
        store: Arc<dyn Store>,
        endpoints: Vec<Endpoint>,
        extra_ca: Option<&std::path::Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, crate::http::ClientError> {
        Ok(Self {
            store,
            endpoints,
            http: crate::http::client(REQUEST_TIMEOUT, extra_ca)?,
            clock,
        })
    }

    /// Delivers due events every `poll` until `shutdown` changes. Without
    /// endpoints, events are marked delivered (there is nobody to tell).
    pub async fn run(self: Arc<Self>, poll: Duration, mut shutdown: watch::Receiver<()>) {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.deliver_due().await {
                tracing::warn!(%error, "webhook delivery pass failed");
            }
        }
    }

    /// One pass over the due events.
    pub async fn deliver_due(&self) -> Result<(), credgate_store::StoreError> {
        let now = self.clock.now_ms();
        for event in self.store.outbox_due(now, 100).await? {
            let lease_until = now + LEASE.as_millis() as i64;
            if !self
                .store
                .outbox_claim(&event.id, event.next_attempt_at, lease_until)
                .await?
            {
                continue;
            }
            if self.send_everywhere(&event).await {
                self.store.outbox_delivered(&event.id, self.clock.now_ms()).await?;
            } else {
                let attempts = event.attempts + 1;
                let delay =
                    credgate_accounts::schedule::backoff(attempts, RETRY_BASE, RETRY_MAX, &mut rand::thread_rng());
                self.store
                    .outbox_retry_at(&event.id, attempts, self.clock.now_ms() + delay.as_millis() as i64)
                    .await?;
            }
        }
        Ok(())
    }

    async fn send_everywhere(&self, event: &OutboxEvent) -> bool {
        let body = Bytes::from(event.payload.to_string());
        let timestamp = self.clock.now_ms() / 1000;
        let mut all = true;
        for endpoint in &self.endpoints {
            let request = Request::post(&endpoint.url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &event.id)
                .header("webhook-timestamp", timestamp)
                .header("webhook-signature", endpoint.sign(&event.id, timestamp, &body))
                .body(Full::new(body.clone()));
            let Ok(request) = request else {
                all = false;
                continue;
            };
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(request)).await;
            match outcome {
                Ok(Ok(response)) if response.status().is_success() => {}
                Ok(Ok(response)) => {
                    tracing::warn!(event.id = %event.id, url = %endpoint.url, status = response.status().as_u16(), "webhook refused");
                    all = false;
                }
                Ok(Err(error)) => {
                    tracing::warn!(event.id = %event.id, url = %endpoint.url, %error, "webhook not delivered");
                    all = false;
                }
                Err(_) => {
                    tracing::warn!(event.id = %event.id, url = %endpoint.url, "webhook timed out");
                    all = false;
                }
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example.
    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        let endpoint = Endpoint::new(
            "https://example.com".into(),
            &SecretString::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        );
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            endpoint.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
