//! The credential lifecycle: refresh OAuth tokens before they expire, exactly once
//! across replicas, tell dead grants from passing trouble, and deliver signed
//! webhooks from the outbox.
#![forbid(unsafe_code)]

pub mod connect;
pub mod coordination;
mod http;
pub mod refresh;
pub mod scheduler;
pub mod token;
pub mod webhooks;

pub use refresh::{Outcome, Reason, RefreshError, Refresher};

/// Wall-clock time in unix milliseconds: what stored timestamps are compared with.
/// A trait so that tests can move time without sleeping.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        credgate_accounts::now_ms()
    }
}
