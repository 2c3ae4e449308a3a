//! Exit codes scripts can rely on (documented in the README).

use std::fmt::Display;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Ok = 0,
    /// Anything not listed below (I/O, store, crypto, an unexpected server answer).
    Failure = 1,
    // 2 is clap's usage error.
    /// The configuration (or an integration file) is invalid.
    Config = 3,
    /// The account (or integration) does not exist.
    NotFound = 4,
    /// The account exists already, or changed concurrently.
    Conflict = 5,
    /// The input was refused (a field is missing, extra or malformed).
    Invalid = 6,
    /// The admin API could not be reached or refused the token.
    Unavailable = 7,
}

impl From<Code> for std::process::ExitCode {
    fn from(code: Code) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

/// A command's failure: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub message: String,
}

impl Failure {
    pub fn new(code: Code, message: impl Display) -> Self {
        Self {
            code,
            message: format!("error: {message}"),
        }
    }
}

/// Unclassified errors exit with [`Code::Failure`].
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Self::new(Code::Failure, format!("{error:#}"))
    }
}

pub type Result<T = ()> = std::result::Result<T, Failure>;
