//! The credential lifecycle: refresh OAuth tokens before they expire, exactly once
//! across replicas, tell dead grants from passing trouble, and deliver signed
//! webhooks from the outbox.
#![forbid(unsafe_code)]

pub mod token;
