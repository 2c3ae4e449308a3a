//! The account service: turns API input into validated, sealed records, and records
//! back into masked views. The admin API, the CLI and (later) the connect flow all
//! create and change accounts through here, so the rules live in one place.
//!
//! - Input is checked against the account's integration: the credential fields its
//!   format needs, no others, and declared metadata that matches its pattern (a
//!   tampered `instance_url` is refused at the door, not only at proxy time).
//! - Every credential field is sealed under the primary key with the account id and
//!   field name as associated data before it reaches the store.
//! - Views never carry plaintext: each field is opened only to be masked.
//! - [`Accounts::unlock`] proves that the configured keys are the ones that sealed
//!   the store before anything else runs.
#![forbid(unsafe_code)]

mod error;
mod input;
pub mod schedule;
mod service;
mod view;

pub use error::AccountError;
pub use input::{CreateAccount, PatchAccount};
pub use service::{new_event, now_ms, Accounts, Page, RekeyReport};
pub use view::AccountView;

/// Webhook event kinds (DESIGN.md, "Webhooks").
pub mod events {
    pub const CREATED: &str = "integrated_account:created";
    pub const DELETED: &str = "integrated_account:deleted";
    pub const REACTIVATED: &str = "integrated_account:reactivated";
    pub const AUTHENTICATION_ERROR: &str = "integrated_account:authentication_error";
}
